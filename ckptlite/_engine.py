"""The state engine: an encoded state's bytes to a backend and back, verified.

restic's shape: ``_chunkio`` is the packer (chunks a state's buffers, hashes,
compresses, stages them; reads and checks them back), the backend is the index
and the repository's storage, and ``StateIO`` composes them for one state:

- ``save(cp, encoded)``: frame the skeleton (``_envelope``), look up the slot's
  previous manifest (dedup by comparison), write the chunks (``_chunkio``), build
  the record (``Checkpoint.copy``), commit it; retry if gc took chunks.
- ``read(record)``: check the record's checksum, unframe the skeleton, read and
  verify every chunk, decode (``codec``).
- ``verify`` / ``mark_damaged``: what a load or a verify found, recorded.

The manager validates and encodes above it; backends move bytes below it. Nothing
here imports the manager.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _chunkio, chunking, codec
from ._envelope import pack_payload, unpack_payload
from .backends.base import Backend, ListQuery, Staged
from .errors import CheckpointNotFoundError, CorruptCheckpointError, MissingChunksError
from .types import Checkpoint, Status, StorageConfig, StoredRecord, VerifyReport

__all__ = ["StateIO"]

#: States with fewer buffer bytes are hashed outright: the lookup of the slot's latest
#: manifest (~0.5 ms) would eat most of what comparing instead of hashing saves.
_COMPARE_MIN = 4 << 20
#: Saves retried when a concurrent gc (or a load's flagging) takes chunks found present.
_ATTEMPTS = 5
# A record's parse is kept for records this small (a backend caches the same size).
_PARSED_MAX_BYTES = 16 << 10
_PARSED_RECORDS = 256
#: skeleton, manifest (None when the state has no buffers), checks.
_Parsed = tuple["bytes | memoryview", "chunking.Manifest | None", "chunking.Checks"]


class StateIO:
    """Move encoded states to and from one backend: chunking, hashing, dedup, compression, checks.

    ``pool`` returns the thread pool chunks are hashed, compressed and verified on
    (the manager's: made lazily, made again after fork()). Thread-safe.
    """

    def __init__(
        self, backend: Backend, pool: Callable[[], ThreadPoolExecutor], config: StorageConfig
    ) -> None:
        self.backend = backend
        self.hash_name: str = backend.hash_name
        self.allow_pickle = config.allow_pickle
        self.readonly = config.readonly
        self._chunk_size = config.chunk_size
        self._level = config.compression_level
        self._pool = pool
        self._landing = _chunkio.BufferPool()  # memory loads land in, reused
        # record checksum -> (payload, manifest, their parse): see _parse.
        self._parsed: dict[str, tuple[Any, Any, _Parsed]] = {}

    # -- write ------------------------------------------------------------------

    def save(
        self, cp: Checkpoint, encoded: codec.EncodedState, *, position: bool = False
    ) -> Checkpoint:
        """Store ``encoded`` as checkpoint ``cp``: chunks, then the record, in its commit.

        With ``position``, the commit stamps the record's slot position (``Backend.commit``).

        Raises:
            StoreFullError, StoreIOError: the save failed; nothing was committed.
            MissingChunksError: chunks kept disappearing (a gc running all along).
        """
        previous = self.previous(cp, encoded)
        for _attempt in range(_ATTEMPTS):
            record, staged = self.write(cp, encoded, previous)
            try:
                # One transaction: the chunk rows, the checkpoint, its refs.
                return self.backend.commit(record, staged, position=position)
            except MissingChunksError:
                # A concurrent gc reclaimed chunks we found present (or a load flagged
                # them bad): store the chunks again. Hashed again too, from the arrays
                # as they are now: rewriting the missing digests from arrays the caller
                # may have changed since could store other bytes under them.
                continue
        raise MissingChunksError(
            f"chunks of {cp.id} kept disappearing during save",
            digests=record.digests,
            checkpoint_id=cp.id,
        )

    def previous(
        self, cp: Checkpoint, encoded: codec.EncodedState
    ) -> tuple[chunking.Manifest, chunking.Checks] | None:
        """Return the chunk manifest and checks of the slot's latest checkpoint, for a big state.

        A state saved again mostly unchanged then compares its chunks with those
        (in the page cache) instead of hashing them; small states skip the lookup.
        """
        if sum(b.nbytes for b in encoded.buffers) < _COMPARE_MIN:
            return None
        try:
            record = self.backend.latest_record(cp.process_id, cp.level, cp.name)
            return chunking.unpack_checked(record.manifest) if record else None
        except CorruptCheckpointError:
            return None  # a damaged manifest only costs the shortcut

    def write(
        self,
        cp: Checkpoint,
        encoded: codec.EncodedState,
        previous: tuple[chunking.Manifest, chunking.Checks] | None = None,
    ) -> tuple[StoredRecord, builtins.list[Staged]]:
        """Write ``encoded``'s chunks; return ``cp``'s record and the staged rows to commit.

        Pass both to ``backend.commit`` (which releases the staged rows).

        Raises:
            StoreFullError, StoreIOError: a chunk could not be stored.
        """
        payload = pack_payload(encoded.skeleton)
        manifest, checks, written, staged = _chunkio.write_buffers(
            self.backend,
            self._pool(),
            encoded.buffers,
            self._chunk_size,
            self._level,
            previous,
            encoded.itemsizes,
            algo=self.hash_name,
        )
        manifest_bytes = chunking.pack_manifest(manifest, checks)
        done = cp.copy(
            size=encoded.size,
            stored_size=len(payload) + written,
            checksum=chunking.record_checksum(payload, manifest_bytes, self.hash_name),
        )
        record = StoredRecord(done, payload, manifest_bytes, chunking.manifest_digests(manifest))
        return record, staged

    # -- read -------------------------------------------------------------------

    def read(self, record: StoredRecord) -> Any:
        """Return the state ``record`` holds, every byte verified.

        Raises:
            CorruptCheckpointError: a checksum, the payload or a chunk does not match
                (``digests`` names every bad chunk).
            StoreIOError: a chunk cannot be read (permissions, the disk): not damage.
            PickleNotAllowedError: the state holds pickles and allow_pickle is False.
        """
        skeleton, manifest, checks = self._parse(record)
        if manifest is None:  # the common small state: no buffers
            return codec.decode(skeleton, [], allow_pickle=self.allow_pickle)
        buffers = (
            _chunkio.read_buffers(
                self.backend, self._pool(), manifest, checks, self._landing, algo=self.hash_name
            )
            if manifest
            else []
        )
        return codec.decode(skeleton, buffers, allow_pickle=self.allow_pickle)

    def _parse(self, record: StoredRecord) -> _Parsed:
        """Verify ``record``'s checksum; return its skeleton, manifest (None: none) and checks.

        A record read again from a backend's cache holds the very bytes objects
        verified last time (immutable): their parse is kept and handed out again.

        Raises:
            CorruptCheckpointError: the checksum, payload frame or manifest is bad.
        """
        cp = record.checkpoint
        kept = self._parsed.get(cp.checksum)
        if kept is not None and kept[0] is record.payload and kept[1] is record.manifest:
            return kept[2]
        if chunking.record_checksum(record.payload, record.manifest, self.hash_name) != cp.checksum:
            raise CorruptCheckpointError("record checksum does not match", checkpoint_id=cp.id)
        skeleton = unpack_payload(record.payload, cp.size)
        parsed: _Parsed
        if record.manifest == chunking.EMPTY_MANIFEST:
            parsed = (skeleton, None, {})
        else:
            manifest, checks = chunking.unpack_checked(record.manifest)
            if sum(chunking.buffer_sizes(manifest)) > cp.size:  # check before allocating
                raise CorruptCheckpointError("chunk manifest declares more than the recorded size")
            parsed = (skeleton, manifest, checks)
        if len(record.payload) + len(record.manifest) <= _PARSED_MAX_BYTES:
            if len(self._parsed) >= _PARSED_RECORDS:
                self._parsed.clear()
            self._parsed[cp.checksum] = (record.payload, record.manifest, parsed)
        return parsed

    def record_intact(self, record: StoredRecord) -> bool:
        """Tell whether a record's checksum, manifest and payload frame check out (no chunks)."""
        cp = record.checkpoint
        try:
            if chunking.record_checksum(record.payload, record.manifest, self.hash_name) != (
                cp.checksum
            ):
                return False
            chunking.unpack_manifest(record.manifest)
            unpack_payload(record.payload, cp.size)
        except CorruptCheckpointError:
            return False
        return True

    # -- damage -----------------------------------------------------------------

    def mark_damaged(self, cp: Checkpoint, error: CorruptCheckpointError | None = None) -> None:
        """Mark ``cp`` CORRUPTED and flag the chunks ``error`` names (nothing when read-only)."""
        if self.readonly:
            return  # damage is reported (raised, listed by verify), never recorded
        if cp.status == Status.VALID:
            with contextlib.suppress(CheckpointNotFoundError):
                self.backend.set_status(cp.id, Status.CORRUPTED)
        digests: tuple[str, ...] = ()
        if error is not None:
            digests = error.digests or ((error.digest,) if error.digest else ())
        if digests:
            self.backend.mark_bad_chunks(digests)  # the next save of the same bytes stores them

    def verify(self, full: bool, progress: Callable[[int, int], None] | None) -> VerifyReport:
        """Check the store (with ``full``, every byte); mark what is damaged, or healed.

        Raises:
            StoreIOError: a chunk cannot be read (permissions, the disk): nothing is
                marked for it, since unreadable is not damaged.
        """
        backend = self.backend
        structure = backend.check()
        bad: set[str] = set(structure.missing)
        records = backend.list(ListQuery())
        missing = sorted({d for ds in structure.missing.values() for d in ds})
        # Flagged chunks are stored again by the next save of the same bytes.
        if not self.readonly and missing:
            backend.mark_bad_chunks(missing)
        if full:
            bad_digests, found = self._verify_chunks(progress)
            if not self.readonly:
                backend.mark_bad_chunks(bad_digests, replace=True)
            bad |= backend.checkpoints_using(bad_digests)
            for cp in records:
                if cp.id in bad:
                    continue
                try:
                    record = backend.get_record(cp.id)
                    # A load trusts a record's checks: they must be those of the bytes.
                    if not self.record_intact(record) or any(
                        found.get(d, c) != c
                        for d, c in chunking.unpack_checked(record.manifest)[1].items()
                    ):
                        bad.add(cp.id)
                except (CorruptCheckpointError, CheckpointNotFoundError):
                    bad.add(cp.id)
        for cp in records:
            if cp.id in bad:
                self.mark_damaged(cp)
            elif self.readonly:
                continue
            elif full and cp.status == Status.CORRUPTED and "legacy_corrupted" not in cp.metadata:
                # A legacy import's stored bytes verify, but what they hold was damaged
                # before ckptlite saw it: it stays CORRUPTED.
                backend.set_status(cp.id, Status.VALID)
        return VerifyReport(
            checked=len(records),
            corrupted=tuple(sorted(bad)),
            missing_chunks=tuple(missing),
            orphan_chunks=structure.orphan_chunks,
            full=full,
            orphan_packs=structure.orphan_packs,
            unsafe_paths=structure.unsafe_paths,
        )

    def _verify_chunks(
        self, progress: Callable[[int, int], None] | None
    ) -> tuple[set[str], chunking.Checks]:
        """Hash every chunk for its address; return the bad digests, and the good ones' checks."""
        digests = builtins.list(self.backend.iter_chunk_digests())
        done = 0
        lock = threading.Lock()
        found: chunking.Checks = {}

        def check(digest: str) -> str | None:
            nonlocal done
            try:
                chunk = self.backend.read_chunk(digest)
                if not 0 <= chunk.size <= chunking.MAX_CHUNK:  # before allocating it
                    return digest
                out = memoryview(bytearray(chunk.size))
                chunking.restore_chunk_into(chunk, out, self.hash_name)
                found[digest] = chunking.check_of(out)
            except CorruptCheckpointError:
                return digest
            finally:
                if progress:
                    with lock:
                        done += 1
                        progress(done, len(digests))
            return None

        return {d for d in self._pool().map(check, digests) if d}, found
