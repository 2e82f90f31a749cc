"""The checkpoint manager: the one place that encodes and decodes states."""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _async, _chunkio, _retention, chunking, codec
from . import config as _config
from .backends.base import Backend, ListQuery, dump_metadata
from .errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
    MissingChunksError,
)
from .ids import generate_checkpoint_id
from .policies import CheckpointPolicy, RetentionReport
from .runs import Run, open_run
from .types import (
    BackupReport,
    Checkpoint,
    GcReport,
    Level,
    RunRecord,
    Status,
    StorageConfig,
    StoredRecord,
    VerifyReport,
)

if TYPE_CHECKING:
    from .process import ResumableProcess

__all__ = ["CheckpointManager", "get_checkpoint_manager", "open_store", "resolve_url"]

_DURABILITY = ("none", "safe", "full")
#: Chunk threads. Their work is half I/O (fsync waits on the disk), so more than the
#: cores: on 2 cores, 8 threads saved 64 MiB in 0.6x the time 2 threads took.
_POOL_THREADS = max(8, 2 * (os.cpu_count() or 2))
#: States with fewer buffer bytes are hashed outright: the lookup of the slot's latest
#: manifest (~0.5 ms) would eat most of what comparing instead of hashing saves.
_COMPARE_MIN = 4 << 20


def resolve_url(url: str | os.PathLike[str] | None = None) -> str:
    """Return the store URL: ``url``, else the configured one (``ckptlite.config``).

    Unset, that is $CKPTLITE_URL, $CKPTLITE_HOME, ``ckptlite.toml``, the user data dir.
    """
    if url is not None:
        return os.fspath(url)
    return _config.load().url


