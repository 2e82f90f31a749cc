"""System 2: pipeline recovery JSON, ``<dir>/<experiment_id>/checkpoint_<stage>.json``.

Each file is what the legacy ``load_checkpoint`` returned (``json.load``); it
becomes one STAGE checkpoint of process ``<experiment_id>``, named after the
stage. Files are imported in modification-time order, because that is how the
legacy ``load_latest`` chose (not by the JSON timestamp), so ckptlite's latest
is the same file. Timestamps are naive local time and are read as such.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LegacyFormatError
from ..types import Level
from ._common import (
    LegacyCheckpoint,
    LegacyState,
    ReadFailure,
    digest_bytes,
    from_epoch,
    from_iso,
    identity,
    keep_or_raw,
    read_bytes,
)

__all__ = ["checkpoint", "detect", "json_state", "read_doc", "read_json", "scan", "stage_of"]


def detect(path: Path) -> bool:
    """Tell whether ``path`` holds experiment directories, or is one (``checkpoint_*.json``)."""
    return path.is_dir() and (any(path.glob("*/checkpoint_*.json")) or bool(_own_files(path)))


def _own_files(experiment_dir: Path) -> list[Path]:
    """The pipeline files directly in ``experiment_dir`` (when given one experiment)."""
    out = []
    for p in experiment_dir.glob("checkpoint_*.json"):
        try:
            doc = read_json(p)
        except LegacyFormatError:
            continue
        if isinstance(doc, dict) and "experiment_id" in doc:
            out.append(p)
    return out


def stage_of(path: Path) -> str:
    """Return the stage a checkpoint file is for, as the legacy manager parsed it."""
    return path.stem.replace("checkpoint_", "")


def read_json(path: Path) -> Any:
    """Return a JSON file's content.

    Raises:
        LegacyFormatError: unreadable or not JSON.
    """
    try:
        return json.loads(read_bytes(path))
    except ValueError as e:
        raise LegacyFormatError(f"{path} is not JSON: {e}", path=str(path)) from e


def read_doc(path: Path) -> tuple[Any, str]:
    """Return a JSON file's content and the SHA-256 of its bytes (read once).

    Raises:
        LegacyFormatError: unreadable or not JSON.
    """
    raw = read_bytes(path)
    try:
        return json.loads(raw), digest_bytes(raw)
    except ValueError as e:
        raise LegacyFormatError(f"{path} is not JSON: {e}", path=str(path)) from e


def scan(root: Path) -> Iterator[LegacyCheckpoint | ReadFailure]:
    """Yield a checkpoint per ``<experiment>/checkpoint_<stage>.json`` under ``root``.

    ``root`` may also be one such file.
    """
    if root.is_file():
        files = [root]
    else:
        files = [p for p in root.glob("*/checkpoint_*.json") if p.is_file()]
        files += _own_files(root)
    for path in sorted(files, key=lambda p: (p.stat().st_mtime_ns, str(p))):
        legacy_id = f"{path.parent.name}/{stage_of(path)}"
        try:
            yield checkpoint(path, path.parent.name)
        except LegacyFormatError as e:
            yield ReadFailure("pipeline", legacy_id, str(path), f"{type(e).__name__}: {e.message}")


def json_state(doc: Any, path: Path) -> LegacyState:
    """Return a JSON document as the state; if the codec cannot hold it, the file's bytes."""
    raw: dict[str, Any] = {}
    state = keep_or_raw("document", doc, read_bytes(path), raw, encoding="json")
    return LegacyState(state, {"legacy_raw": raw} if raw else {})


def checkpoint(
    path: Path, experiment_dir: str, parsed: tuple[Any, str] | None = None
) -> LegacyCheckpoint:
    """Return the checkpoint one pipeline JSON file holds (``parsed``: its ``read_doc``).

    Raises:
        LegacyFormatError: not a pipeline checkpoint file.
    """
    doc, digest = read_doc(path) if parsed is None else parsed
    if not isinstance(doc, dict):
        raise LegacyFormatError(f"{path} does not hold a JSON object")
    stage = stage_of(path)
    experiment = doc.get("experiment_id") or experiment_dir
    mtime = path.stat().st_mtime
    meta: dict[str, Any] = {
        "legacy_id": f"{experiment}/{stage}",
        "legacy_timestamp": doc.get("timestamp"),
        "legacy_path": str(path),
        "legacy_mtime": mtime,
    }
    info = doc.get("metadata")
    if isinstance(info, dict) and isinstance(info.get("experiment_name"), str):
        meta["experiment_name"] = info["experiment_name"]
    try:
        created = from_iso(doc.get("timestamp"))
    except LegacyFormatError:
        created = from_epoch(mtime)
        meta["legacy_timestamp_missing"] = True

    def load() -> LegacyState:
        return json_state(doc, path)  # the parsed file is what the legacy loader returned

    return LegacyCheckpoint(
        format="pipeline",
        legacy_id=f"{experiment}/{stage}",
        source=str(path),
        process_id=str(experiment),
        level=Level.STAGE,
        name=stage,
        created_at=created,
        identity=identity(f"{experiment}/{stage}", digest),
        load=load,
        metadata=meta,
        order=mtime,  # load_latest ranked the files by modification time
    )
