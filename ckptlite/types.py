"""Values shared by every layer: levels, statuses, checkpoint records and reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_HASH",
    "HASHES",
    "LEGACY_HASH",
    "SLOT_INDEX_KEY",
    "BackupReport",
    "Checkpoint",
    "GcReport",
    "ItemGroup",
    "ItemMark",
    "ItemRecord",
    "Level",
    "RunCounts",
    "RunOverview",
    "RunRecord",
    "RunStatus",
    "Status",
    "StorageConfig",
    "StoredChunk",
    "StoredRecord",
    "VerifyReport",
    "WorkerInfo",
    "WorkerRecord",
    "same_json_value",
]


#: Metadata key holding a checkpoint's 1-based position in its slot: taken by the
#: backend from the slot's counter in the save's own transaction (``commit(position=True)``),
#: so positions never repeat, whatever was deleted or which process saved.
SLOT_INDEX_KEY = "ckptlite.slot_index"

#: Digest algorithms a store may address its chunks and checksum its records with.
HASHES = ("blake3", "sha256")
#: The algorithm of a new store (about 3x SHA-256's speed per core).
DEFAULT_HASH = "blake3"
#: The algorithm of a store that records none: every store made before issue 14.
LEGACY_HASH = "sha256"


def same_json_value(have: Any, want: Any) -> bool:
    """Tell whether two JSON values are equal as PostgreSQL's jsonb compares them.

    Numbers by value at any depth (3 is 3.0), True is not 1, a string is not a
    number, objects whatever their key order, lists in order. Metadata filters
    (``ls --where``) mean this on every backend.

    >>> same_json_value({"a": [1, True]}, {"a": [1.0, True]}), same_json_value([1], [True])
    (True, False)
    """
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    if isinstance(have, int | float) and isinstance(want, int | float):
        return bool(have == want)
    if isinstance(have, list | tuple) and isinstance(want, list | tuple):  # a tuple is a list
        return len(have) == len(want) and all(map(same_json_value, have, want))
    if isinstance(have, dict) and isinstance(want, dict):
        return have.keys() == want.keys() and all(
            same_json_value(v, want[k]) for k, v in have.items()
        )
    return type(have) is type(want) and bool(have == want)


def _short(value: object) -> str:
    """Return a bounded repr: bytes by their size, long text cut (reprs reach logs)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > 80:
        return repr(value[:77] + "...")
    return repr(value)


class Level(StrEnum):
    """Where a checkpoint sits in a pipeline: PIPELINE > STAGE > STEP > SUBSTEP."""

    PIPELINE = "pipeline"
    STAGE = "stage"
    STEP = "step"
    SUBSTEP = "substep"


