"""System 2's script variant: ``./checkpoint_<stage>.json`` from ``run_richness_analysis.py``.

Fields ``{stage, timestamp, elapsed_time, data}``, written non-atomically into
the script's working directory. Each file becomes one STAGE checkpoint named
after its stage; the whole document is the state (it is what the script's
loader returned). The process id defaults to :data:`DEFAULT_PROCESS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LegacyFormatError
from ..types import Level
from ._common import (
    LegacyCheckpoint,
    ReadFailure,
    digest_bytes,
    from_epoch,
    from_iso,
    identity,
    read_bytes,
)
from .pipeline import json_state, read_json, stage_of

__all__ = ["DEFAULT_PROCESS", "checkpoint", "detect", "is_script_doc", "scan"]

DEFAULT_PROCESS = "richness_analysis"


def is_script_doc(doc: Any) -> bool:
    """Tell whether a JSON document is a script checkpoint (not a pipeline one)."""
    return isinstance(doc, dict) and "data" in doc and "experiment_id" not in doc


def detect(path: Path) -> bool:
    """Tell whether ``path`` is, or directly holds, a script ``checkpoint_*.json``."""
    files = [path] if path.is_file() else sorted(path.glob("checkpoint_*.json"))
    for f in files:
        if f.name.startswith("checkpoint_") and f.suffix == ".json":
            try:
                if is_script_doc(read_json(f)):
                    return True
            except LegacyFormatError:
                return True  # a damaged one still deserves a report
    return False


def scan(path: Path, process_id: str | None = None) -> Iterator[LegacyCheckpoint | ReadFailure]:
    """Yield a checkpoint per script ``checkpoint_<stage>.json`` in ``path`` (or ``path``)."""
    files = [path] if path.is_file() else [p for p in path.glob("checkpoint_*.json") if p.is_file()]
    for f in sorted(files, key=lambda p: (p.stat().st_mtime_ns, str(p))):
        try:
            doc = read_json(f)
            if not is_script_doc(doc):
                continue  # a pipeline file someone copied here: the pipeline reader's
            yield checkpoint(f, doc, process_id or DEFAULT_PROCESS)
        except LegacyFormatError as e:
            yield ReadFailure("script", stage_of(f), str(f), f"{type(e).__name__}: {e.message}")


def checkpoint(
    path: Path, doc: dict[str, Any], process_id: str, digest: str | None = None
) -> LegacyCheckpoint:
    """Return the checkpoint a script JSON document holds (``digest``: of the file's bytes)."""
    stage = doc.get("stage") if isinstance(doc.get("stage"), str) else stage_of(path)
    mtime = path.stat().st_mtime
    meta: dict[str, Any] = {
        "legacy_id": stage,
        "legacy_timestamp": doc.get("timestamp"),
        "legacy_path": str(path),
        "legacy_mtime": mtime,
    }
    if isinstance(doc.get("elapsed_time"), int | float):
        meta["elapsed_time"] = doc["elapsed_time"]
    try:
        created = from_iso(doc.get("timestamp"))
    except LegacyFormatError:
        created = from_epoch(mtime)
        meta["legacy_timestamp_missing"] = True
    return LegacyCheckpoint(
        format="script",
        legacy_id=str(stage),
        source=str(path),
        process_id=process_id,
        level=Level.STAGE,
        name=str(stage),
        created_at=created,
        identity=identity(str(stage), digest or digest_bytes(read_bytes(path))),
        load=lambda: json_state(doc, path),
        metadata=meta,
    )
