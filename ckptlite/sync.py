"""Copy what a target store lacks from a source store: checkpoints, chunks, runs, ledger.

``sync(source, target)`` works between any two stores (local, memory,
postgres), in batches, through the Backend Protocol only: bytes are copied by
digest and no state is ever decoded.

- **Checkpoints** newer than the target's high-water mark for this source
  (kept in the target, keyed by the source's store id and the process filter)
  are read in source seq order, so parents come before children; ancestors
  outside a ``process_id`` filter are copied too. Records keep their id,
  created_at, status, checksum and metadata; the target assigns its own seq.
  Each batch's chunks are written first (only those the target lacks), then
  its records and the new mark in ONE target transaction: the mark never
  moves past records the target has not committed, and ids already there are
  skipped, so an interrupted sync is simply rerun and a second run copies
  nothing. The mark also names the source's checkpoint at its seq: a source
  that holds another checkpoint there, or whose newest checkpoint the target
  lacks while its seqs stop short of the mark, is not the history the mark
  was made from (a copy of the store, ``cp -r``, with its store id) and is
  scanned again from the start. On PostgreSQL targets a transaction-level
  advisory lock per source store makes concurrent syncers of one store take
  turns batch by batch.
- **Runs and the work-item ledger** changed since the target's ledger mark are
  merged: a run by the later ``updated_at``, an item by ``ledger_entry_wins``
  (done beats failed; a done-mark is never replaced).

Not propagated (by design, documented in the README): deletes (a checkpoint
deleted at the source stays in the target, and one deleted in the target is
not copied again); status changes made after a checkpoint was copied (a later
CORRUPTED or ARCHIVED at the source); rows of the legacy
``pipeline_checkpoints`` table that ckptlite did not write. Every chunk is
checked against its digest as it is copied (decompressed and hashed, never
decoded into a state). Checkpoints with a chunk the source cannot read or that
fails that check, and those the target refuses (a process id longer than
PostgreSQL's 255 characters), are skipped with their descendants and listed in
``SyncReport.failed``; the rest is copied.

Between stores of different digest algorithms (``hash_name``: a SHA-256 store
and a BLAKE3 one) chunks are re-addressed: each copied chunk's raw bytes are
checked with the source's algorithm and hashed with the target's, and kept
stored as they were (a codec does not depend on the address); each record's
checksum is checked with the source's algorithm (one that fails is listed in
``failed``), then its manifest gets the new digests and its checksum is made
with the target's. States are still never decoded; parents, runs and the
ledger do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import _inputs, chunking
from ._stores import resolve_location
from .backends.base import Backend, ListQuery
from .errors import (
    CheckpointNotFoundError,
    CkptliteError,
    CorruptCheckpointError,
    InvalidInputError,
    MissingChunksError,
    ReadOnlyStoreError,
    SyncError,
)
from .manager import CheckpointManager, open_store, store_is_read_only
from .types import StoredChunk, StoredRecord

__all__ = ["SyncReport", "sync"]

Store = CheckpointManager | str | os.PathLike[str]
_CHUNK_GROUP_BYTES = 32 << 20  # chunks are written in groups of about this many bytes


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one ``sync`` copied; ``changed`` is False for a no-op."""

    source: str
    target: str
    process_id: str | None = None
    checkpoints_copied: int = 0
    checkpoints_skipped: int = 0  # already in the target
    chunks_copied: int = 0
    bytes_copied: int = 0
    runs_copied: int = 0
    items_copied: int = 0
    failed: tuple[str, ...] = ()  # not copied: unreadable at the source, or refused
    mark: int = 0  # the source seq the target is now synced up to
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.checkpoints_copied or self.chunks_copied or self.runs_copied)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data (the CLI's ``--json``)."""
        return {
            **dataclasses.asdict(self),
            "failed": list(self.failed),
            "changed": self.changed,
            "ok": self.ok,
        }


def sync(
    source: Store,
    target: Store,
    process_id: str | None = None,
    *,
    batch_size: int = 5000,
    progress: Callable[[int, int | None], None] | None = None,
) -> SyncReport:
    """Copy the checkpoints, chunks, runs and ledger entries ``target`` lacks from ``source``.

    ``source`` and ``target`` are managers or store locations, read as ``ckptlite
    sync --to`` reads them (opened and closed here): a URL, a path (a ``str`` with a
    ``/``, or any ``os.PathLike``; a source directory must exist), a configured
    remote's name, or ``postgres`` (the server libpq's environment names).
    ``process_id`` limits the copy to one process (plus the ancestors its
    checkpoints need). ``progress`` is
    called as ``progress(checkpoints_done, None)`` after each batch.

    Raises:
        SyncError: a store failed mid-way (``.report`` holds what was
            copied); rerun to resume. Also for the same store on both sides.
        InvalidInputError: a bad argument.
        ConfigError: a bare name that is no configured remote, URL or existing path
            (nothing is created).
        ReadOnlyStoreError: ``target`` is read-only (nothing is copied).

    >>> import ckptlite
    >>> a, b = ckptlite.open("memory://"), ckptlite.open("memory://")
    >>> _ = a.save("run", {"x": 1})
    >>> ckptlite.sync(a, b).checkpoints_copied, ckptlite.sync(a, b).changed
    (1, False)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, not {batch_size!r}")
    if process_id is not None:
        _inputs.text(process_id, "process_id", empty=False)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        src = _open(source, stack, create=False)
        dst = _open(target, stack, create=True)
        if dst.readonly:
            raise ReadOnlyStoreError(f"{dst.url} is open read-only: cannot sync into it")
        job = _Job(src.backend, dst.backend, process_id, batch_size, progress)
        try:
            job.run()
        except CkptliteError as e:
            if isinstance(e, SyncError):
                raise
            partial = job.report(time.monotonic() - start)
            raise SyncError(
                f"sync from {src.url} to {dst.url} stopped after copying "
                f"{job.copied} checkpoint(s): {e.message}",
                hint=f"{e.hint} Then rerun the sync: it resumes and copies nothing twice.",
                report=partial,
            ) from e
        return job.report(time.monotonic() - start)
    raise AssertionError("unreachable")  # pragma: no cover (ExitStack swallows nothing)


def _open(store: Store, stack: contextlib.ExitStack, *, create: bool) -> CheckpointManager:
    if isinstance(store, CheckpointManager):
        return store
    if not isinstance(store, str | os.PathLike):
        raise InvalidInputError(f"a store must be a manager or a URL, not {store!r}")
    if isinstance(store, str):  # a bare name is a remote: never a directory made by mistake
        store = resolve_location(store)
    # A source that cannot be written (a read-only mount) is read read-only.
    readonly = not create and store_is_read_only(store)
    return stack.enter_context(open_store(store, create=create, readonly=readonly))


class _Job:
    """One sync: the two backends and what has been copied so far."""

    def __init__(
        self,
        src: Backend,
        dst: Backend,
        process_id: str | None,
        batch_size: int,
        progress: Callable[[int, int | None], None] | None,
    ) -> None:
        self.src, self.dst = src, dst
        self.process_id = process_id
        self.batch_size = batch_size
        self.progress = progress
        self.copied = self.skipped = self.chunks = self.bytes = 0
        self.runs = self.items = 0
        self.failed: list[str] = []
        self.mark = 0
        self.mark_id: str | None = None
        #: Source digest -> target digest, when the stores' algorithms differ (None: same).
        self.renamed: dict[str, str] | None = None if src.hash_name == dst.hash_name else {}
        self.origin: dict[str, str] = {}  # target digest -> source digest (re-addressed)

    def report(self, seconds: float) -> SyncReport:
        return SyncReport(
            source=self.src.url,
            target=self.dst.url,
            process_id=self.process_id,
            checkpoints_copied=self.copied,
            checkpoints_skipped=self.skipped,
            chunks_copied=self.chunks,
            bytes_copied=self.bytes,
            runs_copied=self.runs,
            items_copied=self.items,
            failed=tuple(self.failed),
            mark=self.mark,
            seconds=seconds,
        )

    def run(self) -> None:
        source_id = self.src.store_id()
        if source_id == self.dst.store_id():
            raise SyncError(
                f"{self.src.url} and {self.dst.url} are the same store",
                hint="Sync between two different stores.",
            )
        # Store ids are hex (or UUIDs): these keys cannot collide whatever the process id.
        key = source_id if self.process_id is None else f"{source_id}:{self.process_id}"
        self._records(key)
        self._ledger("ledger:" + key)

    # -- checkpoints and chunks -------------------------------------------------------

    def _records(self, key: str) -> None:
        self.mark, self.mark_id = self.dst.sync_mark(key), self.dst.sync_mark_id(key)
        if self.mark and self.mark_id is not None and not self._mark_holds():
            # Another history under the same store id: start over. Records the
            # target has are skipped, so this copies only what it lacks.
            self.dst.import_records([], key, 0, None, reset=True)
            self.mark, self.mark_id = 0, None
        # Read the next batch from the source while the target commits this one.
        with ThreadPoolExecutor(1, thread_name_prefix="ckptlite-sync") as pool:
            ahead = pool.submit(self.src.records_after, self.mark, self.batch_size, self.process_id)
            while batch := ahead.result():
                last = batch[-1].checkpoint.seq
                ahead = pool.submit(self.src.records_after, last, self.batch_size, self.process_id)
                self._batch(key, batch, last)

    def _mark_holds(self) -> bool:
        """Tell whether the source is the history the target's mark was made from."""
        nxt = self.src.records_after(self.mark - 1, 1, self.process_id)
        if nxt:
            cp = nxt[0].checkpoint
            # Past the mark only: the checkpoint at the mark was deleted at the source.
            return cp.seq > self.mark or cp.id == self.mark_id
        # The source stops short of the mark: it deleted its newest checkpoints (the
        # target has the ones left), or it is a copy that forked before the mark.
        newest = self.src.list(ListQuery(process_id=self.process_id, limit=1))
        return not newest or bool(self.dst.has_records([newest[0].id]))

    def _batch(self, key: str, batch: list[StoredRecord], last: int) -> None:
        present = self.dst.has_records(r.checkpoint.id for r in batch)
        fresh = [r for r in batch if r.checkpoint.id not in present]
        self.skipped += len(batch) - len(fresh)
        fresh = self._with_ancestors(fresh)
        fresh = self._copy_chunks(fresh)
        last_id = batch[-1].checkpoint.id
        for attempt in range(3):
            try:
                self.copied += self.dst.import_records(fresh, key, last, last_id)
                break
            except MissingChunksError as e:  # a gc in the target took some: copy again
                if attempt == 2:
                    raise
                self._write([self.origin.get(d, d) for d in e.digests], force=True)
            except InvalidInputError:
                self._one_by_one(fresh, key, last, last_id)
                break
        self.mark, self.mark_id = last, last_id
        if self.progress is not None:
            self.progress(self.copied + self.skipped, None)

    def _one_by_one(self, fresh: list[StoredRecord], key: str, last: int, last_id: str) -> None:
        """Import record by record, so one the target refuses stops only itself.

        A refused record (say, a process id too long for PostgreSQL) and its
        descendants go to ``failed``; the mark then moves past the batch.
        """
        for rec in fresh:
            try:
                self.copied += self.dst.import_records([rec], key, self.mark, self.mark_id)
            except InvalidInputError:
                self.failed.append(rec.checkpoint.id)
        self.dst.import_records([], key, last, last_id)

    def _with_ancestors(self, fresh: list[StoredRecord]) -> list[StoredRecord]:
        """Prepend the ancestors the target lacks and the batch does not hold."""
        have = {r.checkpoint.id for r in fresh}
        todo = {r.checkpoint.parent_id for r in fresh} - have - {None}
        extra: dict[str, StoredRecord] = {}
        while todo:
            wanted = {p for p in todo if p is not None} - self.dst.has_records(
                p for p in todo if p is not None
            )
            todo = set()
            for pid in wanted:
                if pid in extra:
                    continue
                try:
                    rec = self.src.get_record(pid)
                except CheckpointNotFoundError:
                    continue  # its child will fail the parent check and be reported
                extra[pid] = rec
                if rec.checkpoint.parent_id not in have and rec.checkpoint.parent_id:
                    todo.add(rec.checkpoint.parent_id)
        if not extra:
            return fresh
        return sorted(extra.values(), key=lambda r: r.checkpoint.seq) + fresh

    def _copy_chunks(self, fresh: list[StoredRecord]) -> list[StoredRecord]:
        """Copy the chunks of ``fresh`` the target lacks; drop records that cannot be copied."""
        digests = list(dict.fromkeys(d for r in fresh for d in r.digests))
        if self.renamed is not None:  # addresses differ: every new chunk is read to rename it
            bad = self._write([d for d in digests if d not in self.renamed])
            return self._readdress(fresh, bad)
        if not digests:
            return fresh
        have = self.dst.has_chunks(digests)
        need = [d for d in digests if d not in have]
        bad = self._write(need)
        if not bad:
            return fresh
        # A damaged record's chunks that the target had were not read: check them at
        # the source too, and flag every bad one there, so the source's next save of
        # the same bytes stores them again instead of reusing them. (The target's
        # copies are its own: records using only those still copy.)
        unread = {d for r in fresh if bad.intersection(r.digests) for d in r.digests if d in have}
        self._flag_at_source(bad | {d for d in sorted(unread) if self._read(d) is None})
        dropped: set[str] = set()
        kept = []
        for r in fresh:  # parents first: a child of a dropped record is dropped too
            cp = r.checkpoint
            if bad.intersection(r.digests) or cp.parent_id in dropped:
                dropped.add(cp.id)
                self.failed.append(cp.id)
            else:
                kept.append(r)
        return kept

    def _readdress(self, fresh: list[StoredRecord], bad: set[str]) -> list[StoredRecord]:
        """Return ``fresh`` under the target's addresses; drop records that cannot be copied.

        Dropped (into ``failed``, with their descendants): records with a bad chunk,
        and records whose checksum fails by the source's algorithm (renamed, they
        would get a valid one). Every chunk of ``fresh`` was read, so ``bad`` is all.
        """
        assert self.renamed is not None
        src, dst = self.src.hash_name, self.dst.hash_name
        if bad:
            self._flag_at_source(bad)
        dropped: set[str] = set()
        kept = []
        for r in fresh:  # parents first: a child of a dropped record is dropped too
            cp = r.checkpoint
            new = None
            if not bad.intersection(r.digests) and cp.parent_id not in dropped:
                try:
                    if chunking.record_checksum(r.payload, r.manifest, src) == cp.checksum:
                        old, checks = chunking.unpack_checked(r.manifest)
                        manifest = [[(self.renamed[d], n) for d, n in buf] for buf in old]
                        # A check is of the raw bytes, whatever addresses them: it stays.
                        renamed = {self.renamed[d]: c for d, c in checks.items()}
                        packed = chunking.pack_manifest(manifest, renamed)
                        new = StoredRecord(
                            cp.replace(checksum=chunking.record_checksum(r.payload, packed, dst)),
                            r.payload,
                            packed,
                            chunking.manifest_digests(manifest),
                        )
                except (CorruptCheckpointError, KeyError):
                    new = None  # a malformed manifest, or one naming chunks the record lacks
            if new is None:
                dropped.add(cp.id)
                self.failed.append(cp.id)
            else:
                kept.append(new)
        return kept

    def _write(self, digests: list[str], *, force: bool = False) -> set[str]:
        """Copy chunks source -> target in groups; return the digests it could not copy.

        Those are the chunks the source lacks or cannot read, and those whose bytes
        do not match their digest. Re-addressed chunks the target has are not
        written again (unless ``force``: a gc in the target took them meanwhile).
        """
        bad: set[str] = set()
        group: list[StoredChunk] = []
        size = 0
        for d in digests:
            chunk = self._read(d)
            if chunk is None:
                bad.add(d)
                continue
            group.append(chunk)
            size += chunk.stored_size
            if size >= _CHUNK_GROUP_BYTES:
                self._flush(group, force)
                group, size = [], 0
        self._flush(group, force)
        return bad

    def _read(self, digest: str) -> StoredChunk | None:
        """Return a source chunk checked against its digest; None if missing, unreadable or bad.

        Between algorithms, the chunk comes addressed by the target's (same stored bytes).
        """
        try:
            chunk = self.src.read_chunk(digest)
            # Checked as it is copied: a damaged chunk would otherwise spread to
            # every target, and be found only when one of them loads it.
            raw = chunking.check_chunk(chunk, self.src.hash_name)
        except (CorruptCheckpointError, OSError):
            return None
        if self.renamed is None:
            return chunk
        new = chunking.digest_of(raw, self.dst.hash_name)
        self.renamed[digest] = new
        self.origin[new] = digest
        return StoredChunk(new, chunk.size, chunk.codec, chunk.data)

    def _flag_at_source(self, bad: set[str]) -> None:
        # Best effort: a read-only source cannot be flagged (its damage is still
        # reported in ``failed``).
        with contextlib.suppress(CkptliteError):
            self.src.mark_bad_chunks(sorted(bad))

    def _flush(self, group: list[StoredChunk], force: bool = False) -> None:
        if group and self.renamed is not None and not force:
            # Only now are the target's addresses known: skip the chunks it has.
            have = self.dst.has_chunks(c.digest for c in group)
            group = [c for c in group if c.digest not in have]
        if group:
            self.dst.write_chunks(group)
            self.chunks += len(group)
            self.bytes += sum(c.stored_size for c in group)

    # -- runs and the ledger -------------------------------------------------------------

    def _ledger(self, key: str) -> None:
        mark = self.dst.sync_mark(key)
        clock, runs, items = self.src.export_ledger(mark, self.process_id)
        if clock <= mark and not runs and not items:
            return
        self.dst.import_ledger(runs, items, key, clock)
        self.runs += len(runs)
        self.items += len(items)
