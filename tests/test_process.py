"""ResumableProcess, CheckpointableProcess and mgr.resume_from."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import pytest

import ckptlite
from ckptlite import CheckpointableProcess, CheckpointPolicy, Level, ResumableProcess
from ckptlite.errors import CorruptCheckpointError, InvalidInputError

Mgr = ckptlite.CheckpointManager


class Summer(CheckpointableProcess):
    process_id = "summer"
    checkpoint_interval = 3600.0

    def __init__(self, mgr: Mgr | None = None, total: int = 100) -> None:
        self.checkpoint_manager = mgr
        self.i = 0
        self.acc = np.zeros(4, "f8")
        self.total = total

    def step(self) -> None:
        self.acc += self.i
        self.i += 1

    def get_state(self) -> Any:
        return {"i": self.i, "acc": self.acc}

    def restore_state(self, state: Any) -> None:
        self.i, self.acc = state["i"], state["acc"]

    def get_progress(self) -> tuple[int, int]:
        return (self.i, self.total)

    @property
    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"kind": "summer"}


class Plain:
    """A ResumableProcess without the mixin."""

    def __init__(self) -> None:
        self.state: Any = None

    def get_state(self) -> Any:
        return self.state

    def restore_state(self, state: Any) -> None:
        self.state = state

    def get_progress(self) -> tuple[int, int]:
        return (0, 0)


def test_protocol_is_structural() -> None:
    assert isinstance(Plain(), ResumableProcess)
    assert isinstance(Summer(), ResumableProcess)
    assert not isinstance(object(), ResumableProcess)


def test_save_and_load_checkpoint(mgr: Mgr) -> None:
    p = Summer(mgr)
    for _ in range(10):
        p.step()
    cp = p.save_checkpoint()
    assert cp.process_id == "summer" and cp.level is Level.STEP and cp.progress == (10, 100)
    assert cp.metadata == {"kind": "summer", "ckptlite.slot_index": 1}
    q = Summer(mgr)
    restored = q.load_checkpoint()
    assert restored is not None and restored.id == cp.id
    assert q.i == 10 and np.array_equal(q.acc, p.acc)
    assert Summer(ckptlite.open("memory://")).load_checkpoint() is None  # nothing saved there


def test_load_a_given_checkpoint_and_fall_back_past_corruption(mgr: Mgr, store_dir: Path) -> None:
    p = Summer(mgr)
    first = p.save_checkpoint()
    p.step()
    p.step()
    second = p.save_checkpoint()
    q = Summer(mgr)
    assert q.load_checkpoint(first.id) == first and q.i == 0
    # Damage the newest record's bytes in the real database file.
    db = apsw.Connection(str(store_dir / "ckptlite.db"))
    try:
        (payload,) = db.execute(
            "SELECT payload FROM checkpoints WHERE id=?", (second.id,)
        ).fetchone()
        damaged = bytes(payload[:-1]) + bytes([payload[-1] ^ 0x01])
        db.execute("UPDATE checkpoints SET payload=? WHERE id=?", (damaged, second.id))
    finally:
        db.close()
    r = Summer(mgr)
    assert r.load_checkpoint() == first and r.i == 0  # fell back past the damaged one
    assert mgr.get(second.id).status is ckptlite.Status.CORRUPTED
    with pytest.raises(CorruptCheckpointError):
        r.load_checkpoint(second.id)


def test_should_checkpoint_by_items_and_by_time(mgr: Mgr) -> None:
    p = Summer(mgr)
    p.checkpoint_policy = CheckpointPolicy(every_items=5)
    assert not p.should_checkpoint()
    for _ in range(4):
        p.step()
    assert not p.should_checkpoint()
    p.step()
    assert p.should_checkpoint()
    p.save_checkpoint()
    assert not p.should_checkpoint()  # the count restarts at a save

    t = Summer(mgr)
    t.checkpoint_interval = 0.05
    assert not t.should_checkpoint()
    time.sleep(0.06)
    assert t.should_checkpoint()


def test_process_policy_prunes_its_slot(mgr: Mgr) -> None:
    p = Summer(mgr)
    p.checkpoint_policy = CheckpointPolicy(keep_last=2)
    saved = []
    for _ in range(6):
        p.step()
        saved.append(p.save_checkpoint())
    assert [c.id for c in mgr.list("summer")] == [saved[-1].id, saved[-2].id]


def test_uses_the_default_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLITE_URL", str(tmp_path / "default"))
    monkeypatch.setattr(ckptlite.manager, "_default", None)
    p = Summer()
    p.step()
    cp = p.save_checkpoint()
    default = ckptlite.get_checkpoint_manager()
    try:
        assert default.url == str(tmp_path / "default") and default.exists(cp.id)
    finally:
        default.close()


def test_resume_from_any_resumable_process(mgr: Mgr) -> None:
    cp = mgr.save("plain", {"x": 1}, level=Level.STAGE, name="s")
    p = Plain()
    with pytest.raises(InvalidInputError):
        mgr.resume_from(p)  # no process_id anywhere
    assert mgr.resume_from(p, process_id="plain") == cp and p.state == {"x": 1}
    assert mgr.resume_from(Plain(), process_id="plain", level=Level.STEP) is None
    q = Plain()
    assert mgr.resume_from(q, cp.id) == cp and q.state == {"x": 1}


def test_missing_process_id_is_a_clear_error(mgr: Mgr) -> None:
    class NoId(Summer):
        process_id = ""

    with pytest.raises(InvalidInputError) as err:
        NoId(mgr).save_checkpoint()
    assert "process_id" in str(err.value)
    assert mgr.list() == []


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    import ckptlite
    from test_process import Summer
    mgr = ckptlite.open(sys.argv[1])
    p = Summer(mgr, total=400)
    p.checkpoint_policy = ckptlite.CheckpointPolicy(every_items=25, keep_last=2)
    p.load_checkpoint()
    while p.i < p.total:
        p.step()
        time.sleep(0.004)
        if p.should_checkpoint():
            p.save_checkpoint()
    p.save_checkpoint()
    print(p.i, float(p.acc.sum()))
    """
)


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_same_result(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    here = str(Path(__file__).parent)
    for delay in (0.7, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, store, here])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, store, here], capture_output=True, text=True, check=True
    )
    n, total = out.stdout.split()
    assert int(n) == 400 and float(total) == 4 * sum(range(400))
    with ckptlite.open(store) as m:
        assert len(m.list("summer")) == 2  # the process's policy pruned the slot


