"""``migrate``: detect the legacy formats at a path or DSN and import every checkpoint once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import codec
from ..backends.base import dump_metadata
from ..errors import CkptliteError, InvalidInputError, LegacyFormatError, StoreError
from ..types import Checkpoint, Status
from . import core, ledger, pipeline, postgres, script, tile
from ._common import (
    FORMATS,
    LegacyCheckpoint,
    LegacyState,
    ReadFailure,
    jsonable,
    sort_parents_first,
)

if TYPE_CHECKING:
    from ..manager import CheckpointManager

__all__ = [
    "ALREADY",
    "FAILED",
    "IMPORTED",
    "WOULD_IMPORT",
    "MigrationEntry",
    "MigrationReport",
    "detect_formats",
    "migrate",
]

IMPORTED = "imported"
ALREADY = "already imported"
WOULD_IMPORT = "would import"
FAILED = "failed"
_OUTCOMES = (IMPORTED, ALREADY, WOULD_IMPORT, FAILED)

#: What ``format=`` accepts: reader names, plus aliases.
_ALIASES = {"db": "postgres", "database": "postgres", "json": "pipeline", "pickle": "tile"}


@dataclass(frozen=True, slots=True)
class MigrationEntry:
    """What happened to one legacy checkpoint.

    ``outcome`` is ``imported``, ``already imported``, ``would import`` (dry run)
    or ``failed``; ``reason`` says why it failed, or why it came in CORRUPTED or
    ARCHIVED.
    """

    format: str
    legacy_id: str
    source: str
    outcome: str
    checkpoint_id: str | None = None
    process_id: str | None = None
    status: Status | None = None
    reason: str | None = None

    def line(self) -> str:
        """Return the entry as one human-readable report line."""
        text = f"{self.outcome:<16} {self.format:<9} {self.legacy_id}"
        if self.checkpoint_id and self.outcome != FAILED:
            status = f" ({self.status.value})" if self.status else ""
            text += f" -> {self.checkpoint_id}{status}"
        if self.reason:
            text += f": {self.reason}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-ready data (the CLI's ``--json`` schema)."""
        return {
            "format": self.format,
            "legacy_id": self.legacy_id,
            "source": self.source,
            "outcome": self.outcome,
            "checkpoint_id": self.checkpoint_id,
            "process_id": self.process_id,
            "status": self.status.value if self.status else None,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What a migration did (or, with ``dry_run``, would do): one entry per checkpoint."""

    source: str
    formats: tuple[str, ...]
    dry_run: bool
    entries: tuple[MigrationEntry, ...] = field(default=())

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Return ``{format: {outcome: n}}`` for every format met."""
        out: dict[str, dict[str, int]] = {}
        for e in self.entries:
            per = out.setdefault(e.format, dict.fromkeys(_OUTCOMES, 0))
            per[e.outcome] += 1
        return out

    def count(self, outcome: str) -> int:
        """Return how many entries had ``outcome``."""
        return sum(1 for e in self.entries if e.outcome == outcome)

    @property
    def ok(self) -> bool:
        """True when no checkpoint failed."""
        return self.count(FAILED) == 0

    def summary(self) -> list[str]:
        """Return the per-format counts as report lines."""
        lines = []
        for fmt, per in self.counts.items():
            parts = [f"{n} {outcome}" for outcome, n in per.items() if n]
            lines.append(f"{fmt}: " + ", ".join(parts))
        head = "dry run, nothing written: " if self.dry_run else ""
        total = ", ".join(f"{self.count(o)} {o}" for o in _OUTCOMES if self.count(o))
        lines.append(f"{head}{len(self.entries)} legacy checkpoints ({total or 'none'})")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "source": self.source,
            "formats": list(self.formats),
            "dry_run": self.dry_run,
            "ok": self.ok,
            "counts": self.counts,
            "entries": [e.to_dict() for e in self.entries],
        }


def _format_name(fmt: str) -> str:
    name = _ALIASES.get(fmt.lower(), fmt.lower())
    if name not in FORMATS:
        raise InvalidInputError(
            f"unknown legacy format {fmt!r}",
            hint="Use one of: " + ", ".join(FORMATS) + " (or leave it out to autodetect).",
        )
    return name


