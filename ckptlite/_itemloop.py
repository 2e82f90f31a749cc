"""A run's work items as one worker sees them: ``WorkItem``, and the mixin ``Run`` inherits.

``ItemLoop.items`` registers a group, claims its free batches and yields the
items not done; ``WorkItem.done`` / ``fail`` queue marks, committed in batches
(``commit``, or the worker's background thread). See ``ckptlite.runs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, cast

from . import _inputs
from ._envelope import decode_item_state, encode_item_state
from ._workers import check_lease, claim_count
from .errors import CkptliteError, InvalidInputError
from .types import ItemMark, ItemRecord

if TYPE_CHECKING:
    from .runs import Run, RunManager
    from .types import RunRecord

__all__ = ["ItemLoop", "WorkItem", "error_text"]

_ERROR_MAX = 4000
#: How long a loop stopped early waits for a commit under way before keeping its batches.
_LET_GO_WAIT_S = 1.0
_MAX_SEG = 256  # items per batch at most (auto): a batch is what a dead worker's successor redoes
_new_mark = tuple.__new__  # builds an ItemMark without NamedTuple's slower __new__


def error_text(exc: BaseException | str) -> str:
    """Return the text a failed mark or a failed run keeps of ``exc`` (bounded)."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text[:_ERROR_MAX]


class WorkItem:
    """One pending item yielded by ``run.items``: call ``done`` or ``fail`` once."""

    __slots__ = ("_resolved", "_seg", "attempts", "group", "id", "run")

    def __init__(
        self, run: Run, group: str, item_id: str, attempts: int, seg: list[Any] | None = None
    ) -> None:
        self.run = run
        self.group = group
        self.id = item_id
        self.attempts = attempts  # failed attempts recorded before this one
        self._resolved = False
        self._seg = seg

    def __repr__(self) -> str:
        return f"<WorkItem {self.group}/{self.id} attempts={self.attempts}>"

    def done(self, state: Any = None) -> None:
        """Mark the item done, with an optional state committed together with the mark.

        The state is encoded now (later changes to it are not seen).

        Raises:
            UnsupportedTypeError: the state holds a value with no encoding (item not marked).
            InvalidInputError: the item was already marked done or failed.
        """
        if self._resolved:
            raise InvalidInputError(f"item {self.group}/{self.id} was already marked")
        data = (
            None
            if state is None
            else encode_item_state(state, allow_pickle=self.run.manager.allow_pickle)
        )
        self._resolved = True
        self.run._mark(_new_mark(ItemMark, (self.group, self.id, True, data, None)), self._seg)

    def fail(self, exc: BaseException | str) -> None:
        """Mark the item failed with ``exc``; a resumed run retries it up to max_attempts.

        Raises:
            InvalidInputError: the item was already marked done or failed.
        """
        if self._resolved:
            raise InvalidInputError(f"item {self.group}/{self.id} was already marked")
        self._resolved = True
        self.run._mark(ItemMark(self.group, self.id, False, None, error_text(exc)), self._seg)


