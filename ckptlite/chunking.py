"""Split buffers into content-addressed chunks, compress, verify: compute only, no I/O.

A chunk is addressed by the digest of its raw bytes, with the store's algorithm
(``algo``: BLAKE3 for new stores, SHA-256 for older ones; chosen once per manager
and passed down, never global). It is stored zstd-compressed (``codec=1``), or
byte-shuffled then zstd-compressed (``codec=2, 3, 4``: elements of 2, 4, 8 bytes)
when a probe says that pays, raw (``codec=0``) otherwise. The codec changes only
the stored bytes, never the digest: dedup is by raw bytes.
The manifest lists, per buffer, the (digest, size) of its chunks in order, and
each chunk's check: XXH3-128 of its raw bytes, taken when they were hashed for
the address. A load compares the check, ~7x cheaper than hashing the address
again (1 MiB: 0.03 against 0.22 ms of BLAKE3 here, P12); ``verify(full=True)``
recomputes every address. Manifests written before checks have none; their
chunks are checked by their digest.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import blake3
import msgpack
import xxhash
import zstandard

from .errors import ConfigError, CorruptCheckpointError
from .types import HASHES, StoredChunk

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "CODEC_ZSTD_SHUFFLE",
    "EMPTY_MANIFEST",
    "MAX_CHUNK",
    "ZSTD_MAX_RATIO",
    "Checks",
    "Manifest",
    "check_chunk",
    "check_hash",
    "check_of",
    "compress_chunk",
    "compresses",
    "digest_of",
    "pack_manifest",
    "raw_bytes",
    "record_checksum",
    "restore_chunk_into",
    "split",
    "unpack_checked",
    "unpack_manifest",
]

CODEC_RAW = 0
CODEC_ZSTD = 1
#: itemsize -> codec of a chunk whose bytes were shuffled by that itemsize, then zstd'ed.
CODEC_ZSTD_SHUFFLE = {2: 2, 4: 3, 8: 4}
_SHUFFLED = {c: k for k, c in CODEC_ZSTD_SHUFFLE.items()}  # codec -> itemsize
MAX_CHUNK = 64 << 20  # the largest chunk_size a store may be opened with
#: zstd's largest expansion: a 4-byte RLE block (3-byte header, 1 byte) gives 128 KiB.
ZSTD_MAX_RATIO = 1 << 15
_PROBE = 16 * 1024  # compress a slice first; skip zstd on data it cannot shrink
#: The probe of numbers to be shuffled: fewer bytes at a faster level, and a
#: stricter bar. Measured (1 MiB chunks; pickle + fsync writes ~430 MB/s here):
#: shuffled float32 noise probes 0.85 and would compress to 0.81 at 6 ms/MiB, to
#: save 0.4 ms of writing; a smooth float32 surface probes 0.73 (0.62 at 1.5 ms/MiB
#: over the chunk), an int16 DEM 0.55 (0.52 at 0.8 ms; unshuffled 0.80 at 10 ms).
#: The probe costs ~50 us a chunk (the 16 KiB level-1 one of shuffled bytes: ~100).
_PROBE_SHUFFLED = 8 * 1024
_PROBE_SHUFFLED_LEVEL = -3
_PAYS_SHUFFLED = 0.80
#: Least bytes of a thread's shuffle buffer: a 1 MiB chunk's, grown for bigger ones.
MIN_SCRATCH = 1 << 20
#: Elements (un)shuffled per numpy call: 1 MiB of float32 at once; fewer calls cost
#: less (64 Ki elements a call: 0.53 ms/MiB; 256 Ki: 0.46), a bigger temporary more.
_BLOCK = 1 << 18

#: Per buffer: the (digest hex, raw size) of each chunk, in order.
Manifest = list[list[tuple[str, int]]]
#: digest hex -> the check of its raw bytes (``check_of``), for the chunks that have one.
Checks = dict[str, bytes]
#: Bytes of a check.
CHECK_SIZE = 16


def split(buffer: memoryview, chunk_size: int) -> list[memoryview]:
    """Cut ``buffer`` into views of at most ``chunk_size`` bytes (no copies)."""
    n = buffer.nbytes
    return [buffer[i : i + chunk_size] for i in range(0, n, chunk_size)] or [buffer[0:0]]


def check_hash(name: object) -> str:
    """Return ``name`` if it is a digest algorithm ckptlite knows.

    Raises:
        ConfigError: it is not.
    """
    if name not in HASHES:
        raise ConfigError(
            f"unknown hash {name!r}", hint=f"Use one of {', '.join(HASHES)} (hash=...)."
        )
    return str(name)


def digest_of(data: bytes | bytearray | memoryview, algo: str) -> str:
    """Return the hex digest (64 characters) of ``data`` by ``algo``."""
    # One thread per chunk: 1 MiB hashed on 2 threads was slower (0.30-0.36 ms) than on
    # one (0.27-0.30 ms), and a save's write groups already run one per core.
    h = _hasher(algo)
    h.update(data)
    return h.hexdigest()


def check_of(data: bytes | bytearray | memoryview) -> bytes:
    """Return the check of raw chunk bytes: their XXH3-128 digest (16 bytes)."""
    # Damage detection, not an address: the address (BLAKE3/SHA-256) keeps dedup safe
    # against crafted collisions; a check only has to catch bytes that changed.
    return xxhash.xxh3_128_digest(data)


def _hasher(algo: str) -> blake3.blake3 | hashlib._Hash:
    if algo == "blake3":
        return blake3.blake3()
    if algo == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown hash {algo!r}")  # the manager checked it: a bug


def compresses(view: memoryview, itemsize: int = 1) -> bool:
    """Tell whether ``compress_chunk`` would compress ``view`` (its probe, ~20-100 us)."""
    k = itemsize if itemsize in CODEC_ZSTD_SHUFFLE and view.nbytes >= 4 * itemsize else 1
    return view.nbytes >= 256 and _pays(view, k)


def compress_chunk(digest: str, view: memoryview, level: int, itemsize: int = 1) -> StoredChunk:
    """Compress one chunk when zstd pays, else keep it raw.

    ``itemsize`` is the size of the elements the bytes hold (2, 4 or 8: a
    numeric array's): their bytes are shuffled first, byte 0 of every element,
    then byte 1, ... The high bytes of neighbours are alike, so zstd finds runs
    it cannot see in interleaved bytes: better ratios, and faster.
    """
    size = view.nbytes
    k = itemsize if itemsize in CODEC_ZSTD_SHUFFLE and size >= 4 * itemsize else 1
    if size >= 256:
        if not _pays(view, k):
            return StoredChunk(digest, size, CODEC_RAW, view)
        if k > 1:
            packed = _compressor(level).compress(_shuffled(view, k, size))
            codec = CODEC_ZSTD_SHUFFLE[k]
        else:
            packed, codec = _compressor(level).compress(view), CODEC_ZSTD
        if len(packed) <= size * 7 // 8:
            return StoredChunk(digest, size, codec, packed)
    return StoredChunk(digest, size, CODEC_RAW, view)


def _pays(view: memoryview, k: int) -> bool:
    """Tell whether compressing ``view`` (shuffled by ``k`` if > 1) is worth its CPU.

    A probe of one slice tells incompressible data (float noise) cheaply.
    """
    size = view.nbytes
    if k > 1:
        n = _PROBE_SHUFFLED
        if size <= 2 * n:
            return True
        stored = len(_compressor(_PROBE_SHUFFLED_LEVEL).compress(_shuffled(view[:n], k, n)))
        return stored <= n * _PAYS_SHUFFLED
    return size <= 2 * _PROBE or len(_compressor(1).compress(view[:_PROBE])) <= _PROBE * 7 // 8


def _shuffled(view: memoryview, k: int, n: int) -> memoryview:
    """Return ``view``'s bytes shuffled by itemsize ``k`` in this thread's scratch buffer.

    The bytes past the last whole element stay at the end, as they are.
    """
    np = _numpy()
    out = _scratch(n)
    m = n - n % k
    if np is None:
        for j in range(k):  # numpy is optional: slices do it in C, only slower
            out[j * (m // k) : (j + 1) * (m // k)] = view[j:m:k]
    else:
        # Wide integers shifted, then truncated to bytes: ~3 GB/s. A transposed
        # copy of the bytes (a strided view) ran at 0.2-2 GB/s.
        wide = np.frombuffer(view, np.dtype(f"<u{k}"), m // k)
        planes = np.frombuffer(out, np.uint8, m).reshape(k, m // k)
        for a in range(0, m // k, _BLOCK):  # blocks: a big chunk needs no big temporary
            w, tmp = wide[a : a + _BLOCK], _wide_tmp(np, k)
            tmp = tmp[: w.size]
            for j in range(k):
                np.right_shift(w, 8 * j, out=tmp)
                np.copyto(planes[j, a : a + _BLOCK], tmp, casting="unsafe")
    out[m:n] = view[m:n]
    return out[:n]


def _unshuffle_into(data: bytes | memoryview, k: int, out: memoryview) -> None:
    """Write the bytes that ``_shuffled`` turned into ``data`` back into ``out``."""
    np = _numpy()
    n = out.nbytes
    m = n - n % k
    src = memoryview(data)
    if np is None:
        for j in range(k):
            out[j:m:k] = src[j * (m // k) : (j + 1) * (m // k)]
    else:
        # Each byte plane widened and shifted into place, OR'ed into the output:
        # 0.2-0.5 ms/MiB; numpy's transposed byte copy took 1.4-6.8 ms.
        wide = np.frombuffer(out, np.dtype(f"<u{k}"), m // k)
        planes = np.frombuffer(src, np.uint8, m).reshape(k, m // k)
        for a in range(0, m // k, _BLOCK):
            w, tmp = wide[a : a + _BLOCK], _wide_tmp(np, k)
            tmp = tmp[: w.size]
            np.copyto(w, planes[0, a : a + _BLOCK])
            for j in range(1, k):
                np.left_shift(planes[j, a : a + _BLOCK], 8 * j, out=tmp, dtype=tmp.dtype)
                np.bitwise_or(w, tmp, out=w)
    out[m:n] = src[m:n]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # only arrays are shuffled: numpy is there, unless a store moved
        return None
    return numpy


def _scratch(n: int) -> memoryview:
    """Return this thread's shuffle buffer, at least ``n`` bytes (reused: no page faults)."""
    buf: memoryview | None = getattr(_local, "shuffle", None)
    if buf is None or buf.nbytes < n:
        buf = _local.shuffle = memoryview(bytearray(max(n, MIN_SCRATCH)))
    return buf


def _wide_tmp(np: Any, k: int) -> Any:
    """Return this thread's temporary array of ``_BLOCK`` little-endian ``k``-byte ints."""
    cache: dict[int, Any] | None = getattr(_local, "wide", None)
    if cache is None:
        cache = _local.wide = {}
    tmp = cache.get(k)
    if tmp is None or tmp.size < _BLOCK:  # a block size changed (tests do): never too small
        tmp = cache[k] = np.empty(_BLOCK, np.dtype(f"<u{k}"))
    return tmp


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # One per thread and level: a compressor is not thread-safe, and making one
    # costs about what compressing a 16 KiB slice does.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def raw_bytes(chunk: StoredChunk) -> bytes | memoryview:
    """Return ``chunk``'s raw bytes (decompressed, size checked; the digest is not checked).

    Output is capped at the recorded size, so a hostile frame cannot allocate more.

    Raises:
        CorruptCheckpointError: the size or the frame does not match.
    """
    size = chunk.size
    if not 0 <= size <= MAX_CHUNK:  # a size the row declares: check it before allocating
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} declares {size} bytes, more than any chunk holds",
            digest=chunk.digest,
        )
    if chunk.codec == CODEC_RAW:
        if len(chunk.data) != size:
            raise CorruptCheckpointError(
                f"chunk {chunk.digest} is truncated or padded", digest=chunk.digest
            )
        return chunk.data
    if chunk.codec != CODEC_ZSTD and chunk.codec not in _SHUFFLED:
        raise CorruptCheckpointError(f"chunk {chunk.digest} has unknown codec {chunk.codec}")
    raw = _decompress(chunk)
    k = _SHUFFLED.get(chunk.codec)
    if k is None:
        return raw
    out = memoryview(bytearray(size))
    _unshuffle_into(raw, k, out)
    return out


