"""Item 6: the legacy unpickler is not a way to run code, and real pandas pickles still load.

Every hostile pickle here is written opcode by opcode (GLOBAL / STACK_GLOBAL with
REDUCE, BUILD, NEWOBJ, SETITEM, APPEND): direct calls of os.system, eval,
pickle.loads, importlib and friends; fickling's known bypasses (pty, marshal +
types, runpy, cProfile, ctypes, pydoc.locate, code, multiprocessing.util, ...);
and, crucially, the same targets reached through an attribute path of every
module the allow-list names (``pandas.core.frame`` + ``np._pytesttester.os.system``
ran ``os.system`` before). Each must raise UnsafePickleError and leave the
sentinel file uncreated.

The positive side: pickles of pandas 3 objects made here (protocols 2-5), and
two pickles written by pandas 2 (one with numpy 1, one with numpy 2; embedded
below, made once in a throwaway virtualenv), load and import through
``ckptlite.migrate`` under ``trust_pickle``.
"""

from __future__ import annotations

import base64
import copyreg
import gzip
import io
import json
import marshal
import pathlib
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from legacy_builders import Evil, LegacyCoreManager, legacy_checksum

import ckptlite
from ckptlite.errors import UnsafePickleError
from ckptlite.legacy import IMPORTED, _allowlist, migrate, unpickler
from ckptlite.legacy.unpickler import load_pickle

# -- opcode builders --------------------------------------------------------------


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data  # BINBYTES


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _stack_global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"  # STACK_GLOBAL


