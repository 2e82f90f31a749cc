"""Runs and the work-item ledger in the local store (mixed into ``LocalBackend``).

Every write takes the next value of the ledger clock (``ledger_clock``), so sync
can copy what changed after a high-water mark; the first done-mark of an item
wins and failed items count their attempts.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from typing import Any

import apsw

from .. import _faults
from .._sqlite import Database, translate_errors
from ..errors import InvalidInputError, RunNotFoundError
from ..types import (
    ItemGroup,
    ItemMark,
    ItemRecord,
    RunCounts,
    RunRecord,
    WorkerInfo,
    WorkerRecord,
)
from ._local_schema import RUN_COLS as _RUN_COLS
from ._local_schema import row_to_run as _row_to_run
from .base import (
    build_item_groups,
    from_micros,
    join_newest,
    joined_group_size,
    ledger_entry_wins,
    pack_ids,
    to_micros,
)

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
            return self._insert_run(conn, run, run.key)

    def _insert_run(self, conn: apsw.Connection, run: RunRecord, key: str | None) -> RunRecord:
        if conn.execute("SELECT 1 FROM runs WHERE id=?", (run.id,)).fetchone():
            raise InvalidInputError(f"run {run.id} exists already", run_id=run.id)
        changed = self._tick(conn)
        progress = run.progress or (None, None)
        conn.execute(
            "INSERT INTO runs(id, process_id, status, started_at, updated_at, finished_at, "
            "error, progress_done, progress_total, changed, run_key) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
                key,
            ),
        )
        seq = conn.last_insert_rowid()
        return run.replace(seq=seq, changed=changed, key=key)

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

    def mark_items(
        self,
        run_id: str,
        marks: Sequence[ItemMark],
        *,
        closing: Sequence[tuple[str, int]] = (),
        worker_id: str | None = None,
        unmarked: Sequence[tuple[str, int, int]] = (),
    ) -> int:
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
            if closing:
                conn.executemany(
                    f"UPDATE run_claims SET done=1, worker=NULL, expires=NULL WHERE run={int(run)} "
                    "AND grp=? AND seg=? AND worker=? AND done=0",
                    [(g, seg, worker_id) for g, seg in closing],
                )
            if unmarked:
                conn.executemany(
                    f"UPDATE run_claims SET unmarked=? WHERE run={int(run)} "
                    "AND grp=? AND seg=? AND worker=? AND done=0",
                    [(n, g, seg, worker_id) for g, seg, n in unmarked],
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
                    run.key,
                    run.id,
                )
                if old is None:
                    conn.execute(
                        "INSERT INTO runs(process_id, status, started_at, updated_at, "
                        "finished_at, error, progress_done, progress_total, changed, run_key, "
                        "id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        values,
                    )
                elif old[0] < to_micros(run.updated_at):
                    conn.execute(
                        "UPDATE runs SET process_id=?, status=?, started_at=?, updated_at=?, "
                        "finished_at=?, error=?, progress_done=?, progress_total=?, changed=?, "
                        "run_key=coalesce(?, run_key) WHERE id=?",
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

    # -- runs shared by many workers ----------------------------------------------------

    def join_run(
        self, fresh: RunRecord, key: str | None, worker: WorkerInfo | None, *, force: bool
    ) -> tuple[RunRecord, str]:
        with self.db.write() as conn:
            sql = f"SELECT {_RUN_COLS} FROM runs WHERE process_id=?"
            args: builtins.list[Any] = [fresh.process_id]
            if key is not None:
                sql += " AND run_key=?"
                args.append(key)
            row = conn.execute(sql + " ORDER BY seq DESC LIMIT 1", args).fetchone()

            def resume(run: RunRecord) -> RunRecord:
                conn.execute(
                    "UPDATE runs SET status='running', error=NULL, finished_at=NULL, "
                    "updated_at=?, changed=? WHERE seq=?",
                    (to_micros(fresh.updated_at), self._tick(conn), run.seq),
                )
                got: Any = conn.execute(
                    f"SELECT {_RUN_COLS} FROM runs WHERE seq=?", (run.seq,)
                ).fetchone()
                return _row_to_run(got)

            run, how = join_newest(
                None if row is None else _row_to_run(row),
                keyed=key is not None,
                force=force,
                create=lambda: self._insert_run(conn, fresh, key),
                resume=resume,
            )
            if how != "reuse" and worker is not None:
                self._add_worker(conn, run.seq, worker, reset=how == "resume")
            return run, how

    def _add_worker(self, conn: apsw.Connection, run: int, w: WorkerInfo, *, reset: bool) -> None:
        if reset:
            for table in ("run_workers", "run_groups", "run_claims"):
                conn.execute(f"DELETE FROM {table} WHERE run=?", (run,))
        now = _now_us()
        conn.execute(
            "INSERT OR REPLACE INTO run_workers(run, worker, host, pid, node, started_at, "
            "beat_at, expires, lease, gone, error) VALUES (?,?,?,?,?,?,?,?,?,0,NULL)",
            (run, w.worker_id, w.host, w.pid, w.node, now, now, now + _us(w.lease), w.lease),
        )

    def add_worker(self, run_id: str, worker: WorkerInfo, *, reset: bool = False) -> None:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            self._add_worker(conn, run, worker, reset=reset)

    def _others_live(self, conn: apsw.Connection, run: int, worker_id: str, now: int) -> int:
        row: Any = conn.execute(
            "SELECT count(*) FROM run_workers WHERE run=? AND worker!=? AND gone=0 AND expires>?",
            (run, worker_id, now),
        ).fetchone()
        return int(row[0])

    def heartbeat(self, run_id: str, worker_id: str) -> int:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            if run is None:
                return 0
            now = _now_us()
            conn.execute(
                "UPDATE run_workers SET beat_at=?, expires=?+CAST(lease*1000000 AS INTEGER) "
                "WHERE run=? AND worker=? AND gone=0",
                (now, now, run, worker_id),
            )
            conn.execute(
                "UPDATE run_claims SET expires=?+CAST(lease*1000000 AS INTEGER) "
                "WHERE run=? AND worker=? AND done=0",
                (now, run, worker_id),
            )
            return self._others_live(conn, run, worker_id, now)

    def reap_workers(self, run_id: str, worker_ids: Sequence[str]) -> None:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            for w in worker_ids:
                conn.execute("UPDATE run_workers SET expires=0 WHERE run=? AND worker=?", (run, w))
                conn.execute(
                    "UPDATE run_claims SET worker=NULL, expires=NULL "
                    "WHERE run=? AND worker=? AND done=0",
                    (run, w),
                )

    def list_workers(self, run_id: str) -> builtins.list[WorkerRecord]:
        conn = self.db.read()
        now = _now_us()
        with translate_errors("reading a run's workers"):
            run = self._run_seq(conn, run_id)
            rows: builtins.list[Any] = conn.execute(
                "SELECT worker, host, pid, node, started_at, beat_at, expires, gone, error "
                "FROM run_workers WHERE run=? ORDER BY started_at, worker",
                (run,),
            ).fetchall()
        return [
            WorkerRecord(
                run_id,
                w,
                host,
                pid,
                node,
                from_micros(st),
                from_micros(beat),
                not left and exp > now,
                bool(left),
                err,
            )
            for w, host, pid, node, st, beat, exp, left, err in rows
        ]

    def register_group(
        self,
        run_id: str,
        group: str,
        *,
        total: int,
        seg_size: int,
        fingerprint: str,
        worker_id: str,
        ids: Sequence[str] | None = None,
    ) -> tuple[int, int]:
        packed = None if ids is None else pack_ids(ids)  # before the write lock is taken
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            others = self._others_live(conn, run, worker_id, _now_us())
            row: Any = conn.execute(
                "SELECT seg_size, fingerprint FROM run_groups WHERE run=? AND grp=?", (run, group)
            ).fetchone()
            size = joined_group_size(group, row, fingerprint, others)
            if size is not None:
                return size, others
            conn.execute("DELETE FROM run_claims WHERE run=? AND grp=? AND seg>=0", (run, group))
            conn.execute(
                "INSERT OR REPLACE INTO run_groups(run, grp, total, seg_size, fingerprint, ids) "
                "VALUES (?,?,?,?,?,?)",
                (run, group, total, seg_size, fingerprint, packed),
            )
            nsegs = -(-total // seg_size)
            if nsegs:
                conn.execute(
                    "WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x+1 FROM s WHERE x+1<?) "
                    "INSERT INTO run_claims(run, grp, seg, done) SELECT ?, ?, x, 0 FROM s",
                    (nsegs, run, group),
                )
            return seg_size, others

    def item_groups(self, run_id: str, group: str | None = None) -> builtins.list[ItemGroup]:
        conn = self.db.read()
        with translate_errors("reading a run's item groups"):
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            where, args = ("run=?", [run]) if group is None else ("run=? AND grp=?", [run, group])
            rows: builtins.list[Any] = conn.execute(
                f"SELECT grp, ids, seg_size FROM run_groups WHERE {where} ORDER BY grp", args
            ).fetchall()
            held: Any = conn.execute(
                f"SELECT grp, seg FROM run_claims WHERE {where} AND seg>=0 AND done=0 "
                "AND worker IS NOT NULL AND expires>?",
                [*args, _now_us()],
            ).fetchall()
        return build_item_groups(rows, held)

    def claim_segments(
        self, run_id: str, group: str, worker_id: str, count: int, lease: float
    ) -> builtins.list[tuple[int, bool]]:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            now = _now_us()
            # Taken over: held before (a lease is set by the first claim, and kept).
            rows: builtins.list[Any] = conn.execute(
                "SELECT seg, lease IS NOT NULL FROM run_claims WHERE run=? AND grp=? AND seg>=0 "
                "AND done=0 AND (worker IS NULL OR expires<?) ORDER BY seg LIMIT ?",
                (run, group, now, count),
            ).fetchall()
            conn.executemany(
                "UPDATE run_claims SET worker=?, expires=?, lease=?, unmarked=NULL "
                "WHERE run=? AND grp=? AND seg=?",
                [(worker_id, now + _us(lease), lease, run, group, seg) for seg, _ in rows],
            )
            _faults.point("claim.in_transaction")
        return [(int(seg), bool(taken)) for seg, taken in rows]

    def group_busy(self, run_id: str, group: str, worker_id: str) -> bool:
        conn = self.db.read()
        with translate_errors("reading claims"):
            run = self._run_seq(conn, run_id)
            row = conn.execute(
                "SELECT 1 FROM run_claims WHERE run=? AND grp=? AND seg>=0 AND done=0 "
                "AND (worker IS NULL OR worker!=?) LIMIT 1",
                (run, group, worker_id),
            ).fetchone()
        return row is not None

    def release_segments(
        self, run_id: str, worker_id: str, group: str | None = None, segs: Sequence[int] = ()
    ) -> None:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            sql = (
                "UPDATE run_claims SET worker=NULL, expires=NULL "
                "WHERE run=? AND worker=? AND done=0"
            )
            if group is None:
                conn.execute(sql, (run, worker_id))
            else:
                conn.executemany(
                    sql + " AND grp=? AND seg=?", [(run, worker_id, group, s) for s in segs]
                )

    def marks_among(
        self, run_id: str, group: str, ids: Sequence[str]
    ) -> tuple[set[str], dict[str, int]]:
        conn = self.db.read()
        done: set[str] = set()
        failed: dict[str, int] = {}
        with translate_errors("reading the item ledger"):
            run = self._run_seq(conn, run_id)
            sql = (
                f"SELECT item, ok, attempts FROM items WHERE run={int(run or 0)} "
                "AND grp=? AND item IN ({})"
            )
            for i in range(0, len(ids), 500):
                part = list(ids[i : i + 500])
                for item, ok, attempts in conn.execute(
                    sql.format(",".join("?" * len(part))), [group, *part]
                ):
                    if ok:
                        done.add(item)
                    else:
                        failed[item] = attempts
        return done, failed

    def claim_stage(
        self, run_id: str, name: str, worker_id: str, lease: float, *, seg: int = -1
    ) -> str:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            now = _now_us()
            row: Any = conn.execute(
                "SELECT worker, expires, done FROM run_claims WHERE run=? AND grp=? AND seg=?",
                (run, name, seg),
            ).fetchone()
            if row is not None and row[2]:
                return "done"
            if row is not None and row[0] not in (None, worker_id) and row[1] > now:
                return "held"
            conn.execute(
                "INSERT OR REPLACE INTO run_claims(run, grp, seg, worker, expires, lease, done) "
                "VALUES (?,?,?,?,?,?,0)",
                (run, name, seg, worker_id, now + _us(lease), lease),
            )
            return "claimed"

    def finish_stage(self, run_id: str, name: str, *, seg: int = -1) -> None:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            conn.execute(
                "UPDATE run_claims SET done=1, worker=NULL, expires=NULL "
                "WHERE run=? AND grp=? AND seg=?",
                (run, name, seg),
            )

    def _counts(
        self, conn: apsw.Connection, run: int, worker_id: str, *, done_too: bool = True
    ) -> RunCounts:
        now = _now_us()
        done = 0
        if done_too:  # a range scan of the run's whole ledger: not when a worker leaves
            got: Any = conn.execute(
                "SELECT count(*) FROM items WHERE run=? AND ok=1", (run,)
            ).fetchone()
            done = int(got[0])
        nfailed: Any = conn.execute(
            "SELECT count(*) FROM items WHERE run=?1 AND ok=0 AND grp IN "
            "(SELECT grp FROM run_groups WHERE run=?1)",
            (run,),
        ).fetchone()
        failed = int(nfailed[0])
        total: Any = conn.execute(
            "SELECT coalesce(sum(total),0) FROM run_groups WHERE run=?", (run,)
        ).fetchone()
        claimed: Any = conn.execute(
            "SELECT coalesce(sum(coalesce(c.unmarked, "
            "min(g.seg_size, g.total - c.seg*g.seg_size))),0) "
            "FROM run_claims c JOIN run_groups g ON g.run=c.run AND g.grp=c.grp "
            "WHERE c.run=? AND c.seg>=0 AND c.done=0 AND c.worker IS NOT NULL AND c.expires>?",
            (run, now),
        ).fetchone()
        open_work: Any = conn.execute(
            "SELECT count(*) FROM run_claims WHERE run=? AND done=0", (run,)
        ).fetchone()
        live: Any = conn.execute(
            "SELECT count(*) FROM run_workers WHERE run=? AND gone=0 AND expires>?", (run, now)
        ).fetchone()
        errors = tuple(
            r[0]
            for r in conn.execute(
                "SELECT error FROM run_workers WHERE run=? AND error IS NOT NULL "
                "ORDER BY started_at",
                (run,),
            )
        )
        pending = max(0, int(total[0]) - int(done) - int(failed) - int(claimed[0]))
        return RunCounts(
            int(done),
            int(failed),
            int(claimed[0]),
            pending,
            int(open_work[0]),
            int(live[0]),
            errors,
            self._others_live(conn, run, worker_id, now),
        )

    def leave_run(self, run_id: str, worker_id: str, error: str | None) -> RunCounts:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            now = _now_us()
            conn.execute(
                "UPDATE run_workers SET gone=1, error=?, expires=?, beat_at=? "
                "WHERE run=? AND worker=?",
                (error, now, now, run, worker_id),
            )
            conn.execute(
                "UPDATE run_claims SET worker=NULL, expires=NULL "
                "WHERE run=? AND worker=? AND done=0",
                (run, worker_id),
            )
            return self._counts(conn, run, worker_id, done_too=False)

    def run_counts(self, run_id: str) -> RunCounts:
        conn = self.db.read()
        with translate_errors("reading a run's counts"):
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            return self._counts(conn, run, "")


def _now_us() -> int:
    return time.time_ns() // 1000


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)
