"""The blob directory: pack files ``blobs/packs/<64 hex>`` holding many chunks, written atomically.

A save's big chunks are appended, one write group at a time, to a pack this
process holds open and flocked (``PackAppender``; one fdatasync for the group);
a new pack is made only when none is open or the open one is full. The chunk
index (``chunks.pack``, ``pack_offset``) says where each chunk lies. A pack only
grows while its writer holds it open, and never changes after that: gc deletes
a dead pack, cuts a dead tail off, and rewrites a mostly dead one into a new
pack, never touching a pack a live writer holds (``pack_busy``). Stores
written before packs hold one file per chunk, ``blobs/<2 hex>/<64 hex>``;
those are still read, verified, backed up and collected.

Every file is written as temp -> fsync -> rename -> directory fsync. A temp
file is ``flock``-ed by its writer for as long as it is being written, so
``gc`` can tell a live writer's temp file (locked) from a dead one's (free).
``blobs/.lock`` orders gc against saves across processes: a save holds it
shared while it writes its packs and commits their rows; gc holds it exclusive
while it deletes rows and unlinks files, so gc never removes a chunk a save is
about to reference.

Nothing outside the store is ever read, written or deleted: each directory of
the tree is opened with ``O_NOFOLLOW`` relative to its parent's descriptor
(``O_NOFOLLOW`` on a whole path guards its last component only), and files are
opened, created, renamed and unlinked relative to those descriptors. A symlink,
or a file of the wrong type, where ``blobs/``, ``packs/``, ``tmp/``, a chunk
directory or a lock file should be is damage: a read reports the chunk corrupt,
``unsafe`` lists it for verify, and writers, gc and backup raise
``StoreLayoutError``.

A read-only BlobDir (``readonly=True``) creates nothing: no directory, no lock
file; it flocks the lock files through read-only descriptors when they exist,
and every write raises ``ReadOnlyStoreError``.
"""

# Performance targets cited as (P1)...(P17): bench/TARGETS.md.
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from . import _faults
from ._blob_upkeep import BlobUpkeepMixin
from ._blobfs import (
    CREATE_FLAGS,
    DIGEST_RE,
    DIR_FLAGS,
    LOCKS,
    PACKS,
    POOL_MAX,
    READ_FLAGS,
    TMP,
    WRITE_PIECE,
    OpenPack,
    PackReaders,
    os_errors,
    pieces,
    pread_into,
    read_errors,
    start_writeback,
)
from .errors import (
    CorruptCheckpointError,
    ReadOnlyStoreError,
    StoreIOError,
    StoreLayoutError,
)

__all__ = ["BlobDir"]


