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
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from ._envelope import decode_item_state, encode_item_state
from ._itemloop import ItemLoop, WorkItem
from ._itemloop import error_text as _error_text
from ._stages import PIPELINE_NAME, RUN_KEY, RunStages, Stage
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
from .backends.base import Backend
from .errors import CkptliteError, InvalidInputError
from .types import (
    Checkpoint,
    ItemMark,
    Level,
    RunCounts,
    RunRecord,
    RunStatus,
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

# The run whose ``with`` block is running (in this thread or task): a
# CheckpointableProcess used inside it saves under it and resumes only from it.
_CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar("ckptlite_run", default=None)


def current_run() -> Run | None:
    """Return the run whose ``with`` block encloses the caller, or None."""
    return _CURRENT.get()


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


class Run(RunStages, ItemLoop):
    """A run of a process, as one worker sees it: lifecycle, stages, the ledger. Use ``with``.

    The lifecycle is here; the stages (``stage``, ``pipeline_checkpoint``) are
    ``_stages.RunStages``, the items loop and its marks (``items``, ``commit``,
    ``progress``, ``results``, ``ledger``) ``_itemloop.ItemLoop``, mixed in.
    """

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
        self._register_lock = threading.Lock()
        # group -> (batch size, ids' fingerprint, loops open) of this worker's running loops
        self._open_groups: dict[str, tuple[int, str, int]] = {}
        self._bg_error: Exception | None = None
        if worker is not None:
            LIVE[worker.worker_id] = self
            self._heart = Heart(self, self._due)
            self._heart.start()
        self._pipeline: Checkpoint | None = None
        self._tokens: list[contextvars.Token[Run | None]] = []

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.process_id} {self.status.value}>"

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
            mine = self._failed_now | self._exhausted
        failures = self._still_failed(mine) if mine else 0
        if text is None and counts.errors:
            text = counts.errors[0]
        if text is None and (failures or counts.failed):
            text = f"{max(failures, counts.failed)} item(s) failed"
        if text is None and counts.open_work:
            self.record = self._update(progress=self.progress)
            return self.record  # work left (a stage or items not done): a resume finishes it
        status = RunStatus.FAILED if text else RunStatus.COMPLETED
        return self._update(status=status, error=text, finished=True, progress=self.progress)

    def _still_failed(self, items: set[tuple[str, str]]) -> int:
        """Count ``items`` (group, id) that the ledger does not have done.

        An item this worker failed may have been done since by the worker that took
        its batch over: only the ledger tells.
        """
        by_group: dict[str, list[str]] = {}
        for group, item_id in items:
            by_group.setdefault(group, []).append(item_id)
        backend = self.manager.backend
        return sum(
            len(ids) - len(backend.marks_among(self.id, group, ids)[0])
            for group, ids in by_group.items()
        )

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
