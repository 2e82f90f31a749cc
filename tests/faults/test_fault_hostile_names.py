"""Item 8: hostile names and metadata round-trip as data; nothing is written outside the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fault_harness import common_check

import ckptlite

HOSTILE = [
    "../../../../etc/passwd",
    "..",
    "/etc/shadow",
    "/tmp/ckptlite-escape",
    "a\x00b",
    "\x00",
    "x" * 10_000,
    "'; DROP TABLE checkpoints; --",
    '" OR 1=1 --',
    "%_*?[]\\",
    "blobs/../../escape",
    "~root/.ssh/authorized_keys",
    "ünïcødé ☃ \u202e",
    "\n\r\t",
]


def _snapshot(root: Path) -> dict[str, int]:
    out = {}
    for p in root.rglob("*"):
        out[str(p)] = p.lstat().st_mtime_ns if not p.is_dir() else 0
    return out


@pytest.mark.parametrize("i", range(len(HOSTILE)), ids=[repr(h)[:24] for h in HOSTILE])
def test_hostile_strings_round_trip_as_data(
    tmp_path: Path, i: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = HOSTILE[i]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative path escape would land here
    store = tmp_path / "a" / "b" / "store"
    store.parent.mkdir(parents=True)
    outside_before = _snapshot(tmp_path)
    escape = Path("/tmp/ckptlite-escape")
    assert not escape.exists()
    meta = {hostile: hostile, "k": [hostile, {"nested": hostile}]}
    with ckptlite.open(store, durability="none") as mgr:
        cp = mgr.save(hostile, {"v": hostile}, name=hostile, metadata=meta)
        child = mgr.save(hostile, hostile, name=hostile, parent=cp, metadata={"p": hostile})
        again = mgr.get(cp.id)
        assert (again.process_id, again.name, again.metadata) == (
            hostile,
            hostile,
            {**meta, "ckptlite.slot_index": 1},
        )
        assert mgr.load(cp.id) == {"v": hostile}
        assert mgr.load(child.id) == hostile
        latest = mgr.latest(hostile, name=hostile)
        assert latest is not None and latest.id == child.id
        assert [c.id for c in mgr.list(process_id=hostile, name=hostile)] == [child.id, cp.id]
        assert [c.id for c in mgr.list(parent=cp.id)] == [child.id]
        assert mgr.list(process_id=hostile + "x") == []
        # A hostile string used as an id is just an unknown id.
        with pytest.raises(ckptlite.CheckpointNotFoundError):
            mgr.load(hostile)
        with pytest.raises(ckptlite.CheckpointNotFoundError):
            mgr.delete(hostile)
        assert not mgr.exists(hostile)
        assert {c.process_id for c in mgr.list()} == {hostile}
        assert len(mgr.list()) == 2  # the SQL metacharacters dropped nothing
    after = _snapshot(tmp_path)
    new = {p for p in after if p not in outside_before}
    assert all(p.startswith(str(store) + os.sep) or p == str(store) for p in new if p), sorted(
        p for p in new if not p.startswith(str(store))
    )
    assert {p for p in after if p in outside_before and after[p] != outside_before[p]} == set()
    assert not escape.exists() and list(work.iterdir()) == []
    expected = {cp.id: {"v": hostile}, child.id: hostile}
    common_check(store, expected=lambda c: expected[c.id])
