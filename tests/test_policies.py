"""Retention policies: the pure planner, apply_retention, and pruning after saves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlite
from ckptlite import Checkpoint, CheckpointPolicy, Level, Status
from ckptlite.errors import InvalidInputError
from ckptlite.policies import SLOT_INDEX_KEY, plan_retention

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def rec(
    seq: int,
    *,
    name: str = "s",
    status: Status = Status.VALID,
    age: float = 0.0,
    metadata: dict[str, object] | None = None,
    parent: str | None = None,
    process: str = "p",
    level: Level = Level.STEP,
) -> Checkpoint:
    return Checkpoint(
        id=f"c{seq}",
        process_id=process,
        level=level,
        name=name,
        parent_id=parent,
        seq=seq,
        status=status,
        created_at=NOW - timedelta(seconds=age),
        size=1,
        stored_size=1,
        checksum="x",
        metadata=metadata or {},
    )


def kept_ids(decisions: list[ckptlite.RetentionDecision]) -> set[str]:
    return {d.checkpoint.id for d in decisions if d.keep}


# -- the acceptance case: keep_last=3, keep_every=10 over 100 saves -----------------

EXPECTED_POSITIONS = {10, 20, 30, 40, 50, 60, 70, 80, 90, 98, 99, 100}


def test_keep_last_3_keep_every_10_after_100_saves(mgr: ckptlite.CheckpointManager) -> None:
    cps = [mgr.save("geo", {"i": i}, name="tile") for i in range(100)]
    policy = CheckpointPolicy(keep_last=3, keep_every=10)

    dry = mgr.apply_retention("geo", policy, dry_run=True)
    assert len(mgr.list("geo")) == 100  # a dry run removes nothing
    expected = {cps[p - 1].id for p in EXPECTED_POSITIONS}
    assert set(dry.kept) == expected
    assert set(dry.removed) == {c.id for c in cps} - expected
    assert "would remove" in dry.explain()
    by_id = {d.checkpoint.id: d for d in dry.decisions}
    assert any("keep_every=10 (slot position 20)" in r for r in by_id[cps[19].id].reasons)
    assert any("keep_last=3" in r for r in by_id[cps[98].id].reasons)
    assert by_id[cps[0].id].reasons == ("not kept by any rule",)

    real = mgr.apply_retention("geo", policy)
    assert real.removed == dry.removed
    assert [(d.checkpoint.id, d.keep, d.reasons) for d in real.decisions] == [
        (d.checkpoint.id, d.keep, d.reasons) for d in dry.decisions
    ]
    assert {c.id for c in mgr.list("geo")} == expected
    for cid in expected:  # what is kept still loads
        assert mgr.load(cid) == {"i": cps.index(next(c for c in cps if c.id == cid))}


def test_policy_on_the_manager_prunes_after_every_save(store_dir: object) -> None:
    policy = CheckpointPolicy(keep_last=3, keep_every=10)
    with ckptlite.open(store_dir, durability="none", policy=policy) as m:  # type: ignore[arg-type]
        cps = [m.save("geo", i, name="tile") for i in range(100)]
        left = m.list("geo")
        assert {c.id for c in left} == {cps[p - 1].id for p in EXPECTED_POSITIONS}
        assert sorted(c.metadata[SLOT_INDEX_KEY] for c in left) == sorted(EXPECTED_POSITIONS)
        # Positions are stamped, so pruning again (explicitly) changes nothing.
        assert m.apply_retention("geo").removed == ()
        # Another slot of the same process is judged on its own.
        m.save("geo", "x", name="other")
        assert len(m.list("geo", name="tile")) == 12


def test_policy_prunes_after_save_async(mgr: ckptlite.CheckpointManager) -> None:
    policy = CheckpointPolicy(keep_last=2)
    futs = [mgr.save_async("p", i, policy=policy) for i in range(10)]
    mgr.flush()
    assert [c.id for c in mgr.list("p")] == [futs[-1].result().id, futs[-2].result().id]


# -- invariants -----------------------------------------------------------------------


def test_newest_valid_and_archived_survive_any_policy() -> None:
    records = [
        rec(1, status=Status.ARCHIVED, age=10_000),
        rec(2, age=10_000),
        rec(3, status=Status.CORRUPTED),
        rec(4, status=Status.CREATED),
    ]
    decisions = plan_retention(records, CheckpointPolicy(keep_last=1, max_age=1), NOW)
    # c2 is the newest VALID (c3 corrupted, c4 still being written), though too old.
    assert kept_ids(decisions) == {"c1", "c2", "c4"}
    reasons = {d.checkpoint.id: d.reasons for d in decisions}
    assert "archived: never removed" in reasons["c1"]
    assert reasons["c2"][0] == "newest valid checkpoint of its slot"
    assert reasons["c3"] == ("corrupted, not kept by any rule",)


def test_archived_are_left_out_of_counts() -> None:
    records = [rec(1), rec(2), rec(3, status=Status.ARCHIVED), rec(4, status=Status.ARCHIVED)]
    assert kept_ids(plan_retention(records, CheckpointPolicy(keep_last=2), NOW)) == {
        "c1",
        "c2",
        "c3",
        "c4",
    }


def test_keep_best_min_and_max() -> None:
    records = [rec(i, metadata={"loss": v}) for i, v in enumerate([0.5, 0.1, 0.3, 0.9], 1)]
    records.append(rec(5, metadata={"loss": "n/a"}))
    lo = plan_retention(records, CheckpointPolicy(keep_best=("loss", "min")), NOW)
    assert kept_ids(lo) == {"c2", "c5"}  # best, and the newest valid
    hi = plan_retention(records, CheckpointPolicy(keep_best=("loss", "max")), NOW)
    assert kept_ids(hi) == {"c4", "c5"}


def test_max_age_caps_the_keep_rules() -> None:
    records = [rec(1, age=500), rec(2, age=300), rec(3, age=100), rec(4, age=0)]
    decisions = plan_retention(records, CheckpointPolicy(keep_last=3, max_age=200), NOW)
    assert kept_ids(decisions) == {"c3", "c4"}
    assert (
        next(d for d in decisions if d.checkpoint.id == "c2")
        .reasons[0]
        .startswith("older than max_age")
    )
    # max_age alone keeps everything young enough.
    only_age = plan_retention(records, CheckpointPolicy(max_age=timedelta(seconds=400)), NOW)
    assert kept_ids(only_age) == {"c2", "c3", "c4"}


def test_parents_of_kept_checkpoints_are_kept() -> None:
    stage = rec(1, level=Level.STAGE, name="st")
    old_stage = rec(0, level=Level.STAGE, name="st")
    steps = [rec(i, parent=stage.id) for i in range(2, 5)]
    child_of_old = rec(5, name="t", parent=old_stage.id)
    decisions = plan_retention(
        [old_stage, stage, *steps, child_of_old], CheckpointPolicy(keep_last=1), NOW
    )
    kept = kept_ids(decisions)
    assert old_stage.id in kept  # its child is the newest valid of slot "t"
    assert next(d for d in decisions if d.checkpoint.id == "c0").reasons == (
        "parent of kept checkpoint c5",
    )


def test_pinned_ids_are_kept() -> None:
    records = [rec(1), rec(2), rec(3)]
    decisions = plan_retention(records, CheckpointPolicy(keep_last=1), NOW, pinned={"c1"})
    assert kept_ids(decisions) == {"c1", "c3"}


def test_retention_of_one_process_never_cascades_into_another(
    mgr: ckptlite.CheckpointManager,
) -> None:
    old = mgr.save("a", 0, name="s")
    mgr.save("a", 1, name="s")
    child = mgr.save("b", "child", parent=old)
    report = mgr.apply_retention("a", CheckpointPolicy(keep_last=1))
    assert report.removed == ()
    assert mgr.exists(child.id) and mgr.exists(old.id)
    assert any("pinned" in r for d in report.decisions for r in d.reasons)


def test_keep_every_never_thins_checkpoints_without_a_position() -> None:
    # Written by an older ckptlite (no stamp): a rank would move once older ones are
    # removed, so keep_every keeps them rather than erode them pass after pass.
    records = [rec(i) for i in range(1, 8)]
    decisions = plan_retention(records, CheckpointPolicy(keep_every=3), NOW)
    assert kept_ids(decisions) == {f"c{i}" for i in range(1, 8)}
    assert any("no slot position" in r for r in decisions[0].reasons)
    # keep_last still thins them.
    policy = CheckpointPolicy(keep_last=2, keep_every=3)
    mixed = records + [rec(i, metadata={SLOT_INDEX_KEY: i}) for i in range(8, 13)]
    kept = kept_ids(plan_retention(mixed, policy, NOW))
    assert kept == {f"c{i}" for i in range(1, 8)} | {"c9", "c11", "c12"}


@pytest.mark.parametrize("policy_at_save", [False, True])
def test_prune_keep_last_2_keep_every_5_is_idempotent(
    store_dir: object, policy_at_save: bool
) -> None:
    # The report: 20 saves, prune kept 20, 19, 15, 10, 5; the same prune again
    # removed 15, 10 and 5. Positions must not depend on what earlier passes removed.
    at_save = CheckpointPolicy(keep_last=100) if policy_at_save else None
    policy = CheckpointPolicy(keep_last=2, keep_every=5)
    with ckptlite.open(store_dir, durability="none", policy=at_save) as m:  # type: ignore[arg-type]
        cps = [m.save("geo", {"i": i}, name="tile") for i in range(20)]
        expected = {cps[p - 1].id for p in (5, 10, 15, 19, 20)}
        first = m.apply_retention("geo", policy)
        assert set(first.kept) == expected
        for _ in range(3):
            again = m.apply_retention("geo", policy)
            assert again.removed == ()
            assert {c.id for c in m.list("geo")} == expected
        # Later saves continue the count: position 25 is kept, 21-23 are not.
        more = [m.save("geo", {"i": i}, name="tile") for i in range(20, 25)]
        m.apply_retention("geo", policy)
        m.apply_retention("geo", policy)
        assert {c.id for c in m.list("geo")} == expected - {cps[18].id} | {more[3].id, more[4].id}


def test_apply_retention_needs_a_policy(mgr: ckptlite.CheckpointManager) -> None:
    mgr.save("p", 1)
    with pytest.raises(InvalidInputError) as err:
        mgr.apply_retention("p")
    assert err.value.hint
    assert len(mgr.list("p")) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_last": 0},
        {"keep_every": -1},
        {"every_items": 1.5},
        {"every_seconds": 0},
        {"max_age": -1},
        {"max_age": "1d"},
        {"keep_best": ("loss", "lowest")},
        {"keep_best": "loss"},
        {"keep_last": True},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        CheckpointPolicy(**kwargs)  # type: ignore[arg-type]


def test_should_save() -> None:
    p = CheckpointPolicy(every_items=10, every_seconds=60)
    assert not p.should_save(items_since=9, seconds_since=59)
    assert p.should_save(items_since=10)
    assert p.should_save(seconds_since=60)
    assert CheckpointPolicy().should_save()
    assert CheckpointPolicy(max_age=5).max_age == timedelta(seconds=5)


# -- property: the invariants hold for any records and any policy -----------------------

statuses = st.sampled_from([Status.VALID, Status.VALID, Status.CORRUPTED, Status.ARCHIVED])
policies = st.builds(
    CheckpointPolicy,
    keep_last=st.none() | st.integers(1, 5),
    keep_every=st.none() | st.integers(1, 6),
    max_age=st.none() | st.integers(0, 100),
    keep_best=st.none() | st.tuples(st.just("m"), st.sampled_from(["min", "max"])),
)


@st.composite
def record_sets(draw: st.DrawFn) -> list[Checkpoint]:
    n = draw(st.integers(0, 40))
    out: list[Checkpoint] = []
    for seq in range(1, n + 1):
        parent = draw(st.none() | st.sampled_from([c.id for c in out] or [None]))
        metric = draw(st.none() | st.floats(-5, 5, allow_nan=False))
        out.append(
            rec(
                seq,
                name=draw(st.sampled_from(["a", "b", "c"])),
                process=draw(st.sampled_from(["p", "q"])),
                status=draw(statuses),
                age=draw(st.integers(0, 200)),
                parent=parent,
                metadata={"m": metric, SLOT_INDEX_KEY: seq}
                if draw(st.booleans())
                else {"m": metric},
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(records=record_sets(), policy=policies)
def test_property_newest_valid_and_archived_never_removed(
    records: list[Checkpoint], policy: CheckpointPolicy
) -> None:
    decisions = plan_retention(records, policy, NOW)
    assert sorted(d.checkpoint.id for d in decisions) == sorted(c.id for c in records)
    assert all(d.reasons for d in decisions)
    kept = kept_ids(decisions)
    slots: dict[tuple[str, str], list[Checkpoint]] = {}
    for c in records:
        slots.setdefault((c.process_id, c.name), []).append(c)
    for recs in slots.values():
        valid = [c for c in recs if c.status == Status.VALID]
        if valid:
            assert max(valid, key=lambda c: c.seq).id in kept
    assert all(c.id in kept for c in records if c.status == Status.ARCHIVED)
    # Deleting what is removed never cascades into what is kept.
    removed = {c.id for c in records} - kept
    assert not any(c.parent_id in removed for c in records if c.id in kept)
    # Retention is idempotent: what is kept, judged again, all stays.
    again = plan_retention([c for c in records if c.id in kept], policy, NOW)
    assert all(d.keep for d in again)


def test_a_failed_prune_after_save_is_logged_and_retried(
    mgr: ckptlite.CheckpointManager,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = CheckpointPolicy(keep_last=1)
    mgr.save("p", 0, policy=policy)

    def locked(cid: str) -> list[str]:
        raise ckptlite.StoreLockedError("injected: busy")

    monkeypatch.setattr(mgr.backend, "delete", locked)
    with caplog.at_level("WARNING", logger="ckptlite"):
        cp = mgr.save("p", 1, policy=policy)  # the save itself succeeds
    assert mgr.exists(cp.id) and "retention after saving" in caplog.text
    assert len(mgr.list("p")) == 2
    monkeypatch.undo()
    last = mgr.save("p", 2, policy=policy)  # the next save prunes what was left
    assert [c.id for c in mgr.list("p")] == [last.id]


# -- slot positions: a counter per slot, taken in the save's own transaction -------


def _store_url(kind: str, tmp_path: object, request: pytest.FixtureRequest) -> str:
    from pathlib import Path

    if kind == "local":
        return str(Path(str(tmp_path)) / "store")
    return str(request.getfixturevalue("pg_schema"))


def _positions(m: ckptlite.CheckpointManager, pid: str = "geo") -> list[int]:
    return sorted(c.metadata[SLOT_INDEX_KEY] for c in m.list(pid))


@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_a_position_is_never_taken_again_after_the_newest_is_deleted(
    kind: str, tmp_path: object, request: pytest.FixtureRequest
) -> None:
    url = _store_url(kind, tmp_path, request)
    with ckptlite.open(url, durability="none") as m:
        cps = [m.save("geo", {"i": i}, name="tile") for i in range(3)]
        m.delete(cps[-1].id)
    with ckptlite.open(url, durability="none") as m:  # another process, later
        after = m.save("geo", {"i": 3}, name="tile")
        assert after.metadata[SLOT_INDEX_KEY] == 4
        assert m.get(after.id).metadata[SLOT_INDEX_KEY] == 4
        assert _positions(m) == [1, 2, 4]


def test_memory_positions_never_repeat_after_a_delete() -> None:
    with ckptlite.open("memory://") as m:
        cps = [m.save("geo", {"i": i}, name="tile") for i in range(3)]
        m.delete(cps[-1].id)
        m.delete(cps[-2].id)
        assert m.save("geo", {"i": 3}, name="tile").metadata[SLOT_INDEX_KEY] == 4


@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_two_managers_saving_one_slot_take_distinct_positions(
    kind: str, tmp_path: object, request: pytest.FixtureRequest
) -> None:
    url = _store_url(kind, tmp_path, request)
    policy = CheckpointPolicy(keep_last=2, keep_every=5)
    with ckptlite.open(url, durability="none") as a, ckptlite.open(url, durability="none") as b:
        saved = [(a if i % 2 else b).save("geo", {"i": i}, name="tile") for i in range(20)]
        assert [c.metadata[SLOT_INDEX_KEY] for c in saved] == list(range(1, 21))
        first = a.apply_retention("geo", policy)
        kept = {c.id for c in a.list("geo")}
        assert kept == {saved[p - 1].id for p in (5, 10, 15, 19, 20)} == set(first.kept)
        assert b.apply_retention("geo", policy).removed == ()
        assert {c.id for c in b.list("geo")} == kept
