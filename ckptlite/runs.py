"""Pipeline runs, stages and the work-item ledger (the manager side), shared by workers.

A run records its lifecycle (running / completed / failed with the error),
timestamps and progress. ``run.stage(name)`` remembers a finished stage as a
STAGE checkpoint tagged with the run id, so a rerun skips it. ``run.items(group,
ids)`` yields only the items the ledger does not have as done; ``item.done(state)``
queues a done-mark with its (encoded) state, and marks are committed in batches
(every ``batch_size`` marks or ``batch_seconds`` seconds, when a loop over
``items`` ends, when a stage completes, and when the run's ``with`` exits), each
batch in one transaction. On PostgreSQL a thread of the run commits them (a
commit is round trips, kept off the item path); a loop's end, a stage's
completion and the run's exit still wait for every queued mark to commit, and a
commit that failed in that thread is retried (and raised) by the next mark. A
crash loses at most the marks not committed: those items run again; a committed
done-mark is never lost and never recorded twice.

Many workers, one run. ``mgr.run(pid)`` called by several processes (or
machines, on PostgreSQL) at once joins ONE run: finding or creating it is one
transaction. Each ``Run`` is a worker (``run.worker_id``: host, pid and a random
suffix) with a lease renewed by a heartbeat thread every lease/3 seconds.
``run.items(group, ids, lease=..., claim=...)`` cuts the ids (every worker must
pass the same ids in the same order: a fingerprint is checked) into batches of
``claim`` items and claims free batches (one ``UPDATE ... FOR UPDATE SKIP
LOCKED`` statement on PostgreSQL, a short ``BEGIN IMMEDIATE`` on SQLite), about a
second of its own work at a time, fewer as the group runs out (``claim_count``),
so the workers finish together: a worker is only
handed items no live worker holds, and never waits for another's item work. A
batch is done, in the transaction of its last marks, when all its items are
marked; a worker that dies (SIGKILL, a lost connection) loses its batches when
their lease expires, and at once when it is seen dead on the same machine, and
other workers then take them: only items it had not committed run again. When
its batches run out, a worker waits for batches others hold, so a dead worker's
items are taken over. A done-mark is recorded once: the first wins, and the
mark of a worker whose lease was lost, for an item another worker has done
since, is ignored (its batch stays with the worker that took it over): never a
second record.

``run.stage(name).compute(fn)``: one worker runs ``fn`` and saves the stage,
the others wait and get its result; when it dies, another takes over after its
lease. A run ends COMPLETED only when the last live worker leaves and every
registered item group is done and every begun stage complete; a worker that
leaves while others work leaves it RUNNING. FAILED when items failed (as
before) or a worker left with an error.

Runs that remember. ``mgr.run(pid, key=...)``: a key (a str or a dict of
parameters, hashed canonically) names the work. When the newest run with that
key COMPLETED, ``run.completed_before`` is true: its stages are done with their
saved results and ``run.items`` yields nothing. ``force=True`` starts over (but
joins a run of that key still running: the other workers of the same start); a
different key starts a new run. Without a key, ``mgr.run(pid)`` resumes the
newest run of ``pid`` when it is unfinished (RUNNING, or FAILED), and starts a
new one when the newest completed; ``resume=False`` always starts a new run and
``run_id=`` reopens one exact run.

>>> import ckptlite
>>> with ckptlite.open("memory://") as mgr:
...     with mgr.run("tiles") as run:
...         for item in run.items("tile", ["a", "b"]):
...             item.done(len(item.id))
...     run.status.value, sorted(run.results("tile").items())
('completed', [('a', 1), ('b', 1)])
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from . import _inputs
from ._envelope import decode_item_state, encode_item_state
from ._workers import (
    CLAIM_AHEAD_S,
    LIVE,
    Heart,
    alive,
    check_lease,
    claim_count,
    new_worker,
    node,
)
from .backends.base import Backend, ListQuery
from .errors import CkptliteError, InvalidInputError
from .types import (
    Checkpoint,
    ItemMark,
    ItemRecord,
    Level,
    RunCounts,
    RunRecord,
    RunStatus,
    Status,
    WorkerInfo,
    WorkerRecord,
)

__all__ = [
    "CLAIM_AHEAD_S",
    "PIPELINE_NAME",
    "RUN_KEY",
    "Run",
    "RunManager",
    "Stage",
    "WorkItem",
    "claim_count",
    "current_run",
    "decode_item_state",
    "encode_item_state",
    "open_run",
    "run_key",
]

#: Metadata key tying a checkpoint (the run's PIPELINE checkpoint, its STAGE
#: results, a process's saves inside it) to its run.
RUN_KEY = "ckptlite.run"
#: The slot name of a run's PIPELINE checkpoint, the parent of its stages.
PIPELINE_NAME = "run"

# The run whose ``with`` block is running (in this thread or task): a
# CheckpointableProcess used inside it saves under it and resumes only from it.
_CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar("ckptlite_run", default=None)


def current_run() -> Run | None:
    """Return the run whose ``with`` block encloses the caller, or None."""
    return _CURRENT.get()


_ERROR_MAX = 4000
_MAX_SEG = 256  # items per batch at most (auto): a batch is what a dead worker's successor redoes
_PIPELINE_SEG = -2  # the claim slot of the run's PIPELINE checkpoint (a stage's is -1)
_new_mark = tuple.__new__  # builds an ItemMark without NamedTuple's slower __new__


class RunManager(Protocol):
    """What a run uses of its ``CheckpointManager`` (this module does not import it)."""

    @property
    def backend(self) -> Backend:
        """The store's backend: the run and item ledger."""

    @property
    def allow_pickle(self) -> bool:
        """Whether item states and stage results may hold pickles."""

    def save(
        self,
        process_id: str,
        state: Any,
        *,
        level: Level | str = ...,
        name: str = ...,
        parent: str | Checkpoint | None = ...,
        metadata: dict[str, Any] | None = ...,
    ) -> Checkpoint:
        """Save a stage's result (``CheckpointManager.save``)."""

    def load(self, checkpoint: str | Checkpoint) -> Any:
        """Return a stage's result (``CheckpointManager.load``)."""


