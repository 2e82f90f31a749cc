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

import collections
import io
import pickle
import types
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import LegacyFormatError, UnsafePickleError
from ._allowlist import (
    ALLOWED_GLOBALS,
    NEVER_MODULES,
    PROJECT_MODULES,
    canonical,
    is_allowed,
    is_project,
    pickle_getattr,
    resolve,
)

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
        module, name = canonical(module, name)
        if is_project(module):
            self.project_classes.add(f"{module}.{name}")
            obj: Any = _stub(module, name)
        else:
            obj = resolve(module, name)
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
        if func is pickle_getattr:  # ZoneInfo._unpickle, which the pickle calls next
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
