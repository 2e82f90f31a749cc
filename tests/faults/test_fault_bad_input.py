"""Issue 13 item 8: every bad input reaches the caller as a typed error with a hint.

Each case asserts the exact ``CkptliteError`` subclass, a non-empty hint, and
that the store is unchanged: the same files with the same bytes (the ``-shm``
lock file aside) and the same row counts. Saves use a fresh random array, so a
save that wrote its chunks before failing would leave new packs behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import pytest
from fault_harness import tmpfs

import ckptlite
from ckptlite.cli import main

E = ckptlite
# Refused before any connection: a server here would only be reached by a bug (and
# would then get tables in a database shared by other tests).
_NO_PG = "postgresql://nobody@127.0.0.1:1/none"
_TABLES = ("checkpoints", "chunks", "refs", "runs", "items")


def _fingerprint(root: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Return every file under ``root`` with its sha256 (dirs as "dir"), and the row counts."""
    files: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.name.endswith("-shm"):  # SQLite's lock and index file, rewritten by readers
            continue
        rel = str(p.relative_to(root))
        files[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    counts: dict[str, int] = {}
    db = root / "ckptlite.db"
    if db.is_file():
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            for t in _TABLES:
                counts[t] = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        finally:
            conn.close()
    return files, counts


def _typed(cls: type[ckptlite.CkptliteError], fn: Callable[[], Any]) -> ckptlite.CkptliteError:
    """Run ``fn``; it must raise exactly ``cls`` with a hint."""
    with pytest.raises(ckptlite.CkptliteError) as info:
        fn()
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert err.hint.strip(), "no hint"
    return err


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[ckptlite.CheckpointManager, Path]]:
    """An open store with a checkpoint (in a pack), a child, and a run with a ledger entry."""
    store = tmp_path / "store"
    mgr = ckptlite.open(store, durability="none", chunk_size=64 * 1024)
    rng = np.random.default_rng(1)
    top = mgr.save("p", {"a": rng.random(100_000)}, name="n", metadata={"k": 1})
    mgr.save("p", {"b": 1}, name="kid", parent=top, progress=(1, 2))
    with mgr.run("job") as run:
        for item in run.items("tiles", ["t1", "t2"]):
            item.done({"ok": item.id})
    yield mgr, store
    mgr.close()


def _fresh_state() -> dict[str, Any]:
    return {"big": np.random.default_rng().random(200_000)}  # new bytes: new packs if written


SAVES: list[tuple[str, dict[str, Any]]] = [
    ("surrogate-process", {"process_id": "\ud800"}),
    ("surrogate-name", {"name": "tile_\udcff"}),
    ("surrogate-metadata-key", {"metadata": {"\ud800": 1}}),
    ("surrogate-metadata-value", {"metadata": {"k": ["ok", "x\udfff"]}}),
    ("surrogate-parent", {"parent": "chk_\ud800"}),
    ("progress-overflow", {"progress": (2**70, 1)}),
    ("progress-int64-overflow", {"progress": (2**63, 2**63)}),
    ("progress-negative-done", {"progress": (-1, 5)}),
    ("progress-negative-total", {"progress": (0, -1)}),
    ("progress-done-over-total", {"progress": (6, 5)}),
    ("progress-float", {"progress": (1.5, 2)}),
    ("progress-bool", {"progress": (True, 2)}),
    ("progress-three", {"progress": (1, 2, 3)}),
    ("progress-str", {"progress": "1/2"}),
    ("process-not-str", {"process_id": 7}),
    ("name-not-str", {"name": b"x"}),
    ("metadata-not-dict", {"metadata": [1]}),
    ("metadata-nan", {"metadata": {"x": float("nan")}}),
    ("policy-not-a-policy", {"policy": "keep-3"}),
]


