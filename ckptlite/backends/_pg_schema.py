"""The PostgreSQL schema: the legacy ``pipeline_checkpoints`` DDL and ckptlite's own tables.

The legacy table is created with exactly the DDL of LEGACY_FORMATS.md §4 when
it is absent and used as it is when present. ckptlite's tables sit beside it,
named ``<prefix><name>``, versioned by the ``schema_version`` row of
``<prefix>meta``; their foreign key binds them to one legacy table. Every name
goes through ``psycopg.sql.Identifier``, and every name the schema makes,
including those PostgreSQL derives (``<table>_checkpoint_id_key``, sequences,
array types), must fit in 63 bytes: a longer one would be cut, and two cut
names can collide.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from ..errors import ConfigError

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TABLE",
    "LEGACY_COLUMNS",
    "LEGACY_DDL",
    "MAX_NAME_BYTES",
    "MIGRATIONS",
    "check_names",
    "derived_prefix",
    "legacy_names",
    "names",
    "own_names",
]

DEFAULT_TABLE = "pipeline_checkpoints"
DEFAULT_PREFIX = "ckptlite_"
MAX_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer names are cut, and may collide

# LEGACY_FORMATS.md §4, verbatim but for the table and index names ({t}, {idx_*})
# and the doubled braces of the JSON default.
LEGACY_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {t} (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    checkpoint_id VARCHAR(255) UNIQUE NOT NULL,
    level VARCHAR(50) NOT NULL CHECK (level IN ('pipeline', 'phase', 'step', 'substep')),
    parent_id VARCHAR(255),
    processor_name VARCHAR(255) NOT NULL,
    data_summary JSONB NOT NULL DEFAULT '{{}}',
    file_path TEXT NOT NULL,
    file_size_bytes BIGINT NOT NULL,
    compression_type VARCHAR(50),
    status VARCHAR(50) NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'valid', 'corrupted', 'deleted')),
    validation_checksum VARCHAR(64),
    validation_result JSONB,
    error_message TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (parent_id) REFERENCES {t}(checkpoint_id) ON DELETE CASCADE
)""",  # noqa: E501
    "CREATE INDEX {idx_processor} ON {t}(processor_name)",
    "CREATE INDEX {idx_level} ON {t}(level)",
    "CREATE INDEX {idx_status} ON {t}(status)",
    "CREATE INDEX {idx_created} ON {t}(created_at)",
)

# What ckptlite reads and writes; an existing table must have these.
LEGACY_COLUMNS = frozenset(
    {
        "checkpoint_id",
        "level",
        "parent_id",
        "processor_name",
        "data_summary",
        "file_path",
        "file_size_bytes",
        "status",
        "validation_checksum",
        "created_at",
        "updated_at",
    }
)

