"""System 3: the tile processor's pickled ProcessingCheckpoint, and its work-item ledger."""

from __future__ import annotations

import pickletools
from pathlib import Path

import pytest
from legacy_builders import (
    PermissiveUnpickler,
    ProcessingCheckpointSpec,
    plain,
    same,
    tile_checkpoint_bytes,
    tree_digest,
)

import ckptlite
from ckptlite import Level, Status
from ckptlite.legacy import ALREADY, FAILED, IMPORTED, migrate
from ckptlite.legacy.ledger import LEGACY_FAILURE

TILES = [f"tile_{r}_{c}" for r in range(4) for c in range(5)]
PARAMS = {
    "memory_limit_mb": 1024,
    "skip_existing": True,
    "retry_failed": True,
    "max_retries": 3,
    "handle_boundaries": True,
    "merge_overlaps": False,
    "nodata": -9999.0,
}


def write_tile_file(
    path: Path,
    completed: list[str],
    failed: list[str],
    total: int,
    ts: float = 1_700_000_000.5,
    module: str = "src.base.tile_processor",
) -> Path:
    spec = ProcessingCheckpointSpec(ts, completed, failed, total, dict(PARAMS))
    path.write_bytes(tile_checkpoint_bytes(spec, module))
    return path


def reference_load(path: Path) -> dict[str, object]:
    """The legacy loader: pickle.load with a find_class that stubs the dataclass."""
    with open(path, "rb") as f:
        return plain(PermissiveUnpickler(f).load())  # type: ignore[no-any-return]


def test_file_is_the_legacy_pickle(tmp_path: Path) -> None:
    path = write_tile_file(tmp_path / "ckpt", TILES[:3], [], 20)
    data = path.read_bytes()
    assert data[:2] == b"\x80\x04"  # protocol 4, as the tile processor wrote it
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert "STACK_GLOBAL" in ops and "NEWOBJ" in ops and "BUILD" in ops
    assert b"src.base.tile_processor" in data and b"ProcessingCheckpoint" in data


@pytest.mark.parametrize("module", ["src.base.tile_processor", "base.tile_processor"])
def test_state_equals_the_legacy_loader(
    tmp_path: Path, mgr: ckptlite.CheckpointManager, module: str
) -> None:
    path = write_tile_file(tmp_path / "tiles.ckpt", TILES[:7], ["tile_1_4"], 20, module=module)
    report = migrate(path, mgr, trust_pickle=True, process_id="geo-tiles")
    assert report.formats == ("tile",) and report.count(IMPORTED) == 1
    (cp,) = mgr.list()
    assert cp.process_id == "geo-tiles" and cp.level == Level.STAGE and cp.name == "tiles"
    assert cp.progress == (7, 20) and cp.status == Status.VALID
    assert cp.metadata["legacy_classes"] == [f"{module}.ProcessingCheckpoint"]
    assert cp.created_at.timestamp() == pytest.approx(1_700_000_000.5)
    assert same(mgr.load(cp), reference_load(path))


