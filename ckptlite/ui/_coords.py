"""Tile coordinates named by work-item ids or item states (pure functions).

``tile_3_7``, ``3/7``, ``3_7`` and ``r3_c7`` are row 3, column 7 (the order the
README's tile pipeline uses); an item state that is a dict with int ``row``/``col``
or ``y``/``x`` places the item too.

>>> tile_of_id("tile_3_7"), tile_of_id("r3_c7"), tile_of_id("3/7"), tile_of_id("a")
((3, 7), (3, 7), (3, 7), None)
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_CELLS", "tile_of_id", "tile_of_state"]

#: A tile map larger than this (its bounding box, in cells) is drawn as a plain grid.
MAX_CELLS = 4_000_000

# One search per id: ``r3_c7`` (groups 1, 2) or ``..3_7`` / ``3/7`` (groups 3, 4).
_TILE = re.compile(
    r"(?:(?:^|[^a-z0-9])r(\d{1,7})[_\-/,.]?c(\d{1,7})|(?:^|[^0-9])(\d{1,7})[_/,\-](\d{1,7}))$",
    re.IGNORECASE,
)


def tile_of_id(item_id: str) -> tuple[int, int] | None:
    """Return the (row, col) an item id names, or None."""
    m = _TILE.search(item_id)
    if m is None:
        return None
    return (int(m[1]), int(m[2])) if m[1] is not None else (int(m[3]), int(m[4]))


def tile_of_state(state: Any) -> tuple[int, int] | None:
    """Return the (row, col) an item state names (keys row/col or y/x), or None."""
    if not isinstance(state, dict):
        return None
    for r, c in (("row", "col"), ("y", "x")):
        row, col = state.get(r), state.get(c)
        if type(row) is int and type(col) is int and 0 <= row < 10**7 and 0 <= col < 10**7:
            return row, col
    return None
