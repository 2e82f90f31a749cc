"""A run's stages and its PIPELINE checkpoint: ``Stage``, and the mixin ``Run`` inherits.

A stage completes as a STAGE checkpoint tagged with the run id (``RUN_KEY``),
under the run's one PIPELINE checkpoint; ``Stage.compute`` runs its function in
exactly one worker (claim slot -1), and the PIPELINE checkpoint is made by the
worker that claims slot -2. See ``ckptlite.runs``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import _inputs
from ._workers import check_lease
from .backends.base import ListQuery
from .errors import CkptliteError, InvalidInputError
from .types import Checkpoint, Level, Status

if TYPE_CHECKING:
    from .runs import Run, RunManager
    from .types import WorkerInfo

__all__ = ["PIPELINE_NAME", "RUN_KEY", "RunStages", "Stage"]

#: Metadata key tying a checkpoint (the run's PIPELINE checkpoint, its STAGE
#: results, a process's saves inside it) to its run.
RUN_KEY = "ckptlite.run"
#: The slot name of a run's PIPELINE checkpoint, the parent of its stages.
PIPELINE_NAME = "run"

_PIPELINE_SEG = -2  # the claim slot of the run's PIPELINE checkpoint (a stage's is -1)


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


class RunStages:
    """The stages of a ``Run`` (mixed into it): ``stage``, the PIPELINE checkpoint."""

    # Set by ``Run.__init__`` (see there).
    manager: RunManager
    worker: WorkerInfo | None
    lease: float
    _lock: threading.RLock
    _poll: float
    _pipeline: Checkpoint | None

    if TYPE_CHECKING:  # defined by ``Run``

        @property
        def id(self) -> str: ...

        @property
        def process_id(self) -> str: ...

        @property
        def worker_id(self) -> str: ...

        def _reap(self, waiting: bool = False) -> None: ...

    def stage(self, name: str) -> Stage:
        """Return the handle of stage ``name`` (done, result, complete, compute).

        Raises:
            InvalidInputError: ``name`` is empty or not a str.
        """
        return Stage(cast("Run", self), name)  # a Run: this is mixed into it

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
