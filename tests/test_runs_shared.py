"""Runs shared by many workers (runs.py): real processes, a real local store and PostgreSQL.

Workers are ``tests/shared_worker.py`` processes released together by a barrier
file; every piece of work they start is logged, so a test sees both what the
ledger recorded (each item exactly once) and what ran twice (only what a dead
worker had claimed and not committed).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ckptlite
from ckptlite import Level, RunStatus, runs
from ckptlite._items import list_items
from ckptlite._workers import LIVE
from ckptlite.backends.base import ListQuery
from ckptlite.errors import InvalidInputError
from ckptlite.runs import Run, decode_item_state, run_key

WORKER = Path(__file__).resolve().parent / "shared_worker.py"


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "pg":
        return str(request.getfixturevalue("pg_schema"))
    return str(tmp_path / "store")


class Pool:
    """N worker processes of one config, started at the same instant by a barrier."""

    def __init__(
        self, out: Path, n: int, envs: list[dict[str, str]] | None = None, **cfg: Any
    ) -> None:
        self.out = out
        out.mkdir(exist_ok=True)
        self.cfg = {"out": str(out), **cfg}
        envs = envs or [{}] * n
        self.procs = [self.spawn(envs[i]) for i in range(n)]
        deadline = time.monotonic() + 60
        while len(list(out.glob("ready-*"))) < n:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        (out / "go").touch()

    def spawn(self, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(self.cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def did(self, proc: subprocess.Popen[str]) -> list[str]:
        path = self.out / f"did-{proc.pid}"
        return path.read_text().splitlines() if path.exists() else []

    def wait_for(self, proc: subprocess.Popen[str], lines: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.did(proc)) < lines:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.005)

    def finish(self, procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[str]:
        outs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            assert p.returncode == 0, stderr
            assert stdout.startswith("finished"), stderr
            outs.append(stdout)
        return outs

    def work_counts(self) -> collections.Counter[str]:
        """How many times each item (and the stage) was started, over every worker."""
        c: collections.Counter[str] = collections.Counter()
        for path in self.out.glob("did-*"):
            for line in path.read_text().splitlines():
                if not line.startswith(("worker", "dropped")):
                    c[line.split()[-1]] += 1
        return c


def check_ledger(url: str, groups: dict[str, int]) -> ckptlite.RunRecord:
    """One run, COMPLETED, each item done exactly once with a loadable state."""
    with ckptlite.open(url) as mgr:
        (run,) = mgr.list_runs("job")
        assert run.status is RunStatus.COMPLETED, run
        for group, n in groups.items():
            ledger = mgr.backend.list_items(run.id, group)
            assert sorted(e.item_id for e in ledger) == [f"{group}{i:04d}" for i in range(n)]
            assert all(e.ok and e.attempts == 1 for e in ledger)
            for e in ledger:
                state = decode_item_state(e.state)
                assert state["id"] == e.item_id and state["arr"] == [0, 1, 2, 3, 4]
        return run


# -- started together -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "pg"])
def test_barrier_started_workers_join_one_run_and_do_each_item_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = store_url(kind, tmp_path, request)
    pool = Pool(tmp_path / "w", 4, url=url, groups={"t": 160}, delay=0.01, claim=4)
    outs = pool.finish(pool.procs)
    assert len({o.split()[1] for o in outs}) == 1  # every worker was in the same run
    run = check_ledger(url, {"t": 160})
    work = pool.work_counts()
    assert len(work) == 160 and set(work.values()) == {1}  # nobody did anything twice
    busy = [p for p in pool.procs if sum(1 for line in pool.did(p) if line.startswith("t "))]
    assert len(busy) >= 2  # the work was shared, not done by the first one alone
    with ckptlite.open(url) as mgr:
        (view,) = mgr.run_overview("job")
        assert view.run.id == run.id and view.counts.done == 160 and view.counts.pending == 0
        assert len(view.workers) == 4 and not any(w.live for w in view.workers)


def test_threads_started_together_join_one_run(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    ids = [f"i{n}" for n in range(300)]
    barrier, joined = threading.Barrier(3), threading.Barrier(3)
    runs: list[str] = []
    done: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def worker() -> None:
        with ckptlite.open(url) as mgr:
            barrier.wait()
            with mgr.run("job", batch_size=7) as run:
                runs.append(run.id)
                joined.wait()  # nobody finishes the run before all have joined it
                for item in run.items("g", ids, claim=5):
                    with lock:
                        done[item.id] += 1
                    item.done(item.id)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(runs)) == 1 and len(runs) == 3
    assert set(done) == set(ids) and set(done.values()) == {1}
    with ckptlite.open(url) as mgr:
        (rec,) = mgr.list_runs("job")
        assert rec.status is RunStatus.COMPLETED
        assert len(mgr.backend.list_items(rec.id, "g")) == 300


@pytest.mark.parametrize("kind", ["local", "pg"])
def test_a_worker_that_registers_a_group_after_the_others_left_skips_their_items(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B starts its loop, then A does the whole group and leaves before B registers it
    # (B waited for the store, say). B, alone now, registers the group afresh (every
    # batch free): what A did must come from the ledger as it is then, not as it was.
    url = store_url(kind, tmp_path, request)
    ids = [f"i{n}" for n in range(20)]
    with ckptlite.open(url) as ma, ckptlite.open(url) as mb:
        run_a, run_b = ma.run("job"), mb.run("job")
        assert run_a.id == run_b.id
        register = mb.backend.register_group

        def after_a(*args: Any, **kwargs: Any) -> tuple[int, int]:
            with run_a:
                for item in run_a.items("g", ids, claim=5):
                    item.done()
            return register(*args, **kwargs)

        monkeypatch.setattr(mb.backend, "register_group", after_a)
        with run_b:
            again = [item.id for item in run_b.items("g", ids, claim=5)]
        assert again == []
        assert run_b.status is RunStatus.COMPLETED
        assert len(run_b.ledger("g")) == 20


# -- dead, paused and disconnected workers ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "pg"])
@pytest.mark.parametrize("remote", [False, True], ids=["same-machine", "other-machine"])
def test_a_worker_killed_mid_batch_loses_only_its_uncommitted_items(
    kind: str, remote: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = store_url(kind, tmp_path, request)
    # other-machine: the victim's node differs, so only its lease (1.5 s) frees its items.
    pool = Pool(tmp_path / "w", 3, url=url, groups={"t": 120}, delay=0.02, claim=4, lease=1.5)
    victim, *rest = pool.procs
    if remote:
        victim.kill()
        victim.communicate()
        pool.procs[0] = victim = pool.spawn({"CKPTLITE_NODE": "elsewhere"})
    pool.wait_for(victim, 8)
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    pool.finish(rest)
    took = time.monotonic() - killed_at
    check_ledger(url, {"t": 120})
    work = pool.work_counts()
    twice = {k for k, v in work.items() if v > 1}
    mine = {line.split()[-1] for line in pool.did(victim) if line.startswith("t ")}
    assert twice <= mine  # only what the dead worker had started ran again
    assert took < 60


@pytest.mark.slow
def test_a_worker_killed_inside_its_claim_transaction(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    envs = [{"CKPTLITE_CRASH_AT": "claim.in_transaction@2"}, {}, {}]
    pool = Pool(tmp_path / "w", 3, envs, url=url, groups={"t": 60}, delay=0.02, claim=3)
    victim, *rest = pool.procs
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL  # it died holding the write lock
    pool.finish(rest)
    check_ledger(url, {"t": 60})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "pg"])
def test_a_worker_paused_past_its_lease_then_resumed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = store_url(kind, tmp_path, request)
    pool = Pool(
        tmp_path / "w", 3, url=url, groups={"t": 90}, delay=0.03, claim=3, lease=1.0, batch=2
    )
    victim = pool.procs[0]
    pool.wait_for(victim, 4)
    victim.send_signal(signal.SIGSTOP)
    time.sleep(3.0)  # three leases: the others take its batches
    victim.send_signal(signal.SIGCONT)
    pool.finish(pool.procs)  # the paused one finishes too: its late marks are ignored
    check_ledger(url, {"t": 90})


@pytest.mark.slow
def test_a_worker_whose_postgres_session_is_terminated(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("pg_schema"))
    pool = Pool(tmp_path / "w", 2, url=url, groups={"t": 80}, delay=0.02, claim=4, lease=1.5)
    victim = pool.spawn()
    victim.kill()  # replaced by one that drops its own connection after 5 items
    victim.communicate()
    pool.cfg["drop_connection_at"] = 5
    dropper = pool.spawn()
    _, stderr = dropper.communicate(timeout=120)
    # It resumes on a new connection, or fails cleanly with a ckptlite error.
    assert dropper.returncode == 0 or "ckptlite.errors" in stderr, stderr
    assert "dropped" in (pool.out / f"did-{dropper.pid}").read_text()
    pool.finish(pool.procs)
    check_ledger(url, {"t": 80})


# -- stages -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "pg"])
def test_two_groups_and_a_stage_computed_once_by_four_workers(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = store_url(kind, tmp_path, request)
    pool = Pool(
        tmp_path / "w", 4, url=url, groups={"a": 40, "b": 30}, delay=0.01, claim=3, stage=0.5
    )
    outs = pool.finish(pool.procs)
    assert {o.split()[2] for o in outs} == {"42"}  # every worker got the stage's result
    assert pool.work_counts()["stage"] == 1  # computed by one of them
    run = check_ledger(url, {"a": 40, "b": 30})
    with ckptlite.open(url) as mgr:
        stages = [c for c in mgr.list("job", level=Level.STAGE) if c.metadata["ckptlite.run"]]
        assert len(stages) == 1 and mgr.load(stages[0].id) == 42
        assert mgr.run_overview("job")[0].counts.open_work == 0 and run.id


@pytest.mark.slow
@pytest.mark.parametrize("remote", [False, True], ids=["same-machine", "other-machine"])
def test_a_worker_dying_inside_the_stage_function(remote: bool, tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    env = {"CKPTLITE_NODE": "elsewhere"} if remote else None
    # lease 3 s: at load ~7 a heartbeat starved past 1 s let a third worker run the stage
    pool = Pool(tmp_path / "w", 0, url=url, groups={"t": 20}, claim=2, stage=0.5, lease=3.0)
    pool.cfg["stage"] = 30.0  # the first one would take long: it dies inside fn
    victim = pool.spawn(env)
    pool.wait_for(victim, 2)  # "worker ..." and "stage"
    assert pool.did(victim)[1] == "stage"
    pool.cfg["stage"] = 0.2
    rest = [pool.spawn() for _ in range(2)]
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    outs = pool.finish(rest)
    assert {o.split()[2] for o in outs} == {"42"}
    assert pool.work_counts()["stage"] == 2  # the dead one's, and one taker's
    check_ledger(url, {"t": 20})


# -- in one process -------------------------------------------------------------------------


def test_worker_identity_and_heartbeat(any_mgr: ckptlite.CheckpointManager) -> None:
    with any_mgr.run("job", lease=0.6) as run:
        host, pid, suffix = run.worker_id.rsplit(":", 2)
        assert pid == str(os.getpid()) and len(suffix) == 8 and host
        (w,) = run.workers()
        first = w.beat_at
        time.sleep(0.9)  # past the lease: only the heartbeat keeps it live
        (w,) = run.workers()
        assert w.live and w.beat_at > first and w.worker_id == run.worker_id
    (w,) = any_mgr.run_overview("job")[0].workers
    assert not w.live and w.left


def test_a_worker_that_leaves_early_leaves_the_run_running(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    a = any_mgr.run("job")
    b = any_mgr.run("job")
    assert a.id == b.id and b.resumed
    b._active += 1  # a thread works for b (an idle Run of this process counts as gone)
    items = list(a.items("g", ["x", "y", "z", "w"], claim=2))
    assert [i.id for i in items] == ["x", "y", "z", "w"]  # a alone: it claimed every batch
    for item in items:
        item.done()
    a.finish()
    assert a.status is RunStatus.RUNNING  # b is still live
    b.finish()
    assert b.status is RunStatus.COMPLETED  # the last one out


def test_workers_of_one_run_share_one_pipeline_checkpoint(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # Workers that first need the run's PIPELINE checkpoint at the same instant (two
    # stages computed at once, a process saving inside the run) make one between them.
    runs = [any_mgr.run("job") for _ in range(6)]
    assert len({r.id for r in runs}) == 1
    listing = any_mgr.backend.list

    def slow_list(q: ListQuery) -> list[ckptlite.Checkpoint]:
        found = listing(q)
        time.sleep(0.05)  # a store across a network: the others look meanwhile
        return found

    any_mgr.backend.list = slow_list  # type: ignore[method-assign]
    barrier = threading.Barrier(len(runs))
    got: list[str] = []

    def first_use(run: ckptlite.Run) -> None:
        barrier.wait()
        got.append(run.pipeline_checkpoint().id)

    threads = [threading.Thread(target=first_use, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    roots = any_mgr.list("job", level=Level.PIPELINE)
    assert len(roots) == 1, roots
    assert set(got) == {roots[0].id} and len(got) == len(runs)
    for run in runs:
        run.finish()
    assert runs[-1].status is RunStatus.COMPLETED  # the pipeline's claim is not open work


def test_claimed_counts_the_items_claimed_and_not_yet_marked(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    a = any_mgr.run("job")
    b = any_mgr.run("job")
    b._active += 1  # b works too: a claims one batch at a time
    b._others = a._others = 1
    it = a.items("g", [f"i{n}" for n in range(20)], claim=10)
    items = [next(it) for _ in range(4)]  # a holds batch 0 (10 items), 4 of them yielded
    for item in items[:3]:
        item.done()
    a.commit()
    counts = a.counts()
    assert (counts.done, counts.claimed, counts.pending) == (3, 7, 10), counts
    items[3].fail("boom")
    a.commit()
    counts = a.counts()
    assert (counts.done, counts.failed, counts.claimed, counts.pending) == (3, 1, 6, 10), counts
    it.close()  # the loop stops early: its batch is let go
    counts = a.counts()
    assert (counts.claimed, counts.pending) == (0, 16), counts
    a.finish("stop")
    b.finish()


def test_other_ids_for_a_group_others_work_on_are_refused(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    a = any_mgr.run("job")
    b = any_mgr.run("job")
    a._active += 1  # a thread works for a (an idle Run of this process counts as gone)
    next(a.items("g", ["x", "y"]))
    with pytest.raises(InvalidInputError) as e:
        next(b.items("g", ["y", "x"]))
    assert "same ids" in (e.value.hint or "")
    a.finish("stop")
    b.finish()


def test_a_lost_mark_is_ignored_not_recorded_twice(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        slow = mgr.run("job", lease=0.3)
        item = next(slow.items("g", ["x"], lease=0.3))
        slow._heart.stop.set()  # type: ignore[union-attr]  # "paused": no more beats
        time.sleep(0.5)
        fast = mgr.run("job")
        taken = list(fast.items("g", ["x"]))
        assert [i.id for i in taken] == ["x"]  # its lease expired: taken over
        taken[0].done("fast")
        fast.commit()
        item.done("slow")  # too late: the item is done
        slow.commit()
        (entry,) = fast.ledger("g")
        assert entry.attempts == 1 and fast.results("g") == {"x": "fast"}
        slow.finish()
        fast.finish()
        assert mgr.list_runs("job")[0].status is RunStatus.COMPLETED


# -- runs that remember ---------------------------------------------------------------------


def test_a_keyed_run_is_reused_when_completed(any_mgr: ckptlite.CheckpointManager) -> None:
    calls: list[str] = []

    def pipeline(key: Any, **kw: Any) -> ckptlite.RunRecord:
        with any_mgr.run("geo", key=key, **kw) as run:
            base = run.stage("base").compute(lambda: calls.append("base") or [1, 2])
            for item in run.items("t", ["a", "b"]):
                calls.append(item.id)
                item.done(base[0])
        return run.record

    first = pipeline({"res": 10, "bands": ["r", "g"]})
    assert calls == ["base", "a", "b"] and first.status is RunStatus.COMPLETED
    with any_mgr.run("geo", key={"bands": ["r", "g"], "res": 10}) as again:  # same key
        assert again.completed_before and again.id == first.id
        assert again.stage("base").done and again.stage("base").result == [1, 2]
        assert list(again.items("t", ["a", "b", "c"])) == []
        assert again.results("t") == {"a": 1, "b": 1}
    assert pipeline({"res": 10, "bands": ["r", "g"]}).id == first.id
    assert calls == ["base", "a", "b"]  # nothing ran again
    other = pipeline({"res": 20, "bands": ["r", "g"]})  # a different key: a new run
    assert other.id != first.id and calls[3:] == ["base", "a", "b"]
    forced = pipeline({"res": 10, "bands": ["r", "g"]}, force=True)
    assert forced.id not in (first.id, other.id) and calls[6:] == ["base", "a", "b"]
    # The newest run of the key is the forced one, and it completed: reused next time.
    assert pipeline({"res": 10, "bands": ["r", "g"]}).id == forced.id
    assert pipeline("a string key").id not in (first.id, other.id, forced.id)


def test_an_unfinished_keyed_run_is_resumed_and_keys_are_checked(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    with pytest.raises(ZeroDivisionError), any_mgr.run("geo", key="k") as run:
        for item in run.items("t", ["a", "b"]):
            item.done()
            1 / 0  # noqa: B018
    with any_mgr.run("geo", key="k") as again:
        assert again.id == run.id and again.resumed and not again.completed_before
        assert [i.id for i in again.items("t", ["a", "b"])] == ["b"]
    for bad in ({"x": float("nan")}, {"x": object()}, 3):
        with pytest.raises(InvalidInputError):
            any_mgr.run("geo", key=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        any_mgr.run("geo", key="k", resume=False)
    assert run_key("k") != run_key({"k": None})


def test_a_keyed_run_keeps_its_key_through_sync(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "a") as a:
        with a.run("geo", key={"res": 10}) as run:
            run.stage("base").compute(lambda: 7)
        ckptlite.sync(a, tmp_path / "b")
    with ckptlite.open(tmp_path / "b") as b:
        (copied,) = b.list_runs("geo")
        assert copied.key == run_key({"res": 10}) == run.record.key
        with b.run("geo", key={"res": 10}) as again:
            assert again.completed_before and again.id == run.id
            assert again.stage("base").result == 7


# -- batches that come back free ------------------------------------------------------------


_IDS = [f"i{n}" for n in range(10)]
_REST = ["i0", "i1", "i2", "i3", "i4", "i7", "i8", "i9"]  # all but what A did


def _a_did_two_of_the_batch_b_waits_for(
    mgr: ckptlite.CheckpointManager,
) -> tuple[Run, Run, Iterator[ckptlite.WorkItem], Iterator[ckptlite.WorkItem], list[Any]]:
    """B's loop reads the done marks and takes batch 0; A's takes batch 1, does i5, i6."""
    a, b = mgr.run("job"), mgr.run("job")
    b_loop = b.items("g", _IDS, claim=5)
    did = [next(b_loop)]  # B holds batch 0
    a_loop = a.items("g", _IDS, claim=5)
    for item in itertools.islice(a_loop, 2):  # A holds batch 1
        item.done()
    return a, b, a_loop, b_loop, did


@pytest.mark.parametrize("committed", [True, False], ids=["marks-committed", "marks-queued"])
def test_a_batch_let_go_by_a_loop_stopped_early_skips_its_done_items(
    committed: bool, any_mgr: ckptlite.CheckpointManager
) -> None:
    # B reads the done marks when its loop starts; A then does i5 and i6 of the batch
    # it holds and stops its loop. B takes that batch over: the ledger, not B's old
    # read, tells what A did (and A's marks are in it by then, committed or queued).
    a, b, a_loop, b_loop, did = _a_did_two_of_the_batch_b_waits_for(any_mgr)
    if committed:
        a.commit()
    a_loop.close()
    did += b_loop
    for item in did:
        item.done()
    b.commit()
    assert [i.id for i in did] == _REST, "B did again items A had done"
    assert sorted(e.item_id for e in b.ledger("g")) == _IDS
    a.finish()
    assert b.finish().status is RunStatus.COMPLETED


@pytest.mark.parametrize("limit", [1, 2])
def test_a_batch_taken_over_counts_the_attempts_its_last_holder_failed(
    limit: int, any_mgr: ckptlite.CheckpointManager
) -> None:
    # B reads the marks when its loop starts; A then fails i5 of the batch it holds
    # and stops. B takes that batch over: the ledger, not B's old read, tells how
    # often i5 failed (at max_attempts=1 it is not tried again, at 2 once more).
    a, b = any_mgr.run("job"), any_mgr.run("job")
    b_loop = b.items("g", _IDS, claim=5, max_attempts=limit)
    did = [next(b_loop)]  # B holds batch 0
    a_loop = a.items("g", _IDS, claim=5, max_attempts=limit)
    first = next(a_loop)  # A holds batch 1
    assert first.id == "i5"
    first.fail(RuntimeError("bad tile"))
    a.commit()
    a_loop.close()
    did += b_loop
    again = [i for i in did if i.id == "i5"]
    if limit == 1:
        assert again == [], "B tried again an item that failed max_attempts times"
    else:
        assert [i.attempts for i in again] == [1], "B did not see A's failed attempt"
    for item in did:
        item.done()
    b.commit()
    a.finish()
    b.finish()


def test_a_dead_worker_reaped_on_this_machine_loses_only_its_uncommitted_items(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # A commits i5 and i6 of its batch and dies (its Run gone from this process): B,
    # waiting for that batch, reaps A and takes the batch over; what A committed is done.
    a, b, a_loop, b_loop, did = _a_did_two_of_the_batch_b_waits_for(any_mgr)
    a.commit()
    a._heart.stop.set()  # type: ignore[union-attr]
    LIVE.pop(a.worker_id)  # killed: no cleanup (a_loop is never closed)
    did += b_loop
    for item in did:
        item.done()
    b.commit()
    assert [i.id for i in did] == _REST, "B did again items the dead A had committed"
    assert b.finish().status is RunStatus.COMPLETED
    del a_loop


def test_a_worker_seen_idle_that_starts_a_loop_is_not_reaped(
    any_mgr: ckptlite.CheckpointManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B, waiting for C's batch, sees A (a Run of this process) idle: dead. A starts a
    # loop and claims a batch of "h" before B expires it: A is live and keeps it.
    a, b, c = any_mgr.run("job"), any_mgr.run("job"), any_mgr.run("job")
    c_loop = c.items("g", ["x"])
    c_item = next(c_loop)  # C holds g's only batch
    a_loop = a.items("h", ["p", "q"], claim=1)
    a_items: list[ckptlite.WorkItem] = []
    looked = runs.alive
    me = threading.get_ident()

    def a_starts_after_the_look(w: ckptlite.WorkerRecord, node: str, waiting: bool = False) -> bool:
        live = looked(w, node, waiting)
        if not live and w.worker_id == a.worker_id and not a_items and threading.get_ident() == me:
            a_items.append(next(a_loop))  # another thread, in between
            c_item.done()
            assert next(c_loop, None) is None  # C is done: B's loop ends
        return live

    monkeypatch.setattr(runs, "alive", a_starts_after_the_look)
    assert list(b.items("g", ["x"])) == []
    assert [i.id for i in a_items] == ["p"]
    claimed = list_items(any_mgr.backend, a.id, "h", "claimed")
    assert [e.item_id for e in claimed] == ["p"], "B freed the batch the live A holds"
    a_items[0].done()
    assert [i.id for i in a_loop] == ["q"]
    for r in (a, b, c):
        r.finish()


def test_a_worker_seen_idle_is_not_reaped_while_it_saves_the_pipeline_checkpoint(
    any_mgr: ckptlite.CheckpointManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A (idle: no loop, no compute) saves the run's PIPELINE checkpoint in its thread;
    # B, waiting for C's batch, sees A idle meanwhile. B must not free A's claim
    # (slot -2) before A has saved it: C would then save a second one.
    a, b, c = any_mgr.run("job"), any_mgr.run("job"), any_mgr.run("job")
    c_loop = c.items("g", ["x"])
    c_item = next(c_loop)  # C holds g's only batch
    inside, go, looked_at_a = threading.Event(), threading.Event(), threading.Event()
    save = a._save_pipeline

    def slow_save() -> ckptlite.Checkpoint:
        inside.set()
        assert go.wait(10)
        return save()

    monkeypatch.setattr(a, "_save_pipeline", slow_save)
    looked = runs.alive

    def look(w: ckptlite.WorkerRecord, node: str, waiting: bool = False) -> bool:
        live = looked(w, node, waiting)
        if w.worker_id == a.worker_id and inside.is_set():
            looked_at_a.set()
        return live

    monkeypatch.setattr(runs, "alive", look)
    made: list[str] = []
    maker = threading.Thread(target=lambda: made.append(a.pipeline_checkpoint().id))
    maker.start()
    assert inside.wait(10)  # A holds the claim, mid-save
    reaper = threading.Thread(target=b._reap, kwargs={"waiting": True})
    reaper.start()
    assert looked_at_a.wait(10)  # B has seen A idle
    reaper.join(0.3)  # B reaps now if nothing stops it
    c_made: list[str] = []
    other = threading.Thread(target=lambda: c_made.append(c.pipeline_checkpoint().id))
    other.start()  # C needs it too while A saves it: C waits for A's
    other.join(0.3)
    go.set()
    for t in (maker, reaper, other):
        t.join(10)
        assert not t.is_alive()
    roots = any_mgr.list("job", level=Level.PIPELINE)
    assert len(roots) == 1, "a second PIPELINE checkpoint was saved"
    assert made == c_made == [roots[0].id]
    c_item.done()
    assert next(c_loop, None) is None
    for r in (a, b, c):
        r.finish()


def test_a_loop_closed_while_its_thread_holds_the_commit_lock_does_not_hang(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # The cycle collector may finalize an abandoned loop on any thread, one inside a
    # commit included: letting its batches go must not wait for that thread's own lock.
    run = any_mgr.run("job")
    loop = run.items("g", [f"i{n}" for n in range(10)], claim=5)
    next(loop).done()

    def close_inside_a_commit() -> None:
        with run._commit_lock:
            loop.close()

    t = threading.Thread(target=close_inside_a_commit, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "closing the loop waited for its own thread's commit lock"
    run.commit()  # the mark it could not commit then is committed now
    assert [e.item_id for e in run.ledger("g")] == ["i0"]


def test_a_loop_whose_last_commit_fails_keeps_its_batches(
    any_mgr: ckptlite.CheckpointManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Released with a mark not committed, a batch would be taken over and its item done
    # again; kept, it is taken over when its lease ends, and the ledger is asked then.
    run = any_mgr.run("job")
    loop = run.items("g", [f"i{n}" for n in range(10)], claim=5)
    next(loop).done()
    released: list[object] = []
    backend = any_mgr.backend
    real = backend.release_segments

    def failing() -> None:
        raise ckptlite.StoreLockedError("busy")

    monkeypatch.setattr(run, "_commit_queued", failing)
    monkeypatch.setattr(
        backend, "release_segments", lambda *a, **k: released.append(a) or real(*a, **k)
    )
    loop.close()
    assert released == []
    monkeypatch.undo()
    run.commit()
    assert [e.item_id for e in run.ledger("g")] == ["i0"]


# -- retries and take-overs -------------------------------------------------------------------


def test_an_item_failed_by_one_worker_and_done_by_its_taker_leaves_the_run_completed(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # A fails i5 and stops its loop; B takes the batch over and does i5 (a retry in the
    # same run). The ledger has i5 done: whoever leaves last, the run ends COMPLETED.
    a, b = any_mgr.run("job"), any_mgr.run("job")
    b_loop = b.items("g", _IDS, claim=5)
    did = [next(b_loop)]  # B holds batch 0
    a_loop = a.items("g", _IDS, claim=5)
    first = next(a_loop)  # A holds batch 1
    first.fail(RuntimeError("flaky"))
    a_loop.close()  # commits the failed mark, lets batch 1 go
    did += b_loop
    for item in did:
        item.done()
    assert [i.attempts for i in did if i.id == "i5"] == [1]
    b.commit()
    (i5,) = [e for e in b.ledger("g") if e.item_id == "i5"]
    assert i5.ok and i5.attempts == 2
    assert b.finish().status is RunStatus.RUNNING  # A is still in the run
    rec = a.finish()
    assert rec.status is RunStatus.COMPLETED, rec.error


def test_a_failed_item_is_retried_by_resumed_runs_until_max_attempts(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # Each resume of the FAILED run tries x once more, with the attempts counted so
    # far; once it failed max_attempts times it is skipped and the run stays FAILED.
    seen: list[int] = []
    for _ in range(4):
        with any_mgr.run("job", max_attempts=3) as run:
            for item in run.items("g", ["x", "y"]):
                if item.id == "x":
                    seen.append(item.attempts)
                    item.fail("bad")
                else:
                    item.done()
        assert run.status is RunStatus.FAILED and run.record.error == "1 item(s) failed"
    assert seen == [0, 1, 2]  # the fourth run did not try it
    ledger = {e.item_id: e for e in run.ledger("g")}
    assert not ledger["x"].ok and ledger["x"].attempts == 3
    assert ledger["y"].ok and ledger["y"].attempts == 1
    with any_mgr.run("job", max_attempts=4) as more:  # a higher limit: one more try
        assert [(i.id, i.attempts) for i in more.items("g", ["x", "y"])] == [("x", 3)]
        for item in more.items("g", ["x", "y"]):
            item.done()
    assert more.id == run.id and more.status is RunStatus.COMPLETED


def test_a_late_failed_mark_of_a_paused_worker_does_not_undo_its_takers_done(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # A fails x but is paused past its lease before committing; B takes x over and
    # does it; A's failed mark, committed late, neither undoes nor counts against it.
    slow = any_mgr.run("job", lease=0.3)
    item = next(slow.items("g", ["x"], lease=0.3))
    slow._heart.stop.set()  # type: ignore[union-attr]  # paused: no more beats
    item.fail("late")  # queued, not committed
    time.sleep(0.5)
    fast = any_mgr.run("job")
    taken = list(fast.items("g", ["x"]))
    assert [(i.id, i.attempts) for i in taken] == [("x", 0)]
    taken[0].done("fast")
    fast.commit()
    slow.commit()
    (entry,) = fast.ledger("g")
    assert entry.ok and entry.attempts == 1 and fast.results("g") == {"x": "fast"}
    slow.finish()
    assert fast.finish().status is RunStatus.COMPLETED


def test_a_second_loop_of_one_worker_over_a_group_skips_what_the_first_holds(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # Two threads of one Run iterate the same group: the second one's loop (the worker
    # alone in the run) must not free the batch the first one holds and redo its item.
    run = any_mgr.run("job")
    first = run.items("g", _IDS, claim=5)
    held = next(first)  # batch 0, i0 being worked on
    second = [i.id for i in run.items("g", _IDS, claim=5)]
    assert "i0" not in second, "the worker's second loop yielded an item its first holds"
    held.done()
    first.close()
    run.finish()


def test_items_marked_after_their_loop_ended_are_not_yielded_by_the_next_loop(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    # The loop ends with every item yielded, then they are marked (queued, batch_size
    # not reached). A next loop of the same worker, alone, registers the group afresh:
    # it must see those marks (done or failed) and not yield the items again.
    run = any_mgr.run("job", max_attempts=1)
    got = list(run.items("g", _IDS, claim=5))
    for item in got:
        if item.id == "i3":
            item.fail("bad")
        else:
            item.done()
    again = [i.id for i in run.items("g", _IDS, claim=5)]
    assert again == [], "items marked (not yet committed) were yielded again"
    assert len(run.ledger("g")) == 10
    assert run.finish().status is RunStatus.FAILED
