"""The Protocol every backend satisfies, and the helpers they share.

Backends store records and chunks as bytes. They never encode or decode a
state: that is the manager's work.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import msgpack
import zstandard

from ..errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
)
from ..types import (
    SLOT_INDEX_KEY,
    Checkpoint,
    GcReport,
    ItemGroup,
    ItemMark,
    ItemRecord,
    Level,
    RunCounts,
    RunRecord,
    RunStatus,
    Status,
    StoredChunk,
    StoredRecord,
    WorkerInfo,
    WorkerRecord,
    same_json_value,
)

__all__ = [
    "TAGS_KEY",
    "Backend",
    "BaseBackend",
    "ListQuery",
    "Staged",
    "StructureCheck",
    "add_stamp",
    "build_item_groups",
    "dump_metadata",
    "from_micros",
    "join_decision",
    "join_newest",
    "joined_group_size",
    "ledger_entry_wins",
    "load_metadata",
    "metadata_matches",
    "pack_ids",
    "same_value",
    "slot_stamps",
    "stamp_metadata_json",
    "start_position",
    "to_micros",
    "unpack_ids",
    "unstamped_json",
]


#: Metadata key holding a checkpoint's tags (a list of strings): ``save(tags=)``.
TAGS_KEY = "ckptlite.tags"


def start_position(top_stamp: Any, count: int) -> int:
    """Return the first position a slot's new counter gives: past every stamp there.

    A slot saved before counters existed (an older store) starts past its highest
    stamp and past its number of records, so no position is ever taken twice.
    """
    top = top_stamp if isinstance(top_stamp, int) and not isinstance(top_stamp, bool) else 0
    return max(top, count) + 1


def stamp_metadata_json(metadata: dict[str, Any], position: int) -> tuple[dict[str, Any], str]:
    """Return ``metadata`` with ``SLOT_INDEX_KEY`` set to ``position``, and as JSON text.

    Raises:
        InvalidInputError: metadata is not a JSON object of JSON values.
    """
    stamped = {**metadata, SLOT_INDEX_KEY: position}
    return stamped, dump_metadata(stamped)


def unstamped_json(metadata: dict[str, Any]) -> str:
    """Return ``metadata`` as JSON text without ``SLOT_INDEX_KEY``, for ``add_stamp``.

    Raises:
        InvalidInputError: metadata is not a JSON object of JSON values.
    """
    if SLOT_INDEX_KEY in metadata:
        metadata = {k: v for k, v in metadata.items() if k != SLOT_INDEX_KEY}
    return dump_metadata(metadata)


def add_stamp(text: str, position: int) -> str:
    """Return ``unstamped_json``'s text with the position added (no second encoding:
    a commit takes the position inside its transaction, which this keeps short)."""
    stamp = f'"{SLOT_INDEX_KEY}":{int(position)}}}'
    return "{" + stamp if text == "{}" else text[:-1] + "," + stamp


def slot_stamps(records: Iterable[Checkpoint]) -> dict[tuple[str, str, str], int]:
    """Return the highest position stamped on ``records``, by slot (what an import brings)."""
    top: dict[tuple[str, str, str], int] = {}
    for cp in records:
        stamp = cp.metadata.get(SLOT_INDEX_KEY)
        if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
            key = (cp.process_id, cp.level.value, cp.name)
            top[key] = max(top.get(key, 0), stamp)
    return top


def pack_ids(ids: Sequence[str]) -> bytes:
    """Return an item group's ids as stored: zstd of their msgpack list (1M ids: ~50 ms)."""
    return zstandard.ZstdCompressor(level=1).compress(msgpack.packb(list(ids)))


