"""Issue 13 item 9: a store on a read-only mount (or opened ``readonly=True``) is readable.

The stores live on a real tmpfs remounted read-only (we run as root; CI does).
Every read works, every write raises ``ReadOnlyStoreError``, and nothing is
written: the file listing, sizes, mtimes and bytes are the same afterwards,
and no ``-wal``, ``-shm``, lock or temp file appears.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import pytest
from fault_harness import tmpfs

import ckptlite
from ckptlite.cli import main

RO = ckptlite.ReadOnlyStoreError


def _remount_ro(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """A fresh 64 MiB tmpfs, unmounted after the test."""
    path = tmp_path / "mnt"
    with tmpfs(path, "size=64m") as mounted:
        if not mounted:
            pytest.fail("mount -t tmpfs refused; run the fault suite as root (CI does)")
        yield path


def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root`` (root too): (mode, mtime_ns, sha256 of a file's bytes)."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def _build(store: Path) -> dict[str, Any]:
    """Write a store: a big state (packs), small ones (inline), a child, a run with a ledger."""
    rng = np.random.default_rng(5)
    states: dict[str, Any] = {}
    with ckptlite.open(store, durability="none", chunk_size=128 * 1024) as mgr:
        big = {"raster": rng.random(150_000), "tile": (3, 7)}
        top = mgr.save("geo", big, name="big", metadata={"crs": "EPSG:4326"}, progress=(1, 4))
        states[top.id] = big
        for i in range(3):
            cp = mgr.save("geo", {"step": i}, name="small", parent=top)
            states[cp.id] = {"step": i}
        with mgr.run("job") as run:
            for item in run.items("tiles", ["a", "b"]):
                item.done({"tile": item.id})
    return states


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return bool(a == b)


@pytest.fixture
def ro_store(mnt: Path) -> tuple[Path, dict[str, Any]]:
    """A closed store on the tmpfs, remounted read-only."""
    store = mnt / "store"
    states = _build(store)
    _remount_ro(mnt)
    return store, states


def _read_everything(mgr: ckptlite.CheckpointManager, states: dict[str, Any], out: Path) -> None:
    """Every read the API offers, each checked."""
    assert mgr.readonly and mgr.config.readonly
    cps = mgr.list()
    assert {c.id for c in cps} == set(states)
    for cid, state in states.items():
        assert mgr.exists(cid) and mgr.get(cid).id == cid
        assert _equal(mgr.load(cid), state)
    latest = mgr.load_latest("geo", name="small")
    assert latest is not None and latest[1] == {"step": 2}
    assert mgr.latest("geo", name="big") is not None
    assert mgr.verify().ok and mgr.verify(full=True).ok
    assert mgr.stats()["checkpoints"] == len(states)
    runs = mgr.list_runs("job")
    assert len(runs) == 1 and runs[0].progress == (2, 2)
    report = mgr.backup(out / "backup")
    assert report.checkpoints == len(states)
    with ckptlite.open(out / "backup", readonly=True) as copy:
        assert _equal(copy.load(cps[-1].id), states[cps[-1].id])
    archive = ckptlite.export_archive(mgr, out / "all.tar")
    assert archive.checkpoints == len(states)
    with ckptlite.open(out / "imported") as fresh:
        assert ckptlite.import_archive(fresh, out / "all.tar").imported == len(states)
    with ckptlite.open("memory://") as mem:
        assert ckptlite.sync(mgr, mem).checkpoints_copied == len(states)
    assert mgr.gc(dry_run=True).dry_run
    plan = mgr.apply_retention("geo", ckptlite.CheckpointPolicy(keep_last=1), dry_run=True)
    assert len(plan.removed) == 2  # the two older "small" steps


def test_every_read_works_on_a_read_only_mount(
    ro_store: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    store, states = ro_store
    before = _tree(store)
    with ckptlite.open(store, readonly=True) as mgr:
        _read_everything(mgr, states, tmp_path)
    assert _tree(store) == before


def _writes(
    tmp_path: Path,
) -> list[tuple[str, Callable[[ckptlite.CheckpointManager, str], Any]]]:
    from legacy_builders import write_script_checkpoint

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    write_script_checkpoint(legacy, "load", {"rows": 3})
    with ckptlite.open(tmp_path / "other", durability="none") as other:
        other.save("elsewhere", {"x": 1})
        ckptlite.export_archive(other, tmp_path / "other.tar")
    policy = ckptlite.CheckpointPolicy(keep_last=1)
    return [
        ("save", lambda m, cid: m.save("geo", {"x": 1})),
        ("save_async", lambda m, cid: m.save_async("geo", {"x": 1})),
        ("delete", lambda m, cid: m.delete(cid)),
        ("gc", lambda m, cid: m.gc()),
        ("prune", lambda m, cid: m.apply_retention("geo", policy)),
        ("run", lambda m, cid: m.run("job")),
        ("new-run", lambda m, cid: m.run("job2", resume=False)),
        ("sync-into", lambda m, cid: ckptlite.sync(tmp_path / "other", m)),
        ("import-archive", lambda m, cid: ckptlite.import_archive(m, tmp_path / "other.tar")),
        ("migrate", lambda m, cid: ckptlite.migrate(legacy, m, process_id="legacy")),
        ("set-status", lambda m, cid: m.backend.set_status(cid, ckptlite.Status.ARCHIVED)),
        ("mark-bad", lambda m, cid: m.backend.mark_bad_chunks(["0" * 64])),
        ("backend-delete", lambda m, cid: m.backend.delete(cid)),
        ("backend-gc", lambda m, cid: m.backend.gc()),
    ]


_WRITE_IDS = [
    "save",
    "save_async",
    "delete",
    "gc",
    "prune",
    "run",
    "new-run",
    "sync-into",
    "import-archive",
    "migrate",
    "set-status",
    "mark-bad",
    "backend-delete",
    "backend-gc",
]


@pytest.mark.parametrize("case", _WRITE_IDS)
def test_every_write_raises_read_only_store_error(
    ro_store: tuple[Path, dict[str, Any]], tmp_path: Path, case: str
) -> None:
    store, states = ro_store
    writes = dict(_writes(tmp_path))
    assert list(writes) == _WRITE_IDS
    before = _tree(store)
    with ckptlite.open(store, readonly=True) as mgr:
        cid = next(iter(states))
        with pytest.raises(ckptlite.CkptliteError) as info:
            writes[case](mgr, cid)
        assert type(info.value) is RO, f"{type(info.value).__name__}: {info.value}"
        assert info.value.hint.strip()
        assert len(mgr.list()) == len(states)
    assert _tree(store) == before


def test_a_dry_run_migration_reads_into_a_read_only_store(
    ro_store: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from legacy_builders import write_script_checkpoint

    store, _ = ro_store
    write_script_checkpoint(tmp_path, "load", {"rows": 3})
    with ckptlite.open(store, readonly=True) as mgr:
        report = ckptlite.migrate(tmp_path, mgr, dry_run=True, process_id="legacy")
    # One checkpoint; the store's own folder beside it is reported as not legacy.
    assert report.ok and report.count("would import") == 1 and report.count("failed") == 0


# -- the command line ---------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("CKPTLITE_") and var != "CKPTLITE_TEST_PG":
            monkeypatch.delenv(var)
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "no-config.toml"))


@pytest.mark.parametrize("flag", [[], ["--readonly"]], ids=["auto", "explicit"])
def test_the_reading_commands_work_on_a_read_only_mount(
    ro_store: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    isolated: None,
    capsys: pytest.CaptureFixture[str],
    flag: list[str],
) -> None:
    store, states = ro_store
    before = _tree(store)
    cid = next(iter(states))
    s = ["--store", str(store), *flag]
    for argv in (
        ["ls"],
        ["ls", "--tree"],
        ["show", cid],
        ["cat", cid],
        ["verify"],
        ["verify", "--full"],
        ["stats"],
        ["runs"],
        ["gc", "--dry-run"],
        ["prune", "--keep-last", "1", "--dry-run"],
        ["export", str(tmp_path / "x.tar")],
        ["backup", str(tmp_path / "copy")],
        ["sync", "--to", str(tmp_path / "synced")],
    ):
        code = main([*s, *argv, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, (argv, out, err)
        json.loads(out)
    assert main([*s, "cat", cid]) == 0
    assert json.loads(capsys.readouterr().out)["tile"] == [3, 7]
    for argv in (
        ["rm", "-r", cid],
        ["gc"],
        ["prune", "--keep-last", "1"],
        ["import-archive", str(tmp_path / "x.tar")],
        ["sync", "--from", str(tmp_path / "synced")],
    ):
        code = main([*s, *argv, "--json"])
        out, err = capsys.readouterr()
        assert code == 2, (argv, out, err)
        assert json.loads(out)["error"]["type"] == "ReadOnlyStoreError", out
        assert "Traceback" not in err
    assert _tree(store) == before


# -- damage on a read-only store ------------------------------------------------------


def test_a_damaged_chunk_is_reported_not_flagged(
    mnt: Path, tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = mnt / "store"
    states = _build(store)
    (pack,) = (store / "blobs" / "packs").iterdir()
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    big = next(cid for cid, s in states.items() if "raster" in s)
    _remount_ro(mnt)
    before = _tree(store)
    with ckptlite.open(store, readonly=True) as mgr:
        with pytest.raises(ckptlite.CorruptCheckpointError):
            mgr.load(big)
        assert mgr.load_latest("geo", name="big") is None  # no other checkpoint in the slot
        report = mgr.verify(full=True)
        assert report.corrupted == (big,) and not report.ok
        assert mgr.get(big).status == ckptlite.Status.VALID  # reported, not marked
    code = main(["--store", str(store), "verify", "--full"])
    out, err = capsys.readouterr()
    assert code == 1 and f"CORRUPTED {big}" in out, (out, err)
    assert _tree(store) == before
    conn = apsw.Connection(
        f"file:{store / 'ckptlite.db'}?immutable=1",
        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
    )
    try:
        assert conn.execute("SELECT count(*) FROM chunks WHERE bad=1").fetchone() == (0,)
        assert conn.execute("SELECT DISTINCT status FROM checkpoints").fetchall() == [("valid",)]
    finally:
        conn.close()


# -- a snapshot taken while the store was open: saves still in the -wal ------------


def _snapshot_with_wal(src: Path, dest: Path, *, shm: bool) -> dict[str, Any]:
    """Save into ``src`` and copy its files to ``dest`` while the store is still open."""
    mgr = ckptlite.open(src, durability="none")
    try:
        states = {}
        for i in range(5):
            cp = mgr.save("wal", {"i": i, "a": np.full(1000, i)})
            states[cp.id] = {"i": i, "a": np.full(1000, i)}
        assert (src / "ckptlite.db-wal").stat().st_size > 0
        shutil.copytree(src, dest, ignore=None if shm else shutil.ignore_patterns("*-shm"))
    finally:
        mgr.close()
    return states


def test_saves_still_in_the_wal_are_read_from_a_read_only_snapshot(
    mnt: Path, tmp_path: Path
) -> None:
    store = mnt / "store"
    states = _snapshot_with_wal(tmp_path / "live", store, shm=True)
    _remount_ro(mnt)
    before = _tree(store)
    # SQLite's immutable open would ignore the -wal and miss every save.
    conn = apsw.Connection(
        f"file:{store / 'ckptlite.db'}?immutable=1",
        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
    )
    try:
        missed = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        assert missed or conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] < 5
    finally:
        conn.close()
    with ckptlite.open(store, readonly=True) as mgr:
        assert {c.id for c in mgr.list()} == set(states)
        for cid, state in states.items():
            assert _equal(mgr.load(cid), state)
        assert mgr.verify(full=True).ok
    assert _tree(store) == before


def test_a_wal_without_its_shm_on_a_read_only_mount_is_a_typed_error(
    mnt: Path, tmp_path: Path
) -> None:
    store = mnt / "store"
    _snapshot_with_wal(tmp_path / "live", store, shm=False)
    _remount_ro(mnt)
    before = _tree(store)
    with pytest.raises(ckptlite.CkptliteError) as info:
        ckptlite.open(store, readonly=True)
    assert type(info.value) is ckptlite.StoreError, repr(info.value)
    assert "-wal" in str(info.value) and "copy" in info.value.hint.lower()
    assert _tree(store) == before


# -- readonly=True on a writable store -------------------------------------------------


def test_readonly_on_a_writable_store_writes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    states = _build(store)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "w").mkdir()
    before = _tree(store)
    assert not (store / "ckptlite.db-wal").exists()
    with ckptlite.open(store, readonly=True) as mgr:
        _read_everything(mgr, states, out)
        for name, write in _writes(tmp_path / "w"):
            with pytest.raises(RO):
                write(mgr, next(iter(states)))
            assert _tree(store) == before, name
    assert _tree(store) == before


def test_a_read_only_manager_sees_what_a_live_writer_commits(tmp_path: Path) -> None:
    store = tmp_path / "store"
    states = _build(store)
    with ckptlite.open(store, readonly=True) as reader:
        assert len(reader.list()) == len(states)
        with ckptlite.open(store, durability="none") as writer:
            assert len(reader.list()) == len(states)  # a -wal now, empty
            cp = writer.save("geo", {"new": 1})
            assert reader.load(cp.id) == {"new": 1}
            assert len(reader.list()) == len(states) + 1
            more = [writer.save("geo", {"n": i}, name="many") for i in range(30)]
            assert reader.load_latest("geo", name="many") == (more[-1], {"n": 29})
        # The writer closed; the reader still sees everything it committed.
        assert len(reader.list()) == len(states) + 31
        assert reader.verify(full=True).ok


def test_readonly_is_refused_where_it_has_no_meaning(tmp_path: Path) -> None:
    with pytest.raises(ckptlite.ConfigError) as info:
        ckptlite.open("memory://", readonly=True)
    assert "readonly" in str(info.value)
    # PostgreSQL opens read-only (tests/test_postgres.py); memory:// has nothing to read.
    with pytest.raises(ckptlite.ConfigError):
        ckptlite.open(tmp_path / "absent", readonly=True)
    assert not (tmp_path / "absent").exists()


def test_the_read_only_error_is_in_the_error_tree() -> None:
    assert issubclass(RO, ckptlite.StoreError)
    assert RO("x").hint.strip()
    from ckptlite.cli import exit_code

    assert exit_code(RO("x")) == 2
