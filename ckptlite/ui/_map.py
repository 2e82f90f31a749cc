"""A group's work items as a map of cells, one status character each, kept up to date.

``tiles`` layout: every item names a tile (row, col), by its id or by its state
(a failed item has no state: it is left out of a map its states lay out, and
counted in ``unplaced``), and the cells cover the tiles' bounding box row by row
(grown to the group's expected item count when the tiles start at 0, 0), a cell
no item fills being pending. Else ``grid``: the items in ledger order, ``cols``
a row. An item marked after the map was built
changes its cell in place (or joins the grid, or adds rows below the tiles), so
a poll of a live run costs what changed; any other item outside the box makes
the caller build the map again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from ._coords import MAX_CELLS, tile_of_id

__all__ = ["CELL_CODES", "ItemMap"]

#: One character per cell: pending (not in the ledger), done, failed, claimed.
CELL_CODES = {"pending": ".", "done": "d", "failed": "f", "claimed": "c"}
_PENDING, _DONE, _FAILED = (ord(CELL_CODES[k]) for k in ("pending", "done", "failed"))


class MapItem(Protocol):
    """What the map reads of an item (``tile`` is filled in for tile-named ids)."""

    ok: bool
    tile: tuple[int, int] | None


class ItemMap:
    """The map of one group (see the module doc); ``expected``: its item count, if known."""

    def __init__(
        self, group: str, items: Mapping[str, MapItem], tile_ids: bool, expected: int = 0
    ) -> None:
        self.group, self.tile_ids, self.expected = group, tile_ids, expected
        self.n = len(items)
        if tile_ids:
            for i, it in items.items():
                if it.tile is None:
                    it.tile = tile_of_id(i)  # once per item: kept for the next build
        tiles = [it.tile for it in items.values() if it.tile is not None]
        # Laid out by states: failed items (no state) have no place, and are counted.
        self.unplaced = set() if tile_ids else {i for i, it in items.items() if it.tile is None}
        self.layout = "grid"
        self.row0 = self.col0 = 0
        placeable = not any(items[i].ok for i in self.unplaced)
        if tiles and placeable and len(tiles) + len(self.unplaced) == len(items):
            r0, c0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
            rows = max(t[0] for t in tiles) - r0 + 1
            cols = max(t[1] for t in tiles) - c0 + 1
            if expected > len(items) and r0 == 0 and c0 == 0:
                rows = max(rows, math.ceil(expected / cols))  # rows not reached yet: pending
            if rows * cols <= MAX_CELLS:
                self.layout, self.rows, self.cols, self.row0, self.col0 = (
                    "tiles",
                    rows,
                    cols,
                    r0,
                    c0,
                )
        if self.layout == "tiles":
            self.cells: list[str | None] = [None] * (self.rows * self.cols)
            self.codes = bytearray([_PENDING]) * len(self.cells)
            for i, it in items.items():
                if it.tile is None:
                    continue  # unplaced
                k = (it.tile[0] - self.row0) * self.cols + (it.tile[1] - self.col0)
                self.cells[k] = i
                self.codes[k] = _DONE if it.ok else _FAILED
        else:
            self.cols = max(1, math.ceil(math.sqrt(max(len(items), expected))))
            self.cells = list(items)
            self.codes = bytearray(_DONE if it.ok else _FAILED for it in items.values())
            self.index = {i: k for k, i in enumerate(self.cells)}
            self.unplaced = set()

    def update(self, item_id: str, item: MapItem, new: bool) -> bool:
        """Show an item marked since; False when the map must be built again."""
        code = _DONE if item.ok else _FAILED
        if self.layout == "tiles":
            if item.tile is None and self.tile_ids:
                item.tile = tile_of_id(item_id)
            if item.tile is None:
                if self.tile_ids or item.ok:
                    return False
                self.unplaced.add(item_id)  # failed: no state to place it by
                self.n += new
                return True
            self.unplaced.discard(item_id)
            r, c = item.tile[0] - self.row0, item.tile[1] - self.col0
            if 0 <= c < self.cols and r >= self.rows and (r + 1) * self.cols <= MAX_CELLS:
                # Rows below the map (a run working down its rows): grow it in place.
                grow = (r + 1 - self.rows) * self.cols
                self.cells.extend([None] * grow)
                self.codes.extend(bytes([_PENDING]) * grow)
                self.rows = r + 1
            if not (0 <= r < self.rows and 0 <= c < self.cols):
                return False
            k = r * self.cols + c
            self.cells[k] = item_id
            self.codes[k] = code
        else:
            k = self.index.get(item_id, -1)
            if k < 0:
                if len(self.cells) >= 4 * self.cols * self.cols:
                    return False  # far from square now: lay it out again
                k = self.index[item_id] = len(self.cells)
                self.cells.append(item_id)
                self.codes.append(code)
            self.codes[k] = code
        self.n += new
        return True

    def payload(self) -> dict[str, Any]:
        """Return the map as JSON-ready data (``cells``: one character per cell)."""
        rows = self.rows if self.layout == "tiles" else math.ceil(len(self.cells) / self.cols)
        return {
            "group": self.group,
            "items": self.n,
            "layout": self.layout,
            "rows": rows,
            "cols": self.cols,
            "row0": self.row0,
            "col0": self.col0,
            "unplaced": len(self.unplaced),
            "cells": self.codes.decode("ascii"),
        }
