"""Records and chunks: the part of the contract every backend shares, tested on the backend."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .. import chunking
from ..backends.base import Backend, ListQuery
from ..errors import (
    CheckpointNotFoundError,
    ConfigError,
    InvalidInputError,
    MissingChunksError,
)
from ..ids import generate_checkpoint_id
from ..types import Level, Status, StoredChunk, StoredRecord
from ._helpers import big, load, save

__all__ = ["BackendTests"]


def _raw_chunk(data: bytes) -> StoredChunk:
    return StoredChunk(hashlib.sha256(data).hexdigest(), len(data), 0, data)


class BackendTests:
    """Records and chunks, every optional capability included. Needs a ``backend`` fixture."""

    # -- records ------------------------------------------------------------------

    def test_a_record_round_trips(self, backend: Backend) -> None:
        state = {"a": big(), "meta": (1, "x", None), "when": datetime(2026, 1, 1, tzinfo=UTC)}
        cp = save(backend, state, level=Level.STAGE, name="s1", metadata={"crs": "EPSG:4326"})
        assert cp.seq > 0
        got = backend.get(cp.id)
        assert got == cp and got.level is Level.STAGE and got.created_at.tzinfo is not None
        rec = backend.get_record(cp.id)
        assert (
            rec.checkpoint == cp
            and rec.digests
            and set(rec.digests) <= backend.has_chunks(rec.digests)
        )
        assert load(backend, cp.id) == state

    def test_seq_is_monotonic_and_latest_uses_it(self, backend: Backend) -> None:
        cps = [save(backend, i, name="slot") for i in range(5)]
        assert [c.seq for c in cps] == sorted(c.seq for c in cps) and len({c.seq for c in cps}) == 5
        latest = backend.latest("p", None, "slot")
        assert latest is not None and latest.id == cps[-1].id

    def test_latest_skips_unusable_statuses(self, backend: Backend) -> None:
        good = save(backend, "good", name="n")
        for status in (Status.CORRUPTED, Status.ARCHIVED, Status.CREATED):
            bad = save(backend, "bad", name="n")
            backend.set_status(bad.id, status)
            latest = backend.latest("p", None, "n")
            assert latest is not None and latest.id == good.id
        assert backend.latest("nobody", None, None) is None

    def test_latest_filters_level_and_name(self, backend: Backend) -> None:
        a = save(backend, 1, level=Level.STAGE, name="x")
        b = save(backend, 2, level=Level.STEP, name="x")
        c = save(backend, 3, level=Level.STEP, name="y")
        assert backend.latest("p", Level.STAGE, None).id == a.id  # type: ignore[union-attr]
        assert backend.latest("p", Level.STEP, "x").id == b.id  # type: ignore[union-attr]
        assert backend.latest("p", None, None).id == c.id  # type: ignore[union-attr]

    def test_list_filters_newest_first(self, backend: Backend) -> None:
        root = save(backend, 0, level=Level.PIPELINE)
        kids = [save(backend, i, parent=root.id, name=f"t{i}") for i in range(3)]
        save(backend, 9, process_id="q")
        ids = [k.id for k in reversed(kids)]

        def listed(**q: object) -> list[str]:
            return [c.id for c in backend.list(ListQuery(**q))]  # type: ignore[arg-type]

        assert listed(process_id="p") == [*ids, root.id]
        assert listed(parent=root.id) == ids
        assert listed(process_id="p", limit=2) == ids[:2]
        assert listed(name="t1") == [kids[1].id]
        assert len(listed(level=Level.STEP)) == 4
        assert listed(since=datetime.now(UTC) + timedelta(days=1)) == []
        assert len(listed(status=Status.VALID)) == 5
        assert listed(after_seq=kids[0].seq, ascending=True) == [kids[1].id, kids[2].id] + [
            c.id for c in backend.list(ListQuery(process_id="q"))
        ]

    def test_list_filters_metadata_and_tags(self, backend: Backend) -> None:
        tags = "ckptlite.tags"
        a = save(backend, 1, metadata={"crs": "EPSG:4326", "zoom": 3, "ok": True, tags: ["a", "b"]})
        b = save(backend, 2, metadata={"crs": "EPSG:3857", "zoom": 3.0, "ok": False, tags: ["b"]})
        c = save(backend, 3, metadata={"zoom": "3", "ok": 1, "none": None})
        save(backend, 4, process_id="q", metadata={"zoom": 3})

        def listed(**q: object) -> list[str]:
            return [x.id for x in backend.list(ListQuery(process_id="p", **q))]  # type: ignore[arg-type]

        assert listed(metadata=(("crs", "EPSG:4326"),)) == [a.id]
        assert listed(metadata=(("zoom", 3),)) == [b.id, a.id]  # numbers as numbers
        assert listed(metadata=(("zoom", "3"),)) == [c.id]  # a string is another value
        assert listed(metadata=(("ok", True),)) == [a.id]  # True is not 1
        assert listed(metadata=(("ok", 1),)) == [c.id]
        assert listed(metadata=(("none", None),)) == [c.id]
        assert listed(metadata=(("zoom", 3), ("crs", "EPSG:3857"))) == [b.id]
        assert listed(metadata=(("missing", 1),)) == []
        assert listed(tags=("b",)) == [b.id, a.id]
        assert listed(tags=("a", "b")) == [a.id]
        assert listed(tags=("b",), limit=1) == [b.id]  # the limit applies after the filter
        assert listed(tags=("z",)) == []

    def test_list_filters_lists_and_objects_as_json_values(self, backend: Backend) -> None:
        # One meaning on every backend (PostgreSQL's jsonb equality): numbers by value at
        # any depth (1 is 1.0), objects whatever their key order, lists in order,
        # True is not 1 nor "true". Not the JSON text, which SQLite stores.
        a = save(
            backend, 1, metadata={"bands": [1, 2, 3], "grid": {"x": 1, "y": 2}, "n": [{"k": True}]}
        )
        b = save(
            backend,
            2,
            metadata={"bands": [1.0, 2, 3.0], "grid": {"y": 2, "x": 1.0}, "n": [{"k": 1}]},
        )
        c = save(backend, 3, metadata={"bands": [3, 2, 1], "grid": {"x": 1}, "n": [{"k": "true"}]})
        d = save(backend, 4, metadata={"bands": [1, 2, 3, 4], "grid": {"x": 1, "y": 2, "z": None}})

        def listed(key: str, value: object) -> list[str]:
            return [x.id for x in backend.list(ListQuery(process_id="p", metadata=((key, value),)))]

        assert listed("bands", [1, 2, 3]) == [b.id, a.id]
        assert listed("bands", [1.0, 2.0, 3.0]) == [b.id, a.id]
        assert listed("bands", [3, 2, 1]) == [c.id]
        assert listed("bands", [1, 2, 3, 4]) == [d.id]
        assert listed("bands", ["1", "2", "3"]) == []
        assert listed("grid", {"y": 2, "x": 1}) == [b.id, a.id]
        assert listed("grid", {"x": 1.0}) == [c.id]
        assert listed("grid", {"x": 1, "y": 2, "z": None}) == [d.id]
        assert listed("n", [{"k": True}]) == [a.id]
        assert listed("n", [{"k": 1}]) == [b.id]
        assert listed("n", [{"k": "true"}]) == [c.id]
        assert listed("grid", [1, 2]) == [] and listed("bands", {"x": 1}) == []

    def test_delete_cascades_and_gc_reclaims(self, backend: Backend) -> None:
        root = save(backend, {"a": big(1)}, level=Level.PIPELINE)
        child = save(backend, {"a": big(2)}, parent=root.id)
        grandchild = save(backend, 3, parent=child.id, level=Level.SUBSTEP)
        other = save(backend, {"a": big(3)})
        assert set(backend.delete(root.id)) == {root.id, child.id, grandchild.id}
        assert backend.has_records([child.id, other.id]) == {other.id}
        with pytest.raises(CheckpointNotFoundError):
            backend.get(grandchild.id)
        with pytest.raises(CheckpointNotFoundError):
            backend.delete(root.id)
        dry = backend.gc(dry_run=True)
        assert dry.chunks
        real = backend.gc()
        assert real.chunks == dry.chunks
        # A dry run predicts exactly what gc frees: bytes_reclaimed is the drop in disk
        # use (0 while a local store's open pack still holds the dead bytes).
        assert (real.bytes_reclaimed, real.inline_bytes) == (dry.bytes_reclaimed, dry.inline_bytes)
        assert backend.gc(dry_run=True).chunks == ()
        assert load(backend, other.id) == {"a": big(3)}
        check = backend.check()
        assert check.missing == {} and check.orphan_chunks == ()

    def test_set_status_and_unknown_ids(self, backend: Backend) -> None:
        cp = save(backend, 1)
        backend.set_status(cp.id, Status.ARCHIVED)
        assert backend.get(cp.id).status is Status.ARCHIVED
        with pytest.raises(CheckpointNotFoundError):
            backend.set_status("missing", Status.VALID)
        with pytest.raises(CheckpointNotFoundError):
            backend.get_record("missing")
        assert backend.has_records([cp.id, "missing"]) == {cp.id}

    def test_metadata_and_progress_round_trip(self, backend: Backend) -> None:
        meta = {"ünïcode": "✓", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
        cp = save(backend, None, metadata=meta, progress=(37, 1200))
        got = backend.get(cp.id)
        assert got.metadata == meta and got.progress == (37, 1200)

    def test_stats_count_records_and_bytes(self, backend: Backend) -> None:
        save(backend, {"a": big(7)})
        save(backend, {"a": big(7)})
        s = backend.stats()
        assert s["checkpoints"] == 2 and s["chunks"] > 1
        assert s["logical_bytes"] > s["stored_bytes"]  # the second save stored no chunk
        assert s["by_status"] == {"valid": 2}

    # -- commit ---------------------------------------------------------------------

    def test_commit_refuses_missing_chunks(self, backend: Backend) -> None:
        rec = backend.get_record(save(backend, 1).id)
        ghost = "ab" * 32
        fake = StoredRecord(
            rec.checkpoint.replace(id=generate_checkpoint_id()), rec.payload, rec.manifest, (ghost,)
        )
        with pytest.raises(MissingChunksError) as e:
            backend.commit(fake)
        assert e.value.digests == (ghost,)
        assert not backend.has_records([fake.checkpoint.id])

    def test_commit_refuses_duplicate_id_and_missing_parent(self, backend: Backend) -> None:
        rec = backend.get_record(save(backend, 1).id)
        with pytest.raises(InvalidInputError):
            backend.commit(rec)
        orphan = StoredRecord(
            rec.checkpoint.replace(id=generate_checkpoint_id(), parent_id="nope"),
            rec.payload,
            rec.manifest,
            rec.digests,
        )
        with pytest.raises(InvalidInputError):
            backend.commit(orphan)
        assert len(backend.list(ListQuery())) == 1

    def test_staged_chunks_are_committed_with_the_record(self, backend: Backend) -> None:
        cp = save(backend, {"a": big(11)})
        rec = backend.get_record(cp.id)
        chunks = [backend.read_chunk(d) for d in rec.digests]
        chunks = [StoredChunk(c.digest, c.size, c.codec, bytes(c.data)) for c in chunks]
        backend.delete(cp.id)
        backend.gc()
        assert backend.has_chunks(rec.digests) == set()

        def copy(*extra: str) -> StoredRecord:
            new = rec.checkpoint.replace(id=generate_checkpoint_id())
            return StoredRecord(new, rec.payload, rec.manifest, rec.digests + extra)

        ghost = copy("ab" * 32)  # refused whole: the staged chunks do not make it valid
        with pytest.raises(MissingChunksError) as e:
            backend.commit(ghost, [backend.stage_chunks(chunks)])
        assert e.value.digests == ("ab" * 32,) and not backend.has_records([ghost.checkpoint.id])
        good = copy()
        assert backend.commit(good, [backend.stage_chunks(chunks)]).seq > 0
        assert backend.has_chunks(rec.digests) == set(rec.digests)
        assert load(backend, good.checkpoint.id) == {"a": big(11)}

    def test_the_store_digest_addresses_chunks_and_checksums_records(
        self, backend: Backend
    ) -> None:
        cp = save(backend, {"a": big(3)})
        rec = backend.get_record(cp.id)
        algo = backend.hash_name
        for d in rec.digests:
            assert chunking.digest_of(chunking.raw_bytes(backend.read_chunk(d)), algo) == d
        assert cp.checksum == chunking.record_checksum(rec.payload, rec.manifest, algo)

    # -- chunks ---------------------------------------------------------------------

    def test_chunks_by_digest(self, backend: Backend) -> None:
        chunk = _raw_chunk(b"x" * 1000)
        assert backend.has_chunks([chunk.digest]) == set()
        backend.write_chunks([chunk])
        backend.write_chunks([chunk])  # idempotent
        assert backend.has_chunks([chunk.digest, "00" * 32]) == {chunk.digest}
        assert bytes(backend.read_chunk(chunk.digest).data) == chunk.data
        assert chunk.digest in set(backend.iter_chunk_digests())
        check = backend.check()
        assert check.orphan_chunks == (chunk.digest,)  # no record uses it
        assert backend.checkpoints_using([chunk.digest]) == set()

    def test_checkpoints_using_names_the_records_of_a_chunk(self, backend: Backend) -> None:
        a = save(backend, {"a": big(4)})
        b = save(backend, {"a": big(4)})  # the same chunks
        c = save(backend, {"a": big(5)})
        digest = backend.get_record(a.id).digests[0]
        assert backend.checkpoints_using([digest]) == {a.id, b.id}
        assert c.id not in backend.checkpoints_using(backend.get_record(a.id).digests)

    # -- optional capabilities (BaseBackend's defaults, or the backend's own) -------------

    def test_a_chunk_flagged_bad_is_stored_again_never_reused(self, backend: Backend) -> None:
        state = {"a": big(9)}
        rec = backend.get_record(save(backend, state).id)
        digests = set(rec.digests)
        flagged = set(rec.digests[1::3])
        backend.mark_bad_chunks(flagged)
        if backend.has_chunks(digests) == digests:
            return  # a backend without flags (the default): nothing more to hold it to
        assert backend.has_chunks(digests) == digests - flagged
        # A record using a flagged chunk is refused like one using a missing chunk.
        copy = rec.checkpoint.replace(id=generate_checkpoint_id())
        with pytest.raises(MissingChunksError):
            backend.commit(StoredRecord(copy, rec.payload, rec.manifest, rec.digests))
        again = save(backend, state)  # writes the flagged chunks again
        assert backend.has_chunks(digests) == digests
        assert load(backend, again.id) == state
        backend.mark_bad_chunks(flagged)
        backend.mark_bad_chunks([], replace=True)
        assert backend.has_chunks(digests) == digests  # ``replace`` clears the others

    def test_latest_record_is_latest_with_its_bytes(self, backend: Backend) -> None:
        assert backend.latest_record("p", None, None) is None
        save(backend, {"a": big(1)}, name="s")
        newest = save(backend, {"a": big(2)}, name="s")
        save(backend, "other slot", name="t")
        rec = backend.latest_record("p", None, "s")
        assert rec is not None and rec == backend.get_record(newest.id)
        backend.set_status(newest.id, Status.CORRUPTED)
        older = backend.latest_record("p", Level.STEP, "s")
        assert older is not None and older.checkpoint.id != newest.id
        assert older.checkpoint == backend.latest("p", Level.STEP, "s")

    def test_read_chunk_into_gives_the_chunk_to_restore_into_out(self, backend: Backend) -> None:
        rec = backend.get_record(save(backend, {"a": big(6)}).id)
        rows = backend.chunk_rows(rec.digests)
        assert set(rows) <= set(rec.digests)
        for digest in rec.digests[:4]:
            raw = chunking.raw_bytes(backend.read_chunk(digest))
            for row in (rows.get(digest), None):
                out = memoryview(bytearray(len(raw)))
                chunk = backend.read_chunk_into(digest, out, row)
                assert chunk.digest == digest and chunk.size == len(raw)
                chunking.restore_chunk_into(chunk, out, backend.hash_name)
                assert bytes(out) == raw

    def test_chunk_equals_never_says_yes_to_other_bytes(self, backend: Backend) -> None:
        rec = backend.get_record(save(backend, {"a": big(8)}).id)
        digest = rec.digests[0]
        raw = chunking.raw_bytes(backend.read_chunk(digest))
        other = bytearray(raw)
        other[len(other) // 2] ^= 1
        assert backend.chunk_equals(digest, memoryview(bytes(other))) is False
        assert backend.chunk_equals(digest, memoryview(raw[:-1])) is False
        assert backend.chunk_equals("ab" * 32, memoryview(raw)) is False
        assert backend.chunk_equals(digest, memoryview(raw)) in (True, False)  # may not know

    def test_backup_is_declared(self, backend: Backend, tmp_path: Path) -> None:
        save(backend, {"a": big(2)})
        dest = tmp_path / "backup"
        if not backend.supports_backup:
            with pytest.raises(ConfigError):
                backend.backup(dest, None)
            assert not dest.exists()
            return
        seen: list[tuple[int, int]] = []
        backend.backup(dest, lambda done, total: seen.append((done, total)))
        assert dest.is_dir() and any(dest.iterdir())
        assert all(0 <= done <= total for done, total in seen)
