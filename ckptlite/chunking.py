"""Split buffers into content-addressed chunks, compress, verify: compute only, no I/O.

A chunk is addressed by the SHA-256 of its raw bytes. It is stored zstd-compressed
(``codec=1``) when that saves at least an eighth, raw (``codec=0``) otherwise.
The manifest lists, per buffer, the (digest, size) of its chunks in order.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import msgpack
import zstandard

from .errors import CorruptCheckpointError
from .types import StoredChunk

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "EMPTY_MANIFEST",
    "MAX_CHUNK",
    "ZSTD_MAX_RATIO",
    "Manifest",
    "check_chunk",
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


def digest_of(data: bytes | bytearray | memoryview) -> str:
    """Return the SHA-256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


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


def check_chunk(chunk: StoredChunk) -> None:
    """Check that ``chunk``'s stored bytes give back the raw bytes its digest names.

    Raises:
        CorruptCheckpointError: they do not (size, frame or digest).
    """
    if digest_of(raw_bytes(chunk)) != chunk.digest:
        raise CorruptCheckpointError(
            f"chunk {chunk.digest} does not match its digest", digest=chunk.digest
        )


def restore_chunk_into(chunk: StoredChunk, out: memoryview) -> None:
    """Decompress ``chunk`` into ``out`` and check its digest.

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
    if digest_of(out) != chunk.digest:
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


def record_checksum(payload: bytes, manifest: bytes) -> str:
    """Return the checksum of a checkpoint: SHA-256 over payload and manifest.

    The manifest holds every chunk's digest, so this covers every byte of the state.
    """
    h = hashlib.sha256()
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
