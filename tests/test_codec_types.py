"""The codec's extension types: round trips (Hypothesis) keep type and value; bad ones refuse."""

from __future__ import annotations

import math
import pathlib
import sys
import traceback
from datetime import timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckptlite.codec import decode, encode
from ckptlite.errors import CorruptCheckpointError, UnsupportedTypeError


def round_trip(state: Any) -> Any:
    enc = encode(state)
    return decode(enc.skeleton, [bytearray(b) for b in enc.buffers])


class Foo:
    pass


def test_unsupported_error_names_where_the_value_sits() -> None:
    state = {"tiles": [{"mask": None}, {"mask": 1}, {"mask": 2}, {"mask": Foo()}]}
    with pytest.raises(UnsupportedTypeError) as e:
        encode(state)
    assert 'state["tiles"][3]["mask"]: Foo' in str(e.value)
    assert e.value.context["path"] == 'state["tiles"][3]["mask"]'
    # The hint is said once: not in str() (the CLI prints message, then hint), and
    # once in a traceback (a note; no chained copy of the error repeats it).
    assert "hint:" not in str(e.value)
    shown = "".join(traceback.format_exception(e.value))
    assert shown.count(e.value.hint) == 1
    with pytest.raises(UnsupportedTypeError, match=r"state\[1\]\[0\]\[2\]: int"):
        encode([0, ((1, 2, 2**70),)])
    with pytest.raises(UnsupportedTypeError, match=r'state\["k"\] key Foo\(\)|key <'):
        encode({"k": {_Key(): 1}})


class _Key:
    def __repr__(self) -> str:
        return "Foo()"

    def __hash__(self) -> int:
        return 1


def test_a_str_that_is_not_utf8_is_located() -> None:
    with pytest.raises(UnsupportedTypeError, match=r'state\["names"\]\[1\]: str: a str that'):
        encode({"names": ["ok", "bad\udcff"]})


def test_unsupported_values_inside_sets_and_tuples_are_located() -> None:
    with pytest.raises(UnsupportedTypeError, match=r'state\["s"\]\[0\]\{\(1, <.*\}\[1\]: Foo'):
        encode({"s": [frozenset({(1, Foo())})]})


def canon(x: Any) -> Any:
    """Return ``x`` as nested (type, value) pairs: equal only if types are equal throughout."""
    if isinstance(x, set | frozenset):
        return type(x).__name__, sorted(repr(canon(v)) for v in x)
    if isinstance(x, list | tuple):
        return type(x).__name__, [canon(v) for v in x]
    return type(x).__name__, x


def _bits(x: float) -> str:
    return x.hex() if not math.isnan(x) else "nan"


@given(st.timedeltas())
def test_timedeltas_round_trip(value: timedelta) -> None:
    back = round_trip({"dt": value})["dt"]
    assert type(back) is timedelta and back == value


hashables = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.frozensets(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple),
    max_leaves=10,
)


@given(st.sets(hashables, max_size=8), st.frozensets(hashables, max_size=8))
def test_sets_and_frozensets_round_trip(s: set[Any], f: frozenset[Any]) -> None:
    back = round_trip([s, f, set(), frozenset()])
    assert [type(x) for x in back] == [set, frozenset, set, frozenset]
    # Their members keep their types too (True == 1 == 1.0 would hide a lossy codec).
    assert canon(back) == canon([s, f, set(), frozenset()])


def test_equal_sets_encode_to_the_same_bytes() -> None:
    a = {f"tile-{i}" for i in range(100)}
    b = set(sorted(a, reverse=True))
    assert encode(a).skeleton == encode(b).skeleton


@given(st.complex_numbers(allow_nan=True, allow_infinity=True))
def test_complex_round_trips_bit_exactly(value: complex) -> None:
    back = round_trip(value)
    assert type(back) is complex
    assert (_bits(back.real), _bits(back.imag)) == (_bits(value.real), _bits(value.imag))


@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_decimals_round_trip_exactly(value: Decimal) -> None:
    back = round_trip(value)
    assert type(back) is Decimal and back.as_tuple() == value.as_tuple()