class Status(StrEnum):
    """Life of a checkpoint: only VALID ones are returned by ``latest``."""

    CREATED = "created"
    VALID = "valid"
    CORRUPTED = "corrupted"
    ARCHIVED = "archived"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An immutable checkpoint record (its state is loaded separately)."""

    id: str
    process_id: str
    level: Level
    name: str
    parent_id: str | None
    seq: int
    status: Status
    created_at: datetime
    size: int
    stored_size: int
    checksum: str
    metadata: dict[str, Any] = field(default_factory=dict)
    progress: tuple[int, int] | None = None

    def replace(self, **changes: Any) -> Checkpoint:
        """Return a copy with ``changes`` applied.

        Raises:
            TypeError: a change names no field.
        """
        return dataclasses.replace(self, **changes)

    def copy(
        self,
        *,
        seq: int | None = None,
        size: int | None = None,
        stored_size: int | None = None,
        checksum: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Return a copy with the fields a save or a read fills in changed (None: kept).

        The one fast copy: built directly, since ``dataclasses.replace`` costs twice
        as much, and a save makes two (its contents, then its seq).

        >>> cp = Checkpoint("c", "p", Level.STEP, "", None, 0, Status.VALID,
        ...                 datetime(2026, 1, 1), 0, 0, "")
        >>> cp.copy(seq=7).seq
        7
        """
        return Checkpoint(
            self.id,
            self.process_id,
            self.level,
            self.name,
            self.parent_id,
            self.seq if seq is None else seq,
            self.status,
            self.created_at,
            self.size if size is None else size,
            self.stored_size if stored_size is None else stored_size,
            self.checksum if checksum is None else checksum,
            self.metadata if metadata is None else metadata,
            self.progress,
        )


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One content-addressed chunk as a backend stores it.

    ``digest`` is the SHA-256 of the raw bytes; ``data`` is what is stored
    (zstd frame when ``codec == 1``, raw when ``codec == 0``).
    """

    digest: str
    size: int
    codec: int
    data: bytes | memoryview

    @property
    def stored_size(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (
            f"StoredChunk(digest={self.digest!r}, size={self.size}, codec={self.codec}, "
            f"data={_short(self.data)})"
        )


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A checkpoint as bytes: record, inline payload and chunk manifest.

    Backends store and return these without decoding ``payload`` or ``manifest``.
    """

    checkpoint: Checkpoint
    payload: bytes
    manifest: bytes
    digests: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"StoredRecord(checkpoint={self.checkpoint!r}, payload={_short(self.payload)}, "
            f"manifest={_short(self.manifest)}, digests=<{len(self.digests)} digests>)"
        )


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """How a manager opens its store (the seed plan's ``StorageConfig``)."""

    url: str
    durability: str = "safe"
    allow_pickle: bool = False
    chunk_size: int = 1 << 20
    compression_level: int = 1
    busy_timeout: float = 30.0
    group_access: bool = False
    readonly: bool = False  # reads only: nothing is written to the store
    #: Digest algorithm (``HASHES``): what a new store uses, what an existing one must
    #: use; None: blake3 for a new store, an existing one keeps its own.
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` found: ``ok`` is True when nothing is wrong."""

    checked: int
    corrupted: tuple[str, ...] = ()
    missing_chunks: tuple[str, ...] = ()
    orphan_chunks: tuple[str, ...] = ()
    full: bool = False
    orphan_packs: tuple[str, ...] = ()  # pack files no chunk row names (gc removes them)
    # Symlinks or foreign files where the store keeps its own (never followed).
    unsafe_paths: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.corrupted or self.missing_chunks or self.unsafe_paths)


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What ``backup`` copied: the new store's path and its totals."""

    dest: str
    checkpoints: int
    chunks: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class GcReport:
    """What ``gc`` removed (or would remove, with ``dry_run``).

    ``bytes_reclaimed`` is the drop in disk usage: chunk files, packs deleted, dead
    bytes cut or compacted out of packs, temp files (on PostgreSQL and in memory:
    the stored size of the chunk rows deleted). ``inline_bytes`` counts chunk rows
    deleted from a local store's database, whose space SQLite reuses for new rows
    (the file does not shrink). ``packs`` is ``deleted_packs`` + ``compacted_packs``.
    """

    chunks: tuple[str, ...] = ()
    temp_files: tuple[str, ...] = ()
    bytes_reclaimed: int = 0
    dry_run: bool = False
    packs: tuple[str, ...] = ()  # pack files deleted, or rewritten without their dead chunks
    deleted_packs: tuple[str, ...] = ()  # no live chunk: unlinked
    compacted_packs: tuple[str, ...] = ()  # mostly dead: live chunks moved to a new pack
    truncated_packs: tuple[str, ...] = ()  # a dead tail cut off in place
    inline_bytes: int = 0


class RunStatus(StrEnum):
    """Life of a pipeline run: RUNNING until it ends COMPLETED or FAILED."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a process, as the ledger stores it.

    ``seq`` orders runs by creation (assigned by the backend); ``changed`` is the
    ledger clock value of its last change (a high-water mark for sync).
    """

    id: str
    process_id: str
    status: RunStatus
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    progress: tuple[int, int] | None = None
    seq: int = 0
    changed: int = 0
    key: str | None = None  # the digest of mgr.run(key=...): the work the run does

    def replace(self, **changes: Any) -> RunRecord:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


class ItemMark(NamedTuple):
    """A done- or failed-mark for one work item, as the manager hands it to a backend.

    ``state`` is already encoded (backends store bytes); ``error`` is set when not ``ok``.
    A tuple, so a backend can bind it as SQL parameters as it is (field order is fixed).
    """

    group: str
    item_id: str
    ok: bool
    state: bytes | None = None
    error: str | None = None

    def __repr__(self) -> str:
        return (
            f"ItemMark(group={self.group!r}, item_id={self.item_id!r}, ok={self.ok}, "
            f"state={_short(self.state)}, error={_short(self.error)})"
        )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Who a worker of a shared run is: id (host, pid, random suffix), host, pid, node, lease.

    ``node`` names the machine and pid namespace, so that a worker's pid is only
    checked (is that process alive?) from the same node.
    """

    worker_id: str
    host: str
    pid: int
    node: str
    lease: float


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker of a run as the ledger stores it; ``live``: not left and lease unexpired."""

    run_id: str
    worker_id: str
    host: str
    pid: int
    node: str
    started_at: datetime
    beat_at: datetime
    live: bool
    left: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunCounts:
    """A run's work now: items done / failed / in claimed batches / pending, and the rest.

    ``claimed`` counts the items of batches a live worker holds (done ones excluded
    only when the batch closes); ``open_work`` counts item batches and begun stages
    not yet done; ``errors`` are the errors workers left with; ``others_live`` the
    live workers besides the one asking (0 when nobody asked).
    """

    done: int
    failed: int
    claimed: int
    pending: int
    open_work: int
    workers_live: int
    errors: tuple[str, ...] = ()
    others_live: int = 0


class ItemGroup(NamedTuple):
    """An item group registered in a run: its ids, cut into batches, and what is held.

    ``ids`` is None for a group registered by a ckptlite older than issue 17 (it
    kept a fingerprint of them only); ``held`` are the batches (``ids[seg *
    seg_size:(seg + 1) * seg_size]``) live workers hold, their lease not expired.
    """

    group: str
    ids: list[str] | None
    seg_size: int
    held: frozenset[int]


@dataclass(frozen=True, slots=True)
class RunOverview:
    """A run with its item counts now and its workers (what ``ckptlite runs`` shows)."""

    run: RunRecord
    counts: RunCounts
    workers: tuple[WorkerRecord, ...]


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One work item in the ledger: done (``ok``) or failed, with its attempt count.

    ``status`` is None for a ledger entry (done or failed, as ``ok`` says); a
    registered item with no mark is listed with ``"pending"`` or ``"claimed"``.
    """

    run_id: str
    group: str
    item_id: str
    ok: bool
    attempts: int
    error: str | None
    state: bytes | None
    changed: int
    status: str | None = None

    def __repr__(self) -> str:
        # Bounded: the state may be megabytes, and a repr lands in logs and tracebacks.
        return (
            f"ItemRecord(run_id={self.run_id!r}, group={self.group!r}, item_id={self.item_id!r}, "
            f"ok={self.ok}, attempts={self.attempts}, error={_short(self.error)}, "
            f"state={_short(self.state)}, changed={self.changed}"
            + (f", status={self.status!r})" if self.status else ")")
        )
