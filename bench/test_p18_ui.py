"""P18: the dashboard (``ckptlite ui``): pages of a 100,000-item run, and what polling costs.

Render: a store holds one run of 100,000 tile items (250 failed); each round
builds a fresh app (a cold cache: the first request reads the whole ledger) and
times, through Starlette's TestClient, the runs page, the run page, and the run
page's tile-map payload. Target: each under 1 s.

Polling: a pipeline saves checkpoints (a 16 KiB array each, with a done-mark per
item) as fast as it can, while a dashboard (``ckptlite ui`` in its own process)
serves its store; another process polls it every second the way a browser on
the run page does (the run's JSON and its map), and is stopped (SIGSTOP) and
resumed in alternate intervals. Target: the save rate in the polled intervals
>= 0.95x the rate in the others.
"""

from __future__ import annotations

import itertools
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

import ckptlite
from bench.conftest import FULL, MODE
from ckptlite.ui import open_readonly
from ckptlite.ui.app import create_app

ITEMS = (250, 400)  # rows x cols: 100,000 tiles
RENDER_ROUNDS = 5 if FULL else 2
POLL_INTERVALS = 24 if FULL else 4  # alternating: poller stopped, poller polling
INTERVAL = 3.0 if FULL else 1.5  # seconds

POLLER = textwrap.dedent(
    """
    # What a browser on the newest run's page asks for, every second (one kept-alive
    # connection, as a browser keeps one: the poller's own cost is not the dashboard's).
    import http.client, json, sys, time
    conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    def get(path):
        conn.request("GET", path)
        return conn.getresponse().read()
    while True:
        t = time.monotonic()
        runs = json.loads(get("/api/runs?limit=1"))["runs"]
        if runs:
            rid = runs[0]["id"]
            get(f"/api/runs/{rid}")
            get(f"/api/runs/{rid}/map?group=tile")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    """
)


def _big_store(where: Path) -> str:
    rows, cols = ITEMS
    with ckptlite.open(where, durability="none") as mgr, mgr.run("big", batch_size=10_000) as run:
        for it in run.items("tile", [f"tile_{r}_{c}" for r in range(rows) for c in range(cols)]):
            if it.id.endswith("_7"):
                it.fail("no data")
            else:
                it.done({"px": 1})
    return run.id


@pytest.mark.benchmark(group="P18 dashboard")
def test_p18_pages_of_a_100000_item_run(benchmark: Any, scratch: Path) -> None:
    store = scratch / "store"
    run_id = _big_store(store)
    paths = {
        "runs page": "/",
        "run page": f"/runs/{run_id}",
        "tile map payload": f"/api/runs/{run_id}/map?group=tile",
    }
    times: dict[str, list[float]] = {k: [] for k in paths}

    def rounds() -> None:
        for _ in range(RENDER_ROUNDS):
            for label, path in paths.items():
                mgr = open_readonly(str(store))
                client = TestClient(create_app(mgr))  # cold: the ledger is read afresh
                t0 = time.perf_counter()
                r = client.get(path)
                times[label].append(time.perf_counter() - t0)
                assert r.status_code == 200
                mgr.close()

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    medians = {k: statistics.median(v) for k, v in times.items()}
    benchmark.extra_info.update(
        target="P18", role="limits", mode=MODE, items=ITEMS[0] * ITEMS[1], medians_s=medians
    )
    print("\nP18 cold render, 100,000 items (median s):", medians)
    if FULL:
        assert all(t < 1.0 for t in medians.values()), medians


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pipeline(mgr: ckptlite.CheckpointManager, seconds: float, times: list[float]) -> None:
    """Save checkpoints (and mark items) for ``seconds``, appending each save's end time."""
    state = np.random.default_rng(1).random(2048)  # 16 KiB
    t0 = time.monotonic()
    with mgr.run("pipeline", resume=False, batch_size=50, batch_seconds=0.5) as run:
        # A list: workers of one run must pass the same ids, so run.items reads them all
        # (an endless generator would never end). More than the seconds allow.
        ids = [f"tile_{i // 100}_{i % 100}" for i in range(10**6)]
        for n, item in enumerate(run.items("tile", ids)):
            state[0] = n
            mgr.save("pipeline", state, name="tile")
            item.done(n)
            times.append(now := time.monotonic())
            if now - t0 >= seconds:
                break


@pytest.mark.benchmark(group="P18 dashboard")
def test_p18_save_rate_with_a_polling_dashboard(benchmark: Any, scratch: Path) -> None:
    """Intervals alternate with the poller running and stopped (SIGSTOP): same store,
    same processes, so the store's growth and the machine's load hit both sides alike."""
    store, port = scratch / "live", _free_port()
    script = scratch / "poller.py"
    script.write_text(POLLER)
    code = "import sys; from ckptlite.cli import main; sys.exit(main())"
    rates: dict[str, list[float]] = {"without": [], "with": []}
    times: list[float] = []
    marks: list[tuple[float, str]] = []

    def control(poller: subprocess.Popen[bytes], start: float) -> None:
        time.sleep(max(0.0, start - time.monotonic()))
        for k in range(POLL_INTERVALS):
            side = ("without", "with")[(k + k // 2) % 2]  # ABBA order against drift
            poller.send_signal(signal.SIGCONT if side == "with" else signal.SIGSTOP)
            marks.append((time.monotonic(), side))
            time.sleep(INTERVAL)
        marks.append((time.monotonic(), "end"))
        poller.send_signal(signal.SIGCONT)

    def experiment() -> None:
        with ckptlite.open(store, durability="none") as mgr:
            mgr.save("warmup", 0)  # the store exists before the dashboard opens it
            argv = [sys.executable, "-c", code, "--store", str(store), "ui", "--port", str(port)]
            with subprocess.Popen(argv, stderr=subprocess.DEVNULL) as server:
                for _ in range(100):
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.1)
                with subprocess.Popen([sys.executable, str(script), str(port)]) as poller:
                    start = time.monotonic() + 2.0  # both started and polling: steady state
                    ctl = threading.Thread(target=control, args=(poller, start))
                    ctl.start()
                    _pipeline(mgr, 2.0 + POLL_INTERVALS * INTERVAL + 0.5, times)
                    ctl.join()
                    poller.terminate()
                server.terminate()
        for (t0, side), (t1, _) in itertools.pairwise(marks):
            rates[side].append(sum(t0 <= t < t1 for t in times) / (t1 - t0))

    benchmark.pedantic(experiment, rounds=1, iterations=1)
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    ratio = with_ / without
    benchmark.extra_info.update(
        target="P18",
        role="pair",
        mode=MODE,
        label="saves/s with a dashboard polled every second vs without",
        rates=rates,
        median_with=with_,
        median_without=without,
        ratio=ratio,
    )
    print(f"\nP18 save rate: without {without:.0f}/s, with dashboard {with_:.0f}/s: {ratio:.3f}x")
    if FULL:
        assert ratio >= 0.95, rates
