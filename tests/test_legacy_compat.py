"""``ckptlite.compat``: the legacy call signatures and return shapes, call by call."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from legacy_builders import (
    CORE_FIELDS,
    LegacyCoreManager,
    ProcessingCheckpointSpec,
    ReferenceCoreLoader,
    new_uuid,
    reference_json,
    same,
    tile_checkpoint_bytes,
    write_pipeline_checkpoint,
)

import ckptlite
from ckptlite import Level, Status
from ckptlite.compat import (
    CheckpointCorruptedError,
    CheckpointMetadata,
    CoreCheckpointManager,
    DatabaseCheckpoints,
    PipelineCheckpointManager,
    ProcessingCheckpoint,
    ProcessorCheckpointMixin,
    TileCheckpointer,
    get_checkpoint_manager,
)
from ckptlite.legacy import migrate


def quiet(factory: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return factory(*args, **kwargs)


@pytest.fixture
def core(mgr: ckptlite.CheckpointManager) -> CoreCheckpointManager:
    return quiet(CoreCheckpointManager, mgr)  # type: ignore[no-any-return]


# -- the core manager ----------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which compat classes warned already in this process."""
    import ckptlite.compat._common as common

    monkeypatch.setattr(common, "_WARNED", set())


def test_each_class_warns_once_pointing_at_the_caller(
    mgr: ckptlite.CheckpointManager, fresh_warnings: None
) -> None:
    makers = [
        (CoreCheckpointManager, lambda: CoreCheckpointManager(mgr)),
        (TileCheckpointer, lambda: TileCheckpointer(mgr)),
        (DatabaseCheckpoints, lambda: DatabaseCheckpoints(mgr)),
        (PipelineCheckpointManager, lambda: PipelineCheckpointManager({}, store=mgr)),
    ]
    for cls, make in makers:
        with pytest.warns(DeprecationWarning, match=cls.__name__) as got:
            make()
        assert len(got) == 1 and got[0].filename == __file__  # the caller's line
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second object warns no more
            make()


def test_save_load_and_the_record(
    core: CoreCheckpointManager, mgr: ckptlite.CheckpointManager
) -> None:
    grid = np.arange(12.0).reshape(3, 4)
    path = core.save_checkpoint("run_1", {"grid": grid, "n": 3}, level="pipeline")
    assert isinstance(path, str) and path.endswith("run_1")
    core.save_checkpoint(
        "run_1/phase_a", {"v": [1, 2]}, level="phase", parent_id="run_1", compress=False
    )
    got = core.load_checkpoint("run_1")
    assert set(got) == {"grid", "n"} and same(got["grid"], grid) and got["n"] == 3
    info = core.get_checkpoint_info("run_1/phase_a")
    assert isinstance(info, CheckpointMetadata)
    assert set(info.to_dict()) == set(CORE_FIELDS)
    assert info.level == "phase" and info.parent_id == "run_1" and info.status == "created"
    assert info.data_files == ["run_1/phase_a/v.pkl"]
    assert info.compressed is False and info.compression_type is None
    assert info.file_size_bytes == info.size_bytes > 0
    assert abs(info.timestamp - time.time()) < 60
    assert core.get_checkpoint_info("nope") is None
    # Ordinary ckptlite checkpoints: listed, verified, parent linked.
    child = next(cp for cp in mgr.list() if cp.name == "run_1/phase_a")
    assert child.level == Level.STAGE and child.parent_id is not None
    assert mgr.get(child.parent_id).name == "run_1"
    assert mgr.verify(full=True).ok


def test_load_errors_are_value_errors(
    core: CoreCheckpointManager, mgr: ckptlite.CheckpointManager
) -> None:
    with pytest.raises(ValueError, match="not found"):
        core.load_checkpoint("missing")
    core.save_checkpoint("bad", {"x": 1})
    (cp,) = mgr.list()
    mgr.backend.set_status(cp.id, Status.CORRUPTED)
    with pytest.raises(CheckpointCorruptedError) as e:
        core.load_checkpoint("bad")
    assert isinstance(e.value, ValueError)
    assert core.validate_checkpoint("bad") is False
    assert core.get_checkpoint_info("bad").status == "corrupted"  # type: ignore[union-attr]
    assert core.validate_checkpoint("missing") is False


