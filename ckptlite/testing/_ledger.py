"""Runs, the work-item ledger and sync: the rest of the backend contract, tested on the backend."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest

from ..backends.base import Backend
from ..backends.memory import MemoryBackend
from ..errors import InvalidInputError, MissingChunksError, RunNotFoundError
from ..types import ItemMark, Level, RunRecord, RunStatus, Status, WorkerInfo
from ._helpers import big, load, save

__all__ = ["LedgerTests"]


class LedgerTests:
    """Runs, the work-item ledger and sync marks, at the byte level. Needs a ``backend`` fixture."""

    @staticmethod
    def _run(backend: Backend, process_id: str = "p", run_id: str = "run_1") -> RunRecord:
        now = datetime.now(UTC)
        return backend.create_run(RunRecord(run_id, process_id, RunStatus.RUNNING, now, now))

    def test_items_pending_and_claimed_come_from_the_registered_ids(self, backend: Backend) -> None:
        from .._items import item_status, list_items

        run = self._run(backend)
        holder, dead = (WorkerInfo(w, "h", 1, "n", 60.0) for w in ("holder", "dead"))
        backend.add_worker(run.id, holder)
        backend.add_worker(run.id, dead)
        ids = [f"t{i}" for i in range(10)] + ["t1", "x\x00y"]  # a duplicate, a NUL
        backend.register_group(
            run.id, "g", total=len(ids), seg_size=3, fingerprint="f", worker_id="holder", ids=ids
        )
        assert backend.claim_segments(run.id, "g", "holder", 2, 60.0) == [(0, False), (1, False)]
        assert backend.claim_segments(run.id, "g", "dead", 1, 0.001) == [(2, False)]
        time.sleep(0.05)  # the dead worker's lease is over: its batch counts as pending
        backend.mark_items(
            run.id, [ItemMark("g", "t0", True, None, None), ItemMark("g", "t7", False, None, "x")]
        )

        def listed(status: str | None, group: str | None = None) -> list[str]:
            return [e.item_id for e in list_items(backend, run.id, group, status)]

        assert listed("claimed") == ["t1", "t2", "t3", "t4", "t5"]
        assert listed("pending") == ["t6", "t8", "t9", "x\x00y"]
        assert listed("done") == ["t0"] and listed("failed") == ["t7"]
        assert listed("pending", "other") == [] and listed("claimed", "g") == listed("claimed")
        assert {item_status(e) for e in list_items(backend, run.id, None, "pending")} == {"pending"}
        assert [item_status(e) for e in list_items(backend, run.id, None, "claimed")] == [
            "claimed"
        ] * 5
        backend.release_segments(run.id, "holder")  # a worker that leaves frees its batches
        assert listed("claimed") == [] and len(listed("pending")) == 9

    def test_a_batch_held_before_is_claimed_as_taken_over(self, backend: Backend) -> None:
        # Its holder may have committed some of its items, however the batch came back
        # free (let go, reaped, left, lease over): the claimer must ask the ledger.
        run = self._run(backend)
        for w in ("a", "b"):
            backend.add_worker(run.id, WorkerInfo(w, "h", 1, "n", 60.0))
        backend.register_group(run.id, "g", total=8, seg_size=2, fingerprint="f", worker_id="a")

        def claim(worker: str, count: int) -> list[tuple[int, bool]]:
            return backend.claim_segments(run.id, "g", worker, count, 60.0)

        assert claim("a", 4) == [(s, False) for s in range(4)]
        backend.release_segments(run.id, "a", "g", [0])
        got = claim("b", 1)
        assert got == [(0, True)], f"a batch let go is claimed as never held: {got}"
        backend.reap_workers(run.id, ["a"])
        got = claim("b", 1)
        assert got == [(1, True)], f"a reaped worker's batch is claimed as never held: {got}"
        backend.release_segments(run.id, "b", "g", [0, 1])
        assert claim("a", 2) == [(0, True), (1, True)]
        backend.leave_run(run.id, "a", None)
        got = claim("b", 4)
        assert got == [(s, True) for s in range(4)], f"a left worker's batches: {got}"

    def test_items_pending_of_a_group_without_ids_is_an_error(self, backend: Backend) -> None:
        from .._items import list_items

        run = self._run(backend)
        backend.add_worker(run.id, WorkerInfo("w", "h", 1, "n", 60.0))
        # A group registered by a ckptlite that kept only a fingerprint of the ids.
        backend.register_group(run.id, "g", total=4, seg_size=2, fingerprint="f", worker_id="w")
        for status in ("pending", "claimed"):
            with pytest.raises(InvalidInputError) as err:
                list_items(backend, run.id, None, status)
            assert "older ckptlite" in err.value.message and "--status done" in (
                err.value.hint or ""
            )
        assert list_items(backend, run.id, None, "done") == []

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

    def test_marks_among_reads_only_the_ids_asked(self, backend: Backend) -> None:
        run = self._run(backend)
        backend.mark_items(
            run.id,
            [
                ItemMark("g", "a", True),
                ItemMark("g", "b", False, None, "e1"),
                ItemMark("g", "b", False, None, "e2"),
                ItemMark("g", "c", False, None, "e"),
                ItemMark("h", "a", False, None, "other group"),
            ],
        )
        assert backend.marks_among(run.id, "g", ["a", "b", "x"]) == ({"a"}, {"b": 2})
        assert backend.marks_among(run.id, "h", ["a", "b"]) == (set(), {"a": 1})
        assert backend.marks_among(run.id, "g", []) == (set(), {})
        assert backend.marks_among("no-run", "g", ["a"]) == (set(), {})
        many = [f"n{i}" for i in range(1200)] + ["c"]  # more ids than one statement takes
        assert backend.marks_among(run.id, "g", many) == (set(), {"c": 1})

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

    # -- sync (ckptlite.sync drives these; bytes only) ------------------------------

    def test_import_records_keeps_identity_and_moves_the_mark(self, backend: Backend) -> None:
        src = MemoryBackend(hash_name=backend.hash_name)
        root = save(src, {"a": big(9)}, level=Level.PIPELINE)
        kid = save(src, "kid", parent=root.id, metadata={"k": [1]}, progress=(1, 2))
        src.set_status(kid.id, Status.ARCHIVED)
        recs = src.records_after(0, 10)
        assert [r.checkpoint.id for r in recs] == [root.id, kid.id]
        assert backend.sync_mark("src") == 0
        with pytest.raises(MissingChunksError):
            backend.import_records(recs, "src", 2)
        assert backend.sync_mark("src") == 0 and not backend.has_records([root.id])
        with pytest.raises(InvalidInputError):
            backend.import_records(recs[1:], "src", 2)  # the parent is missing
        backend.write_chunks([src.read_chunk(d) for d in recs[0].digests])
        own = save(backend, "own", process_id="q")
        assert backend.import_records(recs, "src", 2) == 2
        assert backend.import_records(recs, "src", 1) == 0  # nothing twice; mark never goes back
        assert backend.sync_mark("src") == 2
        got = backend.get(kid.id)
        assert got.seq > own.seq and got.replace(seq=0) == src.get(kid.id).replace(seq=0)
        assert load(backend, root.id) == {"a": big(9)}
        after = backend.records_after(own.seq, 10)
        assert [r.checkpoint.id for r in after] == [root.id, kid.id]
        assert backend.records_after(0, 10, process_id="q")[0].checkpoint.id == own.id
        assert backend.store_id() != src.store_id()

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

    def test_ledger_export_and_import(self, backend: Backend) -> None:
        src = MemoryBackend()
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
        with pytest.raises(RunNotFoundError):
            backend.import_ledger([], [ghost], "src", clock2 + 1)
        assert backend.sync_mark("src") == clock2  # nothing moved
