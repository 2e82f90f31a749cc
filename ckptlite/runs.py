"""Pipeline runs, stages and the work-item ledger (the manager side).

A run records its lifecycle (running / completed / failed with the error),
timestamps and progress. ``run.stage(name)`` remembers a finished stage as a
STAGE checkpoint tagged with the run id, so a rerun skips it. ``run.items(group,
ids)`` yields only the items the ledger does not have as done; ``item.done(state)``
queues a done-mark with its (encoded) state, and marks are committed in batches
(every ``batch_size`` marks or ``batch_seconds`` seconds, when a loop over
``items`` ends, when a stage completes, and when the run's ``with`` exits), each
batch in one transaction. A crash loses at most the open batch: those items run
again; a committed done-mark is never lost and never recorded twice.

Runs are keyed by process: ``mgr.run(pid)`` resumes the newest run of ``pid``
when it is unfinished (RUNNING, or FAILED), and starts a new one when the newest
completed; ``resume=False`` always starts a new run and ``run_id=`` reopens one
exact run. A run resumed while another process still works on it shares its
ledger: done-marks stay exactly-once, but both may work on the same items.

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
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sized
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from . import _inputs
from ._envelope import decode_item_state, encode_item_state
from .backends.base import Backend, ListQuery
from .errors import InvalidInputError
from .types import Checkpoint, ItemMark, ItemRecord, Level, RunRecord, RunStatus, Status

__all__ = [
    "PIPELINE_NAME",
    "RUN_KEY",
    "Run",
    "RunManager",
    "Stage",
    "WorkItem",
    "current_run",
    "decode_item_state",
    "encode_item_state",
    "open_run",
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


class WorkItem:
    """One pending item yielded by ``run.items``: call ``done`` or ``fail`` once."""

    __slots__ = ("_resolved", "attempts", "group", "id", "run")

    def __init__(self, run: Run, group: str, item_id: str, attempts: int) -> None:
        self.run = run
        self.group = group
        self.id = item_id
        self.attempts = attempts  # failed attempts recorded before this one
        self._resolved = False

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
        self.run._mark(_new_mark(ItemMark, (self.group, self.id, True, data, None)))

    def fail(self, exc: BaseException | str) -> None:
        """Mark the item failed with ``exc``; a resumed run retries it up to max_attempts.

        Raises:
            InvalidInputError: the item was already marked done or failed.
        """
        if self._resolved:
            raise InvalidInputError(f"item {self.group}/{self.id} was already marked")
        self._resolved = True
        self.run._mark(ItemMark(self.group, self.id, False, None, _error_text(exc)))


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


class Run:
    """A run of a process: lifecycle, stages and the work-item ledger. Use it in ``with``."""

    def __init__(
        self,
        manager: RunManager,
        record: RunRecord,
        *,
        resumed: bool,
        batch_size: int,
        batch_seconds: float,
        max_attempts: int,
    ) -> None:
        self.manager = manager
        self.record = record
        self.resumed = resumed
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_attempts = max_attempts
        self._lock = threading.RLock()
        self._pending: list[ItemMark] = []
        self._last_flush = time.monotonic()
        self._last_progress = 0.0
        self._failed_now: set[tuple[str, str]] = set()
        self._exhausted: set[tuple[str, str]] = set()
        self._totals: dict[str, tuple[int, int]] = {}  # group -> (done before, total)
        self._ndone = 0  # done-marks made in this session
        self._pipeline: Checkpoint | None = None
        self._tokens: list[contextvars.Token[Run | None]] = []

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.process_id} {self.status.value}>"

    def pipeline_checkpoint(self) -> Checkpoint:
        """Return this run's PIPELINE checkpoint (made on first use): its stages' parent.

        Raises:
            StoreFullError, StoreIOError: it could not be saved.
        """
        with self._lock:
            if self._pipeline is None:
                q = ListQuery(process_id=self.process_id, level=Level.PIPELINE, name=PIPELINE_NAME)
                mine = [
                    c for c in self.manager.backend.list(q) if c.metadata.get(RUN_KEY) == self.id
                ]
                # Two workers may both have made one: the oldest is the run's.
                self._pipeline = min(mine, key=lambda c: c.seq) if mine else None
            if self._pipeline is None:
                self._pipeline = self.manager.save(
                    self.process_id,
                    {"run": self.id},
                    level=Level.PIPELINE,
                    name=PIPELINE_NAME,
                    metadata={RUN_KEY: self.id},
                )
            return self._pipeline

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def process_id(self) -> str:
        return self.record.process_id

    @property
    def status(self) -> RunStatus:
        return self.record.status

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
        if self.record.status != RunStatus.RUNNING:
            return  # finished explicitly inside the block
        try:
            self.commit()
        except BaseException as e:
            self._finish(exc or e)
            raise
        self._finish(exc)

    # -- stages ---------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        """Return the handle of stage ``name`` (``.done``, ``.result``, ``.complete``).

        Raises:
            InvalidInputError: ``name`` is empty or not a str.
        """
        return Stage(self, name)

    # -- items ----------------------------------------------------------------------

    def items(
        self, group: str, item_ids: Iterable[str], *, max_attempts: int | None = None
    ) -> Iterator[WorkItem]:
        """Yield a ``WorkItem`` for each id of ``group`` not yet done in this run.

        Items that failed ``max_attempts`` times (default: the run's) are skipped and
        make the run end FAILED. Duplicate ids are yielded once. When the loop ends,
        queued marks are committed.

        Raises:
            InvalidInputError: ``group`` or an id is not a str.
        """
        _inputs.text(group, "group", empty=False)
        limit = self.max_attempts if max_attempts is None else max_attempts
        done, failed = self.manager.backend.item_marks(self.id, group)
        total = len(item_ids) if isinstance(item_ids, Sized) else 0
        seen: set[str] = set()
        with self._lock:
            self._totals[group] = (len(done), total)
        # The hot loop of a 1,000,000-item ledger: locals and cheap checks first.
        seen_add, new_item = seen.add, WorkItem
        for item_id in item_ids:
            if item_id in done or item_id in seen:
                continue
            if type(item_id) is not str:
                raise InvalidInputError(f"item ids must be str, not {item_id!r}")
            if not item_id.isascii():
                _inputs.text(item_id, "item id")  # refused now, not when its mark commits
            attempts = failed.get(item_id, 0) if failed else 0
            if attempts >= limit:
                self._exhausted.add((group, item_id))
                continue
            seen_add(item_id)
            yield new_item(self, group, item_id, attempts)
        self.commit()

    def _mark(self, mark: ItemMark) -> None:
        with self._lock:
            pending = self._pending
            pending.append(mark)
            if mark.ok:
                self._ndone += 1
                if self._failed_now:
                    self._failed_now.discard((mark.group, mark.item_id))
            else:
                self._failed_now.add((mark.group, mark.item_id))
            due = len(pending) >= self.batch_size or (
                time.monotonic() - self._last_flush >= self.batch_seconds
            )
        if due:
            self.commit()

    def commit(self) -> None:
        """Commit the queued item marks (with their states) in one transaction.

        Raises:
            StoreFullError, StoreIOError, StoreLockedError: nothing of the batch was
                committed; the marks stay queued for the next commit.
        """
        with self._lock:
            batch, self._pending = self._pending, []
            try:
                if batch:
                    self.manager.backend.mark_items(self.id, batch)
            except BaseException:
                self._pending = batch + self._pending
                raise
            self._last_flush = now = time.monotonic()
            if batch and now - self._last_progress >= 1.0:
                self._last_progress = now
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
        """Commit queued marks and end the run: COMPLETED, or FAILED with ``error``.

        Without an error, the run still ends FAILED when items failed and were not
        done since (a resumed run retries them).
        """
        self.commit()
        return self._finish(error)

    def _finish(self, error: BaseException | str | None) -> RunRecord:
        with self._lock:
            failures = len(self._failed_now | self._exhausted)
        text: str | None = None
        if error is not None:
            text = _error_text(error)
        elif failures:
            text = f"{failures} item(s) failed"
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
) -> Run:
    """Resume the newest unfinished run of ``process_id`` or start a new one (see module doc).

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
    backend = manager.backend
    record: RunRecord | None = None
    if run_id is not None:
        record = backend.get_run(run_id)
        if record.process_id != process_id:
            raise InvalidInputError(
                f"run {run_id} belongs to process {record.process_id!r}, not {process_id!r}"
            )
    elif resume:
        newest = backend.list_runs(process_id, limit=1)
        if newest and newest[0].status != RunStatus.COMPLETED:
            record = newest[0]
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "batch_seconds": batch_seconds,
        "max_attempts": max_attempts,
    }
    if record is None:
        now = _now()
        record = backend.create_run(
            RunRecord(new_run_id(), process_id, RunStatus.RUNNING, now, now)
        )
        return Run(manager, record, resumed=False, **kwargs)
    record = backend.update_run(
        record.replace(status=RunStatus.RUNNING, error=None, finished_at=None, updated_at=_now())
    )
    return Run(manager, record, resumed=True, **kwargs)
