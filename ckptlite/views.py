"""JSON views of records, reports and states: the stable schema of ``ckptlite --json``.

Records and reports become plain dicts (enums as their values, datetimes as
ISO 8601 UTC strings, tuples as lists). States (``ckptlite cat``) become JSON
with tagged objects for what JSON lacks: ``{"__type__": "ndarray", ...}``,
``{"__type__": "bytes", ...}``, ``masked_array``, ``set``, ``frozenset``,
``timedelta``, ``DataFrame``, ``Series``, ``Index``, ``DataArray``, ``Dataset``;
arrays, tables and long bytes are summarised unless ``full``. Decimals, paths and
complex numbers become strings; non-finite floats the strings ``"nan"``, ``"inf"``,
``"-inf"``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import uuid
import warnings
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from .types import Checkpoint

__all__ = ["checkpoint_view", "jsonable", "state_view"]

#: Bytes values up to this size are shown whole (base64) even without ``full``.
SHORT_BYTES = 64


def checkpoint_view(cp: Checkpoint) -> dict[str, Any]:
    """Return a checkpoint record as a JSON-ready dict (the ``ls``/``show`` schema).

    Keys: id, process_id, level, name, parent_id, seq, status, created_at,
    size, stored_size, checksum, metadata, progress ([done, total] or null).
    """
    return {
        "id": cp.id,
        "process_id": cp.process_id,
        "level": cp.level.value,
        "name": cp.name,
        "parent_id": cp.parent_id,
        "seq": cp.seq,
        "status": cp.status.value,
        "created_at": cp.created_at.isoformat(),
        "size": cp.size,
        "stored_size": cp.stored_size,
        "checksum": cp.checksum,
        "metadata": cp.metadata,
        "progress": list(cp.progress) if cp.progress is not None else None,
    }


def jsonable(value: Any) -> Any:
    """Return ``value`` (a report, dataclass, dict, list...) as JSON-ready data.

    >>> from ckptlite import GcReport
    >>> jsonable(GcReport(chunks=("ab",), bytes_reclaimed=3))["chunks"]
    ['ab']
    """
    if isinstance(value, Checkpoint):
        return checkpoint_view(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        ok = getattr(type(value), "ok", None)
        if isinstance(ok, property):
            out["ok"] = bool(getattr(value, "ok"))  # noqa: B009 - a property, not a field
        return out
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "total_seconds"):  # timedelta
        return value.total_seconds()
    return value


def state_view(state: Any, *, full: bool = False) -> Any:
    """Return a loaded state as JSON-ready data; arrays and long bytes summarised unless ``full``.

    >>> state_view({"tile": (3, 7), "raw": b"hi"})["raw"]["base64"]
    'aGk='
    """
    if state is None or isinstance(state, bool | int | str):
        return state
    if isinstance(state, float):
        return state if math.isfinite(state) else str(state)
    if isinstance(state, dict):
        return {str(k): state_view(v, full=full) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [state_view(v, full=full) for v in state]
    if isinstance(state, bytes | bytearray | memoryview):
        data = bytes(state)
        out: dict[str, Any] = {
            "__type__": "bytes",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if full or len(data) <= SHORT_BYTES:
            out["base64"] = base64.b64encode(data).decode()
        return out
    if isinstance(state, datetime | date):
        return state.isoformat()
    if isinstance(state, uuid.UUID):
        return str(state)
    if isinstance(state, complex | Decimal | pathlib.PurePath):
        return str(state)
    if isinstance(state, timedelta):
        return {"__type__": "timedelta", "seconds": state.total_seconds(), "text": str(state)}
    if isinstance(state, set | frozenset):
        return {"__type__": type(state).__name__, "items": _sorted_views(state, full)}
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(state, np.ma.MaskedArray):
            return _masked_view(np, state, full)
        if isinstance(state, np.ndarray):
            return _array_view(np, state, full)
        if isinstance(state, np.generic):
            return state_view(state.item(), full=full)
        if isinstance(state, np.dtype):
            return str(state)
    table = _table_view(state, full)
    if table is not None:
        return table
    return {"__type__": "object", "class": type(state).__qualname__, "repr": repr(state)[:200]}


def _array_view(np: Any, arr: Any, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"__type__": "ndarray", "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if arr.size and arr.dtype.kind in "biuf":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN array has no min
            lo, hi = np.nanmin(arr), np.nanmax(arr)
        out["min"] = state_view(lo.item())
        out["max"] = state_view(hi.item())
    if full:
        out["data"] = state_view(arr.tolist(), full=True)
    return out


def _sorted_views(items: set[Any] | frozenset[Any], full: bool) -> list[Any]:
    views = [state_view(v, full=full) for v in items]
    try:
        return sorted(views)
    except TypeError:  # mixed kinds: sorted by their JSON text instead
        return sorted(views, key=lambda v: json.dumps(v, sort_keys=True, default=str))


def _masked_view(np: Any, arr: Any, full: bool) -> dict[str, Any]:
    out = _array_view(np, arr.compressed(), full=False)  # min and max of the valid values
    out.update(
        {
            "__type__": "masked_array",
            "shape": list(arr.shape),
            "masked": int(np.ma.count_masked(arr)),
            "fill_value": state_view(np.asarray(arr.fill_value).tolist()),
        }
    )
    if full:
        out["data"] = state_view(arr.tolist(), full=True)  # masked values as null
    return out


def _table_view(value: Any, full: bool) -> dict[str, Any] | None:
    """Return a pandas or xarray value's summary, or None if ``value`` is neither."""
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            out: dict[str, Any] = {
                "__type__": "DataFrame",
                "shape": list(value.shape),
                "columns": [
                    {"name": state_view(n), "dtype": str(d)}
                    for n, d in zip(value.columns, value.dtypes, strict=True)
                ],
                "index": _index_view(value.index),
            }
            if full:
                out["data"] = [
                    state_view(value.iloc[:, i].tolist(), full=True) for i in range(value.shape[1])
                ]
                out["index"]["values"] = state_view(value.index.tolist(), full=True)
            return out
        if isinstance(value, pd.Series):
            out = {
                "__type__": "Series",
                "name": state_view(value.name),
                "dtype": str(value.dtype),
                "length": len(value),
                "index": _index_view(value.index),
            }
            if full:
                out["data"] = state_view(value.tolist(), full=True)
                out["index"]["values"] = state_view(value.index.tolist(), full=True)
            return out
        if isinstance(value, pd.Index):
            out = _index_view(value)
            out["__type__"] = "Index"
            if full:
                out["values"] = state_view(value.tolist(), full=True)
            return out
    xr = sys.modules.get("xarray")
    if xr is not None:
        if isinstance(value, xr.DataArray):
            out = {"__type__": "DataArray", "name": state_view(value.name)}
            out.update(_variable_view(value.variable, full))
            out["coords"] = {
                str(n): _variable_view(c.variable, full) for n, c in value.coords.items()
            }
            return out
        if isinstance(value, xr.Dataset):
            return {
                "__type__": "Dataset",
                "dims": {str(d): int(n) for d, n in value.sizes.items()},
                "data_vars": {
                    str(n): _variable_view(v.variable, full) for n, v in value.data_vars.items()
                },
                "coords": {
                    str(n): _variable_view(c.variable, full) for n, c in value.coords.items()
                },
                "attrs": state_view(dict(value.attrs), full=full),
            }
    return None


def _index_view(idx: Any) -> dict[str, Any]:
    return {
        "class": type(idx).__name__,
        "names": state_view(list(idx.names)),
        "dtype": str(idx.dtype),
        "length": len(idx),
    }


def _variable_view(var: Any, full: bool) -> dict[str, Any]:
    import numpy as np

    out = _array_view(np, np.asarray(var.values), full)
    out.pop("__type__")
    out["dims"] = [str(d) for d in var.dims]
    if var.attrs:
        out["attrs"] = state_view(dict(var.attrs), full=full)
    return out
