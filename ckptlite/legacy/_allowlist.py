"""The legacy unpickler's allow-list: which globals a pickle may name, and what they resolve to.

A pair ``(module, qualified name)`` resolves only when listed here, through a listed
path, never walked from the pickle's own text; modules that run code stay refused even
if listed. :mod:`ckptlite.legacy.unpickler` applies it opcode by opcode.
"""

from __future__ import annotations

import _compat_pickle
import datetime
import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LegacyFormatError, UnsafePickleError

__all__ = [
    "ALLOWED_GLOBALS",
    "NEVER_MODULES",
    "PROJECT_MODULES",
    "canonical",
    "is_allowed",
    "is_project",
    "pickle_getattr",
    "resolve",
]

#: Top-level packages of the legacy project; classes under them become stubs.
PROJECT_MODULES = frozenset(
    {
        "src",
        "base",
        "checkpoints",
        "core",
        "database",
        "pipelines",
        "processors",
        "raster_data",
        "spatial_analysis",
    }
)

#: Packages that can run code, read or write files, or reach the interpreter: refused
#: whatever the allow-list says (checked on the name a pickle gives, on where it
#: resolves, and on the module of what it resolves to).
NEVER_MODULES = frozenset(
    {
        "_aix_support", "_ctypes", "_imp", "_interpreters", "_io", "_operator", "_osx_support",
        "_pickle", "_posixsubprocess", "_thread", "_xxsubinterpreters", "asyncio", "bdb",
        "cProfile", "code", "codeop", "ctypes", "distutils", "functools", "gc", "glob",
        "importlib", "inspect", "io", "marshal", "multiprocessing", "nt", "operator", "os",
        "pdb", "pickle", "pkgutil", "posix", "posixpath", "ntpath", "profile", "pty", "pydoc",
        "runpy", "setuptools", "shutil", "signal", "site", "socket", "subprocess", "sys",
        "sysconfig", "tempfile", "threading", "timeit", "types", "webbrowser", "zipimport",
    }
)  # fmt: skip

#: Builtins that evaluate, import, reach attributes or open files: refused even if listed.
_NEVER_BUILTINS = frozenset(
    {
        "__build_class__", "__import__", "breakpoint", "compile", "delattr", "eval", "exec",
        "exit", "getattr", "globals", "help", "input", "locals", "open", "quit", "setattr",
        "vars",
    }
)  # fmt: skip


def _same(module: str, names: str) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    return {(module, n): ((module, n),) for n in names.split()}


def _moved(module: str, names: str, to: str) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    # An older pandas' name: resolved where it is now (pandas 3), else where it was.
    return {(module, n): ((to, n), (module, n)) for n in names.split()}


def _numpy_core(module: str, names: str) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    # numpy 2 moved numpy.core to numpy._core (numpy.core warns); numpy 1.26 has both.
    new, old = f"numpy._core.{module}", f"numpy.core.{module}"
    out: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    for n in names.split():
        out[(new, n)] = ((new, n), (old, n))
        out[(old, n)] = ((new, n), (old, n))
    return out


_NUMPY_SCALARS = (
    "bool bool_ byte bytes_ cdouble clongdouble complex64 complex128 complex256 csingle "
    "datetime64 double float16 float32 float64 float128 half int8 int16 int32 int64 int_ intc "
    "intp long longdouble longlong object_ record short single str_ timedelta64 ubyte uint "
    "uint8 uint16 uint32 uint64 uintc uintp ulong ulonglong ushort void"
)

_PANDAS_TOP = (
    "ArrowDtype BooleanDtype Categorical CategoricalDtype CategoricalIndex DataFrame DateOffset "
    "DatetimeIndex DatetimeTZDtype Float32Dtype Float64Dtype Index Int8Dtype Int16Dtype "
    "Int32Dtype Int64Dtype Interval IntervalDtype IntervalIndex MultiIndex NA NaT Period "
    "PeriodDtype PeriodIndex RangeIndex Series SparseDtype StringDtype Timedelta "
    "TimedeltaIndex Timestamp UInt8Dtype UInt16Dtype UInt32Dtype UInt64Dtype"
)
_PANDAS_ARRAYS = (
    "BooleanArray DatetimeArray FloatingArray IntegerArray IntervalArray NumpyExtensionArray "
    "PeriodArray SparseArray StringArray TimedeltaArray"
)
_OFFSETS = (
    "BHalfYearBegin BHalfYearEnd BQuarterBegin BQuarterEnd BYearBegin BYearEnd BusinessDay "
    "BusinessHour BusinessMonthBegin BusinessMonthEnd CustomBusinessDay CustomBusinessHour "
    "CustomBusinessMonthBegin CustomBusinessMonthEnd DateOffset Day Easter FY5253 "
    "FY5253Quarter HalfYearBegin HalfYearEnd Hour LastWeekOfMonth Micro Milli Minute "
    "MonthBegin MonthEnd Nano QuarterBegin QuarterEnd Second SemiMonthBegin SemiMonthEnd Week "
    "WeekOfMonth YearBegin YearEnd"
)

