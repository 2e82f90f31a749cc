"""When to save and what to keep: ``CheckpointPolicy`` and pure retention functions.

Retention works per slot, ``(process_id, level, name)``. A checkpoint is kept
when any keep rule selects it (``keep_last``, ``keep_every``, ``keep_best``; with
no keep rule, every checkpoint is selected), unless it is older than
``max_age``. Whatever the rules say, these are always kept:

- the newest VALID checkpoint of each slot;
- every ARCHIVED checkpoint (and ARCHIVED ones are left out of every count);
- CREATED ones (a write may still be in progress);
- parents of kept checkpoints (deleting a parent would cascade to them);
- ids the caller pins (the manager pins parents of checkpoints outside the scope).

``keep_every=N`` keeps each checkpoint whose *slot position* is a multiple of N.
Positions are 1-based (the first save of a slot is position 1, so N=10 keeps
the 10th, 20th, ...). The manager stamps every new checkpoint's position into its
metadata under ``SLOT_INDEX_KEY`` (with or without a policy), so positions stay put
when retention removes older checkpoints, and every rule gives the same result
however often it runs, like restic's ``forget``. (Two processes saving to one
slot at the same moment may stamp the same position: both are then judged by it.)
A checkpoint without that stamp (written by an older ckptlite) has no position
that would survive a prune: a rank among the survivors would move with every
pass and erode history, so ``keep_every`` keeps it; the other rules judge it
as usual.

>>> from ckptlite.policies import CheckpointPolicy
>>> CheckpointPolicy(keep_last=3, keep_every=10).keeps_anything_out
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidInputError
from .types import SLOT_INDEX_KEY, Checkpoint, Level, Status

__all__ = [
    "SLOT_INDEX_KEY",
    "CheckpointPolicy",
    "RetentionDecision",
    "RetentionReport",
    "plan_retention",
    "slot_of",
    "slot_position",
]


Slot = tuple[str, Level, str]


def slot_of(cp: Checkpoint) -> Slot:
    """Return the ``(process_id, level, name)`` slot a checkpoint belongs to."""
    return (cp.process_id, cp.level, cp.name)


def _positive_int(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidInputError(f"{name} must be a positive int or None, not {value!r}")


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When to save (``every_items``, ``every_seconds``) and what to keep.

    ``max_age`` is a ``timedelta`` or seconds; ``keep_best`` is ``(metric, "min"|"max")``
    over a numeric metadata key.

    Raises:
        InvalidInputError: a field has the wrong type or range.

    >>> CheckpointPolicy(every_items=100, keep_last=3).should_save(items_since=100)
    True
    """

    every_items: int | None = None
    every_seconds: float | None = None
    keep_last: int | None = None
    keep_every: int | None = None
    max_age: timedelta | float | None = None
    keep_best: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("every_items", "keep_last", "keep_every"):
            _positive_int(name, getattr(self, name))
        if self.every_seconds is not None and (
            isinstance(self.every_seconds, bool)
            or not isinstance(self.every_seconds, int | float)
            or not self.every_seconds > 0
        ):
            raise InvalidInputError(f"every_seconds must be > 0, not {self.every_seconds!r}")
        age = self.max_age
        if age is not None:
            if isinstance(age, int | float) and not isinstance(age, bool):
                if not (math.isfinite(age) and age >= 0):
                    raise InvalidInputError(f"max_age must be >= 0 seconds, not {age!r}")
                object.__setattr__(self, "max_age", timedelta(seconds=age))
            elif not isinstance(age, timedelta) or age < timedelta(0):
                raise InvalidInputError(f"max_age must be a timedelta >= 0, not {age!r}")
        best = self.keep_best
        if best is not None:
            if (
                not isinstance(best, tuple | list)
                or len(best) != 2
                or not isinstance(best[0], str)
                or best[1] not in ("min", "max")
            ):
                raise InvalidInputError(
                    f"keep_best must be (metric, 'min'|'max'), not {best!r}",
                    hint="For example keep_best=('val_loss', 'min').",
                )
            object.__setattr__(self, "keep_best", (best[0], best[1]))

    @property
    def keeps_anything_out(self) -> bool:
        """Tell whether this policy can remove anything (it has a keep rule or max_age)."""
        return any(
            v is not None for v in (self.keep_last, self.keep_every, self.max_age, self.keep_best)
        )

    def should_save(self, items_since: int = 0, seconds_since: float = 0.0) -> bool:
        """Tell whether a save is due after ``items_since`` items / ``seconds_since`` seconds.

        With neither ``every_items`` nor ``every_seconds`` set, every call says yes.
        """
        if self.every_items is None and self.every_seconds is None:
            return True
        return (self.every_items is not None and items_since >= self.every_items) or (
            self.every_seconds is not None and seconds_since >= self.every_seconds
        )


