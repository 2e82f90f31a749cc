"""Split buffers into content-addressed chunks, compress, verify: compute only, no I/O.

A chunk is addressed by the digest of its raw bytes, with the store's algorithm
(``algo``: BLAKE3 for new stores, SHA-256 for older ones; chosen once per manager
and passed down, never global). It is stored zstd-compressed
(``codec=1``) when that saves at least an eighth, raw (``codec=0``) otherwise.
The manifest lists, per buffer, the (digest, size) of its chunks in order.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import blake3
import msgpack
import zstandard

from .errors import ConfigError, CorruptCheckpointError
from .types import HASHES, StoredChunk

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "EMPTY_MANIFEST",
    "MAX_CHUNK",
    "ZSTD_MAX_RATIO",
    "Manifest",
    "check_chunk",
    "check_hash",
    "compress_chunk",
    "digest_of",
    "pack_manifest",
    "raw_bytes",
    "record_checksum",
    "restore_chunk_into",
    "split",
    "unpack_manifest",
]

CODEC_RAW = 0
CODEC_ZSTD = 1
MAX_CHUNK = 64 << 20  # the largest chunk_size a store may be opened with
#: zstd's largest expansion: a 4-byte RLE block (3-byte header, 1 byte) gives 128 KiB.
ZSTD_MAX_RATIO = 1 << 15
_PROBE = 16 * 1024  # compress a slice first; skip zstd on data it cannot shrink

#: Per buffer: the (digest hex, raw size) of each chunk, in order.
Manifest = list[list[tuple[str, int]]]


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
    if algo == "blake3":
        return blake3.blake3(data).hexdigest()
    if algo == "sha256":
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"unknown hash {algo!r}")  # the manager checked it: a bug


def _hasher(algo: str) -> blake3.blake3 | hashlib._Hash:
    if algo == "blake3":
        return blake3.blake3()
    if algo == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown hash {algo!r}")


def compress_chunk(digest: str, view: memoryview, level: int) -> StoredChunk:
    """Compress one chunk when zstd pays, else keep it raw."""
    size = view.nbytes
    if size >= 256:
        # A level-1 probe of one slice tells incompressible data (float noise) cheaply.
        if size > 2 * _PROBE and len(_compressor(1).compress(view[:_PROBE])) > _PROBE * 7 // 8:
            return StoredChunk(digest, size, CODEC_RAW, view)
        packed = _compressor(level).compress(view)
        if len(packed) <= size * 7 // 8:
            return StoredChunk(digest, size, CODEC_ZSTD, packed)
    return StoredChunk(digest, size, CODEC_RAW, view)


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
    if chunk.codec != CODEC_ZSTD:
        raise CorruptCheckpointError(f"chunk {chunk.digest} has unknown codec {chunk.codec}")
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


def restore_chunk_into(chunk: StoredChunk, out: memoryview, algo: str) -> None:
    """Decompress ``chunk`` into ``out`` and check its digest by ``algo``.

    Raises:
        CorruptCheckpointError: size, frame or digest does not match.
    """
    if out.nbytes != chunk.size:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} has the wrong size", digest=chunk.digest
        )
    raw = raw_bytes(chunk)
    if raw is not out:  # a backend may have read it into ``out`` already
        out[:] = raw
    if digest_of(out, algo) != chunk.digest:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} does not match its digest", digest=chunk.digest
        )


def pack_manifest(manifest: Manifest) -> bytes:
    """Serialise a manifest (digests as 32 raw bytes)."""
    if not manifest:
        return EMPTY_MANIFEST
    packer = msgpack.Packer(use_bin_type=True, buf_size=64 + 48 * sum(map(len, manifest)))
    return packer.pack(  # type: ignore[no-any-return]
        [[[bytes.fromhex(d), s] for d, s in buf] for buf in manifest]
    )


#: The manifest of a state without buffers.
EMPTY_MANIFEST: bytes = msgpack.packb([])


def unpack_manifest(data: bytes) -> Manifest:
    """Parse a manifest.

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
        return [[(d.hex(), s) for d, s in buf] for buf in raw]
    except (ValueError, TypeError) as e:
        raise CorruptCheckpointError(f"chunk manifest does not decode: {e}") from e


def _is_entry(e: object) -> bool:
    return (
        isinstance(e, list)
        and len(e) == 2
        and type(e[0]) is bytes
        and len(e[0]) == 32
        and type(e[1]) is int
        and 0 <= e[1] <= MAX_CHUNK
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
