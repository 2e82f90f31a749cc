"""The ckptlite command line, tried as a user would on a store a small pipeline built."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from damage import chunk_span, flip_bit

import ckptlite
from ckptlite import Level, Status
from ckptlite.cli import EXIT_CODES, build_parser, exit_code, main
from ckptlite.progress import Progress

CKPTLITE = Path(sys.executable).parent / "ckptlite"


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config file and no $CKPTLITE_* variables leak into these tests."""
    for var in list(os.environ):
        if var.startswith("CKPTLITE_") and var not in ("CKPTLITE_TEST_PG", "CKPTLITE_REQUIRE_PG"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "no-such-config.toml"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, (out, err)
    return json.loads(out)


@pytest.fixture
def pipeline(tmp_path: Path) -> dict[str, Any]:
    """A store built by a small pipeline: one run, two stages, four tile steps under the first."""
    store = tmp_path / "store"
    rng = np.random.default_rng(7)
    with ckptlite.open(store, durability="none") as mgr:
        top = mgr.save("tiles", {"tiles": 4}, level=Level.PIPELINE, name="run")
        resample = mgr.save(
            "tiles",
            {"raster": rng.random(300_000, dtype="f4"), "crs": "EPSG:4326"},
            level=Level.STAGE,
            name="resample",
            parent=top,
        )
        steps = [
            mgr.save(
                "tiles",
                {"tile": i, "mean": float(i) / 2, "mask": np.arange(i + 3, dtype="i2")},
                level=Level.STEP,
                name=f"tile_{i}",
                parent=resample,
                progress=(i + 1, 4),
            )
            for i in range(4)
        ]
        render = mgr.save(
            "tiles", {"png": rng.bytes(100)}, level=Level.STAGE, name="render", parent=top
        )
        other = mgr.save("other-job", [1, 2, 3], level=Level.STEP, name="x")
    return {
        "store": str(store),
        "top": top,
        "resample": resample,
        "steps": steps,
        "render": render,
        "other": other,
    }


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


# -- 1. help ---------------------------------------------------------------------


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    names = subcommands()
    assert {"ls", "show", "cat", "rm", "verify", "gc", "stats", "backup", "config"} <= set(names)
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Example" in out
    for name in names:
        code, out, _ = run(capsys, name, "--help")
        assert code == 0, name
        assert "Example" in out, f"`ckptlite {name} --help` has no example"
        example = out.split("Example", 1)[1]
        assert re.search(rf"\bckptlite\b.* {name}\b", example), name
        assert "--store" in out and "--json" in out, name


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"ckptlite {ckptlite.__version__}"


# -- 2. a new user on a pipeline's store --------------------------------------------


def test_ls_tree_shows_the_hierarchy(capsys: pytest.CaptureFixture[str], pipeline: dict) -> None:
    code, out, _ = run(capsys, "--store", pipeline["store"], "ls", "--tree")
    assert code == 0
    lines = out.splitlines()
    ids = [
        pipeline["top"].id,
        pipeline["resample"].id,
        *(s.id for s in pipeline["steps"]),
        pipeline["render"].id,
        pipeline["other"].id,
    ]
    where = {cid: next(i for i, ln in enumerate(lines) if cid in ln) for cid in ids}
    # creation order, depth from the branch drawing
    assert [where[c] for c in ids] == sorted(where.values())
    depth = {cid: (len(lines[i]) - len(lines[i].lstrip("│├└─ "))) // 3 for cid, i in where.items()}
    assert depth[pipeline["top"].id] == 0 and depth[pipeline["other"].id] == 0
    assert depth[pipeline["resample"].id] == 1 and depth[pipeline["render"].id] == 1
    assert all(depth[s.id] == 2 for s in pipeline["steps"])
    assert lines[where[pipeline["steps"][-1].id]].lstrip("│ ").startswith("└─ tile_3  tiles")
    assert lines[where[pipeline["render"].id]].startswith("└─ render")

    tree = run_json(capsys, "ls", "--tree", "--store", pipeline["store"])["tree"]
    assert [n["checkpoint"]["id"] for n in tree] == [pipeline["top"].id, pipeline["other"].id]
    stages = tree[0]["children"]
    assert [s["checkpoint"]["name"] for s in stages] == ["resample", "render"]
    assert [c["checkpoint"]["name"] for c in stages[0]["children"]] == [
        f"tile_{i}" for i in range(4)
    ]
    for child in stages[0]["children"]:
        assert child["checkpoint"]["parent_id"] == pipeline["resample"].id

    # a filtered tree keeps the steps, drawn as detached roots
    sub = run_json(
        capsys,
        "--store",
        pipeline["store"],
        "ls",
        "--tree",
        "--level",
        "step",
        "--process",
        "tiles",
    )["tree"]
    assert [n["checkpoint"]["name"] for n in sub] == [f"tile_{i}" for i in range(4)]
    assert all(n["detached"] for n in sub)


def test_verify_names_the_checkpoint_whose_chunk_was_damaged(
    capsys: pytest.CaptureFixture[str], pipeline: dict
) -> None:
    store = pipeline["store"]
    assert run(capsys, "--store", store, "verify")[0] == 0
    assert run(capsys, "--store", store, "verify", "--full")[0] == 0

    with ckptlite.open(store) as mgr:
        digest = mgr.backend.get_record(pipeline["resample"].id).digests[0]
    path, offset, _ = chunk_span(Path(store), digest)  # the raster is stored in a pack file
    flip_bit(path, offset=offset + 1000)

    code, out, err = run(capsys, "--store", store, "verify", "--full")
    assert code == 1, (out, err)
    assert f"CORRUPTED {pipeline['resample'].id}" in out
    assert "tile_" not in out and pipeline["render"].id not in out

    code, out, _ = run(capsys, "--store", store, "verify", "--full", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False and report["full"] is True
    assert report["corrupted"] == [pipeline["resample"].id]
    assert report["checked"] == 8
    listed = run_json(capsys, "--store", store, "ls", "--status", "corrupted")["checkpoints"]
    assert [c["id"] for c in listed] == [pipeline["resample"].id]

    # `cat` of the damaged checkpoint fails with exit 1 and a hint, no traceback
    code, out, err = run(capsys, "--store", store, "cat", pipeline["resample"].id)
    assert code == 1 and "corrupted" in err and "hint:" in err and "Traceback" not in err


def test_quick_verify_finds_a_missing_chunk_file(
    capsys: pytest.CaptureFixture[str], pipeline: dict
) -> None:
    with ckptlite.open(pipeline["store"]) as mgr:
        digest = mgr.backend.get_record(pipeline["resample"].id).digests[0]
    chunk_span(Path(pipeline["store"]), digest)[0].unlink()  # its pack file
    code, out, _ = run(capsys, "--store", pipeline["store"], "verify")
    assert code == 1
    assert f"CORRUPTED {pipeline['resample'].id}" in out
    assert f"missing chunk {digest}" in out


def test_gc_dry_run_reports_exactly_what_gc_removes(
    capsys: pytest.CaptureFixture[str], pipeline: dict
) -> None:
    store = Path(pipeline["store"])
    # garbage: the raster's chunks (its stage deleted with its steps) and a dead writer's temp
    code, out, _ = run(capsys, "--store", str(store), "rm", "-r", pipeline["resample"].id)
    assert code == 0 and out.count("deleted ") == 5
    (store / "blobs" / "tmp" / "0123abcd.999.dead.tmp").write_bytes(b"half a chunk")
    files_before = sorted(p.name for p in store.rglob("*") if p.is_file())

    dry = run_json(capsys, "--store", str(store), "gc", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["chunks"] and dry["temp_files"] == ["0123abcd.999.dead.tmp"]
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == files_before

    real = run_json(capsys, "--store", str(store), "gc")
    assert real["dry_run"] is False
    assert (real["chunks"], real["temp_files"], real["bytes_reclaimed"]) == (
        dry["chunks"],
        dry["temp_files"],
        dry["bytes_reclaimed"],
    )
    assert real["packs"] == dry["packs"] and dry["packs"], "the raster's packs go"
    left = {p.name for p in store.rglob("*") if p.is_file()}
    assert not left & set(dry["packs"]) and "0123abcd.999.dead.tmp" not in left
    again = run_json(capsys, "--store", str(store), "gc", "--dry-run")
    assert again["chunks"] == [] and again["temp_files"] == []
    assert run(capsys, "--store", str(store), "verify", "--full")[0] == 0

    code, out, _ = run(capsys, "--store", str(store), "gc", "--dry-run")
    assert code == 0 and "would remove 0 chunks" in out


def test_rm_needs_r_for_a_checkpoint_with_children(
    capsys: pytest.CaptureFixture[str], pipeline: dict
) -> None:
    code, _, err = run(capsys, "--store", pipeline["store"], "rm", pipeline["top"].id)
    assert code == 2 and "-r" in err
    assert len(run_json(capsys, "--store", pipeline["store"], "ls")["checkpoints"]) == 8
    out = run_json(capsys, "--store", pipeline["store"], "rm", pipeline["other"].id)
    assert out == {"deleted": [pipeline["other"].id]}


# -- 3. JSON schemas ------------------------------------------------------------------


def test_ls_json(capsys: pytest.CaptureFixture[str], pipeline: dict) -> None:
    store = pipeline["store"]
    cps = run_json(capsys, "--store", store, "ls")["checkpoints"]
    assert len(cps) == 8
    assert [c["seq"] for c in cps] == sorted((c["seq"] for c in cps), reverse=True)
    assert set(cps[0]) == {
        "id",
        "process_id",
        "level",
        "name",
        "parent_id",
        "seq",
        "status",
        "created_at",
        "size",
        "stored_size",
        "checksum",
        "metadata",
        "progress",
    }
    steps = run_json(capsys, "ls", "--store", store, "-p", "tiles", "-l", "step")["checkpoints"]
    assert [c["name"] for c in steps] == [f"tile_{i}" for i in (3, 2, 1, 0)]
    assert steps[0]["progress"] == [4, 4] and steps[0]["status"] == "valid"
    one = run_json(capsys, "--store", store, "ls", "--name", "tile_2")["checkpoints"]
    assert [c["id"] for c in one] == [pipeline["steps"][2].id]
    assert run_json(capsys, "--store", store, "ls", "--since", "1h", "-n", "2")["checkpoints"]
    assert run_json(capsys, "--store", store, "ls", "--since", "2999-01-01")["checkpoints"] == []
    code, _, err = run(capsys, "--store", store, "ls", "--since", "yesterday-ish")
    assert code == 2 and "not a time or age" in err


def test_show_json(capsys: pytest.CaptureFixture[str], pipeline: dict) -> None:
    step = pipeline["steps"][1]
    cp = run_json(capsys, "--store", pipeline["store"], "show", step.id)["checkpoint"]
    assert cp["id"] == step.id and cp["parent_id"] == pipeline["resample"].id
    assert cp["level"] == "step" and cp["name"] == "tile_1" and cp["progress"] == [2, 4]
    assert cp["checksum"] == step.checksum and cp["size"] == step.size
    assert cp["created_at"] == step.created_at.isoformat()
    code, out, _ = run(capsys, "--store", pipeline["store"], "show", step.id)
    assert code == 0 and f"parent_id    {pipeline['resample'].id}" in out


def test_stats_json(capsys: pytest.CaptureFixture[str], pipeline: dict) -> None:
    s = run_json(capsys, "--store", pipeline["store"], "stats")
    assert s["checkpoints"] == 8
    assert s["by_process"] == {
        "tiles": {"pipeline": 1, "stage": 2, "step": 4},
        "other-job": {"step": 1},
    }
    assert s["by_status"] == {"valid": 8}
    with ckptlite.open(pipeline["store"]) as mgr:
        logical = sum(c.size for c in mgr.list())
    assert s["logical_bytes"] == logical
    assert s["stored_bytes"] > 0 and s["dedup_ratio"] == pytest.approx(logical / s["stored_bytes"])
    code, out, _ = run(capsys, "--store", pipeline["store"], "stats")
    assert code == 0 and "tiles" in out and "dedup ratio" in out


def test_cat_summarises_arrays_unless_full(
    capsys: pytest.CaptureFixture[str], pipeline: dict
) -> None:
    code, out, _ = run(capsys, "--store", pipeline["store"], "cat", pipeline["resample"].id)
    assert code == 0
    state = json.loads(out)
    raster = state["raster"]
    assert raster["__type__"] == "ndarray" and raster["dtype"] == "float32"
    assert raster["shape"] == [300_000] and "data" not in raster
    assert 0 <= raster["min"] < raster["max"] < 1
    assert state["crs"] == "EPSG:4326"

    step = pipeline["steps"][2]
    full = run_json(capsys, "--store", pipeline["store"], "cat", step.id, "--full")
    assert full["id"] == step.id
    assert full["state"]["mask"]["data"] == [0, 1, 2, 3, 4]
    assert full["state"]["tile"] == 2 and full["state"]["mean"] == 1.0
    png = json.loads(run(capsys, "--store", pipeline["store"], "cat", pipeline["render"].id)[1])
    assert png["png"]["size"] == 100 and "base64" not in png["png"]


# -- 4. backup while another process saves ------------------------------------------

WRITER = """
import sys
from pathlib import Path
import numpy as np
import ckptlite

with ckptlite.open(sys.argv[1]) as mgr:
    i = 0
    while True:
        raster = np.random.default_rng(i).random(150_000, dtype="f4")
        mgr.save("writer", {"i": i, "raster": raster}, name=f"s{i % 7}")
        i += 1
        if i == 5:
            Path(sys.argv[2]).touch()
"""


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    store = tmp_path / "live"
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "writer died"
            assert time.monotonic() < deadline, "writer never got going"
            time.sleep(0.05)
        yield proc, store
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_backup_of_a_store_being_written_opens_and_verifies(
    writer: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, store = writer
    dest = tmp_path / "copy"
    # a real `ckptlite` process, as an operator would run it
    done = subprocess.run(
        [str(CKPTLITE), "backup", str(dest), "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert proc.poll() is None, "the writer must still be saving while the backup runs"
    report = json.loads(done.stdout)
    assert report["dest"] == str(dest) and report["checkpoints"] >= 5

    with ckptlite.open(dest, create=False) as copy:
        assert copy.verify(full=True).ok
        cps = copy.list()
        assert len(cps) == report["checkpoints"]
        for cp in cps:
            state = copy.load(cp.id)
            expected = np.random.default_rng(state["i"]).random(150_000, dtype="f4")
            assert np.array_equal(state["raster"], expected)
    verify = subprocess.run(
        [str(CKPTLITE), "--store", str(dest), "verify", "--full"], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # the writer kept going: the live store moved on past the copy
    deadline = time.monotonic() + 30
    while True:
        with ckptlite.open(store) as live:
            if len(live.list(process_id="writer")) > report["checkpoints"]:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_backup_refuses_an_existing_destination_and_memory_stores(
    capsys: pytest.CaptureFixture[str], pipeline: dict, tmp_path: Path
) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "file").write_text("x")
    code, _, err = run(capsys, "--store", pipeline["store"], "backup", str(dest))
    assert code == 2 and "exists" in err
    code, _, err = run(capsys, "--store", "memory://", "backup", str(tmp_path / "new"))
    assert code == 2 and "export" in err and not (tmp_path / "new").exists()


# -- errors, exit codes, global options ----------------------------------------------


def test_errors_print_message_and_hint_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    code, out, err = run(capsys, "--store", str(missing), "ls")
    assert code == 2 and out == ""
    assert f"no ckptlite store at {missing}" in err and "hint:" in err
    assert "Traceback" not in err
    assert not missing.exists(), "a read command must not create a store"

    code, _, err = run(capsys, "ls", "--store", str(missing), "--debug")
    assert code == 2 and "Traceback" in err

    code, out, _ = run(capsys, "--store", str(missing), "ls", "--json")
    error = json.loads(out)["error"]
    assert code == 2 and error["type"] == "ConfigError" and error["exit"] == 2
    assert error["hint"]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], pipeline: dict) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "--store", pipeline["store"], "ls", "--level", "galaxy")[0] == 2
    code, _, err = run(capsys, "--store", pipeline["store"], "show", "chk_nope")
    assert code == 2 and "no checkpoint" in err


def test_exit_codes_live_in_one_table() -> None:
    assert exit_code(ckptlite.ConfigError("x")) == 2
    assert exit_code(ckptlite.CheckpointNotFoundError("x")) == 2
    assert exit_code(ckptlite.CorruptCheckpointError("x")) == 1
    assert exit_code(ckptlite.StoreFullError("x")) == 1
    assert exit_code(RuntimeError("bug")) == 1
    assert all(code in (1, 2) for _, code in EXIT_CODES)


def test_store_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], pipeline: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPTLITE_HOME", pipeline["store"])
    assert len(run_json(capsys, "ls")["checkpoints"]) == 8
    cfg = run_json(capsys, "config")
    assert cfg["values"]["url"] == {"value": pipeline["store"], "source": "env CKPTLITE_HOME"}
    cfg = run_json(capsys, "config", "--store", "memory://")
    assert cfg["values"]["url"] == {"value": "memory://", "source": "flag --store"}


def test_progress_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        with Progress("verify", stream=stream) as p:
            p.update(3, 4)
            time.sleep(0.3)
    assert "verify [###############.....] 3/4" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_checkpoint_statuses_render(capsys: pytest.CaptureFixture[str], pipeline: dict) -> None:
    with ckptlite.open(pipeline["store"]) as mgr:
        mgr.backend.set_status(pipeline["render"].id, Status.ARCHIVED)
    code, out, _ = run(capsys, "--store", pipeline["store"], "ls", "--tree")
    line = next(ln for ln in out.splitlines() if pipeline["render"].id in ln)
    assert code == 0 and line.split()[4] == "archived"  # TREE PROCESS LEVEL STATUS


# -- prune and runs (the process layer's retention and run ledger) -----------------------


def test_prune_dry_run_explains_exactly_what_prune_removes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "p")
    with ckptlite.open(store, durability="none") as mgr:
        saved = [mgr.save("job", {"i": i}, name="model") for i in range(12)]
        keep_me = mgr.save("other", 1, name="x")
    code, _, err = run(capsys, "--store", store, "prune")
    assert code == 2 and "no retention rule" in err

    # keep_every comes from the config file, keep_last from a flag
    cfg = tmp_path / "ckptlite.toml"
    cfg.write_text("[retention]\nkeep_every = 5\nkeep_last = 9\n")
    monkeypatch.setenv("CKPTLITE_CONFIG", str(cfg))
    argv = ["--store", store, "prune", "--process", "job", "--keep-last", "3"]
    code, out, _ = run(capsys, *argv, "--dry-run")
    assert code == 0 and "would remove 8 of 12 checkpoints" in out
    assert out.count("would remove chk_") == 8 and "keep_every=5" in out
    dry = run_json(capsys, *argv, "--dry-run")
    assert dry["dry_run"] is True and dry["policy"]["keep_last"] == 3
    assert dry["policy"]["keep_every"] == 5
    expected_kept = {saved[i].id for i in (4, 9, 10, 11)}  # positions 5, 10 and the last 3
    assert {d["checkpoint"]["id"] for d in dry["decisions"] if d["keep"]} == expected_kept
    assert all(d["reasons"] for d in dry["decisions"])
    assert len(run_json(capsys, "--store", store, "ls")["checkpoints"]) == 13  # nothing removed

    real = run_json(capsys, *argv)
    assert real["dry_run"] is False and real["removed"] == dry["removed"]
    left = {c["id"] for c in run_json(capsys, "--store", store, "ls")["checkpoints"]}
    assert left == expected_kept | {keep_me.id}


def test_runs_json_shows_lifecycle_and_ledger_progress(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = str(tmp_path / "r")
    with ckptlite.open(store, durability="none") as mgr:
        with mgr.run("tiles") as r:
            for item in r.items("tiles", [f"t{i}" for i in range(10)]):
                if item.id == "t3":
                    item.fail(ValueError("bad tile"))
                else:
                    item.done({"ok": True})
        with mgr.run("load") as r:
            r.stage("read").complete([1, 2])
    runs = run_json(capsys, "--store", store, "runs")["runs"]
    assert [r["process_id"] for r in runs] == ["load", "tiles"]  # newest first
    load, tiles = runs
    assert load["status"] == "completed" and load["error"] is None
    assert tiles["status"] == "failed" and tiles["progress"] == [9, 10]
    assert "1 item(s) failed" in tiles["error"]
    assert tiles["finished_at"] >= tiles["started_at"]
    assert set(tiles) >= {"id", "status", "started_at", "updated_at", "finished_at", "error"}
    only = run_json(capsys, "--store", store, "runs", "-p", "tiles")["runs"]
    assert [r["id"] for r in only] == [tiles["id"]]
    code, out, _ = run(capsys, "--store", store, "runs")
    assert code == 0 and "failed" in out and "9/10" in out


def test_runs_shows_live_workers_and_items_done_claimed_failed_pending(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = str(tmp_path / "r")
    with ckptlite.open(store, durability="none") as mgr:
        run = mgr.run("tiles", batch_size=1)
        items = run.items("t", [f"t{i}" for i in range(10)], claim=2)
        next(items).done()
        next(items).fail("bad")
        next(items)  # batches 0 (not closed until its marks commit) and 1 are held
        out = run_json(capsys, "--store", store, "runs")
        assert out["items"][run.id] == {"done": 1, "claimed": 4, "failed": 1, "pending": 4}
        (worker,) = out["workers"][run.id]
        assert worker["worker_id"] == run.worker_id and worker["live"] is True
        assert worker["host"] and worker["beat_at"]
        code, out, _ = run_cli_text(capsys, store)
        assert code == 0 and "live workers:" in out and run.worker_id in out
        run.finish()
    out = run_json(capsys, "--store", store, "runs")
    (view,) = out["runs"]
    assert view["status"] == "failed"  # an item failed (the last worker out decides)
    assert not out["workers"][view["id"]][0]["live"] and out["items"][view["id"]]["claimed"] == 0
    assert "live workers:" not in run_cli_text(capsys, store)[1]


def run_cli_text(capsys: pytest.CaptureFixture[str], store: str) -> tuple[int, str, str]:
    return run(capsys, "--store", store, "runs")


def test_export_then_import_archive(
    capsys: pytest.CaptureFixture[str], pipeline: dict, tmp_path: Path
) -> None:
    archive = tmp_path / "store.tar"
    out = run_json(capsys, "--store", pipeline["store"], "export", str(archive))
    assert out["checkpoints"] == 8 and out["path"] == str(archive) and archive.is_file()
    dest = str(tmp_path / "restored")
    imported = run_json(capsys, "--store", dest, "import-archive", str(archive))
    assert (imported["checkpoints"], imported["imported"]) == (8, 8)
    code, text, _ = run(capsys, "--store", dest, "import-archive", str(archive))
    assert code == 0 and "imported 0, 8 already present" in text
    assert run(capsys, "--store", dest, "verify", "--full")[0] == 0
    tree = run(capsys, "--store", dest, "ls", "--tree")[1]
    assert tree == run(capsys, "--store", pipeline["store"], "ls", "--tree")[1]

    # a damaged archive: exit 1, names the checkpoint, imports nothing
    with tarfile.open(archive) as tar:
        blob = next(m for m in tar if "/blobs/" in m.name)
    data = bytearray(archive.read_bytes())
    data[blob.offset_data + 10] ^= 0x01
    archive.write_bytes(bytes(data))
    fresh = str(tmp_path / "fresh")
    code, _, err = run(capsys, "--store", fresh, "import-archive", str(archive))
    assert code == 1 and pipeline["resample"].id in err and "nothing was imported" in err
    assert run_json(capsys, "--store", fresh, "ls")["checkpoints"] == []
    code, _, err = run(capsys, "--store", fresh, "import-archive", str(tmp_path / "nope.tar"))
    assert code == 2 and "no archive" in err


def test_on_the_example_pipelines_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The README's example pipeline, then the operator's view of its store."""
    store = str(tmp_path / "tiles")
    example = Path(__file__).parents[1] / "examples" / "tile_pipeline.py"
    subprocess.run(
        [sys.executable, str(example), "--store", store],
        check=True,
        timeout=300,
        capture_output=True,
    )
    runs = run_json(capsys, "--store", store, "runs")["runs"]
    assert len(runs) == 1
    assert runs[0]["status"] == "completed" and runs[0]["progress"] == [64, 64]
    tree = run_json(capsys, "--store", store, "ls", "--tree")["tree"]
    assert [n["checkpoint"]["level"] for n in tree] == ["pipeline"]  # the run
    assert [n["checkpoint"]["name"] for n in tree[0]["children"]] == [
        "generate",
        "resample",
        "mosaic",
    ]
    drawn = run(capsys, "--store", store, "ls", "--tree")[1].splitlines()
    names = [ln.lstrip("│├└─ ").split()[0] for ln in drawn[1:6]]
    assert names == ["run", "generate", "resample", "mosaic", "items:tiles"]
    stats = run_json(capsys, "--store", store, "stats")
    assert stats["by_process"] == {"tile-pipeline": {"pipeline": 1, "stage": 3}}

    ok = subprocess.run(
        [str(CKPTLITE), "verify", "--full", "--store", store], capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.rstrip().endswith("ok")
    with ckptlite.open(store) as mgr:
        conn = mgr.backend.db.read()
        (digest,) = conn.execute(
            "SELECT digest FROM chunks WHERE data IS NULL ORDER BY stored_size DESC LIMIT 1"
        ).fetchone()  # the biggest chunk in a file
        users = mgr.backend.checkpoints_using([digest])
        names = {mgr.get(cid).name for cid in users}
    assert names == {"generate"}
    victim, offset, _ = chunk_span(Path(store), digest)
    flip_bit(victim, offset=offset + 4321)
    bad = subprocess.run(
        [str(CKPTLITE), "verify", "--full", "--store", store], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert [ln.split()[1] for ln in bad.stdout.splitlines() if ln.startswith("CORRUPTED")] == (
        sorted(users)
    )
    dry = run_json(capsys, "--store", store, "gc", "--dry-run")
    real = run_json(capsys, "--store", store, "gc")
    assert dry["chunks"] == real["chunks"] and dry["bytes_reclaimed"] == real["bytes_reclaimed"]


def test_full_verify_feeds_the_progress_bar(pipeline: dict) -> None:
    calls: list[tuple[int, int]] = []
    with ckptlite.open(pipeline["store"]) as mgr:
        assert mgr.verify(full=True, progress=lambda d, t: calls.append((d, t))).ok
        chunks = mgr.stats()["chunks"]
    assert chunks > 1
    assert sorted(calls) == [(i, chunks) for i in range(1, chunks + 1)]


def test_usage_errors_in_json_mode_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json", "ls", "--level", "galaxy")
    error = json.loads(out)["error"]
    assert code == 2 and error["type"] == "UsageError" and error["exit"] == 2
    assert "galaxy" in error["message"] and error["hint"].startswith("usage: ckptlite ls")
    code, out, err = run(capsys, "ls", "--limit", "many")
    assert code == 2 and out == "" and "usage: ckptlite ls" in err and "many" in err


def test_prune_keep_last_keep_every_twice_keeps_the_same(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:  # saved without any policy
        cps = [mgr.save("geo", i, name="tile") for i in range(20)]
    expected = sorted(cps[p - 1].id for p in (5, 10, 15, 19, 20))
    argv = ("--store", str(store), "prune", "--keep-last", "2", "--keep-every", "5")
    for _ in range(3):
        assert run(capsys, *argv)[0] == 0
        assert (
            sorted(c["id"] for c in run_json(capsys, "--store", str(store), "ls")["checkpoints"])
            == expected
        )


def test_gc_dry_run_prints_a_summary_and_names_deleted_packs_as_deleted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "s"
    rng = np.random.default_rng(5)
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", {"keep": rng.bytes(1 << 20)})
    with ckptlite.open(store, durability="none") as mgr:  # a pack of its own
        gone = mgr.save("p", {"gone": rng.bytes(4 << 20)})
    with ckptlite.open(store, durability="none") as mgr:
        mgr.delete(gone.id)
    dry = run_json(capsys, "--store", str(store), "gc", "--dry-run")
    assert dry["chunks"] and dry["deleted_packs"] and dry["compacted_packs"] == []
    code, out, _ = run(capsys, "--store", str(store), "gc", "--dry-run")
    assert code == 0 and len(out.splitlines()) == 1  # the summary only
    assert f"would remove {len(dry['chunks'])} chunks" in out and "4.0 MiB" in out
    assert "would delete 1 pack" in out and "compact" not in out
    code, out, _ = run(capsys, "--store", str(store), "gc", "--dry-run", "--verbose")
    assert all(f"would remove chunk {d}" in out for d in dry["chunks"])
    assert f"would delete pack {dry['deleted_packs'][0]}" in out and "compact" not in out
    code, out, _ = run(capsys, "--store", str(store), "gc")
    assert code == 0 and "removed" in out and "4.0 MiB" in out and "chunk " not in out


# -- sync: remote names, PostgreSQL from libpq's environment, paths -------------------


@pytest.fixture
def small_store(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "here"
    with ckptlite.open(store, durability="none") as mgr:
        cid = mgr.save("geo", {"tile": 1}).id
    return store, cid


def test_sync_to_postgres_uses_libpq_environment_and_creates_no_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_schema: str,
    small_store: tuple[Path, str],
) -> None:
    import urllib.parse

    parts = urllib.parse.urlsplit(pg_schema)
    query = dict(urllib.parse.parse_qsl(parts.query))
    for var in ("PGSERVICE", "PGPASSFILE", "PGHOSTADDR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGHOST", parts.hostname or "")
    monkeypatch.setenv("PGPORT", str(parts.port or 5432))
    monkeypatch.setenv("PGUSER", parts.username or "")
    monkeypatch.setenv("PGDATABASE", parts.path.lstrip("/"))
    monkeypatch.setenv("PGOPTIONS", query["options"])  # the test's own schema
    monkeypatch.chdir(tmp_path)
    store, cid = small_store
    code, _, err = run(capsys, "--store", str(store), "sync", "--to", "postgres")
    assert code == 0, err
    assert not (tmp_path / "postgres").exists()
    with ckptlite.open(pg_schema) as pg:
        assert pg.load(cid) == {"tile": 1}


def test_sync_to_an_unknown_bare_name_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_store: tuple[Path, str],
) -> None:
    monkeypatch.chdir(tmp_path)
    store, _ = small_store
    code, _, err = run(capsys, "--store", str(store), "sync", "--to", "prod")
    assert code == 2 and not (tmp_path / "prod").exists()
    assert "not a configured remote" in err and "ckptlite remote add prod" in err
    assert "./prod" in err  # how to mean a new local directory
    # A path (it has a '/') is a directory, created as before.
    code, _, err = run(capsys, "--store", str(store), "sync", "--to", "./prod")
    assert code == 0, err
    assert (tmp_path / "prod" / "ckptlite.db").is_file()


def test_remote_add_list_remove_and_sync_by_name(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_store: tuple[Path, str],
) -> None:
    monkeypatch.chdir(tmp_path)
    store, cid = small_store
    hub = tmp_path / "hub"
    assert run(capsys, "remote", "add", "hub", str(hub))[0] == 0
    monkeypatch.setenv("CKPTLITE_REMOTE_MIRROR", "memory://")
    listed = run_json(capsys, "remote", "list")
    assert listed["remotes"]["hub"]["url"] == str(hub)
    assert listed["remotes"]["mirror"]["source"] == "env CKPTLITE_REMOTE_MIRROR"
    code, out, _ = run(capsys, "remote", "list")
    assert code == 0 and "hub" in out and str(hub) in out
    code, _, err = run(capsys, "--store", str(store), "sync", "--to", "hub")
    assert code == 0, err
    assert not (tmp_path / "hub").samefile(tmp_path) and (hub / "ckptlite.db").is_file()
    with ckptlite.open(hub) as mgr:
        assert mgr.load(cid) == {"tile": 1}
    # Pull back by name too.
    assert run(capsys, "--store", str(tmp_path / "back"), "sync", "--from", "hub")[0] == 0
    code, _, err = run(capsys, "remote", "add", "hub", "memory://")
    assert code == 2 and "exists" in err  # no silent overwrite
    assert run(capsys, "remote", "remove", "hub")[0] == 0
    assert "hub" not in run_json(capsys, "remote", "list")["remotes"]
    assert run(capsys, "remote", "remove", "hub")[0] == 2
    assert run(capsys, "remote", "add", "bad/name", "memory://")[0] == 2


# -- small things that surprised (issue 17, bug 4) ------------------------------------


def test_cat_of_a_pickled_state_hints_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import collections

    store = tmp_path / "s"
    with ckptlite.open(store, allow_pickle=True) as mgr:
        cid = mgr.save("p", {"q": collections.deque([1])}).id
    code, _, err = run(capsys, "--store", str(store), "cat", cid)
    assert code == 2 and "--allow-pickle" in err and "allow_pickle=True" not in err
    code, out, _ = run(capsys, "--store", str(store), "cat", cid, "--allow-pickle")
    assert code == 0 and json.loads(out)


def test_prune_keep_last_0_names_the_flag_and_the_true_range(
    capsys: pytest.CaptureFixture[str], pipeline: dict
) -> None:
    code, _, err = run(capsys, "--store", pipeline["store"], "prune", "--keep-last", "0")
    assert code == 2
    assert "from 1 to 2147483647" in err and "2147483648" not in err
    assert "store URL" not in err and "--keep-last" in err.split("hint:")[1]


def test_the_progress_bar_draws_a_finished_count_once() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with Progress("export", stream=stream) as bar:
        bar.update(8, 8)
        time.sleep(0.8)  # the display thread wakes ~6 times: nothing new to draw
    assert stream.getvalue().count("8/8") == 1


# -- seeing what is in a store: items, cat RUN/GROUP/ITEM, stats of item results -------


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[str, str]:
    """A store whose run did 3 tiles, failed one, and has a second group."""
    store = tmp_path / "ledger"
    with ckptlite.open(store, durability="none") as mgr, mgr.run("tiles") as run:
        for it in run.items("tiles", [f"t{i}" for i in range(4)]):
            if it.id == "t3":
                it.fail("ValueError: no data over the sea")
            else:
                it.done({"tile": it.id, "px": np.arange(1000 * (int(it.id[1]) + 1))})
        for it in run.items("other", ["x"]):
            it.done(None)
        run_id = run.id
    return str(store), run_id


def test_items_lists_a_runs_work_items(
    capsys: pytest.CaptureFixture[str], ledger: tuple[str, str]
) -> None:
    store, run_id = ledger
    data = run_json(capsys, "--store", store, "items", run_id)
    by_id = {(e["group"], e["item"]): e for e in data["items"]}
    assert set(by_id) == {("tiles", f"t{i}") for i in range(4)} | {("other", "x")}
    assert by_id[("tiles", "t3")]["status"] == "failed"
    assert by_id[("tiles", "t3")]["error"] == "ValueError: no data over the sea"
    assert by_id[("tiles", "t3")]["attempts"] == 1
    sizes = [by_id[("tiles", f"t{i}")]["size"] for i in range(3)]
    assert sizes[0] > 8000 and sizes[0] < sizes[1] < sizes[2]  # arange(1000) is 8000 bytes
    assert by_id[("other", "x")]["size"] == 0 and by_id[("other", "x")]["status"] == "done"
    failed = run_json(capsys, "--store", store, "items", run_id, "--status", "failed")["items"]
    assert [e["item"] for e in failed] == ["t3"]
    other = run_json(capsys, "--store", store, "items", run_id, "--group", "other")["items"]
    assert [e["item"] for e in other] == ["x"]
    code, out, _ = run(capsys, "--store", store, "items", run_id, "--status", "failed")
    assert code == 0 and "ATTEMPTS" in out and "no data over the sea" in out and "t0" not in out
    code, _, err = run(capsys, "--store", store, "items", "run_nope")
    assert code == 2 and "run_nope" in err


_HOLDER = """
import sys, time
from pathlib import Path
import ckptlite
url, out = sys.argv[1], Path(sys.argv[2])
with ckptlite.open(url) as mgr:
    run = mgr.run("job", lease=1.0)
    items = run.items("tiles", [f"t{i}" for i in range(10)], claim=3)
    first = next(items)  # holds batch 0 (t0-t2), its lease renewed by the heartbeat
    (out / "holding").write_text(run.id)
    while True:
        time.sleep(0.1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_items_pending_and_claimed_with_another_process_holding_a_batch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "s") if kind == "local" else str(request.getfixturevalue("pg_schema"))
    # An earlier worker did t9 and failed t8.
    with ckptlite.open(url) as mgr, mgr.run("job", lease=1.0) as earlier:
        for item in earlier.items("tiles", [f"t{i}" for i in range(10)], claim=3):
            if item.id == "t9":
                item.done(9)
            elif item.id == "t8":
                item.fail(ValueError("sea"))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "holding").exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run_id = (tmp_path / "holding").read_text()

        def items(status: str) -> list[str]:
            got = run_json(capsys, "--store", url, "items", run_id, "--status", status)["items"]
            assert {e["status"] for e in got} <= {status}
            return [e["item"] for e in got]

        assert items("claimed") == ["t0", "t1", "t2"]
        assert items("pending") == [f"t{i}" for i in range(3, 8)]
        assert items("done") == ["t9"] and items("failed") == ["t8"]
        code, out, _ = run(capsys, "--store", url, "items", run_id, "--status", "claimed")
        assert code == 0 and "claimed" in out and "t2" in out and "t3" not in out
        time.sleep(1.5)  # renewed past the lease while the holder lives
        assert items("claimed") == ["t0", "t1", "t2"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(1.5)  # its lease runs out: the batch is pending again
    assert items("claimed") == []
    assert items("pending") == [f"t{i}" for i in range(8)]


def test_cat_prints_an_items_result(
    capsys: pytest.CaptureFixture[str], ledger: tuple[str, str]
) -> None:
    store, run_id = ledger
    data = run_json(capsys, "--store", store, "cat", f"{run_id}/tiles/t1")
    assert data["state"]["tile"] == "t1"
    assert data["state"]["px"]["__type__"] == "ndarray" and data["state"]["px"]["shape"] == [2000]
    code, out, _ = run(capsys, "--store", store, "cat", f"{run_id}/tiles/t0", "--full")
    assert code == 0 and json.loads(out)["px"]["data"][:3] == [0, 1, 2]
    code, _, err = run(capsys, "--store", store, "cat", f"{run_id}/tiles/t3")
    assert code == 2 and "failed" in err  # a failed item has no result
    code, _, err = run(capsys, "--store", store, "cat", f"{run_id}/tiles/t9")
    assert code == 2 and "t9" in err


def test_stats_counts_item_results(
    capsys: pytest.CaptureFixture[str], ledger: tuple[str, str]
) -> None:
    store, run_id = ledger
    s = run_json(capsys, "--store", store, "stats")
    entries = run_json(capsys, "--store", store, "items", run_id)["items"]
    results = sum(e["size"] for e in entries)
    assert results > 48_000
    assert s["item_results"]["count"] == 4  # three tiles and one None: every done item
    assert s["item_results"]["logical_bytes"] == results
    assert s["item_results"]["stored_bytes"] > 0
    assert s["logical_bytes"] >= results and s["stored_bytes"] >= s["item_results"]["stored_bytes"]
    code, out, _ = run(capsys, "--store", store, "stats")
    assert code == 0 and "item results" in out


def _ls_on_a_terminal(store: Path, *args: str) -> str:
    """Run `ckptlite ls` with stdout on a pseudo-terminal; return what it drew."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [str(CKPTLITE), "--store", str(store), "ls", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    return b"".join(chunks).decode()


def test_ls_on_a_terminal_shows_the_newest_50_and_says_how_many_more(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        cps = [mgr.save("p", i, name=f"n{i}") for i in range(60)]
    out = _ls_on_a_terminal(store)
    lines = [ln for ln in out.splitlines() if ln.startswith("chk_")]
    assert len(lines) == 50 and lines[0].startswith(cps[-1].id)
    assert "10 more" in out and "-n 0" in out
    everything = _ls_on_a_terminal(store, "-n", "0")
    assert len([ln for ln in everything.splitlines() if ln.startswith("chk_")]) == 60
    assert "more" not in everything
    # Not a terminal (a pipe, --json): everything, as before.
    assert len(run_json(capsys, "--store", str(store), "ls")["checkpoints"]) == 60
    code, out, _ = run(capsys, "--store", str(store), "ls")
    assert code == 0 and len([ln for ln in out.splitlines() if ln.startswith("chk_")]) == 60


def test_ls_tree_draws_a_run_as_pipeline_stage_step(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    class Tiler(ckptlite.CheckpointableProcess):
        process_id = "geo"

        def __init__(self, mgr: ckptlite.CheckpointManager) -> None:
            self.checkpoint_manager, self.n = mgr, 0

        def get_state(self) -> Any:
            return {"n": self.n}

        def restore_state(self, state: Any) -> None:
            self.n = state["n"]

        def get_progress(self) -> tuple[int, int]:
            return (self.n, 30)

    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr, mgr.run("geo") as geo_run:
        geo_run.stage("load").complete({"raster": np.zeros(1000)})
        for it in geo_run.items("tiles", [f"t{i:02}" for i in range(30)]):
            if it.id == "t05":
                it.fail("no data")
            else:
                it.done({"mean": 1.0})
        tiler = Tiler(mgr)
        tiler.n = 3
        step = tiler.save_checkpoint()
        run_id = geo_run.id
    tree = run_json(capsys, "--store", str(store), "ls", "--tree")["tree"]
    (top,) = tree  # --json: the checkpoints' own tree, the run's PIPELINE at its root
    assert top["checkpoint"]["level"] == "pipeline"
    assert top["checkpoint"]["metadata"]["ckptlite.run"] == run_id
    kids = {n["checkpoint"]["name"]: n for n in top["children"]}
    assert set(kids) == {"load", ""}
    assert kids["load"]["checkpoint"]["level"] == "stage"
    assert kids[""]["checkpoint"]["id"] == step.id and kids[""]["checkpoint"]["level"] == "step"
    entries = run_json(capsys, "--store", str(store), "items", run_id)["items"]
    assert len(entries) == 30  # the items, all of them, in `items --json`

    code, out, _ = run(capsys, "--store", str(store), "ls", "--tree")
    assert code == 0
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:6] == ["TREE", "PROCESS", "LEVEL", "STATUS", "SIZE", "ID"]
    assert lines[1].startswith("run") and "pipeline" in lines[1] and "failed" in lines[1]
    item_line = next(ln for ln in lines if "t05" in ln)
    assert "step" in item_line and "failed" in item_line and "geo" in item_line
    assert any("10 more" in ln and "ckptlite items" in ln for ln in lines)
    group = next(ln for ln in lines if "items:tiles" in ln)
    assert "stage" in group and "29 done, 1 failed" in group
    assert sum(1 for ln in lines if f"{run_id}/tiles/t" in ln) == 20
    assert any(ln.endswith(f"{run_id}/tiles/t00") for ln in lines)  # what `cat` takes
    assert lines.index(group) > next(i for i, ln in enumerate(lines) if "load" in ln)


def test_tags_and_where_filter_ls(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        a = mgr.save("p", 1, metadata={"crs": "EPSG:4326", "zoom": 3}, tags=["nightly", "eu"])
        b = mgr.save("p", 2, metadata={"crs": "EPSG:3857", "zoom": 3}, tags=["eu"])
        c = mgr.save("q", 3, metadata={"zoom": "3"})
        assert a.metadata["ckptlite.tags"] == ["eu", "nightly"]
        assert [x.id for x in mgr.list(tags=["eu"], where={"zoom": 3})] == [b.id, a.id]
        assert mgr.list(where={"zoom": 3}, limit=1) == [mgr.get(b.id)]  # limit after filter
        assert mgr.list(where={"zoom": "3"}) == [mgr.get(c.id)]  # a string is another value
        with pytest.raises(ckptlite.InvalidInputError):
            mgr.save("p", 1, tags="eu")  # type: ignore[arg-type]
        with pytest.raises(ckptlite.InvalidInputError):
            mgr.save("p", 1, tags=[""])
        assert len(mgr.list("p")) == 2  # refused saves wrote nothing

    def ids(*args: str) -> list[str]:
        return [
            x["id"] for x in run_json(capsys, "--store", str(store), "ls", *args)["checkpoints"]
        ]

    assert ids("--tag", "eu") == [b.id, a.id]
    assert ids("--tag", "eu", "--tag", "nightly") == [a.id]
    assert ids("--where", "crs=EPSG:4326") == [a.id]
    assert ids("--where", "zoom=3") == [b.id, a.id]  # JSON: the number 3
    assert ids("--where", 'zoom="3"') == [c.id]
    assert ids("--where", "zoom=3", "--process", "p", "-n", "1") == [b.id]
    assert ids("--where", "zoom=4") == []
    code, _, err = run(capsys, "--store", str(store), "ls", "--where", "zoom")
    assert code == 2 and "KEY=VALUE" in err
