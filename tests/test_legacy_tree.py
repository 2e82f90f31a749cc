"""``migrate`` over a whole tree: all classified, each checkpoint once, latest by legacy time."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from legacy_builders import (
    Evil,
    LegacyCoreManager,
    ProcessingCheckpointSpec,
    new_uuid,
    tile_checkpoint_bytes,
    write_pipeline_checkpoint,
    write_script_checkpoint,
)

import ckptlite
from ckptlite import Level, Status
from ckptlite.cli import main
from ckptlite.legacy import ALREADY, FAILED, IMPORTED, migrate

NOT_LEGACY, SKIPPED = "not legacy", "skipped"

T0 = 1_700_000_000.0
TILES = [f"tile_{r}_{c}" for r in range(6) for c in range(6)]


def build_tree(data: Path) -> dict[str, int]:
    """A project data folder as a team has it: four legacy folders at various depths."""
    core = LegacyCoreManager(data / "checkpoints")
    for i in range(4):
        core.save(
            f"RasterMerger_{int(T0) + i}",
            {
                "processor_state": {
                    "class": "RasterMerger",
                    "config": {},
                    "items_processed": i,
                    "progress_node_id": None,
                },
                "alignment_completed": i > 1,
            },
            metadata={"processor": "RasterMerger"},
            timestamp=T0 + i,
        )
    for i, level in enumerate(("pipeline", "phase", "step", "substep", "test")):
        core.save(f"ck_{i}", {"grid": np.arange(6.0) * i}, level=level, timestamp=T0 + 10 + i)
    # The pipeline manager shared checkpoints/ with the core manager.
    exp = new_uuid()
    for stage in ("data_load", "resample"):
        write_pipeline_checkpoint(data / "checkpoints", exp, stage)
    tiles = data / "tiles"
    tiles.mkdir()
    spec = ProcessingCheckpointSpec(T0, TILES[:10], TILES[10:12], len(TILES), {"max_retries": 3})
    (tiles / "era5_tiles").write_bytes(tile_checkpoint_bytes(spec))
    runs = data / "pipeline_run"
    for _ in range(2):
        e = new_uuid()
        for stage in ("data_load", "resample", "merge"):
            write_pipeline_checkpoint(runs, e, stage)
    script = data / "analysis" / "richness" / "2023"
    script.mkdir(parents=True)
    for stage in ("catalog_loaded", "datasets_merged"):
        write_script_checkpoint(script, stage, {"n": 3, "stage": stage})
    # Things that are not legacy checkpoints, next to them.
    (data / "README.txt").write_text("project data\n")
    (data / "rasters").mkdir()
    (data / "rasters" / "era5.tif").write_bytes(b"II*\x00" + bytes(100))
    (data / "analysis" / "results.json").write_text('{"auc": 0.9}')
    return {"core": 5, "processor": 4, "pipeline": 2 + 6, "tile": 1, "script": 2}


def test_parent_folder_imports_every_checkpoint_at_any_depth(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    data = tmp_path / "data"
    expected = build_tree(data)
    report = migrate(data, mgr, trust_pickle=True)
    per_format = {f: c.get(IMPORTED, 0) for f, c in report.counts.items()}
    assert {f: n for f, n in per_format.items() if n} == expected, report.summary()
    assert report.ok and report.count(FAILED) == 0 and report.count(SKIPPED) == 0
    assert len(mgr.list()) == sum(expected.values())
    # Everything else was looked at and named as not legacy, not passed over in silence.
    not_legacy = {
        Path(e.source).relative_to(data).as_posix()
        for e in report.entries
        if e.outcome == NOT_LEGACY
    }
    assert {"README.txt", "rasters", "analysis/results.json"} <= not_legacy
    scripts = [cp for cp in mgr.list() if cp.metadata["legacy_format"] == "script"]
    assert {cp.process_id for cp in scripts} == {"richness_analysis"}


def test_cli_parent_folder_exit_code_and_dry_run_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    expected = build_tree(data)
    store = tmp_path / "store"
    code = main(["--store", str(store), "migrate", str(data), "--trust-pickle", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not store.exists()
    assert len(re.findall(r"^would import ", out, re.M)) == sum(expected.values())
    assert re.search(r"^not legacy .*README\.txt", out, re.M), out
    code = main(["--store", str(store), "migrate", str(data), "--trust-pickle"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(re.findall(r"^imported ", out, re.M)) == sum(expected.values())


def test_same_file_reached_twice_is_imported_once(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    data = tmp_path / "data"
    expected = build_tree(data)
    script = data / "analysis" / "richness" / "2023"
    first = migrate(script, mgr)  # the script folder alone, then its parents
    assert first.count(IMPORTED) == 2
    migrate(data / "analysis" / "richness", mgr)
    migrate(data / "checkpoints", mgr, trust_pickle=True)
    report = migrate(data, mgr, trust_pickle=True)
    assert report.count(ALREADY) == 2 + 5 + 4 + 2
    assert len(mgr.list()) == sum(expected.values())
    # A copy of the folder elsewhere holds the same legacy checkpoints: nothing new.
    shutil.copytree(data / "checkpoints", tmp_path / "copy")
    again = migrate(tmp_path / "copy", mgr, trust_pickle=True)
    assert again.count(IMPORTED) == 0 and again.count(ALREADY) == 11
    assert len(mgr.list()) == sum(expected.values())


def test_script_or_pipeline_is_decided_by_the_document(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    # A script folder one level below the root looks like an experiment dir by depth.
    runs = tmp_path / "runs"
    (runs / "monday").mkdir(parents=True)
    write_script_checkpoint(runs / "monday", "catalog_loaded", [1, 2])
    exp = new_uuid()
    write_pipeline_checkpoint(runs, exp, "merge")
    # And a pipeline file copied into the root, next to nothing.
    shutil.copy(runs / exp / "checkpoint_merge.json", tmp_path / "checkpoint_merge.json")
    report = migrate(tmp_path, mgr)
    assert report.ok
    formats = sorted(cp.metadata["legacy_format"] for cp in mgr.list())
    assert formats == ["pipeline", "script"], report.entries
    assert report.count(ALREADY) == 1  # the copy is the same legacy checkpoint
    (pipe,) = mgr.list(process_id=exp)
    assert pipe.name == "merge"


def test_latest_is_legacy_latest_whatever_the_import_order(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    LegacyCoreManager(old).save(
        "Merger_1", {"n": 1}, metadata={"processor": "Merger"}, timestamp=T0
    )
    LegacyCoreManager(new).save(
        "Merger_2", {"n": 2}, metadata={"processor": "Merger"}, timestamp=T0 + 60
    )
    exp = new_uuid()
    now = datetime(2024, 3, 1, 12, 0, 0)
    write_pipeline_checkpoint(new, exp, "merge", now=now, mtime=T0 + 600)
    write_pipeline_checkpoint(old, exp, "resample", now=now - timedelta(hours=1), mtime=T0 + 500)
    assert migrate(new, mgr, trust_pickle=True).ok
    assert migrate(old, mgr, trust_pickle=True).ok  # the older source second
    assert len(mgr.list()) == 4
    cp, state = mgr.load_latest("Merger", Level.STEP)  # type: ignore[misc]
    assert state == {"n": 2}
    latest = mgr.latest(exp, Level.STAGE)
    assert latest is not None and latest.name == "merge"
    older = next(c for c in mgr.list(process_id="Merger") if c.metadata["legacy_id"] == "Merger_1")
    assert older.status == Status.ARCHIVED
    assert older.metadata["legacy_superseded_by"] == cp.id
    assert mgr.load(older) == {"n": 1}  # kept, and loadable by id
    # A native save afterwards is newer than every import: it is the latest.
    saved = mgr.save("Merger", {"n": 3}, level=Level.STEP)
    assert mgr.latest("Merger", Level.STEP) == saved


def test_numpy_dtype_metadata_is_kept_without_a_warning(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    arr = np.arange(4.0).astype(np.dtype(np.float64, metadata={"units": "m"}))
    LegacyCoreManager(tmp_path).save("ck", {"a": arr, "b": 1}, timestamp=T0)
    report = migrate(tmp_path, mgr, trust_pickle=True)  # warnings are errors here
    assert report.count(IMPORTED) == 1
    (cp,) = mgr.list()
    state = mgr.load(cp)
    assert state["b"] == 1
    assert cp.metadata["legacy_raw"]["a"]["encoding"] == "pickle"
    back = pickle.loads(state["a"])
    assert np.array_equal(back, arr) and back.dtype.metadata == {"units": "m"}


def test_tile_refusal_names_the_error_type(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    (tmp_path / "tiles_ckpt").write_bytes(
        tile_checkpoint_bytes(ProcessingCheckpointSpec(T0, [], [], 4))
    )
    evil = tmp_path / "evil_tile"
    evil.write_bytes(b"\x80\x04" + b"ProcessingCheckpoint" + pickle.dumps(Evil(tmp_path / "x"))[2:])
    no_trust = migrate(tmp_path / "tiles_ckpt", mgr)
    (e,) = no_trust.entries
    assert e.outcome == FAILED and e.reason is not None
    assert e.reason.startswith("PickleNotAllowedError: ")
    refused = migrate(evil, mgr, trust_pickle=True)
    (e,) = refused.entries
    assert e.outcome == FAILED and e.reason is not None
    assert re.match(r"(UnsafePickleError|LegacyFormatError): ", e.reason), e.reason
    assert not (tmp_path / "x").exists()


def test_a_run_where_everything_failed_creates_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    LegacyCoreManager(tmp_path / "legacy").save("ck", {"a": 1}, timestamp=T0)
    store = tmp_path / "store"
    code = main(["--store", str(store), "migrate", str(tmp_path / "legacy")])  # no --trust-pickle
    out = capsys.readouterr().out
    assert code == 1 and "PickleNotAllowedError" in out
    assert not store.exists()


def test_docs_links_resolve() -> None:
    root = Path(__file__).resolve().parent.parent
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
        # A document named in passing must be one a reader can open too.
        for name in re.findall(r"`([\w./-]+\.md)`", doc.read_text()):
            assert (doc.parent / name).exists() or (root / name).exists(), (doc.name, name)


def test_symlinks_are_reported_not_followed(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    write_script_checkpoint(real, "catalog_loaded", [1])
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(real, root / "link")
    report = migrate(root, mgr)
    (e,) = [e for e in report.entries if e.outcome == SKIPPED]
    assert "symlink" in (e.reason or "") and not report.ok


def test_pointing_at_registry_json_reads_its_folder(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    core = LegacyCoreManager(tmp_path / "checkpoints")
    core.save("a", {"v": 1}, timestamp=T0)
    core.save("b", {"v": 2}, timestamp=T0 + 1)
    report = migrate(tmp_path / "checkpoints" / "registry.json", mgr, trust_pickle=True)
    assert report.count(IMPORTED) == 2 and report.ok


def test_import_one_format_from_a_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    expected = build_tree(data)
    store = tmp_path / "store"
    assert main(["--store", str(store), "import", "script", str(data)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^imported +script ", out, re.M)) == expected["script"]
    assert not re.search(r"^imported +(core|pipeline|tile)", out, re.M)
    with ckptlite.open(str(store)) as mgr:
        assert {cp.metadata["legacy_format"] for cp in mgr.list()} == {"script"}
