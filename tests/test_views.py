"""JSON views of states: the codec's extension types are summarised, ``full`` gives the data."""

from __future__ import annotations

import json
import pathlib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import ckptlite
from ckptlite.cli import main
from ckptlite.views import state_view


def test_small_types_become_readable_json() -> None:
    view = state_view(
        {
            "d": Decimal("-1.50"),
            "p": pathlib.PurePosixPath("/data/t.tif"),
            "z": 1 + 2j,
            "dt": timedelta(hours=1, seconds=3),
            "s": {3, 1, 2},
            "f": frozenset({"b", "a"}),
            "mixed": {1, "a"},
            "dtype": np.dtype("<f4"),
        }
    )
    assert view["d"] == "-1.50" and view["p"] == "/data/t.tif" and view["z"] == "(1+2j)"
    assert view["dt"] == {"__type__": "timedelta", "seconds": 3603.0, "text": "1:00:03"}
    assert view["s"] == {"__type__": "set", "items": [1, 2, 3]}
    assert view["f"] == {"__type__": "frozenset", "items": ["a", "b"]}
    assert sorted(map(str, view["mixed"]["items"])) == ["1", "a"]
    assert view["dtype"] == "float32"
    json.dumps(view)


def test_masked_arrays_show_the_valid_range_and_masked_count() -> None:
    arr = np.ma.masked_equal(np.array([[-9999.0, 2.0], [5.0, -9999.0]]), -9999.0)
    view = state_view(arr)
    assert view == {
        "__type__": "masked_array",
        "dtype": "float64",
        "shape": [2, 2],
        "min": 2.0,
        "max": 5.0,
        "masked": 2,
        "fill_value": -9999.0,
    }
    assert state_view(arr, full=True)["data"] == [[None, 2.0], [5.0, None]]


def test_frames_show_columns_dtypes_shape_and_index() -> None:
    df = pd.DataFrame({"tile": ["a", "b"], "v": [1.5, 2.5]}, index=pd.RangeIndex(2, name="row"))
    view = state_view({"df": df})["df"]
    assert view == {
        "__type__": "DataFrame",
        "shape": [2, 2],
        "columns": [{"name": "tile", "dtype": "str"}, {"name": "v", "dtype": "float64"}],
        "index": {"class": "RangeIndex", "names": ["row"], "dtype": "int64", "length": 2},
    }
    full = state_view(df, full=True)
    assert full["data"] == [["a", "b"], [1.5, 2.5]] and full["index"]["values"] == [0, 1]
    series = state_view(df["v"])
    assert series["__type__"] == "Series" and series["name"] == "v" and series["length"] == 2
    assert state_view(df.index)["__type__"] == "Index"
    json.dumps(full)


def test_xarray_values_show_dims_variables_and_ranges() -> None:
    ds = xr.Dataset(
        {"dem": (("y", "x"), np.array([[1, 9], [3, 4]], dtype="i2"), {"units": "m"})},
        coords={"y": [10.0, 20.0]},
        attrs={"crs": "EPSG:4326"},
    )
    view = state_view(ds)
    assert view["__type__"] == "Dataset" and view["dims"] == {"y": 2, "x": 2}
    assert view["data_vars"]["dem"] == {
        "dtype": "int16",
        "shape": [2, 2],
        "min": 1,
        "max": 9,
        "dims": ["y", "x"],
        "attrs": {"units": "m"},
    }
    assert view["coords"]["y"]["min"] == 10.0 and view["attrs"] == {"crs": "EPSG:4326"}
    da = state_view(ds["dem"])
    assert da["__type__"] == "DataArray" and da["name"] == "dem" and "y" in da["coords"]
    json.dumps(view)


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "no-such-config.toml"))


def test_cat_prints_a_saved_frame_and_masked_tile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    with ckptlite.open(store, durability="none") as mgr:
        tile = np.ma.masked_less(np.arange(100_000, dtype="f4"), 10.0)
        df = pd.DataFrame({"tile": [f"t{i}" for i in range(3)], "n": [1, 2, 3]})
        cp = mgr.save("geo", {"mask": tile, "table": df, "bands": {"B04", "B08"}})
    assert main(["--store", store, "cat", cp.id]) == 0
    out: Any = json.loads(capsys.readouterr().out)
    assert out["mask"]["__type__"] == "masked_array" and out["mask"]["masked"] == 10
    assert out["mask"]["min"] == 10.0 and out["mask"]["max"] == 99_999.0
    assert out["table"]["shape"] == [3, 2] and out["bands"]["items"] == ["B04", "B08"]
