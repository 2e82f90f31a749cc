"""Build legacy checkpoints exactly as the five legacy systems wrote them (LEGACY_FORMATS.md).

These writers re-implement the legacy savers from the spec, quirks included; the
``Reference*`` readers re-implement the legacy loaders. Neither imports
``ckptlite.legacy``: the tests compare what ckptlite imported with what the
legacy code would have returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import time
import types
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# -- pickles that name the legacy project's classes -------------------------------


@contextlib.contextmanager
def fake_module(name: str, **attrs: Any) -> Iterator[types.ModuleType]:
    """Register a module (and its parents) in sys.modules only while pickling."""
    added = []
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod_name = ".".join(parts[:i])
        if mod_name not in sys.modules:
            sys.modules[mod_name] = types.ModuleType(mod_name)
            added.append(mod_name)
    mod = sys.modules[name]
    for k, v in attrs.items():
        setattr(mod, k, v)
    try:
        yield mod
    finally:
        for mod_name in reversed(added):
            del sys.modules[mod_name]


def project_class(module: str, qualname: str, **fields: Any) -> type:
    """Return a dataclass posing as ``module.qualname`` (a legacy project class)."""
    cls = dataclasses.make_dataclass(
        qualname, [(k, Any, field(default=v)) for k, v in fields.items()]
    )
    cls.__module__ = module
    cls.__qualname__ = qualname
    return cls


@dataclass
class ProcessingCheckpointSpec:
    """The tile processor's dataclass fields (pickled as src.base.tile_processor.*)."""

    timestamp: float
    completed_tiles: list[str]
    failed_tiles: list[str]
    total_tiles: int
    processing_parameters: dict[str, Any] = field(default_factory=dict)


def pickle_project_object(
    module: str, qualname: str, fields: dict[str, Any], protocol: int
) -> bytes:
    """Pickle an instance of a legacy project class the way the legacy code did."""
    cls = project_class(module, qualname, **{k: None for k in fields})
    obj = cls(**fields)
    with fake_module(module, **{qualname: cls}):
        return pickle.dumps(obj, protocol=protocol)


def tile_checkpoint_bytes(
    cp: ProcessingCheckpointSpec, module: str = "src.base.tile_processor"
) -> bytes:
    """Return a tile checkpoint file's bytes: plain protocol-4 pickle of the dataclass."""
    return pickle_project_object(module, "ProcessingCheckpoint", asdict(cp), protocol=4)


