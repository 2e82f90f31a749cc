"""Item 11: new stores are private to their owner (0600 files, 0700 dirs) unless group mode.

Every file and directory the store creates is checked, the SQLite -wal and
-shm files included, under the usual umask (022), a strict one (077) and a
loose one (000): the store's modes must not depend on the caller's umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_harness import CHUNK, make_state

import ckptlite


@pytest.fixture(params=[0o022, 0o077, 0o000], ids=["umask022", "umask077", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(store: Path) -> dict[str, tuple[str, int]]:
    out = {".": ("dir", stat.S_IMODE(store.stat().st_mode))}
    for p in store.rglob("*"):
        st = p.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        out[str(p.relative_to(store))] = (kind, stat.S_IMODE(st.st_mode))
    return out


@pytest.mark.parametrize("group", [False, True], ids=["private", "group"])
def test_every_created_file_and_dir_has_the_store_mode(
    tmp_path: Path, umask: int, group: bool
) -> None:
    store = tmp_path / "store"
    mgr = ckptlite.open(store, durability="safe", chunk_size=CHUNK, group_access=group)
    try:
        cps = [mgr.save("perm", make_state(s, 300_000), name=str(s)) for s in range(3)]
        mgr.delete(cps[0].id)
        mgr.gc()
        modes = _modes(store)  # while the connection is open: -wal and -shm exist
    finally:
        mgr.close()
    names = set(modes)
    assert {
        "ckptlite.db",
        "ckptlite.db-wal",
        "ckptlite.db-shm",
        "blobs",
        "blobs/tmp",
        "blobs/packs",
    } <= names
    assert any(n.startswith("blobs/packs/") for n in names), "no pack file was created"
    want = {"dir": 0o770 if group else 0o700, "file": 0o660 if group else 0o600}
    wrong = {n: (k, oct(m)) for n, (k, m) in modes.items() if m != want[k]}
    assert wrong == {}, wrong
