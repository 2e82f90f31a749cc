"""Bulk import of records into PostgreSQL for sync: COPY into a temp table, then upsert.

Runs inside the caller's transaction, under two transaction-level advisory
locks: one per source store (two syncers of one store take turns, batch by
batch) and the store's commit lock (seq order stays commit order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, MissingChunksError
from ..types import StoredRecord

if TYPE_CHECKING:
    from .postgres import Conn, PostgresBackend

__all__ = ["import_records"]

_TEMP = """CREATE TEMP TABLE IF NOT EXISTS ckptlite_import (
    ord INT4, checkpoint_id TEXT, legacy_level TEXT, level TEXT, name TEXT, parent_id TEXT,
    process_id TEXT, summary JSONB, size INT8, status TEXT, checksum TEXT,
    created_at TIMESTAMPTZ, payload BYTEA, manifest BYTEA, digests TEXT[]
) ON COMMIT DELETE ROWS"""
_TYPES = [
    "int4",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "int8",
    "text",
    "text",
    "timestamptz",
    "bytea",
    "bytea",
    "text[]",
]

_MISSING_CHUNKS = """SELECT DISTINCT d FROM pg_temp.ckptlite_import i, unnest(i.digests) d
WHERE NOT EXISTS (SELECT 1 FROM {t} l WHERE l.checkpoint_id = i.checkpoint_id)
AND NOT EXISTS (SELECT 1 FROM {chunks} c WHERE c.digest = d) ORDER BY d"""

_MISSING_PARENTS = """SELECT i.parent_id FROM pg_temp.ckptlite_import i
WHERE i.parent_id IS NOT NULL
AND NOT EXISTS (SELECT 1 FROM {records} r WHERE r.checkpoint_id = i.parent_id)
AND NOT EXISTS (SELECT 1 FROM pg_temp.ckptlite_import j
                WHERE j.checkpoint_id = i.parent_id AND j.ord < i.ord)
LIMIT 1"""

_INSERT = """WITH l AS (
    INSERT INTO {t} (checkpoint_id, level, parent_id, processor_name, data_summary, file_path,
                     file_size_bytes, status, validation_checksum, created_at, updated_at)
    SELECT i.checkpoint_id, i.legacy_level, i.parent_id, i.process_id, i.summary,
           'ckptlite://' || i.checkpoint_id, i.size, i.status, i.checksum, i.created_at, now()
    FROM pg_temp.ckptlite_import i ORDER BY i.ord
    ON CONFLICT (checkpoint_id) DO NOTHING
    RETURNING checkpoint_id
), r AS (
    INSERT INTO {records} (checkpoint_id, process_id, level, name, payload, manifest)
    SELECT i.checkpoint_id, i.process_id, i.level, i.name, i.payload, i.manifest
    FROM pg_temp.ckptlite_import i JOIN l USING (checkpoint_id) ORDER BY i.ord
    RETURNING seq, checkpoint_id
), f AS (
    INSERT INTO {refs} (seq, digest)
    SELECT DISTINCT r.seq, d FROM r JOIN pg_temp.ckptlite_import i USING (checkpoint_id),
    unnest(i.digests) d
)
SELECT count(*) FROM r"""

_MARK = """INSERT INTO {sync_marks} (source, seq) VALUES (%s, %s)
ON CONFLICT (source) DO UPDATE SET seq = GREATEST({sync_marks}.seq, EXCLUDED.seq)"""


def import_records(
    backend: PostgresBackend,
    conn: Conn,
    records: Sequence[StoredRecord],
    source: str,
    mark: int,
) -> int:
    """Insert the records ``backend`` lacks and move the mark, in ``conn``'s transaction.

    Raises:
        MissingChunksError: a record references a chunk the store lacks.
        InvalidInputError: a parent is neither stored nor earlier in ``records``.
    """
    from .postgres import _TO_LEGACY_STATUS, _legacy_level, _lock_key, _summary

    conn.execute(
        "SELECT pg_advisory_xact_lock(%s)", (_lock_key("sync", backend.store_id(), source),)
    )
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (backend._commit_key,))
    rows: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    for rec in records:
        cp = rec.checkpoint
        if cp.id in seen:
            continue
        seen.add(cp.id)
        rows.append(
            (
                len(rows),
                cp.id,
                _legacy_level(cp.level),
                cp.level.value,
                cp.name,
                cp.parent_id,
                cp.process_id,
                _summary(cp, check=False),  # read from a store: valid JSON already
                cp.size,
                _TO_LEGACY_STATUS[cp.status],
                cp.checksum,
                cp.created_at,
                rec.payload,
                rec.manifest,
                sorted(set(rec.digests)),
            )
        )
    inserted = 0
    if rows:
        conn.execute(_TEMP)
        with conn.cursor() as cur:
            with cur.copy("COPY pg_temp.ckptlite_import FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_TYPES)
                for row in rows:
                    copy.write_row(row)
            missing = [r[0] for r in cur.execute(backend._q(_MISSING_CHUNKS))]
            if missing:
                raise MissingChunksError(
                    f"{len(missing)} chunk(s) are not stored", digests=tuple(missing)
                )
            orphan = cur.execute(backend._q(_MISSING_PARENTS)).fetchone()
            if orphan is not None:
                raise InvalidInputError(
                    f"parent checkpoint {orphan[0]} does not exist", checkpoint_id=orphan[0]
                )
            done = cur.execute(backend._q(_INSERT)).fetchone()
            inserted = int(done[0]) if done else 0
    conn.execute(backend._q(_MARK), (source, mark))
    return inserted
