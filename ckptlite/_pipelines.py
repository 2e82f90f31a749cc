"""Runs and resumable processes on the manager: ``run``, ``list_runs``, ``list_items``...

A mixin of ``CheckpointManager``, split from it by responsibility: these open a
run (``ckptlite.runs``) or restore a process (``ckptlite.process``) on top of
the manager's save and load. Those modules are passed the manager; none imports
it.
"""

from __future__ import annotations

import builtins
from typing import Any, Protocol

from . import _inputs, _items
from .process import ResumableProcess, resume_process
from .runs import Run, RunManager, open_run
from .types import Checkpoint, ItemRecord, Level, RunOverview, RunRecord, Status

__all__ = ["Pipelines"]


class _Front(RunManager, Protocol):
    """What these calls use of the ``CheckpointManager`` they are mixed into."""

    def get(self, checkpoint_id: str) -> Checkpoint: ...

    def load_latest(
        self, process_id: str, level: Level | str | None = ..., name: str | None = ...
    ) -> tuple[Checkpoint, Any] | None: ...

    def _refuse_write(self, what: str) -> None: ...

    def list(
        self,
        process_id: str | None = ...,
        level: Level | str | None = ...,
        name: str | None = ...,
        status: Status | str | None = ...,
    ) -> builtins.list[Checkpoint]: ...


class Pipelines:
    """The manager's runs and process calls (see ``CheckpointManager``)."""

    def resume_from(
        self: _Front,
        process: ResumableProcess,
        checkpoint_id: str | None = None,
        *,
        process_id: str | None = None,
        level: Level | str | None = None,
        name: str | None = None,
    ) -> Checkpoint | None:
        """Restore ``process`` from a checkpoint (default: its slot's newest loadable one).

        The slot is ``process_id`` / ``level`` / ``name``, defaulting to the process's
        ``process_id``, ``checkpoint_level`` and ``checkpoint_name`` attributes.
        Returns the checkpoint restored, or None when there is none (state untouched).

        Raises:
            CheckpointNotFoundError: ``checkpoint_id`` does not exist.
            CorruptCheckpointError: ``checkpoint_id`` fails verification.
            InvalidInputError: no process_id given and the process has none.
        """
        return resume_process(
            self, process, checkpoint_id, process_id=process_id, level=level, name=name
        )

    def run(
        self: _Front,
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
        """Join the run of ``process_id`` that workers share, or start a new one.

        Many workers calling this at once join one run (``run.worker_id``, leases of
        ``lease`` seconds). A newest run that COMPLETED starts a new run;
        ``resume=False`` always starts one; ``run_id`` reopens that run. With
        ``key`` (a str or a dict of parameters), a completed run of the same key is
        reused (``run.completed_before``) unless ``force=True``. See ``ckptlite.runs``.

        Raises:
            InvalidInputError: a bad argument, or ``run_id`` is another process's.
            RunNotFoundError: no run ``run_id``.
            ReadOnlyStoreError: the store is open read-only.

        >>> import ckptlite
        >>> with ckptlite.open("memory://") as mgr, mgr.run("job") as run:
        ...     stage = run.stage("load")
        ...     _ = stage.complete([1, 2]) if not stage.done else None
        ...     run.stage("load").result
        [1, 2]
        """
        self._refuse_write("start or resume a run")
        _inputs.text(process_id, "process_id", empty=False)
        if run_id is not None:
            _inputs.text(run_id, "run_id")
        return open_run(
            self,
            process_id,
            resume=resume,
            run_id=run_id,
            batch_size=batch_size,
            batch_seconds=batch_seconds,
            max_attempts=max_attempts,
            key=key,
            force=force,
            lease=lease,
        )

    def get_run(self: _Front, run_id: str) -> RunRecord:
        """Return one run's record.

        Raises:
            RunNotFoundError: no such run.
            InvalidInputError: ``run_id`` is not a str.

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> with mgr.run("tiles") as run:
        ...     pass
        >>> mgr.get_run(run.id).process_id
        'tiles'
        """
        return self.backend.get_run(_inputs.text(run_id, "run_id"))

    def item_changes(
        self: _Front, run_id: str, after: int | None = None
    ) -> builtins.list[ItemRecord]:
        """Return a run's ledger entries written after the clock ``after``, oldest first.

        Each entry's ``changed`` is the ledger's clock when it was written: poll
        again with the last one's to follow a run (what the dashboard does).
        Without ``after``, every entry.

        Raises:
            RunNotFoundError: no such run.
            InvalidInputError: a bad argument.

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> with mgr.run("tiles") as run:
        ...     for item in run.items("t", ["a", "b"]):
        ...         item.done()
        >>> first = mgr.item_changes(run.id)
        >>> [e.item_id for e in first], mgr.item_changes(run.id, after=first[-1].changed)
        (['a', 'b'], [])
        """
        _inputs.text(run_id, "run_id")
        after = _inputs.whole(after, "after", "Pass the `changed` of the last entry read, or None.")
        self.backend.get_run(run_id)  # an unknown run is an error, not an empty list
        return self.backend.list_items(run_id, after_changed=after)

    def list_runs(self: _Front, process_id: str | None = None) -> builtins.list[RunRecord]:
        """Return the runs of one process (or all), newest first.

        Raises:
            InvalidInputError: ``process_id`` is not a str.
        """
        return self.backend.list_runs(_inputs.optional(process_id, "process_id"))

    def run_overview(self: _Front, process_id: str | None = None) -> builtins.list[RunOverview]:
        """Return the runs of one process (or all), newest first, with counts and workers.

        Raises:
            InvalidInputError: ``process_id`` is not a str.
        """
        backend = self.backend
        return [
            RunOverview(r, backend.run_counts(r.id), tuple(backend.list_workers(r.id)))
            for r in backend.list_runs(_inputs.optional(process_id, "process_id"))
        ]

    def list_items(
        self: _Front, run_id: str, group: str | None = None, status: str | None = None
    ) -> builtins.list[ItemRecord]:
        """Return a run's work items, by group and item id.

        Without ``status``: the ledger's entries (done and failed). ``status`` is
        ``"done"``, ``"failed"``, ``"pending"`` (registered by ``run.items``, no mark,
        not held) or ``"claimed"`` (no mark, in a batch a live worker holds);
        ``ckptlite._items.item_status`` names an entry's.

        Raises:
            RunNotFoundError: no such run.
            InvalidInputError: a bad argument; pending or claimed for a group an
                older ckptlite registered (it kept no ids).

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> with mgr.run("tiles") as run:
        ...     for item in run.items("t", ["a", "b"]):
        ...         break
        >>> [e.item_id for e in mgr.list_items(run.id, status="pending")]
        ['a', 'b']
        """
        _inputs.text(run_id, "run_id")
        group, status = _inputs.optional(group, "group"), _inputs.optional(status, "status")
        return _items.list_items(self.backend, run_id, group, status)

    def load_item(self: _Front, run_id: str, group: str, item_id: str) -> Any:
        """Return the result a done work item was marked with (``item.done(state)``).

        Raises:
            RunNotFoundError: no such run.
            CheckpointNotFoundError: no such item, or it failed (it has no result).
            PickleNotAllowedError: the result holds pickles and the store forbids them.
        """
        for value, what in ((run_id, "run_id"), (group, "group"), (item_id, "item_id")):
            _inputs.text(value, what)
        return _items.load_item(self.backend, run_id, group, item_id, self.allow_pickle)
