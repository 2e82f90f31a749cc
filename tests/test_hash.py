"""The digest algorithm per store (issue 14): BLAKE3 for new stores, SHA-256 stores keep working.

Sync between stores of different algorithms re-addresses chunks and rewrites
record checksums without decoding states; damage is still caught as it is copied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import apsw
import blake3
import numpy as np
import pytest
import xxhash
from damage import chunk_span, flip_bit

import ckptlite
from ckptlite import chunking
from ckptlite.errors import ConfigError

Mgr = ckptlite.CheckpointManager
CHUNK = 64 * 1024


def _open(url: str | Path, **kw: Any) -> Mgr:
    return ckptlite.open(url, durability="none", chunk_size=CHUNK, **kw)


def _states() -> list[Any]:
    rng = np.random.default_rng(7)
    return [
        {"noise": rng.random(40_000).astype("f4")},  # raw chunks (incompressible)
        {"ints": rng.integers(0, 300, 100_000, dtype=np.int32)},  # zstd chunks
        {"small": 1, "text": "x"},  # inline only
        {"empty": np.zeros(0, dtype="f8"), "again": rng.random(40_000).astype("f4")},
    ]


def _fill(mgr: Mgr) -> list[ckptlite.Checkpoint]:
    cps: list[ckptlite.Checkpoint] = []
    for i, state in enumerate(_states()):
        parent = cps[-1] if cps else None
        cps.append(mgr.save("p", state, name=f"s{i}", parent=parent))
    return cps


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


def _stored_hash(store: Path) -> str | None:
    conn = apsw.Connection(str(store / "ckptlite.db"))
    try:
        row = conn.execute("SELECT value FROM store_meta WHERE key='hash'").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _drop_hash_key(store: Path) -> None:
    """Make ``store`` what the code before issue 14 made: no recorded algorithm (SHA-256)."""
    conn = apsw.Connection(str(store / "ckptlite.db"))
    try:
        conn.execute("DELETE FROM store_meta WHERE key='hash'")
    finally:
        conn.close()


def _addressed_by(mgr: Mgr, algo: str) -> None:
    """Assert every chunk of every checkpoint is addressed by ``algo`` of its raw bytes."""
    h = {"sha256": lambda b: hashlib.sha256(b).hexdigest(), "blake3": _b3}[algo]
    seen = 0
    for cp in mgr.list():
        for d in mgr.backend.get_record(cp.id).digests:
            assert h(chunking.raw_bytes(mgr.backend.read_chunk(d))) == d
            seen += 1
    assert seen


def _checked(mgr: Mgr) -> None:
    """Assert every chunk of every checkpoint has its check: XXH3-128 of its raw bytes."""
    seen = 0
    for cp in mgr.list():
        manifest, checks = chunking.unpack_checked(mgr.backend.get_record(cp.id).manifest)
        for d, _ in (e for buf in manifest for e in buf):
            raw = chunking.raw_bytes(mgr.backend.read_chunk(d))
            assert checks[d] == xxhash.xxh3_128_digest(raw)
            seen += 1
    assert seen


def _b3(data: Any) -> str:
    return blake3.blake3(data).hexdigest()


# -- choosing and recording the algorithm ----------------------------------------------


def test_new_stores_use_blake3_and_sha256_on_request(tmp_path: Path) -> None:
    with _open(tmp_path / "b") as mgr:
        assert mgr.hash_name == "blake3" and mgr.backend.hash_name == "blake3"
        _fill(mgr)
        _addressed_by(mgr, "blake3")
    assert _stored_hash(tmp_path / "b") == "blake3"
    with _open(tmp_path / "s", hash="sha256") as mgr:
        assert mgr.hash_name == "sha256"
        _fill(mgr)
        _addressed_by(mgr, "sha256")
    assert _stored_hash(tmp_path / "s") == "sha256"
    with _open(tmp_path / "s") as mgr:  # reopened without hash=: the store's own
        assert mgr.hash_name == "sha256" and mgr.config.hash == "sha256"
    with ckptlite.open("memory://", hash="sha256") as mgr:
        assert mgr.backend.hash_name == "sha256"


def test_a_hash_the_store_does_not_use_is_refused(tmp_path: Path) -> None:
    with _open(tmp_path / "s", hash="sha256") as mgr:
        cp = mgr.save("p", {"a": np.arange(50_000)})
    with pytest.raises(ConfigError, match="sha256") as e:
        _open(tmp_path / "s", hash="blake3")
    assert "hash" in e.value.hint
    with pytest.raises(ConfigError, match="unknown hash"):
        _open(tmp_path / "x", hash="md5")
    assert not (tmp_path / "x").exists()  # refused before anything was created
    with _open(tmp_path / "s", hash="sha256") as mgr:
        assert np.array_equal(mgr.load(cp.id)["a"], np.arange(50_000))


def test_hash_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("CKPTLITE_HASH", "sha256")
    with _open(tmp_path / "s") as mgr:
        assert mgr.hash_name == "sha256"
    monkeypatch.setenv("CKPTLITE_HASH", "crc32")
    with pytest.raises(ConfigError, match="CKPTLITE_HASH"):
        _open(tmp_path / "t")


def test_the_hash_setting_names_new_stores_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured hash does not refuse an existing store of the other algorithm."""
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "none.toml"))
    with _open(tmp_path / "b3") as mgr:
        cp = mgr.save("p", {"x": 1})
    monkeypatch.setenv("CKPTLITE_HASH", "sha256")
    with _open(tmp_path / "b3") as mgr:
        assert mgr.hash_name == mgr.config.hash == "blake3"
        assert mgr.load(cp.id) == {"x": 1}
    with pytest.raises(ConfigError, match="blake3 store"):  # an explicit hash= still refuses
        _open(tmp_path / "b3", hash="sha256")


