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

from .errors import ConfigError, InvalidInputError
from .policies import CheckpointPolicy
from .types import Checkpoint, Level

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


class _Loader(Protocol):
    """What ``resume_process`` uses of a ``CheckpointManager``."""

    def get(self, checkpoint_id: str) -> Checkpoint: ...

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
    """

    process_id: str
    checkpoint_interval: float = 300.0
    checkpoint_policy: CheckpointPolicy | None = None
    checkpoint_level: Level = Level.STEP
    checkpoint_name: str = ""
    checkpoint_manager: ProcessManager | None = None

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

    def _ckpt_mark(self) -> tuple[float, int]:
        mark: tuple[float, int] | None = self.__dict__.get("_ckpt_last")
        if mark is None:
            mark = (time.monotonic(), self.get_progress()[0])
            self.__dict__["_ckpt_last"] = mark
        return mark

    def should_checkpoint(self) -> bool:
        """Tell whether a checkpoint is due.

        Due when ``checkpoint_policy.every_items`` items were done since the last
        save, or ``every_seconds`` (else ``checkpoint_interval``) seconds passed.
        The clock starts at the first call or the last save.
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
        cp = self._manager().save(
            pid,
            self.get_state(),
            level=self.checkpoint_level,
            name=self.checkpoint_name,
            parent=parent,
            metadata=self.checkpoint_metadata,
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
        cp = self._manager().resume_from(self, checkpoint_id)
        if cp is not None:
            self.__dict__["_ckpt_last"] = (time.monotonic(), self.get_progress()[0])
        return cp


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
    if checkpoint_id is not None:
        cp = mgr.get(checkpoint_id)
        process.restore_state(mgr.load(cp.id))
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
    hit = mgr.load_latest(pid, level, name)
    if hit is None:
        return None
    cp, state = hit
    process.restore_state(state)
    return cp
