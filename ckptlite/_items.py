"""Reading a run's work-item ledger for people: filtered entries, one item's result.

The manager's ``list_items`` and ``load_item`` are thin wrappers of these; the
CLI's ``items`` and ``cat RUN/GROUP/ITEM`` render what they return.
"""

from __future__ import annotations

from typing import Any

from .backends.base import Backend
from .errors import CheckpointNotFoundError, InvalidInputError
from .runs import decode_item_state
from .types import ItemRecord

__all__ = ["ITEM_STATUSES", "item_status", "list_items", "load_item"]

#: What ``list_items(status=)`` takes. The ledger records marks: an item is
#: ``done`` or ``failed`` once marked; ``pending`` and ``claimed`` are for a
#: ledger that records claims (until then, asking for them is an error).
ITEM_STATUSES = ("done", "failed", "pending", "claimed")


def item_status(rec: ItemRecord) -> str:
    """Return ``done`` or ``failed`` for a ledger entry."""
    return "done" if rec.ok else "failed"


def list_items(
    backend: Backend, run_id: str, group: str | None = None, status: str | None = None
) -> list[ItemRecord]:
    """Return a run's ledger entries, by group then item id, optionally filtered.

    Raises:
        RunNotFoundError: no such run.
        InvalidInputError: an unknown status, or one this ledger does not record.
    """
    if status is not None and status not in ITEM_STATUSES:
        raise InvalidInputError(
            f"unknown item status {status!r}", hint=f"Use one of {', '.join(ITEM_STATUSES)}."
        )
    backend.get_run(run_id)  # an unknown run is an error, not an empty list
    if status in ("pending", "claimed"):
        raise InvalidInputError(
            f"this store's ledger does not record {status} items: it keeps marks only "
            "(done and failed)",
            hint="List --status done or --status failed; a run's progress is in `ckptlite runs`.",
        )
    entries = backend.list_items(run_id, group)
    if status is not None:
        entries = [e for e in entries if item_status(e) == status]
    return sorted(entries, key=lambda e: (e.group, e.item_id))


def load_item(backend: Backend, run_id: str, group: str, item_id: str, allow_pickle: bool) -> Any:
    """Return the result (state) a done item was marked with.

    Raises:
        RunNotFoundError: no such run.
        CheckpointNotFoundError: the run has no such item, or it failed (no result).
        PickleNotAllowedError: the result holds pickles and allow_pickle is False.
        CorruptCheckpointError: the stored bytes do not decode.
    """
    backend.get_run(run_id)
    entry = next((e for e in backend.list_items(run_id, group) if e.item_id == item_id), None)
    if entry is None:
        raise CheckpointNotFoundError(
            f"run {run_id} has no item {item_id!r} in group {group!r}",
            hint=f"List its items with `ckptlite items {run_id} --group {group}`.",
        )
    if not entry.ok:
        raise CheckpointNotFoundError(
            f"item {group}/{item_id} of run {run_id} failed: it has no result "
            f"({entry.attempts} attempt(s); {entry.error or 'no error text'})",
            hint="A resumed run retries it.",
        )
    return decode_item_state(entry.state, allow_pickle=allow_pickle)
