"""``export_legacy``: write a store's checkpoints back in a legacy format (the rollback path).

Each format is written as the legacy code wrote it and reads it:

- ``core``: ``<dest>/registry.json`` + ``<dest>/<id>/metadata.json`` + one
  gzip pickle per key, with the legacy checksum (imported checkpoints keep
  their legacy id, time, level, parent, status, metadata and gzip header time);
- ``pipeline``: ``<dest>/<experiment>/checkpoint_<stage>.json`` (``indent=2``),
  modification time set to the legacy one (``load_latest`` ranks by it);
- ``script``: ``<dest>/checkpoint_<stage>.json``;
- ``tile``: ``<dest>/<process>``, a protocol-4 pickle of
  ``src.base.tile_processor.ProcessingCheckpoint``;
- ``postgres``: rows of ``pipeline_checkpoints`` at a DSN.

Nothing is dropped silently: a checkpoint a format cannot hold is reported
``failed`` with the reason, one that belongs to another format or is replaced
by a newer one at the same place ``skipped``, and what a written one loses
(ckptlite's process, name, progress; a row's payload) is in its ``notes``.
Existing files are never overwritten with other content.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..types import Checkpoint, Status
from . import core
from ._export_common import (
    ALREADY,
    EXPORT_FORMATS,
    FAILED,
    FAMILY,
    LEGACY_LEVELS,
    OUTCOMES,
    SKIPPED,
    TILE_CLASS,
    WRITTEN,
    ExportEntry,
    legacy_id,
    redact,
)
from .tile import FIELDS

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = ["EXPORT_FORMATS", "ExportEntry", "ExportReport", "export_legacy"]


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote; ``ok`` when nothing failed."""

    format: str
    dest: str
    entries: tuple[ExportEntry, ...] = field(default=())

    def count(self, outcome: str) -> int:
        """Return how many entries had ``outcome``."""
        return sum(1 for e in self.entries if e.outcome == outcome)

    @property
    def ok(self) -> bool:
        """True when every checkpoint it tried to write is there."""
        return self.count(FAILED) == 0

    def summary(self) -> list[str]:
        """Return the counts as a report line."""
        parts = [f"{self.count(o)} {o}" for o in OUTCOMES if self.count(o)]
        lossy = sum(1 for e in self.entries if e.notes and e.outcome == WRITTEN)
        tail = f"; {lossy} with notes on what the format could not hold" if lossy else ""
        return [f"{self.format} -> {self.dest}: {', '.join(parts) or 'nothing to export'}{tail}"]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "format": self.format,
            "dest": self.dest,
            "ok": self.ok,
            "counts": {o: self.count(o) for o in OUTCOMES},
            "entries": [e.to_dict() for e in self.entries],
        }