class Evil:
    """Unpickling this would run a shell command: the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


# -- system 1: the core checkpoint manager -----------------------------------------


def legacy_checksum(ckpt_dir: Path, skip_metadata: bool = True) -> str:
    """The legacy checksum, as written in the spec (sorted rglob, basename + bytes)."""
    h = hashlib.sha256()
    for p in sorted(ckpt_dir.rglob("*")):  # Python 3.11 sorts paths part by part
        if not p.is_file() or (skip_metadata and p.name == "metadata.json"):
            continue
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


CORE_FIELDS = (
    "checkpoint_id",
    "timestamp",
    "level",
    "parent_id",
    "status",
    "data_files",
    "metadata",
    "checksum",
    "validation_checksum",
    "compressed",
    "compression_type",
    "size_bytes",
    "file_path",
)


class LegacyCoreManager:
    """The legacy core manager's save path, quirks included."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _load_registry(self) -> dict[str, dict[str, Any]]:
        path = self.root / "registry.json"
        try:
            reg = json.loads(path.read_text())
            for rec in reg.values():
                if set(rec) - set(CORE_FIELDS):  # CheckpointMetadata(**d) raises: load as {}
                    return {}
            return dict(reg)
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_registry(self, reg: dict[str, dict[str, Any]]) -> None:
        with open(self.root / "registry.json", "w") as f:  # non-atomic, like the original
            json.dump(reg, f, indent=2)

    def save(
        self,
        checkpoint_id: str,
        data: dict[str, Any],
        *,
        level: str = "step",
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        compress: bool = True,
        early: bool = False,
        timestamp: float | None = None,
        gzip_mtime: float | None = None,
    ) -> dict[str, Any]:
        d = self.root / checkpoint_id
        d.mkdir(parents=True, exist_ok=True)  # same-second reuse overwrites in place
        files = []
        size = 0
        for key, obj in data.items():
            name = f"{key}.pkl.gz" if compress else f"{key}.pkl"
            path = d / name
            raw = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            if compress:
                # gzip.open writes FNAME <key>.pkl and the current time into the header.
                with (
                    open(path, "wb") as fh,
                    gzip.GzipFile(
                        filename=name[:-3], mode="wb", fileobj=fh, compresslevel=9, mtime=gzip_mtime
                    ) as gz,
                ):
                    gz.write(raw)
            else:
                path.write_bytes(raw)
            files.append(f"{checkpoint_id}/{name}")
            size += path.stat().st_size
        rec: dict[str, Any] = {
            "checkpoint_id": checkpoint_id,
            "timestamp": time.time() if timestamp is None else timestamp,
            "level": level,
            "parent_id": parent_id,
            "status": "created",
            "data_files": files,
            "metadata": metadata or {},
            "checksum": None,
            "validation_checksum": None,
            "compressed": compress,
            "compression_type": "gzip" if compress else None,
            "size_bytes": size,
            "file_path": str(d),
        }
        if early:
            for k in ("validation_checksum", "compression_type", "file_path"):
                del rec[k]
            # The early version wrote metadata.json first, then hashed everything in the dir.
            (d / "metadata.json").write_text(json.dumps(rec, indent=2))
            rec["checksum"] = legacy_checksum(d, skip_metadata=False)
        else:
            rec["checksum"] = legacy_checksum(d)
            (d / "metadata.json").write_text(json.dumps(rec, indent=2))
        reg = self._load_registry()
        reg[checkpoint_id] = rec
        with contextlib.suppress(OSError):  # registry save errors were swallowed
            self._save_registry(reg)
        return rec

    def validate(self, checkpoint_id: str) -> None:
        """validate_checkpoint: updates the registry only; metadata.json stays 'created'."""
        reg = self._load_registry()
        rec = reg[checkpoint_id]
        actual = legacy_checksum(self.root / checkpoint_id)
        rec["status"] = "valid" if actual == rec["checksum"] else "corrupted"
        rec["validation_checksum"] = actual
        self._save_registry(reg)


class _Stub:
    """The legacy loader's permissive find_class target for project classes."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state)


class PermissiveUnpickler(pickle.Unpickler):
    """What the legacy loaders needed: project classes mapped to a stub."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in ("src", "base", "processors"):
            return type(name, (_Stub,), {})
        return super().find_class(module, name)


def plain(obj: Any) -> Any:
    """Turn stubs into their ``__dict__`` recursively (how ckptlite stores them)."""
    if isinstance(obj, _Stub):
        return {k: plain(v) for k, v in vars(obj).items()}
    if type(obj) is dict:
        return {k: plain(v) for k, v in obj.items()}
    if type(obj) is list:
        return [plain(v) for v in obj]
    if type(obj) is tuple:
        return tuple(plain(v) for v in obj)
    return obj


def reference_unpickle(data: bytes) -> Any:
    return plain(PermissiveUnpickler(io.BytesIO(data)).load())


