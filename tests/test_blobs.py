"""BlobDir: the descriptor of blobs/packs/ kept open for chunk reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from ckptlite.blobs import BlobDir


def _tile(seed: int) -> Any:
    return np.random.default_rng(seed).random(1 << 16, dtype=np.float32)  # 256 KiB: packed


def _blobs(mgr: ckptlite.CheckpointManager) -> BlobDir:
    return mgr.backend.blobs  # type: ignore[attr-defined, no-any-return]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _open_paths() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # listdir's own, closed by now
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def test_loads_open_the_packs_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        cps = [mgr.save("p", _tile(i), name=f"t{i}") for i in range(5)]
        mgr.load(cps[0].id)
        dir_opens: list[object] = []
        real_open = os.open

        def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_DIRECTORY:
                dir_opens.append(path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", counting_open)
        for _ in range(4):
            for cp in cps:
                assert np.array_equal(mgr.load(cp.id), _tile(int(cp.name[1:])))
        monkeypatch.undo()
    # Two per chunk read before (blobs/, then packs/); now none while packs/ is unchanged.
    assert dir_opens == []


def test_a_packs_directory_replaced_by_a_symlink_after_open_is_not_followed(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store) as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        assert np.array_equal(mgr.load(cp.id), _tile(1))  # the descriptor is now cached
        packs = store / "blobs" / "packs"
        outside = tmp_path / "outside"
        shutil.copytree(packs, outside)
        shutil.rmtree(packs)
        packs.symlink_to(outside)
        with pytest.raises(ckptlite.CorruptCheckpointError, match="symlink"):
            mgr.load(cp.id)


def test_a_packs_directory_moved_and_recreated_is_opened_again(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store) as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        mgr.load(cp.id)
        blobs = _blobs(mgr)
        first = blobs._packs_cache
        packs = store / "blobs" / "packs"
        packs.rename(store / "blobs" / "old-packs")
        shutil.copytree(store / "blobs" / "old-packs", packs)
        (store / "blobs" / "old-packs" / os.listdir(packs)[0]).write_bytes(b"stale")
        assert np.array_equal(mgr.load(cp.id), _tile(1))  # read from the new directory
        assert blobs._packs_cache is not None and first is not None
        assert blobs._packs_cache[2] != first[2]


def test_close_releases_the_cached_descriptor(tmp_path: Path) -> None:
    mgr = ckptlite.open(tmp_path / "s")
    cp = mgr.save("p", _tile(1), name="t")
    blobs = _blobs(mgr)
    mgr.load(cp.id)
    cached = blobs._packs_cache
    assert cached is not None
    os.fstat(cached[0])  # open
    before = _open_fds()
    blobs.close()
    assert blobs._packs_cache is None
    assert _open_fds() < before
    mgr.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_opens_its_own_packs_descriptor(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        mgr.load(cp.id)
        blobs = _blobs(mgr)
        parent = blobs._packs_cache
        assert parent is not None and parent[1] == os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: exit codes say what failed
            code = 0
            try:
                if not np.array_equal(mgr.load(cp.id), _tile(1)):
                    code = 3
                child = blobs._packs_cache
                if child is None or child[1] != os.getpid():
                    code = 4
            except BaseException:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's descriptor is untouched by the child's (closed copy of it).
        assert blobs._packs_cache == parent
        os.fstat(parent[0])
        assert np.array_equal(mgr.load(cp.id), _tile(1))


def test_a_thread_s_kept_packs_are_closed_when_it_ends(tmp_path: Path) -> None:
    # A thread per request, each loading: their kept descriptors must not pile up.
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        (name,) = os.listdir(tmp_path / "s" / "blobs" / "packs")
        mgr.load(cp.id)  # this thread's own: kept until close
        before = len([p for p in _open_paths() if name in p])
        for _ in range(5):
            t = threading.Thread(target=mgr.load, args=(cp.id,))
            t.start()
            t.join()
        assert len([p for p in _open_paths() if name in p]) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_the_kept_packs_are_locked_still_loads(tmp_path: Path) -> None:
    # Another thread may hold the kept packs' lock at the fork: the child, which has
    # only the forking thread, must not wait for it.
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        mgr.load(cp.id)
        lock = _blobs(mgr)._readers._lock
        with lock:
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)  # a deadlock ends the child with SIGALRM, not the suite
                code = 0 if np.array_equal(mgr.load(cp.id), _tile(1)) else 3
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


class _RecordingOS:
    """``os`` as a blob writer sees it, recording the size of every write call."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        self.sizes.append(memoryview(data).nbytes)
        return os.write(fd, data)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self.sizes.append(memoryview(data).nbytes)
        return os.pwrite(fd, data, offset)


