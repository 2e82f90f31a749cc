"""The postgres backend: ckptlite on PostgreSQL, living with ``pipeline_checkpoints``.

Every ckptlite checkpoint is one row of the legacy table (created with its
exact DDL when absent, see ``_pg_schema``) plus one row of ``ckptlite_records``
(seq, payload, manifest). Field mapping:

============================  ==================================================
ckptlite                      pipeline_checkpoints
============================  ==================================================
id                            checkpoint_id
process_id                    processor_name
level (STAGE)                 level ('phase'; the others keep their names)
parent_id                     parent_id
status                        status: VALID 'valid', CREATED 'created',
                              CORRUPTED 'corrupted', ARCHIVED 'deleted' (the
                              CHECK has no 'archived'); the true status is also
                              in data_summary.status
checksum                      validation_checksum (SHA-256 hex: 64 chars)
created_at                    created_at
size                          file_size_bytes (and data_summary.size)
--                            file_path = 'ckptlite://<id>'
name, size, stored_size,      data_summary (JSONB), with "ckptlite": 1
metadata, progress
seq, payload, manifest        ckptlite_records; chunks in ckptlite_chunks
============================  ==================================================

So the legacy query ``WHERE processor_name=%s AND level=%s AND status='valid'
ORDER BY created_at DESC LIMIT 1`` returns the newest usable checkpoint.

Rows ckptlite did not write (no ``ckptlite_records`` row) are never changed,
listed, loaded or synced: to ckptlite they do not exist. Their ids still
cannot be reused.

Record commits take one transaction-level advisory lock per store, so seq
order is commit order (sync's high-water marks rely on it). Connections
(``_pg_conn``): one per thread, opened lazily; a forked child opens its own and
never touches the parent's. A dropped connection is replaced: reads and writes
that are safe to redo (chunks, commits, which first look for their own earlier
try, sync imports, status changes) are redone with a short backoff; the others
raise ``StoreIOError`` (their transaction was rolled back).
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC
from typing import Any, TypeVar

from psycopg import errors as pgerr
from psycopg import sql
from psycopg.types.json import Jsonb

from ..errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
    MigrationError,
    MissingChunksError,
    StoreError,
    StoreIOError,
)
from ..types import (
    DEFAULT_HASH,
    LEGACY_HASH,
    Checkpoint,
    GcReport,
    Level,
    Status,
    StoredChunk,
    StoredRecord,
)
from . import _pg_schema
from ._pg_conn import Conn, Connections, display_url, run, split_url
from ._pg_ledger import LedgerMixin
from .base import ListQuery, Staged, StructureCheck, dump_metadata

__all__ = ["PostgresBackend"]

T = TypeVar("T")

_TO_LEGACY_LEVEL = {Level.STAGE: "phase"}
_FROM_LEGACY_LEVEL = {"phase": Level.STAGE}
_TO_LEGACY_STATUS = {
    Status.VALID: "valid",
    Status.CREATED: "created",
    Status.CORRUPTED: "corrupted",
    Status.ARCHIVED: "deleted",
}
_FROM_LEGACY_STATUS = {v: k for k, v in _TO_LEGACY_STATUS.items()}
_BATCH = 5000  # ids per ANY(%s) query


def _legacy_level(level: Level) -> str:
    return _TO_LEGACY_LEVEL.get(level, level.value)


def _lock_key(*parts: str) -> int:
    """Return a signed 64-bit advisory lock key for ``parts``."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _summary(cp: Checkpoint, *, check: bool = True) -> dict[str, Any]:
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


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    seq, cid, pid, level, name, parent, status, created, ds, checksum = row[:10]
    progress = ds.get("progress")
    return Checkpoint(
        id=cid,
        process_id=pid,
        level=Level(level),
        name=name,
        parent_id=parent,
        seq=seq,
        status=_FROM_LEGACY_STATUS.get(status, Status.ARCHIVED),
        created_at=created.astimezone(UTC),
        size=int(ds.get("size", 0)),
        stored_size=int(ds.get("stored_size", 0)),
        checksum=checksum or "",
        metadata=ds.get("metadata") or {},
        progress=None if progress is None else (int(progress[0]), int(progress[1])),
    )