def export_legacy(
    source: CheckpointManager,
    dest: str | os.PathLike[str],
    *,
    format: str,
    process_id: str | None = None,
    on_entry: Callable[[ExportEntry], None] | None = None,
) -> ExportReport:
    """Write ``source``'s checkpoints to ``dest`` in a legacy ``format``; return the report.

    ``format`` is ``core``, ``pipeline``, ``script``, ``tile`` or ``postgres``
    (``dest`` a DSN); ``process_id`` exports one process only. Checkpoints
    imported from the format (or its siblings) and native ones that fit are
    written; reading them back with ``migrate`` gives the same checkpoints.

    Raises:
        InvalidInputError: unknown format, or ``dest`` is not a DSN for postgres.
        ConfigError: psycopg is missing or the server is unreachable (postgres).

    >>> import ckptlite, tempfile
    >>> with ckptlite.open("memory://") as mgr:
    ...     _ = mgr.save("e1", {"stage": "merge", "n": 1}, level="stage", name="merge")
    ...     export_legacy(mgr, tempfile.mkdtemp(), format="pipeline").count("written")
    1
    """
    if format not in EXPORT_FORMATS:
        raise InvalidInputError(
            f"unknown legacy format {format!r}", hint="Use one of: " + ", ".join(EXPORT_FORMATS)
        )
    target = os.fspath(dest)
    entries: list[ExportEntry] = []

    def report(entry: ExportEntry) -> None:
        entries.append(entry)
        if on_entry is not None:
            on_entry(entry)

    cps = source.list(process_id=process_id) if process_id else source.list()
    cps.sort(key=lambda c: (_order(c), c.seq))  # oldest first: a newer one replaces it
    chosen: list[Checkpoint] = []
    for cp in cps:
        fmt = cp.metadata.get("legacy_format")
        if isinstance(fmt, str) and fmt not in FAMILY[format]:
            report(
                ExportEntry(
                    cp.id,
                    legacy_id(cp, format),
                    SKIPPED,
                    reason=f"imported from {fmt}: export it with --format {_home(fmt)}",
                )
            )
        else:
            chosen.append(cp)
    if format == "postgres":
        if not target.startswith(("postgresql://", "postgres://")):
            raise InvalidInputError(f"--format postgres writes rows: {target!r} is not a DSN")
        from .export_rows import write_rows

        for entry in write_rows(target, chosen):
            report(entry)
    else:
        for entry in _files(source, Path(target), format, chosen):
            report(entry)
    return ExportReport(format, redact(target), tuple(entries))


def _home(fmt: str) -> str:
    return "core" if fmt == "processor" else fmt


def _order(cp: Checkpoint) -> float:
    v = cp.metadata.get("legacy_order")
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return cp.created_at.timestamp()


def _num(md: dict[str, Any], key: str) -> float | None:
    v = md.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _files(
    source: CheckpointManager, dest: Path, format: str, cps: list[Checkpoint]
) -> Iterator[ExportEntry]:
    placed: dict[Path, tuple[Checkpoint, bytes | None]] = {}
    planned: list[tuple[Checkpoint, Path, dict[str, bytes], dict[str, Any], list[str]]] = []
    for cp in cps:
        lid = legacy_id(cp, format)
        try:
            state = source.load(cp)
            where, files, record, notes = _render(cp, lid, state, format, dest)
        except Exception as e:  # one checkpoint that does not fit must not stop the rest
            reason = getattr(e, "message", None) or str(e)
            yield ExportEntry(cp.id, lid, FAILED, reason=f"{type(e).__name__}: {reason}")
            continue
        if where in placed:  # one file (or folder) per legacy id: the newer one wins
            old = placed[where][0]
            yield ExportEntry(
                old.id,
                legacy_id(old, format),
                SKIPPED,
                reason=f"replaced by the newer {cp.id} (the format keeps one per place)",
            )
            planned = [p for p in planned if p[0].id != old.id]
        placed[where] = (cp, None)
        planned.append((cp, where, files, record, notes))
    registry: dict[str, Any] = {}
    for cp, where, files, record, notes in planned:
        lid = legacy_id(cp, format)
        try:
            outcome = _write(where, files, record, dest)
            if outcome == WRITTEN and not record:
                t = _num(cp.metadata, "legacy_mtime")
                t = t if t is not None else cp.created_at.timestamp()
                os.utime(where, (t, t))  # load_latest ranked pipeline files by it
        except (OSError, InvalidInputError) as e:
            yield ExportEntry(cp.id, lid, FAILED, str(where), f"cannot write: {e}")
            continue
        if record:
            registry[lid] = record
            if cp.status == Status.CORRUPTED and core.legacy_checksum(where) == record["checksum"]:
                # The damage was in bytes the import could not keep (e.g. trailing garbage).
                notes.append(
                    "its files match the legacy checksum again: the legacy loader reads it"
                )
        yield ExportEntry(cp.id, lid, outcome, str(where), notes=tuple(notes))
    if format == "core" and registry:
        _merge_registry(dest, registry)