# -- runs that remember (issue 17) ----------------------------------------------------


def test_should_checkpoint_counts_from_the_restored_point(mgr: Mgr) -> None:
    done = Summer(mgr, total=1000)
    for _ in range(500):
        done.step()
    done.save_checkpoint()
    p = Summer(mgr, total=1000)
    p.checkpoint_policy = CheckpointPolicy(every_items=100)
    mgr.resume_from(p)  # any way of restoring: not only p.load_checkpoint()
    assert p.i == 500
    due = []
    for _ in range(120):
        p.step()  # work comes first; should_checkpoint is asked after it
        due.append(p.should_checkpoint())
    assert due.index(True) == 99  # at item 600: 100 after the restored 500, not 101

    fresh = Summer(mgr)
    fresh.checkpoint_policy = CheckpointPolicy(every_items=10)
    steps = []
    for _ in range(12):
        fresh.step()
        steps.append(fresh.should_checkpoint())
    assert steps.index(True) == 9  # item 10 of a fresh process, counted from 0


def test_a_process_in_a_new_run_never_resumes_another_runs_state(mgr: Mgr) -> None:
    from ckptlite.runs import RUN_KEY

    with mgr.run("pipe") as first:
        p = Summer(mgr)
        for _ in range(10):
            p.step()
        old = p.save_checkpoint()
        assert old.metadata[RUN_KEY] == first.id
    assert first.status.value == "completed"
    with mgr.run("pipe") as second:
        assert second.id != first.id
        q = Summer(mgr)
        assert q.load_checkpoint() is None and q.i == 0  # a fresh start, not run 1's state
        q.step()
        mine = q.save_checkpoint()
        assert mine.metadata[RUN_KEY] == second.id
        r = Summer(mgr)
        assert r.load_checkpoint() == mine and r.i == 1  # its own run's state resumes
        assert mgr.resume_from(Summer(mgr)) == mine  # the manager's way too
    # Outside a run, a process resumes the newest of its slot, as before.
    s = Summer(mgr)
    assert s.load_checkpoint() == mine


def test_a_resumed_run_resumes_its_process(mgr: Mgr) -> None:
    run = mgr.run("pipe")
    with run:
        p = Summer(mgr)
        for _ in range(7):
            p.step()
        p.save_checkpoint()
        run.finish("killed")  # ends FAILED: the next mgr.run resumes it
    with mgr.run("pipe") as again:
        assert again.id == run.id
        q = Summer(mgr)
        assert q.load_checkpoint() is not None and q.i == 7
