"""A worker of a shared run, started as a process by tests/test_runs_shared.py.

    python tests/shared_worker.py '<json config>'

It waits for the barrier file ``go`` (so that every worker calls ``mgr.run`` at
the same instant), joins the run, optionally computes a stage with
``stage.compute``, then works through its groups. Every piece of work it starts
is logged (a line, flushed) to ``did-<pid>`` before it is marked, so a test can
tell what ran twice; on success it prints ``finished <run id> <stage result>``.
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
        time.sleep(0.002)
    log = (out / f"did-{os.getpid()}").open("a", buffering=1)
    lease = cfg.get("lease", 2.0)
    with (
        ckptlite.open(cfg["url"]) as mgr,
        mgr.run("job", lease=lease, batch_size=cfg.get("batch", 4), batch_seconds=0.2) as run,
    ):
        log.write(f"worker {run.worker_id} {run.id}\n")
        base = None
        if cfg.get("stage") is not None:

            def compute() -> int:
                log.write("stage\n")
                time.sleep(cfg["stage"])
                return 42

            base = run.stage("base").compute(compute)
        for group, n in cfg["groups"].items():
            ids = [f"{group}{i:04d}" for i in range(n)]
            for k, item in enumerate(run.items(group, ids, lease=lease, claim=cfg.get("claim"))):
                log.write(f"{group} {item.id}\n")
                if cfg.get("drop_connection_at") == k:
                    # Kill our own PostgreSQL session: the next commit meets a dead connection.
                    conn = mgr.backend._conns.get()  # type: ignore[attr-defined]
                    try:
                        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                    except Exception as e:  # the session is gone: expected
                        log.write(f"dropped {type(e).__name__}\n")
                time.sleep(cfg.get("delay", 0.0))
                item.done({"id": item.id, "pid": os.getpid(), "arr": list(range(5))})
    print("finished", run.id, base, run.status.value, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
