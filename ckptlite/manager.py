"""The checkpoint manager: the front of a store, where states are encoded and decoded.

A save reads top to bottom, one layer per step: ``save`` checks its arguments
(``_new_checkpoint``) and encodes the state (``codec``); ``_commit_encoded`` hands
it to the state engine (``_engine.StateIO.save``: chunks, record, commit), then
prunes the slot (``_retention``, given the backend). ``load`` is the reverse:
``backend.get_record``, then ``StateIO.read``. Helpers are passed what they need
(the backend, the engine, a write function) and never import this module back:
tests/test_imports.py walks the imports and fails on a cycle.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from . import _async, _filters, _inputs, _retention, codec
from . import config as _config
from ._engine import StateIO
from ._pipelines import Pipelines
from ._stores import (
    check_options,
    check_policy,
    open_backend,
    resolve_url,
    store_is_read_only,
)
from ._upkeep import Upkeep
from .backends.base import Backend, ListQuery, dump_metadata
from .errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
)
from .ids import generate_checkpoint_id
from .policies import CheckpointPolicy
from .process import set_default_manager
from .types import (
    Checkpoint,
    Level,
    Status,
    StorageConfig,
    StoredRecord,
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
    to create a store that does not exist yet. With a ``policy``, each
    save prunes its slot (``CheckpointPolicy``); ``max_pending`` bounds the
    ``save_async`` queue. ``readonly=True`` opens an existing store for reading
    and writes nothing to it: locally not even SQLite's ``-wal``/``-shm`` (for a
    read-only mount, a snapshot, someone else's store); on PostgreSQL its
    sessions are read-only, and tables are neither made nor upgraded.
    Every write then raises ReadOnlyStoreError, and ``load``/``verify`` report
    damage without marking anything. ``hash`` ("blake3" or "sha256") is the digest
    algorithm a new store addresses its chunks and checksums its records with
    (None: blake3); a store keeps the one it was made with.

    Raises:
        ConfigError: bad URL or option; no store there and ``create`` is False (or
            ``readonly``); ``readonly`` on memory://; ``hash`` is not the
            algorithm of the existing store.
        MigrationError: the store was written by a newer ckptlite, or (``readonly``
            on PostgreSQL) by an older one and not upgraded yet.
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


class CheckpointManager(Upkeep, Pipelines):
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
        #: The state engine: every byte of a state goes through it, both ways.
        self.engine = StateIO(backend, self._executor, self.config)

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CheckpointManager {self.backend.url}>"

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

        Every save is stamped with its slot position, taken from the slot's counter in
        the commit's transaction; retention runs after the commit, on the slot just saved.

        Raises:
            StoreFullError, StoreIOError: the save failed; nothing was committed.
        """
        policy = policy or self.policy
        # Every save is stamped (policy or not): a later prune's keep_every needs
        # positions that do not move when older checkpoints are removed.
        saved = self.engine.save(cp, encoded, position=True)
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
        return self._read(self.backend.get_record(cid))

    def _read(self, record: StoredRecord) -> Any:
        """Return ``record``'s state; damage is marked, a record deleted meanwhile is not found.

        Raises:
            CheckpointNotFoundError: it was deleted (and its chunks collected) mid-load.
            CorruptCheckpointError: stored bytes do not match their checksums (marked).
        """
        try:
            return self.engine.read(record)
        except CorruptCheckpointError as e:
            cid = record.checkpoint.id
            if not self.exists(cid):  # missing chunks of a deleted checkpoint: not damage
                raise CheckpointNotFoundError(
                    f"checkpoint {cid} was deleted while it was being loaded", checkpoint_id=cid
                ) from e
            self.engine.mark_damaged(record.checkpoint, e)
            raise CorruptCheckpointError(
                f"checkpoint {cid} is corrupted: {e.message}",
                **{**e.facts(), "checkpoint_id": cid},
            ) from e

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
        # Record and payload in one query: the common case.
        record = self.backend.latest_record(process_id, lvl, name)
        if record is None:
            return None
        try:
            return record.checkpoint, self._read(record)
        except (CorruptCheckpointError, CheckpointNotFoundError):
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
                metadata=_filters.check_where(where),
                tags=tuple(_filters.check_tags(tags)) if tags is not None else (),
            )
        )


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
