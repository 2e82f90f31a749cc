"""The local backend: ``ckptlite.db`` (SQLite via apsw) plus ``blobs/``.

Chunks no larger than ``INLINE_MAX`` stored bytes live in the ``chunks`` table;
larger ones are files in the blob directory with a ``chunks`` row whose
``data`` is NULL. A file and its row are written together under the shared gc
lock, and gc removes both under the exclusive one; so a chunk row always has
its bytes, and ``refs`` (a foreign key to ``chunks``) means a committed record
never points at a missing chunk.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from .. import _faults
from .._sqlite import Database, translate_errors
from ..blobs import BlobDir
from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidInputError,
    MissingChunksError,
    RunNotFoundError,
)
from ..types import (
    Checkpoint,
    GcReport,
    ItemMark,
    ItemRecord,
    Level,
    RunRecord,
    RunStatus,
    Status,
    StoredChunk,
    StoredRecord,
)
from .base import (
    ListQuery,
    StructureCheck,
    dump_metadata,
    from_micros,
    ledger_entry_wins,
    load_metadata,
    to_micros,
)

__all__ = ["DB_NAME", "INLINE_MAX", "MIGRATIONS", "LocalBackend"]

DB_NAME = "ckptlite.db"
_CODEC_RAW = 0  # chunking.CODEC_RAW (backends do not import the manager's modules)
_EMPTY_MANIFEST = b"\x90"  # msgpack of [], chunking's manifest of a state without buffers
INLINE_MAX = 64 * 1024

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
]

_COLS = (
    "seq, id, process_id, level, name, parent_id, status, created_at, size, stored_size, "
    "checksum, metadata, progress_done, progress_total"
)


_LEVELS = {m.value: m for m in Level}
_STATUSES = {m.value: m for m in Status}


def _row_to_checkpoint(row: Sequence[Any]) -> Checkpoint:
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


_RUN_COLS = (
    "seq, id, process_id, status, started_at, updated_at, finished_at, error, "
    "progress_done, progress_total, changed"
)


def _row_to_run(row: Sequence[Any]) -> RunRecord:
    seq, rid, pid, status, started, updated, finished, error, pd, pt, changed = row
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
    )


class LocalBackend:
    """A store directory: ``<root>/ckptlite.db`` and ``<root>/blobs/``."""

    def __init__(
        self,
        root: Path,
        *,
        durability: str = "safe",
        busy_timeout: float = 30.0,
        group_access: bool = False,
        migrations: Sequence[str] = MIGRATIONS,
        vfs: str | None = None,
    ) -> None:
        self.root = root
        self.url = str(root)
        dir_mode = 0o770 if group_access else 0o700
        try:
            root.mkdir(mode=dir_mode, parents=True)
            os.chmod(root, dir_mode)  # mkdir's mode is cut by the umask; a new store's is not
        except FileExistsError:
            pass
        sync = {"none": "OFF", "safe": "NORMAL", "full": "FULL"}[durability]
        self.blobs = BlobDir(root / "blobs", fsync=durability != "none", group=group_access)
        self.db = Database(
            root / DB_NAME,
            migrations,
            synchronous=sync,
            busy_timeout=busy_timeout,
            file_mode=0o660 if group_access else 0o600,
            vfs=vfs,  # the fault tests pass an apsw VFS shim that fails chosen writes
        )

    # -- chunks ---------------------------------------------------------------

    def write_chunks(self, chunks: Sequence[StoredChunk]) -> None:
        if not chunks:
            return
        with self.blobs.gc_lock(exclusive=False):
            present = self.has_chunks(c.digest for c in chunks)
            fresh = [c for c in chunks if c.digest not in present]
            self.blobs.write_many([(c.digest, c.data) for c in fresh if c.stored_size > INLINE_MAX])
            with self.db.write() as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO chunks(digest, size, stored_size, codec, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            c.digest,
                            c.size,
                            c.stored_size,
                            c.codec,
                            None if c.stored_size > INLINE_MAX else bytes(c.data),
                        )
                        for c in fresh
                    ],
                )

    def has_chunks(self, digests: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(digests))
        found: set[str] = set()
        conn = self.db.read()
        with translate_errors("reading chunk index"):
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                q = f"SELECT digest FROM chunks WHERE digest IN ({','.join('?' * len(part))})"
                found.update(r[0] for r in conn.execute(q, part))
        return found

    def read_chunk(self, digest: str) -> StoredChunk:
        with translate_errors(f"reading chunk {digest}"):
            row = (
                self.db.read()
                .execute("SELECT size, codec, data FROM chunks WHERE digest=?", (digest,))
                .fetchone()
            )
        if row is None:
            raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest)
        size, codec, data = row
        if data is None:
            data = self.blobs.read(digest)
        return StoredChunk(digest, size, codec, data)

    def read_chunk_into(self, digest: str, out: memoryview) -> StoredChunk:
        """Like ``read_chunk``, but a raw chunk file is read straight into ``out``.

        The returned chunk's ``data`` is then ``out`` itself (not yet verified):
        one copy from the page cache instead of two, for the big loads of P4.

        Raises:
            CorruptCheckpointError: the chunk is missing, truncated or padded.
        """
        with translate_errors(f"reading chunk {digest}"):
            row = (
                self.db.read()
                .execute("SELECT size, codec, data IS NULL FROM chunks WHERE digest=?", (digest,))
                .fetchone()
            )
        if row is None:
            raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest)
        size, codec, in_file = row
        if not (in_file and codec == _CODEC_RAW and size == out.nbytes):
            return self.read_chunk(digest)
        if self.blobs.read_into(digest, out) != size:
            raise CorruptCheckpointError(f"chunk {digest} is truncated or padded", digest=digest)
        return StoredChunk(digest, size, codec, out)

    # -- records --------------------------------------------------------------

    def commit(self, record: StoredRecord) -> Checkpoint:
        cp = record.checkpoint
        meta = dump_metadata(cp.metadata)
        with self.db.write() as conn:
            if record.digests:
                missing = tuple(set(record.digests) - self.has_chunks(record.digests))
                if missing:
                    raise MissingChunksError(
                        f"{len(missing)} chunk(s) of {cp.id} are not stored", digests=missing
                    )
            if (
                cp.parent_id is not None
                and not conn.execute(
                    "SELECT 1 FROM checkpoints WHERE id=?", (cp.parent_id,)
                ).fetchone()
            ):
                raise InvalidInputError(
                    f"parent checkpoint {cp.parent_id} does not exist", checkpoint_id=cp.parent_id
                )
            progress = cp.progress or (None, None)
            try:
                conn.execute(
                    "INSERT INTO checkpoints(id, process_id, level, name, parent_id, status, "
                    "created_at, size, stored_size, checksum, metadata, progress_done, "
                    "progress_total, payload, manifest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        cp.id,
                        cp.process_id,
                        cp.level.value,
                        cp.name,
                        cp.parent_id,
                        cp.status.value,
                        to_micros(cp.created_at),
                        cp.size,
                        cp.stored_size,
                        cp.checksum,
                        meta,
                        progress[0],
                        progress[1],
                        record.payload,
                        record.manifest,
                    ),
                )
            except apsw.ConstraintError:
                # The UNIQUE id, checked by SQLite: a SELECT first cost a statement per save.
                if conn.execute("SELECT 1 FROM checkpoints WHERE id=?", (cp.id,)).fetchone():
                    raise InvalidInputError(
                        f"checkpoint {cp.id} exists already", checkpoint_id=cp.id
                    ) from None
                raise
            seq = conn.last_insert_rowid()
            if record.digests:
                conn.executemany(
                    "INSERT OR IGNORE INTO refs(seq, digest) VALUES (?, ?)",
                    [(seq, d) for d in record.digests],
                )
            _faults.point("commit.in_transaction")
        _faults.point("commit.after_commit")
        return Checkpoint(  # built directly: dataclasses.replace costs twice as much
            id=cp.id,
            process_id=cp.process_id,
            level=cp.level,
            name=cp.name,
            parent_id=cp.parent_id,
            seq=seq,
            status=cp.status,
            created_at=cp.created_at,
            size=cp.size,
            stored_size=cp.stored_size,
            checksum=cp.checksum,
            metadata=cp.metadata,
            progress=cp.progress,
        )

    def get(self, checkpoint_id: str) -> Checkpoint:
        with translate_errors("reading checkpoint"):
            row = (
                self.db.read()
                .execute(f"SELECT {_COLS} FROM checkpoints WHERE id=?", (checkpoint_id,))
                .fetchone()
            )
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        return _row_to_checkpoint(row)

    def get_record(self, checkpoint_id: str) -> StoredRecord:
        with translate_errors("reading checkpoint"):
            conn = self.db.read()
            row = conn.execute(
                f"SELECT {_COLS}, payload, manifest FROM checkpoints WHERE id=?", (checkpoint_id,)
            ).fetchone()
            if row is None:
                raise CheckpointNotFoundError(
                    f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
                )
            digests = tuple(
                r[0] for r in conn.execute("SELECT digest FROM refs WHERE seq=?", (row[0],))
            )
        return StoredRecord(_row_to_checkpoint(row), row[14], row[15], digests)

    def has_records(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        found: set[str] = set()
        conn = self.db.read()
        with translate_errors("reading checkpoints"):
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                q = f"SELECT id FROM checkpoints WHERE id IN ({','.join('?' * len(part))})"
                found.update(r[0] for r in conn.execute(q, part))
        return found

    def latest_record(
        self, process_id: str, level: Level | None, name: str | None
    ) -> StoredRecord | None:
        """Return the slot's latest VALID record with its payload, in one query (or None).

        ``latest`` + ``get_record`` in one round trip: what ``load_latest`` needs.
        """
        where = "process_id=?"
        args: list[Any] = [process_id]
        if level is not None:
            where += " AND level=?"
            args.append(level.value)
        if name is not None:
            where += " AND name=?"
            args.append(name)
        with translate_errors("reading checkpoint"):
            conn = self.db.read()
            # The slot's newest seq from its index, then that row by rowid: two short
            # statements cost ~25% less than one filtered on status. Only when the
            # newest is not VALID (or went away meanwhile) does the filtered one run.
            top = conn.execute(
                f"SELECT seq FROM checkpoints WHERE {where} ORDER BY seq DESC LIMIT 1", args
            ).fetchone()
            if top is None:
                return None
            row = conn.execute(
                f"SELECT {_COLS}, payload, manifest FROM checkpoints WHERE seq=?", top
            ).fetchone()
            if row is None or row[6] != Status.VALID.value:
                row = conn.execute(
                    f"SELECT {_COLS}, payload, manifest FROM checkpoints WHERE {where} "
                    "AND status='valid' ORDER BY seq DESC LIMIT 1",
                    args,
                ).fetchone()
                if row is None:
                    return None
            digests: tuple[str, ...] = ()
            if row[15] != _EMPTY_MANIFEST:
                digests = tuple(
                    r[0] for r in conn.execute("SELECT digest FROM refs WHERE seq=?", (row[0],))
                )
        return StoredRecord(_row_to_checkpoint(row), row[14], row[15], digests)

    def latest(self, process_id: str, level: Level | None, name: str | None) -> Checkpoint | None:
        found = self.list(
            ListQuery(process_id=process_id, level=level, name=name, status=Status.VALID, limit=1)
        )
        return found[0] if found else None

    def list(self, query: ListQuery) -> list[Checkpoint]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (
            ("process_id", query.process_id),
            ("level", query.level.value if query.level else None),
            ("name", query.name),
            ("status", query.status.value if query.status else None),
            ("parent_id", query.parent),
        ):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if query.since is not None:
            where.append("created_at>=?")
            args.append(to_micros(query.since))
        if query.after_seq is not None:
            where.append("seq>?")
            args.append(query.after_seq)
        sql = f"SELECT {_COLS} FROM checkpoints"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq " + ("ASC" if query.ascending else "DESC")
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        with translate_errors("listing checkpoints"):
            return [_row_to_checkpoint(r) for r in self.db.read().execute(sql, args)]

    def set_status(self, checkpoint_id: str, status: Status) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE checkpoints SET status=? WHERE id=?", (status.value, checkpoint_id)
            )
            if conn.changes() == 0:
                raise CheckpointNotFoundError(
                    f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
                )

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        with self.db.write() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "WITH RECURSIVE tree(id) AS (SELECT id FROM checkpoints WHERE id=? "
                    "UNION SELECT c.id FROM checkpoints c JOIN tree t ON c.parent_id=t.id) "
                    "SELECT id FROM tree",
                    (checkpoint_id,),
                )
            ]
            if not ids:
                raise CheckpointNotFoundError(
                    f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
                )
            conn.execute("DELETE FROM checkpoints WHERE id=?", (checkpoint_id,))
        return ids

    # -- maintenance ------------------------------------------------------------

    def iter_chunk_digests(self) -> Iterator[str]:
        with translate_errors("listing chunks"):
            rows: list[Any] = self.db.read().execute("SELECT digest FROM chunks").fetchall()
        yield from (r[0] for r in rows)

    def checkpoints_using(self, digests: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(digests))
        found: set[str] = set()
        conn = self.db.read()
        with translate_errors("reading chunk references"):
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                q = (
                    "SELECT DISTINCT c.id FROM refs r JOIN checkpoints c ON c.seq=r.seq "
                    f"WHERE r.digest IN ({','.join('?' * len(part))})"
                )
                found.update(r[0] for r in conn.execute(q, part))
        return found

    def check(self) -> StructureCheck:
        conn = self.db.read()
        with translate_errors("checking the store"):
            file_rows: list[Any] = conn.execute(
                "SELECT digest FROM chunks WHERE data IS NULL"
            ).fetchall()
            absent = [d for (d,) in file_rows if not self.blobs.exists(d)]
            missing: dict[str, list[str]] = {}
            for i in range(0, len(absent), 500):
                part = absent[i : i + 500]
                q = (
                    "SELECT c.id, r.digest FROM refs r JOIN checkpoints c ON c.seq=r.seq "
                    f"WHERE r.digest IN ({','.join('?' * len(part))})"
                )
                for cid, d in conn.execute(q, part):
                    missing.setdefault(cid, []).append(d)
            unreferenced = [
                r[0]
                for r in conn.execute(
                    "SELECT digest FROM chunks c WHERE NOT EXISTS "
                    "(SELECT 1 FROM refs r WHERE r.digest=c.digest)"
                )
            ]
            indexed = {r[0] for r in conn.execute("SELECT digest FROM chunks")}
        stray = [d for d, _ in self.blobs.digests() if d not in indexed]
        return StructureCheck(
            {k: tuple(v) for k, v in missing.items()}, tuple(sorted(set(unreferenced + stray)))
        )

    def gc(self, dry_run: bool = False) -> GcReport:
        with self.blobs.gc_lock(exclusive=True):
            conn = self.db.connection()
            ctx = contextlib.nullcontext(conn) if dry_run else self.db.write(conn)
            with ctx:
                rows: list[Any] = conn.execute(
                    "SELECT digest, stored_size, data IS NULL FROM chunks c WHERE NOT EXISTS "
                    "(SELECT 1 FROM refs r WHERE r.digest=c.digest)"
                ).fetchall()
                if not dry_run:
                    conn.executemany("DELETE FROM chunks WHERE digest=?", [(r[0],) for r in rows])
                indexed = {r[0] for r in conn.execute("SELECT digest FROM chunks")}
            _faults.point("gc.after_delete")
            # Unlink only after COMMIT: a rolled-back delete must still find its files.
            freed = sum(r[1] for r in rows)
            removed: list[str] = [r[0] for r in rows]
            if not dry_run:
                for digest, _, is_file in rows:
                    if is_file:
                        self.blobs.remove(digest)
            for digest, size in list(self.blobs.digests()):
                if digest not in indexed and digest not in removed:
                    removed.append(digest)
                    freed += size
                    if not dry_run:
                        self.blobs.remove(digest)
            temps = []
            for tmp in self.blobs.dead_temp_files():
                temps.append(tmp.name)
                with contextlib.suppress(OSError):
                    freed += tmp.stat().st_size
                    if not dry_run:
                        os.unlink(tmp)
        return GcReport(tuple(sorted(removed)), tuple(sorted(temps)), freed, dry_run)

    def stats(self) -> dict[str, Any]:
        conn = self.db.read()
        with translate_errors("reading stats"):
            totals: Any = conn.execute(
                "SELECT count(*), coalesce(sum(size),0), coalesce(sum(length(payload)),0) "
                "FROM checkpoints"
            ).fetchone()
            chunk_totals: Any = conn.execute(
                "SELECT count(*), coalesce(sum(stored_size),0) FROM chunks"
            ).fetchone()
            by_process: dict[str, dict[str, int]] = {}
            for pid, level, count in conn.execute(
                "SELECT process_id, level, count(*) FROM checkpoints GROUP BY process_id, level"
            ):
                by_process.setdefault(pid, {})[level] = count
            by_status = {
                status: count
                for status, count in conn.execute(
                    "SELECT status, count(*) FROM checkpoints GROUP BY status"
                )
            }
        n, logical, payload = totals
        chunks, chunk_bytes = chunk_totals
        return {
            "checkpoints": n,
            "chunks": chunks,
            "logical_bytes": logical,
            "stored_bytes": payload + chunk_bytes,
            "by_process": by_process,
            "by_status": by_status,
        }

    def backup(self, dest: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy the store to ``dest`` while it stays in use (SQLite backup API + chunks).

        ``progress(done, total)`` is called as chunk files are copied.
        """
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = BlobDir(dest / "blobs", fsync=True)
        # Snapshot the database first: every chunk it references exists until gc,
        # and gc cannot run while we hold the shared lock.
        with self.blobs.gc_lock(exclusive=False):
            self.db.backup_to(dest / DB_NAME)
            snap = apsw.Connection(str(dest / DB_NAME))
            try:
                files = [r[0] for r in snap.execute("SELECT digest FROM chunks WHERE data IS NULL")]
                # The copy is another store: with the same id, sync would take its new
                # checkpoints (seqs reused after the copy point) for ones already synced.
                snap.execute(
                    "UPDATE store_meta SET value = lower(hex(randomblob(16))) "
                    "WHERE key = 'store_id'"
                )
            finally:
                snap.close()
            for i, d in enumerate(files, 1):
                target.write(d, self.blobs.read(d))
                if progress:
                    progress(i, len(files))

    # -- runs and the work-item ledger -------------------------------------------

    def _tick(self, conn: apsw.Connection) -> int:
        row: Any = conn.execute(
            "UPDATE ledger_clock SET v = v + 1 WHERE k = 1 RETURNING v"
        ).fetchone()
        return int(row[0])

    def create_run(self, run: RunRecord) -> RunRecord:
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id=?", (run.id,)).fetchone():
                raise InvalidInputError(f"run {run.id} exists already", run_id=run.id)
            changed = self._tick(conn)
            progress = run.progress or (None, None)
            conn.execute(
                "INSERT INTO runs(id, process_id, status, started_at, updated_at, finished_at, "
                "error, progress_done, progress_total, changed) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run.id,
                    run.process_id,
                    run.status.value,
                    to_micros(run.started_at),
                    to_micros(run.updated_at),
                    None if run.finished_at is None else to_micros(run.finished_at),
                    run.error,
                    progress[0],
                    progress[1],
                    changed,
                ),
            )
            seq = conn.last_insert_rowid()
        return run.replace(seq=seq, changed=changed)

    def update_run(self, run: RunRecord) -> RunRecord:
        with self.db.write() as conn:
            changed = self._tick(conn)
            progress = run.progress or (None, None)
            conn.execute(
                "UPDATE runs SET status=?, updated_at=?, finished_at=?, error=?, "
                "progress_done=?, progress_total=?, changed=? WHERE id=?",
                (
                    run.status.value,
                    to_micros(run.updated_at),
                    None if run.finished_at is None else to_micros(run.finished_at),
                    run.error,
                    progress[0],
                    progress[1],
                    changed,
                    run.id,
                ),
            )
            if conn.changes() == 0:
                raise RunNotFoundError(f"no run {run.id!r}", run_id=run.id)
        return self.get_run(run.id)

    def get_run(self, run_id: str) -> RunRecord:
        with translate_errors("reading run"):
            row = (
                self.db.read()
                .execute(f"SELECT {_RUN_COLS} FROM runs WHERE id=?", (run_id,))
                .fetchone()
            )
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        return _row_to_run(row)

    def list_runs(
        self,
        process_id: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[RunRecord]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if process_id is not None:
            where.append("process_id=?")
            args.append(process_id)
        if after_changed is not None:
            where.append("changed>?")
            args.append(after_changed)
        sql = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY changed ASC" if after_changed is not None else " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with translate_errors("listing runs"):
            return [_row_to_run(r) for r in self.db.read().execute(sql, args)]

    def _run_seq(self, conn: apsw.Connection, run_id: str) -> int | None:
        row: Any = conn.execute("SELECT seq FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else int(row[0])

    def mark_items(self, run_id: str, marks: Sequence[ItemMark]) -> int:
        with self.db.write() as conn:
            run = self._run_seq(conn, run_id)
            if run is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            changed = self._tick(conn)
            if marks:
                # The marks bind as they are (ItemMark is a tuple); run and changed are
                # ints made here, so they can be literals: no per-row Python work.
                conn.executemany(
                    "INSERT INTO items(grp, item, ok, state, error, run, attempts, changed) "
                    f"VALUES (?, ?, ?, ?, ?, {int(run)}, 1, {int(changed)}) "
                    "ON CONFLICT(run, grp, item) DO UPDATE SET ok=excluded.ok, "
                    "attempts=items.attempts+1, error=excluded.error, state=excluded.state, "
                    "changed=excluded.changed WHERE items.ok=0",
                    marks,
                )
        return changed

    def item_marks(self, run_id: str, group: str) -> tuple[set[str], dict[str, int]]:
        conn = self.db.read()
        with translate_errors("reading the item ledger"):
            run = self._run_seq(conn, run_id)
            if run is None:
                return set(), {}
            cur = conn.cursor()
            cur.row_trace = lambda _c, row: row[0]  # scalars, not 1-tuples: 1M ids per second
            done: set[str] = set(
                cur.execute("SELECT item FROM items WHERE run=? AND grp=? AND ok=1", (run, group))
            )
            failed = {
                item: attempts
                for item, attempts in conn.execute(
                    "SELECT item, attempts FROM items WHERE run=? AND grp=? AND ok=0", (run, group)
                )
            }
        return done, failed

    def list_items(
        self,
        run_id: str,
        group: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[ItemRecord]:
        conn = self.db.read()
        with translate_errors("reading the item ledger"):
            run = self._run_seq(conn, run_id)
            if run is None:
                return []
            sql = "SELECT grp, item, ok, attempts, error, state, changed FROM items WHERE run=?"
            args: builtins.list[Any] = [run]
            if group is not None:
                sql += " AND grp=?"
                args.append(group)
            if after_changed is not None:
                sql += " AND changed>?"
                args.append(after_changed)
            sql += " ORDER BY changed, grp, item"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            return [
                ItemRecord(run_id, g, i, bool(ok), n, err, st, ch)
                for g, i, ok, n, err, st, ch in conn.execute(sql, args)
            ]

    def close(self) -> None:
        self.db.close()

    # -- sync -------------------------------------------------------------------

    def store_id(self) -> str:
        with translate_errors("reading the store id"):
            row = (
                self.db.read()
                .execute("SELECT value FROM store_meta WHERE key='store_id'")
                .fetchone()
            )
        assert row is not None  # migration 2 inserts it
        return str(row[0])

    def records_after(
        self, seq: int, limit: int, process_id: str | None = None
    ) -> builtins.list[StoredRecord]:
        sql = f"SELECT {_COLS}, payload, manifest FROM checkpoints WHERE seq>?"
        args: list[Any] = [seq]
        if process_id is not None:
            sql += " AND process_id=?"
            args.append(process_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        conn = self.db.read()
        refs: dict[int, list[str]] = {}
        with translate_errors("reading checkpoints"):
            rows: list[Any] = conn.execute(sql, args).fetchall()
            if rows:
                for s, d in conn.execute(
                    "SELECT seq, digest FROM refs WHERE seq BETWEEN ? AND ?",
                    (rows[0][0], rows[-1][0]),
                ):
                    refs.setdefault(s, []).append(d)
        return [
            StoredRecord(_row_to_checkpoint(r), r[14], r[15], tuple(refs.get(r[0], ())))
            for r in rows
        ]

    def sync_mark(self, source: str) -> int:
        with translate_errors("reading sync marks"):
            row = (
                self.db.read()
                .execute("SELECT seq FROM sync_marks WHERE source=?", (source,))
                .fetchone()
            )
        return int(row[0]) if row else 0

    def import_records(self, records: Sequence[StoredRecord], source: str, mark: int) -> int:
        with self.db.write() as conn:
            present = self.has_records(r.checkpoint.id for r in records)
            fresh: dict[str, StoredRecord] = {}
            for r in records:
                if r.checkpoint.id not in present:
                    fresh.setdefault(r.checkpoint.id, r)
            digests = {d for r in fresh.values() for d in r.digests}
            missing = tuple(sorted(digests - self.has_chunks(digests)))
            if missing:
                raise MissingChunksError(f"{len(missing)} chunk(s) are not stored", digests=missing)
            parents = {r.checkpoint.parent_id for r in fresh.values()} - {None}
            known = self.has_records(p for p in parents if p is not None)
            for rec in fresh.values():
                cp = rec.checkpoint
                if cp.parent_id is not None and cp.parent_id not in known:
                    raise InvalidInputError(
                        f"parent checkpoint {cp.parent_id} does not exist",
                        checkpoint_id=cp.parent_id,
                    )
                progress = cp.progress or (None, None)
                conn.execute(
                    "INSERT INTO checkpoints(id, process_id, level, name, parent_id, status, "
                    "created_at, size, stored_size, checksum, metadata, progress_done, "
                    "progress_total, payload, manifest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        cp.id,
                        cp.process_id,
                        cp.level.value,
                        cp.name,
                        cp.parent_id,
                        cp.status.value,
                        to_micros(cp.created_at),
                        cp.size,
                        cp.stored_size,
                        cp.checksum,
                        dump_metadata(cp.metadata),
                        progress[0],
                        progress[1],
                        rec.payload,
                        rec.manifest,
                    ),
                )
                if rec.digests:
                    seq = conn.last_insert_rowid()
                    conn.executemany(
                        "INSERT OR IGNORE INTO refs(seq, digest) VALUES (?, ?)",
                        [(seq, d) for d in rec.digests],
                    )
                known.add(cp.id)
            conn.execute(
                "INSERT INTO sync_marks(source, seq) VALUES (?, ?) "
                "ON CONFLICT(source) DO UPDATE SET seq=max(seq, excluded.seq)",
                (source, mark),
            )
        return len(fresh)

    def export_ledger(
        self, after: int, process_id: str | None = None
    ) -> tuple[int, builtins.list[RunRecord], builtins.list[ItemRecord]]:
        where, args = ("", []) if process_id is None else (" AND r.process_id=?", [process_id])
        conn = self.db.read()
        with translate_errors("reading the item ledger"):
            conn.execute("BEGIN")  # one snapshot for the clock, the runs and the entries
            try:
                row: Any = conn.execute("SELECT v FROM ledger_clock WHERE k=1").fetchone()
                if int(row[0]) <= after:  # nothing changed: no scan of a big ledger
                    return int(row[0]), [], []
                items = [
                    ItemRecord(rid, g, i, bool(ok), n, err, st, ch)
                    for rid, g, i, ok, n, err, st, ch in conn.execute(
                        "SELECT r.id, i.grp, i.item, i.ok, i.attempts, i.error, i.state, "
                        "i.changed FROM items i JOIN runs r ON r.seq=i.run WHERE i.changed>?"
                        + where
                        + " ORDER BY i.changed, i.grp, i.item",
                        [after, *args],
                    )
                ]
                runs = [
                    _row_to_run(r)
                    for r in conn.execute(
                        f"SELECT {_RUN_COLS} FROM runs r WHERE (r.changed>? OR r.seq IN "
                        "(SELECT run FROM items WHERE changed>?))" + where + " ORDER BY r.seq",
                        [after, after, *args],
                    )
                ]
            finally:
                conn.execute("COMMIT")
        return int(row[0]), runs, items

    def import_ledger(
        self,
        runs: Sequence[RunRecord],
        items: Sequence[ItemRecord],
        source: str,
        mark: int,
    ) -> int:
        written = 0
        with self.db.write() as conn:
            tick = self._tick(conn)
            for run in runs:
                old: Any = conn.execute(
                    "SELECT updated_at FROM runs WHERE id=?", (run.id,)
                ).fetchone()
                progress = run.progress or (None, None)
                values = (
                    run.process_id,
                    run.status.value,
                    to_micros(run.started_at),
                    to_micros(run.updated_at),
                    None if run.finished_at is None else to_micros(run.finished_at),
                    run.error,
                    progress[0],
                    progress[1],
                    tick,
                    run.id,
                )
                if old is None:
                    conn.execute(
                        "INSERT INTO runs(process_id, status, started_at, updated_at, "
                        "finished_at, error, progress_done, progress_total, changed, id) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?)",
                        values,
                    )
                elif old[0] < to_micros(run.updated_at):
                    conn.execute(
                        "UPDATE runs SET process_id=?, status=?, started_at=?, updated_at=?, "
                        "finished_at=?, error=?, progress_done=?, progress_total=?, changed=? "
                        "WHERE id=?",
                        values,
                    )
                else:
                    continue
                written += 1
            seqs = {rid: self._run_seq(conn, rid) for rid in {it.run_id for it in items}}
            for it in items:
                run_seq = seqs[it.run_id]
                if run_seq is None:
                    raise RunNotFoundError(f"no run {it.run_id!r}", run_id=it.run_id)
                key = (run_seq, it.group, it.item_id)
                prev: Any = conn.execute(
                    "SELECT ok, attempts FROM items WHERE run=? AND grp=? AND item=?", key
                ).fetchone()
                if ledger_entry_wins(
                    it.ok, it.attempts, None if prev is None else (bool(prev[0]), prev[1])
                ):
                    conn.execute(
                        "INSERT OR REPLACE INTO items(run, grp, item, ok, attempts, error, "
                        "state, changed) VALUES (?,?,?,?,?,?,?,?)",
                        (*key, int(it.ok), it.attempts, it.error, it.state, tick),
                    )
                    written += 1
            conn.execute(
                "INSERT INTO sync_marks(source, seq) VALUES (?, ?) "
                "ON CONFLICT(source) DO UPDATE SET seq=max(seq, excluded.seq)",
                (source, mark),
            )
        return written
