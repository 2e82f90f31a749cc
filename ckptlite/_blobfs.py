"""The blob tree's file-system primitives: names, open flags, reads, writeback, OS errors.

Shared by ``blobs`` (``BlobDir``), ``_blob_upkeep`` (walking and removing) and
``_packs`` (open packs), which all build on it: nothing here imports them.
"""

# Performance targets cited as (P1)...(P17): bench/TARGETS.md.
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._perthread import ThreadOwner
from .errors import StoreFullError, StoreIOError

__all__ = [
    "CREATE_FLAGS",
    "DIGEST_RE",
    "DIR_FLAGS",
    "LOCKS",
    "PACKS",
    "POOL_MAX",
    "READ_FLAGS",
    "SUB_RE",
    "TMP",
    "WRITE_PIECE",
    "OpenPack",
    "PackReaders",
    "files",
    "os_errors",
    "pieces",
    "pread_into",
    "read_errors",
    "scan",
    "start_writeback",
]

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
SUB_RE = re.compile(r"^[0-9a-f]{2}$")  # a chunk directory of stores written before packs
TMP = "tmp"
PACKS = "packs"
LOCKS = (".lock", ".gate")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO planted under a pack's name must not block the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
#: Most bytes per write call into a pack or blob file. The kernel picks the page-cache
#: folio size from the write's length: one 1 MiB write filled 1 MiB folios, which on
#: this VM wrote at ~0.3 GB/s (3.0-3.1 ms per MiB appended, new folios from the high
#: orders of the free lists), the same bytes in 256 KiB writes 1.0-1.3 ms, as fast as
#: O_DIRECT and leaving the bytes in the page cache for a load (bench/NOTES.md, P11).
WRITE_PIECE = 256 << 10
#: Idle open packs a BlobDir keeps for appends (about one per write group in flight).
POOL_MAX = 4


def scan(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:
        return list(it)


def files(parent: int, prefix: str) -> list[tuple[str, int]]:
    """(name, size) of the non-directories named like a digest starting with ``prefix``.

    A link's (or other non-regular file's) size is 0.
    """
    found: list[tuple[str, int]] = []
    for entry in scan(parent):
        if not DIGEST_RE.match(entry.name) or not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            found.append((entry.name, st.st_size if stat.S_ISREG(st.st_mode) else 0))
    return found


def pieces(fd: int, size: int = 8 << 20) -> Iterator[bytes]:
    while data := os.read(fd, size):
        yield data


def pread_into(fd: int, out: memoryview, offset: int) -> int:
    got = 0
    while got < out.nbytes:
        n = os.preadv(fd, [out[got:]], offset + got)
        if not n:
            break
        got += n
    return got


_sync_file_range: Any = None


def start_writeback(fd: int, offset: int, n: int) -> None:
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


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"{what}: the disk is full") from e
        if e.errno == errno.EIO:
            raise StoreIOError(f"{what}: I/O error") from e
        raise


@contextlib.contextmanager
def read_errors(what: str, digest: str | None, path: str) -> Iterator[None]:
    """Raise an OS error met reading ``what`` as StoreIOError: unreadable is not damaged."""
    try:
        yield
    except OSError as e:
        raise StoreIOError(
            f"{what} cannot be read: {e.strerror or e}",
            hint="Check the store's disk (dmesg) and permissions, then retry.",
            digest=digest,
            path=path,
        ) from e


class OpenPack:
    """A pack file this process holds flocked: ``size`` bytes durable, ``end`` written."""

    __slots__ = ("end", "fd", "flushed", "linked", "name", "size")

    def __init__(self, name: str, fd: int, size: int, linked: bool) -> None:
        self.name, self.fd, self.size, self.end, self.linked = name, fd, size, size, linked
        self.flushed = size  # writeback started (or synced) up to here


_INHERITED: list[Any] = []  # a forked child's copies: closed by _after_fork
# Made anew in every child, where only the forking thread exists: never held there.
_child_lock = threading.Lock()


