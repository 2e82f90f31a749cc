"""P14: a tile loop, 2,000 saves of distinct 1 MiB noise tiles, then loading all of them.

Each side runs the whole loop into a fresh store or directory: ckptlite (one
checkpoint per tile, ``name=tile_NNNNN``, loaded by id), and pickle (the
baseline), numpy.save, h5py and safetensors, each with one new file per tile,
fsynced, read back with its own load. The sides take turns loop by loop, and
each round runs every side once; the report takes the median loop of each.

A side's total is the sum of its save calls (then of its load calls), timed one
by one: the tile is made and the loaded tile checked between calls, untimed.
h5py gets one file per tile too, not one file holding every tile as datasets:
a single HDF5 file is not crash-safe between flushes (a crash mid-write can
lose every tile in it), so it would not promise what the others do.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from bench.conftest import MODE, SIZES, settle
from bench.peers import TILE_PEERS, load_label
from bench.states import NoiseTiles

Loop = Callable[[Path], tuple[float, float]]


def ckptlite_loop(tiles: NoiseTiles, n: int) -> Loop:
    def loop(where: Path) -> tuple[float, float]:
        with ckptlite.open(where) as mgr:
            ids, save_s = [], 0.0
            for i in range(n):
                tile = tiles.make(i)
                t0 = time.perf_counter()
                cp = mgr.save("tiles", tile, name=f"tile_{i:05d}")
                save_s += time.perf_counter() - t0
                ids.append(cp.id)
            load_s = 0.0
            for i, cid in enumerate(ids):
                t0 = time.perf_counter()
                got = mgr.load(cid)
                load_s += time.perf_counter() - t0
                assert np.array_equal(got, tiles.make(i)), i
        return save_s, load_s

    return loop


def file_loop(peer: str, tiles: NoiseTiles, n: int) -> Loop:
    save, load, fname = TILE_PEERS[peer]

    def loop(where: Path) -> tuple[float, float]:
        where.mkdir()
        paths = [where / f"{i:05d}-{fname}" for i in range(n)]
        save_s = 0.0
        for i, path in enumerate(paths):
            tile = tiles.make(i)
            t0 = time.perf_counter()
            save(path, tile)
            save_s += time.perf_counter() - t0
        load_s = 0.0
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            got = load(path)
            load_s += time.perf_counter() - t0
            assert np.array_equal(got, tiles.make(i)), (peer, i)
        return save_s, load_s

    return loop


@pytest.mark.benchmark(group="P14 tile loop")
def test_p14_tile_loop(benchmark: Any, scratch: Path) -> None:
    n = SIZES.loop_tiles
    tiles = NoiseTiles(SIZES.loop_tile_bytes, pool=16)
    loops: dict[str, Loop] = {"ckptlite": ckptlite_loop(tiles, n)}
    loops.update((peer, file_loop(peer, tiles, n)) for peer in TILE_PEERS)
    saves: dict[str, list[float]] = {side: [] for side in loops}
    loads: dict[str, list[float]] = {side: [] for side in loops}

    def every_side_every_round() -> None:
        for r in range(SIZES.loop_rounds):
            for k, (side, loop) in enumerate(loops.items()):
                where = scratch / f"round{r}-side{k}"
                settle()
                save_s, load_s = loop(where)
                saves[side].append(save_s)
                loads[side].append(load_s)
                shutil.rmtree(where)

    # pytest-benchmark's own table shows the whole experiment, once.
    benchmark.pedantic(every_side_every_round, rounds=1, iterations=1)
    benchmark.extra_info.update(
        target="P14",
        role="pair",
        label=" vs ".join(loops),
        mode=MODE,
        tiles=n,
        nbytes=tiles.nbytes,
        loops=SIZES.loop_rounds,
        medians_save={
            f"{side} save" if side == "ckptlite" else side: statistics.median(ts)
            for side, ts in saves.items()
        },
        medians_load={
            "ckptlite load" if side == "ckptlite" else load_label(side): statistics.median(ts)
            for side, ts in loads.items()
        },
        limit_save=1.0,
        limit_load=2.0,
    )
    assert all(len(ts) == SIZES.loop_rounds for ts in [*saves.values(), *loads.values()])
    save, load = (statistics.median(ts["ckptlite"]) for ts in (saves, loads))
    pickle_save, pickle_load = (statistics.median(ts["pickle.dump+fsync"]) for ts in (saves, loads))
    print(
        f"\nP14 {n} tiles: ckptlite saves {save:.2f} s ({save / pickle_save:.2f}x pickle), "
        f"loads {load:.2f} s ({load / pickle_load:.2f}x pickle.load)"
    )
