"""A small job that checkpoints its progress and resumes after a crash.

Each of 400 items adds a numpy row to a running raster; every 20 items the whole
state (index, raster, log) is checkpointed. Output: the final digest.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

import ckptlite
from ckptlite import Level

ITEMS = 400
EVERY = 20


def work(i: int) -> np.ndarray:
    time.sleep(0.01)  # stands in for real work
    return np.random.default_rng(i).random(256).astype("f4")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    args = parser.parse_args()
    with ckptlite.open(args.store) as mgr:
        hit = mgr.load_latest("counting-job", level=Level.STEP)
        if hit is None:
            state = {"next": 0, "raster": np.zeros((ITEMS, 256), "f4"), "done": []}
        else:
            cp, state = hit
            print(f"resuming from checkpoint {cp.id} at item {state['next']}")
        for i in range(state["next"], ITEMS):
            state["raster"][i] = work(i)
            state["done"].append(i)
            state["next"] = i + 1
            if state["next"] % EVERY == 0:
                mgr.save("counting-job", state, level=Level.STEP, progress=(i + 1, ITEMS))
        assert state["done"] == list(range(ITEMS))
        print(hashlib.sha256(state["raster"].tobytes()).hexdigest())


if __name__ == "__main__":
    main()
