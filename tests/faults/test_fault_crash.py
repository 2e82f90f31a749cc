"""Item 1: SIGKILL at named crash points and at random moments of save and gc."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from fault_harness import (
    PROC,
    SIZES,
    Reported,
    Zygote,
    child_env,
    common_check,
    expected_from_metadata,
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
    with ckptlite.open(store) as mgr:
        ids = [cp.id for cp in mgr.list()]
    assert set(before) <= set(ids)
    # Committed exactly when the kill came after COMMIT; never half of a checkpoint. The
    # child saves twice: the kill comes in the first save, except at a pack.* point,
    # reached only by the second (an append to the pack the first one made).
    assert len(ids) == len(before) + (point == "commit.after_commit") + point.startswith("pack.")
    # The restarted job saves the same state again: it must not trust anything the
    # killed save left half-done (a chunk row without its file, a partial file).
    rep = read_side(side)
    with open_store(store) as mgr:
        rep.saved[save_one(mgr, None, 777, 300_000).id] = (777, 300_000)
    result = common_check(store, rep)
    assert result.loaded == len(ids) + 1


def test_sigkill_at_named_point_in_gc(tmp_path: Path) -> None:
    store, side = tmp_path / "store", tmp_path / "side"
    before = _prepare(store)
    _crash(store, side, "gc.after_delete", "gc")
    # The rows are gone but the files were not unlinked yet: the next gc takes them.
    rep = read_side(side)
    assert rep.deleted == {before[0]}
    common_check(store, rep)


def _parts(seed: int) -> dict[str, bytes]:
    r = random.Random(seed)
    a, b = r.randbytes(300_000), r.randbytes(900_000)
    return {"b": b, "a": a}  # "a" stored last: its pack, once "b" dies, is rewritten, not cut


def test_sigkill_at_named_point_in_gc_repack(tmp_path: Path) -> None:
    """Killed after a mostly dead pack's live chunks moved to a new pack, before the unlink."""
    store, side = tmp_path / "store", tmp_path / "side"
    _prepare(store)
    with open_store(store) as mgr:
        both = mgr.save(PROC, _parts(7), name="both", metadata={"parts": 7})
        kept = mgr.save(PROC, {"a": _parts(7)["a"]}, name="a", metadata={"parts": 7})
        mgr.delete(both.id)  # b's chunks die: the pack is 3/4 dead, so gc rewrites it
    _crash(store, side, "gc.after_repack", "gc-only")
    with open_store(store) as mgr:
        assert mgr.load(kept.id) == {"a": _parts(7)["a"]}
        report = mgr.verify(full=True)
        assert report.ok and len(report.orphan_packs) == 1  # the old pack, not yet unlinked

    def expected(cp: ckptlite.Checkpoint) -> object:
        if "parts" in cp.metadata:
            return {"a": _parts(cp.metadata["parts"])["a"]}
        return expected_from_metadata(cp)

    common_check(store, read_side(side), expected=expected)


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
    assert len(rep.saved) > rounds // 4, "the workers hardly ever got a save done"
    with ckptlite.open(store) as mgr:
        assert mgr.list(process_id=PROC)
    return killed


def test_sigkill_at_200_random_moments_of_save(tmp_path: Path) -> None:
    assert _random_kills(tmp_path, "saver", 200, 0.2) == 200


def test_sigkill_at_random_moments_of_gc(tmp_path: Path) -> None:
    assert _random_kills(tmp_path, "gc", 30, 0.3) == 30


def test_sigkill_at_random_moments_of_retention(tmp_path: Path) -> None:
    """Retention (keep_last=2) killed anywhere: never the newest of a slot, nothing broken."""
    store, side = tmp_path / "store", tmp_path / "side"
    _prepare(store)
    rng = random.Random(99)
    zyg = Zygote("retention", store, side)
    try:
        for i in range(30):
            assert zyg.run_and_kill(i + 1, rng.uniform(0.0, 0.3)) == signal.SIGKILL
            rep = read_side(side)
            newest: dict[str, str] = {}
            for cid, (seed, _size) in rep.saved.items():  # in commit order
                newest[f"slot{seed % 3}"] = cid
            # Retention may remove reported saves, but never a slot's newest one.
            common_check(store, Reported(saved={c: rep.saved[c] for c in newest.values()}))
    finally:
        zyg.close()
    with ckptlite.open(store) as mgr:
        assert mgr.list(process_id=PROC)


