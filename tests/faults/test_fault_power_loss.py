"""Issue 13 item 1: a reference is dropped durably before its file goes.

Under ``durability="safe"`` (WAL + synchronous=NORMAL) a commit is not synced,
so a power loss may roll it back. gc unlinks chunk and pack files whose rows an
earlier commit dropped (a ``delete``, a repair that moved a chunk to a new pack,
gc's own row deletes and pack rewrites): unless those commits are on disk first,
a power loss brings back rows naming files that are gone.

An apsw VFS shim watches SQLite's files: it records which have writes not yet
synced, and keeps each file's content as of its last ``xSync`` (what a power
loss leaves). Each scenario runs on a store closed cleanly (so on disk), then

- (a) every unlink of a chunk or pack file happens with no unsynced SQLite write;
- (b) power loss: the database and WAL go back to their last synced content
  while the blob files stay as they are (their unlinks count as durable); every
  checkpoint the reopened store lists loads, and a full verify passes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from damage import chunk_span, flip_bit
from fault_harness import CHUNK

import ckptlite
from ckptlite.backends.local import LocalBackend
from ckptlite.manager import CheckpointManager
from ckptlite.types import StorageConfig

VFS_NAME = "ckptlite-sync-record"
_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")


class RecordingVFS(apsw.VFS):  # type: ignore[misc]
    """The default VFS, remembering unsynced writes and each file's last synced content."""

    def __init__(self) -> None:
        self.reset()
        super().__init__(VFS_NAME, "")

    def reset(self) -> None:
        self.dirty: set[str] = set()  # files written since their last xSync
        self.durable: dict[str, bytes] = {}  # file -> its content at its last xSync
        self.syncs: list[str] = []

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return RecordingFile(self, name, flags)


class RecordingFile(apsw.VFSFile):  # type: ignore[misc]
    def __init__(self, vfs: RecordingVFS, name: Any, flags: list[int]) -> None:
        self.vfs = vfs
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        # Only the database and its WAL carry commits (the -shm is rebuilt on open).
        self.path = path if path and path.endswith(("ckptlite.db", "ckptlite.db-wal")) else None
        super().__init__("", name, flags)
        if self.path and self.path not in vfs.durable:
            vfs.durable[self.path] = self._content()  # the store was closed cleanly: on disk

    def _content(self) -> bytes:
        n = self.xFileSize()
        return bytes(self.xRead(n, 0)) if n else b""

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.path:
            self.vfs.dirty.add(self.path)
        super().xWrite(data, offset)

    def xTruncate(self, size: int) -> None:
        if self.path:
            self.vfs.dirty.add(self.path)
        super().xTruncate(size)

    def xSync(self, flags: int) -> None:
        super().xSync(flags)
        if self.path:
            self.vfs.durable[self.path] = self._content()
            self.vfs.dirty.discard(self.path)
            self.vfs.syncs.append(os.path.basename(self.path))


@pytest.fixture(scope="module")
def _registered_vfs() -> Iterator[RecordingVFS]:
    v = RecordingVFS()
    try:
        yield v
    finally:
        v.unregister()


@pytest.fixture
def vfs(_registered_vfs: RecordingVFS) -> RecordingVFS:
    _registered_vfs.reset()
    return _registered_vfs


def _state(seed: int, size: int) -> dict[str, bytes]:
    return {"b": random.Random(seed).randbytes(size)}  # random: stored raw, in files


def _saves(store: Path, *specs: dict[str, bytes]) -> list[ckptlite.Checkpoint]:
    """Save each state from a manager of its own: each in a pack of its own."""
    cps = []
    for i, s in enumerate(specs):
        with ckptlite.open(store, chunk_size=CHUNK) as mgr:  # closed: its open pack too
            cps.append(mgr.save("p", s, metadata={"n": i}))
    return cps


def _to_chunk_files(store: Path) -> None:
    """Turn the store's packs into one file per chunk: the layout before packs."""
    conn = apsw.Connection(str(store / "ckptlite.db"))
    rows = list(conn.execute("SELECT digest, pack, pack_offset, stored_size FROM chunks"))
    for digest, pack, offset, size in rows:
        if pack is None:
            continue
        data = (store / "blobs" / "packs" / pack).read_bytes()[offset : offset + size]
        (store / "blobs" / digest[:2]).mkdir(mode=0o700, exist_ok=True)
        (store / "blobs" / digest[:2] / digest).write_bytes(data)
    conn.execute("UPDATE chunks SET pack=NULL, pack_offset=NULL")
    conn.close()
    for p in (store / "blobs" / "packs").iterdir():
        p.unlink()


# A scenario: (setup on a plain store, closed cleanly; act through the VFS shim).
Setup = Callable[[Path], Any]
Act = Callable[[CheckpointManager, Path, Any], None]


def _setup_three(store: Path) -> list[ckptlite.Checkpoint]:
    return _saves(store, *(_state(i, 300_000) for i in range(3)))


def _act_delete_gc(mgr: CheckpointManager, store: Path, cps: Any) -> None:
    mgr.delete(cps[1].id)  # its own pack becomes dead
    assert mgr.gc().packs


def _setup_sparse(store: Path) -> list[ckptlite.Checkpoint]:
    big, small = _state(1, 600_000)["b"], _state(2, 140_000)["b"]
    with ckptlite.open(store, chunk_size=CHUNK) as mgr:
        both = mgr.save("p", {"a": big, "b": small})  # one pack
        kept = mgr.save("p", {"b": small})  # shares b's chunks: in the first pack
    return [both, kept]


