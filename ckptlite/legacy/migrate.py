"""``migrate``: detect the legacy formats at a path or DSN and import every checkpoint once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .. import codec
from ..backends.base import dump_metadata
from ..errors import CkptliteError, InvalidInputError, LegacyFormatError, StoreError
from ..types import Checkpoint, Level, Status
from . import core, ledger, pipeline, postgres, script, tile, walk
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
    "NOT_LEGACY",
    "NO_FORMAT",
    "SKIPPED",
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
SKIPPED = "skipped"
NOT_LEGACY = "not legacy"
_OUTCOMES = (IMPORTED, ALREADY, WOULD_IMPORT, FAILED, SKIPPED, NOT_LEGACY)
#: The ``format`` of entries that are no legacy checkpoint (skipped or not legacy).
NO_FORMAT = "-"

#: What ``format=`` accepts: reader names, plus aliases.
_ALIASES = {"db": "postgres", "database": "postgres", "json": "pipeline", "pickle": "tile"}


@dataclass(frozen=True, slots=True)
class MigrationEntry:
    """What happened to one legacy checkpoint.

    ``outcome`` is ``imported``, ``already imported``, ``would import`` (dry run),
    ``failed``, ``skipped`` (something legacy-looking left unread) or ``not legacy``
    (looked at; no legacy checkpoint). ``reason`` says why it failed or was
    skipped, or why it came in CORRUPTED, CREATED or ARCHIVED.
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
        if self.outcome in (SKIPPED, NOT_LEGACY):
            return text + (f": {self.reason}" if self.reason else "")
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
        """True when nothing failed and nothing legacy was left unread (skipped)."""
        return self.count(FAILED) == 0 and self.count(SKIPPED) == 0

    def summary(self) -> list[str]:
        """Return the per-format counts as report lines."""
        lines = []
        for fmt, per in self.counts.items():
            if fmt == NO_FORMAT:
                continue
            parts = [f"{n} {outcome}" for outcome, n in per.items() if n]
            lines.append(f"{fmt}: " + ", ".join(parts))
        head = "dry run, nothing written: " if self.dry_run else ""
        total = ", ".join(f"{self.count(o)} {o}" for o in _OUTCOMES if self.count(o))
        n = sum(1 for e in self.entries if e.format != NO_FORMAT)
        lines.append(f"{head}{n} legacy checkpoints ({total or 'none'})")
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
    """Return the legacy formats found at ``source`` (a path or a PostgreSQL DSN), at any depth.

    Raises:
        LegacyFormatError: nothing legacy there.

    >>> detect_formats("postgresql://u@h/db")
    ('postgres',)
    """
    src = os.fspath(source)
    if postgres.detect(src):
        return ("postgres",)
    plan = walk.walk(Path(src))
    if plan.empty:
        raise _nothing_there(src)
    return plan.formats


def _nothing_there(src: str) -> LegacyFormatError:
    return LegacyFormatError(
        f"found no legacy checkpoints at {src}, at any depth",
        hint="Point at a folder holding legacy checkpoints (registry.json, <id>/metadata.json, "
        "checkpoint_*.json, a tile checkpoint file) or a postgresql:// DSN; or pass --format.",
        path=src,
    )


class _Target:
    """The store, opened on the first write when it was handed over as an opener.

    Lookups before that see an empty store: a migration in which everything
    failed creates nothing.
    """

    def __init__(self, target: CheckpointManager | Callable[[], CheckpointManager]) -> None:
        self.mgr: CheckpointManager | None = None
        self._open: Callable[[], CheckpointManager] | None = None
        if _is_manager(target):
            self.mgr = cast("CheckpointManager", target)
        else:
            self._open = cast("Callable[[], CheckpointManager]", target)
        self._index: dict[str, Checkpoint] | None = None

    def writable(self) -> CheckpointManager:
        if self.mgr is None:
            assert self._open is not None
            self.mgr = self._open()
        return self.mgr

    def index(self) -> dict[str, Checkpoint]:
        """Imported checkpoints by legacy key (and by the older releases' identity)."""
        if self._index is None:
            self._index = {}
            if self.mgr is not None:
                for cp in self.mgr.list():
                    for k in _keys_of(cp):
                        self._index.setdefault(k, cp)
        return self._index

    def find(self, cp: LegacyCheckpoint) -> Checkpoint | None:
        if self.mgr is None:
            return None
        if self.mgr.exists(cp.checkpoint_id):
            return self.mgr.get(cp.checkpoint_id)
        hit = self.index().get(cp.identity)
        if hit is None:
            hit = self.index().get(_old_key(cp.format, cp.metadata))
        if hit is not None and self.mgr.exists(hit.id):  # deleted since: import it again
            return self.mgr.get(hit.id)
        return None

    def remember(self, saved: Checkpoint) -> None:
        for k in _keys_of(saved):
            self.index().setdefault(k, saved)

    def latest(self, process_id: str, level: Level) -> Checkpoint | None:
        return None if self.mgr is None else self.mgr.latest(process_id, level)


