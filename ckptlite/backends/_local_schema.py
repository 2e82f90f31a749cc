"""The local store's SQLite schema (migrations under PRAGMA user_version) and row readers."""

# Performance targets cited as (P1)...(P17): bench/TARGETS.md.
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apsw

from ..types import Checkpoint, Level, RunRecord, RunStatus, Status
from .base import from_micros, load_metadata

__all__ = [
    "CHECKPOINT_COLS",
    "DB_NAME",
    "MAX_CHUNK",
    "MIGRATIONS",
    "PACK_MAX",
    "RUN_COLS",
    "row_to_checkpoint",
    "row_to_run",
    "select_in",
]

DB_NAME = "ckptlite.db"
#: A pack holds at most this many bytes (more when one chunk alone is bigger).
PACK_MAX = 64 << 20
#: chunking.MAX_CHUNK: no chunk is larger, raw or compressed (zstd is kept only when smaller).
MAX_CHUNK = 64 << 20

MIGRATIONS: list[str] = [
    """
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        process_id TEXT NOT NULL,
        level TEXT NOT NULL,
        name TEXT NOT NULL,
        parent_id TEXT REFERENCES checkpoints(id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        metadata TEXT NOT NULL,
        progress_done INTEGER,
        progress_total INTEGER,
        payload BLOB NOT NULL,
        manifest BLOB NOT NULL
    );
    CREATE INDEX checkpoints_slot ON checkpoints(process_id, level, name, seq);
    CREATE INDEX checkpoints_process_seq ON checkpoints(process_id, seq);
    CREATE INDEX checkpoints_level_seq ON checkpoints(process_id, level, seq);
    CREATE INDEX checkpoints_parent ON checkpoints(parent_id);
    CREATE TABLE chunks (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        codec INTEGER NOT NULL,
        data BLOB
    ) WITHOUT ROWID;
    CREATE TABLE refs (
        seq INTEGER NOT NULL REFERENCES checkpoints(seq) ON DELETE CASCADE,
        digest TEXT NOT NULL REFERENCES chunks(digest),
        PRIMARY KEY (seq, digest)
    ) WITHOUT ROWID;
    CREATE INDEX refs_digest ON refs(digest);
    """,
    # 2: what sync needs: a store id (its marks are keyed by it) and marks per source.
    """
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO store_meta VALUES ('store_id', lower(hex(randomblob(16))));
    CREATE TABLE sync_marks (source TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # Pipeline runs and the work-item ledger. ``items`` is keyed by the run's
    # integer seq (short keys keep 1,000,000-item ledgers small and fast); the
    # ledger clock gives every write a change number that sync can resume from.
    """
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        process_id TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER,
        error TEXT,
        progress_done INTEGER,
        progress_total INTEGER,
        changed INTEGER NOT NULL
    );
    CREATE INDEX runs_process ON runs(process_id, seq);
    CREATE INDEX runs_changed ON runs(changed);
    CREATE TABLE items (
        run INTEGER NOT NULL,
        grp TEXT NOT NULL,
        item TEXT NOT NULL,
        ok INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        state BLOB,
        changed INTEGER NOT NULL,
        PRIMARY KEY (run, grp, item)
    ) WITHOUT ROWID;
    CREATE TABLE ledger_clock (k INTEGER PRIMARY KEY CHECK (k = 1), v INTEGER NOT NULL);
    INSERT INTO ledger_clock(k, v) VALUES (1, 0);
    """,
    # 4: pack files. A big chunk lies at ``pack_offset`` in ``blobs/packs/<pack>``;
    # rows of stores written before packs keep ``pack`` NULL (one file per chunk).
    """
    ALTER TABLE chunks ADD COLUMN pack TEXT;
    ALTER TABLE chunks ADD COLUMN pack_offset INTEGER;
    CREATE INDEX chunks_pack ON chunks(pack) WHERE pack IS NOT NULL;
    """,
    # 5: chunks whose stored bytes failed verification. ``has_chunks`` does not count
    # them, so the next save of the same bytes stores them again.
    """
    ALTER TABLE chunks ADD COLUMN bad INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: most checkpoints have no parent; a partial index leaves them out, so a save
    # writes one index page fewer (P1: ~7 us of ~115). ``parent_id = ?`` still uses it.
    """
    DROP INDEX checkpoints_parent;
    CREATE INDEX checkpoints_parent ON checkpoints(parent_id) WHERE parent_id IS NOT NULL;
    """,
    # 7: a mark also names the source's checkpoint at its seq. A source holding
    # another one there is a copy of the store that made the mark (same store id,
    # other history): sync scans it again from the start instead of skipping.
    """
    ALTER TABLE sync_marks ADD COLUMN checkpoint_id TEXT;
    """,
    # 8: one index fewer to write per save (P1: ~4 us of a ~45 us transaction). A
    # process's newest checkpoints are the newest of its four levels, each a range of
    # checkpoints_level_seq (or of checkpoints_slot when a name is given): queries on
    # a process without a level read one range per level (local.py ``_top_seq``, ``_per_level``).
    """
    DROP INDEX IF EXISTS checkpoints_process_seq;
    """,
    # 9: runs shared by many workers (runs.py). ``run_key`` names the work a run does
    # (mgr.run(key=...)); ``run_workers`` are the workers that joined, with their lease;
    # ``run_groups`` the item groups registered (a fingerprint of their ids, cut into
    # batches of ``seg_size``); ``run_claims`` one row per batch (seg >= 0) or begun
    # stage (seg = -1): who holds it until when, and whether it is done. Times are
    # microseconds of the machine's clock (one machine shares a local store).
    """
    ALTER TABLE runs ADD COLUMN run_key TEXT;
    CREATE INDEX runs_key ON runs(process_id, run_key, seq) WHERE run_key IS NOT NULL;
    CREATE TABLE run_workers (
        run INTEGER NOT NULL,
        worker TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        node TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        beat_at INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        lease REAL NOT NULL,
        gone INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        PRIMARY KEY (run, worker)
    ) WITHOUT ROWID;
    CREATE TABLE run_groups (
        run INTEGER NOT NULL,
        grp TEXT NOT NULL,
        total INTEGER NOT NULL,
        seg_size INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (run, grp)
    ) WITHOUT ROWID;
    CREATE TABLE run_claims (
        run INTEGER NOT NULL,
        grp TEXT NOT NULL,
        seg INTEGER NOT NULL,
        worker TEXT,
        expires INTEGER,
        lease REAL,
        done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run, grp, seg)
    ) WITHOUT ROWID;
    CREATE INDEX run_claims_open ON run_claims(run, grp, seg) WHERE done = 0;
    CREATE INDEX items_failed ON items(run, grp) WHERE ok = 0;
    """,
    # 10 (issue 14): ``chunks`` as a rowid table. WITHOUT ROWID kept each row in the
    # index b-tree, whose search reads a whole overflowing cell (an inline chunk's
    # 64 KiB) to compare keys: 54-74 us a lookup instead of ~3. The digest gets a
    # UNIQUE index (the parent key of refs' foreign key), and ``data`` goes last so
    # a lookup of the other columns never follows its overflow chain. Foreign keys
    # are on and cannot be turned off in a transaction: dropping the old table counts
    # every ref as violated, deferred, and inserting the rows back into the new
    # ``chunks`` (same name) counts them satisfied again before COMMIT.
    """
    PRAGMA defer_foreign_keys = ON;
    CREATE TEMP TABLE chunks_copy AS
        SELECT digest, size, stored_size, codec, pack, pack_offset, bad, data FROM chunks;
    DROP TABLE chunks;
    CREATE TABLE chunks (
        digest TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        codec INTEGER NOT NULL,
        pack TEXT,
        pack_offset INTEGER,
        bad INTEGER NOT NULL DEFAULT 0,
        data BLOB
    );
    INSERT INTO chunks(digest, size, stored_size, codec, pack, pack_offset, bad, data)
        SELECT digest, size, stored_size, codec, pack, pack_offset, bad, data FROM chunks_copy;
    DROP TABLE temp.chunks_copy;
    CREATE INDEX chunks_pack ON chunks(pack) WHERE pack IS NOT NULL;
    """,
    # 11 (issue 17): a counter per slot gives each save its position (metadata
    # "ckptlite.slot_index") in the save's own transaction: never taken twice, after a
    # delete or by another process. ``run_groups.ids`` keeps a group's item ids
    # (zstd of their msgpack list) so ``items --status pending|claimed`` can list
    # them; NULL for groups registered before.
    """
    CREATE TABLE slot_counters (
        process_id TEXT NOT NULL,
        level TEXT NOT NULL,
        name TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (process_id, level, name)
    ) WITHOUT ROWID;
    ALTER TABLE run_groups ADD COLUMN ids BLOB;
    """,
    # 12 (issue 15): how many items of a
    # claimed batch are not marked, as its holder last committed (NULL: the whole
    # batch), so ``claimed`` counts the items claimed and not marked, not whole batches.
    """
    ALTER TABLE run_claims ADD COLUMN unmarked INTEGER;
    """,
    # 13 (issue 14): manifests may hold each chunk's check (XXH3-128 of its raw
    # bytes, ``chunking.check_of``), which a load compares instead of hashing the
    # address again. No table changes; the version keeps older ckptlite, which would
    # read such a manifest as malformed (and mark its checkpoint CORRUPTED), out.
    """
    INSERT OR REPLACE INTO store_meta(key, value) VALUES ('chunk_check', 'xxh3_128');
    """,
]

