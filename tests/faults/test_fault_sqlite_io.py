"""Item 4: SQLite I/O errors through an apsw VFS shim.

The shim inherits the default VFS and fails the k-th xWrite or xSync (on any
file: the database, its WAL, its shm) with SQLITE_IOERR. For k = 1, 2, ... the
operation runs until it succeeds; once with a one-shot fault (the next call
works again) and once with a persistent one (every later call fails too). After
each failure: a typed error, the same manager still works once the disk is
healthy, and the common check holds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from fault_harness import CHUNK, PROC, Reported, common_check, make_state, save_one

import ckptlite
from ckptlite.backends.local import LocalBackend
from ckptlite.manager import CheckpointManager
from ckptlite.types import StorageConfig

pytestmark = pytest.mark.slow

VFS_NAME = "ckptlite-fault"


class FaultVFS(apsw.VFS):  # type: ignore[misc]
    """The default VFS, with xWrite / xSync failing on demand."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.k = 0
        self.persistent = False
        self.calls = 0
        self.failed = 0
        super().__init__(VFS_NAME, "")

    def arm(self, kind: str, k: int, persistent: bool) -> None:
        self.kind, self.k, self.persistent, self.calls, self.failed = kind, k, persistent, 0, 0

    def disarm(self) -> None:
        self.kind = None

    def tick(self, kind: str) -> None:
        if self.kind != kind:
            return
        self.calls += 1
        if self.calls == self.k or (self.persistent and self.calls > self.k):
            self.failed += 1
            raise apsw.IOError(f"injected failure of {kind} #{self.calls}")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return FaultFile(self, name, flags)


class FaultFile(apsw.VFSFile):  # type: ignore[misc]
    def __init__(self, vfs: FaultVFS, name: Any, flags: list[int]) -> None:
        self.vfs = vfs
        super().__init__("", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        self.vfs.tick("xWrite")
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        self.vfs.tick("xSync")
        super().xSync(flags)


@pytest.fixture(scope="module")
def _registered_vfs() -> Iterator[FaultVFS]:
    v = FaultVFS()
    try:
        yield v
    finally:
        v.unregister()


@pytest.fixture
def vfs(_registered_vfs: FaultVFS, monkeypatch: pytest.MonkeyPatch) -> FaultVFS:
    """The shim; where SQLite ignores a failed call, apsw reports our injected
    exception as unraisable: drop exactly those, pass anything else on."""
    previous = sys.unraisablehook

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, apsw.IOError) and "injected" in str(args.exc_value):
            return
        previous(args)

    monkeypatch.setattr(sys, "unraisablehook", hook)
    return _registered_vfs


def _manager(store: Path) -> CheckpointManager:
    # durability="full": every commit syncs the WAL, so xSync faults land in commits.
    backend = LocalBackend(store, durability="full", vfs=VFS_NAME)
    return CheckpointManager(
        backend, StorageConfig(url=str(store), durability="full", chunk_size=CHUNK)
    )


def _op_save(mgr: CheckpointManager, seed: int) -> None:
    save_one(mgr, None, seed, 3_000 if seed % 2 else 300_000)


def _op_delete_gc(mgr: CheckpointManager, seed: int) -> None:
    cps = mgr.list(process_id=PROC)
    if len(cps) > 1:
        mgr.delete(cps[-1].id)
    mgr.gc()


OPS: dict[str, Callable[[CheckpointManager, int], None]] = {
    "save": _op_save,
    "delete+gc": _op_delete_gc,
}


@pytest.mark.parametrize("persistent", [False, True], ids=["one-shot", "persistent"])
@pytest.mark.parametrize("kind", ["xWrite", "xSync"])
@pytest.mark.parametrize("op", list(OPS))
def test_sqlite_io_error_at_kth_call(
    tmp_path: Path, vfs: FaultVFS, op: str, kind: str, persistent: bool
) -> None:
    store = tmp_path / "store"
    mgr = _manager(store)
    for seed in range(1, 9):
        save_one(mgr, None, seed, 300_000 if seed % 3 == 0 else 3_000)
    mgr.close()
    failures = 0
    k = 0
    while True:
        k += 1
        assert k < 500, "the operation never stopped writing"
        mgr = _manager(store)
        try:
            vfs.arm(kind, k, persistent)
            try:
                OPS[op](mgr, 100 + k)
            except ckptlite.StoreError as e:
                assert vfs.failed, f"{type(e).__name__} without an injected fault: {e}"
                assert isinstance(e, ckptlite.StoreIOError), repr(e)
                assert isinstance(e.__cause__, apsw.IOError)
                failures += 1
                if persistent:  # no retry may succeed while the disk keeps failing
                    with pytest.raises(ckptlite.StoreIOError):
                        OPS[op](mgr, 100 + k)
            else:
                if not vfs.failed:
                    break  # k is past the last write/sync of the operation
            finally:
                vfs.disarm()
            # The same manager works again once the disk is healthy.
            OPS[op](mgr, 10_000 + k)
        finally:
            vfs.disarm()
            mgr.close()
        common_check(store, Reported())
    print(f"\n{op} {kind} persistent={persistent}: {failures} failures in k<{k}")
    assert failures >= 1, f"no {kind} fault ever reached the caller"


def test_sqlite_io_error_while_creating_a_store(tmp_path: Path, vfs: FaultVFS) -> None:
    """A failed first open (schema creation) leaves a store that opens cleanly later."""
    for k in range(1, 200):
        store = tmp_path / f"store{k}"
        vfs.arm("xWrite", k, persistent=False)
        try:
            mgr = _manager(store)
        except ckptlite.StoreIOError:
            vfs.disarm()
            with ckptlite.open(store, durability="none", chunk_size=CHUNK) as again:
                cp = save_one(again, None, 1, 3_000)
                assert again.load(cp.id) == make_state(1, 3_000)
            common_check(store)
            continue
        finally:
            vfs.disarm()
        mgr.close()
        assert k > 1
        return
    pytest.fail("store creation never succeeded")
