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

from .. import _faults
from ..errors import InvalidInputError, RunNotFoundError
from ..types import (
    ItemGroup,
    ItemMark,
    ItemRecord,
    RunCounts,
    RunRecord,
    RunStatus,
    WorkerInfo,
    WorkerRecord,
)
from .base import build_item_groups, join_newest, joined_group_size, ledger_entry_wins, pack_ids

if TYPE_CHECKING:
    from psycopg import sql

    from ._pg_conn import Conn

__all__ = ["LedgerMixin"]

T = TypeVar("T")

_RUN_COLS = (
    "seq, id, process_id, status, started_at, updated_at, finished_at, error, "
    "progress_done, progress_total, changed, run_key"
)
_UPSERT_RUN = """INSERT INTO {runs} AS o (id, process_id, status, started_at, updated_at,
    finished_at, error, progress_done, progress_total, changed, run_key)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET process_id = EXCLUDED.process_id, status = EXCLUDED.status,
    started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at,
    finished_at = EXCLUDED.finished_at, error = EXCLUDED.error,
    progress_done = EXCLUDED.progress_done, progress_total = EXCLUDED.progress_total,
    changed = EXCLUDED.changed, run_key = coalesce(EXCLUDED.run_key, o.run_key)
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
    seq, rid, pid, status, started, updated, finished, error, pd, pt, changed, key = row
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
        key=key,
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
        run.key,
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
            tx: bool = True,
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
        return self._run("creating a run", lambda c: self._insert_run(c, run, run.key), write=True)

    def _insert_run(self, conn: Conn, run: RunRecord, key: str | None) -> RunRecord:
        q = self._q(
            "INSERT INTO {runs} (id, process_id, status, started_at, updated_at, finished_at, "
            "error, progress_done, progress_total, changed, run_key) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING "
            f"RETURNING {_RUN_COLS}"
        )
        row = conn.execute(q, _run_values(run.replace(key=key), self._tick(conn))).fetchone()
        if row is None:
            raise InvalidInputError(f"run {run.id} exists already", run_id=run.id)
        return _run_row(row)

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

    def mark_items(
        self,
        run_id: str,
        marks: Sequence[ItemMark],
        *,
        closing: Sequence[tuple[str, int]] = (),
        worker_id: str | None = None,
        unmarked: Sequence[tuple[str, int, int]] = (),
    ) -> int:
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
            if closing:
                with conn.cursor() as cur:
                    cur.executemany(
                        self._q(
                            "UPDATE {run_claims} SET done = true, worker = NULL, expires = NULL "
                            "WHERE run = %s AND grp = %s AND seg = %s AND worker = %s AND NOT done"
                        ),
                        [(run, g, seg, worker_id) for g, seg in closing],
                    )
            if unmarked:
                with conn.cursor() as cur:
                    cur.executemany(
                        self._q(
                            "UPDATE {run_claims} SET unmarked = %s WHERE run = %s AND grp = %s "
                            "AND seg = %s AND worker = %s AND NOT done"
                        ),
                        [(n, run, g, seg, worker_id) for g, seg, n in unmarked],
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

    # -- runs shared by many workers ----------------------------------------------------

    def join_run(
        self, fresh: RunRecord, key: str | None, worker: WorkerInfo | None, *, force: bool
    ) -> tuple[RunRecord, str]:
        from ._pg_rows import lock_key

        text = f"SELECT {_RUN_COLS} FROM {{runs}} WHERE process_id = %s"
        args: builtins.list[Any] = [fresh.process_id]
        if key is not None:
            text += " AND run_key = %s"
            args.append(key)
        find = self._q(text + " ORDER BY seq DESC LIMIT 1")
        resume = self._q(
            "UPDATE {runs} SET status = 'running', error = NULL, finished_at = NULL, "
            f"updated_at = %s, changed = %s WHERE seq = %s RETURNING {_RUN_COLS}"
        )

        def go(conn: Conn) -> tuple[RunRecord, str]:
            # One lock per process id: two workers starting at once see each other's run.
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s)",
                (lock_key("run", self.store_id(), fresh.process_id),),
            )
            row = conn.execute(find, args).fetchone()

            def again(run: RunRecord) -> RunRecord:
                got = conn.execute(resume, (fresh.updated_at, self._tick(conn), run.seq)).fetchone()
                assert got is not None
                return _run_row(got)

            run, how = join_newest(
                None if row is None else _run_row(row),
                keyed=key is not None,
                force=force,
                create=lambda: self._insert_run(conn, fresh, key),
                resume=again,
            )
            if how != "reuse" and worker is not None:
                self._add_worker(conn, run.seq, worker, reset=how == "resume")
            return run, how

        return self._run("joining a run", go, write=True)

    def _add_worker(self, conn: Conn, run: int, w: WorkerInfo, *, reset: bool) -> None:
        if reset:
            for table in ("run_workers", "run_groups", "run_claims"):
                conn.execute(self._q(f"DELETE FROM {{{table}}} WHERE run = %s"), (run,))
        conn.execute(
            self._q(
                "INSERT INTO {run_workers} (run, worker, host, pid, node, started_at, beat_at, "
                "expires, lease) VALUES (%s, %s, %s, %s, %s, clock_timestamp(), "
                "clock_timestamp(), clock_timestamp() + make_interval(secs => %s), %s) "
                "ON CONFLICT (run, worker) DO UPDATE SET gone = false, error = NULL, "
                "beat_at = EXCLUDED.beat_at, expires = EXCLUDED.expires"
            ),
            (run, w.worker_id, w.host, w.pid, w.node, w.lease, w.lease),
        )

    def add_worker(self, run_id: str, worker: WorkerInfo, *, reset: bool = False) -> None:
        def go(conn: Conn) -> None:
            self._add_worker(conn, self._run_seq(conn, run_id), worker, reset=reset)

        self._run("joining a run", go, write=True)

    def _others_live(self, conn: Conn, run: int, worker_id: str) -> int:
        row = conn.execute(
            self._q(
                "SELECT count(*) FROM {run_workers} WHERE run = %s AND worker <> %s "
                "AND NOT gone AND expires > clock_timestamp()"
            ),
            (run, worker_id),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def heartbeat(self, run_id: str, worker_id: str) -> int:
        def go(conn: Conn) -> int:
            run = self._run_seq(conn, run_id)
            conn.execute(
                self._q(
                    "UPDATE {run_workers} SET beat_at = clock_timestamp(), expires = "
                    "clock_timestamp() + make_interval(secs => lease) "
                    "WHERE run = %s AND worker = %s AND NOT gone"
                ),
                (run, worker_id),
            )
            conn.execute(
                self._q(
                    "UPDATE {run_claims} SET expires = clock_timestamp() + "
                    "make_interval(secs => lease) WHERE run = %s AND worker = %s AND NOT done"
                ),
                (run, worker_id),
            )
            return self._others_live(conn, run, worker_id)

        return self._run("renewing leases", go, write=True, idempotent=True)

    def reap_workers(self, run_id: str, worker_ids: Sequence[str]) -> None:
        def go(conn: Conn) -> None:
            run = self._run_seq(conn, run_id)
            ids = list(worker_ids)
            conn.execute(
                self._q(
                    "UPDATE {run_workers} SET expires = '-infinity' "
                    "WHERE run = %s AND worker = ANY(%s)"
                ),
                (run, ids),
            )
            conn.execute(
                self._q(
                    "UPDATE {run_claims} SET worker = NULL, expires = NULL "
                    "WHERE run = %s AND worker = ANY(%s) AND NOT done"
                ),
                (run, ids),
            )

        self._run("expiring dead workers", go, write=True, idempotent=True)

    def list_workers(self, run_id: str) -> builtins.list[WorkerRecord]:
        q = self._q(
            "SELECT worker, host, pid, node, started_at, beat_at, "
            "NOT gone AND expires > clock_timestamp(), gone, error FROM {run_workers} "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %s) ORDER BY started_at, worker"
        )
        rows = self._run("reading a run's workers", lambda c: c.execute(q, (run_id,)).fetchall())
        return [
            WorkerRecord(
                run_id, w, host, pid, node, st.astimezone(UTC), beat.astimezone(UTC), live, gone, e
            )
            for w, host, pid, node, st, beat, live, gone, e in rows
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
        packed = None if ids is None else pack_ids(ids)  # before the transaction

        def go(conn: Conn) -> tuple[int, int]:
            run = self._run_seq(conn, run_id)
            # Registering workers of one group queue here (a short transaction).
            conn.execute(self._q("SELECT 1 FROM {runs} WHERE seq = %s FOR UPDATE"), (run,))
            others = self._others_live(conn, run, worker_id)
            row = conn.execute(
                self._q(
                    "SELECT seg_size, fingerprint FROM {run_groups} WHERE run = %s AND grp = %s"
                ),
                (run, group),
            ).fetchone()
            size = joined_group_size(group, row, fingerprint, others)
            if size is not None:
                return size, others
            conn.execute(
                self._q("DELETE FROM {run_claims} WHERE run = %s AND grp = %s AND seg >= 0"),
                (run, group),
            )
            conn.execute(
                self._q(
                    "INSERT INTO {run_groups} (run, grp, total, seg_size, fingerprint, ids) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run, grp) DO UPDATE SET "
                    "total = EXCLUDED.total, seg_size = EXCLUDED.seg_size, "
                    "fingerprint = EXCLUDED.fingerprint, ids = EXCLUDED.ids"
                ),
                (run, group, total, seg_size, fingerprint, packed),
            )
            conn.execute(
                self._q(
                    "INSERT INTO {run_claims} (run, grp, seg) "
                    "SELECT %s, %s, s FROM generate_series(0, %s - 1) AS s"
                ),
                (run, group, -(-total // seg_size)),
            )
            return seg_size, others

        return self._run("registering an item group", go, write=True)

    def item_groups(self, run_id: str, group: str | None = None) -> builtins.list[ItemGroup]:
        where = "run = %s" if group is None else "run = %s AND grp = %s"
        groups_q = self._q(
            f"SELECT grp, ids, seg_size FROM {{run_groups}} WHERE {where} ORDER BY grp"
        )
        held_q = self._q(
            f"SELECT grp, seg FROM {{run_claims}} WHERE {where} AND seg >= 0 AND NOT done "
            "AND worker IS NOT NULL AND expires > clock_timestamp()"
        )

        def go(conn: Conn) -> tuple[builtins.list[Any], builtins.list[Any]]:
            args = [self._run_seq(conn, run_id)] + ([] if group is None else [group])
            return conn.execute(groups_q, args).fetchall(), conn.execute(held_q, args).fetchall()

        rows, claims = self._run("reading a run's item groups", go)
        return build_item_groups(rows, claims)

    def claim_segments(
        self, run_id: str, group: str, worker_id: str, count: int, lease: float
    ) -> builtins.list[tuple[int, bool]]:
        # procrastinate's claim: one statement picks free rows, skipping rows another
        # transaction holds (never waiting for it), and stamps them with a lease set
        # by the database's clock. It is the item path of every worker: one round trip
        # (autocommit makes the statement atomic alone; the run's seq is a subquery).
        # Taken over: held before (a lease is set by the first claim, and kept).
        q = self._q(
            "UPDATE {run_claims} c SET worker = %(w)s, lease = %(l)s, unmarked = NULL, "
            "expires = clock_timestamp() + make_interval(secs => %(l)s) "
            "FROM (SELECT run, grp, seg, lease IS NOT NULL AS taken FROM {run_claims} "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %(r)s) AND grp = %(g)s "
            "AND seg >= 0 AND NOT done AND (worker IS NULL OR expires < clock_timestamp()) "
            "ORDER BY seg LIMIT %(n)s FOR UPDATE SKIP LOCKED) f "
            "WHERE c.run = f.run AND c.grp = f.grp AND c.seg = f.seg RETURNING c.seg, f.taken"
        )
        args = {"w": worker_id, "l": lease, "r": run_id, "g": group, "n": count}
        # The crash point sits between the claim and its COMMIT: armed, keep a transaction.
        tx = _faults.armed("claim.in_transaction")

        def go(conn: Conn) -> builtins.list[tuple[int, bool]]:
            rows = conn.execute(q, args, prepare=True).fetchall()  # planned once
            _faults.point("claim.in_transaction")
            return sorted((int(seg), bool(taken)) for seg, taken in rows)

        return self._run("claiming work items", go, write=True, tx=tx)

    def group_busy(self, run_id: str, group: str, worker_id: str) -> bool:
        q = self._q(
            "SELECT 1 FROM {run_claims} WHERE run = (SELECT seq FROM {runs} WHERE id = %s) "
            "AND grp = %s AND seg >= 0 AND NOT done AND worker IS DISTINCT FROM %s LIMIT 1"
        )
        row = self._run(
            "reading claims", lambda c: c.execute(q, (run_id, group, worker_id)).fetchone()
        )
        return row is not None

    def release_segments(
        self, run_id: str, worker_id: str, group: str | None = None, segs: Sequence[int] = ()
    ) -> None:
        text = (
            "UPDATE {run_claims} SET worker = NULL, expires = NULL "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %s) AND worker = %s AND NOT done"
        )
        args: builtins.list[Any] = [run_id, worker_id]
        if group is not None:
            text += " AND grp = %s AND seg = ANY(%s)"
            args += [group, list(segs)]
        q = self._q(text)
        self._run("releasing claims", lambda c: c.execute(q, args), write=True, idempotent=True)

    def marks_among(
        self, run_id: str, group: str, ids: Sequence[str]
    ) -> tuple[set[str], dict[str, int]]:
        q = self._q(
            "SELECT item, ok, attempts FROM {items} "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %s) AND grp = %s AND item = ANY(%s)"
        )
        rows = self._run(
            "reading the item ledger", lambda c: c.execute(q, (run_id, group, list(ids))).fetchall()
        )
        return {r[0] for r in rows if r[1]}, {r[0]: r[2] for r in rows if not r[1]}

    def claim_stage(
        self, run_id: str, name: str, worker_id: str, lease: float, *, seg: int = -1
    ) -> str:
        def go(conn: Conn) -> str:
            run = self._run_seq(conn, run_id)
            conn.execute(
                self._q(
                    "INSERT INTO {run_claims} (run, grp, seg) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING"
                ),
                (run, name, seg),
            )
            row = conn.execute(
                self._q(
                    "SELECT worker, expires > clock_timestamp(), done FROM {run_claims} "
                    "WHERE run = %s AND grp = %s AND seg = %s FOR UPDATE"
                ),
                (run, name, seg),
            ).fetchone()
            assert row is not None
            if row[2]:
                return "done"
            if row[0] not in (None, worker_id) and row[1]:
                return "held"
            conn.execute(
                self._q(
                    "UPDATE {run_claims} SET worker = %s, lease = %s, "
                    "expires = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE run = %s AND grp = %s AND seg = %s"
                ),
                (worker_id, lease, lease, run, name, seg),
            )
            return "claimed"

        return self._run("claiming a stage", go, write=True)

    def finish_stage(self, run_id: str, name: str, *, seg: int = -1) -> None:
        q = self._q(
            "UPDATE {run_claims} SET done = true, worker = NULL, expires = NULL "
            "WHERE run = (SELECT seq FROM {runs} WHERE id = %s) AND grp = %s AND seg = %s"
        )
        self._run(
            "finishing a stage",
            lambda c: c.execute(q, (run_id, name, seg)),
            write=True,
            idempotent=True,
        )

    def _counts(self, conn: Conn, run: int, worker_id: str, *, done_too: bool = True) -> RunCounts:
        row = conn.execute(
            self._q(
                "SELECT "
                "(SELECT count(*) FROM {items} WHERE run = %(r)s AND ok AND %(d)s), "
                "(SELECT count(*) FROM {items} WHERE run = %(r)s AND NOT ok AND grp IN "
                " (SELECT grp FROM {run_groups} WHERE run = %(r)s)), "
                "(SELECT coalesce(sum(total), 0) FROM {run_groups} WHERE run = %(r)s), "
                "(SELECT coalesce(sum(coalesce(c.unmarked, "
                " LEAST(g.seg_size, g.total - c.seg * g.seg_size))), 0) "
                " FROM {run_claims} c JOIN {run_groups} g ON g.run = c.run AND g.grp = c.grp "
                " WHERE c.run = %(r)s AND c.seg >= 0 AND NOT c.done AND c.worker IS NOT NULL "
                " AND c.expires > clock_timestamp()), "
                "(SELECT count(*) FROM {run_claims} WHERE run = %(r)s AND NOT done), "
                "(SELECT count(*) FROM {run_workers} WHERE run = %(r)s AND NOT gone "
                " AND expires > clock_timestamp()), "
                "(SELECT coalesce(array_agg(error ORDER BY started_at), '{{}}') "
                " FROM {run_workers} WHERE run = %(r)s AND error IS NOT NULL)"
            ),
            {"r": run, "d": done_too},
        ).fetchone()
        assert row is not None
        done, failed, total, claimed, open_work, live, errors = row
        return RunCounts(
            int(done),
            int(failed),
            int(claimed),
            max(0, int(total) - int(done) - int(failed) - int(claimed)),
            int(open_work),
            int(live),
            tuple(errors),
            self._others_live(conn, run, worker_id),
        )

    def leave_run(self, run_id: str, worker_id: str, error: str | None) -> RunCounts:
        def go(conn: Conn) -> RunCounts:
            run = self._run_seq(conn, run_id)
            # Leaving workers queue on the run's row: the last one out sees the others gone.
            conn.execute(self._q("SELECT 1 FROM {runs} WHERE seq = %s FOR UPDATE"), (run,))
            conn.execute(
                self._q(
                    "UPDATE {run_workers} SET gone = true, error = %s, "
                    "beat_at = clock_timestamp(), expires = clock_timestamp() "
                    "WHERE run = %s AND worker = %s"
                ),
                (error, run, worker_id),
            )
            conn.execute(
                self._q(
                    "UPDATE {run_claims} SET worker = NULL, expires = NULL "
                    "WHERE run = %s AND worker = %s AND NOT done"
                ),
                (run, worker_id),
            )
            return self._counts(conn, run, worker_id, done_too=False)

        return self._run("leaving a run", go, write=True, idempotent=True)

    def run_counts(self, run_id: str) -> RunCounts:
        def go(conn: Conn) -> RunCounts:
            return self._counts(conn, self._run_seq(conn, run_id), "")

        return self._run("reading a run's counts", go)
