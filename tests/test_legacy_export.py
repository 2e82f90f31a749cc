"""``export_legacy`` / ``ckptlite export-legacy``: the rollback path, round-tripped per format."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy_builders import (
    LEGACY_DDL,
    LegacyCoreManager,
    ProcessingCheckpointSpec,
    ReferenceCoreLoader,
    new_uuid,
    reference_json,
    reference_unpickle,
    same,
    tile_checkpoint_bytes,
    write_pipeline_checkpoint,
    write_script_checkpoint,
)

import ckptlite
from ckptlite import Checkpoint, Status
from ckptlite.cli import main
from ckptlite.legacy import export_legacy, migrate

T0 = 1_700_000_000.0
# Facts of where a checkpoint was read from: they differ after a round trip by design.
WHERE = {"legacy_path", "legacy_data_path", "legacy_mtime_ns"}


def open_store(path: Path) -> ckptlite.CheckpointManager:
    return ckptlite.open(str(path), create=True)


def snapshot(mgr: ckptlite.CheckpointManager) -> dict[str, tuple[Any, ...]]:
    """Everything the round trip must keep, by checkpoint id."""
    out = {}
    for cp in mgr.list():
        md = {k: v for k, v in cp.metadata.items() if k not in WHERE}
        out[cp.id] = (cp.process_id, cp.level, cp.name, cp.parent_id, cp.status, cp.created_at, md)
    return out


def assert_round_trip(a: ckptlite.CheckpointManager, b: ckptlite.CheckpointManager) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys()
    for cid in sa:
        assert sa[cid] == sb[cid], cid
        assert same(a.load(cid), b.load(cid)), cid


def build_core(root: Path) -> LegacyCoreManager:
    m = LegacyCoreManager(root)
    rng = np.random.default_rng(3)
    m.save("run", {"config": {"crs": "EPSG:4326"}}, level="pipeline", timestamp=T0, gzip_mtime=T0)
    m.save(
        "grp/phase_a",
        {"grid": rng.random((8, 8)), "ids": (1, 2)},
        level="phase",
        parent_id="run",
        timestamp=T0 + 1,
        gzip_mtime=T0 + 1,
    )
    m.save("plain", {"v": [1, 2, 3]}, level="test", compress=False, timestamp=T0 + 2)
    m.save(
        "Merger_1700000003",
        {"processor_state": {"class": "Merger", "config": {}, "items_processed": 3}},
        metadata={"processor": "Merger"},
        timestamp=T0 + 3,
        gzip_mtime=T0 + 3,
    )
    m.save("checked", {"v": 1}, level="step", timestamp=T0 + 4, gzip_mtime=T0 + 4)
    m.validate("checked")
    m.save("broken", {"v": 2}, level="step", timestamp=T0 + 5, gzip_mtime=T0 + 5)
    # Changed after its checksum was taken (same gzip header, other content).
    LegacyCoreManager(tmp := root.parent / "tamper").save(
        "broken", {"v": 999}, timestamp=T0 + 5, gzip_mtime=T0 + 5
    )
    (root / "broken" / "v.pkl.gz").write_bytes((tmp / "broken" / "v.pkl.gz").read_bytes())
    return m


def test_core_round_trip(tmp_path: Path) -> None:
    src, dest = tmp_path / "legacy", tmp_path / "exported"
    build_core(src)
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        assert migrate(src, a, trust_pickle=True).ok
        report = export_legacy(a, dest, format="core")
        assert report.ok and report.count("written") == 6, [e.line() for e in report.entries]
        # The legacy loader reads the export, and refuses the corrupted one as it did.
        ref_src, ref_dest = ReferenceCoreLoader(src), ReferenceCoreLoader(dest)
        assert ref_dest.records().keys() == ref_src.records().keys()
        for cid in ("run", "grp/phase_a", "plain", "Merger_1700000003", "checked"):
            assert same(ref_dest.load(cid), ref_src.load(cid)), cid
            assert ref_dest.records()[cid]["status"] == ref_src.records()[cid]["status"]
            for rel in ref_src.records()[cid]["data_files"]:  # byte for byte
                assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
        with pytest.raises(ValueError, match="corrupted"):
            ref_dest.load("broken")
        assert migrate(dest, b, trust_pickle=True).ok
        assert_round_trip(a, b)
        # Again into the same folder: everything is already there, nothing overwritten.
        again = export_legacy(a, dest, format="core")
        assert again.count("already there") == 6 and again.ok


def test_pipeline_round_trip(tmp_path: Path) -> None:
    src, dest = tmp_path / "legacy", tmp_path / "exported"
    now = datetime(2024, 5, 1, 9, 30, 0, 123456)
    for e in range(2):
        exp = new_uuid()
        for i, stage in enumerate(("data_load", "resample", "analysis_som")):
            write_pipeline_checkpoint(
                src,
                exp,
                stage,
                shared_data={"som_results": "<SOM object>", "n": i, "x": 0.1 * i},
                now=now + timedelta(minutes=10 * e + i),
                mtime=T0 + 100 * e + i,
            )
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        assert migrate(src, a).ok
        report = export_legacy(a, dest, format="pipeline")
        assert report.ok and report.count("written") == 6
        for f in src.rglob("checkpoint_*.json"):
            out = dest / f.relative_to(src)
            assert out.read_bytes() == f.read_bytes()
            assert out.stat().st_mtime == f.stat().st_mtime  # what load_latest ranks by
            assert reference_json(out) == reference_json(f)
        assert migrate(dest, b).ok
        assert_round_trip(a, b)


def test_script_round_trip(tmp_path: Path) -> None:
    src, dest = tmp_path / "legacy", tmp_path / "exported"
    src.mkdir()
    write_script_checkpoint(
        src, "catalog_loaded", {"species": ["a", "b"]}, now=datetime(2024, 1, 1)
    )
    write_script_checkpoint(src, "datasets_merged", [[1, 2], [3, 4]], now=datetime(2024, 1, 2))
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        assert migrate(src, a).ok
        assert export_legacy(a, dest, format="script").count("written") == 2
        for f in src.glob("*.json"):
            assert (dest / f.name).read_bytes() == f.read_bytes()
        assert migrate(dest, b).ok
        assert_round_trip(a, b)


def test_tile_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "legacy"
    src.mkdir()
    tiles = [f"tile_{r}_{c}" for r in range(5) for c in range(5)]
    spec = ProcessingCheckpointSpec(T0, tiles[:9], tiles[9:11], 25, {"memory_limit_mb": 1024})
    (src / "geo_tiles").write_bytes(tile_checkpoint_bytes(spec))
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        assert migrate(src, a, trust_pickle=True).ok
        report = export_legacy(a, tmp_path / "exported", format="tile")
        assert report.ok and report.count("written") == 1
        out = tmp_path / "exported" / "geo_tiles"
        assert out.read_bytes() == (src / "geo_tiles").read_bytes()  # the legacy pickle exactly
        assert reference_unpickle(out.read_bytes()) == reference_unpickle(
            (src / "geo_tiles").read_bytes()
        )
        assert migrate(tmp_path / "exported", b, trust_pickle=True).ok
        assert_round_trip(a, b)


def _schema(dsn: str) -> Iterator[str]:
    import psycopg

    base = dsn.split("?")[0]
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{base}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def second_schema(pg_schema: str) -> Iterator[str]:
    yield from _schema(pg_schema)


@pytest.mark.postgres
def test_postgres_round_trip(tmp_path: Path, pg_schema: str, second_schema: str) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    root = tmp_path / "checkpoints"
    m = LegacyCoreManager(root)
    m.save("pipe_1", {"config": {"crs": "EPSG:3857"}}, level="pipeline")
    m.save("phase_1", {"grid": [[1, 2]]}, level="phase", parent_id="pipe_1")
    rows = [
        ("pipe_1", "pipeline", None, "Geo", root / "pipe_1", "valid"),
        ("phase_1", "phase", "pipe_1", "Geo", root / "phase_1", "created"),
        ("gone", "step", "pipe_1", "Geo", tmp_path / "nowhere", "deleted"),
    ]
    with psycopg.connect(pg_schema) as conn:
        conn.execute(LEGACY_DDL)
        for i, (cid, level, parent, proc, path, status) in enumerate(rows):
            conn.execute(
                "INSERT INTO pipeline_checkpoints (checkpoint_id, level, parent_id, "
                "processor_name, data_summary, file_path, file_size_bytes, status, created_at) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s, "
                "timestamptz '2024-06-01 12:00:00+00' + %s * interval '1 minute')",
                (cid, level, parent, proc, Jsonb({"n": i}), str(path), 10 + i, status, i),
            )
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        assert migrate(pg_schema, a, trust_pickle=True).ok
        report = export_legacy(a, second_schema, format="postgres")
        assert report.ok and report.count("written") == 3, [e.line() for e in report.entries]
        with psycopg.connect(pg_schema) as c1, psycopg.connect(second_schema) as c2:
            q = "SELECT * FROM pipeline_checkpoints ORDER BY checkpoint_id"
            assert c1.execute(q).fetchall() == c2.execute(q).fetchall()  # every column, id too
        assert migrate(second_schema, b, trust_pickle=True).ok
        assert_round_trip(a, b)
        again = export_legacy(a, second_schema, format="postgres")
        assert again.count("already there") == 3


def test_what_a_format_cannot_hold_is_reported(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as mgr:
        mgr.save("e1", {"stage": "merge", "grid": np.zeros(3)}, level="stage", name="merge")
        mgr.save("e1", [1, 2], level="stage", name="list_state")
        mgr.save("job", {"x": 1}, level="step", progress=(3, 10))
        pipe = export_legacy(mgr, tmp_path / "p", format="pipeline", process_id="e1")
        by_name = {e.legacy_id: e for e in pipe.entries}
        assert by_name["e1/merge"].outcome == "failed"
        assert "ndarray" in (by_name["e1/merge"].reason or "")
        assert by_name["e1/list_state"].outcome == "failed" and not pipe.ok
        core = export_legacy(mgr, tmp_path / "c", format="core")
        rows = {e.checkpoint_id: e for e in core.entries}
        job = next(cp for cp in mgr.list(process_id="job"))
        assert rows[job.id].outcome == "written"
        assert any("progress" in n for n in rows[job.id].notes)
        lst = next(cp for cp in mgr.list(process_id="e1") if cp.name == "list_state")
        assert rows[lst.id].outcome == "failed" and "dict" in (rows[lst.id].reason or "")
        tile = export_legacy(mgr, tmp_path / "t", format="tile")
        assert all(e.outcome == "failed" for e in tile.entries) and not tile.ok


def test_other_formats_are_skipped_with_a_reason(tmp_path: Path) -> None:
    src = tmp_path / "legacy"
    LegacyCoreManager(src).save("a", {"v": 1}, timestamp=T0)
    write_pipeline_checkpoint(src, new_uuid(), "merge")
    with open_store(tmp_path / "s") as mgr:
        migrate(src, mgr, trust_pickle=True)
        report = export_legacy(mgr, tmp_path / "out", format="core")
        (skipped,) = [e for e in report.entries if e.outcome == "skipped"]
        assert "--format pipeline" in (skipped.reason or "") and report.ok


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as mgr:
        mgr.save("e1", {"stage": "merge"}, level="stage", name="merge")
        target = tmp_path / "out" / "e1" / "checkpoint_merge.json"
        target.parent.mkdir(parents=True)
        target.write_text('{"mine": true}')
        report = export_legacy(mgr, tmp_path / "out", format="pipeline")
        (e,) = report.entries
        assert e.outcome == "failed" and "other content" in (e.reason or "")
        assert json.loads(target.read_text()) == {"mine": True}


def test_cli_export_legacy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "legacy"
    build_core(src)
    store = tmp_path / "store"
    assert main(["--store", str(store), "migrate", str(src), "--trust-pickle"]) == 0
    capsys.readouterr()
    code = main(["--store", str(store), "export-legacy", "--format", "core", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and out.count("written") >= 6, out
    code = main(
        [
            "--store",
            str(store),
            "--json",
            "export-legacy",
            "--format",
            "core",
            str(tmp_path / "out"),
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["counts"]["already there"] == 6
    assert sorted(os.listdir(tmp_path / "out"))[0] == "Merger_1700000003"
    cps: list[Checkpoint] = ckptlite.open(str(store)).list()
    assert any(cp.status == Status.CORRUPTED for cp in cps)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=30, deadline=None)
@given(shared=st.dictionaries(st.text(min_size=1, max_size=6), _json, max_size=5))
def test_pipeline_documents_round_trip_byte_for_byte(shared: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp) / "legacy", Path(tmp) / "out"
        exp = new_uuid()
        f = write_pipeline_checkpoint(src, exp, "merge", shared_data=shared, mtime=T0)
        with ckptlite.open("memory://") as a, ckptlite.open("memory://") as b:
            assert migrate(src, a).ok
            assert export_legacy(a, dest, format="pipeline").ok
            out = dest / exp / "checkpoint_merge.json"
            assert out.read_bytes() == f.read_bytes()
            assert migrate(dest, b).ok
            assert [cp.id for cp in a.list()] == [cp.id for cp in b.list()]


def test_imports_made_by_an_earlier_release_are_found(tmp_path: Path) -> None:
    exp = new_uuid()
    f = write_pipeline_checkpoint(tmp_path / "legacy", exp, "merge")
    doc = reference_json(f)
    with open_store(tmp_path / "s") as mgr:
        # What the release before legacy keys stored: format, legacy id and time only.
        mgr.save(
            exp,
            doc,
            level="stage",
            name="merge",
            metadata={
                "legacy_format": "pipeline",
                "legacy_id": f"{exp}/merge",
                "legacy_timestamp": doc["timestamp"],
            },
        )
        report = migrate(tmp_path / "legacy", mgr)
        assert report.count("already imported") == 1 and len(mgr.list()) == 1
