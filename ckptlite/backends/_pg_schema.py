"""The PostgreSQL schema: the legacy ``pipeline_checkpoints`` DDL and ckptlite's own tables.

The legacy table is created with exactly the DDL of LEGACY_FORMATS.md §4 when
it is absent and used as it is when present. ckptlite's tables sit beside it,
named ``<prefix><name>`` (default prefix ``ckptlite_``), versioned by the
``schema_version`` row of ``<prefix>meta``. Every name goes through
``psycopg.sql.Identifier``.
"""

from __future__ import annotations

from psycopg import sql

__all__ = ["LEGACY_COLUMNS", "LEGACY_DDL", "MIGRATIONS", "names"]

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
        # A chunk that failed verification: not counted as stored, so the next save
        # of the same bytes writes it again (replacing it) instead of reusing it.
        "ALTER TABLE {chunks} ADD COLUMN bad BOOLEAN NOT NULL DEFAULT false",
    ),
]


def names(table: str, prefix: str) -> dict[str, sql.Identifier]:
    """Return the identifiers the DDL and queries are formatted with."""
    own = ("meta", "records", "chunks", "refs", "sync_marks", "runs", "items", "ledger_clock")
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
    ):
        out[name] = sql.Identifier(prefix + name)
    return out