def _decompress(chunk: StoredChunk) -> bytes:
    """Return a zstd chunk's frame decompressed, at most its recorded size.

    Raises:
        CorruptCheckpointError: the frame declares another size, or does not decompress.
    """
    size = chunk.size
    try:
        declared = zstandard.frame_content_size(chunk.data)
        if declared != size or size > len(chunk.data) * ZSTD_MAX_RATIO:
            raise CorruptCheckpointError(
                f"chunk {chunk.digest} declares {declared} bytes, expected {size}",
                digest=chunk.digest,
            )
        raw = zstandard.ZstdDecompressor().decompress(chunk.data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} does not decompress: {e}", digest=chunk.digest
        ) from e
    if len(raw) != size:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} has the wrong size", digest=chunk.digest
        )
    return raw


def check_chunk(chunk: StoredChunk, algo: str) -> bytes | memoryview:
    """Check that ``chunk``'s stored bytes give back the raw bytes its digest names; return them.

    Raises:
        CorruptCheckpointError: they do not (size, frame or digest by ``algo``).
    """
    raw = raw_bytes(chunk)
    if digest_of(raw, algo) != chunk.digest:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} does not match its digest", digest=chunk.digest
        )
    return raw


def restore_chunk_into(
    chunk: StoredChunk, out: memoryview, algo: str, check: bytes | None = None
) -> None:
    """Decompress ``chunk`` into ``out`` and compare its ``check``, or without one its digest.

    Raises:
        CorruptCheckpointError: size, frame, check or digest does not match.
    """
    if out.nbytes != chunk.size:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} has the wrong size", digest=chunk.digest
        )
    k = _SHUFFLED.get(chunk.codec)
    if k is not None:  # unshuffled straight into ``out``: no third copy
        _unshuffle_into(_decompress(chunk), k, out)
    else:
        raw = raw_bytes(chunk)
        if raw is not out:  # a backend may have read it into ``out`` already
            out[:] = raw
    if check is not None:
        if check_of(out) != check:
            raise CorruptCheckpointError(
                f"chunk {chunk.digest} does not match its check", digest=chunk.digest
            )
    elif digest_of(out, algo) != chunk.digest:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} does not match its digest", digest=chunk.digest
        )


