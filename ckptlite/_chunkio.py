"""The packer under the state engine: a state's buffers as chunks, written and read back.

Private to ``_engine.StateIO``: hashing, compression and verification of chunks
run on the pool it passes; nothing here encodes or decodes a state, or frames
its skeleton (``_envelope`` does).
"""

# Performance targets cited as (P1)...(P17): bench/TARGETS.md.
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from . import chunking
from .backends.base import Backend, Staged
from .errors import CorruptCheckpointError
from .types import StoredChunk

__all__ = [
    "BufferPool",
    "new_buffer",
    "read_buffers",
    "write_buffers",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Least bytes of chunks per pool task when saving: a task's chunks share one pack.
_WRITE_GROUP_BYTES = 8 << 20
#: Cores to spread a save over. One group per core, not many small ones: groups
#: hashed side by side on too few cores wrote late, in many streams, with more
#: fsyncs (64 MiB: 8 groups took 53 ms, 2 groups 45 ms; pickle 54 ms).
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
#: Bytes of new chunks hashed before their presence is looked up and they are written.
_LOOKUP_BYTES = 1 << 20


def write_buffers(
    backend: Backend,
    pool: ThreadPoolExecutor,
    buffers: Sequence[memoryview],
    chunk_size: int,
    level: int,
    previous: tuple[chunking.Manifest, chunking.Checks] | None = None,
    itemsizes: Sequence[int] = (),
    *,
    algo: str,
) -> tuple[chunking.Manifest, chunking.Checks, int, list[Staged]]:
    """Chunk, hash (by ``algo``), compress and store ``buffers``.

    Return the manifest, every chunk's check (``chunking.check_of``), the bytes
    stored and the staged chunk rows.

    ``itemsizes`` gives, per buffer, the size of the numbers it holds: their bytes
    are shuffled before compression (see ``chunking.compress_chunk``). The staged
    chunk rows go into the checkpoint's own transaction: pass them to
    ``backend.commit``, which releases them.

    ``previous`` is the manifest and checks of the slot's latest checkpoint: a
    chunk whose bytes equal the one at the same place there (compared in the page
    cache, when the backend can) takes its digest and check without hashing.

    Raises:
        StoreFullError, StoreIOError: a chunk could not be stored (after every group ended).
    """
    manifest: chunking.Manifest = []
    checks: chunking.Checks = {}
    written = 0
    if not buffers:
        return manifest, checks, written, []
    before_checks = previous[1] if previous else {}
    size = chunk_size
    claimed: set[str] = set()
    lock = threading.Lock()
    equals = backend.chunk_equals if previous else None

    def store(
        group: Sequence[tuple[memoryview, str | None, int]],
    ) -> tuple[list[tuple[str, int]], Staged]:
        # Each group of chunks goes into its own pack (one fsync); groups run in
        # parallel on the pool. Chunks are hashed, looked up and written a batch of
        # about 1 MiB at a time, while their bytes are still in the CPU cache:
        # hashing a whole group first and writing it after read every byte from
        # memory twice (P3). Small chunks share a lookup.
        digests: list[str] = []
        stored: dict[str, int] = {}
        scratch = _scratch(_LOOKUP_BYTES + size)

        def fresh() -> Iterator[StoredChunk]:
            batch: dict[str, tuple[memoryview, int]] = {}
            used = 0  # bytes of ``scratch`` the batch's copies take
            for i, (v, was, k) in enumerate(group):
                # Equal to the stored chunk ``was`` as compared: its stored bytes are
                # intact, whatever the caller does to ``v`` afterwards.
                if was is not None and equals is not None and equals(was, v):
                    digests.append(was)  # the same bytes at the same place: stored already
                    if (known := before_checks.get(was)) is not None:
                        checks[was] = known  # else checked by its digest when loaded
                else:
                    # Hashed, compressed and written from one private copy: the caller
                    # may change its array meanwhile (a thread, a memory map), and the
                    # bytes stored under a digest must be the bytes hashed. A cache-hot
                    # memcpy costs a tenth of the hashing.
                    copy = scratch[used : used + v.nbytes]
                    copy[:] = v
                    d = chunking.digest_of(copy, algo)
                    checks[d] = chunking.check_of(copy)
                    digests.append(d)
                    with lock:
                        if d not in claimed:  # else another chunk of this save has these bytes
                            claimed.add(d)
                            batch[d] = (copy, k)
                            used += v.nbytes
                if batch and (used >= _LOOKUP_BYTES or i == len(group) - 1):
                    present = backend.has_chunks(batch)
                    # Compressed one at a time as the backend writes them: a group's
                    # compressed copies are never all in memory at once. A raw chunk's
                    # data is a view of ``scratch``, which the next batch reuses: the
                    # backend writes (or copies) each chunk before taking the next.
                    for d, (c, k) in batch.items():
                        if d not in present:
                            chunk = chunking.compress_chunk(d, c, level, itemsize=k)
                            stored[d] = chunk.stored_size
                            yield chunk
                    batch.clear()
                    used = 0

        staged = backend.stage_chunks(fresh())
        return [(d, stored.pop(d, 0)) for d in digests], staged

    # Groups run across buffer boundaries: a state of many small arrays still makes
    # few packs (one fsync each), not one per array.
    views = [chunking.split(buf, size) for buf in buffers]
    groups: list[list[tuple[memoryview, str | None, int]]] = [[]]
    filled = 0
    group_bytes = _group_bytes(buffers, views, itemsizes, size)
    for i, vs in enumerate(views):
        before = previous[0][i] if previous and i < len(previous[0]) else []
        for j, v in enumerate(vs):
            if filled >= group_bytes:
                groups.append([])
                filled = 0
            was = before[j][0] if j < len(before) and before[j][1] == v.nbytes else None
            groups[-1].append((v, was, itemsizes[i] if i < len(itemsizes) else 1))
            filled += v.nbytes
    if len(groups) == 1:  # no hand-off to a pool thread and back (~0.2 ms of a small save)
        results = [store(groups[0])]
    else:
        futures = [pool.submit(store, g) for g in groups]
        # Let every group finish before raising one's error: a failed save must not
        # return while other groups are still writing (their temp files, their rows).
        wait(futures)
        failed = [e for f in futures if (e := f.exception()) is not None]
        if failed:
            for f in futures:  # nothing will commit the others' rows: their bytes go
                if f.exception() is None:
                    f.result()[1].discard()
            raise failed[0]
        results = [f.result() for f in futures]
    done = iter([e for r, _ in results for e in r])
    for vs in views:
        entries = [next(done) for _ in vs]
        written += sum(n for _, n in entries)
        manifest.append([(d, v.nbytes) for (d, _), v in zip(entries, vs, strict=True)])
    return manifest, checks, written, [staged for _, staged in results]


def _group_bytes(
    buffers: Sequence[memoryview],
    views: Sequence[Sequence[memoryview]],
    itemsizes: Sequence[int],
    chunk_size: int,
) -> int:
    """Return the bytes of chunks per write group: one group per core, at least 8 MiB...

    ...unless the state compresses. Raw chunks are I/O: a group fewer is an fsync
    fewer (4 MiB of float noise in two groups: 8.0 against 7.5 ms). Compressing is
    CPU work: a 4 MiB raster in one group per core saved in 0.69-0.86 of the time
    (smooth float32 7.7 against 9.0 ms, int16 DEM 6.6 / 8.3, uint8 land cover 6.6 /
    9.6; P13). The first chunk of the biggest buffer tells which (its probe).
    """
    total = sum(b.nbytes for b in buffers)
    spread = -(-total // _CORES)
    if _CORES < 2 or total <= chunk_size or spread >= _WRITE_GROUP_BYTES:
        return max(_WRITE_GROUP_BYTES, spread)
    big = max(range(len(buffers)), key=lambda i: buffers[i].nbytes)
    itemsize = itemsizes[big] if big < len(itemsizes) else 1
    if chunking.compresses(views[big][0], itemsize):
        return spread
    return _WRITE_GROUP_BYTES


def read_buffers(
    backend: Backend,
    pool: ThreadPoolExecutor,
    manifest: chunking.Manifest,
    checks: chunking.Checks,
    landing: BufferPool | None = None,
    *,
    algo: str,
) -> list[bytearray | memoryview]:
    """Read and verify every chunk of ``manifest`` into buffers of ``landing``.

    A chunk is verified by its check in ``checks``, or without one by its digest
    (``algo``). Without ``landing``, into fresh buffers.

    Raises:
        CorruptCheckpointError: a chunk is missing or does not match its digest
            (``digests`` names every such chunk).
        StoreIOError: a chunk cannot be read (permissions, the disk): not damage.
    """
    take = landing.take if landing is not None else new_buffer
    buffers = [take(n) for n in chunking.buffer_sizes(manifest)]
    jobs: list[tuple[str, int, memoryview]] = []
    for buf, entries in zip(buffers, manifest, strict=True):
        view = memoryview(buf)
        offset = 0
        for digest, n in entries:
            jobs.append((digest, n, view[offset : offset + n]))
            offset += n
    if not jobs:
        return buffers

    # Every row in one query on this thread, not one per chunk from the pool
    # threads. A missing one is looked up again by the read, which reports it.
    rows = backend.chunk_rows(d for d, _, _ in jobs)

    def fetch(job: tuple[str, int, memoryview]) -> CorruptCheckpointError | None:
        digest, n, out = job
        row = rows.get(digest)
        while True:
            try:
                chunk = backend.read_chunk_into(digest, out, row)
                if chunk.size != n:
                    raise CorruptCheckpointError(
                        f"chunk {digest} has the wrong size", digest=digest
                    )
                chunking.restore_chunk_into(chunk, out, algo, checks.get(digest))
            except CorruptCheckpointError as e:
                if row is None:
                    return e
                # Read once more with nothing kept (the row, an open file: a backend
                # may keep both): only bytes bad on a second look are damage.
                row = None
                continue
            return None

    # Every chunk is read even after one fails: the caller flags all the bad ones,
    # or the next save of the same state would reuse those it did not flag.
    errors = [e for e in _share(pool, fetch, jobs) if e]
    if errors:
        first = errors[0]
        bad = tuple(dict.fromkeys(e.digest for e in errors if e.digest))
        raise CorruptCheckpointError(
            first.message, hint=first.hint, **{**first.facts(), "digests": bad}
        ) from first
    return buffers


def _share(pool: ThreadPoolExecutor, fn: Callable[[_T], _R], jobs: Sequence[_T]) -> list[_R]:
    """Return ``[fn(j) for j in jobs]``, the calling thread running a share of them.

    One contiguous share per core: the caller runs the first, the pool the
    others (one hand-off each, not one per chunk). A load that only waited on
    ``pool.map`` took 2.06 ms for 4 MiB against 1.50 ms run in the caller alone
    (1 MiB chunks, two busy cores); this is the one that also gains a free core.
    Every job runs, whatever another raises: the first error is raised at the end.
    """
    n = len(jobs)
    shares = min(_CORES, n)
    if shares <= 1:
        return [fn(j) for j in jobs]
    cuts = [n * i // shares for i in range(shares + 1)]
    futures = [
        pool.submit(lambda a, b: [fn(j) for j in jobs[a:b]], cuts[i], cuts[i + 1])
        for i in range(1, shares)
    ]
    try:
        out = [fn(j) for j in jobs[: cuts[1]]]
    finally:
        wait(futures)  # never return (or raise) while a pool share still writes into buffers
    for f in futures:
        out += f.result()
    return out


_local = threading.local()


def _scratch(n: int) -> memoryview:
    """Return this thread's scratch buffer of ``n`` bytes (reused: no page faults per save)."""
    buf: memoryview | None = getattr(_local, "scratch", None)
    if buf is None or buf.nbytes != n:
        buf = _local.scratch = memoryview(bytearray(n))
    return buf


class BufferPool:
    """Memory for loads to land in: buffers already faulted in, reused once released.

    Filling fresh memory cost a page fault per 4 KiB, which was most of a load
    of 1-16 MiB (a new anonymous map: 16 MiB took 13.8 ms to fill; memory
    faulted in before: 1.9 ms; pickle.load reuses malloc's freed blocks). A
    buffer is handed out again only when nothing but the pool refers to it:
    every array or view a load returned keeps a reference to its buffer, so a
    result the caller still holds is never given to a later load, and results
    of two loads never share memory. Thread-safe; one per manager.
    """

    #: Largest buffer kept, and most bytes kept: tiles, not whole big states (RSS).
    MAX_BUFFER = 16 << 20
    MAX_BYTES = 64 << 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bufs: list[Any] = []  # numpy uint8 arrays
        self._pid = os.getpid()

    def take(self, n: int) -> bytearray | memoryview:
        """Return a writable buffer of ``n`` bytes that no one else holds."""
        np = _numpy()
        if np is None or n < 1 << 16:
            return bytearray(n)  # small (the allocator reuses it) or numpy-less: bytes states
        if n > self.MAX_BUFFER:
            return memoryview(np.empty(n, np.uint8))
        if self._pid != os.getpid():  # a forked child: the lock may be held by a lost thread
            self._lock, self._bufs, self._pid = threading.Lock(), [], os.getpid()
        with self._lock:
            bufs = self._bufs
            for i in range(len(bufs)):
                # 2 references: the list's and getrefcount's argument. A result, or
                # any view of one, adds its own: that buffer is still the caller's.
                if bufs[i].nbytes == n and sys.getrefcount(bufs[i]) == 2:
                    bufs.append(bufs.pop(i))  # most recently used last
                    return memoryview(bufs[-1])
            buf = np.empty(n, np.uint8)
            free = [i for i in range(len(bufs)) if sys.getrefcount(bufs[i]) == 2]
            total = sum(b.nbytes for b in bufs)
            while total + n > self.MAX_BYTES and free:  # drop unused buffers, oldest first
                total -= bufs[free[0]].nbytes
                bufs[free.pop(0)] = None
            self._bufs = bufs = [b for b in bufs if b is not None]
            if total + n <= self.MAX_BYTES:
                bufs.append(buf)
            return memoryview(buf)


def new_buffer(n: int) -> bytearray | memoryview:
    """Return a fresh writable buffer of ``n`` bytes for a load to fill (no pool)."""
    np = _numpy()
    if np is None or n < 1 << 16:
        return bytearray(n)
    return memoryview(np.empty(n, np.uint8))


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional: bytes states load without it
        return None
    return numpy