def _is_manager(obj: Any) -> bool:
    return hasattr(obj, "backend") and hasattr(obj, "latest")


def _keys_of(cp: Checkpoint) -> list[str]:
    md = cp.metadata
    keys = [md["legacy_key"]] if isinstance(md.get("legacy_key"), str) else []
    fmt = md.get("legacy_format")
    if isinstance(fmt, str) and "legacy_id" in md:
        keys.append(_old_key(fmt, md))
    return keys


def _old_key(fmt: str, md: dict[str, Any]) -> str:
    """What identified an import made before legacy keys: format, legacy id and time."""
    fmt = "core" if fmt == "processor" else fmt
    return f"old\0{fmt}\0{md.get('legacy_id')}\0{jsonable(md.get('legacy_timestamp'))!r}"


def _order_of(cp: Checkpoint) -> float:
    order = cp.metadata.get("legacy_order")
    if isinstance(order, int | float) and not isinstance(order, bool):
        return float(order)
    return cp.created_at.timestamp()


def _read_plan(
    plan: walk.Plan, trust_pickle: bool, process_id: str | None, only: str | None
) -> Iterator[LegacyCheckpoint | ReadFailure]:
    def want(fmt: str) -> bool:
        return only is None or only == fmt or (only == "processor" and fmt == "core")

    for fmt, path, why in plan.failed:  # a checkpoint_*.json that does not parse
        if want(fmt):
            legacy_id = f"{path.parent.name}/{pipeline.stage_of(path)}"
            yield ReadFailure(fmt, legacy_id, str(path), why)
    if want("core"):
        for root, metas in sorted(plan.core_roots.items()):
            for item in core.scan(root, trust_pickle, metas):
                if only != "processor" or item.format == "processor":
                    yield item
    if want("pipeline"):
        for path in plan.pipeline:
            try:
                yield pipeline.checkpoint(path, path.parent.name, plan.docs.get(path))
            except LegacyFormatError as e:
                yield ReadFailure(
                    "pipeline", path.name, str(path), f"{type(e).__name__}: {e.message}"
                )
    if want("script"):
        for path in plan.script:
            doc, digest = plan.docs[path]
            yield script.checkpoint(path, doc, process_id or script.DEFAULT_PROCESS, digest)
    if want("tile"):
        for path in plan.tile:
            yield from tile.scan(path, trust_pickle, process_id)


def _forced(
    fmt: str, path: Path, trust_pickle: bool, process_id: str | None
) -> Iterator[LegacyCheckpoint | ReadFailure]:
    """Read one file as ``fmt``, whatever it looks like (``--format`` on a file)."""
    if fmt in ("core", "processor"):
        root = path.parent if path.name == "registry.json" else path
        yield from (i for i in core.scan(root, trust_pickle) if fmt == "core" or i.format == fmt)
    elif fmt == "pipeline":
        yield from pipeline.scan(path)
    elif fmt == "script":
        yield from script.scan(path, process_id)
    else:
        yield from tile.scan(path, trust_pickle, process_id)