def _call(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def _list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"  # EMPTY_LIST MARK items APPENDS


def _pickle(body: bytes, protocol: int = 4) -> bytes:
    return bytes([0x80, protocol]) + body + b"."  # PROTO body STOP


class Bait:
    """The files and strings a payload needs to leave a trace: the sentinel must never exist."""

    def __init__(self, tmp: Path) -> None:
        self.sentinel = tmp / "pwned"
        self.path = p = str(self.sentinel)
        self.cmd = f"touch {p}"
        self.expr = f"open({p!r}, 'w').close()"  # for eval (an expression) and exec
        self.evil = pickle.dumps(Evil(self.sentinel))  # a plain pickle that runs os.system
        self.script = tmp / "evil.py"
        self.script.write_text(self.expr + "\n")
        self.evil_file = tmp / "evil.pkl"
        self.evil_file.write_bytes(self.evil)
        self.npy = tmp / "evil.npy"
        np.save(self.npy, np.array([Evil(self.sentinel)], dtype=object), allow_pickle=True)
        self.code = marshal.dumps(compile(self.expr, "<payload>", "exec"))

    def args(self, kind: str) -> tuple[bytes, ...] | None:
        """REDUCE arguments that make a callable of ``kind`` leave the sentinel (None: no call)."""
        return {
            "shell": (_str(self.cmd),),
            "python": (_str(self.expr),),
            "pickle": (_bytes(self.evil),),
            "module": (_str("os"),),
            "npload": (
                _str(str(self.npy)),
                b"N",
                b"\x88",
            ),  # np.load(path, None, allow_pickle=True)
            "file": (_str(str(self.evil_file)),),
            "getattr": (_global("pandas.core.frame", "DataFrame"), _str("to_pickle")),
            "ref": None,
        }[kind]


_GETATTR = _global("builtins", "getattr")
_IMPORT = _global("builtins", "__import__")

#: Direct attempts and fickling's bypasses (its test/test_bypasses.py, rewritten here).
PAYLOADS: dict[str, Callable[[Bait], bytes]] = {
    "os.system": lambda b: _pickle(_call(_global("os", "system"), _str(b.cmd))),
    "posix.system": lambda b: _pickle(_call(_stack_global("posix", "system"), _str(b.cmd))),
    "nt.system": lambda b: _pickle(_call(_global("nt", "system"), _str(b.cmd))),
    "subprocess.Popen": lambda b: _pickle(
        _call(_global("subprocess", "Popen"), _list(_str("touch"), _str(b.path)))
    ),
    "builtins.eval": lambda b: _pickle(_call(_global("builtins", "eval"), _str(b.expr))),
    "builtins.exec": lambda b: _pickle(_call(_stack_global("builtins", "exec"), _str(b.expr))),
    "__builtin__.eval protocol 2": lambda b: _pickle(
        _call(_global("__builtin__", "eval"), _str(b.expr)), protocol=2
    ),
    "builtins.open": lambda b: _pickle(_call(_global("builtins", "open"), _str(b.path), _str("w"))),
    "__import__ then getattr": lambda b: _pickle(
        _call(_call(_GETATTR, _call(_IMPORT, _str("os")), _str("system")), _str(b.cmd))
    ),
    "importlib.import_module then getattr": lambda b: _pickle(
        _call(
            _call(
                _GETATTR, _call(_global("importlib", "import_module"), _str("os")), _str("system")
            ),
            _str(b.cmd),
        )
    ),
    "importlib.import_module": lambda b: _pickle(
        _call(_global("importlib", "import_module"), _str("os"))
    ),
    "pickle.loads": lambda b: _pickle(_call(_global("pickle", "loads"), _bytes(b.evil))),
    "_pickle.loads": lambda b: _pickle(_call(_stack_global("_pickle", "loads"), _bytes(b.evil))),
    "marshal.loads + types.FunctionType": lambda b: _pickle(
        _call(
            _call(
                _stack_global("types", "FunctionType"),
                _call(_stack_global("marshal", "loads"), _bytes(b.code)),
                b"}",
            )
        )
    ),
    "runpy.run_path": lambda b: _pickle(
        _call(_stack_global("runpy", "run_path"), _str(str(b.script)))
    ),
    "pty.spawn": lambda b: _pickle(
        _call(_stack_global("pty", "spawn"), _list(_str("sh"), _str("-c"), _str(b.cmd)))
    ),
    "cProfile.run": lambda b: _pickle(_call(_stack_global("cProfile", "run"), _str(b.expr))),
    "ctypes.CDLL(None).system": lambda b: _pickle(
        _call(
            _call(_GETATTR, _call(_stack_global("ctypes", "CDLL"), b"N"), _str("system")),
            _bytes(b.cmd.encode()),
        )
    ),
    "pydoc.locate": lambda b: _pickle(
        _call(_call(_stack_global("pydoc", "locate"), _str("os.system")), _str(b.cmd))
    ),
    "code.InteractiveInterpreter.runsource": lambda b: _pickle(
        _call(
            _call(_GETATTR, _call(_global("code", "InteractiveInterpreter")), _str("runsource")),
            _str(b.expr),
        )
    ),
    "multiprocessing.util.spawnv_passfds": lambda b: _pickle(
        _call(
            _stack_global("multiprocessing.util", "spawnv_passfds"),
            _bytes(b"/bin/sh"),
            _list(_bytes(b"sh"), _bytes(b"-c"), _bytes(b.cmd.encode())),
            b")",
        )
    ),
    "_operator.methodcaller": lambda b: _pickle(
        _call(
            _call(_global("_operator", "methodcaller"), _str("system"), _str(b.cmd)),
            _call(_IMPORT, _str("os")),
        )
    ),
    "_io.FileIO": lambda b: _pickle(_call(_stack_global("_io", "FileIO"), _str(b.path), _str("w"))),
    "distutils.file_util.write_file": lambda b: _pickle(
        _call(_stack_global("distutils.file_util", "write_file"), _str(b.path), _list(_str("x")))
    ),
    "numpy.f2py.crackfortran.getlincoef": lambda b: _pickle(
        _call(_stack_global("numpy.f2py.crackfortran", "getlincoef"), _str(b.expr), b"}")
    ),
    "uuid._get_command_stdout": lambda b: _pickle(
        _call(_global("uuid", "_get_command_stdout"), _str("touch"), _str(b.path))
    ),
    "_aix_support._read_cmd_output": lambda b: _pickle(
        _call(_global("_aix_support", "_read_cmd_output"), _str(b.cmd))
    ),
    "_osx_support._find_build_tool": lambda b: _pickle(
        _call(_global("_osx_support", "_find_build_tool"), _str(f"x; {b.cmd}"))
    ),
    "asyncio.create_subprocess_shell": lambda b: _pickle(
        _call(_global("asyncio", "create_subprocess_shell"), _str(b.cmd))
    ),
    "smtplib.SMTP": lambda b: _pickle(
        _call(_global("smtplib", "SMTP"), _str("127.0.0.1"), b"K\x19")
    ),
    "pathlib + os.system": lambda b: _pickle(
        _call(_stack_global("pathlib", "os.system"), _str(b.cmd))
    ),
    "zoneinfo + _tzpath.os.system": lambda b: _pickle(
        _call(_stack_global("zoneinfo", "_tzpath.os.system"), _str(b.cmd))
    ),
    "collections + _sys.modules": lambda b: _pickle(_stack_global("collections", "_sys.modules")),
    "__future__ + _ssl.RAND_bytes": lambda b: _pickle(
        _stack_global("__future__", "_ssl.RAND_bytes")
    ),
    "ast.parse": lambda b: _pickle(_call(_global("ast", "parse"), _str("1"))),
    "numpy.load allow_pickle": lambda b: _pickle(
        _call(_global("numpy", "load"), *b.args("npload") or ())
    ),
    "numpy.lib.npyio.load": lambda b: _pickle(
        _call(_global("numpy.lib.npyio", "load"), *b.args("npload") or ())
    ),
    "numpy.testing runstring": lambda b: _pickle(
        _call(_global("numpy.testing._private.utils", "runstring"), _str(b.expr), b"}")
    ),
    "pandas.read_pickle": lambda b: _pickle(
        _call(_global("pandas", "read_pickle"), _str(str(b.evil_file)))
    ),
    "pandas.io.pickle.read_pickle": lambda b: _pickle(
        _call(_global("pandas.io.pickle", "read_pickle"), _str(str(b.evil_file)))
    ),
    "pandas.io.pickle + pickle.loads": lambda b: _pickle(
        _call(_stack_global("pandas.io.pickle", "pickle.loads"), _bytes(b.evil))
    ),
    "pandas.eval": lambda b: _pickle(_call(_global("pandas", "eval"), _str("1 + 1"))),
    "pandas.core.computation.eval.eval": lambda b: _pickle(
        _call(_global("pandas.core.computation.eval", "eval"), _str("1 + 1"))
    ),
    # The holes of the module-prefix allow-list: each of these ran before.
    "pandas.core.frame + np._pytesttester.os.system": lambda b: _pickle(
        _call(_stack_global("pandas.core.frame", "np._pytesttester.os.system"), _str(b.cmd))
    ),
    "pandas.core.frame + libalgos.__builtins__.eval": lambda b: _pickle(
        _call(_stack_global("pandas.core.frame", "libalgos.__builtins__.eval"), _str(b.expr))
    ),
    "pandas.core.dtypes.dtypes + timezones.pickle.loads": lambda b: _pickle(
        _call(
            _stack_global("pandas.core.dtypes.dtypes", "timezones.pickle.loads"),
            _bytes(b.evil),
        )
    ),
    "pandas.core.frame + np.load": lambda b: _pickle(
        _call(_stack_global("pandas.core.frame", "np.load"), *b.args("npload") or ())
    ),
    "pandas.core.series + com.inspect.importlib.import_module": lambda b: _pickle(
        _call(
            _stack_global("pandas.core.series", "com.inspect.importlib.import_module"),
            _str("os"),
        )
    ),
    "pandas.core.frame + DataFrame.to_pickle": lambda b: _pickle(
        _stack_global("pandas.core.frame", "DataFrame.to_pickle")
    ),
    "pandas.core.frame + sys.modules": lambda b: _pickle(
        _global("pandas.core.frame", "sys.modules")
    ),
}


def _refused(data: bytes, b: Bait) -> UnsafePickleError:
    with pytest.raises(UnsafePickleError) as exc:
        load_pickle(data)
    assert exc.value.hint and exc.value.class_name
    assert not b.sentinel.exists(), "the payload ran"
    return exc.value


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path, name: str) -> None:
    b = Bait(tmp_path)
    _refused(PAYLOADS[name](b), b)


