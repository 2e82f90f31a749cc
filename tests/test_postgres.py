"""The postgres backend against a real server: the legacy table, its rows, connections, fork."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from ckptlite import Level, Status
from ckptlite.errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
    MigrationError,
    StoreIOError,
)
from ckptlite.types import StoredRecord

if os.environ.get("CKPTLITE_REQUIRE_PG") == "1":
    import psycopg  # CI: the postgres extra must be installed, never skipped
else:
    psycopg = pytest.importorskip("psycopg")

# LEGACY_FORMATS.md §4, exactly as the old schema.py ran it.
LEGACY_DDL = """
CREATE TABLE IF NOT EXISTS pipeline_checkpoints (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    checkpoint_id VARCHAR(255) UNIQUE NOT NULL,
    level VARCHAR(50) NOT NULL CHECK (level IN ('pipeline', 'phase', 'step', 'substep')),
    parent_id VARCHAR(255),
    processor_name VARCHAR(255) NOT NULL,
    data_summary JSONB NOT NULL DEFAULT '{}',
    file_path TEXT NOT NULL,
    file_size_bytes BIGINT NOT NULL,
    compression_type VARCHAR(50),
    status VARCHAR(50) NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'valid', 'corrupted', 'deleted')),
    validation_checksum VARCHAR(64),
    validation_result JSONB,
    error_message TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (parent_id) REFERENCES pipeline_checkpoints(checkpoint_id) ON DELETE CASCADE
);
CREATE INDEX idx_pipeline_checkpoints_processor ON pipeline_checkpoints(processor_name);
CREATE INDEX idx_pipeline_checkpoints_level ON pipeline_checkpoints(level);
CREATE INDEX idx_pipeline_checkpoints_status ON pipeline_checkpoints(status);
CREATE INDEX idx_pipeline_checkpoints_created ON pipeline_checkpoints(created_at);
"""  # noqa: E501

LEGACY_LATEST = (
    "SELECT checkpoint_id FROM pipeline_checkpoints WHERE processor_name=%s AND level=%s "
    "AND status='valid' ORDER BY created_at DESC LIMIT 1"
)


def schema_of(dsn: str) -> str:
    m = re.search(r"search_path%3D(\w+)", dsn)
    assert m
    return m.group(1)


def describe(conn: Any, schema: str, table: str = "pipeline_checkpoints") -> dict[str, Any]:
    """The table as the catalog sees it (schema names blanked out)."""
    rel = psycopg.sql.Identifier(schema, table).as_string(conn)
    cols = conn.execute(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema=%s AND table_name=%s "
        "ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    cons = conn.execute(
        "SELECT contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass ORDER BY 1, 2",
        (rel,),
    ).fetchall()
    idx = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname=%s AND tablename=%s "
        "ORDER BY indexname",
        (schema, table),
    ).fetchall()
    return {
        "columns": cols,
        "constraints": [(t, d.replace(f"{schema}.", "S.")) for t, d in cons],
        "indexes": [(n, d.replace(f"{schema}.", "S.")) for n, d in idx],
    }


def server_dsn(schema_dsn: str) -> str:
    """The test server's DSN, without the pg_schema fixture's search_path option."""
    return re.sub(r"[?&]options=-csearch_path%3D\w+$", "", schema_dsn)


@pytest.fixture
def admin(pg_schema: str) -> Iterator[Any]:
    """An autocommit connection to the test database (outside ckptlite)."""
    with psycopg.connect(server_dsn(pg_schema), autocommit=True) as conn:
        yield conn


@pytest.fixture
def other_schema(admin: Any) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def open_pg(dsn: str, **kw: Any) -> ckptlite.CheckpointManager:
    return ckptlite.open(dsn, durability="none", chunk_size=64 * 1024, **kw)


def legacy_insert(conn: Any, cid: str, processor: str, status: str, age_days: int = 1) -> None:
    """What the old schema.py's create_checkpoint + update_checkpoint_status did."""
    conn.execute(
        "INSERT INTO pipeline_checkpoints (checkpoint_id, level, parent_id, processor_name, "
        "data_summary, file_path, file_size_bytes, compression_type, status, created_at) "
        "VALUES (%s, 'phase', NULL, %s, %s, %s, 1234, 'gzip', 'created', now() - %s::interval)",
        (
            cid,
            processor,
            psycopg.types.json.Jsonb({"rows": 10}),
            f"/data/{cid}.pkl",
            f"{age_days} days",
        ),
    )
    conn.execute(
        "UPDATE pipeline_checkpoints SET status=%s, updated_at=now() WHERE checkpoint_id=%s",
        (status, cid),
    )


