"""The checkpoint manager: the one place that encodes and decodes states.

A save is one straight line: ``save`` checks its arguments and encodes the state
(``codec``); ``_commit_encoded`` hands it to ``_store``, where ``_chunkio``, the one
module that moves bytes to the backend, writes the chunks and ``backend.commit``
commits the record; then ``_retention`` prunes the slot, after the commit. Helpers
(``_chunkio``, ``_retention``, ``_async``, ``runs``, ``process``) are passed what they
need (the backend, a callable, an object a Protocol describes) and never import
this module back: tests/test_init.py guards it.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from . import _async, _chunkio, _filters, _inputs, _items, _retention, chunking, codec
from . import config as _config
from ._paths import os_error, to_path
from ._stores import (
    check_options,
    check_policy,
    open_backend,
    resolve_url,
    store_is_read_only,
)
from .backends.base import Backend, ListQuery, dump_metadata
from .errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
    MissingChunksError,
    ReadOnlyStoreError,
)
from .ids import generate_checkpoint_id
from .policies import CheckpointPolicy, RetentionReport
from .process import ResumableProcess, resume_process, set_default_manager
from .runs import Run, open_run
from .types import (
    BackupReport,
    Checkpoint,
    GcReport,
    ItemRecord,
    Level,
    RunRecord,
    Status,
    StorageConfig,
    StoredRecord,
    VerifyReport,
)

__all__ = [
    "CheckpointManager",
    "get_checkpoint_manager",
    "open_store",
    "resolve_url",
    "store_is_read_only",
]

#: Chunk threads. Their work is half I/O (fsync waits on the disk), so more than the
#: cores: on 2 cores, 8 threads saved 64 MiB in 0.6x the time 2 threads took.
_POOL_THREADS = max(8, 2 * (os.cpu_count() or 2))
#: States with fewer buffer bytes are hashed outright: the lookup of the slot's latest
#: manifest (~0.5 ms) would eat most of what comparing instead of hashing saves.
_COMPARE_MIN = 4 << 20


def open_store(
    url: str | os.PathLike[str] | None = None,
    *,
    durability: str | None = None,
    allow_pickle: bool = False,
    chunk_size: int | None = None,
    compression_level: int | None = None,
    busy_timeout: float | None = None,
    group_access: bool | None = None,
    create: bool = True,
    policy: CheckpointPolicy | None = None,
    max_pending: int = 8,
    readonly: bool = False,
    hash: str | None = None,
) -> CheckpointManager:
    """Open (creating if needed) a checkpoint store and return its manager.

    ``url`` is a directory, ``file://DIR``, ``memory://`` or ``postgresql://...``;
    None means $CKPTLITE_URL, then $CKPTLITE_HOME, then the user data directory.
    Options left None come from the configuration (``ckptlite.config``: the
    ``ckptlite.toml`` file, then $CKPTLITE_* variables). ``create=False`` refuses
    to create a local store that does not exist yet. With a ``policy``, each
    save prunes its slot (``CheckpointPolicy``); ``max_pending`` bounds the
    ``save_async`` queue. ``readonly=True`` (local stores only) opens an
    existing store for reading and writes nothing to it, not even SQLite's
    ``-wal``/``-shm``: for a read-only mount, a snapshot, someone else's store.
    Every write then raises ReadOnlyStoreError, and ``load``/``verify`` report
    damage without marking anything. ``hash`` ("blake3" or "sha256") is the digest
    algorithm a new store addresses its chunks and checksums its records with
    (None: blake3); a store keeps the one it was made with.

    Raises:
        ConfigError: bad URL or option; no store there and ``create`` is False (or
            ``readonly``); ``readonly`` on memory:// or PostgreSQL; ``hash`` is not
            the algorithm of the existing store.
        MigrationError: the store was written by a newer ckptlite.
        ReadOnlyStoreError: the store is on a read-only disk or directory (and not
            ``readonly``).

    >>> import ckptlite
    >>> with ckptlite.open("memory://") as mgr:
    ...     cp = mgr.save("demo", {"x": 1})
    ...     mgr.load(cp.id)
    {'x': 1}
    """
    settings = _config.load()
    url = settings.url if url is None else url
    durability = settings.durability if durability is None else durability
    chunk_size = settings.chunk_size if chunk_size is None else chunk_size
    if compression_level is None:
        compression_level = settings.compression_level
    busy_timeout = settings.busy_timeout if busy_timeout is None else busy_timeout
    group_access = settings.group_access if group_access is None else group_access
    asked_hash = hash  # only an explicit hash= must match an existing store's
    hash = settings.hash if hash is None else hash
    flags = {
        "allow_pickle": allow_pickle,
        "create": create,
        "group_access": group_access,
        "readonly": readonly,
    }
    check_options(
        url,
        durability,
        chunk_size,
        compression_level,
        busy_timeout,
        flags,
        policy,
        max_pending,
        hash,
    )
    raw = os.fspath(url)
    config = StorageConfig(
        url=os.fsdecode(raw) if isinstance(raw, bytes) else raw,
        durability=durability,
        allow_pickle=allow_pickle,
        chunk_size=chunk_size,
        compression_level=compression_level,
        busy_timeout=busy_timeout,
        group_access=group_access,
        readonly=readonly,
        hash=hash,
    )
    backend = open_backend(config, create=create)
    if asked_hash is None:  # the setting names the digest of new stores, not a demand
        config = dataclasses.replace(config, hash=None)
    try:
        return CheckpointManager(backend, config, policy=policy, max_pending=max_pending)
    except BaseException:
        backend.close()
        raise


class CheckpointManager:
    """Save, load and find checkpoints in one store. Safe to share between threads."""

    def __init__(
        self,
        backend: Backend,
        config: StorageConfig,
        *,
        policy: CheckpointPolicy | None = None,
        max_pending: int = 8,
    ) -> None:
        self.backend = backend
        #: The store's digest algorithm, read once: chunk addresses and record checksums.
        self.hash_name: str = backend.hash_name
        if config.hash is not None and config.hash != self.hash_name:
            raise ConfigError(
                f"{backend.url} is a {self.hash_name} store, not {config.hash}: a store "
                "keeps the digest algorithm it was made with",
                hint=f"Open it without hash= (or with hash={self.hash_name!r}); to move its "
                f"checkpoints to a {config.hash} store, `ckptlite sync` them into a new one.",
            )
        self.config = dataclasses.replace(config, hash=self.hash_name)
        self.allow_pickle = config.allow_pickle
        #: Opened with ``readonly=True``: every write raises ReadOnlyStoreError.
        self.readonly = config.readonly
        self._pool: ThreadPoolExecutor | None = None
        self._landing = _chunkio.BufferPool()  # memory loads land in, reused
        self._pool_pid = os.getpid()
        self._pool_lock = threading.Lock()
        self._closed = False
        if policy is not None and not isinstance(policy, CheckpointPolicy):
            raise ConfigError(f"policy must be a CheckpointPolicy, not {policy!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"max_pending must be a positive int, not {max_pending!r}")
        self.policy = policy
        self.max_pending = max_pending
        self._async: _async.AsyncSaver | None = None

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CheckpointManager {self.backend.url}>"

    @property
    def url(self) -> str:
        return self.backend.url

    def _refuse_write(self, what: str) -> None:
        """Raise ReadOnlyStoreError if the store is open read-only (before any work)."""
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.url} is open read-only: cannot {what}")

    def close(self) -> None:
        """Finish pending work and release the store."""
        if self._closed:
            return
        saver, self._async = self._async, None
        pending_error: BaseException | None = None
        if saver is not None:
            try:
                saver.close()  # pending async saves are written before closing
            except BaseException as e:
                pending_error = e
        self._closed = True
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None
        self.backend.close()
        if pending_error is not None:
            raise pending_error

    def _executor(self) -> ThreadPoolExecutor:
        if self._closed:
            raise ConfigError("this checkpoint manager is closed", hint="Open a new one.")
        if self._pool_pid != os.getpid():
            # A parent thread may have held this lock at fork(): the child's copy
            # would stay held forever, so the child starts with a fresh one.
            self._pool_lock = threading.Lock()
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # A pool inherited across fork() has no threads: make a new one.
                self._pool = ThreadPoolExecutor(
                    max_workers=_POOL_THREADS, thread_name_prefix="ckptlite"
                )
                self._pool_pid = os.getpid()
            return self._pool

    # -- save -------------------------------------------------------------------

    def save(
        self,
        process_id: str,
        state: Any,
        *,
        level: Level | str = Level.STEP,
        name: str = "",
        parent: str | Checkpoint | None = None,
        metadata: dict[str, Any] | None = None,
        progress: tuple[int, int] | None = None,
        policy: CheckpointPolicy | None = None,
        tags: Sequence[str] | None = None,
    ) -> Checkpoint:
        """Save ``state`` as a new checkpoint of ``process_id`` and return its record.

        Raises:
            UnsupportedTypeError: the state holds a value with no encoding (store unchanged).
            InvalidInputError: bad process_id, name, level, parent, metadata or progress.
            StoreFullError, StoreIOError: the disk failed; nothing was committed.

        ``policy`` (default: the manager's) prunes the slot after the save. ``tags``
        (strings) are kept in the metadata; ``list(tags=)`` and ``ls --tag`` find them.

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> mgr.save("run", [1, 2], name="tile_0").name
        'tile_0'
        """
        self._refuse_write("save")
        check_policy(policy)
        cp = self._new_checkpoint(process_id, level, name, parent, metadata, progress, tags)
        encoded = codec.encode(state, allow_pickle=self.allow_pickle)
        return self._commit_encoded(cp, encoded, policy)

    def _new_checkpoint(
        self,
        process_id: str,
        level: Level | str,
        name: str,
        parent: str | Checkpoint | None,
        metadata: dict[str, Any] | None,
        progress: tuple[int, int] | None,
        tags: Sequence[str] | None = None,
    ) -> Checkpoint:
        # Every argument is checked here, before a chunk is written: a bad one must
        # leave the store unchanged, not orphan chunks of a save that then fails.
        _inputs.text(process_id, "process_id", empty=False)
        _inputs.text(name, "name")
        lvl = _inputs.level(level)
        if lvl is None:
            raise InvalidInputError(f"level must be a ckptlite.Level, not {level!r}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
        meta = dict(metadata or {})
        if tags is not None:
            meta[_filters.TAGS_KEY] = _filters.check_tags(tags)
        dump_metadata(meta)  # reject non-JSON (or non-Unicode) metadata before any write
        progress = _inputs.progress(progress)
        parent_id = parent.id if isinstance(parent, Checkpoint) else parent
        if parent_id is not None:
            _inputs.text(parent_id, "parent (a checkpoint id)")
        created = datetime.now(UTC)
        return Checkpoint(
            id=generate_checkpoint_id(lvl, now=created),  # one clock read: id time = created_at
            process_id=process_id,
            level=lvl,
            name=name,
            parent_id=parent_id,
            seq=0,
            status=Status.VALID,
            created_at=created,
            size=0,
            stored_size=0,
            checksum="",
            metadata=meta,
            progress=progress,
        )

    def _previous_manifest(
        self, cp: Checkpoint, encoded: codec.EncodedState
    ) -> chunking.Manifest | None:
        """Return the chunk manifest of the slot's latest checkpoint, for a big state.

        A state saved again mostly unchanged then compares its chunks with those
        (in the page cache) instead of hashing them; small states skip the lookup.
        """
        latest = getattr(self.backend, "latest_record", None)
        if latest is None or sum(b.nbytes for b in encoded.buffers) < _COMPARE_MIN:
            return None
        try:
            record = latest(cp.process_id, cp.level, cp.name)
            return chunking.unpack_manifest(record.manifest) if record else None
        except CorruptCheckpointError:
            return None  # a damaged manifest only costs the shortcut

    def _store(self, cp: Checkpoint, encoded: codec.EncodedState) -> Checkpoint:
        previous = self._previous_manifest(cp, encoded)
        payload = _chunkio.pack_payload(encoded.skeleton)
        for _attempt in range(5):
            manifest, written, staged = _chunkio.write_buffers(
                self.backend,
                self._executor(),
                encoded.buffers,
                self.config.chunk_size,
                self.config.compression_level,
                previous,
                encoded.itemsizes,
                algo=self.hash_name,
            )
            record = _record(cp, encoded.size, payload, manifest, written, self.hash_name)
            try:
                # One transaction: the chunk rows, the checkpoint, its refs.
                return self.backend.commit(record, staged)
            except MissingChunksError:
                # A concurrent gc reclaimed chunks we found present (or a load flagged
                # them bad): store the chunks again. Hashed again too, from the arrays
                # as they are now: rewriting the missing digests from arrays the caller
                # may have changed since could store other bytes under them.
                continue
        raise MissingChunksError(
            f"chunks of {cp.id} kept disappearing during save", digests=record.digests
        )

    # -- retention, async saves, processes and runs (thin: see _retention, _async,
    # -- process and runs) ------------------------------------------------------------

    def _prepare(
        self, process_id: str, state: Any, **record: Any
    ) -> tuple[Checkpoint, codec.EncodedState]:
        """Check a save's arguments and encode its state, as ``save`` does (for save_async)."""
        cp = self._new_checkpoint(process_id, **record)
        return cp, codec.encode(state, allow_pickle=self.allow_pickle)

    def _commit_encoded(
        self, cp: Checkpoint, encoded: codec.EncodedState, policy: CheckpointPolicy | None
    ) -> Checkpoint:
        """Store an encoded save, then prune its slot: the save path after encoding.

        Every save is stamped with its slot position, under the slot's lock until the
        commit; retention runs after the commit, on the slot just saved.

        Raises:
            StoreFullError, StoreIOError: the save failed; nothing was committed.
        """
        policy = policy or self.policy
        # Every save is stamped (policy or not): a later prune's keep_every needs
        # positions that do not move when older checkpoints are removed.
        with _retention.slot_lock(cp):
            saved = self._store(_retention.stamp_position(self.backend, cp), encoded)
            _retention.remember_position(self.backend, saved)
        if policy is not None:
            _retention.prune_slot(self.backend, policy, saved)  # logs, never raises
        return saved

    def save_async(
        self,
        process_id: str,
        state: Any,
        *,
        level: Level | str = Level.STEP,
        name: str = "",
        parent: str | Checkpoint | None = None,
        metadata: dict[str, Any] | None = None,
        progress: tuple[int, int] | None = None,
        policy: CheckpointPolicy | None = None,
        tags: Sequence[str] | None = None,
    ) -> Future[Checkpoint]:
        """Queue a save and return its future; the state is snapshotted before this returns.

        Blocks while ``max_pending`` saves are queued. A failure (an unsupported
        type, a full disk) is set on the future and raised again by ``flush()``.

        Raises:
            ConfigError: the manager is closed.
            ReadOnlyStoreError: the store is open read-only.

        >>> import ckptlite
        >>> with ckptlite.open("memory://") as mgr:
        ...     fut = mgr.save_async("run", {"step": 1})
        ...     mgr.flush()
        ...     mgr.load(fut.result().id)
        {'step': 1}
        """
        if self._closed:
            raise ConfigError("this checkpoint manager is closed", hint="Open a new one.")
        self._refuse_write("save")
        check_policy(policy)
        with self._pool_lock:
            if self._async is None:
                self._async = _async.AsyncSaver(
                    self._prepare, self._commit_encoded, self.max_pending
                )
            saver = self._async
        return saver.submit(
            process_id,
            state,
            policy=policy,
            level=level,
            name=name,
            parent=parent,
            metadata=metadata,
            progress=progress,
            tags=tags,
        )

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every ``save_async`` so far is written.

        Raises:
            CkptliteError (or the save's own error): the first save that failed since
                the last flush (a note counts the others).
            TimeoutError: saves are still pending after ``timeout`` seconds.
        """
        if self._async is not None:
            self._async.flush(timeout)

    def apply_retention(
        self,
        process_id: str | None = None,
        policy: CheckpointPolicy | None = None,
        dry_run: bool = False,
    ) -> RetentionReport:
        """Remove what ``policy`` (default: the manager's) does not keep; report why.

        Works slot by slot over one process, or the whole store; with ``dry_run``
        nothing is removed and the report tells what would be.

        Raises:
            InvalidInputError: no policy given and the manager has none.
            ReadOnlyStoreError: the store is open read-only (and not ``dry_run``).

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> for i in range(5):
        ...     _ = mgr.save("p", i)
        >>> len(mgr.apply_retention("p", ckptlite.CheckpointPolicy(keep_last=2)).removed)
        3
        """
        if not dry_run:
            self._refuse_write("remove checkpoints")
        return _retention.apply_retention(
            self.backend, _inputs.optional(process_id, "process_id"), policy or self.policy, dry_run
        )

    def resume_from(
        self,
        process: ResumableProcess,
        checkpoint_id: str | None = None,
        *,
        process_id: str | None = None,
        level: Level | str | None = None,
        name: str | None = None,
    ) -> Checkpoint | None:
        """Restore ``process`` from a checkpoint (default: its slot's newest loadable one).

        The slot is ``process_id`` / ``level`` / ``name``, defaulting to the process's
        ``process_id``, ``checkpoint_level`` and ``checkpoint_name`` attributes.
        Returns the checkpoint restored, or None when there is none (state untouched).

        Raises:
            CheckpointNotFoundError: ``checkpoint_id`` does not exist.
            CorruptCheckpointError: ``checkpoint_id`` fails verification.
            InvalidInputError: no process_id given and the process has none.
        """
        return resume_process(
            self, process, checkpoint_id, process_id=process_id, level=level, name=name
        )

    def run(
        self,
        process_id: str,
        *,
        resume: bool = True,
        run_id: str | None = None,
        batch_size: int = 1000,
        batch_seconds: float = 2.0,
        max_attempts: int = 3,
    ) -> Run:
        """Resume the newest unfinished run of ``process_id``, or start a new one.

        A newest run that COMPLETED starts a new run; ``resume=False`` always
        starts one; ``run_id`` reopens that run. See ``ckptlite.runs``.

        Raises:
            InvalidInputError: a bad argument, or ``run_id`` is another process's.
            RunNotFoundError: no run ``run_id``.
            ReadOnlyStoreError: the store is open read-only.

        >>> import ckptlite
        >>> with ckptlite.open("memory://") as mgr, mgr.run("job") as run:
        ...     stage = run.stage("load")
        ...     _ = stage.complete([1, 2]) if not stage.done else None
        ...     run.stage("load").result
        [1, 2]
        """
        self._refuse_write("start or resume a run")
        _inputs.text(process_id, "process_id", empty=False)
        if run_id is not None:
            _inputs.text(run_id, "run_id")
        return open_run(
            self,
            process_id,
            resume=resume,
            run_id=run_id,
            batch_size=batch_size,
            batch_seconds=batch_seconds,
            max_attempts=max_attempts,
        )

    def list_runs(self, process_id: str | None = None) -> builtins.list[RunRecord]:
        """Return the runs of one process (or all), newest first.

        Raises:
            InvalidInputError: ``process_id`` is not a str.
        """
        return self.backend.list_runs(_inputs.optional(process_id, "process_id"))

    def list_items(
        self, run_id: str, group: str | None = None, status: str | None = None
    ) -> builtins.list[ItemRecord]:
        """Return a run's work-item ledger entries, by group and item id.

        ``status`` is ``"done"`` or ``"failed"`` (see ``ckptlite._items``).

        Raises:
            RunNotFoundError: no such run.
            InvalidInputError: a bad argument.
        """
        _inputs.text(run_id, "run_id")
        return _items.list_items(
            self.backend,
            run_id,
            _inputs.optional(group, "group"),
            _inputs.optional(status, "status"),
        )

    def load_item(self, run_id: str, group: str, item_id: str) -> Any:
        """Return the result a done work item was marked with (``item.done(state)``).

        Raises:
            RunNotFoundError: no such run.
            CheckpointNotFoundError: no such item, or it failed (it has no result).
            PickleNotAllowedError: the result holds pickles and the store forbids them.
        """
        for value, what in ((run_id, "run_id"), (group, "group"), (item_id, "item_id")):
            _inputs.text(value, what)
        return _items.load_item(self.backend, run_id, group, item_id, self.allow_pickle)

    # -- read -------------------------------------------------------------------

    def get(self, checkpoint_id: str) -> Checkpoint:
        """Return a checkpoint's record.

        Raises:
            CheckpointNotFoundError: no such id.
            InvalidInputError: ``checkpoint_id`` is not a str.
        """
        return self.backend.get(_inputs.text(checkpoint_id, "checkpoint id"))

    def exists(self, checkpoint_id: str) -> bool:
        """Tell whether a checkpoint with this id is stored.

        Raises:
            InvalidInputError: ``checkpoint_id`` is not a str.
        """
        return bool(self.backend.has_records([_inputs.text(checkpoint_id, "checkpoint id")]))

    def load(self, checkpoint: str | Checkpoint) -> Any:
        """Return a checkpoint's state, with every byte verified.

        A checkpoint that fails verification is marked CORRUPTED, so ``latest``
        skips it from then on (not on a store open read-only: nothing is written).

        Raises:
            CheckpointNotFoundError: no such id.
            CorruptCheckpointError: stored bytes do not match their checksums.
            PickleNotAllowedError: the state holds pickles and allow_pickle is False.
            InvalidInputError: ``checkpoint`` is neither a Checkpoint nor a str.
        """
        cid = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
        _inputs.text(cid, "checkpoint id")
        record = self.backend.get_record(cid)
        try:
            return self._decode(record)
        except CorruptCheckpointError as e:
            if not self.exists(cid):  # deleted (and its chunks collected) mid-load
                raise CheckpointNotFoundError(
                    f"checkpoint {cid} was deleted while it was being loaded", checkpoint_id=cid
                ) from e
            self._mark_corrupted(record.checkpoint, e)
            raise CorruptCheckpointError(
                f"checkpoint {cid} is corrupted: {e.message}", **{**e.context, "checkpoint_id": cid}
            ) from e

    def _mark_corrupted(self, cp: Checkpoint, error: CorruptCheckpointError | None = None) -> None:
        if self.readonly:
            return  # damage is reported (raised, listed by verify), never recorded
        if cp.status == Status.VALID:
            with contextlib.suppress(CheckpointNotFoundError):
                self.backend.set_status(cp.id, Status.CORRUPTED)
        context = error.context if error else {}
        digests = context.get("digests") or ([context["digest"]] if "digest" in context else [])
        mark = getattr(self.backend, "mark_bad_chunks", None)
        if digests and mark is not None:
            mark(digests)  # the next save of the same bytes stores them again

    def _decode(self, record: StoredRecord) -> Any:
        cp = record.checkpoint
        if chunking.record_checksum(record.payload, record.manifest, self.hash_name) != cp.checksum:
            raise CorruptCheckpointError("record checksum does not match", checkpoint_id=cp.id)
        skeleton = _chunkio.unpack_payload(record.payload, cp.size)
        if record.manifest == chunking.EMPTY_MANIFEST:  # the common small state: no buffers
            return codec.decode(skeleton, [], allow_pickle=self.allow_pickle)
        manifest = chunking.unpack_manifest(record.manifest)
        if sum(chunking.buffer_sizes(manifest)) > cp.size:  # check before allocating
            raise CorruptCheckpointError("chunk manifest declares more than the recorded size")
        buffers = (
            _chunkio.read_buffers(
                self.backend, self._executor(), manifest, self._landing, algo=self.hash_name
            )
            if manifest
            else []
        )
        return codec.decode(skeleton, buffers, allow_pickle=self.allow_pickle)

    def latest(
        self, process_id: str, level: Level | str | None = None, name: str | None = None
    ) -> Checkpoint | None:
        """Return the newest VALID checkpoint of the slot (highest seq), or None.

        Raises:
            InvalidInputError: a bad process_id, level or name.
        """
        return self.backend.latest(
            _inputs.text(process_id, "process_id"),
            _inputs.level(level),
            _inputs.optional(name, "name"),
        )

    def load_latest(
        self, process_id: str, level: Level | str | None = None, name: str | None = None
    ) -> tuple[Checkpoint, Any] | None:
        """Return (checkpoint, state) of the newest loadable checkpoint, or None.

        Corrupted checkpoints are marked and skipped: it falls back to older ones.

        Raises:
            PickleNotAllowedError: the newest good state holds pickles and allow_pickle is False.
            InvalidInputError: a bad process_id, level or name.
        """
        tried: set[str] = set()
        _inputs.text(process_id, "process_id")
        _inputs.optional(name, "name")
        lvl = _inputs.level(level)
        fast = getattr(self.backend, "latest_record", None)
        if fast is not None:  # record and payload in one query: the common case
            record = fast(process_id, lvl, name)
            if record is None:
                return None
            try:
                return record.checkpoint, self._decode(record)
            except CorruptCheckpointError as e:
                self._mark_corrupted(record.checkpoint, e)
                tried.add(record.checkpoint.id)
        for cp in self._candidates(process_id, lvl, name, tried):
            tried.add(cp.id)
            try:
                return cp, self.load(cp.id)
            except (CorruptCheckpointError, CheckpointNotFoundError):
                continue
        return None

    def _candidates(
        self, process_id: str, level: Level | None, name: str | None, tried: set[str]
    ) -> Iterator[Checkpoint]:
        while (cp := self.backend.latest(process_id, level, name)) is not None:
            if cp.id in tried:  # its status could not be changed: walk the rest by list
                q = ListQuery(process_id=process_id, level=level, name=name, status=Status.VALID)
                yield from (c for c in self.backend.list(q) if c.id not in tried)
                return
            yield cp

    def list(
        self,
        process_id: str | None = None,
        level: Level | str | None = None,
        name: str | None = None,
        status: Status | str | None = None,
        parent: str | Checkpoint | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Checkpoint]:
        """Return matching checkpoints, newest first.

        ``where`` keeps those whose metadata holds each key's value; ``tags`` those
        saved with every one of these tags.

        Raises:
            InvalidInputError: a bad filter (a naive ``since``, an unknown level, ...).
        """
        if where is not None and not isinstance(where, Mapping):
            raise InvalidInputError(f"where must be a dict, not {where!r}")
        want = _filters.check_tags(tags) if tags is not None else []
        if where or want:
            # Filtered here, then cut to ``limit``: the backends filter by slot only.
            found = self.list(process_id, level, name, status, parent, since)
            hits = [c for c in found if _filters.matches(c, where or {}, want)]
            return hits[: _inputs.limit(limit)] if limit is not None else hits
        return self.backend.list(
            ListQuery(
                process_id=_inputs.optional(process_id, "process_id"),
                level=_inputs.level(level),
                name=_inputs.optional(name, "name"),
                status=_inputs.status(status),
                parent=_inputs.optional(
                    parent.id if isinstance(parent, Checkpoint) else parent, "parent"
                ),
                since=_inputs.since(since),
                limit=_inputs.limit(limit),
            )
        )

    # -- maintenance --------------------------------------------------------------

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        """Delete a checkpoint and all its descendants; return the ids deleted.

        Chunks they alone used are reclaimed by the next ``gc``.

        Raises:
            CheckpointNotFoundError: no such id.
            ReadOnlyStoreError: the store is open read-only.
        """
        self._refuse_write("delete")
        return self.backend.delete(_inputs.text(checkpoint_id, "checkpoint id"))

    def verify(
        self, full: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> VerifyReport:
        """Check the store; with ``full``, read and hash every byte.

        ``progress(done, total)`` is called as chunks are hashed (``full`` only).

        Checkpoints found damaged are marked CORRUPTED; with ``full``, ones marked
        CORRUPTED that now verify are marked VALID again (except imports whose legacy
        source was already corrupted: ``metadata["legacy_corrupted"]``). On a store
        open read-only nothing is marked: the report alone says what is damaged.
        """
        structure = self.backend.check()
        bad: set[str] = set(structure.missing)
        records = self.backend.list(ListQuery())
        missing = sorted({d for ds in structure.missing.values() for d in ds})
        # Flagged chunks are stored again by the next save of the same bytes.
        mark = None if self.readonly else getattr(self.backend, "mark_bad_chunks", None)
        if mark is not None and missing:
            mark(missing)
        if full:
            bad_digests = self._verify_chunks(progress)
            if mark is not None:
                mark(bad_digests, replace=True)
            bad |= self.backend.checkpoints_using(bad_digests)
            for cp in records:
                if cp.id in bad:
                    continue
                try:
                    rec = self.backend.get_record(cp.id)
                    checksum = chunking.record_checksum(rec.payload, rec.manifest, self.hash_name)
                    if checksum != cp.checksum:
                        bad.add(cp.id)
                    else:
                        chunking.unpack_manifest(rec.manifest)
                        _chunkio.unpack_payload(rec.payload, cp.size)
                except (CorruptCheckpointError, CheckpointNotFoundError):
                    bad.add(cp.id)
        for cp in records:
            if cp.id in bad:
                self._mark_corrupted(cp)
            elif self.readonly:
                continue
            elif full and cp.status == Status.CORRUPTED and "legacy_corrupted" not in cp.metadata:
                # A legacy import's stored bytes verify, but what they hold was damaged
                # before ckptlite saw it: it stays CORRUPTED.
                self.backend.set_status(cp.id, Status.VALID)
        return VerifyReport(
            checked=len(records),
            corrupted=tuple(sorted(bad)),
            missing_chunks=tuple(missing),
            orphan_chunks=structure.orphan_chunks,
            full=full,
            orphan_packs=structure.orphan_packs,
            unsafe_paths=structure.unsafe_paths,
        )

    def _verify_chunks(self, progress: Callable[[int, int], None] | None) -> set[str]:
        digests = builtins.list(self.backend.iter_chunk_digests())
        done = 0
        lock = threading.Lock()

        def check(digest: str) -> str | None:
            nonlocal done
            try:
                chunk = self.backend.read_chunk(digest)
                if not 0 <= chunk.size <= chunking.MAX_CHUNK:  # before allocating it
                    return digest
                out = memoryview(bytearray(chunk.size))
                chunking.restore_chunk_into(chunk, out, self.hash_name)
            except (CorruptCheckpointError, PermissionError, OSError):
                return digest
            finally:
                if progress:
                    with lock:
                        done += 1
                        progress(done, len(digests))
            return None

        return {d for d in self._executor().map(check, digests) if d}

    def gc(self, dry_run: bool = False) -> GcReport:
        """Remove chunks no checkpoint uses and temp files of dead writers.

        Raises:
            ReadOnlyStoreError: the store is open read-only (and not ``dry_run``).
        """
        if not dry_run:
            self._refuse_write("collect garbage")
        return self.backend.gc(dry_run=dry_run)

    def stats(self) -> dict[str, Any]:
        """Return counts and byte totals; ``dedup_ratio`` is logical / stored bytes.

        Keys: checkpoints, chunks, logical_bytes, stored_bytes, dedup_ratio,
        by_process ({process: {level: count}}), by_status ({status: count}),
        item_results ({count, logical_bytes, stored_bytes}: the done items' states in
        the run ledger; the byte totals include them).
        """
        s = dict(self.backend.stats())
        items = s.setdefault("item_results", {"count": 0, "logical_bytes": 0, "stored_bytes": 0})
        s["logical_bytes"] += items["logical_bytes"]
        s["stored_bytes"] += items["stored_bytes"]
        s["dedup_ratio"] = s["logical_bytes"] / s["stored_bytes"] if s["stored_bytes"] else 1.0
        return s

    def backup(
        self,
        dest: str | os.PathLike[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> BackupReport:
        """Copy the store, while it stays in use, to the new directory ``dest``.

        The database goes through SQLite's online backup API (never a raw copy of a
        live file), then the chunk files it references; the copy is built beside
        ``dest`` and renamed into place, so ``dest`` is either complete or absent.
        ``progress(done, total)`` is called as chunk files are copied.

        Raises:
            ConfigError: this kind of store has no file backup (use an export archive).
            InvalidInputError: ``dest`` exists and is not an empty directory, or is no path.
            StoreFullError, StoreError: the copy could not be written (none is left).

        >>> import ckptlite, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> with ckptlite.open(os.path.join(d, "a")) as mgr:
        ...     _ = mgr.save("run", {"x": 1})
        ...     mgr.backup(os.path.join(d, "b")).checkpoints
        1
        """
        copy = getattr(self.backend, "backup", None)
        if copy is None:
            raise ConfigError(
                f"{self.url}: this kind of store cannot be backed up by ckptlite",
                hint="Use `ckptlite export ARCHIVE` (any store), or the database's own "
                "tools (pg_dump) for PostgreSQL.",
            )
        target = to_path(dest, "backup destination")
        try:
            if target.exists() and not (target.is_dir() and not any(target.iterdir())):
                raise InvalidInputError(
                    f"backup destination {target} exists", hint="Pick a new directory."
                )
        except OSError as e:
            raise os_error(e, f"backup destination {target}") from e
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            copy(partial, progress)
            os.replace(partial, target)
        except OSError as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise os_error(e, f"backing up to {target}") from e
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with open_store(target, durability="none", create=False) as check:
            s = check.stats()
        return BackupReport(str(target), s["checkpoints"], s["chunks"], s["stored_bytes"])


def _record(
    cp: Checkpoint,
    size: int,
    payload: bytes,
    manifest: chunking.Manifest,
    written: int,
    algo: str,
) -> StoredRecord:
    """Return the record of ``cp`` with its payload, manifest, sizes and checksum."""
    manifest_bytes = chunking.pack_manifest(manifest)
    cp = Checkpoint(  # built directly: dataclasses.replace costs twice as much
        id=cp.id,
        process_id=cp.process_id,
        level=cp.level,
        name=cp.name,
        parent_id=cp.parent_id,
        seq=cp.seq,
        status=cp.status,
        created_at=cp.created_at,
        size=size,
        stored_size=len(payload) + written,
        checksum=chunking.record_checksum(payload, manifest_bytes, algo),
        metadata=cp.metadata,
        progress=cp.progress,
    )
    return StoredRecord(cp, payload, manifest_bytes, chunking.manifest_digests(manifest))


_default_lock = threading.Lock()
_default: CheckpointManager | None = None
_default_pid = 0


def get_checkpoint_manager() -> CheckpointManager:
    """Return the process-wide manager on the default store (opened on first use).

    >>> import ckptlite
    >>> ckptlite.get_checkpoint_manager() is ckptlite.get_checkpoint_manager()
    True
    """
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default._closed or _default_pid != os.getpid():
            _default = open_store()
            _default_pid = os.getpid()
        return _default


# Processes without a manager of their own use the default one.
set_default_manager(get_checkpoint_manager)