CHECKPOINT_COLS = (
    "seq, id, process_id, level, name, parent_id, status, created_at, size, stored_size, "
    "checksum, metadata, progress_done, progress_total"
)


_LEVELS = {m.value: m for m in Level}
_STATUSES = {m.value: m for m in Status}


def row_to_checkpoint(row: Sequence[Any]) -> Checkpoint:
    (seq, cid, pid, level, name, parent, status, created, size, stored, checksum, meta, pd, pt) = (
        row[:14]
    )
    return Checkpoint(
        id=cid,
        process_id=pid,
        level=_LEVELS.get(level) or Level(level),  # dict first: Enum() costs ~0.6 us a call
        name=name,
        parent_id=parent,
        seq=seq,
        status=_STATUSES.get(status) or Status(status),
        created_at=from_micros(created),
        size=size,
        stored_size=stored,
        checksum=checksum,
        metadata=load_metadata(meta),
        progress=None if pd is None else (pd, pt),
    )


RUN_COLS = (
    "seq, id, process_id, status, started_at, updated_at, finished_at, error, "
    "progress_done, progress_total, changed, run_key"
)


def row_to_run(row: Sequence[Any]) -> RunRecord:
    seq, rid, pid, status, started, updated, finished, error, pd, pt, changed, key = row
    return RunRecord(
        id=rid,
        process_id=pid,
        status=RunStatus(status),
        started_at=from_micros(started),
        updated_at=from_micros(updated),
        finished_at=None if finished is None else from_micros(finished),
        error=error,
        progress=None if pd is None else (pd, pt),
        seq=seq,
        changed=changed,
        key=key,
    )


def select_in(conn: apsw.Connection, sql: str, values: Iterable[Any]) -> Iterator[Any]:
    """Yield the rows of ``sql`` (its ``{}`` is the IN list) over ``values``, 500 at a time.

    Batched: SQLite caps the parameters of one statement. Duplicates are asked once.
    """
    wanted = list(dict.fromkeys(values))
    for i in range(0, len(wanted), 500):
        part = wanted[i : i + 500]
        yield from conn.execute(sql.format(",".join("?" * len(part))), part)