def test_creates_the_legacy_table_with_its_exact_ddl(
    pg_schema: str, admin: Any, other_schema: str
) -> None:
    with open_pg(pg_schema) as mgr:
        mgr.save("p", 1)
    with psycopg.connect(server_dsn(pg_schema), autocommit=True) as ref:
        ref.execute(f'SET search_path TO "{other_schema}"')
        ref.execute(LEGACY_DDL)
    made = describe(admin, schema_of(pg_schema))
    assert made == describe(admin, other_schema)
    assert {n for n, _ in made["indexes"]} >= {
        "idx_pipeline_checkpoints_processor",
        "idx_pipeline_checkpoints_created",
    }


def test_existing_table_and_its_rows_are_left_untouched(
    pg_schema: str, admin: Any, tmp_path: Path
) -> None:
    schema = schema_of(pg_schema)
    admin.execute(f'SET search_path TO "{schema}"')
    admin.execute(LEGACY_DDL)
    admin.execute(
        "CREATE TABLE processing_steps (id SERIAL PRIMARY KEY, last_checkpoint_id VARCHAR(255) "
        "REFERENCES pipeline_checkpoints(checkpoint_id))"
    )
    admin.execute(
        "CREATE VIEW checkpoint_summary AS SELECT level, processor_name, count(*) AS n, "
        "count(*) FILTER (WHERE status='valid') AS valid, max(created_at) AS newest "
        "FROM pipeline_checkpoints GROUP BY level, processor_name"
    )
    for i, status in enumerate(("valid", "corrupted", "created")):
        legacy_insert(admin, f"chk_phase_20250101_12000{i}_abcd123{i}", "geo", status, 3 - i)
    before_shape = describe(admin, schema)
    before_rows = admin.execute("SELECT * FROM pipeline_checkpoints ORDER BY id").fetchall()

    with open_pg(pg_schema) as mgr:
        root = mgr.save("geo", {"a": np.arange(100_000)}, level=Level.PIPELINE)
        kid = mgr.save("geo", "tile", parent=root, level=Level.STAGE, name="resample")
        assert {c.id for c in mgr.list()} == {root.id, kid.id}  # legacy rows are not listed
        assert mgr.latest("geo", level=Level.STAGE) == kid
        assert mgr.stats()["legacy_rows"] == 3 and mgr.stats()["checkpoints"] == 2
        assert mgr.verify(full=True).ok and mgr.gc().chunks == ()
        for legacy_id in ("chk_phase_20250101_120000_abcd1230",):
            assert not mgr.exists(legacy_id)
            with pytest.raises(CheckpointNotFoundError):
                mgr.get(legacy_id)
            with pytest.raises(CheckpointNotFoundError):
                mgr.delete(legacy_id)
            with pytest.raises(CheckpointNotFoundError):
                mgr.backend.set_status(legacy_id, Status.ARCHIVED)
            # A legacy id is never reused by ckptlite.
            rec = mgr.backend.get_record(kid.id)
            clash = StoredRecord(
                rec.checkpoint.replace(id=legacy_id), rec.payload, rec.manifest, rec.digests
            )
            with pytest.raises(InvalidInputError):
                mgr.backend.commit(clash)
        # A checkpoint another table still points at cannot be deleted (nothing is).
        admin.execute("INSERT INTO processing_steps (last_checkpoint_id) VALUES (%s)", (kid.id,))
        with pytest.raises(InvalidInputError):
            mgr.delete(root.id)
        assert mgr.exists(root.id) and mgr.exists(kid.id)
        admin.execute("DELETE FROM processing_steps")
        # Sync both ways with the legacy rows present: only ckptlite's rows travel.
        out = ckptlite.sync(mgr, tmp_path / "copy")
        assert out.checkpoints_copied == 2 and out.ok
        with ckptlite.open(tmp_path / "copy") as copy:
            assert {c.id for c in copy.list()} == {root.id, kid.id}
            extra = copy.save("geo", "from elsewhere")
            back = ckptlite.sync(copy, mgr)
        assert back.checkpoints_copied == 1 and mgr.get(extra.id).checksum == extra.checksum
        assert set(mgr.delete(root.id)) == {root.id, kid.id}
        mgr.delete(extra.id)

    after_rows = admin.execute("SELECT * FROM pipeline_checkpoints ORDER BY id").fetchall()
    assert after_rows == before_rows
    assert describe(admin, schema) == before_shape
    summary = admin.execute("SELECT processor_name, n, valid FROM checkpoint_summary").fetchall()
    assert summary == [("geo", 3, 1)]


