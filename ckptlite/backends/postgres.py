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
from collections.abc import Callable, Iterable, Sequence
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
    StoreIOError,
)
from ..types import (
    DEFAULT_HASH,
    LEGACY_HASH,
    SLOT_INDEX_KEY,
    Checkpoint,
    Level,
    Status,
    StoredChunk,
    StoredRecord,
)
from . import _pg_schema, _query
from ._pg_conn import Conn, Connections, display_url, run, split_url
from ._pg_ledger import LedgerMixin
from ._pg_maintenance import PgMaintenanceMixin
from ._pg_rows import (
    TO_LEGACY_STATUS,
    batches,
    legacy_level,
    lock_key,
    record_summary,
    row_checkpoint,
    select_any,
)
from .base import BaseBackend, ListQuery, Staged, stamp_metadata_json, start_position

__all__ = ["PostgresBackend"]

T = TypeVar("T")

#: How PostgreSQL (the legacy table ``l`` and ckptlite's records ``r``) spells the filters.
POSTGRES = _query.Dialect(
    param="%s",
    process_id="r.process_id",
    level="r.level",
    name="r.name",
    status="l.status",
    parent="l.parent_id",
    created_at="l.created_at",
    seq="r.seq",
    status_value=TO_LEGACY_STATUS.__getitem__,
    time_value=lambda t: t,
    meta_equals=_query.postgres_meta_equals,
    has_tag=_query.postgres_has_tag,
)