def test_validate_delete_and_resave(
    core: CoreCheckpointManager, mgr: ckptlite.CheckpointManager
) -> None:
    core.save_checkpoint("a", {"x": 1})
    assert core.validate_checkpoint("a") is True
    info = core.get_checkpoint_info("a")
    assert info is not None and info.status == "valid" and info.validation_checksum
    core.save_checkpoint("a", {"x": 2})  # the same id again replaces it
    assert core.load_checkpoint("a") == {"x": 2}
    assert [i.checkpoint_id for i in core.list_checkpoints()] == ["a"]
    assert core.delete_checkpoint("a") is True
    assert core.delete_checkpoint("a") is False
    with pytest.raises(ValueError):
        core.load_checkpoint("a")
    assert mgr.list() == []


def test_list_filters_and_order(core: CoreCheckpointManager) -> None:
    core.save_checkpoint("p1", {"x": 1}, level="pipeline")
    core.save_checkpoint("s1", {"x": 1}, level="step", parent_id="p1")
    core.save_checkpoint("s2", {"x": 1}, level="step", metadata={"processor_name": "Merger"})
    core.save_checkpoint("Merger_1", {"x": 1}, metadata={"processor": "Merger"})
    assert [i.checkpoint_id for i in core.list_checkpoints()] == ["Merger_1", "s2", "s1", "p1"]
    assert [i.checkpoint_id for i in core.list_checkpoints(level="step")] == [
        "Merger_1",
        "s2",
        "s1",
    ]
    assert [i.checkpoint_id for i in core.list_checkpoints(parent_id="p1")] == ["s1"]
    # As in the legacy code, the filter reads metadata['processor_name'], not 'processor'.
    assert [i.checkpoint_id for i in core.list_checkpoints(processor_name="Merger")] == ["s2"]
    core.validate_checkpoint("s1")
    assert [i.checkpoint_id for i in core.list_checkpoints(status="valid")] == ["s1"]


def test_cleanup_follows_the_retention_rule(core: CoreCheckpointManager) -> None:
    for i in range(5):
        core.save_checkpoint(f"c{i}", {"i": i})
    core.configure_retention(max_checkpoints=3)
    assert core.cleanup_old_checkpoints() == 2
    assert {i.checkpoint_id for i in core.list_checkpoints()} == {"c2", "c3", "c4"}
    core.stop()


def test_migrated_checkpoints_load_through_the_layer(
    tmp_path: Path, core: CoreCheckpointManager, mgr: ckptlite.CheckpointManager
) -> None:
    legacy = LegacyCoreManager(tmp_path / "legacy")
    legacy.save("phase_x", {"grid": np.ones((2, 2)), "meta": {"a": 1}}, level="phase")
    legacy.save(
        "Merger_5", {"processor_state": {"items_processed": 5}}, metadata={"processor": "Merger"}
    )
    assert migrate(tmp_path / "legacy", mgr, trust_pickle=True).ok
    ref = ReferenceCoreLoader(tmp_path / "legacy")
    for cid in ("phase_x", "Merger_5"):
        assert same(core.load_checkpoint(cid), ref.load(cid))
    info = core.get_checkpoint_info("phase_x")
    assert info is not None and info.level == "phase"
    assert info.data_files == ref.records()["phase_x"]["data_files"]