def test_legacy_latest_query_returns_the_newest_usable(pg_schema: str, admin: Any) -> None:
    with open_pg(pg_schema) as mgr:
        arr = np.random.default_rng(1).random(50_000)
        first = mgr.save("geo", {"a": arr}, level=Level.STAGE, name="s", progress=(1, 4))
        good = mgr.save("geo", {"a": arr * 2}, level=Level.STAGE, name="s", metadata={"k": 1})
        archived = mgr.save("geo", 3, level=Level.STAGE, name="s")
        mgr.backend.set_status(archived.id, Status.ARCHIVED)
        created = mgr.save("geo", 4, level=Level.STAGE, name="s")
        mgr.backend.set_status(created.id, Status.CREATED)
        damaged = mgr.save("geo", {"a": arr * 3}, level=Level.STAGE, name="s")
        schema = schema_of(pg_schema)
        admin.execute(f'SET search_path TO "{schema}"')
        # Damage one of its chunks (no other checkpoint uses it): load marks it CORRUPTED.
        digest = admin.execute(
            "SELECT f.digest FROM ckptlite_refs f JOIN ckptlite_records r ON r.seq = f.seq "
            "WHERE r.checkpoint_id = %s AND NOT EXISTS (SELECT 1 FROM ckptlite_refs g "
            "WHERE g.digest = f.digest AND g.seq <> f.seq) LIMIT 1",
            (damaged.id,),
        ).fetchone()[0]
        admin.execute(
            "UPDATE ckptlite_chunks SET data = set_byte(data, 20, get_byte(data, 20) # 1) "
            "WHERE digest = %s",
            (digest,),
        )
        with pytest.raises(CorruptCheckpointError):
            mgr.load(damaged.id)
        assert admin.execute(LEGACY_LATEST, ("geo", "phase")).fetchone() == (good.id,)
        assert mgr.latest("geo", level=Level.STAGE, name="s") == good
        hit = mgr.load_latest("geo", level=Level.STAGE, name="s")
        assert hit is not None and hit[0] == good and np.array_equal(hit[1]["a"], arr * 2)
        rows = {
            r[0]: r[1:]
            for r in admin.execute(
                "SELECT checkpoint_id, level, status, data_summary->>'status', processor_name, "
                "file_path, file_size_bytes, validation_checksum, data_summary "
                "FROM pipeline_checkpoints"
            )
        }
        want = {
            first.id: "valid",
            good.id: "valid",
            archived.id: "deleted",
            created.id: "created",
            damaged.id: "corrupted",
        }
        assert {k: v[1] for k, v in rows.items()} == want
        for cid, (level, _, true_status, proc, path, size, checksum, summary) in rows.items():
            cp = mgr.get(cid)
            assert level == "phase" and proc == "geo" and path == f"ckptlite://{cid}"
            assert true_status == cp.status.value and size == cp.size
            assert checksum == cp.checksum and len(checksum) == 64
            assert summary["name"] == "s" and summary["stored_size"] == cp.stored_size
        assert rows[good.id][-1]["metadata"] == {"k": 1, "ckptlite.slot_index": 2}
        assert rows[first.id][-1]["progress"] == [1, 4]
        assert mgr.get(archived.id).status is Status.ARCHIVED


