"""System 4: rows of the legacy pipeline_checkpoints table, on the real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from legacy_builders import (
    LEGACY_DDL,
    LegacyCoreManager,
    ReferenceCoreLoader,
    legacy_checksum,
    same,
)

import ckptlite
from ckptlite import Level, Status
from ckptlite.legacy import ALREADY, IMPORTED, WOULD_IMPORT, detect_formats, migrate

pytestmark = pytest.mark.postgres


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT * FROM pipeline_checkpoints ORDER BY checkpoint_id").fetchall()


@pytest.fixture
def legacy_db(pg_schema: str, tmp_path: Path) -> tuple[str, Path]:
    """The legacy table in a private schema, rows pointing at a core-manager directory."""
    import psycopg
    from psycopg.types.json import Jsonb

    root = tmp_path / "checkpoints"
    m = LegacyCoreManager(root)
    m.save("pipe_1", {"config": {"crs": "EPSG:3857"}}, level="pipeline")
    m.save("phase_1", {"grid": [[1, 2], [3, 4]]}, level="phase", parent_id="pipe_1")
    m.save("sub_1", {"n": 5}, level="substep", parent_id="phase_1")
    m.save("step_bad", {"n": 6}, level="step")
    m.save("step_flagged", {"n": 7}, level="step")
    rows = [
        # checkpoint_id, level, parent, processor, path, status, validation_checksum
        (
            "pipe_1",
            "pipeline",
            None,
            "GeoPipeline",
            root / "pipe_1",
            "valid",
            legacy_checksum(root / "pipe_1"),
        ),
        ("phase_1", "phase", "pipe_1", "Resampler", root / "phase_1", "created", None),
        ("sub_1", "substep", "phase_1", "Resampler", root / "sub_1", "deleted", None),
        ("step_bad", "step", None, "Merger", root / "step_bad", "valid", "0" * 64),
        ("step_flagged", "step", None, "Merger", root / "step_flagged", "corrupted", None),
        (
            "step_gone",
            "step",
            "pipe_1",
            "Merger",
            tmp_path / "elsewhere" / "step_gone",
            "corrupted",
            None,
        ),
    ]
    with psycopg.connect(pg_schema) as conn:
        conn.execute(LEGACY_DDL)
        for i, (cid, level, parent, proc, path, status, vsum) in enumerate(rows):
            conn.execute(
                "INSERT INTO pipeline_checkpoints (checkpoint_id, level, parent_id, "
                "processor_name, data_summary, file_path, file_size_bytes, compression_type, "
                "status, validation_checksum, validation_result, error_message, created_at) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s, "
                "timestamptz '2024-06-01 12:00:00+00' + %s * interval '1 minute')",
                (
                    cid,
                    level,
                    parent,
                    proc,
                    Jsonb({"keys": ["x"], "n": i}),
                    str(path),
                    100 + i,
                    "gzip",
                    status,
                    vsum,
                    Jsonb({"ok": status == "valid"}) if vsum else None,
                    "boom" if status == "corrupted" else None,
                    i,
                ),
            )
    return pg_schema, root


def test_rows_import_with_their_data(
    legacy_db: tuple[str, Path], mgr: ckptlite.CheckpointManager
) -> None:
    dsn, root = legacy_db
    assert detect_formats(dsn) == ("postgres",)
    before = _rows(dsn)
    report = migrate(dsn, mgr, trust_pickle=True)
    assert report.formats == ("postgres",) and report.count(IMPORTED) == 6, report.entries
    assert _rows(dsn) == before  # the source is never modified
    got = {cp.metadata["legacy_id"]: cp for cp in mgr.list()}
    ref = ReferenceCoreLoader(root)
    for cid in ("pipe_1", "phase_1", "sub_1", "step_bad"):
        rec = json.loads((root / cid / "metadata.json").read_text())
        assert same(mgr.load(got[cid]), ref.load(cid, rec)), cid
    assert got["pipe_1"].status == Status.VALID and got["pipe_1"].level == Level.PIPELINE
    assert got["pipe_1"].process_id == "GeoPipeline"
    assert (
        got["phase_1"].level == Level.STAGE and got["phase_1"].metadata["legacy_level"] == "phase"
    )
    assert got["phase_1"].parent_id == got["pipe_1"].id
    assert got["sub_1"].parent_id == got["phase_1"].id
    assert got["sub_1"].status == Status.ARCHIVED  # 'deleted' has no ckptlite status
    assert got["step_bad"].status == Status.CORRUPTED
    assert "validation_checksum" in got["step_bad"].metadata["legacy_corrupted"]
    flagged = got["step_flagged"]  # the row said corrupted: believed, data kept
    assert flagged.status == Status.CORRUPTED and mgr.load(flagged) == {"n": 7}
    assert mgr.verify(full=True).ok
    assert mgr.get(got["step_bad"].id).status == Status.CORRUPTED
    assert mgr.get(flagged.id).status == Status.CORRUPTED
    gone = got["step_gone"]
    assert gone.status == Status.ARCHIVED and mgr.load(gone) is None
    assert "step_gone" in gone.metadata["legacy_data_missing"]
    assert gone.metadata["legacy_status"] == "corrupted"
    row = got["pipe_1"].metadata["legacy_row"]
    assert row["data_summary"] == {"keys": ["x"], "n": 0} and row["file_size_bytes"] == 100
    assert got["pipe_1"].created_at.isoformat() == "2024-06-01T12:00:00+00:00"


def test_rerun_and_dry_run(legacy_db: tuple[str, Path], mgr: ckptlite.CheckpointManager) -> None:
    dsn, _root = legacy_db
    dry = migrate(dsn, mgr, trust_pickle=True, dry_run=True)
    assert dry.count(WOULD_IMPORT) == 6 and mgr.list() == []
    migrate(dsn, mgr, trust_pickle=True)
    again = migrate(dsn, mgr, trust_pickle=True)
    assert again.count(ALREADY) == 6 and len(mgr.list()) == 6


def test_without_trust_only_dataless_rows_import(
    legacy_db: tuple[str, Path], mgr: ckptlite.CheckpointManager
) -> None:
    dsn, _root = legacy_db
    report = migrate(dsn, mgr)
    by_id = {e.legacy_id: e for e in report.entries}
    assert by_id["step_gone"].outcome == IMPORTED
    needs_pickle = ("pipe_1", "phase_1", "sub_1", "step_bad", "step_flagged")
    assert all(by_id[c].outcome == "failed" for c in needs_pickle)


def test_missing_table_is_a_clear_error(pg_schema: str, mgr: ckptlite.CheckpointManager) -> None:
    with pytest.raises(ckptlite.LegacyFormatError, match="pipeline_checkpoints"):
        migrate(pg_schema, mgr)


def test_rows_written_by_ckptlite_itself_are_not_imported(
    legacy_db: tuple[str, Path], mgr: ckptlite.CheckpointManager
) -> None:
    dsn, _root = legacy_db
    with ckptlite.open(dsn) as shared:  # the postgres backend writes into the same table
        own = shared.save("shared-run", {"x": 1})
    report = migrate(dsn, mgr, trust_pickle=True)
    assert report.count(IMPORTED) == 6, report.entries
    assert own.id not in {e.legacy_id for e in report.entries}
    assert all(cp.process_id != "shared-run" for cp in mgr.list())


@pytest.mark.parametrize("rows_first", [False, True])
def test_rows_and_the_folders_they_point_at_are_one_checkpoint_each(
    legacy_db: tuple[str, Path], mgr: ckptlite.CheckpointManager, rows_first: bool
) -> None:
    dsn, root = legacy_db
    sources = [dsn, root] if rows_first else [root, dsn]
    first = migrate(sources[0], mgr, trust_pickle=True)
    second = migrate(sources[1], mgr, trust_pickle=True)
    # 5 folders, 6 rows (one pointing nowhere): 6 legacy checkpoints in all.
    assert len(mgr.list()) == 6, [e.line() for e in (*first.entries, *second.entries)]
    assert second.count(ALREADY) == 5
    assert second.count(IMPORTED) == (0 if rows_first else 1)
    # A 'created' row is not what get_latest_checkpoint returned (it wanted 'valid').
    if rows_first:
        (phase,) = [cp for cp in mgr.list() if cp.metadata["legacy_id"] == "phase_1"]
        assert phase.status == Status.CREATED
        assert mgr.latest("Resampler", Level.STAGE) is None
        pipe = mgr.latest("GeoPipeline", Level.PIPELINE)
        assert pipe is not None and pipe.metadata["legacy_id"] == "pipe_1"
