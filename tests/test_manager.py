"""The manager on a real local store: round trips, dedup, corruption, bad input."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from damage import chunk_span, flip_bit, stored_files

import ckptlite
from ckptlite import Level, Status
from ckptlite.backends.base import Backend
from ckptlite.errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
    PickleNotAllowedError,
    UnsupportedTypeError,
)
from ckptlite.types import RunStatus, StoredRecord


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def chunk_files(store: Path) -> list[Path]:
    return stored_files(store)


def test_64mib_array_and_nested_dict_round_trip_and_dedup(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.random((4096, 4096), dtype=np.float32)  # 64 MiB
    nested = {
        "when": datetime(2026, 11, 26, 14, 2, tzinfo=UTC),
        "blob": bytes(range(256)) * 10,
        "pair": (1, (2.5, "three")),
        "deep": {"list": [None, True, {"x": b"\x00"}]},
    }
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        first = mgr.save("geo", {"raster": arr, "nested": nested})
        back = mgr.load(first.id)
        assert back["raster"].dtype == arr.dtype and back["raster"].tobytes() == arr.tobytes()
        assert back["nested"] == nested and isinstance(back["nested"]["pair"][1], tuple)

        changed = arr.copy()
        rows = rng.choice(4096, size=41, replace=False)  # 1% of the rows
        changed[rows] += 1.0
        second = mgr.save("geo", {"raster": changed, "nested": nested})
        assert first.stored_size >= arr.nbytes * 0.8  # random floats barely compress
        # 41 scattered rows touch at most 41 of the 64 one-MiB chunks; contiguous rows
        # would touch one. Assert the design bound on the contiguous case below.
        assert second.stored_size <= 41 * (1 << 20) + 4096

        block = arr.copy()
        block[2000:2041] += 1.0  # 1% of the rows, contiguous, inside one 1 MiB chunk
        third = mgr.save("geo", {"raster": block, "nested": nested})
        assert third.stored_size <= 0.03 * first.stored_size
        straddle = arr.copy()
        straddle[1000:1041] += 1.0  # crosses a chunk boundary: two chunks, ~3.1%
        fourth = mgr.save("geo", {"raster": straddle, "nested": nested})
        assert fourth.stored_size <= 2 * (1 << 20) + 4096
        assert mgr.load(third.id)["raster"].tobytes() == block.tobytes()


def test_bit_flip_in_a_file_chunk_is_caught_and_latest_falls_back(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        good = mgr.save("p", {"a": np.random.default_rng(1).random(300_000)})
        bad = mgr.save("p", {"a": np.random.default_rng(2).random(300_000)})
        victim, at, _ = chunk_span(store, mgr.backend.get_record(bad.id).digests[0])
        flip_bit(victim, at + 1234)  # appended to the same pack as good's chunks

        with pytest.raises(CorruptCheckpointError) as e:
            mgr.load(bad.id)
        assert bad.id in str(e.value) and e.value.hint
        assert mgr.get(bad.id).status is Status.CORRUPTED
        assert mgr.latest("p").id == good.id  # type: ignore[union-attr]
        cp, state = mgr.load_latest("p")  # type: ignore[misc]
        assert cp.id == good.id and np.array_equal(
            state["a"], np.random.default_rng(1).random(300_000)
        )

        report = mgr.verify(full=True)
        assert report.corrupted == (bad.id,) and not report.ok


def test_load_latest_falls_back_without_a_prior_load(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        # Noise: a shuffled arange compresses to a chunk small enough to live in SQLite.
        ints = np.random.default_rng(0).integers(0, 1 << 62, 200_000)
        good = mgr.save("p", {"a": ints})
        bad = mgr.save("p", {"a": ints * 3})
        for d in mgr.backend.get_record(bad.id).digests:
            f, at, _ = chunk_span(store, d)
            flip_bit(f, at + 10)
        assert mgr.latest("p").id == bad.id  # type: ignore[union-attr]  # not yet detected
        cp, state = mgr.load_latest("p")  # type: ignore[misc]
        assert cp.id == good.id and np.array_equal(state["a"], ints)
        assert mgr.get(bad.id).status is Status.CORRUPTED


def test_load_latest_of_a_checkpoint_deleted_while_it_loads_flags_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deleted and collected mid-load, its chunks read as missing: that is not damage
    # (load says "not found"), so no chunk is flagged (a flag makes the next save of
    # the same bytes store them again) and load_latest falls back to the one before.
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        older = mgr.save("p", os.urandom(300_000))
        newer = mgr.save("p", os.urandom(300_000))
        flagged: list[tuple[str, ...]] = []
        monkeypatch.setattr(mgr.backend, "mark_bad_chunks", lambda d, **k: flagged.append(d))
        read = mgr.engine.read

        def read_while_deleted(record: StoredRecord) -> object:
            if record.checkpoint.id == newer.id:
                mgr.delete(newer.id)
                mgr.gc()
            return read(record)

        monkeypatch.setattr(mgr.engine, "read", read_while_deleted)
        cp, _state = mgr.load_latest("p")  # type: ignore[misc]
        assert cp.id == older.id
        assert flagged == [], "chunks of a deleted checkpoint were flagged as damaged"
        assert mgr.get(older.id).status is Status.VALID


def test_bit_flip_in_an_inline_chunk_is_caught(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none", chunk_size=16 * 1024) as mgr:
        good = mgr.save("p", {"b": os.urandom(100_000)})
        bad = mgr.save("p", {"b": os.urandom(100_000)})
        assert not chunk_files(store)  # 16 KiB chunks all live inside SQLite
        digest = mgr.backend.get_record(bad.id).digests[0]
        conn = mgr.backend.db.connection()  # type: ignore[attr-defined]
        data = bytearray(
            conn.execute("SELECT data FROM chunks WHERE digest=?", (digest,)).fetchone()[0]
        )
        data[7] ^= 0x10
        conn.execute("UPDATE chunks SET data=? WHERE digest=?", (bytes(data), digest))
        with pytest.raises(CorruptCheckpointError):
            mgr.load(bad.id)
        assert mgr.load_latest("p")[0].id == good.id  # type: ignore[index]
        assert mgr.verify(full=True).corrupted == (bad.id,)


def test_verify_full_names_only_the_damaged_checkpoint_and_heals_after_repair(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        cps = [
            # Noise, so that the chunk lives in a file (a shuffled ramp fits in SQLite)
            mgr.save("p", {"a": np.random.default_rng(i).random(300_000)})
            for i in range(4)
        ]
        target = cps[2]
        digest = mgr.backend.get_record(target.id).digests[0]
        victim, offset, _ = chunk_span(store, digest)
        original = victim.read_bytes()
        flip_bit(victim, offset + 99)
        assert mgr.verify().ok  # the cheap check sees files, not bytes
        report = mgr.verify(full=True)
        assert report.corrupted == (target.id,)
        victim.write_bytes(original)
        assert mgr.verify(full=True).ok
        assert mgr.get(target.id).status is Status.VALID


def test_unsupported_type_leaves_the_store_unchanged(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", {"a": np.arange(100_000)})
        snap = tree_snapshot(store)
        with pytest.raises(UnsupportedTypeError):
            mgr.save("p", {"big": np.arange(300_000), "bad": {1, range(2)}})
        assert tree_snapshot(store) == snap
        assert len(mgr.list()) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"process_id": ""},
        {"level": "phase"},
        {"metadata": {"x": {1, 2}}},
        {"metadata": {"nan": float("nan")}},
        {"progress": (1, "2")},
        {"parent": "chk_step_20260101T000000.000000Z_" + "0" * 32},
    ],
)
def test_bad_arguments_are_typed_and_change_nothing(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", 1)
        snap = tree_snapshot(store)
        args = {"process_id": "p", **kwargs}
        with pytest.raises(InvalidInputError) as e:
            mgr.save(args.pop("process_id"), {"a": np.arange(50_000)}, **args)  # type: ignore[arg-type]
        assert e.value.hint
        assert len(mgr.list()) == 1
        mgr.gc()
        assert tree_snapshot(store).keys() == snap.keys()


def test_pickle_needs_opt_in_to_save_and_to_load(tmp_path: Path) -> None:
    store = tmp_path / "s"
    value = {"c": Fraction(1, 3)}
    with ckptlite.open(store, durability="none") as mgr, pytest.raises(UnsupportedTypeError):
        mgr.save("p", value)
    with ckptlite.open(store, durability="none", allow_pickle=True) as mgr:
        cp = mgr.save("p", value)
        assert mgr.load(cp.id) == value
    with ckptlite.open(store, durability="none") as mgr:
        with pytest.raises(PickleNotAllowedError):
            mgr.load(cp.id)
        assert mgr.get(cp.id).status is Status.VALID  # not corruption


def test_open_resolves_env_and_platformdirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CKPTLITE_URL", raising=False)
    monkeypatch.delenv("CKPTLITE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with ckptlite.open() as mgr:
        assert Path(mgr.url) == tmp_path / "xdg" / "ckptlite"
        assert (tmp_path / "xdg" / "ckptlite" / "ckptlite.db").exists()
    monkeypatch.setenv("CKPTLITE_HOME", str(tmp_path / "home"))
    with ckptlite.open() as mgr:
        assert Path(mgr.url) == tmp_path / "home"
    monkeypatch.setenv("CKPTLITE_URL", "memory://")
    with ckptlite.open() as mgr:
        assert mgr.url == "memory://"


def test_get_checkpoint_manager_is_a_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLITE_URL", "memory://")
    import ckptlite.manager as m

    monkeypatch.setattr(m, "_default", None)
    a = ckptlite.get_checkpoint_manager()
    assert a is ckptlite.get_checkpoint_manager()
    a.close()
    assert ckptlite.get_checkpoint_manager() is not a


@pytest.mark.parametrize(
    "kwargs", [{"durability": "maybe"}, {"chunk_size": 10}, {"url": "s3://bucket/x"}]
)
def test_bad_open_options_raise_config_error(tmp_path: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"url": tmp_path / "s", **kwargs}
    with pytest.raises(ConfigError):
        ckptlite.open(args.pop("url"), **args)  # type: ignore[arg-type]


def test_closed_manager_refuses_work(tmp_path: Path) -> None:
    mgr = ckptlite.open(tmp_path / "s")
    mgr.close()
    with pytest.raises(ConfigError):
        mgr.save("p", {"a": np.arange(100_000)})


def test_levels_accept_strings(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        cp = mgr.save("p", 1, level="stage", name="resample")
        assert cp.level is Level.STAGE
        assert mgr.latest("p", level="stage", name="resample") == cp


Mgr = ckptlite.CheckpointManager


def _big(seed: int = 0, n: int = 300_000) -> np.ndarray:
    return np.random.default_rng(seed).random(n).astype("f4")  # ~1.2 MB: many 64 KiB chunks


class TestEveryBackend:
    """The manager on each backend (``any_mgr``): what ckptlite.testing checks from below."""

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

    def test_dedup_stores_identical_chunks_once(self, any_mgr: Mgr) -> None:
        arr = _big(5)
        first = any_mgr.save("p", {"a": arr})
        second = any_mgr.save("p", {"a": arr})
        assert first.stored_size > arr.nbytes // 2
        assert second.stored_size < 1024  # only the record's own payload is new

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

    def test_progress_and_metadata_round_trip(self, any_mgr: Mgr) -> None:
        meta = {"ünïcode": "✓", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
        cp = any_mgr.save("p", None, metadata=meta, progress=(37, 1200))
        got = any_mgr.get(cp.id)
        assert got.metadata == {**meta, "ckptlite.slot_index": 1} and got.progress == (37, 1200)

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
