"""JSON views of records, reports and states: the stable schema of ``ckptlite --json``.

Records and reports become plain dicts (enums as their values, datetimes as
ISO 8601 UTC strings, tuples as lists). States (``ckptlite cat``) become JSON
with tagged objects for what JSON lacks: ``{"__type__": "ndarray", ...}``,
``{"__type__": "bytes", ...}``; arrays and long bytes are summarised unless
``full``. Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import sys
import uuid
import warnings
from datetime import date, datetime
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
    if isinstance(state, complex):
        return str(state)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(state, np.ndarray):
            return _array_view(np, state, full)
        if isinstance(state, np.generic):
            return state_view(state.item(), full=full)
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
