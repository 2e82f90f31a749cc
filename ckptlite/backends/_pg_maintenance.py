"""The PostgreSQL store's upkeep: chunk listing, references, structure check, gc and stats.

A mixin of ``PostgresBackend``, split from it by responsibility (records and
chunks stay in ``postgres``, the ledger in ``_pg_ledger``, imports in
``_pg_import``). It imports nothing of ``postgres``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import errors as pgerr
from psycopg import sql

from ..errors import StoreError
from ..types import GcReport, Status
from ._pg_conn import Conn
from ._pg_rows import FROM_LEGACY_STATUS, select_any
from .base import StructureCheck

__all__ = ["PgMaintenanceMixin"]

T = TypeVar("T")


class PgMaintenanceMixin:
    """``PostgresBackend``'s upkeep methods (see ``Backend``)."""

    if TYPE_CHECKING:  # PostgresBackend's
        _FROM: str

        def _run(
            self,
            what: str,
            fn: Callable[[Conn], T],
            *,
            write: bool = False,
            idempotent: bool = False,
        ) -> T: ...

        def _q(self, text: str) -> sql.Composed: ...

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
            return {r[0] for r in select_any(conn, q, wanted)}

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
                FROM_LEGACY_STATUS.get(s, Status.ARCHIVED).value: count
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
