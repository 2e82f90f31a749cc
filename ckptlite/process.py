"""Processes that save and resume themselves: ``ResumableProcess`` and ``CheckpointableProcess``.

>>> import ckptlite
>>> from ckptlite import CheckpointableProcess
>>> class Counter(CheckpointableProcess):
...     process_id = "counter"
...     def __init__(self):
...         self.n = 0
...     def get_state(self):
...         return {"n": self.n}
...     def restore_state(self, state):
...         self.n = state["n"]
...     def get_progress(self):
...         return (self.n, 10)
>>> mgr = ckptlite.open("memory://")
>>> c = Counter(); c.checkpoint_manager = mgr; c.n = 7
>>> _ = c.save_checkpoint()
>>> d = Counter(); d.checkpoint_manager = mgr
>>> d.load_checkpoint() is not None, d.n
(True, 7)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError, CorruptCheckpointError, InvalidInputError
from .policies import CheckpointPolicy
from .runs import RUN_KEY, Run, current_run
from .types import Checkpoint, Level, Status

__all__ = [
    "CheckpointableProcess",
    "ProcessManager",
    "ResumableProcess",
    "resume_process",
    "set_default_manager",
]


@runtime_checkable
class ResumableProcess(Protocol):
    """Anything whose state can be taken, restored and measured."""

    def get_state(self) -> Any:
        """Return the state to save (anything the codec encodes)."""

    def restore_state(self, state: Any) -> None:
        """Put the process back into ``state``."""

    def get_progress(self) -> tuple[int, int]:
        """Return ``(done, total)``."""


class ProcessManager(Protocol):
    """What a process uses of its ``CheckpointManager`` (this module does not import it)."""

    def save(
        self,
        process_id: str,
        state: Any,
        *,
        level: Level | str = ...,
        name: str = ...,
        parent: str | Checkpoint | None = ...,
        metadata: dict[str, Any] | None = ...,
        progress: tuple[int, int] | None = ...,
        policy: CheckpointPolicy | None = ...,
    ) -> Checkpoint:
        """Save a process's state (``CheckpointManager.save``)."""

    def resume_from(
        self, process: ResumableProcess, checkpoint_id: str | None = ...
    ) -> Checkpoint | None:
        """Restore a process (``CheckpointManager.resume_from``)."""

    def list(
        self,
        process_id: str | None = ...,
        level: Level | str | None = ...,
        name: str | None = ...,
        status: Status | str | None = ...,
    ) -> list[Checkpoint]:
        """List checkpoints, newest first (``CheckpointManager.list``)."""


class _Loader(Protocol):
    """What ``resume_process`` uses of a ``CheckpointManager``."""

    def get(self, checkpoint_id: str) -> Checkpoint: ...

    def list(
        self,
        process_id: str | None = ...,
        level: Level | str | None = ...,
        name: str | None = ...,
        status: Status | str | None = ...,
    ) -> list[Checkpoint]: ...

    def load(self, checkpoint: str | Checkpoint) -> Any: ...

    def load_latest(
        self, process_id: str, level: Level | str | None = ..., name: str | None = ...
    ) -> tuple[Checkpoint, Any] | None: ...


def _unwired() -> ProcessManager:
    raise ConfigError(
        "no default checkpoint manager is set",
        hint="Set the process's checkpoint_manager (importing ckptlite sets the default).",
    )


#: The manager of a process that has none. ``ckptlite.manager`` sets it to its
#: ``get_checkpoint_manager`` when it loads: this module does not import the manager.
_default_manager: Callable[[], ProcessManager] = _unwired


def set_default_manager(get: Callable[[], ProcessManager]) -> None:
    """Make ``get()`` the manager of processes whose ``checkpoint_manager`` is None."""
    global _default_manager
    _default_manager = get


