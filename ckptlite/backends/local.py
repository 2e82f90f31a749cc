"""The local backend: ``ckptlite.db`` (SQLite via apsw) plus ``blobs/``.

Chunks no larger than ``INLINE_MAX`` stored bytes live in the ``chunks`` table;
larger ones are files in the blob directory with a ``chunks`` row whose
``data`` is NULL. A file and its row are written together under the shared gc
lock, and gc removes both under the exclusive one; so a chunk row always has
its bytes, and ``refs`` (a foreign key to ``chunks``) means a committed record
never points at a missing chunk.
"""

# Performance targets cited as (P1)...(P17): bench/TARGETS.md.
from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import apsw

from .. import _faults
from .._paths import os_error
from .._sqlite import CACHE_SLOTS, Database, remember, translate_errors
from ..blobs import BlobDir
from ..errors import (
    CheckpointNotFoundError,
    ConfigError,
    InvalidInputError,
    MissingChunksError,
    ReadOnlyStoreError,
    StoreFullError,
    StoreLockedError,
)
from ..types import (
    DEFAULT_HASH,
    LEGACY_HASH,
    SLOT_INDEX_KEY,
    Checkpoint,
    Level,
    Status,
    StoredRecord,
)
from . import _query
from ._local_chunks import (
    CACHED_ROWS,
    CHUNK_ROW_TEXT,
    INLINE_MAX,
    LocalChunksMixin,
    NewChunkRow,
    insert_chunk_rows,
    keep_chunk_rows,
    settle,
)
from ._local_ledger import LocalLedgerMixin
from ._local_maintenance import LocalMaintenanceMixin, record_file
from ._local_schema import (
    CHECKPOINT_COLS,
    DB_NAME,
    MIGRATIONS,
    row_to_checkpoint,
    select_in,
)
from ._local_sync import LocalSyncMixin, insert_checkpoint, next_position
from .base import (
    BaseBackend,
    ListQuery,
    Staged,
    add_stamp,
    dump_metadata,
    load_metadata,
    to_micros,
    unstamped_json,
)

__all__ = [
    "DB_NAME",
    "INLINE_MAX",
    "MIGRATIONS",
    "LocalBackend",
    "forget_store_file",
    "store_writable",
]

_EMPTY_MANIFEST = b"\x90"  # msgpack of [], chunking's manifest of a state without buffers


def forget_store_file(db: Path) -> None:
    """Drop the file identity of the store database ``db`` (a closed copy, never a live store).

    The next open records its own without a new store id: an archive's store
    keeps its id however often it is unpacked, so importing it twice is a no-op.
    """
    conn = apsw.Connection(str(db))
    try:
        with translate_errors(f"writing {db}"):
            conn.execute("DELETE FROM store_meta WHERE key = 'store_file'")
    finally:
        conn.close()


#: How SQLite spells ``ListQuery``'s filters (``_query``).
SQLITE = _query.Dialect(
    param="?",
    process_id="process_id",
    level="level",
    name="name",
    status="status",
    parent="parent_id",
    created_at="created_at",
    seq="seq",
    status_value=lambda s: s.value,
    time_value=to_micros,
    meta_equals=_query.sqlite_meta_equals,
    has_tag=_query.sqlite_has_tag,
)

_CACHE_MAX_BYTES = 16 << 10  # a bigger payload + manifest is read again each time
#: The read-cache key of the stamp this thread last swept its kept packs at.
_SWEPT = "swept"
#: A record with its refs, and its packed chunks' rows as ``keep_chunk_rows`` reads them.
_RECORD_SQL = (
    f"SELECT {CHECKPOINT_COLS}, payload, manifest, "
    "(SELECT group_concat(digest, ',' ORDER BY digest) FROM refs "
    "WHERE refs.seq = checkpoints.seq), "
    f"(SELECT group_concat({CHUNK_ROW_TEXT}, ',') FROM refs r JOIN chunks c "
    "ON c.digest = r.digest WHERE r.seq = checkpoints.seq AND c.pack IS NOT NULL) "
    "FROM checkpoints WHERE id=?"
)


_FLAT_META: dict[str, dict[str, Any]] = {}  # metadata JSON -> its dict of scalars
_SCALARS = (str, int, float, bool, type(None))


def _metadata(meta: str) -> dict[str, Any]:
    """Return a new dict of metadata JSON ``meta``; a flat one is parsed once.

    A cached read hands out a Checkpoint of its own each call, with a dict the caller
    may change: a dict of scalars (a slot position, tags as strings) is copied, not
    parsed again (~2 us of a cached load, more with the CPU caches cold).
    """
    flat = _FLAT_META.get(meta)
    if flat is not None:
        return dict(flat)
    parsed = load_metadata(meta)
    if all(type(v) in _SCALARS for v in parsed.values()):
        if len(_FLAT_META) >= CACHE_SLOTS:
            _FLAT_META.clear()
        _FLAT_META[meta] = dict(parsed)
    return parsed


