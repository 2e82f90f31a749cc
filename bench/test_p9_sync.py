"""P9: sync 100,000 small checkpoints to PostgreSQL <= 10 s; a no-op resync <= 0.5 s."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ckptlite
from bench.builder import build_store
from bench.conftest import SIZES, run

PG_DSN = os.environ.get("CKPTLITE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema; the URL's search_path points at it."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as e:
        if os.environ.get("CKPTLITE_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL not reachable at {PG_DSN}: {e}")
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield f"{PG_DSN}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


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