def _new_child_lock() -> None:
    global _child_lock
    _child_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_child_lock)


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class _Kept:
    """One thread's kept pack descriptors; ``lock`` is held while it reads through one."""

    __slots__ = ("fds", "lock")

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.lock = threading.Lock()


def _close_kept(kept: _Kept) -> None:
    # Under its lock: a sweep from another thread never meets a closed descriptor
    # (whose number the kernel may already have given to another file).
    with kept.lock:
        _close_all(kept.fds)


class PackReaders:
    """Packs kept open for reads, per thread: a tile loaded again opens nothing.

    A warm 256 KiB tile load spent ~45 of its ~125 us (CPU caches cold, P12) on
    opening its pack: two ``lstat``s of the directories, the open, an ``fstat``, a
    close. Pack names are random and never reused and a pack's committed bytes never
    change, so a descriptor reads right for every row naming its pack. Each use
    checks that the file is still linked (one ``fstat``): a pack gc deleted is
    closed, not read, so its space goes back. ``sweep`` (a record cache missed: the
    store changed) closes every thread's kept descriptors of such packs, the load
    pool's idle threads' too; a thread's own are closed when it ends, and all at
    ``close``. A chunk that fails its check is read again with ``fresh`` (a safe
    open) before it is called damaged: the directory may have been replaced
    meanwhile. A thread holds its own lock while it reads (``hold``), so no
    descriptor is closed under a read.
    """

    KEEP = 4  # per thread: a load's chunks come from one or two packs

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all: list[_Kept] = []
        self._pid = os.getpid()

    def hold(
        self, name: str, opener: Callable[[], int], fresh: bool = False
    ) -> tuple[int, threading.Lock]:
        """Return a descriptor of pack ``name`` (kept, or from ``opener``) and a held lock.

        Release the lock once the read is done: until then no sweep closes it.
        """
        if self._pid != os.getpid():
            with _child_lock:  # a forked child's threads (a new pool) may all get here
                if self._pid != os.getpid():
                    self._after_fork()
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is None:
            kept = self._local.kept = _Kept()
            with self._lock:
                self._all.append(kept)
            # A thread that ends closes its own (a thread per request must not pile up).
            self._local.owner = ThreadOwner(kept, self._all, self._lock, _close_kept, _INHERITED)
        lock = kept.lock
        lock.acquire()
        try:
            fds = kept.fds
            fd = fds.pop(name, None)
            if fd is not None:
                if not fresh and os.fstat(fd).st_nlink:
                    fds[name] = fd  # most recently used last
                    return fd, lock
                os.close(fd)
            fd = opener()
            if len(fds) >= self.KEEP:
                os.close(fds.pop(next(iter(fds))))
            fds[name] = fd
            return fd, lock
        except BaseException:
            lock.release()
            raise

    def sweep(self) -> None:
        """Close every thread's kept descriptors of packs no longer linked (gc deleted them).

        A thread reading right now is passed over: it checks what it reads, and the
        next sweep looks at the rest.
        """
        if self._pid != os.getpid():
            return
        with self._lock:
            everyone = list(self._all)
        for kept in everyone:
            if not kept.lock.acquire(blocking=False):
                continue
            try:
                fds = kept.fds
                for name, fd in list(fds.items()):
                    if not os.fstat(fd).st_nlink:
                        del fds[name]
                        os.close(fd)
            finally:
                kept.lock.release()

    def close(self) -> None:
        """Close every thread's kept descriptors (waiting for reads under way)."""
        with self._lock:
            everyone = list(self._all)
        for kept in everyone:
            _close_kept(kept)

    def _after_fork(self) -> None:
        # The child's copies of the parent's descriptors: its own to close. Not under
        # the lock: a parent thread may have held it at the fork, and the child has
        # only this thread.
        # Nor under each thread's own: the fork may have caught one mid-read.
        for kept in self._all:
            _close_all(kept.fds)
        self._lock, self._local, self._all = threading.Lock(), threading.local(), []
        self._pid = os.getpid()  # last: a thread that sees it finds the rest new
