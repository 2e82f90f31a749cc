"""What the dashboard shows, as JSON-ready dicts: one method per view, reads only.

Record shapes come from the functions the CLI's ``--json`` uses (``jsonable``,
``checkpoint_view``, ``state_view``, ``tree_view``), so ``/api/runs`` holds the
``runs`` list ``ckptlite runs --json`` prints, ``/api/stats`` is ``ckptlite stats
--json``, and so on; what only the dashboard has (rates, item counts, the tile
map) sits beside them under keys of its own.

A run's work-item ledger is read once and then followed by its change clock
(``mgr.item_changes(run_id, after)``): a poll of a live run gets only the items
marked since the last one (SQLite still walks the run's rows to find them: the
clock has no index), at most twice a second, and updates counts and maps in
place. Bench P18 measures what a polling dashboard costs a pipeline.
Runs and ledgers are read through the manager (``get_run``, ``item_changes``),
never its backend.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import CkptliteError, InvalidInputError
from ..manager import CheckpointManager
from ..runs import RUN_KEY, decode_item_state
from ..tree import build_tree, tree_view
from ..types import Checkpoint, ItemRecord, Level, RunRecord, RunStatus, Status
from ..views import checkpoint_view, jsonable, state_view
from ._coords import tile_of_id, tile_of_state
from ._map import ItemMap

__all__ = ["Dashboard"]

#: Item states up to this size are decoded to look for row/col or y/x keys.
_STATE_PEEK = 1024
#: Failed items a run's view lists (all of them are in ``/items?status=failed``).
_FAILED_SHOWN = 200


@dataclass(slots=True)
class _Item:
    ok: bool
    attempts: int
    error: str | None
    size: int
    tile: tuple[int, int] | None


@dataclass(slots=True)
class _Ledger:
    """A run's ledger as the dashboard keeps it, up to change clock ``clock``.

    Counts and failed ids are kept as items arrive, so a poll costs what changed.
    """

    clock: int = -1
    run_changed: int = -1
    read_at: float = -1e9  # time.monotonic() of the last read
    groups: dict[str, dict[str, _Item]] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, set[str]] = field(default_factory=dict)
    # Per group: True when its ids name tiles (parsed when a map is drawn), False when
    # its items' states were looked at for row/col instead.
    tile_ids: dict[str, bool] = field(default_factory=dict)
    maps: dict[str, ItemMap] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            g: {"done": self.done.get(g, 0), "failed": len(self.failed.get(g, ()))}
            for g in self.groups
        }


def _item_view(group: str, item_id: str, it: _Item) -> dict[str, Any]:
    return {
        "group": group,
        "item_id": item_id,
        "status": "done" if it.ok else "failed",
        "attempts": it.attempts,
        "error": it.error,
        "size": it.size,
        "tile": list(tile) if (tile := it.tile or tile_of_id(item_id)) else None,
    }


def _iso(dt: datetime) -> str:
    return dt.isoformat()


class Dashboard:
    """The dashboard's views of one open store (thread-safe; every method only reads)."""

    def __init__(
        self,
        manager: CheckpointManager,
        *,
        rate_window: float = 300.0,
        max_runs: int = 32,
        min_interval: float = 0.5,
        max_state_bytes: int = 256 << 20,
    ) -> None:
        self.manager = manager
        #: Bigger states are not loaded to be summarised (``ckptlite cat`` still can).
        self.max_state_bytes = max_state_bytes
        #: A live run's ledger is read at most once in this many seconds.
        self.min_interval = min_interval
        self.rate_window = rate_window
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._ledgers: OrderedDict[str, _Ledger] = OrderedDict()
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    # -- runs -----------------------------------------------------------------------

    def runs(self, process_id: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Return ``{"runs": [...], "live": {run id: counts, rate, eta}}``, newest first.

        ``runs`` is what ``ckptlite runs --json`` prints (the newest ``limit``).
        """
        with self._lock:
            runs = self.manager.list_runs(process_id)[: max(1, limit)]
            live = {r.id: self._live(r, self._ledger(r)) for r in runs}
        return {"runs": jsonable(runs), "live": live, "now": _iso(datetime.now(UTC))}

    def run(self, run_id: str) -> dict[str, Any]:
        """Return one run: its record, counts, rate, per-group counts, stages, failed items.

        Raises:
            RunNotFoundError: no such run.
        """
        with self._lock:
            rec = self.manager.get_run(run_id)
            led = self._ledger(rec)
            live = self._live(rec, led)
            failed = sorted((g, i, led.groups[g][i]) for g, ids in led.failed.items() for i in ids)
            groups = led.counts()
        return {
            "run": jsonable(rec),
            "live": live,
            "groups": groups,
            "stages": self._stages(rec),
            # The timeline's axis: the run's start to its end (or now, while it runs).
            "span": max(
                1.0, ((rec.finished_at or datetime.now(UTC)) - rec.started_at).total_seconds()
            ),
            "failed": [_item_view(g, i, it) for g, i, it in failed[:_FAILED_SHOWN]],
            "failed_total": len(failed),
            "now": _iso(datetime.now(UTC)),
        }

    def items(
        self,
        run_id: str,
        group: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Return a page of a run's ledger entries, by group and item id.

        Raises:
            RunNotFoundError: no such run.
            InvalidInputError: an unknown status, or a negative offset or limit.
        """
        if status not in (None, "done", "failed"):
            raise InvalidInputError(f"status must be done or failed, not {status!r}")
        if offset < 0 or not 0 < limit <= 1000:
            raise InvalidInputError("offset must be >= 0 and limit within 1..1000")
        want = None if status is None else status == "done"
        with self._lock:
            led = self._ledger(self.manager.get_run(run_id))
            rows = sorted(
                (g, i, it)
                for g, items in led.groups.items()
                if group is None or g == group
                for i, it in items.items()
                if want is None or it.ok == want
            )
        return {
            "items": [_item_view(g, i, it) for g, i, it in rows[offset : offset + limit]],
            "total": len(rows),
            "offset": offset,
        }

    def item_map(self, run_id: str, group: str) -> dict[str, Any]:
        """Return a group's items as a compact map: one status character per cell.

        ``layout`` is ``tiles`` when every item names a tile (row, col: by its id or
        its state), the cells then cover the tiles' bounding box row by row, and a
        cell no item fills is pending; else ``grid``: the items in ledger order,
        ``cols`` a row (see ``ckptlite.ui._map``).

        Raises:
            RunNotFoundError: no such run.
        """
        with self._lock:
            rec = self.manager.get_run(run_id)
            led = self._ledger(rec)
            return self._map(led, group, self._expected(rec, led, group)).payload()

    def cell(self, run_id: str, group: str, index: int) -> dict[str, Any]:
        """Return the item in cell ``index`` of ``item_map`` (``item`` None: pending).

        Raises:
            RunNotFoundError: no such run.
            InvalidInputError: ``index`` is outside the map.
        """
        with self._lock:
            rec = self.manager.get_run(run_id)
            led = self._ledger(rec)
            m = self._map(led, group, self._expected(rec, led, group))
            if not 0 <= index < len(m.cells):
                raise InvalidInputError(f"cell {index} is outside the map of {group!r}")
            item_id = m.cells[index]
            item = led.groups[group][item_id] if item_id is not None else None
            out: dict[str, Any] = {"index": index, "group": group}
            if m.layout == "tiles":
                out["tile"] = [m.row0 + index // m.cols, m.col0 + index % m.cols]
        out["item"] = _item_view(group, item_id, item) if item and item_id else None
        return out

    # -- checkpoints and the store ------------------------------------------------------

    def checkpoints(self, process_id: str | None = None, limit: int = 2000) -> dict[str, Any]:
        """Return ``{"tree": [...]}`` as ``ckptlite ls --tree --json`` prints it (newest ``limit``).

        Raises:
            InvalidInputError: a bad process id or limit.
        """
        cps = self.manager.list(process_id, limit=limit)
        return {"tree": tree_view(build_tree(cps)), "shown": len(cps), "limit": limit}

    def checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """Return ``{"checkpoint": ...}`` as ``ckptlite show --json`` prints it.

        Raises:
            CheckpointNotFoundError: no such id.
        """
        return {"checkpoint": checkpoint_view(self.manager.get(checkpoint_id))}

    def state(self, checkpoint_id: str) -> dict[str, Any]:
        """Return ``{"id", "state"}`` as ``ckptlite cat --json`` prints it (summarised).

        Raises:
            CheckpointNotFoundError: no such id.
            CorruptCheckpointError: the state fails verification.
            PickleNotAllowedError: the state holds pickles (never loaded here).
            InvalidInputError: the state is bigger than ``max_state_bytes``.
        """
        cp = self.manager.get(checkpoint_id)
        if cp.size > self.max_state_bytes:
            raise InvalidInputError(
                f"the state of {checkpoint_id} is {cp.size} bytes: the dashboard summarises "
                f"states up to {self.max_state_bytes} bytes",
                hint=f"Run: ckptlite cat {checkpoint_id}",
            )
        return {"id": checkpoint_id, "state": state_view(self.manager.load(cp))}

    def stats(self) -> dict[str, Any]:
        """Return what ``ckptlite stats --json`` prints."""
        return self.manager.stats()

    def health(self) -> dict[str, Any]:
        """Return the store's stats, bytes per process, corrupted checkpoints, last verify."""
        stats = self.manager.stats()
        per: dict[str, dict[str, int]] = {}
        for cp in self.manager.list():
            p = per.setdefault(cp.process_id, {"checkpoints": 0, "size": 0, "stored_size": 0})
            p["checkpoints"] += 1
            p["size"] += cp.size
            p["stored_size"] += cp.stored_size
        corrupted = self.manager.list(status=Status.CORRUPTED)
        return {
            "stats": stats,
            "bytes_by_process": dict(sorted(per.items())),
            "corrupted": [checkpoint_view(c) for c in corrupted],
            # Stores do not record their verifies yet; shown when one does.
            "last_verify": jsonable(stats.get("last_verify")),
        }

    # -- internals ------------------------------------------------------------------

    def _ledger(self, rec: RunRecord) -> _Ledger:
        """Return the run's ledger, reading only what changed since the last call."""
        led = self._ledgers.get(rec.id)
        if led is None:
            led = self._ledgers[rec.id] = _Ledger()
            while len(self._ledgers) > self.max_runs:
                self._ledgers.popitem(last=False)
        self._ledgers.move_to_end(rec.id)
        if rec.status != RunStatus.RUNNING and led.run_changed == rec.changed:
            return led  # a finished run that did not change since it was read
        now = time.monotonic()
        if led.run_changed == rec.changed and now - led.read_at < self.min_interval:
            return led  # read a moment ago (a page asks for a run and its map at once)
        led.read_at = now
        after = None if led.clock < 0 else led.clock
        fresh = self.manager.item_changes(rec.id, after)
        for r in fresh:
            self._take(led, r)
        if fresh:
            led.clock = max(led.clock, fresh[-1].changed)
        led.clock = max(led.clock, 0)
        led.run_changed = rec.changed
        return led

    def _take(self, led: _Ledger, r: ItemRecord) -> None:
        group, item_id = r.group, r.item_id
        items = led.groups.get(group)
        if items is None:
            items = led.groups[group] = {}
            led.done[group], led.failed[group] = 0, set()
            led.tile_ids[group] = tile_of_id(item_id) is not None
        tile = None
        if not led.tile_ids[group] and r.state is not None and len(r.state) <= _STATE_PEEK:
            try:
                tile = tile_of_state(decode_item_state(r.state))
            except CkptliteError:
                tile = None  # a state we may not or cannot decode names no tile
        old = items.get(item_id)
        if old is not None and old.ok:
            return  # the first done-mark stays (the ledger never changes it)
        if r.ok:
            led.done[group] += 1
            led.failed[group].discard(item_id)
        else:
            led.failed[group].add(item_id)
        size = len(r.state) if r.state is not None else 0
        items[item_id] = item = _Item(r.ok, r.attempts, r.error, size, tile)
        m = led.maps.get(group)
        if m is not None and not m.update(item_id, item, new=old is None):
            del led.maps[group]  # built again when it is next asked for

    def _live(self, rec: RunRecord, led: _Ledger) -> dict[str, Any]:
        """Return a run's counts, rate (items per minute) and ETA."""
        counts = led.counts()
        done = sum(c["done"] for c in counts.values())
        failed = sum(c["failed"] for c in counts.values())
        extra = jsonable(rec)  # fields a newer RunRecord may have (claimed, workers)
        claimed = extra.get("claimed")
        claimed = claimed if isinstance(claimed, int) else 0
        total = max(rec.progress[1] if rec.progress else 0, done + failed + claimed)
        rate, basis = self._rate(rec, done)
        pending = max(0, total - done - failed - claimed)
        eta = None
        if rec.status == RunStatus.RUNNING and rate and rate > 0 and pending:
            eta = pending / rate * 60
        return {
            "done": done,
            "failed": failed,
            "claimed": claimed,
            "pending": pending,
            "total": total,
            "rate_per_min": rate,
            "rate_basis": basis,
            "eta_seconds": eta,
        }

    def _rate(self, rec: RunRecord, done: int) -> tuple[float | None, str | None]:
        now = time.monotonic()
        samples = self._samples.setdefault(rec.id, deque())
        if not samples or samples[-1][1] != done or now - samples[-1][0] >= 1.0:
            samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > self.rate_window:
            samples.popleft()
        t0, d0 = samples[0]
        if rec.status == RunStatus.RUNNING and now - t0 >= 2.0:
            return (done - d0) / (now - t0) * 60, "window"
        span = (rec.updated_at - rec.started_at).total_seconds()
        if span > 0 and done:
            return done / span * 60, "average"
        return None, None

    def _stages(self, rec: RunRecord) -> list[dict[str, Any]]:
        cps: list[Checkpoint] = [
            c
            for c in self.manager.list(rec.process_id, level=Level.STAGE)
            if c.metadata.get(RUN_KEY) == rec.id
        ]
        cps.sort(key=lambda c: c.seq)
        out, start = [], rec.started_at
        for c in cps:
            end = c.created_at
            out.append(
                {
                    "name": c.name,
                    "checkpoint_id": c.id,
                    "status": c.status.value,
                    "start": _iso(start),
                    "end": _iso(end),
                    "duration": max(0.0, (end - start).total_seconds()),
                    "offset": max(0.0, (start - rec.started_at).total_seconds()),
                    "size": c.size,
                }
            )
            start = max(start, end)
        return out

    def _expected(self, rec: RunRecord, led: _Ledger, group: str) -> int:
        # The run's progress total counts every group: it is this group's only when
        # the group is the run's one group.
        if rec.progress and set(led.groups) == {group}:
            return rec.progress[1]
        return 0

    def _map(self, led: _Ledger, group: str, expected: int = 0) -> ItemMap:
        """Return a group's map; ``expected``: how many items the group will have, if known."""
        m = led.maps.get(group)
        if m is None or m.expected != expected:
            items = led.groups.get(group, {})
            m = ItemMap(group, items, led.tile_ids.get(group, False), expected)
            led.maps[group] = m
        return m
