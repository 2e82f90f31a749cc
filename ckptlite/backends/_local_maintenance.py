"""The local backend's maintenance: structure check, gc with pack compaction, stats, backup.

A mixin of ``LocalBackend`` (like the ledger): it works on ``self.db`` and
``self.blobs`` and reads chunks through ``self.read_chunk``. gc follows the
write path's rules from the other side: rows go first, in a transaction made
durable before any file is unlinked; a pack a live writer holds is never cut.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from .. import _faults
from .._sqlite import Database, translate_errors
from ..blobs import BlobDir
from ..errors import CorruptCheckpointError, StoreFullError, StoreLayoutError
from ..types import GcReport, StoredChunk
from ._local_schema import DB_NAME, MAX_CHUNK, PACK_MAX, select_in
from .base import StructureCheck

__all__ = ["LocalMaintenanceMixin", "record_file"]

_Moved = tuple[str, str, bytes | memoryview]  # digest, the pack it leaves, its stored bytes


@dataclass
class _Packs:
    """What gc did to the pack files, and the bytes that left the disk."""

    deleted: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    freed: int = 0


def record_file(conn: apsw.Connection, identity: str) -> None:
    """Record the store database's file identity (device:inode) in ``store_meta``."""
    conn.execute(
        "INSERT INTO store_meta(key, value) VALUES ('store_file', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (identity,),
    )


def _refuse_unsafe(unsafe: Sequence[str], live: set[str] | None, what: str = "gc") -> None:
    """Raise StoreLayoutError for what ``unsafe`` lists, except links no live row names.

    A pack or chunk file that is a link is only junk once no row needs it: gc
    unlinks the link itself, never what it points to. ``live`` None: refuse all.

    Raises:
        StoreLayoutError: a symlink or foreign file stands where the store keeps its own.
    """
    bad = [p for p in unsafe if live is None or p.count("/") != 2 or p.rsplit("/", 1)[1] in live]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise StoreLayoutError(
            f"{what} refused: {', '.join(bad[:3])}{more} is a symlink or not what ckptlite "
            "keeps there (nothing was changed)",
            path=bad[0],
        )


