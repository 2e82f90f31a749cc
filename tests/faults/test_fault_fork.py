"""Item 9: fork: a child using an inherited manager gets fresh connections; parent unaffected."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from fault_harness import Reported, common_check, open_store, save_one

import ckptlite


def _fork(body: object, *args: object) -> int:
    """Run ``body(*args)`` in a forked child; return its exit code (1 on exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        import faulthandler
        import sys

        faulthandler.dump_traceback_later(15, file=sys.stderr)  # a hang says where
        try:
            code = body(*args)  # type: ignore[operator]
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)  # hung: a lock inherited in the held state
    os.waitpid(pid, 0)
    return -signal.SIGKILL


def _child_saves(mgr: ckptlite.CheckpointManager, known: list[str], out: str) -> int:
    for cid in known:  # reads through the inherited manager
        assert mgr.load(cid) is not None
    cps = [save_one(mgr, None, 500 + i, 300_000) for i in range(3)]  # and writes
    mgr.gc()
    Path(out).write_text("\n".join(cp.id for cp in cps))
    mgr.close()  # closing in the child must not close the parent's connections
    return 0


@pytest.mark.parametrize("durability", ["none", "safe"])
def test_child_uses_inherited_manager_and_parent_is_unaffected(
    tmp_path: Path, durability: str
) -> None:
    store = tmp_path / "store"
    out = tmp_path / "child-ids"
    rep = Reported()
    mgr = open_store(store, durability)
    try:
        for seed in (1, 2):  # warm the parent: connection, thread pool, WAL
            cp = save_one(mgr, None, seed, 300_000)
            rep.saved[cp.id] = (seed, 300_000)
            mgr.load(cp.id)
        in_txn = mgr.backend.db.connection()  # type: ignore[attr-defined]
        assert _fork(_child_saves, mgr, list(rep.saved), str(out)) == 0
        child_ids = out.read_text().split()
        assert len(child_ids) == 3
        # The parent goes on with its own connection, pool and store.
        assert mgr.backend.db.connection() is in_txn  # type: ignore[attr-defined]
        for cid in child_ids:
            rep.saved[cid] = (500 + child_ids.index(cid), 300_000)
            assert mgr.exists(cid)
        cp = save_one(mgr, None, 3, 300_000)
        rep.saved[cp.id] = (3, 300_000)
        assert len(mgr.list()) == 6
    finally:
        mgr.close()
    common_check(store, rep)


def test_child_forked_after_parent_threads_used_the_store(tmp_path: Path) -> None:
    """Parent threads (and the pool's) hold open connections: the child opens its own.

    Forking while another thread is *inside* SQLite is not covered: SQLite's own
    static mutexes may be held at that instant and stay held in the child (an
    SQLite limitation; see the README's Guarantees).
    """
    import threading

    store = tmp_path / "store"
    mgr = open_store(store, "none")
    rep = Reported()
    cp = save_one(mgr, None, 1, 1_200_000)
    rep.saved[cp.id] = (1, 1_200_000)

    def reader() -> None:
        for _ in range(5):
            assert mgr.load(cp.id) is not None

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [_fork(_child_saves, mgr, [cp.id], str(tmp_path / f"ids{i}")) for i in range(3)]
    assert codes == [0, 0, 0]
    for i in range(3):
        for n, cid in enumerate((tmp_path / f"ids{i}").read_text().split()):
            rep.saved[cid] = (500 + n, 300_000)
    assert mgr.load(cp.id) is not None  # the parent's threads' connections still work
    mgr.close()
    common_check(store, rep)


def test_fork_while_a_parent_thread_is_inside_the_manager(tmp_path: Path) -> None:
    """A lock a parent thread held at fork() time must not hang the child."""
    store = tmp_path / "store"
    mgr = open_store(store, "none")
    cp = save_one(mgr, None, 1, 1_200_000)
    mgr.load(cp.id)  # the pool exists
    # Hold what a parent thread holds while it is inside save/load, then fork.
    with mgr._pool_lock, mgr.backend.db._writer:  # type: ignore[attr-defined]
        code = _fork(_child_saves, mgr, [cp.id], str(tmp_path / "ids"))
    assert code == 0, "the child hung on a lock inherited from the parent"
    rep = Reported(saved={cp.id: (1, 1_200_000)})
    for n, cid in enumerate((tmp_path / "ids").read_text().split()):
        rep.saved[cid] = (500 + n, 300_000)
    mgr.close()
    common_check(store, rep)


def test_child_killed_holding_the_write_lock_does_not_block_the_parent(tmp_path: Path) -> None:
    """A forked child SIGKILLed inside a write transaction: the parent can still write."""
    store = tmp_path / "store"
    mgr = ckptlite.open(store, durability="none", busy_timeout=10)
    cp = save_one(mgr, None, 1, 3_000)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        with mgr.backend.db.write():  # type: ignore[attr-defined]
            os.write(w, b"x")
            os.kill(os.getpid(), signal.SIGKILL)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.waitpid(pid, 0)
    os.close(r)
    cp2 = save_one(mgr, None, 2, 3_000)
    assert [c.id for c in mgr.list()] == [cp2.id, cp.id]
    mgr.close()
    common_check(store, Reported(saved={cp.id: (1, 3_000), cp2.id: (2, 3_000)}))
