"""What the compat classes share: the store they sit on, the warning, legacy-id lookups."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..types import Checkpoint, Level

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = [
    "LEVEL_NAMES",
    "deprecated",
    "legacy_time",
    "newest_versions",
    "open_target",
]

#: ckptlite level -> the legacy level string (the legacy systems said "phase" for STAGE).
LEVEL_NAMES = {
    Level.PIPELINE: "pipeline",
    Level.STAGE: "phase",
    Level.STEP: "step",
    Level.SUBSTEP: "substep",
}


#: Classes that warned already: one DeprecationWarning per class and process, not per
#: object (a warning per save would flood the users' logs).
_WARNED: set[type] = set()
_WARNED_LOCK = threading.Lock()


def deprecated(cls: type, instead: str, stacklevel: int = 3) -> None:
    """Emit the one DeprecationWarning of a compat class, the first time it is used.

    ``stacklevel`` points the warning at the caller's line, not into ckptlite.
    """
    with _WARNED_LOCK:
        if cls in _WARNED:
            return
        _WARNED.add(cls)
    warnings.warn(
        f"{cls.__module__}.{cls.__qualname__} is a transition layer over ckptlite; "
        f"move to {instead} (see docs/migration.md)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def open_target(store: CheckpointManager | str | os.PathLike[str] | None) -> CheckpointManager:
    """Return a manager: the given one, a store opened (created) at a path/URL, or the default.

    Raises:
        ConfigError: the URL cannot be opened.
    """
    from ..manager import get_checkpoint_manager, open_store

    if store is None:
        return get_checkpoint_manager()
    if isinstance(store, str | os.PathLike):
        return open_store(os.fspath(store), create=True)
    return store


def legacy_time(cp: Checkpoint) -> float:
    """Return the epoch time the legacy system knew a checkpoint by."""
    ts = cp.metadata.get("legacy_timestamp")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return float(ts)
    return cp.created_at.timestamp()


def newest_versions(cps: Iterable[Checkpoint], formats: tuple[str, ...]) -> dict[str, Checkpoint]:
    """Return ``{legacy_id: newest record}`` of the checkpoints written in ``formats``.

    A legacy id saved again is a new ckptlite checkpoint (the legacy systems
    overwrote in place): the highest seq is the current one.
    """
    out: dict[str, Checkpoint] = {}
    for cp in cps:
        md = cp.metadata
        lid = md.get("legacy_id")
        if md.get("legacy_format") not in formats or not isinstance(lid, str):
            continue
        have = out.get(lid)
        if have is None or cp.seq > have.seq:
            out[lid] = cp
    return out


def naive_local(epoch: float) -> datetime:
    """Return a naive local datetime, as the legacy code's ``datetime.fromtimestamp`` did."""
    return datetime.fromtimestamp(epoch)


def jsonable_meta(value: Any) -> Any:
    """Return ``value`` as JSON-safe metadata."""
    from ..legacy._common import jsonable

    return jsonable(value)
