"""The codec: round trips (Hypothesis), buffers leave the skeleton, bad input is typed."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckptlite.codec import BUFFER_THRESHOLD, decode, encode
from ckptlite.errors import CorruptCheckpointError, PickleNotAllowedError, UnsupportedTypeError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=64)
    | st.uuids()
    | st.dates()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.builds(PurePosixPath, st.text(max_size=8))
    | st.frozensets(st.integers(-5, 5) | st.text(max_size=3), max_size=4)
)
states = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1), inner, max_size=5)
        | st.sets(st.text(max_size=4) | st.integers(-(2**63), 2**63 - 1), max_size=4)
    ),
    max_leaves=30,
)


def round_trip(state: object) -> object:
    enc = encode(state)
    return decode(enc.skeleton, [bytearray(b) for b in enc.buffers])


def same(a: object, b: object) -> bool:
    """Equality that also checks types (1 == 1.0 == True would hide a lossy codec)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Decimal):
        assert isinstance(b, Decimal)
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, datetime):
        assert isinstance(b, datetime)
        return a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold
    return a == b


@given(states)
@settings(max_examples=300)
def test_round_trip_keeps_values_and_types(state: object) -> None:
    assert same(round_trip(state), state)


@given(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
@settings(max_examples=200)
def test_arrays_round_trip_bit_exactly(arr: np.ndarray) -> None:
    back = round_trip({"a": arr})["a"]  # type: ignore[index]
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()


def test_large_buffers_leave_the_skeleton_without_copies() -> None:
    arr = np.arange(100_000, dtype="f8")
    blob = b"z" * BUFFER_THRESHOLD
    enc = encode({"arr": arr, "blob": blob, "small": np.arange(3)})
    assert len(enc.skeleton) < 500
    assert [b.nbytes for b in enc.buffers] == [BUFFER_THRESHOLD, arr.nbytes]
    assert np.shares_memory(np.frombuffer(enc.buffers[1], "u1"), arr)  # a view, not a copy
    back = decode(enc.skeleton, [bytearray(b) for b in enc.buffers])
    assert back["blob"] == blob and np.array_equal(back["arr"], arr)
    assert back["arr"].flags.writeable


def test_big_skeletons_are_searched_for_big_bytes_small_ones_are_not() -> None:
    small = {"t": (b"x" * 100, [1, 2.5, "s"]), "arr": np.arange(10_000.0)}
    enc = encode(small)
    assert len(enc.skeleton) < 1000 and [b.nbytes for b in enc.buffers] == [80_000]
    # Over the threshold in many small pieces: nothing to lift, still one buffer per array.
    many = {"rows": [(i, f"row {i}", b"y" * 10) for i in range(20_000)], "arr": np.arange(10_000.0)}
    enc = encode(many)
    assert len(enc.skeleton) >= BUFFER_THRESHOLD and [b.nbytes for b in enc.buffers] == [80_000]
    assert decode(enc.skeleton, enc.buffers)["rows"] == many["rows"]
    # Big bytes deep inside a tuple: lifted, and the array's buffer is not counted twice.
    deep = {"t": ((b"z" * BUFFER_THRESHOLD,),), "arr": np.arange(10_000.0)}
    enc = encode(deep)
    assert len(enc.skeleton) < 1000
    assert sorted(b.nbytes for b in enc.buffers) == [BUFFER_THRESHOLD, 80_000]
    back = decode(enc.skeleton, enc.buffers)
    assert back["t"] == deep["t"] and np.array_equal(back["arr"], deep["arr"])


class _Opaque:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque)


def test_a_pickled_value_in_a_big_skeleton_is_flagged_once() -> None:
    state = {"o": _Opaque(), "blob": b"z" * BUFFER_THRESHOLD}
    enc = encode(state, allow_pickle=True)
    assert enc.pickled and [b.nbytes for b in enc.buffers] == [BUFFER_THRESHOLD]
    assert decode(enc.skeleton, enc.buffers, allow_pickle=True) == state
    assert not encode({"blob": b"z" * BUFFER_THRESHOLD}).pickled


def test_fortran_structured_and_strided_arrays() -> None:
    f = np.asfortranarray(np.arange(200_000, dtype="i4").reshape(400, 500))
    rec = np.zeros(4, dtype=[("x", "<i4"), ("y", ">f8"), ("s", "U3")])
    rec["s"] = ["a", "bb", "ccc", ""]
    strided = np.arange(1000)[::3]
    back = round_trip(
        {"f": f, "rec": rec, "strided": strided, "dt": np.array(["2026-01-01"], "M8[D]")}
    )
    assert back["f"].flags.f_contiguous and np.array_equal(back["f"], f)  # type: ignore[index]
    assert back["rec"].dtype == rec.dtype and back["rec"].tobytes() == rec.tobytes()  # type: ignore[index]
    assert np.array_equal(back["strided"], strided)  # type: ignore[index]


def test_numpy_scalars_keep_their_type() -> None:
    for value in (np.float32(1.5), np.int16(-3), np.bool_(True), np.complex64(1 + 2j)):
        back = round_trip(value)
        assert type(back) is type(value) and back == value


def test_datetimes_keep_their_zone() -> None:
    ny = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York"))
    fixed = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    back = round_trip([ny, fixed, datetime(2026, 1, 1, tzinfo=UTC), date(2026, 2, 3)])
    assert back[0].tzinfo == ZoneInfo("America/New_York") and back[0].fold == 1  # type: ignore[index]
    assert back[1].utcoffset() == timedelta(hours=5, minutes=30)  # type: ignore[index]
    assert back[3] == date(2026, 2, 3)  # type: ignore[index]


class Custom:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom)

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    "value",
    [
        Custom(),
        {1, Custom()},
        range(3),
        2**70,
        np.array([object()], dtype=object),
        [1, [Custom()]],
    ],
)
def test_unsupported_types_raise_typed_error(value: object) -> None:
    with pytest.raises(UnsupportedTypeError) as e:
        encode({"k": value})
    assert e.value.hint


def test_pickle_only_when_allowed_both_ways() -> None:
    enc = encode({"c": Custom()}, allow_pickle=True)
    assert enc.pickled
    with pytest.raises(PickleNotAllowedError):
        decode(enc.skeleton, [])
    assert decode(enc.skeleton, [], allow_pickle=True) == {"c": Custom()}


def test_load_path_never_imports_pickle_without_opt_in() -> None:
    enc = encode({"a": np.arange(5), "t": (1, 2)})
    saved = sys.modules.pop("pickle", None)
    try:
        decode(enc.skeleton, [])
        assert "pickle" not in sys.modules
    finally:
        if saved is not None:
            sys.modules["pickle"] = saved


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used msgpack byte
        b"\xdd\xff\xff\xff\xff",  # array header claiming 4 billion items
        b"\xc6\xff\xff\xff\xff",  # bin header claiming 4 GiB
        msgpack.packb(msgpack.ExtType(99, b"")),
        b"\x91" * 100_000 + b"\xc0",  # 100k nested arrays
    ],
)
def test_hostile_skeletons_raise_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptCheckpointError):
        decode(data, [])


def test_uuid_round_trip() -> None:
    u = uuid.uuid4()
    assert round_trip({u.hex: u}) == {u.hex: u}