def joined_group_size(
    group: str, registered: tuple[int, str] | None, fingerprint: str, others: int
) -> int | None:
    """Return the batch size of a group other live workers already run, or None to register it.

    ``registered`` is the stored (batch size, fingerprint) of the group, if any. With no
    other live worker a group is registered afresh (a new cut of the ids).

    Raises:
        InvalidInputError: live workers run the group with other ids.

    >>> joined_group_size("g", (8, "ab"), "ab", 2), joined_group_size("g", (8, "ab"), "cd", 0)
    (8, None)
    """
    if registered is None or not others:
        return None
    if registered[1] != fingerprint:
        raise InvalidInputError(
            f"item group {group!r} is being worked on by other live workers with other item ids",
            hint="Every worker of a run must pass the same ids, in the same order, to run.items().",
        )
    return int(registered[0])


def build_item_groups(
    rows: Iterable[tuple[str, bytes | None, int]], held: Iterable[tuple[str, int]]
) -> builtins.list[ItemGroup]:
    """Return ``ItemGroup``s from (group, packed ids, batch size) rows and (group, batch) held.

    Raises:
        CorruptCheckpointError: a group's packed ids do not decode.
    """
    by_group: dict[str, set[int]] = {}
    for g, seg in held:
        by_group.setdefault(g, set()).add(int(seg))
    return [
        ItemGroup(
            g,
            None if ids is None else unpack_ids(ids, g),
            int(size),
            frozenset(by_group.get(g, ())),
        )
        for g, ids, size in rows
    ]


def unpack_ids(blob: bytes, group: str) -> builtins.list[str]:
    """Return the ids ``pack_ids`` stored.

    Raises:
        CorruptCheckpointError: the bytes are not such a list (a damaged store).
    """
    try:
        # A decompressobj allocates what it really produces, never a size the frame declares.
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(bytes(blob))
        ids = msgpack.unpackb(raw, raw=False)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as e:
        raise CorruptCheckpointError(
            f"the item ids of group {group!r} do not decode: {e}",
            hint="Run the group's items loop again (it registers the ids afresh).",
        ) from None
    if not isinstance(ids, list) or not all(type(i) is str for i in ids):
        raise CorruptCheckpointError(
            f"the item ids of group {group!r} are not a list of str",
            hint="Run the group's items loop again (it registers the ids afresh).",
        )
    return ids


def same_value(have: Any, want: Any) -> bool:
    """Tell whether two JSON values are equal as ``ListQuery.metadata`` compares them.

    As PostgreSQL's jsonb does (``types.same_json_value``): numbers as numbers at any
    depth (3 is 3.0), True is not 1, a string is not a number, objects in any key order.
    """
    return same_json_value(have, want)


