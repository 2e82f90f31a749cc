"""The tile pipeline example, killed with SIGKILL at random points and rerun."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ckptlite
from ckptlite import Level, RunStatus

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tile_pipeline.py"
PROCESS = "tile-pipeline"
TILES = 64
DELAY = "0.01"  # seconds of "work" per tile: the whole run takes about a second


def run_example(store: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--store", str(store), "--out", str(out), "--delay", DELAY],
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_store(store: Path) -> None:
    """The ledger holds every tile done exactly once, each stage saved exactly once."""
    with ckptlite.open(store) as mgr:
        (run,) = mgr.list_runs(PROCESS)
        assert run.status is RunStatus.COMPLETED
        ledger = mgr.backend.list_items(run.id, "tiles")
        assert len(ledger) == TILES and len({e.item_id for e in ledger}) == TILES
        assert all(e.ok and e.attempts == 1 for e in ledger)
        for stage in ("generate", "resample", "mosaic"):
            assert len(mgr.list(PROCESS, level=Level.STAGE, name=stage)) == 1
        assert mgr.verify(full=True).ok


def test_example_runs_and_reruns_idempotently(tmp_path: Path) -> None:
    first = run_example(tmp_path / "s", tmp_path / "a.json")
    assert first.returncode == 0, first.stderr
    result = json.loads((tmp_path / "a.json").read_text())
    assert len(result["tiles"]) == TILES and result["total"] == sum(result["tiles"].values())
    assert json.loads(first.stdout) == result
    check_store(tmp_path / "s")
    # A second invocation reuses the completed run of the same key and agrees.
    again = run_example(tmp_path / "s", tmp_path / "b.json")
    assert again.returncode == 0, again.stderr
    assert "reusing the completed run" in again.stderr
    assert (tmp_path / "b.json").read_text() == (tmp_path / "a.json").read_text()
    check_store(tmp_path / "s")  # still one run, every stage saved once


@pytest.mark.slow
def test_sigkill_at_20_random_points_then_rerun(tmp_path: Path) -> None:
    started = time.monotonic()
    clean = run_example(tmp_path / "clean", tmp_path / "clean.json")
    duration = time.monotonic() - started
    assert clean.returncode == 0, clean.stderr
    expected = (tmp_path / "clean.json").read_text()

    rng = random.Random(20261126)
    mid_run = 0
    for trial in range(20):
        store, out = tmp_path / f"s{trial}", tmp_path / f"r{trial}.json"
        cmd = [sys.executable, str(EXAMPLE), "--store", str(store), "--out", str(out)]
        proc = subprocess.Popen(
            [*cmd, "--delay", DELAY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.05, 0.95 * duration))
        proc.send_signal(signal.SIGKILL)  # (a no-op when it finished first)
        proc.wait()
        status = None
        if store.exists():
            with ckptlite.open(store) as mgr:
                runs = mgr.list_runs(PROCESS)
                status = runs[0].status if runs else None
        if status is not RunStatus.COMPLETED:
            mid_run += status is RunStatus.RUNNING
            rerun = run_example(store, out)
            assert rerun.returncode == 0, rerun.stderr
        # (A kill between the run's end and writing --out leaves no file: the
        # mosaic stage in the store is the result then.)
        if out.exists():
            assert out.read_text() == expected, f"trial {trial}: result differs"
        with ckptlite.open(store) as mgr:
            hit = mgr.load_latest(PROCESS, level=Level.STAGE, name="mosaic")
        assert hit is not None and json.dumps(hit[1], sort_keys=True) + "\n" == expected
        check_store(store)
    assert mid_run >= 3  # the kills really landed inside runs, not only before or after


@pytest.mark.slow
def test_the_demo_kills_reruns_and_scales_out(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, str(EXAMPLE), "--demo"], capture_output=True, text=True, timeout=300
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count(": True") == 5, demo.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "pg"])
def test_workers_on_one_run_with_one_killed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    clean = run_example(tmp_path / "clean", tmp_path / "clean.json")
    assert clean.returncode == 0, clean.stderr
    store = str(request.getfixturevalue("pg_schema")) if kind == "pg" else str(tmp_path / "s")
    cmd = [sys.executable, str(EXAMPLE), "--store", store, "--delay", "0.05", "--lease", "2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(1.0)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].communicate()
    for p in procs[1:]:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        assert out == (tmp_path / "clean.json").read_text()  # the same mosaic
    with ckptlite.open(store) as mgr:
        (run,) = mgr.list_runs(PROCESS)
        assert run.status is RunStatus.COMPLETED
        ledger = mgr.backend.list_items(run.id, "tiles")
        assert len(ledger) == TILES and all(e.ok and e.attempts == 1 for e in ledger)
        for stage in ("generate", "resample", "mosaic"):
            assert len(mgr.list(PROCESS, level=Level.STAGE, name=stage)) == 1