@pytest.mark.parametrize("case", [c for _, c in SAVES], ids=[i for i, _ in SAVES])
@pytest.mark.parametrize("how", ["save", "save_async"])
def test_bad_save_arguments_are_refused_before_anything_is_written(
    live: tuple[ckptlite.CheckpointManager, Path], case: dict[str, Any], how: str
) -> None:
    mgr, store = live
    before = _fingerprint(store)
    kwargs = {"process_id": "p", **case}
    pid = kwargs.pop("process_id")
    if how == "save":
        _typed(E.InvalidInputError, lambda: mgr.save(pid, _fresh_state(), **kwargs))
    elif "policy" in kwargs:  # refused at once: it is the manager's, not the record's
        _typed(E.InvalidInputError, lambda: mgr.save_async(pid, _fresh_state(), **kwargs))
    else:  # the record's arguments fail the future, and flush() raises it again
        fut = mgr.save_async(pid, _fresh_state(), **kwargs)
        _typed(E.InvalidInputError, fut.result)
        _typed(E.InvalidInputError, mgr.flush)
    assert _fingerprint(store) == before


READS: list[tuple[str, Callable[[ckptlite.CheckpointManager], Any]]] = [
    ("load-surrogate", lambda m: m.load("chk_\ud800")),
    ("get-surrogate", lambda m: m.get("\udcff")),
    ("exists-surrogate", lambda m: m.exists("\udcff")),
    ("delete-surrogate", lambda m: m.delete("\ud800")),
    ("load-not-str", lambda m: m.load(12)),
    ("list-process-surrogate", lambda m: m.list(process_id="\ud800")),
    ("list-name-surrogate", lambda m: m.list(name="\ud800")),
    ("list-process-not-str", lambda m: m.list(process_id=5)),
    ("list-level-unknown", lambda m: m.list(level="bogus")),
    ("list-status-unknown", lambda m: m.list(status="bogus")),
    ("list-since-naive", lambda m: m.list(since=datetime.now())),
    ("list-since-str", lambda m: m.list(since="2026-01-01")),
    ("list-since-number", lambda m: m.list(since=1.5)),
    ("list-limit-str", lambda m: m.list(limit="3")),
    ("list-limit-negative", lambda m: m.list(limit=-1)),
    ("list-limit-bool", lambda m: m.list(limit=True)),
    ("list-limit-huge", lambda m: m.list(limit=2**70)),
    ("list-parent-not-str", lambda m: m.list(parent=3)),
    ("latest-level-unknown", lambda m: m.latest("p", level="bogus")),
    ("latest-surrogate", lambda m: m.latest("\ud800")),
    ("load-latest-level-unknown", lambda m: m.load_latest("p", level="bogus")),
    ("load-latest-surrogate", lambda m: m.load_latest("p", name="\ud800")),
    ("list-runs-surrogate", lambda m: m.list_runs("\ud800")),
    ("run-surrogate", lambda m: m.run("\ud800")),
    ("backup-nul", lambda m: m.backup("/tmp/x\0y")),
    ("backup-nouser", lambda m: m.backup("~no-such-user-ckptlite/b")),
    ("backup-not-path", lambda m: m.backup(5)),
    ("import-archive-a-directory", lambda m: ckptlite.import_archive(m, "/")),
    ("sync-surrogate-process", lambda m: ckptlite.sync(m, "memory://", process_id="\ud800")),
]


@pytest.mark.parametrize("call", [c for _, c in READS], ids=[i for i, _ in READS])
def test_bad_query_arguments_are_typed_errors(
    live: tuple[ckptlite.CheckpointManager, Path], call: Callable[[ckptlite.CheckpointManager], Any]
) -> None:
    mgr, store = live
    before = _fingerprint(store)
    _typed(E.InvalidInputError, lambda: call(mgr))
    assert _fingerprint(store) == before


def test_bad_run_arguments_are_refused_before_the_ledger_is_written(
    live: tuple[ckptlite.CheckpointManager, Path],
) -> None:
    mgr, store = live
    with mgr.run("job2") as run:
        before = _fingerprint(store)  # the run's own row is written by now
        _typed(E.InvalidInputError, lambda: run.stage("load\ud800"))
        _typed(E.InvalidInputError, lambda: list(run.items("tiles\udcff", ["a"])))

        def mark_all() -> None:
            for item in run.items("tiles", ["x\udcff"]):
                item.done(1)

        _typed(E.InvalidInputError, mark_all)
        run.commit()
        assert _fingerprint(store) == before


