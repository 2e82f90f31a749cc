"""The ``chunks`` table is a rowid table: a digest lookup never reads a 64 KiB row.

Stores made before (a ``WITHOUT ROWID`` table, whose index b-tree search read
whole overflowing cells) are rebuilt by a migration, inline chunks and all, and
keep opening, reading, verifying, backing up, syncing and collecting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import numpy as np

import ckptlite
from ckptlite.backends.local import MIGRATIONS

# The chunks table and its index as schema 4-9 made them (migration 1, 4 and 5).
_OLD_CHUNKS = """
CREATE TABLE chunks (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    data BLOB,
    pack TEXT,
    pack_offset INTEGER,
    bad INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX chunks_pack ON chunks(pack) WHERE pack IS NOT NULL;
"""
_COLS = "digest, size, stored_size, codec, data, pack, pack_offset, bad"
# The schema version before the rebuild (the code before it had none: then all of them).
_CHUNK_VERSION = next((i for i, m in enumerate(MIGRATIONS) if "chunks_copy" in m), len(MIGRATIONS))


def _back_to_without_rowid(db: Path) -> None:
    """Rebuild ``chunks`` as the schema before the rowid table had it, and say so."""
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("BEGIN")
    conn.execute(f"CREATE TEMP TABLE keep AS SELECT {_COLS} FROM chunks")
    conn.execute("DROP TABLE chunks")
    for _ in conn.execute(_OLD_CHUNKS):
        pass
    conn.execute(f"INSERT INTO chunks({_COLS}) SELECT {_COLS} FROM keep")
    conn.execute("DROP TABLE keep")
    # And before what came after the rebuild (issue 17's slot counters and item ids).
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name='slot_counters'").fetchone():
        conn.execute("DROP TABLE slot_counters")
        conn.execute("ALTER TABLE run_groups DROP COLUMN ids")
    conn.execute(f"PRAGMA user_version={_CHUNK_VERSION}")
    conn.execute("COMMIT")
    conn.close()


def _chunks_sql(db: Path) -> tuple[str, list[tuple[str, str]]]:
    conn = apsw.Connection(str(db))
    try:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name='chunks'").fetchone()
        indexes = [(r[1], r[2]) for r in conn.execute("PRAGMA index_list(chunks)")]
        return sql, sorted(indexes)
    finally:
        conn.close()


def _lookup_plan(db: Path) -> str:
    conn = apsw.Connection(str(db))
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN SELECT size, codec, data FROM chunks WHERE digest=?", ("x",)
        ).fetchall()
        return " / ".join(str(r[3]) for r in rows)
    finally:
        conn.close()


def _states() -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(11)
    return {
        "small": {"a": rng.random(200)},  # in the payload: no chunk
        "inline": {"a": rng.random(40_000), "b": rng.bytes(600)},  # 32 KiB chunks: inline
        "packed": {"a": rng.random(100_000)},  # 800 KB: a chunk in a pack
        "both": {"a": rng.random(3_000), "b": rng.bytes(300_000)},
    }


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def test_a_new_store_keeps_chunks_in_a_rowid_table_looked_up_by_a_unique_index(
    tmp_path: Path,
) -> None:
    with ckptlite.open(tmp_path / "s") as mgr:
        mgr.save("p", _states()["inline"])
    db = tmp_path / "s" / "ckptlite.db"
    sql, indexes = _chunks_sql(db)
    assert "WITHOUT ROWID" not in sql.upper()
    assert any(unique for _, unique in indexes)  # digest: the refs foreign key's parent key
    assert "USING INDEX" in _lookup_plan(db) and "SCAN" not in _lookup_plan(db)


def test_a_store_with_a_without_rowid_chunks_table_is_rebuilt_and_keeps_working(
    tmp_path: Path,
) -> None:
    store = tmp_path / "old"
    states = _states()
    with ckptlite.open(store, chunk_size=32 * 1024) as mgr:
        ids = {k: mgr.save("p", v, name=k).id for k, v in states.items()}
        gone = mgr.save("p", {"z": np.random.default_rng(3).random(9_000)}, name="gone")
        db_ = mgr.backend.db  # type: ignore[attr-defined]
        inline = db_.read().execute("SELECT count(*) FROM chunks WHERE data IS NOT NULL").get
        assert inline >= 4  # the old store holds inline chunks
    db = store / "ckptlite.db"
    fresh_sql, fresh_indexes = _chunks_sql(db)
    _back_to_without_rowid(db)
    assert "WITHOUT ROWID" in _chunks_sql(db)[0]

    with ckptlite.open(store, chunk_size=32 * 1024) as mgr:  # migrates
        assert _chunks_sql(db) == (fresh_sql, fresh_indexes)  # what a new store has
        conn = mgr.backend.db.read()  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM chunks WHERE data IS NOT NULL").fetchone() == (
            inline,
        )
        assert "chunks_pack" in {r[1] for r in conn.execute("PRAGMA index_list(chunks)")}
        for k, cid in ids.items():
            assert _equal(mgr.load(cid), states[k])
        assert mgr.verify(full=True).ok
        # refs still refuses a record pointing at a missing chunk
        seq = mgr.get(ids["inline"]).seq
        try:
            mgr.backend.db.connection().execute(  # type: ignore[attr-defined]
                "INSERT INTO refs(seq, digest) VALUES (?, ?)", (seq, "f" * 64)
            )
        except apsw.ConstraintError:
            pass
        else:
            raise AssertionError("refs accepted a digest with no chunk row")
        # gc reclaims a deleted checkpoint's inline chunks, and nothing else
        mgr.delete(gone.id)
        assert mgr.gc().chunks
        assert mgr.verify(full=True).ok
        # back up, sync, and save the same bytes again (deduplicated)
        report = mgr.backup(tmp_path / "backup")
        assert report.checkpoints == len(ids)
        with ckptlite.open(tmp_path / "target") as target:
            ckptlite.sync(mgr, target)
            for k, cid in ids.items():
                assert _equal(target.load(cid), states[k])
        before = mgr.stats()["stored_bytes"]
        again = mgr.save("p", states["inline"], name="inline")
        assert mgr.stats()["stored_bytes"] - before < 5_000  # the payload; its chunks were found
        assert _equal(mgr.load(again.id), states["inline"])
    with ckptlite.open(tmp_path / "backup") as copy:
        for k, cid in ids.items():
            assert _equal(copy.load(cid), states[k])
        assert copy.verify(full=True).ok
