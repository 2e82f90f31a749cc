"""P8: the work-item ledger: >= 200,000 done-marks/s; a pending scan of 1M items <= 2 s."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any

import pytest

import ckptlite
from bench.conftest import SIZES, run


class _Stop(Exception):
    """Leaves a run unfinished, so the next mgr.run() resumes it."""


@pytest.mark.benchmark(group="P8 item ledger")
def test_p8_done_marks(benchmark: Any, scratch: Path) -> None:
    n = SIZES.ledger_items
    with ckptlite.open(scratch / "store") as mgr:
        runs = itertools.count()

        def mark_all() -> int:
            done = 0
            with mgr.run(f"ledger-{next(runs)}") as r:
                for item in r.items("tiles", (f"tile_{i}" for i in range(n))):
                    item.done()
                    done += 1
            return done

        done = run(
            benchmark,
            mark_all,
            target="P8",
            role="ckptlite",
            label=f"{n:,} done-marks (one run)",
            rounds=3 if SIZES.ledger_items > 10_000 else 2,
            items=n,
        )
        assert done == n
        benchmark.extra_info["marks_per_s"] = n / benchmark.stats.stats.median


@pytest.mark.benchmark(group="P8 item ledger")
def test_p8_pending_scan(benchmark: Any, scratch: Path) -> None:
    n = SIZES.ledger_scan_items
    ids = [f"tile_{i}" for i in range(n)]
    with ckptlite.open(scratch / "store") as mgr:
        # 90% done, then the run stops unfinished: a resume must find the other 10%.
        with pytest.raises(_Stop), mgr.run("scan") as r:
            for i, item in enumerate(r.items("tiles", ids)):
                if i % 10:
                    item.done()
            raise _Stop

        pending: list[int] = []

        def scan() -> None:
            with contextlib.suppress(_Stop), mgr.run("scan") as r2:
                pending.append(sum(1 for _ in r2.items("tiles", ids)))
                raise _Stop

        run(
            benchmark,
            scan,
            target="P8",
            role="ckptlite",
            label=f"pending scan of {n:,} items",
            rounds=3,
            items=n,
            limit_s=2.0,
        )
        assert pending and all(p == n // 10 for p in pending)