def test_a_backup_under_a_file_is_a_typed_error(
    live: tuple[ckptlite.CheckpointManager, Path], tmp_path: Path
) -> None:
    mgr, _ = live
    (tmp_path / "file").write_bytes(b"x")
    before = _fingerprint(tmp_path)
    _typed(E.InvalidInputError, lambda: mgr.backup(tmp_path / "file" / "copy"))
    assert _fingerprint(tmp_path) == before


# -- opening -----------------------------------------------------------------------


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: an empty or relative URL would create a store here."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _opens(cwd: Path) -> list[tuple[str, Callable[[], Any], type[ckptlite.CkptliteError]]]:
    file = cwd.parent / "a-file"
    file.write_bytes(b"not a directory")
    c = E.ConfigError
    return [
        ("empty", lambda: ckptlite.open(""), c),
        ("path-is-a-file", lambda: ckptlite.open(file), c),
        ("path-under-a-file", lambda: ckptlite.open(file / "store"), c),
        ("nul", lambda: ckptlite.open(str(cwd / "a\0b")), c),
        ("no-such-user", lambda: ckptlite.open("~no-such-user-ckptlite/x"), c),
        ("not-utf8", lambda: ckptlite.open(str(cwd / "st\udcffre")), c),
        ("not-a-path", lambda: ckptlite.open(5), c),  # type: ignore[arg-type]
        ("query-on-path", lambda: ckptlite.open(str(cwd / "s") + "?durability=full"), c),
        ("query-on-file-url", lambda: ckptlite.open(f"file://{cwd / 's'}?x=1"), c),
        ("query-on-memory", lambda: ckptlite.open("memory://?readonly=1"), c),
        ("unknown-ckptlite-param", lambda: ckptlite.open(_NO_PG + "?ckptlite_tabel=x"), c),
        ("unknown-scheme", lambda: ckptlite.open("s3://bucket/x"), c),
        ("durability", lambda: ckptlite.open(cwd / "s", durability="fast"), c),
        ("chunk-size-str", lambda: ckptlite.open(cwd / "s", chunk_size="1M"), c),  # type: ignore[arg-type]
        ("compression-level", lambda: ckptlite.open(cwd / "s", compression_level=99), c),
        ("compression-str", lambda: ckptlite.open(cwd / "s", compression_level="x"), c),  # type: ignore[arg-type]
        ("busy-timeout-str", lambda: ckptlite.open(cwd / "s", busy_timeout="x"), c),  # type: ignore[arg-type]
        ("busy-timeout-negative", lambda: ckptlite.open(cwd / "s", busy_timeout=-1), c),
        ("max-pending", lambda: ckptlite.open(cwd / "s", max_pending=0), c),
    ]


_OPEN_IDS = [
    "empty",
    "path-is-a-file",
    "path-under-a-file",
    "nul",
    "no-such-user",
    "not-utf8",
    "not-a-path",
    "query-on-path",
    "query-on-file-url",
    "query-on-memory",
    "unknown-ckptlite-param",
    "unknown-scheme",
    "durability",
    "chunk-size-str",
    "compression-level",
    "compression-str",
    "busy-timeout-str",
    "busy-timeout-negative",
    "max-pending",
]


@pytest.mark.parametrize("case", _OPEN_IDS)
def test_bad_open_arguments_are_typed_errors_and_create_nothing(cwd: Path, case: str) -> None:
    opens = {name: (fn, cls) for name, fn, cls in _opens(cwd)}
    assert list(opens) == _OPEN_IDS
    fn, cls = opens[case]
    before = _fingerprint(cwd.parent)
    err = _typed(cls, fn)
    assert _fingerprint(cwd.parent) == before
    if case == "unknown-ckptlite-param":
        assert "ckptlite_tabel" in str(err)


def test_libpq_parameters_pass_and_known_ckptlite_ones_work(pg_schema: str) -> None:
    url = f"{pg_schema}&sslmode=disable&application_name=ckptlite-h5&connect_timeout=5"
    with ckptlite.open(url + "&ckptlite_table=h5_bad_input&ckptlite_prefix=h5bi_") as mgr:
        cp = mgr.save("p", {"x": 1})
        assert mgr.load(cp.id) == {"x": 1}


