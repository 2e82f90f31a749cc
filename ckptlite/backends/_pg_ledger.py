"""Runs and the work-item ledger on PostgreSQL (mixed into ``PostgresBackend``).

Same semantics as the local backend: every write takes the next value of the
ledger clock (a one-row table whose row lock orders writers by commit), the
first done-mark of an item wins, failed items count their attempts.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidInputError, RunNotFoundError
from ..types import ItemMark, ItemRecord, RunRecord, RunStatus
from .base import ledger_entry_wins

if TYPE_CHECKING:
    from psycopg import sql

    from ._pg_conn import Conn

__all__ = ["LedgerMixin"]

T = TypeVar("T")

_RUN_COLS = (
    "seq, id, process_id, status, started_at, updated_at, finished_at, error, "
    "progress_done, progress_total, changed"
)
_UPSERT_RUN = """INSERT INTO {runs} AS o (id, process_id, status, started_at, updated_at,
    finished_at, error, progress_done, progress_total, changed)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET process_id = EXCLUDED.process_id, status = EXCLUDED.status,
    started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at,
    finished_at = EXCLUDED.finished_at, error = EXCLUDED.error,
    progress_done = EXCLUDED.progress_done, progress_total = EXCLUDED.progress_total,
    changed = EXCLUDED.changed
WHERE o.updated_at < EXCLUDED.updated_at"""
_TEMP = """CREATE TEMP TABLE IF NOT EXISTS ckptlite_ledger_import (
    run_id TEXT, grp TEXT, item TEXT, ok BOOL, attempts INT4, error TEXT, state BYTEA
) ON COMMIT DELETE ROWS"""
_MERGE_ITEMS = """INSERT INTO {items} AS o (run, grp, item, ok, attempts, error, state, changed)
SELECT r.seq, t.grp, t.item, t.ok, t.attempts, t.error, t.state, %s
FROM pg_temp.ckptlite_ledger_import t JOIN {runs} r ON r.id = t.run_id
ON CONFLICT (run, grp, item) DO UPDATE SET ok = EXCLUDED.ok, attempts = EXCLUDED.attempts,
    error = EXCLUDED.error, state = EXCLUDED.state, changed = EXCLUDED.changed
