"""What ``export_legacy`` and its row writer share: outcomes, the entry, legacy ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..types import Checkpoint, Level

__all__ = [
    "ALREADY",
    "EXPORT_FORMATS",
    "FAILED",
    "FAMILY",
    "LEGACY_LEVELS",
    "OUTCOMES",
    "SKIPPED",
    "TILE_CLASS",
    "WRITTEN",
    "ExportEntry",
    "legacy_id",
    "redact",
]

EXPORT_FORMATS = ("core", "pipeline", "script", "tile", "postgres")
WRITTEN = "written"
ALREADY = "already there"
SKIPPED = "skipped"
FAILED = "failed"
OUTCOMES = (WRITTEN, ALREADY, SKIPPED, FAILED)

#: Which imported formats each export format writes (native checkpoints go where they fit).
FAMILY = {
    "core": ("core", "processor"),
    "pipeline": ("pipeline",),
    "script": ("script",),
    "tile": ("tile",),
    "postgres": ("postgres", "core", "processor"),
}
#: ckptlite level -> the legacy level string (the legacy systems said "phase" for STAGE).
LEGACY_LEVELS = {
    Level.PIPELINE: "pipeline",
    Level.STAGE: "phase",
    Level.STEP: "step",
    Level.SUBSTEP: "substep",
}
TILE_CLASS = ("src.base.tile_processor", "ProcessingCheckpoint")


@dataclass(frozen=True, slots=True)
class ExportEntry:
    """What happened to one checkpoint: written, already there, skipped or failed (why)."""

    checkpoint_id: str
    legacy_id: str
    outcome: str
    path: str | None = None
    reason: str | None = None
    notes: tuple[str, ...] = ()

    def line(self) -> str:
        """Return the entry as one report line."""
        text = f"{self.outcome:<14} {self.legacy_id}"
        if self.path:
            text += f" -> {self.path}"
        if self.reason:
            text += f": {self.reason}"
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-ready data."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "legacy_id": self.legacy_id,
            "outcome": self.outcome,
            "path": self.path,
            "reason": self.reason,
            "notes": list(self.notes),
        }


def redact(target: str) -> str:
    return re.sub(r"^([a-z]+://[^:/@]*:)[^@]*@", r"\1***@", target)


def legacy_id(cp: Checkpoint, format: str) -> str:
    md = cp.metadata
    lid = md.get("legacy_id")
    if isinstance(lid, str) and md.get("legacy_format") in FAMILY[format]:
        return lid
    if format == "pipeline":
        return f"{cp.process_id}/{cp.name}"
    if format == "script":
        return cp.name
    if format == "tile":
        return cp.process_id
    return cp.id


# -- files ---------------------------------------------------------------------------
