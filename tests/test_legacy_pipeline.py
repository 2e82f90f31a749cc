"""System 2: pipeline recovery JSON, the run_richness_analysis.py variant, and autodetection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from legacy_builders import (
    LegacyCoreManager,
    new_uuid,
    reference_json,
    tree_digest,
    write_pipeline_checkpoint,
    write_script_checkpoint,
)

import ckptlite
from ckptlite import Level, Status
from ckptlite.legacy import ALREADY, FAILED, IMPORTED, detect_formats, migrate


@pytest.fixture
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a local time zone far from UTC (+05:30), as the legacy machine might have."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_states_equal_json_load(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    exp = new_uuid()
    files = [
        write_pipeline_checkpoint(
            tmp_path, exp, stage, shared_data={"merged_dataset": "<Dataset object>", "n": 3}
        )
        for stage in ("data_load", "resample", "merge", "analysis_som")
    ]
    report = migrate(tmp_path, mgr)
    assert report.formats == ("pipeline",) and report.count(IMPORTED) == 4
    by_stage = {cp.name: cp for cp in mgr.list(process_id=exp)}
    assert set(by_stage) == {"data_load", "resample", "merge", "analysis_som"}
    for f in files:
        cp = by_stage[f.stem.replace("checkpoint_", "")]
        assert cp.level == Level.STAGE and cp.status == Status.VALID
        assert cp.metadata["legacy_format"] == "pipeline"
        assert cp.metadata["legacy_id"] == f"{exp}/{cp.name}"
        assert cp.metadata["experiment_name"] == "exp"
        assert mgr.load(cp) == reference_json(f)  # placeholders kept as the strings they were
    assert migrate(tmp_path, mgr).count(ALREADY) == 4


def test_latest_follows_file_mtime_like_load_latest(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    exp = new_uuid()
    # The JSON timestamps say merge is newer, but load_latest sorted by mtime: resample wins.
    write_pipeline_checkpoint(tmp_path, exp, "merge", now=datetime(2024, 5, 2, 12), mtime=1000)
    write_pipeline_checkpoint(tmp_path, exp, "resample", now=datetime(2024, 5, 1, 12), mtime=2000)
    migrate(tmp_path, mgr)
    latest = mgr.latest(exp, Level.STAGE)
    assert latest is not None and latest.name == "resample"


def test_naive_timestamps_are_local_time(
    tmp_path: Path, mgr: ckptlite.CheckpointManager, local_tz: None
) -> None:
    exp = new_uuid()
    f = write_pipeline_checkpoint(tmp_path, exp, "export", now=datetime(2024, 3, 1, 10, 0, 0))
    assert '"timestamp": "2024-03-01T10:00:00"' in f.read_text()  # no .ffffff at 0 us
    write_pipeline_checkpoint(tmp_path, exp, "merge", now=datetime(2024, 3, 1, 10, 0, 0, 250))
    migrate(tmp_path, mgr)
    got = {cp.name: cp for cp in mgr.list()}
    assert got["export"].created_at == datetime(2024, 3, 1, 4, 30, tzinfo=UTC)
    assert got["merge"].created_at == datetime(2024, 3, 1, 4, 30, 0, 250, tzinfo=UTC)
    assert got["export"].metadata["legacy_timestamp"] == "2024-03-01T10:00:00"


def test_one_experiment_directory(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    exp = new_uuid()
    f = write_pipeline_checkpoint(tmp_path, exp, "merge")
    assert detect_formats(tmp_path / exp) == ("pipeline",)
    assert detect_formats(f) == ("pipeline",)
    assert migrate(tmp_path / exp, mgr).count(IMPORTED) == 1
    assert migrate(f, mgr).count(ALREADY) == 1  # the same checkpoint however it is reached
    assert migrate(tmp_path, mgr).count(ALREADY) == 1
    (cp,) = mgr.list()
    assert cp.process_id == exp and mgr.load(cp) == reference_json(f)


def test_damaged_file_is_reported_and_the_rest_continues(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    exp = new_uuid()
    write_pipeline_checkpoint(tmp_path, exp, "data_load")
    bad = write_pipeline_checkpoint(tmp_path, exp, "resample")
    bad.write_text(bad.read_text()[:40])  # a truncated write
    report = migrate(tmp_path, mgr)
    by_id = {e.legacy_id: e for e in report.entries}
    assert by_id[f"{exp}/data_load"].outcome == IMPORTED
    assert by_id[f"{exp}/resample"].outcome == FAILED
    assert "not JSON" in (by_id[f"{exp}/resample"].reason or "")


def test_shared_directory_holds_both_systems(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "checkpoints"
    LegacyCoreManager(root).save("phase_a", {"v": 1}, level="phase")
    exp = new_uuid()
    write_pipeline_checkpoint(root, exp, "merge")
    assert detect_formats(root) == ("core", "pipeline")
    before = tree_digest(root)
    report = migrate(root, mgr, trust_pickle=True)
    assert report.counts["core"][IMPORTED] == 1 and report.counts["pipeline"][IMPORTED] == 1
    assert tree_digest(root) == before


def test_script_variant(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    a = write_script_checkpoint(
        tmp_path, "catalog_loaded", {"datasets": ["era5", "chirps"]}, elapsed=12.5
    )
    b = write_script_checkpoint(tmp_path, "datasets_merged", {"shape": [180, 360], "ok": True})
    assert detect_formats(tmp_path) == ("script",)
    report = migrate(tmp_path, mgr)
    assert report.count(IMPORTED) == 2
    got = {cp.name: cp for cp in mgr.list(process_id="richness_analysis")}
    assert mgr.load(got["catalog_loaded"]) == reference_json(a)
    assert mgr.load(got["datasets_merged"]) == reference_json(b)
    assert got["catalog_loaded"].metadata["elapsed_time"] == 12.5
    assert got["catalog_loaded"].level == Level.STAGE
    # One file, another process name: the same checkpoint, not a second copy.
    assert migrate(a, mgr, process_id="richness-2").count(ALREADY) == 1


def test_script_process_override_and_single_file(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    f = write_script_checkpoint(tmp_path, "catalog_loaded", [1, 2, 3])
    assert detect_formats(f) == ("script",)
    migrate(f, mgr, process_id="richness")
    (cp,) = mgr.list()
    assert cp.process_id == "richness" and mgr.load(cp) == reference_json(f)


def test_nothing_legacy_is_a_clear_error(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ckptlite.LegacyFormatError, match="no legacy checkpoints"):
        migrate(tmp_path, mgr)
    with pytest.raises(ckptlite.LegacyFormatError, match="does not exist"):
        migrate(tmp_path / "nope", mgr)
    with pytest.raises(ckptlite.InvalidInputError, match="unknown legacy format"):
        migrate(tmp_path, mgr, format="orbax")


def test_json_the_codec_cannot_hold_is_kept_as_bytes(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    exp = new_uuid()
    f = write_pipeline_checkpoint(tmp_path, exp, "merge", shared_data={"n": 2**70})
    migrate(tmp_path, mgr)
    (cp,) = mgr.list()
    assert mgr.load(cp) == f.read_bytes()  # a 70-bit int: msgpack has no room for it
    assert cp.metadata["legacy_raw"]["document"]["encoding"] == "json"
