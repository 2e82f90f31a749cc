"""Retention as the manager applies it: slot positions, pruning after a save, reports.

The decisions themselves are the pure functions of ``ckptlite.policies``; this
module reads the records, pins what other scopes depend on, and deletes. It works
on the backend it is given: the manager calls it after its own commit (which took
the slot position from the slot's counter) and never the other way round.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

from .backends.base import Backend, ListQuery
from .errors import CheckpointNotFoundError, CkptliteError, InvalidInputError
from .policies import CheckpointPolicy, RetentionReport, plan_retention
from .types import Checkpoint

__all__ = [
    "apply_retention",
    "prune_slot",
    "retain",
]

log = logging.getLogger("ckptlite")


def _slot_query(cp: Checkpoint, limit: int | None = None) -> ListQuery:
    return ListQuery(process_id=cp.process_id, level=cp.level, name=cp.name, limit=limit)


def prune_slot(backend: Backend, policy: CheckpointPolicy, saved: Checkpoint) -> None:
    """Prune the slot of ``saved``, just committed, as ``policy`` says.

    A pruning failure is logged, not raised: the save itself succeeded, and the
    next save prunes again.
    """
    if not policy.keeps_anything_out:
        return
    try:
        retain(backend, policy, _slot_query(saved), whole_store=False)
    except CkptliteError as e:
        log.warning("ckptlite: retention after saving %s failed: %s", saved.id, e)


def retain(
    backend: Backend,
    policy: CheckpointPolicy,
    query: ListQuery,
    *,
    whole_store: bool,
    dry_run: bool = False,
    now: datetime | None = None,
) -> RetentionReport:
    """Plan retention over the records ``query`` selects, then delete (unless dry_run)."""
    records = backend.list(query)
    now = now or datetime.now(UTC)
    pinned: set[str] = set()
    while True:
        decisions = plan_retention(records, policy, now, pinned)
        doomed = {d.checkpoint.id for d in decisions if not d.keep}
        if whole_store or not doomed:
            break
        # A child outside the scope would be deleted by the cascade: pin its parent.
        pins = {
            cid
            for cid in doomed
            if any(c.id not in doomed for c in backend.list(ListQuery(parent=cid)))
        }
        if pins <= pinned:
            break
        pinned |= pins
    removed: list[str] = []
    for d in decisions:
        if d.keep:
            continue
        if not dry_run:
            # A cascade (or a concurrent prune) may have removed it already.
            with contextlib.suppress(CheckpointNotFoundError):
                backend.delete(d.checkpoint.id)
        removed.append(d.checkpoint.id)
    return RetentionReport(policy, tuple(decisions), tuple(removed), dry_run)


def apply_retention(
    backend: Backend,
    process_id: str | None,
    policy: CheckpointPolicy | None,
    dry_run: bool,
) -> RetentionReport:
    """Apply ``policy`` (the caller's, else the manager's) to one process or the whole store.

    Raises:
        InvalidInputError: ``policy`` is None (none given and the manager has none).
    """
    if policy is None:
        raise InvalidInputError(
            "no retention policy: pass policy= or open the store with policy=",
            hint="For example policy=CheckpointPolicy(keep_last=3).",
        )
    if not isinstance(policy, CheckpointPolicy):
        raise InvalidInputError(f"policy must be a CheckpointPolicy, not {policy!r}")
    return retain(
        backend,
        policy,
        ListQuery(process_id=process_id),
        whole_store=process_id is None,
        dry_run=dry_run,
    )
