"""A restricted unpickler for legacy payloads: exact allow-list, never arbitrary code.

Pickles name the callables that rebuild them; an ordinary ``pickle.load`` imports
and calls whatever is named. This unpickler resolves only exact ``(module,
qualified name)`` pairs listed in :data:`ALLOWED_GLOBALS`, built from the globals
that real pickles name (pandas 1.5, 2.x and 3.x; numpy 1.x and 2.x):

- builtin value types (containers, numbers, dates, paths, UUIDs, decimals);
- numpy arrays, dtypes and scalar types (``numpy.core`` names resolve in
  ``numpy._core`` on numpy 2, so pickles written by numpy 1 load without warnings);
- pandas' frames, series, indexes, arrays, dtypes, offsets and scalars, under
  both the pandas 3 names (``pandas.DataFrame``) and the pandas 2 ones
  (``pandas.core.frame.DataFrame``); a pytz timezone becomes a ``ZoneInfo``;
- the legacy project's classes (``src.*`` and the same modules without the
  ``src.`` prefix), which are never imported: they become stubs, and
  :func:`plain` turns the loaded stubs into plain dicts.

A name is looked up as a whole, never walked: ``pandas.core.frame`` +
``np.load`` is not ``numpy.load``, it is refused. Nothing unlisted is imported,
modules that run code (os, subprocess, importlib, pickle, ...) stay refused even
if listed, and no name resolves to a module. The opcodes that call or mutate
apply only where real pickles use them: REDUCE and NEWOBJ call only what a
GLOBAL resolved, BUILD never touches a class, SETITEM only fills dicts, APPEND
lists, ADDITEMS sets; extension codes are refused. Anything else raises
:class:`~ckptlite.errors.UnsafePickleError` naming it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import datetime
import importlib
import io
import pickle
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import LegacyFormatError, UnsafePickleError

__all__ = [
    "ALLOWED_GLOBALS",
    "NEVER_MODULES",
    "PROJECT_MODULES",
    "LegacyObject",
    "LoadedPickle",
    "RestrictedUnpickler",
    "is_allowed",
    "load_pickle",
    "plain",
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


def _pickle_getattr(*args: Any) -> Any:
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
        ("builtins", "getattr"): _pickle_getattr,
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


def _canonical(module: str, name: str) -> tuple[str, str]:
    # Protocols 0-2 name builtins the Python 2 way (__builtin__.set): check the real name.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def is_project(module: str) -> bool:
    """Tell whether ``module`` belongs to the legacy project (its classes become stubs)."""
    return module.split(".", 1)[0] in PROJECT_MODULES


def is_allowed(module: str, name: str) -> bool:
    """Tell whether ``module.name`` is on the allow-list (project classes excluded)."""
    module, name = _canonical(module, name)
    # builtins.getattr is denied: a pickle naming it gets a stand-in with one use.
    return (module, name) in ALLOWED_GLOBALS and not _denied(module, name)


def _resolve(module: str, name: str) -> Any:
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


class LegacyObject:
    """Stand-in for an instance of a legacy project class; :func:`plain` makes it a dict."""

    _legacy_class = "LegacyObject"
    # Defaults, because copyreg._reconstructor builds instances with object.__new__.
    _args: tuple[Any, ...] = ()
    _kwargs: dict[str, Any] = {}  # never mutated: replaced per instance
    _state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> LegacyObject:
        self = object.__new__(cls)
        self._args = args
        self._kwargs = kwargs
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._state = state

    # A legacy class deriving from list or dict gets its items through these.
    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_items", []).extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_mapping", {})[key] = value

    def __repr__(self) -> str:
        return f"<legacy {self._legacy_class}>"


_STUBS: dict[str, type[LegacyObject]] = {}


def _stub(module: str, name: str) -> type[LegacyObject]:
    full = f"{module}.{name}"
    cls = _STUBS.get(full)
    if cls is None:
        cls = type(name.rsplit(".", 1)[-1], (LegacyObject,), {"_legacy_class": full})
        _STUBS[full] = cls
    return cls


_BASE: dict[int, Any] = pickle._Unpickler.dispatch


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickle with the allow-list; records which legacy classes it stubbed.

    The pure-Python unpickler, so that the opcodes which call or mutate can be
    checked one by one (the C one only lets ``find_class`` be replaced).

    Raises (from ``load``):
        UnsafePickleError: the pickle names a global outside the allow-list, or uses
            an opcode on something real pickles never use it on.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.project_classes: set[str] = set()
        # What GLOBALs resolved, by id (held, so no id is reused): all that may be called.
        self._resolved: dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Return the listed global ``module.name`` (a stub for a project class).

        Raises:
            UnsafePickleError: it is not on the allow-list.
        """
        module, name = _canonical(module, name)
        if is_project(module):
            self.project_classes.add(f"{module}.{name}")
            obj: Any = _stub(module, name)
        else:
            obj = _resolve(module, name)
        self._resolved[id(obj)] = obj
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"refused a persistent id {pid!r}: legacy pickles have none",
            class_name="<persistent id>",
        )

    def _named(self, obj: Any, opcode: str) -> None:
        if self._resolved.get(id(obj)) is not obj:
            raise UnsafePickleError(
                f"refused {opcode} on a {type(obj).__qualname__}: only a listed global may "
                "be called",
                class_name=f"<{opcode}>",
            )

    def _target(self, obj: Any, types_: tuple[type, ...], opcode: str) -> None:
        if not isinstance(obj, types_) or isinstance(obj, type):
            raise UnsafePickleError(
                f"refused {opcode} on a {type(obj).__qualname__}: real pickles use it only "
                f"on {' or '.join(t.__qualname__ for t in types_)}",
                class_name=f"<{opcode}>",
            )

    def _reduce(self) -> None:
        func = self.stack[-2]  # type: ignore[attr-defined]
        self._named(func, "REDUCE")
        _BASE[pickle.REDUCE[0]](self)
        if func is _pickle_getattr:  # ZoneInfo._unpickle, which the pickle calls next
            got = self.stack[-1]  # type: ignore[attr-defined]
            self._resolved[id(got)] = got

    def _newobj(self) -> None:
        cls = self.stack[-2]  # type: ignore[attr-defined]
        self._named(cls, "NEWOBJ")
        if not isinstance(cls, type):
            raise UnsafePickleError("refused NEWOBJ of a non-class", class_name="<NEWOBJ>")
        _BASE[pickle.NEWOBJ[0]](self)

    def _newobj_ex(self) -> None:
        cls = self.stack[-3]  # type: ignore[attr-defined]
        self._named(cls, "NEWOBJ_EX")
        if not isinstance(cls, type):
            raise UnsafePickleError("refused NEWOBJ_EX of a non-class", class_name="<NEWOBJ_EX>")
        _BASE[pickle.NEWOBJ_EX[0]](self)

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self._named(klass, "OBJ")
        super()._instantiate(klass, args)  # type: ignore[misc]

    def _build(self) -> None:
        inst = self.stack[-2]  # type: ignore[attr-defined]
        if isinstance(inst, type | types.ModuleType):  # setattr on a class: global effects
            raise UnsafePickleError(
                f"refused BUILD on {getattr(inst, '__qualname__', inst)!r}: it would change "
                "a class",
                class_name="<BUILD>",
            )
        _BASE[pickle.BUILD[0]](self)

    def _setitem(self) -> None:
        self._target(self.stack[-3], (dict, LegacyObject), "SETITEM")  # type: ignore[attr-defined]
        _BASE[pickle.SETITEM[0]](self)

    def _setitems(self) -> None:
        self._target(self._under_mark(), (dict, LegacyObject), "SETITEMS")
        _BASE[pickle.SETITEMS[0]](self)

    def _append(self) -> None:
        self._target(self.stack[-2], (list, collections.deque, LegacyObject), "APPEND")  # type: ignore[attr-defined]
        _BASE[pickle.APPEND[0]](self)

    def _appends(self) -> None:
        self._target(self._under_mark(), (list, collections.deque, LegacyObject), "APPENDS")
        _BASE[pickle.APPENDS[0]](self)

    def _additems(self) -> None:
        self._target(self._under_mark(), (set,), "ADDITEMS")
        _BASE[pickle.ADDITEMS[0]](self)

    def _under_mark(self) -> Any:
        # The object below the topmost MARK: what SETITEMS/APPENDS/ADDITEMS fill.
        stack: list[Any] = self.metastack[-1]  # type: ignore[attr-defined]
        return stack[-1] if stack else None

    def _extension(self) -> None:
        raise UnsafePickleError(
            "refused an extension code: legacy pickles have none", class_name="<EXT>"
        )