def _now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """Return a new unique, path-safe run id (sortable by creation time)."""
    return f"run_{_now():%Y%m%dT%H%M%S.%f}Z_{secrets.token_hex(8)}"


def _error_text(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text[:_ERROR_MAX]


def run_key(key: str | dict[str, Any]) -> str:
    """Return the canonical digest of a run key (a str, or a dict of JSON parameters).

    Raises:
        InvalidInputError: the key is not a str or a dict of JSON values (NaN refused).

    >>> run_key({"b": 1, "a": [1, 2]}) == run_key({"a": [1, 2], "b": 1})
    True
    """
    if not isinstance(key, str | dict):
        raise InvalidInputError(f"key must be a str or a dict, not {type(key).__name__}")
    try:
        text = json.dumps(
            key, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
        data = text.encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"key is not JSON: {e}",
            hint="A run key is a str or a dict of str, int, float, bool, None, list, dict.",
        ) from None
    return hashlib.sha256(data).hexdigest()


class WorkItem:
    """One pending item yielded by ``run.items``: call ``done`` or ``fail`` once."""

    __slots__ = ("_resolved", "_seg", "attempts", "group", "id", "run")

    def __init__(
        self, run: Run, group: str, item_id: str, attempts: int, seg: list[Any] | None = None
    ) -> None:
        self.run = run
        self.group = group
        self.id = item_id
        self.attempts = attempts  # failed attempts recorded before this one
        self._resolved = False
        self._seg = seg

    def __repr__(self) -> str:
        return f"<WorkItem {self.group}/{self.id} attempts={self.attempts}>"

    def done(self, state: Any = None) -> None:
        """Mark the item done, with an optional state committed together with the mark.

        The state is encoded now (later changes to it are not seen).

        Raises:
            UnsupportedTypeError: the state holds a value with no encoding (item not marked).
            InvalidInputError: the item was already marked done or failed.
        """
        if self._resolved:
            raise InvalidInputError(f"item {self.group}/{self.id} was already marked")
        data = (
            None
            if state is None
            else encode_item_state(state, allow_pickle=self.run.manager.allow_pickle)
        )
        self._resolved = True
        self.run._mark(_new_mark(ItemMark, (self.group, self.id, True, data, None)), self._seg)

    def fail(self, exc: BaseException | str) -> None:
        """Mark the item failed with ``exc``; a resumed run retries it up to max_attempts.

        Raises:
            InvalidInputError: the item was already marked done or failed.
        """
        if self._resolved:
            raise InvalidInputError(f"item {self.group}/{self.id} was already marked")
        self._resolved = True
        self.run._mark(ItemMark(self.group, self.id, False, None, _error_text(exc)), self._seg)


class Stage:
    """A named stage of a run: ``done`` tells whether it completed in this run."""

    def __init__(self, run: Run, name: str) -> None:
        _inputs.text(name, "stage name", empty=False)
        self.run = run
        self.name = name
        self._checkpoint: Checkpoint | None = None
        self._looked = False

    def __repr__(self) -> str:
        return f"<Stage {self.name} done={self.done}>"

    @property
    def checkpoint(self) -> Checkpoint | None:
        """Return the STAGE checkpoint that completed this stage in this run, or None."""
        if not self._looked:
            mgr = self.run.manager
            q = ListQuery(
                process_id=self.run.process_id,
                level=Level.STAGE,
                name=self.name,
                status=Status.VALID,
            )
            self._checkpoint = next(
                (c for c in mgr.backend.list(q) if c.metadata.get(RUN_KEY) == self.run.id), None
            )
            self._looked = True
        return self._checkpoint

    @property
    def done(self) -> bool:
        """Tell whether the stage completed in this run."""
        return self.checkpoint is not None

    @property
    def result(self) -> Any:
        """Return the state saved by ``complete``, every byte verified.

        Raises:
            InvalidInputError: the stage has not completed.
            CorruptCheckpointError: the saved result is damaged (rerun the stage).
        """
        cp = self.checkpoint
        if cp is None:
            raise InvalidInputError(
                f"stage {self.name!r} has not completed in run {self.run.id}",
                hint="Check stage.done first, and call stage.complete(result).",
            )
        return self.run.manager.load(cp.id)

    def complete(self, result: Any = None, *, metadata: dict[str, Any] | None = None) -> Checkpoint:
        """Save ``result`` as this stage's STAGE checkpoint and mark the stage done.

        Item marks queued before are committed first.

        Raises:
            UnsupportedTypeError: the result holds a value with no encoding (stage not done).
            StoreFullError, StoreIOError: nothing was committed.
        """
        self.run.commit()
        meta = {**(metadata or {}), RUN_KEY: self.run.id}
        cp = self.run.manager.save(
            self.run.process_id,
            result,
            level=Level.STAGE,
            name=self.name,
            metadata=meta,
            parent=self.run.pipeline_checkpoint(),
        )
        self._checkpoint, self._looked = cp, True
        return cp

    def compute(
        self,
        fn: Callable[[], Any],
        *,
        lease: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Return the stage's result, computing it with ``fn()`` in exactly one worker.

        Done already: its saved result. Otherwise the first worker to claim the
        stage runs ``fn`` and saves what it returns (as ``complete``) while the
        others wait for it and then load it; if that worker dies, another takes
        over once its lease (default: the run's) expires. When ``fn`` raises, the
        claim is let go (another waiting worker tries) and the error propagates.

        Raises:
            UnsupportedTypeError: ``fn``'s result has no encoding (stage not done).
            InvalidInputError: a bad lease.

        >>> import ckptlite
        >>> with ckptlite.open("memory://") as mgr, mgr.run("job") as run:
        ...     run.stage("load").compute(lambda: [1, 2])
        [1, 2]
        """
        run = self.run
        lease = run.lease if lease is None else check_lease(lease)
        if self.done:
            return self.result
        if run.worker is None:  # a completed run reused by key: the stage is new to it
            self.complete(fn(), metadata=metadata)
            return self.result
        run._use_lease(lease)
        with run._lock:
            run._active += 1
        try:
            return self._compute(fn, lease, metadata)
        finally:
            with run._lock:
                run._active -= 1

    def _compute(self, fn: Callable[[], Any], lease: float, metadata: dict[str, Any] | None) -> Any:
        run = self.run
        backend = run.manager.backend
        while True:
            got = backend.claim_stage(run.id, self.name, run.worker_id, lease)
            self._looked = False
            if self.done:
                if got != "done":
                    backend.finish_stage(run.id, self.name)
                return self.result
            if got == "claimed":
                try:
                    result = fn()
                except BaseException:
                    backend.release_segments(run.id, run.worker_id, self.name, [-1])
                    raise
                self._looked = False
                if not self.done:  # unless a worker that took over (lost lease) finished first
                    self.complete(result, metadata=metadata)
                backend.finish_stage(run.id, self.name)
                return self.result
            run._reap(waiting=True)
            time.sleep(run._poll)


class Run:
    """A run of a process, as one worker sees it: lifecycle, stages, the ledger. Use ``with``."""

    def __init__(
        self,
        manager: RunManager,
        record: RunRecord,
        *,
        resumed: bool,
        batch_size: int,
        batch_seconds: float,
        max_attempts: int,
        worker: WorkerInfo | None = None,
        completed_before: bool = False,
    ) -> None:
        self.manager = manager
        self.record = record
        self.resumed = resumed
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_attempts = max_attempts
        self.worker = worker
        self.completed_before = completed_before
        self.lease = worker.lease if worker else 60.0
        self._lock = threading.RLock()
        self._pending: list[ItemMark] = []
        self._closing: list[tuple[str, int]] = []
        self._touched: dict[tuple[str, int], list[Any]] = {}  # held batches marked in
        self._last_flush = time.monotonic()
        self._last_progress = 0.0
        self._failed_now: set[tuple[str, str]] = set()
        self._exhausted: set[tuple[str, str]] = set()
        self._totals: dict[str, tuple[int, int]] = {}  # group -> (done before, total)
        self._ndone = 0  # done-marks made in this session
        self._others = 0  # other live workers, as the last heartbeat saw them
        self._active = 0  # items loops and stage computes running (threads working for it)
        self._beat_every = self.lease / 3
        self._poll = min(0.1, self.lease / 8)
        self._node = node()
        self._heart: Heart | None = None
        # Marks are committed by the worker's background thread (Heart) on a store where
        # a commit is round trips (PostgreSQL), woken by ``_due``: see _mark.
        self._background = worker is not None and manager.backend.commits_in_background
        self._due = threading.Event()
        self._commit_lock = threading.Lock()
        self._bg_error: Exception | None = None
        if worker is not None:
            LIVE[worker.worker_id] = self
            self._heart = Heart(self, self._due)
            self._heart.start()
        self._pipeline: Checkpoint | None = None
        self._tokens: list[contextvars.Token[Run | None]] = []

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.process_id} {self.status.value}>"

    def pipeline_checkpoint(self) -> Checkpoint:
        """Return this run's PIPELINE checkpoint (made on first use): its stages' parent.

        One per run, whichever workers need it at once: the one that claims it
        (``claim_stage`` slot -2) saves it, the others wait for it.

        Raises:
            StoreFullError, StoreIOError: it could not be saved.
        """
        with self._lock:
            if self._pipeline is None:
                self._pipeline = self._find_pipeline()
            if self._pipeline is None:
                self._pipeline = self._make_pipeline()
            return self._pipeline

    def _find_pipeline(self) -> Checkpoint | None:
        q = ListQuery(process_id=self.process_id, level=Level.PIPELINE, name=PIPELINE_NAME)
        mine = [c for c in self.manager.backend.list(q) if c.metadata.get(RUN_KEY) == self.id]
        # Stores written before the claim may hold two: the oldest is the run's.
        return min(mine, key=lambda c: c.seq) if mine else None

    def _save_pipeline(self) -> Checkpoint:
        return self.manager.save(
            self.process_id,
            {"run": self.id},
            level=Level.PIPELINE,
            name=PIPELINE_NAME,
            metadata={RUN_KEY: self.id},
        )

    def _make_pipeline(self) -> Checkpoint:
        if self.worker is None:  # a completed run reused by key: no other worker to race
            return self._save_pipeline()
        backend, seg = self.manager.backend, _PIPELINE_SEG
        while True:
            got = backend.claim_stage(self.id, PIPELINE_NAME, self.worker_id, self.lease, seg=seg)
            found = self._find_pipeline()
            if found is not None or got == "done":
                if got != "done":  # its maker died before finishing its claim
                    backend.finish_stage(self.id, PIPELINE_NAME, seg=seg)
                # Done and gone (deleted since): a new one, as a single worker would.
                return found or self._save_pipeline()
            if got == "claimed":
                try:
                    cp = self._save_pipeline()
                except BaseException:
                    with contextlib.suppress(CkptliteError):
                        backend.release_segments(self.id, self.worker_id, PIPELINE_NAME, [seg])
                    raise
                backend.finish_stage(self.id, PIPELINE_NAME, seg=seg)
                return cp
            self._reap()  # held: another worker saves it now (or died doing so)
            time.sleep(min(self._poll, 0.02))

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def process_id(self) -> str:
        return self.record.process_id

    @property
    def status(self) -> RunStatus:
        return self.record.status

    @property
    def worker_id(self) -> str:
        """This worker's id: host, pid and a random suffix ("" for a reused completed run)."""
        return self.worker.worker_id if self.worker else ""

    def workers(self) -> list[WorkerRecord]:
        """Return the run's workers (live or not), oldest first."""
        return self.manager.backend.list_workers(self.id)

    def counts(self) -> RunCounts:
        """Return the run's items done / failed / claimed / pending and its live workers."""
        return self.manager.backend.run_counts(self.id)

    def __enter__(self) -> Run:
        self._tokens.append(_CURRENT.set(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            token = self._tokens.pop()
            with contextlib.suppress(ValueError):  # exited in another context than entered
                _CURRENT.reset(token)
        if self.record.status != RunStatus.RUNNING or self.worker is None:
            return  # finished explicitly inside the block, or a completed run reused
        try:
            self.commit()
        except BaseException as e:
            self._finish(exc or e)
            raise
        self._finish(exc)

    def _use_lease(self, lease: float) -> None:
        with self._lock:
            self._beat_every = min(self._beat_every, lease / 3)
            self._poll = min(self._poll, lease / 8)

    def _reap(self, waiting: bool = False) -> None:
        """Expire the workers of this run seen dead from here (see ``alive``)."""
        backend = self.manager.backend
        dead = [
            (w, LIVE.get(w.worker_id))
            for w in backend.list_workers(self.id)
            if w.live and w.worker_id != self.worker_id and not alive(w, self._node, waiting)
        ]
        gone = [w.worker_id for w, run in dead if run is None]
        if gone:
            backend.reap_workers(self.id, gone)
        for w, run in dead:
            if run is None:
                continue
            # A Run of this process seen idle may have started a loop since, and claimed:
            # its loops count themselves under its lock before they claim, so it is
            # looked at again under that lock, held until its batches are freed.
            with run._lock:
                if not alive(w, self._node, waiting):
                    backend.reap_workers(self.id, [w.worker_id])

    # -- stages ---------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        """Return the handle of stage ``name`` (done, result, complete, compute).

        Raises:
            InvalidInputError: ``name`` is empty or not a str.
        """
        return Stage(self, name)

    # -- items ----------------------------------------------------------------------

    def items(
        self,
        group: str,
        item_ids: Iterable[str],
        *,
        max_attempts: int | None = None,
        lease: float | None = None,
        claim: int | None = None,
    ) -> Iterator[WorkItem]:
        """Yield a ``WorkItem`` for each id of ``group`` not done, that no live worker holds.

        The ids (every worker of the run passes the same, in the same order) are
        read in full when the loop starts (a finite iterable: a list or a generator
        that ends), then cut into batches of ``claim`` items (default: 1/128 of them, 1 to 256);
        free batches are claimed (``claim_count`` of them at a time) with a ``lease``
        (seconds, default: the run's) renewed by the heartbeat. Items that failed ``max_attempts``
        times (default: the run's) are skipped and make the run end FAILED.
        Duplicate ids are yielded once by a worker. When no batch is free, the
        loop waits for the batches other workers hold (taking over those whose
        lease expires); when it ends, queued marks are committed.

        Raises:
            InvalidInputError: ``group`` or an id is not a str; other live workers
                passed other ids for this group.
        """
        _inputs.text(group, "group", empty=False)
        limit = self.max_attempts if max_attempts is None else max_attempts
        lease = self.lease if lease is None else check_lease(lease)
        if claim is not None and (
            isinstance(claim, bool) or not isinstance(claim, int) or claim < 1
        ):
            raise InvalidInputError(f"claim must be a positive int, not {claim!r}")
        if self.completed_before:
            return iter(())
        return self._items(group, item_ids, limit, lease, claim)

    def _items(
        self, group: str, item_ids: Iterable[str], limit: int, lease: float, claim: int | None
    ) -> Iterator[WorkItem]:
        # The progress total is known only when the caller gave a sized collection.
        total = len(item_ids) if isinstance(item_ids, Sized) else 0
        ids = list(item_ids)
        # Every id is checked before anything is written (registering the group).
        try:
            blob = "\x00".join(ids).encode("utf-8")
        except TypeError:
            bad = next(i for i in ids if type(i) is not str)
            raise InvalidInputError(f"item ids must be str, not {bad!r}") from None
        except UnicodeEncodeError:
            for i in ids:
                _inputs.text(i, "item id")
            raise
        fingerprint = hashlib.blake2b(blob, digest_size=16).hexdigest()
        del blob
        backend, lock_ = self.manager.backend, self._lock
        self._use_lease(lease)
        want = claim or max(1, min(_MAX_SEG, len(ids) // 128))
        size, self._others = backend.register_group(
            self.id,
            group,
            total=len(ids),
            seg_size=want,
            fingerprint=fingerprint,
            worker_id=self.worker_id,
            ids=ids,  # kept: `ckptlite items --status pending` lists them
        )
        # Read after registering: a worker alone registers the group afresh (every batch
        # free), so only the ledger tells what workers that left since did.
        done, failed = backend.item_marks(self.id, group)
        with self._lock:
            self._totals[group] = (len(done), total)
        with lock_:
            self._active += 1
        held: set[int] = set()  # claimed, not all yielded: released if the loop stops early
        seen: set[str] = set()
        nseg = -(-len(ids) // size)
        count, cap, claimed_at, ngot, seg_s = 1, max(1, min(64, nseg // 64)), 0.0, 1, 0.0
        new_item, lock, seen_add = WorkItem, self._lock, seen.add
        try:
            while True:
                now = time.monotonic()
                if claimed_at:  # the time the last claim's batches took (work and marks)
                    seg_s = (now - claimed_at) / ngot
                got = backend.claim_segments(self.id, group, self.worker_id, count, lease)
                if not got:
                    claimed_at = 0.0
                    self.commit()  # our closed batches, before anyone waits on them
                    if not backend.group_busy(self.id, group, self.worker_id):
                        break
                    self._reap(waiting=True)
                    time.sleep(self._poll)
                    continue
                claimed_at, ngot = time.monotonic(), len(got)
                left = nseg - 1 - got[-1][0]  # batches are claimed lowest first
                count = claim_count(count, self._others, left, seg_s, cap)
                held.update(seg for seg, _ in got)
                for seg, taken in got:
                    chunk = ids[seg * size : (seg + 1) * size]
                    # Held before (let go, left, or its worker died): what was committed
                    # since this loop read the marks is done.
                    if taken:
                        done.update(backend.done_among(self.id, group, chunk))
                    todo = []
                    for item_id in chunk:
                        if item_id in done or item_id in seen:
                            continue
                        attempts = failed.get(item_id, 0) if failed else 0
                        if attempts >= limit:
                            self._exhausted.add((group, item_id))
                            continue
                        seen_add(item_id)
                        todo.append((item_id, attempts))
                    # yielded and not marked, all yielded, key, not yet yielded
                    st: list[Any] = [0, False, group, seg, len(todo)]
                    if len(todo) < len(chunk):  # the next commit tells how many are left
                        with lock:
                            self._touched[group, seg] = st
                    for item_id, attempts in todo:
                        st[0] += 1
                        st[4] -= 1
                        yield new_item(self, group, item_id, attempts, st)
                    with lock:
                        st[1] = True
                        held.discard(seg)
                        if st[0] == 0:
                            self._closing.append((group, seg))
        finally:
            with lock_:
                self._active -= 1
            if held:
                self._let_go(group, sorted(held))
        self.commit()

    def _let_go(self, group: str, segs: list[int]) -> None:
        """Release the batches of a loop stopped early, its marks committed first."""
        # The worker that takes a batch over skips only the items committed: marks still
        # queued would be done twice. Best effort (the store may be closed by now): their
        # lease expires too, and marks that failed stay queued.
        with contextlib.suppress(CkptliteError):
            self.commit()
        with contextlib.suppress(CkptliteError):
            self.manager.backend.release_segments(self.id, self.worker_id, group, segs)

    def _mark(self, mark: ItemMark, seg: list[Any] | None = None) -> None:
        with self._lock:
            pending = self._pending
            pending.append(mark)
            if mark.ok:
                self._ndone += 1
                if self._failed_now:
                    self._failed_now.discard((mark.group, mark.item_id))
            else:
                self._failed_now.add((mark.group, mark.item_id))
            if seg is not None:
                seg[0] -= 1
                if not seg[0] and seg[1]:
                    self._closing.append((seg[2], seg[3]))
                else:
                    self._touched[seg[2], seg[3]] = seg
            due = len(pending) >= self.batch_size or (
                time.monotonic() - self._last_flush >= self.batch_seconds
            )
            if due and self._background and self._bg_error is None:
                # The background thread commits it; the item path waits only when it
                # falls behind.
                due = len(pending) >= 4 * self.batch_size
                if not due:
                    self._due.set()
        if due:
            self.commit()

    def commit(self) -> None:
        """Commit the queued item marks (with their states) in one transaction.

        Batches whose items are all marked are set done in the same transaction.

        Raises:
            StoreFullError, StoreIOError, StoreLockedError: nothing of the batch was
                committed; the marks stay queued for the next commit.
        """
        with self._commit_lock:  # the background thread may be committing
            self._commit_queued()

    def _commit_queued(self) -> None:
        # Commits run one at a time (``_commit_lock`` held), in the order their marks
        # were queued; marks queued meanwhile wait for the next. A batch is closed in
        # the transaction of its last marks or after it, never before: a failed commit
        # puts its marks and closings back in front of the queue.
        with self._lock:
            batch, self._pending = self._pending, []
            closing, self._closing = self._closing, []
            touched, self._touched = self._touched, {}
            # Items of a held batch not marked once this commits: yielded and not
            # marked, or not yet yielded (``claimed`` in the run's counts).
            unmarked = [(g, seg, st[0] + st[4]) for (g, seg), st in touched.items()]
        try:
            if closing or unmarked:
                self.manager.backend.mark_items(
                    self.id, batch, closing=closing, worker_id=self.worker_id, unmarked=unmarked
                )
            elif batch:
                self.manager.backend.mark_items(self.id, batch)
        except BaseException:
            with self._lock:
                self._pending = batch + self._pending
                self._closing = closing + self._closing
                self._touched = {**touched, **self._touched}
            raise
        self._bg_error = None
        with self._lock:
            self._last_flush = now = time.monotonic()
            report = bool(batch) and now - self._last_progress >= 1.0
            if report:
                self._last_progress = now
        if report:
            self._update(progress=self.progress)

    @property
    def progress(self) -> tuple[int, int]:
        """Return (done, total) over the groups iterated in this session.

        ``done`` counts items done before this session plus done-marks made in it.
        """
        with self._lock:
            return (
                sum(d for d, _ in self._totals.values()) + self._ndone,
                sum(t for _, t in self._totals.values()),
            )

    def results(self, group: str) -> dict[str, Any]:
        """Return ``{item id: state}`` of the group's committed done items."""
        allow = self.manager.allow_pickle
        return {
            r.item_id: decode_item_state(r.state, allow_pickle=allow)
            for r in self.manager.backend.list_items(self.id, group)
            if r.ok
        }

    def ledger(self, group: str | None = None) -> list[ItemRecord]:
        """Return the committed ledger entries of this run (states still encoded)."""
        return self.manager.backend.list_items(self.id, group)

    # -- lifecycle --------------------------------------------------------------------

    def finish(self, error: BaseException | str | None = None) -> RunRecord:
        """Commit queued marks and leave the run; the last worker out ends it.

        The last live worker ends it COMPLETED when every registered item group is
        done and every begun stage complete, FAILED with ``error`` (or a worker's
        error, or when items failed and were not done since: a resumed run retries
        them); otherwise, and while other workers are live, it stays RUNNING.
        """
        self.commit()
        return self._finish(error)

    def _finish(self, error: BaseException | str | None) -> RunRecord:
        if self.worker is None:
            return self.record
        if self._heart is not None:
            self._heart.stop.set()
            self._due.set()
        text = None if error is None else _error_text(error)
        backend = self.manager.backend
        with contextlib.suppress(CkptliteError):  # best effort: a lease expires anyway
            self._reap()
        counts = backend.leave_run(self.id, self.worker_id, text)
        LIVE.pop(self.worker_id, None)
        if counts.others_live:
            self.record = backend.get_run(self.id)
            return self.record
        with self._lock:
            failures = len(self._failed_now | self._exhausted)
        if text is None and counts.errors:
            text = counts.errors[0]
        if text is None and (failures or counts.failed):
            text = f"{max(failures, counts.failed)} item(s) failed"
        if text is None and counts.open_work:
            self.record = self._update(progress=self.progress)
            return self.record  # work left (a stage or items not done): a resume finishes it
        status = RunStatus.FAILED if text else RunStatus.COMPLETED
        return self._update(status=status, error=text, finished=True, progress=self.progress)

    def _update(
        self,
        *,
        status: RunStatus | None = None,
        error: str | None = None,
        finished: bool = False,
        progress: tuple[int, int] | None = None,
    ) -> RunRecord:
        now = _now()
        rec = self.record.replace(
            status=status or self.record.status,
            updated_at=now,
            finished_at=now if finished else self.record.finished_at,
            error=error if status is not None else self.record.error,
            progress=progress if progress is not None else self.record.progress,
        )
        self.record = self.manager.backend.update_run(rec)
        return self.record


def open_run(
    manager: RunManager,
    process_id: str,
    *,
    resume: bool = True,
    run_id: str | None = None,
    batch_size: int = 1000,
    batch_seconds: float = 2.0,
    max_attempts: int = 3,
    key: str | dict[str, Any] | None = None,
    force: bool = False,
    lease: float = 60.0,
) -> Run:
    """Join the run of ``process_id`` that workers share, or start one (see module doc).

    Raises:
        InvalidInputError: a bad argument, or ``run_id`` belongs to another process.
        RunNotFoundError: no run ``run_id``.
    """
    if not isinstance(process_id, str) or not process_id:
        raise InvalidInputError(f"process_id must be a non-empty str, not {process_id!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, not {batch_size!r}")
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidInputError(f"max_attempts must be a positive int, not {max_attempts!r}")
    if not batch_seconds > 0:
        raise InvalidInputError(f"batch_seconds must be > 0, not {batch_seconds!r}")
    lease = check_lease(lease)
    digest = None if key is None else run_key(key)
    if digest is not None and (run_id is not None or not resume):
        raise InvalidInputError(
            "key= names the run to reuse or join: it cannot go with run_id= or resume=False",
            hint="Use force=True to start the keyed work over.",
        )
    backend = manager.backend
    worker = new_worker(lease)
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "batch_seconds": batch_seconds,
        "max_attempts": max_attempts,
    }
    now = _now()
    fresh = RunRecord(new_run_id(), process_id, RunStatus.RUNNING, now, now)
    if run_id is not None:
        record = backend.get_run(run_id)
        if record.process_id != process_id:
            raise InvalidInputError(
                f"run {run_id} belongs to process {record.process_id!r}, not {process_id!r}"
            )
        failed = record.status == RunStatus.FAILED
        if record.status != RunStatus.RUNNING:
            record = backend.update_run(
                record.replace(
                    status=RunStatus.RUNNING, error=None, finished_at=None, updated_at=now
                )
            )
        backend.add_worker(record.id, worker, reset=failed)
        how = "resume"
    elif not resume:
        record = backend.create_run(fresh)
        backend.add_worker(record.id, worker)
        how = "create"
    else:
        record, how = backend.join_run(fresh, digest, worker, force=force)
    if how == "reuse":
        return Run(manager, record, resumed=False, completed_before=True, **kwargs)
    run = Run(manager, record, resumed=how != "create", worker=worker, **kwargs)
    if how != "create":
        run._reap()
    return run