#: Every module the allow-list names (pandas 2 and 3, numpy 1 and 2 spellings), and the
#: pandas/numpy modules a payload would like to reach.
ALLOWED_MODULES = (
    "builtins", "__builtin__", "_codecs", "copyreg", "copy_reg", "collections", "datetime",
    "decimal", "fractions", "uuid", "pathlib", "zoneinfo", "dateutil.relativedelta", "pytz",
    "numpy", "numpy._core.multiarray", "numpy._core.numeric", "numpy.core.multiarray",
    "numpy.core.numeric", "numpy.ma", "numpy.ma.core", "numpy.rec",
    "pandas", "pandas.arrays", "pandas._libs.arrays", "pandas._libs.internals",
    "pandas._libs.interval", "pandas._libs.missing", "pandas._libs.sparse",
    "pandas._libs.tslibs.nattype", "pandas._libs.tslibs.offsets", "pandas._libs.tslibs.period",
    "pandas._libs.tslibs.timedeltas", "pandas._libs.tslibs.timestamps",
    "pandas.core.arrays.boolean", "pandas.core.arrays.categorical",
    "pandas.core.arrays.datetimes", "pandas.core.arrays.floating", "pandas.core.arrays.integer",
    "pandas.core.arrays.interval", "pandas.core.arrays.numpy_", "pandas.core.arrays.period",
    "pandas.core.arrays.sparse.array",
    "pandas.core.arrays.sparse.dtype", "pandas.core.arrays.string_",
    "pandas.core.arrays.timedeltas", "pandas.core.dtypes.dtypes", "pandas.core.frame",
    "pandas.core.indexes.base", "pandas.core.indexes.category", "pandas.core.indexes.datetimes",
    "pandas.core.indexes.interval", "pandas.core.indexes.multi", "pandas.core.indexes.numeric",
    "pandas.core.indexes.period", "pandas.core.indexes.range", "pandas.core.indexes.timedeltas",
    "pandas.core.internals.blocks", "pandas.core.internals.managers", "pandas.core.series",
    "pandas.io.pickle", "pandas.core.computation.eval", "numpy.lib.npyio", "numpy.testing",
)  # fmt: skip

#: Attribute paths to code execution found from those modules (a breadth-first walk of
#: their attributes), and the plain names an attacker would try; value: how to call it.
ATTRIBUTE_PATHS = {
    "os.system": "shell",
    "np._pytesttester.os.system": "shell",
    "zoneinfo._tzpath.os.system": "shell",
    "_tzpath.os.system": "shell",
    "system": "shell",
    "eval": "python",
    "exec": "python",
    "__builtins__.eval": "python",
    "lib.__builtins__.eval": "python",
    "libalgos.__builtins__.exec": "python",
    "pickle.loads": "pickle",
    "timezones.pickle.loads": "pickle",
    "loads": "pickle",
    "np.load": "npload",
    "load": "npload",
    "lib.npyio.load": "npload",
    "read_pickle": "file",
    "__import__": "module",
    "import_module": "module",
    "importlib.import_module": "module",
    "com.inspect.importlib.import_module": "module",
    "getattr": "getattr",
    "__builtins__.getattr": "getattr",
    "sys.modules": "ref",
    "_sys.modules": "ref",
    "DataFrame.to_pickle": "ref",
    "DataFrame.eval": "ref",
    "ZoneInfo._unpickle.__globals__": "ref",
    "ndarray.tofile": "ref",
    "testing": "ref",
}


@pytest.mark.parametrize("module", ALLOWED_MODULES)
def test_no_attribute_path_through_an_allowed_module(tmp_path: Path, module: str) -> None:
    b = Bait(tmp_path)
    ran = []
    for path, kind in ATTRIBUTE_PATHS.items():
        args = b.args(kind)
        for ref in (_global(module, path), _stack_global(module, path)):
            data = _pickle(ref if args is None else _call(ref, *args))
            try:
                load_pickle(data)
            except UnsafePickleError:
                continue
            except Exception as e:
                ran.append(f"{module} + {path}: {type(e).__name__}")
            else:
                ran.append(f"{module} + {path}: resolved")
    assert not b.sentinel.exists(), "a payload ran"
    assert ran == []