def detect_formats(source: str | os.PathLike[str]) -> tuple[str, ...]:
    """Return the legacy formats found at ``source`` (a path or a PostgreSQL DSN).

    A core-manager directory (``core``) also holds processor checkpoints; the
    pipeline manager shared that directory, so both can be found at one path.

    Raises:
        LegacyFormatError: nothing legacy there.

    >>> detect_formats("postgresql://u@h/db")
    ('postgres',)
    """
    src = os.fspath(source)
    if postgres.detect(src):
        return ("postgres",)
    path = Path(src)
    if not path.exists():
        raise LegacyFormatError(f"{path} does not exist", path=src)
    found: list[str] = []
    if path.is_file():
        if path.suffix == ".json":
            try:
                doc = pipeline.read_json(path)
            except LegacyFormatError:
                doc = None
            found.append("script" if script.is_script_doc(doc) else "pipeline")
        elif tile.sniff(path):
            found.append("tile")
    else:
        if core.detect(path):
            found.append("core")
        if pipeline.detect(path):
            found.append("pipeline")
        if script.detect(path):
            found.append("script")
        if tile.detect(path):
            found.append("tile")
    if not found:
        raise LegacyFormatError(
            f"found no legacy checkpoints at {path}",
            hint="Point at the legacy checkpoint directory (registry.json, <experiment>/"
            "checkpoint_*.json), a tile checkpoint file or a postgresql:// DSN; or pass --format.",
            path=src,
        )
    return tuple(found)


def _read(
    fmt: str, src: str, trust_pickle: bool, process_id: str | None
) -> Iterator[LegacyCheckpoint | ReadFailure]:
    if fmt == "postgres":
        yield from postgres.scan(src, trust_pickle)
        return
    path = Path(src)
    if not path.exists():
        raise LegacyFormatError(f"{path} does not exist", path=src)
    if fmt in ("core", "processor"):
        root = path.parent if path.name == "registry.json" else path
        for item in core.scan(root, trust_pickle):
            if fmt == "core" or item.format == "processor":
                yield item
    elif fmt == "pipeline":
        yield from pipeline.scan(path)
    elif fmt == "script":
        yield from script.scan(path, process_id)
    elif fmt == "tile":
        yield from tile.scan(path, trust_pickle, process_id)


def migrate(
    source: str | os.PathLike[str],
    target: CheckpointManager,
    *,
    format: str | None = None,
    dry_run: bool = False,
    trust_pickle: bool = False,
    process_id: str | None = None,
    on_entry: Callable[[MigrationEntry], None] | None = None,
) -> MigrationReport:
    """Import every legacy checkpoint at ``source`` into ``target``; return the report.

    ``source`` is a legacy directory or file, or a PostgreSQL DSN; ``format``
    forces a reader (``core``, ``processor``, ``pipeline``, ``script``, ``tile``,
    ``postgres``) instead of autodetection. Sources are only read. Each imported
    checkpoint keeps ``legacy_id`` and ``legacy_format`` in its metadata and gets
    an id derived from its legacy identity, so a rerun (or a run after a crash)
    imports nothing twice. A legacy checksum mismatch imports as CORRUPTED.
    Pickled payloads need ``trust_pickle=True``, and even then only allow-listed
    classes load. ``process_id`` names the process for the formats that have none
    (tile, script). ``dry_run`` reads and checks everything but writes nothing.
    ``on_entry`` is called with each entry as it is decided.

    Raises:
        LegacyFormatError: no legacy checkpoints at ``source``.
        InvalidInputError: unknown ``format``.
        ConfigError: a DSN, but psycopg is missing or the server is unreachable.
        ReadOnlyStoreError: ``target`` is open read-only (and not ``dry_run``).

    >>> import ckptlite, tempfile
    >>> with ckptlite.open("memory://") as mgr:
    ...     migrate(tempfile.mkdtemp(), mgr, format="pipeline").entries
    ()
    """
    if not dry_run:
        target._refuse_write("import legacy checkpoints")
    src = os.fspath(source)
    formats = (_format_name(format),) if format else detect_formats(src)
    shown = _redact(src)
    entries: list[MigrationEntry] = []

    def report(entry: MigrationEntry) -> None:
        entries.append(entry)
        if on_entry is not None:
            on_entry(entry)

    for fmt in formats:
        found: list[LegacyCheckpoint] = []
        for item in _read(fmt, src, trust_pickle, process_id):
            if isinstance(item, ReadFailure):
                report(
                    MigrationEntry(
                        item.format, item.legacy_id, item.source, FAILED, reason=item.reason
                    )
                )
            else:
                found.append(item)
        by_identity = {c.identity: c for c in found}
        for cp in sort_parents_first(found):
            report(_import_one(target, cp, by_identity, dry_run))
    return MigrationReport(shown, formats, dry_run, tuple(entries))


