"""Issue 14: appendable packs. Writers never interleave; gc never touches an open pack.

A manager appends its saves' chunks to a pack it holds open (flocked) and makes
them durable with one fdatasync. These tests use real processes, real threads,
real SIGKILL and real files.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import apsw
import pytest
from fault_harness import CHUNK, child_env, open_store, read_side, spawn

import ckptlite


def _blob(seed: int, size: int = 5 * CHUNK) -> bytes:
    return random.Random(seed).randbytes(size)  # random: stored raw, in packs


def _pack_rows(store: Path) -> list[tuple[str, str, int, int]]:
    """(checkpoint id, pack, offset, stored size) of every packed chunk a checkpoint uses."""
    conn = apsw.Connection(str(store / "ckptlite.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [
            (str(r[0]), str(r[1]), int(r[2]), int(r[3]))
            for r in conn.execute(
                "SELECT k.id, c.pack, c.pack_offset, c.stored_size FROM refs r "
                "JOIN checkpoints k ON k.seq = r.seq JOIN chunks c ON c.digest = r.digest "
                "WHERE c.pack IS NOT NULL"
            )
        ]
    finally:
        conn.close()


_WRITER = textwrap.dedent(
    """
    import sys, threading, random
    import ckptlite
    store, base = sys.argv[1], int(sys.argv[2])
    mgr = ckptlite.open(store, chunk_size=int(sys.argv[3]))
    def work(t):
        for i in range(4):
            seed = base + 100 * t + i
            mgr.save(f"w{base}", {"b": random.Random(seed).randbytes(5 * int(sys.argv[3]))},
                     metadata={"seed": seed})
    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    mgr.close()
    """
)


def test_processes_and_threads_appending_never_interleave(tmp_path: Path) -> None:
    store = tmp_path / "store"
    open_store(store).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(store), str(base), str(CHUNK)], env=child_env()
        )
        for base in (10_000, 20_000)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = _pack_rows(store)
    with open_store(store) as mgr:
        cps = mgr.list()
        assert len(cps) == 24
        for cp in cps:  # every checkpoint loads, with its own bytes
            assert mgr.load(cp.id) == {"b": _blob(cp.metadata["seed"])}
        assert mgr.verify(full=True).ok
    by_pack: dict[str, list[tuple[int, int, str]]] = {}
    for cid, pack, offset, size in rows:
        by_pack.setdefault(pack, []).append((offset, offset + size, cid))
    assert len(by_pack) < len(cps), "saves did not share packs: nothing was appended"
    for spans in by_pack.values():
        spans.sort()
        # No two chunks overlap, and a save's chunks in a pack are one run: no other
        # writer's chunk lies between two of them.
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        owners = [cid for _, _, cid in spans]
        runs = [c for i, c in enumerate(owners) if i == 0 or owners[i - 1] != c]
        assert len(runs) == len(set(runs)), f"a save's chunks are interleaved: {runs}"


def _packs_of(store: Path, cp: ckptlite.Checkpoint) -> set[str]:
    return {pack for cid, pack, _, _ in _pack_rows(store) if cid == cp.id}


def test_gc_between_saves_never_removes_or_rewrites_an_open_pack(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open_store(store) as mgr, open_store(store) as other:
        first = mgr.save("p", {"b": _blob(2), "a": _blob(1, CHUNK)})
        (pack,) = _packs_of(store, first)
        other.delete(first.id)  # the open pack is all dead: gc would delete it
        report = other.gc()
        assert pack not in report.packs and (store / "blobs" / "packs" / pack).exists()
        kept = mgr.save("p", {"a": _blob(1, CHUNK)})  # appended to the open pack
        more = mgr.save("p", {"c": _blob(3)})
        assert _packs_of(store, kept) == _packs_of(store, more) == {pack}
        other.delete(more.id)  # mostly dead, live chunk first: gc would rewrite it
        report = other.gc()
        assert pack not in report.packs and (store / "blobs" / "packs" / pack).exists()
        last = mgr.save("p", {"d": _blob(4)})
        assert _packs_of(store, last) == {pack}
        assert mgr.load(kept.id) == {"a": _blob(1, CHUNK)}
        assert mgr.load(last.id) == {"d": _blob(4)}
    # Closed: now gc may collect what is dead in it.
    with open_store(store) as mgr:
        assert mgr.gc().bytes_reclaimed > 0
        assert mgr.verify(full=True).ok and mgr.load(last.id) == {"d": _blob(4)}


def test_gc_between_a_saves_append_and_its_commit_leaves_the_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks are durable in the pack but have no rows yet: gc must not take the pack."""
    store = tmp_path / "store"
    with open_store(store) as mgr, open_store(store) as other:
        real_commit = mgr.backend.commit
        calls = 0

        def commit(record: Any, *staged: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            other.gc()  # another process's gc, between the append and the commit
            return real_commit(record, *staged, **kw)

        monkeypatch.setattr(mgr.backend, "commit", commit)
        cp = mgr.save("p", {"b": _blob(5)})
        assert calls == 1  # committed at once: nothing it wrote was taken
        assert mgr.load(cp.id) == {"b": _blob(5)}
        assert mgr.verify(full=True).ok


def test_a_crash_after_append_leaves_a_dead_tail_gc_reclaims(tmp_path: Path) -> None:
    store, side = tmp_path / "store", tmp_path / "side"
    with open_store(store) as mgr:
        mgr.save("p", {"b": _blob(6)})
    # The child's second save is killed with its bytes durable in the pack, rows uncommitted.
    child = spawn(
        "crash", str(store), str(side), "save", env=child_env(CKPTLITE_CRASH_AT="pack.after_sync")
    )
    assert child.wait(timeout=60) == -signal.SIGKILL
    rep = read_side(side)
    assert len(rep.saved) == 1
    (cid,) = rep.saved
    with open_store(store) as mgr:
        (pack,) = _packs_of(store, mgr.get(cid))
        path = store / "blobs" / "packs" / pack
        end = max(o + n for c, p, o, n in _pack_rows(store) if p == pack)
        tail = path.stat().st_size - end
        assert tail > 300_000  # the killed save's chunks: past every committed one
        report = mgr.gc()
        assert report.bytes_reclaimed >= tail and path.stat().st_size == end
        again = mgr.save("p", {"b": _blob(7)})
        assert mgr.load(again.id) == {"b": _blob(7)}
        assert mgr.verify(full=True).ok


def test_a_forked_child_never_appends_to_the_parents_pack(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open_store(store) as mgr:
        first = mgr.save("p", {"b": _blob(8)})
        (parent_pack,) = _packs_of(store, first)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: saves through the manager it inherited
            try:
                cp = mgr.save("p", {"b": _blob(9)})
                os.write(w, cp.id.encode())
            finally:
                os._exit(0)
        os.close(w)
        child_id = os.read(r, 200).decode()
        os.close(r)
        os.waitpid(pid, 0)
        later = mgr.save("p", {"b": _blob(10)})
        assert _packs_of(store, later) == {parent_pack}  # the parent still appends to its own
        child_packs = _packs_of(store, mgr.get(child_id))
        assert child_packs and parent_pack not in child_packs
        for cp, seed in ((first, 8), (later, 10)):
            assert mgr.load(cp.id) == {"b": _blob(seed)}
        assert mgr.load(child_id) == {"b": _blob(9)}
        assert mgr.verify(full=True).ok


def test_a_save_whose_commit_fails_leaves_no_dead_bytes(tmp_path: Path) -> None:
    """Chunks appended, then the commit refuses the record: the pack is cut back."""
    store = tmp_path / "store"
    with open_store(store) as mgr:
        first = mgr.save("p", {"b": _blob(11)})
        (pack,) = _packs_of(store, first)
        path = store / "blobs" / "packs" / pack
        size = path.stat().st_size
        ghost = "chk_step_20260101T000000.000000Z_" + "0" * 32
        with pytest.raises(ckptlite.InvalidInputError):
            mgr.save("p", {"b": _blob(12)}, parent=ghost)  # refused in the commit
        assert path.stat().st_size == size
        again = mgr.save("p", {"b": _blob(12)})
        assert _packs_of(store, again) == {pack}
        assert mgr.load(again.id) == {"b": _blob(12)}
        assert mgr.verify(full=True).ok
