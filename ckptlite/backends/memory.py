"""An in-process backend: dicts under a lock. First-class: the contract suite runs on it."""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidInputError,
    MissingChunksError,
    RunNotFoundError,
)
from ..types import (
    DEFAULT_HASH,
    Checkpoint,
    GcReport,
    ItemMark,
    ItemRecord,
    Level,
    RunRecord,
    Status,
    StoredChunk,
    StoredRecord,
)
from ._memory_ledger import MemoryClaimsMixin
from .base import (
    BaseBackend,
    ListQuery,
    Staged,
    StructureCheck,
    ledger_entry_wins,
    slot_stamps,
    stamp_metadata_json,
    start_position,
)

__all__ = ["MemoryBackend"]


class MemoryBackend(MemoryClaimsMixin, BaseBackend):
    """Records and chunks in dicts; gone when the process ends."""

    def __init__(self, url: str = "memory://", *, hash_name: str = DEFAULT_HASH) -> None:
        self.url = url
        self.hash_name = hash_name  # a new store each time: it takes the one asked for
        self._lock = threading.RLock()
        self._records: dict[str, StoredRecord] = {}
        self._chunks: dict[str, StoredChunk] = {}
        self._bad: set[str] = set()  # chunks that failed verification: stored again, not reused
        self._seq = 0
        self._positions: dict[tuple[str, str, str], int] = {}  # slot -> last position taken
        # Runs and the item ledger: {(run_id, group): {item_id: [ok, attempts, error, state,
        # changed]}}; ``_clock`` is the ledger clock.
        self._runs: dict[str, RunRecord] = {}
        self._run_seq = 0
        self._items: dict[tuple[str, str], dict[str, list[Any]]] = {}
        self._clock = 0
        self._store_id = uuid.uuid4().hex
        self._marks: dict[str, int] = {}
        self._mark_ids: dict[str, str | None] = {}
        self._claims_init()

    def write_chunks(self, chunks: Iterable[StoredChunk]) -> None:
        # Copied as they come, outside the lock: a stream's chunk may be a view of a
        # buffer its producer reuses for the next one.
        copies = [StoredChunk(c.digest, c.size, c.codec, bytes(c.data)) for c in chunks]
        with self._lock:
            for c in copies:
                if c.digest not in self._chunks or c.digest in self._bad:
                    self._chunks[c.digest] = c  # a chunk flagged bad is replaced
                    self._bad.discard(c.digest)

    def stage_chunks(self, chunks: Iterable[StoredChunk]) -> Staged:
        self.write_chunks(chunks)  # nothing to gain from waiting: stored at once
        return Staged()

    def has_chunks(self, digests: Iterable[str]) -> set[str]:
        with self._lock:
            return {d for d in digests if d in self._chunks and d not in self._bad}

    def mark_bad_chunks(self, digests: Iterable[str], replace: bool = False) -> None:
        """Flag chunks whose stored bytes failed verification (``replace``: only these)."""
        with self._lock:
            if replace:
                self._bad.clear()
            self._bad.update(d for d in digests if d in self._chunks)

    def read_chunk(self, digest: str) -> StoredChunk:
        with self._lock:
            try:
                return self._chunks[digest]
            except KeyError:
                raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest) from None

    def commit(
        self, record: StoredRecord, staged: Sequence[Staged] = (), *, position: bool = False
    ) -> Checkpoint:
        for s in staged:
            s.release()  # rows committed by stage_chunks already
        cp = record.checkpoint
        with self._lock:
            if cp.id in self._records:
                raise InvalidInputError(f"checkpoint {cp.id} exists already", checkpoint_id=cp.id)
            if cp.parent_id is not None and cp.parent_id not in self._records:
                raise InvalidInputError(
                    f"parent checkpoint {cp.parent_id} does not exist", checkpoint_id=cp.parent_id
                )
            missing = tuple(d for d in record.digests if d not in self._chunks or d in self._bad)
            if missing:
                raise MissingChunksError(
                    f"{len(missing)} chunk(s) of {cp.id} are not stored", digests=missing
                )
            if position:
                slot = (cp.process_id, cp.level.value, cp.name)
                n = self._positions.get(slot) or start_position(*self._slot_top(slot))
                stamped, _ = stamp_metadata_json(cp.metadata, n)
                cp = cp.copy(metadata=stamped)
                self._positions[slot] = n + 1
            self._seq += 1
            cp = cp.copy(seq=self._seq)
            self._records[cp.id] = StoredRecord(cp, record.payload, record.manifest, record.digests)
            return cp

    def _slot_top(self, slot: tuple[str, str, str]) -> tuple[int, int]:
        """Return the highest position stamped in ``slot`` and its number of records."""
        mine = [
            r.checkpoint
            for r in self._records.values()
            if (r.checkpoint.process_id, r.checkpoint.level.value, r.checkpoint.name) == slot
        ]
        return max(slot_stamps(mine).values(), default=0), len(mine)

    def get(self, checkpoint_id: str) -> Checkpoint:
        return self.get_record(checkpoint_id).checkpoint

    def get_record(self, checkpoint_id: str) -> StoredRecord:
        with self._lock:
            try:
                return self._records[checkpoint_id]
            except (KeyError, TypeError):
                raise CheckpointNotFoundError(
                    f"no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id
                ) from None

    def has_records(self, ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {i for i in ids if i in self._records}

    def latest(self, process_id: str, level: Level | None, name: str | None) -> Checkpoint | None:
        q = ListQuery(process_id=process_id, level=level, name=name, status=Status.VALID, limit=1)
        found = self.list(q)
        return found[0] if found else None

    def list(self, query: ListQuery) -> list[Checkpoint]:
        with self._lock:
            cps = [r.checkpoint for r in self._records.values() if query.matches(r.checkpoint)]
        cps.sort(key=lambda c: c.seq, reverse=not query.ascending)
        return cps if query.limit is None else cps[: query.limit]

    def set_status(self, checkpoint_id: str, status: Status) -> None:
        with self._lock:
            rec = self.get_record(checkpoint_id)
            cp = rec.checkpoint.replace(status=status)
            self._records[checkpoint_id] = StoredRecord(cp, rec.payload, rec.manifest, rec.digests)

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        with self._lock:
            self.get_record(checkpoint_id)
            doomed = [checkpoint_id]
            i = 0
            while i < len(doomed):
                doomed += [
                    k for k, r in self._records.items() if r.checkpoint.parent_id == doomed[i]
                ]
                i += 1
            for k in doomed:
                self._records.pop(k, None)
            return doomed

    def iter_chunk_digests(self) -> Iterator[str]:
        with self._lock:
            digests = list(self._chunks)
        yield from digests

    def checkpoints_using(self, digests: Iterable[str]) -> set[str]:
        wanted = set(digests)
        with self._lock:
            return {k for k, r in self._records.items() if wanted.intersection(r.digests)}

    def _referenced(self) -> set[str]:
        return {d for r in self._records.values() for d in r.digests}

    def check(self) -> StructureCheck:
        with self._lock:
            missing = {
                k: tuple(d for d in r.digests if d not in self._chunks)
                for k, r in self._records.items()
            }
            orphans = tuple(sorted(set(self._chunks) - self._referenced()))
        return StructureCheck({k: v for k, v in missing.items() if v}, orphans)

    def gc(self, dry_run: bool = False) -> GcReport:
        with self._lock:
            orphans = sorted(set(self._chunks) - self._referenced())
            freed = sum(self._chunks[d].stored_size for d in orphans)
            if not dry_run:
                for d in orphans:
                    del self._chunks[d]
                    self._bad.discard(d)
        return GcReport(tuple(orphans), (), freed, dry_run)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_process: dict[str, dict[str, int]] = {}
            by_status: dict[str, int] = {}
            for r in self._records.values():
                cp = r.checkpoint
                levels = by_process.setdefault(cp.process_id, {})
                levels[cp.level.value] = levels.get(cp.level.value, 0) + 1
                by_status[cp.status.value] = by_status.get(cp.status.value, 0) + 1
            done = [v for entries in self._items.values() for v in entries.values() if v[0]]
            size = sum(len(v[3]) for v in done if v[3] is not None)
            return {
                "checkpoints": len(self._records),
                "chunks": len(self._chunks),
                "logical_bytes": sum(r.checkpoint.size for r in self._records.values()),
                "stored_bytes": sum(len(r.payload) for r in self._records.values())
                + sum(c.stored_size for c in self._chunks.values()),
                "by_process": by_process,
                "by_status": by_status,
                "item_results": {"count": len(done), "logical_bytes": size, "stored_bytes": size},
            }

    # -- runs and the work-item ledger -------------------------------------------

    def create_run(self, run: RunRecord) -> RunRecord:
        with self._lock:
            if run.id in self._runs:
                raise InvalidInputError(f"run {run.id} exists already", run_id=run.id)
            self._run_seq += 1
            self._clock += 1
            run = run.replace(seq=self._run_seq, changed=self._clock)
            self._runs[run.id] = run
            return run

    def update_run(self, run: RunRecord) -> RunRecord:
        with self._lock:
            old = self.get_run(run.id)
            self._clock += 1
            new = old.replace(
                status=run.status,
                updated_at=run.updated_at,
                finished_at=run.finished_at,
                error=run.error,
                progress=run.progress,
                changed=self._clock,
            )
            self._runs[run.id] = new
            return new

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            try:
                return self._runs[run_id]
            except (KeyError, TypeError):
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id) from None

    def list_runs(
        self,
        process_id: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[RunRecord]:
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if (process_id is None or r.process_id == process_id)
                and (after_changed is None or r.changed > after_changed)
            ]
        if after_changed is None:
            runs.sort(key=lambda r: r.seq, reverse=True)
        else:
            runs.sort(key=lambda r: r.changed)
        return runs if limit is None else runs[:limit]

    def mark_items(
        self,
        run_id: str,
        marks: Sequence[ItemMark],
        *,
        closing: Sequence[tuple[str, int]] = (),
        worker_id: str | None = None,
    ) -> int:
        with self._lock:
            self._close(run_id, closing, worker_id)
            self.get_run(run_id)
            self._clock += 1
            tick = self._clock
            for m in marks:
                group = self._items.setdefault((run_id, m.group), {})
                old = group.get(m.item_id)
                if old is None:
                    group[m.item_id] = [m.ok, 1, m.error, m.state, tick]
                elif not old[0]:
                    group[m.item_id] = [m.ok, old[1] + 1, m.error, m.state, tick]
            return tick

    def item_marks(self, run_id: str, group: str) -> tuple[set[str], dict[str, int]]:
        with self._lock:
            entries = self._items.get((run_id, group), {})
            done = {k for k, v in entries.items() if v[0]}
            failed = {k: v[1] for k, v in entries.items() if not v[0]}
        return done, failed

    def list_items(
        self,
        run_id: str,
        group: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[ItemRecord]:
        with self._lock:
            out = [
                ItemRecord(run_id, g, item, v[0], v[1], v[2], v[3], v[4])
                for (rid, g), entries in self._items.items()
                if rid == run_id and (group is None or g == group)
                for item, v in entries.items()
                if after_changed is None or v[4] > after_changed
            ]
        out.sort(key=lambda r: (r.changed, r.group, r.item_id))
        return out if limit is None else out[:limit]

    def close(self) -> None:
        pass

    def store_id(self) -> str:
        return self._store_id

    def records_after(
        self, seq: int, limit: int, process_id: str | None = None
    ) -> builtins.list[StoredRecord]:
        out: builtins.list[StoredRecord] = []
        with self._lock:
            # Insertion order is seq order (set_status replaces values in place).
            for r in self._records.values():
                cp = r.checkpoint
                if cp.seq > seq and (process_id is None or cp.process_id == process_id):
                    out.append(r)
                    if len(out) >= limit:
                        break
        return out

    def sync_mark(self, source: str) -> int:
        with self._lock:
            return self._marks.get(source, 0)

    def sync_mark_id(self, source: str) -> str | None:
        with self._lock:
            return self._mark_ids.get(source)

    def import_records(
        self,
        records: Sequence[StoredRecord],
        source: str,
        mark: int,
        mark_id: str | None = None,
        *,
        reset: bool = False,
    ) -> int:
        with self._lock:
            fresh: dict[str, StoredRecord] = {}
            for r in records:
                if r.checkpoint.id not in self._records:
                    fresh.setdefault(r.checkpoint.id, r)
            missing = tuple(
                sorted(
                    {
                        d
                        for r in fresh.values()
                        for d in r.digests
                        if d not in self._chunks or d in self._bad
                    }
                )
            )
            if missing:
                raise MissingChunksError(f"{len(missing)} chunk(s) are not stored", digests=missing)
            known: set[str] = set()
            for r in fresh.values():
                parent = r.checkpoint.parent_id
                if parent is not None and parent not in self._records and parent not in known:
                    raise InvalidInputError(
                        f"parent checkpoint {parent} does not exist", checkpoint_id=parent
                    )
                known.add(r.checkpoint.id)
            for r in fresh.values():
                self._seq += 1
                cp = r.checkpoint.copy(seq=self._seq)
                self._records[cp.id] = StoredRecord(cp, r.payload, r.manifest, r.digests)
            for slot, top in slot_stamps(r.checkpoint for r in fresh.values()).items():
                if slot in self._positions:  # a slot not counted yet starts past them anyway
                    self._positions[slot] = max(self._positions[slot], top + 1)
            if reset or mark >= self._marks.get(source, 0):
                self._marks[source], self._mark_ids[source] = mark, mark_id
            return len(fresh)

    def export_ledger(
        self, after: int, process_id: str | None = None
    ) -> tuple[int, builtins.list[RunRecord], builtins.list[ItemRecord]]:
        with self._lock:
            clock = self._clock
            if clock <= after:
                return clock, [], []
            items = [
                ItemRecord(rid, g, item, v[0], v[1], v[2], v[3], v[4])
                for (rid, g), entries in self._items.items()
                if process_id is None or self._runs[rid].process_id == process_id
                for item, v in entries.items()
                if v[4] > after
            ]
            wanted = {it.run_id for it in items}
            runs = [
                r
                for r in self._runs.values()
                if (r.changed > after or r.id in wanted)
                and (process_id is None or r.process_id == process_id)
            ]
        items.sort(key=lambda r: (r.changed, r.group, r.item_id))
        runs.sort(key=lambda r: r.seq)
        return clock, runs, items

    def import_ledger(
        self,
        runs: Sequence[RunRecord],
        items: Sequence[ItemRecord],
        source: str,
        mark: int,
    ) -> int:
        with self._lock:
            for it in items:
                if it.run_id not in self._runs and all(r.id != it.run_id for r in runs):
                    raise RunNotFoundError(f"no run {it.run_id!r}", run_id=it.run_id)
            self._clock += 1
            written = 0
            for run in runs:
                old = self._runs.get(run.id)
                if old is None:
                    self._run_seq += 1
                    self._runs[run.id] = run.replace(seq=self._run_seq, changed=self._clock)
                elif old.updated_at < run.updated_at:
                    self._runs[run.id] = run.replace(seq=old.seq, changed=self._clock)
                else:
                    continue
                written += 1
            for it in items:
                group = self._items.setdefault((it.run_id, it.group), {})
                prev = group.get(it.item_id)
                if ledger_entry_wins(
                    it.ok, it.attempts, None if prev is None else (prev[0], prev[1])
                ):
                    group[it.item_id] = [it.ok, it.attempts, it.error, it.state, self._clock]
                    written += 1
            self._marks[source] = max(self._marks.get(source, 0), mark)
            return written
