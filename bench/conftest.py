"""Bench settings: quick mode (CI: proves the benchmarks run) or full mode (the numbers).

``CKPTLITE_BENCH=quick`` (default) uses small sizes and few rounds and asserts
nothing about time; ``CKPTLITE_BENCH=full`` uses the sizes of DESIGN.md §7.
Every measurement is tagged in ``benchmark.extra_info`` with its target and its
role (``ckptlite``, ``baseline`` or ``peer``) so that ``bench.report`` can pair
them up from pytest-benchmark's JSON.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODE = os.environ.get("CKPTLITE_BENCH", "quick")
if MODE not in ("quick", "full"):
    raise RuntimeError(f"CKPTLITE_BENCH must be quick or full, not {MODE!r}")
FULL = MODE == "full"


@dataclass(frozen=True)
class Sizes:
    """How big and how often, per mode."""

    small_rounds: int  # P1, P2: rounds of one ~1 KB save / load
    big_mib: int  # P3, P4, P5: the array
    big_rounds: int
    scale_checkpoints: int  # P6
    scale_rounds: int
    legacy_checkpoints: int  # P7
    legacy_rounds: int
    ledger_items: int  # P8 done-marks timed
    ledger_scan_items: int  # P8 pending scan
    sync_checkpoints: int  # P9
    rss_mib: int  # P10
    sweep_bytes: tuple[int, ...]  # the throughput plot
    sweep_rounds: int
    tile_bytes: tuple[int, ...]  # P11: one noise tile saved
    tile_rounds: int
    tile_load_bytes: tuple[int, ...]  # P12: one noise tile loaded
    tile_load_rounds: int
    raster_bytes: tuple[int, ...]  # P13: compressible rasters
    raster_rounds: int
    loop_tiles: int  # P14: tiles saved, then loaded, per loop
    loop_tile_bytes: int
    loop_rounds: int
    worker_items: int  # P15-P17: items of simulated I/O-bound work, shared by workers
    worker_item_s: float  # seconds of that work per item
    worker_lease: float  # P16: the lease (seconds) a killed worker's items wait for


QUICK = Sizes(
    small_rounds=30,
    big_mib=4,
    big_rounds=2,
    scale_checkpoints=5_000,
    scale_rounds=20,
    legacy_checkpoints=50,
    legacy_rounds=5,
    ledger_items=5_000,
    ledger_scan_items=10_000,
    sync_checkpoints=500,
    rss_mib=16,
    sweep_bytes=(1 << 10, 1 << 20),
    sweep_rounds=2,
    tile_bytes=(256 << 10, 1 << 20),
    tile_rounds=3,
    tile_load_bytes=(256 << 10, 1 << 20),
    tile_load_rounds=5,
    raster_bytes=(1 << 20,),
    raster_rounds=2,
    loop_tiles=20,
    loop_tile_bytes=1 << 20,
    loop_rounds=1,
    worker_items=80,
    worker_item_s=0.005,
    worker_lease=1.0,
)
FULL_SIZES = Sizes(
    small_rounds=3_000,
    big_mib=64,
    big_rounds=15,
    scale_checkpoints=1_000_000,
    scale_rounds=2_000,
    legacy_checkpoints=1_000,
    legacy_rounds=30,
    ledger_items=200_000,
    ledger_scan_items=1_000_000,
    sync_checkpoints=100_000,
    rss_mib=1_024,
    sweep_bytes=(1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20),
    sweep_rounds=5,
    tile_bytes=(256 << 10, 1 << 20, 4 << 20),
    tile_rounds=40,
    tile_load_bytes=(256 << 10, 1 << 20, 4 << 20, 16 << 20),
    tile_load_rounds=60,
    raster_bytes=(4 << 20, 16 << 20),
    raster_rounds=15,
    loop_tiles=2_000,
    loop_tile_bytes=1 << 20,
    loop_rounds=3,
    worker_items=2_000,
    worker_item_s=0.020,
    worker_lease=5.0,
)
SIZES = FULL_SIZES if FULL else QUICK


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


@pytest.fixture(scope="session")
def sizes() -> Sizes:
    return SIZES


@pytest.fixture(scope="session")
def bench_root() -> Iterator[Path]:
    """A scratch directory for the whole session (stores are big: not under the repo)."""
    root = Path(tempfile.mkdtemp(prefix="ckptlite-bench-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def settle() -> None:
    """In full mode, flush what the last round left (deleted files, WAL pages) to disk.

    P3's setups delete the previous round's 64 MiB store or file. Without this,
    the next timed fsync commits that deletion in the ext4 journal, and whichever
    side runs next pays for the other side's cleanup.
    """
    if MODE == "full":
        os.sync()


@pytest.fixture
def scratch(bench_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A scratch directory for one benchmark, removed afterwards.

    Each benchmark starts on a settled disk: the writeback an earlier one left
    (P6 builds a store of a million checkpoints) would otherwise slow the
    fsyncs and WAL writes of the next one, on whichever side hit it.
    """
    settle()
    d = Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=bench_root))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(
    benchmark: Any,
    fn: Callable[..., Any],
    *,
    target: str,
    role: str,
    label: str,
    rounds: int,
    setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]] | None] | None = None,
    warmup: int = 1,
    **extra: Any,
) -> Any:
    """Time ``fn`` for ``rounds`` rounds and tag the result for the report."""
    benchmark.extra_info.update(target=target, role=role, label=label, mode=MODE, **extra)
    if setup is None:
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    # pytest-benchmark forbids warmup with setup; do the warm-up by hand.
    for _ in range(warmup):
        prepared = setup()
        args, kwargs = prepared if prepared else ((), {})
        fn(*args, **kwargs)
    return benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1)


