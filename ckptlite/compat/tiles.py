"""The tile processor's ``ProcessingCheckpoint``, kept in a ckptlite store and its ledger.

:class:`TileCheckpointer` stands in for the tile processor's checkpoint file:
``_save_checkpoint(cp)`` marks the completed and failed tiles in the process's
work-item ledger (group ``tiles``) and saves the dataclass fields as a STAGE
checkpoint named ``tiles`` (as ``ckptlite migrate`` imports a tile file);
``_load_checkpoint()`` gives the ``ProcessingCheckpoint`` back, its tile lists
read from the ledger. Unlike the legacy file, a resumed run's save does not
forget the tiles an earlier run completed: the ledger accumulates them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..legacy import ledger
from ..legacy.tile import ITEM_GROUP, NAME
from ..types import Level, RunStatus
from ._common import deprecated, open_target

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = ["ProcessingCheckpoint", "TileCheckpointer"]


@dataclass
class ProcessingCheckpoint:
    """Checkpoint for resuming tile processing (the legacy dataclass)."""

    timestamp: float
    completed_tiles: list[str]
    failed_tiles: list[str]
    total_tiles: int
    processing_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_percentage(self) -> float:
        """Return the share of tiles completed, in percent (100 with no tiles)."""
        if self.total_tiles == 0:
            return 100.0
        return (len(self.completed_tiles) / self.total_tiles) * 100.0


class TileCheckpointer:
    """The tile processor's checkpoint calls, on a ckptlite store.

    ``process_id`` names the tile run (``set_checkpoint_file(path)`` sets it to
    the file's name, as ``ckptlite migrate`` names an imported tile file's process).
    """

    def __init__(
        self,
        store: CheckpointManager | str | os.PathLike[str] | None = None,
        process_id: str | None = None,
    ) -> None:
        deprecated(type(self), "mgr.run(process_id).items('tiles', ids)")
        self._mgr = open_target(store)
        self.process_id = process_id

    @property
    def store(self) -> CheckpointManager:
        """The ckptlite manager underneath."""
        return self._mgr

    def set_checkpoint_file(self, checkpoint_file: str | os.PathLike[str]) -> None:
        """Name the tile run after the legacy checkpoint file (its base name)."""
        self.process_id = os.path.basename(os.fspath(checkpoint_file)) or "tiles"

    def _process(self) -> str | None:
        return self.process_id

    def _save_checkpoint(self, checkpoint: ProcessingCheckpoint) -> None:
        """Record ``checkpoint``: its tiles in the ledger, its fields as a checkpoint."""
        process = self._process()
        if process is None:
            return  # no checkpoint file set: the legacy processor saved nothing either
        ledger.record_items(
            self._mgr,
            process,
            {ITEM_GROUP: (tuple(checkpoint.completed_tiles), tuple(checkpoint.failed_tiles))},
        )
        state = asdict(checkpoint)
        self._mgr.save(
            process,
            state,
            level=Level.STAGE,
            name=NAME,
            progress=(len(checkpoint.completed_tiles), checkpoint.total_tiles),
            metadata={
                "legacy_format": "tile",
                "legacy_id": process,
                "legacy_timestamp": checkpoint.timestamp,
                "legacy_order": checkpoint.timestamp,
            },
        )

    def save(
        self,
        completed_tiles: list[str],
        failed_tiles: list[str],
        total_tiles: int,
        processing_parameters: dict[str, Any] | None = None,
    ) -> ProcessingCheckpoint:
        """Build and record a ProcessingCheckpoint stamped now; return it."""
        cp = ProcessingCheckpoint(
            time.time(),
            list(completed_tiles),
            list(failed_tiles),
            total_tiles,
            dict(processing_parameters or {}),
        )
        self._save_checkpoint(cp)
        return cp

    def _load_checkpoint(self) -> ProcessingCheckpoint | None:
        """Return the last checkpoint, its tiles as the ledger has them; None if none."""
        process = self._process()
        if process is None:
            return None
        got = self._mgr.load_latest(process, Level.STAGE, NAME)
        if got is None:
            return None
        _cp, state = got
        if not isinstance(state, dict):
            return None
        done: set[str] = set()
        failed: dict[str, int] = {}
        runs = self._mgr.backend.list_runs(process, limit=1)
        if runs and runs[0].status != RunStatus.COMPLETED:  # the run a resume continues
            done, failed = self._mgr.backend.item_marks(runs[0].id, ITEM_GROUP)
        return ProcessingCheckpoint(
            timestamp=float(state.get("timestamp", 0.0)),
            completed_tiles=sorted(done),
            failed_tiles=sorted(set(failed) - done),
            total_tiles=int(state.get("total_tiles", 0)),
            processing_parameters=dict(state.get("processing_parameters") or {}),
        )

    def clear(self) -> None:
        """Forget the run's checkpoints (the legacy processor unlinked the file on success)."""
        process = self._process()
        if process is None:
            return
        for cp in self._mgr.list(process_id=process, level=Level.STAGE, name=NAME):
            if self._mgr.exists(cp.id):
                self._mgr.delete(cp.id)
        runs = self._mgr.backend.list_runs(process, limit=1)
        if runs and runs[0].status != RunStatus.COMPLETED:  # the next run starts afresh
            now = datetime.now(UTC)
            self._mgr.backend.update_run(
                dataclasses.replace(
                    runs[0], status=RunStatus.COMPLETED, updated_at=now, finished_at=now, error=None
                )
            )