def test_the_module_list_covers_the_allow_list() -> None:
    assert {m for m, _ in unpickler.ALLOWED_GLOBALS} <= set(ALLOWED_MODULES)


def test_denied_names_stay_refused_even_if_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = Bait(tmp_path)
    added = [  # (module, name) as a pickle names it, where it would resolve, how to call it
        ("os", "system", ("os", "system"), "shell"),
        ("posix", "system", ("posix", "system"), "shell"),
        ("builtins", "eval", ("builtins", "eval"), "python"),
        ("builtins", "exec", ("builtins", "exec"), "python"),
        ("builtins", "__import__", ("builtins", "__import__"), "module"),
        ("subprocess", "Popen", ("subprocess", "Popen"), "ref"),
        ("importlib", "import_module", ("importlib", "import_module"), "module"),
        ("pickle", "loads", ("pickle", "loads"), "pickle"),
        ("marshal", "loads", ("marshal", "loads"), "ref"),
        ("runpy", "run_path", ("runpy", "run_path"), "ref"),
        ("pandas", "path_os", ("posixpath", "os"), "ref"),  # resolves to a module
        ("pandas", "path_system", ("shlex", "os"), "ref"),
        ("pandas", "sneaky", ("posixpath", "os.system"), "shell"),  # a dotted target
    ]
    listed = {(m, n): (target,) for m, n, target, _ in added}
    monkeypatch.setattr(_allowlist, "_ALLOWED", {**_allowlist._ALLOWED, **listed})
    for module, name, _, kind in added:
        args = b.args(kind)
        ref = _global(module, name)
        err = _refused(_pickle(ref if args is None else _call(ref, *args)), b)
        assert err.class_name == f"{module}.{name}"


def test_getattr_is_only_zoneinfos_unpickle(tmp_path: Path) -> None:
    """Pickles of a ZoneInfo name builtins.getattr(ZoneInfo, "_unpickle"): that pair only."""
    b = Bait(tmp_path)
    zone = _call(
        _call(_GETATTR, _global("zoneinfo", "ZoneInfo"), _str("_unpickle")), _str("UTC"), b"K\x01"
    )
    import zoneinfo

    assert load_pickle(_pickle(zone)).value is zoneinfo.ZoneInfo("UTC")
    for owner, attr in [
        (_global("pandas", "DataFrame"), "to_pickle"),
        (_global("zoneinfo", "ZoneInfo"), "_unpickle.__globals__"),
        (_global("zoneinfo", "ZoneInfo"), "__init_subclass__"),
        (_global("zoneinfo", "ZoneInfo"), "__dict__"),
        (_global("numpy", "ndarray"), "tofile"),
        (_str("text"), "format"),
        (_global("collections", "OrderedDict"), "fromkeys"),
    ]:
        _refused(_pickle(_call(_GETATTR, owner, _str(attr))), b)


def test_build_cannot_change_a_class(tmp_path: Path) -> None:
    b = Bait(tmp_path)
    before = pathlib.PurePosixPath.__dict__.get("as_uri")
    # BUILD with (None, {"as_uri": numpy.dtype}) on the class itself: setattr on the class.
    data = _pickle(
        _global("pathlib", "PurePosixPath")
        + b"N}("
        + _str("as_uri")
        + _global("numpy", "dtype")
        + b"u\x86b"
    )
    try:
        _refused(data, b)
    finally:
        changed = pathlib.PurePosixPath.__dict__.get("as_uri") is not before
        if changed:  # the old unpickler did it: put it back for the other tests
            if before is None:
                delattr(pathlib.PurePosixPath, "as_uri")
            else:
                pathlib.PurePosixPath.as_uri = before  # type: ignore[method-assign]
    assert not changed


@pytest.mark.parametrize(
    "body",
    [
        # SETITEM on a DataFrame (not a dict): df["k"] = [1]
        _call(_global("pandas.core.frame", "DataFrame")) + _str("k") + _list(b"K\x01") + b"s",
        # SETITEMS on a numpy array
        _call(_global("numpy", "dtype"), _str("f8")) + b"(" + _str("k") + b"K\x01u",
        # APPEND on a pandas Index (not a list)
        _call(_global("pandas.core.indexes.base", "Index"), _list()) + _list(b"K\x01") + b"a",
        # APPENDS on a Series
        _call(_global("pandas.core.series", "Series")) + b"(K\x01e",
        # ADDITEMS on a frozenset-like object that is not a set
        _call(_global("pandas.core.indexes.base", "Index"), _list()) + b"(K\x01\x90",
        # NEWOBJ of a function (not a class)
        _global("_codecs", "encode") + b")\x81",
        # REDUCE on a value no GLOBAL named
        _str("os") + b")R",
    ],
    ids=["setitem-frame", "setitems-dtype", "append-index", "appends-series", "additems-index",
         "newobj-function", "reduce-string"],
)  # fmt: skip
def test_opcodes_only_apply_to_the_types_they_are_for(tmp_path: Path, body: bytes) -> None:
    _refused(_pickle(body), Bait(tmp_path))


def test_extension_codes_are_refused(tmp_path: Path) -> None:
    b = Bait(tmp_path)
    copyreg.add_extension("os", "system", 0x7E57)
    try:
        _refused(_pickle(_call(b"\x83" + struct.pack("<H", 0x7E57), _str(b.cmd))), b)
    finally:
        copyreg.remove_extension("os", "system", 0x7E57)


