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
    {"errors", "types", "ids", "codec", "chunking", "_faults", "_paths", "_inputs"},
    {"blobs", "_sqlite", "_perthread"},
    {"backends"},
    {"manager", "process", "sync", "legacy", "policies", "runs", "_async", "config"},
    {"cli"},
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
            if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
                depth = node.level - (len(rel) - 1)  # levels above the package root
                target = node.module.split(".")[0] if depth >= 1 else rel[0]
                if depth < 1:
                    continue  # a sibling inside the same subpackage
                if _layer(target) > own:
                    bad.append(f"{'/'.join(rel)} imports {node.module}")
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
