"""The codec's extension types: pure functions, no I/O, used by ``codec`` only.

Each type is a msgpack extension whose payload is itself packed by the codec, so
the arrays inside (a masked array's data and mask, a DataFrame's columns, an
xarray variable's data) go through the same path as any ndarray: large ones
become buffers, chunked and deduplicated. numpy, pandas and xarray are optional:
a type is recognised only when its library is already imported (a state cannot
hold one otherwise), and imported on load only when such a value is met.

Anything that would not come back exactly raises ``UnsupportedTypeError``.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from .errors import CkptliteError, ConfigError, CorruptCheckpointError, UnsupportedTypeError

__all__ = ["CODES", "Decoder", "Encoder", "decode_ext", "dtype_descr", "encode_ext"]

_TIMEDELTA, _SET, _FROZENSET, _COMPLEX, _DECIMAL, _PATH = range(9, 15)
_MASKED, _DTYPE, _PANDAS, _XARRAY = range(15, 19)
#: The extension codes this module owns (the codec's own are 1-8).
CODES = frozenset(range(9, 19))

#: pathlib classes by the name stored; a concrete path of the other OS comes back pure.
_PATHS: dict[str, type[pathlib.PurePath]] = {
    "PurePosixPath": pathlib.PurePosixPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
    "PosixPath": pathlib.PosixPath,
    "WindowsPath": pathlib.WindowsPath,
}
_PURE_OF = {"PosixPath": pathlib.PurePosixPath, "WindowsPath": pathlib.PureWindowsPath}


class Encoder:
    """What an extension encoder needs from the codec: nested packing and big blobs."""

    __slots__ = ("_add_buffer", "_threshold", "pack")

    def __init__(
        self,
        pack: Callable[[Any], bytes],
        add_buffer: Callable[[memoryview], int],
        threshold: int,
    ) -> None:
        self.pack = pack  #: packs any supported value (arrays become buffer references)
        self._add_buffer = add_buffer
        self._threshold = threshold

    def blob(self, data: bytes) -> int | bytes:
        """Return large packed bytes as a buffer index (chunked); small ones stay inline."""
        return self._add_buffer(memoryview(data)) if len(data) >= self._threshold else data


class Decoder:
    """What an extension decoder needs from the codec: nested unpacking and buffers."""

    __slots__ = ("buffers", "unpack")

    def __init__(
        self, unpack: Callable[[bytes], Any], buffers: Sequence[bytes | bytearray | memoryview]
    ):
        self.unpack = unpack
        self.buffers = buffers

    def blob(self, ref: int | bytes) -> Any:
        """Unpack what ``Encoder.blob`` stored."""
        data = self.buffers[ref] if isinstance(ref, int) else ref
        return self.unpack(bytes(data))


def encode_ext(obj: Any, t: type, enc: Encoder) -> tuple[int, bytes] | None:
    """Return ``(code, payload)`` for ``obj`` of exact type ``t``, or None if not ours.

    Raises:
        UnsupportedTypeError: ``obj`` is of a type handled here but cannot round-trip.
    """
    if t is timedelta:
        return _TIMEDELTA, enc.pack([obj.days, obj.seconds, obj.microseconds])
    if t is set or t is frozenset:
        return (_SET if t is set else _FROZENSET), enc.pack(_ordered(obj))
    if t is complex:
        return _COMPLEX, enc.pack([obj.real, obj.imag])
    if t is Decimal:
        return _DECIMAL, str(obj).encode()  # the exact sign, digits, exponent, NaN payload
    if t.__name__ in _PATHS and _PATHS[t.__name__] is t:
        return _PATH, enc.pack([t.__name__, _path_text(obj)])
    np = sys.modules.get("numpy")
    if np is not None:
        if t is np.ma.MaskedArray or t is np.ma.core.MaskedConstant:
            return _MASKED, enc.pack(_masked_parts(np, obj))
        if isinstance(obj, np.dtype) and not obj.hasobject:
            return _DTYPE, enc.pack(dtype_descr(np, obj))
    pd = sys.modules.get("pandas")
    if pd is not None and (t is pd.DataFrame or t is pd.Series or isinstance(obj, pd.Index)):
        from . import _codec_pandas

        return _PANDAS, enc.pack(_codec_pandas.pandas_parts(obj, enc))
    xr = sys.modules.get("xarray")
    if xr is not None and t in (xr.DataArray, xr.Dataset):
        from . import _codec_pandas

        return _XARRAY, enc.pack(_codec_pandas.xarray_parts(obj, enc))
    return None


def decode_ext(code: int, data: bytes, dec: Decoder) -> Any:
    """Rebuild the value ``encode_ext`` turned into ``(code, data)``.

    Raises:
        CorruptCheckpointError: the payload is not a valid encoding.
        ConfigError: the value needs a library (pandas, xarray) that is not installed.
    """
    try:
        return _decode_ext(code, data, dec)
    except CkptliteError:
        raise
    except ImportError as e:  # not damage: the checkpoint must not be marked corrupted
        raise ConfigError(
            f"this state holds a value whose library is not installed: {e}",
            hint="Install the library the checkpoint was saved with (pandas, xarray), "
            "then load it again.",
        ) from e
    except Exception as e:  # a constructor refusing hostile parts: any error is possible
        raise CorruptCheckpointError(f"extension value {code} does not decode: {e}") from e


def _decode_ext(code: int, data: bytes, dec: Decoder) -> Any:
    if code == _DECIMAL:
        return Decimal(data.decode())
    parts = dec.unpack(data)
    if code == _TIMEDELTA:
        days, seconds, micros = parts
        return timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _SET:
        return set(parts)
    if code == _FROZENSET:
        return frozenset(parts)
    if code == _COMPLEX:
        real, imag = parts
        return complex(float(real), float(imag))
    if code == _PATH:
        name, raw = parts
        cls = _PATHS[name]
        text = raw.decode("utf-8", "surrogatepass")
        try:
            return cls(text)
        except (NotImplementedError, TypeError):  # PosixPath on Windows, and the reverse
            return _PURE_OF[name](text)
    if code == _MASKED:
        return _masked_from_parts(parts)
    if code == _DTYPE:
        import numpy as np

        return np.lib.format.descr_to_dtype(_descr(parts))
    from . import _codec_pandas

    if code == _PANDAS:
        return _codec_pandas.pandas_from_parts(parts, dec)
    if code == _XARRAY:
        return _codec_pandas.xarray_from_parts(parts, dec)
    raise CorruptCheckpointError(f"unknown msgpack extension type {code}")


def dtype_descr(np: Any, dtype: Any) -> Any:
    """Return the descr that rebuilds ``dtype`` (``np.lib.format.dtype_to_descr``'s).

    Raises:
        UnsupportedTypeError: the dtype carries metadata, which no descr keeps.
    """
    if dtype.metadata is None and dtype.names is None:
        return np.lib.format.dtype_to_descr(dtype)
    # Empty metadata (an unpickled datetime64 dtype has it) loses nothing: dropped.
    # numpy would drop any with only a warning.
    metadata = _metadata(dtype)
    if any(metadata):
        raise UnsupportedTypeError(
            f"dtype {dtype} carries metadata {metadata[0]!r} that cannot be kept",
            hint="Drop the metadata (np.dtype(dtype.descr)), or pickle.",
        )
    return (
        dtype.descr
        if dtype.names is not None
        else np.lib.format.dtype_to_descr(np.dtype(dtype.str))
    )


def _metadata(dtype: Any) -> list[Any]:
    """Return the metadata mappings of ``dtype``, its fields and subarray bases."""
    found = [] if dtype.metadata is None else [dtype.metadata]
    if dtype.names is not None:
        for name in dtype.names:
            found += _metadata(dtype.fields[name][0])
    if dtype.subdtype is not None:
        found += _metadata(dtype.subdtype[0])
    return sorted(found, key=bool, reverse=True)  # a non-empty one first


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    """Return a set's items sorted when they sort (the same set packs the same bytes)."""
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def _path_text(p: pathlib.PurePath) -> bytes:
    # surrogatepass: a file name that is not UTF-8 (surrogate-escaped by os) round-trips.
    return str(p).encode("utf-8", "surrogatepass")


def _masked_parts(np: Any, arr: Any) -> list[Any]:
    if type(arr) is np.ma.core.MaskedConstant:
        return ["masked"]
    data = np.ma.getdata(arr)
    if type(data) is not np.ndarray:
        raise UnsupportedTypeError(
            f"a masked array over {type(data).__qualname__} cannot be checkpointed",
            hint="Use a masked array over a plain numpy array.",
        )
    mask = np.ma.getmask(arr)
    return [
        data,
        None if mask is np.ma.nomask else mask,
        # The stored fill value as it is (None: the default, not asked for yet). Its
        # dtype depends on history (float64 if the default was read before a float32
        # array's was set), and reading ``fill_value`` would change it: numpy keeps it
        # in this attribute since its masked arrays began.
        arr._fill_value,
        bool(arr.hardmask),
    ]


def _masked_from_parts(parts: list[Any]) -> Any:
    import numpy as np

    if parts == ["masked"]:
        return np.ma.masked
    data, mask, fill, hard = parts
    arr = np.ma.MaskedArray(
        data, mask=np.ma.nomask if mask is None else mask, copy=False, hard_mask=hard
    )
    if fill is not None:
        if not isinstance(fill, np.ndarray) or fill.shape != ():
            raise CorruptCheckpointError("a masked array's fill value is not a 0-d array")
        arr._fill_value = fill  # type: ignore[attr-defined]
    return arr


def _descr(raw: Any) -> Any:
    """Return a dtype descr from its unpacked form (structured ones come back as lists)."""
    if isinstance(raw, list):
        return [tuple(_descr(x) if isinstance(x, list) else x for x in f) for f in raw]
    return raw