@pytest.mark.parametrize(
    "text", ["-0", "1E+2", "1.500", "-0E-7", "NaN", "-NaN123", "sNaN", "-Infinity", "1e-999999"]
)
def test_decimal_sign_exponent_and_nan_kinds_are_kept(text: str) -> None:
    value = Decimal(text)
    back = round_trip(value)
    assert back.as_tuple() == value.as_tuple() and str(back) == str(value)
    assert back.is_snan() == value.is_snan()


path_parts = st.lists(st.text(min_size=1, max_size=6).filter(lambda s: "\x00" not in s), max_size=4)


@given(
    st.sampled_from([pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.Path]),
    path_parts,
    st.booleans(),
)
def test_paths_keep_their_class(
    cls: type[pathlib.PurePath], parts: list[str], absolute: bool
) -> None:
    root = "C:\\" if cls is pathlib.PureWindowsPath else "/"
    value = cls(root if absolute else "", *parts)
    back = round_trip({"p": value})["p"]
    assert type(back) is type(value) and back == value and str(back) == str(value)


def test_a_path_that_is_not_utf8_round_trips() -> None:
    value = pathlib.Path(b"/data/tile-\xff.tif".decode("utf-8", "surrogateescape"))
    back = round_trip(value)
    assert back == value and bytes(back) == b"/data/tile-\xff.tif"


masked_dtypes = hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes()


