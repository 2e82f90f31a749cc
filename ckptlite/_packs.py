"""Packs appended to by this process (``PackAppender``); ``BlobDir.write_pack`` writes whole ones.

``appender`` hands them out; ``BlobDir`` keeps the pool of open packs; they
write through its directory descriptors, so nothing they do follows a symlink.
See ``blobs`` for the layout and the locking.
"""

from __future__ import annotations

import fcntl
import os
import secrets

from . import _faults
from ._blobfs import (
    CREATE_FLAGS,
    PACKS,
    TMP,
    WRITE_PIECE,
    OpenPack,
    os_errors,
    start_writeback,
)
from .blobs import BlobDir
from .errors import StoreLayoutError

__all__ = ["PackAppender", "appender"]


class PackAppender:
    """Append one write group's chunks to an open pack; one ``fdatasync`` makes them durable.

    A pack is checked out of the BlobDir's pool (one writer at a time: threads
    and processes never interleave inside a pack) and appended to at its end;
    only when none is open, or the open one is past ``limit``, a new one is made
    as before: a flocked temp file in ``tmp/``, fsync, rename into ``packs/``,
    directory fsync. Every open pack stays flocked, so gc leaves it alone. A
    crash after an append leaves bytes no row names past the pack's last
    committed chunk: dead space, which gc reclaims with the pack.

    ``sync`` makes every appended byte durable; ``release`` hands the packs
    back once the rows naming their chunks are committed (or dropped). Leaving
    the ``with`` block on an error truncates each pack back to its durable
    length and closes it: the next save never appends after bytes of a failed
    append.
    """

    def __init__(self, blobs: BlobDir, limit: int) -> None:
        self.blobs = blobs
        self.limit = limit
        self._packs: list[OpenPack] = []  # every pack this group wrote to; the last is current
        self._starts: list[int] = []  # each one's length before this group appended

    def __enter__(self) -> PackAppender:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._abort()

    def add(self, data: bytes | memoryview) -> tuple[str, int]:
        """Append ``data``; return the pack it went into and its offset there.

        Raises:
            StoreFullError, StoreIOError: the write failed.
            StoreLayoutError: ``tmp/`` is a symlink.
        """
        view = memoryview(data).cast("B")
        pack = self._packs[-1] if self._packs else None
        if pack is None and (pack := self.blobs._checkout()) is not None:
            self._packs.append(pack)
            self._starts.append(pack.size)
        if pack is None or (pack.end and pack.end + view.nbytes > self.limit):
            pack = self._create()  # a full pack is closed by release, with its flock
            self._packs.append(pack)
            self._starts.append(0)
        offset = pack.end
        with os_errors(f"writing pack {pack.name}"):
            while view.nbytes:
                n = os.pwrite(pack.fd, view[:WRITE_PIECE], pack.end)  # pieces: see WRITE_PIECE
                view = view[n:]
                pack.end += n
            if self.blobs.fsync and offset > pack.flushed:
                # Writeback starts now, overlapping the next hash and write: the sync
                # waits for the tail only. From a group's second chunk on: a one-chunk
                # save makes no such call (its sync writes the chunk anyway).
                start_writeback(pack.fd, pack.flushed, pack.end - pack.flushed)
                pack.flushed = pack.end
        _faults.point("pack.after_append" if pack.linked else "blob.after_write")
        return pack.name, offset

    def _create(self) -> OpenPack:
        b = self.blobs
        name = secrets.token_hex(32)
        with b._dir(TMP) as tmp_dir, os_errors(f"creating pack {name}"):
            # Creating the temp file can hit ENOSPC too (no inode left): same typed error.
            fd = os.open(_tmp_name(name), CREATE_FLAGS, b.file_mode, dir_fd=tmp_dir)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while it is open: gc skips it
        os.fchmod(fd, b.file_mode)  # not cut by the umask (see BlobDir._mkdir_at)
        return OpenPack(name, fd, 0, False)

    def sync(self) -> None:
        """Make every appended byte durable: one fdatasync per pack written; a new pack is renamed.

        Raises:
            StoreFullError, StoreIOError: the sync or rename failed.
            StoreLayoutError: ``tmp/`` or ``packs/`` is a symlink.
        """
        b = self.blobs
        for pack in self._packs:
            if pack.end == pack.size and pack.linked:
                continue
            with os_errors(f"writing pack {pack.name}"):
                if pack.linked:
                    if b.fsync:
                        os.fdatasync(pack.fd)
                    _faults.point("pack.after_sync")
                else:
                    if b.fsync:
                        os.fsync(pack.fd)
                    _faults.point("blob.after_fsync")
                    with b._dir(TMP) as tmp_dir, b._dir(PACKS) as packs:
                        os.rename(
                            _tmp_name(pack.name), pack.name, src_dir_fd=tmp_dir, dst_dir_fd=packs
                        )
                        pack.linked = True
                        _faults.point("blob.after_rename")
                        if b.fsync:
                            os.fsync(packs)
            pack.size = pack.flushed = pack.end

    def discard(self) -> None:
        """Cut every pack back to its length before this group, then ``release``.

        For appended bytes no row will name (the save's commit failed): no dead
        space is left behind. We hold each pack's flock: the cut bytes are ours.
        """
        for i, (pack, start) in enumerate(zip(self._packs, self._starts, strict=True)):
            try:
                os.ftruncate(pack.fd, start)
            except OSError:
                os.close(pack.fd)  # not trusted again: closed, its tail left to gc
                self._packs[i] = OpenPack(pack.name, -1, start, False)
                continue
            pack.size = pack.end = pack.flushed = start
        self.release()

    def release(self) -> None:
        """Hand the current pack back to the pool; close the others (their flocks go)."""
        packs, self._packs, self._starts = self._packs, [], []
        packs = [p for p in packs if p.fd >= 0]
        for i, pack in enumerate(packs):
            if i == len(packs) - 1 and pack.linked and pack.end == pack.size:
                self.blobs._checkin(pack, self.limit)
            else:
                os.close(pack.fd)

    def _abort(self) -> None:
        packs, self._packs, self._starts = self._packs, [], []
        for pack in packs:
            # Best effort, every pack closed whatever fails: the error that made us
            # abort is the one the caller must see.
            try:
                if pack.linked:
                    # We hold its flock: nobody else appends. Cut what this group added.
                    os.ftruncate(pack.fd, pack.size)
                else:
                    with self.blobs._dir(TMP) as tmp_dir:
                        os.unlink(_tmp_name(pack.name), dir_fd=tmp_dir)
            except (OSError, StoreLayoutError):
                pass
            finally:
                os.close(pack.fd)


def _tmp_name(name: str) -> str:
    return f"{name[:16]}.{os.getpid()}.pack.tmp"


def appender(blobs: BlobDir, limit: int) -> PackAppender:
    """Return a writer appending to one of this process's open packs of ``blobs``.

    Here, not on ``BlobDir``: this module builds on ``blobs``, never the reverse.

    Raises:
        ReadOnlyStoreError: the store is open read-only.
    """
    blobs._writable("writing a pack")
    return PackAppender(blobs, limit)
