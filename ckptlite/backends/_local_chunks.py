"""The local store's chunks: pack files and inline rows, written, looked up and read back.

A mixin of ``LocalBackend``, split from it by responsibility: the records are in
``local``, the ledger in ``_local_ledger``, upkeep in ``_local_maintenance``.
Chunks no larger than ``INLINE_MAX`` stored bytes live in the ``chunks`` table;
larger ones are appended to pack files (``_packs``) named by their row.
"""

# Performance targets cited as (P1)...(P17): bench/TARGETS.md.
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import apsw

from .._packs import appender
from .._sqlite import Database, remember, translate_errors
from ..blobs import BlobDir
from ..errors import CorruptCheckpointError
from ..types import StoredChunk
from ._local_schema import MAX_CHUNK, PACK_MAX, select_in
from .base import Staged

__all__ = ["INLINE_MAX", "LocalChunksMixin", "insert_chunk_rows", "settle"]

_CODEC_RAW = 0  # chunking.CODEC_RAW (backends do not import the manager's modules)
INLINE_MAX = 64 * 1024
#: Bytes compared at each end of a chunk before the whole of it (chunk_equals).
_EDGE = 4096

_scratch_local = threading.local()


def _scratch(n: int) -> bytearray:
    # One read buffer per thread and size: a fresh 1 MiB bytearray costs page
    # faults on every use, about what the comparison it serves saves.
    bufs: dict[int, bytearray] | None = getattr(_scratch_local, "bufs", None)
    if bufs is None:
        bufs = _scratch_local.bufs = {}
    buf = bufs.get(n)
    if buf is None:
        bufs.clear()  # the last chunk of a buffer is smaller: keep one size only
        buf = bufs[n] = bytearray(n)
    return buf


def _check_declared(digest: str, size: int, stored: int, offset: int | None) -> None:
    """Refuse a chunk row whose sizes no chunk has, before anything is allocated for it.

    Raises:
        CorruptCheckpointError: a size beyond the largest chunk, or a negative offset.
    """
    if not (0 <= size <= MAX_CHUNK and 0 <= stored <= MAX_CHUNK and (offset or 0) >= 0):
        raise CorruptCheckpointError(
            f"chunk {digest} declares {size} bytes, {stored} stored at offset {offset}: "
            "more than any chunk holds",
            digest=digest,
        )


#: A chunk's index row: size, codec, inline data, pack, offset in it, stored size.
_ChunkRow = tuple[int, int, bytes | None, str | None, int, int]
#: A load's chunk rows are kept (per connection, under the store's stamp) for
#: records of up to this many chunks: tiles, not big states.
CACHED_ROWS = 16
#: A packed chunk's row as one text (digest size codec pack offset stored), for a
#: statement that reads a record's rows with it (``keep_chunk_rows``).
CHUNK_ROW_TEXT = (
    "c.digest || ' ' || c.size || ' ' || c.codec || ' ' || c.pack || ' ' "
    "|| c.pack_offset || ' ' || c.stored_size"
)


def keep_chunk_rows(cache: dict[Any, Any], stamp: tuple[int, int], text: str) -> None:
    """Keep the packed chunk rows in ``text`` (``CHUNK_ROW_TEXT``s, comma-separated).

    A row that does not parse (a damaged index) is not kept: ``chunk_rows`` reads
    it, and the read reports what is wrong with it.
    """
    for item in text.split(","):
        try:
            digest, size, codec, pack, offset, stored = item.split(" ")
            row: _ChunkRow = (int(size), int(codec), None, pack, int(offset), int(stored))
        except ValueError:
            continue
        remember(cache, ("chunk", digest), (stamp, row))


#: A new chunk's row: digest, size, stored size, codec, inline data, pack, offset in it.
NewChunkRow = tuple[str, int, int, int, bytes | None, str | None, int | None]


def insert_chunk_rows(conn: apsw.Connection, rows: Sequence[NewChunkRow]) -> None:
    # A chunk flagged bad is replaced: this copy repairs it.
    conn.executemany(
        "INSERT INTO chunks(digest, size, stored_size, codec, data, pack, "
        "pack_offset) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(digest) DO "
        "UPDATE SET size=excluded.size, stored_size=excluded.stored_size, "
        "codec=excluded.codec, data=excluded.data, pack=excluded.pack, "
        "pack_offset=excluded.pack_offset, bad=0 WHERE chunks.bad=1",
        rows,
    )


def settle(conn: apsw.Connection, staged: Sequence[Staged]) -> None:
    """Let go of the packs of a failed commit: cut their appended bytes off if it rolled back.

    A COMMIT that failed may leave its transaction open (a later COMMIT could take
    the rows): then the bytes stay, dead space for gc at worst.
    """
    rolled_back = conn.getautocommit()
    for s in staged:
        s.discard() if rolled_back else s.release()


