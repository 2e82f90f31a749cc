"""Issue 13 item 2: the bytes stored under a digest are the bytes that were hashed.

The caller's arrays change while ``save`` runs: exactly between hashing a chunk
and compressing or writing it (a hook on ``chunking.digest_of`` or
``chunking.compress_chunk`` rewrites every array), or at random moments from
another thread. Every checkpoint a save returns must load; each of its chunks
must hold either the old or the new bytes of that chunk (chunk-consistent, not
one instant); and a later save of the original content must load too (it must
not reuse a digest whose stored bytes are other ones).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from ckptlite import chunking

CHUNK = 1 << 20


def _arrays(seed: int) -> dict[str, np.ndarray]:
    """Buffers for every write path: raw packed, zstd packed, raw inline, zstd inline."""
    rng = np.random.default_rng(seed)
    zeros = np.zeros(CHUNK + 4096, dtype=np.uint8)
    zeros[:64] = rng.integers(0, 256, 64, dtype=np.uint8)  # differs per seed, still tiny
    return {
        "noise": rng.standard_normal(CHUNK).astype("f4"),  # 4 MiB: raw, in packs
        "lowent": rng.integers(0, 4, CHUNK + 12345, dtype=np.uint8),  # zstd, in packs
        "small": rng.integers(0, 256, 64 * 1024, dtype=np.uint8),  # raw, inline
        "zeros": zeros,  # zstd, inline
    }


def _chunk_consistent(
    got: dict[str, Any], old: dict[str, np.ndarray], new: dict[str, np.ndarray]
) -> None:
    """Assert each chunk of each loaded array holds either its old or its new bytes."""
    assert set(got) == set(old)
    for key, arr in got.items():
        g, o, n = (memoryview(a).cast("B") for a in (arr, old[key], new[key]))
        assert g.nbytes == o.nbytes
        for at in range(0, g.nbytes, CHUNK):
            piece = g[at : at + CHUNK]
            assert piece == o[at : at + CHUNK] or piece == n[at : at + CHUNK], (key, at)


@pytest.fixture(params=["local", "memory", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("pg_schema"))


@pytest.fixture
def mgr(url: str) -> Iterator[ckptlite.CheckpointManager]:
    with ckptlite.open(url, durability="none", chunk_size=CHUNK) as m:
        yield m


@pytest.mark.parametrize("hook", ["after-hash", "before-compress"])
@pytest.mark.parametrize("resave", [False, True], ids=["first-save", "resave"])
def test_arrays_changed_between_hashing_and_writing_still_load(
    mgr: ckptlite.CheckpointManager, monkeypatch: pytest.MonkeyPatch, hook: str, resave: bool
) -> None:
    old, new = _arrays(1), _arrays(2)
    if resave:  # the slot's latest holds other bytes: chunks are compared, then hashed
        mgr.save("mut", _arrays(3), name="s")
    live = {k: v.copy() for k, v in old.items()}
    fired = 0
    armed = False

    def mutate() -> None:
        nonlocal fired
        if armed:
            fired += 1
            for k, v in live.items():
                v[...] = new[k]

    real_digest, real_compress = chunking.digest_of, chunking.compress_chunk

    def digest_of(data: Any, algo: str) -> str:
        d = real_digest(data, algo)
        if hook == "after-hash":
            mutate()
        return d

    def compress_chunk(digest: str, view: memoryview, level: int, **kw: Any) -> Any:
        if hook == "before-compress":
            mutate()
        return real_compress(digest, view, level, **kw)

    monkeypatch.setattr(chunking, "digest_of", digest_of)
    monkeypatch.setattr(chunking, "compress_chunk", compress_chunk)
    armed = True
    cp = mgr.save("mut", live, name="s")
    armed = False
    assert fired, "the hook never ran: the test proves nothing"

    _chunk_consistent(mgr.load(cp.id), old, new)
    # Saving the original bytes again must not reuse a digest stored with other bytes.
    again = mgr.save("mut", {k: v.copy() for k, v in old.items()}, name="s")
    got = mgr.load(again.id)
    assert all(np.array_equal(got[k], old[k]) for k in old)
    third = mgr.save("mut", new, name="s")
    got = mgr.load(third.id)
    assert all(np.array_equal(got[k], new[k]) for k in new)
    assert mgr.verify(full=True).corrupted == ()


@pytest.mark.slow
@pytest.mark.parametrize("url", ["local"], indirect=True)
def test_arrays_changed_by_another_thread_during_saves_still_load(
    mgr: ckptlite.CheckpointManager,
) -> None:
    """A thread swaps whole chunks between two contents while the main thread saves."""
    n = 24 * CHUNK
    a = np.random.default_rng(5).integers(0, 256, n, dtype=np.uint8)
    b = np.random.default_rng(6).integers(0, 256, n, dtype=np.uint8)
    backing = bytearray(a.tobytes())
    # Swaps go through a memoryview, so each chunk's swap is one copy under the GIL.
    view = memoryview(backing)
    arr = np.frombuffer(backing, dtype=np.uint8)
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        rng = np.random.default_rng(7)
        src = (memoryview(a.data).cast("B"), memoryview(b.data).cast("B"))
        while not stop.is_set():
            at = int(rng.integers(0, n // CHUNK)) * CHUNK
            view[at : at + CHUNK] = src[swaps % 2][at : at + CHUNK]
            swaps += 1

    saved = []
    t = threading.Thread(target=swapper)
    t.start()
    try:
        for _ in range(12):
            saved.append(mgr.save("race", {"x": arr}, name="s"))
    finally:
        stop.set()
        t.join()
    assert swaps > 0
    old, new = {"x": a}, {"x": b}
    for cp in saved:
        _chunk_consistent(mgr.load(cp.id), old, new)
    for content in (a, b):
        cp = mgr.save("race", {"x": content.copy()}, name="s")
        assert np.array_equal(mgr.load(cp.id)["x"], content)
    assert mgr.verify(full=True).corrupted == ()


def test_chunks_reclaimed_before_commit_are_stored_again_as_the_arrays_are_now(
    mgr: ckptlite.CheckpointManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc between the chunk writes and the commit takes chunks the save deduplicated.

    The save stores them again; the arrays changed meanwhile, so it must hash
    them again too, not write today's bytes under yesterday's digests.
    """
    old, new = _arrays(1), _arrays(2)
    first = mgr.save("mut", old, name="s")
    mgr.delete(first.id)  # its chunks stay stored, unreferenced, until a gc
    live = {k: v.copy() for k, v in old.items()}
    real_commit = mgr.backend.commit
    calls = 0

    def commit(record: Any, *staged: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            mgr.gc()  # reclaims the chunks this save found present
            for k, v in live.items():
                v[...] = new[k]
        return real_commit(record, *staged, **kw)

    monkeypatch.setattr(mgr.backend, "commit", commit)
    cp = mgr.save("mut", live, name="s")
    assert calls == 2  # refused once (missing chunks), then committed
    got = mgr.load(cp.id)
    assert all(np.array_equal(got[k], new[k]) for k in new)
    assert mgr.verify(full=True).corrupted == ()