def test_get_checkpoint_manager_is_one_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPTLITE_URL", str(tmp_path / "default"))
    import ckptlite.compat.core as compat_core

    monkeypatch.setattr(compat_core, "_default", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a = get_checkpoint_manager()
    assert a is get_checkpoint_manager()
    a.save_checkpoint("x", {"v": 1})
    assert a.load_checkpoint("x") == {"v": 1}
    assert (tmp_path / "default").exists()
    a.store.close()


# -- the processor mixin ------------------------------------------------------------------


class Merger(ProcessorCheckpointMixin):
    def __init__(self, core: CoreCheckpointManager, enable: bool = True) -> None:
        self.config = {"memory_limit_mb": 1024}
        self.enable_checkpoints = enable
        self.checkpoint_interval = 10
        self._checkpoint_manager = core
        self._last_checkpoint_items = 0
        self._progress_node_id = None
        self._checkpoint_data = {"alignment_completed": True}


def test_processor_mixin(
    core: CoreCheckpointManager, mgr: ckptlite.CheckpointManager, fresh_warnings: None
) -> None:
    p = Merger(core)
    assert not p.should_checkpoint(9) and p.should_checkpoint(10)
    p._last_checkpoint_items = 40
    p._progress_node_id = "Merger_op_1"
    with pytest.warns(DeprecationWarning, match="Merger") as got:
        path = p.save_checkpoint(data={"processed_items": [1, 2]})
    assert got[0].filename == __file__
    cid = Path(path).name
    assert cid.startswith("Merger_") and cid.split("_")[1].isdigit()
    data = core.load_checkpoint(cid)
    assert data == {
        "processor_state": {
            "class": "Merger",
            "config": {"memory_limit_mb": 1024},
            "items_processed": 40,
            "progress_node_id": "Merger_op_1",
        },
        "processed_items": [1, 2],
        "alignment_completed": True,
    }
    fresh = Merger(core)
    assert fresh.load_checkpoint(cid) == data
    assert fresh._last_checkpoint_items == 40 and fresh._progress_node_id == "Merger_op_1"
    # The native API resumes the same checkpoint: its processor's STEP slot.
    got = mgr.load_latest("Merger", Level.STEP)
    assert got is not None and got[1] == data
    off = Merger(core, enable=False)
    assert off.save_checkpoint() == "" and off.load_checkpoint(cid) == {}
    assert not off.should_checkpoint(1000)


# -- the pipeline manager -------------------------------------------------------------------


class Summary:
    def to_dict(self) -> dict[str, Any]:
        return {"rows": 3}


def test_pipeline_manager(mgr: ckptlite.CheckpointManager) -> None:
    pm = quiet(PipelineCheckpointManager, {"pipeline.max_checkpoints_per_experiment": 2}, store=mgr)
    exp = new_uuid()
    ctx = SimpleNamespace(
        shared_data={"merged_dataset": object(), "summary": Summary(), "n": 3},
        metadata={"experiment_name": "e1", "pipeline_version": "1.0.0"},
        quality_metrics={"coverage": 0.9},
    )
    result = SimpleNamespace(success=True, metrics={"n": 3}, warnings=[])
    assert pm.load_latest(exp) is None and pm.load_checkpoint(exp, "merge") is None
    for stage in ("data_load", "resample", "merge"):
        pm.save_checkpoint(exp, stage, ctx, {stage: result})
        time.sleep(0.01)
    doc = pm.load_latest(exp)
    assert doc is not None and doc["stage"] == "merge" and doc["experiment_id"] == exp
    assert doc["shared_data"] == {
        "merged_dataset": "<object object>",
        "summary": {"rows": 3},
        "n": 3,
    }
    assert doc["stage_results"] == {"merge": {"success": True, "metrics": {"n": 3}, "warnings": []}}
    assert doc["completed_stages"] == [] and doc["progress"] == {
        "completed_stages": 0,
        "stages": {},
    }
    listed = pm.list_checkpoints(exp)
    assert sorted(c["stage"] for c in listed) == ["merge", "resample"]  # 2 kept
    assert all(set(c) == {"stage", "path", "timestamp", "size_kb"} for c in listed)
    assert pm.load_checkpoint(exp, "resample")["stage"] == "resample"  # type: ignore[index]
    latest = mgr.load_latest(exp, Level.STAGE)  # the native API sees the same document
    assert latest is not None and latest[1] == doc
    pm.cleanup_checkpoints(exp)
    assert pm.load_latest(exp) is None and mgr.list(process_id=exp) == []


def test_pipeline_save_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    ckptlite.open(str(store), create=True).close()
    ro = ckptlite.open(str(store), readonly=True)
    pm = quiet(PipelineCheckpointManager, None, store=ro)
    pm.save_checkpoint("e", "merge", SimpleNamespace(), {})
    assert "Failed to save checkpoint" in caplog.text
    ro.close()


def test_pipeline_reads_migrated_files(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    exp = new_uuid()
    a = write_pipeline_checkpoint(tmp_path / "legacy", exp, "resample", mtime=1_700_000_000)
    b = write_pipeline_checkpoint(tmp_path / "legacy", exp, "merge", mtime=1_700_000_100)
    assert migrate(tmp_path / "legacy", mgr).ok
    pm = quiet(PipelineCheckpointManager, None, store=mgr)
    assert pm.load_latest(exp) == reference_json(b)
    assert pm.load_checkpoint(exp, "resample") == reference_json(a)


# -- the tile processor -------------------------------------------------------------------


def test_tile_checkpoints_go_through_the_ledger(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    tiles = [f"tile_{r}_{c}" for r in range(4) for c in range(4)]
    t = quiet(TileCheckpointer, mgr)
    assert t._load_checkpoint() is None  # no file set: nothing, as before
    t.set_checkpoint_file(tmp_path / "era5_ckpt")
    assert t._load_checkpoint() is None
    cp = ProcessingCheckpoint(time.time(), tiles[:6], tiles[6:7], 16, {"max_retries": 3})
    assert cp.completion_percentage == pytest.approx(37.5)
    t._save_checkpoint(cp)
    back = t._load_checkpoint()
    assert back is not None and dataclasses.asdict(back) == dataclasses.asdict(
        dataclasses.replace(cp, completed_tiles=sorted(cp.completed_tiles))
    )
    # A resumed run saves only its own completions (the legacy quirk): the ledger keeps all.
    t.save(tiles[7:10], [], 9, {"max_retries": 3})
    again = t._load_checkpoint()
    assert again is not None and set(again.completed_tiles) == set(tiles[:6] + tiles[7:10])
    assert again.failed_tiles == [tiles[6]]
    # The native run API resumes the same run, skipping the completed tiles.
    with mgr.run("era5_ckpt") as run:
        todo = [item.id for item in run.items("tiles", tiles)]
    assert set(todo) == set(tiles) - set(again.completed_tiles)
    t.clear()
    assert t._load_checkpoint() is None


def test_tile_layer_reads_a_migrated_tile_file(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    spec = ProcessingCheckpointSpec(
        1_700_000_000.0, ["tile_0_0", "tile_0_1"], ["tile_1_0"], 4, {"k": 1}
    )
    (tmp_path / "tiles_ckpt").write_bytes(tile_checkpoint_bytes(spec))
    assert migrate(tmp_path / "tiles_ckpt", mgr, trust_pickle=True).ok
    t = quiet(TileCheckpointer, mgr)
    t.set_checkpoint_file("/anywhere/tiles_ckpt")
    back = t._load_checkpoint()
    assert back is not None and dataclasses.asdict(back) == dataclasses.asdict(spec)


# -- the database methods (on PostgreSQL) -------------------------------------------------


@pytest.fixture
def pg_mgr(pg_schema: str) -> Iterator[ckptlite.CheckpointManager]:
    with ckptlite.open(pg_schema) as m:
        yield m


@pytest.mark.postgres
def test_database_methods(pg_mgr: ckptlite.CheckpointManager) -> None:
    db = quiet(DatabaseCheckpoints, pg_mgr)
    rid = db.create_checkpoint("pipe", "pipeline", None, "Geo", {"k": 1}, "/d/pipe", 10, "gzip")
    assert isinstance(rid, str) and str(uuid.UUID(rid)) == rid
    db.create_checkpoint("ph", "phase", "pipe", "Geo", {}, "/d/ph", 5)
    db.create_checkpoint("st", "step", "ph", "Geo", {}, "/d/st", 5)
    with pytest.raises(ckptlite.InvalidInputError):
        db.create_checkpoint("pipe", "pipeline", None, "Geo", {}, "/d/pipe", 10)
    with pytest.raises(ckptlite.InvalidInputError):
        db.create_checkpoint("x", "stage", None, "Geo", {}, "/d/x", 1)  # the level CHECK
    row = db.get_checkpoint("pipe")
    assert row is not None and row["id"] == rid and row["status"] == "created"
    assert row["data_summary"] == {"k": 1} and row["file_size_bytes"] == 10
    assert row["created_at"].tzinfo is not None
    assert db.get_latest_checkpoint("Geo", "pipeline") is None  # only 'valid' rows
    db.update_checkpoint_status("pipe", "valid", "ab" * 32, {"ok": True})
    got = db.get_latest_checkpoint("Geo", "pipeline")
    assert (
        got is not None
        and got["checkpoint_id"] == "pipe"
        and got["validation_checksum"] == "ab" * 32
    )
    assert got["updated_at"] >= got["created_at"] and got["id"] == rid
    assert [r["checkpoint_id"] for r in db.list_checkpoints("Geo")] == ["st", "ph", "pipe"]
    assert [r["checkpoint_id"] for r in db.list_checkpoints(parent_id="pipe")] == ["ph"]
    assert [r["checkpoint_id"] for r in db.list_checkpoints(status="created")] == ["st", "ph"]
    # Ordinary ckptlite checkpoints on the PostgreSQL store: latest agrees.
    latest = pg_mgr.latest("Geo", Level.PIPELINE)
    assert latest is not None and latest.metadata["legacy_id"] == "pipe"
    db.update_checkpoint_status("st", "valid")
    db.update_checkpoint_status("ph", "valid")
    # 'ph' goes; 'st' goes with it (the table's parent FK cascades), not counted.
    assert db.cleanup_old_checkpoints(0, {"pipeline": 1, "phase": 0, "step": 1}) == 1
    assert [r["checkpoint_id"] for r in db.list_checkpoints()] == ["pipe"]
    assert db.get_checkpoint("st") is None
    db.update_checkpoint_status("nope", "valid")  # no row: nothing happens
    json.dumps([str(r["id"]) for r in db.list_checkpoints()])
