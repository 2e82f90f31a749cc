"""The contract every backend satisfies (zarr's StoreTests pattern).

``tests/test_backends.py`` runs these against every backend through the
parametrised ``any_mgr`` fixture; add a test here and it runs everywhere.
"""

from __future__ import annotations

import dataclasses
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
    RunNotFoundError,
)
from ckptlite.types import ItemMark, RunRecord, RunStatus, StoredChunk, StoredRecord

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
        assert got.metadata == {"crs": "EPSG:4326", "ckptlite.slot_index": 1}
        assert got.level is Level.STAGE
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
        assert dry.chunks
        real = any_mgr.gc()
        assert real.chunks == dry.chunks
        # What a dry run predicts is what gc frees (a local store's open pack keeps
        # its dead bytes until it is closed: then 0 is the truth).
        assert (real.bytes_reclaimed, real.inline_bytes) == (dry.bytes_reclaimed, dry.inline_bytes)
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

    def test_a_new_store_records_blake3_and_the_manager_uses_it(
        self, any_mgr: Mgr, backend: Backend
    ) -> None:
        import blake3

        from ckptlite import chunking

        assert backend.hash_name == any_mgr.hash_name == "blake3"
        cp = any_mgr.save("p", {"a": _big(3)})
        rec = backend.get_record(cp.id)
        for d in rec.digests:  # every chunk addressed by BLAKE3 of its raw bytes
            assert blake3.blake3(chunking.raw_bytes(backend.read_chunk(d))).hexdigest() == d
        assert cp.checksum == chunking.record_checksum(rec.payload, rec.manifest, "blake3")
        assert len(cp.checksum) == 64

    def test_staged_chunks_are_committed_with_the_record(
        self, any_mgr: Mgr, backend: Backend
    ) -> None:
        """``stage_chunks`` then ``commit(record, staged)``: one save's chunks and record."""
        cp = any_mgr.save("p", {"a": _big(11)})
        rec = backend.get_record(cp.id)
        chunks = [backend.read_chunk(d) for d in rec.digests]
        chunks = [StoredChunk(c.digest, c.size, c.codec, bytes(c.data)) for c in chunks]
        any_mgr.delete(cp.id)
        any_mgr.gc()
        assert backend.has_chunks(rec.digests) == set()

        def copy(*extra: str) -> StoredRecord:
            new = rec.checkpoint.replace(id=ckptlite.generate_checkpoint_id())
            return StoredRecord(new, rec.payload, rec.manifest, rec.digests + extra)

        ghost = copy("ab" * 32)  # refused whole: the staged chunks do not make it valid
        with pytest.raises(MissingChunksError) as e:
            backend.commit(ghost, [backend.stage_chunks(chunks)])
        assert e.value.digests == ("ab" * 32,) and not any_mgr.exists(ghost.checkpoint.id)
        good = copy()
        assert backend.commit(good, [backend.stage_chunks(chunks)]).seq > 0
        assert backend.has_chunks(rec.digests) == set(rec.digests)
        assert np.array_equal(any_mgr.load(good.checkpoint.id)["a"], _big(11))
        assert any_mgr.verify(full=True).ok

    def test_chunks_by_digest(self, backend: Backend) -> None:
        data = b"x" * 1000
        digest = __import__("hashlib").sha256(data).hexdigest()
        assert backend.has_chunks([digest]) == set()
        backend.write_chunks([StoredChunk(digest, len(data), 0, data)])
        backend.write_chunks([StoredChunk(digest, len(data), 0, data)])  # idempotent
        assert backend.has_chunks([digest, "00" * 32]) == {digest}
        assert bytes(backend.read_chunk(digest).data) == data
        assert digest in set(backend.iter_chunk_digests())

    def test_a_chunk_flagged_bad_is_stored_again_never_reused(
        self, any_mgr: Mgr, backend: Backend
    ) -> None:
        state = {"a": _big(9)}
        cp = any_mgr.save("p", state)
        rec = backend.get_record(cp.id)
        digests = set(rec.digests)
        flagged = set(rec.digests[1::3])
        backend.mark_bad_chunks(flagged)  # type: ignore[attr-defined]
        assert backend.has_chunks(digests) == digests - flagged
        # A record using a flagged chunk is refused like one using a missing chunk.
        copy = rec.checkpoint.replace(id=ckptlite.generate_checkpoint_id())
        with pytest.raises(MissingChunksError):
            backend.commit(StoredRecord(copy, rec.payload, rec.manifest, rec.digests))
        again = any_mgr.save("p", state)  # writes the flagged chunks again
        assert backend.has_chunks(digests) == digests
        assert np.array_equal(any_mgr.load(again.id)["a"], state["a"])
        backend.mark_bad_chunks(flagged)  # type: ignore[attr-defined]
        backend.mark_bad_chunks([], replace=True)  # type: ignore[attr-defined]
        assert backend.has_chunks(digests) == digests  # ``replace`` clears the others

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
        assert got.metadata == {**meta, "ckptlite.slot_index": 1} and got.progress == (37, 1200)

    def test_stats_count_bytes(self, any_mgr: Mgr) -> None:
        any_mgr.save("p", {"a": _big(7)})
        any_mgr.save("p", {"a": _big(7)})
        s = any_mgr.stats()
        assert s["checkpoints"] == 2
        assert s["logical_bytes"] > s["stored_bytes"]  # deduplicated
        assert s["dedup_ratio"] > 1.5

    def test_stats_count_item_results(self, any_mgr: Mgr) -> None:
        with any_mgr.run("p") as run:
            for it in run.items("g", ["a", "b", "c"]):
                if it.id == "c":
                    it.fail("no")
                else:
                    it.done({"px": np.arange(5000)})
        s = any_mgr.stats()
        ledger = any_mgr.list_items(run.id)
        size = sum(len(e.state or b"") for e in ledger)
        assert size > 2 * 40_000
        assert s["item_results"]["count"] == 2
        assert s["item_results"]["logical_bytes"] == size
        assert 0 < s["item_results"]["stored_bytes"] <= size + 64
        assert s["logical_bytes"] == size and s["checkpoints"] == 0

    def test_structure_check_finds_nothing_on_healthy_store(self, any_mgr: Mgr) -> None:
        any_mgr.save("p", {"a": _big(8)})
        report = any_mgr.verify()
        assert report.ok and report.checked == 1 and report.orphan_chunks == ()