def _render(
    cp: Checkpoint, lid: str, state: Any, format: str, dest: Path
) -> tuple[Path, dict[str, bytes], dict[str, Any], list[str]]:
    """Return (path, {relative file: bytes}, core record or {}, notes) for one checkpoint."""
    md = cp.metadata
    notes: list[str] = []
    if md.get("legacy_format") is None:
        notes.append(f"ckptlite process {cp.process_id!r} and name {cp.name!r} are not kept")
    if cp.progress is not None and format != "tile":
        notes.append("progress is not kept")
    if format == "core":
        return _render_core(cp, lid, state, dest, notes)
    if format == "tile":
        if not isinstance(state, dict) or not all(k in state for k in FIELDS[:4]):
            raise InvalidInputError("state is not a ProcessingCheckpoint's fields")
        return _inside(dest, cp.process_id), {"": tile_bytes(state)}, {}, notes
    flags = md.get("legacy_raw")
    if isinstance(state, bytes) and isinstance(flags, dict) and "document" in flags:
        raw = state  # a JSON document the codec could not hold: its original bytes
    else:
        if not isinstance(state, dict):
            raise InvalidInputError(
                f"a {format} checkpoint is a JSON object; state is {_tname(state)}"
            )
        text = json.dumps(state, indent=2, default=_refuse)
        raw = text.encode()
    if format == "pipeline":
        experiment = lid.split("/", 1)[0] if "/" in lid else cp.process_id
        return _inside(dest, f"{experiment}/checkpoint_{cp.name}.json"), {"": raw}, {}, notes
    return _inside(dest, f"checkpoint_{cp.name or lid}.json"), {"": raw}, {}, notes


def _refuse(obj: Any) -> Any:
    raise InvalidInputError(f"holds a {_tname(obj)}, which JSON cannot hold")


def _tname(obj: Any) -> str:
    return type(obj).__name__


def _inside(dest: Path, rel: str) -> Path:
    p = dest / rel
    if rel in ("", ".", "..") or not p.resolve().is_relative_to(dest.resolve()):
        raise InvalidInputError(f"{rel!r} would be written outside {dest}")
    return p


def _render_core(
    cp: Checkpoint, lid: str, state: Any, dest: Path, notes: list[str]
) -> tuple[Path, dict[str, bytes], dict[str, Any], list[str]]:
    md = cp.metadata
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InvalidInputError(
            f"the core format holds a dict of named values; state is {_tname(state)}"
        )
    where = _inside(dest, lid)
    ts = _num(md, "legacy_timestamp")
    timestamp = ts if ts is not None else cp.created_at.timestamp()
    old_files = md.get("legacy_data_files")
    compressed = bool(md.get("legacy_compressed", True))
    if isinstance(old_files, list) and old_files:
        compressed = str(old_files[0]).endswith(".gz")
    raw_flags = md.get("legacy_raw") if isinstance(md.get("legacy_raw"), dict) else {}
    gz_times = md.get("legacy_gzip_mtime") if isinstance(md.get("legacy_gzip_mtime"), dict) else {}
    files: dict[str, bytes] = {}
    names: list[str] = []
    for key, value in state.items():
        name = f"{key}.pkl.gz" if compressed else f"{key}.pkl"
        flag = raw_flags.get(key) if isinstance(raw_flags, dict) else None
        if isinstance(flag, dict) and isinstance(value, bytes) and flag.get("encoding") == "file":
            files[name] = value  # the on-disk bytes it was imported as
        else:
            if isinstance(flag, dict) and isinstance(value, bytes):
                data = value  # the original pickle, kept as bytes
            else:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            mtime = gz_times.get(key) if isinstance(gz_times, dict) else None
            files[name] = (
                _gzip(name[:-3], data, int(mtime if mtime is not None else timestamp))
                if compressed
                else data
            )
        names.append(f"{lid}/{name}")
    if md.get("legacy_classes"):
        notes.append("legacy project classes are written back as dicts")
    status = _core_status(cp)
    level = md.get("legacy_level")
    meta = md.get("legacy_metadata")
    legacy_meta = dict(meta) if isinstance(meta, dict) else {}
    if md.get("legacy_format") is None:
        legacy_meta.setdefault("processor_name", cp.process_id)
    parent = md.get("legacy_parent_id")
    record = {
        "checkpoint_id": lid,
        "timestamp": timestamp,
        "level": level if isinstance(level, str) else LEGACY_LEVELS[cp.level],
        "parent_id": parent if isinstance(parent, str) else None,
        "status": status,
        "data_files": names,
        "metadata": legacy_meta,
        "checksum": None,
        "validation_checksum": None,
        "compressed": compressed,
        "compression_type": "gzip" if compressed else None,
        "size_bytes": sum(len(b) for b in files.values()),
        "file_path": str(where),
    }
    if cp.status == Status.CORRUPTED and isinstance(md.get("legacy_checksum"), str):
        record["checksum"] = md["legacy_checksum"]  # still does not match: still corrupted
    return where, files, record, notes