def pack_manifest(manifest: Manifest, checks: Checks | None = None) -> bytes:
    """Serialise a manifest (digests as 32 raw bytes), each entry with its check if known."""
    if not manifest:
        return EMPTY_MANIFEST
    packer = msgpack.Packer(use_bin_type=True, buf_size=64 + 72 * sum(map(len, manifest)))
    get = (checks or {}).get
    return packer.pack(  # type: ignore[no-any-return]
        [
            [
                [bytes.fromhex(d), s] if (c := get(d)) is None else [bytes.fromhex(d), s, c]
                for d, s in buf
            ]
            for buf in manifest
        ]
    )


#: The manifest of a state without buffers.
EMPTY_MANIFEST: bytes = msgpack.packb([])


def unpack_manifest(data: bytes) -> Manifest:
    """Parse a manifest (its checks left out).

    Raises:
        CorruptCheckpointError: it is not a manifest.
    """
    return unpack_checked(data)[0]


def unpack_checked(data: bytes) -> tuple[Manifest, Checks]:
    """Parse a manifest and the checks it holds (none in one written before checks).

    Raises:
        CorruptCheckpointError: it is not a manifest.
    """
    try:
        raw = msgpack.unpackb(data, raw=False)
        # Check every entry before converting: bytes(d) of an int d allocates d bytes.
        if not isinstance(raw, list) or not all(
            isinstance(buf, list) and all(_is_entry(e) for e in buf) for buf in raw
        ):
            raise CorruptCheckpointError("chunk manifest holds a malformed entry")
        manifest = [[(e[0].hex(), e[1]) for e in buf] for buf in raw]
        checks = {e[0].hex(): e[2] for buf in raw for e in buf if len(e) == 3}
        return manifest, checks
    except (ValueError, TypeError) as e:
        raise CorruptCheckpointError(f"chunk manifest does not decode: {e}") from e


def _is_entry(e: object) -> bool:
    return (
        isinstance(e, list)
        and 2 <= len(e) <= 3
        and type(e[0]) is bytes
        and len(e[0]) == 32
        and type(e[1]) is int
        and 0 <= e[1] <= MAX_CHUNK
        and (len(e) == 2 or (type(e[2]) is bytes and len(e[2]) == CHECK_SIZE))
    )


def record_checksum(payload: bytes, manifest: bytes, algo: str) -> str:
    """Return the checksum of a checkpoint: the ``algo`` digest of payload and manifest.

    The manifest holds every chunk's digest, so this covers every byte of the state.
    """
    h = _hasher(algo)
    h.update(len(payload).to_bytes(8, "big"))
    h.update(payload)
    h.update(manifest)
    return h.hexdigest()


def manifest_digests(manifest: Manifest) -> tuple[str, ...]:
    """Return the distinct digests a manifest uses, in first-use order."""
    return tuple(dict.fromkeys(d for buf in manifest for d, _ in buf))


def buffer_sizes(manifest: Manifest) -> Sequence[int]:
    """Return the total raw size of each buffer in a manifest."""
    return [sum(s for _, s in buf) for buf in manifest]
