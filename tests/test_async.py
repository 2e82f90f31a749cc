"""save_async / flush: snapshots, bounded queue, errors never lost, flush at exit and close."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from ckptlite.errors import StoreFullError, UnsupportedTypeError

Mgr = ckptlite.CheckpointManager


def test_save_async_round_trips_in_order(mgr: Mgr) -> None:
    futs = [mgr.save_async("p", {"i": i}, name="s", progress=(i, 20)) for i in range(20)]
    mgr.flush()
    cps = [f.result() for f in futs]
    assert [mgr.load(c) for c in cps] == [{"i": i} for i in range(20)]
    assert [c.seq for c in cps] == sorted(c.seq for c in cps)  # one writer: submission order
    latest = mgr.latest("p", name="s")
    assert latest is not None and latest.id == cps[-1].id


def test_state_is_snapshotted_before_save_async_returns(mgr: Mgr) -> None:
    arr = np.arange(200_000, dtype="f8")  # large: its buffer becomes chunks
    small = {"list": [1, 2]}
    fut_a = mgr.save_async("p", arr)
    fut_s = mgr.save_async("p", small)
    arr[:] = -1
    small["list"].append(3)
    mgr.flush()
    assert np.array_equal(mgr.load(fut_a.result()), np.arange(200_000, dtype="f8"))
    assert mgr.load(fut_s.result()) == {"list": [1, 2]}


def test_unsupported_type_surfaces_on_the_future_and_at_flush(mgr: Mgr) -> None:
    ok = mgr.save_async("p", 1)
    bad = mgr.save_async("p", {"x": object()})
    assert isinstance(bad.exception(), UnsupportedTypeError)
    with pytest.raises(UnsupportedTypeError):
        bad.result()
    with pytest.raises(UnsupportedTypeError):
        mgr.flush()
    mgr.flush()  # raised once, then cleared
    assert [c.id for c in mgr.list("p")] == [ok.result().id]  # nothing of the bad save stored


def test_disk_full_surfaces_on_the_future_and_at_flush(
    mgr: Mgr, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(chunks: Any) -> None:
        raise StoreFullError("injected: no space left on device")

    monkeypatch.setattr(mgr.backend, "stage_chunks", full)
    futs = [mgr.save_async("p", np.ones(100_000, "f8") * i) for i in range(3)]
    with pytest.raises(StoreFullError) as err:
        mgr.flush()
    assert "2 more asynchronous save(s) failed" in "".join(getattr(err.value, "__notes__", []))
    for f in futs:
        assert isinstance(f.exception(), StoreFullError)
    monkeypatch.undo()
    assert mgr.list("p") == []  # nothing committed
    assert mgr.verify().ok


def test_error_is_raised_by_flush_even_if_the_future_was_read(mgr: Mgr) -> None:
    bad = mgr.save_async("p", object())
    assert bad.exception() is not None
    with pytest.raises(UnsupportedTypeError):
        mgr.flush()


def test_close_writes_pending_saves_and_raises_their_errors(store_dir: Path) -> None:
    m = ckptlite.open(store_dir, durability="none")
    futs = [m.save_async("p", i) for i in range(30)]
    m.close()
    assert all(f.done() for f in futs)
    with ckptlite.open(store_dir) as again:
        assert len(again.list("p")) == 30

    m = ckptlite.open(store_dir, durability="none")
    m.save_async("p", object())
    with pytest.raises(UnsupportedTypeError):
        m.close()
    with pytest.raises(ckptlite.ConfigError):
        m.save_async("p", 1)


def test_bounded_queue_blocks_the_caller(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = ckptlite.open(store_dir, durability="none", max_pending=2)
    gate = threading.Event()
    real_commit = m.backend.commit

    def slow_commit(record: Any, *staged: Any, **kw: Any) -> Any:
        gate.wait(30)
        return real_commit(record, *staged, **kw)

    monkeypatch.setattr(m.backend, "commit", slow_commit)
    m.save_async("p", 0)
    m.save_async("p", 1)  # the queue is now full
    third_returned = threading.Event()

    def third() -> None:
        m.save_async("p", 2)
        third_returned.set()

    t = threading.Thread(target=third)
    t.start()
    assert not third_returned.wait(0.3)  # blocked: backpressure
    gate.set()
    t.join(30)
    assert third_returned.is_set()
    m.flush()
    assert sorted(m.load(c) for c in m.list("p")) == [0, 1, 2]
    m.close()


SCRIPT = textwrap.dedent(
    """
    import sys, ckptlite
    mgr = ckptlite.open(sys.argv[1], durability="none")
    for i in range(50):
        mgr.save_async("p", {"i": i, "pad": bytes(100_000)})
    if len(sys.argv) > 2:
        mgr.save_async("p", object())
    # no flush, no close: the interpreter exit must write them
    """
)


def test_pending_saves_are_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    store = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    with ckptlite.open(store) as m:
        assert sorted(m.load(c)["i"] for c in m.list("p")) == list(range(50))
        assert m.verify(full=True).ok


def test_a_failed_save_at_exit_is_reported(tmp_path: Path) -> None:
    store = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(store), "bad"], capture_output=True, text=True
    )
    assert "asynchronous save failed" in proc.stderr
    assert "UnsupportedTypeError" in proc.stderr
    with ckptlite.open(store) as m:
        assert len(m.list("p")) == 50


def test_a_forked_child_has_its_own_queue(mgr: Mgr) -> None:
    import os

    gate = threading.Event()
    real = mgr.backend.commit

    def slow(record: Any, *staged: Any, **kw: Any) -> Any:
        gate.wait(30)
        return real(record, *staged, **kw)

    mgr.backend.commit = slow  # type: ignore[method-assign]
    parent_futs = [mgr.save_async("p", i) for i in range(mgr.max_pending)]  # queue full
    pid = os.fork()
    if pid == 0:  # the child: its queue is empty, its saves are its own
        code = 1
        try:
            mgr.backend.commit = real  # type: ignore[method-assign]
            fut = mgr.save_async("child", "hello")
            mgr.flush(timeout=20)
            code = 0 if mgr.load(fut.result()) == "hello" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    gate.set()
    mgr.flush()
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(f.result().process_id == "p" for f in parent_futs)
