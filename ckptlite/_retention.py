"""Retention as the manager applies it: slot positions, pruning after a save, reports.

The decisions themselves are the pure functions of ``ckptlite.policies``; this
module reads the records, pins what other scopes depend on, and deletes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import codec
from .backends.base import ListQuery
from .errors import CheckpointNotFoundError, CkptliteError, InvalidInputError
from .policies import SLOT_INDEX_KEY, CheckpointPolicy, RetentionReport, plan_retention
from .types import Checkpoint

if TYPE_CHECKING:
    from .manager import CheckpointManager

__all__ = ["apply_retention", "store_with_policy"]

log = logging.getLogger("ckptlite")

# Saves to one slot under a keep_every policy take a slot lock, so two threads
# never stamp the same position. Striped: a lock per slot would grow without bound.
_SLOT_LOCKS = [threading.Lock() for _ in range(64)]


def _slot_lock(cp: Checkpoint) -> threading.Lock:
    key = f"{cp.process_id}\0{cp.level.value}\0{cp.name}".encode()
    return _SLOT_LOCKS[zlib.crc32(key) % len(_SLOT_LOCKS)]


def _slot_query(cp: Checkpoint, limit: int | None = None) -> ListQuery:
    return ListQuery(process_id=cp.process_id, level=cp.level, name=cp.name, limit=limit)


def _next_position(mgr: CheckpointManager, cp: Checkpoint) -> int:
    newest = mgr.backend.list(_slot_query(cp, limit=1))
    if not newest:
        return 1
    stamp = newest[0].metadata.get(SLOT_INDEX_KEY)
    if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
        return stamp + 1
    return len(mgr.backend.list(_slot_query(cp))) + 1


def store_with_policy(
    mgr: CheckpointManager,
    cp: Checkpoint,
    encoded: codec.EncodedState,
    policy: CheckpointPolicy | None,
) -> Checkpoint:
    """Commit an encoded save; stamp its slot position and prune its slot as ``policy`` says.

    Pruning runs only on the slot just saved. A pruning failure is logged, not
    raised: the save itself succeeded, and the next save prunes again.

    Raises:
        StoreFullError, StoreIOError: the save failed; nothing was committed.
    """
    if policy is None:
        return mgr._store(cp, encoded)
    if policy.keep_every is not None:
        with _slot_lock(cp):
            cp = cp.replace(metadata={**cp.metadata, SLOT_INDEX_KEY: _next_position(mgr, cp)})
            saved = mgr._store(cp, encoded)
    else:
        saved = mgr._store(cp, encoded)
    if policy.keeps_anything_out:
        try:
            retain(mgr, policy, _slot_query(saved), whole_store=False)
        except CkptliteError as e:
            log.warning("ckptlite: retention after saving %s failed: %s", saved.id, e)
    return saved


def retain(
    mgr: CheckpointManager,
    policy: CheckpointPolicy,
    query: ListQuery,
    *,
    whole_store: bool,
    dry_run: bool = False,
    now: datetime | None = None,
) -> RetentionReport:
    """Plan retention over the records ``query`` selects, then delete (unless dry_run)."""
    backend = mgr.backend
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
    mgr: CheckpointManager,
    process_id: str | None,
    policy: CheckpointPolicy | None,
    dry_run: bool,
) -> RetentionReport:
    """Apply ``policy`` (or the manager's) to one process or the whole store.

    Raises:
        InvalidInputError: no policy given and the manager has none.
    """
    policy = policy or mgr.policy
    if policy is None:
        raise InvalidInputError(
            "no retention policy: pass policy= or open the store with policy=",
            hint="For example policy=CheckpointPolicy(keep_last=3).",
        )
    if not isinstance(policy, CheckpointPolicy):
        raise InvalidInputError(f"policy must be a CheckpointPolicy, not {policy!r}")
    return retain(
        mgr,
        policy,
        ListQuery(process_id=process_id),
        whole_store=process_id is None,
        dry_run=dry_run,
    )
