"""Save and load throughput against state size, for ckptlite and its peers (the report's plot)."""

from __future__ import annotations

import itertools
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import pytest

import ckptlite
from bench.conftest import SIZES, run, settle
from bench.peers import FILE_PEERS
from bench.states import blob_state

LIBS = ["ckptlite", "diskcache", *FILE_PEERS]


@cache
def state_of(nbytes: int) -> Any:
    return blob_state(nbytes)


@pytest.mark.parametrize("nbytes", SIZES.sweep_bytes)
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.benchmark(group="sweep save")
def test_sweep_save(benchmark: Any, scratch: Path, lib: str, nbytes: int) -> None:
    arr = state_of(nbytes)
    tag = dict(target="sweep", role="peer", label=lib, rounds=SIZES.sweep_rounds, nbytes=nbytes)
    if lib == "ckptlite":
        n = itertools.count()
        opened: list[ckptlite.CheckpointManager] = []

        def fresh() -> tuple[tuple[Any, ...], dict[str, Any]]:
            for m in opened:  # a store that has the array would dedup it: new store per round
                m.close()
                shutil.rmtree(m.url, ignore_errors=True)
            opened[:] = [ckptlite.open(scratch / f"s{next(n)}")]
            settle()
            return (opened[0],), {}

        cp = run(benchmark, lambda mgr: mgr.save("sweep", arr), setup=fresh, **tag)
        assert np.array_equal(opened[0].load(cp.id), arr)
        opened[0].close()
    elif lib == "diskcache":
        keys = itertools.count()
        with diskcache.Cache(str(scratch / "dc")) as dc:
            run(benchmark, lambda: dc.set(next(keys), arr), **tag)
            assert np.array_equal(dc.get(0), arr)
    else:
        save, load, fname = FILE_PEERS[lib]
        path = scratch / fname

        def new_file() -> tuple[tuple[Any, ...], dict[str, Any]]:
            path.unlink(missing_ok=True)  # not truncated inside the timed call
            settle()
            return (path, arr), {}

        run(benchmark, save, setup=new_file, **tag)
        assert np.array_equal(load(path), arr)


@pytest.mark.parametrize("nbytes", SIZES.sweep_bytes)
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.benchmark(group="sweep load")
def test_sweep_load(benchmark: Any, scratch: Path, lib: str, nbytes: int) -> None:
    arr = state_of(nbytes)
    tag = dict(target="sweep", role="peer", label=lib, rounds=SIZES.sweep_rounds, nbytes=nbytes)
    if lib == "ckptlite":
        with ckptlite.open(scratch / "s") as mgr:
            cp = mgr.save("sweep", arr)
            got = run(benchmark, lambda: mgr.load(cp.id), **tag)
    elif lib == "diskcache":
        with diskcache.Cache(str(scratch / "dc")) as dc:
            dc.set("k", arr)
            got = run(benchmark, lambda: dc.get("k"), **tag)
    else:
        save, load, fname = FILE_PEERS[lib]
        path = scratch / fname
        save(path, arr)
        got = run(benchmark, lambda: load(path), **tag)
    assert np.array_equal(got, arr)
