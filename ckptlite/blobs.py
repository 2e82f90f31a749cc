"""The blob directory: chunk files ``blobs/<2 hex>/<64 hex>``, written atomically.

Every file is written as temp -> fsync -> rename -> directory fsync. A temp
file is ``flock``-ed by its writer for as long as it is being written, so
``gc`` can tell a live writer's temp file (locked) from a dead one's (free).
``blobs/.lock`` orders gc against saves across processes: a save holds it
shared while it checks its chunk files and commits; gc holds it exclusive while
it deletes rows and unlinks files, so gc never removes a chunk a save is about
to reference.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import _faults
from .errors import CorruptCheckpointError, StoreFullError, StoreIOError

__all__ = ["BlobDir"]

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP = "tmp"


class BlobDir:
    """Chunk files under ``root``, named by digest only."""

    def __init__(self, root: Path, *, fsync: bool = True, group: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        self.dir_mode = 0o770 if group else 0o700
        self.file_mode = 0o660 if group else 0o600
        root.parent.mkdir(parents=True, exist_ok=True)
        self._mkdir(root)
        self._mkdir(root / _TMP)
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

    def write(self, digest: str, data: bytes | memoryview) -> bool:
        """Store ``data`` under ``digest`` unless present; return True if written.

        Raises:
            StoreFullError: the disk is full (no temp file is left behind).
            StoreIOError: a write or fsync failed (nothing is renamed into place).
        """
        return self.write_many([(digest, data)])[0]

    def write_many(self, items: Sequence[tuple[str, bytes | memoryview]]) -> list[bool]:
        """Store several chunks; return, per chunk, whether it was written (not present).

        All temp files are written, then all fsynced, then renamed, then their
        directories fsynced: on ext4 one journal commit covers the batch, where
        write-fsync-rename one file at a time cost a commit (~5 ms) per chunk.

        Raises:
            StoreFullError: the disk is full (no temp file is left behind).
            StoreIOError: a write or fsync failed (nothing is renamed into place).
        """
        result: list[bool] = []
        pending: list[tuple[str, Path, int]] = []  # digest, temp path, open fd
        try:
            for digest, data in items:
                final = self.path(digest)
                if self.exists(digest):
                    if self.fsync:
                        self._resync(digest, final)
                    result.append(False)
                    continue
                tmp = self.root / _TMP / f"{digest[:16]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                # Creating the temp file can hit ENOSPC too (no inode left): same typed error.
                with _os_errors(f"creating a temp file for chunk {digest}"):
                    fd = os.open(
                        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, self.file_mode
                    )
                pending.append((digest, tmp, fd))
                result.append(True)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.fchmod(fd, self.file_mode)  # not cut by the umask (see _mkdir)
                with _os_errors(f"writing chunk {digest}"):
                    view = memoryview(data)
                    while view.nbytes:
                        n = os.write(fd, view)
                        view = view[n:]
                    _faults.point("blob.after_write")
            dirs: set[Path] = set()
            for digest, _tmp, fd in pending:
                with _os_errors(f"writing chunk {digest}"):
                    if self.fsync:
                        os.fsync(fd)
                    _faults.point("blob.after_fsync")
            parents = {self.path(d).parent for d, _, _ in pending}
            new_dirs = {p for p in parents if not p.is_dir()}
            if new_dirs:
                with _os_errors("creating chunk directories"):
                    for parent in sorted(new_dirs):
                        self._mkdir(parent)
                    if self.fsync:
                        _fsync_dir(self.root)
            while pending:
                digest, tmp, fd = pending[0]
                final = self.path(digest)
                with _os_errors(f"writing chunk {digest}"):
                    parent = final.parent
                    os.rename(tmp, final)
                    pending.pop(0)
                    os.close(fd)
                    dirs.add(parent)
                    _faults.point("blob.after_rename")
            if self.fsync:
                for parent in sorted(dirs):
                    with _os_errors(f"syncing chunk directory {parent.name}"):
                        _fsync_dir(parent)
        except BaseException:
            for _digest, tmp, fd in pending:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return result

    def _resync(self, digest: str, final: Path) -> None:
        # A file with no row yet is a failed or killed writer's: its directory
        # fsync may have failed. Sync it again before a record may trust it.
        with _os_errors(f"syncing chunk {digest}"):
            fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(final.parent)

    def read(self, digest: str) -> bytes:
        """Return a chunk file's bytes.

        Raises:
            CorruptCheckpointError: the file is missing, unreadable or not a regular file.
        """
        fd = self._open(digest)
        try:
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
        fd = self._open(digest)
        try:
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                got = 0
                while got < out.nbytes:
                    n = f.readinto(out[got:])
                    if not n:
                        return got
                    got += n
                return got + len(f.read(1))
        finally:
            os.close(fd)

    def _open(self, digest: str) -> int:
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise CorruptCheckpointError(f"chunk {digest} is missing", digest=digest) from None
        except PermissionError:
            raise CorruptCheckpointError(
                f"chunk {digest} cannot be read: permission denied",
                hint="Give the store's files back to the user that writes it (chown/chmod), "
                "then `ckptlite verify --full` marks the checkpoint valid again.",
                digest=digest,
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CorruptCheckpointError(
                    f"chunk {digest} is a symlink; refusing to follow it", digest=digest
                ) from None
            raise
        return fd

    def remove(self, digest: str) -> int:
        """Unlink a chunk file; return the bytes freed (0 if it was gone)."""
        p = self.path(digest)
        try:
            size = os.lstat(p).st_size
            os.unlink(p)
        except FileNotFoundError:
            return 0
        return size

    def digests(self) -> Iterator[tuple[str, int]]:
        """Yield (digest, size) of every chunk file on disk."""
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir() or sub.is_symlink():
                continue
            for f in sub.iterdir():
                if _DIGEST_RE.match(f.name) and f.name[:2] == sub.name:
                    with contextlib.suppress(FileNotFoundError):
                        yield f.name, f.lstat().st_size

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
