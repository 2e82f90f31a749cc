"""``ckptlite migrate`` / ``ckptlite import``: report, JSON, dry run, and SIGKILL midway."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from legacy_builders import (
    Evil,
    LegacyCoreManager,
    ProcessingCheckpointSpec,
    ReferenceCoreLoader,
    new_uuid,
    reference_json,
    same,
    tile_checkpoint_bytes,
    tree_digest,
    write_pipeline_checkpoint,
)

import ckptlite
from ckptlite.cli import main

TILES = [f"tile_{r}_{c}" for r in range(10) for c in range(10)]


def build_source(root: Path, n: int, evil: Path | None = None) -> Path:
    """A legacy checkpoint directory holding systems 1, 2, 3 and 5 side by side."""
    m = LegacyCoreManager(root)
    t = 1_700_000_000.0
    rng = np.random.default_rng(7)
    for i in range(n):
        if i % 3 == 0:
            m.save(
                f"Merger_{1_700_000_000 + i}",
                {
                    "processor_state": {
                        "class": "Merger",
                        "config": {},
                        "items_processed": i,
                        "progress_node_id": None,
                    },
                    "processed_items": list(range(i)),
                },
                metadata={"processor": "Merger"},
                timestamp=t + i,
            )
        else:
            m.save(
                f"ckpt_{i:03d}",
                {"grid": rng.random((64, 64)), "i": i},
                level=("phase", "step", "substep")[i % 3],
                parent_id=f"ckpt_{i - 1:03d}" if i % 3 == 2 else None,
                timestamp=t + i,
            )
    if evil is not None:
        m.save("evil", {"x": Evil(evil)}, timestamp=t + n)
    exp = new_uuid()
    for stage in ("data_load", "resample", "merge"):
        write_pipeline_checkpoint(root, exp, stage)
    spec = ProcessingCheckpointSpec(t, TILES[:40], TILES[40:43], len(TILES), {"max_retries": 3})
    (root / "tile_checkpoint").write_bytes(tile_checkpoint_bytes(spec))
    return root


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_lines_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = build_source(tmp_path / "legacy", 6, evil=tmp_path / "pwned")
    store = str(tmp_path / "store")
    code, out, _ = run_cli("--store", store, "migrate", str(src), "--trust-pickle", capsys=capsys)
    assert code == 1  # one checkpoint was refused: problems found
    lines = out.splitlines()
    assert sum(line.startswith("imported ") for line in lines) == 6 + 3 + 1
    (refused,) = [line for line in lines if line.startswith("failed")]
    assert "evil" in refused and "posix.system" in refused
    assert not (tmp_path / "pwned").exists()
    assert "core: 4 imported, 1 failed" in out and "processor: 2 imported" in out
    assert "pipeline: 3 imported" in out and "tile: 1 imported" in out
    code, out, _ = run_cli("--store", store, "migrate", str(src), "--trust-pickle", capsys=capsys)
    lines = out.splitlines()
    assert sum(line.startswith("already imported ") for line in lines) == 10
    assert not any(line.startswith("imported ") for line in lines)


def test_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = build_source(tmp_path / "legacy", 3)
    store = str(tmp_path / "store")
    code, out, _ = run_cli(
        "--store", store, "--json", "migrate", str(src), "--trust-pickle", capsys=capsys
    )
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["dry_run"] is False
    assert data["formats"] == ["core", "pipeline", "tile"]
    assert data["counts"]["processor"]["imported"] == 1
    entry = data["entries"][0]
    assert set(entry) == {
        "format",
        "legacy_id",
        "source",
        "outcome",
        "checkpoint_id",
        "process_id",
        "status",
        "reason",
    }
    with ckptlite.open(store) as mgr:
        assert {e["checkpoint_id"] for e in data["entries"]} == {cp.id for cp in mgr.list()}


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = build_source(tmp_path / "legacy", 6)
    store = tmp_path / "store"
    with ckptlite.open(store) as mgr:
        mgr.save("existing", {"x": 1})
    before = tree_digest(src, store)
    code, out, _ = run_cli(
        "--store", str(store), "migrate", str(src), "--trust-pickle", "--dry-run", capsys=capsys
    )
    assert code == 0 and out.count("would import ") == 10
    assert "dry run, nothing written" in out
    assert tree_digest(src, store) == before
    # A dry run into a store that does not exist does not create it.
    fresh = tmp_path / "fresh"
    code, out, _ = run_cli(
        "--store", str(fresh), "migrate", str(src), "--dry-run", "--trust-pickle", capsys=capsys
    )
    assert code == 0 and not fresh.exists()


def test_import_format_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = build_source(tmp_path / "legacy", 3)
    store = str(tmp_path / "store")
    code, out, _ = run_cli(
        "--store",
        store,
        "import",
        "tile",
        str(src / "tile_checkpoint"),
        "--trust-pickle",
        "--process",
        "geo-tiles",
        capsys=capsys,
    )
    assert code == 0 and "tile: 1 imported" in out
    with ckptlite.open(store) as mgr:
        (cp,) = mgr.list()
        assert cp.process_id == "geo-tiles"
        with mgr.run("geo-tiles") as run:
            pending = [item.id for item in run.items("tiles", TILES)]
    assert pending == TILES[40:]  # completed skipped; failed (40-42) retried
    code, _out, err = run_cli("--store", store, "import", "orbax", str(src), capsys=capsys)
    assert code == 2 and "invalid choice" in err
    code, _out, err = run_cli("--store", store, "migrate", str(tmp_path / "nope"), capsys=capsys)
    assert code == 1 and "does not exist" in err and "hint:" in err


@pytest.mark.slow
def test_killed_midway_and_rerun_imports_each_checkpoint_once(tmp_path: Path) -> None:
    src = build_source(tmp_path / "legacy", 90)
    store = tmp_path / "store"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from ckptlite.cli import main; sys.exit(main())",
        "--store",
        str(store),
        "migrate",
        str(src),
        "--trust-pickle",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(1234)
    kills = 0
    for _round in range(12):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        target = rng.randint(1, 30)
        decided = 0
        for line in proc.stdout:
            if line.startswith(b"imported"):
                decided += 1
            if decided >= target:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            continue
        assert proc.returncode == 0, err
        break
    else:
        pytest.fail("migrate never finished")
    assert kills >= 2  # it really was interrupted midway, more than once
    # The complete set, each checkpoint exactly once, equal to the legacy loaders' view.
    with ckptlite.open(store) as mgr:
        cps = mgr.list()
        keys = [(cp.metadata["legacy_format"], cp.metadata["legacy_id"]) for cp in cps]
        assert len(keys) == len(set(keys)) == 90 + 3 + 1
        ref = ReferenceCoreLoader(src)
        by_key = dict(zip(keys, cps, strict=True))
        for cid in ref.records():
            fmt = "processor" if cid.startswith("Merger_") else "core"
            assert same(mgr.load(by_key[(fmt, cid)]), ref.load(cid)), cid
        for f in src.glob("*/checkpoint_*.json"):
            key = ("pipeline", f"{f.parent.name}/{f.stem.removeprefix('checkpoint_')}")
            assert mgr.load(by_key[key]) == reference_json(f)
        (run,) = mgr.backend.list_runs("tile_checkpoint")
        done, failed = mgr.backend.item_marks(run.id, "tiles")
        assert done == set(TILES[:40]) and failed == dict.fromkeys(TILES[40:43], 1)
        assert mgr.verify(full=True).ok
