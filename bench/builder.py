"""Build big stores fast: real records (loadable, checksummed) imported in batches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ckptlite
from bench.states import small_state
from ckptlite import Checkpoint, Level, Status
from ckptlite.types import StoredRecord


def slot_of(i: int, per_process: int) -> tuple[str, Level, str]:
    """The (process, level, name) of the i-th checkpoint: 1 pipeline, 10 stages, tile steps."""
    p, k = divmod(i, per_process)
    process = f"proc_{p:05d}"
    if k == 0:
        return process, Level.PIPELINE, ""
    if k <= 10:
        return process, Level.STAGE, f"stage_{k}"
    return process, Level.STEP, f"tile_{k % 100}"


def records(n: int, per_process: int, template: StoredRecord) -> Iterator[StoredRecord]:
    """Yield ``n`` records that share the template's (valid) state bytes."""
    base = template.checkpoint
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        process, level, name = slot_of(i, per_process)
        created = t0 + timedelta(microseconds=i)
        cp = Checkpoint(
            id=f"chk_{level.value}_{created:%Y%m%dT%H%M%S.%f}Z_{i:032x}",
            process_id=process,
            level=level,
            name=name,
            parent_id=None,
            seq=0,
            status=Status.VALID,
            created_at=created,
            size=base.size,
            stored_size=base.stored_size,
            checksum=base.checksum,
            metadata={"i": i},
            progress=(i % per_process, per_process),
        )
        yield StoredRecord(cp, template.payload, template.manifest, ())


def template_record() -> StoredRecord:
    """A ~1 KB checkpoint saved the normal way, as bytes."""
    with ckptlite.open("memory://") as mgr:
        cp = mgr.save("template", small_state())
        return mgr.backend.get_record(cp.id)


def build_store(path: Path, n: int, per_process: int = 1_000, batch: int = 20_000) -> float:
    """Fill a new local store at ``path`` with ``n`` checkpoints; return the seconds it took."""
    started = time.perf_counter()
    template = template_record()
    with ckptlite.open(path, durability="none") as mgr:
        chunk: list[StoredRecord] = []
        done = 0
        for rec in records(n, per_process, template):
            chunk.append(rec)
            if len(chunk) == batch:
                done += len(chunk)
                mgr.backend.import_records(chunk, "bench-builder", done)
                chunk = []
        if chunk:
            done += len(chunk)
            mgr.backend.import_records(chunk, "bench-builder", done)
    return time.perf_counter() - started
