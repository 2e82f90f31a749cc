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
)
from ..types import (
    Checkpoint,
    GcReport,
    Level,
    Status,
    StoredChunk,
    StoredRecord,
)
from ._local_ledger import LocalLedgerMixin
from ._local_schema import CHECKPOINT_COLS, MIGRATIONS, row_to_checkpoint
from .base import (
    ListQuery,
    StructureCheck,
    dump_metadata,
    to_micros,
)

__all__ = ["DB_NAME", "INLINE_MAX", "MIGRATIONS", "LocalBackend"]

DB_NAME = "ckptlite.db"
_CODEC_RAW = 0  # chunking.CODEC_RAW (backends do not import the manager's modules)
_EMPTY_MANIFEST = b"\x90"  # msgpack of [], chunking's manifest of a state without buffers
INLINE_MAX = 64 * 1024


def _insert_checkpoint(conn: apsw.Connection, record: StoredRecord, metadata_json: str) -> None:
    cp = record.checkpoint
    progress = cp.progress or (None, None)
    conn.execute(
        "INSERT INTO checkpoints(id, process_id, level, name, parent_id, status, created_at, "
        "size, stored_size, checksum, metadata, progress_done, progress_total, payload, "
        "manifest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
            metadata_json,
            progress[0],
            progress[1],
            record.payload,
            record.manifest,
        ),
    )


class LocalBackend(LocalLedgerMixin):
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
            try:
                _insert_checkpoint(conn, record, meta)
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
                .execute(f"SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE id=?", (checkpoint_id,))
                .fetchone()
            )
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        return row_to_checkpoint(row)

    def get_record(self, checkpoint_id: str) -> StoredRecord:
        with translate_errors("reading checkpoint"):
            conn = self.db.read()
            row = conn.execute(
                f"SELECT {CHECKPOINT_COLS}, payload, manifest FROM checkpoints WHERE id=?",
                (checkpoint_id,),
            ).fetchone()
            if row is None:
                raise CheckpointNotFoundError(
                    f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
                )
            digests = tuple(
                r[0] for r in conn.execute("SELECT digest FROM refs WHERE seq=?", (row[0],))
            )
        return StoredRecord(row_to_checkpoint(row), row[14], row[15], digests)

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
                f"SELECT {CHECKPOINT_COLS}, payload, manifest FROM checkpoints WHERE seq=?", top
            ).fetchone()
            if row is None or row[6] != Status.VALID.value:
                row = conn.execute(
                    f"SELECT {CHECKPOINT_COLS}, payload, manifest FROM checkpoints WHERE {where} "
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
        return StoredRecord(row_to_checkpoint(row), row[14], row[15], digests)

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
        sql = f"SELECT {CHECKPOINT_COLS} FROM checkpoints"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq " + ("ASC" if query.ascending else "DESC")
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        with translate_errors("listing checkpoints"):
            return [row_to_checkpoint(r) for r in self.db.read().execute(sql, args)]

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
        sql = f"SELECT {CHECKPOINT_COLS}, payload, manifest FROM checkpoints WHERE seq>?"
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
            StoredRecord(row_to_checkpoint(r), r[14], r[15], tuple(refs.get(r[0], ())))
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
                _insert_checkpoint(conn, rec, dump_metadata(cp.metadata))
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
