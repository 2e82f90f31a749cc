"""Read the five legacy checkpoint systems and import them into a ckptlite store.

One reader per format (``core``, ``processor``, ``pipeline``, ``script``,
``tile``, ``postgres``; see LEGACY_FORMATS.md); :func:`migrate` detects the
formats at a path or DSN and imports every checkpoint once, never writing to
the source. Pickled payloads load only with ``trust_pickle=True``, through the
restricted unpickler in :mod:`ckptlite.legacy.unpickler`.
"""

from __future__ import annotations

from ._common import FORMATS
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
    "FAILED",
    "FORMATS",
    "IMPORTED",
    "NOT_LEGACY",
    "SKIPPED",
    "WOULD_IMPORT",
    "MigrationEntry",
    "MigrationReport",
    "detect_formats",
    "migrate",
]
