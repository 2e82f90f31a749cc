"""Item 12: PostgreSQL goes away in the middle of a postgres-backend save and of a sync.

The interruption is fired from inside the operation (just before the k-th
chunk batch or the record commit reaches the server), so it lands mid-way
every time. Two kinds:

- ``restart``: ``pg_ctlcluster --skip-systemctl-redirect VERSION main restart``,
  the issue's fault. It drops every connection on the server, other people's
  too, so it runs when CKPTLITE_FAULT_PG_RESTART=1 (``.ci/run`` sets it);
- ``terminate`` otherwise: ``pg_terminate_backend`` on every connection to
  this test's own database, which is what a restart does to our sessions,
  without disturbing anyone else's.

Either way the operation ends in a typed error or a transparent retry, never
a half-written checkpoint; the same manager works again afterwards, the
server is up at the end, and the adapted common check (verify(full=True)
clean, every listed checkpoint loads equal, every reported save present, gc
leaves no orphan chunk) holds.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_harness import (
    CHUNK,
    SIZES,
    Reported,
    expected_from_metadata,
    open_store,
    save_one,
)

import ckptlite

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PG_DSN = os.environ.get("CKPTLITE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MODE = "restart" if os.environ.get("CKPTLITE_FAULT_PG_RESTART") == "1" else "terminate"


def _admin() -> Any:
    import psycopg

    return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)


def _wait_ready(timeout: float = 90.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with _admin():
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def _ensure_up() -> None:
    import psycopg

    try:
        _wait_ready(5)
    except psycopg.OperationalError:
        subprocess.run([*_cluster(), "start"], check=False, capture_output=True, timeout=120)
        _wait_ready()


@pytest.fixture
def pg_db() -> Iterator[tuple[str, str]]:
    """A database of this test's own: (dbname, DSN)."""
    import psycopg

    try:
        _admin().close()
    except psycopg.OperationalError:
        if os.environ.get("CKPTLITE_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL not reachable at {PG_DSN} and CKPTLITE_REQUIRE_PG=1")
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")
    name = f"ckptfault_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_DSN.rpartition("/")
    try:
        yield name, f"{base}/{name}"
    finally:
        _ensure_up()  # whatever happened, leave the server running
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def interrupt(dbname: str) -> None:
    """Take the server away from our sessions (see the module docstring); wait until it is back."""
    if MODE == "restart":
        subprocess.run([*_cluster(), "restart"], check=True, capture_output=True, timeout=180)
        _wait_ready()
    else:
        with _admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )


def _fire_on(obj: Any, method: str, nth: int, fire: Callable[[], None]) -> list[int]:
    """Make the ``nth`` call of ``obj.method`` fire the interruption first."""
    real = getattr(obj, method)
    calls = [0]

    def wrapped(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            fire()
        return real(*args, **kw)

    setattr(obj, method, wrapped)
    return calls


def pg_common_check(
    url: str,
    reported: Reported,
    expected: Callable[[ckptlite.Checkpoint], Any] = expected_from_metadata,
) -> int:
    """The common check, adapted to a server store (no SQLite file, no blob dir)."""
    with ckptlite.open(url, durability="none") as mgr:
        report = mgr.verify(full=True)
        assert report.corrupted == () and report.missing_chunks == (), report
        listed = {cp.id: cp for cp in mgr.list()}
        for cid in reported.must_exist:
            assert cid in listed, f"reported save {cid} is missing"
        for cp in listed.values():
            assert cp.status == ckptlite.Status.VALID
            assert mgr.load(cp.id) == expected(cp), f"{cp.id} does not load equal"
        mgr.gc()
        assert mgr.verify().orphan_chunks == ()
        return len(listed)


# A 20 MB save writes its chunks in at least two groups (one per core, >= 8 MiB each).
SAVE_POINTS = [("write_chunks", 1), ("write_chunks", 2), ("commit", 1)]


@pytest.mark.parametrize(("method", "nth"), SAVE_POINTS)
def test_postgres_goes_away_mid_save(pg_db: tuple[str, str], method: str, nth: int) -> None:
    dbname, url = pg_db
    reported = Reported()
    mgr = ckptlite.open(url, durability="safe", chunk_size=CHUNK)
    try:
        cp = save_one(mgr, None, 1, 300_000)
        reported.saved[cp.id] = (1, 300_000)
        calls = _fire_on(mgr.backend, method, nth, lambda: interrupt(dbname))
        try:
            cp = save_one(mgr, None, 2, 20_000_000)
            reported.saved[cp.id] = (2, 20_000_000)  # a transparent retry
        except ckptlite.StoreError as e:
            assert e.hint and isinstance(e, ckptlite.StoreIOError), repr(e)
        assert calls[0] >= nth, f"the save never reached {method} #{nth}"
        # The same manager goes on with a new connection.
        cp = save_one(mgr, None, 3, 1_200_000)
        reported.saved[cp.id] = (3, 1_200_000)
    finally:
        mgr.close()
    n = pg_common_check(url, reported)
    assert n in (2, 3)


SYNC_POINTS = [("write_chunks", 1), ("write_chunks", 5), ("import_records", 2)]


@pytest.mark.parametrize(("method", "nth"), SYNC_POINTS)
def test_postgres_goes_away_mid_sync(
    pg_db: tuple[str, str], tmp_path: Path, method: str, nth: int
) -> None:
    dbname, url = pg_db
    source = tmp_path / "source"
    everything = Reported()
    with open_store(source, "none") as src:
        for seed in range(1, 121):
            size = SIZES[seed % 4]
            everything.saved[save_one(src, None, seed, size).id] = (seed, size)
    src = ckptlite.open(source, durability="none")
    dst = ckptlite.open(url, durability="none", chunk_size=CHUNK)
    try:
        calls = _fire_on(dst.backend, method, nth, lambda: interrupt(dbname))
        try:
            first = ckptlite.sync(src, dst, batch_size=10)
            assert first.checkpoints_copied == 120  # a transparent retry
        except ckptlite.SyncError as e:
            assert e.hint and "rerun" in e.hint.lower()
        assert calls[0] >= nth, f"the sync never reached {method} #{nth}"
        partial = pg_common_check(url, Reported())  # what is there is whole
        assert partial <= 120
        again = ckptlite.sync(src, dst, batch_size=10)
        assert again.checkpoints_copied == 120 - partial
        assert not ckptlite.sync(src, dst).changed
    finally:
        src.close()
        dst.close()
    assert pg_common_check(url, everything) == 120