@dataclass(frozen=True, slots=True)
class RetentionDecision:
    """Whether one checkpoint stays, and every reason that decided it."""

    checkpoint: Checkpoint
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What ``apply_retention`` removed (or, with ``dry_run``, would remove), and why.

    ``removed`` lists the checkpoints the policy removes; ``decisions`` has one
    entry per checkpoint considered, oldest first within each slot.
    """

    policy: CheckpointPolicy
    decisions: tuple[RetentionDecision, ...]
    removed: tuple[str, ...]
    dry_run: bool = False

    @property
    def kept(self) -> tuple[str, ...]:
        """Return the ids kept."""
        return tuple(d.checkpoint.id for d in self.decisions if d.keep)

    def explain(self) -> str:
        """Return one line per checkpoint: keep/remove, id, slot and reasons."""
        verb = "would remove" if self.dry_run else "remove"
        lines = []
        for d in self.decisions:
            cp = d.checkpoint
            what = "keep" if d.keep else verb
            lines.append(
                f"{what:12} {cp.id}  {cp.process_id}/{cp.level.value}/{cp.name}  "
                + "; ".join(d.reasons)
            )
        return "\n".join(lines)


def slot_position(cp: Checkpoint) -> int | None:
    """Return the 1-based slot position stamped on ``cp``, or None (no valid stamp)."""
    stamp = cp.metadata.get(SLOT_INDEX_KEY)
    if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
        return stamp
    return None


def _metric(cp: Checkpoint, key: str) -> float | None:
    v = cp.metadata.get(key)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _slot_reasons(
    records: Sequence[Checkpoint], policy: CheckpointPolicy, now: datetime
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Judge one slot's records (oldest first): keep reasons by id, and age removals."""
    reasons: dict[str, list[str]] = {cp.id: [] for cp in records}
    too_old: dict[str, str] = {}
    counted = [cp for cp in records if cp.status != Status.ARCHIVED]
    valid = [cp for cp in counted if cp.status == Status.VALID]
    if policy.keep_last is not None:
        newest = valid[-policy.keep_last :]
        for i, cp in enumerate(reversed(newest), start=1):
            reasons[cp.id].append(f"keep_last={policy.keep_last} (#{i} newest valid)")
    if policy.keep_every is not None:
        n = policy.keep_every
        for cp in valid:
            pos = slot_position(cp)
            if pos is None:
                reasons[cp.id].append(f"keep_every={n} (no slot position recorded: kept)")
            elif pos % n == 0:
                reasons[cp.id].append(f"keep_every={n} (slot position {pos})")
    if policy.keep_best is not None:
        key, mode = policy.keep_best
        scored = [(m, cp.seq, cp) for cp in valid if (m := _metric(cp, key)) is not None]
        if scored:
            # Ties go to the newest checkpoint.
            best = (
                min(scored, key=lambda t: (t[0], -t[1]))
                if mode == "min"
                else max(scored, key=lambda t: (t[0], t[1]))
            )
            reasons[best[2].id].append(f"keep_best {key}={best[0]:g} ({mode})")
    no_rule = policy.keep_last is None and policy.keep_every is None and policy.keep_best is None
    limit = policy.max_age
    for cp in counted:
        if no_rule:
            reasons[cp.id].append("no keep rule: kept unless too old")
        if reasons[cp.id] and isinstance(limit, timedelta) and now - cp.created_at > limit:
            age = now - cp.created_at
            too_old[cp.id] = f"older than max_age ({_fmt_age(age)} > {_fmt_age(limit)})"
            reasons[cp.id] = []
    return reasons, too_old


def _fmt_age(td: timedelta) -> str:
    return f"{td.total_seconds():.0f}s"


def plan_retention(
    records: Iterable[Checkpoint],
    policy: CheckpointPolicy,
    now: datetime,
    pinned: Iterable[str] = (),
) -> list[RetentionDecision]:
    """Decide, for every record, whether the policy keeps or removes it. Pure: no I/O.

    ``records`` may span many slots; each slot is judged on its own. ``now`` (aware)
    measures ``max_age``. ``pinned`` ids are kept (with their parents).

    Raises:
        InvalidInputError: ``now`` is naive.

    >>> plan_retention([], CheckpointPolicy(keep_last=1), datetime.now().astimezone())
    []
    """
    if now.tzinfo is None:
        raise InvalidInputError("now must be timezone-aware")
    by_slot: dict[Slot, list[Checkpoint]] = {}
    for cp in records:
        by_slot.setdefault(slot_of(cp), []).append(cp)
    ordered: list[Checkpoint] = []
    keep: dict[str, list[str]] = {}
    drop: dict[str, list[str]] = {}
    for slot in sorted(by_slot, key=lambda s: (s[0], s[1].value, s[2])):
        recs = sorted(by_slot[slot], key=lambda c: c.seq)
        ordered += recs
        reasons, too_old = _slot_reasons(recs, policy, now)
        newest_valid = next((c for c in reversed(recs) if c.status == Status.VALID), None)
        for cp in recs:
            why: list[str] = []
            if cp.status == Status.ARCHIVED:
                why.append("archived: never removed")
            elif cp.status == Status.CREATED:
                why.append("created: may still be being written")
            if newest_valid is not None and cp.id == newest_valid.id:
                why.append("newest valid checkpoint of its slot")
            why += reasons[cp.id]
            if why:
                keep[cp.id] = why + ([f"({too_old[cp.id]})"] if cp.id in too_old else [])
            elif cp.id in too_old:
                drop[cp.id] = [too_old[cp.id]]
            else:
                status = "" if cp.status == Status.VALID else f"{cp.status.value}, "
                drop[cp.id] = [f"{status}not kept by any rule"]
    by_id = {cp.id: cp for cp in ordered}
    for cid in pinned:
        if cid in drop:
            del drop[cid]
            keep[cid] = ["pinned: a checkpoint outside the scope depends on it"]
    # Deleting a checkpoint deletes its descendants: keep the ancestors of kept ones.
    for cid in list(keep):
        node = by_id.get(cid)
        while node is not None and node.parent_id is not None:
            if node.parent_id in drop:
                del drop[node.parent_id]
                keep[node.parent_id] = [f"parent of kept checkpoint {node.id}"]
            node = by_id.get(node.parent_id)
    return [
        RetentionDecision(cp, cp.id in keep, tuple(keep.get(cp.id) or drop[cp.id]))
        for cp in ordered
    ]