def _redact(source: str) -> str:
    """Hide a DSN's password: reports get printed and logged."""
    return re.sub(r"^([a-z]+://[^:/@]*:)[^@]*@", r"\1***@", source)


def _import_one(
    target: CheckpointManager,
    cp: LegacyCheckpoint,
    by_identity: dict[str, LegacyCheckpoint],
    dry_run: bool,
) -> MigrationEntry:
    cid = cp.checkpoint_id

    def entry(
        outcome: str, status: Status | None = None, reason: str | None = None
    ) -> MigrationEntry:
        return MigrationEntry(
            cp.format, cp.legacy_id, cp.source, outcome, cid, cp.process_id, status, reason
        )

    if target.exists(cid):
        return entry(ALREADY, target.get(cid).status)
    try:
        loaded = cp.load()
        record = _record(target, cp, cid, loaded, by_identity, dry_run)
    except CkptliteError as e:
        return entry(FAILED, reason=f"{type(e).__name__}: {e.message}")
    except OSError as e:
        return entry(FAILED, reason=f"cannot read: {e}")
    except Exception as e:  # one unreadable legacy checkpoint must not stop the others
        return entry(FAILED, reason=f"cannot read: {type(e).__name__}: {e}")
    reason = loaded.corrupted or loaded.metadata.get("legacy_data_missing")
    if dry_run:
        return entry(WOULD_IMPORT, record.status, reason)
    try:
        if cp.items:
            # Ledger first: marking done is idempotent, so a crash before the
            # checkpoint commits only makes the rerun mark the same items again.
            ledger.record_items(target, cp.process_id, cp.items)
        _store(target, record, loaded.state)
    except InvalidInputError as e:
        if target.exists(cid):  # a concurrent migration got there first
            return entry(ALREADY, target.get(cid).status)
        return entry(FAILED, reason=f"{type(e).__name__}: {e.message}")
    except StoreError:
        raise  # the target itself is failing (disk full, locked): stop, a rerun resumes
    except CkptliteError as e:
        return entry(FAILED, reason=f"{type(e).__name__}: {e.message}")
    return entry(IMPORTED, record.status, reason)


def _record(
    target: CheckpointManager,
    cp: LegacyCheckpoint,
    cid: str,
    loaded: LegacyState,
    by_identity: dict[str, LegacyCheckpoint],
    dry_run: bool,
) -> Checkpoint:
    status = loaded.status or cp.status
    if loaded.corrupted:
        status = Status.CORRUPTED
    metadata: dict[str, Any] = {"legacy_format": cp.format, **cp.metadata, **loaded.metadata}
    if status == Status.CORRUPTED and "legacy_corrupted" not in metadata:
        # Marked corrupted by the legacy system itself; the key keeps verify --full from
        # turning it VALID because ckptlite's own copy of the bytes verifies.
        metadata["legacy_corrupted"] = "the legacy record's status is 'corrupted'"
    parent_id = None
    parent = by_identity.get(cp.legacy_parent) if cp.legacy_parent else None
    if parent is not None:
        pid = parent.checkpoint_id
        if dry_run or target.exists(pid):
            parent_id = pid
        else:
            metadata["legacy_parent_missing"] = True  # its import failed: keep the link as data
    metadata = jsonable(metadata)  # legacy values may hold NaN, tuples, datetimes
    dump_metadata(metadata)  # raises InvalidInputError before anything is written
    return Checkpoint(
        id=cid,
        process_id=cp.process_id,
        level=cp.level,
        name=cp.name,
        parent_id=parent_id,
        seq=0,
        status=status,
        created_at=cp.created_at,
        size=0,
        stored_size=0,
        checksum="",
        metadata=metadata,
        progress=cp.progress,
    )


def _store(target: CheckpointManager, record: Checkpoint, state: Any) -> Checkpoint:
    # The manager's save makes a fresh id, status and time; an import keeps the
    # legacy ones, so it commits the record it built through the state engine.
    return target.engine.save(record, codec.encode(state))
