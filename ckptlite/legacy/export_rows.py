"""``export_legacy --format postgres``: checkpoints as rows of ``pipeline_checkpoints``.

Rows imported from the table are written back column for column (their ``id``
and times too); other checkpoints get a row built from their record, pointing
at the core-manager folder they came from when known (a row holds no data:
that is in the entry's notes). Parents are written before their children, each
row in its own transaction; a row already there is left alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..errors import ConfigError
from ..types import Checkpoint, Status
from ._export_common import ALREADY, FAILED, LEGACY_LEVELS, WRITTEN, ExportEntry, legacy_id, redact

__all__ = ["write_rows"]

_ROW_STATUS = {
    Status.CREATED: "created",
    Status.VALID: "valid",
    Status.CORRUPTED: "corrupted",
    Status.ARCHIVED: "deleted",
}

_DDL = (
    "CREATE TABLE IF NOT EXISTS pipeline_checkpoints ("
    "id UUID PRIMARY KEY DEFAULT gen_random_uuid(), "
    "checkpoint_id VARCHAR(255) UNIQUE NOT NULL, "
    "level VARCHAR(50) NOT NULL CHECK (level IN ('pipeline', 'phase', 'step', 'substep')), "
    "parent_id VARCHAR(255), processor_name VARCHAR(255) NOT NULL, "
    "data_summary JSONB NOT NULL DEFAULT '{}', file_path TEXT NOT NULL, "
    "file_size_bytes BIGINT NOT NULL, compression_type VARCHAR(50), "
    "status VARCHAR(50) NOT NULL DEFAULT 'created' "
    "CHECK (status IN ('created', 'valid', 'corrupted', 'deleted')), "
    "validation_checksum VARCHAR(64), validation_result JSONB, error_message TEXT, "
    "created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP, "
    "updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP, "
    "FOREIGN KEY (parent_id) REFERENCES pipeline_checkpoints(checkpoint_id) ON DELETE CASCADE)"
)


def _row(cp: Checkpoint, parent_lid: str | None) -> tuple[dict[str, Any], list[str]]:
    md = cp.metadata
    notes: list[str] = []
    old = md.get("legacy_row") if md.get("legacy_format") == "postgres" else None
    if isinstance(old, dict):
        row = dict(old)
        for key in ("created_at", "updated_at"):
            if isinstance(row.get(key), str):
                row[key] = datetime.fromisoformat(row[key])
        row["checkpoint_id"] = md["legacy_id"]
        row["parent_id"] = md.get("legacy_parent_id")
        status = md.get("legacy_status")
        row["status"] = status if status in _ROW_STATUS.values() else _ROW_STATUS[cp.status]
        return row, notes
    level = md.get("legacy_level")
    if level not in LEGACY_LEVELS.values():
        if isinstance(level, str):
            notes.append(f"level {level!r} is not allowed in the table: written as the mapped one")
        level = LEGACY_LEVELS[cp.level]
    path = md.get("legacy_path") or md.get("legacy_data_path")
    if not isinstance(path, str):
        path = f"ckptlite-export:{cp.id}"
        notes.append("the state is not written: a row holds a file_path only")
    status = md.get("legacy_status")
    if cp.status == Status.CORRUPTED or status not in _ROW_STATUS.values():
        status = _ROW_STATUS[cp.status]
    files = md.get("legacy_data_files")
    return {
        "id": str(uuid.uuid4()),
        "checkpoint_id": legacy_id(cp, "postgres"),
        "level": level,
        "parent_id": parent_lid,
        "processor_name": cp.process_id,
        "data_summary": {"files": files} if isinstance(files, list) else {},
        "file_path": path,
        "file_size_bytes": cp.stored_size,
        "compression_type": "gzip" if md.get("legacy_compressed", True) else None,
        "status": status,
        "validation_checksum": None,
        "validation_result": None,
        "error_message": None,
        "created_at": cp.created_at,
        "updated_at": cp.created_at,
    }, notes


def write_rows(dsn: str, cps: list[Checkpoint]) -> Iterator[ExportEntry]:
    """Insert a row per checkpoint at ``dsn``; yield what happened to each.

    Raises:
        ConfigError: psycopg is missing or the server is unreachable.
    """
    try:
        import psycopg
        from psycopg.types.json import Jsonb
    except ImportError as e:
        raise ConfigError(
            f"writing rows needs psycopg: {e}", hint="pip install 'ckptlite[postgres]'"
        ) from e
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ConfigError(f"cannot connect to {redact(dsn)}: {e}") from e
    by_id = {cp.id: cp for cp in cps}
    with conn:
        conn.execute(_DDL)
        for cp in _parents_first(cps, by_id):
            parent = by_id.get(cp.parent_id) if cp.parent_id else None
            parent_lid = legacy_id(parent, "postgres") if parent is not None else None
            row, notes = _row(cp, parent_lid)
            lid = str(row["checkpoint_id"])
            cols = list(row)
            values = [Jsonb(v) if isinstance(v, dict | list) else v for v in row.values()]
            try:
                with conn.transaction():
                    got = conn.execute(
                        f"INSERT INTO pipeline_checkpoints ({', '.join(cols)}) VALUES "
                        f"({', '.join(['%s'] * len(cols))}) "
                        "ON CONFLICT (checkpoint_id) DO NOTHING RETURNING id",
                        values,
                    ).fetchone()
            except psycopg.Error as e:
                yield ExportEntry(cp.id, lid, FAILED, reason=f"{type(e).__name__}: {e}".strip())
                continue
            where = f"pipeline_checkpoints:{lid}"
            yield ExportEntry(cp.id, lid, WRITTEN if got else ALREADY, where, notes=tuple(notes))


def _parents_first(cps: list[Checkpoint], by_id: dict[str, Checkpoint]) -> list[Checkpoint]:
    out: list[Checkpoint] = []
    placed: set[str] = set()
    for cp in cps:
        chain = []
        node: Checkpoint | None = cp
        while node is not None and node.id not in placed and node not in chain:
            chain.append(node)
            node = by_id.get(node.parent_id) if node.parent_id else None
        for c in reversed(chain):
            placed.add(c.id)
            out.append(c)
    return out
