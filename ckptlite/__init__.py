"""ckptlite: one checkpoint system for long-running data pipelines.

>>> import ckptlite
>>> with ckptlite.open("memory://") as mgr:
...     cp = mgr.save("geo-run", {"tile": (3, 7)}, level=ckptlite.Level.STEP)
...     mgr.load_latest("geo-run")[1]
{'tile': (3, 7)}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointNotFoundError,
    CkptliteError,
    ConfigError,
    CorruptCheckpointError,
    ForkedStoreError,
    InvalidInputError,
    LegacyFormatError,
    MigrationError,
    MissingChunksError,
    PickleNotAllowedError,
    ReadOnlyStoreError,
    RunNotFoundError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLayoutError,
    StoreLockedError,
    SyncError,
    UnsafePickleError,
    UnsupportedTypeError,
)
from .ids import generate_checkpoint_id, parse_checkpoint_id
from .manager import CheckpointManager, get_checkpoint_manager
from .manager import open_store as open
from .policies import CheckpointPolicy, RetentionDecision, RetentionReport
from .process import CheckpointableProcess, ResumableProcess
from .runs import Run, Stage, WorkItem
from .sync import SyncReport, sync
from .types import (
    BackupReport,
    Checkpoint,
    GcReport,
    ItemRecord,
    Level,
    RunRecord,
    RunStatus,
    Status,
    StorageConfig,
    VerifyReport,
)

if TYPE_CHECKING:
    from .archive import ArchiveReport, export_archive, import_archive
    from .legacy.export import ExportReport, export_legacy
    from .legacy.migrate import MigrationEntry, MigrationReport, migrate

# Archives and the legacy importers load on first use: `import ckptlite` stays light
# (and never imports pickle, which only the legacy readers need).
_LAZY = {
    "ArchiveReport": ".archive",
    "export_archive": ".archive",
    "import_archive": ".archive",
    "ExportReport": ".legacy",
    "export_legacy": ".legacy",
    "MigrationEntry": ".legacy",
    "MigrationReport": ".legacy",
    "migrate": ".legacy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckptlite' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ArchiveReport",
    "BackupReport",
    "Checkpoint",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointableProcess",
    "CkptliteError",
    "ConfigError",
    "CorruptCheckpointError",
    "ExportReport",
    "ForkedStoreError",
    "GcReport",
    "InvalidInputError",
    "ItemRecord",
    "LegacyFormatError",
    "Level",
    "MigrationEntry",
    "MigrationError",
    "MigrationReport",
    "MissingChunksError",
    "PickleNotAllowedError",
    "ReadOnlyStoreError",
    "ResumableProcess",
    "RetentionDecision",
    "RetentionReport",
    "Run",
    "RunNotFoundError",
    "RunRecord",
    "RunStatus",
    "Stage",
    "Status",
    "StorageConfig",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreLayoutError",
    "StoreLockedError",
    "SyncError",
    "SyncReport",
    "UnsafePickleError",
    "UnsupportedTypeError",
    "VerifyReport",
    "WorkItem",
    "__version__",
    "export_archive",
    "export_legacy",
    "generate_checkpoint_id",
    "get_checkpoint_manager",
    "import_archive",
    "migrate",
    "open",
    "parse_checkpoint_id",
    "sync",
]
