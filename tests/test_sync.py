"""ckptlite.sync between real stores: local, memory and PostgreSQL (killed connections too)."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from damage import chunk_span

import ckptlite
from ckptlite import Level, Status, SyncError
from ckptlite.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]


def server_dsn(schema_dsn: str) -> str:
    """The test server's DSN, without the pg_schema fixture's search_path option."""
    return re.sub(r"[?&]options=-csearch_path%3D\w+$", "", schema_dsn)


CLI = [sys.executable, "-c", "import sys; from ckptlite.cli import main; sys.exit(main())"]
Mgr = ckptlite.CheckpointManager


def local(path: Path) -> Mgr:
    return ckptlite.open(path, durability="none", chunk_size=4096)


def fill(mgr: Mgr, n: int, seed: int = 0) -> list[ckptlite.Checkpoint]:
    """Save ``n`` small checkpoints in a hierarchy; every 97th holds chunked bytes."""
    rng = np.random.default_rng(seed)
    out: list[ckptlite.Checkpoint] = []
    root: ckptlite.Checkpoint | None = None
    for i in range(n):
        if i % 500 == 0:
            root = mgr.save("geo", {"block": i}, level=Level.PIPELINE, name=f"b{i}")
            out.append(root)
            continue
        state: dict[str, Any] = {"i": i}
        if i % 97 == 0:
            state["raster"] = rng.random(20_000).astype("f4")  # 80 KB: twenty 4 KiB chunks
        out.append(mgr.save("geo" if i % 3 else "dem", state, parent=root, name=f"t{i % 50}"))
    return out


def rows(mgr: Mgr) -> dict[str, tuple[Any, ...]]:
    """Every checkpoint as (checksum, status, created_at, parent, process, level, name)."""
    return {
        c.id: (c.checksum, c.status, c.created_at, c.parent_id, c.process_id, c.level, c.name)
        for c in mgr.list()
    }


def test_local_to_memory_to_local_and_a_second_run_is_a_noop(tmp_path: Path) -> None:
    a = local(tmp_path / "a")
    saved = fill(a, 300)
    m = ckptlite.open("memory://")
    first = ckptlite.sync(a, m, batch_size=64)
    assert first.checkpoints_copied == 300 and first.chunks_copied > 0 and first.changed
    again = ckptlite.sync(a, m)
    assert not again.changed and again.checkpoints_copied == 0 and again.mark == first.mark
    b = tmp_path / "b"
    report = ckptlite.sync(m, b)  # a URL target is created, opened and closed
    assert report.checkpoints_copied == 300 and report.ok
    with local(b) as bm:
        assert rows(bm) == rows(a)
        chunked = next(c for c in saved if a.load(c.id).get("raster") is not None)
        assert np.array_equal(bm.load(chunked.id)["raster"], a.load(chunked.id)["raster"])
        assert bm.verify(full=True).ok
    # New checkpoints at the source: only they travel.
    extra = a.save("geo", "late")
    late = ckptlite.sync(a, m)
    assert late.checkpoints_copied == 1 and m.get(extra.id).checksum == extra.checksum


def test_records_keep_their_identity_but_get_the_targets_seq(tmp_path: Path) -> None:
    a, b = local(tmp_path / "a"), local(tmp_path / "b")
    own = b.save("other", "b's own")
    src = a.save("p", {"x": 1}, level=Level.STAGE, name="n", metadata={"m": 1}, progress=(2, 9))
    a.backend.set_status(src.id, Status.ARCHIVED)
    ckptlite.sync(a, b)
    got = b.get(src.id)
    assert got.seq > own.seq
    assert got.replace(seq=0) == a.get(src.id).replace(seq=0)


def test_process_filter_brings_the_ancestors_along(tmp_path: Path) -> None:
    a = local(tmp_path / "a")
    root = a.save("orchestrator", "plan", level=Level.PIPELINE)
    mid = a.save("orchestrator", "stage", parent=root, level=Level.STAGE)
    leaf = a.save("worker", {"r": np.arange(20_000)}, parent=mid)
    a.save("unrelated", 1)
    b = ckptlite.open("memory://")
    report = ckptlite.sync(a, b, process_id="worker")
    assert {c.id for c in b.list()} == {root.id, mid.id, leaf.id}
    assert report.checkpoints_copied == 3
    assert np.array_equal(b.load(leaf.id)["r"], np.arange(20_000))
    assert ckptlite.sync(a, b).checkpoints_copied == 1  # a full sync has its own mark


def test_sync_never_decodes_states(tmp_path: Path) -> None:
    a = ckptlite.open(tmp_path / "a", durability="none", allow_pickle=True)
    cp = a.save("p", {"obj": Fraction(1, 3)})  # no codec for it: pickled
    b = ckptlite.open("memory://")  # no allow_pickle: decoding would fail
    assert ckptlite.sync(a, b).checkpoints_copied == 1
    assert b.get(cp.id).checksum == cp.checksum
    with pytest.raises(ckptlite.PickleNotAllowedError):
        b.load(cp.id)


def test_deletes_and_later_status_changes_are_not_propagated(tmp_path: Path) -> None:
    a, b = local(tmp_path / "a"), local(tmp_path / "b")
    x, y = a.save("p", 1), a.save("p", 2)
    ckptlite.sync(a, b)
    a.delete(x.id)
    a.backend.set_status(y.id, Status.CORRUPTED)
    b.delete(y.id)
    assert not ckptlite.sync(a, b).changed
    assert b.exists(x.id) and not b.exists(y.id)


def test_unreadable_chunks_at_the_source_are_reported_not_copied(tmp_path: Path) -> None:
    a = ckptlite.open(tmp_path / "a", durability="none")
    big = np.random.default_rng(0).random(300_000)  # 1 MiB chunks, incompressible: a pack file
    parent = a.save("p", {"big": big})
    child = a.save("p", "child", parent=parent)
    fine = a.save("p", "fine")
    digest = a.backend.get_record(parent.id).digests[0]
    chunk_span(tmp_path / "a", digest)[0].unlink()
    b = ckptlite.open("memory://")
    report = ckptlite.sync(a, b)
    assert set(report.failed) == {parent.id, child.id} and not report.ok
    assert {c.id for c in b.list()} == {fine.id}


@pytest.mark.parametrize("kind", ["raw", "zstd"])
def test_a_chunk_damaged_at_the_source_is_not_copied(tmp_path: Path, kind: str) -> None:
    from damage import flip_bit

    a = ckptlite.open(tmp_path / "a", durability="none")
    rng = np.random.default_rng(0)
    # Noise stays raw; 16-bit ints in int64 compress (zstd frames). 2.4 MB: 3 chunks.
    data = rng.random(300_000) if kind == "raw" else rng.integers(0, 1 << 16, 300_000)
    parent = a.save("p", {"big": data})
    child = a.save("p", "child", parent=parent)
    fine = a.save("p", "fine")
    digest = a.backend.get_record(parent.id).digests[1]
    path, offset, length = chunk_span(tmp_path / "a", digest)
    flip_bit(path, offset + length // 2)
    b = local(tmp_path / "b")
    report = ckptlite.sync(a, b)
    assert set(report.failed) == {parent.id, child.id} and not report.ok
    assert {c.id for c in b.list()} == {fine.id}
    assert not b.backend.has_chunks([digest])  # the damage did not spread
    assert b.verify(full=True).ok


def test_same_store_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    a = local(tmp_path / "a")
    with pytest.raises(SyncError, match="same store"):
        ckptlite.sync(a, a)
    with pytest.raises(SyncError, match="same store"):
        ckptlite.sync(a, tmp_path / "a")
    with pytest.raises(InvalidInputError):
        ckptlite.sync(a, 42)  # type: ignore[arg-type]
    with pytest.raises(ckptlite.ConfigError):
        ckptlite.sync(tmp_path / "missing", a)  # a source is never created
    assert not (tmp_path / "missing").exists()


def test_runs_and_ledger_merge_across_stores(tmp_path: Path) -> None:
    a, hub, b = local(tmp_path / "a"), ckptlite.open("memory://"), local(tmp_path / "b")
    with pytest.raises(RuntimeError), a.run("job", batch_size=1) as run:
        for item in run.items("g", ["1", "2", "3", "4"]):
            if item.id == "2":
                item.fail("flaky")
            elif item.id == "3":
                raise RuntimeError("killed")
            else:
                item.done(int(item.id))
    ckptlite.sync(a, hub)
    ckptlite.sync(hub, b)
    with b.run("job", batch_size=1) as resumed:
        assert resumed.id == run.id
        for item in resumed.items("g", ["1", "2", "3", "4"]):
            assert item.id in ("2", "3", "4")  # "1" was done on a
            item.done(int(item.id) * 10)
    report = ckptlite.sync(b, hub)
    assert report.runs_copied == 1 and report.items_copied == 4  # b's whole ledger, merged
    ledger = {e.item_id: e for e in hub.backend.list_items(run.id, "g")}
    assert {k: (e.ok, e.attempts) for k, e in ledger.items()} == {
        "1": (True, 1),
        "2": (True, 2),
        "3": (True, 1),
        "4": (True, 1),
    }
    assert hub.backend.get_run(run.id).status.value == "completed"
    states = [{e.item_id: e.state for e in m.backend.list_items(run.id, "g")} for m in (a, hub)]
    assert states[0]["1"] == states[1]["1"] is not None  # bytes, copied as they are
    assert not ckptlite.sync(a, hub).changed  # nothing new on a
    assert ckptlite.sync(hub, a).runs_copied == 1
    assert a.backend.item_marks(run.id, "g") == ({"1", "2", "3", "4"}, {})


# -- against PostgreSQL -------------------------------------------------------------


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tile_pipeline", ROOT / "examples/tile_pipeline.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_half_run_pipeline_resumes_on_another_store_through_postgres(
    pg_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tp = _example()
    expected = tp.run_pipeline(str(tmp_path / "clean"))
    store_a = tmp_path / "machine-a"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples/tile_pipeline.py"),
            "--store",
            str(store_a),
            "--delay",
            "0.05",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        done_in_a = 0
        deadline = time.monotonic() + 60
        while done_in_a < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
            if (store_a / "ckptlite.db").exists():
                with ckptlite.open(store_a) as peek:
                    runs = peek.list_runs(tp.PROCESS)
                    if runs:
                        done_in_a = len(peek.backend.item_marks(runs[0].id, "tiles")[0])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with ckptlite.open(store_a) as a:
        run_id = a.list_runs(tp.PROCESS)[0].id
        done_in_a = len(a.backend.item_marks(run_id, "tiles")[0])
        assert 12 <= done_in_a < 64, "the pipeline should have stopped half-way"
        pushed = ckptlite.sync(a, pg_schema)
    assert pushed.checkpoints_copied >= 2 and pushed.items_copied == done_in_a
    store_b = tmp_path / "machine-b"
    pulled = ckptlite.sync(pg_schema, store_b)
    assert pulled.checkpoints_copied == pushed.checkpoints_copied

    calls = {"tiles": 0, "generate": 0}
    real_tile, real_generate = tp.process_tile, tp.generate

    def counting_tile(raster: Any, tile_id: str) -> Any:
        calls["tiles"] += 1
        return real_tile(raster, tile_id)

    def counting_generate(seed: int) -> Any:
        calls["generate"] += 1
        return real_generate(seed)

    monkeypatch.setattr(tp, "process_tile", counting_tile)
    monkeypatch.setattr(tp, "generate", counting_generate)
    assert tp.run_pipeline(str(store_b)) == expected
    assert calls == {"tiles": 64 - done_in_a, "generate": 0}
    with ckptlite.open(store_b) as b:
        runs = b.list_runs(tp.PROCESS)
        assert [r.id for r in runs] == [run_id] and runs[0].status.value == "completed"
        ledger = b.backend.list_items(run_id, "tiles")
        assert len(ledger) == 64 and all(e.ok and e.attempts == 1 for e in ledger)
        back = ckptlite.sync(b, pg_schema)  # and the finished run goes back to the hub
    assert back.runs_copied == 1
    with ckptlite.open(pg_schema) as hub:
        assert hub.backend.get_run(run_id).status.value == "completed"


def _pids(mgr: Mgr) -> list[int]:
    conns = mgr.backend._conns  # type: ignore[attr-defined]
    with conns._lock:
        return [c.info.backend_pid for c in conns._all if not c.closed]


@pytest.mark.slow
def test_killed_connections_during_a_10k_sync(pg_schema: str, tmp_path: Path) -> None:
    import psycopg

    a = local(tmp_path / "a")
    fill(a, 10_000, seed=3)
    pg = ckptlite.open(pg_schema, durability="none")
    stop, kills, failures = threading.Event(), [], []

    def killer() -> None:
        rng = random.Random(11)
        with psycopg.connect(server_dsn(pg_schema), autocommit=True) as admin:
            while not stop.is_set() and len(kills) < 12:
                time.sleep(rng.uniform(0.005, 0.08))
                for pid in _pids(pg):
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    kills.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for _attempt in range(100):
            try:
                ckptlite.sync(a, pg, batch_size=100)
                break
            except SyncError as e:  # a rerun resumes where this one stopped
                failures.append(e)
                assert isinstance(e.context["report"], ckptlite.SyncReport)
    finally:
        stop.set()
        thread.join()
    # Each kill either failed a sync (rerun) or was absorbed by a redo on a new connection.
    assert len(kills) >= 3, "the connection was hardly killed: the test proves nothing"
    final = ckptlite.sync(a, pg, batch_size=250)  # a rerun completes what is left
    assert final.ok
    assert rows(pg) == rows(a)
    schema = pg_schema.split("%3D")[1]
    with psycopg.connect(server_dsn(pg_schema)) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        ((n, distinct),) = conn.execute(
            "SELECT count(*), count(DISTINCT checkpoint_id) FROM pipeline_checkpoints"
        ).fetchall()
        assert n == distinct == 10_000
        assert conn.execute("SELECT count(*) FROM ckptlite_records").fetchone() == (10_000,)
    again = ckptlite.sync(a, pg)
    assert not again.changed and again.checkpoints_copied == 0 and again.mark == final.mark
    assert pg.verify().ok
    for cp in a.list()[::997]:
        src, dst = a.load(cp.id), pg.load(cp.id)
        assert src.keys() == dst.keys()
        if "raster" in src:
            assert np.array_equal(src["raster"], dst["raster"])
    pg.close()


def test_two_syncers_on_one_store_at_once(pg_schema: str, tmp_path: Path) -> None:
    a = local(tmp_path / "a")
    fill(a, 1500, seed=4)
    a.close()
    errors: list[BaseException] = []
    reports: list[ckptlite.SyncReport] = []
    start = threading.Barrier(2)

    def go(source: str, target: str) -> None:
        start.wait()
        try:
            reports.append(ckptlite.sync(source, target, batch_size=100))
        except BaseException as e:
            errors.append(e)

    for source, target in ((str(tmp_path / "a"), pg_schema), (pg_schema, str(tmp_path / "b"))):
        reports.clear()
        threads = [threading.Thread(target=go, args=(source, target)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sum(r.checkpoints_copied for r in reports) == 1500
    with local(tmp_path / "a") as src, ckptlite.open(pg_schema) as hub, local(tmp_path / "b") as b:
        assert rows(hub) == rows(src) == rows(b)
        assert hub.stats()["checkpoints"] == b.stats()["checkpoints"] == 1500
    # Two processes, through the CLI, at once: both succeed, nothing is copied twice.
    with local(tmp_path / "a") as more:
        fill(more, 200, seed=5)
    cmd = [*CLI, "--store", str(tmp_path / "a"), "sync"]
    procs = [
        subprocess.Popen([*cmd, "--to", pg_schema, "--json"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(o["checkpoints_copied"] for o in outs) == 200


def test_cli_sync_to_and_from(pg_schema: str, tmp_path: Path) -> None:
    a = local(tmp_path / "a")
    fill(a, 40)
    a.close()
    cli = CLI
    push = subprocess.run(
        [*cli, "--store", str(tmp_path / "a"), "sync", "--to", pg_schema, "--json"],
        capture_output=True,
        text=True,
    )
    assert push.returncode == 0, push.stderr
    assert json.loads(push.stdout)["checkpoints_copied"] == 40
    assert push.stderr == ""  # no progress bar off a terminal
    pull = subprocess.run(
        [*cli, "--store", str(tmp_path / "b"), "sync", "--from", pg_schema, "--process", "dem"],
        capture_output=True,
        text=True,
    )
    assert pull.returncode == 0, pull.stderr
    assert "checkpoint(s) copied" in pull.stdout
    with local(tmp_path / "b") as b:
        assert {c.process_id for c in b.list()} == {"dem", "geo"}  # geo: dem's ancestors
    both = subprocess.run([*cli, "sync", "--to", "x", "--from", "y"], capture_output=True)
    assert both.returncode == 2
    missing = subprocess.run(
        [*cli, "--store", str(tmp_path / "nope"), "sync", "--to", pg_schema],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "hint" in missing.stderr


def test_a_backup_is_another_store_for_sync(tmp_path: Path) -> None:
    a, hub = local(tmp_path / "a"), ckptlite.open("memory://")
    a.save("p", 1)
    ckptlite.sync(a, hub)
    a.backup(tmp_path / "b")
    with local(tmp_path / "b") as b:
        assert b.backend.store_id() != a.backend.store_id()
        in_a, in_b = a.save("p", "a"), b.save("p", "b")  # the same seq on both sides
        assert ckptlite.sync(a, hub).checkpoints_copied == 1
        report = ckptlite.sync(b, hub)
    assert report.checkpoints_copied == 1 and report.checkpoints_skipped == 1
    assert hub.exists(in_a.id) and hub.exists(in_b.id)


def test_repeated_syncs_do_not_pile_up_connections(pg_schema: str, tmp_path: Path) -> None:
    with ckptlite.open(pg_schema) as hub, local(tmp_path / "b") as b:
        hub.save("p", 1)
        for i in range(6):
            hub.save("p", i)
            assert ckptlite.sync(hub, b).checkpoints_copied >= 1  # read by a new thread each time
        assert len(hub.backend._conns._all) <= 3  # type: ignore[attr-defined]


def test_a_record_the_target_refuses_does_not_stop_the_rest(pg_schema: str, tmp_path: Path) -> None:
    a = local(tmp_path / "a")
    before = a.save("p", 1)
    long_root = a.save("x" * 300, "too long for VARCHAR(255)", level=Level.PIPELINE)
    its_child = a.save("x" * 300, "child", parent=long_root)
    after = a.save("p", 2)
    with ckptlite.open(pg_schema) as pg:
        report = ckptlite.sync(a, pg)
        assert set(report.failed) == {long_root.id, its_child.id} and not report.ok
        assert {c.id for c in pg.list()} == {before.id, after.id}
        assert not ckptlite.sync(a, pg).changed  # the mark moved past them


def test_sync_resolves_bare_names_as_the_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_schema: str
) -> None:
    """A bare name is a remote (or `postgres`), never a directory made by mistake (#17 bug 3)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "ckptlite.toml"))
    src = ckptlite.open(tmp_path / "src")
    src.save("p", {"x": 1})
    with pytest.raises(ckptlite.ConfigError) as err:
        ckptlite.sync(src, "mirror")
    assert "not a configured remote" in err.value.message and "./mirror" in (err.value.hint or "")
    assert not (tmp_path / "mirror").exists()
    # A configured remote is where the name points.
    monkeypatch.setenv("CKPTLITE_REMOTE_MIRROR", str(tmp_path / "hub"))
    assert ckptlite.sync(src, "mirror").checkpoints_copied == 1
    assert not (tmp_path / "mirror").exists()
    with ckptlite.open(tmp_path / "hub") as hub:
        assert [c.process_id for c in hub.list()] == ["p"]
    # `postgres` with no remote of that name: the server libpq's environment names.
    pg = make_conninfo_env()
    pg["PGOPTIONS"] = "-csearch_path=" + pg_schema.rpartition("%3D")[2]  # this test's schema
    for k, v in pg.items():
        monkeypatch.setenv(k, v)
    report = ckptlite.sync(src, "postgres", "p")
    assert report.target.startswith("postgresql://") and not (tmp_path / "postgres").exists()
    # An existing directory given as a bare name is that directory.
    assert ckptlite.sync("hub", src).checkpoints_copied == 0


def make_conninfo_env() -> dict[str, str]:
    """Return libpq's environment for the test server (CKPTLITE_TEST_PG)."""
    import os
    import urllib.parse

    u = urllib.parse.urlsplit(
        os.environ.get("CKPTLITE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    )
    env = {"PGHOST": u.hostname or "127.0.0.1", "PGPORT": str(u.port or 5432)}
    env["PGDATABASE"] = u.path.lstrip("/") or "postgres"
    env["PGUSER"] = u.username or "postgres"
    if u.password:
        env["PGPASSWORD"] = u.password
    return env


@pytest.mark.parametrize("kind", ["memory", "local", "postgres"])
def test_a_save_after_a_sync_takes_a_position_past_the_copies(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = {"memory": "memory://", "local": str(tmp_path / "b")}.get(kind) or str(
        request.getfixturevalue("pg_schema")
    )
    key = "ckptlite.slot_index"
    with ckptlite.open("memory://") as a, ckptlite.open(url, durability="none") as b:
        for i in range(3):
            a.save("p", i, name="t")
        assert b.save("p", "b", name="t").metadata[key] == 1  # b counts this slot already
        ckptlite.sync(a, b)
        assert b.save("p", "b2", name="t").metadata[key] == 4
