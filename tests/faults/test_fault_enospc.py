"""Item 2: the disk fills up (a real 8 MiB tmpfs) while chunks or rows are written.

Every case runs on a real tmpfs (we run as root; CI does). The first case also
runs with the blob writer's ``os`` replaced by one whose disk has 8 MiB left, so
the ENOSPC path is proved even where mount is refused.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_harness import Reported, common_check, make_state, open_store, save_one, tmpfs

import ckptlite


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (we run as root); without mount rights the test cannot be honest."""
    mnt = tmp_path / "small"
    with tmpfs(mnt, "size=8m") as mounted:
        if not mounted:
            pytest.fail("mount -t tmpfs refused; run the fault suite as root (CI does)")
        yield mnt


class _FullDiskOS:
    """``os`` as the blob writer sees it, on a disk with ``free`` bytes left."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        n = memoryview(data).nbytes
        if n > self.free:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        self.free -= n
        return os.write(fd, data)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:  # appends to an open pack
        n = memoryview(data).nbytes
        if n > self.free:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        self.free -= n
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, length: int) -> None:  # a failed append cut back; a dead tail
        size = os.fstat(fd).st_size
        os.ftruncate(fd, length)
        self.free += max(0, size - length)

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        size = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_size
        os.unlink(path, dir_fd=dir_fd)
        self.free += size


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on an 8 MiB disk: a real tmpfs, or the injected blob-writer disk."""
    if request.param == "tmpfs":
        yield request.getfixturevalue("small_disk")
        return
    import ckptlite._packs
    import ckptlite.blobs

    mp = request.getfixturevalue("monkeypatch")
    disk = _FullDiskOS(8 << 20)  # one disk for both modules that write blobs
    mp.setattr(ckptlite.blobs, "os", disk)
    mp.setattr(ckptlite._packs, "os", disk)
    yield tmp_path


def _fill(path: Path, leave: int) -> None:
    """Write a filler file until only about ``leave`` bytes are free."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    with open(path, "wb") as f:
        f.write(b"\xff" * max(0, free - leave))


def _assert_failed_cleanly(mgr: ckptlite.CheckpointManager, store: Path, before: int) -> None:
    assert len(mgr.list()) == before, "a failed save committed something"
    assert list((store / "blobs" / "tmp").iterdir()) == [], "temp files left behind"


def test_enospc_while_writing_chunks(full_disk: Path) -> None:
    store = full_disk / "store"
    reported = Reported()
    with open_store(store) as mgr:
        for seed in (1, 2):
            cp = save_one(mgr, None, seed, 300_000)
            reported.saved[cp.id] = (seed, 300_000)
        with pytest.raises(ckptlite.StoreFullError) as exc:
            save_one(mgr, None, 99, 20_000_000)  # random bytes: 20 MB on an 8 MiB disk
        assert "full" in str(exc.value) and exc.value.hint
        _assert_failed_cleanly(mgr, store, 2)
        for cid, (seed, size) in reported.saved.items():
            assert mgr.load(cid) == make_state(seed, size)
        # Whatever chunks the failed save did write are orphans: gc frees the space.
        # (How many there are depends on the writer's batching: chunk files are
        # written in parallel groups, so the disk may fill before any group renames.)
        freed = mgr.gc()
        assert not freed.temp_files
        cp = save_one(mgr, None, 3, 1_200_000)
        reported.saved[cp.id] = (3, 1_200_000)
    common_check(store, reported)


@pytest.mark.parametrize("leave", [0, 4096, 40_000, 150_000, 600_000])
def test_enospc_at_every_stage_of_a_save(small_disk: Path, leave: int) -> None:
    """Leave a little space, so the disk fills in the blob writer or in SQLite's WAL."""
    store = small_disk / "store"
    filler = small_disk / "filler"
    reported = Reported()
    with open_store(store) as mgr:
        cp = save_one(mgr, None, 1, 70_000)
        reported.saved[cp.id] = (1, 70_000)
        _fill(filler, leave)
        failures = 0
        causes = set()
        for seed in range(10, 16):
            size = 300_000 if seed % 2 else 3_000
            try:
                cp = save_one(mgr, None, seed, size)
                reported.saved[cp.id] = (seed, size)
            except ckptlite.StoreFullError as e:
                failures += 1
                causes.add(type(e.__cause__).__name__)
                _assert_failed_cleanly(mgr, store, len(reported.saved))
        assert failures, "the disk never filled"
        if leave == 0:  # both writers met the full disk: the blob writer and SQLite
            assert causes == {"OSError", "FullError"}, causes
        filler.unlink()
        mgr.gc()
        cp = save_one(mgr, None, 50, 1_200_000)
        reported.saved[cp.id] = (50, 1_200_000)
    common_check(store, reported)


def test_enospc_when_no_inode_is_left(tmp_path: Path) -> None:
    """Creating the temp file itself fails: still StoreFullError, still nothing committed."""
    mnt = tmp_path / "inodes"
    with tmpfs(mnt, "size=64m,nr_inodes=200") as mounted:
        if not mounted:
            pytest.fail("mount -t tmpfs refused; run the fault suite as root (CI does)")
        store = mnt / "store"
        reported = Reported()
        with open_store(store) as mgr:
            cp = save_one(mgr, None, 1, 300_000)
            reported.saved[cp.id] = (1, 300_000)
            fillers = []
            with pytest.raises(OSError) as full:
                for i in range(300):  # use up the inodes
                    p = mnt / f"f{i}"
                    p.touch()
                    fillers.append(p)
            assert full.value.errno == errno.ENOSPC
            # This manager appends to the pack it holds open: no new file, no inode needed.
            cp = save_one(mgr, None, 4, 1_200_000)
            reported.saved[cp.id] = (4, 1_200_000)
            with open_store(store) as fresh:  # no open pack: its save needs a new file
                with pytest.raises(ckptlite.StoreFullError):
                    save_one(fresh, None, 2, 1_200_000)
                _assert_failed_cleanly(fresh, store, 2)
            for p in fillers:
                p.unlink()
            cp = save_one(mgr, None, 3, 1_200_000)
            reported.saved[cp.id] = (3, 1_200_000)
        common_check(store, reported)