def _core_status(cp: Checkpoint) -> str:
    legacy = cp.metadata.get("legacy_status")
    if legacy in ("created", "valid", "corrupted"):
        return str(legacy)  # a mismatch ckptlite found stays one through the checksum
    return "corrupted" if cp.status == Status.CORRUPTED else "created"


def _gzip(fname: str, data: bytes, mtime: int) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=fname, mode="wb", fileobj=buf, compresslevel=9, mtime=mtime) as gz:
        gz.write(data)
    return buf.getvalue()


class _TileStandIn:
    """Pickles as the legacy ``ProcessingCheckpoint`` (see :func:`tile_bytes`)."""


# The pure-Python pickler (byte-for-byte the C one's output) lets one global be renamed.
_PurePickler: Any = pickle._Pickler


class _TilePickler(_PurePickler):  # type: ignore[misc]
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _TileStandIn:
            self.save(TILE_CLASS[0])
            self.save(TILE_CLASS[1])
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def tile_bytes(fields: dict[str, Any]) -> bytes:
    """Return the tile processor's file: a protocol-4 pickle of its dataclass with ``fields``."""
    obj = _TileStandIn()
    obj.__dict__.update({k: fields[k] for k in FIELDS if k in fields})
    obj.__dict__.setdefault("processing_parameters", {})
    buf = io.BytesIO()
    _TilePickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def _write(where: Path, files: dict[str, bytes], record: dict[str, Any], dest: Path) -> str:
    """Write one checkpoint atomically; an identical one in place is ``already there``."""
    dest.mkdir(parents=True, exist_ok=True)
    where.parent.mkdir(parents=True, exist_ok=True)
    if not record:  # one file
        data = files[""]
        if where.exists():
            if where.read_bytes() == data:
                return ALREADY
            raise InvalidInputError(f"{where} exists with other content: not overwritten")
        fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=".ckptlite-export-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, where)
        return WRITTEN
    tmpdir = Path(tempfile.mkdtemp(dir=where.parent, prefix=".ckptlite-export-"))
    try:
        for name, data in files.items():
            (tmpdir / name).write_bytes(data)
        if record["checksum"] is None:
            record["checksum"] = core.legacy_checksum(tmpdir)
            if record["status"] == "valid":
                record["validation_checksum"] = record["checksum"]
        (tmpdir / "metadata.json").write_text(json.dumps(record, indent=2))
        if where.exists():
            same = core.legacy_checksum(where) == core.legacy_checksum(tmpdir)
            if same:
                return ALREADY
            raise InvalidInputError(f"{where} exists with other content: not overwritten")
        os.replace(tmpdir, where)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return WRITTEN


def _merge_registry(dest: Path, records: dict[str, Any]) -> None:
    reg_path = dest / "registry.json"
    registry: dict[str, Any] = {}
    if reg_path.is_file():
        try:
            loaded = json.loads(reg_path.read_text())
            registry = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            registry = {}
    registry.update(records)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".ckptlite-registry-")
    with os.fdopen(fd, "w") as f:
        json.dump(registry, f, indent=2)
    os.replace(tmp, reg_path)
