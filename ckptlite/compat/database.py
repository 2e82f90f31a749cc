"""The legacy ``pipeline_checkpoints`` methods of ``src/database/schema.py``, on a ckptlite store.

Each row is a ckptlite checkpoint with no state (rows never held data, only a
``file_path`` pointer): process ``processor_name``, its level (``phase`` is
STAGE), name ``checkpoint_id``, the row's columns in ``metadata["legacy_row"]``.
Statuses map as ``ckptlite migrate`` maps them: ``created`` -> CREATED,
``valid`` -> VALID, ``corrupted`` -> CORRUPTED, ``deleted`` -> ARCHIVED, so
``get_latest_checkpoint`` and ckptlite's ``latest`` agree. Records are
immutable: ``update_checkpoint_status`` saves the row's next version and
archives the previous one. Meant for a PostgreSQL store, works on any.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..legacy._common import map_level
from ..types import Checkpoint, Status
from ._common import deprecated, jsonable_meta, open_target

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = ["DatabaseCheckpoints"]

_LEVELS = ("pipeline", "phase", "step", "substep")
_STATUSES = {
    "created": Status.CREATED,
    "valid": Status.VALID,
    "corrupted": Status.CORRUPTED,
    "deleted": Status.ARCHIVED,
}


class DatabaseCheckpoints:
    """The schema's checkpoint methods (psycopg2 ``RealDictCursor`` rows as dicts)."""

    def __init__(self, store: CheckpointManager | str | os.PathLike[str] | None = None) -> None:
        deprecated(type(self), "ckptlite.open('postgresql://...')")
        self._mgr = open_target(store)

    @property
    def store(self) -> CheckpointManager:
        """The ckptlite manager underneath."""
        return self._mgr

    def _versions(self) -> dict[str, Checkpoint]:
        """Every row's current version: ``{checkpoint_id: record}``."""
        out: dict[str, Checkpoint] = {}
        for cp in self._mgr.list():
            md = cp.metadata
            if md.get("legacy_format") != "postgres" or not isinstance(md.get("legacy_row"), dict):
                continue
            lid = str(md.get("legacy_id"))
            have = out.get(lid)
            if have is None or cp.seq > have.seq:
                out[lid] = cp
        return out

    def _row(self, cp: Checkpoint) -> dict[str, Any]:
        row = dict(cp.metadata["legacy_row"])
        row["checkpoint_id"] = cp.metadata["legacy_id"]
        for key in ("created_at", "updated_at"):
            if isinstance(row.get(key), str):
                row[key] = datetime.fromisoformat(row[key])
        return row

    def _save_row(self, row: dict[str, Any], parent: Checkpoint | None) -> Checkpoint:
        level, level_meta = map_level(row["level"])
        stored = {k: v for k, v in row.items() if k != "checkpoint_id"}
        created = row["created_at"]
        meta = {
            "legacy_format": "postgres",
            "legacy_id": row["checkpoint_id"],
            "legacy_timestamp": created.isoformat(),
            "legacy_order": created.timestamp(),
            "legacy_status": row["status"],
            "legacy_row": jsonable_meta(stored),
            **level_meta,
        }
        if row["parent_id"] is not None:
            meta["legacy_parent_id"] = row["parent_id"]
        cp = self._mgr.save(
            str(row["processor_name"]),
            None,
            level=level,
            name=str(row["checkpoint_id"]),
            parent=parent.id if parent is not None else None,
            metadata=meta,
        )
        status = _STATUSES[row["status"]]
        if status != Status.VALID:
            self._mgr.backend.set_status(cp.id, status)
        return self._mgr.get(cp.id)

    def create_checkpoint(
        self,
        checkpoint_id: str,
        level: str,
        parent_id: str | None,
        processor_name: str,
        data_summary: dict[str, Any],
        file_path: str,
        file_size_bytes: int,
        compression_type: str | None = None,
    ) -> str:
        """Insert a row with status ``created``; return its ``id`` (a UUID string, as before).

        Raises:
            InvalidInputError: the id exists, the level is not a legacy one, or the
                parent row does not exist (the table's constraints).
        """
        if level not in _LEVELS:
            raise InvalidInputError(f"level {level!r} violates the check: one of {_LEVELS}")
        rows = self._versions()
        if checkpoint_id in rows:
            raise InvalidInputError(f"checkpoint_id {checkpoint_id!r} exists already")
        parent = rows.get(parent_id) if parent_id is not None else None
        if parent_id is not None and parent is None:
            raise InvalidInputError(f"parent_id {parent_id!r} is not a checkpoint row")
        now = datetime.now(UTC)
        row_id = str(uuid.uuid4())
        row = {
            "id": row_id,
            "checkpoint_id": checkpoint_id,
            "level": level,
            "parent_id": parent_id,
            "processor_name": processor_name,
            "data_summary": data_summary,
            "file_path": file_path,
            "file_size_bytes": file_size_bytes,
            "compression_type": compression_type,
            "status": "created",
            "validation_checksum": None,
            "validation_result": None,
            "error_message": None,
            "created_at": now,
            "updated_at": now,
        }
        self._save_row(row, parent)
        return row_id

    def update_checkpoint_status(
        self,
        checkpoint_id: str,
        status: str,
        validation_checksum: str | None = None,
        validation_result: dict[str, Any] | None = None,
        error_message: str | None = None,
    ) -> None:
        """Set a row's status and validation columns (and ``updated_at``); unknown ids: no-op.

        Raises:
            InvalidInputError: not a legacy status.
        """
        if status not in _STATUSES:
            raise InvalidInputError(
                f"status {status!r} violates the check: one of {tuple(_STATUSES)}"
            )
        rows = self._versions()
        cp = rows.get(checkpoint_id)
        if cp is None:
            return  # an UPDATE matching no row
        row = self._row(cp)
        row.update(
            status=status,
            validation_checksum=validation_checksum,
            validation_result=validation_result or {},
            error_message=error_message,
            updated_at=datetime.now(UTC),
        )
        pid = row["parent_id"]
        parent_cp = self._mgr.get(cp.parent_id) if cp.parent_id else None
        if parent_cp is None and pid is not None:
            parent_cp = rows.get(pid)
        self._save_row(row, parent_cp)
        if cp.status != Status.ARCHIVED or status == "deleted":
            self._mgr.backend.set_status(cp.id, Status.ARCHIVED)  # superseded by the new version

    def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any] | None:
        """Return the row, or None."""
        cp = self._versions().get(checkpoint_id)
        return None if cp is None else self._row(cp)

    def get_latest_checkpoint(self, processor_name: str, level: str) -> dict[str, Any] | None:
        """Return the newest ``valid`` row (by ``created_at``) of a processor and level."""
        rows = self.list_checkpoints(processor_name, level, status="valid")
        return rows[0] if rows else None

    def list_checkpoints(
        self,
        processor_name: str | None = None,
        level: str | None = None,
        parent_id: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the rows matching every filter given, newest ``created_at`` first."""
        rows = [self._row(cp) for cp in self._versions().values()]
        if processor_name:
            rows = [r for r in rows if r["processor_name"] == processor_name]
        if level:
            rows = [r for r in rows if r["level"] == level]
        if parent_id:
            rows = [r for r in rows if r["parent_id"] == parent_id]
        if status:
            rows = [r for r in rows if r["status"] == status]
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        return rows

    def cleanup_old_checkpoints(self, days_old: int, keep_minimum: dict[str, int]) -> int:
        """Delete ``valid`` rows older than ``days_old`` beyond the newest few of each level."""
        cutoff = datetime.now(UTC) - timedelta(days=days_old)
        defaults = {"pipeline": 5, "phase": 3, "step": 2, "substep": 1}
        deleted = 0
        by_level: dict[str, list[dict[str, Any]]] = {}
        for row in self.list_checkpoints(status="valid"):
            by_level.setdefault(row["level"], []).append(row)
        for lvl, rows in by_level.items():
            keep = keep_minimum.get(lvl, defaults.get(lvl, 0))
            for row in rows[keep:]:
                if row["created_at"] < cutoff:
                    deleted += self._delete(row["checkpoint_id"])
        return deleted

    def _delete(self, checkpoint_id: str) -> int:
        ids = [
            cp.id
            for cp in self._mgr.list()
            if cp.metadata.get("legacy_format") == "postgres"
            and cp.metadata.get("legacy_id") == checkpoint_id
        ]
        for cid in ids:
            if self._mgr.exists(cid):
                self._mgr.delete(cid)
        return 1 if ids else 0
