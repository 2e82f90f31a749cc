"""Put legacy work-item progress (the tile processor's tiles) into the run ledger.

The legacy tile run never finished (its file is unlinked on success), so its
tiles go into the process's unfinished run; if it has none, a new run is
recorded FAILED ("interrupted"). ``mgr.run(process_id)`` resumes it, and
``run.items("tiles", ids)`` skips the completed tiles and retries the failed
ones. Marking is idempotent: a tile already done stays done, and a failed tile
is marked only once per legacy failure, so rerunning changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..runs import new_run_id
from ..types import ItemMark, RunRecord, RunStatus

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = ["INTERRUPTED", "LEGACY_FAILURE", "open_run", "record_items"]

#: The error a tile failed in the legacy run is recorded with.
LEGACY_FAILURE = "failed in the legacy tile run (imported by ckptlite migrate)"
#: The error of the run created for an imported legacy tile run.
INTERRUPTED = "legacy tile run interrupted before it finished (imported by ckptlite migrate)"
_BATCH = 10_000


def open_run(target: CheckpointManager, process_id: str) -> RunRecord:
    """Return the run ``mgr.run(process_id)`` would resume, creating one if there is none.

    Same rule as ``ckptlite.runs``: the newest run, unless it COMPLETED.
    """
    backend = target.backend
    runs = backend.list_runs(process_id, limit=1)
    if runs and runs[0].status != RunStatus.COMPLETED:
        return runs[0]
    now = datetime.now(UTC)
    return backend.create_run(
        RunRecord(
            id=new_run_id(),
            process_id=process_id,
            status=RunStatus.FAILED,
            started_at=now,
            updated_at=now,
            finished_at=now,
            error=INTERRUPTED,
        )
    )


def record_items(
    target: CheckpointManager,
    process_id: str,
    items: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
) -> RunRecord:
    """Mark ``{group: (done ids, failed ids)}`` in the process's unfinished run.

    Returns the run the marks went into.
    """
    run = open_run(target, process_id)
    backend = target.backend
    for group, (done, failed) in items.items():
        have_done, have_failed = backend.item_marks(run.id, group)
        marks = [ItemMark(group, i, True) for i in dict.fromkeys(done) if i not in have_done]
        done_now = have_done | set(done)
        marks += [
            ItemMark(group, i, False, error=LEGACY_FAILURE)
            for i in dict.fromkeys(failed)
            if i not in done_now and i not in have_failed
        ]
        for start in range(0, len(marks), _BATCH):
            backend.mark_items(run.id, marks[start : start + _BATCH])
    return run