def test_refuses_a_table_without_the_needed_columns(pg_schema: str, admin: Any) -> None:
    admin.execute(f'CREATE TABLE "{schema_of(pg_schema)}".pipeline_checkpoints (id INT)')
    with pytest.raises(ConfigError, match="lacks columns"):
        open_pg(pg_schema)


def test_tables_from_a_newer_ckptlite_are_refused(pg_schema: str, admin: Any) -> None:
    open_pg(pg_schema).close()
    admin.execute(
        f"UPDATE \"{schema_of(pg_schema)}\".ckptlite_meta SET value='99' WHERE key='schema_version'"
    )
    with pytest.raises(MigrationError):
        open_pg(pg_schema)


def test_unreachable_server_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot connect"):
        ckptlite.open("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_table_name_and_prefix_are_quoted_identifiers(pg_schema: str, admin: Any) -> None:
    odd = 'my "odd" table; DROP TABLE x'
    url = pg_schema + "&" + urllib.parse.urlencode({"ckptlite_table": odd, "ckptlite_prefix": "z-"})
    with open_pg(url) as mgr:
        cp = mgr.save("p", {"x": 1}, level=Level.STAGE)
        assert mgr.load(cp.id) == {"x": 1}
    schema = schema_of(pg_schema)
    tables = {
        r[0]
        for r in admin.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (schema,)
        )
    }
    assert odd in tables and "z-records" in tables and "pipeline_checkpoints" not in tables
    assert f"idx_{odd}_processor" in {n for n, _ in describe(admin, schema, odd)["indexes"]}


def test_dropped_connections_reconnect_and_never_half_commit(pg_schema: str, admin: Any) -> None:
    with open_pg(pg_schema) as mgr:
        backend: Any = mgr.backend
        cp = mgr.save("p", "first")

        def kill_all() -> None:
            for conn in list(backend._conns._all):
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

        kill_all()
        assert mgr.get(cp.id) == cp  # an idempotent read is retried on a new connection
        # A commit killed inside its transaction is redone on a new connection:
        # the save returns once, and exactly one record is written.
        admin.execute("SELECT pg_advisory_lock(%s)", (backend._commit_key,))
        saved: list[Any] = []
        t = threading.Thread(target=lambda: saved.append(mgr.save("p", "second")))
        t.start()
        pids = _waiting_on_advisory_lock(admin, backend)
        admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        admin.execute("SELECT pg_advisory_unlock(%s)", (backend._commit_key,))
        t.join(30)
        assert len(saved) == 1 and mgr.load(saved[0].id) == "second"
        assert sorted(c.id for c in mgr.list()) == sorted([cp.id, saved[0].id])
        # A write that is not safe to redo, killed mid-transaction: a typed error.
        blocker = threading.Thread(
            target=lambda: saved.append(
                _capture(
                    lambda: backend._run(
                        "sleeping", lambda c: c.execute("SELECT pg_sleep(30)"), write=True
                    )
                )
            )
        )
        blocker.start()
        for _ in range(200):
            busy = [
                p
                for (p,) in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
                )
                if p in {c.info.backend_pid for c in list(backend._conns._all)}
            ]
            if busy:
                break
            time.sleep(0.02)
        admin.execute("SELECT pg_terminate_backend(%s)", (busy[0],))
        blocker.join(30)
        error = saved[-1]
        assert isinstance(error, StoreIOError) and "rolled back" in error.hint, error
        third = mgr.save("p", "third")  # and the next write just works
        assert mgr.load(third.id) == "third" and mgr.verify().ok
        assert len(mgr.list()) == 3


def _capture(fn: Any) -> Any:
    try:
        return fn()
    except BaseException as e:
        return e


