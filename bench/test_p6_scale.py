"""P6: a store of 1,000,000 checkpoints: ``latest`` median <= 1 ms, open <= 50 ms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ckptlite
from bench.builder import build_store, slot_of
from bench.conftest import SIZES, run
from bench.states import small_state

PER_PROCESS = 1_000


@pytest.fixture(scope="session")
def big_store(bench_root: Path) -> Path:
    path = bench_root / "p6-store"
    seconds = build_store(path, SIZES.scale_checkpoints, PER_PROCESS)
    print(f"\nbuilt a store of {SIZES.scale_checkpoints:,} checkpoints in {seconds:.1f} s")
    return path


def _middle_process() -> str:
    return slot_of(SIZES.scale_checkpoints // 2, PER_PROCESS)[0]


@pytest.mark.benchmark(group="P6 1M checkpoints")
def test_p6_latest_of_slot(benchmark: Any, big_store: Path) -> None:
    process = _middle_process()
    with ckptlite.open(big_store) as mgr:
        cp = run(
            benchmark,
            lambda: mgr.latest(process, level="step", name="tile_42"),
            target="P6",
            role="ckptlite",
            label="latest(process, level, name)",
            rounds=SIZES.scale_rounds,
            warmup=10,
            limit_s=1e-3,
            checkpoints=SIZES.scale_checkpoints,
        )
        assert cp is not None and cp.name == "tile_42" and cp.process_id == process
        assert mgr.load(cp) == small_state()


@pytest.mark.benchmark(group="P6 1M checkpoints")
def test_p6_latest_of_process(benchmark: Any, big_store: Path) -> None:
    process = _middle_process()
    with ckptlite.open(big_store) as mgr:
        cp = run(
            benchmark,
            lambda: mgr.latest(process),
            target="P6",
            role="ckptlite",
            label="latest(process)",
            rounds=SIZES.scale_rounds,
            warmup=10,
            limit_s=1e-3,
            checkpoints=SIZES.scale_checkpoints,
        )
        assert cp is not None and cp.process_id == process


@pytest.mark.benchmark(group="P6 1M checkpoints")
def test_p6_open(benchmark: Any, big_store: Path) -> None:
    def open_close() -> None:
        ckptlite.open(big_store).close()

    run(
        benchmark,
        open_close,
        target="P6",
        role="ckptlite",
        label="open + close",
        rounds=max(5, SIZES.scale_rounds // 50),
        warmup=2,
        limit_s=50e-3,
        checkpoints=SIZES.scale_checkpoints,
    )
    with ckptlite.open(big_store) as mgr:
        assert mgr.stats()["checkpoints"] == SIZES.scale_checkpoints