def _open_backend(config: StorageConfig, create: bool = True) -> Backend:
    url = config.url
    if url.startswith("memory://"):
        from .backends.memory import MemoryBackend

        return MemoryBackend(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .backends.postgres import PostgresBackend  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise ConfigError(
                f"the postgres backend needs psycopg: {e}",
                hint="pip install 'ckptlite[postgres]'",
            ) from e
        backend: Backend = PostgresBackend(url)
        return backend
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(
            f"unknown store URL scheme in {url!r}",
            hint="Use a directory path, file://PATH, memory:// or postgresql://...",
        )
    from .backends.local import DB_NAME, LocalBackend

    path = Path(url.removeprefix("file://")).expanduser()
    if not create and not (path / DB_NAME).is_file():
        raise ConfigError(
            f"no ckptlite store at {path}",
            hint="Check --store / $CKPTLITE_URL (`ckptlite config` shows where it came from).",
        )
    return LocalBackend(
        path,
        durability=config.durability,
        busy_timeout=config.busy_timeout,
        group_access=config.group_access,
    )


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
) -> CheckpointManager:
    """Open (creating if needed) a checkpoint store and return its manager.

    ``url`` is a directory, ``file://DIR``, ``memory://`` or ``postgresql://...``;
    None means $CKPTLITE_URL, then $CKPTLITE_HOME, then the user data directory.
    Options left None come from the configuration (``ckptlite.config``: the
    ``ckptlite.toml`` file, then $CKPTLITE_* variables). ``create=False`` refuses
    to create a local store that does not exist yet. With a ``policy``, each
    save prunes its slot (``CheckpointPolicy``); ``max_pending`` bounds the
    ``save_async`` queue.

    Raises:
        ConfigError: bad URL or option; no store there and ``create`` is False.
        MigrationError: the store was written by a newer ckptlite.

    >>> import ckptlite
    >>> with ckptlite.open("memory://") as mgr:
    ...     cp = mgr.save("demo", {"x": 1})
    ...     mgr.load(cp.id)
    {'x': 1}
    """
    settings = _config.load()
    durability = settings.durability if durability is None else durability
    chunk_size = settings.chunk_size if chunk_size is None else chunk_size
    if durability not in _DURABILITY:
        raise ConfigError(f"durability must be one of {_DURABILITY}, not {durability!r}")
    if not 4096 <= chunk_size <= 64 << 20:
        raise ConfigError(f"chunk_size must be between 4 KiB and 64 MiB, not {chunk_size}")
    config = StorageConfig(
        url=settings.url if url is None else os.fspath(url),
        durability=durability,
        allow_pickle=allow_pickle,
        chunk_size=chunk_size,
        compression_level=(
            settings.compression_level if compression_level is None else compression_level
        ),
        busy_timeout=settings.busy_timeout if busy_timeout is None else busy_timeout,
        group_access=settings.group_access if group_access is None else group_access,
    )
    return CheckpointManager(
        _open_backend(config, create=create), config, policy=policy, max_pending=max_pending
    )


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
        self.config = config
        self.allow_pickle = config.allow_pickle
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
    ) -> Checkpoint:
        """Save ``state`` as a new checkpoint of ``process_id`` and return its record.

        Raises:
            UnsupportedTypeError: the state holds a value with no encoding (store unchanged).
            InvalidInputError: bad process_id, name, level, parent, metadata or progress.
            StoreFullError, StoreIOError: the disk failed; nothing was committed.

        ``policy`` (default: the manager's) prunes the slot after the save.

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> mgr.save("run", [1, 2], name="tile_0").name
        'tile_0'
        """
        cp = self._new_checkpoint(process_id, level, name, parent, metadata, progress)
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
    ) -> Checkpoint:
        if not isinstance(process_id, str) or not process_id:
            raise InvalidInputError(f"process_id must be a non-empty str, not {process_id!r}")
        if not isinstance(name, str):
            raise InvalidInputError(f"name must be a str, not {type(name).__name__}")
        try:
            lvl = Level(level)
        except ValueError:
            raise InvalidInputError(
                f"unknown level {level!r}", hint="Use ckptlite.Level (pipeline/stage/step/substep)."
            ) from None
        meta = dict(metadata or {})
        dump_metadata(meta)  # reject non-JSON metadata before anything is written
        if progress is not None:
            if (
                not isinstance(progress, tuple | list)
                or len(progress) != 2
                or not all(isinstance(p, int) and not isinstance(p, bool) for p in progress)
            ):
                raise InvalidInputError(f"progress must be (done, total) ints, not {progress!r}")
            progress = (int(progress[0]), int(progress[1]))
        parent_id = parent.id if isinstance(parent, Checkpoint) else parent
        if parent_id is not None and not isinstance(parent_id, str):
            raise InvalidInputError(f"parent must be a checkpoint id, not {parent_id!r}")
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
            manifest, written = _chunkio.write_buffers(
                self.backend,
                self._executor(),
                encoded.buffers,
                self.config.chunk_size,
                self.config.compression_level,
                previous,
            )
            record = _record(cp, encoded.size, payload, manifest, written)
            try:
                return self.backend.commit(record)
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

    def _commit_encoded(
        self, cp: Checkpoint, encoded: codec.EncodedState, policy: CheckpointPolicy | None
    ) -> Checkpoint:
        return _retention.store_with_policy(self, cp, encoded, policy or self.policy)

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
    ) -> Future[Checkpoint]:
        """Queue a save and return its future; the state is snapshotted before this returns.

        Blocks while ``max_pending`` saves are queued. A failure (an unsupported
        type, a full disk) is set on the future and raised again by ``flush()``.

        Raises:
            ConfigError: the manager is closed.

        >>> import ckptlite
        >>> with ckptlite.open("memory://") as mgr:
        ...     fut = mgr.save_async("run", {"step": 1})
        ...     mgr.flush()
        ...     mgr.load(fut.result().id)
        {'step': 1}
        """
        if self._closed:
            raise ConfigError("this checkpoint manager is closed", hint="Open a new one.")
        with self._pool_lock:
            if self._async is None:
                self._async = _async.AsyncSaver(self, self.max_pending)
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

        >>> import ckptlite
        >>> mgr = ckptlite.open("memory://")
        >>> for i in range(5):
        ...     _ = mgr.save("p", i)
        >>> len(mgr.apply_retention("p", ckptlite.CheckpointPolicy(keep_last=2)).removed)
        3
        """
        return _retention.apply_retention(self, process_id, policy, dry_run)

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
        from .process import resume_process

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

        >>> import ckptlite
        >>> with ckptlite.open("memory://") as mgr, mgr.run("job") as run:
        ...     stage = run.stage("load")
        ...     _ = stage.complete([1, 2]) if not stage.done else None
        ...     run.stage("load").result
        [1, 2]
        """
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
        """Return the runs of one process (or all), newest first."""
        return self.backend.list_runs(process_id)

    # -- read -------------------------------------------------------------------

    def get(self, checkpoint_id: str) -> Checkpoint:
        """Return a checkpoint's record.

        Raises:
            CheckpointNotFoundError: no such id.
        """
        return self.backend.get(checkpoint_id)

    def exists(self, checkpoint_id: str) -> bool:
        """Tell whether a checkpoint with this id is stored."""
        return bool(self.backend.has_records([checkpoint_id]))

    def load(self, checkpoint: str | Checkpoint) -> Any:
        """Return a checkpoint's state, with every byte verified.

        A checkpoint that fails verification is marked CORRUPTED, so ``latest``
        skips it from then on.

        Raises:
            CheckpointNotFoundError: no such id.
            CorruptCheckpointError: stored bytes do not match their checksums.
            PickleNotAllowedError: the state holds pickles and allow_pickle is False.
        """
        cid = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
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
        if chunking.record_checksum(record.payload, record.manifest) != cp.checksum:
            raise CorruptCheckpointError("record checksum does not match", checkpoint_id=cp.id)
        skeleton = _chunkio.unpack_payload(record.payload, cp.size)
        if record.manifest == chunking.EMPTY_MANIFEST:  # the common small state: no buffers
            return codec.decode(skeleton, [], allow_pickle=self.allow_pickle)
        manifest = chunking.unpack_manifest(record.manifest)
        if sum(chunking.buffer_sizes(manifest)) > cp.size:  # check before allocating
            raise CorruptCheckpointError("chunk manifest declares more than the recorded size")
        buffers = (
            _chunkio.read_buffers(self.backend, self._executor(), manifest) if manifest else []
        )
        return codec.decode(skeleton, buffers, allow_pickle=self.allow_pickle)

    def latest(
        self, process_id: str, level: Level | str | None = None, name: str | None = None
    ) -> Checkpoint | None:
        """Return the newest VALID checkpoint of the slot (highest seq), or None."""
        return self.backend.latest(process_id, Level(level) if level else None, name)

    def load_latest(
        self, process_id: str, level: Level | str | None = None, name: str | None = None
    ) -> tuple[Checkpoint, Any] | None:
        """Return (checkpoint, state) of the newest loadable checkpoint, or None.

        Corrupted checkpoints are marked and skipped: it falls back to older ones.

        Raises:
            PickleNotAllowedError: the newest good state holds pickles and allow_pickle is False.
        """
        tried: set[str] = set()
        lvl = Level(level) if level else None
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
    ) -> list[Checkpoint]:
        """Return matching checkpoints, newest first."""
        if since is not None and since.tzinfo is None:
            raise InvalidInputError("since must be timezone-aware", hint="Use datetime.now(UTC).")
        return self.backend.list(
            ListQuery(
                process_id=process_id,
                level=Level(level) if level else None,
                name=name,
                status=Status(status) if status else None,
                parent=parent.id if isinstance(parent, Checkpoint) else parent,
                since=since,
                limit=limit,
            )
        )

    # -- maintenance --------------------------------------------------------------

    def delete(self, checkpoint_id: str) -> builtins.list[str]:
        """Delete a checkpoint and all its descendants; return the ids deleted.

        Chunks they alone used are reclaimed by the next ``gc``.

        Raises:
            CheckpointNotFoundError: no such id.
        """
        return self.backend.delete(checkpoint_id)

    def verify(
        self, full: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> VerifyReport:
        """Check the store; with ``full``, read and hash every byte.

        ``progress(done, total)`` is called as chunks are hashed (``full`` only).

        Checkpoints found damaged are marked CORRUPTED; with ``full``, ones marked
        CORRUPTED that now verify are marked VALID again (except imports whose legacy
        source was already corrupted: ``metadata["legacy_corrupted"]``).
        """
        structure = self.backend.check()
        bad: set[str] = set(structure.missing)
        records = self.backend.list(ListQuery())
        missing = sorted({d for ds in structure.missing.values() for d in ds})
        # Flagged chunks are stored again by the next save of the same bytes.
        mark = getattr(self.backend, "mark_bad_chunks", None)
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
                    if chunking.record_checksum(rec.payload, rec.manifest) != cp.checksum:
                        bad.add(cp.id)
                    else:
                        chunking.unpack_manifest(rec.manifest)
                        _chunkio.unpack_payload(rec.payload, cp.size)
                except (CorruptCheckpointError, CheckpointNotFoundError):
                    bad.add(cp.id)
        for cp in records:
            if cp.id in bad:
                self._mark_corrupted(cp)
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
                chunking.restore_chunk_into(chunk, memoryview(bytearray(chunk.size)))
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
        """Remove chunks no checkpoint uses and temp files of dead writers."""
        return self.backend.gc(dry_run=dry_run)

    def stats(self) -> dict[str, Any]:
        """Return counts and byte totals; ``dedup_ratio`` is logical / stored bytes.

        Keys: checkpoints, chunks, logical_bytes, stored_bytes, dedup_ratio,
        by_process ({process: {level: count}}), by_status ({status: count}).
        """
        s = dict(self.backend.stats())
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
            InvalidInputError: ``dest`` exists and is not an empty directory.

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
        target = Path(dest).expanduser()
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise InvalidInputError(
                f"backup destination {target} exists", hint="Pick a new directory."
            )
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            copy(partial, progress)
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with open_store(target, durability="none", create=False) as check:
            s = check.stats()
        return BackupReport(str(target), s["checkpoints"], s["chunks"], s["stored_bytes"])


def _record(
    cp: Checkpoint, size: int, payload: bytes, manifest: chunking.Manifest, written: int
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
        checksum=chunking.record_checksum(payload, manifest_bytes),
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
