"""Issue 13 item 10: a store copied with ``cp -r`` syncs correctly.

A copy keeps the original's store id, and sync keys its high-water mark by
that id: after both copies saved new checkpoints (with the same seqs), the
copy's were skipped forever. Two defences, each tested alone:

- a local store notices it was copied (its database file is not the one its
  identity was recorded for) and takes a new store id;
- sync validates the mark: it also records the id of the source's checkpoint
  at the mark, and a source that holds another checkpoint there (or lacks the
  newest ones the target has) is scanned again from the start, which copies
  only what the target lacks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

import ckptlite

Mgr = ckptlite.CheckpointManager


def local(path: Path) -> Mgr:
    return ckptlite.open(path, durability="none", chunk_size=4096)


@pytest.fixture(params=["local", "postgres"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "target")
    else:
        yield request.getfixturevalue("pg_schema")


def save(path: Path, *values: object) -> list[str]:
    with local(path) as mgr:
        return [mgr.save("p", v, name=str(v)).id for v in values]


def ids(url: str | Path) -> set[str]:
    with ckptlite.open(url) as mgr:
        return {c.id for c in mgr.list()}


def sync(src: str | Path, dst: str | Path) -> ckptlite.SyncReport:
    return ckptlite.sync(str(src), str(dst))


def store_id(path: Path) -> str:
    with local(path) as mgr:
        return mgr.backend.store_id()


def test_a_copied_store_and_its_original_both_reach_the_target(
    tmp_path: Path, target_url: str
) -> None:
    x, y = tmp_path / "x", tmp_path / "y"
    first = save(x, "a1", "a2", "a3")
    assert sync(x, target_url).checkpoints_copied == 3
    shutil.copytree(x, y)
    (b,), (c,) = save(x, "b"), save(y, "c")  # the same seq (4) in both
    assert sync(x, target_url).checkpoints_copied == 1
    assert sync(y, target_url).checkpoints_copied == 1
    assert ids(target_url) == {*first, b, c}
    for src in (x, y, x):
        assert not sync(src, target_url).changed  # a second sync copies nothing
    (b2,), (c2,) = save(x, "b2"), save(y, "c2")
    assert sync(y, target_url).checkpoints_copied == 1
    assert sync(x, target_url).checkpoints_copied == 1
    assert ids(target_url) == {*first, b, c, b2, c2}
    # They are two stores now: they sync into each other, and then agree.
    assert store_id(x) != store_id(y)
    sync(x, y)
    sync(y, x)
    assert ids(x) == ids(y) == ids(target_url)


def test_a_copy_taken_in_the_middle_of_a_sync_history(tmp_path: Path, target_url: str) -> None:
    s, x, y = tmp_path / "s", tmp_path / "x", tmp_path / "y"
    from_s = save(s, "s1", "s2")
    sync(s, x)  # x holds a mark for s ...
    own = save(x, "x1")
    sync(x, target_url)  # ... and the target one for x
    shutil.copytree(x, y)  # the copy has both histories
    from_s += save(s, "s3")
    assert sync(s, x).checkpoints_copied == 1
    assert sync(s, y).checkpoints_copied == 1  # its mark for s is still right
    (in_x,), (in_y,) = save(x, "x2"), save(y, "y2")
    sync(x, target_url)
    sync(y, target_url)
    assert ids(target_url) == {*from_s, *own, in_x, in_y}
    assert not sync(x, target_url).changed and not sync(y, target_url).changed
    assert not sync(s, y).changed


def _pretend_original(path: Path) -> None:
    """Make a copy's recorded identity match its own file, as if detection were fooled."""
    db = path / "ckptlite.db"
    st = os.stat(db)
    conn = apsw.Connection(str(db))
    try:
        conn.execute(
            "UPDATE store_meta SET value=? WHERE key='store_file'", (f"{st.st_dev}:{st.st_ino}",)
        )
    finally:
        conn.close()


def test_the_mark_is_checked_even_when_the_copy_is_not_detected(
    tmp_path: Path, target_url: str
) -> None:
    x, y = tmp_path / "x", tmp_path / "y"
    first = save(x, "a1", "a2")
    sync(x, target_url)
    shutil.copytree(x, y)
    _pretend_original(y)
    assert store_id(x) == store_id(y)  # one id for two stores: only the mark can tell
    # Same seq, other checkpoint: found at the mark.
    (b,), (c,) = save(x, "b"), save(y, "c")
    sync(x, target_url)
    assert sync(y, target_url).checkpoints_copied == 1
    assert sync(x, target_url).checkpoints_copied == 0  # rescanned, nothing new
    assert ids(target_url) == {*first, b, c}
    # The copy lags behind the mark: its newest checkpoint is not in the target.
    x_more = save(x, "b2", "b3")
    sync(x, target_url)
    (c2,) = save(y, "c2")  # seq 5 in y; the mark is x's seq 6
    assert sync(y, target_url).checkpoints_copied == 1
    assert ids(target_url) == {*first, b, c, *x_more, c2}
    assert not sync(y, target_url).changed


def test_a_deleted_checkpoint_at_the_mark_does_not_restart_the_scan(tmp_path: Path) -> None:
    x, t = tmp_path / "x", tmp_path / "t"
    a1, a2, a3 = save(x, "a1", "a2", "a3")
    sync(x, t)
    with local(t) as target:
        target.delete(a1)  # deleted in the target: must not come back
    with local(x) as src:
        src.delete(a3)  # the checkpoint at the mark
    assert not sync(x, t).changed
    (b,) = save(x, "b")
    assert sync(x, t).checkpoints_copied == 1
    assert ids(t) == {a2, a3, b}


def test_moving_a_store_keeps_its_id_and_a_backup_gets_its_own(tmp_path: Path) -> None:
    x = tmp_path / "x"
    save(x, "a1")
    before = store_id(x)
    os.rename(x, tmp_path / "moved")
    assert store_id(tmp_path / "moved") == before
    with local(tmp_path / "moved") as mgr:
        mgr.backup(tmp_path / "backup")
    backup_id = store_id(tmp_path / "backup")
    assert backup_id != before
    assert store_id(tmp_path / "backup") == backup_id  # stable once assigned
    shutil.copytree(tmp_path / "backup", tmp_path / "copy-of-backup")
    assert store_id(tmp_path / "copy-of-backup") not in {before, backup_id}


def test_an_imported_archive_is_another_store_for_sync(tmp_path: Path, target_url: str) -> None:
    x, z = tmp_path / "x", tmp_path / "z"
    first = save(x, "a1", "a2")
    sync(x, target_url)
    with local(x) as mgr:
        ckptlite.export_archive(mgr, tmp_path / "x.tar")
    with local(z) as mgr:
        assert ckptlite.import_archive(mgr, tmp_path / "x.tar").imported == 2
    assert store_id(z) != store_id(x)
    (b,), (c,) = save(x, "b"), save(z, "c")
    sync(x, target_url)
    sync(z, target_url)
    assert ids(target_url) == {*first, b, c}
    with local(z) as mgr:
        assert ckptlite.import_archive(mgr, tmp_path / "x.tar").imported == 0
