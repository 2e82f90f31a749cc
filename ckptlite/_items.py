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

#: What ``list_items(status=)`` takes. ``done`` and ``failed`` are the ledger's
#: marks; ``pending`` and ``claimed`` are the registered ids of the run's item
#: groups with no mark: inside a batch a live worker holds (lease not expired), or not.
ITEM_STATUSES = ("done", "failed", "pending", "claimed")


def item_status(rec: ItemRecord) -> str:
    """Return ``done``, ``failed``, ``pending`` or ``claimed`` for a listed item."""
    if rec.status is not None:
        return rec.status
    return "done" if rec.ok else "failed"


def list_items(
    backend: Backend, run_id: str, group: str | None = None, status: str | None = None
) -> list[ItemRecord]:
    """Return a run's items, by group then item id, optionally of one status.

    Without ``status``, the ledger's entries (done and failed). ``pending`` and
    ``claimed`` list the ids registered by ``run.items`` that have no mark yet.

    Raises:
        RunNotFoundError: no such run.
        InvalidInputError: an unknown status; pending or claimed for a group an
            older ckptlite registered (it kept no ids).
        CorruptCheckpointError: a group's stored ids do not decode.
    """
    if status is not None and status not in ITEM_STATUSES:
        raise InvalidInputError(
            f"unknown item status {status!r}", hint=f"Use one of {', '.join(ITEM_STATUSES)}."
        )
    backend.get_run(run_id)  # an unknown run is an error, not an empty list
    if status in ("pending", "claimed"):
        return _unmarked(backend, run_id, group, status)
    entries = backend.list_items(run_id, group)
    if status is not None:
        entries = [e for e in entries if item_status(e) == status]
    return sorted(entries, key=lambda e: (e.group, e.item_id))


def _unmarked(backend: Backend, run_id: str, group: str | None, status: str) -> list[ItemRecord]:
    """Return the registered ids with no mark, held by a live worker (claimed) or not."""
    want_held = status == "claimed"
    out: list[ItemRecord] = []
    for g in backend.item_groups(run_id, group):
        if g.ids is None:
            raise InvalidInputError(
                f"item group {g.group!r} of run {run_id} was registered by an older ckptlite, "
                f"which kept no ids: its {status} items cannot be listed",
                hint="List --status done or --status failed (a run's counts are in `ckptlite "
                "runs`); the next run.items() loop over the group keeps its ids.",
            )
        done, failed = backend.item_marks(run_id, g.group)
        size = g.seg_size
        # An id listed twice is claimed when any of its batches is held.
        held = {i for seg in g.held for i in g.ids[seg * size : (seg + 1) * size]}
        ids = held if want_held else set(g.ids) - held
        out += [
            ItemRecord(run_id, g.group, i, False, 0, None, None, 0, status)
            for i in ids
            if i not in done and i not in failed
        ]
    return sorted(out, key=lambda e: (e.group, e.item_id))


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
