"""System 3: the tile processor's pickled ``ProcessingCheckpoint`` (one file, no extension).

A plain protocol-4 pickle of ``src.base.tile_processor.ProcessingCheckpoint``
(fields ``timestamp, completed_tiles, failed_tiles, total_tiles,
processing_parameters``). The restricted unpickler turns it into a dict; it
becomes one STAGE checkpoint named ``tiles``, and its completed and failed tiles
become the process's work-item ledger (group ``tiles``), so a resumed tile run
skips the completed ones and retries the failed ones.

The file is one overwritten checkpoint, so its identity is its content: the
same bytes imported twice are one checkpoint; a later save is a new one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import CkptliteError, LegacyFormatError
from ..types import Level
from ._common import (
    LegacyCheckpoint,
    LegacyState,
    ReadFailure,
    from_epoch,
    identity,
    keep_or_raw,
    read_bytes,
    unpickle,
)

__all__ = ["FIELDS", "ITEM_GROUP", "NAME", "checkpoint", "detect", "scan", "sniff"]

FIELDS = ("timestamp", "completed_tiles", "failed_tiles", "total_tiles", "processing_parameters")
#: The ledger group tiles go into, and the imported checkpoint's name.
ITEM_GROUP = "tiles"
NAME = "tiles"
_MARKER = b"ProcessingCheckpoint"


def sniff(path: Path) -> bool:
    """Tell from its first bytes whether a file is a pickled ProcessingCheckpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head[:1] == b"\x80" and _MARKER in head


def detect(path: Path) -> bool:
    """Tell whether ``path`` is, or directly holds, a tile checkpoint file."""
    if path.is_file():
        return sniff(path)
    return path.is_dir() and any(sniff(p) for p in path.iterdir() if _candidate(p))


def _candidate(p: Path) -> bool:
    return p.is_file() and not p.is_symlink() and p.suffix not in (".json", ".gz")


def scan(
    path: Path, trust_pickle: bool, process_id: str | None = None
) -> Iterator[LegacyCheckpoint | ReadFailure]:
    """Yield the tile checkpoint in ``path`` (a file, or the tile files directly in a dir)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if _candidate(p))
    for f in files:
        if f is not path and not sniff(f):
            continue
        try:
            yield checkpoint(f, trust_pickle, process_id)
        except CkptliteError as e:
            yield ReadFailure("tile", f.name, str(f), f"{type(e).__name__}: {e.message}")


def checkpoint(path: Path, trust_pickle: bool, process_id: str | None = None) -> LegacyCheckpoint:
    """Read one tile checkpoint file.

    Raises:
        PickleNotAllowedError: ``trust_pickle`` is False.
        UnsafePickleError: the pickle names a class outside the allow-list.
        LegacyFormatError: not a ProcessingCheckpoint.
    """
    data = read_bytes(path)
    value, classes = unpickle(data, trust_pickle, str(path))
    if not isinstance(value, dict) or not all(k in value for k in FIELDS[:4]):
        raise LegacyFormatError(f"{path} does not hold a ProcessingCheckpoint", path=str(path))
    completed = _tile_ids(value["completed_tiles"], path, "completed_tiles")
    failed = _tile_ids(value["failed_tiles"], path, "failed_tiles")
    total = value["total_tiles"]
    meta: dict[str, Any] = {
        "legacy_id": path.name,
        "legacy_timestamp": value["timestamp"],
        "legacy_path": str(path),
        "legacy_classes": list(classes),
        "legacy_sha256": hashlib.sha256(data).hexdigest(),
    }
    state: dict[str, Any] = dict(value)
    raw: dict[str, Any] = {}
    state = keep_or_raw("state", state, data, raw)  # all or nothing: fields share one pickle
    if raw:
        meta["legacy_raw"] = raw
    progress = None
    if isinstance(total, int) and not isinstance(total, bool):
        progress = (len(completed), total)
    return LegacyCheckpoint(
        format="tile",
        legacy_id=path.name,
        source=str(path),
        process_id=process_id or path.stem or "tiles",
        level=Level.STAGE,
        name=NAME,
        created_at=from_epoch(value["timestamp"]),
        identity=identity("ProcessingCheckpoint", hashlib.sha256(data).hexdigest()),
        load=lambda: LegacyState(state),
        metadata=meta,
        progress=progress,
        items={ITEM_GROUP: (completed, failed)},
    )


def _tile_ids(value: Any, path: Path, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(t, str) for t in value
    ):
        raise LegacyFormatError(f"{path}: {field} is not a list of tile ids", path=str(path))
    return tuple(value)
