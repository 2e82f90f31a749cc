"""The local store serves ``latest``/``load_latest`` from a cache while the store is unchanged.

Every test here changes the store some way (this connection, another thread's,
another process's, a fork, a read-only view reopened) and checks that the next
call sees the change: a cache that missed one would return a stale checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import apsw
import pytest

import ckptlite
from ckptlite import Status


def _statements(mgr: ckptlite.CheckpointManager) -> list[str]:
    """Trace the SQL this thread's connection runs from now on (into the returned list)."""
    seen: list[str] = []
    conn = mgr.backend.db.connection()  # type: ignore[attr-defined]

    def trace(_cursor: apsw.Cursor, sql: str, _bindings: object) -> bool:
        seen.append(sql)
        return True

    conn.exec_trace = trace
    return seen


def test_an_unchanged_store_serves_load_latest_without_reading_rows(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", {"v": 1}, name="a", metadata={"m": 1})
        first = mgr.load_latest("p", name="a")
        assert first is not None
        seen = _statements(mgr)
        again = mgr.load_latest("p", name="a")
        assert again is not None and again[1] == {"v": 1}
        assert seen == ["PRAGMA data_version"]  # no SELECT of a row
        assert mgr.latest("p", name="a") == again[0]
        assert seen == ["PRAGMA data_version"] * 2


def test_what_a_cached_load_returns_is_fresh_each_call(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", {"v": [1, 2]}, name="a", metadata={"m": 1})
        cp, state = mgr.load_latest("p", name="a") or (None, None)
        assert cp is not None
        state["v"].append(3)  # the caller owns what it got
        cp.metadata["m"] = 2
        cp2, state2 = mgr.load_latest("p", name="a") or (None, None)
        assert state2 == {"v": [1, 2]}
        assert cp2 is not None and cp2.metadata == {"m": 1, "ckptlite.slot_index": 1}
        latest = mgr.latest("p", name="a")
        assert latest is not None
        latest.metadata["x"] = 1
        assert (mgr.latest("p", name="a") or cp).metadata == {"m": 1, "ckptlite.slot_index": 1}


def test_own_saves_deletes_and_status_changes_are_seen(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        a = mgr.save("p", 1, name="a")
        assert (mgr.load_latest("p", name="a") or (a, 0))[1] == 1
        b = mgr.save("p", 2, name="a")
        assert mgr.load_latest("p", name="a") == (b, 2)
        assert mgr.latest("p", name="a") == b
        mgr.backend.set_status(b.id, Status.CORRUPTED)
        assert mgr.load_latest("p", name="a") == (a, 1)
        assert mgr.latest("p", name="a") == a
        mgr.delete(a.id)
        assert mgr.load_latest("p", name="a") is None
        assert mgr.latest("p", name="a") is None
        c = mgr.save("p", 3, name="a", policy=ckptlite.CheckpointPolicy(keep_last=1))
        assert mgr.load_latest("p", name="a") == (c, 3)
        mgr.save("p", 4, name="a", policy=ckptlite.CheckpointPolicy(keep_last=1))  # prunes c
        hit = mgr.load_latest("p", name="a")
        assert hit is not None and hit[1] == 4 and hit[0].id != c.id


def test_another_threads_save_is_seen(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1, name="a")
        assert (mgr.load_latest("p", name="a") or (None, 0))[1] == 1
        done: list[ckptlite.Checkpoint] = []
        t = threading.Thread(target=lambda: done.append(mgr.save("p", 2, name="a")))
        t.start()
        t.join()
        assert mgr.load_latest("p", name="a") == (done[0], 2)
        # and the other way round: this thread saves, the other thread had cached
        seen: list[object] = []
        go, cached = threading.Event(), threading.Event()

        def reader() -> None:
            seen.append(mgr.load_latest("p", name="a"))
            cached.set()
            go.wait(10)
            seen.append(mgr.load_latest("p", name="a"))

        r = threading.Thread(target=reader)
        r.start()
        assert cached.wait(10)
        c = mgr.save("p", 3, name="a")
        go.set()
        r.join()
        assert seen == [(done[0], 2), (c, 3)]


def test_another_process_save_is_seen(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1, name="a")
        assert (mgr.load_latest("p", name="a") or (None, 0))[1] == 1
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import ckptlite, sys\n"
                "with ckptlite.open(sys.argv[1]) as m: m.save('p', 2, name='a')",
                str(tmp_path / "s"),
            ],
            check=True,
        )
        hit = mgr.load_latest("p", name="a")
        assert hit is not None and hit[1] == 2
        assert mgr.latest("p", name="a") == hit[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_and_its_parent_see_each_others_saves(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1, name="a")
        assert (mgr.load_latest("p", name="a") or (None, 0))[1] == 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                # A commit made after the fork by another process (the parent, below,
                # waits for us first: so make the change ourselves through a new store).
                hit = mgr.load_latest("p", name="a")
                mgr.save("p", 2, name="a")
                again = mgr.load_latest("p", name="a")
                code = 0 if hit and hit[1] == 1 and again and again[1] == 2 else 3
            finally:
                os.write(w, b"x")
                os._exit(code)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        hit = mgr.load_latest("p", name="a")
        assert hit is not None and hit[1] == 2


def test_a_read_only_view_sees_a_writer_that_came_later(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", 1, name="a")
    # Closed: no -wal, so the read-only view is immutable until the file changes.
    with ckptlite.open(tmp_path / "s", readonly=True) as ro:
        assert (ro.load_latest("p", name="a") or (None, 0))[1] == 1
        assert (ro.load_latest("p", name="a") or (None, 0))[1] == 1
        with ckptlite.open(tmp_path / "s") as mgr:
            b = mgr.save("p", 2, name="a")
            assert ro.load_latest("p", name="a") == (b, 2)
            assert ro.latest("p", name="a") == b
            c = mgr.save("p", 3, name="a")
            assert ro.load_latest("p", name="a") == (c, 3)  # now through mode=ro


def test_latest_reads_no_payload_and_caches_even_a_big_record(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        a = mgr.save("p", {"b": os.urandom(40_000)}, name="a")  # a 40 KB payload
        mgr.save("p", 0, name="other")
        seen = _statements(mgr)
        assert mgr.latest("p", name="a") == a
        assert seen and not any("payload" in s for s in seen), seen  # the record's row only
        seen.clear()
        assert mgr.latest("p", name="a") == a
        assert seen == ["PRAGMA data_version"]  # kept, though load_latest would not keep it
        # A real second process saves: the next latest sees it at once.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import ckptlite, sys\n"
                "with ckptlite.open(sys.argv[1]) as m: m.save('p', 2, name='a')",
                str(tmp_path / "s"),
            ],
            check=True,
        )
        b = mgr.latest("p", name="a")
        assert b is not None and b.id != a.id and mgr.load(b) == 2
        assert mgr.load_latest("p", name="a") == (b, 2)
        assert mgr.latest("p", name="a") == b
        mgr.delete(b.id)
        assert mgr.latest("p", name="a") == a
        newest = mgr.latest("p")
        assert newest is not None and newest.name == "other"
