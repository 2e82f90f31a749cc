"""The contract every backend satisfies (zarr's StoreTests pattern).

``tests/test_backends.py`` runs these against every backend through the
parametrised ``any_mgr`` fixture; add a test here and it runs everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

import ckptlite
from ckptlite import Level, Status
from ckptlite.backends.base import Backend, ListQuery
from ckptlite.errors import (
    CheckpointNotFoundError,
    InvalidInputError,
    MissingChunksError,
)
from ckptlite.types import StoredChunk, StoredRecord

Mgr = ckptlite.CheckpointManager


def _big(seed: int = 0, n: int = 300_000) -> np.ndarray:
    return np.random.default_rng(seed).random(n).astype("f4")  # ~1.2 MB: many 64 KiB chunks


class BackendContract:
    """Behaviour every backend shares; subclasses run it through ``any_mgr``."""

    def test_round_trip_small_and_chunked(self, any_mgr: Mgr) -> None:
        state = {"a": _big(), "meta": (1, "x", None), "when": datetime(2026, 1, 1, tzinfo=UTC)}
        cp = any_mgr.save("p", state, level=Level.STAGE, name="s1", metadata={"crs": "EPSG:4326"})
        back = any_mgr.load(cp.id)
        assert np.array_equal(back["a"], state["a"])
        assert back["meta"] == (1, "x", None) and back["when"] == state["when"]
        got = any_mgr.get(cp.id)
        assert got == cp
        assert got.metadata == {"crs": "EPSG:4326"} and got.level is Level.STAGE
        assert got.created_at.tzinfo is not None

    def test_seq_is_monotonic_and_latest_uses_it(self, any_mgr: Mgr) -> None:
        cps = [any_mgr.save("p", i, name="slot") for i in range(5)]
        assert [c.seq for c in cps] == sorted(c.seq for c in cps)
        assert len({c.seq for c in cps}) == 5
        latest = any_mgr.latest("p", name="slot")
        assert latest is not None and latest.id == cps[-1].id

    def test_latest_skips_unusable_statuses(self, any_mgr: Mgr, backend: Backend) -> None:
        good = any_mgr.save("p", "good", name="n")
        for status in (Status.CORRUPTED, Status.ARCHIVED, Status.CREATED):
            bad = any_mgr.save("p", "bad", name="n")
            backend.set_status(bad.id, status)
            latest = any_mgr.latest("p", name="n")
            assert latest is not None and latest.id == good.id
        assert any_mgr.latest("nobody") is None

    def test_latest_filters_level_and_name(self, any_mgr: Mgr) -> None:
        a = any_mgr.save("p", 1, level=Level.STAGE, name="x")
        b = any_mgr.save("p", 2, level=Level.STEP, name="x")
        c = any_mgr.save("p", 3, level=Level.STEP, name="y")
        assert any_mgr.latest("p", level=Level.STAGE).id == a.id  # type: ignore[union-attr]
        assert any_mgr.latest("p", level=Level.STEP, name="x").id == b.id  # type: ignore[union-attr]
        assert any_mgr.latest("p").id == c.id  # type: ignore[union-attr]

    def test_list_filters_newest_first(self, any_mgr: Mgr) -> None:
        root = any_mgr.save("p", 0, level=Level.PIPELINE)
        kids = [any_mgr.save("p", i, level=Level.STEP, parent=root, name=f"t{i}") for i in range(3)]
        any_mgr.save("q", 9)
        assert [c.id for c in any_mgr.list(process_id="p")] == [k.id for k in reversed(kids)] + [
            root.id
        ]
        assert [c.id for c in any_mgr.list(parent=root.id)] == [k.id for k in reversed(kids)]
        assert [c.id for c in any_mgr.list(process_id="p", limit=2)] == [kids[2].id, kids[1].id]
        assert [c.id for c in any_mgr.list(name="t1")] == [kids[1].id]
        assert len(any_mgr.list(level=Level.STEP)) == 4
        future = datetime.now(UTC) + timedelta(days=1)
        assert any_mgr.list(since=future) == []
        assert len(any_mgr.list(status=Status.VALID)) == 5

    def test_after_seq_ascending_for_sync(self, any_mgr: Mgr, backend: Backend) -> None:
        cps = [any_mgr.save("p", i) for i in range(4)]
        got = backend.list(ListQuery(after_seq=cps[1].seq, ascending=True))
        assert [c.id for c in got] == [cps[2].id, cps[3].id]

    def test_delete_cascades_and_gc_reclaims(self, any_mgr: Mgr, backend: Backend) -> None:
        root = any_mgr.save("p", {"a": _big(1)}, level=Level.PIPELINE)
        child = any_mgr.save("p", {"a": _big(2)}, parent=root)
        grandchild = any_mgr.save("p", 3, parent=child, level=Level.SUBSTEP)
        other = any_mgr.save("p", {"a": _big(3)})
        assert set(any_mgr.delete(root.id)) == {root.id, child.id, grandchild.id}
        assert not any_mgr.exists(child.id) and any_mgr.exists(other.id)
        with pytest.raises(CheckpointNotFoundError):
            any_mgr.get(grandchild.id)
        dry = any_mgr.gc(dry_run=True)
        assert dry.chunks and dry.bytes_reclaimed > 0
        real = any_mgr.gc()
        assert real.chunks == dry.chunks
        assert any_mgr.gc(dry_run=True).chunks == ()
        assert np.array_equal(any_mgr.load(other.id)["a"], _big(3))
        assert any_mgr.verify(full=True).ok

    def test_delete_unknown_raises(self, any_mgr: Mgr) -> None:
        with pytest.raises(CheckpointNotFoundError):
            any_mgr.delete("chk_step_20260101T000000.000000Z_" + "0" * 32)

    def test_dedup_stores_identical_chunks_once(self, any_mgr: Mgr) -> None:
        arr = _big(5)
        first = any_mgr.save("p", {"a": arr})
        second = any_mgr.save("p", {"a": arr})
        assert first.stored_size > arr.nbytes // 2
        assert second.stored_size < 1024  # only the record's own payload is new

    def test_commit_refuses_missing_chunks(self, any_mgr: Mgr, backend: Backend) -> None:
        base = any_mgr.save("p", 1)
        rec = backend.get_record(base.id)
        ghost = "ab" * 32
        fake = StoredRecord(
            rec.checkpoint.replace(id=ckptlite.generate_checkpoint_id()),
            rec.payload,
            rec.manifest,
            (ghost,),
        )
        with pytest.raises(MissingChunksError) as e:
            backend.commit(fake)
        assert e.value.digests == (ghost,)
        assert not any_mgr.exists(fake.checkpoint.id)

    def test_commit_refuses_duplicate_id_and_missing_parent(
        self, any_mgr: Mgr, backend: Backend
    ) -> None:
        cp = any_mgr.save("p", 1)
        rec = backend.get_record(cp.id)
        with pytest.raises(InvalidInputError):
            backend.commit(rec)
        orphan = StoredRecord(
            rec.checkpoint.replace(id=ckptlite.generate_checkpoint_id(), parent_id="nope"),
            rec.payload,
            rec.manifest,
            rec.digests,
        )
        with pytest.raises(InvalidInputError):
            backend.commit(orphan)
        assert len(any_mgr.list()) == 1

    def test_chunks_by_digest(self, backend: Backend) -> None:
        data = b"x" * 1000
        digest = __import__("hashlib").sha256(data).hexdigest()
        assert backend.has_chunks([digest]) == set()
        backend.write_chunks([StoredChunk(digest, len(data), 0, data)])
        backend.write_chunks([StoredChunk(digest, len(data), 0, data)])  # idempotent
        assert backend.has_chunks([digest, "00" * 32]) == {digest}
        assert bytes(backend.read_chunk(digest).data) == data
        assert digest in set(backend.iter_chunk_digests())

    def test_set_status_and_unknown_ids(self, any_mgr: Mgr, backend: Backend) -> None:
        cp = any_mgr.save("p", 1)
        backend.set_status(cp.id, Status.ARCHIVED)
        assert any_mgr.get(cp.id).status is Status.ARCHIVED
        with pytest.raises(CheckpointNotFoundError):
            backend.set_status("missing", Status.VALID)
        with pytest.raises(CheckpointNotFoundError):
            any_mgr.load("missing")
        assert backend.has_records([cp.id, "missing"]) == {cp.id}

    def test_progress_and_metadata_round_trip(self, any_mgr: Mgr) -> None:
        meta = {"ünïcode": "✓", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
        cp = any_mgr.save("p", None, metadata=meta, progress=(37, 1200))
        got = any_mgr.get(cp.id)
        assert got.metadata == meta and got.progress == (37, 1200)

    def test_stats_count_bytes(self, any_mgr: Mgr) -> None:
        any_mgr.save("p", {"a": _big(7)})
        any_mgr.save("p", {"a": _big(7)})
        s = any_mgr.stats()
        assert s["checkpoints"] == 2
        assert s["logical_bytes"] > s["stored_bytes"]  # deduplicated
        assert s["dedup_ratio"] > 1.5

    def test_structure_check_finds_nothing_on_healthy_store(self, any_mgr: Mgr) -> None:
        any_mgr.save("p", {"a": _big(8)})
        report = any_mgr.verify()
        assert report.ok and report.checked == 1 and report.orphan_chunks == ()
