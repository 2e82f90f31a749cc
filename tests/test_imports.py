"""The package's imports point one way, and backend capabilities are declared, not probed.

Walks every module's source (``ast``): module-level and function-level imports
count, ``from . import x`` included; imports under ``if TYPE_CHECKING:`` are left
out (they never run: a type named for mypy is not a layer calling back up). A
cycle anywhere in ``ckptlite/`` fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ckptlite

ROOT = Path(ckptlite.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ["ckptlite", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _typing_only(tree: ast.AST) -> set[int]:
    """Return the ids of the nodes under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skip.update(id(n) for n in ast.walk(stmt))
    return skip


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Return the ckptlite modules ``name`` imports when it runs (not only for typing)."""
    tree = ast.parse(path.read_text())
    skip = _typing_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "ckptlite")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "ckptlite":
                prefix = node.module or ""
            else:
                continue
            for alias in node.names:
                sub = f"{prefix}.{alias.name}"
                out.add(sub if sub in modules else prefix)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_function_level_and_relative_imports() -> None:
    graph = _graph()
    # postgres imports _pg_import inside import_records; _local_chunks imports _packs.
    assert "ckptlite.backends._pg_import" in graph["ckptlite.backends.postgres"]
    assert "ckptlite._packs" in graph["ckptlite.backends._local_chunks"]
    assert "ckptlite._engine" in graph["ckptlite.manager"]
    # and finds a cycle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package() -> None:
    # The package root is the public facade: it imports everything, and a module
    # reading ``ckptlite.__version__`` from it is not a layer climbing back up.
    graph = {m: deps - {"ckptlite"} for m, deps in _graph().items() if m != "ckptlite"}
    assert _cycles(graph) == []


# A capability probe: getattr/hasattr on something backend-like, by name.
_PROBE = re.compile(r"\b(getattr|hasattr)\(\s*[\w.]*(backend|src|dst|target|source)\b")


def test_no_backend_capability_is_probed() -> None:
    """Optional backend methods are in the Protocol with defaults in BaseBackend: call them."""
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "backends" / "base.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _PROBE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bad == []


def test_the_probe_pattern_catches_the_old_probes() -> None:
    for line in (
        'latest = getattr(self.backend, "latest_record", None)',
        'if hasattr(mgr.backend, "backup"):',
        'mark = getattr(self.src, "mark_bad_chunks", None)',
        'equals = getattr(backend, "chunk_equals", None) if previous else None',
    ):
        assert _PROBE.search(line), line
