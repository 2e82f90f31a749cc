"""The blob tree's upkeep: walking it, removing and cutting files, and the gc lock.

A mixin of ``BlobDir``, split from it by responsibility: ``blobs`` writes and
reads, this walks (``digests``, ``packs``, ``unsafe``, ``collect_temps``),
removes, and orders gc against saves (``gc_lock``). Same rules: nothing outside
the store is followed, read or removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._blobfs import DIGEST_RE, LOCKS, PACKS, READ_FLAGS, SUB_RE, TMP, files, os_errors, scan
from .errors import StoreLayoutError

__all__ = ["BlobUpkeepMixin"]


class BlobUpkeepMixin:
    """``BlobDir``'s walking, removing and locking methods."""

    if TYPE_CHECKING:  # BlobDir's
        root: Path
        readonly: bool

        def _open_dir(self, sub: str | None = None, *, create: bool = False) -> int: ...

        def _dir(self, sub: str | None = None) -> contextlib.AbstractContextManager[int]: ...

        def _writable(self, what: str) -> None: ...

        def _open_dir_at(self, parent: int | None, name: str, shown: str) -> int: ...

        def _chunk(self, digest: str) -> tuple[str, str]: ...

        def _pack(self, name: str) -> tuple[str, str]: ...

        def _open_lock(self, parent: int, name: str) -> int: ...

        def pack_busy(self, name: str) -> bool: ...

        def sweep_readers(self) -> None: ...

    def remove(self, digest: str) -> int:
        """Unlink a chunk file; return the bytes freed (0 if it was gone).

        Raises:
            StoreLayoutError: its directory is a symlink (nothing is removed).
        """
        self._writable(f"removing chunk {digest}")
        return self._unlink(*self._chunk(digest))

    def remove_pack(self, name: str) -> int:
        """Unlink a pack file; return the bytes freed (0 if it was gone).

        Raises:
            StoreLayoutError: ``packs/`` is a symlink (nothing is removed).
        """
        self._writable(f"removing pack {name}")
        freed = self._unlink(*self._pack(name))
        # This process's threads that read it keep it open: its space goes back now,
        # not at their next look (a gc here changes no stamp their reads see).
        self.sweep_readers()
        return freed

    def truncate_pack(self, name: str, length: int) -> int:
        """Cut pack ``name`` down to ``length`` bytes (its dead tail); return the bytes freed.

        Only for a pack no writer holds (see ``pack_busy``) and no row names past ``length``.

        Raises:
            StoreLayoutError: ``packs/`` is a symlink (nothing is changed).
        """
        self._writable(f"truncating pack {name}")
        sub, name = self._pack(name)
        try:
            with self._dir(sub) as parent:
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        except OSError:
            return 0  # gone, or a link (verify reports it): nothing of ours to cut
        try:
            size = os.fstat(fd).st_size
            if not stat.S_ISREG(os.fstat(fd).st_mode) or size <= length:
                return 0
            with os_errors(f"truncating pack {name}"):
                os.ftruncate(fd, length)
            return size - length
        finally:
            os.close(fd)

    def _unlink(self, sub: str, name: str) -> int:
        # A symlink itself goes (unlink never follows the last component); a
        # directory under a pack's name is left for verify to report.
        try:
            with self._dir(sub) as parent:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    return 0
                os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def digests(self) -> list[tuple[str, int]]:
        """Return (digest, size) of every chunk file on disk (a link's size is 0).

        Chunk directories that are symlinks are skipped (``unsafe`` lists them).
        """
        found: list[tuple[str, int]] = []
        try:
            top = self._open_dir()
        except (FileNotFoundError, StoreLayoutError):
            return found
        try:
            for sub in scan(top):
                if not (SUB_RE.match(sub.name) and sub.is_dir(follow_symlinks=False)):
                    continue
                try:
                    fd = self._open_dir_at(top, sub.name, f"{self.root.name}/{sub.name}")
                except (FileNotFoundError, StoreLayoutError):
                    continue
                try:
                    found += files(fd, sub.name)
                finally:
                    os.close(fd)
        finally:
            os.close(top)
        return found

    def packs(self) -> list[tuple[str, int]]:
        """Return (name, size) of every pack file on disk (a link's size is 0).

        Nothing if ``packs/`` is missing or a symlink (``unsafe`` lists it).
        """
        try:
            fd = self._open_dir(PACKS)
        except (FileNotFoundError, StoreLayoutError):
            return []
        try:
            return files(fd, "")
        finally:
            os.close(fd)

    def unsafe(self) -> list[str]:
        """List what is a symlink or of the wrong type where the store keeps its own.

        Paths relative to the store: ``blobs`` itself, ``packs``, ``tmp``, chunk
        directories, lock files, and entries named like packs or chunks. Nothing
        is followed.
        """
        top_name = self.root.name
        try:
            top = self._open_dir()
        except FileNotFoundError:
            return []
        except StoreLayoutError:
            return [top_name]
        found: list[str] = []
        try:
            for entry in scan(top):
                name, shown = entry.name, f"{top_name}/{entry.name}"
                if name in LOCKS:
                    if not entry.is_file(follow_symlinks=False):
                        found.append(shown)
                    continue
                if name not in (TMP, PACKS) and not SUB_RE.match(name):
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    found.append(shown)
                    continue
                if name == TMP:
                    continue
                try:
                    fd = self._open_dir_at(top, name, shown)
                except FileNotFoundError:
                    continue
                except StoreLayoutError:
                    found.append(shown)
                    continue
                try:
                    with os.scandir(fd) as it:
                        for f in it:
                            ours = name == PACKS or f.name[:2] == name
                            if (
                                ours
                                and DIGEST_RE.match(f.name)
                                and not f.is_file(follow_symlinks=False)
                            ):
                                found.append(f"{shown}/{f.name}")
                finally:
                    os.close(fd)
        finally:
            os.close(top)
        return sorted(found)

    def collect_temps(self, dry_run: bool) -> list[tuple[str, int]]:
        """Remove temp files whose writer is gone (their flock is free); return (name, size).

        ``dry_run`` only lists them.

        Raises:
            StoreLayoutError: ``tmp/`` is a symlink (nothing is removed).
        """
        found: list[tuple[str, int]] = []
        try:
            parent = self._open_dir(TMP)
        except FileNotFoundError:
            return found
        try:
            for entry in scan(parent):
                if not entry.is_file(follow_symlinks=False):
                    continue  # not a temp file of ours (a link is never followed)
                try:
                    fd = os.open(entry.name, READ_FLAGS, dir_fd=parent)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    found.append((entry.name, os.fstat(fd).st_size))
                    if not dry_run:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.name, dir_fd=parent)
                except BlockingIOError:
                    continue  # a live writer holds it
                finally:
                    os.close(fd)
        finally:
            os.close(parent)
        return found

    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        """Hold ``blobs/.lock``: shared for saves, exclusive for gc.

        flock gives a waiting exclusive locker no priority: with saves always
        overlapping, gc would wait forever. So both pass ``blobs/.gate`` first,
        gc holding it exclusive until it has the lock, which holds new saves back
        while the running ones finish. Read-only, the lock files are opened read-only
        (flock needs no write access) and, where absent, nothing is locked.

        Raises:
            StoreLayoutError: ``blobs/`` or a lock file is a symlink.
        """
        if self.readonly:
            with self._read_only_lock(exclusive):
                yield
            return
        with self._dir() as parent:
            fd = self._open_lock(parent, LOCKS[0])
            try:
                gate = self._open_lock(parent, LOCKS[1])
            except BaseException:
                os.close(fd)
                raise
        try:
            try:
                fcntl.flock(gate, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                os.close(gate)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _read_only_lock(self, exclusive: bool) -> Iterator[None]:
        fds: list[int] = []
        try:
            try:
                parent = self._open_dir()
            except FileNotFoundError:
                parent = -1  # a bare snapshot without blobs/: no process writes to it
            try:
                for name in (LOCKS[1], LOCKS[0]):  # the gate first, as gc_lock
                    if parent < 0:
                        break
                    try:
                        fd = os.open(name, READ_FLAGS, dir_fd=parent)
                    except OSError:
                        continue  # absent (a bare snapshot): no process writes to it
                    fds.append(fd)
                    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                if parent >= 0:
                    os.close(parent)
            for fd in fds[:-1]:  # the gate is released once the lock is held
                os.close(fd)
            fds = fds[-1:]
            yield
        finally:
            for fd in fds:
                os.close(fd)
