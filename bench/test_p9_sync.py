"""P9: sync 100,000 small checkpoints to PostgreSQL <= 10 s; a no-op resync <= 0.5 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ckptlite
from bench.builder import build_store
from bench.conftest import SIZES, run


@pytest.mark.benchmark(group="P9 sync to PostgreSQL")
def test_p9_sync_to_postgres(benchmark: Any, scratch: Path, pg_url: str) -> None:
    sync = ckptlite.sync
    n = SIZES.sync_checkpoints
    build_store(scratch / "local", n, per_process=1_000)
    with ckptlite.open(scratch / "local") as src, ckptlite.open(pg_url) as dst:
        run(
            benchmark,
            lambda: sync(src, dst),
            target="P9",
            role="ckptlite",
            label=f"sync {n:,} checkpoints",
            rounds=1,
            warmup=0,
            checkpoints=n,
            limit_s=10.0,
        )
        first = benchmark.stats.stats.median
        import time

        times = []
        for _ in range(3):
            t = time.perf_counter()
            sync(src, dst)
            times.append(time.perf_counter() - t)
        times.sort()
        benchmark.extra_info.update(first_sync_s=first, resync_s=times[1], resync_limit_s=0.5)
        assert dst.stats()["checkpoints"] == n
