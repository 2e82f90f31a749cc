"""A resumable tile pipeline over a synthetic raster: stages, per-tile steps, a final mosaic.

Usage:
    python examples/tile_pipeline.py [--store DIR|URL] [--out FILE] [--delay SECONDS]
    python examples/tile_pipeline.py --workers 4 [--store postgresql://...]
    python examples/tile_pipeline.py --demo     # kill it with SIGKILL, rerun, compare

Stages of one run (``mgr.run("tile-pipeline", key={"seed": ...})``):

1. ``generate``: a seeded 512x512 float32 raster (saved as a STAGE checkpoint);
2. ``resample``: 2x2 block means, 256x256 (saved as a STAGE checkpoint);
3. per tile (64 tiles of 32x32, through the work-item ledger): quantise the tile
   and record its sum and SHA-256 with the tile's done-mark;
4. ``mosaic``: a digest over every tile's result, in tile order.

Killed at any point (even SIGKILL) and rerun, it resumes the same run: finished
stages are skipped, tiles already done are not run again, and the final result
is the same as an uninterrupted run's. Run again once it finished, it reuses the
completed run of the same key (``run.completed_before``) and costs nothing.
``--workers N`` starts N processes on one run of the store (a local directory,
or PostgreSQL for many machines): each stage is computed by one of them, each
tile is done by one of them, and a killed worker's tiles are taken over. The
result is printed as JSON and, with ``--out``, written to a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import ckptlite

PROCESS = "tile-pipeline"
SIZE = 512
TILE = 32  # on the resampled 256x256 raster: 8x8 tiles


def generate(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype("f4") / SIZE
    terrain = np.sin(6 * x) * np.cos(4 * y) * 100 + 500
    return (terrain + rng.normal(0, 5, (SIZE, SIZE))).astype("f4")


def resample(raster: np.ndarray) -> np.ndarray:
    h, w = raster.shape
    return raster.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3), dtype="f8").astype("f4")


def tile_ids(shape: tuple[int, int]) -> list[str]:
    return [f"tile_{r}_{c}" for r in range(shape[0] // TILE) for c in range(shape[1] // TILE)]


def process_tile(raster: np.ndarray, tile_id: str) -> dict[str, Any]:
    _, r, c = tile_id.split("_")
    tile = raster[int(r) * TILE : (int(r) + 1) * TILE, int(c) * TILE : (int(c) + 1) * TILE]
    quantised = np.round(tile * 16).astype("<i4")  # exact integers: sums are reproducible
    return {
        "sum": int(quantised.sum(dtype="i8")),
        "sha256": hashlib.sha256(quantised.tobytes()).hexdigest(),
    }


def mosaic(ids: list[str], tiles: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for tid in ids:
        digest.update(f"{tid}:{tiles[tid]['sha256']}:{tiles[tid]['sum']}\n".encode())
    return {
        "tiles": {tid: tiles[tid]["sum"] for tid in ids},
        "total": sum(tiles[tid]["sum"] for tid in ids),
        "mosaic_sha256": digest.hexdigest(),
    }


def run_pipeline(
    store: str, *, seed: int = 7, delay: float = 0.0, lease: float = 60.0, force: bool = False
) -> dict[str, Any]:
    with (
        ckptlite.open(store) as mgr,
        mgr.run(PROCESS, key={"seed": seed}, force=force, batch_size=4, lease=lease) as run,
    ):
        if run.completed_before:
            print(f"reusing the completed run {run.id} (same key)", file=sys.stderr)
        # compute(): one worker runs the stage, the others wait for its result.
        raster = run.stage("generate").compute(lambda: generate(seed), metadata={"seed": seed})
        small = run.stage("resample").compute(lambda: resample(raster))

        ids = tile_ids(small.shape)
        # Workers share the tiles: each is handed batches of 4 that no live worker holds.
        for item in run.items("tiles", ids, claim=4):
            time.sleep(delay)  # stands in for real work; lets a test kill us mid-run
            item.done(process_tile(small, item.id))

        # Every tile is done here (the loop waited for the other workers' batches).
        result: dict[str, Any] = run.stage("mosaic").compute(
            lambda: mosaic(ids, run.results("tiles"))
        )
    return result


def _cmd(store: str, delay: float, *extra: str) -> list[str]:
    return [sys.executable, __file__, "--store", store, "--delay", str(delay), *extra]


def run_workers(
    store: str, n: int, *, delay: float, lease: float = 60.0, force: bool = False
) -> list[Any]:
    """Run ``n`` worker processes on one run of ``store``; return them (started)."""
    extra = ["--lease", str(lease), *(["--force"] if force else [])]
    return [
        subprocess.Popen(_cmd(store, delay, *extra), stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]


def check_once(store: str) -> bool:
    """Tell whether every tile of the newest run is in the ledger exactly once, done."""
    with ckptlite.open(store) as mgr:
        runs = mgr.list_runs(PROCESS)
        ledger = mgr.backend.list_items(runs[0].id, "tiles")
    return len(ledger) == 64 and all(e.ok and e.attempts == 1 for e in ledger)


def demo(store_url: str | None = None) -> int:
    """Kill one pipeline 3 times and rerun it; then 3 workers, one killed; compare."""
    with tempfile.TemporaryDirectory() as tmp:
        clean = subprocess.run(
            _cmd(f"{tmp}/clean", 0.03), capture_output=True, text=True, check=True
        )
        expected = json.loads(clean.stdout)
        started = time.monotonic()
        again = subprocess.run(
            _cmd(f"{tmp}/clean", 0.03), capture_output=True, text=True, check=True
        )
        print(
            f"second invocation of the finished pipeline: {time.monotonic() - started:.2f}s, "
            f"{again.stderr.strip()}, same result: {json.loads(again.stdout) == expected}"
        )
        for kill_after in (0.6, 1.0, 0.8):
            proc = subprocess.Popen(_cmd(f"{tmp}/killed", 0.03), stdout=subprocess.DEVNULL)
            time.sleep(kill_after)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                print(f"killed the pipeline with SIGKILL after {kill_after}s")
            proc.wait()
        final = subprocess.run(
            _cmd(f"{tmp}/killed", 0.03), capture_output=True, text=True, check=True
        )
        got = json.loads(final.stdout)
        with ckptlite.open(f"{tmp}/killed") as mgr:
            runs = mgr.list_runs(PROCESS)
        once = check_once(f"{tmp}/killed")
        same = got == expected
        print(f"runs in the killed store: {len(runs)}, last one {runs[0].status.value}")
        print(f"every tile done exactly once in the ledger: {once}")
        print(f"same mosaic as an uninterrupted run: {same} ({got['mosaic_sha256'][:16]}...)")

        # Scaling out: 3 workers on one run (lease 2 s), one of them SIGKILLed mid-run.
        shared = store_url or f"{tmp}/shared"
        # force: a finished run of this key in the store (an earlier demo) is not reused.
        procs = run_workers(shared, 3, delay=0.05, lease=2.0, force=True)
        time.sleep(0.8)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].communicate()
        outs = [json.loads(p.communicate()[0]) for p in procs[1:]]
        ok_codes = all(p.returncode == 0 for p in procs[1:])
        w_once = check_once(shared)
        w_same = ok_codes and all(o == expected for o in outs)
        print("3 workers on one run, one killed with SIGKILL after 0.8s:")
        print(f"  every tile done exactly once in the ledger: {w_once}")
        print(f"  same mosaic as a single worker: {w_same}")
        return 0 if (once and same and w_once and w_same) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("CKPTLITE_URL", "./tile-ckpts"))
    parser.add_argument("--out", type=Path, help="also write the result (JSON) here")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of 'work' per tile")
    parser.add_argument("--workers", type=int, default=0, help="run N processes on one run")
    parser.add_argument("--lease", type=float, default=60.0, help="seconds a claim lasts")
    parser.add_argument("--force", action="store_true", help="start over, even if finished")
    parser.add_argument("--demo", action="store_true", help="kill, rerun and compare")
    args = parser.parse_args(argv)
    if args.demo:
        return demo(args.store if "://" in args.store else None)
    if args.workers:
        procs = run_workers(
            args.store, args.workers, delay=args.delay, lease=args.lease, force=args.force
        )
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            return 1
        result = json.loads(outs[0])
    else:
        result = run_pipeline(
            args.store, seed=args.seed, delay=args.delay, lease=args.lease, force=args.force
        )
    text = json.dumps(result, sort_keys=True)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