class ItemLoop:
    """The work items of a ``Run`` (mixed into it): ``items``, marks, ``commit``, results."""

    # Set by ``Run.__init__`` (see there for what each holds).
    manager: RunManager
    batch_size: int
    batch_seconds: float
    max_attempts: int
    completed_before: bool
    lease: float
    _lock: threading.RLock
    _pending: list[ItemMark]
    _closing: list[tuple[str, int]]
    _touched: dict[tuple[str, int], list[Any]]
    _last_flush: float
    _last_progress: float
    _failed_now: set[tuple[str, str]]
    _exhausted: set[tuple[str, str]]
    _totals: dict[str, tuple[int, int]]
    _ndone: int
    _others: int
    _active: int
    _poll: float
    _background: bool
    _due: threading.Event
    _commit_lock: threading.Lock
    _register_lock: threading.Lock
    _open_groups: dict[str, tuple[int, str, int]]
    _bg_error: Exception | None

    if TYPE_CHECKING:  # defined by ``Run``

        @property
        def id(self) -> str: ...

        @property
        def worker_id(self) -> str: ...

        def _use_lease(self, lease: float) -> None: ...

        def _reap(self, waiting: bool = False) -> None: ...

        def _update(self, *, progress: tuple[int, int] | None = None) -> RunRecord: ...

    def items(
        self,
        group: str,
        item_ids: Iterable[str],
        *,
        max_attempts: int | None = None,
        lease: float | None = None,
        claim: int | None = None,
    ) -> Iterator[WorkItem]:
        """Yield a ``WorkItem`` for each id of ``group`` not done, that no live worker holds.

        The ids (every worker of the run passes the same, in the same order) are
        read in full when the loop starts (a finite iterable: a list or a generator
        that ends), then cut into batches of ``claim`` items (default: 1/128 of them, 1 to 256);
        free batches are claimed (``claim_count`` of them at a time) with a ``lease``
        (seconds, default: the run's) renewed by the heartbeat. Items that failed ``max_attempts``
        times (default: the run's) are skipped and make the run end FAILED.
        Duplicate ids are yielded once by a worker, and loops of one worker over a
        group (its threads) share the group's batches. A loop starts by committing
        the worker's queued marks. When no batch is free, the loop waits for the
        batches other workers hold (taking over those whose lease expires); when it
        ends, queued marks are committed.

        Raises:
            InvalidInputError: ``group`` or an id is not a str; other live workers
                passed other ids for this group.
        """
        _inputs.text(group, "group", empty=False)
        limit = self.max_attempts if max_attempts is None else max_attempts
        lease = self.lease if lease is None else check_lease(lease)
        if claim is not None and (
            isinstance(claim, bool) or not isinstance(claim, int) or claim < 1
        ):
            raise InvalidInputError(f"claim must be a positive int, not {claim!r}")
        if self.completed_before:
            return iter(())
        return self._items(group, item_ids, limit, lease, claim)

    def _items(
        self, group: str, item_ids: Iterable[str], limit: int, lease: float, claim: int | None
    ) -> Iterator[WorkItem]:
        # The progress total is known only when the caller gave a sized collection.
        total = len(item_ids) if isinstance(item_ids, Sized) else 0
        ids = list(item_ids)
        # Every id is checked before anything is written (registering the group).
        try:
            blob = "\x00".join(ids).encode("utf-8")
        except TypeError:
            bad = next(i for i in ids if type(i) is not str)
            raise InvalidInputError(f"item ids must be str, not {bad!r}") from None
        except UnicodeEncodeError:
            for i in ids:
                _inputs.text(i, "item id")
            raise
        fingerprint = hashlib.blake2b(blob, digest_size=16).hexdigest()
        del blob
        backend, lock_ = self.manager.backend, self._lock
        self._use_lease(lease)
        want = claim or max(1, min(_MAX_SEG, len(ids) // 128))
        # This worker's queued marks first: the ledger read below must see them (the
        # items of a loop that ended may be marked after it, and not committed yet).
        self.commit()
        with self._register_lock:
            # Another loop of this worker runs the group: join its cut of the ids. The
            # worker, alone in the run, would register it afresh: every batch free, the
            # ones that loop holds too, and their items done twice.
            open_ = self._open_groups.get(group)
            if open_ is not None:
                if open_[1] != fingerprint:
                    raise InvalidInputError(
                        f"item group {group!r} is being iterated by this worker with other ids"
                    )
                size = open_[0]
            else:
                size, self._others = backend.register_group(
                    self.id,
                    group,
                    total=len(ids),
                    seg_size=want,
                    fingerprint=fingerprint,
                    worker_id=self.worker_id,
                    ids=ids,  # kept: `ckptlite items --status pending` lists them
                )
            self._open_groups[group] = (size, fingerprint, 1 + (open_[2] if open_ else 0))
        # Read after registering: a worker alone registers the group afresh (every batch
        # free), so only the ledger tells what workers that left since did.
        try:
            done, failed = backend.item_marks(self.id, group)
        except BaseException:
            self._close_group(group)
            raise
        with self._lock:
            self._totals[group] = (len(done), total)
        with lock_:
            self._active += 1
        held: set[int] = set()  # claimed, not all yielded: released if the loop stops early
        seen: set[str] = set()
        nseg = -(-len(ids) // size)
        count, cap, claimed_at, ngot, seg_s = 1, max(1, min(64, nseg // 64)), 0.0, 1, 0.0
        new_item, lock, seen_add = WorkItem, self._lock, seen.add
        run = cast("Run", self)  # the Run this is mixed into, which items are of
        try:
            while True:
                now = time.monotonic()
                if claimed_at:  # the time the last claim's batches took (work and marks)
                    seg_s = (now - claimed_at) / ngot
                got = backend.claim_segments(self.id, group, self.worker_id, count, lease)
                if not got:
                    claimed_at = 0.0
                    self.commit()  # our closed batches, before anyone waits on them
                    if not backend.group_busy(self.id, group, self.worker_id):
                        break
                    self._reap(waiting=True)
                    time.sleep(self._poll)
                    continue
                claimed_at, ngot = time.monotonic(), len(got)
                left = nseg - 1 - got[-1][0]  # batches are claimed lowest first
                count = claim_count(count, self._others, left, seg_s, cap)
                held.update(seg for seg, _ in got)
                for seg, taken in got:
                    chunk = ids[seg * size : (seg + 1) * size]
                    # Held before (let go, left, or its worker died): the ledger, not
                    # this loop's first read, tells what was done or failed since.
                    if taken:
                        now_done, now_failed = backend.marks_among(self.id, group, chunk)
                        done.update(now_done)
                        failed.update(now_failed)
                    todo = []
                    for item_id in chunk:
                        if item_id in done or item_id in seen:
                            continue
                        attempts = failed.get(item_id, 0) if failed else 0
                        if attempts >= limit:
                            self._exhausted.add((group, item_id))
                            continue
                        seen_add(item_id)
                        todo.append((item_id, attempts))
                    # yielded and not marked, all yielded, key, not yet yielded
                    st: list[Any] = [0, False, group, seg, len(todo)]
                    if len(todo) < len(chunk):  # the next commit tells how many are left
                        with lock:
                            self._touched[group, seg] = st
                    for item_id, attempts in todo:
                        st[0] += 1
                        st[4] -= 1
                        yield new_item(run, group, item_id, attempts, st)
                    with lock:
                        st[1] = True
                        held.discard(seg)
                        if st[0] == 0:
                            self._closing.append((group, seg))
        finally:
            with lock_:
                self._active -= 1
            try:
                if held:
                    self._let_go(group, sorted(held))
            finally:
                self._close_group(group)
        self.commit()

    def _close_group(self, group: str) -> None:
        """Count one loop of this worker over ``group`` less (see ``_open_groups``)."""
        with self._register_lock:
            size, fingerprint, n = self._open_groups[group]
            if n > 1:
                self._open_groups[group] = (size, fingerprint, n - 1)
            else:
                del self._open_groups[group]

    def _let_go(self, group: str, segs: list[int]) -> None:
        """Release the batches of a loop stopped early, once its marks are committed."""
        # The worker that takes a batch over skips only the items committed: marks still
        # queued would be done twice. So batches are let go only after a commit that
        # worked; else they stay held (best effort: the store may be closed by now) and
        # are taken over when their lease ends, as held before: the ledger is asked then.
        # The wait is bounded: the cycle collector may close an abandoned loop on a
        # thread that holds the commit lock itself (a Lock, not re-entrant).
        if not self._commit_lock.acquire(timeout=_LET_GO_WAIT_S):
            return
        try:
            self._commit_queued()
        except CkptliteError:
            return
        finally:
            self._commit_lock.release()
        with contextlib.suppress(CkptliteError):
            self.manager.backend.release_segments(self.id, self.worker_id, group, segs)

    def _mark(self, mark: ItemMark, seg: list[Any] | None = None) -> None:
        with self._lock:
            pending = self._pending
            pending.append(mark)
            if mark.ok:
                self._ndone += 1
                if self._failed_now:
                    self._failed_now.discard((mark.group, mark.item_id))
            else:
                self._failed_now.add((mark.group, mark.item_id))
            if seg is not None:
                seg[0] -= 1
                if not seg[0] and seg[1]:
                    self._closing.append((seg[2], seg[3]))
                else:
                    self._touched[seg[2], seg[3]] = seg
            due = len(pending) >= self.batch_size or (
                time.monotonic() - self._last_flush >= self.batch_seconds
            )
            if due and self._background and self._bg_error is None:
                # The background thread commits it; the item path waits only when it
                # falls behind.
                due = len(pending) >= 4 * self.batch_size
                if not due:
                    self._due.set()
        if due:
            self.commit()

    def commit(self) -> None:
        """Commit the queued item marks (with their states) in one transaction.

        Batches whose items are all marked are set done in the same transaction.

        Raises:
            StoreFullError, StoreIOError, StoreLockedError: nothing of the batch was
                committed; the marks stay queued for the next commit.
        """
        with self._commit_lock:  # the background thread may be committing
            self._commit_queued()

    def _commit_queued(self) -> None:
        # Commits run one at a time (``_commit_lock`` held), in the order their marks
        # were queued; marks queued meanwhile wait for the next. A batch is closed in
        # the transaction of its last marks or after it, never before: a failed commit
        # puts its marks and closings back in front of the queue.
        with self._lock:
            batch, self._pending = self._pending, []
            closing, self._closing = self._closing, []
            touched, self._touched = self._touched, {}
            # Items of a held batch not marked once this commits: yielded and not
            # marked, or not yet yielded (``claimed`` in the run's counts).
            unmarked = [(g, seg, st[0] + st[4]) for (g, seg), st in touched.items()]
        try:
            if closing or unmarked:
                self.manager.backend.mark_items(
                    self.id, batch, closing=closing, worker_id=self.worker_id, unmarked=unmarked
                )
            elif batch:
                self.manager.backend.mark_items(self.id, batch)
        except BaseException:
            with self._lock:
                self._pending = batch + self._pending
                self._closing = closing + self._closing
                self._touched = {**touched, **self._touched}
            raise
        self._bg_error = None
        with self._lock:
            self._last_flush = now = time.monotonic()
            report = bool(batch) and now - self._last_progress >= 1.0
            if report:
                self._last_progress = now
        if report:
            self._update(progress=self.progress)

    @property
    def progress(self) -> tuple[int, int]:
        """Return (done, total) over the groups iterated in this session.

        ``done`` counts items done before this session plus done-marks made in it.
        """
        with self._lock:
            return (
                sum(d for d, _ in self._totals.values()) + self._ndone,
                sum(t for _, t in self._totals.values()),
            )

    def results(self, group: str) -> dict[str, Any]:
        """Return ``{item id: state}`` of the group's committed done items."""
        allow = self.manager.allow_pickle
        return {
            r.item_id: decode_item_state(r.state, allow_pickle=allow)
            for r in self.manager.backend.list_items(self.id, group)
            if r.ok
        }

    def ledger(self, group: str | None = None) -> list[ItemRecord]:
        """Return the committed ledger entries of this run (states still encoded)."""
        return self.manager.backend.list_items(self.id, group)