def size_id(nbytes: int) -> str:
    """A test id / label for a size: ``256KiB``, ``4MiB``."""
    return f"{nbytes >> 20}MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10}KiB"


def dir_bytes(path: Path) -> int:
    """The bytes of every regular file under ``path`` (their sizes, as ``du -b`` counts)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def fsync_path(path: Path | str) -> None:
    """fsync one file (for baselines that write through their own API)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def interleaved(
    benchmark: Any,
    sides: dict[str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]],
    *,
    target: str,
    rounds: int,
    warmup: int = 1,
    block: int = 1,
    **extra: Any,
) -> dict[str, float]:
    """Time the sides alternately, round by round; record each side's median.

    On a machine shared with other jobs the load changes from one minute to the
    next; benchmarks run one after the other can see different machines.
    Alternating the sides within one test gives both the same conditions, so
    the report takes its ratio from here. ``sides`` maps a label to
    ``(fn, setup)``; ``setup()`` (untimed) returns fn's arguments. With
    ``block`` > 1 each side runs that many timed calls in a row per round: when
    one side's call is tiny next to the other's (P7: 0.1 ms against 40 ms), the
    tiny one would otherwise be timed on caches the big one just swept.
    """
    import statistics
    import time

    times: dict[str, list[float]] = {label: [] for label in sides}
    for i in range(warmup + rounds):
        for label, (fn, setup) in sides.items():
            for _ in range(block):
                args = setup() if setup else ()
                t0 = time.perf_counter()
                fn(*args)
                if i >= warmup:
                    times[label].append(time.perf_counter() - t0)
    medians = {label: statistics.median(ts) for label, ts in times.items()}
    benchmark.extra_info.update(
        target=target, role="pair", label=" vs ".join(sides), mode=MODE, medians=medians, **extra
    )

    def one_alternation() -> None:
        for fn, setup in sides.values():
            fn(*(setup() if setup else ()))

    # pytest-benchmark's own table gets one more alternation (setups included).
    benchmark.pedantic(one_alternation, rounds=1, iterations=1)
    return medians
