"""The local backend's SQLite file: schema versioning, refusals, WAL."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

import ckptlite
from ckptlite._sqlite import APPLICATION_ID, refuse_network_fs
from ckptlite.backends.local import MIGRATIONS
from ckptlite.errors import ConfigError, MigrationError


def pragma(db: Path, name: str) -> object:
    conn = apsw.Connection(str(db))
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[index]
    finally:
        conn.close()


def test_new_store_has_schema_version_app_id_and_wal(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1)
    db = tmp_path / "s" / "ckptlite.db"
    assert pragma(db, "user_version") == len(MIGRATIONS)
    assert pragma(db, "application_id") == APPLICATION_ID
    assert pragma(db, "journal_mode") == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1)
    conn = apsw.Connection(str(tmp_path / "s" / "ckptlite.db"))
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(MigrationError) as e:
        ckptlite.open(tmp_path / "s")
    assert "Upgrade ckptlite" in e.value.hint


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    conn = apsw.Connection(str(tmp_path / "s" / "ckptlite.db"))
    conn.execute("PRAGMA application_id=12345")
    conn.execute("CREATE TABLE other(x)")
    conn.close()
    with pytest.raises(ConfigError):
        ckptlite.open(tmp_path / "s")


def test_reopen_keeps_data_and_runs_no_migration(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", {"k": "v"})
    with ckptlite.open(tmp_path / "s") as mgr:
        assert mgr.load(cp.id) == {"k": "v"}
        nxt = mgr.save("p", 2)
        assert nxt.seq > cp.seq


def test_network_file_systems_are_refused(tmp_path: Path) -> None:
    mounts = f"server:/export {tmp_path} nfs4 rw,relatime 0 0\n/dev/vda / ext4 rw 0 0\n"
    with pytest.raises(ConfigError) as e:
        refuse_network_fs(tmp_path / "store", mounts)
    assert "network file system" in str(e.value)
    refuse_network_fs(tmp_path / "store", "/dev/vda / ext4 rw 0 0\n")  # local: accepted


@pytest.mark.parametrize(
    ("durability", "synchronous", "fsyncs"),
    [("none", 0, False), ("safe", 1, True), ("full", 2, True)],
)
def test_durability_sets_sqlite_sync_and_chunk_fsync(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    durability: str,
    synchronous: int,
    fsyncs: bool,
) -> None:
    import os

    import numpy as np

    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    with ckptlite.open(tmp_path / "s", durability=durability, busy_timeout=7) as mgr:
        conn = mgr.backend.db.connection()  # type: ignore[attr-defined]
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert one("PRAGMA synchronous") == synchronous
        assert one("PRAGMA foreign_keys") == 1 and one("PRAGMA trusted_schema") == 0
        assert one("PRAGMA busy_timeout") == 7000  # seconds, not milliseconds
        calls.clear()
        mgr.save("p", {"a": np.random.default_rng(0).random(400_000)})  # file chunks
        assert bool(calls) is fsyncs
