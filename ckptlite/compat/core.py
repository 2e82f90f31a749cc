"""The legacy core checkpoint manager and processor mixin, on a ckptlite store.

Same calls and return shapes as ``src/core/checkpoint_manager.py`` and the
checkpoint methods of ``src/base/processor.py``; every checkpoint is an ordinary
ckptlite checkpoint, laid out as ``ckptlite migrate`` lays out imported ones
(process: the ``processor`` metadata's class, else ``processor_name``, else
``legacy-core``; name: the legacy id, ``""`` for processors; metadata
``legacy_format``, ``legacy_id``, ``legacy_level``, ``legacy_metadata``), so
migrated and new checkpoints are seen alike.

Differences from the legacy manager, on purpose: no hourly cleanup thread
(call ``cleanup_old_checkpoints``); deleting a checkpoint also deletes its
descendants (ckptlite keeps no orphans); ``load_checkpoint`` raises
``CheckpointCorruptedError``, which is a ``ValueError`` as the legacy one raised.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..legacy._common import map_level
from ..legacy.processor import classify
from ..types import Checkpoint, Status
from ._common import (
    LEVEL_NAMES,
    deprecated,
    jsonable_meta,
    legacy_time,
    newest_versions,
    open_target,
)

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = [
    "CheckpointCorruptedError",
    "CheckpointMetadata",
    "CoreCheckpointManager",
    "ProcessorCheckpointMixin",
    "get_checkpoint_manager",
]

_FORMATS = ("core", "processor")
_DEFAULT_RETENTION: dict[str, Any] = {
    "max_checkpoints": 100,
    "max_age_days": 7,
    "min_keep_per_level": {"pipeline": 5, "phase": 3, "step": 2, "substep": 1},
}


class CheckpointCorruptedError(ValueError):
    """A checkpoint failed verification (a ValueError, as the legacy load raised)."""


@dataclass
class CheckpointMetadata:
    """The legacy record of one checkpoint (``registry.json``'s values)."""

    checkpoint_id: str
    timestamp: float
    level: str
    parent_id: str | None = None
    status: str = "created"
    data_files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    checksum: str | None = None
    validation_checksum: str | None = None
    compressed: bool = False
    compression_type: str | None = None
    size_bytes: int = 0
    file_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a dict."""
        return asdict(self)

    @property
    def file_size_bytes(self) -> int:
        """Alias of ``size_bytes``."""
        return self.size_bytes


class CoreCheckpointManager:
    """The legacy ``CheckpointManager`` (``src/core``), backed by a ckptlite store.

    ``store`` is a manager, a store path/URL, or None for ckptlite's default
    store; ``set_checkpoint_directory`` moves to the ckptlite store at a path.

    >>> import warnings, ckptlite
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     m = CoreCheckpointManager(ckptlite.open("memory://"))
    >>> _ = m.save_checkpoint("run_1", {"x": 1}, level="phase")
    >>> m.load_checkpoint("run_1")
    {'x': 1}
    """

    def __init__(self, store: CheckpointManager | str | os.PathLike[str] | None = None) -> None:
        deprecated(type(self), "ckptlite.open(...).save/load_latest")
        self._owned = isinstance(store, str | os.PathLike)  # opened here: closed here
        self._mgr = open_target(store)
        self._dir = self._mgr.url
        self._lock = threading.RLock()
        self._retention_config: dict[str, Any] = {
            **_DEFAULT_RETENTION,
            "min_keep_per_level": dict(_DEFAULT_RETENTION["min_keep_per_level"]),
        }
        self._validated: dict[str, tuple[str, str | None]] = {}  # ckptlite id -> status, sum

    @property
    def store(self) -> CheckpointManager:
        """The ckptlite manager underneath."""
        return self._mgr

    def set_checkpoint_directory(self, directory: str | os.PathLike[str]) -> None:
        """Use the ckptlite store at ``directory`` (created if absent)."""
        with self._lock:
            if self._owned:
                self._mgr.close()
            self._mgr = open_target(directory)
            self._owned = True
            self._dir = os.fspath(directory)

    def configure_retention(self, **config: Any) -> None:
        """Update the retention settings (max_checkpoints, max_age_days, min_keep_per_level)."""
        self._retention_config.update(config)

    def _current(self) -> dict[str, Checkpoint]:
        return newest_versions(self._mgr.list(), _FORMATS)

    def _find(self, checkpoint_id: str) -> Checkpoint | None:
        return self._current().get(checkpoint_id)

    def save_checkpoint(
        self,
        checkpoint_id: str,
        data: dict[str, Any],
        level: str = "step",
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        compress: bool = True,
    ) -> str:
        """Save ``data`` (one entry per key) as checkpoint ``checkpoint_id``; return its path.

        Saving an id again replaces it (the older version is kept ARCHIVED).

        Raises:
            UnsupportedTypeError: a value the codec cannot store (open the store with
                allow_pickle=True to pickle it).
        """
        with self._lock:
            meta = dict(metadata or {})
            fmt, process_id, name = classify(checkpoint_id, meta)
            mapped, level_meta = map_level(level)
            current = self._current()
            parent = current.get(parent_id) if parent_id is not None else None
            now = time.time()
            keys = list(data)
            ext = ".pkl.gz" if compress else ".pkl"
            record_meta: dict[str, Any] = {
                "legacy_format": fmt,
                "legacy_id": checkpoint_id,
                "legacy_timestamp": now,
                "legacy_order": now,
                "legacy_metadata": jsonable_meta(meta),
                "legacy_compressed": compress,
                "legacy_data_files": [f"{checkpoint_id}/{k}{ext}" for k in keys],
                **level_meta,
            }
            if parent_id is not None:
                record_meta["legacy_parent_id"] = parent_id
            saved = self._mgr.save(
                process_id,
                dict(data),
                level=mapped,
                name=name,
                parent=parent.id if parent is not None else None,
                metadata=record_meta,
            )
            old = current.get(checkpoint_id)
            if old is not None and old.id != saved.id and old.status == Status.VALID:
                self._mgr.backend.set_status(old.id, Status.ARCHIVED)  # overwritten in place
            return os.path.join(self._dir, checkpoint_id)

    def load_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """Return the checkpoint's data, ``{key: value}``.

        Raises:
            ValueError: no such checkpoint.
            CheckpointCorruptedError: it failed verification (a ValueError too).
        """
        cp = self._find(checkpoint_id)
        if cp is None:
            raise ValueError(f"Checkpoint not found: {checkpoint_id}")
        if cp.status == Status.CORRUPTED:
            raise CheckpointCorruptedError(f"Checkpoint corrupted: {checkpoint_id}")
        try:
            state = self._mgr.load(cp)
        except CorruptCheckpointError as e:
            raise CheckpointCorruptedError(f"Checkpoint corrupted: {checkpoint_id}") from e
        except CheckpointNotFoundError as e:
            raise ValueError(f"Checkpoint directory missing: {checkpoint_id}") from e
        if not isinstance(state, dict):
            raise CheckpointCorruptedError(f"Checkpoint {checkpoint_id} holds no data dict")
        return state

    def delete_checkpoint(self, checkpoint_id: str) -> bool:
        """Delete every version of the checkpoint (and their descendants); False if unknown."""
        with self._lock:
            ids = [
                cp.id
                for cp in self._mgr.list()
                if cp.metadata.get("legacy_id") == checkpoint_id
                and cp.metadata.get("legacy_format") in _FORMATS
            ]
            if not ids:
                return False
            for cid in ids:
                if self._mgr.exists(cid):
                    self._mgr.delete(cid)
            return True

    def _info(self, cp: Checkpoint) -> CheckpointMetadata:
        md = cp.metadata
        status, vsum = self._validated.get(cp.id, (None, None))
        if status is None:
            if cp.status == Status.CORRUPTED:
                status = "corrupted"
            else:
                legacy = md.get("legacy_status")
                status = legacy if isinstance(legacy, str) else "created"
        level = md.get("legacy_level")
        files = md.get("legacy_data_files")
        compressed = md.get("legacy_compressed", True)
        legacy_meta = md.get("legacy_metadata")
        parent = md.get("legacy_parent_id")
        return CheckpointMetadata(
            checkpoint_id=str(md["legacy_id"]),
            timestamp=legacy_time(cp),
            level=level if isinstance(level, str) else LEVEL_NAMES[cp.level],
            parent_id=parent if isinstance(parent, str) else None,
            status=status,
            data_files=list(files) if isinstance(files, list) else [],
            metadata=dict(legacy_meta) if isinstance(legacy_meta, dict) else {},
            checksum=cp.checksum,
            validation_checksum=vsum,
            compressed=bool(compressed),
            compression_type="gzip" if compressed else None,
            size_bytes=cp.stored_size,
            file_path=os.path.join(self._dir, str(md["legacy_id"])),
        )

    def list_checkpoints(
        self,
        level: str | None = None,
        parent_id: str | None = None,
        processor_name: str | None = None,
        status: str | None = None,
    ) -> list[CheckpointMetadata]:
        """Return the checkpoints' records, newest first, filtered like the legacy manager.

        ``processor_name`` matches ``metadata['processor_name']`` (as the legacy code did).
        """
        infos = [self._info(cp) for cp in self._current().values()]
        if level:
            infos = [i for i in infos if i.level == level]
        if parent_id:
            infos = [i for i in infos if i.parent_id == parent_id]
        if processor_name:
            infos = [i for i in infos if i.metadata.get("processor_name") == processor_name]
        if status:
            infos = [i for i in infos if i.status == status]
        infos.sort(key=lambda i: i.timestamp, reverse=True)
        return infos

    def get_checkpoint_info(self, checkpoint_id: str) -> CheckpointMetadata | None:
        """Return the checkpoint's record, or None."""
        cp = self._find(checkpoint_id)
        return None if cp is None else self._info(cp)

    def validate_checkpoint(self, checkpoint_id: str) -> bool:
        """Read and verify every byte of the checkpoint; record ``valid`` or ``corrupted``."""
        cp = self._find(checkpoint_id)
        if cp is None:
            return False
        try:
            self._mgr.load(cp)
        except (CorruptCheckpointError, CheckpointNotFoundError):
            self._validated[cp.id] = ("corrupted", None)
            return False
        if cp.status == Status.CORRUPTED:
            self._validated[cp.id] = ("corrupted", None)
            return False
        self._validated[cp.id] = ("valid", cp.checksum)
        return True

    def cleanup_old_checkpoints(self) -> int:
        """Apply the legacy retention rule; return how many checkpoints were deleted."""
        with self._lock:
            cfg = self._retention_config
            now = time.time()
            max_age = float(cfg["max_age_days"]) * 24 * 3600
            infos = self.list_checkpoints()
            by_level: dict[str, list[CheckpointMetadata]] = {}
            for info in infos:
                by_level.setdefault(info.level, []).append(info)
            deleted = 0
            for lvl, group in by_level.items():
                keep = int(cfg["min_keep_per_level"].get(lvl, 1))
                for info in group[keep:]:
                    if now - info.timestamp > max_age and self.delete_checkpoint(
                        info.checkpoint_id
                    ):
                        deleted += 1
            rest = self.list_checkpoints()
            excess = len(rest) - int(cfg["max_checkpoints"])
            for info in sorted(rest, key=lambda i: i.timestamp)[: max(excess, 0)]:
                if self.delete_checkpoint(info.checkpoint_id):
                    deleted += 1
            return deleted

    def stop(self) -> None:
        """End background work (there is no cleanup thread); close a store opened here."""
        if self._owned:
            self._mgr.close()
            self._owned = False


_default: CoreCheckpointManager | None = None
_default_lock = threading.Lock()


def get_checkpoint_manager() -> CoreCheckpointManager:
    """Return the process-wide legacy-shaped manager, on ckptlite's default store."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CoreCheckpointManager()
        return _default


class ProcessorCheckpointMixin:
    """The legacy ``BaseProcessor`` checkpoint methods; mix into a processor class.

    Uses ``self._checkpoint_manager`` (a :class:`CoreCheckpointManager`; the
    shared one when not set) and the legacy attributes ``enable_checkpoints``,
    ``checkpoint_interval``, ``config``, ``_last_checkpoint_items``,
    ``_progress_node_id`` and ``_checkpoint_data``.
    """

    enable_checkpoints: bool = True
    checkpoint_interval: int = 100
    config: dict[str, Any]
    _last_checkpoint_items: int = 0
    _progress_node_id: str | None = None
    _checkpoint_manager: CoreCheckpointManager | None = None

    def _compat_manager(self) -> CoreCheckpointManager | None:
        if not self.enable_checkpoints:
            return None
        # Called from save/load_checkpoint: stacklevel 4 is the processor's own caller.
        deprecated(type(self), "ckptlite.CheckpointableProcess", stacklevel=4)
        if self._checkpoint_manager is None:
            self._checkpoint_manager = get_checkpoint_manager()
        return self._checkpoint_manager

    def save_checkpoint(
        self, checkpoint_id: str | None = None, data: dict[str, Any] | None = None
    ) -> str:
        """Save the processor state (plus ``data``); return the path, ``""`` when disabled."""
        mgr = self._compat_manager()
        if mgr is None:
            return ""
        name = type(self).__name__
        checkpoint_id = checkpoint_id or f"{name}_{int(time.time())}"
        payload: dict[str, Any] = {
            "processor_state": {
                "class": name,
                "config": getattr(self, "config", {}),
                "items_processed": self._last_checkpoint_items,
                "progress_node_id": self._progress_node_id,
            }
        }
        if data:
            payload.update(data)
        payload.update(getattr(self, "_checkpoint_data", {}) or {})
        return mgr.save_checkpoint(
            checkpoint_id=checkpoint_id, data=payload, level="step", metadata={"processor": name}
        )

    def load_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """Load a checkpoint and restore the item count and progress node; ``{}`` when disabled.

        Raises:
            ValueError: no such checkpoint, or it is corrupted.
        """
        mgr = self._compat_manager()
        if mgr is None:
            return {}
        data = mgr.load_checkpoint(checkpoint_id)
        state = data.get("processor_state")
        if isinstance(state, dict):
            self._last_checkpoint_items = state.get("items_processed", 0)
            self._progress_node_id = state.get("progress_node_id")
        return data

    def should_checkpoint(self, items_processed: int) -> bool:
        """Tell whether ``checkpoint_interval`` items passed since the last checkpoint."""
        if not self.enable_checkpoints:
            return False
        return (items_processed - self._last_checkpoint_items) >= self.checkpoint_interval
