"""Item 5: many processes save, read and gc one store at once."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_harness import (
    PROC,
    Reported,
    blob_files,
    common_check,
    expected_from_metadata,
    open_store,
    read_side,
    save_one,
    spawn,
)

import ckptlite

pytestmark = pytest.mark.slow

SECONDS = 60.0  # the number


def _finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"a child failed:\n{err}"
        assert "Error" not in err, err  # no busy or other error was printed either
        outs.append(out)
    return outs


def test_8_savers_2_readers_and_gc_every_5s_for_60s(tmp_path: Path) -> None:
    store, side = tmp_path / "store", tmp_path / "side"
    with open_store(store) as mgr:
        save_one(mgr, None, 1, 300_000)  # create the store before the crowd arrives
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    savers = [
        spawn("stress_saver", str(store), str(side), str(i + 1), str(SECONDS), **pipes)
        for i in range(8)
    ]
    readers = [
        spawn("stress_reader", str(store), str(SECONDS), str(i + 50), **pipes) for i in range(2)
    ]
    gcer = spawn("stress_gc", str(store), str(SECONDS), "5", **pipes)
    outs = _finish([*savers, *readers, gcer], timeout=SECONDS + 240)
    saves = [int(o.split()[1]) for o in outs[:8]]
    loads = [int(o.split()[1]) for o in outs[8:10]]
    gc_runs, reclaimed = int(outs[10].split()[1]), int(outs[10].split()[3])
    assert all(n >= 3 for n in saves), saves
    assert all(n >= 3 for n in loads), loads
    # gc sleeps 5 s between runs: it must not be starved by the overlapping saves
    assert gc_runs >= 6 and reclaimed > 0, outs[10]
    rep = read_side(side)
    assert len(rep.saved) == sum(saves)
    result = common_check(store, rep)
    assert result.loaded == len(rep.must_exist) + 1  # + the one saved before the crowd


def test_4_processes_save_the_identical_state_at_once(tmp_path: Path) -> None:
    store, side = tmp_path / "store", tmp_path / "side"
    with open_store(store):
        pass
    start_at = time.time() + 3.0  # after every child has built its 20 MB state
    procs = [
        spawn("same_state", str(store), str(side), repr(start_at), stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    _finish(procs, timeout=120)
    rep = read_side(side)
    assert len(rep.saved) == 4
    common_check(store, rep)
    with ckptlite.open(store) as mgr:
        cps = mgr.list(process_id=PROC)
        assert len(cps) == 4 and len({cp.checksum for cp in cps}) == 1
        digests = set(mgr.backend.iter_chunk_digests())  # type: ignore[attr-defined]
        refs = {mgr.backend.get_record(cp.id).digests for cp in cps}  # type: ignore[attr-defined]
        conn = mgr.backend.db.read()  # type: ignore[attr-defined]
        packs = {r[0] for r in conn.execute("SELECT pack FROM chunks WHERE pack IS NOT NULL")}
    assert len(refs) == 1 and set(next(iter(refs))) == digests  # one set of chunks, shared
    on_disk, _ = blob_files(store)
    assert packs and on_disk == packs  # the losers' packs were collected


def test_load_racing_delete_and_gc_is_not_found_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint deleted (and its chunks collected) while it loads is gone, not corrupt."""
    store = tmp_path / "store"
    mgr = open_store(store, "none")
    keep = save_one(mgr, None, 1, 300_000)
    # Saved and closed by another writer: its pack is not held open by ``mgr``
    # (gc leaves a live writer's open pack in place, and a load reading from it
    # would still find the bytes: see the test below).
    with open_store(store, "none") as writer:
        victim = save_one(writer, None, 2, 300_000)
    fired = []
    first = threading.Lock()  # the load's pool reads chunks in parallel: all wait for the gc

    def racing(real: Callable[..., object]) -> Callable[..., object]:
        def read(digest: str, *args: object, **kw: object) -> object:
            with first:
                if not fired:
                    fired.append(digest)
                    with open_store(store, "none") as other:  # as another process would
                        other.delete(victim.id)
                        assert other.gc().chunks
            return real(digest, *args, **kw)

        return read

    for name in ("read_chunk", "read_chunk_into"):  # a load reads through either
        monkeypatch.setattr(mgr.backend, name, racing(getattr(mgr.backend, name)))
    with pytest.raises(ckptlite.CheckpointNotFoundError):
        mgr.load(victim.id)
    monkeypatch.undo()
    assert fired and mgr.load(keep.id) == expected_from_metadata(keep)
    mgr.close()
    rep = Reported(saved={keep.id: (1, 300_000)})
    common_check(store, rep)


def test_load_racing_delete_and_gc_of_a_chunk_in_an_open_pack_is_whole_or_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load whose chunks sit in its own writer's open pack: the state whole, or not found.

    gc never cuts a pack a live writer holds, so the bytes may still be read after
    their rows went: they are verified, so the load returns the state exactly as
    saved (it began before the delete), or not found; never corrupt, nothing flagged.
    """
    store = tmp_path / "store"
    mgr = open_store(store, "none")
    keep = save_one(mgr, None, 1, 300_000)
    victim = save_one(mgr, None, 2, 300_000)
    fired = []
    first = threading.Lock()

    def racing(real: Callable[..., object]) -> Callable[..., object]:
        def read(digest: str, *args: object, **kw: object) -> object:
            with first:
                if not fired:
                    fired.append(digest)
                    with open_store(store, "none") as other:
                        other.delete(victim.id)
                        assert other.gc().chunks
            return real(digest, *args, **kw)

        return read

    for name in ("read_chunk", "read_chunk_into"):
        monkeypatch.setattr(mgr.backend, name, racing(getattr(mgr.backend, name)))
    try:
        state = mgr.load(victim.id)
    except ckptlite.CheckpointNotFoundError:
        pass
    else:
        assert state == expected_from_metadata(victim)
    monkeypatch.undo()
    assert fired and mgr.load(keep.id) == expected_from_metadata(keep)
    mgr.close()
    common_check(store, Reported(saved={keep.id: (1, 300_000)}))