for _op, _fn in {
    pickle.REDUCE: RestrictedUnpickler._reduce,
    pickle.NEWOBJ: RestrictedUnpickler._newobj,
    pickle.NEWOBJ_EX: RestrictedUnpickler._newobj_ex,
    pickle.BUILD: RestrictedUnpickler._build,
    pickle.SETITEM: RestrictedUnpickler._setitem,
    pickle.SETITEMS: RestrictedUnpickler._setitems,
    pickle.APPEND: RestrictedUnpickler._append,
    pickle.APPENDS: RestrictedUnpickler._appends,
    pickle.ADDITEMS: RestrictedUnpickler._additems,
    pickle.EXT1: RestrictedUnpickler._extension,
    pickle.EXT2: RestrictedUnpickler._extension,
    pickle.EXT4: RestrictedUnpickler._extension,
}.items():
    RestrictedUnpickler.dispatch[_op[0]] = _fn  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class LoadedPickle:
    """A loaded legacy pickle as plain values, and the legacy classes it named."""

    value: Any
    project_classes: tuple[str, ...] = field(default=())


def load_pickle(data: bytes) -> LoadedPickle:
    """Unpickle ``data`` with the allow-list and return plain values.

    Raises:
        UnsafePickleError: a class outside the allow-list (named in the error).
        LegacyFormatError: the bytes are not a readable pickle.

    >>> load_pickle(pickle.dumps({"tiles": ["tile_0_0"]})).value
    {'tiles': ['tile_0_0']}
    """
    up = RestrictedUnpickler(io.BytesIO(data))
    try:
        value = plain(up.load())
    except LegacyFormatError:  # UnsafePickleError too: a refusal names what it refused
        raise
    except ModuleNotFoundError as e:
        raise LegacyFormatError(
            f"the pickle needs module {e.name!r}, which is not installed",
            hint=f"Install {e.name} (e.g. pandas) and run the migration again.",
        ) from e
    except RecursionError as e:
        raise LegacyFormatError("the pickle nests too deeply to load") from e
    except Exception as e:  # truncated, malformed, or an allowed class refusing its arguments
        raise LegacyFormatError(f"not a readable pickle: {type(e).__name__}: {e}") from e
    return LoadedPickle(value, tuple(sorted(up.project_classes)))


