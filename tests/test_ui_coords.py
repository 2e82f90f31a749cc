"""Tile coordinates named by work-item ids and item states (``ckptlite.ui._coords``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ckptlite.ui._coords import tile_of_id, tile_of_state

coord = st.integers(0, 10**7 - 1)


@given(coord, coord, st.sampled_from(["tile_{}_{}", "{}/{}", "{}_{}", "t-{}-{}", "scene/{}/{}"]))
def test_pairs_name_row_then_col(row: int, col: int, fmt: str) -> None:
    assert tile_of_id(fmt.format(row, col)) == (row, col)


@given(coord, coord, st.sampled_from(["r{}_c{}", "R{}C{}", "x_r{}-c{}", "r{}/c{}"]))
def test_row_col_ids(row: int, col: int, fmt: str) -> None:
    assert tile_of_id(fmt.format(row, col)) == (row, col)


def test_ids_that_name_no_tile() -> None:
    for item_id in ("a", "tile_3", "tile_3_x", "37", "", "tile_3_7.tif", "12345678_1", "rc"):
        assert tile_of_id(item_id) is None, item_id


def test_states_with_row_col_or_y_x() -> None:
    assert tile_of_state({"row": 3, "col": 7, "sum": 1.5}) == (3, 7)
    assert tile_of_state({"y": 3, "x": 7}) == (3, 7)
    assert tile_of_state({"row": 3, "col": 7, "y": 9, "x": 9}) == (3, 7)
    for state in ({"row": 3}, {"row": "3", "col": 7}, {"x": True, "y": 1}, [3, 7], None, 5):
        assert tile_of_state(state) is None, state
    assert tile_of_state({"row": -1, "col": 2}) is None
