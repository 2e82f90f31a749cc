"""Run a checkpointing job, SIGKILL it mid-run, rerun it, and check it resumed correctly.

Usage: python examples/kill_and_resume.py [--store DIR]

The job (``examples/counting_job.py``) processes 400 items, checkpointing every
20. It is killed without warning part-way; the rerun resumes from its latest
checkpoint and must end with the same result as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def run_job(store: Path, *, kill_after: float | None = None) -> str | None:
    cmd = [sys.executable, str(HERE / "counting_job.py"), "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if kill_after is not None:
        time.sleep(kill_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            print(f"  killed the job with SIGKILL after {kill_after:.1f}s")
            return None
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"job failed with exit code {proc.returncode}")
    lines = out.strip().splitlines()
    for line in lines[:-1]:
        print(f"  job says: {line}")
    return lines[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store"
        print("1. uninterrupted run in a scratch store")
        expected = run_job(Path(tmp) / "reference")
        print(f"  result: {expected}")
        print(f"2. same job on {store}, killed part-way")
        run_job(store, kill_after=1.5)
        print("3. rerun: it resumes from the latest checkpoint")
        resumed = run_job(store)
        print(f"  result: {resumed}")
        if resumed != expected:
            print("MISMATCH: the resumed run differs from the uninterrupted one")
            return 1
        print("OK: the resumed run matches the uninterrupted one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
