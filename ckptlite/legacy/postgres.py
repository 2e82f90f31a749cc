"""System 4: rows of the legacy PostgreSQL ``pipeline_checkpoints`` table.

Rows hold metadata only; ``file_path`` points at a core-manager checkpoint
directory. Where that directory is readable its files are loaded and verified
(against its ``metadata.json`` record and the row's ``validation_checksum``);
where it is not, the row is imported without a state, as ARCHIVED, flagged.
Statuses map ``valid`` -> VALID, ``created`` -> CREATED (the legacy
``get_latest_checkpoint`` only returned ``valid`` rows, and ``latest`` only
returns VALID ones), ``corrupted`` -> CORRUPTED, ``deleted`` -> ARCHIVED. The
source is read in a READ ONLY transaction.
psycopg (3) is imported only when a DSN is migrated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LegacyFormatError
from ..types import Status
from . import core
from ._common import (
    LegacyCheckpoint,
    LegacyState,
    ReadFailure,
    identity,
    jsonable,
    map_level,
    read_bytes,
)

__all__ = ["TABLE", "detect", "scan"]

TABLE = "pipeline_checkpoints"
_COLUMNS = (
    "id, checkpoint_id, level, parent_id, processor_name, data_summary, file_path, "
    "file_size_bytes, compression_type, status, validation_checksum, validation_result, "
    "error_message, created_at, updated_at"
)
_STATUS = {
    "created": Status.CREATED,  # get_latest_checkpoint returned 'valid' rows only
    "valid": Status.VALID,
    "corrupted": Status.CORRUPTED,
    "deleted": Status.ARCHIVED,
}


def detect(source: str) -> bool:
    """Tell whether ``source`` is a PostgreSQL DSN."""
    return source.startswith(("postgresql://", "postgres://"))


def fetch_rows(dsn: str, table: str = TABLE) -> list[dict[str, Any]]:
    """Return every row of the legacy table, oldest first, read in a READ ONLY transaction.

    Raises:
        ConfigError: psycopg is missing, or the server cannot be reached.
        LegacyFormatError: the table does not exist.
    """
    try:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row
    except ImportError as e:
        raise ConfigError(
            f"migrating PostgreSQL rows needs psycopg: {e}", hint="pip install 'ckptlite[postgres]'"
        ) from e
    try:
        conn = psycopg.connect(dsn, row_factory=dict_row, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ConfigError(f"cannot connect to the legacy database: {e}") from e
    with conn:
        conn.read_only = True  # the source is never modified
        # Rows ckptlite's own postgres backend wrote are ckptlite checkpoints already
        # (`ckptlite sync --from` copies them); importing them would duplicate each one.
        query = sql.SQL(
            "SELECT {} FROM {} WHERE file_path NOT LIKE 'ckptlite://%%' "
            "ORDER BY created_at, checkpoint_id"
        ).format(sql.SQL(_COLUMNS), sql.Identifier(table))
        try:
            rows = conn.execute(query).fetchall()
        except psycopg.errors.UndefinedTable as e:
            raise LegacyFormatError(f"no {table} table in that database") from e
        conn.rollback()
    return list(rows)


def scan(dsn: str, trust_pickle: bool) -> Iterator[LegacyCheckpoint | ReadFailure]:
    """Yield a checkpoint per row of the legacy table."""
    rows = fetch_rows(dsn)
    identities = {r["checkpoint_id"]: _identity(r) for r in rows}
    for row in rows:
        try:
            yield _checkpoint(row, identities, trust_pickle)
        except LegacyFormatError as e:
            yield ReadFailure(
                "postgres",
                str(row["checkpoint_id"]),
                _where(row),
                f"{type(e).__name__}: {e.message}",
            )


def _identity(row: dict[str, Any]) -> str:
    """The row's checkpoint: its id and the digest of the folder it points at, if readable.

    So a row and the core-manager folder it describes are one checkpoint, however
    (and in whichever order) they are migrated.
    """
    d = Path(str(row["file_path"])) if row["file_path"] else None
    if d is not None and (d / "metadata.json").is_file():
        try:
            return core.dir_identity(str(row["checkpoint_id"]), d)
        except (LegacyFormatError, OSError):
            pass
    created = row["created_at"]
    return identity(str(row["checkpoint_id"]), f"row:{created.isoformat() if created else None}")


def _where(row: dict[str, Any]) -> str:
    return f"{TABLE}:{row['checkpoint_id']}"


def _checkpoint(
    row: dict[str, Any], identities: dict[str, str], trust_pickle: bool
) -> LegacyCheckpoint:
    created = row["created_at"] or row["updated_at"]
    if created is None:
        raise LegacyFormatError("row has neither created_at nor updated_at")
    level, level_meta = map_level(row["level"])
    legacy_status = row["status"]
    meta: dict[str, Any] = {
        "legacy_id": row["checkpoint_id"],
        "legacy_timestamp": created.isoformat(),
        "legacy_status": legacy_status,
        "legacy_row": jsonable({k: v for k, v in row.items() if k != "checkpoint_id"}),
        **level_meta,
    }
    parent = row["parent_id"]
    if parent is not None:
        meta["legacy_parent_id"] = parent
    status = _STATUS.get(str(legacy_status), Status.VALID)
    file_path = row["file_path"]

    def load() -> LegacyState:
        return _load(file_path, row["validation_checksum"], trust_pickle)

    return LegacyCheckpoint(
        format="postgres",
        legacy_id=str(row["checkpoint_id"]),
        source=_where(row),
        process_id=str(row["processor_name"]) or "legacy-postgres",
        level=level,
        name=str(row["checkpoint_id"]),
        created_at=created,
        identity=identities[row["checkpoint_id"]],
        load=load,
        metadata=meta,
        status=status,
        order=created.timestamp(),
        legacy_parent=identities.get(parent) if parent is not None else None,
    )


def _load(file_path: Any, validation_checksum: Any, trust_pickle: bool) -> LegacyState:
    d = Path(str(file_path)) if file_path else None
    if d is None or not (d / "metadata.json").is_file():
        return LegacyState(
            None,
            {"legacy_data_missing": f"no readable core-manager checkpoint at {file_path!r}"},
            status=Status.ARCHIVED,
        )
    try:
        rec = json.loads(read_bytes(d / "metadata.json"))
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
    except (ValueError, LegacyFormatError) as e:
        return LegacyState(
            None,
            {"legacy_data_missing": f"unreadable {d / 'metadata.json'}: {e}"},
            status=Status.ARCHIVED,
        )
    loaded = core.load_dir(d, rec, trust_pickle)
    corrupted = loaded.corrupted
    if (
        isinstance(validation_checksum, str)
        and validation_checksum
        and validation_checksum
        not in (core.legacy_checksum(d), core.legacy_checksum(d, skip_metadata=False))
    ):
        corrupted = corrupted or "the row's validation_checksum does not match the files"
    meta = dict(loaded.metadata)
    meta["legacy_data_path"] = str(d)
    if corrupted:
        meta["legacy_corrupted"] = corrupted
    return LegacyState(loaded.state, meta, corrupted)