def _fresh(record: StoredRecord | None, meta: str) -> StoredRecord | None:
    """Return ``record`` with a new Checkpoint: the caller may change its metadata dict."""
    if record is None:
        return None
    # Every field but metadata is immutable.
    fresh = record.checkpoint.copy(metadata=_metadata(meta))
    return StoredRecord(fresh, record.payload, record.manifest, record.digests)


_LEVELS = tuple(m.value for m in Level)


def _per_level(
    cols: str, where: Sequence[str], args: Sequence[Any], each_level: bool, order: str, limit: int
) -> tuple[str, builtins.list[Any]]:
    """Return SQL + args for the first ``limit`` rows by seq of a process's filtered rows.

    With ``each_level`` (a process, no level given) it takes the first ``limit`` seqs
    of each level's index range and reads those rows in seq order: there is no index
    on (process_id, seq), and without this the newest of a process would sort all of
    its checkpoints. (A UNION of the four ranges' rows was slower: a sort per range.)
    """
    cond = " AND ".join(where)
    if not each_level:
        sql = f"SELECT {cols} FROM checkpoints WHERE {cond} ORDER BY seq {order} LIMIT ?"
        return sql, [*args, limit]
    branch = (
        f"SELECT seq FROM (SELECT seq FROM checkpoints WHERE {cond} AND level=? "
        f"ORDER BY seq {order} LIMIT ?)"
    )
    out: builtins.list[Any] = []
    for level in _LEVELS:
        out += [*args, level, limit]
    seqs = " UNION ALL ".join([branch] * len(_LEVELS))
    sql = f"SELECT {cols} FROM checkpoints WHERE seq IN ({seqs}) ORDER BY seq {order} LIMIT ?"
    return sql, [*out, limit]


def _top_seq(cond: str, args: Sequence[Any], each_level: bool) -> tuple[str, builtins.list[Any]]:
    """Return SQL + args for the newest seq matching ``cond`` (0 or no row: none).

    With ``each_level``: the largest of one index probe per level.
    """
    if not each_level:
        return f"SELECT seq FROM checkpoints WHERE {cond} ORDER BY seq DESC LIMIT 1", [*args]
    probe = (
        f"coalesce((SELECT seq FROM checkpoints WHERE {cond} AND level=? "
        "ORDER BY seq DESC LIMIT 1), 0)"
    )
    out: builtins.list[Any] = []
    for level in _LEVELS:
        out += [*args, level]
    return f"SELECT max({', '.join([probe] * len(_LEVELS))})", out


_SLOT_SQL: dict[tuple[str, Level | None, str | None], tuple[str, list[Any], str, list[Any]]] = {}


def _slot_sql(
    process_id: str, level: Level | None, name: str | None
) -> tuple[str, list[Any], str, list[Any]]:
    """Return a slot's WHERE and its args, and its newest-seq query and args (kept: ~10 us).

    The lists are shared: callers copy them before adding to them.
    """
    key = (process_id, level, name)
    hit = _SLOT_SQL.get(key)
    if hit is None:
        conds, args = _query.slot_where(SQLITE, process_id, level, name)
        where = " AND ".join(conds)
        hit = (where, args, *_top_seq(where, args, level is None))
        if len(_SLOT_SQL) >= CACHE_SLOTS * 4:
            _SLOT_SQL.clear()
        _SLOT_SQL[key] = hit
    return hit


def store_writable(root: Path) -> bool:
    """Tell whether this process may write the store at ``root`` (False on a read-only mount).

    ``os.access`` answers for root too: it reports EROFS for a read-only file system.
    """
    paths = [root, root / DB_NAME, root / "blobs", root / "blobs" / "packs"]
    return all(os.access(p, os.W_OK) for p in paths if os.path.lexists(p))