# MIGRATIONS[i] takes ckptlite's tables from version i to i+1 (one transaction).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO {meta} (key, value) VALUES ('store_id', gen_random_uuid()::text)",
        # seq: the legacy table has none. One row per ckptlite checkpoint, keyed by
        # checkpoint_id; the slot columns are copies (immutable) so latest() has an index.
        """CREATE TABLE {records} (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            checkpoint_id VARCHAR(255) NOT NULL UNIQUE
                REFERENCES {t}(checkpoint_id) ON DELETE CASCADE,
            process_id VARCHAR(255) NOT NULL,
            level TEXT NOT NULL,
            name TEXT NOT NULL,
            payload BYTEA NOT NULL,
            manifest BYTEA NOT NULL
        )""",
        "CREATE INDEX {records_slot} ON {records}(process_id, level, name, seq)",
        "CREATE INDEX {records_process} ON {records}(process_id, seq)",
        """CREATE TABLE {chunks} (
            digest TEXT PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{{64}}$'),
            size BIGINT NOT NULL,
            codec SMALLINT NOT NULL,
            stored_size BIGINT NOT NULL,
            data BYTEA NOT NULL
        )""",
        # Chunks are zstd frames already: don't let TOAST try pglz on them.
        "ALTER TABLE {chunks} ALTER COLUMN data SET STORAGE EXTERNAL",
        """CREATE TABLE {refs} (
            seq BIGINT NOT NULL REFERENCES {records}(seq) ON DELETE CASCADE,
            digest TEXT NOT NULL REFERENCES {chunks}(digest),
            PRIMARY KEY (seq, digest)
        )""",
        "CREATE INDEX {refs_digest} ON {refs}(digest)",
        "CREATE TABLE {sync_marks} (source TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
    ),
    (
        # Runs and the work-item ledger; the ledger clock gives every write a change
        # number (its row lock orders them by commit) that sync resumes from.
        """CREATE TABLE {runs} (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            process_id TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            error TEXT,
            progress_done BIGINT,
            progress_total BIGINT,
            changed BIGINT NOT NULL
        )""",
        "CREATE INDEX {runs_process} ON {runs}(process_id, seq)",
        "CREATE INDEX {runs_changed} ON {runs}(changed)",
        """CREATE TABLE {items} (
            run BIGINT NOT NULL REFERENCES {runs}(seq) ON DELETE CASCADE,
            grp TEXT NOT NULL,
            item TEXT NOT NULL,
            ok BOOLEAN NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT,
            state BYTEA,
            changed BIGINT NOT NULL,
            PRIMARY KEY (run, grp, item)
        )""",
        "CREATE INDEX {items_changed} ON {items}(changed)",
        "CREATE TABLE {ledger_clock} (k INTEGER PRIMARY KEY CHECK (k = 1), v BIGINT NOT NULL)",
        "INSERT INTO {ledger_clock} (k, v) VALUES (1, 0)",
    ),
    (
        # A mark also names the source's checkpoint at its seq: a source holding
        # another one there is a copy of the store that made the mark (sync.py).
        "ALTER TABLE {sync_marks} ADD COLUMN IF NOT EXISTS checkpoint_id TEXT",
        # A chunk that failed verification: not counted as stored, so the next save
        # of the same bytes writes it again (replacing it) instead of reusing it.
        "ALTER TABLE {chunks} ADD COLUMN IF NOT EXISTS bad BOOLEAN NOT NULL DEFAULT false",
    ),
    (
        # Development builds had either column alone as version 3: give both to all.
        "ALTER TABLE {sync_marks} ADD COLUMN IF NOT EXISTS checkpoint_id TEXT",
        "ALTER TABLE {chunks} ADD COLUMN IF NOT EXISTS bad BOOLEAN NOT NULL DEFAULT false",
    ),
    (
        # Runs shared by many workers (runs.py; the local store's migration 9): the
        # key of a run's work, its workers with their leases, its item groups cut into
        # batches, and one claim row per batch (seg >= 0) or begun stage (seg = -1).
        # Leases run on the database's clock (clock_timestamp()), never a worker's.
        "ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS run_key TEXT",
        "CREATE INDEX {runs_key} ON {runs}(process_id, run_key, seq) WHERE run_key IS NOT NULL",
        """CREATE TABLE {run_workers} (
            run BIGINT NOT NULL REFERENCES {runs}(seq) ON DELETE CASCADE,
            worker TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            node TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            beat_at TIMESTAMPTZ NOT NULL,
            expires TIMESTAMPTZ NOT NULL,
            lease DOUBLE PRECISION NOT NULL,
            gone BOOLEAN NOT NULL DEFAULT false,
            error TEXT,
            PRIMARY KEY (run, worker)
        )""",
        """CREATE TABLE {run_groups} (
            run BIGINT NOT NULL REFERENCES {runs}(seq) ON DELETE CASCADE,
            grp TEXT NOT NULL,
            total BIGINT NOT NULL,
            seg_size INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            PRIMARY KEY (run, grp)
        )""",
        """CREATE TABLE {run_claims} (
            run BIGINT NOT NULL REFERENCES {runs}(seq) ON DELETE CASCADE,
            grp TEXT NOT NULL,
            seg INTEGER NOT NULL,
            worker TEXT,
            expires TIMESTAMPTZ,
            lease DOUBLE PRECISION,
            done BOOLEAN NOT NULL DEFAULT false,
            PRIMARY KEY (run, grp, seg)
        )""",
        "CREATE INDEX {run_claims_open} ON {run_claims}(run, grp, seg) WHERE NOT done",
        # The last worker out counts failed items: a few rows, not the whole ledger.
        "CREATE INDEX {items_failed} ON {items}(run, grp) WHERE NOT ok",
    ),
    (
        # Issue 17 (the local store's migration 11): a counter per slot gives each
        # save its position in the save's own transaction (never taken twice); a
        # group's item ids (zstd of their msgpack list), for items --status pending.
        """CREATE TABLE {slot_counters} (
            process_id VARCHAR(255) NOT NULL,
            level TEXT NOT NULL,
            name TEXT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (process_id, level, name)
        )""",
        "ALTER TABLE {run_groups} ADD COLUMN IF NOT EXISTS ids BYTEA",
    ),
    # Issue 15 (the local store's migration 12): items of a claimed batch
    # not marked, as its holder last committed (NULL: the whole batch): ``claimed``.
    ("ALTER TABLE {run_claims} ADD COLUMN unmarked INTEGER",),
    # Issue 14 (the local store's migration 13): manifests may hold each chunk's
    # check (XXH3-128 of its raw bytes); older ckptlite would read them as malformed.
    (
        "INSERT INTO {meta} (key, value) VALUES ('chunk_check', 'xxh3_128') "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    ),
]