def metadata_matches(
    metadata: dict[str, Any], wanted: Iterable[tuple[str, Any]], tags: Iterable[str]
) -> bool:
    """Tell whether ``metadata`` holds each wanted (key, value) and every tag."""
    own = metadata.get(TAGS_KEY)
    have = set(own) if isinstance(own, list) else set()
    if not set(tags) <= have:
        return False
    return all(k in metadata and same_value(metadata[k], v) for k, v in wanted)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Filters for ``Backend.list``; None means any. Results are newest (highest seq) first.

    ``metadata`` keeps checkpoints whose metadata holds each (key, JSON value)
    (``same_value``); ``tags`` those with every tag under ``TAGS_KEY``. ``limit``
    applies after every filter.
    """

    process_id: str | None = None
    level: Level | None = None
    name: str | None = None
    status: Status | None = None
    parent: str | None = None
    since: datetime | None = None
    limit: int | None = None
    after_seq: int | None = None  # for sync: only seq > after_seq, oldest first
    ascending: bool = False
    metadata: tuple[tuple[str, Any], ...] = ()
    tags: tuple[str, ...] = ()

    def matches(self, cp: Checkpoint) -> bool:
        """Tell whether ``cp`` passes every filter (used by in-process backends)."""
        return (
            (self.process_id is None or cp.process_id == self.process_id)
            and (self.level is None or cp.level == self.level)
            and (self.name is None or cp.name == self.name)
            and (self.status is None or cp.status == self.status)
            and (self.parent is None or cp.parent_id == self.parent)
            and (self.since is None or cp.created_at >= self.since)
            and (self.after_seq is None or cp.seq > self.after_seq)
            and (
                not (self.metadata or self.tags)
                or metadata_matches(cp.metadata, self.metadata, self.tags)
            )
        )


@dataclass(frozen=True, slots=True)
class StructureCheck:
    """What a backend finds without reading chunk contents."""

    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)  # id -> absent digests
    orphan_chunks: tuple[str, ...] = ()
    orphan_packs: tuple[str, ...] = ()  # local store: pack files no chunk row names
    unsafe_paths: tuple[str, ...] = ()  # local store: symlinks where its own files belong


class Staged:
    """Chunks one write group stored whose index rows wait for the save's commit.

    ``rows`` are backend-specific (empty where ``stage_chunks`` committed them at
    once). After the commit, ``release`` frees what holds the stored bytes (the
    local backend's open packs); when no row will name them, ``discard`` also
    takes the bytes back where it can. Either runs once; later calls do nothing.
    """

    __slots__ = ("_discard", "_release", "rows")

    def __init__(self, rows: Sequence[Any] = (), release: Any = None, discard: Any = None) -> None:
        self.rows = rows
        self._release, self._discard = release, discard

    def release(self) -> None:
        """Free what holds the staged bytes, which committed rows now name."""
        done, self._release, self._discard = self._release, None, None
        if done is not None:
            done()

    def discard(self) -> None:
        """Free the staged bytes: no committed row names them."""
        done, self._release, self._discard = self._discard or self._release, None, None
        if done is not None:
            done()


@runtime_checkable
class Backend(Protocol):
    """Where records and chunks live. Every method is safe to call from many threads."""

    url: str
    #: The store's digest algorithm (``types.HASHES``), which its chunk digests and record
    #: checksums were made with: recorded when the store was made ("sha256" where none
    #: is). Backends only keep it; the manager hashes.
    hash_name: str

    def write_chunks(self, chunks: Iterable[StoredChunk]) -> None:
        """Store chunks durably (skipping ones already present); a stream may be consumed lazily.

        A streamed chunk's ``data`` may be a view of a buffer the stream reuses for
        the next chunk: write or copy it before taking the next. Until a committed
        record references them, ``gc`` may reclaim them.

        Raises:
            StoreFullError, StoreIOError: nothing referencing them was committed.
        """

    def stage_chunks(self, chunks: Iterable[StoredChunk]) -> Staged:
        """Store chunks durably like ``write_chunks``; their index rows may wait for ``commit``.

        Pass the result to ``commit`` (which releases it) or release it. Until
        then the chunks may not count as stored for ``has_chunks``.

        Raises:
            StoreFullError, StoreIOError: nothing referencing them was committed.
        """

    def has_chunks(self, digests: Iterable[str]) -> set[str]:
        """Return the subset of ``digests`` that is stored."""

    def read_chunk(self, digest: str) -> StoredChunk:
        """Return a stored chunk (not yet verified).

        Raises:
            CorruptCheckpointError: the chunk is missing or unreadable as stored.
        """

    # -- optional capabilities (``BaseBackend`` gives each a correct default) -------

    #: Whether ``backup`` copies the store as files (local stores); False: it raises.
    supports_backup: bool
    #: Whether a run's item marks are committed off the item path, by a thread of the run
    #: (a commit is network round trips: PostgreSQL); False: by the thread marking.
    commits_in_background: bool

    def chunk_rows(self, digests: Iterable[str]) -> dict[str, Any]:
        """Return index rows of ``digests`` for ``read_chunk_into`` (default: none, ``{}``).

        A row is backend-specific; a digest without one is looked up by the read.
        A row is a hint: it may be a little stale (kept from an earlier load), and
        a chunk that fails its check is read again without one (``row=None``:
        looked up afresh), so ``read_chunk_into`` must never trust it for more.

        Raises:
            StoreIOError: the index cannot be read.
        """

    def read_chunk_into(self, digest: str, out: memoryview, row: Any = None) -> StoredChunk:
        """Return a stored chunk, its bytes read into ``out`` where the backend can.

        ``out`` is ``size`` bytes; the chunk's ``data`` is then ``out`` itself (not
        yet verified). ``row`` is the chunk's row from ``chunk_rows``, if known;
        without one, read afresh (nothing a backend keeps between reads).
        Default: ``read_chunk`` (``out`` unused; the caller restores into it).

        Raises:
            CorruptCheckpointError: the chunk is missing or damaged as stored.
            StoreIOError: the chunk cannot be read (permissions, the disk): not damage.
        """

    def chunk_equals(self, digest: str, view: memoryview) -> bool:
        """Tell, cheaply, whether stored chunk ``digest`` holds exactly ``view``'s bytes.

        False when it cannot tell cheaply (the default): the caller then hashes.
        Never raises: any failure answers False.
        """

    def mark_bad_chunks(self, digests: Iterable[str], replace: bool = False) -> None:
        """Flag chunks that failed verification, so the next save stores them again.

        ``replace`` clears the flags of every other chunk first (after a full verify).
        Default: nothing is flagged (a backend whose ``has_chunks`` never lies about
        damage needs no flags).

        Raises:
            StoreIOError, StoreLockedError: the flags could not be written.
        """

    def latest_record(
        self, process_id: str, level: Level | None, name: str | None
    ) -> StoredRecord | None:
        """Return the slot's latest VALID record with payload and manifest (or None).

        Default: ``latest`` then ``get_record``; backends may answer in one query.
        """

    def backup(self, dest: Any, progress: Any = None) -> None:
        """Copy the store as files into the new directory ``dest`` while it stays in use.

        ``progress(done, total)`` is called as files are copied.

        Raises:
            ConfigError: this backend has no file backup (``supports_backup`` is False).
            StoreLayoutError, StoreError: the copy could not be made.
        """

    def commit(
        self, record: StoredRecord, staged: Sequence[Staged] = (), *, position: bool = False
    ) -> Checkpoint:
        """Insert a record, with the index rows of ``staged``, atomically; return it with its seq.

        ``staged`` is released whatever happens. With ``position``, the record's
        metadata gets ``SLOT_INDEX_KEY``: the next value of its slot's counter, taken
        in the same transaction (``next_position``), so no two saves of a slot ever
        get the same position, in any process, whatever was deleted since.

        Raises:
            MissingChunksError: a referenced chunk is not stored (nothing committed).
            InvalidInputError: the id exists already, or the parent does not.
        """

    def get(self, checkpoint_id: str) -> Checkpoint:
        """Return one record.

        Raises:
            CheckpointNotFoundError: no such id.
        """

    def get_record(self, checkpoint_id: str) -> StoredRecord:
        """Return one record with its payload and manifest.

        Raises:
            CheckpointNotFoundError: no such id.
        """

    def has_records(self, ids: Iterable[str]) -> set[str]:
        """Return the subset of ``ids`` that is stored."""

    def latest(self, process_id: str, level: Level | None, name: str | None) -> Checkpoint | None:
        """Return the VALID record with the highest seq in the slot, or None."""

    def list(self, query: ListQuery) -> list[Checkpoint]:
        """Return the records that match ``query``."""

    def set_status(self, checkpoint_id: str, status: Status) -> None:
        """Change a record's status.

        Raises:
            CheckpointNotFoundError: no such id.
        """

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        """Delete a record and its descendants; return the ids deleted.

        Raises:
            CheckpointNotFoundError: no such id.
        """

    def iter_chunk_digests(self) -> Iterator[str]:
        """Yield every stored chunk's digest."""

    def checkpoints_using(self, digests: Iterable[str]) -> set[str]:
        """Return the ids of records that reference any of ``digests``."""

    def check(self) -> StructureCheck:
        """Find records whose chunks are absent, and chunks no record uses."""

    def gc(self, dry_run: bool = False) -> GcReport:
        """Remove chunks no record references, and dead temp files."""

    def stats(self) -> dict[str, Any]:
        """Return counts and byte totals (records, chunks, logical and stored bytes).

        Keys: checkpoints, chunks, logical_bytes, stored_bytes, by_process
        ({process: {level: count}}) and by_status ({status: count}).
        """

    def close(self) -> None:
        """Release connections and files; the backend is unusable afterwards."""

    # -- sync (used by ckptlite.sync; bytes only, nothing is decoded) ------------

    def store_id(self) -> str:
        """Return this store's unique id, made when the store was created."""

    def records_after(
        self, seq: int, limit: int, process_id: str | None = None
    ) -> builtins.list[StoredRecord]:
        """Return up to ``limit`` records with a seq above ``seq``, lowest seq first."""

    def sync_mark(self, source: str) -> int:
        """Return the source seq up to which records from ``source`` were imported (0: none)."""

    def sync_mark_id(self, source: str) -> str | None:
        """Return the id of the source's checkpoint at ``source``'s mark (None: not known)."""

    def import_records(
        self,
        records: Sequence[StoredRecord],
        source: str,
        mark: int,
        mark_id: str | None = None,
        *,
        reset: bool = False,
    ) -> int:
        """Insert the records this store lacks and move ``source``'s mark; return how many.

        One transaction: records keep id, created_at, status and checksum and get
        this store's next seqs, in the order given (parents first); ids already
        stored are skipped, so repeated or concurrent imports insert nothing twice;
        the mark for ``source`` becomes ``max(old, mark)``, and its id ``mark_id``
        (the source's checkpoint at seq ``mark``) when ``mark`` wins. ``reset``
        sets the mark to exactly ``(mark, mark_id)``, even backwards.

        Raises:
            MissingChunksError: a record references a chunk this store lacks (nothing committed).
            InvalidInputError: a parent is neither stored nor earlier in ``records``.
        """

    def export_ledger(
        self, after: int, process_id: str | None = None
    ) -> tuple[int, builtins.list[RunRecord], builtins.list[ItemRecord]]:
        """Return ``(clock, runs, entries)`` changed after ledger clock value ``after``.

        Read in one snapshot: ``clock`` is the ledger clock then, so every change
        up to it is included and the next export can start from it. ``runs`` also
        holds every run an entry belongs to, lowest seq first.
        """

    def import_ledger(
        self,
        runs: Sequence[RunRecord],
        items: Sequence[ItemRecord],
        source: str,
        mark: int,
    ) -> int:
        """Merge another store's runs and ledger entries; move ``source``'s mark; return writes.

        One transaction. A run new here is inserted in the order given (keeping
        creation order); a known one is replaced when the incoming ``updated_at``
        is later. Entries merge by ``ledger_entry_wins`` (a done-mark is never
        replaced). Rows written get this store's next ledger clock value.

        Raises:
            RunNotFoundError: an entry's run is neither stored nor in ``runs``.
        """

    # -- runs and the work-item ledger (bytes only: the manager encodes item states) --

    def create_run(self, run: RunRecord) -> RunRecord:
        """Insert a new run; return it with ``seq`` (creation order) and ``changed`` assigned.

        Raises:
            InvalidInputError: a run with this id exists already (nothing written).
        """

    def update_run(self, run: RunRecord) -> RunRecord:
        """Replace a run's status, updated_at, finished_at, error and progress.

        Returns the stored run with a new ``changed`` (ledger clock) value.

        Raises:
            RunNotFoundError: no run with ``run.id``.
        """

    def get_run(self, run_id: str) -> RunRecord:
        """Return one run.

        Raises:
            RunNotFoundError: no such run.
        """

    def list_runs(
        self,
        process_id: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[RunRecord]:
        """Return runs, newest (highest seq) first.

        With ``after_changed`` (for sync): only runs whose ``changed`` is above it,
        lowest ``changed`` first.
        """

    def mark_items(
        self,
        run_id: str,
        marks: Sequence[ItemMark],
        *,
        closing: Sequence[tuple[str, int]] = (),
        worker_id: str | None = None,
        unmarked: Sequence[tuple[str, int, int]] = (),
    ) -> int:
        """Record done- and failed-marks with their states, all in ONE transaction.

        A new item gets ``attempts=1``; an item marked failed before gets the new
        mark and ``attempts+1``; an item already done is left as it is (the first
        done-mark wins, so no item is ever recorded done twice). Marks of one call
        apply in order. Every item written gets the same new ledger clock value,
        which is returned. ``closing``: ``(group, batch)`` claims of ``worker_id``
        whose items are all marked, set done in the same transaction (a batch
        another worker holds now is left to it). ``unmarked``: ``(group, batch,
        n)``: ``n`` items of a batch ``worker_id`` holds are not marked once this
        commits (``run_counts`` counts them claimed; a batch not reported counts whole).

        Raises:
            RunNotFoundError: no such run (nothing written).
            StoreFullError, StoreIOError, StoreLockedError: nothing written.
        """

    def item_marks(self, run_id: str, group: str) -> tuple[set[str], dict[str, int]]:
        """Return ``(ids done, {failed id: attempts})`` for one group of a run.

        An unknown run or group has no marks: ``(set(), {})``. Must be fast: a
        group of 1,000,000 items is read in about a second.
        """

    def list_items(
        self,
        run_id: str,
        group: str | None = None,
        *,
        after_changed: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[ItemRecord]:
        """Return a run's ledger entries (with states), by (changed, group, item_id).

        ``after_changed`` keeps only entries written after that clock value (for sync).
        An unknown run has no entries.
        """

    # -- runs shared by many workers (claims with leases; see ckptlite.runs) ------------

    def join_run(
        self, fresh: RunRecord, key: str | None, worker: WorkerInfo | None, *, force: bool
    ) -> tuple[RunRecord, str]:
        """Atomically find the newest run of ``fresh.process_id`` (of ``key`` when given) and act.

        Acts as ``join_decision`` says: inserts ``fresh`` (with ``key``), joins, resumes
        (a failed run back to running, its old workers, batches and begun stages
        forgotten) or reuses; registers ``worker`` unless reused. Returns the run and
        the decision. Two workers calling this at once join one run.
        """

    def add_worker(self, run_id: str, worker: WorkerInfo, *, reset: bool = False) -> None:
        """Register ``worker`` in a run (``reset``: forget old workers, batches, begun stages).

        Raises:
            RunNotFoundError: no such run.
        """

    def heartbeat(self, run_id: str, worker_id: str) -> int:
        """Renew the leases of a worker and of what it holds; return the other live workers."""

    def reap_workers(self, run_id: str, worker_ids: Sequence[str]) -> None:
        """Expire workers known dead now: their claims return to the pool."""

    def list_workers(self, run_id: str) -> builtins.list[WorkerRecord]:
        """Return a run's workers, oldest first (``live`` by the store's clock)."""

    def register_group(
        self,
        run_id: str,
        group: str,
        *,
        total: int,
        seg_size: int,
        fingerprint: str,
        worker_id: str,
        ids: Sequence[str] | None = None,
    ) -> tuple[int, int]:
        """Register an item group cut into batches; return ``(batch size in use, others live)``.

        A worker alone in the run (re)registers the group afresh, keeping ``ids``
        (for ``item_groups``); joining workers adopt the registered batch size.

        Raises:
            InvalidInputError: other live workers registered other ids for the group.
        """

    def item_groups(self, run_id: str, group: str | None = None) -> builtins.list[ItemGroup]:
        """Return a run's registered item groups (or ``group`` alone), by name.

        Each with its ids (None when registered by an older ckptlite) and the
        batches held by live workers (lease not expired, not done).

        Raises:
            RunNotFoundError: no such run.
            CorruptCheckpointError: stored ids do not decode.
        """

    def claim_segments(
        self, run_id: str, group: str, worker_id: str, count: int, lease: float
    ) -> builtins.list[tuple[int, bool]]:
        """Claim up to ``count`` free batches (never held, let go, or their lease expired).

        Returns ``(batch, taken over)`` pairs, lowest first: taken over when the batch
        was held before (however it came back free: its holder may have committed some
        of its items). Never waits for a lock another worker holds.
        """

    def group_busy(self, run_id: str, group: str, worker_id: str) -> bool:
        """Tell whether batches of the group not done are held by other workers."""

    def release_segments(
        self, run_id: str, worker_id: str, group: str | None = None, segs: Sequence[int] = ()
    ) -> None:
        """Let go of a worker's claims not done (of ``segs`` of ``group``, or all)."""

    def marks_among(
        self, run_id: str, group: str, ids: Sequence[str]
    ) -> tuple[set[str], dict[str, int]]:
        """Return ``(ids done, {failed id: attempts})`` among ``ids``, as ``item_marks`` does.

        A worker taking a batch over reads what its last holder marked with this.
        """

    def claim_stage(
        self, run_id: str, name: str, worker_id: str, lease: float, *, seg: int = -1
    ) -> str:
        """Try to claim a stage: ``"claimed"``, ``"done"`` or ``"held"`` (by a live worker).

        ``seg``: the claim's slot, below 0: -1 a stage, -2 the run's PIPELINE checkpoint
        (named ``runs.PIPELINE_NAME``; a stage may have that name too).
        """

    def finish_stage(self, run_id: str, name: str, *, seg: int = -1) -> None:
        """Record a stage (or ``seg``) begun with ``claim_stage`` as done."""

    def leave_run(self, run_id: str, worker_id: str, error: str | None) -> RunCounts:
        """Mark a worker gone (releasing its claims) and return the run's counts, atomically.

        Items done are not counted (0): that would read the whole ledger.
        """

    def run_counts(self, run_id: str) -> RunCounts:
        """Return a run's counts of items and workers now."""


def join_decision(status: RunStatus | None, *, keyed: bool, force: bool) -> str:
    """Tell what ``mgr.run`` does with the newest run it found (status, or None if none).

    ``"create"`` a new run, ``"join"`` a running one, ``"resume"`` a failed one
    (back to running), or ``"reuse"`` a completed one of the same key.
    """
    if status is None:
        return "create"
    if status == RunStatus.RUNNING:
        return "join"
    if status == RunStatus.COMPLETED:
        return "reuse" if keyed and not force else "create"
    return "create" if force else "resume"


def join_newest(
    newest: RunRecord | None,
    *,
    keyed: bool,
    force: bool,
    create: Callable[[], RunRecord],
    resume: Callable[[RunRecord], RunRecord],
) -> tuple[RunRecord, str]:
    """Act on ``join_decision`` for the newest run found: one flow for every backend.

    ``create`` inserts the fresh run, ``resume`` sets a failed one running again;
    each backend passes its own, inside the transaction that found ``newest``.
    """
    how = join_decision(None if newest is None else newest.status, keyed=keyed, force=force)
    if how == "create":
        return create(), how
    assert newest is not None
    return (resume(newest) if how == "resume" else newest), how


class BaseBackend:
    """Defaults for a backend's optional capabilities: subclass it, override what you can do better.

    Every backend shipped here derives from it, so the manager and the state engine
    call each capability directly (never probe for it); ``ckptlite.testing`` checks
    each one on every backend. The defaults are correct, only slower.
    """

    url: str
    hash_name: str
    supports_backup: bool = False
    #: A run's item marks are committed by a thread of its own (a commit is round trips).
    commits_in_background: bool = False

    # The required methods these defaults build on (the Protocol documents them).
    def read_chunk(self, digest: str) -> StoredChunk:
        raise NotImplementedError

    def latest(self, process_id: str, level: Level | None, name: str | None) -> Checkpoint | None:
        raise NotImplementedError

    def get_record(self, checkpoint_id: str) -> StoredRecord:
        raise NotImplementedError

    def chunk_rows(self, digests: Iterable[str]) -> dict[str, Any]:
        """Return no rows: ``read_chunk_into`` looks each chunk up itself."""
        return {}

    def read_chunk_into(self, digest: str, out: memoryview, row: Any = None) -> StoredChunk:
        """Return ``read_chunk(digest)``; the caller restores its bytes into ``out``."""
        return self.read_chunk(digest)

    def chunk_equals(self, digest: str, view: memoryview) -> bool:
        """Answer False: the caller hashes the chunk."""
        return False

    def mark_bad_chunks(self, digests: Iterable[str], replace: bool = False) -> None:
        """Flag nothing."""

    def latest_record(
        self, process_id: str, level: Level | None, name: str | None
    ) -> StoredRecord | None:
        """Return ``get_record(latest(...).id)``; a record deleted in between is None."""
        cp = self.latest(process_id, level, name)
        if cp is None:
            return None
        try:
            return self.get_record(cp.id)
        except CheckpointNotFoundError:
            return None

    def backup(self, dest: Any, progress: Any = None) -> None:
        """Refuse: this kind of store has no file backup.

        Raises:
            ConfigError: always.
        """
        raise ConfigError(
            f"{self.url}: this kind of store cannot be backed up by ckptlite",
            hint="Use `ckptlite export ARCHIVE` (any store), or the database's own "
            "tools (pg_dump) for PostgreSQL.",
        )


def ledger_entry_wins(new_ok: bool, new_attempts: int, old: tuple[bool, int] | None) -> bool:
    """Tell whether an imported ledger entry replaces the stored ``(ok, attempts)`` (or None).

    Done beats failed; the first done-mark stays; of two failures, more attempts win.
    """
    if old is None:
        return True
    old_ok, old_attempts = old
    return not old_ok and (new_ok or new_attempts > old_attempts)


def to_micros(dt: datetime) -> int:
    """Return microseconds since the epoch for an aware datetime."""
    # An aware datetime subtracts from the epoch in any zone, without astimezone (~1 us
    # of every save); a naive one is taken as local time, as astimezone does.
    try:
        delta = dt - _EPOCH
    except TypeError:
        delta = dt.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    """Return the aware UTC datetime for microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# json.dumps with these arguments builds an encoder per call: ~1 us of every save.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dump_metadata(metadata: dict[str, Any]) -> str:
    """Serialise metadata as compact JSON.

    Raises:
        InvalidInputError: metadata is not a JSON object of JSON values (or of valid Unicode).
    """
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
    if not metadata:
        return "{}"
    try:
        text = _JSON.encode(metadata)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"metadata is not JSON: {e}",
            hint="Metadata holds JSON values only (str, int, float, bool, None, list, dict); "
            "put anything else in the state.",
        ) from e
    if not text.isascii():
        try:
            text.encode("utf-8")  # what the database does; a lone surrogate fails there
        except UnicodeEncodeError as e:
            raise InvalidInputError(
                f"metadata holds text that is not valid Unicode: {text[e.start : e.end]!r}",
                hint="Strings must be valid Unicode (no lone surrogates such as '\\ud800').",
            ) from None
    return text


def load_metadata(text: str | None) -> dict[str, Any]:
    """Parse metadata JSON (empty for None)."""
    return json.loads(text) if text and text != "{}" else {}
