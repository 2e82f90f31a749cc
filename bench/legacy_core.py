"""The legacy core checkpoint manager's save path (LEGACY_FORMATS.md §1), as a baseline.

Written from the format description, quirks included: one gzip level-9 pickle
per top-level key, a checksum over every file of the checkpoint directory,
``metadata.json`` written before ``registry.json``, and the whole registry
(indent 2) rewritten on every save, with plain non-atomic ``open('w')`` writes
and no fsync. Used only to time ckptlite against what it replaces (P7).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CheckpointMetadata:
    """The legacy record, field for field."""

    checkpoint_id: str
    timestamp: float
    level: str
    parent_id: str | None
    status: str
    data_files: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    checksum: str | None = None
    validation_checksum: str | None = None
    compressed: bool = True
    compression_type: str | None = "gzip"
    size_bytes: int = 0
    file_path: str = ""


class LegacyCoreManager:
    """registry.json + ``<id>/<key>.pkl.gz``, saved the legacy way."""

    def __init__(self, checkpoint_dir: Path, compress: bool = True) -> None:
        self.dir = checkpoint_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compress = compress
        self.registry_file = self.dir / "registry.json"
        self.registry: dict[str, CheckpointMetadata] = {}
        if self.registry_file.exists():
            with open(self.registry_file) as f:
                raw = json.load(f)
            self.registry = {k: CheckpointMetadata(**v) for k, v in raw.items()}

    def save_checkpoint(
        self,
        checkpoint_id: str,
        data: dict[str, Any],
        level: str = "step",
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CheckpointMetadata:
        """Save ``data`` (one file per top-level key) and rewrite the registry."""
        cdir = self.dir / checkpoint_id
        cdir.mkdir(parents=True, exist_ok=True)
        files: list[str] = []
        size = 0
        for key, value in data.items():
            if self.compress:
                path = cdir / f"{key}.pkl.gz"
                with gzip.open(path, "wb", compresslevel=9) as f:
                    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                path = cdir / f"{key}.pkl"
                with open(path, "wb") as f:
                    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            files.append(str(path.relative_to(self.dir)))
            size += path.stat().st_size
        record = CheckpointMetadata(
            checkpoint_id=checkpoint_id,
            timestamp=time.time(),
            level=level,
            parent_id=parent_id,
            status="created",
            data_files=files,
            metadata=dict(metadata or {}),
            checksum=self._checksum(cdir),
            compressed=self.compress,
            compression_type="gzip" if self.compress else None,
            size_bytes=size,
            file_path=str(cdir),
        )
        with open(cdir / "metadata.json", "w") as f:
            json.dump(asdict(record), f, indent=2)
        self.registry[checkpoint_id] = record
        self._save_registry()
        return record

    def load_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """Verify the directory checksum and unpickle every key."""
        record = self.registry[checkpoint_id]
        cdir = self.dir / checkpoint_id
        if self._checksum(cdir) != record.checksum:
            raise ValueError(f"checkpoint {checkpoint_id} corrupted")
        out: dict[str, Any] = {}
        for rel in record.data_files:
            path = self.dir / rel
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as f:
                out[Path(path.stem).stem if path.suffix == ".gz" else path.stem] = pickle.load(f)
        return out

    def _checksum(self, cdir: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(cdir.rglob("*")):
            if p.is_file() and p.name != "metadata.json":
                h.update(p.name.encode())
                h.update(p.read_bytes())
        return h.hexdigest()

    def _save_registry(self) -> None:
        try:
            with open(self.registry_file, "w") as f:
                json.dump({k: asdict(v) for k, v in self.registry.items()}, f, indent=2)
        except Exception:  # the legacy code swallowed registry save errors
            pass


def save_tile_checkpoint(path: Path, state: Any) -> None:
    """The legacy tile processor's save: one plain pickle (protocol 4), overwritten in place."""
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
