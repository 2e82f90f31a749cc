"""The legacy pipeline recovery manager (``src/pipelines/recovery``), on a ckptlite store.

Each ``save_checkpoint(experiment_id, stage, context, stage_results)`` stores the
legacy JSON document as the state of a STAGE checkpoint of process
``experiment_id`` named after the stage, exactly as ``ckptlite migrate`` imports
a ``checkpoint_<stage>.json``: the legacy ``load_latest`` and a native
``mgr.load_latest(experiment_id, "stage")`` return the same document.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..types import Checkpoint, Level, Status
from ._common import deprecated, naive_local, open_target

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = ["PipelineCheckpointManager", "checkpoint_document"]

log = logging.getLogger(__name__)
_PLACEHOLDERS = ("merged_dataset", "som_results")


def _get(config: Any, key: str, default: Any) -> Any:
    getter = getattr(config, "get", None)
    if getter is None:
        return default
    try:
        return getter(key, default)
    except TypeError:
        return default


def _shared(shared_data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in shared_data.items():
        if key in _PLACEHOLDERS:
            out[key] = f"<{type(value).__name__} object>"
        elif hasattr(value, "to_dict"):
            out[key] = value.to_dict()
        else:
            out[key] = value
    return out


def _results(stage_results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage, result in stage_results.items():
        if hasattr(result, "to_dict"):
            out[stage] = result.to_dict()
        elif hasattr(result, "__dict__"):
            out[stage] = {
                "success": getattr(result, "success", True),
                "metrics": getattr(result, "metrics", {}),
                "warnings": getattr(result, "warnings", []),
            }
        else:
            out[stage] = result
    return out


def checkpoint_document(
    experiment_id: str,
    stage_name: str,
    context: Any,
    stage_results: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return the legacy checkpoint document, as JSON data (what the legacy file held)."""
    doc: dict[str, Any] = {
        "experiment_id": experiment_id,
        "stage": stage_name,
        "timestamp": (now or datetime.now()).isoformat(),
        "completed_stages": [],
        "shared_data": _shared(getattr(context, "shared_data", {}) or {}),
        "metadata": getattr(context, "metadata", {}) or {},
        "quality_metrics": getattr(context, "quality_metrics", {}) or {},
        "stage_results": _results(stage_results),
        "progress": {"completed_stages": 0, "stages": {}},
    }
    # What json.dump(default=str) then json.load gave the legacy loader.
    loaded: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return loaded


class PipelineCheckpointManager:
    """The legacy pipeline ``CheckpointManager(config)``, backed by a ckptlite store.

    ``config.get('paths.checkpoint_dir')`` names the ckptlite store (unless
    ``store`` is given); ``pipeline.max_checkpoints_per_experiment`` (10) stages
    are kept per experiment.
    """

    def __init__(
        self, config: Any = None, store: CheckpointManager | str | os.PathLike[str] | None = None
    ) -> None:
        deprecated(type(self), "ckptlite.open(...).save(experiment_id, doc, level='stage')")
        if store is None:
            store = _get(config, "paths.checkpoint_dir", None)
        self._mgr = open_target(store)
        self.max_checkpoints = int(_get(config, "pipeline.max_checkpoints_per_experiment", 10))

    @property
    def store(self) -> CheckpointManager:
        """The ckptlite manager underneath."""
        return self._mgr

    def save_checkpoint(
        self, experiment_id: str, stage_name: str, context: Any, stage_results: dict[str, Any]
    ) -> None:
        """Save the stage's document; failures are logged, not raised (as before)."""
        try:
            doc = checkpoint_document(experiment_id, stage_name, context, stage_results)
            now = time.time()
            meta: dict[str, Any] = {
                "legacy_format": "pipeline",
                "legacy_id": f"{experiment_id}/{stage_name}",
                "legacy_timestamp": doc["timestamp"],
                "legacy_mtime": now,
                "legacy_order": now,
            }
            name = doc["metadata"].get("experiment_name") if doc["metadata"] else None
            if isinstance(name, str):
                meta["experiment_name"] = name
            self._mgr.save(experiment_id, doc, level=Level.STAGE, name=stage_name, metadata=meta)
            self._cleanup_old(experiment_id)
        except Exception as e:  # the legacy manager only logged a failed save
            log.error("Failed to save checkpoint: %s", e)

    def _stages(self, experiment_id: str) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        for cp in self._mgr.list(process_id=experiment_id, level=Level.STAGE):
            if cp.status == Status.CORRUPTED:
                continue
            have = out.get(cp.name)
            if have is None or cp.seq > have.seq:
                out[cp.name] = cp
        return out

    def _cleanup_old(self, experiment_id: str) -> None:
        stages = sorted(self._stages(experiment_id).values(), key=_mtime)
        for cp in stages[: max(len(stages) - self.max_checkpoints, 0)]:
            for old in self._mgr.list(process_id=experiment_id, level=Level.STAGE, name=cp.name):
                if self._mgr.exists(old.id):
                    self._mgr.delete(old.id)

    def load_latest(self, experiment_id: str) -> dict[str, Any] | None:
        """Return the newest stage's document (by save time, as the file mtime was), or None."""
        stages = self._stages(experiment_id)
        if not stages:
            return None
        newest = max(stages.values(), key=_mtime)
        return self._load(newest)

    def load_checkpoint(self, experiment_id: str, stage_name: str) -> dict[str, Any] | None:
        """Return one stage's document, or None."""
        cp = self._stages(experiment_id).get(stage_name)
        return None if cp is None else self._load(cp)

    def _load(self, cp: Checkpoint) -> dict[str, Any] | None:
        try:
            doc = self._mgr.load(cp)
        except Exception as e:  # the legacy loader logged and returned None
            log.error("Failed to load checkpoint: %s", e)
            return None
        return doc if isinstance(doc, dict) else None

    def list_checkpoints(self, experiment_id: str) -> list[dict[str, Any]]:
        """Return ``{stage, path, timestamp, size_kb}`` per stage (timestamp: naive local)."""
        return [
            {
                "stage": name,
                "path": f"{self._mgr.url}#{cp.id}",
                "timestamp": naive_local(_mtime(cp)),
                "size_kb": cp.size / 1024,
            }
            for name, cp in self._stages(experiment_id).items()
        ]

    def cleanup_checkpoints(self, experiment_id: str) -> None:
        """Delete every checkpoint of the experiment."""
        try:
            for cp in self._mgr.list(process_id=experiment_id):
                if self._mgr.exists(cp.id):
                    self._mgr.delete(cp.id)
        except Exception as e:
            log.error("Failed to cleanup checkpoints: %s", e)


def _mtime(cp: Checkpoint) -> float:
    for key in ("legacy_mtime", "legacy_order"):
        value = cp.metadata.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return cp.created_at.timestamp()
