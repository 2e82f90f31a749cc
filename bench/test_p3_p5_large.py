"""P3, P4, P5: a float32 raster (64 MiB in full mode) against pickle, numpy.save and joblib."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite
from bench.conftest import SIZES, interleaved, run, settle
from bench.peers import FILE_PEERS
from bench.states import raster

ARRAY_BYTES = SIZES.big_mib << 20


@pytest.fixture(scope="module")
def array() -> Any:
    return raster(SIZES.big_mib)


class FreshStores:
    """Hands out a new empty store per round (a store that has the array would dedup it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        self.mgr: ckptlite.CheckpointManager | None = None

    def next(self) -> ckptlite.CheckpointManager:
        self.close()
        self.n += 1
        self.mgr = ckptlite.open(self.root / f"store{self.n}")
        settle()
        return self.mgr

    def close(self) -> None:
        if self.mgr is not None:
            self.mgr.close()
            shutil.rmtree(self.mgr.url, ignore_errors=True)
            self.mgr = None


@pytest.mark.benchmark(group="P3 save 64 MiB")
def test_p3_ckptlite_save(benchmark: Any, scratch: Path, array: Any) -> None:
    stores = FreshStores(scratch)
    try:
        cp = run(
            benchmark,
            lambda mgr: mgr.save("raster", array, name="dem"),
            setup=lambda: ((stores.next(),), {}),
            target="P3",
            role="ckptlite",
            label="ckptlite save",
            rounds=SIZES.big_rounds,
            nbytes=ARRAY_BYTES,
        )
        assert stores.mgr is not None
        assert np.array_equal(stores.mgr.load(cp.id), array)
    finally:
        stores.close()


@pytest.mark.parametrize("peer", list(FILE_PEERS))
@pytest.mark.benchmark(group="P3 save 64 MiB")
def test_p3_peer_save(benchmark: Any, scratch: Path, array: Any, peer: str) -> None:
    save, load, fname = FILE_PEERS[peer]
    path = scratch / fname

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        path.unlink(missing_ok=True)
        settle()
        return (path, array), {}

    run(
        benchmark,
        save,
        setup=setup,
        target="P3",
        role="baseline" if peer == "pickle.dump+fsync" else "peer",
        label=peer,
        rounds=SIZES.big_rounds,
        nbytes=ARRAY_BYTES,
    )
    assert np.array_equal(load(path), array)


@pytest.mark.benchmark(group="P4 load 64 MiB")
def test_p4_ckptlite_load(benchmark: Any, scratch: Path, array: Any) -> None:
    with ckptlite.open(scratch / "store") as mgr:
        cp = mgr.save("raster", array, name="dem")
        got = run(
            benchmark,
            lambda: mgr.load(cp.id),
            target="P4",
            role="ckptlite",
            label="ckptlite load (every byte verified)",
            rounds=SIZES.big_rounds,
            nbytes=ARRAY_BYTES,
        )
        assert np.array_equal(got, array)


@pytest.mark.parametrize("peer", list(FILE_PEERS))
@pytest.mark.benchmark(group="P4 load 64 MiB")
def test_p4_peer_load(benchmark: Any, scratch: Path, array: Any, peer: str) -> None:
    save, load, fname = FILE_PEERS[peer]
    path = scratch / fname
    save(path, array)
    got = run(
        benchmark,
        lambda: load(path),
        target="P4",
        role="baseline" if peer == "pickle.dump+fsync" else "peer",
        label=peer.replace("dump+fsync", "load").replace("save+fsync", "load"),
        rounds=SIZES.big_rounds,
        nbytes=ARRAY_BYTES,
    )
    assert np.array_equal(got, array)


@pytest.mark.benchmark(group="P5 save again, 1% rows changed")
def test_p5_first_save(benchmark: Any, scratch: Path, array: Any) -> None:
    stores = FreshStores(scratch)
    try:
        run(
            benchmark,
            lambda mgr: mgr.save("raster", array, name="dem"),
            setup=lambda: ((stores.next(),), {}),
            target="P5",
            role="baseline",
            label="first save (empty store)",
            rounds=SIZES.big_rounds,
            nbytes=ARRAY_BYTES,
        )
    finally:
        stores.close()


@pytest.mark.benchmark(group="P5 save again, 1% rows changed")
def test_p5_resave_one_percent(benchmark: Any, scratch: Path, array: Any) -> None:
    """Each round rewrites a different band of 1% of the rows (a tile row of the raster)."""
    rows = array.shape[0]
    band = max(1, rows // 100)
    rng = np.random.default_rng(5)
    new_bytes: list[int] = []
    with ckptlite.open(scratch / "store") as mgr:
        first = mgr.save("raster", array, name="dem")
        changed: list[Any] = []
        before: list[int] = []

        def count_new_bytes() -> None:
            # Outside the timed save: what the store grew by since the previous setup.
            now = mgr.stats()["stored_bytes"]
            if before:
                new_bytes.append(now - before[0])
            before[:] = [now]

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            count_new_bytes()
            start = int(rng.integers(0, rows - band + 1))
            arr = array.copy()
            arr[start : start + band] += 1.0
            changed[:] = [arr]
            return (arr,), {}

        def resave(arr: Any) -> Any:
            return mgr.save("raster", arr, name="dem")

        cp = run(
            benchmark,
            resave,
            setup=setup,
            target="P5",
            role="ckptlite",
            label="save again, 1% rows changed",
            rounds=SIZES.big_rounds,
            nbytes=ARRAY_BYTES,
        )
        count_new_bytes()
        fractions = [n / first.stored_size for n in new_bytes]
        benchmark.extra_info.update(
            new_bytes_max=max(fractions), new_bytes_mean=sum(fractions) / len(fractions)
        )
        assert np.array_equal(mgr.load(cp.id), changed[0])


@pytest.mark.parametrize("target", ["P3", "P4"])
@pytest.mark.benchmark(group="P3/P4 interleaved")
def test_p3_p4_interleaved(benchmark: Any, scratch: Path, array: Any, target: str) -> None:
    """ckptlite and pickle alternately, round by round: the ratios the report uses."""
    save, load, fname = FILE_PEERS["pickle.dump+fsync"]
    path = scratch / fname
    stores = FreshStores(scratch)
    try:
        if target == "P3":

            def fresh_file() -> tuple[Any, ...]:
                path.unlink(missing_ok=True)
                settle()
                return (path, array)

            sides = {
                "ckptlite save": (
                    lambda mgr: mgr.save("raster", array, name="dem"),
                    lambda: (stores.next(),),
                ),
                "pickle.dump+fsync": (save, fresh_file),
            }
        else:
            mgr = stores.next()
            cp = mgr.save("raster", array, name="dem")
            save(path, array)
            sides = {
                "ckptlite load": (lambda: mgr.load(cp.id), None),
                "pickle.load": (lambda: load(path), None),
            }
        interleaved(benchmark, sides, target=target, rounds=SIZES.big_rounds, nbytes=ARRAY_BYTES)
        assert stores.mgr is not None
        assert np.array_equal(stores.mgr.load_latest("raster")[1], array)  # type: ignore[index]
    finally:
        stores.close()