def test_the_allow_list_is_exact_and_safe() -> None:
    """Exact pairs, no dotted names; every pair resolves (here) to a class or a function."""
    import types

    assert isinstance(unpickler.ALLOWED_GLOBALS, frozenset)
    unresolved = []
    for module, name in sorted(unpickler.ALLOWED_GLOBALS):
        assert "." not in name, (module, name)
        try:
            obj = unpickler.RestrictedUnpickler(io.BytesIO()).find_class(module, name)
        except Exception as e:
            unresolved.append(f"{module}.{name}: {type(e).__name__}")
            continue
        assert not isinstance(obj, types.ModuleType), (module, name)
        assert getattr(obj, "__module__", "").split(".")[0] not in unpickler.NEVER_MODULES
    # Names of pandas 1 (Int64Index ...) resolve through their new place; nothing is left over.
    assert unresolved == []


# -- what must still load -----------------------------------------------------------


def _pandas3_objects() -> dict[str, Any]:
    df = pd.DataFrame(
        {
            "i": np.arange(3),
            "f": [1.0, 2.5, np.nan],
            "s": ["a", "b", "c"],
            "dt": pd.date_range("2024-01-01", periods=3),
            "tz": pd.date_range("2024-01-01", periods=3, tz="Europe/Paris"),
            "utc": pd.date_range("2024-01-01", periods=3, tz="UTC"),
            "cat": pd.Categorical(["x", "y", "x"]),
            "b": [True, False, True],
            "n": pd.array([1, None, 3], dtype="Int64"),
            "fl": pd.array([1.5, None, 3], dtype="Float64"),
            "bo": pd.array([True, None, False], dtype="boolean"),
            "td": pd.to_timedelta([1, 2, 3], unit="s"),
            "per": pd.period_range("2024-01", periods=3, freq="M"),
            "iv": pd.interval_range(0, 3),
            "o": [{"a": 1}, [1], None],
        },
        index=pd.Index([10, 20, 30], name="k"),
    )
    return {
        "frame": df,
        "series": pd.Series([1, 2, 3], name="x", index=["a", "b", "c"]),
        "index": pd.Index(["a", "b"]),
        "range": pd.RangeIndex(5),
        "multi": pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["k", "n"]),
        "datetimeindex": pd.date_range("2024-01-01", periods=3, freq="h", tz="America/New_York"),
        "timestamp": pd.Timestamp("2024-01-01 12:00", tz="Europe/Paris"),
        "timedelta": pd.Timedelta("1 day 2h"),
        "categorical": pd.Categorical(["a", "b", "a"], ordered=True),
        "period": pd.Period("2024Q1", freq="Q"),
        "nat": pd.NaT,
        "na": pd.NA,
        "sparse": pd.arrays.SparseArray([0, 0, 1]),
        "multi-frame": pd.DataFrame(
            np.ones((2, 4)), columns=pd.MultiIndex.from_product([["a", "b"], [1, 2]])
        ),
        "offset": pd.offsets.BusinessDay(3),
    }


def _assert_same(got: Any, want: Any) -> None:
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want)
    elif isinstance(want, pd.Index):
        pd.testing.assert_index_equal(got, want)
    elif isinstance(want, pd.api.extensions.ExtensionArray):
        pd.testing.assert_extension_array_equal(got, want)
    elif want is pd.NaT or want is pd.NA:
        assert got is want
    else:
        assert type(got) is type(want) and got == want


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("name", sorted(_pandas3_objects()))
def test_pandas3_pickles_load(name: str, protocol: int) -> None:
    assert pd.__version__.startswith("3.")
    want = _pandas3_objects()[name]
    _assert_same(load_pickle(pickle.dumps(want, protocol=protocol)).value, want)