@pytest.mark.parametrize("made", ["before-issue-14", "hash=sha256"])
def test_sha256_stores_keep_working(tmp_path: Path, made: str) -> None:
    store = tmp_path / "old"
    with _open(store, hash="sha256") as mgr:
        old = _fill(mgr)
    if made == "before-issue-14":
        _drop_hash_key(store)
    with _open(store) as mgr:
        assert mgr.hash_name == "sha256"
        for cp, state in zip(old, _states(), strict=True):
            assert _equal(mgr.load(cp.id), state)
        new = mgr.save("p", {"more": np.random.default_rng(1).random(30_000)}, name="new")
        mgr.load(new.id)
        _addressed_by(mgr, "sha256")  # new saves in an old store use SHA-256
        assert mgr.verify(full=True).ok
        mgr.delete(old[0].id)
        assert not mgr.gc().dry_run and mgr.verify(full=True).ok
        backup = mgr.backup(tmp_path / "copy")
        kept = len(mgr.list())
    assert _stored_hash(store) == (None if made == "before-issue-14" else "sha256")
    with ckptlite.open(store, readonly=True) as ro:
        assert ro.hash_name == "sha256" and ro.verify(full=True).ok
        assert _equal(ro.load(new.id)["more"], np.random.default_rng(1).random(30_000))
    with _open(backup.dest) as copy:
        assert copy.hash_name == "sha256" and copy.verify(full=True).ok
        assert len(copy.list()) == kept


# -- sync between algorithms --------------------------------------------------------------


def _sync_and_check(src: Mgr, dst: Mgr, dst_algo: str) -> None:
    cps = {c.id: c for c in src.list()}
    report = ckptlite.sync(src, dst)
    assert report.ok and report.checkpoints_copied == len(cps)
    for cid in cps:
        assert _equal(dst.load(cid), src.load(cid))
        assert dst.get(cid).parent_id == cps[cid].parent_id
    _addressed_by(dst, dst_algo)
    _checked(dst)  # re-addressed chunks keep their checks: a check is of the raw bytes
    assert dst.verify(full=True).ok
    again = ckptlite.sync(src, dst)
    assert not again.changed and again.chunks_copied == 0


@pytest.mark.parametrize(("a", "b"), [("sha256", "blake3"), ("blake3", "sha256")])
def test_sync_between_local_stores_of_different_algorithms(tmp_path: Path, a: str, b: str) -> None:
    with _open(tmp_path / "a", hash=a) as src, _open(tmp_path / "b", hash=b) as dst:
        _fill(src)
        dst.save("p", _states()[0], name="own")  # chunks the target has under its own digests
        _sync_and_check(src, dst, b)
        # The target's own saves of the same bytes dedup against the copied chunks.
        before = dst.stats()["chunks"]
        dst.save("q", _states()[1])
        assert dst.stats()["chunks"] == before