def names(table: str, prefix: str) -> dict[str, sql.Identifier]:
    """Return the identifiers the DDL and queries are formatted with."""
    own = _OWN_TABLES
    out = {"t": sql.Identifier(table)}
    for idx in ("processor", "level", "status", "created"):
        out[f"idx_{idx}"] = sql.Identifier(f"idx_{table}_{idx}")
    for name in own:
        out[name] = sql.Identifier(prefix + name)
    for name in (
        "records_slot",
        "records_process",
        "refs_digest",
        "runs_process",
        "runs_changed",
        "items_changed",
        "runs_key",
        "run_claims_open",
        "items_failed",
    ):
        out[name] = sql.Identifier(prefix + name)
    return out


# Every name the DDL above makes, PostgreSQL's own (constraints, identity
# sequences, array types) included; tests/faults/test_fault_pg_tables.py
# checks this list against the catalog.
_LEGACY_NAMES = (
    "{t}",
    "_{t}",
    "{t}_pkey",
    "{t}_checkpoint_id_key",
    "{t}_level_check",
    "{t}_status_check",
    "{t}_parent_id_fkey",
    "idx_{t}_processor",
    "idx_{t}_level",
    "idx_{t}_status",
    "idx_{t}_created",
)
_OWN_TABLES = (
    "meta",
    "records",
    "chunks",
    "refs",
    "sync_marks",
    "runs",
    "items",
    "ledger_clock",
    "run_workers",
    "run_groups",
    "run_claims",
    "slot_counters",
)
_OWN_NAMES = (
    *(f"{{p}}{n}" for n in _OWN_TABLES),
    *(f"_{{p}}{n}" for n in _OWN_TABLES),
    *(f"{{p}}{n}_pkey" for n in _OWN_TABLES),
    "{p}records_slot",
    "{p}records_process",
    "{p}records_checkpoint_id_key",
    "{p}records_checkpoint_id_fkey",
    "{p}records_seq_seq",
    "{p}chunks_digest_check",
    "{p}refs_digest",
    "{p}refs_seq_fkey",
    "{p}refs_digest_fkey",
    "{p}runs_process",
    "{p}runs_changed",
    "{p}runs_id_key",
    "{p}runs_seq_seq",
    "{p}items_changed",
    "{p}items_run_fkey",
    "{p}ledger_clock_k_check",
    "{p}runs_key",
    "{p}run_claims_open",
    "{p}items_failed",
    "{p}run_workers_run_fkey",
    "{p}run_groups_run_fkey",
    "{p}run_claims_run_fkey",
)


def legacy_names(table: str) -> list[str]:
    """Return every name creating the legacy table ``table`` makes."""
    return [n.format(t=table) for n in _LEGACY_NAMES]


def own_names(prefix: str) -> list[str]:
    """Return every name ckptlite's tables under ``prefix`` get."""
    return [n.format(p=prefix) for n in _OWN_NAMES]


def check_names(candidates: list[str], what: str) -> None:
    """Raise ConfigError when a name is longer than PostgreSQL keeps.

    Raises:
        ConfigError: the longest name and by how much it is too long.
    """
    longest = max(candidates, key=lambda n: len(n.encode()))
    size = len(longest.encode())
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"{what} is too long for PostgreSQL: it makes the name {longest!r} of {size} "
            f"bytes, and PostgreSQL keeps {MAX_NAME_BYTES} bytes (longer names are cut and "
            "can collide); nothing was created",
            hint=f"Choose a name {size - MAX_NAME_BYTES} bytes shorter "
            "(?ckptlite_table=NAME, ?ckptlite_prefix=P).",
        )


def derived_prefix(table: str) -> str:
    """Return the prefix of ckptlite's tables for ``table`` when none is given.

    ``ckptlite_<table>_``, or ``ckptlite_<12 hex of its hash>_`` when that would
    make names too long.
    """
    prefix = f"{DEFAULT_PREFIX}{table}_"
    if max(len(n.encode()) for n in own_names(prefix)) <= MAX_NAME_BYTES:
        return prefix
    return f"{DEFAULT_PREFIX}{hashlib.blake2b(table.encode(), digest_size=6).hexdigest()}_"
