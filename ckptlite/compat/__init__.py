"""Drop-in stand-ins for the legacy checkpoint classes, backed by a ckptlite store.

A transition layer (deprecated from the start: each class warns once when
made): swap ``from src.core.checkpoint_manager import ...`` and its siblings
for these and the code keeps working, while every checkpoint it writes is an
ordinary ckptlite checkpoint (``ckptlite ls``, ``sync``, ``verify`` see it), laid
out as ``ckptlite migrate`` lays out the imported ones. docs/migration.md maps
each legacy import to its replacement and to the native API.

================================================  =====================================
legacy                                            ckptlite.compat
================================================  =====================================
``src.core.checkpoint_manager.CheckpointManager``  :class:`CoreCheckpointManager`
``...get_checkpoint_manager``                     :func:`get_checkpoint_manager`
``...CheckpointMetadata`` / ``...CorruptedError``  same names
``src.base.processor.BaseProcessor`` (checkpoints) :class:`ProcessorCheckpointMixin`
``src.pipelines.recovery...CheckpointManager``     :class:`PipelineCheckpointManager`
``src.base.tile_processor.ProcessingCheckpoint``   same name, + :class:`TileCheckpointer`
``src.database.schema`` checkpoint methods         :class:`DatabaseCheckpoints`
================================================  =====================================
"""

from __future__ import annotations

from .core import (
    CheckpointCorruptedError,
    CheckpointMetadata,
    CoreCheckpointManager,
    ProcessorCheckpointMixin,
    get_checkpoint_manager,
)
from .database import DatabaseCheckpoints
from .pipeline import PipelineCheckpointManager
from .tiles import ProcessingCheckpoint, TileCheckpointer

__all__ = [
    "CheckpointCorruptedError",
    "CheckpointMetadata",
    "CoreCheckpointManager",
    "DatabaseCheckpoints",
    "PipelineCheckpointManager",
    "ProcessingCheckpoint",
    "ProcessorCheckpointMixin",
    "TileCheckpointer",
    "get_checkpoint_manager",
]
