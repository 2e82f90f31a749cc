"""Issue 13 item 3: damage never spreads.

A checkpoint T uses chunks from two pack files (it deduplicates against two
earlier saves). Three of its chunks are damaged, in both packs. Whichever of
``load``, ``load_latest``, ``verify(full=True)`` or ``sync`` finds the damage
must flag every bad chunk, not only the first: then "rerunning the pipeline"
(saving the same state again) stores them again, and the new checkpoint loads
the first time. A chunk left unflagged would be reused, and the new checkpoint
would be as broken as the old one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import apsw
import pytest
from damage import chunk_span
from fault_harness import CHUNK, open_store

import ckptlite
from ckptlite import chunking


def _bytes(seed: int) -> bytes:
    return random.Random(seed).randbytes(4 * CHUNK)  # four chunks, each in a pack file


def _state() -> dict[str, Any]:
    return {"x": _bytes(1), "y": _bytes(2)}


def _build(store: Path) -> tuple[dict[str, ckptlite.Checkpoint], list[str]]:
    """Save X, Y, then T = X + Y (in two packs); damage 3 of T's chunks; return them."""
    cps = {}
    # A manager per save: a manager kept open appends its saves to one open pack.
    for key, proc, state, name in (
        ("old", "pt", {"x": _bytes(3), "y": _bytes(4)}, "t"),  # a fallback
        ("x", "px", {"x": _bytes(1)}, ""),
        ("y", "py", {"y": _bytes(2)}, ""),
    ):
        with open_store(store) as mgr:
            cps[key] = mgr.save(proc, state, name=name)
    with open_store(store) as mgr:
        cps["t"] = mgr.save("pt", _state(), name="t")
        manifest = chunking.unpack_manifest(mgr.backend.get_record(cps["t"].id).manifest)
    x, y = [[d for d, _ in buf] for buf in manifest]
    damaged = [x[1], x[3], y[2]]
    assert len({chunk_span(store, d)[0] for d in damaged}) == 2  # in two pack files
    for d in damaged:
        path, offset, _ = chunk_span(store, d)
        with open(path, "r+b") as f:
            f.seek(offset + 100)
            b = f.read(1)
            f.seek(offset + 100)
            f.write(bytes([b[0] ^ 0x01]))
    return cps, damaged