def _act_compact(mgr: CheckpointManager, store: Path, cps: Any) -> None:
    mgr.delete(cps[0].id)  # the pack is mostly dead: gc rewrites it
    report = mgr.gc()
    assert report.packs and not (store / "blobs" / "packs" / report.packs[0]).exists()


def _setup_chunk_files(store: Path) -> list[ckptlite.Checkpoint]:
    cps = _setup_three(store)
    _to_chunk_files(store)
    return cps


def _act_delete_gc_files(mgr: CheckpointManager, store: Path, cps: Any) -> None:
    mgr.delete(cps[1].id)  # its chunk files become dead
    assert mgr.gc().chunks


def _setup_one_chunk(store: Path) -> list[ckptlite.Checkpoint]:
    return _saves(store, _state(7, 100_000))  # one chunk, alone in its pack


def _setup_one_chunk_file(store: Path) -> list[ckptlite.Checkpoint]:
    cps = _setup_one_chunk(store)
    _to_chunk_files(store)
    return cps


def _act_repair_gc(mgr: CheckpointManager, store: Path, cps: Any) -> None:
    """Damage the chunk, let verify flag it, save the bytes again, collect the old file.

    The repair moves the chunk's row to a new pack in a commit of the save; gc's
    own transaction then changes nothing, yet gc unlinks the old file.
    """
    digest = mgr.backend.get_record(cps[0].id).digests[0]
    path, offset, _ = chunk_span(store, digest)
    flip_bit(path, offset + 1000)
    assert mgr.verify(full=True).corrupted == (cps[0].id,)
    mgr.save("p", _state(7, 100_000))  # the same bytes: the chunk is stored anew
    report = mgr.gc()
    assert report.packs or report.chunks
    assert not path.exists()


SCENARIOS: dict[str, tuple[Setup, Act]] = {
    "dead-pack": (_setup_three, _act_delete_gc),
    "pack-compaction": (_setup_sparse, _act_compact),
    "dead-chunk-files": (_setup_chunk_files, _act_delete_gc_files),
    "repaired-chunk-old-pack": (_setup_one_chunk, _act_repair_gc),
    "repaired-chunk-stray-file": (_setup_one_chunk_file, _act_repair_gc),
}


def _run(
    tmp_path: Path, scenario: str, monkeypatch: pytest.MonkeyPatch, vfs: RecordingVFS
) -> tuple[Path, list[tuple[str, frozenset[str]]]]:
    """Run a scenario's act through the shim; return the store and (unlinked name, dirty files)."""
    setup, act = SCENARIOS[scenario]
    store = tmp_path / "store"
    cps = setup(store)
    assert not (store / "ckptlite.db-wal").exists()  # closed cleanly: all on disk
    unlinks: list[tuple[str, frozenset[str]]] = []
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        name = os.path.basename(os.fsdecode(path))
        if _BLOB_NAME.match(name):
            unlinks.append((name, frozenset(os.path.basename(p) for p in vfs.dirty)))
        real_unlink(path, *args, **kwargs)

    backend = LocalBackend(store, durability="safe", vfs=VFS_NAME)
    mgr = CheckpointManager(
        backend, StorageConfig(url=str(store), durability="safe", chunk_size=CHUNK)
    )
    monkeypatch.setattr(os, "unlink", unlink)
    try:
        act(mgr, store, cps)
    finally:
        monkeypatch.setattr(os, "unlink", real_unlink)
    # Power loss now: no close (closing checkpoints the WAL into the database).
    crashed = tmp_path / "crashed"
    shutil.copytree(store / "blobs", crashed / "blobs", symlinks=True)
    for name in ("ckptlite.db", "ckptlite.db-wal"):
        content = vfs.durable.get(str(store / name), b"")
        if content:
            (crashed / name).write_bytes(content)
    mgr.close()
    return crashed, unlinks


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_file_is_unlinked_while_sqlite_holds_unsynced_writes(
    tmp_path: Path, scenario: str, monkeypatch: pytest.MonkeyPatch, vfs: RecordingVFS
) -> None:
    _, unlinks = _run(tmp_path, scenario, monkeypatch, vfs)
    assert unlinks, "the scenario unlinked no chunk or pack file"
    early = [(name[:12], sorted(dirty)) for name, dirty in unlinks if dirty]
    assert not early, f"unlinked before the WAL was synced (file, unsynced): {early}"
    assert "ckptlite.db-wal" in vfs.syncs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_power_loss_after_gc_brings_back_no_row_whose_file_is_gone(
    tmp_path: Path, scenario: str, monkeypatch: pytest.MonkeyPatch, vfs: RecordingVFS
) -> None:
    crashed, _ = _run(tmp_path, scenario, monkeypatch, vfs)
    with ckptlite.open(crashed, durability="none") as mgr:
        listed = mgr.list()
        assert listed
        broken = []
        for cp in listed:
            try:
                mgr.load(cp.id)
            except ckptlite.CorruptCheckpointError as e:
                broken.append((cp.id, str(e)[:90]))
        assert not broken, f"checkpoints that no longer load after a power loss: {broken}"
        assert mgr.verify(full=True).ok


def test_durability_none_syncs_nothing(tmp_path: Path, vfs: RecordingVFS) -> None:
    store = tmp_path / "store"
    cps = _setup_three(store)
    backend = LocalBackend(store, durability="none", vfs=VFS_NAME)
    with CheckpointManager(backend, StorageConfig(url=str(store), durability="none")) as mgr:
        mgr.delete(cps[1].id)
        assert mgr.gc().packs
        assert vfs.syncs == []
