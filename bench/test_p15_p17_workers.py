"""P15-P17: many worker processes on one run (runs.py), against one worker.

P15: 4 workers on one PostgreSQL run, items of simulated I/O-bound work
(``worker_item_s`` each): wall time <= 0.30x one worker's, no item done twice,
claim + mark overhead <= 1 ms per item. P16: the same with one worker SIGKILLed
at a random moment, each worker standing for its own machine (``CKPTLITE_NODE``),
so only the lease frees the dead one's items: all done, only the items it had
started run again, finished within lease + 10 s of the kill. P17: 4 processes
on one local-store run: no duplicates, wall <= 0.35x one worker's.

Wall time runs from the barrier (every worker released at once) to the last
worker's exit; process start-up is outside it, on both sides.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ckptlite
from bench.conftest import MODE, SIZES

ROOT = Path(__file__).resolve().parents[1]


class Workers:
    """``n`` worker processes released together; their logs and reports."""

    def __init__(
        self, url: str, process: str, out: Path, n: int, *, lease: float, remote: bool
    ) -> None:
        out.mkdir(parents=True)
        self.out = out
        cfg = {
            "url": url,
            "process": process,
            "out": str(out),
            "items": SIZES.worker_items,
            "item_s": SIZES.worker_item_s,
            "lease": lease,
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.workers", json.dumps(cfg)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**env, "CKPTLITE_NODE": f"machine-{i}"} if remote else env,
            )
            for i in range(n)
        ]
        while len(list(out.glob("ready-*"))) < n:
            time.sleep(0.005)
        self.started = time.perf_counter()
        (out / "go").touch()

    def wait(self) -> tuple[float, list[dict[str, Any]]]:
        reports = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=600)
            if p.returncode == 0:
                reports.append(json.loads(stdout))
        return time.perf_counter() - self.started, reports

    def started_items(self, proc: subprocess.Popen[str] | None = None) -> Counter[str]:
        files = [self.out / f"did-{proc.pid}"] if proc else list(self.out.glob("did-*"))
        c: Counter[str] = Counter()
        for f in files:
            if f.exists():
                c.update(f.read_text().split())
        return c


def ledger_check(url: str, process: str) -> int:
    """Return how many items the ledger holds more than once or not done (must be 0)."""
    with ckptlite.open(url) as mgr:
        (run,) = mgr.list_runs(process)
        entries = mgr.backend.list_items(run.id, "items")
        assert run.status is ckptlite.RunStatus.COMPLETED, run
    ids = Counter(e.item_id for e in entries)
    bad = sum(1 for e in entries if not e.ok or e.attempts != 1)
    return bad + sum(v - 1 for v in ids.values()) + (SIZES.worker_items - len(ids))


def one_against_four(url: str, scratch: Path, target: str, limit: float) -> dict[str, Any]:
    """One worker, then four on a run of another process in the same store."""
    single = Workers(url, "bench-one", scratch / "one", 1, lease=30.0, remote=False)
    t1, _ = single.wait()
    four = Workers(url, "bench-four", scratch / "four", 4, lease=30.0, remote=False)
    t4, reports = four.wait()
    assert len(reports) == 4
    done = sum(r["items"] for r in reports)
    overhead_ms = 1000 * sum(r["overhead_s"] for r in reports) / max(done, 1)
    duplicates = ledger_check(url, "bench-four") + sum(v - 1 for v in four.started_items().values())
    return {
        "target": target,
        "role": "pair",
        "label": "4 workers vs 1 worker",
        "mode": MODE,
        "items": SIZES.worker_items,
        "item_s": SIZES.worker_item_s,
        "medians": {"4 workers": t4, "1 worker": t1},
        "limit": limit,
        "duplicates": duplicates,
        "overhead_ms_per_item": overhead_ms,
    }


@pytest.mark.benchmark(group="P15-P17 workers")
def test_p15_four_workers_on_postgres(benchmark: Any, scratch: Path, pg_url: str) -> None:
    info: dict[str, Any] = {}
    benchmark.pedantic(
        lambda: info.update(one_against_four(pg_url, scratch, "P15", 0.30)),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(info, overhead_limit_ms=1.0)
    assert info["duplicates"] == 0


@pytest.mark.benchmark(group="P15-P17 workers")
def test_p17_four_processes_on_a_local_store(benchmark: Any, scratch: Path) -> None:
    info: dict[str, Any] = {}
    benchmark.pedantic(
        lambda: info.update(one_against_four(str(scratch / "store"), scratch, "P17", 0.35)),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(info)
    assert info["duplicates"] == 0


@pytest.mark.benchmark(group="P15-P17 workers")
def test_p16_one_worker_killed(benchmark: Any, scratch: Path, pg_url: str) -> None:
    lease = SIZES.worker_lease
    info: dict[str, Any] = {}

    def experiment() -> None:
        workers = Workers(pg_url, "bench", scratch / "killed", 4, lease=lease, remote=True)
        expected = SIZES.worker_items * SIZES.worker_item_s / 4
        time.sleep(random.Random(16).uniform(0.2, 0.6) * expected)
        victim = workers.procs[0]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.perf_counter()
        wall, reports = workers.wait()
        after_kill = time.perf_counter() - killed_at
        started = workers.started_items()
        again = {k for k, v in started.items() if v > 1}
        victims = set(workers.started_items(victim))
        info.update(
            target="P16",
            role="ckptlite",
            label="4 workers on PostgreSQL, one SIGKILLed",
            mode=MODE,
            items=SIZES.worker_items,
            lease_s=lease,
            wall_s=wall,
            finished_after_kill_s=after_kill,
            limit_after_kill_s=lease + 10.0,
            survivors=len(reports),
            missing_or_duplicated=ledger_check(pg_url, "bench"),
            rerun_items=len(again),
            rerun_not_the_victims=len(again - victims),
            victim_started=len(victims),
        )

    benchmark.pedantic(experiment, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    assert info["survivors"] == 3
    assert info["missing_or_duplicated"] == 0 and info["rerun_not_the_victims"] == 0
