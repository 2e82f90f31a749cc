"""Rows of the PostgreSQL store: the legacy table's levels and statuses, summaries, lock keys.

Shared by ``postgres`` and its helpers (``_pg_import``, ``_pg_ledger``), which
import these from here, never from ``postgres``: the imports point one way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from ..types import Checkpoint, Level, Status

if TYPE_CHECKING:
    from psycopg import sql

    from ._pg_conn import Conn

from .base import dump_metadata

__all__ = [
    "BATCH",
    "FROM_LEGACY_LEVEL",
    "FROM_LEGACY_STATUS",
    "TO_LEGACY_LEVEL",
    "TO_LEGACY_STATUS",
    "batches",
    "legacy_level",
    "lock_key",
    "record_summary",
    "row_checkpoint",
    "select_any",
]

TO_LEGACY_LEVEL = {Level.STAGE: "phase"}
FROM_LEGACY_LEVEL = {"phase": Level.STAGE}
TO_LEGACY_STATUS = {
    Status.VALID: "valid",
    Status.CREATED: "created",
    Status.CORRUPTED: "corrupted",
    Status.ARCHIVED: "deleted",
}
FROM_LEGACY_STATUS = {v: k for k, v in TO_LEGACY_STATUS.items()}


def legacy_level(level: Level) -> str:
    return TO_LEGACY_LEVEL.get(level, level.value)


def lock_key(*parts: str) -> int:
    """Return a signed 64-bit advisory lock key for ``parts``."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def record_summary(cp: Checkpoint, *, check: bool = True) -> dict[str, Any]:
    if check:
        dump_metadata(cp.metadata)  # InvalidInputError before anything is written
    return {
        "ckptlite": 1,
        "name": cp.name,
        "status": cp.status.value,
        "size": cp.size,
        "stored_size": cp.stored_size,
        "metadata": cp.metadata,
        "progress": list(cp.progress) if cp.progress is not None else None,
    }


def row_checkpoint(row: Sequence[Any]) -> Checkpoint:
    seq, cid, pid, level, name, parent, status, created, ds, checksum = row[:10]
    progress = ds.get("progress")
    return Checkpoint(
        id=cid,
        process_id=pid,
        level=Level(level),
        name=name,
        parent_id=parent,
        seq=seq,
        status=FROM_LEGACY_STATUS.get(status, Status.ARCHIVED),
        created_at=created.astimezone(UTC),
        size=int(ds.get("size", 0)),
        stored_size=int(ds.get("stored_size", 0)),
        checksum=checksum or "",
        metadata=ds.get("metadata") or {},
        progress=None if progress is None else (int(progress[0]), int(progress[1])),
    )


#: Values per ``= ANY(%s)`` query: one helper batches every such lookup.
BATCH = 5000


def batches(values: Sequence[Any], n: int = BATCH) -> Iterator[Sequence[Any]]:
    """Yield ``values`` in slices of at most ``n``."""
    for i in range(0, len(values), n):
        yield values[i : i + n]


def select_any(conn: Conn, query: sql.Composed, values: Sequence[Any]) -> Iterator[Any]:
    """Yield the rows of ``query`` (one ``= ANY(%s)`` parameter) over ``values``, in batches."""
    for batch in batches(values):
        yield from conn.execute(query, (list(batch),))
