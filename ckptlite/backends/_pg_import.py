"""Bulk import of records into PostgreSQL for sync: COPY into a temp table, then upsert.

Runs inside the caller's transaction. The batch is staged in a temp table
first; then two transaction-level advisory locks are taken: one per source
store (two syncers of one store take turns, batch by batch) and the store's
commit lock (seq order stays commit order, and nothing else inserts records
until COMMIT, so rows already present can be dropped before plain INSERTs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidInputError, MissingChunksError
from ..types import StoredRecord
from .base import slot_stamps

if TYPE_CHECKING:
    from psycopg import sql

    from ._pg_conn import Conn


class _Importer(Protocol):
    """What an import uses of ``PostgresBackend`` (this module does not import it)."""

    _commit_key: int

    def _q(self, text: str) -> sql.Composed: ...

    def store_id(self) -> str: ...


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
WHERE NOT EXISTS (SELECT 1 FROM {chunks} c WHERE c.digest = d AND NOT c.bad) ORDER BY d"""

_MISSING_PARENTS = """SELECT i.parent_id FROM pg_temp.ckptlite_import i
WHERE i.parent_id IS NOT NULL
AND NOT EXISTS (SELECT 1 FROM {records} r WHERE r.checkpoint_id = i.parent_id)
AND NOT EXISTS (SELECT 1 FROM pg_temp.ckptlite_import j
                WHERE j.checkpoint_id = i.parent_id AND j.ord < i.ord)
LIMIT 1"""

# Under the commit lock nothing else inserts records, so the rows already there
# (from any writer, legacy ones included) can be dropped first; plain INSERTs follow.
_DROP_PRESENT = """DELETE FROM pg_temp.ckptlite_import i USING {t} l
WHERE l.checkpoint_id = i.checkpoint_id"""

_INSERT_LEGACY = """INSERT INTO {t} (checkpoint_id, level, parent_id, processor_name, data_summary,
    file_path, file_size_bytes, status, validation_checksum, created_at, updated_at)
SELECT i.checkpoint_id, i.legacy_level, i.parent_id, i.process_id, i.summary,
    'ckptlite://' || i.checkpoint_id, i.size, i.status, i.checksum, i.created_at, now()
FROM pg_temp.ckptlite_import i ORDER BY i.ord"""

_INSERT_RECORDS = """WITH r AS (
    INSERT INTO {records} (checkpoint_id, process_id, level, name, payload, manifest)
    SELECT i.checkpoint_id, i.process_id, i.level, i.name, i.payload, i.manifest
    FROM pg_temp.ckptlite_import i ORDER BY i.ord
    RETURNING seq, checkpoint_id
)
INSERT INTO {refs} (seq, digest)
SELECT DISTINCT r.seq, d FROM r JOIN pg_temp.ckptlite_import i USING (checkpoint_id),
unnest(i.digests) d WHERE cardinality(i.digests) > 0"""

# SET expressions read the old row: the id follows the seq that wins.
_MARK = """INSERT INTO {sync_marks} AS m (source, seq, checkpoint_id) VALUES (%s, %s, %s)
ON CONFLICT (source) DO UPDATE SET seq = GREATEST(m.seq, EXCLUDED.seq), checkpoint_id =
CASE WHEN EXCLUDED.seq >= m.seq THEN EXCLUDED.checkpoint_id ELSE m.checkpoint_id END"""
_RESET_MARK = """INSERT INTO {sync_marks} AS m (source, seq, checkpoint_id) VALUES (%s, %s, %s)
ON CONFLICT (source) DO UPDATE SET seq = EXCLUDED.seq, checkpoint_id = EXCLUDED.checkpoint_id"""


def import_records(
    backend: _Importer,
    conn: Conn,
    records: Sequence[StoredRecord],
    source: str,
    mark: int,
    mark_id: str | None = None,
    reset: bool = False,
) -> int:
    """Insert the records ``backend`` lacks and move the mark, in ``conn``'s transaction.

    Raises:
        MissingChunksError: a record references a chunk the store lacks.
        InvalidInputError: a parent is neither stored nor earlier in ``records``.
    """
    from ._pg_rows import TO_LEGACY_STATUS, legacy_level, lock_key, record_summary

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
                legacy_level(cp.level),
                cp.level.value,
                cp.name,
                cp.parent_id,
                cp.process_id,
                record_summary(cp, check=False),  # read from a store: valid JSON already
                cp.size,
                TO_LEGACY_STATUS[cp.status],
                cp.checksum,
                cp.created_at,
                rec.payload,
                rec.manifest,
                sorted(set(rec.digests)),
            )
        )
    with conn.cursor() as cur:
        if rows:  # staged before the locks: concurrent writers wait less
            cur.execute(_TEMP)
            with cur.copy("COPY pg_temp.ckptlite_import FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_TYPES)
                for row in rows:
                    copy.write_row(row)
        source_key = lock_key("sync", backend.store_id(), source)
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (source_key,))
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (backend._commit_key,))
        inserted = 0
        if rows:
            cur.execute(backend._q(_DROP_PRESENT))
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
            inserted = cur.execute(backend._q(_INSERT_LEGACY)).rowcount
            cur.execute(backend._q(_INSERT_RECORDS))
            # Counters move past the positions the copies carry (a slot not counted
            # yet starts past them anyway): a later save never takes one again.
            tops = slot_stamps(r.checkpoint for r in records)
            if tops:
                cur.executemany(
                    backend._q(
                        "UPDATE {slot_counters} SET n = greatest(n, %s) "
                        "WHERE process_id = %s AND level = %s AND name = %s"
                    ),
                    [(top, *slot) for slot, top in tops.items()],
                )
        cur.execute(backend._q(_RESET_MARK if reset else _MARK), (source, mark, mark_id))
    return inserted
