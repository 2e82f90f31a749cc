"""P13: save compressible rasters (a float32 surface, an int16 DEM, uint8 land cover).

Two things per raster kind and size: the bytes the store grows by against the
raw array, and the save time against pickle.dump + fsync to a new file (the two
alternately, round by round, ``interleaved``). Each round saves a new raster
(its own seed: new terrain, new noise) under its own name into one store.

Stored bytes are counted on disk: the sizes of every file in the store (packs
or chunk files, the database) after the last save and a ``close`` (which folds
the WAL into the database), less those of the same store empty and closed,
over the raw bytes of all the rasters saved. ``stats()["stored_bytes"]`` (the
chunk and payload bytes the index records) is reported beside it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from bench.conftest import SIZES, dir_bytes, interleaved, settle, size_id
from bench.peers import pickle_load, pickle_save
from bench.states import RASTERS

#: kind -> (stored bytes limit, x raw; save time limit, x pickle.dump + fsync)
LIMITS = {
    "float32 surface": (0.65, 1.3),
    "int16 DEM": (0.55, 1.0),
    "uint8 land cover": (0.10, 1.0),
}


@pytest.mark.parametrize("nbytes", SIZES.raster_bytes, ids=size_id)
@pytest.mark.parametrize("kind", list(RASTERS), ids=lambda kind: kind.replace(" ", "-"))
@pytest.mark.benchmark(group="P13 save a compressible raster")
def test_p13_save_raster(benchmark: Any, scratch: Path, kind: str, nbytes: int) -> None:
    make = RASTERS[kind]
    bytes_limit, time_limit = LIMITS[kind]
    seeds = itertools.count()
    store, path = scratch / "store", scratch / "raster.pkl"
    ckptlite.open(store).close()
    empty = dir_bytes(store)
    saved: list[tuple[str, Any]] = []  # ckptlite: (name, raster) of the last save
    pickled: list[Any] = []
    saves = 0

    def for_ckptlite() -> tuple[Any, ...]:
        nonlocal saves
        i = next(seeds)
        saved[:] = [(f"tile_{i:05d}", make(nbytes, i))]
        saves += 1
        settle()
        return saved[0]

    def for_pickle() -> tuple[Any, ...]:
        path.unlink(missing_ok=True)  # a new file each round, deleted outside the timed call
        pickled[:] = [make(nbytes, next(seeds))]
        settle()
        return (path, pickled[0])

    mgr = ckptlite.open(store)
    try:
        sides: dict[str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]] = {
            "ckptlite save": (
                lambda name, arr: mgr.save("rasters", arr, name=name),
                for_ckptlite,
            ),
            "pickle.dump+fsync": (pickle_save, for_pickle),
        }
        medians = interleaved(
            benchmark,
            sides,
            target="P13",
            rounds=SIZES.raster_rounds,
            nbytes=nbytes,
            kind=kind,
            limit=time_limit,
            bytes_limit=bytes_limit,
        )
        name, arr = saved[0]
        hit = mgr.load_latest("rasters", name=name)
        assert hit is not None and np.array_equal(hit[1], arr)
        stats = mgr.stats()
    finally:
        mgr.close()
    raw = saves * arr.nbytes
    assert stats["checkpoints"] == saves
    benchmark.extra_info.update(
        saves=saves,
        stored_disk_ratio=(dir_bytes(store) - empty) / raw,
        stored_stats_ratio=stats["stored_bytes"] / raw,
    )
    assert np.array_equal(pickle_load(path), pickled[0])
    ours, theirs = medians["ckptlite save"], medians["pickle.dump+fsync"]
    print(
        f"\nP13 {kind} {nbytes >> 20} MiB: save {ours * 1e3:.2f} ms, {ours / theirs:.2f}x pickle; "
        f"stored {benchmark.extra_info['stored_disk_ratio']:.3f}x raw"
    )


def test_raster_breakdown_times_every_part() -> None:
    """The report's P13 breakdown: per raster kind, the whole calls and the CPU parts."""
    from bench.profiles import raster_breakdown

    parts = {op: dict(rows) for op, rows in raster_breakdown(1 << 20, rounds=1).items()}
    assert len(parts) == 3
    for rows in parts.values():
        assert "ckptlite save, whole call (a new raster)" in rows
        assert "pickle.dump + fsync to a new file, whole call" in rows
        assert all(s > 0 for s in rows.values())
