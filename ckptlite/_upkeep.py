"""Store upkeep on the manager: delete, verify, gc, stats, backup and retention.

A mixin of ``CheckpointManager``, split from it by responsibility: these calls
look after the store rather than save or load a state. It uses the manager's
backend, state engine and policy, and imports nothing of the manager.
"""

from __future__ import annotations

import builtins
import os
import shutil
from collections.abc import Callable
from typing import Any

from . import _inputs, _retention
from ._engine import StateIO
from ._paths import os_error, to_path
from ._stores import open_backend
from .backends.base import Backend
from .errors import InvalidInputError, ReadOnlyStoreError
from .policies import CheckpointPolicy, RetentionReport
from .types import BackupReport, GcReport, StorageConfig, VerifyReport

__all__ = ["Upkeep"]


class Upkeep:
    """The manager's upkeep calls (see ``CheckpointManager``)."""

    backend: Backend
    engine: StateIO
    policy: CheckpointPolicy | None
    readonly: bool

    @property
    def url(self) -> str:
        return self.backend.url

    def _refuse_write(self, what: str) -> None:
        """Raise ReadOnlyStoreError if the store is open read-only (before any work)."""
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.url} is open read-only: cannot {what}")

    def apply_retention(
        self,
        process_id: str | None = None,
        policy: CheckpointPolicy | None = None,
        dry_run: bool = False,
    ) -> RetentionReport:
        """Remove what ``policy`` (default: the manager's) does not keep; report why.

        Works slot by slot over one process, or the whole store; with ``dry_run``
        nothing is removed and the report tells what would be.

        Raises:
            InvalidInputError: no policy given and the manager has none.
            ReadOnlyStoreError: the store is open read-only (and not ``dry_run``).

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> for i in range(5):
        ...     _ = mgr.save("p", i)
        >>> len(mgr.apply_retention("p", ckptlite.CheckpointPolicy(keep_last=2)).removed)
        3
        """
        if not dry_run:
            self._refuse_write("remove checkpoints")
        return _retention.apply_retention(
            self.backend, _inputs.optional(process_id, "process_id"), policy or self.policy, dry_run
        )

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        """Delete a checkpoint and all its descendants; return the ids deleted.

        Chunks they alone used are reclaimed by the next ``gc``.

        Raises:
            CheckpointNotFoundError: no such id.
            ReadOnlyStoreError: the store is open read-only.
        """
        self._refuse_write("delete")
        return self.backend.delete(_inputs.text(checkpoint_id, "checkpoint id"))

    def verify(
        self, full: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> VerifyReport:
        """Check the store; with ``full``, read and hash every byte.

        ``progress(done, total)`` is called as chunks are hashed (``full`` only).

        Checkpoints found damaged are marked CORRUPTED; with ``full``, ones marked
        CORRUPTED that now verify are marked VALID again (except imports whose legacy
        source was already corrupted: ``metadata["legacy_corrupted"]``). On a store
        open read-only nothing is marked: the report alone says what is damaged.
        """
        return self.engine.verify(full, progress)

    def gc(self, dry_run: bool = False) -> GcReport:
        """Remove chunks no checkpoint uses and temp files of dead writers.

        Raises:
            ReadOnlyStoreError: the store is open read-only (and not ``dry_run``).
        """
        if not dry_run:
            self._refuse_write("collect garbage")
        return self.backend.gc(dry_run=dry_run)

    def stats(self) -> dict[str, Any]:
        """Return counts and byte totals; ``dedup_ratio`` is logical / stored bytes.

        Keys: checkpoints, chunks, logical_bytes, stored_bytes, dedup_ratio,
        by_process ({process: {level: count}}), by_status ({status: count}),
        item_results ({count, logical_bytes, stored_bytes}: the done items' states in
        the run ledger; the byte totals include them).
        """
        s = dict(self.backend.stats())
        items = s.setdefault("item_results", {"count": 0, "logical_bytes": 0, "stored_bytes": 0})
        s["logical_bytes"] += items["logical_bytes"]
        s["stored_bytes"] += items["stored_bytes"]
        s["dedup_ratio"] = s["logical_bytes"] / s["stored_bytes"] if s["stored_bytes"] else 1.0
        return s

    def backup(
        self,
        dest: str | os.PathLike[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> BackupReport:
        """Copy the store, while it stays in use, to the new directory ``dest``.

        The database goes through SQLite's online backup API (never a raw copy of a
        live file), then the chunk files it references; the copy is built beside
        ``dest`` and renamed into place, so ``dest`` is either complete or absent.
        ``progress(done, total)`` is called as chunk files are copied.

        Raises:
            ConfigError: this kind of store has no file backup (use an export archive).
            InvalidInputError: ``dest`` exists and is not an empty directory, or is no path.
            StoreFullError, StoreError: the copy could not be written (none is left).

        >>> import ckptlite, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> with ckptlite.open(os.path.join(d, "a")) as mgr:
        ...     _ = mgr.save("run", {"x": 1})
        ...     mgr.backup(os.path.join(d, "b")).checkpoints
        1
        """
        if not self.backend.supports_backup:
            self.backend.backup(dest, progress)  # raises ConfigError: no file backup here
        target = to_path(dest, "backup destination")
        try:
            if target.exists() and not (target.is_dir() and not any(target.iterdir())):
                raise InvalidInputError(
                    f"backup destination {target} exists", hint="Pick a new directory."
                )
        except OSError as e:
            raise os_error(e, f"backup destination {target}") from e
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            self.backend.backup(partial, progress)
            os.replace(partial, target)
        except OSError as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise os_error(e, f"backing up to {target}") from e
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        copy = open_backend(StorageConfig(str(target), durability="none"), create=False)
        try:
            s = copy.stats()
        finally:
            copy.close()
        return BackupReport(str(target), s["checkpoints"], s["chunks"], s["stored_bytes"])