@pytest.mark.parametrize(("a", "b"), [("blake3", "sha256"), ("sha256", "blake3")])
def test_sync_between_local_and_postgres_of_different_algorithms(
    tmp_path: Path, pg_schema: str, a: str, b: str
) -> None:
    with _open(tmp_path / "a", hash=a) as local, _open(pg_schema, hash=b) as pg:
        assert pg.hash_name == b
        _fill(local)
        _sync_and_check(local, pg, b)
        back = _open(tmp_path / "back", hash=a)
        with back:
            _sync_and_check(pg, back, a)
    with _open(pg_schema) as pg:  # the algorithm is recorded in PostgreSQL too
        assert pg.hash_name == b


def test_archives_between_algorithms(tmp_path: Path) -> None:
    with _open(tmp_path / "a", hash="sha256") as src, ckptlite.open("memory://") as mem:
        cps = _fill(src)
        ckptlite.export_archive(src, tmp_path / "a.tar")
        ckptlite.sync(src, mem)
        ckptlite.export_archive(mem, tmp_path / "m.tar")  # a blake3 store's archive
    with _open(tmp_path / "b") as dst:
        assert dst.hash_name == "blake3"
        assert ckptlite.import_archive(dst, tmp_path / "a.tar").imported == len(cps)
        assert dst.verify(full=True).ok
        assert _equal(dst.load(cps[0].id), _states()[0])
    with _open(tmp_path / "c", hash="sha256") as dst:
        assert ckptlite.import_archive(dst, tmp_path / "m.tar").imported == len(cps)
        assert dst.verify(full=True).ok
        _addressed_by(dst, "sha256")
        assert _equal(dst.load(cps[1].id), _states()[1])


def test_a_damaged_chunk_is_not_readdressed(tmp_path: Path) -> None:
    """A damaged source chunk is caught by the source's algorithm, never renamed valid."""
    a = ckptlite.open(tmp_path / "a", durability="none", hash="sha256")
    with a as src, _open(tmp_path / "b") as dst:
        data = np.random.default_rng(3).random(300_000)  # 2.4 MB: 3 raw chunks in a pack
        parent = src.save("p", {"big": data})
        child = src.save("p", "child", parent=parent)
        fine = src.save("p", "fine")
        digest = src.backend.get_record(parent.id).digests[1]
        path, offset, length = chunk_span(tmp_path / "a", digest)
        flip_bit(path, offset + length // 2)
        report = ckptlite.sync(src, dst)
        assert set(report.failed) == {parent.id, child.id}
        assert {c.id for c in dst.list()} == {fine.id}
        assert dst.verify(full=True).ok
        assert digest not in src.backend.has_chunks([digest])  # flagged bad at the source


def test_a_damaged_record_is_not_given_a_valid_checksum(tmp_path: Path) -> None:
    """A record whose checksum fails at the source is not re-checksummed into a valid one."""
    with _open(tmp_path / "a", hash="sha256") as src:
        bad = src.save("p", {"a": np.arange(20_000)}, name="bad")
        fine = src.save("p", "fine")
    conn = apsw.Connection(str(tmp_path / "a" / "ckptlite.db"))
    try:
        conn.execute("UPDATE checkpoints SET checksum=? WHERE id=?", ("0" * 64, bad.id))
    finally:
        conn.close()
    with _open(tmp_path / "a") as src, _open(tmp_path / "b") as dst:
        report = ckptlite.sync(src, dst)
        assert report.failed == (bad.id,)
        assert {c.id for c in dst.list()} == {fine.id}
        assert dst.verify(full=True).ok


def test_chunks_a_target_loses_mid_sync_are_copied_again_under_its_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc in the target between chunks and records: the retry maps its digests back."""
    with _open(tmp_path / "a", hash="sha256") as src, ckptlite.open("memory://") as dst:
        cps = _fill(src)
        backend: Any = dst.backend
        real = backend.import_records
        lost: list[str] = []

        def import_records(records: Any, *args: Any, **kw: Any) -> int:
            if records and not lost:  # the first time: lose every chunk just copied
                lost.extend(backend._chunks)
                backend._chunks.clear()
            return int(real(records, *args, **kw))

        monkeypatch.setattr(backend, "import_records", import_records)
        report = ckptlite.sync(src, dst)
        assert lost and report.ok and report.checkpoints_copied == len(cps)
        assert set(lost) <= set(backend._chunks)  # written again, by their BLAKE3 digests
        assert dst.verify(full=True).ok
        for cp, state in zip(cps, _states(), strict=True):
            assert _equal(dst.load(cp.id), state)
