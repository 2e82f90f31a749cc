"""Issue 13 item 7: no file-descriptor or connection leak.

Open descriptors are counted in /proc/self/fd. A thread's SQLite connection
(the database, its ``-wal`` and ``-shm``) is closed when the thread ends;
each ``ckptlite.sync`` releases what it opened (the stores it opened from
URLs, the connection of its reader thread), and leaves the managers it was
given open and usable. On PostgreSQL the server's backends serving this
process are counted too (matched by the client port of our own sockets).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlite

SLACK = 20  # a small constant: a pool's threads, the -shm of a store, a sync's reader


def open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def local(path: Path) -> ckptlite.CheckpointManager:
    return ckptlite.open(path, durability="none", chunk_size=64 * 1024)


def in_threads(n: int, work: Callable[[int], object], at_once: int = 10) -> None:
    """Run ``work(i)`` for i < n, each in its own short-lived thread, ``at_once`` at a time."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:
            errors.append(e)

    for start in range(0, n, at_once):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(start, start + at_once)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_short_lived_threads_leave_no_connection_open(tmp_path: Path) -> None:
    with local(tmp_path / "s") as mgr:
        mgr.save("warm", 0)
        base = open_fds()
        in_threads(300, lambda i: mgr.save("p", {"i": i}, name=f"t{i % 7}"))
        after = open_fds()
        assert after <= base + SLACK, f"{after - base} descriptors left by 300 finished threads"
        # The manager still works from old and new threads alike.
        assert len(mgr.list(process_id="p")) == 300
        in_threads(10, lambda i: mgr.load_latest("p"))
        assert mgr.load_latest("p") is not None
    assert open_fds() <= base  # close() releases the rest


def test_open_and_close_release_every_descriptor(tmp_path: Path) -> None:
    with local(tmp_path / "s") as mgr:
        mgr.save("p", 0)
    base = open_fds()
    big = np.arange(300_000, dtype="f8")  # chunked: the manager's pool threads take part
    for i in range(40):
        with local(tmp_path / "s") as mgr:
            mgr.save("p", {"i": i, "x": big})
            mgr.save_async("p", {"i": -i}).result()
            assert mgr.load_latest("p") is not None
    assert open_fds() <= base


def test_consecutive_syncs_leave_nothing_open(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with local(a) as src:
        src.save("p", 0)
    ckptlite.sync(str(a), str(b))
    base = open_fds()
    for _ in range(200):  # URLs: each call opens both stores and must close them
        ckptlite.sync(str(a), str(b))
    assert open_fds() <= base + SLACK
    with local(a) as src, local(c) as dst:  # managers: a sync's reader thread reads the source
        base = open_fds()
        for i in range(200):
            if i % 20 == 0:
                src.save("p", i)
            ckptlite.sync(src, dst)
        after = open_fds()
        assert after <= base + SLACK, f"{after - base} descriptors left by 200 syncs"
        assert {x.id for x in dst.list()} == {x.id for x in src.list()}  # both still usable


# -- PostgreSQL -------------------------------------------------------------------


def our_pg_backends(admin: Any) -> int:
    """Count the server's backends whose client is a socket this process holds open."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    (n,) = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
        "AND pid <> pg_backend_pid()",
        (ports,),
    ).fetchone()
    return int(n)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_syncs_and_threads_keep_connections_bounded(
    pg_schema: str, tmp_path: Path
) -> None:
    import psycopg  # the postgres extra: CI installs it, and require_pg() ran first

    a = tmp_path / "a"
    with local(a) as src:
        src.save("p", 0)
    ckptlite.sync(str(a), pg_schema)
    with psycopg.connect(pg_schema, autocommit=True) as admin:
        base_fds, base_pg = open_fds(), our_pg_backends(admin)
        for i in range(50):  # URLs on both sides, both ways
            if i % 10 == 0:
                with local(a) as src:
                    src.save("p", i)
            ckptlite.sync(str(a), pg_schema)
            ckptlite.sync(pg_schema, str(tmp_path / "b"))
        assert open_fds() <= base_fds + SLACK
        assert our_pg_backends(admin) <= base_pg
        with ckptlite.open(pg_schema) as hub, local(tmp_path / "c") as dst:
            for _ in range(30):  # a manager given: a new reader thread each time
                ckptlite.sync(hub, dst)
            in_threads(60, lambda i: hub.save("q", i))
            assert our_pg_backends(admin) <= base_pg + 4
            assert open_fds() <= base_fds + SLACK
            assert len(hub.list(process_id="q")) == 60
        assert our_pg_backends(admin) <= base_pg
