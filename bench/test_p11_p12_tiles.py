"""P11, P12: save and verified load of one float32 noise tile (256 KiB-16 MiB), against peers.

Every side runs in the same rounds (``interleaved``): ckptlite, pickle (the
baseline), numpy.save, h5py and safetensors, each writing one new file per
tile and fsyncing it. Each P11 round saves a tile never saved before, under its
own name (``tile_00017``), into one store that keeps growing, as a tile
pipeline does; P12 loads the same tile again and again (warm page cache).

P11 has two pickle sides. The baseline (``pickle.dump+fsync``) deletes its
previous file in the untimed setup, so each dump lands in page-cache pages the
deletion just freed; ``KEPT`` writes a new file each round into a directory that
keeps them, as a tile pipeline does (and as P14's pickle side does). The report
shows ckptlite's ratio to both; the kept-files one is what users see.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from bench.conftest import SIZES, interleaved, settle, size_id
from bench.peers import TILE_PEERS, load_label
from bench.states import NoiseTiles

#: P11's second pickle side: a new file per tile in a directory that keeps every one.
KEPT = "pickle.dump+fsync, files kept"


@pytest.mark.parametrize("nbytes", SIZES.tile_bytes, ids=size_id)
@pytest.mark.benchmark(group="P11 save one noise tile")
def test_p11_save_tile(benchmark: Any, scratch: Path, nbytes: int) -> None:
    tiles = NoiseTiles(nbytes)
    numbers = itertools.count()
    last: dict[str, tuple[Any, Any]] = {}  # side -> (where it went, the tile)

    def new_tile(side: str, where: Callable[[int], Any]) -> Callable[[], tuple[Any, ...]]:
        def setup() -> tuple[Any, ...]:
            i = next(numbers)
            tile = tiles.make(i)
            last[side] = (where(i), tile)
            settle()
            return (last[side][0], tile)

        return setup

    def new_file(path: Path) -> Callable[[int], Path]:
        def where(i: int) -> Path:
            path.unlink(missing_ok=True)  # a new file each round, deleted outside the timed call
            return path

        return where

    with ckptlite.open(scratch / "store") as mgr:
        sides: dict[str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]] = {
            "ckptlite save": (
                lambda name, tile: mgr.save("tiles", tile, name=name),
                new_tile("ckptlite save", lambda i: f"tile_{i:05d}"),
            )
        }
        for peer, (save, _load, fname) in TILE_PEERS.items():
            sides[peer] = (save, new_tile(peer, new_file(scratch / fname)))
        kept = scratch / "kept"
        kept.mkdir()
        pickle_save = TILE_PEERS["pickle.dump+fsync"][0]
        sides[KEPT] = (pickle_save, new_tile(KEPT, lambda i: kept / f"{i:05d}-tile.pkl"))
        medians = interleaved(
            benchmark, sides, target="P11", rounds=SIZES.tile_rounds, nbytes=tiles.nbytes, limit=1.0
        )
        ours = medians["ckptlite save"]
        print(
            f"\nP11 {tiles.nbytes >> 10} KiB: ckptlite {ours * 1e3:.2f} ms, "
            f"{ours / medians['pickle.dump+fsync']:.2f}x pickle (its file deleted before), "
            f"{ours / medians[KEPT]:.2f}x pickle (files kept)"
        )
        name, tile = last.pop("ckptlite save")
        hit = mgr.load_latest("tiles", name=name)
        assert hit is not None and np.array_equal(hit[1], tile)
    for peer, (path, tile) in last.items():
        load = TILE_PEERS["pickle.dump+fsync" if peer == KEPT else peer][1]
        assert np.array_equal(load(path), tile), peer
    assert len(list(kept.iterdir())) == SIZES.tile_rounds + 2  # warm-up, rounds, pytest's one


@pytest.mark.parametrize("nbytes", SIZES.tile_load_bytes, ids=size_id)
@pytest.mark.benchmark(group="P12 verified load of one noise tile")
def test_p12_load_tile(benchmark: Any, scratch: Path, nbytes: int) -> None:
    tile = NoiseTiles(nbytes, pool=1).make(0)
    with ckptlite.open(scratch / "store") as mgr:
        cp = mgr.save("tiles", tile, name="tile_00000")
        sides: dict[str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]] = {
            "ckptlite load": (lambda: mgr.load(cp.id), None)
        }
        for peer, (save, load, fname) in TILE_PEERS.items():
            save(scratch / fname, tile)
            sides[load_label(peer)] = (functools.partial(load, scratch / fname), None)
        medians = interleaved(
            benchmark,
            sides,
            target="P12",
            rounds=SIZES.tile_load_rounds,
            warmup=3,
            nbytes=tile.nbytes,
            limit=2.0,
        )
        for label, (load_it, _setup) in sides.items():
            assert np.array_equal(load_it(), tile), label
    ours, theirs = medians["ckptlite load"], medians["pickle.load"]
    kib = tile.nbytes >> 10
    print(f"\nP12 {kib} KiB: load {ours * 1e6:.0f} us, {ours / theirs:.2f}x pickle.load")


def test_tile_breakdown_times_every_part() -> None:
    """The report's tile breakdown: a save and a load, each with its whole calls and parts."""
    from bench.profiles import tile_breakdown

    parts = {op: dict(rows) for op, rows in tile_breakdown(256 << 10, rounds=1).items()}
    assert list(parts) == [
        "save of one 256 KiB noise tile",
        "load of one 256 KiB noise tile (warm cache)",
    ]
    save, load = parts.values()
    assert "ckptlite save, whole call (a new tile, its own name)" in save
    assert "pickle.dump + fsync to a new file, whole call" in save
    assert "ckptlite load, whole call (verified)" in load
    assert "pickle.load, whole call" in load
    assert all(s > 0 for rows in parts.values() for s in rows.values())