@st.composite
def masked_arrays(draw: st.DrawFn) -> np.ma.MaskedArray[Any, Any]:
    dtype = draw(masked_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
    data = draw(hnp.arrays(dtype, shape))
    kind = draw(st.sampled_from(["nomask", "full", "all-false"]))
    if kind == "nomask":
        arr = np.ma.MaskedArray(data, mask=np.ma.nomask)
    else:
        mask = draw(hnp.arrays(np.bool_, shape)) if kind == "full" else np.zeros(shape, bool)
        arr = np.ma.MaskedArray(data, mask=mask)
    if draw(st.booleans()):
        arr.fill_value = draw(hnp.from_dtype(dtype))
    if draw(st.booleans()):
        arr.harden_mask()
    return arr


def assert_same_masked(back: Any, arr: Any) -> None:
    assert type(back) is np.ma.MaskedArray
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.ma.getdata(back).tobytes() == np.ma.getdata(arr).tobytes()
    assert (np.ma.getmask(back) is np.ma.nomask) == (np.ma.getmask(arr) is np.ma.nomask)
    assert np.ma.getmaskarray(back).tobytes() == np.ma.getmaskarray(arr).tobytes()
    fill, expected = np.asarray(back.fill_value), np.asarray(arr.fill_value)
    assert fill.dtype == expected.dtype and fill.tobytes() == expected.tobytes()
    assert back.hardmask == arr.hardmask


@given(masked_arrays())
@settings(max_examples=200)
def test_masked_arrays_round_trip(arr: np.ma.MaskedArray[Any, Any]) -> None:
    assert_same_masked(round_trip({"tile": arr})["tile"], arr)


def test_masked_structured_and_constant() -> None:
    rec = np.ma.MaskedArray(
        np.zeros(3, dtype=[("x", "<i4"), ("y", ">f8")]), mask=[(0, 1), (1, 0), (0, 0)]
    )
    rec.fill_value = (7, 2.5)
    assert_same_masked(round_trip(rec), rec)
    assert round_trip([np.ma.masked])[0] is np.ma.masked


def test_masked_data_and_mask_become_buffers_when_big() -> None:
    data = np.arange(200_000, dtype="f4").reshape(400, 500)
    arr = np.ma.masked_less(data, 1000.0)
    arr.fill_value = -9999.0
    enc = encode({"dem": arr})
    assert len(enc.skeleton) < 500  # neither array is inlined
    assert sorted(b.nbytes for b in enc.buffers) == [200_000, 800_000]
    assert sorted(enc.itemsizes) == [1, 4]  # the data shuffles as float32 numbers
    assert_same_masked(decode(enc.skeleton, enc.buffers)["dem"], arr)


def test_masked_object_arrays_refuse() -> None:
    arr = np.ma.MaskedArray(np.array([Foo()], dtype=object))
    with pytest.raises(UnsupportedTypeError, match=r'state\["m"\]: MaskedArray'):
        encode({"m": arr})


@given(hnp.scalar_dtypes() | hnp.nested_dtypes())
def test_numpy_dtypes_round_trip(dtype: np.dtype[Any]) -> None:
    back = round_trip({"dtype": dtype})["dtype"]
    assert isinstance(back, np.dtype) and back == dtype and back.descr == dtype.descr


@pytest.mark.parametrize(
    "payload",
    [
        [9, [1, 2]],  # a timedelta of two numbers
        [12, ["x", 1.0]],  # a complex with a str part
        [14, ["NoSuchPath", b"/x"]],
        [15, [1, None, "not an array", False]],
        [13, b"not a decimal"],
    ],
)
def test_hostile_extension_payloads_raise_corrupt(payload: list[Any]) -> None:
    import msgpack

    code, parts = payload
    data = parts if isinstance(parts, bytes) else msgpack.packb(parts)
    with pytest.raises(CorruptCheckpointError):
        decode(msgpack.packb(msgpack.ExtType(code, data)), [])


pd = pytest.importorskip("pandas")
from hypothesis.extra import pandas as hpd  # noqa: E402


def assert_same_frame(back: Any, df: Any) -> None:
    assert type(back) is type(df)
    pd.testing.assert_frame_equal(
        back, df, check_exact=True, check_index_type=True, check_column_type=True, check_freq=True
    )
    assert list(back.dtypes) == list(df.dtypes) and back.attrs == df.attrs
    assert back.flags.allows_duplicate_labels == df.flags.allows_duplicate_labels
    assert list(back.columns) == list(df.columns)


def assert_same_index(back: Any, idx: Any) -> None:
    assert type(back) is type(idx)
    pd.testing.assert_index_equal(back, idx, exact=True, check_exact=True)
    assert back.names == idx.names and back.dtype == idx.dtype
    assert getattr(back, "freq", None) == getattr(idx, "freq", None)


@st.composite
def numeric_frames(draw: st.DrawFn) -> Any:
    names = draw(st.lists(st.text(max_size=5), max_size=4, unique=True))
    dtypes = ["int64", "float32", "float64", "bool", "uint8", "complex128", "M8[ns]", "m8[s]"]
    cols = [hpd.column(name, dtype=np.dtype(draw(st.sampled_from(dtypes)))) for name in names]
    index = hpd.range_indexes(max_size=8) | hpd.indexes(dtype=np.dtype("int64"), max_size=8)
    return draw(hpd.data_frames(columns=cols, index=index))


@given(numeric_frames())
@settings(max_examples=100)
def test_numeric_frames_round_trip(df: Any) -> None:
    assert_same_frame(round_trip({"df": df})["df"], df)


text = st.text(max_size=6)
maybe_text = st.none() | text


@given(
    st.lists(st.tuples(text, maybe_text, st.integers(-5, 5), st.floats()), max_size=8), st.data()
)
@settings(max_examples=100)
def test_frames_with_strings_categories_and_nullable_columns(rows: list[Any], data: Any) -> None:
    n = len(rows)
    df = pd.DataFrame(
        {
            "name": pd.Series([r[0] for r in rows], dtype="str"),
            "opt": pd.Series([r[1] for r in rows], dtype=object),
            "label": pd.Series([r[1] for r in rows], dtype="string"),
            "cls": pd.Categorical([r[0][:1] for r in rows], ordered=data.draw(st.booleans())),
            "count": pd.array([None if r[2] == 0 else r[2] for r in rows], dtype="Int64"),
            "flag": pd.array([None if r[2] == 1 else r[2] > 0 for r in rows], dtype="boolean"),
            "x": [r[3] for r in rows],
            "when": pd.date_range("2026-01-01", periods=n, freq="h", tz="Europe/Berlin"),
            "utc": pd.date_range("2026-01-01", periods=n, freq="D", tz="UTC", unit="s"),
        },
        index=pd.Index([f"t{i}" for i in range(n)], name="tile"),
    )
    df.attrs["crs"] = "EPSG:4326"
    assert_same_frame(round_trip(df), df)


index_dtypes = st.sampled_from(["int64", "float64", "uint16", "M8[ns]", "m8[ms]", "bool", "object"])


@given(
    index_dtypes.flatmap(
        lambda d: hpd.indexes(
            elements=st.text(max_size=4) if d == "object" else None,
            dtype=None if d == "object" else np.dtype(d),
            max_size=6,
            unique=d != "bool",
        )
    ),
    st.none() | st.text(max_size=4) | st.integers(0, 9),
    st.sampled_from(["float32", "int8", "complex64", "M8[s]"]),
)
@settings(max_examples=100)
def test_series_and_indexes_round_trip(index: Any, name: Any, dtype: str) -> None:
    index = index.rename(name)
    assert_same_index(round_trip(index), index)
    s = pd.Series(np.zeros(len(index), dtype=dtype), index=index, name=name)
    back = round_trip({"s": s})["s"]
    pd.testing.assert_series_equal(back, s, check_exact=True, check_index_type=True)
    assert back.dtype == s.dtype and back.index.dtype == s.index.dtype


def test_series_and_indexes_keep_names_types_and_freq() -> None:
    idx = [
        pd.RangeIndex(2, 20, 3, name="row"),
        pd.date_range("2026-01-01", periods=5, freq="D", name="day"),
        pd.date_range("2026-01-01", periods=3, freq="15min", tz="UTC"),
        pd.timedelta_range("1h", periods=4, freq="30min"),
        pd.Index(["a", "b", None], dtype=object, name=("multi", "part", "name")),
        pd.Index(["a", "b"]),
        pd.Index([1.5, float("nan")], name=3),
        pd.CategoricalIndex(["x", "y", "x"], categories=["y", "x"], ordered=True),
        pd.MultiIndex.from_product([["n", "s"], [1, 2, 3]], names=["hemi", "band"]),
        pd.DatetimeIndex(["2026-01-01", "2026-03-01"]),  # no freq
    ]
    for i in idx:
        assert_same_index(round_trip({"i": i})["i"], i)
    s = pd.Series(np.arange(6.0), index=idx[-2], name="reflectance")
    s.attrs["units"] = "1"
    back = round_trip(s)
    pd.testing.assert_series_equal(back, s, check_exact=True, check_index_type=True)
    assert back.attrs == s.attrs and back.name == s.name
    strict = s.set_flags(allows_duplicate_labels=False)
    assert not round_trip(strict).flags.allows_duplicate_labels


def test_frames_with_duplicate_columns_multiindex_columns_and_no_columns() -> None:
    dup = pd.DataFrame([[1, 2.0, "a"]], columns=["v", "v", "w"])
    wide = pd.DataFrame(
        np.arange(12).reshape(2, 6),
        columns=pd.MultiIndex.from_product([["a", "b"], ["x", "y", "z"]], names=["g", "c"]),
    )
    empty = pd.DataFrame(index=pd.RangeIndex(3, name="i"))
    strict = pd.DataFrame({"a": [1]}).set_flags(allows_duplicate_labels=False)
    for df in (dup, wide, empty, pd.DataFrame(), strict):
        assert_same_frame(round_trip(df), df)


def test_big_columns_become_buffers_and_big_string_columns_too() -> None:
    n = 50_000
    df = pd.DataFrame(
        {"v": np.arange(n, dtype="f8"), "name": [f"tile-{i}" for i in range(n)]},
        index=pd.RangeIndex(n),
    )
    enc = encode({"df": df})
    assert len(enc.skeleton) < 1000
    assert len(enc.buffers) == 2 and 8 * n in [b.nbytes for b in enc.buffers]
    assert_same_frame(decode(enc.skeleton, enc.buffers)["df"], df)


@pytest.mark.parametrize(
    "value",
    [
        pd.period_range("2026-01", periods=3, freq="M"),
        pd.Series(pd.arrays.IntervalArray.from_breaks([0, 1, 2])),
        pd.Series(pd.arrays.SparseArray([0, 0, 1])),
        pd.DataFrame({"o": [Foo()]}),
    ],
)
def test_pandas_values_that_cannot_round_trip_refuse(value: Any) -> None:
    with pytest.raises(UnsupportedTypeError, match=r'state\["v"\]: '):
        encode({"v": value})


@pytest.mark.parametrize(
    "parts",
    [
        ["frame", ["range", 0, 1, 1, None], ["range", 0, 2, 1, None], [["np", 5]], {}, True],
        ["series", None, ["range", 0, 2, 1, None], ["obj", [3], 99], {}, True],
        ["index", ["index", None, ["masked", "Sparse", [], []], None]],
        ["index", ["nope"]],
        [
            "series",
            None,
            ["range", 0, 0, 1, None],
            ["dttz", ["zone", "../../etc/passwd"], np.zeros(0, "M8[ns]")],
            {},
            True,
        ],
    ],
)
def test_hostile_pandas_payloads_raise_corrupt(parts: list[Any]) -> None:
    import msgpack

    from ckptlite import _codec_ext

    data = msgpack.packb(msgpack.ExtType(_codec_ext._PANDAS, encode(parts).skeleton))
    with pytest.raises(CorruptCheckpointError):
        decode(data, [])


def test_an_unsupported_column_is_named() -> None:
    df = pd.DataFrame({"ok": [1], "bad": pd.Series(pd.arrays.SparseArray([0]))})
    with pytest.raises(UnsupportedTypeError, match=r"column 'bad': pandas dtype Sparse"):
        encode(df)


xr = pytest.importorskip("xarray")


def _dataset(n: int = 4) -> Any:
    lat = np.linspace(50.0, 49.0, n)
    ds = xr.Dataset(
        {
            "dem": (("y", "x"), np.arange(n * n, dtype="i2").reshape(n, n), {"units": "m"}),
            "ndvi": (("time", "y", "x"), np.random.default_rng(0).random((2, n, n), dtype="f4")),
            "name": ((), "scene-1"),
        },
        coords={
            "y": ("y", lat, {"axis": "Y"}),
            "x": np.arange(n) * 10.0,
            "time": pd.date_range("2026-01-01", periods=2, freq="D"),
            "band": ("time", np.array(["B04", "B08"], dtype=object)),
            "crs": ((), 4326),
        },
        attrs={"title": "tile", "created": timedelta(hours=1), "bbox": (1.0, 2.0, 3.0, 4.0)},
    )
    ds["dem"].encoding = {"dtype": np.dtype("int16"), "zlib": True}
    return ds


def test_datasets_round_trip_identically() -> None:
    ds = _dataset()
    back = round_trip({"ds": ds})["ds"]
    assert type(back) is xr.Dataset
    xr.testing.assert_identical(back, ds)
    assert list(back.data_vars) == list(ds.data_vars) and list(back.coords) == list(ds.coords)
    assert back["dem"].encoding == ds["dem"].encoding
    assert back["band"].dtype == object and list(back["band"].values) == ["B04", "B08"]


@given(st.data())
@settings(max_examples=50)
def test_data_arrays_round_trip_identically(data: Any) -> None:
    from xarray.testing import strategies as xrst

    var = data.draw(xrst.variables(attrs=xrst.simple_attrs))
    name = data.draw(st.none() | st.text(max_size=5))
    da = xr.DataArray(var, name=name)
    back = round_trip([da])[0]
    assert type(back) is xr.DataArray
    xr.testing.assert_identical(back, da)


@given(st.data())
@settings(max_examples=50)
def test_datasets_round_trip_identically_hypothesis(data: Any) -> None:
    from xarray.testing import strategies as xrst

    sizes = data.draw(xrst.dimension_sizes(min_dims=1, max_dims=3, max_side=3))
    variables = {
        f"v{i}": data.draw(xrst.variables(dims=st.just(sizes), attrs=xrst.simple_attrs))
        for i in range(data.draw(st.integers(0, 3)))
    }
    first = next(iter(sizes))
    ds = xr.Dataset(variables, coords={first: np.arange(sizes[first]) * 0.5})
    ds.attrs = data.draw(xrst.simple_attrs)
    back = round_trip({"ds": ds})["ds"]
    xr.testing.assert_identical(back, ds)
    assert list(back.data_vars) == list(ds.data_vars)


def test_a_data_array_keeps_its_coordinates_and_name() -> None:
    da = _dataset()["ndvi"]
    back = round_trip(da)
    xr.testing.assert_identical(back, da)
    assert back.name == "ndvi" and set(back.coords) == set(da.coords)


def test_big_variables_become_buffers_and_dedup_by_content() -> None:
    ds = _dataset(200)
    enc = encode({"a": ds, "b": ds["ndvi"]})
    assert len(enc.skeleton) < 10_000  # the 1-d coordinates are small: inline
    sizes = sorted(b.nbytes for b in enc.buffers)
    assert sizes == [80_000, 320_000, 320_000]  # dem, and ndvi once per value
    xr.testing.assert_identical(decode(enc.skeleton, enc.buffers)["a"], ds)


def test_an_unsupported_attribute_is_located() -> None:
    ds = _dataset()
    ds.attrs["handler"] = Foo()
    with pytest.raises(UnsupportedTypeError, match=r'state\["tiles"\]\[0\]: Dataset: .*Foo'):
        encode({"tiles": [ds]})


def _raster_state() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    dem = np.ma.masked_equal(rng.integers(0, 50, (300, 300)).astype("i2"), 0)
    dem.fill_value = -32768
    df = pd.DataFrame(
        {
            "tile": [f"t{i:04d}" for i in range(20_000)],
            "ndvi": rng.random(20_000),
            "cls": pd.Categorical(rng.choice(["water", "forest", "urban"], 20_000)),
        },
        index=pd.date_range("2026-01-01", periods=20_000, freq="min", name="t"),
    )
    return {"dem": dem, "empty": np.ma.MaskedArray(np.arange(3.0)), "table": df}


def test_manager_round_trip_on_every_backend(any_mgr: Any) -> None:
    state = _raster_state()
    cp = any_mgr.save("geo", state)
    back = any_mgr.load(cp.id)
    assert_same_masked(back["dem"], state["dem"])
    assert_same_masked(back["empty"], state["empty"])
    assert_same_frame(back["table"], state["table"])
    assert any_mgr.verify().ok


def test_saving_the_same_big_frame_and_dataset_again_stores_little(any_mgr: Any) -> None:
    state = {"table": _raster_state()["table"], "ds": _dataset(300)}
    any_mgr.save("geo", state)
    first = any_mgr.stats()["stored_bytes"]
    assert first > 500_000  # the columns and variables are in it
    # Equal values, new objects: rebuilt, not the same Python objects.
    again = {"table": state["table"].copy(deep=True), "ds": state["ds"].copy(deep=True)}
    cp = any_mgr.save("geo", again)
    grown = any_mgr.stats()["stored_bytes"] - first
    assert grown < first // 20, (grown, first)
    xr.testing.assert_identical(any_mgr.load(cp.id)["ds"], state["ds"])


def test_xarray_indexes_that_would_not_come_back_refuse() -> None:
    stacked = _dataset().stack(cell=("y", "x"))  # a PandasMultiIndex
    unindexed = _dataset().drop_indexes("x")
    for ds in (stacked, unindexed):
        with pytest.raises(UnsupportedTypeError, match="index"):
            encode(ds)


def test_xarray_extension_arrays_refuse_rather_than_come_back_numpy() -> None:
    ds = xr.Dataset.from_dataframe(pd.DataFrame({"c": pd.Categorical(["a", "b"])}))
    assert ds["c"].dtype == "category"
    with pytest.raises(UnsupportedTypeError, match=r"variable 'c' holds a category"):
        encode(ds)


def test_dtype_metadata_is_dropped_when_empty_and_refused_when_not() -> None:
    empty = np.dtype("<M8[ns]", metadata={})
    arr = np.zeros(3, dtype=empty)
    back = round_trip(arr)  # an unpickled datetime64 dtype carries {}: nothing to lose
    assert back.dtype == arr.dtype and back.dtype.metadata is None
    assert round_trip(empty) == empty
    rec = np.zeros(2, dtype=[("t", empty), ("v", "<f4")])
    assert round_trip(rec).tobytes() == rec.tobytes()
    for value in (
        np.zeros(2, dtype=np.dtype("<f4", metadata={"units": "m"})),
        np.dtype([("v", np.dtype("<f4", metadata={"units": "m"}))]),
    ):
        with pytest.raises(UnsupportedTypeError, match="metadata"):
            encode({"v": value})


def test_loading_without_pandas_is_a_config_error_not_corruption(
    mgr: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptlite import Status
    from ckptlite.errors import ConfigError

    cp = mgr.save("geo", {"table": pd.DataFrame({"a": [1]})})
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    with pytest.raises(ConfigError, match="not installed"):
        mgr.load(cp.id)
    assert mgr.get(cp.id).status is Status.VALID
    monkeypatch.undo()
    assert mgr.load(cp.id)["table"]["a"].tolist() == [1]
