"""The codec's envelopes: how encoded bytes are framed for storage, with their one-byte tags.

``codec`` turns a value into a skeleton plus buffers; this module frames them:

- the **record payload** (a checkpoint's skeleton, stored inline with its record):
  ``PAYLOAD_RAW`` + skeleton, or ``PAYLOAD_ZSTD`` + a zstd frame of it;
- the **item state** (a ledger entry's state, one self-contained byte string):
  ``ITEM_INLINE`` + skeleton (no buffers), or ``ITEM_BUFFERS`` + msgpack
  ``[skeleton, [buffer, ...]]``.

Every tag is defined here, once: the same byte means the same framing wherever
it is read. Pure functions; nothing here touches a store.
"""

from __future__ import annotations

from typing import Any

import msgpack
import zstandard

from . import codec
from .chunking import ZSTD_MAX_RATIO
from .errors import CorruptCheckpointError

__all__ = [
    "ITEM_BUFFERS",
    "ITEM_INLINE",
    "PAYLOAD_RAW",
    "PAYLOAD_ZSTD",
    "decode_item_state",
    "encode_item_state",
    "pack_payload",
    "unpack_payload",
]

#: Record payload: the skeleton as it is.
PAYLOAD_RAW = b"\x00"
#: Record payload: the skeleton in one zstd frame (with its content size).
PAYLOAD_ZSTD = b"\x01"
#: Item state: a skeleton with no buffers.
ITEM_INLINE = b"\x00"
#: Item state: msgpack ``[skeleton, [buffer, ...]]``.
ITEM_BUFFERS = b"\x01"

#: Skeletons this big are worth a zstd try (smaller ones are stored raw).
_COMPRESS_MIN = 4096


def pack_payload(skeleton: bytes) -> bytes:
    """Frame a state's skeleton for its record: zstd when that saves an eighth, else raw."""
    n = len(skeleton)
    if n >= _COMPRESS_MIN:
        packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(skeleton)
        if len(packed) < n * 7 // 8:
            return PAYLOAD_ZSTD + packed
    return PAYLOAD_RAW + skeleton


def unpack_payload(payload: bytes, limit: int) -> bytes | memoryview:
    """Return the skeleton ``pack_payload`` framed; ``limit`` caps its size (the record's).

    Raises:
        CorruptCheckpointError: an unknown tag, a frame that does not decompress, or
            one that declares more than ``limit`` bytes (checked before allocating).
    """
    kind, body = payload[:1], memoryview(payload)[1:]
    if kind == PAYLOAD_RAW:
        return body
    if kind == PAYLOAD_ZSTD:
        try:
            size = zstandard.frame_content_size(body)
            # Capped at the checkpoint's recorded size, and at what the frame's bytes can
            # give (both sizes are only declared): a bomb fails before allocating.
            if size < 0 or size > min(limit, len(body) * ZSTD_MAX_RATIO):
                raise CorruptCheckpointError("state payload declares an impossible size")
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
        except zstandard.ZstdError as e:
            raise CorruptCheckpointError(f"state payload does not decompress: {e}") from e
    raise CorruptCheckpointError("state payload has an unknown format")


def encode_item_state(state: Any, *, allow_pickle: bool = False) -> bytes | None:
    """Encode an item state into one self-contained byte string (None stays None).

    Raises:
        UnsupportedTypeError: the state holds a value with no encoding.

    >>> decode_item_state(encode_item_state({"n": 1}))
    {'n': 1}
    """
    if state is None:
        return None
    enc = codec.encode(state, allow_pickle=allow_pickle)
    if not enc.buffers:
        return ITEM_INLINE + enc.skeleton
    packed: bytes = msgpack.packb([enc.skeleton, [bytes(b) for b in enc.buffers]])
    return ITEM_BUFFERS + packed


def decode_item_state(data: bytes | None, *, allow_pickle: bool = False) -> Any:
    """Decode what ``encode_item_state`` made.

    Raises:
        CorruptCheckpointError: the bytes are not a valid encoding.
        PickleNotAllowedError: the state holds pickles and allow_pickle is False.
    """
    if data is None:
        return None
    kind, body = data[:1], data[1:]
    if kind == ITEM_INLINE:
        return codec.decode(body, (), allow_pickle=allow_pickle)
    if kind == ITEM_BUFFERS:
        try:
            skeleton, buffers = msgpack.unpackb(body)
        except (ValueError, msgpack.UnpackException) as e:
            raise CorruptCheckpointError(f"item state does not decode: {e}") from e
        return codec.decode(skeleton, buffers, allow_pickle=allow_pickle)
    raise CorruptCheckpointError("item state has an unknown format")