# pandas 2.0.3 + numpy 1.26.4, protocol 2: pandas.core.* names, numpy.core.*, pytz, __builtin__
PANDAS_20_NUMPY_1_P2 = (
    "eNqFWAd8FEUXvxRIWEBQKYogiu2wBKKoUVFaUMmZgAPoicZl726TveRyd+/tHBD0FNTcEWyIXSwoig0UBRU7JvauX++9"
    "d7+mX/Ob93b2CgbI/X47szOv7fv/581MVlVmIRAMDwoEAm1oddlQEU1byZjl1kVTaNfxmNFoSets7kHl5NVQlYXqYLha"
    "qZhd7QiDyjTiSWlj0kq4dV1W0mq30TVmJ1LRzmbvzYDBQV/eTMQjblHBMDPJdDzambDNCGkYUBNNZrrS3Z7hrkxCxi1E"
    "q9sw0Y6mkq7ETFQaUOtJGcomz8KQUKAHjKgZTcXsqGvYSeoYMDRcoUKOwLDwYNUmLBlP1sPwHOwnYEQeRgrYPxiqUL+q"
    "HBygTcZkd1ppHhiuVBrxBhjVuyYPowWMCYaq2Np0GNvS0tL0pfrjRygg4aBIrzM0fFCg+Feh20rdwsGO8jtOwCESxkei"
    "phnJxNXHJU3TcBPxqPI4IRSgWPJwqICJoco8HCbgcKfGqXX44yY5KuIjBBxZiPgoxwuyrQGOpiCPERBUQTpfDW8yhzeu"
    "EFz/thlep3qmHth5JRxLAR4n4HgJJ0ScCcpHJUVTJ2AKRTNVQH0xmhMpmpMETCtEc7KOZn4DnELRnCqgwU/Z5XBaeUwz"
    "JJwe6W2FM4I8b8F0DdSZ3EbhLFvCDIqiMlRFUcwUMIuimC1gjlNTziamgKKSme5eUeRTS+MsGp9tRTvtmAGNZYz1VOpi"
    "lrRlvMt2ie7cm+XRaW7TzksWD2/Jw9kCztEf1twA59KHzRPQFAxVfyXNWQgFVZZJNOnCeZTNZgEtnJ8KCfNzsEDC+RE/"
    "g4IyuFDAokIGFxcdXUCOLhQQHtjRRSWOlpCjiwVc4jtqzcGlEkyGfCKja1eMHdm3eWwg0Lejb33f45dyv+rImX1bVQ+W"
    "kgFLQERCNJKFGBcGsw1tALvFzUMbwVAVqiYY2gU4BENcQIciQ6NTSFSngERZinkdubop5HfRkkZvfXWpopLMQsorKplk"
    "XELa/yTgjlwJGE13y5WGmTbADYaHqcG5GUyl7SkLLIy7IJvHV4YC4So1fl7zIshIWCZgeaaQ4hWU4m4BKwspvqyY4ssp"
    "xVkBVwyc4itLUryKMrRawFV+iq/OwTUSejjFkyjDS/u29K/rXzeMMru0/0XLvph7Tf3b+5/ve5SynCMbeQFrJPSqLK/N"
    "w7WU1+rQIMrrdQKup7zeIOBGyutAZI2qFLanMB61Esackj6s8zG4ScD6vWBQoqRBuFmBcEsWbg2GDVp1et524bbd6nvM"
    "XqHsRCzXNsykvdycRyMG3L5nMS1xRxbu9CBWa82Cu3xoNhA0dwu4h6Cp7IF7nQZVDu7zysEK2MhtN9yvysADEdZP0k61"
    "qSWTgwcFPBSuUUMpjNlox2BzbxHzh8nwIwIeJcNVPfCYRjxeD48T4lsEbKUiedpXiuQTDGeVV7zhScJrm4CnJDyt8Nqe"
    "hx2E16DQYMLrGQHPEl7PCdhZLIrPk+8XBLxY4NtL2nukHl4m768IeHVg77sK3isCFfAaee8T0C/hdXI7OFRDbt8Q8Ca5"
    "fUvA28UqWEoS2llpy53ntbqcvaNwfjcL73mbvslQvO9H/QFF/aGAj3TGPnbG+JtZxW6bWZW/mX1C8X0q4GsSvh7xjHZZ"
    "bid8wzf6TTL6LQHf1ka/47xamt3vkv73BHxfwg8ivDebUSvq2PDDLPyI7TFn4cf7+MZTpmkm/0R94U+z8DNHGfh5MDyU"
    "CEPbuenZ+YUzhknUqTgKv2RyxeFXGTfiZii9NaFaSu+vBfyG0vtbAb+T8PtW+EPQud1RFP5j0Ckw90/0ZX8W8Bf6stoe"
    "+IyZ+9egNvo3btvg79y68A/GPybhnw7y56tVBp873j6XhC8Uwf8VcZjX/xbwH8/ff0v8/Y/8fSmQQPCSiRWqWwTJ0KCM"
    "0u2husVKEhuewyrVCqxWT4mD1FO5Y++dOFg1mRzWsECteto5HMIvhnp6xz2VPxxKb0P0IubzIQ7zh8wuW1o0jsPVUCvu"
    "RxOEoCUlujhCvWZxJA0yzG0Jq93F/Xn0ABodS6KJRGq5a8YyaXUUUlXITFgRO+HigUpgjYKIVV2bShOOUmNlrPDGjYVe"
    "g6PV/OTVOIY9jKWkOfs8rS6MJ9sTdtmZFQ/y7BxMFlpxHOWSsMFD2KQPD46niRF5nMBpO1SDVNmDE2lCUQMPY4Xpzpm2"
    "xMO99Cu0cRIrHKGeViseScLa4lHa4tEscEzRYpAmggT7/sWT3M7CSQ4na7yPZcXjGO/jyaFycEIh/rry+Kdob1NZqb7o"
    "7UQ//pNK4p9WjP9kVjiF4s/iqT6+U+vqp9XVYwNn/zTSZBZZal/A09Vrxzhfks/7Lp7BpJnO8meyPE0usxIZpXEWaVAG"
    "wrVqUF08TKXk4gwKjY7LdEDFmRzILKKylVEXhNkUYwdRtoO40uHRcg7pbLI6PD420oRHwrnU9YjmbHI2ZrxyhlZSseBs"
    "ztqAmxwLGIKe3laH57C5czlbm1rYiqtWhcR5aijkrSZXptLYRO/V+t1OY4jeK1RKz+MvafYXEN9+sGXPMbCA0UxPHcN8"
    "jmFBIY8Jexmto/M5BYJDYxIsLCfBIk2CxRzABUUSXOiTIFxCgotKakgCl3g15GJWvaRAs9ZyD5dqDyaLLS16sAq1bOQA"
    "tyaMaE5HWS/GnLY9/84Xym0bj7dT6eKc0bXPRYe/N84h6AA6dACdrJDQAVT3YBdNbKUAqr29rgKT2mmKZdPsFNipNoba"
    "mMsCsmgsU25MbeW4TBtbzrIr2Fg3GbO5fLoplHyOwZVq0KMNHXVcvIw/4nIy3kFJdr6w1Qdn2cwVxJEq3ljieOXuFdHn"
    "R/F6w4c2/wyuubJq32q7aaxmdl2lkS0e/vFqDuoaClKd67GH5XIsl3bAwahv0qDHylTSNjBP7svGY3ZCWgau4eVCvzz2"
    "suG16tmD13L/OqJbAYjrNRA38NyNRVqtown/rI83qTd1/ML1LHYziw1w6MdbOGT/3I+3auhuY7XbeZnyBQDvUP0c3slg"
    "3kVgEuSj93TZwg3a0N1s6B5Wu5fUsngfTdnlF1rpcpNqa3NtSSh0G7iRvffm8H628YB6unncVKzHD/L4Q0QMvj25uLkE"
    "4DLDDK60utKl/38pDBr4MKWhaeqG9XaL4wYd2TxyP33NmjN3ET7C4T/K7h6jqGokPs5vWwrOY7h1b84ZaeW80C+EYeAT"
    "SnHt4MDMXZ8dtjhk5PBJNr3N3zbSaptPxfCpPZn35o0FXoNP06Laa3abU0npzE0q2e1+inewy2fUs3lNZR6f5dfnCKjP"
    "Fev96xbu5PHnaVxdpPAFZv2LTKHbvCL4UnkRfFmz9RVWfLXI1l1+mX2tpMz2FbHtZ4XXSarkroNvaHtv8vRbxQPi24Uy"
    "pA/c+I5m4Lss+h5D+L7HwA9Uk8cP6YXFk5bEj/aUXjXJB27TVL0S1D6mPPfgJ2z+U1qjdf8Hh8QfmA=="
)
# pandas 2.3.3 + numpy 2.2.6, protocol 5 (the legacy systems' HIGHEST_PROTOCOL)
PANDAS_23_NUMPY_2_P5 = (
    "eNqtVs+P20QUjhPHmw27JWyrbmlL6YFDuIRWFOgBaLvZInVNQtWWC2hxJ8lkx1nHDvZ4t1tRfhza7qKRkNoBIYEEqlCl"
    "iqJKCPXMgStSJf4RWi5FHODNjB3bSbaIiqzWbzzjefPme+99731c/Py32Zz8XeJVVuz6qI85e2qA3A4Kam3Px7VobnoR"
    "UfSGHF/nz3/Cxfe61V/xOTuQ/tx2KfZd5AS1PnLRCvYDzmYWHK+92lDvsL3KdkdbLMduBckezp60Qndgt1cdbLXEJvia"
    "7XTD/mCjZkn9MMa+3ebsCavre/1W2O0qnV/syWV/WiTzkeSsKBWB7NCNgbgHy9tH+dbmVX6GV80C017lzWZz6W/4yYeZ"
    "o7xlambhCmdanVP4jJVaoe1Q2wVbi4Fjt4UaMwcfaUKLmRdPMksqo/b8fkxJ/biSDz/iZBfLd1Pnkz3bnU72ibPJQXjL"
    "Zw9iu9Pg9EMwDfk+gkvOWD5ue25A/bBNwUgyx6YAc7koTL7M61qLq6O16Bgw6K0MIB+MAHIMTNpaBgdqCCBpwX+bY5gD"
    "0/JmYcS0nRkny5MBtf2WNdi4kLi5uXhCrCyg9iruCJ/sT4eT2lXrIIqp3cewf3YxGp+IrrL0rHFfb8ozwf5GYr8+BigE"
    "bT0PrpMX1ii/woXtL5KXBBzklTEw/ruyrTq4HWvzlZvzudxP175/T8jCc8d/uDkvlmWWQeDi93mTGVYbtQmGVGJ66NoU"
    "whHUBeFViWfB1EdiyiTN5K7s6TRMMqCDSEAWxRide2cxCnWVsmRVnsHy9CIcOtgQIm8NZE7OnAx9b4BfOI18O+CN/Xkz"
    "xwpvNs7JuA//f5jO3753bwbgOf8Xwu8KufTHn7dimBQGulkcxSDLNlF4tOG6Kx7QAnKAGOqpt0x4UFZJrWWRYeVYiQBw"
    "T5bSOvgCoNtCARBh2XLxunVKzIms+pYV47GkRIhUxMexysPLaypzLkDWbMisYbor+LQZXhEOnfL8DvYhB7YAbOCPQkJk"
    "EmX7cIoqXp9AFYXLEVHE8BVNY5yWCkOtmlTb+je1WQYyzKmRNN87wSGC0QXXs5lTahQnawR20VI4pWhSG5GxnZzMJzeD"
    "jX0UrPIxfH5JviH2pSHFk19ZGSx4+UjK2UEosJkyS+l7UA6+ITfIdyJJbo77r5T4zwb/deFfpFGHcnKRFSB0OFlgmqvI"
    "8I7yaKIudc1yJHdF8sCka5I7TFvlUgmWsaFbYD8UYYFaXJCtPqZIwrgM90WUQqmFmxtW10ErcjiPHMdbD6xOOIBKBeFt"
    "OaiFocxuAgbMCLAK9rm0A+NJ46waDJljipTY3FnbXXHwSDmHD6rL/BHgDYOfnCALaYTQsvRkJVMpHw4rJSdVuVdigh7z"
    "CAHJodrhI7XDKkERpDLvzUGYMUO2GAHgJ1aMNeSEYu2gWCtBa2PBciCCPheX3RCFASjviSjtTYtHHh4Cf0umMurpmuil"
    "eoYSJRCbQe8oCHIbMC/6yF2BsLyRpe+YYdQqK58RMkUrcBnoNijyKRRupgfUG3BTFwMMA03xR1FW/211q1VWbgiZpizD"
    "wWsiKB6dABMAZprDxwO9sl37BQGeTwKcPFDhzYptr4PV6ZVqXYeNwEt3TX34qZyVbJWaxWw68HwqKRNKaVGgL5X0zgqs"
    "H2CFSaEj7vzMJDxSLcWcpPS4ZsbY9PoiDmZHp9VFM7WYrMXVlWwAHZRi1dAtCnHRcwX19NaFvmkx08EOpK1sHOFPqLi8"
    "TY0ViD1mha2MNiKqshLC9mUaMxpI4XW7AaaARmFRdYjaloAwuJrkErQNQdLuZ3ZLJCnqD+CDnUlzN5wWHcbSoa+u4Sa5"
    "VCUfNio7RHdRP6m6C3OKKvWdR6iXoEn1w7fhQaD+UyN3/OcHB982y9JUYwD85YG+vZP0xYvGaTW4zpu9z2TaNzyXkpNu"
    "J0Ggsakq3X1w+pcpp38dOf2bx6El8uOkKn93pIazgguVZbK/YEXWNLbDAu6haSiaMppq/wDlEiXw"
)