class LocalBackend(
    LocalChunksMixin, LocalSyncMixin, LocalMaintenanceMixin, LocalLedgerMixin, BaseBackend
):
    """A store directory: ``<root>/ckptlite.db`` and ``<root>/blobs/``.

    ``readonly=True`` writes nothing at all (see ``Database`` and ``BlobDir``):
    every write raises ReadOnlyStoreError.

    Raises:
        ConfigError: ``root`` is not a directory, or holds another program's SQLite file.
        ReadOnlyStoreError: ``root`` is not writable and ``readonly`` is False.
    """

    supports_backup = True

    def __init__(
        self,
        root: Path,
        *,
        durability: str = "safe",
        busy_timeout: float = 30.0,
        group_access: bool = False,
        migrations: Sequence[str] = MIGRATIONS,
        vfs: str | None = None,
        readonly: bool = False,
        hash_name: str = DEFAULT_HASH,
    ) -> None:
        self.root = root
        self.url = str(root)
        self.readonly = readonly
        self.hash_name = LEGACY_HASH
        if readonly:
            if not (root / DB_NAME).is_file():
                raise ConfigError(
                    f"no ckptlite store at {root}",
                    hint="Check the path; readonly=True never creates a store.",
                )
            self.db = Database(
                root / DB_NAME, migrations, busy_timeout=busy_timeout, vfs=vfs, readonly=True
            )
            self.blobs = BlobDir(root / "blobs", readonly=True)
            self.hash_name = self._read_hash() or LEGACY_HASH
            return
        self._make_root(root, 0o770 if group_access else 0o700)
        sync = {"none": "OFF", "safe": "NORMAL", "full": "FULL"}[durability]
        # The database first: a directory holding another program's ckptlite.db is
        # refused before anything (blobs/) is created in it.
        self.db = Database(
            root / DB_NAME,
            migrations,
            synchronous=sync,
            busy_timeout=busy_timeout,
            file_mode=0o660 if group_access else 0o600,
            vfs=vfs,  # the fault tests pass an apsw VFS shim that fails chosen writes
        )
        try:
            self.blobs = BlobDir(root / "blobs", fsync=durability != "none", group=group_access)
        except OSError as e:
            self.db.close()
            raise os_error(e, f"creating {root / 'blobs'}", ConfigError) from e
        except BaseException:
            self.db.close()
            raise
        self._claim_identity()
        self.hash_name = self._settle_hash(hash_name)

    @staticmethod
    def _make_root(root: Path, mode: int) -> None:
        """Create the store directory (mode not cut by the umask), or check the existing one."""
        try:
            root.mkdir(mode=mode, parents=True)
            os.chmod(root, mode)
        except FileExistsError:
            if not root.is_dir():
                raise ConfigError(
                    f"{root} exists and is not a directory",
                    hint="A store is a directory: pick another path.",
                ) from None
        except OSError as e:
            raise os_error(e, f"creating the store directory {root}", ConfigError) from e
        if not store_writable(root):
            exists = (root / DB_NAME).is_file()
            raise ReadOnlyStoreError(
                f"{root} is not writable (a read-only file system, or no write permission)",
                hint="Open it with readonly=True (`--readonly` on the command line) to read "
                "it, or make it writable."
                if exists
                else "Pick a directory this user can write on a writable disk.",
            )

    def _read_hash(self) -> str | None:
        with translate_errors("reading the store's hash"):
            row = self.db.read().execute("SELECT value FROM store_meta WHERE key='hash'").fetchone()
        return None if row is None else str(row[0])

    def _settle_hash(self, wanted: str) -> str:
        """Return the store's digest algorithm, recording ``wanted`` if the store is new.

        A store without the ``hash`` key was made before stores recorded one: it is
        SHA-256, unless it holds no checkpoint and no chunk yet (a new store, or one
        whose creating open stopped before this), which takes ``wanted``. Kept out of
        the numbered migrations: the key is all a new store needs.
        """
        if (found := self._read_hash()) is not None:
            return found
        empty = (
            "SELECT NOT EXISTS (SELECT 1 FROM checkpoints) AND NOT EXISTS (SELECT 1 FROM chunks)"
        )
        with translate_errors("reading the store's hash"):
            if not self.db.read().execute(empty).get:
                return LEGACY_HASH
        with self.db.write() as conn:  # again under the write lock: a racing opener
            row = conn.execute("SELECT value FROM store_meta WHERE key='hash'").fetchone()
            if row is not None:
                return str(row[0])
            if not conn.execute(empty).get:
                return LEGACY_HASH
            conn.execute("INSERT INTO store_meta(key, value) VALUES ('hash', ?)", (wanted,))
        return wanted

    def _claim_identity(self) -> None:
        """Take a new store id if this store is a copy (``cp -r``) of another.

        The store id keys sync's marks: a copy keeping it would have its new
        checkpoints (whose seqs the original also uses) skipped by every target.
        ``store_file`` records the database file's (device, inode); another file
        means a copy. A move on one file system keeps the inode; a move to another
        one looks like a copy, which only makes targets scan it once more. A
        store that cannot be written now (read-only, full, busy) keeps its id
        until an open can: this check never makes an open fail, and sync's mark
        check covers a copy meanwhile.
        """
        try:
            st = os.stat(self.root / DB_NAME)
        except OSError:
            return
        here = f"{st.st_dev}:{st.st_ino}"
        query = "SELECT value FROM store_meta WHERE key='store_file'"
        with translate_errors("reading the store id"):
            row = self.db.read().execute(query).fetchone()
        if row is not None and row[0] == here:
            return
        try:
            with self.db.write() as conn:
                row = conn.execute(query).fetchone()  # again, under the write lock
                if row is not None and row[0] != here:
                    conn.execute(
                        "UPDATE store_meta SET value = lower(hex(randomblob(16))) "
                        "WHERE key = 'store_id'"
                    )
                record_file(conn, here)
        except (apsw.ReadOnlyError, ReadOnlyStoreError, StoreFullError, StoreLockedError):
            pass

    def commit(
        self, record: StoredRecord, staged: Sequence[Staged] = (), *, position: bool = False
    ) -> Checkpoint:
        """Insert the staged chunk rows, the checkpoint and its refs in one transaction.

        Packs written for it are released after COMMIT, under the shared gc lock:
        a gc reading the rows before sees them flocked, one reading after sees the rows.

        Raises:
            MissingChunksError: a referenced chunk is not stored (nothing committed).
            InvalidInputError: the id exists already, or the parent does not.
        """
        rows = [r for s in staged for r in s.rows]
        packed = any(r[5] is not None for r in rows)
        locked = False
        try:
            with self.blobs.gc_lock(exclusive=False) if packed else contextlib.nullcontext():
                locked = True
                try:
                    cp = self._commit(record, rows, position)
                except BaseException:
                    settle(self.db.connection(), staged)
                    raise
                for s in staged:
                    s.release()
                return cp
        except BaseException:
            if not locked:  # the lock could not be taken: nothing was committed
                for s in staged:
                    s.discard()
            raise

    def _commit(
        self, record: StoredRecord, rows: Sequence[NewChunkRow], position: bool
    ) -> Checkpoint:
        cp = record.checkpoint
        # InvalidInputError before anything is written
        meta = unstamped_json(cp.metadata) if position else dump_metadata(cp.metadata)
        with self.db.write() as conn:
            stamped = None
            if position:
                n = next_position(conn, cp)
                meta = add_stamp(meta, n)
                stamped = {**cp.metadata, SLOT_INDEX_KEY: n}
            if rows:
                insert_chunk_rows(conn, rows)
            if record.digests:
                # Staged rows are in: present (or a concurrent copy's row is, never bad).
                # The others were found stored before; a gc may have taken them since.
                mine = {r[0] for r in rows}
                others = [d for d in record.digests if d not in mine]
                missing = tuple(set(others) - self.has_chunks(others)) if others else ()
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
                insert_checkpoint(conn, record, meta)
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
        return cp.copy(seq=seq, metadata=stamped)  # one copy: P1 counts microseconds

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
        """Return a checkpoint's record, from the cache while the store is unchanged.

        A record is immutable but for its status, and a status change is a commit,
        which changes the stamp (``Database.read_cached``). A load verifies the
        record's checksum and every chunk it reads, cached or not.
        """
        key = ("id", checkpoint_id)  # latest's keys are 3-tuples: no clash
        with translate_errors("reading checkpoint"):
            conn, cache, stamp = self.db.read_cached()
            hit = cache.get(key)
            if hit is not None and hit[0] == stamp:
                return _fresh(hit[3], hit[2])  # type: ignore[return-value]
            if cache.get(_SWEPT) != stamp:  # the store changed: gc may have deleted packs
                self.blobs.sweep_readers()  # (a pack is unlinked after its rows' commit)
                cache[_SWEPT] = stamp
            # The refs, and their packed chunks' rows, in the same statement: a load's
            # rows come from the cache then (a 1 MiB tile's record 28.5 -> 20.6 us with
            # its refs; cold caches 108 -> 77 us; P12, P14).
            row = conn.execute(_RECORD_SQL, (checkpoint_id,)).fetchone()
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        digests = tuple(row[16].split(",")) if row[16] else ()
        if row[17] and len(digests) <= CACHED_ROWS:
            keep_chunk_rows(cache, stamp, row[17])
        record = StoredRecord(row_to_checkpoint(row), row[14], row[15], digests)
        if len(record.payload) + len(record.manifest) <= _CACHE_MAX_BYTES:
            # Kept with its metadata JSON: each hit hands out a Checkpoint of its own
            # (``_fresh``), so this one, and its metadata dict, are the caller's.
            remember(cache, key, (stamp, record.checkpoint, row[11], record))
        return record

    def has_records(self, ids: Iterable[str]) -> set[str]:
        sql = "SELECT id FROM checkpoints WHERE id IN ({})"
        with translate_errors("reading checkpoints"):
            return {r[0] for r in select_in(self.db.read(), sql, ids)}

    def latest_record(
        self, process_id: str, level: Level | None, name: str | None
    ) -> StoredRecord | None:
        """Return the slot's latest VALID record with its payload (or None).

        ``latest`` + ``get_record`` in one call: what ``load_latest`` needs. While
        the store is unchanged (``Database.read_cached``), the record read last time
        is returned again without a query, with a fresh ``Checkpoint`` (its metadata
        dict is the caller's). Its bytes are immutable, and a load verifies them.
        """
        key = (process_id, level, name)
        with translate_errors("reading checkpoint"):
            conn, cache, stamp = self.db.read_cached()
            hit = cache.get(key)
            if hit is not None and hit[0] == stamp and (hit[1] is None or hit[3] is not None):
                return _fresh(hit[3], hit[2])
            record, meta = self._read_latest(conn, process_id, level, name, True)
        cp = None if record is None else record.checkpoint
        small = record is None or len(record.payload) + len(record.manifest) <= _CACHE_MAX_BYTES
        # A bigger record's checkpoint is kept (for ``latest``); its bytes are read again.
        remember(cache, key, (stamp, cp, meta, record if small else None))
        return _fresh(record, meta)

    def _read_latest(
        self,
        conn: apsw.Connection,
        process_id: str,
        level: Level | None,
        name: str | None,
        payload: bool,
    ) -> tuple[StoredRecord | None, str]:
        """Read the slot's latest VALID record and its metadata JSON.

        Without ``payload`` the record's payload and manifest are empty and its
        digests not read: what ``latest`` needs.
        """
        where, args, top_sql, top_args = _slot_sql(process_id, level, name)
        cols = f"{CHECKPOINT_COLS}, payload, manifest" if payload else CHECKPOINT_COLS
        # The slot's newest seq from its index, then that row by rowid: two short
        # statements cost ~25% less than one filtered on status. Only when the
        # newest is not VALID (or went away meanwhile) does the filtered one run.
        top = conn.execute(top_sql, top_args).fetchone()
        if top is None or not top[0]:
            return None, ""
        row = conn.execute(f"SELECT {cols} FROM checkpoints WHERE seq=?", top).fetchone()
        if row is None or row[6] != Status.VALID.value:
            row = conn.execute(
                *_per_level(cols, [where, "status='valid'"], args, level is None, "DESC", 1)
            ).fetchone()
            if row is None:
                return None, ""
        if not payload:
            return StoredRecord(row_to_checkpoint(row), b"", b"", ()), row[11]
        digests: tuple[str, ...] = ()
        if row[15] != _EMPTY_MANIFEST:
            digests = tuple(
                r[0] for r in conn.execute("SELECT digest FROM refs WHERE seq=?", (row[0],))
            )
        return StoredRecord(row_to_checkpoint(row), row[14], row[15], digests), row[11]

    def latest(self, process_id: str, level: Level | None, name: str | None) -> Checkpoint | None:
        """Return the slot's latest VALID checkpoint, without reading its payload.

        Served from the cache ``latest_record`` fills (whatever the record's size)
        while the store is unchanged.
        """
        key = (process_id, level, name)
        with translate_errors("reading checkpoint"):
            conn, cache, stamp = self.db.read_cached()
            hit = cache.get(key)
            if hit is not None and hit[0] == stamp:
                cp: Checkpoint | None = hit[1]
                return None if cp is None else cp.copy(metadata=_metadata(hit[2]))
            record, meta = self._read_latest(conn, process_id, level, name, False)
        cp = None if record is None else record.checkpoint
        remember(cache, key, (stamp, cp, meta, None))
        return None if cp is None else cp.copy(metadata=load_metadata(meta))

    def list(self, query: ListQuery) -> list[Checkpoint]:
        where, args = _query.where(SQLITE, query)
        if query.limit is not None and query.process_id is not None:
            order = "ASC" if query.ascending else "DESC"
            sql, args = _per_level(
                CHECKPOINT_COLS, where, args, query.level is None, order, query.limit
            )
        else:
            sql = f"SELECT {CHECKPOINT_COLS} FROM checkpoints"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " " + _query.order_limit(SQLITE, query, args)
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

    def close(self) -> None:
        self.blobs.close()
        self.db.close()

    # -- sync -------------------------------------------------------------------
