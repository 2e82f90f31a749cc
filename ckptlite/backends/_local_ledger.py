"""Runs and the work-item ledger in the local store (mixed into ``LocalBackend``).

Every write takes the next value of the ledger clock (``ledger_clock``), so sync
can copy what changed after a high-water mark; the first done-mark of an item
wins and failed items count their attempts.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import apsw

from .._sqlite import Database, translate_errors
from ..errors import InvalidInputError, RunNotFoundError
from ..types import ItemMark, ItemRecord, RunRecord
from ._local_schema import RUN_COLS as _RUN_COLS
from ._local_schema import row_to_run as _row_to_run
from .base import ledger_entry_wins, to_micros

__all__ = ["LocalLedgerMixin"]


class LocalLedgerMixin:
    """Run and item-ledger methods of the Backend Protocol, on ``self.db``."""

    db: Database

    def _tick(self, conn: apsw.Connection) -> int:
        row: Any = conn.execute(
            "UPDATE ledger_clock SET v = v + 1 WHERE k = 1 RETURNING v"
        ).fetchone()
        return int(row[0])

    def create_run(self, run: RunRecord) -> RunRecord:
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id=?", (run.id,)).fetchone():
                raise InvalidInputError(f"run {run.id} exists already", run_id=run.id)
            changed = self._tick(conn)
            progress = run.progress or (None, None)
            conn.execute(
                "INSERT INTO runs(id, process_id, status, started_at, updated_at, finished_at, "
                "error, progress_done, progress_total, changed) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run.id,
                    run.process_id,
                    run.status.value,
                    to_micros(run.started_at),
                    to_micros(run.updated_at),
                    None if run.finished_at is None else to_micros(run.finished_at),
                    run.error,
                    progress[0],
                    progress[1],
                    changed,
                ),
            )
            seq = conn.last_insert_rowid()
        return run.replace(seq=seq, changed=changed)

    def update_run(self, run: RunRecord) -> RunRecord:
        with self.db.write() as conn:
            changed = self._tick(conn)
            progress = run.progress or (None, None)
            conn.execute(
                "UPDATE runs SET status=?, updated_at=?, finished_at=?, error=?, "
                "progress_done=?, progress_total=?, changed=? WHERE id=?",
                (
                    run.status.value,
                    to_micros(run.updated_at),
                    None if run.finished_at is None else to_micros(run.finished_at),
                    run.error,
                    progress[0],
                    progress[1],
                    changed,
                    run.id,
                ),
            )
            if conn.changes() == 0:
                raise RunNotFoundError(f"no run {run.id!r}", run_id=run.id)
        return self.get_run(run.id)

    def get_run(self, run_id: str) -> RunRecord:
        with translate_errors("reading run"):
            row = (
                self.db.read()
                .execute(f"SELECT {_RUN_COLS} FROM runs WHERE id=?", (run_id,))
                .fetchone()
            )
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        return _row_to_run(row)

    def list_runs(
        self,
        process_id: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[RunRecord]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if process_id is not None:
            where.append("process_id=?")
            args.append(process_id)
        if after_changed is not None:
            where.append("changed>?")
            args.append(after_changed)
        sql = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY changed ASC" if after_changed is not None else " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with translate_errors("listing runs"):
            return [_row_to_run(r) for r in self.db.read().execute(sql, args)]

    def _run_seq(self, conn: apsw.Connection, run_id: str) -> int | None:
        row: Any = conn.execute("SELECT seq FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else int(row[0])

    def mark_items(self, run_id: str, marks: Sequence[ItemMark]) -> int:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            changed = self._tick(conn)
            if marks:
                # The marks bind as they are (ItemMark is a tuple); run and changed are
                # ints made here, so they can be literals: no per-row Python work.
                conn.executemany(
                    "INSERT INTO items(grp, item, ok, state, error, run, attempts, changed) "
                    f"VALUES (?, ?, ?, ?, ?, {int(run)}, 1, {int(changed)}) "
                    "ON CONFLICT(run, grp, item) DO UPDATE SET ok=excluded.ok, "
                    "attempts=items.attempts+1, error=excluded.error, state=excluded.state, "
                    "changed=excluded.changed WHERE items.ok=0",
                    marks,
                )
        return changed

    def item_marks(self, run_id: str, group: str) -> tuple[set[str], dict[str, int]]:
        conn = self.db.read()
        with translate_errors("reading the item ledger"):
            run = self._run_seq(conn, run_id)
            if run is None:
                return set(), {}
            cur = conn.cursor()
            cur.row_trace = lambda _c, row: row[0]  # scalars, not 1-tuples: 1M ids per second
            done: set[str] = set(
                cur.execute("SELECT item FROM items WHERE run=? AND grp=? AND ok=1", (run, group))
            )
            failed = {
                item: attempts
                for item, attempts in conn.execute(
                    "SELECT item, attempts FROM items WHERE run=? AND grp=? AND ok=0", (run, group)
                )
            }
        return done, failed

    def list_items(
        self,
        run_id: str,
        group: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[ItemRecord]:
        conn = self.db.read()
        with translate_errors("reading the item ledger"):
            run = self._run_seq(conn, run_id)
            if run is None:
                return []
            sql = "SELECT grp, item, ok, attempts, error, state, changed FROM items WHERE run=?"
            args: builtins.list[Any] = [run]
            if group is not None:
                sql += " AND grp=?"
                args.append(group)
            if after_changed is not None:
                sql += " AND changed>?"
                args.append(after_changed)
            sql += " ORDER BY changed, grp, item"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            return [
                ItemRecord(run_id, g, i, bool(ok), n, err, st, ch)
                for g, i, ok, n, err, st, ch in conn.execute(sql, args)
            ]

    def export_ledger(
        self, after: int, process_id: str | None = None
    ) -> tuple[int, builtins.list[RunRecord], builtins.list[ItemRecord]]:
        where, args = ("", []) if process_id is None else (" AND r.process_id=?", [process_id])
        conn = self.db.read()
        with translate_errors("reading the item ledger"):
            conn.execute("BEGIN")  # one snapshot for the clock, the runs and the entries
            try:
                row: Any = conn.execute("SELECT v FROM ledger_clock WHERE k=1").fetchone()
                if int(row[0]) <= after:  # nothing changed: no scan of a big ledger
                    return int(row[0]), [], []
                items = [
                    ItemRecord(rid, g, i, bool(ok), n, err, st, ch)
                    for rid, g, i, ok, n, err, st, ch in conn.execute(
                        "SELECT r.id, i.grp, i.item, i.ok, i.attempts, i.error, i.state, "
                        "i.changed FROM items i JOIN runs r ON r.seq=i.run WHERE i.changed>?"
                        + where
                        + " ORDER BY i.changed, i.grp, i.item",
                        [after, *args],
                    )
                ]
                runs = [
                    _row_to_run(r)
                    for r in conn.execute(
                        f"SELECT {_RUN_COLS} FROM runs r WHERE (r.changed>? OR r.seq IN "
                        "(SELECT run FROM items WHERE changed>?))" + where + " ORDER BY r.seq",
                        [after, after, *args],
                    )
                ]
            finally:
                conn.execute("COMMIT")
        return int(row[0]), runs, items

    def import_ledger(
        self,
        runs: Sequence[RunRecord],
        items: Sequence[ItemRecord],
        source: str,
        mark: int,
    ) -> int:
        written = 0
        with self.db.write() as conn:
            tick = self._tick(conn)
            for run in runs:
                old: Any = conn.execute(
                    "SELECT updated_at FROM runs WHERE id=?", (run.id,)
                ).fetchone()
                progress = run.progress or (None, None)
                values = (
                    run.process_id,
                    run.status.value,
                    to_micros(run.started_at),
                    to_micros(run.updated_at),
                    None if run.finished_at is None else to_micros(run.finished_at),
                    run.error,
                    progress[0],
                    progress[1],
                    tick,
                    run.id,
                )
                if old is None:
                    conn.execute(
                        "INSERT INTO runs(process_id, status, started_at, updated_at, "
                        "finished_at, error, progress_done, progress_total, changed, id) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?)",
                        values,
                    )
                elif old[0] < to_micros(run.updated_at):
                    conn.execute(
                        "UPDATE runs SET process_id=?, status=?, started_at=?, updated_at=?, "
                        "finished_at=?, error=?, progress_done=?, progress_total=?, changed=? "
                        "WHERE id=?",
                        values,
                    )
                else:
                    continue
                written += 1
            seqs = {rid: self._run_seq(conn, rid) for rid in {it.run_id for it in items}}
            for it in items:
                run_seq = seqs[it.run_id]
                if run_seq is None:
                    raise RunNotFoundError(f"no run {it.run_id!r}", run_id=it.run_id)
                key = (run_seq, it.group, it.item_id)
                prev: Any = conn.execute(
                    "SELECT ok, attempts FROM items WHERE run=? AND grp=? AND item=?", key
                ).fetchone()
                if ledger_entry_wins(
                    it.ok, it.attempts, None if prev is None else (bool(prev[0]), prev[1])
                ):
                    conn.execute(
                        "INSERT OR REPLACE INTO items(run, grp, item, ok, attempts, error, "
                        "state, changed) VALUES (?,?,?,?,?,?,?,?)",
                        (*key, int(it.ok), it.attempts, it.error, it.state, tick),
                    )
                    written += 1
            conn.execute(
                "INSERT INTO sync_marks(source, seq) VALUES (?, ?) "
                "ON CONFLICT(source) DO UPDATE SET seq=max(seq, excluded.seq)",
                (source, mark),
            )
        return written