def _fixture(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def _check_pandas2_values(v: dict[str, Any]) -> None:
    """The pandas 2 fixtures hold these values (built there as written here)."""
    df = v["frame"]
    assert list(df.columns) == ["i", "f", "s", "dt", "tz", "cat", "b", "n"]
    assert list(df.index) == [10, 20, 30] and df.index.name == "k"
    assert df["i"].tolist() == [0, 1, 2] and df["f"].tolist()[:2] == [1.0, 2.5]
    assert df["s"].tolist() == ["a", "b", "c"] and df["b"].tolist() == [True, False, True]
    # pandas 2 wrote nanoseconds; pandas 3 makes microseconds: compare in the old unit.
    want_dt = pd.date_range("2024-01-01", periods=3).as_unit("ns")
    pd.testing.assert_series_equal(df["dt"], pd.Series(want_dt, index=df.index, name="dt"))
    want_tz = pd.date_range("2024-01-01", periods=3, tz="Europe/Paris").as_unit("ns")
    assert str(df["tz"].dt.tz) == "Europe/Paris"
    assert (df["tz"].array == want_tz.array).all()
    assert df["cat"].tolist() == ["x", "y", "x"] and list(df["cat"].cat.categories) == ["x", "y"]
    assert df["n"].dtype == "Int64" and df["n"].isna().tolist() == [False, True, False]
    s = v["series"]  # pandas 2 strings are objects, pandas 3 ones a StringDtype
    assert (s.tolist(), s.index.tolist(), s.name) == ([1.5, 2.5], ["a", "b"], "x")
    pd.testing.assert_index_equal(v["range"], pd.RangeIndex(4))
    assert v["multi"].tolist() == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert v["multi"].names == ["l", "n"]
    pd.testing.assert_index_equal(
        v["dti"], pd.date_range("2024-01-01", periods=2, freq="D", tz="UTC").as_unit("ns")
    )
    assert v["ts"] == pd.Timestamp("2024-01-01 12:00", tz="Europe/Paris")
    assert str(v["ts"].tz) == "Europe/Paris"
    assert v["td"] == pd.Timedelta("1 day 2h") and v["period"] == pd.Period("2024-01", freq="M")
    assert list(v["cat"]) == ["a", "b", "a"] and v["nat"] is pd.NaT


@pytest.mark.parametrize(
    "text", [PANDAS_20_NUMPY_1_P2, PANDAS_23_NUMPY_2_P5], ids=["2.0-np1", "2.3-np2"]
)
def test_pandas2_pickles_load(text: str) -> None:
    _check_pandas2_values(load_pickle(_fixture(text)).value)


def test_pandas_pickles_import_through_migrate(tmp_path: Path) -> None:
    """A legacy core-manager checkpoint holding pandas 3 and pandas 2 pickles imports whole."""
    root = tmp_path / "ck"
    frame = _pandas3_objects()["frame"]
    LegacyCoreManager(root).save("frames_1", {"frame": frame, "old": None, "older": None})
    for key, text in (("old", PANDAS_23_NUMPY_2_P5), ("older", PANDAS_20_NUMPY_1_P2)):
        (root / "frames_1" / f"{key}.pkl.gz").write_bytes(gzip.compress(_fixture(text)))
    checksum = legacy_checksum(root / "frames_1")
    for path in (root / "registry.json", root / "frames_1" / "metadata.json"):
        doc = json.loads(path.read_text())
        doc.get("frames_1", doc)["checksum"] = checksum
        path.write_text(json.dumps(doc, indent=2))
    with ckptlite.open(tmp_path / "store", durability="none") as mgr:
        report = migrate(root, mgr, trust_pickle=True)
        (entry,) = report.entries
        assert entry.outcome == IMPORTED, entry.reason
        cp = mgr.get(entry.checkpoint_id or "")
        state = mgr.load(cp)
    assert set(cp.metadata["legacy_raw"]) == {"frame", "old", "older"}  # kept as pickles
    pd.testing.assert_frame_equal(load_pickle(state["frame"]).value, frame)
    _check_pandas2_values(load_pickle(state["old"]).value)
    _check_pandas2_values(load_pickle(state["older"]).value)
