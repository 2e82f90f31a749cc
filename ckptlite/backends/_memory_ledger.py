"""Runs shared by many workers in the memory backend (mixed into ``MemoryBackend``).

The same claims as the local store's ``run_claims`` (see ``_local_ledger``), in
dicts under the backend's lock: threads of one process share a memory store.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import RunNotFoundError
from ..types import ItemGroup, RunCounts, RunRecord, RunStatus, WorkerInfo, WorkerRecord
from .base import join_newest, joined_group_size

__all__ = ["MemoryClaimsMixin"]


class _Worker:
    __slots__ = ("beat", "error", "expires", "info", "left", "started")

    def __init__(self, info: WorkerInfo, now: float) -> None:
        self.info = info
        self.started = self.beat = now
        self.expires = now + info.lease
        self.left = False
        self.error: str | None = None


class _Claim:
    __slots__ = ("done", "expires", "lease", "unmarked", "worker")

    def __init__(self) -> None:
        self.worker: str | None = None
        self.expires = 0.0
        self.lease = 0.0  # set by the first claim and kept: 0, never held
        self.done = False
        self.unmarked: int | None = None  # as its holder last committed; None: the whole batch


class MemoryClaimsMixin:
    """Worker, batch and stage claims of the Backend Protocol, in dicts."""

    _lock: threading.RLock
    _runs: dict[str, RunRecord]
    _items: dict[tuple[str, str], dict[str, list[Any]]]

    def _claims_init(self) -> None:
        self._workers: dict[str, dict[str, _Worker]] = {}
        self._groups: dict[tuple[str, str], tuple[int, int, str]] = {}  # total, size, fingerprint
        self._group_ids: dict[tuple[str, str], list[str] | None] = {}  # None: not kept
        self._claims: dict[str, dict[tuple[str, int], _Claim]] = {}

    if TYPE_CHECKING:

        def create_run(self, run: RunRecord) -> RunRecord: ...
        def update_run(self, run: RunRecord) -> RunRecord: ...
        def get_run(self, run_id: str) -> RunRecord: ...

    def join_run(
        self, fresh: RunRecord, key: str | None, worker: WorkerInfo | None, *, force: bool
    ) -> tuple[RunRecord, str]:
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if r.process_id == fresh.process_id and (key is None or r.key == key)
            ]
            run, how = join_newest(
                max(runs, key=lambda r: r.seq) if runs else None,
                keyed=key is not None,
                force=force,
                create=lambda: self.create_run(fresh.replace(key=key)),
                resume=lambda run: self.update_run(
                    run.replace(
                        status=RunStatus.RUNNING,
                        error=None,
                        finished_at=None,
                        updated_at=datetime.now(UTC),
                    )
                ),
            )
            if how != "reuse" and worker is not None:
                self._add(run.id, worker, reset=how == "resume")
            return run, how

    def _add(self, run_id: str, worker: WorkerInfo, *, reset: bool) -> None:
        if reset:
            self._workers.pop(run_id, None)
            self._claims.pop(run_id, None)
            for k in [k for k in self._groups if k[0] == run_id]:
                del self._groups[k]
        self._workers.setdefault(run_id, {})[worker.worker_id] = _Worker(worker, time.time())

    def add_worker(self, run_id: str, worker: WorkerInfo, *, reset: bool = False) -> None:
        with self._lock:
            self.get_run(run_id)
            self._add(run_id, worker, reset=reset)

    def _others(self, run_id: str, worker_id: str, now: float) -> int:
        return sum(
            1
            for w, rec in self._workers.get(run_id, {}).items()
            if w != worker_id and not rec.left and rec.expires > now
        )

    def heartbeat(self, run_id: str, worker_id: str) -> int:
        with self._lock:
            now = time.time()
            rec = self._workers.get(run_id, {}).get(worker_id)
            if rec is not None and not rec.left:
                rec.beat, rec.expires = now, now + rec.info.lease
            for c in self._claims.get(run_id, {}).values():
                if c.worker == worker_id and not c.done:
                    c.expires = now + c.lease
            return self._others(run_id, worker_id, now)

    def reap_workers(self, run_id: str, worker_ids: Sequence[str]) -> None:
        with self._lock:
            for w in worker_ids:
                rec = self._workers.get(run_id, {}).get(w)
                if rec is not None:
                    rec.expires = 0.0
            self._release(run_id, set(worker_ids))

    def _release(
        self, run_id: str, workers: set[str], keys: set[tuple[str, int]] | None = None
    ) -> None:
        for k, c in self._claims.get(run_id, {}).items():
            if c.worker in workers and not c.done and (keys is None or k in keys):
                c.worker, c.expires = None, 0.0

    def list_workers(self, run_id: str) -> builtins.list[WorkerRecord]:
        with self._lock:
            now = time.time()
            return [
                WorkerRecord(
                    run_id,
                    w,
                    r.info.host,
                    r.info.pid,
                    r.info.node,
                    datetime.fromtimestamp(r.started, UTC),
                    datetime.fromtimestamp(r.beat, UTC),
                    not r.left and r.expires > now,
                    r.left,
                    r.error,
                )
                for w, r in sorted(
                    self._workers.get(run_id, {}).items(), key=lambda x: x[1].started
                )
            ]

    def register_group(
        self,
        run_id: str,
        group: str,
        *,
        total: int,
        seg_size: int,
        fingerprint: str,
        worker_id: str,
        ids: Sequence[str] | None = None,
    ) -> tuple[int, int]:
        with self._lock:
            self.get_run(run_id)
            others = self._others(run_id, worker_id, time.time())
            old = self._groups.get((run_id, group))
            size = joined_group_size(
                group, None if old is None else (old[1], old[2]), fingerprint, others
            )
            if size is not None:
                return size, others
            claims = self._claims.setdefault(run_id, {})
            for k in [k for k in claims if k[0] == group and k[1] >= 0]:
                del claims[k]
            self._groups[(run_id, group)] = (total, seg_size, fingerprint)
            self._group_ids[(run_id, group)] = None if ids is None else list(ids)
            for seg in range(-(-total // seg_size)):
                claims[(group, seg)] = _Claim()
            return seg_size, others

    def item_groups(self, run_id: str, group: str | None = None) -> builtins.list[ItemGroup]:
        with self._lock:
            self.get_run(run_id)
            now = time.time()
            out = []
            for (rid, g), (_t, size, _f) in sorted(self._groups.items()):
                if rid != run_id or (group is not None and g != group):
                    continue
                held = frozenset(
                    seg
                    for (cg, seg), c in self._claims.get(run_id, {}).items()
                    if cg == g
                    and seg >= 0
                    and not c.done
                    and c.worker is not None
                    and c.expires > now
                )
                ids = self._group_ids.get((rid, g))
                out.append(ItemGroup(g, None if ids is None else list(ids), size, held))
            return out

    def claim_segments(
        self, run_id: str, group: str, worker_id: str, count: int, lease: float
    ) -> builtins.list[tuple[int, bool]]:
        with self._lock:
            now = time.time()
            out: builtins.list[tuple[int, bool]] = []
            claims = self._claims.get(run_id, {})
            for (g, seg), c in sorted(claims.items(), key=lambda kv: kv[0][1]):
                if len(out) >= count:
                    break
                if g != group or seg < 0 or c.done or (c.worker is not None and c.expires >= now):
                    continue
                out.append((seg, c.lease > 0))  # taken over: held before
                c.worker, c.expires, c.lease, c.unmarked = worker_id, now + lease, lease, None
            return out

    def group_busy(self, run_id: str, group: str, worker_id: str) -> bool:
        with self._lock:
            return any(
                g == group and seg >= 0 and not c.done and c.worker != worker_id
                for (g, seg), c in self._claims.get(run_id, {}).items()
            )

    def release_segments(
        self, run_id: str, worker_id: str, group: str | None = None, segs: Sequence[int] = ()
    ) -> None:
        with self._lock:
            keys = None if group is None else {(group, s) for s in segs}
            self._release(run_id, {worker_id}, keys)

    def _close(
        self,
        run_id: str,
        closing: Sequence[tuple[str, int]],
        worker_id: str | None,
        unmarked: Sequence[tuple[str, int, int]] = (),
    ) -> None:
        claims = self._claims.get(run_id, {})
        for g, seg, n in unmarked:
            c = claims.get((g, seg))
            if c is not None and c.worker == worker_id and not c.done:
                c.unmarked = n
        for key in closing:
            c = claims.get(key)
            if c is not None and c.worker == worker_id and not c.done:
                c.done, c.worker = True, None

    def marks_among(
        self, run_id: str, group: str, ids: Sequence[str]
    ) -> tuple[set[str], dict[str, int]]:
        with self._lock:
            entries = self._items.get((run_id, group), {})
            found = [(i, entries[i]) for i in ids if i in entries]
        return {i for i, e in found if e[0]}, {i: e[1] for i, e in found if not e[0]}

    def claim_stage(
        self, run_id: str, name: str, worker_id: str, lease: float, *, seg: int = -1
    ) -> str:
        with self._lock:
            now = time.time()
            c = self._claims.setdefault(run_id, {}).setdefault((name, seg), _Claim())
            if c.done:
                return "done"
            if c.worker not in (None, worker_id) and c.expires > now:
                return "held"
            c.worker, c.expires, c.lease = worker_id, now + lease, lease
            return "claimed"

    def finish_stage(self, run_id: str, name: str, *, seg: int = -1) -> None:
        with self._lock:
            c = self._claims.get(run_id, {}).get((name, seg))
            if c is not None:
                c.done, c.worker = True, None

    def _counts(self, run_id: str, worker_id: str) -> RunCounts:
        now = time.time()
        done = failed = 0
        for (rid, g), entries in self._items.items():
            if rid == run_id:
                registered = (run_id, g) in self._groups
                for v in entries.values():
                    done += bool(v[0])
                    failed += registered and not v[0]
        total = sum(t for (rid, _g), (t, _s, _f) in self._groups.items() if rid == run_id)
        claimed = 0
        open_work = 0
        for (g, seg), c in self._claims.get(run_id, {}).items():
            open_work += not c.done
            if seg >= 0 and not c.done and c.worker is not None and c.expires > now:
                t, size, _f = self._groups.get((run_id, g), (0, 1, ""))
                whole = max(0, min(size, t - seg * size))
                claimed += whole if c.unmarked is None else min(c.unmarked, whole)
        workers = self._workers.get(run_id, {})
        live = sum(1 for r in workers.values() if not r.left and r.expires > now)
        errors = tuple(r.error for r in workers.values() if r.error is not None)
        return RunCounts(
            done,
            failed,
            claimed,
            max(0, total - done - failed - claimed),
            open_work,
            live,
            errors,
            self._others(run_id, worker_id, now),
        )

    def leave_run(self, run_id: str, worker_id: str, error: str | None) -> RunCounts:
        with self._lock:
            self.get_run(run_id)
            rec = self._workers.get(run_id, {}).get(worker_id)
            if rec is not None:
                rec.left, rec.error, rec.expires = True, error, 0.0
            self._release(run_id, {worker_id})
            return self._counts(run_id, worker_id)

    def run_counts(self, run_id: str) -> RunCounts:
        with self._lock:
            if run_id not in self._runs:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            return self._counts(run_id, "")
