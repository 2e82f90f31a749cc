"""Storage backends: local (SQLite + blob files), memory, postgres. See ``base.Backend``."""

from __future__ import annotations

from .base import Backend, ListQuery, StructureCheck

__all__ = ["Backend", "ListQuery", "StructureCheck"]
