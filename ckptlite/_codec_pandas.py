"""pandas and xarray values as codec parts: pure functions, no I/O, used by ``_codec_ext``.

Columns, index values and variables become numpy arrays wherever their dtype is
a numpy one (so a big column is a buffer, chunked and deduplicated like any
array); object values become a packed list of their elements (strings stay
strings), itself a buffer when large. Extension dtypes kept: ``str``/``string``,
category, tz-aware datetimes, the nullable numbers; any other refuses.
"""

from __future__ import annotations

import sys
from datetime import timedelta, timezone
from typing import TYPE_CHECKING, Any

from .errors import CorruptCheckpointError, UnsupportedTypeError

if TYPE_CHECKING:
    from ._codec_ext import Decoder, Encoder

__all__ = ["pandas_from_parts", "pandas_parts", "xarray_from_parts", "xarray_parts"]

_HINT = (
    "Convert it to a supported dtype (numpy dtypes, object or str of strings, category, "
    "tz-aware datetime, Int64/Float64/boolean), or open the store with allow_pickle=True."
)
_MASKED_DTYPES = frozenset(
    {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"}
    | {"Float32", "Float64", "boolean"}
)


def pandas_parts(obj: Any, enc: Encoder) -> list[Any]:
    """Return a DataFrame, Series or Index as parts for the codec to pack.

    Raises:
        UnsupportedTypeError: a column, an index or a name cannot round-trip exactly.
    """
    pd = sys.modules["pandas"]
    if type(obj) is pd.DataFrame:
        cols = []
        for i, name in enumerate(obj.columns):
            try:
                cols.append(_array_parts(obj.iloc[:, i], enc))
            except UnsupportedTypeError as e:
                raise UnsupportedTypeError(f"column {name!r}: {e.message}", hint=e.hint) from e
        return [
            "frame",
            _index_parts(obj.columns, enc),
            _index_parts(obj.index, enc),
            cols,
            dict(obj.attrs),
            bool(obj.flags.allows_duplicate_labels),
        ]
    if type(obj) is pd.Series:
        idx = _index_parts(obj.index, enc)
        flag = bool(obj.flags.allows_duplicate_labels)
        return ["series", obj.name, idx, _array_parts(obj, enc), dict(obj.attrs), flag]
    return ["index", _index_parts(obj, enc)]


def pandas_from_parts(parts: list[Any], dec: Decoder) -> Any:
    """Rebuild what ``pandas_parts`` made."""
    import pandas as pd

    kind = parts[0]
    if kind == "frame":
        _, columns, index, cols, attrs, dup_ok = parts
        columns, index = _index_from(columns, dec), _index_from(index, dec)
        data = {}
        for i, col in enumerate(cols):
            values = _array_from(col, dec)
            data[i] = pd.Series(values, index=index, dtype=values.dtype, copy=False)
        df = pd.DataFrame(data, index=index) if data else pd.DataFrame(index=index)
        df.columns = columns
        df.attrs.update(attrs)
        return df if dup_ok else df.set_flags(allows_duplicate_labels=False)
    if kind == "series":
        _, name, index, col, attrs, dup_ok = parts
        values = _array_from(col, dec)
        s = pd.Series(values, index=_index_from(index, dec), dtype=values.dtype, name=name)
        s.attrs.update(attrs)
        return s if dup_ok else s.set_flags(allows_duplicate_labels=False)
    if kind == "index":
        return _index_from(parts[1], dec)
    raise CorruptCheckpointError(f"unknown pandas value kind {kind!r}")


def _index_parts(idx: Any, enc: Encoder) -> list[Any]:
    pd = sys.modules["pandas"]
    t = type(idx)
    if t is pd.RangeIndex:
        return ["range", idx.start, idx.stop, idx.step, idx.name]
    if t is pd.MultiIndex:
        levels = [_index_parts(level, enc) for level in idx.levels]
        return ["multi", list(idx.names), levels, [c.copy() for c in idx.codes]]
    if t not in (pd.Index, pd.DatetimeIndex, pd.TimedeltaIndex, pd.CategoricalIndex):
        raise UnsupportedTypeError(
            f"a pandas {t.__qualname__} cannot be checkpointed natively", hint=_HINT
        )
    freq = idx.freqstr if t in (pd.DatetimeIndex, pd.TimedeltaIndex) else None
    return ["index", idx.name, _array_parts(idx, enc), freq]


def _index_from(parts: list[Any], dec: Decoder) -> Any:
    import pandas as pd

    kind = parts[0]
    if kind == "range":
        _, start, stop, step, name = parts
        return pd.RangeIndex(start, stop, step, name=name)
    if kind == "multi":
        _, names, levels, codes = parts
        return pd.MultiIndex(
            levels=[_index_from(lv, dec) for lv in levels], codes=codes, names=names
        )
    if kind == "index":
        _, name, col, freq = parts
        values = _array_from(col, dec)
        idx = pd.Index(values, dtype=values.dtype, name=name, copy=False)
        if freq is not None:
            cls = pd.TimedeltaIndex if values.dtype.kind == "m" else pd.DatetimeIndex
            idx = cls(idx, freq=freq)
        return idx
    raise CorruptCheckpointError(f"unknown pandas index kind {kind!r}")


def _array_parts(owner: Any, enc: Encoder) -> list[Any]:
    """Return the values of a Series or Index as parts."""
    import numpy as np

    pd = sys.modules["pandas"]
    dtype = owner.dtype
    if isinstance(dtype, np.dtype):
        return _values_parts(owner.to_numpy(), enc)
    arr = owner.array
    if isinstance(dtype, pd.StringDtype):
        strings = arr.to_numpy(dtype=object, na_value=None).tolist()
        return ["str", dtype.storage, dtype.na_value is pd.NA, enc.blob(enc.pack(strings))]
    if isinstance(dtype, pd.CategoricalDtype):
        cats = _index_parts(dtype.categories, enc)
        return ["cat", cats, bool(dtype.ordered), np.asarray(arr.codes)]
    if isinstance(dtype, pd.DatetimeTZDtype):
        return ["dttz", _tz_parts(dtype.tz), np.asarray(arr.tz_convert(None))]
    if dtype.name in _MASKED_DTYPES:
        zero = dtype.numpy_dtype.type(0)  # the values under the mask mean nothing
        data = arr.to_numpy(dtype=dtype.numpy_dtype, na_value=zero)
        return ["masked", dtype.name, data, np.asarray(arr.isna())]
    raise UnsupportedTypeError(f"pandas dtype {dtype} cannot be checkpointed natively", hint=_HINT)


def _array_from(parts: list[Any], dec: Decoder) -> Any:
    import numpy as np
    import pandas as pd

    kind = parts[0]
    if kind in ("np", "obj"):
        return _values_from(parts, dec)
    if kind == "str":
        _, storage, na_is_na, ref = parts
        dtype = pd.StringDtype(storage, na_value=pd.NA if na_is_na else np.nan)
        return pd.array(dec.blob(ref), dtype=dtype)
    if kind == "cat":
        _, cats, ordered, codes = parts
        dtype = pd.CategoricalDtype(_index_from(cats, dec), ordered=ordered)
        return pd.Categorical.from_codes(codes, dtype=dtype)
    if kind == "dttz":
        _, tz, utc = parts
        return pd.DatetimeIndex(utc).tz_localize("UTC").tz_convert(_tz_from(tz)).array
    if kind == "masked":
        _, name, data, mask = parts
        if name not in _MASKED_DTYPES:
            raise CorruptCheckpointError(f"unknown pandas dtype {name!r}")
        return pd.api.types.pandas_dtype(name).construct_array_type()(data, mask)
    raise CorruptCheckpointError(f"unknown pandas array kind {kind!r}")


def _values_parts(values: Any, enc: Encoder) -> list[Any]:
    """Return an ndarray as parts: itself, or its elements when its dtype is object."""
    if values.dtype.hasobject:
        if values.dtype.fields is not None:
            raise UnsupportedTypeError(
                "a structured array with object fields cannot be checkpointed", hint=_HINT
            )
        return ["obj", list(values.shape), enc.blob(enc.pack(values.ravel().tolist()))]
    return ["np", values]


def _values_from(parts: list[Any], dec: Decoder) -> Any:
    import numpy as np

    if parts[0] == "np":
        if not isinstance(parts[1], np.ndarray):
            raise CorruptCheckpointError("a pandas or xarray value's array is not an array")
        return parts[1]
    _, shape, ref = parts
    items = dec.blob(ref)
    # fromiter keeps tuples as elements (np.array would make them a dimension).
    return np.fromiter(items, dtype=object, count=len(items)).reshape(shape)


def _tz_parts(tz: Any) -> list[Any]:
    key = getattr(tz, "key", None)  # zoneinfo.ZoneInfo
    if key is not None and type(tz).__module__ == "zoneinfo":
        return ["zone", key]
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        return ["fixed", offset.days * 86400 + offset.seconds, offset.microseconds]
    raise UnsupportedTypeError(
        f"time zone {tz!r} ({type(tz).__qualname__}) cannot be checkpointed natively",
        hint="Use a zoneinfo.ZoneInfo or datetime.timezone time zone.",
    )


def _tz_from(parts: list[Any]) -> Any:
    if parts[0] == "zone":
        from zoneinfo import ZoneInfo

        return ZoneInfo(parts[1])
    _, seconds, micros = parts
    return timezone(timedelta(seconds=seconds, microseconds=micros))


def xarray_parts(obj: Any, enc: Encoder) -> list[Any]:
    """Return a DataArray or Dataset as parts: variables (dims, values, attrs, encoding).

    Raises:
        UnsupportedTypeError: a variable, attribute or name cannot round-trip exactly.
    """
    xr = sys.modules["xarray"]
    _check_default_indexes(obj)
    if type(obj) is xr.DataArray:
        coords = [[n, _variable_parts(n, obj.coords[n].variable, enc)] for n in obj.coords]
        return ["array", obj.name, _variable_parts(obj.name, obj.variable, enc), coords]
    data_vars = [[n, _variable_parts(n, obj.data_vars[n].variable, enc)] for n in obj.data_vars]
    coords = [[n, _variable_parts(n, obj.coords[n].variable, enc)] for n in obj.coords]
    return ["dataset", data_vars, coords, dict(obj.attrs), dict(obj.encoding)]


def xarray_from_parts(parts: list[Any], dec: Decoder) -> Any:
    """Rebuild what ``xarray_parts`` made."""
    import xarray as xr

    kind = parts[0]
    if kind == "array":
        _, name, var, coords = parts
        v = _variable_from(var, dec)
        da = xr.DataArray(
            v.data,
            dims=v.dims,
            coords={n: _variable_from(c, dec) for n, c in coords},
            name=name,
            attrs=v.attrs,
        )
        da.encoding = v.encoding
        return da
    if kind == "dataset":
        _, data_vars, coords, attrs, encoding = parts
        ds = xr.Dataset(
            {n: _variable_from(v, dec) for n, v in data_vars},
            coords={n: _variable_from(c, dec) for n, c in coords},
            attrs=attrs,
        )
        ds.encoding = encoding
        return ds
    raise CorruptCheckpointError(f"unknown xarray value kind {kind!r}")


def _check_default_indexes(obj: Any) -> None:
    """Refuse indexes that loading would not rebuild: only one per dimension coordinate."""
    for name, index in obj.xindexes.items():
        if type(index).__name__ != "PandasIndex" or name not in obj.dims:
            raise UnsupportedTypeError(
                f"coordinate {name!r} has a {type(index).__name__}, not the default index",
                hint="Reset it to a default index (reset_index / set_xindex), or pickle.",
            )
    for dim in obj.dims:
        if dim in obj.coords and dim not in obj.xindexes:
            raise UnsupportedTypeError(
                f"dimension coordinate {dim!r} has no index (loading would make one)",
                hint="Keep its default index, or rename the coordinate.",
            )


def _variable_parts(name: Any, var: Any, enc: Encoder) -> list[Any]:
    import numpy as np

    if not isinstance(var.dtype, np.dtype):  # a pandas extension array would come back numpy
        raise UnsupportedTypeError(
            f"variable {name!r} holds a {var.dtype} extension array, kept only as numpy",
            hint="Convert it to a numpy dtype (var.astype(...)), or pickle.",
        )
    try:
        values = _values_parts(np.asarray(var.values), enc)
    except UnsupportedTypeError as e:
        raise UnsupportedTypeError(f"variable {name!r}: {e.message}", hint=e.hint) from e
    return [list(var.dims), values, dict(var.attrs), dict(var.encoding)]


def _variable_from(parts: list[Any], dec: Decoder) -> Any:
    import xarray as xr

    dims, values, attrs, encoding = parts
    return xr.Variable(tuple(dims), _values_from(values, dec), attrs=attrs, encoding=encoding)