class LocalChunksMixin:
    """``LocalBackend``'s chunk methods (see ``Backend``); they use its database and blob tree."""

    db: Database
    blobs: BlobDir

    def write_chunks(self, chunks: Iterable[StoredChunk]) -> None:
        """Store chunks and commit their index rows (``stage_chunks`` + a transaction)."""
        staged = self.stage_chunks(chunks)
        locked = False
        try:
            with self.blobs.gc_lock(exclusive=False):  # rows in before gc may see packs free
                locked = True
                try:
                    if staged.rows:
                        with self.db.write() as conn:
                            insert_chunk_rows(conn, staged.rows)
                except BaseException:
                    settle(self.db.connection(), [staged])
                    raise
                staged.release()
        except BaseException:
            if not locked:  # the lock could not be taken: nothing was committed
                staged.discard()
            raise

    def stage_chunks(self, chunks: Iterable[StoredChunk]) -> Staged:
        """Store chunks: big ones appended to an open pack as they come, small ones kept for
        their rows. Return their rows, which ``commit`` inserts with the checkpoint.

        A list is checked against the index first; a stream (the manager's, which
        checks as it hashes) is written as it comes, so writing overlaps hashing.
        The packs stay flocked until the Staged is released: gc leaves them alone.
        """
        # On an error the appender cuts each pack back to what was durable before.
        with self.blobs.gc_lock(exclusive=False), appender(self.blobs, PACK_MAX) as packs:
            if isinstance(chunks, Sequence):
                present = self.has_chunks(c.digest for c in chunks)
                chunks = [c for c in chunks if c.digest not in present]
            rows: list[NewChunkRow] = []
            seen: set[str] = set()
            for c in chunks:
                if c.digest in seen:
                    continue
                seen.add(c.digest)
                if c.stored_size <= INLINE_MAX:
                    rows.append(
                        (c.digest, c.size, c.stored_size, c.codec, bytes(c.data), None, None)
                    )
                    continue
                pack, offset = packs.add(c.data)
                rows.append((c.digest, c.size, c.stored_size, c.codec, None, pack, offset))
            packs.sync()  # one fdatasync per pack written (no new file unless one was needed)
        return Staged(rows, packs.release, packs.discard)

    def has_chunks(self, digests: Iterable[str]) -> set[str]:
        sql = "SELECT digest FROM chunks WHERE digest IN ({}) AND bad=0"
        with translate_errors("reading chunk index"):
            return {r[0] for r in select_in(self.db.read(), sql, digests)}

    def mark_bad_chunks(self, digests: Iterable[str], replace: bool = False) -> None:
        """Flag chunks whose stored bytes failed verification (``replace``: only these).

        ``has_chunks`` stops counting a flagged chunk, so the next save of
        the same bytes stores it again: that repairs every checkpoint using it
        (``verify(full=True)`` then marks them VALID). A full verify passes
        ``replace``, clearing the flag of chunks that read well again.
        """
        with self.db.write() as conn:
            if replace:
                conn.execute("UPDATE chunks SET bad=0 WHERE bad=1")
            conn.executemany("UPDATE chunks SET bad=1 WHERE digest=?", [(d,) for d in set(digests)])

    def chunk_rows(self, digests: Iterable[str]) -> dict[str, _ChunkRow]:
        """Return the index rows of ``digests`` (those that exist), in one query per 500.

        A load fetches its rows once on its own thread, then reads the chunks on
        the pool: a SELECT per chunk from each pool thread (each with its own
        connection and read transaction) was a tenth of a 16 MiB load.

        Raises:
            StoreIOError: the index cannot be read.
        """
        sql = (
            "SELECT digest, size, codec, data, pack, pack_offset, stored_size FROM chunks "
            "WHERE digest IN ({})"
        )
        wanted = tuple(dict.fromkeys(digests))
        with translate_errors("reading chunk index"):
            # A load reads its record (and the stamp, and the rows of its packed
            # chunks) first: rows kept under that stamp are still the index's. A row
            # gone stale otherwise only costs a second read (``read_buffers`` reads
            # a chunk failing its check again, without its row).
            cache, stamp = self.db.cache_as_read()
            if stamp is not None and len(wanted) <= CACHED_ROWS:
                kept: dict[str, _ChunkRow] = {}
                for d in wanted:
                    hit = cache.get(("chunk", d))
                    if hit is None or hit[0] != stamp:
                        break
                    kept[d] = hit[1]
                else:
                    return kept
            conn = self.db.read()
            if len(wanted) == 1:  # a tile's one chunk: no IN list to build (~10 of 150 us, P12)
                rows: Iterable[Any] = conn.execute(sql.format("?"), wanted)
            else:
                rows = select_in(conn, sql, wanted)
            found: dict[str, _ChunkRow] = {d: tuple(row) for d, *row in rows}
        # While the store is unchanged the rows are too: gc moving a chunk commits. Rows
        # of packed chunks only: an inline row carries its bytes (up to 64 KiB).
        if stamp is not None and len(found) <= CACHED_ROWS:
            for d, r in found.items():
                if r[2] is None:
                    remember(cache, ("chunk", d), (stamp, r))
        return found

    def _chunk_row(self, digest: str) -> _ChunkRow:
        with translate_errors(f"reading chunk {digest}"):
            row = (
                self.db.read()
                .execute(
                    "SELECT size, codec, data, pack, pack_offset, stored_size FROM chunks "
                    "WHERE digest=?",
                    (digest,),
                )
                .fetchone()
            )
        if row is None:
            raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest)
        return row  # type: ignore[no-any-return]

    def read_chunk(self, digest: str) -> StoredChunk:
        return self._read(digest, None)

    def read_chunk_into(
        self, digest: str, out: memoryview, row: _ChunkRow | None = None
    ) -> StoredChunk:
        """Like ``read_chunk``, but a raw chunk is read straight into ``out``.

        The returned chunk's ``data`` is then ``out`` itself (not yet verified):
        one copy from the page cache instead of two, for the big loads of P4.
        ``row`` is the chunk's index row from ``chunk_rows``, if the caller has it.

        Raises:
            CorruptCheckpointError: the chunk is missing, truncated or padded.
        """
        return self._read(digest, out, row)

    def chunk_equals(self, digest: str, view: memoryview) -> bool:
        """Tell whether stored raw chunk ``digest`` holds exactly ``view``'s bytes.

        Copies the chunk out of the page cache and compares (memcmp): about a
        third of the CPU of SHA-256 of it. So a state saved again mostly
        unchanged skips hashing its unchanged chunks (P5), trusting nothing
        weaker than byte equality. Answers False, and the caller hashes, when it
        cannot tell cheaply: a compressed or inline chunk, a chunk not wholly in
        the page cache (``RWF_NOWAIT``: never waits on the disk), a short or
        unreadable file, a system without ``preadv2``.
        """
        nowait = getattr(os, "RWF_NOWAIT", None)
        n = view.nbytes
        if nowait is None or n <= INLINE_MAX:
            return False
        with translate_errors(f"reading chunk {digest}"):
            row = (
                self.db.read()
                .execute(
                    "SELECT codec, data IS NULL, pack, pack_offset, size, stored_size FROM chunks "
                    "WHERE digest=? AND bad=0",
                    (digest,),
                )
                .fetchone()
            )
        if row is None:
            return False
        codec, in_file, pack, offset, size, stored = row
        if not in_file or codec != _CODEC_RAW or not size == stored == n:
            return False
        try:
            fd = self.blobs.open_read(digest, pack)
        except (CorruptCheckpointError, OSError):
            return False
        buf = _scratch(n)
        at = offset or 0
        try:
            # A page at each end first: a read that misses the cache starts the
            # kernel's readahead, and a miss on a whole chunk would read it all from
            # the disk for nothing (we hash instead). A chunk that differs there (a
            # state rewritten, not patched) costs two pages, not a copy of it.
            edge = memoryview(buf)[:_EDGE]
            for start in (0, n - _EDGE):
                if os.preadv(fd, [edge], at + start, nowait) != _EDGE:
                    return False
                if buf[:_EDGE] != view[start : start + _EDGE]:  # bytes, never float, equality
                    return False
            # A short read: part of it is not cached, or the file is cut short.
            return os.preadv(fd, [buf], at, nowait) == n and buf == view
        except OSError:  # BlockingIOError: not cached; EOPNOTSUPP: no RWF_NOWAIT here
            return False
        finally:
            os.close(fd)

    def _read(
        self, digest: str, out: memoryview | None, row: _ChunkRow | None = None
    ) -> StoredChunk:
        # No row from the caller: read everything afresh, the pack opened again too
        # (a second look at a chunk that failed its check; see PackReaders).
        fresh = row is None
        size, codec, data, pack, offset, stored = row or self._chunk_row(digest)
        if data is not None:
            return StoredChunk(digest, size, codec, data)
        _check_declared(digest, size, stored, offset)
        if pack is None:  # one file per chunk: stores written before packs
            if out is not None and codec == _CODEC_RAW and size == out.nbytes:
                if self.blobs.read_into(digest, out) != size:
                    raise CorruptCheckpointError(
                        f"chunk {digest} is truncated or padded", digest=digest
                    )
                return StoredChunk(digest, size, codec, out)
            return StoredChunk(digest, size, codec, self.blobs.read(digest, MAX_CHUNK))
        into = (
            out
            if out is not None and codec == _CODEC_RAW and size == stored == out.nbytes
            else None
        )
        where: str = pack
        for attempt in (1, 2):
            try:
                if into is None:
                    packed = self.blobs.read_packed(where, offset, stored, digest, fresh)
                    return StoredChunk(digest, size, codec, packed)
                if self.blobs.read_packed_into(where, offset, into, digest, fresh) != size:
                    raise CorruptCheckpointError(
                        f"chunk {digest} is cut short in pack {where}", digest=digest
                    )
                return StoredChunk(digest, size, codec, into)
            except CorruptCheckpointError:
                # gc may have moved the chunk to a new pack and unlinked the old one
                # between our row and our read: the row now names the new pack.
                moved = self._chunk_row(digest)
                if attempt == 2 or moved[3] is None or moved[3] == where:
                    raise
                where, offset = moved[3], moved[4]
                _check_declared(digest, size, stored, offset)
        raise AssertionError("unreachable")

    # -- records --------------------------------------------------------------
