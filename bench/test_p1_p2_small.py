"""P1, P2: save and latest+load of a ~1 KB state, against diskcache and the legacy tile pickle."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import diskcache
import pytest

import ckptlite
from bench.conftest import SIZES, interleaved, run
from bench.legacy_core import save_tile_checkpoint
from bench.states import small_state

STATE = small_state()


@pytest.mark.benchmark(group="P1 save ~1 KB")
def test_p1_ckptlite_save(benchmark: object, scratch: Path) -> None:
    with ckptlite.open(scratch / "store") as mgr:
        cp = run(
            benchmark,
            lambda: mgr.save("geo-run", STATE, name="resample"),
            target="P1",
            role="ckptlite",
            label="ckptlite save",
            rounds=SIZES.small_rounds,
            warmup=20,
        )
        assert mgr.load(cp.id) == STATE


@pytest.mark.benchmark(group="P1 save ~1 KB")
def test_p1_diskcache_set(benchmark: object, scratch: Path) -> None:
    keys = itertools.count()
    with diskcache.Cache(str(scratch / "dc")) as cache:
        run(
            benchmark,
            lambda: cache.set(f"geo-run/resample/{next(keys)}", STATE),
            target="P1",
            role="baseline",
            label="diskcache.Cache.set",
            rounds=SIZES.small_rounds,
            warmup=20,
        )
        assert cache.get("geo-run/resample/0") == STATE


@pytest.mark.benchmark(group="P1 save ~1 KB")
def test_p1_legacy_tile_pickle(benchmark: object, scratch: Path) -> None:
    path = scratch / "tile_checkpoint"
    run(
        benchmark,
        lambda: save_tile_checkpoint(path, STATE),
        target="P1",
        role="peer",
        label="legacy tile pickle (no fsync)",
        rounds=SIZES.small_rounds,
        warmup=20,
    )
    assert pickle.loads(path.read_bytes()) == STATE


@pytest.mark.benchmark(group="P2 latest+load ~1 KB")
def test_p2_ckptlite_load_latest(benchmark: object, scratch: Path) -> None:
    with ckptlite.open(scratch / "store") as mgr:
        for i in range(50):
            mgr.save("other-run", small_state(i), name="resample")
            mgr.save("geo-run", small_state(i), name="resample")
        mgr.save("geo-run", STATE, name="resample")
        hit = run(
            benchmark,
            lambda: mgr.load_latest("geo-run", name="resample"),
            target="P2",
            role="ckptlite",
            label="ckptlite load_latest",
            rounds=SIZES.small_rounds,
            warmup=20,
        )
        assert hit is not None and hit[1] == STATE


@pytest.mark.benchmark(group="P2 latest+load ~1 KB")
def test_p2_diskcache_get(benchmark: object, scratch: Path) -> None:
    with diskcache.Cache(str(scratch / "dc")) as cache:
        for i in range(50):
            cache.set(f"other-run/resample/{i}", small_state(i))
        cache.set("geo-run/resample", STATE)
        got = run(
            benchmark,
            lambda: cache.get("geo-run/resample"),
            target="P2",
            role="baseline",
            label="diskcache.Cache.get",
            rounds=SIZES.small_rounds,
            warmup=20,
        )
        assert got == STATE


@pytest.mark.benchmark(group="P2 latest+load ~1 KB")
def test_p2_legacy_tile_pickle_load(benchmark: object, scratch: Path) -> None:
    path = scratch / "tile_checkpoint"
    save_tile_checkpoint(path, STATE)

    def load() -> object:
        with open(path, "rb") as f:
            return pickle.load(f)

    got = run(
        benchmark,
        load,
        target="P2",
        role="peer",
        label="legacy tile pickle load",
        rounds=SIZES.small_rounds,
        warmup=20,
    )
    assert got == STATE


@pytest.mark.parametrize("target", ["P1", "P2"])
@pytest.mark.benchmark(group="P1/P2 interleaved")
def test_p1_p2_interleaved(benchmark: object, scratch: Path, target: str) -> None:
    """ckptlite and diskcache alternately, round by round: the ratios the report uses."""
    keys = itertools.count()
    with ckptlite.open(scratch / "store") as mgr, diskcache.Cache(str(scratch / "dc")) as cache:
        for i in range(50):
            mgr.save("geo-run", small_state(i), name="resample")
            cache.set(f"geo-run/resample/{next(keys)}", small_state(i))
        mgr.save("geo-run", STATE, name="resample")
        cache.set("geo-run/resample", STATE)
        if target == "P1":
            sides = {
                "ckptlite save": (lambda: mgr.save("geo-run", STATE, name="resample"), None),
                "diskcache.Cache.set": (
                    lambda: cache.set(f"geo-run/resample/{next(keys)}", STATE),
                    None,
                ),
            }
        else:
            sides = {
                "ckptlite load_latest": (lambda: mgr.load_latest("geo-run", name="resample"), None),
                "diskcache.Cache.get": (lambda: cache.get("geo-run/resample"), None),
            }
        interleaved(benchmark, sides, target=target, rounds=SIZES.small_rounds, warmup=20)
        hit = mgr.load_latest("geo-run", name="resample")
        assert hit is not None and hit[1] == STATE
        assert cache.get("geo-run/resample") == STATE


def test_breakdowns_time_every_part_of_p1_and_p2() -> None:
    """The report's P1/P2 breakdown: every part measured, the budgets derived from diskcache."""
    from bench.profiles import breakdowns

    parts = {target: dict(rows) for target, rows in breakdowns(rounds=1).items()}
    assert set(parts) == {"P1", "P2"}
    assert all(s > 0 for rows in parts.values() for s in rows.values())
    p1, p2 = parts["P1"], parts["P2"]
    # A part that takes longer than the whole call it belongs to was measured wrong.
    assert (
        p1["ckptlite save, whole call"]
        > p1[
            "its SQLite transaction alone (BEGIN IMMEDIATE, the INSERT of one row, COMMIT), "
            "no Python around it"
        ]
    )
    assert (
        p1[
            "its SQLite transaction alone (BEGIN IMMEDIATE, the INSERT of one row, COMMIT), "
            "no Python around it"
        ]
        > p1["an empty BEGIN IMMEDIATE + COMMIT"]
    )
    assert (
        p2["ckptlite load_latest, whole call"]
        > p2["its cache check while the store is unchanged (PRAGMA data_version)"]
    )
    assert (
        p2["ckptlite load_latest, whole call"]
        > p2["verification (SHA-256 of payload + manifest) and msgpack decode"]
    )
    assert p2["diskcache.Cache.get, whole call"] > p2["its SELECT alone (one unique-index probe)"]
