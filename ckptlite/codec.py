"""Encode states to msgpack and back: pure functions, no I/O.

``encode`` turns a state into a small *skeleton* (msgpack bytes) plus a list of
large *buffers* (ndarray data, big bytes) that the manager chunks and stores
separately; the skeleton refers to them by index. ``decode`` reverses it.
numpy is optional: it is imported only when an array is met. ``pickle`` is
imported only when a value needs it and the caller allowed it. The other types
(sets, Decimal, paths, masked arrays, pandas and xarray values...) are encoded
by ``_codec_ext``, through this module's packing, so their arrays are buffers too.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import msgpack

from . import _codec_ext
from .errors import (
    ConfigError,
    CorruptCheckpointError,
    PickleNotAllowedError,
    UnsupportedTypeError,
)

__all__ = ["BUFFER_THRESHOLD", "EncodedState", "decode", "encode"]

#: Buffers at least this large leave the skeleton and are stored as chunks.
BUFFER_THRESHOLD = 64 * 1024
#: Tuples, datetimes and arrays nested deeper than this are refused on both sides:
#: each level is a nested msgpack call with a large C frame, and ~200 levels
#: overflow an 8 MiB stack (SIGSEGV) while decoding.
MAX_NESTING = 64

_TUPLE, _DATETIME, _DATE, _UUID, _NDARRAY, _NPSCALAR, _BUFREF, _PICKLE = range(1, 9)


@dataclass(frozen=True, slots=True)
class EncodedState:
    """A state as bytes: the msgpack skeleton and the large buffers it refers to."""

    skeleton: bytes
    buffers: tuple[memoryview, ...]
    pickled: bool
    #: Per buffer, the size of the elements it holds when they are numbers (1 for bytes):
    #: the chunk codec shuffles their bytes before compressing. Empty: all 1.
    itemsizes: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return len(self.skeleton) + sum(b.nbytes for b in self.buffers)


def encode(state: Any, *, allow_pickle: bool = False) -> EncodedState:
    """Encode ``state``; large buffers are returned separately, not copied.

    A ``bytearray`` comes back as ``bytes``; every other supported type keeps its type.

    Raises:
        UnsupportedTypeError: a value has no encoding and pickle is not allowed; the
            message names where it sits (``state["tiles"][3]["mask"]: Foo``).

    >>> enc = encode({"a": (1, 2)})
    >>> decode(enc.skeleton, enc.buffers)
    {'a': (1, 2)}
    """
    try:
        return _encode(state, allow_pickle)
    except UnsupportedTypeError:
        # Found only now, on the error path: tracking the path while packing would
        # cost every save (msgpack walks dicts and lists in C, out of our sight).
        found = _locate(state, "state", allow_pickle)
        if found is None:
            raise
        where, value, inner = found
        # from None: the first error says the same without the path, and a traceback
        # printing both showed the hint twice.
        raise UnsupportedTypeError(
            f"{where}: {type(value).__qualname__}: {inner.message}",
            hint=inner.hint,
            **{**inner.context, "path": where},
        ) from None


def _encode(state: Any, allow_pickle: bool) -> EncodedState:
    buffers: list[memoryview] = []
    itemsizes: list[int] = []
    pickled = False

    def add_buffer(view: memoryview, itemsize: int = 1) -> int:
        buffers.append(view)
        itemsizes.append(itemsize)
        return len(buffers) - 1

    depth = 0

    def default(obj: Any) -> Any:
        nonlocal depth
        depth += 1
        try:
            if depth > MAX_NESTING:
                raise UnsupportedTypeError(
                    f"the state nests tuples/datetimes/arrays more than {MAX_NESTING} deep",
                    hint="Flatten the state, or use lists for deep structures.",
                )
            return _default(obj)
        finally:
            depth -= 1

    def _default(obj: Any) -> Any:
        nonlocal pickled
        t = type(obj)
        if t is tuple or t is _Tuple:
            return msgpack.ExtType(_TUPLE, _pack(list(obj), default))
        if t is datetime:
            return msgpack.ExtType(_DATETIME, _pack(_dt_parts(obj), default))
        if t is date:
            return msgpack.ExtType(_DATE, obj.isoformat().encode())
        if t is uuid.UUID:
            return msgpack.ExtType(_UUID, obj.bytes)
        np = sys.modules.get("numpy")
        if np is not None:
            if t is np.ndarray and not obj.dtype.hasobject:
                return msgpack.ExtType(_NDARRAY, _pack(_array_parts(np, obj, add_buffer), default))
            if isinstance(obj, np.generic) and not obj.dtype.hasobject:
                return msgpack.ExtType(_NPSCALAR, _pack([obj.dtype.str, obj.tobytes()], default))
        # Made here, not per encode: most states never reach this line.
        enc = _codec_ext.Encoder(lambda v: _pack(v, default), add_buffer, BUFFER_THRESHOLD)
        ext = _codec_ext.encode_ext(obj, t, enc)
        if ext is not None:
            return msgpack.ExtType(*ext)
        if t is int:
            raise _big_int_error(obj)
        if allow_pickle:
            import pickle

            pickled = True
            return msgpack.ExtType(_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        raise UnsupportedTypeError(
            f"cannot checkpoint a value of type {t.__module__}.{t.__qualname__}",
            type_name=f"{t.__module__}.{t.__qualname__}",
        )

    skeleton = _pack(state, default)
    if len(skeleton) >= BUFFER_THRESHOLD:
        # Big bytes may be inside (a small skeleton cannot hold any): pack again with
        # them lifted out. Walking every state for them was most of a small save's encode.
        buffers.clear()
        itemsizes.clear()
        pickled = False
        skeleton = _pack(_lift_big_bytes(state, add_buffer), default)
    return EncodedState(skeleton, tuple(buffers), pickled, tuple(itemsizes))


def decode(
    skeleton: bytes | memoryview,
    buffers: Sequence[bytes | bytearray | memoryview],
    *,
    allow_pickle: bool = False,
) -> Any:
    """Decode a skeleton, resolving buffer references against ``buffers``.

    Raises:
        PickleNotAllowedError: the state holds a pickled value and allow_pickle is False.
        CorruptCheckpointError: the bytes are not a valid encoding.
        ConfigError: a value needs a library (pandas, xarray) that is not installed.

    >>> decode(encode([1, "x"]).skeleton, [])
    [1, 'x']
    """

    depth = 0
    held = list(buffers)

    def ext_hook(code: int, data: bytes) -> Any:
        nonlocal depth
        depth += 1
        try:
            if depth > MAX_NESTING:
                raise CorruptCheckpointError(f"the state nests more than {MAX_NESTING} deep")
            return _ext_hook(code, data)
        finally:
            depth -= 1

    def _ext_hook(code: int, data: bytes) -> Any:
        if code == _TUPLE:
            return tuple(_unpack(data, ext_hook))
        if code == _DATETIME:
            return _dt_from_parts(_unpack(data, ext_hook))
        if code == _DATE:
            return date.fromisoformat(data.decode())
        if code == _UUID:
            return uuid.UUID(bytes=data)
        if code == _BUFREF:
            return bytes(held[msgpack.unpackb(data)])
        if code == _NDARRAY:
            return _array_from_parts(_unpack(data, ext_hook), held)
        if code == _NPSCALAR:
            import numpy as np

            dtype_str, raw = _unpack(data, ext_hook)
            return np.frombuffer(raw, dtype=np.dtype(dtype_str))[0]
        if code == _PICKLE:
            if not allow_pickle:
                raise PickleNotAllowedError("this checkpoint holds a pickled value")
            import pickle

            return pickle.loads(data)
        if code in _codec_ext.CODES:
            dec = _codec_ext.Decoder(lambda data: _unpack(data, ext_hook), held)
            return _codec_ext.decode_ext(code, data, dec)
        raise CorruptCheckpointError(f"unknown msgpack extension type {code}")

    try:
        return _unpack(skeleton, ext_hook)
    except (PickleNotAllowedError, CorruptCheckpointError, ConfigError):
        raise
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as e:
        # msgpack's own errors (ExtraData, FormatError, StackError) derive from ValueError.
        raise CorruptCheckpointError(f"state does not decode: {e}") from e
    finally:
        # The two hooks refer to each other: a cycle that only the garbage collector
        # frees, holding the buffers until then. Emptied here, a loaded array is freed
        # as soon as its caller drops it, and the next load can land in its memory.
        held.clear()


def _locate(value: Any, where: str, allow_pickle: bool) -> tuple[str, Any, Any] | None:
    """Return (path, value, error) of the first value in ``value`` that does not encode."""
    t = type(value)
    if t in _ATOMS:
        if t is int and not -(2**63) <= value < 2**64:
            return where, value, _big_int_error(value)
        if t is str and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError as e:  # a lone surrogate: msgpack refuses it
                return where, value, UnsupportedTypeError(f"a str that is not UTF-8: {e}")
        return None
    try:
        if t is dict:
            for k, v in value.items():
                found = _locate(k, f"{where} key {_show(k)}", allow_pickle) or _locate(
                    v, f"{where}[{_show(k)}]", allow_pickle
                )
                if found:
                    return found
            return None
        if t is list or t is tuple:
            for i, v in enumerate(value):
                found = _locate(v, f"{where}[{i}]", allow_pickle)
                if found:
                    return found
            return None
        if t is set or t is frozenset:
            for v in value:
                found = _locate(v, f"{where}{{{_show(v)}}}", allow_pickle)
                if found:
                    return found
            return None
    except RecursionError:
        return None
    try:
        _encode(value, allow_pickle)
    except UnsupportedTypeError as e:
        return where, value, e
    return None


def _big_int_error(value: int) -> UnsupportedTypeError:
    return UnsupportedTypeError(
        f"integer {value} is outside the 64-bit range",
        hint="Store it as a str, or open the store with allow_pickle=True.",
    )


def _show(key: Any) -> str:
    if type(key) is str:
        return json.dumps(key, ensure_ascii=False)
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _pack(obj: Any, default: Callable[[Any], Any]) -> bytes:
    try:
        # A Packer with a small first buffer: packb's 256 KiB one cost ~7 us per call.
        packer = msgpack.Packer(
            default=default, strict_types=True, use_bin_type=True, buf_size=4096
        )
        return packer.pack(obj)  # type: ignore[no-any-return]
    except (OverflowError, ValueError) as e:
        raise UnsupportedTypeError(f"cannot checkpoint value: {e}") from e


def _unpack(data: bytes | memoryview, ext_hook: Callable[[int, bytes], Any]) -> Any:
    return msgpack.unpackb(
        data,
        ext_hook=ext_hook,
        raw=False,
        strict_map_key=False,
        use_list=True,
    )


def _lift_big_bytes(obj: Any, add_buffer: Callable[[memoryview], int]) -> Any:
    """Replace large ``bytes`` (which msgpack would pack natively) by buffer refs."""
    t = type(obj)
    if (t is bytes or t is bytearray) and len(obj) >= BUFFER_THRESHOLD:
        return msgpack.ExtType(_BUFREF, msgpack.packb(add_buffer(memoryview(obj))))
    # Scalars are checked inline: a call per list element was most of a small save's encode.
    if t is dict:
        return {
            k: v if type(v) in _ATOMS else _lift_big_bytes(v, add_buffer) for k, v in obj.items()
        }
    if t is list:
        return [v if type(v) in _ATOMS else _lift_big_bytes(v, add_buffer) for v in obj]
    if t is tuple:
        return _Tuple(v if type(v) in _ATOMS else _lift_big_bytes(v, add_buffer) for v in obj)
    return obj


_ATOMS = frozenset({str, int, float, bool, type(None)})


class _Tuple(tuple[Any, ...]):
    """A tuple rebuilt by ``_lift_big_bytes``; packs like a tuple."""


def _dt_parts(dt: datetime) -> list[Any]:
    tz = dt.tzinfo
    key = getattr(tz, "key", None)  # zoneinfo.ZoneInfo keeps its name
    return [dt.replace(tzinfo=None).isoformat(), _utcoffset_seconds(dt), key, dt.fold]


def _utcoffset_seconds(dt: datetime) -> float | None:
    off = dt.utcoffset()
    return None if off is None else off.total_seconds()


def _dt_from_parts(parts: list[Any]) -> datetime:
    naive_iso, offset, key, fold = parts
    dt = datetime.fromisoformat(naive_iso).replace(fold=fold)
    if key is not None:
        from zoneinfo import ZoneInfo

        return dt.replace(tzinfo=ZoneInfo(key))
    if offset is not None:
        return dt.replace(tzinfo=timezone(timedelta(seconds=offset)))
    return dt


def _array_parts(np: Any, arr: Any, add_buffer: Callable[[memoryview, int], int]) -> list[Any]:
    descr = _codec_ext.dtype_descr(np, arr.dtype)
    if arr.flags.c_contiguous:
        order, data = "C", arr
    elif arr.flags.f_contiguous:
        order, data = "F", arr.T
    else:
        order, data = "C", np.ascontiguousarray(arr)
    # A uint8 view works for every dtype (datetime64 has no buffer format) and copies nothing.
    raw = memoryview(data.reshape(-1).view(np.uint8)) if data.nbytes else memoryview(b"")
    # An int payload is the index of a buffer stored as chunks.
    payload = (
        add_buffer(raw, _element_size(arr.dtype))
        if raw.nbytes >= BUFFER_THRESHOLD
        else raw.tobytes()
    )
    return [descr, list(arr.shape), order, payload]


def _element_size(dtype: Any) -> int:
    """Return the bytes of one number in ``dtype`` (a complex is two), 1 for other kinds."""
    if dtype.kind in "iufmM":
        return int(dtype.itemsize)
    if dtype.kind == "c":
        return int(dtype.itemsize) // 2
    return 1  # bools, strings, records: their bytes are not numbers of one size


_DTYPES: dict[str, Any] = {}  # descriptor -> numpy dtype (immutable)


def _array_from_parts(parts: list[Any], buffers: Sequence[bytes | bytearray | memoryview]) -> Any:
    import numpy as np

    descr, shape, order, payload = parts
    if isinstance(payload, int):
        payload = buffers[payload]
    if isinstance(descr, list):  # structured dtypes come back as lists of lists
        dtype = np.lib.format.descr_to_dtype([tuple(f) for f in descr])
    elif type(descr) is str:
        # A plain dtype's parse (three regex matches) was ~10% of a warm tile load.
        known = _DTYPES.get(descr)
        if known is not None:
            dtype = known
        else:
            dtype = np.dtype(descr)  # what descr_to_dtype does with a string
            if len(_DTYPES) < 1024:  # a state's descriptors come from its arrays: few
                _DTYPES[descr] = dtype
    else:
        dtype = np.lib.format.descr_to_dtype(descr)
    if isinstance(payload, bytes):
        payload = bytearray(payload)  # arrays come back writable
    if not shape or 0 in shape:
        return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()
    arr = np.frombuffer(payload, dtype=dtype)
    if order == "F":
        return arr.reshape(tuple(reversed(shape))).T
    return arr.reshape(shape)