def migrate(
    source: str | os.PathLike[str],
    target: CheckpointManager | Callable[[], CheckpointManager],
    *,
    format: str | None = None,
    dry_run: bool = False,
    trust_pickle: bool = False,
    process_id: str | None = None,
    on_entry: Callable[[MigrationEntry], None] | None = None,
) -> MigrationReport:
    """Import every legacy checkpoint at ``source`` into ``target``; return the report.

    ``source`` is a folder (walked at any depth: every folder and file is
    classified and reported), one file, or a PostgreSQL DSN; ``format`` keeps
    only that reader's checkpoints (``core``, ``processor``, ``pipeline``,
    ``script``, ``tile``, ``postgres``). Sources are only read. A legacy
    checkpoint is imported at most once however it is reached: its identity is
    its legacy id and the digest of its bytes (kept as ``legacy_key``). Imports
    go in legacy-time order, and one older than the newest checkpoint of its
    process and level comes in ARCHIVED (``legacy_superseded_by``), so ``latest``
    is what the legacy system's own latest was. A legacy checksum mismatch
    imports as CORRUPTED. Pickled payloads need ``trust_pickle=True``, and even
    then only allow-listed classes load. ``process_id`` names the process for the
    formats that have none (tile, script). ``dry_run`` reads and checks
    everything but writes nothing. ``target`` may be a zero-argument opener: it
    is called on the first write only. ``on_entry`` gets each entry as decided.

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
    store = _Target(target)
    if not dry_run and store.mgr is not None:
        store.mgr._refuse_write("import legacy checkpoints")
    src = os.fspath(source)
    only = _format_name(format) if format else None
    shown = _redact(src)
    entries: list[MigrationEntry] = []

    def report(entry: MigrationEntry) -> None:
        entries.append(entry)
        if on_entry is not None:
            on_entry(entry)

    items: Iterator[LegacyCheckpoint | ReadFailure]
    formats: tuple[str, ...]
    plan: walk.Plan | None = None
    if postgres.detect(src):
        if only not in (None, "postgres"):
            raise InvalidInputError(f"{src!r} is a DSN: only the postgres format reads it")
        items, formats = postgres.scan(src, trust_pickle), ("postgres",)
    elif only is not None and only != "postgres" and Path(src).is_file():
        items, formats = _forced(only, Path(src), trust_pickle, process_id), (only,)
    else:
        plan = walk.walk(Path(src))
        if plan.empty and only is None:
            raise _nothing_there(src)
        items = _read_plan(plan, trust_pickle, process_id, only)
        formats = (only,) if only else plan.formats
    found: list[LegacyCheckpoint] = []
    for item in items:
        if isinstance(item, ReadFailure):
            report(
                MigrationEntry(item.format, item.legacy_id, item.source, FAILED, reason=item.reason)
            )
        else:
            found.append(item)
    # Legacy-time order across every source and format: the newest is imported last.
    found.sort(key=lambda c: (c.order_key, c.identity))
    by_identity: dict[str, LegacyCheckpoint] = {}
    copies: list[LegacyCheckpoint] = []  # the same legacy checkpoint, reached again
    for c in found:
        if by_identity.setdefault(c.identity, c) is not c:
            copies.append(c)
    done: dict[str, MigrationEntry] = {}  # identity -> what happened to it
    for cp in sort_parents_first(by_identity.values()):
        entry = _import_one(store, cp, by_identity, done, dry_run)
        done[cp.identity] = entry
        report(entry)
    for cp in copies:
        first = done[cp.identity]
        why = f"the same legacy checkpoint as {first.source}"
        if first.outcome == FAILED:
            report(_entry(cp, FAILED, None, reason=f"{why}, which failed"))
        else:  # imported (or to be) once, under the first one's id
            report(_entry(cp, ALREADY, first.checkpoint_id, first.status, why))
    if plan is not None:
        base = Path(src)
        for path, why in plan.skipped:
            report(MigrationEntry(NO_FORMAT, _rel(path, base), str(path), SKIPPED, reason=why))
        for path, why in plan.not_legacy:
            report(
                MigrationEntry(
                    NO_FORMAT, _rel(path, base), str(path), NOT_LEGACY, reason=why or None
                )
            )
    return MigrationReport(shown, formats, dry_run, tuple(entries))


def _rel(path: Path, base: Path) -> str:
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
    return rel if rel != "." else str(path)


def _redact(source: str) -> str:
    """Hide a DSN's password: reports get printed and logged."""
    return re.sub(r"^([a-z]+://[^:/@]*:)[^@]*@", r"\1***@", source)