class CheckpointableProcess:
    """Mixin: saves and resumes a ``ResumableProcess`` through a checkpoint manager.

    Set ``process_id`` (class or instance attribute) and implement ``get_state``,
    ``restore_state`` and ``get_progress``. The mixin needs no ``__init__`` call.

    - ``checkpoint_interval``: seconds between checkpoints for ``should_checkpoint``
      (default 300; ``checkpoint_policy.every_seconds`` wins when set).
    - ``checkpoint_policy``: a ``CheckpointPolicy``: ``every_items`` / ``every_seconds``
      for ``should_checkpoint``, and retention applied to the slot after each save.
    - ``checkpoint_level`` / ``checkpoint_name``: the slot saved to (STEP, "").
    - ``checkpoint_manager``: the manager used; None means ``get_checkpoint_manager()``.
    - ``checkpoint_metadata``: metadata stored with each checkpoint (override it).
    - ``checkpoint_run``: the run it works for; None means the run whose ``with``
      block encloses the call (``mgr.run(...)``), if any. Inside a run, saves are
      tagged with the run (and are children of its PIPELINE checkpoint), and
      ``load_checkpoint`` / ``mgr.resume_from`` resume only that run's saves: a new
      run never picks up the state another run left behind.
    """

    process_id: str
    checkpoint_interval: float = 300.0
    checkpoint_policy: CheckpointPolicy | None = None
    checkpoint_level: Level = Level.STEP
    checkpoint_name: str = ""
    checkpoint_manager: ProcessManager | None = None
    checkpoint_run: Run | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # The clock of should_checkpoint starts when the process is made (the mixin
        # has no __init__ to call), counting items from 0.
        new = super().__new__
        obj = new(cls) if new is object.__new__ else new(cls, *args, **kwargs)
        obj.__dict__["_ckpt_last"] = (time.monotonic(), 0)
        return obj

    @property
    def checkpoint_metadata(self) -> dict[str, Any]:
        """Return metadata saved with each checkpoint (JSON values; override to add some)."""
        return {}

    def get_state(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement get_state()")

    def restore_state(self, state: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement restore_state()")

    def get_progress(self) -> tuple[int, int]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_progress()")

    def _manager(self) -> ProcessManager:
        return self.checkpoint_manager or _default_manager()

    def _checkpoint_scope(self) -> Run | None:
        """Return the run this process saves under and resumes from, or None."""
        return self.checkpoint_run or current_run()

    def _checkpoint_restored(self) -> None:
        """Count from here: called whenever the state was restored (by any path)."""
        self.__dict__["_ckpt_last"] = (time.monotonic(), self.get_progress()[0])

    def _ckpt_mark(self) -> tuple[float, int]:
        mark: tuple[float, int] | None = self.__dict__.get("_ckpt_last")
        if mark is None:  # made without __new__ (copy.copy of an old pickle, ...)
            mark = (time.monotonic(), 0)
            self.__dict__["_ckpt_last"] = mark
        return mark

    def should_checkpoint(self) -> bool:
        """Tell whether a checkpoint is due.

        Due when ``checkpoint_policy.every_items`` items were done since the last
        save, or ``every_seconds`` (else ``checkpoint_interval``) seconds passed.
        Both count from the last save or restore, else from the process's start
        (items from 0).
        """
        since, done_then = self._ckpt_mark()
        seconds = time.monotonic() - since
        items = self.get_progress()[0] - done_then
        policy = self.checkpoint_policy
        if policy is not None and (policy.every_items or policy.every_seconds):
            return policy.should_save(items_since=items, seconds_since=seconds)
        return seconds >= self.checkpoint_interval

    def save_checkpoint(self, *, parent: str | Checkpoint | None = None) -> Checkpoint:
        """Save ``get_state()`` with progress and metadata; prune the slot per the policy.

        Raises:
            UnsupportedTypeError: the state holds a value with no encoding (store unchanged).
            InvalidInputError: no ``process_id``, or bad metadata / progress.
            StoreFullError, StoreIOError: nothing was committed.
        """
        pid = getattr(self, "process_id", None)
        if not isinstance(pid, str) or not pid:
            raise InvalidInputError(
                f"{type(self).__name__}.process_id must be set to a non-empty str",
                hint="Set process_id as a class or instance attribute.",
            )
        progress = self.get_progress()
        metadata = self.checkpoint_metadata
        run = self._checkpoint_scope()
        if run is not None:
            metadata = {**metadata, RUN_KEY: run.id}
            parent = parent if parent is not None else run.pipeline_checkpoint()
        cp = self._manager().save(
            pid,
            self.get_state(),
            level=self.checkpoint_level,
            name=self.checkpoint_name,
            parent=parent,
            metadata=metadata,
            progress=(int(progress[0]), int(progress[1])),
            policy=self.checkpoint_policy,
        )
        self.__dict__["_ckpt_last"] = (time.monotonic(), progress[0])
        return cp

    def load_checkpoint(self, checkpoint_id: str | None = None) -> Checkpoint | None:
        """Restore from ``checkpoint_id`` or the slot's newest loadable checkpoint.

        Returns the checkpoint restored, or None when there is none.

        Raises:
            CheckpointNotFoundError: ``checkpoint_id`` does not exist.
            CorruptCheckpointError: ``checkpoint_id`` fails verification.
        """
        return self._manager().resume_from(self, checkpoint_id)


def resume_process(
    mgr: _Loader,
    process: ResumableProcess,
    checkpoint_id: str | None = None,
    *,
    process_id: str | None = None,
    level: Level | str | None = None,
    name: str | None = None,
) -> Checkpoint | None:
    """Restore ``process`` (see ``CheckpointManager.resume_from``)."""
    restored = getattr(process, "_checkpoint_restored", None)
    if checkpoint_id is not None:
        cp = mgr.get(checkpoint_id)
        process.restore_state(mgr.load(cp.id))
        if restored is not None:
            restored()
        return cp
    pid = process_id or getattr(process, "process_id", None)
    if not isinstance(pid, str) or not pid:
        raise InvalidInputError(
            "resume_from needs a process_id: pass process_id= or give the process one"
        )
    if level is None:
        level = getattr(process, "checkpoint_level", None)
    if name is None:
        name = getattr(process, "checkpoint_name", None)
    scope = getattr(process, "_checkpoint_scope", None)
    run = scope() if scope is not None else None
    if run is not None:
        hit = _latest_of_run(mgr, run, pid, level, name)
    else:
        hit = mgr.load_latest(pid, level, name)
    if hit is None:
        return None
    cp, state = hit
    process.restore_state(state)
    if restored is not None:
        restored()
    return cp


def _latest_of_run(
    mgr: _Loader, run: Run, pid: str, level: Level | str | None, name: str | None
) -> tuple[Checkpoint, Any] | None:
    """Return the newest loadable checkpoint of the slot saved under ``run``, and its state."""
    for cp in mgr.list(pid, level, name, Status.VALID):
        if cp.metadata.get(RUN_KEY) != run.id:
            continue
        try:
            return cp, mgr.load(cp.id)
        except CorruptCheckpointError:
            continue  # marked corrupted by load: the next older one
    return None