class PostgresBackend(LedgerMixin):
    """Records in ``pipeline_checkpoints`` + ckptlite's tables; chunks as BYTEA rows.

    ``url`` is a libpq URL; ``?ckptlite_table=NAME`` and ``?ckptlite_prefix=P``
    choose the legacy table and the prefix of ckptlite's own tables. Without a
    prefix: ``ckptlite_`` for the default table, ``ckptlite_<NAME>_`` for
    another one (``_pg_schema.derived_prefix``), unless ``ckptlite_``'s tables
    already serve that table (stores made before the prefix was derived); and
    for the default table ``ckptlite_pipeline_checkpoints_`` when they serve
    another. So several tables share one database, each with its own store.

    Raises:
        ConfigError: the server cannot be reached, the table lacks needed columns,
            a name is too long for PostgreSQL, or the prefix's tables serve
            another table.
        MigrationError: ckptlite's tables were made by a newer ckptlite.

    >>> import ckptlite  # doctest: +SKIP
    >>> mgr = ckptlite.open("postgresql://postgres@127.0.0.1/test")  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        table: str | None = None,
        prefix: str | None = None,
        hash_name: str = DEFAULT_HASH,
    ) -> None:
        conninfo, opts = split_url(url)
        #: The store's digest algorithm: ``hash_name`` for new tables, else the recorded one.
        self.hash_name = hash_name
        self._new_hash = hash_name
        self.url = display_url(url)
        self.table = table or opts.get("table") or _pg_schema.DEFAULT_TABLE
        self._given_prefix = prefix or opts.get("prefix")
        # Before connecting: a name PostgreSQL would cut is refused with nothing made.
        _pg_schema.check_names([self.table], f"the table name {self.table!r}")
        if self._given_prefix is not None:
            _pg_schema.check_names(
                _pg_schema.own_names(self._given_prefix), f"the prefix {self._given_prefix!r}"
            )
        self.prefix = self._given_prefix or _pg_schema.DEFAULT_PREFIX  # settled by _setup
        self._n = _pg_schema.names(self.table, self.prefix)
        self._conns = Connections(conninfo)
        try:
            self._conns.get()
            self._store_id = self._run("setting up the schema", self._setup, write=True)
        except StoreIOError as e:
            self._conns.close()
            raise ConfigError(e.message, hint=e.hint) from e
        except BaseException:
            self._conns.close()
            raise
        self._commit_key = _lock_key("commit", self._store_id)

    # -- plumbing -----------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._n)

    def _run(
        self, what: str, fn: Callable[[Conn], T], *, write: bool = False, idempotent: bool = False
    ) -> T:
        return run(self._conns, what, fn, write=write, idempotent=idempotent)

    def _setup(self, conn: Conn) -> str:
        # One lock for every table: which prefix is free is decided under it.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("setup"),))
        self.prefix = self._choose_prefix(conn)
        self._n = _pg_schema.names(self.table, self.prefix)
        t = self._n["t"].as_string(conn)
        if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone() == (None,):
            _pg_schema.check_names(
                _pg_schema.legacy_names(self.table), f"the table name {self.table!r}"
            )
            for stmt in _pg_schema.LEGACY_DDL:
                conn.execute(self._q(stmt))
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped",
                (t,),
            )
        }
        if not cols >= _pg_schema.LEGACY_COLUMNS:
            raise ConfigError(
                f"table {self.table} lacks columns {sorted(_pg_schema.LEGACY_COLUMNS - cols)}",
                hint="Point ckptlite at a pipeline_checkpoints table (?ckptlite_table=NAME).",
            )
        meta = self._n["meta"].as_string(conn)
        version = 0
        if conn.execute("SELECT to_regclass(%s)", (meta,)).fetchone() != (None,):
            row = conn.execute(
                self._q("SELECT value FROM {meta} WHERE key='schema_version'")
            ).fetchone()
            version = int(row[0]) if row else 0
        target = len(_pg_schema.MIGRATIONS)
        if version > target:
            raise MigrationError(
                f"ckptlite's tables in PostgreSQL are at version {version}; "
                f"this ckptlite knows up to {target}"
            )
        for step in _pg_schema.MIGRATIONS[version:]:
            for stmt in step:
                conn.execute(self._q(stmt))
        if version != target:
            conn.execute(
                self._q(
                    "INSERT INTO {meta} (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ),
                (str(target),),
            )
        if version == 0:  # tables made just now, in this transaction: a new store
            conn.execute(
                self._q(
                    "INSERT INTO {meta} (key, value) VALUES ('hash', %s) "
                    "ON CONFLICT (key) DO NOTHING"
                ),
                (self._new_hash,),
            )
        # Tables made before stores recorded their algorithm are SHA-256.
        row = conn.execute(self._q("SELECT value FROM {meta} WHERE key='hash'")).fetchone()
        self.hash_name = LEGACY_HASH if row is None else str(row[0])
        row = conn.execute(self._q("SELECT value FROM {meta} WHERE key='store_id'")).fetchone()
        assert row is not None
        return str(row[0])

    def _choose_prefix(self, conn: Conn) -> str:
        """Return the prefix of this table's ckptlite tables (see the class docstring).

        Raises:
            ConfigError: the given prefix's tables serve another table.
        """
        if self._given_prefix is not None:
            serves = self._serves(conn, self._given_prefix)
            if serves:
                raise ConfigError(
                    f"ckptlite's tables with prefix {self._given_prefix!r} belong to the "
                    f"table {serves}, not {self.table!r}; nothing was created",
                    hint="Give this table its own ?ckptlite_prefix=P (or leave it out: "
                    "ckptlite then derives one from the table name).",
                )
            return self._given_prefix
        default = _pg_schema.DEFAULT_PREFIX
        serves = self._serves(conn, default)
        if serves == "" or (serves is None and self.table == _pg_schema.DEFAULT_TABLE):
            return default
        derived = _pg_schema.derived_prefix(self.table)
        serves = self._serves(conn, derived)
        if serves:
            raise ConfigError(
                f"ckptlite's tables with prefix {derived!r} belong to the table {serves}, "
                f"not {self.table!r}; nothing was created",
                hint="Give this table its own ?ckptlite_prefix=P.",
            )
        return derived

    def _serves(self, conn: Conn, prefix: str) -> str | None:
        """Return the table ``prefix``'s tables serve: "" for this one, None for none.

        Their records table's foreign key names it; None also when it has none.
        """
        records = sql.Identifier(prefix + "records").as_string(conn)
        row = conn.execute(
            "SELECT c.confrelid::regclass::text, (c.confrelid = to_regclass(%s)) IS TRUE "
            "FROM pg_constraint c WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' "
            "AND c.confrelid <> c.conrelid",
            (self._n["t"].as_string(conn), records),
        ).fetchone()
        if row is None:
            return None
        return "" if row[1] else str(row[0])

    _COLS = (
        "r.seq, r.checkpoint_id, r.process_id, r.level, r.name, l.parent_id, l.status, "
        "l.created_at, l.data_summary, l.validation_checksum"
    )
    _FROM = "{records} r JOIN {t} l ON l.checkpoint_id = r.checkpoint_id"

    # -- chunks -------------------------------------------------------------------

    def stage_chunks(self, chunks: Iterable[StoredChunk]) -> Staged:
        # Committed at once: a chunk row's transaction of its own costs a round trip
        # either way, and joins no lock the checkpoint's commit takes.
        self.write_chunks(chunks)
        return Staged()

    def write_chunks(self, chunks: Iterable[StoredChunk]) -> None:
        # Copied as they come (a stream's chunk may be a view of a buffer its producer
        # reuses for the next one), and sorted: two writers inserting overlapping sets
        # never deadlock.
        rows = sorted(
            {
                c.digest: (c.digest, c.size, c.codec, c.stored_size, bytes(c.data)) for c in chunks
            }.values()
        )
        if not rows:
            return
        # A chunk flagged bad is replaced: this copy repairs it.
        q = self._q(
            "INSERT INTO {chunks} (digest, size, codec, stored_size, data) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (digest) DO UPDATE SET "
            "size = EXCLUDED.size, codec = EXCLUDED.codec, stored_size = EXCLUDED.stored_size, "
            "data = EXCLUDED.data, bad = false WHERE {chunks}.bad"
        )

        def run(conn: Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(q, rows)

        self._run("writing chunks", run, write=True, idempotent=True)

    def has_chunks(self, digests: Iterable[str]) -> set[str]:
        return self._has("{chunks}", "digest", digests, "reading the chunk index", "NOT bad")

    def mark_bad_chunks(self, digests: Iterable[str], replace: bool = False) -> None:
        """Flag chunks whose stored bytes failed verification (``replace``: only these).

        ``has_chunks`` stops counting a flagged chunk, so the next save of the same
        bytes stores it again, which repairs every checkpoint using it.
        """
        wanted = sorted(set(digests))
        clear = self._q("UPDATE {chunks} SET bad = false WHERE bad")
        flag = self._q("UPDATE {chunks} SET bad = true WHERE digest = ANY(%s) AND NOT bad")

        def run(conn: Conn) -> None:
            if replace:
                conn.execute(clear)
            for i in range(0, len(wanted), _BATCH):
                conn.execute(flag, (wanted[i : i + _BATCH],))

        if wanted or replace:
            self._run("flagging bad chunks", run, write=True, idempotent=True)

    def _has(
        self, table: str, col: str, values: Iterable[str], what: str, extra: str = "TRUE"
    ) -> set[str]:
        wanted = list(dict.fromkeys(values))
        q = self._q(f"SELECT {col} FROM {table} WHERE {col} = ANY(%s) AND {extra}")

        def run(conn: Conn) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(wanted), _BATCH):
                found.update(r[0] for r in conn.execute(q, (wanted[i : i + _BATCH],)))
            return found

        return self._run(what, run) if wanted else set()

    def read_chunk(self, digest: str) -> StoredChunk:
        q = self._q("SELECT size, codec, data FROM {chunks} WHERE digest = %s")
        row = self._run(f"reading chunk {digest}", lambda c: c.execute(q, (digest,)).fetchone())
        if row is None:
            raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest)
        return StoredChunk(digest, row[0], row[1], row[2])

    # -- records ------------------------------------------------------------------

    def commit(self, record: StoredRecord, staged: Sequence[Staged] = ()) -> Checkpoint:
        for s in staged:
            s.release()  # rows committed by stage_chunks already
        cp = record.checkpoint
        summary = Jsonb(_summary(cp))
        digests = sorted(set(record.digests))
        check = self._q(
            "SELECT EXISTS (SELECT 1 FROM {t} WHERE checkpoint_id = %(id)s), "
            "%(parent)s::text IS NULL OR EXISTS "
            "(SELECT 1 FROM {records} WHERE checkpoint_id = %(parent)s), "
            "ARRAY(SELECT d FROM unnest(%(digests)s::text[]) d "
            "WHERE NOT EXISTS (SELECT 1 FROM {chunks} c WHERE c.digest = d AND NOT c.bad))"
        )
        insert = self._q(
            "WITH l AS (INSERT INTO {t} (checkpoint_id, level, parent_id, processor_name, "
            "data_summary, file_path, file_size_bytes, status, validation_checksum, created_at, "
            "updated_at) VALUES (%(id)s, %(llevel)s, %(parent)s, %(pid)s, %(summary)s, "
            "%(path)s, %(size)s, %(status)s, %(checksum)s, %(created)s, now()) "
            "RETURNING checkpoint_id), "
            "r AS (INSERT INTO {records} (checkpoint_id, process_id, level, name, payload, "
            "manifest) SELECT checkpoint_id, %(pid)s, %(level)s, %(name)s, %(payload)s, "
            "%(manifest)s FROM l RETURNING seq), "
            "f AS (INSERT INTO {refs} (seq, digest) SELECT r.seq, d FROM r, "
            "unnest(%(digests)s::text[]) d) "
            "SELECT seq FROM r"
        )
        args = {
            "id": cp.id,
            "path": f"ckptlite://{cp.id}",
            "parent": cp.parent_id,
            "digests": digests,
            "llevel": _legacy_level(cp.level),
            "level": cp.level.value,
            "pid": cp.process_id,
            "name": cp.name,
            "summary": summary,
            "size": cp.size,
            "status": _TO_LEGACY_STATUS[cp.status],
            "checksum": cp.checksum,
            "created": cp.created_at,
            "payload": record.payload,
            "manifest": record.manifest,
        }

        mine = self._q(
            "SELECT r.seq FROM " + self._FROM + " WHERE r.checkpoint_id = %s "
            "AND l.validation_checksum = %s AND l.created_at = %s"
        )
        tries = [0]

        def run(conn: Conn) -> int:
            tries[0] += 1
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._commit_key,))
            row = conn.execute(check, args).fetchone()
            assert row is not None
            exists, parent_ok, missing = row
            if exists and tries[0] > 1:
                # Redone after the connection died: maybe the first try did commit.
                ours = conn.execute(mine, (cp.id, cp.checksum, cp.created_at)).fetchone()
                if ours is not None:
                    return int(ours[0])
            if missing:
                raise MissingChunksError(
                    f"{len(missing)} chunk(s) of {cp.id} are not stored", digests=tuple(missing)
                )
            if exists:
                raise InvalidInputError(f"checkpoint {cp.id} exists already", checkpoint_id=cp.id)
            if not parent_ok:
                raise InvalidInputError(
                    f"parent checkpoint {cp.parent_id} does not exist", checkpoint_id=cp.parent_id
                )
            try:
                with conn.transaction():  # a savepoint: a lost race rolls back cleanly
                    seq = conn.execute(insert, args).fetchone()
            except pgerr.ForeignKeyViolation as e:  # a concurrent gc took a chunk
                raise MissingChunksError(
                    f"chunks of {cp.id} vanished during commit", digests=tuple(digests)
                ) from e
            except pgerr.UniqueViolation as e:  # written by something that holds no lock
                raise InvalidInputError(
                    f"checkpoint {cp.id} exists already", checkpoint_id=cp.id
                ) from e
            assert seq is not None
            return int(seq[0])

        seq = self._run(f"committing {cp.id}", run, write=True, idempotent=True)
        return cp.replace(seq=seq)

    def _select(self, where: str = "", tail: str = "", extra: str = "") -> sql.Composed:
        return self._q(f"SELECT {self._COLS}{extra} FROM {self._FROM} {where} {tail}")

    def get(self, checkpoint_id: str) -> Checkpoint:
        q = self._select("WHERE r.checkpoint_id = %s")
        row = self._run("reading a checkpoint", lambda c: c.execute(q, (checkpoint_id,)).fetchone())
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        return _checkpoint(row)

    _RECORD_EXTRA = (
        ", r.payload, r.manifest, "
        "ARRAY(SELECT f.digest FROM {refs} f WHERE f.seq = r.seq ORDER BY f.digest)"
    )

    def _record(self, row: Sequence[Any]) -> StoredRecord:
        return StoredRecord(_checkpoint(row), bytes(row[10]), bytes(row[11]), tuple(row[12]))

    def get_record(self, checkpoint_id: str) -> StoredRecord:
        if not isinstance(checkpoint_id, str):
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r}")
        q = self._select("WHERE r.checkpoint_id = %s", extra=self._RECORD_EXTRA)
        row = self._run("reading a checkpoint", lambda c: c.execute(q, (checkpoint_id,)).fetchone())
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        return self._record(row)

    def has_records(self, ids: Iterable[str]) -> set[str]:
        return self._has("{records}", "checkpoint_id", ids, "reading checkpoints")

    def latest(self, process_id: str, level: Level | None, name: str | None) -> Checkpoint | None:
        found = self.list(
            ListQuery(process_id=process_id, level=level, name=name, status=Status.VALID, limit=1)
        )
        return found[0] if found else None

    def latest_record(
        self, process_id: str, level: Level | None, name: str | None
    ) -> StoredRecord | None:
        """Return the slot's latest VALID record with its payload, in one query (or None)."""
        where, args = "WHERE r.process_id = %s AND l.status = 'valid'", [process_id]
        if level is not None:
            where += " AND r.level = %s"
            args.append(level.value)
        if name is not None:
            where += " AND r.name = %s"
            args.append(name)
        q = self._select(where, "ORDER BY r.seq DESC LIMIT 1", extra=self._RECORD_EXTRA)
        row = self._run("reading a checkpoint", lambda c: c.execute(q, args).fetchone())
        return None if row is None else self._record(row)

    def list(self, query: ListQuery) -> builtins.list[Checkpoint]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        for col, val in (
            ("r.process_id", query.process_id),
            ("r.level", query.level.value if query.level else None),
            ("r.name", query.name),
            ("l.status", _TO_LEGACY_STATUS[query.status] if query.status else None),
            ("l.parent_id", query.parent),
        ):
            if val is not None:
                where.append(f"{col} = %s")
                args.append(val)
        if query.since is not None:
            where.append("l.created_at >= %s")
            args.append(query.since)
        if query.after_seq is not None:
            where.append("r.seq > %s")
            args.append(query.after_seq)
        tail = "ORDER BY r.seq " + ("ASC" if query.ascending else "DESC")
        if query.limit is not None:
            tail += " LIMIT %s"
            args.append(query.limit)
        q = self._select("WHERE " + " AND ".join(where) if where else "", tail)
        rows = self._run("listing checkpoints", lambda c: c.execute(q, args).fetchall())
        return [_checkpoint(r) for r in rows]

    def set_status(self, checkpoint_id: str, status: Status) -> None:
        q = self._q(
            "UPDATE {t} SET status = %s, updated_at = now(), "
            "data_summary = jsonb_set(data_summary, '{{status}}', to_jsonb(%s::text)) "
            "WHERE checkpoint_id = %s "
            "AND EXISTS (SELECT 1 FROM {records} WHERE checkpoint_id = %s)"
        )
        st = Status(status)
        args = (_TO_LEGACY_STATUS[st], st.value, checkpoint_id, checkpoint_id)
        n = self._run(
            "changing a status", lambda c: c.execute(q, args).rowcount, write=True, idempotent=True
        )
        if n == 0:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        tree = self._q(
            "WITH RECURSIVE tree(id) AS (SELECT checkpoint_id FROM {records} "
            "WHERE checkpoint_id = %s UNION SELECT l.checkpoint_id FROM {t} l "
            "JOIN tree ON l.parent_id = tree.id) SELECT id FROM tree"
        )
        delete = self._q("DELETE FROM {t} WHERE checkpoint_id = %s")

        def run(conn: Conn) -> builtins.list[str]:
            ids = [r[0] for r in conn.execute(tree, (checkpoint_id,))]
            if ids:
                try:
                    with conn.transaction():
                        conn.execute(delete, (checkpoint_id,))
                except pgerr.ForeignKeyViolation as e:
                    raise InvalidInputError(
                        f"checkpoint {checkpoint_id} is still referenced by another table: {e}",
                        hint="Clear the referencing rows (e.g. processing_steps."
                        "last_checkpoint_id) first; nothing was deleted.",
                        checkpoint_id=checkpoint_id,
                    ) from e
            return ids

        ids = self._run("deleting checkpoints", run, write=True)
        if not ids:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        return ids

    # -- maintenance --------------------------------------------------------------

    def iter_chunk_digests(self) -> Iterator[str]:
        q = self._q("SELECT digest FROM {chunks}")
        rows = self._run("listing chunks", lambda c: c.execute(q).fetchall())
        yield from (r[0] for r in rows)

    def checkpoints_using(self, digests: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(digests))
        q = self._q(
            "SELECT DISTINCT r.checkpoint_id FROM {refs} f JOIN {records} r ON r.seq = f.seq "
            "WHERE f.digest = ANY(%s)"
        )

        def run(conn: Conn) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(wanted), _BATCH):
                found.update(r[0] for r in conn.execute(q, (wanted[i : i + _BATCH],)))
            return found

        return self._run("reading chunk references", run) if wanted else set()

    _ORPHANS = "FROM {chunks} c WHERE NOT EXISTS (SELECT 1 FROM {refs} f WHERE f.digest = c.digest)"

    def check(self) -> StructureCheck:
        # refs.digest is a foreign key to chunks: a record cannot lose a chunk here.
        q = self._q("SELECT c.digest " + self._ORPHANS + " ORDER BY c.digest")
        rows = self._run("checking the store", lambda c: c.execute(q).fetchall())
        return StructureCheck({}, tuple(r[0] for r in rows))

    def gc(self, dry_run: bool = False) -> GcReport:
        if dry_run:
            q = self._q("SELECT c.digest, c.stored_size " + self._ORPHANS)
        else:
            q = self._q("DELETE " + self._ORPHANS + " RETURNING c.digest, c.stored_size")

        def run(conn: Conn) -> builtins.list[Any]:
            return conn.execute(q).fetchall()

        for attempt in range(5):
            try:
                rows = self._run("collecting garbage", run, write=not dry_run)
                break
            except StoreError as e:
                # A save referenced a chunk while we deleted it: the FK refused; redo.
                if attempt == 4 or not isinstance(e.__cause__, pgerr.ForeignKeyViolation):
                    raise
        return GcReport(
            tuple(sorted(r[0] for r in rows)), (), sum(r[1] for r in rows), dry_run=dry_run
        )

    def stats(self) -> dict[str, Any]:
        def run(conn: Conn) -> dict[str, Any]:
            n, logical, payload = conn.execute(
                self._q(
                    "SELECT count(*), coalesce(sum((l.data_summary->>'size')::bigint), 0), "
                    "coalesce(sum(length(r.payload)), 0) FROM " + self._FROM
                )
            ).fetchone() or (0, 0, 0)
            chunks, chunk_bytes = conn.execute(
                self._q("SELECT count(*), coalesce(sum(stored_size), 0) FROM {chunks}")
            ).fetchone() or (0, 0)
            by_process: dict[str, dict[str, int]] = {}
            for pid, level, count in conn.execute(
                self._q("SELECT process_id, level, count(*) FROM {records} GROUP BY 1, 2")
            ):
                by_process.setdefault(pid, {})[level] = count
            by_status = {
                _FROM_LEGACY_STATUS.get(s, Status.ARCHIVED).value: count
                for s, count in conn.execute(
                    self._q("SELECT l.status, count(*) FROM " + self._FROM + " GROUP BY 1")
                )
            }
            (legacy,) = conn.execute(
                self._q(
                    "SELECT count(*) FROM {t} l WHERE NOT EXISTS "
                    "(SELECT 1 FROM {records} r WHERE r.checkpoint_id = l.checkpoint_id)"
                )
            ).fetchone() or (0,)
            # pg_column_size: the bytes a value takes as stored (TOAST may compress it).
            items, item_logical, item_stored = conn.execute(
                self._q(
                    "SELECT count(*), coalesce(sum(octet_length(state)), 0), "
                    "coalesce(sum(pg_column_size(state)), 0) FROM {items} WHERE ok"
                )
            ).fetchone() or (0, 0, 0)
            return {
                "checkpoints": n,
                "chunks": chunks,
                "logical_bytes": int(logical),
                "stored_bytes": int(payload) + int(chunk_bytes),
                "item_results": {
                    "count": items,
                    "logical_bytes": int(item_logical),
                    "stored_bytes": int(item_stored),
                },
                "by_process": by_process,
                "by_status": by_status,
                "legacy_rows": legacy,
            }

        return self._run("reading stats", run)

    def close(self) -> None:
        self._conns.close()

    # -- sync -----------------------------------------------------------------------

    def store_id(self) -> str:
        return self._store_id

    def records_after(
        self, seq: int, limit: int, process_id: str | None = None
    ) -> builtins.list[StoredRecord]:
        where, args = "WHERE r.seq > %s", [seq]
        if process_id is not None:
            where += " AND r.process_id = %s"
            args.append(process_id)  # type: ignore[arg-type]
        q = self._select(where, "ORDER BY r.seq LIMIT %s", extra=self._RECORD_EXTRA)
        rows = self._run("reading checkpoints", lambda c: c.execute(q, [*args, limit]).fetchall())
        return [self._record(r) for r in rows]

    def sync_mark(self, source: str) -> int:
        q = self._q("SELECT seq FROM {sync_marks} WHERE source = %s")
        row = self._run("reading sync marks", lambda c: c.execute(q, (source,)).fetchone())
        return int(row[0]) if row else 0

    def sync_mark_id(self, source: str) -> str | None:
        q = self._q("SELECT checkpoint_id FROM {sync_marks} WHERE source = %s")
        row = self._run("reading sync marks", lambda c: c.execute(q, (source,)).fetchone())
        return None if row is None or row[0] is None else str(row[0])

    def import_records(
        self,
        records: Sequence[StoredRecord],
        source: str,
        mark: int,
        mark_id: str | None = None,
        *,
        reset: bool = False,
    ) -> int:
        from ._pg_import import import_records

        return self._run(  # staged rows already present are skipped: safe to redo
            "importing checkpoints",
            lambda conn: import_records(self, conn, records, source, mark, mark_id, reset),
            write=True,
            idempotent=True,
        )
