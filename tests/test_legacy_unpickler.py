"""The restricted unpickler: allow-list, project classes as dicts, everything else refused."""

from __future__ import annotations

import collections
import decimal
import keyword
import pickle
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy_builders import Evil, fake_module, pickle_project_object, project_class, same

from ckptlite.errors import LegacyFormatError, UnsafePickleError
from ckptlite.legacy.unpickler import is_allowed, load_pickle

ALLOWED_VALUES: list[Any] = [
    {"a": [1, 2.5, "x", b"y", None, True]},
    (1, (2, 3)),
    {1, 2},
    frozenset({"a"}),
    1 + 2j,
    bytearray(b"ab"),
    collections.OrderedDict(a=1),
    collections.defaultdict(list, {"k": [1]}),
    collections.deque([1, 2]),
    collections.Counter("aab"),
    datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    date(2024, 1, 2),
    timedelta(seconds=5),
    decimal.Decimal("1.25"),
    uuid.UUID(int=5),
    PurePosixPath("/data/x.tif"),
    range(3),
    slice(1, 5),
]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("value", ALLOWED_VALUES, ids=lambda v: type(v).__name__)
def test_builtin_values_load(value: Any, protocol: int) -> None:
    assert load_pickle(pickle.dumps(value, protocol=protocol)).value == value


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_values_load(protocol: int) -> None:
    values = {
        "arr": np.arange(12, dtype="<f4").reshape(3, 4),
        "fortran": np.asfortranarray(np.ones((2, 3), "i2")),
        "scalar": np.float64(2.5),
        "int": np.int32(7),
        "dtype": np.dtype("u1"),
        "types": [np.float32, np.int16, np.bool_],
        "masked": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
    }
    got = load_pickle(pickle.dumps(values, protocol=protocol)).value
    for k in ("arr", "fortran", "scalar", "int"):
        assert same(got[k], values[k]), k
    assert got["dtype"] == values["dtype"]
    assert got["types"] == values["types"]
    assert np.ma.allequal(got["masked"], values["masked"])


def test_numpy1_names_load_without_warnings() -> None:
    # Pickles written under numpy 1.x name numpy.core.multiarray; numpy 2 warns on that
    # module, and warnings are errors here.
    data = pickle.dumps(np.arange(4, dtype="i8"), protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in data
    old = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert same(load_pickle(old).value, np.arange(4, dtype="i8"))


@pytest.mark.parametrize(
    "module", ["src.base.tile_processor", "base.tile_processor", "src.processors.merge"]
)
def test_project_classes_become_plain_dicts(module: str) -> None:
    data = pickle_project_object(
        module,
        "ProcessingCheckpoint",
        {"timestamp": 1.5, "completed_tiles": ["tile_0_0"]},
        protocol=4,
    )
    loaded = load_pickle(data)
    assert loaded.value == {"timestamp": 1.5, "completed_tiles": ["tile_0_0"]}
    assert type(loaded.value) is dict
    assert loaded.project_classes == (f"{module}.ProcessingCheckpoint",)


def test_nested_and_shared_project_objects() -> None:
    inner_cls = project_class("src.core.types", "Bounds", w=0, e=0)
    outer_cls = project_class("src.core.types", "Tile", bounds=None, neighbours=None)
    shared = inner_cls(w=1, e=2)
    obj = [outer_cls(bounds=shared, neighbours=[shared]), (shared,)]
    with fake_module("src.core.types", Bounds=inner_cls, Tile=outer_cls):
        data = pickle.dumps(obj, protocol=5)
    value = load_pickle(data).value
    assert value == [
        {"bounds": {"w": 1, "e": 2}, "neighbours": [{"w": 1, "e": 2}]},
        ({"w": 1, "e": 2},),
    ]
    assert value[0]["bounds"] is value[0]["neighbours"][0] is value[1][0]


def test_project_enum_keeps_its_value() -> None:
    import enum

    level = enum.Enum("CheckpointLevel", {"STEP": "step"})
    level.__module__ = "src.base.checkpoint_types"
    with fake_module("src.base.checkpoint_types", CheckpointLevel=level):
        data = pickle.dumps({"level": level.STEP}, protocol=4)
    assert load_pickle(data).value == {"level": {"__args__": ["step"]}}


def test_refuses_code_execution_by_name(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError) as exc:
        load_pickle(pickle.dumps({"x": Evil(marker)}))
    assert exc.value.class_name == "posix.system"
    assert "posix.system" in str(exc.value) and exc.value.hint
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("pandas.io.pickle", "read_pickle"),
        ("pandas.core.computation.eval", "eval"),
        ("numpy", "load"),
        ("numpy", "ndarray.tofile"),
        ("numpy", "_NoValue"),
        ("numpy.random", "default_rng"),
        ("collections", "namedtuple"),
        ("thirdparty.models", "Model"),
    ],
)
def test_not_on_the_allow_list(module: str, name: str) -> None:
    assert not is_allowed(module, name)
    data = f"c{module}\n{name}\n)R.".encode()  # protocol 0: GLOBAL, EMPTY_TUPLE, REDUCE
    with pytest.raises(UnsafePickleError) as exc:
        load_pickle(data)
    assert exc.value.class_name == f"{module}.{name}"


def test_pandas_structures_are_allowed_by_module() -> None:
    assert is_allowed("pandas.core.frame", "DataFrame")
    assert is_allowed("pandas._libs.internals", "_unpickle_block")
    assert is_allowed("pandas.core.indexes.base", "_new_Index")
    assert not is_allowed("pandas.core.frame", "__builtins__")


def test_a_foreign_class_in_a_container_is_refused() -> None:
    cls = project_class("thirdparty.models", "Model", x=1)
    with fake_module("thirdparty.models", Model=cls):
        data = pickle.dumps({"ok": [1], "bad": cls()}, protocol=5)
    with pytest.raises(UnsafePickleError, match=r"thirdparty\.models\.Model"):
        load_pickle(data)


def test_persistent_ids_and_garbage_are_refused() -> None:
    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "ext" if obj == "x" else None

    import io

    buf = io.BytesIO()
    P(buf, protocol=4).dump(["x"])
    with pytest.raises(UnsafePickleError, match="persistent"):
        load_pickle(buf.getvalue())
    with pytest.raises(LegacyFormatError, match="not a readable pickle"):
        load_pickle(b"\x80\x05garbage")
    with pytest.raises(LegacyFormatError):
        load_pickle(b"")


_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.datetimes()
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
        | st.frozensets(st.integers(), max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(value=_values, protocol=st.integers(min_value=0, max_value=5))
def test_round_trip_of_allowed_values(value: Any, protocol: int) -> None:
    assert load_pickle(pickle.dumps(value, protocol=protocol)).value == value


_field_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n)
)


@settings(max_examples=100, deadline=None)
@given(fields=st.dictionaries(_field_names, _values, max_size=5))
def test_project_objects_round_trip_as_their_fields(fields: dict[str, Any]) -> None:
    data = pickle_project_object("src.base.tile_processor", "ProcessingCheckpoint", fields, 4)
    assert load_pickle(data).value == fields