def _flagged(store: Path) -> set[str]:
    conn = apsw.Connection(str(store / "ckptlite.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {r[0] for r in conn.execute("SELECT digest FROM chunks WHERE bad=1")}
    finally:
        conn.close()


def _rerun_loads_first_time(mgr: ckptlite.CheckpointManager) -> ckptlite.Checkpoint:
    cp = mgr.save("pt", _state(), name="t")
    assert mgr.load(cp.id) == _state()  # a reused bad chunk would raise here
    return cp


def test_load_flags_every_bad_chunk_so_the_next_save_loads(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cps, damaged = _build(store)
    with open_store(store) as mgr:
        with pytest.raises(ckptlite.CorruptCheckpointError):
            mgr.load(cps["t"].id)
        assert _flagged(store) == set(damaged)
        _rerun_loads_first_time(mgr)
        # Storing them again repaired every checkpoint that uses them.
        assert mgr.load(cps["t"].id) == _state()
        assert mgr.load(cps["x"].id) == {"x": _bytes(1)}
        assert _flagged(store) == set()


def test_load_latest_falls_back_and_flags_every_bad_chunk(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cps, damaged = _build(store)
    with open_store(store) as mgr:
        hit = mgr.load_latest("pt", name="t")
        assert hit is not None and hit[0].id == cps["old"].id
        assert _flagged(store) == set(damaged)
        cp = _rerun_loads_first_time(mgr)
        hit = mgr.load_latest("pt", name="t")
        assert hit is not None and hit[0].id == cp.id


def test_verify_full_flags_every_bad_chunk(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cps, damaged = _build(store)
    with open_store(store) as mgr:
        report = mgr.verify(full=True)
        assert set(report.corrupted) == {cps["x"].id, cps["y"].id, cps["t"].id}
        assert _flagged(store) == set(damaged)
        _rerun_loads_first_time(mgr)
        assert mgr.verify(full=True).corrupted == ()  # repaired: all VALID again


def test_sync_flags_every_bad_chunk_at_the_source(tmp_path: Path) -> None:
    """The target holds X's chunks already: sync reads only Y's, yet flags X's bad ones too."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    cps, damaged = _build(src)
    with open_store(src) as a, open_store(dst) as b:
        b.save("px", {"x": _bytes(1)})  # the target has X's chunks (intact): not read
        report = ckptlite.sync(a, b)
        assert set(report.failed) == {cps["y"].id, cps["t"].id}
        assert _flagged(src) == set(damaged)
        cp = _rerun_loads_first_time(a)  # at the source, first time
        report = ckptlite.sync(a, b)
        assert report.failed == () and report.checkpoints_copied == 1
        assert b.load(cp.id) == _state()


def test_sync_into_a_target_with_flagged_chunks_stores_them_again(tmp_path: Path) -> None:
    """A target's chunks flagged by its own load are copied again, never reused."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    cps, damaged = _build(dst)
    with open_store(src) as a, open_store(dst) as b:
        theirs = a.save("pt", _state(), name="t")  # the same bytes, intact
        with pytest.raises(ckptlite.CorruptCheckpointError):
            b.load(cps["t"].id)
        assert _flagged(dst) == set(damaged)
        assert ckptlite.sync(a, b).failed == ()
        assert b.load(theirs.id) == _state()  # a reused bad chunk would raise here
        assert b.load(cps["t"].id) == _state()  # repaired by the copy
        assert _flagged(dst) == set()


def test_sync_from_a_source_that_cannot_be_flagged_still_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flagging is best effort: a source that refuses writes (read-only) fails no sync."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    cps, _ = _build(src)
    with open_store(src) as a, open_store(dst) as b:

        def refuse(digests: object, replace: bool = False) -> None:
            raise ckptlite.StoreError("the store is read-only")

        monkeypatch.setattr(a.backend, "mark_bad_chunks", refuse)
        report = ckptlite.sync(a, b)
        assert set(report.failed) == {cps["x"].id, cps["y"].id, cps["t"].id}
        assert b.load(cps["old"].id) == {"x": _bytes(3), "y": _bytes(4)}


def _damage_rows(mgr: ckptlite.CheckpointManager, url: str, digests: list[str]) -> None:
    """Flip a bit of each chunk where the backend keeps it: a dict, or a BYTEA row."""
    if url == "memory://":
        chunks = mgr.backend._chunks  # type: ignore[attr-defined]
        for d in digests:
            c = chunks[d]
            data = bytearray(c.data)
            data[100] ^= 0x01
            chunks[d] = type(c)(d, c.size, c.codec, bytes(data))
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ckptlite_chunks SET data = set_byte(data, 100, get_byte(data, 100) # 1) "
            "WHERE digest = ANY(%s)",
            (digests,),
        )


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_load_flags_every_bad_chunk_in_memory_and_postgres(
    request: pytest.FixtureRequest, kind: str
) -> None:
    url = "memory://" if kind == "memory" else str(request.getfixturevalue("pg_schema"))
    with ckptlite.open(url, durability="none", chunk_size=CHUNK) as mgr:
        cp = mgr.save("pt", _state(), name="t")
        manifest = chunking.unpack_manifest(mgr.backend.get_record(cp.id).manifest)
        x, y = [[d for d, _ in buf] for buf in manifest]
        _damage_rows(mgr, url, [x[1], x[3], y[2]])
        with pytest.raises(ckptlite.CorruptCheckpointError):
            mgr.load(cp.id)
        _rerun_loads_first_time(mgr)
        assert mgr.load(cp.id) == _state()  # repaired in place
        assert mgr.verify(full=True).corrupted == ()
