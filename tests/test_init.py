"""The public API is exactly ckptlite.__all__, sorted, and every name resolves."""

from __future__ import annotations

import ast
from pathlib import Path

import ckptlite

EXPECTED = [
    "ArchiveReport",
    "BackupReport",
    "Checkpoint",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointableProcess",
    "CkptliteError",
    "ConfigError",
    "CorruptCheckpointError",
    "ExportReport",
    "ForkedStoreError",
    "GcReport",
    "InvalidInputError",
    "ItemRecord",
    "LegacyFormatError",
    "Level",
    "MigrationEntry",
    "MigrationError",
    "MigrationReport",
    "MissingChunksError",
    "PickleNotAllowedError",
    "ReadOnlyStoreError",
    "ResumableProcess",
    "RetentionDecision",
    "RetentionReport",
    "Run",
    "RunNotFoundError",
    "RunRecord",
    "RunStatus",
    "Stage",
    "Status",
    "StorageConfig",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreLayoutError",
    "StoreLockedError",
    "SyncError",
    "SyncReport",
    "UnsafePickleError",
    "UnsupportedTypeError",
    "VerifyReport",
    "WorkItem",
    "__version__",
    "export_archive",
    "export_legacy",
    "generate_checkpoint_id",
    "get_checkpoint_manager",
    "import_archive",
    "migrate",
    "open",
    "parse_checkpoint_id",
    "sync",
]


def test_all_is_sorted_and_guarded() -> None:
    assert ckptlite.__all__ == sorted(ckptlite.__all__)
    assert ckptlite.__all__ == EXPECTED


def test_every_public_name_resolves() -> None:
    for name in ckptlite.__all__:
        assert getattr(ckptlite, name) is not None


# Layers, lowest first: a module may import only from its own layer or lower ones.
LAYERS = [
    {"errors", "types", "ids", "codec", "_codec_ext", "_codec_pandas", "_envelope", "chunking"}
    | {"_faults", "_paths", "_inputs"},
    {"blobs", "_blobfs", "_blob_upkeep", "_packs", "_sqlite", "_perthread"},
    {"backends"},
    {
        "manager",
        "_engine",
        "_upkeep",
        "process",
        "sync",
        "legacy",
        "compat",
        "policies",
        "runs",
        "_async",
        "config",
    },
    {"cli", "ui"},
]


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if module in names:
            return i
    return len(LAYERS) - 2  # new modules default to the manager layer


def test_imports_point_one_way() -> None:
    root = Path(ckptlite.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if rel == ("__init__.py",):
            continue
        own = _layer(rel[0].removesuffix(".py"))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            depth = node.level - (len(rel) - 1)  # levels above the package root
            if depth < 1:
                continue  # a sibling inside the same subpackage
            # ``from .x import y`` names module x; ``from . import x, y`` names x and y.
            targets = [node.module] if node.module else [a.name for a in node.names]
            for module in targets:
                if _layer(module.split(".")[0]) > own:
                    bad.append(f"{'/'.join(rel)} imports {module}")
    assert not bad, bad


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ckptlite; "
        "print(sorted(m for m in ('pickle', 'numpy', 'psycopg', 'ckptlite.legacy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The manager's users: the only modules that may import ckptlite.manager. Every other
# module is a helper of the manager (or below it) and is passed what it needs (a
# backend, a callable, a Protocol-typed object): no helper imports the manager back,
# not even under TYPE_CHECKING or inside a function.
MANAGER_USERS = {"__init__", "cli", "sync", "archive", "legacy", "compat", "ui"}


def _imported(rel: tuple[str, ...], tree: ast.AST) -> set[str]:
    """Return the top-level ckptlite modules that a module imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ckptlite" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "ckptlite":
                    continue
                rest = parts[1:]
            else:
                base = list(rel[:-1])[: len(rel) - node.level]  # the package it is relative to
                rest = base + (node.module.split(".") if node.module else [])
            if rest:
                found.add(rest[0])
            else:  # from ckptlite import manager / from . import get_checkpoint_manager
                for alias in node.names:
                    owner = getattr(getattr(ckptlite, alias.name, None), "__module__", "")
                    found.add("manager" if owner == "ckptlite.manager" else alias.name)
    return found


def test_no_helper_imports_the_manager_back() -> None:
    root = Path(ckptlite.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0].removesuffix(".py") in MANAGER_USERS | {"manager"}:
            continue
        if "manager" in _imported(rel, ast.parse(path.read_text())):
            bad.append("/".join(rel))
    assert not bad, f"helpers that import the manager back: {bad}"
    # ... and the users stay users: the manager imports none of them.
    manager_imports = _imported(("manager.py",), ast.parse((root / "manager.py").read_text()))
    assert not manager_imports & (MANAGER_USERS - {"__init__"}), manager_imports
