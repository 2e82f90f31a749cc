"""The local backend's SQLite file: schema versioning, refusals, WAL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import apsw
import numpy as np
import pytest

import ckptlite
from ckptlite import chunking
from ckptlite._sqlite import APPLICATION_ID, refuse_network_fs
from ckptlite.backends.base import ListQuery
from ckptlite.backends.local import MIGRATIONS
from ckptlite.errors import ConfigError, MigrationError, StoreFullError


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


def undo_schema_12(conn: apsw.Connection) -> None:
    """Take a store back to before schema 12 (the unmarked items of a claimed batch)."""
    conn.execute("ALTER TABLE run_claims DROP COLUMN unmarked")


def undo_schema_11(conn: apsw.Connection) -> None:
    """Take a store back to before schema 11 (slot counters, a group's item ids)."""
    undo_schema_12(conn)
    conn.execute("DROP TABLE slot_counters")
    conn.execute("ALTER TABLE run_groups DROP COLUMN ids")


def undo_schema_9(conn: apsw.Connection) -> None:
    """Take a store back to before schema 9 (runs shared by many workers)."""
    undo_schema_11(conn)
    for table in ("run_workers", "run_groups", "run_claims"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DROP INDEX runs_key")
    conn.execute("DROP INDEX items_failed")
    conn.execute("ALTER TABLE runs DROP COLUMN run_key")


def test_schema_6_indexes_only_checkpoints_with_a_parent(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        root = mgr.save("p", 1, level="stage")
        child = mgr.save("p", 2, parent=root)
    db = tmp_path / "s" / "ckptlite.db"
    conn = apsw.Connection(str(db))  # back to schema 5: the full parent index
    conn.execute("DROP INDEX checkpoints_parent")
    conn.execute("CREATE INDEX checkpoints_parent ON checkpoints(parent_id)")
    conn.execute("ALTER TABLE sync_marks DROP COLUMN checkpoint_id")  # and before schema 7
    conn.execute("CREATE INDEX checkpoints_process_seq ON checkpoints(process_id, seq)")  # 8
    undo_schema_9(conn)
    conn.execute("PRAGMA user_version=5")
    conn.close()
    with ckptlite.open(tmp_path / "s") as mgr:  # migrates to 6
        conn = apsw.Connection(str(db))
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name='checkpoints_parent'"
        ).fetchone()
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM checkpoints WHERE parent_id=?", (root.id,)
        ).fetchall()
        conn.close()
        assert "WHERE parent_id IS NOT NULL" in sql
        assert "USING INDEX checkpoints_parent" in str(plan)
        assert [c.id for c in mgr.list(parent=root.id)] == [child.id]
        assert set(mgr.delete(root.id)) == {root.id, child.id}
    assert pragma(db, "user_version") == len(MIGRATIONS)


def _plans(mgr: ckptlite.CheckpointManager, call: Callable[[], object]) -> list[str]:
    """Return the query plan of every checkpoints query ``call`` runs on this thread."""
    ran: list[tuple[str, object]] = []
    conn = mgr.backend.db.connection()  # type: ignore[attr-defined]

    def trace(_cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        if "FROM checkpoints" in sql:
            ran.append((sql, bindings))
        return True

    conn.exec_trace = trace
    try:
        call()
    finally:
        conn.exec_trace = None
    assert ran
    return [
        " / ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        for sql, args in ran
    ]


def test_schema_8_drops_the_process_index_and_process_queries_still_search(
    tmp_path: Path,
) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        stage = mgr.save("p", 0, level="stage", name="s")
        for i in range(20):
            mgr.save("p", i, level="step", name=f"t{i % 3}")
            mgr.save("q", i, level="substep", name="x")
    db = tmp_path / "s" / "ckptlite.db"
    conn = apsw.Connection(str(db))  # back to schema 7
    conn.execute("CREATE INDEX checkpoints_process_seq ON checkpoints(process_id, seq)")
    undo_schema_9(conn)
    conn.execute("PRAGMA user_version=7")
    conn.close()
    with ckptlite.open(tmp_path / "s") as mgr:  # migrates to 8
        indexes = {
            r[0]
            for r in mgr.backend.db.read().execute(  # type: ignore[attr-defined]
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='checkpoints'"
            )
        }
        assert "checkpoints_process_seq" not in indexes
        newest = mgr.list(process_id="p")[0]
        calls: list[Callable[[], object]] = [
            lambda: mgr.latest("p"),
            lambda: mgr.latest("p", name="t1"),
            lambda: mgr.load_latest("p", level="stage"),
            lambda: mgr.list(process_id="p", limit=3),
            lambda: mgr.list(process_id="p", name="t2", limit=2),
            lambda: mgr.list(process_id="p", status="valid", limit=2),
        ]
        for call in calls:
            for plan in _plans(mgr, call):
                # Every process query reads an index range; none scans the table or
                # sorts all of a process's checkpoints to find the newest.
                assert "SCAN checkpoints" not in plan, plan
                assert "TEMP B-TREE" not in plan, plan
        assert mgr.latest("p") == newest
        assert mgr.latest("p", level="stage") == stage
        assert [c.seq for c in mgr.list(process_id="p", limit=3)] == [
            c.seq for c in mgr.list(process_id="p")[:3]
        ]
        assert [c.name for c in mgr.list(process_id="p", name="t2", limit=2)] == ["t2", "t2"]
        oldest = mgr.list(process_id="p")[-1]
        assert oldest == stage
        everything = mgr.list(process_id="p")[::-1]  # oldest first
        ascending = ListQuery(process_id="p", ascending=True, limit=4)
        assert mgr.backend.list(ascending) == everything[:4]
        after = ListQuery(process_id="p", ascending=True, after_seq=everything[1].seq, limit=2)
        assert mgr.backend.list(after) == everything[2:4]
    assert pragma(db, "user_version") == len(MIGRATIONS)


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


# -- pack files -----------------------------------------------------------------------


def _packs(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (store / "blobs" / "packs").iterdir()}


def _chunk_rows(mgr: ckptlite.CheckpointManager) -> list[tuple[str, str | None, int | None]]:
    conn = mgr.backend.db.read()  # type: ignore[attr-defined]
    return list(conn.execute("SELECT digest, pack, pack_offset FROM chunks WHERE data IS NULL"))


def test_a_save_writes_its_big_chunks_into_one_pack(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20) as mgr:
        arr = rng.random(1_000_000)  # 8 MB: 8 chunks, one write group
        mgr.save("p", {"a": arr})
        rows = _chunk_rows(mgr)
        packs = _packs(tmp_path / "s")
        assert len(rows) == 8 and {r[1] for r in rows} == set(packs) and len(packs) == 1
        assert sorted(r[2] for r in rows) == [i << 20 for i in range(8)]
        assert not list((tmp_path / "s" / "blobs").glob("??"))  # no file per chunk
        assert np.array_equal(mgr.load_latest("p")[1]["a"], arr)  # type: ignore[index]


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_a_big_save_makes_one_pack_per_core_of_at_least_8_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    from ckptlite import _chunkio

    monkeypatch.setattr(_chunkio, "_CORES", cores)
    arr = np.random.default_rng(3).random(3 << 20)  # 24 MiB: 24 chunks
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        mgr.save("p", {"a": arr})
        packs = sorted(r[1] for r in _chunk_rows(mgr))
        # 1 core: one group (24 chunks); 2: two of 12; 4: three of 8 (8 MiB at least).
        sizes = sorted(packs.count(p) for p in set(packs))
        assert sizes == {1: [24], 2: [12, 12], 4: [8, 8, 8]}[cores]
        assert len(_packs(tmp_path / "s")) == len(sizes)
        assert np.array_equal(mgr.load_latest("p")[1]["a"], arr)  # type: ignore[index]


def _unpack_to_chunk_files(store: Path) -> int:
    """Turn a store's packs into one file per chunk: the layout before packs."""
    conn = apsw.Connection(str(store / "ckptlite.db"))
    rows = list(
        conn.execute(
            "SELECT digest, pack, pack_offset, stored_size FROM chunks WHERE pack IS NOT NULL"
        )
    )
    for digest, pack, offset, size in rows:
        data = (store / "blobs" / "packs" / pack).read_bytes()[offset : offset + size]
        (store / "blobs" / digest[:2]).mkdir(mode=0o700, exist_ok=True)
        (store / "blobs" / digest[:2] / digest).write_bytes(data)
    conn.execute("UPDATE chunks SET pack=NULL, pack_offset=NULL")
    conn.close()
    for p in (store / "blobs" / "packs").iterdir():
        p.unlink()
    return len(rows)


def test_a_store_with_one_file_per_chunk_still_loads_verifies_backs_up_and_collects(
    tmp_path: Path,
) -> None:
    store = tmp_path / "old"
    arrays = [np.random.default_rng(i).random(300_000) for i in range(2)]
    with ckptlite.open(store) as mgr:
        cps = [mgr.save("p", {"a": a}) for a in arrays]
    assert _unpack_to_chunk_files(store) == 6
    with ckptlite.open(store) as mgr:
        assert all(np.array_equal(mgr.load(c)["a"], a) for c, a in zip(cps, arrays, strict=True))
        assert mgr.verify(full=True).ok
        mgr.backup(tmp_path / "copy")
        new = mgr.save("p", {"a": arrays[0] + 1})  # new chunks go into a pack
        assert len(_packs(store)) == 1
        mgr.delete(cps[1].id)
        report = mgr.gc()
        assert len(report.chunks) == 3 and report.bytes_reclaimed >= 3 * 800_000
        assert len(list((store / "blobs").glob("??/*"))) == 3  # cps[0]'s own files remain
        assert np.array_equal(mgr.load(new)["a"], arrays[0] + 1)
    with ckptlite.open(tmp_path / "copy") as copy:
        assert copy.verify(full=True).ok
        assert np.array_equal(copy.load(cps[1])["a"], arrays[1])


def _two_parts(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    a, b = rng.bytes(1 << 20), rng.bytes(3 << 20)
    # "b" first: stored first in the pack, so when only "a" lives on, its pack is mostly
    # dead with a live tail (a rewrite), not a dead tail (cut off in place).
    return {"b": b, "a": a}


def _save_alone(store: Path, state: dict[str, bytes]) -> ckptlite.Checkpoint:
    """Save from a manager of its own: closing it closes its open pack (next save: a new one)."""
    with ckptlite.open(store) as mgr:
        return mgr.save("p", state)


def test_gc_rewrites_a_mostly_dead_pack_and_deletes_a_dead_one(tmp_path: Path) -> None:
    store = tmp_path / "s"
    both = _save_alone(store, _two_parts(1))
    kept = _save_alone(store, {"a": _two_parts(1)["a"]})  # shares a's chunk, no new pack
    gone = _save_alone(store, _two_parts(2))
    with ckptlite.open(store) as mgr:
        (old,) = set(_packs(store)) - {
            r[1] for r in _chunk_rows(mgr) if r[0] in mgr.backend.get_record(gone.id).digests
        }
        assert len(_packs(store)) == 2
        mgr.delete(both.id)
        mgr.delete(gone.id)
        dry = mgr.gc(dry_run=True)
        assert len(_packs(store)) == 2
        report = mgr.gc()
        assert set(report.packs) == set(dry.packs) and len(report.packs) == 2
        assert report.bytes_reclaimed == dry.bytes_reclaimed >= 7 << 20
        packs = _packs(store)
        assert len(packs) == 1 and old not in packs  # a's chunk was moved to a new pack
        assert sum(packs.values()) == 1 << 20
        assert mgr.load(kept) == {"a": _two_parts(1)["a"]}
        report2 = mgr.verify(full=True)
        assert report2.ok and report2.orphan_packs == ()
        assert mgr.gc().packs == ()  # nothing more to do


def _blob_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "blobs").rglob("*") if p.is_file())


def test_gc_reports_exactly_the_bytes_it_frees_and_dry_run_lists_the_same(
    tmp_path: Path,
) -> None:
    # The report: 32 MB reported for 16 MB freed (a dead pack chunk was counted as a
    # row and again as its pack), and dry-run said "compact" for packs gc deleted.
    store = tmp_path / "s"
    rng = np.random.default_rng(3)
    _save_alone(store, {"k": rng.bytes(1 << 20)})
    gone = _save_alone(store, {"g": rng.bytes(16 << 20)})  # a pack of its own, all dead
    both = _save_alone(store, _two_parts(1))  # mostly dead afterwards: rewritten
    _save_alone(store, {"a": _two_parts(1)["a"]})
    with ckptlite.open(store) as mgr:
        (store / "blobs" / "tmp" / "0123abcd.999.dead.tmp").write_bytes(b"x" * 1000)
        mgr.delete(gone.id)
        mgr.delete(both.id)
        dry = mgr.gc(dry_run=True)
        before = _blob_bytes(store)
        real = mgr.gc()
        freed = before - _blob_bytes(store)
        assert real.bytes_reclaimed == freed == dry.bytes_reclaimed
        assert 19 << 20 <= freed < 20 << 20  # 16 MiB + 3 MiB + the temp file
        assert real.deleted_packs and len(real.compacted_packs) == 1
        assert (dry.deleted_packs, dry.compacted_packs) == (
            real.deleted_packs,
            real.compacted_packs,
        )
        assert set(real.packs) == set(real.deleted_packs) | set(real.compacted_packs)
        assert mgr.verify(full=True).ok


def test_a_load_racing_a_pack_rewrite_reads_the_new_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s"
    both = _save_alone(store, _two_parts(1))
    kept = _save_alone(store, {"a": _two_parts(1)["a"]})
    with ckptlite.open(store) as mgr:
        mgr.delete(both.id)
        blobs = mgr.backend.blobs  # type: ignore[attr-defined]
        real = blobs.read_packed_into
        moved: list[str] = []

        def racing(name: str, *args: object) -> int:
            if not moved:  # the row named the old pack: another process compacts it now
                with ckptlite.open(store) as other:
                    moved.extend(other.gc().packs)
                assert not blobs.pack_path(name).exists()
            return real(name, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(blobs, "read_packed_into", racing)
        assert mgr.load(kept) == {"a": _two_parts(1)["a"]}
        assert moved and mgr.get(kept.id).status is ckptlite.Status.VALID


# -- an unchanged store: a load again reads no index rows -----------------------------


def test_a_tile_loaded_again_from_an_unchanged_store_reads_no_index_rows(
    tmp_path: Path, trace_sql: Callable[[ckptlite.CheckpointManager], list[str]]
) -> None:
    # P12: the record and its chunk row were ~60 of a 256 KiB tile load's ~155 us.
    arr = np.random.default_rng(4).random(1 << 16, dtype=np.float32)  # 256 KiB: 1 chunk
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", arr, name="t")
        other = mgr.save("p", arr + 1, name="u")
        assert np.array_equal(mgr.load(cp), arr)
        statements = trace_sql(mgr)
        assert np.array_equal(mgr.load(cp), arr)
        hits = list(statements)
        assert np.array_equal(mgr.load(other), arr + 1)  # not read yet: a miss
        assert hits and set(hits) == {"PRAGMA data_version"}, hits
        assert [s for s in statements[len(hits) :] if s.startswith("SELECT")], statements


def test_a_cached_load_sees_a_delete_and_gc_by_another_connection(tmp_path: Path) -> None:
    arr = np.random.default_rng(5).random(1 << 16, dtype=np.float32)
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", arr)
        assert np.array_equal(mgr.load(cp), arr)
        with ckptlite.open(tmp_path / "s") as other:
            other.delete(cp.id)
            assert len(other.gc().chunks) == 1
        with pytest.raises(ckptlite.CheckpointNotFoundError):
            mgr.load(cp)


def test_a_cached_load_reads_a_pack_compacted_by_another_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s"
    both = _save_alone(store, _two_parts(1))
    kept = _save_alone(store, {"a": _two_parts(1)["a"]})
    with ckptlite.open(store) as mgr:
        assert mgr.load(kept) == {"a": _two_parts(1)["a"]}  # its rows cached
        with ckptlite.open(store) as other:
            other.delete(both.id)
            moved = other.gc().compacted_packs
        assert len(moved) == 1
        blobs = mgr.backend.blobs  # type: ignore[attr-defined]
        real = blobs.read_packed_into
        read: list[str] = []

        def spy(name: str, *args: object) -> int:
            read.append(name)
            return real(name, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(blobs, "read_packed_into", spy)
        assert mgr.load(kept) == {"a": _two_parts(1)["a"]}
        assert read and moved[0] not in read  # the new pack, not a retry after the old


def test_damage_after_a_cached_load_is_still_caught(tmp_path: Path) -> None:
    arr = np.random.default_rng(6).random(1 << 18, dtype=np.float32)  # 1 MiB, raw
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", arr)
        assert np.array_equal(mgr.load(cp), arr)
        (name,) = _packs(tmp_path / "s")
        pack = tmp_path / "s" / "blobs" / "packs" / name
        with open(pack, "r+b") as f:  # a bit flips on the disk under a warm cache
            f.seek(pack.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(ckptlite.CorruptCheckpointError):
            mgr.load(cp)
        assert mgr.get(cp.id).status is ckptlite.Status.CORRUPTED


# -- saving again: unchanged chunks are compared, not hashed ---------------------------


def test_saving_again_compares_unchanged_chunks_instead_of_hashing_them(
    tmp_path: Path, count_digests: Callable[[], list[int]]
) -> None:
    arr = np.random.default_rng(0).random((1024, 1024))  # 8 MiB: 8 raw chunks
    with ckptlite.open(tmp_path / "s") as mgr:
        first = mgr.save("p", {"a": arr}, name="x")
        calls = count_digests()
        same = mgr.save("p", {"a": arr}, name="x")
        assert calls == []  # every chunk equal to the slot's latest: none hashed
        changed = arr.copy()
        changed[300:310] += 1.0  # 80 KB inside the third chunk
        third = mgr.save("p", {"a": changed}, name="x")
        assert calls == [1 << 20]  # only the changed chunk was hashed
        other = mgr.save("p", {"a": arr}, name="y")  # another slot: no previous there
        assert len(calls) == 1 + 8
        refs = [set(mgr.backend.get_record(c.id).digests) for c in (first, same, third)]
        assert refs[0] == refs[1] and len(refs[2] - refs[0]) == 1
        assert mgr.backend.get_record(other.id).digests == mgr.backend.get_record(first.id).digests
        assert np.array_equal(mgr.load(third)["a"], changed)
        assert np.array_equal(mgr.load(same)["a"], arr)
        assert mgr.verify(full=True).ok


@pytest.mark.parametrize(
    "change",
    ["first byte", "last byte", "middle byte", "negative zero", "every chunk"],
)
def test_a_chunk_changed_anywhere_is_hashed_and_stored_again(
    tmp_path: Path, count_digests: Callable[[], list[int]], change: str
) -> None:
    arr = np.random.default_rng(2).random((1024, 1024))  # 8 chunks of 1 MiB
    arr[2, :] = 0.0
    raw = arr.reshape(-1).view(np.uint8)
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", {"a": arr})
        changed = arr.copy()
        flat = changed.reshape(-1).view(np.uint8)
        if change == "first byte":
            flat[3 << 20] ^= 1
        elif change == "last byte":
            flat[(4 << 20) - 1] ^= 1
        elif change == "middle byte":
            flat[(3 << 20) + 500_000] ^= 1
        elif change == "negative zero":
            changed[2, 7] = -0.0  # == 0.0 as a float, another bit pattern
        else:
            changed += 1.0
        assert not np.array_equal(flat, raw)
        calls = count_digests()
        again = mgr.save("p", {"a": changed})
        assert len(calls) == (8 if change == "every chunk" else 1)
        loaded = mgr.load(again)["a"]
        assert loaded.tobytes() == changed.tobytes()
        assert mgr.verify(full=True).ok


def test_chunks_not_in_the_page_cache_or_cut_short_are_hashed(
    tmp_path: Path, count_digests: Callable[[], list[int]]
) -> None:
    import os

    arr = np.random.default_rng(1).random((1024, 1024))
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", {"a": arr})
        (pack,) = (tmp_path / "s" / "blobs" / "packs").iterdir()
        fd = os.open(pack, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # fsynced, so clean: dropped
        os.close(fd)
        calls = count_digests()
        again = mgr.save("p", {"a": arr})
        assert len(calls) >= 7, "chunks the disk would have to deliver must be hashed"
        assert np.array_equal(mgr.load(again)["a"], arr)
        os.truncate(pack, pack.stat().st_size // 2)  # no map past the end (SIGBUS)
        calls.clear()
        mgr.save("p", {"a": arr})
        assert len(calls) >= 4


def test_threads_creating_one_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching a brand-new database to WAL is refused at once (no busy handler) to
    all but one connection: the others must wait their turn, not fail."""
    import threading

    errors: list[BaseException] = []
    for r in range(60):
        store = tmp_path / f"s{r}"
        start = threading.Barrier(4)

        def create(store: Path = store, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                with ckptlite.open(store) as mgr:
                    mgr.save("p", {"x": 1})
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


# -- a damaged chunk is stored again by the next save of the same bytes ---------------


def _flip_in_chunk(store: Path, digest: str) -> None:
    from damage import chunk_span, flip_bit

    path, offset, _ = chunk_span(store, digest)
    flip_bit(path, offset + 1000)


def test_the_next_save_of_the_same_bytes_repairs_a_damaged_chunk(tmp_path: Path) -> None:
    store = tmp_path / "s"
    arr = np.random.default_rng(3).random((1024, 1024))  # 8 raw chunks in one pack
    with ckptlite.open(store) as mgr:
        first = mgr.save("p", {"a": arr}, name="x")
        victim = mgr.backend.get_record(first.id).digests[2]
        _flip_in_chunk(store, victim)
        with pytest.raises(ckptlite.CorruptCheckpointError):
            mgr.load(first)
        assert mgr.backend.has_chunks([victim]) == set()  # flagged: not counted as stored
        again = mgr.save("p", {"a": arr}, name="x")  # a resumed job saves the same state
        assert mgr.backend.get_record(again.id).digests == mgr.backend.get_record(first.id).digests
        assert np.array_equal(mgr.load(again)["a"], arr)
        report = mgr.verify(full=True)
        assert report.ok and report.corrupted == ()
        assert mgr.get(first.id).status is ckptlite.Status.VALID  # healed with it
        assert np.array_equal(mgr.load(first)["a"], arr)
        assert mgr.backend.has_chunks([victim]) == {victim}


def test_verify_full_flags_a_damaged_inline_chunk_and_a_save_repairs_it(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, chunk_size=16 * 1024) as mgr:
        blob = np.random.default_rng(4).bytes(100_000)  # 16 KiB chunks: all inline
        cp = mgr.save("p", {"b": blob})
        digest = mgr.backend.get_record(cp.id).digests[1]
        conn = mgr.backend.db.connection()  # type: ignore[attr-defined]
        (data,) = conn.execute("SELECT data FROM chunks WHERE digest=?", (digest,)).fetchone()
        conn.execute(
            "UPDATE chunks SET data=? WHERE digest=?", (bytes([data[0] ^ 1]) + data[1:], digest)
        )
        assert mgr.verify(full=True).corrupted == (cp.id,)  # no load needed to flag it
        mgr.save("p", {"b": blob})  # the same bytes again: the chunk is stored anew
        assert mgr.verify(full=True).ok
        assert mgr.load(cp.id) == {"b": blob}


def test_a_repaired_chunk_leaves_its_old_file_to_gc(tmp_path: Path) -> None:
    store = tmp_path / "old"
    arr = np.random.default_rng(5).random(300_000)
    with ckptlite.open(store) as mgr:
        cp = mgr.save("p", {"a": arr})
    _unpack_to_chunk_files(store)  # a store from before packs: one file per chunk
    with ckptlite.open(store) as mgr:
        digest = mgr.backend.get_record(cp.id).digests[0]
        _flip_in_chunk(store, digest)
        assert mgr.verify(full=True).corrupted == (cp.id,)
        mgr.save("p", {"a": arr})  # stored again, into a pack
        assert mgr.verify(full=True).ok
        assert digest in mgr.verify().orphan_chunks  # its old file is stray now
        assert digest in mgr.gc().chunks
        assert not (store / "blobs" / digest[:2] / digest).exists()
        assert np.array_equal(mgr.load(cp.id)["a"], arr)


def test_a_write_block_that_raises_rolls_back_types_the_error_and_frees_the_lock(
    tmp_path: Path,
) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        db = mgr.backend.db  # type: ignore[attr-defined]
        with pytest.raises(StoreFullError), db.write() as conn:
            conn.execute("INSERT INTO store_meta(key, value) VALUES ('k', 'v')")
            raise apsw.FullError("database or disk is full")
        with pytest.raises(KeyError), db.write() as conn:  # not an apsw error: as it is
            conn.execute("INSERT INTO store_meta(key, value) VALUES ('k', 'v')")
            raise KeyError("x")
        rows = db.read().execute("SELECT value FROM store_meta WHERE key='k'").fetchall()
        assert rows == []
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(mgr.save("p", 1)))
        t.start()
        t.join(30)
        assert done and mgr.latest("p") == done[0]


def test_schema_11_counts_on_from_the_positions_an_older_store_stamped(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        cps = [mgr.save("p", i, name="t") for i in range(4)]
        mgr.delete(cps[-1].id)  # the older store then forgets position 4
    db = tmp_path / "s" / "ckptlite.db"
    conn = apsw.Connection(str(db))
    undo_schema_11(conn)
    conn.execute("PRAGMA user_version=10")
    conn.close()
    with ckptlite.open(tmp_path / "s") as mgr:  # migrates to 11: no counter yet
        assert mgr.save("p", 9, name="t").metadata["ckptlite.slot_index"] == 4
        assert mgr.save("p", 9, name="t").metadata["ckptlite.slot_index"] == 5
        assert mgr.save("p", 9, name="other").metadata["ckptlite.slot_index"] == 1
    assert pragma(db, "user_version") == len(MIGRATIONS)


def test_a_store_from_before_chunk_checks_migrates_and_loads_by_digest(tmp_path: Path) -> None:
    arr = np.random.default_rng(9).random(1 << 17, dtype=np.float32)  # 512 KiB: 8 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=64 << 10) as mgr:
        old = mgr.save("p", arr, name="old")
    db = tmp_path / "s" / "ckptlite.db"
    conn = apsw.Connection(str(db))  # what schema 12 wrote: manifests without checks
    payload, manifest = conn.execute(
        "SELECT payload, manifest FROM checkpoints WHERE id=?", (old.id,)
    ).fetchone()
    bare = chunking.pack_manifest(chunking.unpack_manifest(manifest))
    assert bare != manifest
    checksum = chunking.record_checksum(payload, bare, "blake3")
    conn.execute(
        "UPDATE checkpoints SET manifest=?, checksum=? WHERE id=?", (bare, checksum, old.id)
    )
    conn.execute("DELETE FROM store_meta WHERE key='chunk_check'")
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) - 1}")
    conn.close()
    with ckptlite.open(tmp_path / "s", chunk_size=64 << 10) as mgr:
        assert pragma(db, "user_version") == len(MIGRATIONS)
        assert np.array_equal(mgr.load(old), arr)
        new = mgr.save("p", arr * 2, name="new")
        _, checks = chunking.unpack_checked(mgr.backend.get_record(new.id).manifest)
        assert len(checks) == 8
        assert mgr.verify(full=True).ok


def test_a_chunk_row_that_does_not_parse_is_read_by_its_own_query(tmp_path: Path) -> None:
    # The record's statement reads its chunk rows as text: a damaged row (a pack
    # name with a space) is not kept from it, and the load still reports the damage.
    arr = np.random.default_rng(7).random(1 << 16, dtype=np.float32)
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", arr)
        conn = mgr.backend.db.connection()  # type: ignore[attr-defined]
        conn.execute("UPDATE chunks SET pack = 'not a pack' WHERE pack IS NOT NULL")
        with pytest.raises(ckptlite.CorruptCheckpointError):
            mgr.load(cp)


def test_a_cached_checkpoint_s_metadata_is_the_caller_s_own(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1, name="t", metadata={"tile": "a", "bands": [1, 2]})
        for _ in range(2):  # a miss, then a hit: each hands out its own dict
            cp = mgr.latest("p", name="t")
            assert cp is not None
            assert cp.metadata["tile"] == "a" and cp.metadata["bands"] == [1, 2]
            cp.metadata["tile"] = "changed"
            cp.metadata["bands"].append(3)
        flat = mgr.save("p", 2, name="f", metadata={"tile": "b"})
        for _ in range(2):
            got = mgr.latest("p", name="f")
            assert got is not None and got.id == flat.id and got.metadata["tile"] == "b"
            got.metadata["tile"] = "changed"
        for _ in range(2):  # a load's record by id: a miss, then a hit
            rec = mgr.backend.get_record(flat.id)
            assert rec.checkpoint.metadata["tile"] == "b"
            rec.checkpoint.metadata["tile"] = "changed"


def test_a_full_verify_reads_every_record_from_the_index_not_the_cache(
    tmp_path: Path, trace_sql: Callable[[ckptlite.CheckpointManager], list[str]]
) -> None:
    # verify looks at what is on disk: a record a load kept (a read-only view writes
    # nothing, so nothing changes the stamp) is read again.
    arr = np.random.default_rng(8).random(1 << 16, dtype=np.float32)
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", arr)
    with ckptlite.open(tmp_path / "s", readonly=True) as view:
        assert np.array_equal(view.load(cp), arr)
        statements = trace_sql(view)
        assert view.verify(full=True).ok
        assert [s for s in statements if "FROM checkpoints WHERE id=?" in s], statements
