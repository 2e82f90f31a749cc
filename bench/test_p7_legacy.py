"""P7: at 1,000 checkpoints, ckptlite saves >= 20x faster than the legacy core manager."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

import ckptlite
from bench.conftest import SIZES, interleaved, run
from bench.legacy_core import LegacyCoreManager
from bench.states import small_state


def processor_data(i: int) -> dict[str, Any]:
    """What the legacy processors saved: processor_state plus accumulated keys (§5)."""
    s = small_state(i)
    return {
        "processor_state": {
            "class": s["class"],
            "config": s["config"],
            "items_processed": s["items_processed"],
            "progress_node_id": s["progress_node_id"],
        },
        "last_completed_index": s["last_completed_index"],
        "completed_datasets": s["completed_datasets"],
        "total_datasets": s["total_datasets"],
    }


@pytest.mark.benchmark(group="P7 save at 1,000 checkpoints")
def test_p7_legacy_core_save(benchmark: Any, scratch: Path) -> None:
    legacy = LegacyCoreManager(scratch / "checkpoints")
    ids = (f"ResamplingProcessor_{1_700_000_000 + i}" for i in itertools.count())
    for i in range(SIZES.legacy_checkpoints):
        legacy.save_checkpoint(next(ids), processor_data(i), metadata={"processor": "Resampling"})
    rec = run(
        benchmark,
        lambda: legacy.save_checkpoint(
            next(ids), processor_data(7), metadata={"processor": "Resampling"}
        ),
        target="P7",
        role="baseline",
        label="legacy core manager save",
        rounds=SIZES.legacy_rounds,
        checkpoints=SIZES.legacy_checkpoints,
    )
    assert legacy.load_checkpoint(rec.checkpoint_id) == processor_data(7)


@pytest.mark.benchmark(group="P7 save at 1,000 checkpoints")
def test_p7_ckptlite_save(benchmark: Any, scratch: Path) -> None:
    with ckptlite.open(scratch / "store") as mgr:
        for i in range(SIZES.legacy_checkpoints):
            mgr.save("Resampling", processor_data(i), metadata={"processor": "Resampling"})
        cp = run(
            benchmark,
            lambda: mgr.save("Resampling", processor_data(7), metadata={"processor": "Resampling"}),
            target="P7",
            role="ckptlite",
            label="ckptlite save",
            rounds=SIZES.legacy_rounds,
            checkpoints=SIZES.legacy_checkpoints,
        )
        assert mgr.load(cp.id) == processor_data(7)


@pytest.mark.benchmark(group="P7 interleaved")
def test_p7_interleaved(benchmark: Any, scratch: Path) -> None:
    """ckptlite and the legacy core manager alternately: the ratio the report uses."""
    legacy = LegacyCoreManager(scratch / "checkpoints")
    ids = (f"ResamplingProcessor_{1_700_000_000 + i}" for i in itertools.count())
    with ckptlite.open(scratch / "store") as mgr:
        for i in range(SIZES.legacy_checkpoints):
            legacy.save_checkpoint(next(ids), processor_data(i), metadata={"processor": "R"})
            mgr.save("Resampling", processor_data(i), metadata={"processor": "R"})
        interleaved(
            benchmark,
            {
                "ckptlite save": (
                    lambda: mgr.save("Resampling", processor_data(7), metadata={"processor": "R"}),
                    None,
                ),
                "legacy core manager save": (
                    lambda: legacy.save_checkpoint(
                        next(ids), processor_data(7), metadata={"processor": "R"}
                    ),
                    None,
                ),
            },
            target="P7",
            rounds=SIZES.legacy_rounds,
            block=5,
            checkpoints=SIZES.legacy_checkpoints,
        )
        assert mgr.load_latest("Resampling")[1] == processor_data(7)  # type: ignore[index]