class BlobDir(BlobUpkeepMixin):
    """Pack files and chunk files under ``root``, named by 64 hex digits only."""

    def __init__(
        self, root: Path, *, fsync: bool = True, group: bool = False, readonly: bool = False
    ) -> None:
        self.root = root
        self._root = str(root)
        self.fsync = fsync
        self.readonly = readonly
        self.dir_mode = 0o770 if group else 0o700
        self.file_mode = 0o660 if group else 0o600
        self._lock_path = root / ".lock"
        # Open packs this process appends to, each flocked while it is open (see PackAppender).
        self._pool: list[OpenPack] = []
        self._pool_lock = threading.Lock()
        self._pool_pid = os.getpid()
        # blobs/packs/ kept open for reads, with the (dev, inode) of blobs/ and packs/
        # it was opened under and the pid that opened it (see _packs_fd).
        self._packs_cache: tuple[int, int, tuple[int, int, int, int]] | None = None
        self._stale_fds: list[int] = []  # replaced cached descriptors, closed by close()
        self._readers = PackReaders()
        self._packs_path = os.path.join(self._root, PACKS)
        if readonly:
            return
        root.parent.mkdir(parents=True, exist_ok=True)
        # Made through directory descriptors: where a symlink stands instead of a
        # directory, nothing is created (verify reports it; writers refuse).
        with contextlib.suppress(StoreLayoutError):
            fd = self._open_dir(create=True)
            try:
                self._mkdir_at(fd, TMP)
                # A pack's rename is only as durable as the directory's entry.
                if self._mkdir_at(fd, PACKS) and fsync:
                    os.fsync(fd)
                for lock in LOCKS:  # the two files gc_lock flocks
                    with contextlib.suppress(FileExistsError):  # whatever it is: unsafe() tells
                        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW
                        lock_fd = os.open(lock, flags, self.file_mode, dir_fd=fd)
                        os.fchmod(lock_fd, self.file_mode)  # not cut by the umask
                        os.close(lock_fd)
            finally:
                os.close(fd)

    # -- directories, never through a symlink ------------------------------------

    def _open_dir(self, sub: str | None = None, *, create: bool = False) -> int:
        """Open ``blobs/`` (or ``blobs/<sub>``) without following a symlink; return its fd.

        ``create`` makes missing directories (never through a symlink).

        Raises:
            StoreLayoutError: a symlink or a non-directory is in the way.
            FileNotFoundError: a directory is missing.
        """
        # The store directory is the caller's own path, resolved like any path;
        # O_NOFOLLOW guards the last component: blobs/ itself.
        if create:
            self._mkdir_at(None, self._root)
        fd = self._open_dir_at(None, self._root, self.root.name)
        if sub is None:
            return fd
        try:
            if create:
                self._mkdir_at(fd, sub)
            return self._open_dir_at(fd, sub, f"{self.root.name}/{sub}")
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _dir(self, sub: str | None = None) -> Iterator[int]:
        fd = self._open_dir(sub)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_dir_at(self, parent: int | None, name: str, shown: str) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._layout_error(shown, "a symlink or not a directory") from None
            raise

    def _layout_error(self, shown: str, what: str) -> StoreLayoutError:
        return StoreLayoutError(
            f"{shown} in store {self.root.parent} is {what}; ckptlite never follows it",
            path=shown,
        )

    def _mkdir_at(self, parent: int | None, name: str) -> bool:
        """Create directory ``name`` in ``parent`` unless present; return True if created."""
        try:
            os.mkdir(name, self.dir_mode, dir_fd=parent)
        except FileExistsError:  # a symlink there too: mkdir never follows one
            return False
        # mkdir's and open's modes are cut by the umask: chmod what we create, so a
        # store's modes (0700, or 0770 in group mode) never depend on the caller's umask.
        fd = self._open_dir_at(parent, name, name)
        try:
            os.fchmod(fd, self.dir_mode)
        finally:
            os.close(fd)
        return True

    def _writable(self, what: str) -> None:
        if self.readonly:
            raise ReadOnlyStoreError(f"{what}: the store is open read-only")

    def _open_lock(self, parent: int, name: str) -> int:
        # O_NONBLOCK: a FIFO planted under the lock's name must not block the open.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, self.file_mode, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise self._layout_error(f"{self.root.name}/{name}", "not a file") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._layout_error(f"{self.root.name}/{name}", "not a regular file")
        return fd

    # -- names --------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Return the path of a chunk; only a well-formed digest makes a path.

        Raises:
            CorruptCheckpointError: ``digest`` is not 64 lowercase hex digits.
        """
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise CorruptCheckpointError(f"not a chunk digest: {digest!r}")
        return self.root / digest[:2] / digest

    def pack_path(self, name: str) -> Path:
        """Return the path of a pack file; only a well-formed name makes a path.

        Raises:
            CorruptCheckpointError: ``name`` is not 64 lowercase hex digits.
        """
        if not isinstance(name, str) or not DIGEST_RE.match(name):
            raise CorruptCheckpointError(f"not a pack name: {name!r}")
        return self.root / PACKS / name

    def _chunk(self, digest: str) -> tuple[str, str]:
        self.path(digest)  # validates
        return digest[:2], digest

    def _pack(self, name: str) -> tuple[str, str]:
        if not isinstance(name, str) or not DIGEST_RE.match(name):  # as pack_path, no Path
            raise CorruptCheckpointError(f"not a pack name: {name!r}")
        return PACKS, name

    def _lstat(self, sub: str, name: str) -> os.stat_result | None:
        try:
            with self._dir(sub) as fd:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, StoreLayoutError):
            return None

    def exists(self, digest: str) -> bool:
        """Tell whether a regular chunk file exists (symlinks do not count)."""
        st = self._lstat(*self._chunk(digest))
        return st is not None and stat.S_ISREG(st.st_mode)

    def size(self, digest: str) -> int:
        """Return the size of a chunk file (0 if absent or not a regular file)."""
        st = self._lstat(*self._chunk(digest))
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0

    # -- writing ------------------------------------------------------------------

    def write(self, digest: str, data: bytes | memoryview) -> bool:
        """Store ``data`` as the chunk file of ``digest`` unless present; return True if written.

        Chunks are written into packs (``write_pack``); single chunk files are what
        stores written before packs hold, and what ``backup`` copies of them.

        Raises:
            StoreFullError: the disk is full (no temp file is left behind).
            StoreIOError: a write or fsync failed (nothing is renamed into place).
            StoreLayoutError: a directory on the way is a symlink.
        """
        self._writable(f"writing chunk {digest}")
        if self.exists(digest):
            return False
        sub, name = self._chunk(digest)
        with os_errors("creating a chunk directory"), self._dir() as fd:
            if self._mkdir_at(fd, sub) and self.fsync:
                os.fsync(fd)
        self._write_atomic(sub, name, [data], f"chunk {digest}")
        return True

    def write_pack(self, parts: Sequence[bytes | memoryview]) -> tuple[str, list[int]]:
        """Write ``parts`` into one new pack file; return its name and each part's offset.

        Raises:
            StoreFullError: the disk is full (no temp file is left behind).
            StoreIOError: a write or fsync failed (nothing is renamed into place).
            StoreLayoutError: ``tmp/`` or ``packs/`` is a symlink.
        """
        name = secrets.token_hex(32)
        offsets, at = [], 0
        for part in parts:
            offsets.append(at)
            at += memoryview(part).nbytes
        self._write_atomic(PACKS, name, parts, f"pack {name}")
        return name, offsets

    def copy_pack(self, source: BlobDir, name: str) -> int:
        """Copy pack ``name`` from ``source`` unless present as long; return the bytes copied.

        A pack grows while its writer appends: an older, shorter copy is replaced.
        What is copied is a prefix holding every chunk committed before the call.

        Raises:
            CorruptCheckpointError: the source pack is missing or unreadable.
            StoreFullError, StoreIOError, StoreLayoutError: the copy could not be written.
        """
        self._writable(f"copying pack {name}")
        sub, name = self._pack(name)
        have = self._lstat(sub, name)
        fd = source._open_file(sub, name, f"pack {name}")
        if have is not None and have.st_size >= os.fstat(fd).st_size:
            os.close(fd)
            return 0
        try:  # piece by piece: a pack's size (a sparse file's, say) is not memory to take
            self._write_atomic(sub, name, pieces(fd), f"pack {name}")
        finally:
            os.close(fd)
        st = self._lstat(sub, name)
        return st.st_size if st is not None else 0

    # -- open packs: appended to by this process ----------------------------------

    def _checkout(self) -> OpenPack | None:
        """Take an open pack out of the pool for one writer (None: none is open)."""
        with self._pool_lock:
            if self._pool_pid != os.getpid():
                # A forked child: the packs are the parent's. Closing our copies of their
                # descriptors leaves the parent's flocks (never LOCK_UN) in place.
                for pack in self._pool:
                    with contextlib.suppress(OSError):
                        os.close(pack.fd)
                self._pool, self._pool_pid = [], os.getpid()
            while self._pool:
                pack = self._pool.pop()
                # Unlinked (by hand: gc skips flocked packs): rows naming it would name nothing.
                if os.fstat(pack.fd).st_nlink > 0:
                    return pack
                os.close(pack.fd)
        return None

    def _checkin(self, pack: OpenPack, limit: int) -> None:
        """Give a writer's pack back to the pool, or close it (full, pool full, forked)."""
        with self._pool_lock:
            if pack.size < limit and len(self._pool) < POOL_MAX and self._pool_pid == os.getpid():
                self._pool.append(pack)
                return
        os.close(pack.fd)  # the flock goes with it: gc may now collect the pack

    def close(self) -> None:
        """Close this process's open packs (their flocks go with them)."""
        # In a forked child these are copies of the parent's descriptors: closing them
        # leaves the parent's flocks in place (see _checkout).
        with self._pool_lock:
            pool, self._pool = self._pool, []
            cached, self._packs_cache = self._packs_cache, None
            fds, self._stale_fds = self._stale_fds, []
        if cached is not None:
            fds.append(cached[0])  # a forked child's copy too: its own descriptor table
        for fd in [pack.fd for pack in pool] + fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._readers.close()

    def pack_busy(self, name: str) -> bool:
        """Tell whether a live writer holds pack ``name`` open for appends (its flock is taken).

        gc never removes or rewrites such a pack: its writer would append to an
        unlinked file and commit rows pointing at nothing.
        """
        try:
            fd = self._open_file(*self._pack(name), f"pack {name}")
        except CorruptCheckpointError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # our probe's flock (if taken) goes with it
        return False

    def _write_atomic(
        self, sub: str, name: str, parts: Iterable[bytes | memoryview], what: str
    ) -> None:
        # temp (flocked: gc skips a live writer's) -> write -> fsync -> rename -> dir fsync
        self._writable(f"writing {what}")
        tmp = f"{name[:16]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with self._dir(TMP) as tmp_dir, self._dir(sub) as dest:
            # Creating the temp file can hit ENOSPC too (no inode left): same typed error.
            with os_errors(f"creating a temp file for {what}"):
                fd = os.open(tmp, CREATE_FLAGS, self.file_mode, dir_fd=tmp_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.fchmod(fd, self.file_mode)  # not cut by the umask (see _mkdir_at)
                with os_errors(f"writing {what}"):
                    at = 0
                    for part in parts:
                        view = memoryview(part).cast("B")
                        start = at
                        while view.nbytes:
                            n = os.write(fd, view[:WRITE_PIECE])  # pieces: see WRITE_PIECE
                            view = view[n:]
                            at += n
                        if self.fsync:
                            start_writeback(fd, start, at - start)
                    _faults.point("blob.after_write")
                    if self.fsync:
                        os.fsync(fd)
                    _faults.point("blob.after_fsync")
                    os.rename(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=dest)
                _faults.point("blob.after_rename")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=tmp_dir)
                raise
            finally:
                os.close(fd)
            if self.fsync:
                with os_errors(f"syncing the directory of {what}"):
                    os.fsync(dest)

    # -- reading ------------------------------------------------------------------

    def read(self, digest: str, limit: int | None = None) -> bytes:
        """Return a chunk file's bytes (refused when the file is over ``limit`` bytes).

        Raises:
            CorruptCheckpointError: the file is missing, unreadable, not a regular file
                or larger than ``limit``.
        """
        fd = self._open_file(*self._chunk(digest), f"chunk {digest}", digest)
        try:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:  # before reading it into memory
                raise CorruptCheckpointError(
                    f"chunk file {digest} holds {size} bytes, more than any chunk",
                    digest=digest,
                )
            with (
                read_errors(f"chunk {digest}", digest, "/".join(self._chunk(digest))),
                os.fdopen(fd, "rb", closefd=False) as f,
            ):
                return f.read()
        finally:
            os.close(fd)

    def read_into(self, digest: str, out: memoryview) -> int:
        """Read a chunk file straight into ``out``; return its length (capped at len+1).

        No intermediate copy: a big raw chunk goes from the page cache into the
        caller's buffer once. A result other than ``out.nbytes`` means the file
        is shorter or longer than expected.

        Raises:
            CorruptCheckpointError: the file is missing, unreadable or not a regular file.
        """
        fd = self._open_file(*self._chunk(digest), f"chunk {digest}", digest)
        try:
            with read_errors(f"chunk {digest}", digest, "/".join(self._chunk(digest))):
                got = pread_into(fd, out, 0)
                return got + (len(os.pread(fd, 1, got)) if got == out.nbytes else 0)
        finally:
            os.close(fd)

    def read_packed(
        self, name: str, offset: int, n: int, digest: str, fresh: bool = False
    ) -> memoryview:
        """Return the ``n`` bytes of chunk ``digest`` at ``offset`` in pack ``name``.

        Read once into a fresh buffer and returned as a view of it (no second copy).
        ``offset`` and ``n`` come from the chunk index: they are checked against the
        pack's real size before the buffer is allocated. ``fresh`` opens the pack
        again instead of reading through the descriptor kept for it.

        Raises:
            CorruptCheckpointError: the pack is missing, unreadable or too short.
        """
        fd, held = self._reader(name, digest, fresh)
        try:
            size = os.fstat(fd).st_size
            if not 0 <= offset <= offset + n <= size:
                raise CorruptCheckpointError(
                    f"chunk {digest} is cut short in pack {name}: {n} bytes at {offset}, "
                    f"the pack holds {size}",
                    digest=digest,
                )
            out = memoryview(bytearray(n))
            with read_errors(f"chunk {digest} (pack {name})", digest, f"{PACKS}/{name}"):
                got = pread_into(fd, out, offset)
        finally:
            held.release()
        if got != n:
            raise CorruptCheckpointError(
                f"chunk {digest} is cut short in pack {name}", digest=digest
            )
        return out

    def read_packed_into(
        self, name: str, offset: int, out: memoryview, digest: str, fresh: bool = False
    ) -> int:
        """Read chunk ``digest`` from pack ``name`` straight into ``out``; return bytes read.

        ``fresh`` as in ``read_packed``.

        Raises:
            CorruptCheckpointError: the pack is missing or unreadable.
        """
        fd, held = self._reader(name, digest, fresh)
        try:
            return pread_into(fd, out, offset)
        except OSError as e:  # not read_errors(): a generator per read (P12)
            with read_errors(f"chunk {digest} (pack {name})", digest, f"{PACKS}/{name}"):
                raise e
        finally:
            held.release()

    def sweep_readers(self) -> None:
        """Close every thread's kept pack descriptors whose packs gc deleted."""
        self._readers.sweep()

    def _reader(self, name: str, digest: str, fresh: bool) -> tuple[int, threading.Lock]:
        """Return a kept descriptor of pack ``name`` and its held lock (``PackReaders``).

        Raises:
            CorruptCheckpointError: the pack is missing or not a regular file.
        """
        return self._readers.hold(
            name,
            lambda: self._open_file(*self._pack(name), f"chunk {digest} (pack {name})", digest),
            fresh,
        )

    def open_read(self, digest: str, pack: str | None) -> int:
        """Open the file holding chunk ``digest`` (pack ``pack``, or its own file) for reading.

        Raises:
            CorruptCheckpointError: the file is missing, unreadable or not a regular file.
        """
        where = self._chunk(digest) if pack is None else self._pack(pack)
        return self._open_file(*where, f"chunk {digest}", digest)

    def _packs_fd(self) -> int:
        """Return a descriptor of ``blobs/packs/``, kept open: reads skip two directory opens.

        Opened like any directory here (``O_NOFOLLOW``, relative to ``blobs/``'s
        descriptor), then checked on each use by two ``lstat``s: when ``blobs/`` or
        ``packs/`` is no longer the directory it was opened as (replaced by a
        symlink, moved), it is opened again the safe way, which refuses a symlink.
        A forked child opens its own. A chunk read opened three descriptors before:
        ~16 us of a 1 MiB load's ~440 (P12).

        Raises:
            StoreLayoutError: ``blobs/`` or ``packs/`` is a symlink or not a directory.
            FileNotFoundError: one of them is missing.
        """
        cached = self._packs_cache
        if cached is not None and cached[1] == os.getpid():
            try:
                r = os.stat(self._root, follow_symlinks=False)
                p = os.stat(self._packs_path, follow_symlinks=False)
                if (r.st_dev, r.st_ino, p.st_dev, p.st_ino) == cached[2]:
                    return cached[0]
            except OSError:
                pass  # missing or unreadable now: the safe open below says which
        root = self._open_dir()
        try:
            fd = self._open_dir_at(root, PACKS, f"{self.root.name}/{PACKS}")
            r, p = os.fstat(root), os.fstat(fd)
        finally:
            os.close(root)
        with self._pool_lock:
            old = self._packs_cache
            self._packs_cache = (fd, os.getpid(), (r.st_dev, r.st_ino, p.st_dev, p.st_ino))
            if old is not None and old[1] == os.getpid():
                self._stale_fds.append(old[0])  # not closed now: another thread may use it
        if old is not None and old[1] != os.getpid():  # a forked child's copy: ours to close
            with contextlib.suppress(OSError):
                os.close(old[0])
        return fd

    def _open_file(self, sub: str, name: str, what: str, digest: str | None = None) -> int:
        try:
            if sub == PACKS:
                fd = os.open(name, READ_FLAGS, dir_fd=self._packs_fd())
            else:
                parent = self._open_dir(sub)
                try:
                    fd = os.open(name, READ_FLAGS, dir_fd=parent)
                finally:
                    os.close(parent)
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{what} is missing", digest=digest) from None
        except StoreLayoutError as e:
            raise CorruptCheckpointError(
                f"{what} cannot be read: {e.message}", hint=e.hint, digest=digest
            ) from None
        except PermissionError as e:
            # Unreadable is not damaged: the bytes may be intact, so this stays an I/O
            # error and never marks a checkpoint CORRUPTED.
            raise StoreIOError(
                f"{what} cannot be read: permission denied",
                hint="Give the store's files back to the user that writes it (chown/chmod), "
                "then retry.",
                digest=digest,
                path=f"{sub}/{name}",
            ) from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CorruptCheckpointError(
                    f"{what} is a symlink; refusing to follow it", digest=digest
                ) from None
            raise StoreIOError(
                f"{what} cannot be read: {e.strerror or e}",
                hint="Check the store's disk and permissions, then retry.",
                digest=digest,
                path=f"{sub}/{name}",
            ) from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptCheckpointError(f"{what} is not a regular file", digest=digest)
        return fd
