"""Issue 14: a byte-shuffled chunk that is damaged is found and flagged like any other.

The shuffle codec stores a number array's bytes transposed by itemsize, then
zstd'ed. Damage to its stored bytes, or a row naming the wrong itemsize, gives
bytes that do not match the digest: a load, ``load_latest`` and ``verify`` report
every such chunk and flag it, and saving the state again stores it again.
"""

from __future__ import annotations

from pathlib import Path

import apsw
import numpy as np
import pytest
from damage import chunk_span
from fault_harness import CHUNK, open_store

import ckptlite
from ckptlite import chunking


def _dem(seed: int) -> np.ndarray:
    """An int16 DEM profile (6 chunks): neighbours share their high bytes."""
    x = np.arange(3 * CHUNK)
    noise = np.random.default_rng(seed).normal(0, 3, x.size)
    return (1000 + 300 * np.sin(x / 900) + noise).astype("<i2")


def _rows(store: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(store / "ckptlite.db"))
    try:
        return list(conn.execute(query, args))
    finally:
        conn.close()


def _saved(store: Path) -> tuple[ckptlite.Checkpoint, list[str]]:
    with open_store(store) as mgr:
        cp = mgr.save("p", {"dem": _dem(0)})
        (digests,) = [
            [d for d, _ in buf]
            for buf in chunking.unpack_manifest(mgr.backend.get_record(cp.id).manifest)
        ]
    codecs = {c for (c,) in _rows(store, "SELECT codec FROM chunks")}
    assert codecs == {chunking.CODEC_ZSTD_SHUFFLE[2]}  # the test is about shuffled chunks
    return cp, digests


def _flagged(store: Path) -> set[str]:
    return {str(d) for (d,) in _rows(store, "SELECT digest FROM chunks WHERE bad=1")}


def test_damaged_shuffled_chunks_are_all_flagged_and_stored_again(tmp_path: Path) -> None:
    store = tmp_path / "s"
    cp, digests = _saved(store)
    damaged = [digests[1], digests[4]]
    for d in damaged:
        path, offset, size = chunk_span(store, d)
        with open(path, "r+b") as f:  # a bit in the middle of the frame's compressed planes
            f.seek(offset + size // 2)
            b = f.read(1)
            f.seek(offset + size // 2)
            f.write(bytes([b[0] ^ 0x10]))
    with open_store(store) as mgr:
        with pytest.raises(ckptlite.CorruptCheckpointError) as e:
            mgr.load(cp.id)
        assert set(e.value.context["digests"]) == set(damaged)
        assert _flagged(store) == set(damaged)
        assert set(mgr.verify(full=True).corrupted) == {cp.id}
        again = mgr.save("p", {"dem": _dem(0)})
        assert np.array_equal(mgr.load(again)["dem"], _dem(0))
        assert np.array_equal(mgr.load(cp.id)["dem"], _dem(0))  # repaired: same digests
        assert _flagged(store) == set()


def test_a_row_naming_the_wrong_itemsize_is_caught(tmp_path: Path) -> None:
    store = tmp_path / "s"
    cp, digests = _saved(store)
    # The stored bytes are intact; unshuffled by 4 instead of 2 they are other bytes.
    _rows(
        store,
        "UPDATE chunks SET codec=? WHERE digest=?",
        chunking.CODEC_ZSTD_SHUFFLE[4],
        digests[2],
    )
    with open_store(store) as mgr:
        assert mgr.load_latest("p") is None  # the only checkpoint: nothing loadable
        assert _flagged(store) == {digests[2]}
        assert mgr.get(cp.id).status is ckptlite.Status.CORRUPTED
