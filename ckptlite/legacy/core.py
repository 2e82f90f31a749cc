"""System 1: the legacy core checkpoint manager directory (``registry.json`` + per-id dirs).

Layout under ``<dir>``: ``registry.json`` (``{id: record}``), ``<id>/metadata.json``
(the record at save time) and ``<id>/<key>.pkl.gz`` (one gzip pickle per key).
The registry can be broken (the legacy loader then sees ``{}``) or stale (its
save errors were swallowed), so records come from both: the registry's when it
has one, else ``metadata.json``'s, whichever is newer when they disagree.

Records whose metadata names a ``processor`` are system 5's (see ``processor``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LegacyFormatError
from . import processor
from ._common import (
    LegacyCheckpoint,
    LegacyState,
    ReadFailure,
    from_epoch,
    identity,
    jsonable,
    keep_or_raw,
    map_level,
    read_bytes,
    unpickle,
)

__all__ = [
    "RECORD_FIELDS",
    "detect",
    "dir_identity",
    "legacy_checksum",
    "load_dir",
    "read_records",
    "scan",
]

#: ``CheckpointMetadata`` fields; a registry record with any other key breaks the legacy load.
RECORD_FIELDS = frozenset(
    {
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
    }
)
#: Fields early versions did not write; their checksum also covered metadata.json.
EARLY_MISSING = ("validation_checksum", "compression_type", "file_path")


def detect(path: Path) -> bool:
    """Tell whether ``path`` looks like a core-manager checkpoint directory."""
    return path.is_dir() and (
        (path / "registry.json").is_file() or any(path.glob("*/metadata.json"))
    )


def legacy_checksum(ckpt_dir: Path, *, skip_metadata: bool = True) -> str:
    """Return the legacy checksum of a checkpoint directory.

    sha256 over the directory's files in ``sorted(rglob('*'))`` order (Python 3.11
    compares paths part by part), each contributing its basename then its raw
    on-disk bytes; ``metadata.json`` is skipped unless ``skip_metadata`` is False
    (the early versions' algorithm). Stale files count too.
    """
    h = hashlib.sha256()
    files = [p for p in ckpt_dir.rglob("*") if p.is_file()]
    for p in sorted(files, key=lambda p: p.relative_to(ckpt_dir).parts):
        if skip_metadata and p.name == "metadata.json":
            continue
        h.update(p.name.encode("utf-8"))
        h.update(read_bytes(p))
    return h.hexdigest()


def read_records(
    root: Path, metas: list[Path] | None = None
) -> tuple[dict[str, tuple[dict[str, Any], str]], list[ReadFailure]]:
    """Return ``{legacy_id: (record, where)}`` from the registry and every metadata.json.

    ``where`` is ``"registry.json"`` or ``"metadata.json"``. ``metas`` names the
    checkpoint folders' ``metadata.json`` files (default: all below ``root``).
    Unreadable records are returned as failures, never skipped silently.
    """
    failures: list[ReadFailure] = []
    registry: dict[str, dict[str, Any]] = {}
    reg_path = root / "registry.json"
    if reg_path.is_file():
        try:
            loaded = json.loads(read_bytes(reg_path))
            if isinstance(loaded, dict):
                registry = {str(k): v for k, v in loaded.items() if isinstance(v, dict)}
                for k, v in loaded.items():
                    if not isinstance(v, dict):
                        failures.append(
                            ReadFailure(
                                "core", str(k), str(reg_path), "registry entry is not a record"
                            )
                        )
        except (ValueError, LegacyFormatError):
            registry = {}  # broken: fall back to the metadata.json files below
    found: dict[str, tuple[dict[str, Any], str]] = {
        k: (v, "registry.json") for k, v in registry.items()
    }
    # rglob: ids were used unsanitized as directory names, so "run/phase_1" is nested.
    for meta_path in sorted(root.rglob("metadata.json") if metas is None else metas):
        if meta_path.parent == root:
            continue
        dir_id = meta_path.parent.relative_to(root).as_posix()
        try:
            rec = json.loads(read_bytes(meta_path))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (ValueError, LegacyFormatError) as e:
            if dir_id not in found:
                failures.append(
                    ReadFailure("core", dir_id, str(meta_path), f"unreadable metadata.json: {e}")
                )
            continue
        legacy_id = dir_id  # where its files are, whatever the record says
        have = found.get(legacy_id)
        # metadata.json is written before registry.json: a crash between leaves it newer.
        if have is None or _newer(rec, have[0]):
            found[legacy_id] = (rec, "metadata.json")
    return found, failures


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ta, tb = a.get("timestamp"), b.get("timestamp")
    return isinstance(ta, int | float) and isinstance(tb, int | float) and ta > tb


def _age(item: tuple[str, tuple[dict[str, Any], str]]) -> tuple[float, str]:
    ts = item[1][0].get("timestamp")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return (float(ts), item[0])
    return (float("inf"), item[0])


def dir_identity(legacy_id: str, ckpt_dir: Path) -> str:
    """Return a core checkpoint's identity: its id and the digest of its data files.

    The digest is the legacy checksum (every file but ``metadata.json``), so a
    registry-only change (``validate_checkpoint``) is the same checkpoint, and a
    database row pointing at the folder finds it too.

    Raises:
        LegacyFormatError: a file is unreadable.
    """
    return identity(legacy_id, legacy_checksum(ckpt_dir))


def scan(
    root: Path, trust_pickle: bool, metas: list[Path] | None = None
) -> Iterator[LegacyCheckpoint | ReadFailure]:
    """Yield every checkpoint of a core-manager directory (systems 1 and 5)."""
    records, failures = read_records(root, metas)
    yield from failures
    keys: dict[str, str] = {}
    for legacy_id in records:
        try:
            keys[legacy_id] = dir_identity(legacy_id, _ckpt_dir(root, legacy_id))
        except (LegacyFormatError, OSError):
            continue  # reported below, when its checkpoint is built
    for legacy_id, (rec, where) in sorted(records.items(), key=_age):
        try:
            yield _checkpoint(root, legacy_id, rec, where, keys, trust_pickle)
        except LegacyFormatError as e:
            yield ReadFailure(
                "core", legacy_id, str(root / legacy_id), f"{type(e).__name__}: {e.message}"
            )
        except OSError as e:
            yield ReadFailure("core", legacy_id, str(root / legacy_id), f"cannot read: {e}")


def _checkpoint(
    root: Path,
    legacy_id: str,
    rec: dict[str, Any],
    where: str,
    keys: dict[str, str],
    trust_pickle: bool,
) -> LegacyCheckpoint:
    ckpt_dir = _ckpt_dir(root, legacy_id)
    if legacy_id not in keys:
        keys[legacy_id] = dir_identity(legacy_id, ckpt_dir)  # raises why it cannot
    ts = rec.get("timestamp")
    meta: dict[str, Any] = {
        "legacy_id": legacy_id,
        "legacy_timestamp": ts,
        "legacy_status": rec.get("status"),
        "legacy_record": where,
        "legacy_path": str(ckpt_dir),
    }
    try:
        created = from_epoch(ts)
    except LegacyFormatError:
        created = from_epoch((ckpt_dir / "metadata.json").stat().st_mtime)
        meta["legacy_timestamp_missing"] = True
    level, level_meta = map_level(rec.get("level", "step"))
    meta.update(level_meta)
    raw_meta = rec.get("metadata")
    legacy_meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    meta["legacy_metadata"] = jsonable(legacy_meta)
    extra = {k: v for k, v in rec.items() if k not in RECORD_FIELDS}
    if extra:
        meta["legacy_extra_fields"] = jsonable(extra)
    parent = rec.get("parent_id")
    legacy_parent = None
    if parent is not None:
        meta["legacy_parent_id"] = parent
        legacy_parent = keys.get(str(parent))
    fmt, process_id, name = processor.classify(legacy_id, legacy_meta)

    def load() -> LegacyState:
        return load_dir(ckpt_dir, rec, trust_pickle, base=root)

    return LegacyCheckpoint(
        format=fmt,
        legacy_id=legacy_id,
        source=str(ckpt_dir),
        process_id=process_id,
        level=level,
        name=name,
        created_at=created,
        identity=keys[legacy_id],
        load=load,
        metadata=meta,
        legacy_parent=legacy_parent,
        order=created.timestamp(),  # list_checkpoints ranked by the record's timestamp
    )


def _ckpt_dir(root: Path, legacy_id: str) -> Path:
    # Legacy ids were used unsanitized as directory names: never leave the root.
    d = root / legacy_id
    try:
        d.resolve().relative_to(root.resolve())
    except ValueError:
        raise LegacyFormatError(f"checkpoint id {legacy_id!r} points outside {root}") from None
    if legacy_id in ("", ".", "..") or not d.is_dir():
        raise LegacyFormatError(f"checkpoint directory {d} is missing")
    return d


def load_dir(
    ckpt_dir: Path, rec: dict[str, Any], trust_pickle: bool, base: Path | None = None
) -> LegacyState:
    """Verify a checkpoint directory against its record and load ``{key: value}``.

    A checksum mismatch does not stop the load: it is reported in ``corrupted``.
    Files that do not decompress or unpickle are kept as their raw bytes, flagged.

    Raises:
        PickleNotAllowedError: ``trust_pickle`` is False.
        UnsafePickleError: a pickle names a class outside the allow-list.
    """
    base = ckpt_dir.parent if base is None else base
    meta: dict[str, Any] = {"legacy_checksum": rec.get("checksum")}
    early = any(f not in rec for f in EARLY_MISSING)
    if early:
        meta["legacy_early_record"] = True
    corrupted = _verify(ckpt_dir, rec, early, meta)
    files = rec.get("data_files")
    if not isinstance(files, list):
        files = [str(p.relative_to(base)) for p in sorted(ckpt_dir.glob("*.pkl*"))]
        meta["legacy_data_files_guessed"] = True
    meta["legacy_data_files"] = [str(f) for f in files]
    state: dict[str, Any] = {}
    raw_flags: dict[str, Any] = {}
    classes: set[str] = set()
    missing: list[str] = []
    gz_headers: dict[str, int] = {}
    for rel in files:
        path = base / str(rel)
        key = Path(str(rel)).stem.replace(".pkl", "")
        try:
            if not path.resolve().is_relative_to(ckpt_dir.resolve()):
                # A record naming files outside its own directory is not trusted with them.
                raise LegacyFormatError(f"data file {rel!r} is outside {ckpt_dir}")
            on_disk = read_bytes(path)
        except LegacyFormatError:
            missing.append(str(rel))
            continue
        if on_disk[:2] == b"\x1f\x8b" and len(on_disk) >= 10:
            # The gzip header's time and flags: export-legacy writes the same bytes back.
            gz_headers[key] = int.from_bytes(on_disk[4:8], "little")
        try:
            data = _gunzip(on_disk)
        except (OSError, EOFError, zlib.error) as e:
            state[key] = on_disk
            raw_flags[key] = {"encoding": "file", "reason": f"does not decompress: {e}"}
            continue
        try:
            value, named = unpickle(data, trust_pickle, f"{path}")
        except LegacyFormatError as e:
            if type(e) is not LegacyFormatError:  # refused class: never kept silently
                raise
            state[key] = data
            raw_flags[key] = {"encoding": "pickle", "reason": e.message}
            continue
        classes.update(named)
        state[key] = keep_or_raw(key, value, data, raw_flags)
    if missing:
        meta["legacy_missing_files"] = missing
        corrupted = corrupted or f"data files missing: {', '.join(missing)}"
    if raw_flags:
        meta["legacy_raw"] = raw_flags
    if gz_headers:
        meta["legacy_gzip_mtime"] = gz_headers
    if classes:
        meta["legacy_classes"] = sorted(classes)
    if corrupted:
        meta["legacy_corrupted"] = corrupted
    return LegacyState(state, meta, corrupted)


def _gunzip(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    return data


def _verify(ckpt_dir: Path, rec: dict[str, Any], early: bool, meta: dict[str, Any]) -> str | None:
    expected = rec.get("checksum")
    if not isinstance(expected, str) or not expected:
        meta["legacy_checksum_verified"] = False
        return None
    if legacy_checksum(ckpt_dir) == expected:
        meta["legacy_checksum_verified"] = True
        return None
    # Early versions hashed metadata.json too.
    if early and legacy_checksum(ckpt_dir, skip_metadata=False) == expected:
        meta["legacy_checksum_verified"] = True
        meta["legacy_checksum_variant"] = "with metadata.json"
        return None
    meta["legacy_checksum_verified"] = False
    return "legacy checksum mismatch: the files changed after the checkpoint was saved"