def test_a_foreign_sqlite_file_is_refused_and_left_byte_identical(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    db = store / "ckptlite.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices(total) VALUES (9.5)")
    conn.close()
    before = _file_bytes(store)
    err = _typed(E.ConfigError, lambda: ckptlite.open(store))
    assert "not a ckptlite store" in str(err)
    assert _file_bytes(store) == before  # no ckptlite tables, no -wal, no blobs/
    conn = apsw.Connection(str(db))
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    conn.close()


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_store_on_a_read_only_file_system_is_a_typed_error(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    with tmpfs(mnt, "size=8m") as mounted:
        if not mounted:
            pytest.fail("mount -t tmpfs refused; run the fault suite as root (CI does)")
        with ckptlite.open(mnt / "store", durability="none") as mgr:
            mgr.save("p", {"x": 1})
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = _file_bytes(mnt)
        err = _typed(E.ReadOnlyStoreError, lambda: ckptlite.open(mnt / "store"))
        assert "readonly=True" in err.hint
        _typed(E.ReadOnlyStoreError, lambda: ckptlite.open(mnt / "new-store"))
        assert _file_bytes(mnt) == before


# -- the command line ----------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("CKPTLITE_") and var not in ("CKPTLITE_TEST_PG",):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "no-config.toml"))


@pytest.mark.parametrize(
    ("argv", "code", "kind"),
    [
        (["--store", "", "ls"], 2, "ConfigError"),
        (["--store", "{store}?x=1", "ls"], 2, "ConfigError"),
        (["--store", "{file}", "ls"], 2, "ConfigError"),
        (["--store", "{file}", "import-archive", "{file}"], 2, "ConfigError"),
        (["--store", "{store}", "show", "\udcff"], 2, "InvalidInputError"),
        (["--store", "{store}", "cat", "chk_\udcff"], 2, "InvalidInputError"),
        (["--store", "{store}", "ls", "-p", "\udcff"], 2, "InvalidInputError"),
        (["--store", "{store}", "ls", "-n", "-1"], 2, "InvalidInputError"),
        (["--store", "{store}", "ls", "--since", "99999999999d"], 2, "UsageError"),
        (["--store", "{store}", "backup", "{file}/copy"], 2, "InvalidInputError"),
        (["--store", "{store}", "export", "{file}/a.tar"], 2, "InvalidInputError"),
    ],
    ids=[
        "empty-store",
        "query",
        "store-is-a-file",
        "import-into-a-file",
        "show-not-utf8",
        "cat-not-utf8",
        "ls-not-utf8",
        "ls-negative-limit",
        "ls-since-overflow",
        "backup-under-a-file",
        "export-under-a-file",
    ],
)
def test_the_cli_prints_typed_errors_never_a_traceback(
    tmp_path: Path,
    isolated: None,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    kind: str,
) -> None:
    store = tmp_path / "store"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", {"x": 1})
    (tmp_path / "file").write_bytes(b"x")
    before = _fingerprint(tmp_path)
    args = [a.format(store=store, file=tmp_path / "file") for a in argv]
    assert main([*args, "--json"]) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert f'"type": "{kind}"' in out, out
    assert '"hint": ""' not in out
    assert main(args) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "hint: " in err and "internal error" not in err
    assert _fingerprint(tmp_path) == before


_MAIN = b"import sys; from ckptlite.cli import main; sys.exit(main())"


def test_the_cli_in_a_subprocess_with_non_utf8_arguments(tmp_path: Path, isolated: None) -> None:
    store = tmp_path / "store"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", {"x": 1})
    env = {**os.environ, "CKPTLITE_CONFIG": str(tmp_path / "none.toml")}
    for args in ([b"show", b"chk_\xff"], [b"ls", b"-p", b"\xfe"]):
        r = subprocess.run(
            [sys.executable.encode(), b"-c", _MAIN, b"--store", bytes(store), *args],
            capture_output=True,
            env=env,
        )
        assert r.returncode == 2, r.stderr
        assert b"Traceback" not in r.stderr and b"hint:" in r.stderr


def test_since_just_inside_the_range_still_works(
    tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", {"x": 1})
        assert len(mgr.list(since=datetime.now().astimezone() - timedelta(days=1))) == 1
    assert main(["--store", str(store), "ls", "--since", "3d"]) == 0