class ReferenceCoreLoader:
    """The legacy ``load_checkpoint``, from the spec (needs a registry entry; verifies)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry = LegacyCoreManager.__new__(LegacyCoreManager)
        self.registry.root = root

    def records(self) -> dict[str, dict[str, Any]]:
        return self.registry._load_registry()

    def load(self, checkpoint_id: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
        rec = record if record is not None else self.records()[checkpoint_id]
        if legacy_checksum(self.root / checkpoint_id) != rec["checksum"]:
            raise ValueError(f"Checkpoint {checkpoint_id} is corrupted")
        out = {}
        for rel in rec["data_files"]:
            path = self.root / rel
            key = Path(rel).stem.replace(".pkl", "")
            opener = gzip.open if rel.endswith(".gz") else open
            with opener(path, "rb") as f:
                out[key] = plain(PermissiveUnpickler(f).load())
        return out


# -- system 2: pipeline recovery JSON, and the script variant -----------------------


def write_pipeline_checkpoint(
    root: Path,
    experiment_id: str,
    stage: str,
    *,
    shared_data: dict[str, Any] | None = None,
    now: datetime | None = None,
    experiment_name: str = "exp",
    mtime: float | None = None,
) -> Path:
    """Save one stage the way the pipeline manager did: .tmp then rename, indent 2."""
    d = root / experiment_id
    d.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now()
    doc = {
        "experiment_id": experiment_id,
        "stage": stage,
        "timestamp": now.isoformat(),  # naive local time; .ffffff omitted at 0 us
        "completed_stages": [],
        "shared_data": shared_data or {},
        "metadata": {
            "experiment_name": experiment_name,
            "start_time": str(now.replace(microsecond=0)),
            "pipeline_version": "1.0.0",
            "resolution": 0.25,
        },
        "quality_metrics": {"coverage": 0.98},
        "stage_results": {stage: {"success": True, "metrics": {"n": 3}, "warnings": []}},
        "progress": {"completed_stages": 0, "stages": {}},
    }
    tmp = d / f"checkpoint_{stage}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, default=str)
    final = d / f"checkpoint_{stage}.json"
    tmp.rename(final)
    if mtime is not None:
        os.utime(final, (mtime, mtime))
    return final


def write_script_checkpoint(
    root: Path, stage: str, data: Any, *, now: datetime | None = None, elapsed: float = 1.5
) -> Path:
    """run_richness_analysis.py's ./checkpoint_<stage>.json (non-atomic)."""
    path = root / f"checkpoint_{stage}.json"
    with open(path, "w") as f:
        json.dump(
            {
                "stage": stage,
                "timestamp": (now or datetime.now()).isoformat(),
                "elapsed_time": elapsed,
                "data": data,
            },
            f,
            indent=2,
            default=str,
        )
    return path


def reference_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


# -- system 4: the pipeline_checkpoints table ---------------------------------------

LEGACY_DDL = """
CREATE TABLE IF NOT EXISTS pipeline_checkpoints (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    checkpoint_id VARCHAR(255) UNIQUE NOT NULL,
    level VARCHAR(50) NOT NULL CHECK (level IN ('pipeline', 'phase', 'step', 'substep')),
    parent_id VARCHAR(255),
    processor_name VARCHAR(255) NOT NULL,
    data_summary JSONB NOT NULL DEFAULT '{}',
    file_path TEXT NOT NULL,
    file_size_bytes BIGINT NOT NULL,
    compression_type VARCHAR(50),
    status VARCHAR(50) NOT NULL DEFAULT 'created'
        CHECK (status IN ('created', 'valid', 'corrupted', 'deleted')),
    validation_checksum VARCHAR(64),
    validation_result JSONB,
    error_message TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (parent_id) REFERENCES pipeline_checkpoints(checkpoint_id) ON DELETE CASCADE
);
CREATE INDEX idx_pipeline_checkpoints_processor ON pipeline_checkpoints(processor_name);
CREATE INDEX idx_pipeline_checkpoints_level ON pipeline_checkpoints(level);
CREATE INDEX idx_pipeline_checkpoints_status ON pipeline_checkpoints(status);
CREATE INDEX idx_pipeline_checkpoints_created ON pipeline_checkpoints(created_at);
"""


def new_uuid() -> str:
    return str(uuid.uuid4())


# -- comparing states ------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Deep equality that also compares types (tuple is not list) and numpy arrays."""
    if type(a) is not type(b):
        return False
    if type(a).__module__ == "numpy":
        import numpy as np

        if isinstance(a, np.ndarray):
            return bool(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))
        return bool(a.dtype == b.dtype and a == b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def tree_digest(*roots: Path) -> dict[str, str]:
    """Hash every file under ``roots`` (path -> sha256), to prove nothing changed."""
    out = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "<dir>"
    return out
