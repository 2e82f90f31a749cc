"""Retention as the manager applies it: slot positions, pruning after a save, reports.

The decisions themselves are the pure functions of ``ckptlite.policies``; this
module reads the records, pins what other scopes depend on, and deletes. It works
on the backend it is given: the manager calls it around its own commit (a slot
position before, pruning after) and never the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
import zlib
from datetime import UTC, datetime

from .backends.base import Backend, ListQuery
from .errors import CheckpointNotFoundError, CkptliteError, InvalidInputError
from .policies import SLOT_INDEX_KEY, CheckpointPolicy, RetentionReport, plan_retention
from .types import Checkpoint

__all__ = [
    "apply_retention",
    "prune_slot",
    "remember_position",
    "retain",
    "slot_lock",
    "stamp_position",
]

log = logging.getLogger("ckptlite")

# Saves to one slot under a keep_every policy take a slot lock, so two threads
# never stamp the same position. Striped: a lock per slot would grow without bound.
_SLOT_LOCKS = [threading.Lock() for _ in range(64)]


def slot_lock(cp: Checkpoint) -> threading.Lock:
    """Return the lock that saves to ``cp``'s slot take to stamp their position."""
    key = f"{cp.process_id}\0{cp.level.value}\0{cp.name}".encode()
    return _SLOT_LOCKS[zlib.crc32(key) % len(_SLOT_LOCKS)]


def _slot_query(cp: Checkpoint, limit: int | None = None) -> ListQuery:
    return ListQuery(process_id=cp.process_id, level=cp.level, name=cp.name, limit=limit)


# The position each slot got last, per open backend: a save reads the slot's newest
# record only the first time. Another process (or manager) saving to the same slot
# in between may then get the same position as ours: both are judged by it, and
# keep_every keeps a little more, never less; rules stay idempotent.
_LAST: weakref.WeakKeyDictionary[Backend, dict[tuple[str, str, str], int]] = (
    weakref.WeakKeyDictionary()
)
_LAST_SLOTS = 4096  # slots remembered per backend (then forgotten, and read again)


def _slot_key(cp: Checkpoint) -> tuple[str, str, str]:
    return (cp.process_id, cp.level.value, cp.name)


def remember_position(backend: Backend, saved: Checkpoint) -> None:
    """Note the position ``saved`` (just committed) took, so the next save need not read it."""
    stamp = saved.metadata.get(SLOT_INDEX_KEY)
    if not isinstance(stamp, int):
        return
    try:
        known = _LAST.setdefault(backend, {})
    except TypeError:  # a backend that takes no weak reference: always read
        return
    if len(known) >= _LAST_SLOTS:
        known.clear()
    known[_slot_key(saved)] = stamp


def _next_position(backend: Backend, cp: Checkpoint) -> int:
    try:
        known = _LAST.get(backend, {}).get(_slot_key(cp))
    except TypeError:
        known = None
    if known is not None:
        return known + 1
    newest = backend.list(_slot_query(cp, limit=1))
    if not newest:
        return 1
    stamp = newest[0].metadata.get(SLOT_INDEX_KEY)
    if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
        return stamp + 1
    return len(backend.list(_slot_query(cp))) + 1


def stamp_position(backend: Backend, cp: Checkpoint) -> Checkpoint:
    """Return ``cp`` stamped with its position in its slot (for ``keep_every``).

    Call it holding ``slot_lock(cp)`` until ``cp`` is committed: two saves must
    never take the same position.
    """
    return cp.copy(metadata={**cp.metadata, SLOT_INDEX_KEY: _next_position(backend, cp)})


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
