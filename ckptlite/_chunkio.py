"""Move a state's bytes between the manager and a backend: chunks and the inline payload.

Private to the manager: hashing, compression and verification of chunks run on
the manager's thread pool; nothing here encodes or decodes a state.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import zstandard

from . import chunking
from .backends.base import Backend, Staged
from .errors import CorruptCheckpointError
from .types import StoredChunk

__all__ = [
    "new_buffer",
    "pack_payload",
    "read_buffers",
    "unpack_payload",
    "write_buffers",
]

_PAYLOAD_RAW = b"\x00"
_PAYLOAD_ZSTD = b"\x01"
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
    previous: chunking.Manifest | None = None,
) -> tuple[chunking.Manifest, int, list[Staged]]:
    """Chunk, hash, compress and store ``buffers``; return the manifest, new bytes, staged rows.

    The staged chunk rows go into the checkpoint's own transaction: pass them to
    ``backend.commit``, which releases them.

    ``previous`` is the manifest of the slot's latest checkpoint: a chunk whose
    bytes equal the one at the same place there (compared in the page cache, when
    the backend can) takes its digest without hashing.

    Raises:
        StoreFullError, StoreIOError: a chunk could not be stored (after every group ended).
    """
    manifest: chunking.Manifest = []
    written = 0
    if not buffers:
        return manifest, written, []
    size = chunk_size
    claimed: set[str] = set()
    lock = threading.Lock()
    equals = getattr(backend, "chunk_equals", None) if previous else None

    def store(
        group: Sequence[tuple[memoryview, str | None]],
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
            batch: dict[str, memoryview] = {}
            used = 0  # bytes of ``scratch`` the batch's copies take
            for i, (v, was) in enumerate(group):
                # Equal to the stored chunk ``was`` as compared: its stored bytes are
                # intact, whatever the caller does to ``v`` afterwards.
                if was is not None and equals is not None and equals(was, v):
                    digests.append(was)  # the same bytes at the same place: stored already
                else:
                    # Hashed, compressed and written from one private copy: the caller
                    # may change its array meanwhile (a thread, a memory map), and the
                    # bytes stored under a digest must be the bytes hashed. A cache-hot
                    # memcpy costs a tenth of the hashing.
                    copy = scratch[used : used + v.nbytes]
                    copy[:] = v
                    d = chunking.digest_of(copy)
                    digests.append(d)
                    with lock:
                        if d not in claimed:  # else another chunk of this save has these bytes
                            claimed.add(d)
                            batch[d] = copy
                            used += v.nbytes
                if batch and (used >= _LOOKUP_BYTES or i == len(group) - 1):
                    present = backend.has_chunks(batch)
                    # Compressed one at a time as the backend writes them: a group's
                    # compressed copies are never all in memory at once. A raw chunk's
                    # data is a view of ``scratch``, which the next batch reuses: the
                    # backend writes (or copies) each chunk before taking the next.
                    for d, c in batch.items():
                        if d not in present:
                            chunk = chunking.compress_chunk(d, c, level)
                            stored[d] = chunk.stored_size
                            yield chunk
                    batch.clear()
                    used = 0

        staged = backend.stage_chunks(fresh())
        return [(d, stored.pop(d, 0)) for d in digests], staged

    # Groups run across buffer boundaries: a state of many small arrays still makes
    # few packs (one fsync each), not one per array.
    views = [chunking.split(buf, size) for buf in buffers]
    groups: list[list[tuple[memoryview, str | None]]] = [[]]
    filled = 0
    group_bytes = max(_WRITE_GROUP_BYTES, -(-sum(b.nbytes for b in buffers) // _CORES))
    for i, vs in enumerate(views):
        before = previous[i] if previous and i < len(previous) else []
        for j, v in enumerate(vs):
            if filled >= group_bytes:
                groups.append([])
                filled = 0
            was = before[j][0] if j < len(before) and before[j][1] == v.nbytes else None
            groups[-1].append((v, was))
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
    return manifest, written, [staged for _, staged in results]


def read_buffers(
    backend: Backend, pool: ThreadPoolExecutor, manifest: chunking.Manifest
) -> list[bytearray | memoryview]:
    """Read and verify every chunk of ``manifest`` into fresh buffers.

    Raises:
        CorruptCheckpointError: a chunk is missing or does not match its digest
            (``context["digests"]`` names every such chunk).
    """
    buffers = [new_buffer(n) for n in chunking.buffer_sizes(manifest)]
    jobs: list[tuple[str, int, memoryview]] = []
    for buf, entries in zip(buffers, manifest, strict=True):
        view = memoryview(buf)
        offset = 0
        for digest, n in entries:
            jobs.append((digest, n, view[offset : offset + n]))
            offset += n
    if not jobs:
        return buffers

    read_into = getattr(backend, "read_chunk_into", None)

    def fetch(job: tuple[str, int, memoryview]) -> CorruptCheckpointError | None:
        digest, n, out = job
        try:
            chunk = read_into(digest, out) if read_into else backend.read_chunk(digest)
            if chunk.size != n:
                raise CorruptCheckpointError(f"chunk {digest} has the wrong size", digest=digest)
            chunking.restore_chunk_into(chunk, out)
        except CorruptCheckpointError as e:
            return e
        return None

    # Every chunk is read even after one fails: the caller flags all the bad ones,
    # or the next save of the same state would reuse those it did not flag.
    errors = [e for e in (map(fetch, jobs) if len(jobs) == 1 else pool.map(fetch, jobs)) if e]
    if errors:
        first = errors[0]
        bad = tuple(dict.fromkeys(d for e in errors if (d := e.context.get("digest"))))
        raise CorruptCheckpointError(
            first.message, hint=first.hint, **{**first.context, "digests": bad}
        ) from first
    return buffers


_local = threading.local()


def _scratch(n: int) -> memoryview:
    """Return this thread's scratch buffer of ``n`` bytes (reused: no page faults per save)."""
    buf: memoryview | None = getattr(_local, "scratch", None)
    if buf is None or buf.nbytes != n:
        buf = _local.scratch = memoryview(bytearray(n))
    return buf


def new_buffer(n: int) -> bytearray | memoryview:
    """Return a writable buffer of ``n`` bytes for a load to fill.

    Big ones are anonymous maps: ``bytearray(n)`` zero-fills its memory first,
    a pass over the whole state that cost as much as reading it.
    """
    if n < 1 << 20:
        return bytearray(n)
    return memoryview(mmap.mmap(-1, n))


def pack_payload(skeleton: bytes) -> bytes:
    n = len(skeleton)
    if n >= 4096:
        packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(skeleton)
        if len(packed) < n * 7 // 8:
            return _PAYLOAD_ZSTD + packed
    return _PAYLOAD_RAW + skeleton


def unpack_payload(payload: bytes, limit: int) -> bytes | memoryview:
    kind, body = payload[:1], memoryview(payload)[1:]
    if kind == _PAYLOAD_RAW:
        return body
    if kind == _PAYLOAD_ZSTD:
        try:
            size = zstandard.frame_content_size(body)
            # Capped at the checkpoint's recorded size, and at what the frame's bytes can
            # give (both sizes are only declared): a bomb fails before allocating.
            if size < 0 or size > min(limit, len(body) * chunking.ZSTD_MAX_RATIO):
                raise CorruptCheckpointError("state payload declares an impossible size")
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
        except zstandard.ZstdError as e:
            raise CorruptCheckpointError(f"state payload does not decompress: {e}") from e
    raise CorruptCheckpointError("state payload has an unknown format")