def _waiting_on_advisory_lock(admin: Any, backend: Any) -> list[int]:
    for _ in range(200):
        waiting = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND wait_event = 'advisory' AND application_name = 'ckptlite'"
        ).fetchall()
        mine = {c.info.backend_pid for c in list(backend._conns._all) if not c.closed}
        pids = [p for (p,) in waiting if p in mine]
        if pids:
            return pids
        time.sleep(0.02)
    raise AssertionError("the commit never waited on the lock")


def test_a_forked_child_uses_its_own_connection(pg_schema: str) -> None:
    with open_pg(pg_schema) as mgr:
        cp = mgr.save("p", "parent")
        backend: Any = mgr.backend
        parent_pid = backend._conns.get().info.backend_pid
        child = os.fork()
        if child == 0:  # pragma: no cover (runs in the child)
            try:
                ok = mgr.load(cp.id) == "parent"
                ok = ok and backend._conns.get().info.backend_pid != parent_pid
                mgr.save("p", "child")
                mgr.close()
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert backend._conns.get().info.backend_pid == parent_pid  # untouched by the child
        assert sorted(mgr.load(c.id) for c in mgr.list()) == ["child", "parent"]


def test_runs_and_ledger_on_postgres(pg_schema: str) -> None:
    with open_pg(pg_schema) as mgr:
        with pytest.raises(RuntimeError), mgr.run("geo", batch_size=2) as run:
            stage = run.stage("prep")
            stage.complete({"grid": [1, 2]})
            for item in run.items("tiles", ["a", "b", "c", "d"]):
                if item.id == "c":
                    item.fail(ValueError("bad tile"))
                elif item.id == "d":
                    raise RuntimeError("crash")
                else:
                    item.done({"sum": ord(item.id)})
        with mgr.run("geo", batch_size=2) as again:
            assert again.id == run.id and again.stage("prep").result == {"grid": [1, 2]}
            todo = [item.id for item in again.items("tiles", ["a", "b", "c", "d"])]
            assert todo == ["c", "d"]
            for item in again.items("tiles", ["a", "b", "c", "d"]):
                item.done({"sum": 0})
        ledger = {e.item_id: e for e in mgr.backend.list_items(run.id, "tiles")}
        assert ledger["a"].attempts == 1 and ledger["c"].attempts == 2 and ledger["c"].ok
        assert again.results("tiles")["b"] == {"sum": ord("b")}
        assert mgr.backend.get_run(run.id).status.value == "completed"


def test_a_worker_holds_two_connections(pg_schema: str) -> None:
    # One per thread: the worker's own, and ONE background thread's (leases, looks at
    # who is live, committing marks), so 32 workers stay under max_connections=100.
    with open_pg(pg_schema) as mgr:
        backend: Any = mgr.backend
        marks, beats = backend.mark_items, backend.heartbeat
        committers: set[int] = set()
        beaters: set[int] = set()

        def mark_items(*a: Any, **kw: Any) -> Any:
            committers.add(threading.get_ident())
            return marks(*a, **kw)

        def heartbeat(*a: Any, **kw: Any) -> Any:
            beaters.add(threading.get_ident())
            return beats(*a, **kw)

        backend.mark_items, backend.heartbeat = mark_items, heartbeat
        most = 0
        with mgr.run("job", lease=0.3, batch_size=2, batch_seconds=0.01) as run:
            for item in run.items("g", [str(i) for i in range(60)]):
                time.sleep(0.01)
                item.done()
                most = max(most, len(backend._conns._all))
            most = max(most, len(backend._conns._all))
        me = threading.get_ident()
        assert committers - {me} and beaters - {me}  # both done off the item path
        assert most == 2, f"a worker held {most} PostgreSQL connections"


def test_threads_share_one_backend(pg_schema: str) -> None:
    with open_pg(pg_schema) as mgr:
        saved: list[ckptlite.Checkpoint] = []
        lock = threading.Lock()

        def work(t: int) -> None:
            for i in range(25):
                cp = mgr.save(f"p{t}", {"t": t, "i": i}, name="slot")
                with lock:
                    saved.append(cp)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({c.seq for c in saved}) == 100
        for cp in saved[::7]:
            assert mgr.load(cp.id) == {"t": int(cp.process_id[1:]), "i": mgr.load(cp.id)["i"]}
        assert all(mgr.latest(f"p{t}", name="slot") is not None for t in range(4))


