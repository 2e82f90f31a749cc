"""Read the five legacy checkpoint systems and import them into a ckptlite store.

One reader per format (``core``, ``processor``, ``pipeline``, ``script``,
``tile``, ``postgres``; see docs/legacy-formats.md); :func:`migrate` finds the
formats at a path or DSN and imports every checkpoint once, never writing to
the source. Pickled payloads load only with ``trust_pickle=True``, through the
restricted unpickler in :mod:`ckptlite.legacy.unpickler`. :func:`export_legacy`
writes a store's checkpoints back in a legacy format (the rollback path).
"""

from __future__ import annotations

from ._common import FORMATS
from .export import EXPORT_FORMATS, ExportEntry, ExportReport, export_legacy
from .migrate import (
    ALREADY,
    FAILED,
    IMPORTED,
    NOT_LEGACY,
    SKIPPED,
    WOULD_IMPORT,
    MigrationEntry,
    MigrationReport,
    detect_formats,
    migrate,
)

__all__ = [
    "ALREADY",
    "EXPORT_FORMATS",
    "FAILED",
    "FORMATS",
    "IMPORTED",
    "NOT_LEGACY",
    "SKIPPED",
    "WOULD_IMPORT",
    "ExportEntry",
    "ExportReport",
    "MigrationEntry",
    "MigrationReport",
    "detect_formats",
    "export_legacy",
    "migrate",
]