class LocalMaintenanceMixin:
    """``check``, ``gc``, ``stats`` and ``backup`` of a local store."""

    db: Database
    blobs: BlobDir

    def read_chunk(self, digest: str) -> StoredChunk:
        raise NotImplementedError  # LocalBackend's

    def iter_chunk_digests(self) -> Iterator[str]:
        with translate_errors("listing chunks"):
            rows: list[Any] = self.db.read().execute("SELECT digest FROM chunks").fetchall()
        yield from (r[0] for r in rows)

    def checkpoints_using(self, digests: Iterable[str]) -> set[str]:
        sql = (
            "SELECT DISTINCT c.id FROM refs r JOIN checkpoints c ON c.seq=r.seq "
            "WHERE r.digest IN ({})"
        )
        with translate_errors("reading chunk references"):
            return {r[0] for r in select_in(self.db.read(), sql, digests)}

    def check(self) -> StructureCheck:
        # A verify starts here and must read what is on disk, not what loads kept
        # (a read-only view commits nothing that would change the cache's stamp).
        self.db.forget_reads()
        conn = self.db.read()
        with translate_errors("checking the store"):
            # Rows before files: a pack written after this read may look unused
            # (reported, never removed here), but a row read here has its file.
            file_rows: list[Any] = conn.execute(
                "SELECT digest FROM chunks WHERE data IS NULL AND pack IS NULL"
            ).fetchall()
            pack_rows: list[Any] = conn.execute(
                "SELECT digest, pack, pack_offset + stored_size FROM chunks WHERE pack IS NOT NULL"
            ).fetchall()
            unreferenced = [
                r[0]
                for r in conn.execute(
                    "SELECT digest FROM chunks c WHERE NOT EXISTS "
                    "(SELECT 1 FROM refs r WHERE r.digest=c.digest)"
                )
            ]
            # A chunk file whose row now names a pack (a repaired chunk) is stray too.
            indexed = {d for (d,) in file_rows}
            on_disk = dict(self.blobs.packs())
            absent = [d for (d,) in file_rows if not self.blobs.exists(d)]
            absent += [d for d, pack, end in pack_rows if on_disk.get(pack, -1) < end]
            missing: dict[str, list[str]] = {}
            sql = (
                "SELECT c.id, r.digest FROM refs r JOIN checkpoints c ON c.seq=r.seq "
                "WHERE r.digest IN ({})"
            )
            for cid, d in select_in(conn, sql, absent):
                missing.setdefault(cid, []).append(d)
        stray = [d for d, _ in self.blobs.digests() if d not in indexed]
        used = {pack for _, pack, _ in pack_rows}
        # A pack a live writer holds open may have no committed rows yet: not an orphan.
        unused = [p for p in set(on_disk) - used if not self.blobs.pack_busy(p)]
        return StructureCheck(
            {k: tuple(v) for k, v in missing.items()},
            tuple(sorted(set(unreferenced + stray))),
            tuple(sorted(unused)),
            tuple(self.blobs.unsafe()),
        )

    def gc(self, dry_run: bool = False) -> GcReport:
        with self.blobs.gc_lock(exclusive=True):
            unsafe = self.blobs.unsafe()
            conn = self.db.connection()
            # Durable: every unlink below needs the rows naming the file gone for good,
            # including ones an earlier commit dropped (a delete, a repaired chunk's move):
            # after a power loss, a row back from the dead must not name a missing file.
            ctx = contextlib.nullcontext(conn) if dry_run else self.db.write(conn, durable=True)
            with ctx:
                rows: list[Any] = conn.execute(
                    "SELECT digest, stored_size, data IS NULL AND pack IS NULL, data IS NOT NULL "
                    "FROM chunks c "
                    "WHERE NOT EXISTS (SELECT 1 FROM refs r WHERE r.digest=c.digest)"
                ).fetchall()
                dead = {r[0] for r in rows}
                if not dry_run:
                    conn.executemany("DELETE FROM chunks WHERE digest=?", [(d,) for d in dead])
                indexed = {  # chunks that live in files of their own
                    r[0]
                    for r in conn.execute(
                        "SELECT digest FROM chunks WHERE data IS NULL AND pack IS NULL"
                    )
                }
                live: dict[str, int] = {}
                ends: dict[str, int] = {}  # where each pack's last live chunk ends
                for digest, pack, stored, offset in conn.execute(
                    "SELECT digest, pack, stored_size, pack_offset FROM chunks "
                    "WHERE pack IS NOT NULL"
                ):
                    if digest not in dead:  # a dry run deleted nothing
                        live[pack] = live.get(pack, 0) + stored
                        ends[pack] = max(ends.get(pack, 0), offset + stored)
                # Refused before COMMIT, so a refusing gc changes nothing.
                _refuse_unsafe(unsafe, set(live) | (indexed - dead))
            _faults.point("gc.after_delete")
            # Unlink only after a durable COMMIT: a rolled-back delete must still find its files.
            # Dead chunks in packs are counted where their bytes leave the disk (a pack
            # deleted, cut or compacted), never as rows: that counted them twice.
            inline = sum(size for _, size, _, in_db in rows if in_db)
            freed = 0
            removed: list[str] = [r[0] for r in rows]
            for digest, _, is_file, _ in rows:
                if is_file:
                    freed += self.blobs.remove(digest) if not dry_run else self.blobs.size(digest)
            for digest, size in list(self.blobs.digests()):
                if digest not in indexed and digest not in removed:
                    removed.append(digest)
                    freed += size
                    if not dry_run:
                        self.blobs.remove(digest)
            packs = self._collect_packs(live, ends, dry_run)
            freed += packs.freed
            temps = []
            for name, size in self.blobs.collect_temps(dry_run):
                temps.append(name)
                freed += size
        return GcReport(
            tuple(sorted(removed)),
            tuple(sorted(temps)),
            freed,
            dry_run,
            tuple(sorted(packs.deleted + packs.compacted)),
            tuple(sorted(packs.deleted)),
            tuple(sorted(packs.compacted)),
            tuple(sorted(packs.truncated)),
            inline,
        )

    def _collect_packs(self, live: dict[str, int], ends: dict[str, int], dry_run: bool) -> _Packs:
        """Delete packs nothing uses; cut dead tails; rewrite packs mostly dead.

        Return the packs deleted, compacted and cut, and the bytes freed (what the
        disk gives back; a dry run predicts the same). Called under the exclusive gc
        lock. A pack a live writer holds open is left
        alone. A dead tail (bytes past the last live chunk: appended by a save that
        crashed or failed, or whose chunks died) is cut off in place: no row names
        it, and no writer appends to a pack it does not hold. A rewrite writes the
        live chunks into a new pack, moves their rows in one transaction, and only
        then unlinks the old pack: a crash leaves an unused pack (the next gc
        removes it), never a row pointing at nothing.
        """
        out = _Packs()
        sparse: dict[str, int] = {}  # name -> dead bytes
        for name, size in list(self.blobs.packs()):
            if self.blobs.pack_busy(name):
                continue  # a live writer appends to it (and its dead tail waits for it)
            if name not in live:
                out.deleted.append(name)
                out.freed += size if dry_run else self.blobs.remove_pack(name)
                continue
            if size > ends[name]:
                out.truncated.append(name)
                out.freed += (
                    size - ends[name] if dry_run else self.blobs.truncate_pack(name, ends[name])
                )
                size = ends[name]
            if live[name] * 2 < size:
                sparse[name] = size - live[name]
        if dry_run:
            out.compacted += sparse
            out.freed += sum(sparse.values())
            return out
        batch: builtins.list[_Moved] = []
        olds: builtins.list[str] = []
        pending = 0  # dead bytes of ``olds``
        for name, dead in sparse.items():
            try:
                with translate_errors("reading the chunk index"):
                    rows = (
                        self.db.read()
                        .execute(
                            "SELECT digest FROM chunks WHERE pack=? ORDER BY pack_offset", (name,)
                        )
                        .fetchall()
                    )
                chunks = [(str(d), name, self.read_chunk(str(d)).data) for (d,) in rows]
            except CorruptCheckpointError:
                continue  # damaged: left as it is for verify to report
            batch += chunks
            olds.append(name)
            pending += dead
            if sum(len(c[2]) for c in batch) >= PACK_MAX:
                if not self._rewrite_packs(batch, olds):
                    return out  # the disk is full: compaction waits for room
                out.compacted += olds
                out.freed += pending
                batch, olds, pending = [], [], 0
        if olds and self._rewrite_packs(batch, olds):
            out.compacted += olds
            out.freed += pending
        return out

    def _rewrite_packs(self, batch: builtins.list[_Moved], olds: builtins.list[str]) -> bool:
        """Move ``batch``'s chunks into a new pack, then unlink the packs ``olds``.

        Return False, changing nothing, when the disk has no room for the new pack.
        """
        if batch:
            try:
                new, offsets = self.blobs.write_pack([data for _, _, data in batch])
            except StoreFullError:
                return False  # its temp file is gone; the old packs stay as they are
            with self.db.write(durable=True) as conn:  # on disk before the old packs go
                conn.executemany(
                    "UPDATE chunks SET pack=?, pack_offset=? WHERE digest=? AND pack=?",
                    [(new, o, d, old) for (d, old, _), o in zip(batch, offsets, strict=True)],
                )
        _faults.point("gc.after_repack")
        for name in olds:
            self.blobs.remove_pack(name)
        return True

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
            # SQLite keeps an item's encoded state as it is: logical = stored.
            items, item_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(state)),0) FROM items WHERE ok"
            ).fetchone() or (0, 0)
        n, logical, payload = totals
        chunks, chunk_bytes = chunk_totals
        return {
            "checkpoints": n,
            "chunks": chunks,
            "logical_bytes": logical,
            "stored_bytes": payload + chunk_bytes,
            "by_process": by_process,
            "by_status": by_status,
            "item_results": {
                "count": items,
                "logical_bytes": item_bytes,
                "stored_bytes": item_bytes,
            },
        }

    def backup(self, dest: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy the store to ``dest`` while it stays in use (SQLite backup API + chunks).

        ``progress(done, total)`` is called as chunk files are copied.

        Raises:
            StoreLayoutError: a symlink (or a foreign file) stands in the blob tree.
        """
        # Snapshot the database first: every chunk it references exists until gc,
        # and gc cannot run while we hold the shared lock.
        with self.blobs.gc_lock(exclusive=False):
            _refuse_unsafe(self.blobs.unsafe(), None, "backup")
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = BlobDir(dest / "blobs", fsync=True)
            self.db.backup_to(dest / DB_NAME)
            snap = apsw.Connection(str(dest / DB_NAME))
            try:
                files = [
                    r[0]
                    for r in snap.execute(
                        "SELECT digest FROM chunks WHERE data IS NULL AND pack IS NULL"
                    )
                ]
                packs = [
                    r[0]
                    for r in snap.execute(
                        "SELECT DISTINCT pack FROM chunks WHERE pack IS NOT NULL ORDER BY pack"
                    )
                ]
                # The copy is another store: with the same id, sync would take its new
                # checkpoints (seqs reused after the copy point) for ones already synced.
                snap.execute(
                    "UPDATE store_meta SET value = lower(hex(randomblob(16))) "
                    "WHERE key = 'store_id'"
                )
                st = os.stat(dest / DB_NAME)  # its own file: a copy of the backup is a copy
                record_file(snap, f"{st.st_dev}:{st.st_ino}")
            finally:
                snap.close()
            total = len(files) + len(packs)
            for i, d in enumerate(files, 1):
                target.write(d, self.blobs.read(d, MAX_CHUNK))
                if progress:
                    progress(i, total)
            for i, name in enumerate(packs, len(files) + 1):
                target.copy_pack(self.blobs, name)
                if progress:
                    progress(i, total)