def test_packs_and_blob_files_are_written_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends and whole packs go to the kernel in pieces of at most WRITE_PIECE bytes.

    One big write filled big page-cache folios, ~3x slower per MiB on the
    benchmark host (bench/NOTES.md, P11); every byte must still land in place.
    """
    import ckptlite._packs
    import ckptlite.blobs
    from ckptlite._blobfs import WRITE_PIECE

    rec = _RecordingOS()
    monkeypatch.setattr(ckptlite._packs, "os", rec)
    monkeypatch.setattr(ckptlite.blobs, "os", rec)
    tile = np.random.default_rng(1).random(3 << 18, dtype=np.float32)  # 3 MiB: 3 chunks
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", tile, name="t")
        appended = sum(rec.sizes)
        name, offsets = _blobs(mgr).write_pack([b"x" * (WRITE_PIECE + 5), b"y" * 7])
        assert offsets == [0, WRITE_PIECE + 5]
        np.testing.assert_array_equal(mgr.load(cp.id), tile)
    assert appended >= tile.nbytes
    assert sum(rec.sizes) == appended + WRITE_PIECE + 12
    assert rec.sizes and max(rec.sizes) <= WRITE_PIECE
    assert len(rec.sizes) >= tile.nbytes // WRITE_PIECE + 2
    pack = tmp_path / "s" / "blobs" / "packs" / name
    assert pack.read_bytes() == b"x" * (WRITE_PIECE + 5) + b"y" * 7


# -- packs kept open for reads ----------------------------------------------------------


def test_a_tile_loaded_again_opens_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        real = os.open
        opened: list[str] = []

        def spy(path: Any, *args: Any, **kwargs: Any) -> int:
            opened.append(str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", spy)
        assert np.array_equal(mgr.load(cp.id), _tile(1))
        first = list(opened)
        assert np.array_equal(mgr.load(cp.id), _tile(1))
        assert first and opened == first  # the second load opened nothing


def test_a_kept_pack_that_gc_deleted_is_closed_not_read(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store) as writer:  # closed: its pack is no writer's any more
        cp = writer.save("p", _tile(1), name="t")
    with ckptlite.open(store) as mgr:
        mgr.load(cp.id)  # its pack is kept open
        (name,) = os.listdir(store / "blobs" / "packs")
        with ckptlite.open(store) as other:
            other.delete(cp.id)
            assert name in other.gc().deleted_packs
        kept = _open_fds()
        with pytest.raises(ckptlite.CheckpointNotFoundError):
            mgr.load(cp.id)
        # The unlinked pack's descriptor was not kept: nothing holds its blocks.
        assert _open_fds() < kept
        assert not [p for p in _open_paths() if name in p]


def test_a_chunk_failing_its_check_is_read_again_through_a_fresh_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kept descriptor reads the file it opened; if the store's directory was
    # swapped since, that is not the store's pack: a second look opens it again.
    store = tmp_path / "s"
    with ckptlite.open(store) as mgr:
        cp = mgr.save("p", _tile(1), name="t")
        mgr.load(cp.id)
        packs = store / "blobs" / "packs"
        packs.rename(store / "blobs" / "old-packs")
        shutil.copytree(store / "blobs" / "old-packs", packs)
        (store / "blobs" / "old-packs" / os.listdir(packs)[0]).write_bytes(b"\0" * (1 << 20))
        assert np.array_equal(mgr.load(cp.id), _tile(1))
        assert mgr.get(cp.id).status is ckptlite.Status.VALID


def test_a_sweep_closes_other_threads_deleted_packs_but_not_under_a_read(
    tmp_path: Path,
) -> None:
    # The load pool's threads keep packs too, and sit idle between loads: the sweep of
    # the thread whose record cache missed closes theirs, except where one reads now.
    from ckptlite._blobfs import PackReaders

    readers = PackReaders()
    paths = [tmp_path / f"pk{i}" for i in range(2)]
    for p in paths:
        p.write_bytes(b"x" * 10)
    reading, read_done, end = threading.Event(), threading.Event(), threading.Event()

    def kept() -> int:
        return sum(1 for o in _open_paths() if any(o.startswith(str(p)) for p in paths))

    def reader() -> None:
        for p in paths:
            _fd, lock = readers.hold(p.name, lambda p=p: os.open(p, os.O_RDONLY))
            lock.release()
        _fd, lock = readers.hold(paths[0].name, lambda: -1)  # kept: opens nothing
        reading.set()
        read_done.wait(10)
        lock.release()
        end.wait(10)  # alive: a thread that ends closes its own

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert reading.wait(10)
        assert kept() == 2
        for p in paths:
            p.unlink()
        readers.sweep()
        assert kept() == 2, "a sweep closed descriptors of a thread in the middle of a read"
        read_done.set()
        deadline = time.monotonic() + 10
        while kept() and time.monotonic() < deadline:
            readers.sweep()  # the thread is idle now: its deleted packs go
            time.sleep(0.01)
        assert kept() == 0
        assert t.is_alive()
    finally:
        read_done.set()
        end.set()
        t.join()