# (module, name) as a pickle names it -> where to find it, first that exists wins.
# Harvested from the GLOBAL / STACK_GLOBAL opcodes of real pickles (pickletools) of
# frames with int, float, str, datetime, tz-aware, category, bool, nullable, interval,
# period, sparse and object columns, series, every index type, scalars and offsets,
# protocols 2-5, written by pandas 1.5.3, 2.0.3 (numpy 1.26), 2.3.3 and 3.1 (numpy 2).
_ALLOWED: Mapping[tuple[str, str], tuple[tuple[str, str], ...]] = types.MappingProxyType(
    {
        **_same(
            "builtins",
            "bool bytearray bytes complex dict float frozenset int list object range set "
            "slice str tuple",
        ),
        **_same("copyreg", "_reconstructor"),  # protocols 0-1; its class goes through here
        **_same("collections", "OrderedDict defaultdict deque Counter"),
        **_same("datetime", "date datetime time timedelta timezone"),
        **_same("decimal", "Decimal"),
        **_same("fractions", "Fraction"),
        **_same("uuid", "UUID SafeUUID"),
        **_same("pathlib", "Path PosixPath PurePath PurePosixPath PureWindowsPath WindowsPath"),
        **_same("zoneinfo", "ZoneInfo"),
        **_same("dateutil.relativedelta", "relativedelta"),  # a DateOffset's state
        **_same("numpy", "dtype ndarray recarray " + _NUMPY_SCALARS),
        **_numpy_core("multiarray", "_reconstruct scalar"),
        **_numpy_core("numeric", "_frombuffer"),
        **_same("numpy.ma", "MaskedArray"),
        **_same("numpy.ma.core", "MaskedArray _mareconstruct"),
        **_same("numpy.rec", "recarray"),
        # pandas 3 names its public classes by their public home
        **_same("pandas", _PANDAS_TOP),
        **_same("pandas.arrays", _PANDAS_ARRAYS),
        # pandas' rebuild helpers (all versions)
        **_same("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
        **_same("pandas._libs.internals", "_unpickle_block"),
        **_same("pandas._libs.interval", "Interval __pyx_unpickle_IntervalMixin"),
        **_same("pandas._libs.missing", "NA"),
        **_same("pandas._libs.sparse", "IntIndex BlockIndex"),
        **_same("pandas._libs.tslibs.nattype", "_nat_unpickle"),
        **_same("pandas._libs.tslibs.offsets", _OFFSETS),
        **_same("pandas._libs.tslibs.period", "Period"),
        **_same("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
        **_same("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
        **_same("pandas.core.indexes.base", "Index _new_Index"),
        **_same("pandas.core.indexes.datetimes", "DatetimeIndex _new_DatetimeIndex"),
        **_same("pandas.core.indexes.interval", "IntervalIndex _new_IntervalIndex"),
        **_same("pandas.core.indexes.timedeltas", "TimedeltaIndex _new_TimedeltaIndex"),
        **_same("pandas.core.internals.managers", "BlockManager SingleBlockManager"),
        # pandas 1.x and 2.x name classes by their defining module
        **_same("pandas.core.frame", "DataFrame"),
        **_same("pandas.core.series", "Series"),
        **_same("pandas.core.indexes.category", "CategoricalIndex"),
        **_same("pandas.core.indexes.multi", "MultiIndex"),
        **_same("pandas.core.indexes.period", "PeriodIndex"),
        **_same("pandas.core.indexes.range", "RangeIndex"),
        **_same("pandas.core.arrays.boolean", "BooleanArray BooleanDtype"),
        **_same("pandas.core.arrays.categorical", "Categorical"),
        **_same("pandas.core.arrays.datetimes", "DatetimeArray"),
        **_same("pandas.core.arrays.floating", "Float32Dtype Float64Dtype FloatingArray"),
        **_same(
            "pandas.core.arrays.integer",
            "Int8Dtype Int16Dtype Int32Dtype Int64Dtype UInt8Dtype UInt16Dtype UInt32Dtype "
            "UInt64Dtype IntegerArray",
        ),
        **_same("pandas.core.arrays.interval", "IntervalArray"),
        **_same("pandas.core.arrays.numpy_", "NumpyExtensionArray"),
        ("pandas.core.arrays.numpy_", "PandasArray"): (  # its name before pandas 2.1
            ("pandas.core.arrays.numpy_", "NumpyExtensionArray"),
            ("pandas.core.arrays.numpy_", "PandasArray"),
        ),
        **_same("pandas.core.arrays.period", "PeriodArray"),
        **_same("pandas.core.arrays.sparse.array", "SparseArray"),
        **_same("pandas.core.arrays.string_", "StringArray StringDtype"),
        **_same("pandas.core.arrays.timedeltas", "TimedeltaArray"),
        **_same(
            "pandas.core.dtypes.dtypes",
            "CategoricalDtype DatetimeTZDtype IntervalDtype PeriodDtype SparseDtype",
        ),
        # names pandas itself maps on load (pandas.compat.pickle_compat)
        **_moved("pandas.core.arrays.sparse.dtype", "SparseDtype", "pandas.core.dtypes.dtypes"),
        ("pandas._libs.tslibs.nattype", "__nat_unpickle"): (
            ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
            ("pandas._libs.tslibs.nattype", "__nat_unpickle"),
        ),
        ("pandas.core.internals.blocks", "new_block"): (
            ("pandas._libs.internals", "_unpickle_block"),
            ("pandas.core.internals.blocks", "new_block"),
        ),
        **{
            ("pandas.core.indexes.numeric", n): (
                ("pandas.core.indexes.base", "Index"),
                ("pandas.core.indexes.numeric", n),
            )
            for n in ("Int64Index", "UInt64Index", "Float64Index")
        },
    }
)


def pickle_getattr(*args: Any) -> Any:
    """Stand in for ``builtins.getattr``: only the attribute pickles of a ZoneInfo ask for.

    copyreg pickles the classmethod ``ZoneInfo._unpickle`` (every ZoneInfo, so every
    tz-aware pandas 3 object) as ``getattr(ZoneInfo, "_unpickle")``.
    """
    import zoneinfo

    if len(args) == 2 and args[0] is zoneinfo.ZoneInfo and args[1] == "_unpickle":
        return zoneinfo.ZoneInfo._unpickle  # type: ignore[attr-defined]
    what = ", ".join(getattr(a, "__qualname__", None) or repr(a)[:40] for a in args)
    raise UnsafePickleError(
        f"refused to unpickle builtins.getattr({what}): not on the allow-list",
        class_name="builtins.getattr",
    )


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand in for ``_codecs.encode``: protocols 0-2 store bytes as encode(str, "latin1")."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(
            f"refused to unpickle _codecs.encode(..., {encoding!r})", class_name="_codecs.encode"
        )
    return text.encode("latin1")


def _pytz_zone(zone: str, *_offsets: Any) -> Any:
    """Stand in for ``pytz._p`` (pandas 2 timezones): the same zone as a ZoneInfo."""
    import zoneinfo

    if not isinstance(zone, str):
        raise LegacyFormatError(f"not a timezone name: {zone!r}")
    try:
        return zoneinfo.ZoneInfo(zone)  # it refuses keys that are paths
    except (ValueError, zoneinfo.ZoneInfoNotFoundError) as e:
        raise LegacyFormatError(f"unknown timezone {zone!r} in the pickle") from e


def _pytz_utc() -> datetime.tzinfo:
    """Stand in for ``pytz._UTC``."""
    return datetime.UTC


#: Pairs that resolve to a checked stand-in rather than to what they name.
_STAND_INS: Mapping[tuple[str, str], Callable[..., Any]] = types.MappingProxyType(
    {
        ("builtins", "getattr"): pickle_getattr,
        ("_codecs", "encode"): _latin1_encode,
        ("pytz", "_p"): _pytz_zone,
        ("pytz", "_UTC"): _pytz_utc,
    }
)

#: Every (module, qualified name) a pickle may name (project classes aside).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_ALLOWED) | frozenset(_STAND_INS)


def _denied(module: str, name: str) -> bool:
    top = module.split(".", 1)[0]
    return top in NEVER_MODULES or (top == "builtins" and name in _NEVER_BUILTINS)


def canonical(module: str, name: str) -> tuple[str, str]:
    # Protocols 0-2 name builtins the Python 2 way (__builtin__.set): check the real name.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def is_project(module: str) -> bool:
    """Tell whether ``module`` belongs to the legacy project (its classes become stubs)."""
    return module.split(".", 1)[0] in PROJECT_MODULES


def is_allowed(module: str, name: str) -> bool:
    """Tell whether ``module.name`` is on the allow-list (project classes excluded)."""
    module, name = canonical(module, name)
    # builtins.getattr is denied: a pickle naming it gets a stand-in with one use.
    return (module, name) in ALLOWED_GLOBALS and not _denied(module, name)


def resolve(module: str, name: str) -> Any:
    """Return what the listed pair ``module.name`` is, importing only listed modules.

    Raises:
        UnsafePickleError: the pair is not listed, is denied, or resolves to something denied.
        ModuleNotFoundError, AttributeError: listed, but not in the installed versions.
    """
    full = f"{module}.{name}"
    stand_in = _STAND_INS.get((module, name))
    if stand_in is not None:
        return stand_in
    places = _ALLOWED.get((module, name))
    if places is None or _denied(module, name):
        raise UnsafePickleError(
            f"refused to unpickle {full}: not on the allow-list", class_name=full
        )
    error: Exception | None = None
    for where, attr in places:
        if _denied(where, attr):
            break
        try:
            obj: Any = importlib.import_module(where)
            for part in attr.split("."):  # a listed path only, never the pickle's own
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            error = error or e
            continue
        owner = getattr(obj, "__module__", None) or ""
        if isinstance(obj, types.ModuleType) or _denied(owner, getattr(obj, "__name__", "")):
            break
        return obj
    else:
        assert error is not None
        raise error
    raise UnsafePickleError(
        f"refused to unpickle {full}: it resolves to {where}.{attr}", class_name=full
    )