def test_sigkill_at_random_moments_of_sync(tmp_path: Path) -> None:
    """A sync killed anywhere leaves a sound target; the rerun completes it exactly."""
    source, target, side = tmp_path / "source", tmp_path / "target", tmp_path / "side"
    everything = Reported()
    with open_store(source) as mgr:
        for seed in range(1, 61):
            size = SIZES[seed % len(SIZES)]
            everything.saved[save_one(mgr, None, seed, size).id] = (seed, size)
    rng = random.Random(5)
    zyg = Zygote("sync", target, side, FAULT_SOURCE=str(source))
    partial = []
    try:
        for i in range(25):
            # Short first, then longer: the early kills land mid-copy, the later ones anywhere.
            assert zyg.run_and_kill(i + 1, rng.uniform(0.01, 0.04 + 0.02 * i)) == signal.SIGKILL
            if (target / "ckptlite.db").exists():
                partial.append(common_check(target).listed)
    finally:
        zyg.close()
    assert any(0 < n < len(everything.saved) for n in partial), partial  # killed mid-copy
    assert ckptlite.sync(str(source), str(target)).checkpoints_copied >= 0
    assert not ckptlite.sync(str(source), str(target)).changed
    result = common_check(target, everything)
    assert result.listed == len(everything.saved)


def _legacy_tree(root: Path) -> None:
    from datetime import datetime

    from legacy_builders import write_pipeline_checkpoint

    for e in range(20):
        for k, stage in enumerate(("ingest", "resample", "merge", "export")):
            data = {"x": list(range(e * 1000, e * 1000 + 30_000))}
            when = datetime(2024, 1, 1 + e, 12, k)
            write_pipeline_checkpoint(root, f"exp{e}", stage, shared_data=data, now=when)


def test_sigkill_at_random_moments_of_migrate(tmp_path: Path) -> None:
    """A legacy migration killed anywhere: nothing half-imported, nothing imported twice."""
    from ckptlite.legacy.migrate import migrate

    legacy, target, side = tmp_path / "legacy", tmp_path / "target", tmp_path / "side"
    _legacy_tree(legacy)
    with ckptlite.open(tmp_path / "reference", durability="none") as ref:
        migrate(legacy, ref, format="pipeline")
        expected = {cp.metadata["legacy_id"]: ref.load(cp.id) for cp in ref.list()}
    assert len(expected) == 80

    def expect(cp: ckptlite.Checkpoint) -> object:
        return expected[cp.metadata["legacy_id"]]

    # One kill at a known moment inside the imports: the timed kills below may all land
    # in the tree scan or after the end when the machine is slow or fast.
    env = child_env(CKPTLITE_CRASH_AT="commit.in_transaction@30", FAULT_SOURCE=str(legacy))
    child = spawn("crash", str(target), str(side), "migrate", env=env)
    assert child.wait(timeout=300) == -signal.SIGKILL
    counts = [common_check(target, expected=expect).listed]
    assert counts == [29], counts  # the 30th import died inside its transaction

    rng = random.Random(8)
    zyg = Zygote("migrate", target, side, FAULT_SOURCE=str(legacy))
    try:
        for i in range(20):
            # migrate reads and classifies the whole tree before its first import: the
            # window grows past that (about 0.7 s here) so kills land during the imports.
            assert zyg.run_and_kill(i + 1, rng.uniform(0.01, 0.2 + 0.08 * i)) == signal.SIGKILL
            if (target / "ckptlite.db").exists():
                counts.append(common_check(target, expected=expect).listed)
                with ckptlite.open(target) as mgr:
                    ids = [cp.metadata["legacy_id"] for cp in mgr.list()]
                assert len(ids) == len(set(ids)), "a legacy checkpoint was imported twice"
    finally:
        zyg.close()
    assert any(0 < n < 80 for n in counts), counts  # killed mid-migration
    with open_store(target) as mgr:
        migrate(legacy, mgr, format="pipeline")
        assert sorted(cp.metadata["legacy_id"] for cp in mgr.list()) == sorted(expected)
    common_check(target, expected=expect)