def plain(value: Any) -> Any:
    """Return ``value`` with every :class:`LegacyObject` replaced by a plain dict.

    An object's ``__dict__`` state becomes the dict; constructor arguments (a legacy
    enum, say) go under ``"__args__"``; items of list/dict subclasses under
    ``"__items__"``. Shared references stay shared.
    """
    memo: dict[int, Any] = {}
    return _plain(value, memo)


def _plain(value: Any, memo: dict[int, Any]) -> Any:
    t = type(value)
    if t in (str, int, float, bool, bytes, type(None)):
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, LegacyObject):
        out: dict[Any, Any] = {}
        memo[key] = out
        _fill_from_stub(value, out, memo)
        return out
    if t is dict:
        d: dict[Any, Any] = {}
        memo[key] = d
        for k, v in value.items():
            d[_plain(k, memo)] = _plain(v, memo)
        return d
    if t is list:
        lst: list[Any] = []
        memo[key] = lst
        lst.extend(_plain(v, memo) for v in value)
        return lst
    if t is tuple:
        tup = tuple(_plain(v, memo) for v in value)
        memo[key] = tup
        return tup
    return value  # other allowed types hold no stubs we can reach without rebuilding them


def _fill_from_stub(obj: LegacyObject, out: dict[Any, Any], memo: dict[int, Any]) -> None:
    state: Any = obj._state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ state)
        dict_state, slot_state = state
        state = {**(dict_state or {}), **(slot_state or {})}
    if isinstance(state, dict):
        for k, v in state.items():
            out[_plain(k, memo)] = _plain(v, memo)
    elif state is not None:
        out["__state__"] = _plain(state, memo)
    if obj._args:
        out["__args__"] = _plain(list(obj._args), memo)
    if obj._kwargs:
        out["__kwargs__"] = _plain(dict(obj._kwargs), memo)
    if "_items" in obj.__dict__:
        out["__items__"] = _plain(list(obj.__dict__["_items"]), memo)
    if "_mapping" in obj.__dict__:
        out["__items__"] = _plain(dict(obj.__dict__["_mapping"]), memo)