class PostgresBackend(PgMaintenanceMixin, LedgerMixin, BaseBackend):
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

    commits_in_background = True  # a commit is several round trips to the server

    def __init__(
        self,
        url: str,
        *,
        table: str | None = None,
        prefix: str | None = None,
        hash_name: str = DEFAULT_HASH,
        readonly: bool = False,
        create: bool = True,
    ) -> None:
        conninfo, opts = split_url(url)
        #: Opened read-only: sessions refuse writes, and nothing is created or upgraded.
        self.readonly = readonly
        self._create = create and not readonly
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
        self._conns = Connections(conninfo, readonly=readonly)
        try:
            self._conns.get()
            self._store_id = self._run("setting up the schema", self._setup, write=not readonly)
        except StoreIOError as e:
            self._conns.close()
            raise ConfigError(e.message, hint=e.hint) from e
        except BaseException:
            self._conns.close()
            raise
        self._commit_key = lock_key("commit", self._store_id)

    # -- plumbing -----------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._n)

    def _run(
        self,
        what: str,
        fn: Callable[[Conn], T],
        *,
        write: bool = False,
        idempotent: bool = False,
        tx: bool = True,
    ) -> T:
        return run(self._conns, what, fn, write=write, idempotent=idempotent, tx=tx)

    def _setup(self, conn: Conn) -> str:
        """Find (or make and upgrade) ckptlite's tables; return the store's id.

        Raises:
            ConfigError: no store, and this open may not make one (read-only, or
                ``create=False``); the table lacks the legacy columns; a prefix clash.
            MigrationError: the tables are newer than this ckptlite, or older and
                the open is read-only.
        """
        if self._create:
            # One lock for every table: which prefix is free is decided under it.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("setup"),))
        self.prefix = self._choose_prefix(conn)
        self._n = _pg_schema.names(self.table, self.prefix)
        t = self._n["t"].as_string(conn)
        meta = self._n["meta"].as_string(conn)
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL", (t, meta)
        ).fetchone()
        t_found, meta_found = found if found is not None else (False, False)
        if not self._create and not (t_found and meta_found):
            raise ConfigError(
                f"no ckptlite store in PostgreSQL at {self.url} (table {self.table})",
                hint="Check the URL and ?ckptlite_table=; a read-only open never creates one: "
                "save to it once first.",
            )
        if not t_found:
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
        version = 0
        if meta_found:  # the legacy DDL above makes no ckptlite table
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
        if version < target and not self._create:
            raise MigrationError(
                f"ckptlite's tables in PostgreSQL are at version {version}; this ckptlite "
                f"needs {target}, and a read-only open does not upgrade them",
                hint="Open the store writable once (any ckptlite.open without readonly) to "
                "upgrade it, then read-only.",
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
            for batch in batches(wanted):
                conn.execute(flag, (batch,))

        if wanted or replace:
            self._run("flagging bad chunks", run, write=True, idempotent=True)

    def _has(
        self, table: str, col: str, values: Iterable[str], what: str, extra: str = "TRUE"
    ) -> set[str]:
        wanted = list(dict.fromkeys(values))
        q = self._q(f"SELECT {col} FROM {table} WHERE {col} = ANY(%s) AND {extra}")

        def run(conn: Conn) -> set[str]:
            return {r[0] for r in select_any(conn, q, wanted)}

        return self._run(what, run) if wanted else set()

    def read_chunk(self, digest: str) -> StoredChunk:
        q = self._q("SELECT size, codec, data FROM {chunks} WHERE digest = %s")
        row = self._run(f"reading chunk {digest}", lambda c: c.execute(q, (digest,)).fetchone())
        if row is None:
            raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest)
        return StoredChunk(digest, row[0], row[1], row[2])

    # -- records ------------------------------------------------------------------

    def commit(
        self, record: StoredRecord, staged: Sequence[Staged] = (), *, position: bool = False
    ) -> Checkpoint:
        for s in staged:
            s.release()  # rows committed by stage_chunks already
        cp = record.checkpoint
        summary = Jsonb(record_summary(cp))
        digests = sorted(set(record.digests))
        # With a position, the slot's counter moves in the same round trip as the
        # checks (a data-modifying CTE); a failed check rolls it back with the rest.
        check = self._q(
            (
                "WITH n AS (UPDATE {slot_counters} SET n = n + 1 WHERE process_id = %(pid)s "
                "AND level = %(level)s AND name = %(name)s RETURNING n) "
                if position
                else ""
            )
            + "SELECT EXISTS (SELECT 1 FROM {t} WHERE checkpoint_id = %(id)s), "
            "%(parent)s::text IS NULL OR EXISTS "
            "(SELECT 1 FROM {records} WHERE checkpoint_id = %(parent)s), "
            "ARRAY(SELECT d FROM unnest(%(digests)s::text[]) d "
            "WHERE NOT EXISTS (SELECT 1 FROM {chunks} c WHERE c.digest = d AND NOT c.bad)), "
            + ("(SELECT n FROM n)" if position else "NULL::bigint")
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
            "llevel": legacy_level(cp.level),
            "level": cp.level.value,
            "pid": cp.process_id,
            "name": cp.name,
            "summary": summary,
            "size": cp.size,
            "status": TO_LEGACY_STATUS[cp.status],
            "checksum": cp.checksum,
            "created": cp.created_at,
            "payload": record.payload,
            "manifest": record.manifest,
        }

        mine = self._q(
            "SELECT r.seq, coalesce(l.data_summary->'metadata'->>'"
            + SLOT_INDEX_KEY
            + "', '0') FROM "
            + self._FROM
            + " WHERE r.checkpoint_id = %s "
            "AND l.validation_checksum = %s AND l.created_at = %s"
        )
        tries = [0]
        taken: list[int] = []  # the position this commit took

        def run(conn: Conn) -> int:
            tries[0] += 1
            taken.clear()
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._commit_key,))
            row = conn.execute(check, args).fetchone()
            assert row is not None
            exists, parent_ok, missing, counted = row
            if exists and tries[0] > 1:
                # Redone after the connection died: maybe the first try did commit.
                ours = conn.execute(mine, (cp.id, cp.checksum, cp.created_at)).fetchone()
                if ours is not None:
                    if counted is not None:  # it took its position then: give this one back
                        conn.execute(
                            self._q(
                                "UPDATE {slot_counters} SET n = n - 1 WHERE process_id = %s "
                                "AND level = %s AND name = %s"
                            ),
                            (cp.process_id, cp.level.value, cp.name),
                        )
                    if position:
                        taken.append(int(ours[1]))
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
            if position:
                taken.append(
                    int(counted) if counted is not None else self._first_position(conn, cp)
                )
                args["summary"] = Jsonb(
                    record_summary(cp.copy(metadata={**cp.metadata, SLOT_INDEX_KEY: taken[0]}))
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
        if taken:
            stamped, _ = stamp_metadata_json(cp.metadata, taken[0])
            return cp.copy(seq=seq, metadata=stamped)
        return cp.copy(seq=seq)

    def _first_position(self, conn: Conn, cp: Checkpoint) -> int:
        """Start ``cp``'s slot counter (it has none yet) and return its first position."""
        slot = (cp.process_id, cp.level.value, cp.name)
        # The slot's first counted save: start past what older saves (or imports) stamped.
        got = conn.execute(
            self._q(
                "SELECT max(CASE WHEN jsonb_typeof(l.data_summary->'metadata'->%s) = 'number' "
                "AND (l.data_summary->'metadata'->>%s) ~ '^[0-9]+$' "
                "THEN (l.data_summary->'metadata'->>%s)::bigint END), count(*) "
                "FROM " + self._FROM + " WHERE r.process_id = %s AND r.level = %s AND r.name = %s"
            ),
            (SLOT_INDEX_KEY, SLOT_INDEX_KEY, SLOT_INDEX_KEY, *slot),
        ).fetchone()
        assert got is not None  # an aggregate: one row
        n = start_position(None if got[0] is None else int(got[0]), int(got[1]))
        conn.execute(
            self._q(
                "INSERT INTO {slot_counters} (process_id, level, name, n) VALUES (%s,%s,%s,%s)"
            ),
            (*slot, n),
        )
        return n

    def _select(self, where: str = "", tail: str = "", extra: str = "") -> sql.Composed:
        return self._q(f"SELECT {self._COLS}{extra} FROM {self._FROM} {where} {tail}")

    def get(self, checkpoint_id: str) -> Checkpoint:
        q = self._select("WHERE r.checkpoint_id = %s")
        row = self._run("reading a checkpoint", lambda c: c.execute(q, (checkpoint_id,)).fetchone())
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
            )
        return row_checkpoint(row)

    _RECORD_EXTRA = (
        ", r.payload, r.manifest, "
        "ARRAY(SELECT f.digest FROM {refs} f WHERE f.seq = r.seq ORDER BY f.digest)"
    )

    def _record(self, row: Sequence[Any]) -> StoredRecord:
        return StoredRecord(row_checkpoint(row), bytes(row[10]), bytes(row[11]), tuple(row[12]))

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
        conds, args = _query.where(
            POSTGRES,
            ListQuery(process_id=process_id, level=level, name=name, status=Status.VALID),
        )
        where = "WHERE " + " AND ".join(conds)
        q = self._select(where, "ORDER BY r.seq DESC LIMIT 1", extra=self._RECORD_EXTRA)
        row = self._run("reading a checkpoint", lambda c: c.execute(q, args).fetchone())
        return None if row is None else self._record(row)

    def list(self, query: ListQuery) -> builtins.list[Checkpoint]:
        where, args = _query.where(POSTGRES, query)
        tail = _query.order_limit(POSTGRES, query, args)
        q = self._select("WHERE " + " AND ".join(where) if where else "", tail)
        rows = self._run("listing checkpoints", lambda c: c.execute(q, args).fetchall())
        return [row_checkpoint(r) for r in rows]

    def set_status(self, checkpoint_id: str, status: Status) -> None:
        q = self._q(
            "UPDATE {t} SET status = %s, updated_at = now(), "
            "data_summary = jsonb_set(data_summary, '{{status}}', to_jsonb(%s::text)) "
            "WHERE checkpoint_id = %s "
            "AND EXISTS (SELECT 1 FROM {records} WHERE checkpoint_id = %s)"
        )
        st = Status(status)
        args = (TO_LEGACY_STATUS[st], st.value, checkpoint_id, checkpoint_id)
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
