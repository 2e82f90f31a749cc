"""P10: saving and loading a 1 GiB array keeps peak RSS <= 1.25x the array."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.conftest import SIZES, run

ROOT = Path(__file__).resolve().parent.parent


def probe(action: str, where: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.rss_probe", action, str(where), str(SIZES.rss_mib)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("lib", ["ckptlite", "pickle"])
@pytest.mark.benchmark(group="P10 peak RSS, 1 GiB array")
def test_p10_peak_rss(benchmark: Any, scratch: Path, lib: str) -> None:
    results: dict[str, dict[str, Any]] = {}

    def save_then_load() -> None:
        results["save"] = probe(f"{lib}-save", scratch)
        results["load"] = probe(f"{lib}-load", scratch)

    run(
        benchmark,
        save_then_load,
        target="P10",
        role="ckptlite" if lib == "ckptlite" else "peer",
        label=f"{lib} save + load (subprocesses)",
        rounds=1,
        warmup=0,
    )
    save, load = results["save"], results["load"]
    assert save["digest"] == load["digest"]
    nbytes = save["nbytes"]
    benchmark.extra_info.update(
        nbytes=nbytes,
        save_peak_ratio=save["peak_rss"] / nbytes,
        load_peak_ratio=load["peak_rss"] / nbytes,
        save_extra_ratio=(save["peak_rss"] - save["rss_before"]) / nbytes,
        load_extra_ratio=(load["peak_rss"] - load["rss_before"]) / nbytes,
    )
