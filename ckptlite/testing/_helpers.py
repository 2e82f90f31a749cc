"""What the contract suites share: records built the way a save builds them."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from .. import codec
from .._engine import StateIO
from ..backends.base import Backend
from ..ids import generate_checkpoint_id
from ..types import Checkpoint, Level, Status, StorageConfig

__all__ = ["big", "checkpoint", "load", "save"]

_pool: ThreadPoolExecutor | None = None
#: Small chunks, so a state of ~1 MB has many.
_CONFIG = StorageConfig("contract", durability="none", chunk_size=64 * 1024)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(2, thread_name_prefix="ckptlite-contract")
    return _pool


def big(seed: int = 0, n: int = 1_200_000) -> bytes:
    """Return ``n`` random bytes: a state of many chunks that do not compress."""
    return random.Random(seed).randbytes(n)


def checkpoint(
    process_id: str = "p",
    *,
    level: Level = Level.STEP,
    name: str = "",
    parent: str | None = None,
    metadata: dict[str, Any] | None = None,
    progress: tuple[int, int] | None = None,
) -> Checkpoint:
    """Return a new checkpoint record to save (as ``CheckpointManager.save`` makes one)."""
    now = datetime.now(UTC)
    return Checkpoint(
        id=generate_checkpoint_id(level, now=now),
        process_id=process_id,
        level=level,
        name=name,
        parent_id=parent,
        seq=0,
        status=Status.VALID,
        created_at=now,
        size=0,
        stored_size=0,
        checksum="",
        metadata=metadata or {},
        progress=progress,
    )


def save(backend: Backend, state: Any, cp: Checkpoint | None = None, **record: Any) -> Checkpoint:
    """Store ``state`` in ``backend`` through the state engine; return the committed record."""
    engine = StateIO(backend, _executor, _CONFIG)
    return engine.save(cp or checkpoint(**record), codec.encode(state))


def load(backend: Backend, checkpoint_id: str) -> Any:
    """Return the state of ``checkpoint_id``, every byte verified."""
    return StateIO(backend, _executor, _CONFIG).read(backend.get_record(checkpoint_id))
