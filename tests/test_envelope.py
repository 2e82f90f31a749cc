"""_envelope: every framing round-trips, and a bad tag or frame is a typed error."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ckptlite import CorruptCheckpointError
from ckptlite._envelope import (
    ITEM_BUFFERS,
    PAYLOAD_RAW,
    PAYLOAD_ZSTD,
    decode_item_state,
    encode_item_state,
    pack_payload,
    unpack_payload,
)


@given(st.binary(max_size=20_000) | st.just(b"a" * 50_000))
def test_payload_round_trips(skeleton: bytes) -> None:
    framed = pack_payload(skeleton)
    assert framed[:1] in (PAYLOAD_RAW, PAYLOAD_ZSTD)
    assert bytes(unpack_payload(framed, len(skeleton))) == skeleton


def test_a_compressible_payload_is_zstd_and_its_size_is_capped() -> None:
    framed = pack_payload(b"a" * 50_000)
    assert framed[:1] == PAYLOAD_ZSTD and len(framed) < 1000
    with pytest.raises(CorruptCheckpointError, match="impossible size"):
        unpack_payload(framed, 49_999)  # declares more than the record's size
    bomb = PAYLOAD_ZSTD + zstandard.ZstdCompressor().compress(b"\0" * (1 << 20))
    with pytest.raises(CorruptCheckpointError):
        unpack_payload(bomb[:20], 1 << 20)
    with pytest.raises(CorruptCheckpointError, match="unknown format"):
        unpack_payload(b"\x07abc", 10)


@given(
    st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.dictionaries(st.text(max_size=4), st.binary(max_size=100_000), max_size=2)
)
def test_item_state_round_trips(state: object) -> None:
    assert decode_item_state(encode_item_state(state)) == state


def test_item_state_with_buffers_and_bad_tags() -> None:
    data = encode_item_state({"b": b"x" * 200_000})
    assert data is not None and data[:1] == ITEM_BUFFERS
    with pytest.raises(CorruptCheckpointError, match="unknown format"):
        decode_item_state(b"\x09")
    with pytest.raises(CorruptCheckpointError, match="does not decode"):
        decode_item_state(ITEM_BUFFERS + b"\xc1")