class LedgerContract:
    """Runs and the work-item ledger, at the byte level every backend implements."""

    @staticmethod
    def _run(backend: Backend, process_id: str = "p", run_id: str = "run_1") -> RunRecord:
        now = datetime.now(UTC)
        return backend.create_run(RunRecord(run_id, process_id, RunStatus.RUNNING, now, now))

    def test_create_get_update_list_runs(self, backend: Backend) -> None:
        a = self._run(backend, "p", "run_a")
        b = self._run(backend, "p", "run_b")
        c = self._run(backend, "q", "run_c")
        assert a.seq < b.seq < c.seq and a.changed < b.changed < c.changed
        assert backend.get_run("run_a") == a
        with pytest.raises(InvalidInputError):
            self._run(backend, "p", "run_a")
        with pytest.raises(RunNotFoundError):
            backend.get_run("nope")
        assert [r.id for r in backend.list_runs("p")] == ["run_b", "run_a"]
        assert [r.id for r in backend.list_runs()] == ["run_c", "run_b", "run_a"]
        assert [r.id for r in backend.list_runs("p", limit=1)] == ["run_b"]
        later = a.updated_at + timedelta(seconds=5)
        done = backend.update_run(
            a.replace(
                status=RunStatus.FAILED,
                updated_at=later,
                finished_at=later,
                error="boom ✗",
                progress=(3, 10),
            )
        )
        assert done.status is RunStatus.FAILED and done.error == "boom ✗"
        assert done.progress == (3, 10) and done.finished_at == later
        assert done.seq == a.seq and done.changed > c.changed
        assert backend.get_run("run_a") == done
        # Since a high-water mark, by change: run_a changed last.
        assert [r.id for r in backend.list_runs(after_changed=b.changed)] == ["run_c", "run_a"]
        with pytest.raises(RunNotFoundError):
            backend.update_run(a.replace(id="nope"))

    def test_marks_and_states_commit_together(self, backend: Backend) -> None:
        run = self._run(backend)
        t1 = backend.mark_items(
            run.id,
            [
                ItemMark("tiles", "t1", True, b"\x00state-1"),
                ItemMark("tiles", "t2", False, None, "ValueError: x"),
                ItemMark("other", "t1", True),
            ],
        )
        done, failed = backend.item_marks(run.id, "tiles")
        assert done == {"t1"} and failed == {"t2": 1}
        assert backend.item_marks(run.id, "other") == ({"t1"}, {})
        assert backend.item_marks(run.id, "none") == (set(), {})
        assert backend.item_marks("no-run", "tiles") == (set(), {})
        entries = {(e.group, e.item_id): e for e in backend.list_items(run.id)}
        assert entries["tiles", "t1"].state == b"\x00state-1" and entries["tiles", "t1"].ok
        assert entries["tiles", "t2"].error == "ValueError: x" and not entries["tiles", "t2"].ok
        assert {e.changed for e in entries.values()} == {t1}  # one transaction, one clock value
        assert [e.item_id for e in backend.list_items(run.id, "other")] == ["t1"]

    def test_attempts_count_and_done_is_never_recorded_twice(self, backend: Backend) -> None:
        run = self._run(backend)
        backend.mark_items(run.id, [ItemMark("g", "a", False, None, "e1")])
        backend.mark_items(run.id, [ItemMark("g", "a", False, None, "e2")])
        assert backend.item_marks(run.id, "g") == (set(), {"a": 2})
        t = backend.mark_items(run.id, [ItemMark("g", "a", True, b"ok")])
        backend.mark_items(run.id, [ItemMark("g", "a", True, b"second")])  # ignored
        backend.mark_items(run.id, [ItemMark("g", "a", False, None, "late")])  # ignored
        (entry,) = backend.list_items(run.id, "g")
        assert entry.ok and entry.attempts == 3 and entry.state == b"ok" and entry.changed == t
        # Within one call, marks apply in order.
        backend.mark_items(run.id, [ItemMark("g", "b", True, b"1"), ItemMark("g", "b", True, b"2")])
        assert {e.item_id: e.state for e in backend.list_items(run.id, "g")}["b"] == b"1"

    def test_marks_for_an_unknown_run_write_nothing(self, backend: Backend) -> None:
        with pytest.raises(RunNotFoundError):
            backend.mark_items("nope", [ItemMark("g", "a", True)])
        assert backend.list_items("nope") == []

    def test_list_items_after_a_high_water_mark(self, backend: Backend) -> None:
        run = self._run(backend)
        first = backend.mark_items(run.id, [ItemMark("g", f"i{n}", True) for n in range(5)])
        backend.mark_items(run.id, [ItemMark("g", f"i{n}", True) for n in range(5, 8)])
        later = backend.list_items(run.id, after_changed=first)
        assert [e.item_id for e in later] == ["i5", "i6", "i7"]
        assert len(backend.list_items(run.id, limit=4)) == 4

    def test_many_items_round_trip(self, backend: Backend) -> None:
        run = self._run(backend)
        ids = [f"tile_{n}" for n in range(20_000)]
        for i in range(0, len(ids), 5000):
            backend.mark_items(run.id, [ItemMark("g", x, True) for x in ids[i : i + 5000]])
        done, failed = backend.item_marks(run.id, "g")
        assert done == set(ids) and failed == {}

    def test_runs_through_the_manager(self, any_mgr: Mgr) -> None:
        with any_mgr.run("job", batch_size=3) as run:
            stage = run.stage("load")
            stage.complete({"rows": 3})
            for item in run.items("g", ["a", "b", "c", "d"]):
                if item.id == "c":
                    item.fail(RuntimeError("bad"))
                else:
                    item.done({"id": item.id})
        assert run.status is RunStatus.FAILED
        with any_mgr.run("job") as again:
            assert again.id == run.id and again.stage("load").result == {"rows": 3}
            assert [i.id for i in again.items("g", ["a", "b", "c", "d"])] == ["c"]
        assert again.results("g") == {"a": {"id": "a"}, "b": {"id": "b"}, "d": {"id": "d"}}

    # -- sync (ckptlite.sync drives these; bytes only) ------------------------------

    def test_import_records_keeps_identity_and_moves_the_mark(
        self, any_mgr: Mgr, backend: Backend
    ) -> None:
        src = ckptlite.open("memory://")
        root = src.save("p", {"a": _big(9)}, level=Level.PIPELINE)
        kid = src.save("p", "kid", parent=root, metadata={"k": [1]}, progress=(1, 2))
        src.backend.set_status(kid.id, Status.ARCHIVED)
        recs = src.backend.records_after(0, 10)
        assert [r.checkpoint.id for r in recs] == [root.id, kid.id]
        assert backend.sync_mark("src") == 0
        with pytest.raises(MissingChunksError):
            backend.import_records(recs, "src", 2)
        assert backend.sync_mark("src") == 0 and not backend.has_records([root.id])
        with pytest.raises(InvalidInputError):
            backend.import_records(recs[1:], "src", 2)  # the parent is missing
        backend.write_chunks([src.backend.read_chunk(d) for d in recs[0].digests])
        own = any_mgr.save("q", "own")
        assert backend.import_records(recs, "src", 2) == 2
        assert backend.import_records(recs, "src", 1) == 0  # nothing twice; mark never goes back
        assert backend.sync_mark("src") == 2
        got = backend.get(kid.id)
        assert got.seq > own.seq and got.replace(seq=0) == src.get(kid.id).replace(seq=0)
        assert np.array_equal(any_mgr.load(root.id)["a"], _big(9))
        after = backend.records_after(own.seq, 10)
        assert [r.checkpoint.id for r in after] == [root.id, kid.id]
        assert backend.records_after(0, 10, process_id="q")[0].checkpoint.id == own.id
        assert backend.store_id() != src.backend.store_id()

    def test_a_mark_names_the_checkpoint_at_its_seq_and_can_be_reset(
        self, backend: Backend
    ) -> None:
        def mark() -> tuple[int, str | None]:
            return backend.sync_mark("src"), backend.sync_mark_id("src")

        assert mark() == (0, None)
        backend.import_records([], "src", 5, "five")
        assert mark() == (5, "five")
        backend.import_records([], "src", 3, "three")  # never back: the id stays with its seq
        assert mark() == (5, "five")
        backend.import_records([], "src", 7, "seven")
        assert mark() == (7, "seven")
        backend.import_records([], "src", 2, "two", reset=True)  # a copy's other history
        assert mark() == (2, "two")
        backend.import_records([], "src", 0, None, reset=True)
        assert mark() == (0, None)

    def test_ledger_export_and_import(self, any_mgr: Mgr, backend: Backend) -> None:
        src = ckptlite.open("memory://").backend
        now = datetime.now(UTC)
        run = src.create_run(RunRecord("run_x", "job", RunStatus.RUNNING, now, now))
        src.mark_items(
            run.id, [ItemMark("g", "a", True, b"A"), ItemMark("g", "b", False, None, "e")]
        )
        clock, runs, items = src.export_ledger(0)
        assert [r.id for r in runs] == [run.id] and len(items) == 2
        assert backend.import_ledger(runs, items, "src", clock) == 3
        assert backend.import_ledger(runs, items, "src", clock) == 0
        assert backend.sync_mark("src") == clock
        assert backend.item_marks(run.id, "g") == ({"a"}, {"b": 1})
        assert {e.item_id: e.state for e in backend.list_items(run.id)} == {"a": b"A", "b": None}
        src.mark_items(run.id, [ItemMark("g", "b", False, None, "e2")])
        clock2, runs2, items2 = src.export_ledger(clock)
        assert runs2 == [src.get_run(run.id)] and [i.item_id for i in items2] == ["b"]
        backend.import_ledger(runs2, items2, "src", clock2)
        assert backend.item_marks(run.id, "g") == ({"a"}, {"b": 2})
        ghost = dataclasses.replace(items2[0], run_id="nope")
        with pytest.raises(ckptlite.RunNotFoundError):
            backend.import_ledger([], [ghost], "src", clock2 + 1)
        assert backend.sync_mark("src") == clock2  # nothing moved
