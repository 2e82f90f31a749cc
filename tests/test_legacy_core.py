"""Systems 1 and 5: the core manager directory and processor checkpoints stored through it."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from legacy_builders import (
    Evil,
    LegacyCoreManager,
    ReferenceCoreLoader,
    legacy_checksum,
    pickle_project_object,
    same,
    tree_digest,
)

import ckptlite
from ckptlite import Level, Status
from ckptlite.legacy import ALREADY, FAILED, IMPORTED, WOULD_IMPORT, migrate
from ckptlite.legacy.core import legacy_checksum as ckptlite_checksum
from ckptlite.legacy.unpickler import load_pickle


def imported(mgr: ckptlite.CheckpointManager) -> dict[str, ckptlite.Checkpoint]:
    """Imported checkpoints by legacy id."""
    return {cp.metadata["legacy_id"]: cp for cp in mgr.list()}


def unraw(cp: ckptlite.Checkpoint, state: dict[str, Any]) -> dict[str, Any]:
    """Undo the raw-bytes fallback (what the codec could not hold) for comparison."""
    raw = cp.metadata.get("legacy_raw", {})
    return {k: (load_pickle(v).value if k in raw else v) for k, v in state.items()}


@pytest.fixture
def legacy_dir(tmp_path: Path) -> Path:
    """A core-manager directory with every level, a hierarchy and processor checkpoints."""
    root = tmp_path / "checkpoints"
    m = LegacyCoreManager(root)
    t = 1_700_000_000.25
    m.save(
        "pipeline_geo",
        {"config": {"crs": "EPSG:4326", "bands": (1, 2)}},
        level="pipeline",
        timestamp=t,
    )
    m.save(
        "phase_resample",
        {"grid": np.arange(12, dtype="f4").reshape(3, 4)},
        level="phase",
        parent_id="pipeline_geo",
        timestamp=t + 1,
        metadata={"processor_name": "Resampler"},
    )
    m.save(
        "step_tile", {"done": [1, 2, 3]}, level="step", parent_id="phase_resample", timestamp=t + 2
    )
    m.save("substep_x", {"n": 1}, level="substep", parent_id="step_tile", timestamp=t + 3)
    m.save("unit_test", {"value": None}, level="test", timestamp=t + 4)
    m.save("uncompressed", {"payload": b"\x00\x01" * 10}, compress=False, timestamp=t + 5)
    m.validate("pipeline_geo")
    # System 5: processors save level "step" with metadata {'processor': Class}.
    state = {
        "class": "RasterMerger",
        "config": {"chunk": 256},
        "items_processed": 0,
        "progress_node_id": None,
    }
    m.save(
        "RasterMerger_1700000010",
        {"processor_state": state, "alignment_completed": True, "temp_dir": None},
        metadata={"processor": "RasterMerger"},
        timestamp=t + 10,
    )
    m.save(
        "error_era5_1700000011",
        {
            "processor_state": {**state, "class": "ResamplingProcessor", "items_processed": 3},
            "last_completed_index": 3,
            "completed_datasets": ["a", "b", "c", "d"],
            "total_datasets": 9,
            "error": {"dataset": "era5", "error": "boom", "index": 4},
        },
        metadata={"processor": "ResamplingProcessor"},
        timestamp=t + 11,
    )
    m.save(
        "shutdown_1700000012",
        {
            "processor_state": state,
            "processed_items": ["x"],
            "failed_items": [],
            "error": "old error persists",
        },
        metadata={"processor": "RasterMerger"},
        timestamp=t + 12,
    )
    return root


def reference_states(root: Path) -> dict[str, dict[str, Any]]:
    ref = ReferenceCoreLoader(root)
    return {cid: ref.load(cid) for cid in ref.records()}


def test_imported_states_equal_the_legacy_loader(
    legacy_dir: Path, mgr: ckptlite.CheckpointManager
) -> None:
    report = migrate(legacy_dir, mgr, trust_pickle=True)
    assert report.ok and report.count(IMPORTED) == 9
    assert report.counts["processor"][IMPORTED] == 3 and report.counts["core"][IMPORTED] == 6
    got = imported(mgr)
    expected = reference_states(legacy_dir)
    assert set(got) == set(expected)
    for legacy_id, ref_state in expected.items():
        cp = got[legacy_id]
        assert cp.status == Status.VALID, legacy_id
        assert cp.metadata["legacy_format"] in ("core", "processor")
        assert cp.metadata["legacy_checksum_verified"] is True
        assert same(mgr.load(cp), ref_state), legacy_id
        rec = json.loads((legacy_dir / "registry.json").read_text())[legacy_id]
        assert cp.created_at.timestamp() == pytest.approx(rec["timestamp"], abs=1e-6)


def test_levels_hierarchy_and_processes(legacy_dir: Path, mgr: ckptlite.CheckpointManager) -> None:
    migrate(legacy_dir, mgr, trust_pickle=True)
    got = imported(mgr)
    assert got["pipeline_geo"].level == Level.PIPELINE
    assert got["phase_resample"].level == Level.STAGE  # phase = STAGE
    assert got["step_tile"].level == Level.STEP
    assert got["substep_x"].level == Level.SUBSTEP
    assert got["unit_test"].level == Level.STEP
    assert got["unit_test"].metadata["legacy_level"] == "test"
    assert got["phase_resample"].parent_id == got["pipeline_geo"].id
    assert got["substep_x"].parent_id == got["step_tile"].id
    assert got["phase_resample"].process_id == "Resampler"  # metadata processor_name
    # Processor checkpoints: process = class, level STEP; latest is the one to resume from.
    assert got["error_era5_1700000011"].process_id == "ResamplingProcessor"
    assert got["shutdown_1700000012"].process_id == "RasterMerger"
    assert mgr.latest("RasterMerger", Level.STEP).id == got["shutdown_1700000012"].id
    hit = mgr.load_latest("ResamplingProcessor", Level.STEP)
    assert hit is not None and hit[1]["last_completed_index"] == 3
    # Registry status after validate is kept as data; metadata.json said "created".
    assert got["pipeline_geo"].metadata["legacy_status"] == "valid"
    assert ckptlite.parse_checkpoint_id(got["phase_resample"].id).level == Level.STAGE


def test_second_run_imports_nothing(legacy_dir: Path, mgr: ckptlite.CheckpointManager) -> None:
    first = migrate(legacy_dir, mgr, trust_pickle=True)
    ids = {cp.id for cp in mgr.list()}
    second = migrate(legacy_dir, mgr, trust_pickle=True)
    assert second.count(ALREADY) == first.count(IMPORTED) == 9
    assert second.count(IMPORTED) == 0
    assert {cp.id for cp in mgr.list()} == ids
    assert [e.checkpoint_id for e in second.entries] == [e.checkpoint_id for e in first.entries]


def test_dry_run_writes_nothing(legacy_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "dry"
    with ckptlite.open(store, durability="none") as m:
        m.save("other", {"x": 1})
    before = tree_digest(legacy_dir, store)  # closed: no -wal/-shm left
    with ckptlite.open(store, durability="none") as m:
        report = migrate(legacy_dir, m, trust_pickle=True, dry_run=True)
        assert len(m.list()) == 1
    assert report.dry_run and report.count(WOULD_IMPORT) == 9 and report.ok
    assert tree_digest(legacy_dir, store) == before


def test_sources_are_never_modified(legacy_dir: Path, mgr: ckptlite.CheckpointManager) -> None:
    before = tree_digest(legacy_dir)
    migrate(legacy_dir, mgr, trust_pickle=True)
    migrate(legacy_dir, mgr, trust_pickle=True)
    assert tree_digest(legacy_dir) == before


def test_pickles_need_the_opt_in(legacy_dir: Path, mgr: ckptlite.CheckpointManager) -> None:
    report = migrate(legacy_dir, mgr)
    assert report.count(FAILED) == 9 and not report.ok
    assert all("--trust-pickle" in (e.reason or "") for e in report.entries)
    assert mgr.list() == []


def test_checksum_mismatch_imports_corrupted(
    legacy_dir: Path, mgr: ckptlite.CheckpointManager
) -> None:
    # Damage one data file after the save: the legacy loader would raise "corrupted".
    path = legacy_dir / "step_tile" / "done.pkl.gz"
    raw = gzip.decompress(path.read_bytes()).replace(b"K\x03", b"K\x04")
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="corrupted"):
        ReferenceCoreLoader(legacy_dir).load("step_tile")
    report = migrate(legacy_dir, mgr, trust_pickle=True)
    entry = next(e for e in report.entries if e.legacy_id == "step_tile")
    assert entry.outcome == IMPORTED and entry.status == Status.CORRUPTED
    assert "checksum mismatch" in (entry.reason or "")
    cp = mgr.get(entry.checkpoint_id or "")
    assert cp.status == Status.CORRUPTED and "checksum" in cp.metadata["legacy_corrupted"]
    assert mgr.load(cp) == {"done": [1, 2, 4]}  # kept, never dropped
    # A CORRUPTED import is never what a resume picks.
    assert mgr.latest("legacy-core", Level.STEP, "step_tile") is None
    assert migrate(legacy_dir, mgr, trust_pickle=True).count(IMPORTED) == 0
    # Its ckptlite bytes verify, but a full verify must not resurrect it as VALID.
    assert mgr.verify(full=True).ok
    assert mgr.get(cp.id).status == Status.CORRUPTED


def test_broken_registry_falls_back_to_metadata_json(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("a", {"v": 1}, timestamp=1.0)
    m.save("b", {"v": 2}, timestamp=2.0)
    # A registry key unknown to CheckpointMetadata: the legacy load sees {} ...
    reg = json.loads((root / "registry.json").read_text())
    reg["b"]["tags"] = ["x"]
    (root / "registry.json").write_text(json.dumps(reg, indent=2))
    assert ReferenceCoreLoader(root).records() == {}
    # ... and the next save overwrites it with only the new record.
    m.save("c", {"v": 3}, timestamp=3.0)
    assert set(json.loads((root / "registry.json").read_text())) == {"c"}
    report = migrate(root, mgr, trust_pickle=True)
    assert report.ok and report.count(IMPORTED) == 3
    got = imported(mgr)
    assert {k: mgr.load(v)["v"] for k, v in got.items()} == {"a": 1, "b": 2, "c": 3}
    assert got["a"].metadata["legacy_record"] == "metadata.json"
    assert got["c"].metadata["legacy_record"] == "registry.json"
    for legacy_id in "ab":  # what the legacy loader returns given the metadata.json record
        rec = json.loads((root / legacy_id / "metadata.json").read_text())
        assert same(mgr.load(got[legacy_id]), ReferenceCoreLoader(root).load(legacy_id, rec))


@pytest.mark.parametrize("content", ["", "{", "[]", '{\n  "a": {"checkpoint_id"'])
def test_truncated_or_empty_registry(
    tmp_path: Path, mgr: ckptlite.CheckpointManager, content: str
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("a", {"v": 1})
    m.save("b", {"v": 2})
    (root / "registry.json").write_text(content)  # a crash in the non-atomic write
    report = migrate(root, mgr, trust_pickle=True)
    assert report.ok and report.count(IMPORTED) == 2
    assert sorted(imported(mgr)) == ["a", "b"]


def test_same_second_id_reuse_and_stale_files(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    now = time.time()
    m.save(
        "Proc_1700000000",
        {"processor_state": {"n": 1}, "old_key": [1]},
        timestamp=now,
        metadata={"processor": "Proc"},
    )
    # Same id in the same second: overwritten in place; old_key.pkl.gz stays behind, and
    # the legacy checksum includes it.
    m.save(
        "Proc_1700000000",
        {"processor_state": {"n": 2}},
        timestamp=now + 0.5,
        metadata={"processor": "Proc"},
    )
    d = root / "Proc_1700000000"
    assert (d / "old_key.pkl.gz").exists()
    report = migrate(root, mgr, trust_pickle=True)
    assert report.ok and report.count(IMPORTED) == 1
    cp = next(iter(imported(mgr).values()))
    assert cp.status == Status.VALID
    assert mgr.load(cp) == ReferenceCoreLoader(root).load("Proc_1700000000")
    assert mgr.load(cp) == {"processor_state": {"n": 2}}  # the stale key is not data
    assert ckptlite_checksum(d) == legacy_checksum(d)


def test_gzip_headers_count_in_the_checksum(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("a", {"v": 1}, gzip_mtime=1_600_000_000)
    path = root / "a" / "v.pkl.gz"
    head = path.read_bytes()[:20]
    assert head[3] & 0x08 and b"v.pkl\x00" in head  # FNAME is <key>.pkl
    # Same payload, another header mtime: the legacy checksum (over on-disk bytes) breaks.
    data = bytearray(path.read_bytes())
    data[4:8] = (1_600_000_001).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    report = migrate(root, mgr, trust_pickle=True)
    (entry,) = report.entries
    assert entry.status == Status.CORRUPTED
    assert mgr.load(entry.checkpoint_id or "") == {"v": 1}


def test_early_records(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("early", {"v": [1.5]}, early=True, timestamp=100.0)
    rec = json.loads((root / "registry.json").read_text())["early"]
    assert "file_path" not in rec and "validation_checksum" not in rec
    # That version's checksum covered metadata.json: only that variant verifies it.
    assert rec["checksum"] != legacy_checksum(root / "early")
    assert rec["checksum"] == legacy_checksum(root / "early", skip_metadata=False)
    report = migrate(root, mgr, trust_pickle=True)
    (entry,) = report.entries
    assert entry.outcome == IMPORTED and entry.status == Status.VALID
    cp = mgr.get(entry.checkpoint_id or "")
    assert cp.metadata["legacy_early_record"] is True
    assert cp.metadata["legacy_checksum_variant"] == "with metadata.json"
    assert mgr.load(cp) == {"v": [1.5]}


def test_project_classes_become_dicts(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("Proc_1", {"processor_state": {"n": 1}}, metadata={"processor": "Proc"})
    # Replace a data file with a pickle naming a project class, then fix the checksums
    # (the legacy processor pickled such objects itself).
    blob = pickle_project_object(
        "src.processors.merge", "MergeConfig", {"tile_size": 256, "nodata": -9999.0}, protocol=5
    )
    (root / "Proc_1" / "processor_state.pkl.gz").write_bytes(gzip.compress(blob))
    _refresh_checksum(root, "Proc_1")
    report = migrate(root, mgr, trust_pickle=True)
    (entry,) = report.entries
    assert entry.outcome == IMPORTED and entry.status == Status.VALID
    cp = mgr.get(entry.checkpoint_id or "")
    assert mgr.load(cp) == {"processor_state": {"tile_size": 256, "nodata": -9999.0}}
    assert mgr.load(cp) == ReferenceCoreLoader(root).load("Proc_1")
    assert cp.metadata["legacy_classes"] == ["src.processors.merge.MergeConfig"]


def test_refused_class_fails_that_checkpoint_only(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    marker = tmp_path / "pwned"
    m = LegacyCoreManager(root)
    m.save("good_1", {"v": 1}, timestamp=1.0)
    m.save("evil_2", {"v": Evil(marker)}, timestamp=2.0)
    m.save("good_3", {"v": 3}, timestamp=3.0)
    report = migrate(root, mgr, trust_pickle=True)
    bad = next(e for e in report.entries if e.legacy_id == "evil_2")
    assert bad.outcome == FAILED and "UnsafePickleError" in (bad.reason or "")
    assert "posix.system" in (bad.reason or "")  # the error names the class
    assert not marker.exists()  # and nothing ran
    assert sorted(imported(mgr)) == ["good_1", "good_3"]
    assert report.count(IMPORTED) == 2 and not report.ok


def test_unrepresentable_values_are_kept_as_bytes(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    pd = pytest.importorskip("pandas")
    when, nat = pd.Period("2024-01", freq="M"), pd.NaT
    m.save("odd", {"ids": {3, 1, 2}, "cplx": 1 + 2j, "when": when, "nat": nat, "ok": [1]})
    report = migrate(root, mgr, trust_pickle=True)
    (entry,) = report.entries
    cp = mgr.get(entry.checkpoint_id or "")
    state = mgr.load(cp)
    assert state["ok"] == [1]
    # Sets and complex numbers are native now; pandas scalars are not.
    assert state["ids"] == {1, 2, 3} and state["cplx"] == 1 + 2j
    assert isinstance(state["when"], bytes) and isinstance(state["nat"], bytes)
    assert set(cp.metadata["legacy_raw"]) == {"when", "nat"}
    assert cp.metadata["legacy_raw"]["when"]["type"] == "pandas.Period"
    assert unraw(cp, state) == ReferenceCoreLoader(root).load("odd")


def test_missing_directory_and_escaping_ids_are_reported(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("kept", {"v": 1})
    reg = json.loads((root / "registry.json").read_text())
    reg["gone"] = {**reg["kept"], "checkpoint_id": "gone"}
    reg["../outside"] = {**reg["kept"], "checkpoint_id": "../outside"}
    (root / "registry.json").write_text(json.dumps(reg))
    report = migrate(root, mgr, trust_pickle=True)
    by_id = {e.legacy_id: e for e in report.entries}
    assert by_id["kept"].outcome == IMPORTED
    assert by_id["gone"].outcome == FAILED and "missing" in (by_id["gone"].reason or "")
    assert by_id["../outside"].outcome == FAILED
    assert "outside" in (by_id["../outside"].reason or "")


def _refresh_checksum(root: Path, cid: str) -> None:
    checksum = legacy_checksum(root / cid)
    reg = json.loads((root / "registry.json").read_text())
    reg[cid]["checksum"] = checksum
    (root / "registry.json").write_text(json.dumps(reg, indent=2))
    meta = json.loads((root / cid / "metadata.json").read_text())
    meta["checksum"] = checksum
    (root / cid / "metadata.json").write_text(json.dumps(meta, indent=2))


def test_records_cannot_point_outside_their_directory(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    secret = tmp_path / "secret.pkl"
    secret.write_bytes(b"not for the importer")
    m = LegacyCoreManager(root)
    m.save("a", {"v": 1})
    reg = json.loads((root / "registry.json").read_text())
    reg["a"]["data_files"].append("../secret.pkl")
    (root / "registry.json").write_text(json.dumps(reg))
    report = migrate(root, mgr, trust_pickle=True)
    (entry,) = report.entries
    assert entry.status == Status.CORRUPTED
    cp = mgr.get(entry.checkpoint_id or "")
    assert mgr.load(cp) == {"v": 1} and cp.metadata["legacy_missing_files"] == ["../secret.pkl"]


def test_report_hides_dsn_passwords() -> None:
    from ckptlite.legacy.migrate import _redact

    assert _redact("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert _redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_unusable_timestamps_fall_back_to_the_file_time(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("nan_time", {"v": 1}, timestamp=float("nan"))
    m.save("no_time", {"v": 2})
    for cid in ("no_time",):
        for name in ("registry.json", f"{cid}/metadata.json"):
            doc = json.loads((root / name).read_text())
            rec = doc[cid] if name == "registry.json" else doc
            del rec["timestamp"]
            (root / name).write_text(json.dumps(doc))
    report = migrate(root, mgr, trust_pickle=True)
    assert report.ok and report.count(IMPORTED) == 2
    for cp in mgr.list():
        assert cp.metadata["legacy_timestamp_missing"] is True
        mtime = (root / cp.metadata["legacy_id"] / "metadata.json").stat().st_mtime
        assert cp.created_at.timestamp() == pytest.approx(mtime)
    assert migrate(root, mgr, trust_pickle=True).count(ALREADY) == 2


def test_ids_with_slashes_are_nested_directories(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    root = tmp_path / "ck"
    m = LegacyCoreManager(root)
    m.save("run1/phase_a", {"v": 1}, level="phase")
    m.save("run1/phase_b", {"v": 2}, level="phase", parent_id="run1/phase_a")
    (root / "registry.json").write_text("{")  # and the registry is gone
    report = migrate(root, mgr, trust_pickle=True)
    assert report.ok and report.count(IMPORTED) == 2
    got = imported(mgr)
    assert mgr.load(got["run1/phase_b"]) == {"v": 2}
    assert got["run1/phase_b"].parent_id == got["run1/phase_a"].id


def test_checksum_order_is_part_by_part(tmp_path: Path) -> None:
    # sorted(rglob) compares paths part by part: "a/f" sorts before "a.x" ('a' < 'a.x'),
    # although the string "a/f" sorts after "a.x" ('/' > '.').
    d = tmp_path / "ck"
    (d / "a").mkdir(parents=True)
    (d / "a" / "f").write_bytes(b"1")
    (d / "a.x").write_bytes(b"2")
    (d / "metadata.json").write_text("{}")
    assert ckptlite_checksum(d) == legacy_checksum(d)
    assert ckptlite_checksum(d, skip_metadata=False) == legacy_checksum(d, skip_metadata=False)
    import hashlib

    assert ckptlite_checksum(d) == hashlib.sha256(b"f1a.x2").hexdigest()
