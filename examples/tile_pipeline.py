"""A resumable tile pipeline over a synthetic raster: stages, per-tile steps, a final mosaic.

Usage:
    python examples/tile_pipeline.py [--store DIR] [--out FILE] [--delay SECONDS]
    python examples/tile_pipeline.py --demo     # kill it with SIGKILL, rerun, compare

Stages of one run (``mgr.run("tile-pipeline")``):

1. ``generate``: a seeded 512x512 float32 raster (saved as a STAGE checkpoint);
2. ``resample``: 2x2 block means, 256x256 (saved as a STAGE checkpoint);
3. per tile (64 tiles of 32x32, through the work-item ledger): quantise the tile
   and record its sum and SHA-256 with the tile's done-mark;
4. ``mosaic``: a digest over every tile's result, in tile order.

Killed at any point (even SIGKILL) and rerun, it resumes the same run: finished
stages are skipped, tiles already done are not run again, and the final result
is the same as an uninterrupted run's. The result is printed as JSON and, with
``--out``, written to a file.
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


def run_pipeline(store: str, *, seed: int = 7, delay: float = 0.0) -> dict[str, Any]:
    with ckptlite.open(store) as mgr, mgr.run(PROCESS, batch_size=4) as run:
        stage = run.stage("generate")
        if not stage.done:
            stage.complete(generate(seed), metadata={"seed": seed})
        raster = stage.result

        stage = run.stage("resample")
        if not stage.done:
            stage.complete(resample(raster))
        small = stage.result

        ids = tile_ids(small.shape)
        for item in run.items("tiles", ids):
            time.sleep(delay)  # stands in for real work; lets a test kill us mid-run
            item.done(process_tile(small, item.id))

        stage = run.stage("mosaic")
        if not stage.done:
            tiles = run.results("tiles")
            digest = hashlib.sha256()
            for tid in ids:
                digest.update(f"{tid}:{tiles[tid]['sha256']}:{tiles[tid]['sum']}\n".encode())
            stage.complete(
                {
                    "tiles": {tid: tiles[tid]["sum"] for tid in ids},
                    "total": sum(tiles[tid]["sum"] for tid in ids),
                    "mosaic_sha256": digest.hexdigest(),
                }
            )
        result: dict[str, Any] = stage.result
    return result


def demo() -> int:
    """Run once uninterrupted; then kill a second pipeline 3 times and rerun it; compare."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--delay", "0.03"]
        clean = subprocess.run(
            [*cmd, "--store", f"{tmp}/clean"], capture_output=True, text=True, check=True
        )
        expected = json.loads(clean.stdout)
        for kill_after in (0.6, 1.0, 0.8):
            proc = subprocess.Popen([*cmd, "--store", f"{tmp}/killed"], stdout=subprocess.DEVNULL)
            time.sleep(kill_after)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                print(f"killed the pipeline with SIGKILL after {kill_after}s")
            proc.wait()
        final = subprocess.run(
            [*cmd, "--store", f"{tmp}/killed"], capture_output=True, text=True, check=True
        )
        got = json.loads(final.stdout)
        with ckptlite.open(f"{tmp}/killed") as mgr:
            runs = mgr.list_runs(PROCESS)
            ledger = mgr.backend.list_items(runs[0].id, "tiles")
        once = len(ledger) == 64 and all(e.ok and e.attempts == 1 for e in ledger)
        same = got == expected
        print(f"runs in the killed store: {len(runs)}, last one {runs[0].status.value}")
        print(f"every tile done exactly once in the ledger: {once}")
        print(f"same mosaic as an uninterrupted run: {same} ({got['mosaic_sha256'][:16]}...)")
        return 0 if (once and same) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("CKPTLITE_URL", "./tile-ckpts"))
    parser.add_argument("--out", type=Path, help="also write the result (JSON) here")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of 'work' per tile")
    parser.add_argument("--demo", action="store_true", help="kill, rerun and compare")
    args = parser.parse_args(argv)
    if args.demo:
        return demo()
    result = run_pipeline(args.store, seed=args.seed, delay=args.delay)
    text = json.dumps(result, sort_keys=True)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
