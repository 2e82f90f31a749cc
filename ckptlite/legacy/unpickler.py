"""A restricted unpickler for legacy payloads: an allow-list, never arbitrary code.

Pickles name the callables that rebuild them; an ordinary ``pickle.load`` imports
and calls whatever is named. This unpickler resolves only:

- builtin value types (containers, numbers, dates, paths, UUIDs, decimals);
- numpy arrays, dtypes and scalars (``numpy.core`` names map to ``numpy._core``
  on numpy 2, so pickles written by numpy 1 load without deprecation warnings);
- pandas' data structures (frames, series, indexes, blocks, arrays, dtypes);
- the legacy project's classes (``src.*`` and the same modules without the
  ``src.`` prefix), which are never imported: they become stubs, and
  :func:`plain` turns the loaded stubs into plain dicts.

Anything else raises :class:`~ckptlite.errors.UnsafePickleError` naming it.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import LegacyFormatError, UnsafePickleError

__all__ = [
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

_BUILTINS = {
    "builtins": {
        "bool",
        "bytearray",
        "bytes",
        "complex",
        "dict",
        "float",
        "frozenset",
        "int",
        "list",
        "object",
        "range",
        "set",
        "slice",
        "str",
        "tuple",
    },
    "_codecs": {"encode"},  # protocol 0-2 pickle bytes as _codecs.encode(str, "latin1")
    "copyreg": {"_reconstructor"},  # protocol 0-1 objects; its class goes through find_class
    "collections": {"OrderedDict", "defaultdict", "deque", "Counter"},
    "datetime": {"date", "datetime", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "uuid": {"UUID", "SafeUUID"},
    "pathlib": {"Path", "PosixPath", "PurePath", "PurePosixPath", "PureWindowsPath", "WindowsPath"},
    "zoneinfo": {"ZoneInfo._unpickle"},
    "numpy": {"ndarray", "dtype"},  # and numpy's scalar types, see _numpy_scalar_type
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.ma": {"MaskedArray"},
    "numpy.ma.core": {"_mareconstruct", "MaskedArray"},
}

# pandas rebuilds its objects through many private helpers; allow its data-structure
# modules, never its I/O, evaluation or plotting ones.
_PANDAS_PREFIXES = (
    "pandas.core.frame",
    "pandas.core.series",
    "pandas.core.indexes.",
    "pandas.core.internals.",
    "pandas.core.arrays.",
    "pandas.core.dtypes.",
    "pandas._libs.internals",
    "pandas._libs.tslibs.",
    "pandas._libs.arrays",
    "pandas._libs.interval",
    "pandas._libs.sparse",
)


def _numpy_module(module: str) -> str:
    if module == "numpy.core" or module.startswith("numpy.core."):
        return "numpy._core" + module[len("numpy.core") :]
    return module


def is_project(module: str) -> bool:
    """Tell whether ``module`` belongs to the legacy project (its classes become stubs)."""
    return module.split(".", 1)[0] in PROJECT_MODULES


def is_allowed(module: str, name: str) -> bool:
    """Tell whether ``module.name`` is on the allow-list (project classes excluded)."""
    module = _numpy_module(module)
    if name in _BUILTINS.get(module, ()) or _numpy_scalar_type(module, name):
        return True
    return module.startswith(_PANDAS_PREFIXES) and not name.startswith("__")


def _numpy_scalar_type(module: str, name: str) -> bool:
    # A dtype given as a type (config {"dtype": np.float32}) pickles as numpy.float32.
    if module != "numpy" or name.startswith("_"):
        return False
    import numpy as np

    obj = getattr(np, name, None)
    return isinstance(obj, type) and issubclass(obj, np.generic)


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


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle with the allow-list; records which legacy classes it stubbed.

    Raises (from ``load``):
        UnsafePickleError: the pickle names a class outside the allow-list.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.project_classes: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 name builtins the Python 2 way (__builtin__.set): check the real name.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if is_project(module):
            self.project_classes.add(full)
            return _stub(module, name)
        if not is_allowed(module, name):
            raise UnsafePickleError(
                f"refused to unpickle {full}: not on the allow-list", class_name=full
            )
        return super().find_class(_numpy_module(module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"refused a persistent id {pid!r}: legacy pickles have none",
            class_name="<persistent id>",
        )


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
    except UnsafePickleError:
        raise
    except ModuleNotFoundError as e:
        raise LegacyFormatError(
            f"the pickle needs module {e.name!r}, which is not installed",
            hint=f"Install {e.name} (e.g. pandas) and run the migration again.",
        ) from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise LegacyFormatError(f"not a readable pickle: {type(e).__name__}: {e}") from e
    except RecursionError as e:
        raise LegacyFormatError("the pickle nests too deeply to load") from e
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