# -- read-only opens ----------------------------------------------------------------


def _tables(admin: Any, schema: str) -> dict[str, int]:
    """Every table of ``schema`` with its row count (what a read-only open must not change)."""
    names = [
        r[0]
        for r in admin.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (schema,)
        )
    ]
    return {
        n: admin.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(schema, n))
        ).fetchone()[0]
        for n in names
    }


def test_a_read_only_open_reads_everything_and_writes_nothing(pg_schema: str, admin: Any) -> None:
    arr = np.arange(50_000, dtype=np.float32)
    with open_pg(pg_schema) as mgr:
        cp = mgr.save("geo", {"a": arr}, name="t")
        with mgr.run("tiles") as run:
            for item in run.items("t", ["x", "y"]):
                item.done()
    before = _tables(admin, schema_of(pg_schema))
    with open_pg(pg_schema, readonly=True) as ro:
        assert ro.readonly
        assert np.array_equal(ro.load(cp.id)["a"], arr)
        assert ro.latest("geo", name="t") == ro.get(cp.id)
        assert [c.id for c in ro.list()] == [cp.id]
        assert ro.verify(full=True).ok
        assert ro.get_run(run.id).status.value == "completed"
        assert len(ro.list_items(run.id)) == 2
        with pytest.raises(ckptlite.ReadOnlyStoreError):
            ro.save("geo", 1)
        with pytest.raises(ckptlite.ReadOnlyStoreError):
            ro.delete(cp.id)
        # Below the manager too: the session itself is read-only.
        with pytest.raises(ckptlite.StoreError):
            ro.backend.set_status(cp.id, Status.CORRUPTED)
    assert _tables(admin, schema_of(pg_schema)) == before
    with open_pg(pg_schema) as mgr:
        assert mgr.get(cp.id).status is Status.VALID


def test_a_read_only_open_of_no_store_creates_nothing(pg_schema: str, admin: Any) -> None:
    with pytest.raises(ConfigError, match="no ckptlite store"):
        open_pg(pg_schema, readonly=True)
    with pytest.raises(ConfigError, match="no ckptlite store"):
        open_pg(pg_schema, create=False)
    assert _tables(admin, schema_of(pg_schema)) == {}
    admin.execute(f'SET search_path TO "{schema_of(pg_schema)}"')
    admin.execute(LEGACY_DDL)  # the legacy table alone: no ckptlite tables yet
    with pytest.raises(ConfigError, match="no ckptlite store"):
        open_pg(pg_schema, readonly=True)
    assert set(_tables(admin, schema_of(pg_schema))) == {"pipeline_checkpoints"}


def test_a_read_only_open_does_not_upgrade_older_tables(pg_schema: str, admin: Any) -> None:
    open_pg(pg_schema).close()
    meta = f'"{schema_of(pg_schema)}".ckptlite_meta'
    admin.execute(f"UPDATE {meta} SET value='7' WHERE key='schema_version'")
    with pytest.raises(MigrationError, match="writable"):
        open_pg(pg_schema, readonly=True)
    row = admin.execute(f"SELECT value FROM {meta} WHERE key='schema_version'").fetchone()
    assert row == ("7",)


def test_the_dashboard_opens_postgresql_read_only(pg_schema: str, admin: Any) -> None:
    from ckptlite.ui import open_readonly

    with pytest.raises(ConfigError, match="no ckptlite store"):
        open_readonly(pg_schema)  # a dashboard never creates a store
    assert _tables(admin, schema_of(pg_schema)) == {}
    open_pg(pg_schema).close()
    mgr = open_readonly(pg_schema)
    try:
        assert mgr.readonly
        with pytest.raises(ckptlite.ReadOnlyStoreError):
            mgr.save("geo", 1)
    finally:
        mgr.close()