def _entry(
    cp: LegacyCheckpoint,
    outcome: str,
    cid: str | None,
    status: Status | None = None,
    reason: str | None = None,
) -> MigrationEntry:
    return MigrationEntry(
        cp.format, cp.legacy_id, cp.source, outcome, cid, cp.process_id, status, reason
    )


def _import_one(
    store: _Target,
    cp: LegacyCheckpoint,
    by_identity: dict[str, LegacyCheckpoint],
    done: dict[str, MigrationEntry],
    dry_run: bool,
) -> MigrationEntry:
    cid = cp.checkpoint_id
    have = store.find(cp)
    if have is not None:
        return _entry(cp, ALREADY, have.id, have.status)
    try:
        loaded = cp.load()
        record = _record(store, cp, cid, loaded, by_identity, done, dry_run)
    except CkptliteError as e:
        return _entry(cp, FAILED, cid, reason=f"{type(e).__name__}: {e.message}")
    except OSError as e:
        return _entry(cp, FAILED, cid, reason=f"cannot read: {e}")
    except Exception as e:  # one unreadable legacy checkpoint must not stop the others
        return _entry(cp, FAILED, cid, reason=f"cannot read: {type(e).__name__}: {e}")
    reason = loaded.corrupted or loaded.metadata.get("legacy_data_missing")
    if record.metadata.get("legacy_superseded_by"):
        reason = reason or f"older than {record.metadata['legacy_superseded_by']}, the latest"
    if dry_run:
        return _entry(cp, WOULD_IMPORT, cid, record.status, reason)
    target = store.writable()
    try:
        if cp.items:
            # Ledger first: marking done is idempotent, so a crash before the
            # checkpoint commits only makes the rerun mark the same items again.
            ledger.record_items(target, cp.process_id, cp.items)
        saved = _store(target, record, loaded.state)
    except InvalidInputError as e:
        if target.exists(cid):  # a concurrent migration got there first
            return _entry(cp, ALREADY, cid, target.get(cid).status)
        return _entry(cp, FAILED, cid, reason=f"{type(e).__name__}: {e.message}")
    except StoreError:
        raise  # the target itself is failing (disk full, locked): stop, a rerun resumes
    except CkptliteError as e:
        return _entry(cp, FAILED, cid, reason=f"{type(e).__name__}: {e.message}")
    store.remember(saved)
    return _entry(cp, IMPORTED, cid, record.status, reason)


def _record(
    store: _Target,
    cp: LegacyCheckpoint,
    cid: str,
    loaded: LegacyState,
    by_identity: dict[str, LegacyCheckpoint],
    done: dict[str, MigrationEntry],
    dry_run: bool,
) -> Checkpoint:
    status = loaded.status or cp.status
    if loaded.corrupted:
        status = Status.CORRUPTED
    metadata: dict[str, Any] = {
        "legacy_format": cp.format,
        **cp.metadata,
        **loaded.metadata,
        "legacy_key": cp.identity,
        "legacy_order": cp.order_key,
    }
    if status == Status.CORRUPTED and "legacy_corrupted" not in metadata:
        # Marked corrupted by the legacy system itself; the key keeps verify --full from
        # turning it VALID because ckptlite's own copy of the bytes verifies.
        metadata["legacy_corrupted"] = "the legacy record's status is 'corrupted'"
    if status == Status.VALID:
        newest = store.latest(cp.process_id, cp.level)
        if newest is not None and _order_of(newest) > cp.order_key:
            # The legacy system's latest was the newer one: never go back in time.
            status = Status.ARCHIVED
            metadata["legacy_superseded_by"] = newest.id
    parent_id = None
    parent = by_identity.get(cp.legacy_parent) if cp.legacy_parent else None
    if parent is not None:
        got = done.get(parent.identity)
        pid = got.checkpoint_id if got is not None and got.outcome != FAILED else None
        if pid is not None and (dry_run or (store.mgr is not None and store.mgr.exists(pid))):
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
