"""Item 1: SIGKILL at named crash points and at random moments of save and gc."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from fault_harness import (
    PROC,
    Zygote,
    child_env,
    common_check,
    open_store,
    read_side,
    save_one,
    spawn,
)

import ckptlite
from ckptlite._faults import POINTS

pytestmark = pytest.mark.slow

SAVE_POINTS = [p for p in POINTS if not p.startswith("gc.")]


def _prepare(store: Path) -> list[str]:
    with open_store(store) as mgr:
        return [save_one(mgr, None, seed, size).id for seed, size in ((1, 300_000), (2, 3_000))]


def _crash(store: Path, side: Path, point: str, action: str) -> None:
    child = spawn("crash", str(store), str(side), action, env=child_env(CKPTLITE_CRASH_AT=point))
    assert child.wait(timeout=60) == -signal.SIGKILL, f"{point} was never reached"


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_sigkill_at_named_point_in_save(tmp_path: Path, point: str) -> None:
    store, side = tmp_path / "store", tmp_path / "side"
    before = _prepare(store)
    _crash(store, side, point, "save")
    result = common_check(store, read_side(side))
    with ckptlite.open(store) as mgr:
        ids = [cp.id for cp in mgr.list()]
    assert set(before) <= set(ids)
    # Committed exactly when the kill came after COMMIT; never half of a checkpoint.
    assert len(ids) == len(before) + (point == "commit.after_commit")
    assert result.loaded == len(ids)


def test_sigkill_at_named_point_in_gc(tmp_path: Path) -> None:
    store, side = tmp_path / "store", tmp_path / "side"
    before = _prepare(store)
    _crash(store, side, "gc.after_delete", "gc")
    # The rows are gone but the files were not unlinked yet: the next gc takes them.
    rep = read_side(side)
    assert rep.deleted == {before[0]}
    common_check(store, rep)


def test_point_is_free_when_unset() -> None:
    from ckptlite import _faults

    assert _faults._CRASH_AT is None
    _faults.point("commit.in_transaction")  # returns: nothing is armed


def _random_kills(tmp_path: Path, mode: str, rounds: int, max_delay: float) -> int:
    store, side = tmp_path / "store", tmp_path / "side"
    _prepare(store)
    rng = random.Random(1234 if mode == "saver" else 4321)
    zyg = Zygote(mode, store, side)
    killed = 0
    try:
        for i in range(rounds):
            status = zyg.run_and_kill(i + 1, rng.uniform(0.0, max_delay))
            assert status == signal.SIGKILL, f"worker exited by itself (status {status})"
            killed += 1
            common_check(store, read_side(side))
    finally:
        zyg.close()
    rep = read_side(side)
    assert len(rep.saved) > rounds // 2, "the workers hardly ever got a save done"
    with ckptlite.open(store) as mgr:
        assert mgr.list(process_id=PROC)
    return killed


def test_sigkill_at_200_random_moments_of_save(tmp_path: Path) -> None:
    assert _random_kills(tmp_path, "saver", 200, 0.2) == 200


def test_sigkill_at_random_moments_of_gc(tmp_path: Path) -> None:
    assert _random_kills(tmp_path, "gc", 30, 0.3) == 30
