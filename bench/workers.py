"""A worker process for P15-P17: ``python -m bench.workers '<json config>'``.

It waits for the barrier file ``go`` (every worker joins at the same instant),
joins the run of process ``cfg["process"]`` on the store, and works through the items: each
is simulated I/O-bound work (a sleep) then a done-mark with a small state. It
logs each item it starts (flushed) to ``did-<pid>`` and prints, as JSON, how
many items it did and the time it spent outside the work: claiming, marking,
committing (the overhead per item P15 limits).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ckptlite


def main() -> int:
    cfg = json.loads(sys.argv[1])
    out = Path(cfg["out"])
    (out / f"ready-{os.getpid()}").touch()
    while not (out / "go").exists():
        time.sleep(0.001)
    log = (out / f"did-{os.getpid()}").open("a", buffering=1)
    work = cfg["item_s"]
    ids = [f"item_{i:06d}" for i in range(cfg["items"])]
    done, overhead = 0, 0.0
    started = time.perf_counter()
    with (
        ckptlite.open(cfg["url"]) as mgr,
        mgr.run(cfg["process"], lease=cfg["lease"], batch_size=100, batch_seconds=1.0) as run,
    ):
        # Overhead: the time between one item's work and the next one's (claims, marks,
        # commits); the wait at the end for other workers' batches is idle, not counted.
        last = time.perf_counter()
        for item in run.items("items", ids, claim=cfg.get("claim")):
            overhead += time.perf_counter() - last
            log.write(item.id + "\n")
            time.sleep(work)
            t = time.perf_counter()
            item.done({"i": item.id})
            done += 1
            last = t
    wall = time.perf_counter() - started
    print(json.dumps({"items": done, "wall_s": wall, "overhead_s": overhead}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
