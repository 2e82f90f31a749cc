"""The blob directory: pack files ``blobs/packs/<64 hex>`` holding many chunks, written atomically.

A save's big chunks go into one new pack per group (one fsync for the group,
not one per chunk); the chunk index (``chunks.pack``, ``pack_offset``) says
where each chunk lies. Packs are never changed once renamed into place: gc
deletes a dead pack and rewrites a mostly dead one into a new pack. Stores
written before packs hold one file per chunk, ``blobs/<2 hex>/<64 hex>``;
those are still read, verified, backed up and collected.

Every file is written as temp -> fsync -> rename -> directory fsync. A temp
file is ``flock``-ed by its writer for as long as it is being written, so
``gc`` can tell a live writer's temp file (locked) from a dead one's (free).
``blobs/.lock`` orders gc against saves across processes: a save holds it
shared while it writes its packs and commits their rows; gc holds it exclusive
while it deletes rows and unlinks files, so gc never removes a chunk a save is
about to reference.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import _faults
from .errors import CorruptCheckpointError, StoreFullError, StoreIOError

__all__ = ["BlobDir"]

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP = "tmp"
_PACKS = "packs"


class BlobDir:
    """Pack files and chunk files under ``root``, named by 64 hex digits only."""

    def __init__(self, root: Path, *, fsync: bool = True, group: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        self.dir_mode = 0o770 if group else 0o700
        self.file_mode = 0o660 if group else 0o600
        root.parent.mkdir(parents=True, exist_ok=True)
        self._mkdir(root)
        self._mkdir(root / _TMP)
        if not (root / _PACKS).is_dir():
            self._mkdir(root / _PACKS)
            if fsync:  # a pack's rename is only as durable as the directory's entry
                _fsync_dir(root)
        self._lock_path = root / ".lock"
        for lock in (self._lock_path, root / ".gate"):  # the two files gc_lock flocks
            if not lock.exists():
                fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, self.file_mode)
                os.fchmod(fd, self.file_mode)
                os.close(fd)

    def _mkdir(self, path: Path) -> None:
        # mkdir's and open's modes are cut by the umask: chmod what we create, so a
        # store's modes (0700, or 0770 in group mode) never depend on the caller's umask.
        try:
            path.mkdir(mode=self.dir_mode)
        except FileExistsError:
            return
        os.chmod(path, self.dir_mode)

    def path(self, digest: str) -> Path:
        """Return the path of a chunk; only a well-formed digest makes a path.

        Raises:
            CorruptCheckpointError: ``digest`` is not 64 lowercase hex digits.
        """
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise CorruptCheckpointError(f"not a chunk digest: {digest!r}")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        """Tell whether a regular chunk file exists (symlinks do not count)."""
        try:
            st = os.lstat(self.path(digest))
        except FileNotFoundError:
            return False
        import stat

        return stat.S_ISREG(st.st_mode)

    def pack_path(self, name: str) -> Path:
        """Return the path of a pack file; only a well-formed name makes a path.

        Raises:
            CorruptCheckpointError: ``name`` is not 64 lowercase hex digits.
        """
        if not isinstance(name, str) or not _DIGEST_RE.match(name):
            raise CorruptCheckpointError(f"not a pack name: {name!r}")
        return self.root / _PACKS / name

    def write(self, digest: str, data: bytes | memoryview) -> bool:
        """Store ``data`` as the chunk file of ``digest`` unless present; return True if written.

        Chunks are written into packs (``write_pack``); single chunk files are what
        stores written before packs hold, and what ``backup`` copies of them.

        Raises:
            StoreFullError: the disk is full (no temp file is left behind).
            StoreIOError: a write or fsync failed (nothing is renamed into place).
        """
        if self.exists(digest):
            return False
        final = self.path(digest)
        if not final.parent.is_dir():
            with _os_errors("creating a chunk directory"):
                self._mkdir(final.parent)
                if self.fsync:
                    _fsync_dir(self.root)
        self._write_atomic(final, [data], f"chunk {digest}")
        return True

    def write_pack(self, parts: Sequence[bytes | memoryview]) -> tuple[str, list[int]]:
        """Write ``parts`` into one new pack file; return its name and each part's offset.

        Raises:
            StoreFullError: the disk is full (no temp file is left behind).
            StoreIOError: a write or fsync failed (nothing is renamed into place).
        """
        with PackWriter(self) as pack:
            offsets = [pack.add(part) for part in parts]
            pack.commit()
        return pack.name, offsets

    def copy_pack(self, source: BlobDir, name: str) -> int:
        """Copy pack ``name`` from ``source`` unless present; return the bytes copied.

        Raises:
            CorruptCheckpointError: the source pack is missing or unreadable.
            StoreFullError, StoreIOError: the copy could not be written.
        """
        final = self.pack_path(name)
        if final.exists():
            return 0
        fd = source._open_path(source.pack_path(name), f"pack {name}")
        try:  # piece by piece: a pack's size (a sparse file's, say) is not memory to take
            self._write_atomic(final, _pieces(fd), f"pack {name}")
        finally:
            os.close(fd)
        return os.lstat(final).st_size

    def _write_atomic(self, final: Path, parts: Iterable[bytes | memoryview], what: str) -> None:
        # temp (flocked: gc skips a live writer's) -> write -> fsync -> rename -> dir fsync
        tmp = self.root / _TMP / f"{final.name[:16]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # Creating the temp file can hit ENOSPC too (no inode left): same typed error.
        with _os_errors(f"creating a temp file for {what}"):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, self.file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fchmod(fd, self.file_mode)  # not cut by the umask (see _mkdir)
            with _os_errors(f"writing {what}"):
                at = 0
                for part in parts:
                    view = memoryview(part).cast("B")
                    start = at
                    while view.nbytes:
                        n = os.write(fd, view)
                        view = view[n:]
                        at += n
                    if self.fsync:
                        _start_writeback(fd, start, at - start)
                _faults.point("blob.after_write")
                if self.fsync:
                    os.fsync(fd)
                _faults.point("blob.after_fsync")
                os.rename(tmp, final)
            _faults.point("blob.after_rename")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        if self.fsync:
            with _os_errors(f"syncing the directory of {what}"):
                _fsync_dir(final.parent)

    def read(self, digest: str, limit: int | None = None) -> bytes:
        """Return a chunk file's bytes (refused when the file is over ``limit`` bytes).

        Raises:
            CorruptCheckpointError: the file is missing, unreadable, not a regular file
                or larger than ``limit``.
        """
        fd = self._open_path(self.path(digest), f"chunk {digest}", digest)
        try:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:  # before reading it into memory
                raise CorruptCheckpointError(
                    f"chunk file {digest} holds {size} bytes, more than any chunk",
                    digest=digest,
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
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
        fd = self._open_path(self.path(digest), f"chunk {digest}", digest)
        try:
            got = _pread_into(fd, out, 0)
            return got + (len(os.pread(fd, 1, got)) if got == out.nbytes else 0)
        finally:
            os.close(fd)

    def read_packed(self, name: str, offset: int, n: int, digest: str) -> memoryview:
        """Return the ``n`` bytes of chunk ``digest`` at ``offset`` in pack ``name``.

        Read once into a fresh buffer and returned as a view of it (no second copy).
        ``offset`` and ``n`` come from the chunk index: they are checked against the
        pack's real size before the buffer is allocated.

        Raises:
            CorruptCheckpointError: the pack is missing, unreadable or too short.
        """
        fd = self._open_path(self.pack_path(name), f"chunk {digest} (pack {name})", digest)
        try:
            size = os.fstat(fd).st_size
            if not 0 <= offset <= offset + n <= size:
                raise CorruptCheckpointError(
                    f"chunk {digest} is cut short in pack {name}: {n} bytes at {offset}, "
                    f"the pack holds {size}",
                    digest=digest,
                )
            out = memoryview(bytearray(n))
            got = _pread_into(fd, out, offset)
        finally:
            os.close(fd)
        if got != n:
            raise CorruptCheckpointError(
                f"chunk {digest} is cut short in pack {name}", digest=digest
            )
        return out

    def read_packed_into(self, name: str, offset: int, out: memoryview, digest: str) -> int:
        """Read chunk ``digest`` from pack ``name`` straight into ``out``; return bytes read.

        Raises:
            CorruptCheckpointError: the pack is missing or unreadable.
        """
        fd = self._open_path(self.pack_path(name), f"chunk {digest} (pack {name})", digest)
        try:
            return _pread_into(fd, out, offset)
        finally:
            os.close(fd)

    def _open_path(self, path: Path, what: str, digest: str | None = None) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{what} is missing", digest=digest) from None
        except PermissionError:
            raise CorruptCheckpointError(
                f"{what} cannot be read: permission denied",
                hint="Give the store's files back to the user that writes it (chown/chmod), "
                "then `ckptlite verify --full` marks the checkpoint valid again.",
                digest=digest,
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CorruptCheckpointError(
                    f"{what} is a symlink; refusing to follow it", digest=digest
                ) from None
            raise

    def remove(self, digest: str) -> int:
        """Unlink a chunk file; return the bytes freed (0 if it was gone)."""
        return _unlink(self.path(digest))

    def digests(self) -> Iterator[tuple[str, int]]:
        """Yield (digest, size) of every chunk file on disk."""
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir() or sub.is_symlink():
                continue
            for f in sub.iterdir():
                if _DIGEST_RE.match(f.name) and f.name[:2] == sub.name:
                    with contextlib.suppress(FileNotFoundError):
                        yield f.name, f.lstat().st_size

    def packs(self) -> Iterator[tuple[str, int]]:
        """Yield (name, size) of every pack file on disk."""
        for f in (self.root / _PACKS).iterdir():
            if _DIGEST_RE.match(f.name):
                with contextlib.suppress(FileNotFoundError):
                    yield f.name, f.lstat().st_size

    def remove_pack(self, name: str) -> int:
        """Unlink a pack file; return the bytes freed (0 if it was gone)."""
        return _unlink(self.pack_path(name))

    def dead_temp_files(self) -> Iterator[Path]:
        """Yield temp files whose writer is gone (their flock is free)."""
        for f in (self.root / _TMP).iterdir():
            try:
                fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            finally:
                os.close(fd)
            yield f

    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        """Hold ``blobs/.lock``: shared for saves, exclusive for gc.

        flock gives a waiting exclusive locker no priority: with saves always
        overlapping, gc would wait forever. So both pass ``blobs/.gate`` first,
        gc holding it exclusive until it has the lock, which holds new saves back
        while the running ones finish.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(self._lock_path, flags, self.file_mode)
        try:
            gate = os.open(self._lock_path.with_name(".gate"), flags, self.file_mode)
            try:
                fcntl.flock(gate, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                os.close(gate)
            yield
        finally:
            os.close(fd)


class PackWriter:
    """One new pack file, written part by part as the parts come.

    Parts go into a flocked temp file, and writeback of each starts at once, so
    the fsync in ``commit`` waits for the tail only: one file and one fsync for a
    group of chunks, where a file per chunk cost a journal commit each (P3).
    ``commit`` makes it durable (fsync, rename, directory fsync); leaving the
    ``with`` block without it removes the temp file.

    >>> import tempfile, pathlib
    >>> blobs = BlobDir(pathlib.Path(tempfile.mkdtemp()) / "blobs", fsync=False)
    >>> with PackWriter(blobs) as pack:
    ...     offsets = [pack.add(b"abc"), pack.add(b"de")]
    ...     pack.commit()
    >>> offsets, bytes(blobs.read_packed(pack.name, 3, 2, "-"))
    ([0, 3], b'de')
    """

    def __init__(self, blobs: BlobDir) -> None:
        self.blobs = blobs
        self.name = secrets.token_hex(32)
        self.size = 0
        self._tmp = blobs.root / _TMP / f"{self.name[:16]}.{os.getpid()}.pack.tmp"
        self._fd = -1

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:  # not committed: the temp file goes
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            os.close(self._fd)
            self._fd = -1

    def add(self, data: bytes | memoryview) -> int:
        """Append ``data``; return its offset in the pack.

        Raises:
            StoreFullError, StoreIOError: the write failed.
        """
        b = self.blobs
        if self._fd < 0:
            # Creating the temp file can hit ENOSPC too (no inode left): same typed error.
            with _os_errors(f"creating pack {self.name}"):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                self._fd = os.open(self._tmp, flags, b.file_mode)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # gc removes only unlocked (dead) temps
            os.fchmod(self._fd, b.file_mode)  # not cut by the umask (see BlobDir._mkdir)
        offset = self.size
        view = memoryview(data).cast("B")
        with _os_errors(f"writing pack {self.name}"):
            while view.nbytes:
                n = os.write(self._fd, view)
                view = view[n:]
                self.size += n
            if b.fsync:
                _start_writeback(self._fd, offset, self.size - offset)
        _faults.point("blob.after_write")
        return offset

    def commit(self) -> None:
        """Make the pack durable under its name (nothing to do if no part was added).

        Raises:
            StoreFullError, StoreIOError: the fsync or rename failed (the temp file goes).
        """
        if self._fd < 0:
            return
        final = self.blobs.pack_path(self.name)
        with _os_errors(f"writing pack {self.name}"):
            if self.blobs.fsync:
                os.fsync(self._fd)
            _faults.point("blob.after_fsync")
            os.rename(self._tmp, final)
        os.close(self._fd)
        self._fd = -1
        _faults.point("blob.after_rename")
        if self.blobs.fsync:
            with _os_errors(f"syncing the directory of pack {self.name}"):
                _fsync_dir(final.parent)


def _unlink(path: Path) -> int:
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return size


def _pieces(fd: int, size: int = 8 << 20) -> Iterator[bytes]:
    while data := os.read(fd, size):
        yield data


def _pread_into(fd: int, out: memoryview, offset: int) -> int:
    got = 0
    while got < out.nbytes:
        n = os.preadv(fd, [out[got:]], offset + got)
        if not n:
            break
        got += n
    return got


_sync_file_range: Any = None


def _start_writeback(fd: int, offset: int, n: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting.

    The fsync at the end then waits for the tail only: writeback of the first
    chunks overlaps hashing and writing of the next ones (P3). Linux only; a
    no-op elsewhere, and its errors are left to the fsync that follows.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            import ctypes  # here, not at the top: ``import ckptlite`` stays light

            fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range = fn
    if _sync_file_range and n:
        _sync_file_range(fd, offset, n, 2)  # SYNC_FILE_RANGE_WRITE


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"{what}: the disk is full") from e
        if e.errno == errno.EIO:
            raise StoreIOError(f"{what}: I/O error") from e
        raise
