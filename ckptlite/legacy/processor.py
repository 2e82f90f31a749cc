"""System 5: processor memory checkpoints, stored through the core manager (system 1).

Every processor save used ``level="step"`` and ``metadata={'processor': Class}``,
with ids ``<Class>_<epoch>``, ``shutdown_<epoch>``, ``error_<epoch>`` or
``error_<dataset>_<epoch>``. Their files are read by ``core``; this module only
tells them apart and names their process: the processor class, so
``mgr.latest(Class, Level.STEP)`` is the checkpoint the processor resumes from.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["DEFAULT_CORE_PROCESS", "classify", "process_of"]

#: process_id of plain core-manager checkpoints that name no processor.
DEFAULT_CORE_PROCESS = "legacy-core"

_CLASS_ID = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*?)_\d+$")
_NOT_CLASSES = ("shutdown", "error")


def process_of(legacy_id: str, metadata: dict[str, Any]) -> str | None:
    """Return the processor class a legacy record belongs to, or None if it is no processor's.

    >>> process_of("RasterMerger_1700000000", {"processor": "RasterMerger"})
    'RasterMerger'
    >>> process_of("error_era5_1700000000", {"processor": "ResamplingProcessor"})
    'ResamplingProcessor'
    >>> process_of("pipeline_run_1", {}) is None
    True
    """
    name = metadata.get("processor")
    if isinstance(name, str) and name:
        return name
    if "processor" in metadata:  # the key is there but empty: fall back to the id prefix
        m = _CLASS_ID.match(legacy_id)
        if m and m.group(1) not in _NOT_CLASSES and not m.group(1).startswith("error_"):
            return m.group(1)
        return "legacy-processor"
    return None


def classify(legacy_id: str, metadata: dict[str, Any]) -> tuple[str, str, str]:
    """Return ``(format, process_id, name)`` for a core-manager record.

    Processor checkpoints share one slot per class (name ``""``), so the newest is
    the one to resume from; other checkpoints keep their legacy id as slot name.
    """
    cls = process_of(legacy_id, metadata)
    if cls is not None:
        return "processor", cls, ""
    pname = metadata.get("processor_name")
    process_id = pname if isinstance(pname, str) and pname else DEFAULT_CORE_PROCESS
    return "core", process_id, legacy_id
