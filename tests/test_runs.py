"""Runs, stages and the work-item ledger (manager side), on a real local store."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from ckptlite import Level, RunNotFoundError, RunStatus
from ckptlite.errors import InvalidInputError, StoreFullError, UnsupportedTypeError

Mgr = ckptlite.CheckpointManager


# -- lifecycle ----------------------------------------------------------------------


def test_a_run_records_running_then_completed(mgr: Mgr) -> None:
    with mgr.run("job") as run:
        assert run.status is RunStatus.RUNNING and not run.resumed
        assert mgr.list_runs("job")[0].status is RunStatus.RUNNING
        for item in run.items("g", ["a", "b", "c"]):
            item.done()
    rec = mgr.list_runs("job")[0]
    assert rec.id == run.id and rec.status is RunStatus.COMPLETED
    assert rec.finished_at is not None and rec.started_at <= rec.updated_at <= rec.finished_at
    assert rec.progress == (3, 3) and rec.error is None


def test_an_exception_fails_the_run_and_the_next_run_resumes_it(mgr: Mgr) -> None:
    with pytest.raises(ZeroDivisionError), mgr.run("job") as run:
        for item in run.items("g", ["a", "b"]):
            item.done()
        1 / 0  # noqa: B018
    rec = mgr.list_runs("job")[0]
    assert rec.status is RunStatus.FAILED and "ZeroDivisionError" in (rec.error or "")
    # The done-marks made before the error were committed at exit.
    with mgr.run("job") as again:
        assert again.id == run.id and again.resumed
        assert again.status is RunStatus.RUNNING and again.record.error is None
        assert [i.id for i in again.items("g", ["a", "b", "c"])] == ["c"]
    # "c" was yielded but never marked: the group is not done, so the run is not either.
    assert mgr.list_runs("job")[0].status is RunStatus.RUNNING
    with mgr.run("job") as third:
        for item in third.items("g", ["a", "b", "c"]):
            item.done()
    assert third.id == run.id and mgr.list_runs("job")[0].status is RunStatus.COMPLETED


def test_a_completed_run_is_not_resumed_unless_asked(mgr: Mgr) -> None:
    with mgr.run("job") as first:
        pass
    with mgr.run("job") as second:
        assert second.id != first.id and not second.resumed
    with mgr.run("job", resume=False) as third:
        assert third.id not in (first.id, second.id)
    with mgr.run("job", run_id=first.id) as reopened:
        assert reopened.id == first.id and reopened.resumed
    assert [r.id for r in mgr.list_runs("job")] == [third.id, second.id, first.id]
    with pytest.raises(RunNotFoundError):
        mgr.run("job", run_id="run_nope")
    with pytest.raises(InvalidInputError):
        mgr.run("other", run_id=first.id)


def test_unfinished_run_is_resumed_even_without_resume_order(mgr: Mgr) -> None:
    run = mgr.run("job")  # never finished: like a process that was killed
    run.items  # noqa: B018
    again = mgr.run("job")
    assert again.id == run.id and again.resumed
    new = mgr.run("job", resume=False)
    assert new.id != run.id


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"max_attempts": 0}, {"batch_seconds": 0}],
)
def test_bad_run_options(mgr: Mgr, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        mgr.run("job", **kwargs)
    assert mgr.list_runs() == []


# -- stages ---------------------------------------------------------------------------


def test_a_completed_stage_is_skipped_on_resume_with_its_result(mgr: Mgr) -> None:
    calls = []

    def pipeline(fail: bool) -> Any:
        with mgr.run("geo") as run:
            stage = run.stage("resample")
            if not stage.done:
                calls.append("resample")
                stage.complete(np.arange(300_000, dtype="f4"), metadata={"factor": 2})
            if fail:
                raise RuntimeError("later stage broke")
            return stage.result

    with pytest.raises(RuntimeError):
        pipeline(fail=True)
    result = pipeline(fail=False)
    assert calls == ["resample"]
    assert np.array_equal(result, np.arange(300_000, dtype="f4"))
    cp = mgr.latest("geo", level=Level.STAGE, name="resample")
    assert cp is not None and cp.metadata["factor"] == 2
    # A new run does its stages again.
    pipeline(fail=False)
    assert calls == ["resample", "resample"]


def test_stage_result_before_complete_is_an_error(mgr: Mgr) -> None:
    with mgr.run("geo") as run:
        stage = run.stage("s")
        assert not stage.done and stage.checkpoint is None
        with pytest.raises(InvalidInputError):
            stage.result  # noqa: B018
        with pytest.raises(InvalidInputError):
            run.stage("")


def test_stage_with_unsupported_result_is_not_done(mgr: Mgr) -> None:
    with mgr.run("geo") as run:
        with pytest.raises(UnsupportedTypeError):
            run.stage("s").complete(object())
        assert not run.stage("s").done


# -- the ledger -----------------------------------------------------------------------


def test_items_yields_only_pending_and_states_commit_with_marks(mgr: Mgr) -> None:
    ids = [f"t{i}" for i in range(10)]
    run = mgr.run("tiles")
    for item in run.items("tile", ids[:4]):
        item.done({"sum": int(item.id[1:]) * 10, "arr": np.full(30_000, 1.5)})
    run.finish()
    run = mgr.run("tiles", run_id=run.id)
    assert [i.id for i in run.items("tile", ids)] == ids[4:]  # not marked: still pending
    results = run.results("tile")
    assert sorted(results) == ids[:4]
    assert results["t3"]["sum"] == 30 and np.array_equal(results["t3"]["arr"], np.full(30_000, 1.5))
    assert [i.id for i in run.items("other", ["t0"])] == ["t0"]  # groups are separate


def test_failed_items_keep_error_and_attempts_and_retry_up_to_the_limit(mgr: Mgr) -> None:
    seen: list[tuple[str, int]] = []
    for _ in range(4):
        with mgr.run("job", max_attempts=3) as run:
            for item in run.items("g", ["ok", "flaky", "broken"]):
                seen.append((item.id, item.attempts))
                if item.id == "broken" or (item.id == "flaky" and item.attempts == 0):
                    item.fail(ValueError(f"bad {item.id}"))
                else:
                    item.done(item.attempts)
        assert run.id == mgr.list_runs("job")[0].id
    assert seen == [
        ("ok", 0),
        ("flaky", 0),
        ("broken", 0),
        ("flaky", 1),
        ("broken", 1),
        ("broken", 2),
    ]
    ledger = {e.item_id: e for e in run.ledger("g")}
    assert ledger["broken"].attempts == 3 and not ledger["broken"].ok
    assert ledger["broken"].error == "ValueError: bad broken"
    assert ledger["flaky"].ok and ledger["flaky"].attempts == 2
    assert run.results("g") == {"ok": 0, "flaky": 1}
    rec = mgr.list_runs("job")[0]
    assert rec.status is RunStatus.FAILED and rec.error == "1 item(s) failed"
    assert len(mgr.list_runs("job")) == 1


def test_an_item_is_marked_once(mgr: Mgr) -> None:
    with mgr.run("job") as run:
        for item in run.items("g", ["a", "a", "b"]):  # duplicates are yielded once
            item.done()
            with pytest.raises(InvalidInputError):
                item.done()
            with pytest.raises(InvalidInputError):
                item.fail("again")
    assert sorted((e.item_id, e.attempts) for e in run.ledger()) == [("a", 1), ("b", 1)]


def test_bad_item_ids_and_states(mgr: Mgr) -> None:
    with mgr.run("job") as run:
        with pytest.raises(InvalidInputError):
            list(run.items("g", [1, 2]))  # type: ignore[list-item]
        with pytest.raises(InvalidInputError):
            list(run.items("", ["a"]))
        item = next(run.items("g", ["a"]))
        with pytest.raises(UnsupportedTypeError):
            item.done(object())
        item.done("fine")  # the failed encode left it unmarked
    assert run.results("g") == {"a": "fine"}


def test_marks_commit_in_batches(mgr: Mgr) -> None:
    run = mgr.run("job", batch_size=5, batch_seconds=3600)
    it = run.items("g", [f"i{n}" for n in range(12)])
    for _ in range(4):
        next(it).done()
    assert run.ledger() == []  # the open batch is not committed yet
    next(it).done()
    assert len(run.ledger()) == 5  # the fifth mark closed the batch
    for _ in range(6):
        next(it).done()
    assert len(run.ledger()) == 10
    next(it).done()
    with pytest.raises(StopIteration):
        next(it)  # the end of the loop commits
    assert len(run.ledger()) == 12
    assert len({e.changed for e in run.ledger()}) == 3  # three transactions


def test_a_failed_batch_commit_keeps_its_marks(mgr: Mgr, monkeypatch: pytest.MonkeyPatch) -> None:
    run = mgr.run("job", batch_size=100)
    items = list(run.items("g", ["a", "b"]))
    items[0].done(1)

    def full(run_id: str, marks: Any, **kwargs: Any) -> int:
        raise StoreFullError("injected")

    monkeypatch.setattr(mgr.backend, "mark_items", full)
    with pytest.raises(StoreFullError):
        run.commit()
    monkeypatch.undo()
    items[1].done(2)
    run.finish()
    assert run.results("g") == {"a": 1, "b": 2}
    assert run.status is RunStatus.COMPLETED


def test_items_marked_from_many_threads_are_recorded_once(mgr: Mgr) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"i{n}" for n in range(2000)]
    with mgr.run("job", batch_size=64) as run:
        items = list(run.items("g", ids))
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda it: it.done(int(it.id[1:])), items))
    ledger = run.ledger("g")
    assert len(ledger) == 2000 and {e.item_id for e in ledger} == set(ids)
    assert all(e.attempts == 1 for e in ledger)
    assert run.results("g") == {i: int(i[1:]) for i in ids}
    assert run.record.progress == (2000, 2000)


CHILD = textwrap.dedent(
    """
    import sys, time, ckptlite
    mgr = ckptlite.open(sys.argv[1])
    with mgr.run("job", batch_size=50) as run:
        for item in run.items("g", [f"i{n:05d}" for n in range(3000)]):
            time.sleep(0.001)
            item.done({"n": int(item.id[1:]) * 2})
    print("finished")
    """
)


@pytest.mark.slow
def test_sigkill_loses_at_most_the_open_batch_and_never_doubles(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    rng = random.Random(3)
    committed_before = interrupted = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, store], stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with ckptlite.open(store) as m:
            runs = m.list_runs("job")
            if not runs:
                continue
            assert len(runs) == 1
            if runs[0].status is RunStatus.COMPLETED:
                break  # it finished before the kill landed
            assert runs[0].status is RunStatus.RUNNING
            interrupted += 1
            ledger = m.backend.list_items(runs[0].id, "g")
            assert len(ledger) % 50 == 0 or len(ledger) == 3000  # whole batches only
            assert len(ledger) >= committed_before  # nothing committed is ever lost
            committed_before = len(ledger)
    assert interrupted >= 1  # at least one kill landed mid-run
    with ckptlite.open(store) as m:
        runs = m.list_runs("job")
        unfinished = not runs or runs[0].status is RunStatus.RUNNING
    if unfinished:
        done = subprocess.run([sys.executable, "-c", CHILD, store], capture_output=True, text=True)
        assert done.stdout.strip() == "finished", done.stderr
    with ckptlite.open(store) as m:
        (run,) = m.list_runs("job")
        assert run.status is RunStatus.COMPLETED
        ledger = m.backend.list_items(run.id, "g")
        assert len(ledger) == 3000 and len({e.item_id for e in ledger}) == 3000
        assert all(e.ok and e.attempts == 1 for e in ledger)
        results = m.run("job", run_id=run.id).results("g")
        assert all(v == {"n": int(k[1:]) * 2} for k, v in results.items())


@pytest.mark.slow
def test_a_million_item_ledger_is_marked_in_batches_and_resumed(store_dir: Path) -> None:
    n = 1_000_000
    ids = [f"tile_{i // 1000}_{i % 1000}" for i in range(n)]
    with ckptlite.open(store_dir, durability="none") as mgr:
        run = mgr.run("big", batch_size=10_000)
        loop = run.items("tiles", ids)
        for k, item in enumerate(loop):
            if k == 600_500:
                break  # "crash": 600,000 committed, 500 in the open batch
            item.done()
        # The process died here: its queued marks are lost (a loop stopped early would
        # commit them), and neither the run nor the loop commits or finishes.
        run._pending.clear()
        del run, loop
    with ckptlite.open(store_dir, durability="none") as mgr:
        with mgr.run("big", batch_size=10_000) as run:
            assert run.resumed
            pending = run.items("tiles", ids)
            first = next(pending)
            assert first.id == ids[600_000]
            first.done()
            count = 1
            for item in pending:
                item.done()
                count += 1
        assert count == 400_000
        assert run.status is RunStatus.COMPLETED and run.record.progress == (n, n)
        done, failed = mgr.backend.item_marks(run.id, "tiles")
        assert len(done) == n and failed == {}
        assert list(mgr.run("big", run_id=run.id).items("tiles", ids)) == []


def test_get_run_and_item_changes_follow_a_run_on_every_backend(
    any_mgr: ckptlite.CheckpointManager,
) -> None:
    with any_mgr.run("tiles") as run:
        items = run.items("t", ["a", "b", "c"])
        next(items).done()
        assert any_mgr.get_run(run.id).status == RunStatus.RUNNING
        run.commit()
        first = any_mgr.item_changes(run.id)
        assert [e.item_id for e in first] == ["a"]
        for item in items:
            item.done() if item.id != "c" else item.fail("no data")
    assert any_mgr.get_run(run.id).status == RunStatus.FAILED  # item c failed
    later = any_mgr.item_changes(run.id, after=first[-1].changed)
    assert [(e.item_id, e.ok) for e in later] == [("b", True), ("c", False)]
    assert [e.changed for e in later] == sorted(e.changed for e in later)
    assert any_mgr.item_changes(run.id, after=later[-1].changed) == []
    with pytest.raises(RunNotFoundError):
        any_mgr.get_run("no-such-run")
    with pytest.raises(RunNotFoundError):
        any_mgr.item_changes("no-such-run")
    for bad in (-1, True, "3", 1.5):
        with pytest.raises(InvalidInputError):
            any_mgr.item_changes(run.id, after=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        any_mgr.get_run(7)  # type: ignore[arg-type]