def test_ledger_makes_a_resumed_run_skip_completed_tiles(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    completed, failed = TILES[:12], ["tile_2_2", "tile_2_3"]
    path = write_tile_file(tmp_path / "tiles.ckpt", completed, failed, len(TILES))
    migrate(path, mgr, trust_pickle=True, process_id="geo-tiles")
    processed = []
    with mgr.run("geo-tiles") as run:
        assert run.resumed
        for item in run.items("tiles", TILES):
            assert item.id not in completed
            assert item.attempts == (1 if item.id in failed else 0)
            processed.append(item.id)
            item.done({"tile": item.id})
    assert sorted(processed) == sorted(set(TILES) - set(completed))
    assert run.status.value == "completed"
    entries = {r.item_id: r for r in run.ledger("tiles")}
    assert set(entries) == set(TILES) and all(r.ok for r in entries.values())


def test_failed_tiles_keep_their_legacy_error(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    path = write_tile_file(tmp_path / "t", ["tile_0_0"], ["tile_0_1"], 3)
    migrate(path, mgr, trust_pickle=True, process_id="p")
    (run,) = mgr.backend.list_runs("p")
    (failed,) = [r for r in mgr.backend.list_items(run.id, "tiles") if not r.ok]
    assert failed.item_id == "tile_0_1" and failed.error == LEGACY_FAILURE
    assert failed.attempts == 1


def test_rerun_and_resume_quirk(tmp_path: Path, mgr: ckptlite.CheckpointManager) -> None:
    path = tmp_path / "tiles.ckpt"
    write_tile_file(path, TILES[:5], [], 20, ts=1000.0)
    first = migrate(path, mgr, trust_pickle=True, process_id="geo")
    again = migrate(path, mgr, trust_pickle=True, process_id="geo")
    assert first.count(IMPORTED) == 1 and again.count(ALREADY) == 1
    (run,) = mgr.backend.list_runs("geo")
    assert len(mgr.backend.list_items(run.id, "tiles")) == 5
    # The legacy run resumed and saved again: only this run's completions, total = remaining.
    write_tile_file(path, TILES[5:9], ["tile_3_4"], 15, ts=2000.0)
    third = migrate(path, mgr, trust_pickle=True, process_id="geo")
    assert third.count(IMPORTED) == 1
    assert len(mgr.backend.list_runs("geo")) == 1  # the same unfinished run
    done, failed = mgr.backend.item_marks(run.id, "tiles")
    assert done == set(TILES[:9]) and set(failed) == {"tile_3_4"}
    assert len(mgr.list(process_id="geo")) == 2
    assert mgr.latest("geo", Level.STAGE).progress == (4, 15)


def test_directory_autodetect_and_sources_untouched(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    d = tmp_path / "work"
    d.mkdir()
    write_tile_file(d / "tile_checkpoint", TILES[:2], [], 20)
    (d / "notes.txt").write_text("not a checkpoint")
    before = tree_digest(d)
    report = migrate(d, mgr, trust_pickle=True)
    assert report.formats == ("tile",) and report.count(IMPORTED) == 1
    assert mgr.list()[0].process_id == "tile_checkpoint"  # default: the file's name
    assert tree_digest(d) == before


def test_needs_trust_and_refuses_foreign_classes(
    tmp_path: Path, mgr: ckptlite.CheckpointManager
) -> None:
    path = write_tile_file(tmp_path / "t", TILES[:2], [], 20)
    report = migrate(path, mgr, format="tile")
    assert report.count(FAILED) == 1 and "--trust-pickle" in (report.entries[0].reason or "")
    bad = write_tile_file(tmp_path / "bad", TILES[:2], [], 20, module="thirdparty.tiles.mod")
    report = migrate(bad, mgr, format="tile", trust_pickle=True)
    (entry,) = report.entries
    assert entry.outcome == FAILED
    assert "thirdparty.tiles.mod.ProcessingCheckpoint" in (entry.reason or "")
    assert mgr.list() == [] and mgr.backend.list_runs("bad") == []


def test_crash_between_ledger_and_checkpoint(
    tmp_path: Path, mgr: ckptlite.CheckpointManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    mig = importlib.import_module("ckptlite.legacy.migrate")  # the module, not the function

    path = write_tile_file(tmp_path / "t", TILES[:6], ["tile_3_3"], 20)

    def die(*_args: object) -> None:
        raise KeyboardInterrupt  # the process dies after the ledger marks, before the commit

    monkeypatch.setattr(mig, "_store", die)
    with pytest.raises(KeyboardInterrupt):
        migrate(path, mgr, trust_pickle=True, process_id="p")
    assert mgr.list() == []
    monkeypatch.undo()
    assert migrate(path, mgr, trust_pickle=True, process_id="p").count(IMPORTED) == 1
    (run,) = mgr.backend.list_runs("p")
    done, failed = mgr.backend.item_marks(run.id, "tiles")
    assert done == set(TILES[:6]) and failed == {"tile_3_3": 1}  # marked once, not twice
    assert len(mgr.list()) == 1