WHERE NOT o.ok AND (EXCLUDED.ok OR EXCLUDED.attempts > o.attempts)"""
_MARK = """INSERT INTO {sync_marks} (source, seq) VALUES (%s, %s)
ON CONFLICT (source) DO UPDATE SET seq = GREATEST({sync_marks}.seq, EXCLUDED.seq)"""


def _run_row(row: Sequence[Any]) -> RunRecord:
    seq, rid, pid, status, started, updated, finished, error, pd, pt, changed = row
    return RunRecord(
        id=rid,
        process_id=pid,
        status=RunStatus(status),
        started_at=started.astimezone(UTC),
        updated_at=updated.astimezone(UTC),
        finished_at=None if finished is None else finished.astimezone(UTC),
        error=error,
        progress=None if pd is None else (int(pd), int(pt)),
        seq=int(seq),
        changed=int(changed),
    )


def _run_values(run: RunRecord, changed: int) -> tuple[Any, ...]:
    progress = run.progress or (None, None)
    return (
        run.id,
        run.process_id,
        run.status.value,
        run.started_at,
        run.updated_at,
        run.finished_at,
        run.error,
        progress[0],
        progress[1],
        changed,
    )


class LedgerMixin:
    """The Backend Protocol's run and ledger methods, on ``PostgresBackend``'s tables."""

    if TYPE_CHECKING:

        def _run(
            self,
            what: str,
            fn: Callable[[Conn], T],
            *,
            write: bool = False,
            idempotent: bool = False,
        ) -> T: ...
        def _q(self, text: str) -> sql.Composed: ...
        def store_id(self) -> str: ...

    def _tick(self, conn: Conn) -> int:
        row = conn.execute(
            self._q("UPDATE {ledger_clock} SET v = v + 1 WHERE k = 1 RETURNING v")
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _run_seq(self, conn: Conn, run_id: str) -> int:
        row = conn.execute(self._q("SELECT seq FROM {runs} WHERE id = %s"), (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        return int(row[0])

    def create_run(self, run: RunRecord) -> RunRecord:
        q = self._q(
            "INSERT INTO {runs} (id, process_id, status, started_at, updated_at, finished_at, "
            "error, progress_done, progress_total, changed) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING "
            f"RETURNING {_RUN_COLS}"
        )

        def go(conn: Conn) -> RunRecord:
            row = conn.execute(q, _run_values(run, self._tick(conn))).fetchone()
            if row is None:
                raise InvalidInputError(f"run {run.id} exists already", run_id=run.id)
            return _run_row(row)

        return self._run("creating a run", go, write=True)

    def update_run(self, run: RunRecord) -> RunRecord:
        q = self._q(
            "UPDATE {runs} SET status = %s, updated_at = %s, finished_at = %s, error = %s, "
            f"progress_done = %s, progress_total = %s, changed = %s WHERE id = %s "
            f"RETURNING {_RUN_COLS}"
        )
        progress = run.progress or (None, None)

        def go(conn: Conn) -> RunRecord:
            args = (
                run.status.value,
                run.updated_at,
                run.finished_at,
                run.error,
                progress[0],
                progress[1],
                self._tick(conn),
                run.id,
            )
            row = conn.execute(q, args).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run.id!r}", run_id=run.id)
            return _run_row(row)

        return self._run("updating a run", go, write=True, idempotent=True)

    def get_run(self, run_id: str) -> RunRecord:
        q = self._q(f"SELECT {_RUN_COLS} FROM {{runs}} WHERE id = %s")
        row = self._run("reading a run", lambda c: c.execute(q, (run_id,)).fetchone())
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        return _run_row(row)

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
            where.append("process_id = %s")
            args.append(process_id)
        if after_changed is not None:
            where.append("changed > %s")
            args.append(after_changed)
        text = f"SELECT {_RUN_COLS} FROM {{runs}}"
        if where:
            text += " WHERE " + " AND ".join(where)
        text += " ORDER BY changed ASC" if after_changed is not None else " ORDER BY seq DESC"
        if limit is not None:
            text += " LIMIT %s"
            args.append(limit)
        q = self._q(text)
        rows = self._run("listing runs", lambda c: c.execute(q, args).fetchall())
        return [_run_row(r) for r in rows]

    def mark_items(self, run_id: str, marks: Sequence[ItemMark]) -> int:
        q = self._q(
            "INSERT INTO {items} AS o (run, grp, item, ok, attempts, error, state, changed) "
            "VALUES (%s, %s, %s, %s, 1, %s, %s, %s) ON CONFLICT (run, grp, item) DO UPDATE SET "
            "ok = EXCLUDED.ok, attempts = o.attempts + 1, error = EXCLUDED.error, "
            "state = EXCLUDED.state, changed = EXCLUDED.changed WHERE NOT o.ok"
        )

        def go(conn: Conn) -> int:
            run = self._run_seq(conn, run_id)
            tick = self._tick(conn)
            if marks:
                with conn.cursor() as cur:
                    cur.executemany(
                        q, [(run, m.group, m.item_id, m.ok, m.error, m.state, tick) for m in marks]
                    )
            return tick

        return self._run("marking work items", go, write=True)

    def item_marks(self, run_id: str, group: str) -> tuple[set[str], dict[str, int]]:
        q = self._q(
            "SELECT item, ok, attempts FROM {items} "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %s) AND grp = %s"
        )
        rows = self._run(
            "reading the item ledger", lambda c: c.execute(q, (run_id, group)).fetchall()
        )
        done = {r[0] for r in rows if r[1]}
        failed = {r[0]: r[2] for r in rows if not r[1]}
        return done, failed

    def list_items(
        self,
        run_id: str,
        group: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[ItemRecord]:
        text = (
            "SELECT grp, item, ok, attempts, error, state, changed FROM {items} "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %s)"
        )
        args: builtins.list[Any] = [run_id]
        if group is not None:
            text += " AND grp = %s"
            args.append(group)
        if after_changed is not None:
            text += " AND changed > %s"
            args.append(after_changed)
        text += " ORDER BY changed, grp, item"
        if limit is not None:
            text += " LIMIT %s"
            args.append(limit)
        q = self._q(text)
        rows = self._run("reading the item ledger", lambda c: c.execute(q, args).fetchall())
        return [
            ItemRecord(run_id, g, i, ok, n, err, None if st is None else bytes(st), ch)
            for g, i, ok, n, err, st, ch in rows
        ]

    # -- sync -----------------------------------------------------------------------

    def export_ledger(
        self, after: int, process_id: str | None = None
    ) -> tuple[int, builtins.list[RunRecord], builtins.list[ItemRecord]]:
        where, args = ("", []) if process_id is None else (" AND r.process_id = %s", [process_id])
        items_q = self._q(
            "SELECT r.id, i.grp, i.item, i.ok, i.attempts, i.error, i.state, i.changed "
            "FROM {items} i JOIN {runs} r ON r.seq = i.run WHERE i.changed > %s"
            + where
            + " ORDER BY i.changed, i.grp, i.item"
        )
        runs_q = self._q(
            f"SELECT {_RUN_COLS} FROM {{runs}} r WHERE (r.changed > %s OR r.seq IN "
            "(SELECT run FROM {items} WHERE changed > %s))" + where + " ORDER BY r.seq"
        )

        def go(conn: Conn) -> tuple[int, builtins.list[RunRecord], builtins.list[ItemRecord]]:
            # One snapshot: the clock, and every change committed up to it.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute(self._q("SELECT v FROM {ledger_clock} WHERE k = 1")).fetchone()
            assert row is not None
            if int(row[0]) <= after:
                return int(row[0]), [], []
            items = [
                ItemRecord(rid, g, i, ok, n, err, None if st is None else bytes(st), ch)
                for rid, g, i, ok, n, err, st, ch in conn.execute(items_q, [after, *args])
            ]
            runs = [_run_row(r) for r in conn.execute(runs_q, [after, after, *args])]
            return int(row[0]), runs, items

        return self._run("reading the item ledger", go, write=True)

    def import_ledger(
        self,
        runs: Sequence[RunRecord],
        items: Sequence[ItemRecord],
        source: str,
        mark: int,
    ) -> int:
        from ._pg_rows import lock_key

        best: dict[tuple[str, str, str], ItemRecord] = {}
        for it in items:
            key = (it.run_id, it.group, it.item_id)
            prev = best.get(key)
            if ledger_entry_wins(
                it.ok, it.attempts, None if prev is None else (prev.ok, prev.attempts)
            ):
                best[key] = it

        def go(conn: Conn) -> int:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (lock_key("ledger", self.store_id(), source),)
            )
            tick = self._tick(conn)
            written = 0
            upsert = self._q(_UPSERT_RUN)
            for run in runs:
                written += conn.execute(upsert, _run_values(run, tick)).rowcount
            if best:
                conn.execute(_TEMP)
                with conn.cursor() as cur:
                    with cur.copy(
                        "COPY pg_temp.ckptlite_ledger_import FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["text", "text", "text", "bool", "int4", "text", "bytea"])
                        for it in best.values():
                            copy.write_row(
                                (
                                    it.run_id,
                                    it.group,
                                    it.item_id,
                                    it.ok,
                                    it.attempts,
                                    it.error,
                                    it.state,
                                )
                            )
                    lost = cur.execute(
                        self._q(
                            "SELECT t.run_id FROM pg_temp.ckptlite_ledger_import t WHERE NOT "
                            "EXISTS (SELECT 1 FROM {runs} r WHERE r.id = t.run_id) LIMIT 1"
                        )
                    ).fetchone()
                    if lost is not None:
                        raise RunNotFoundError(f"no run {lost[0]!r}", run_id=lost[0])
                    written += cur.execute(self._q(_MERGE_ITEMS), (tick,)).rowcount
            conn.execute(self._q(_MARK), (source, mark))
            return written

        return self._run("importing the item ledger", go, write=True, idempotent=True)
