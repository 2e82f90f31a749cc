"""Issue 13 item 4: nothing outside the store is read, written or deleted.

A symlink is planted where the store keeps its own directory or file
(``blobs/``, ``blobs/packs``, ``blobs/tmp``, a chunk directory ``blobs/<2 hex>/``
of a store written before packs, one pack file), pointing at a directory
outside the store that holds copies of the store's files and decoys with the
names ckptlite uses. Then gc, gc --dry-run, verify --full, backup, export, a
save and loads run: the outside directory keeps exactly its names and bytes,
and each call raises ``StoreLayoutError`` (a ``StoreError`` with a hint), or
for verify reports the planted path, or for a load raises
``CorruptCheckpointError`` (the copies outside hold the right bytes, so only a
read through the link would load).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest
from fault_harness import open_store

import ckptlite
from ckptlite.archive import export_archive

DECOY = "0123456789abcdef" * 4  # a pack name no row uses: gc would delete it


def _state(seed: int) -> dict[str, bytes]:
    return {"b": random.Random(seed).randbytes(300_000)}  # two chunk files (+ an inline tail)


@dataclass
class Template:
    store: Path
    ids: list[str]  # ids[0] is deleted (its chunks wait for gc)
    dead_digest: str  # a chunk only the deleted checkpoint used
    live_pack: str | None  # the pack of ids[1] (packs layout only)


def _make(base: Path, chunk_files: bool) -> Template:
    store = base / "store"
    with open_store(store) as mgr:
        cps = [mgr.save("p", _state(i), metadata={"i": i}) for i in range(3)]
        dead = mgr.backend.get_record(cps[0].id).digests[0]
        live = mgr.backend.get_record(cps[1].id).digests[0]
        mgr.delete(cps[0].id)
    conn = apsw.Connection(str(store / "ckptlite.db"))
    try:
        (live_pack,) = conn.execute("SELECT pack FROM chunks WHERE digest=?", (live,)).fetchone()
        if chunk_files:  # the layout before packs: one file per chunk
            rows = list(conn.execute("SELECT digest, pack, pack_offset, stored_size FROM chunks"))
            for digest, pack, offset, size in rows:
                if pack is not None:
                    data = (store / "blobs" / "packs" / pack).read_bytes()[offset : offset + size]
                    (store / "blobs" / digest[:2]).mkdir(mode=0o700, exist_ok=True)
                    (store / "blobs" / digest[:2] / digest).write_bytes(data)
            conn.execute("UPDATE chunks SET pack=NULL, pack_offset=NULL")
            for p in (store / "blobs" / "packs").iterdir():
                p.unlink()
            live_pack = None
    finally:
        conn.close()
    return Template(store, [c.id for c in cps], dead, live_pack)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Template]:
    return {
        layout: _make(tmp_path_factory.mktemp(f"chunk_files_{layout}"), layout)
        for layout in (False, True)
    }


def _replace_with_link(path: Path, outside: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(outside)


# A plant: (needs the layout before packs, plant(store, template, outside) -> planted rel path)
def _plant_blobs(store: Path, t: Template, outside: Path) -> str:
    # Another directory that looks like a blob directory (without ckptlite's temp
    # directory and lock files: opening the store must not create them there).
    shutil.copytree(store / "blobs" / "packs", outside / "packs")
    (outside / "packs" / DECOY).write_bytes(b"another store's pack")
    _replace_with_link(store / "blobs", outside)
    return "blobs"


def _plant_packs(store: Path, t: Template, outside: Path) -> str:
    shutil.copytree(store / "blobs" / "packs", outside)
    (outside / DECOY).write_bytes(b"another store's pack")
    _replace_with_link(store / "blobs" / "packs", outside)
    return "blobs/packs"


def _plant_tmp(store: Path, t: Template, outside: Path) -> str:
    outside.mkdir()
    (outside / "0123456789abcdef.1.deadbeef.tmp").write_bytes(b"someone's temp file")
    _replace_with_link(store / "blobs" / "tmp", outside)
    return "blobs/tmp"


def _plant_chunk_dir(store: Path, t: Template, outside: Path) -> str:
    sub = t.dead_digest[:2]
    shutil.copytree(store / "blobs" / sub, outside)
    (outside / (sub + "f" * 62)).write_bytes(b"not a chunk of this store")
    _replace_with_link(store / "blobs" / sub, outside)
    return f"blobs/{sub}"


def _plant_pack_file(store: Path, t: Template, outside: Path) -> str:
    assert t.live_pack is not None
    outside.mkdir()
    pack = store / "blobs" / "packs" / t.live_pack
    shutil.copyfile(pack, outside / t.live_pack)  # even the very same bytes are refused
    _replace_with_link(pack, outside / t.live_pack)
    return f"blobs/packs/{t.live_pack}"


PLANTS: dict[str, tuple[bool, Callable[[Path, Template, Path], str]]] = {
    "blobs": (False, _plant_blobs),
    "blobs/packs": (False, _plant_packs),
    "blobs/tmp": (False, _plant_tmp),
    "blobs/<2 hex>": (True, _plant_chunk_dir),
    "pack-file": (False, _plant_pack_file),
}


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links not followed): files with their bytes."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link to {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def _gc(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return mgr.gc()


def _gc_dry(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return mgr.gc(dry_run=True)


def _verify(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return mgr.verify(full=True)


def _backup(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return mgr.backup(tmp / "backup")


def _export(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return export_archive(mgr, tmp / "archive.tar")


def _save(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return mgr.save("p", _state(99))


def _load(mgr: ckptlite.CheckpointManager, tmp: Path) -> object:
    return [mgr.load(cp.id) for cp in mgr.list()]


OPS: dict[str, Callable[[ckptlite.CheckpointManager, Path], object]] = {
    "gc": _gc,
    "gc --dry-run": _gc_dry,
    "verify --full": _verify,
    "backup": _backup,
    "export": _export,
    "save": _save,
    "load": _load,
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_planted_symlink_is_never_followed(
    tmp_path: Path, templates: dict[bool, Template], plant: str, op: str
) -> None:
    chunk_files, do_plant = PLANTS[plant]
    t = templates[chunk_files]
    store = tmp_path / "store"
    shutil.copytree(t.store, store, symlinks=True)
    outside = tmp_path / "outside"
    planted = do_plant(store, t, outside)
    before = _snapshot(outside)
    assert before
    error: BaseException | None = None
    result: object = None
    try:
        with open_store(store) as mgr:
            result = OPS[op](mgr, tmp_path)
    except ckptlite.CkptliteError as e:
        error = e
    assert _snapshot(outside) == before, f"{op} changed files outside the store"
    if op == "verify --full":
        assert error is None, error
        assert isinstance(result, ckptlite.VerifyReport)
        assert not result.ok, result
        assert planted in getattr(result, "unsafe_paths", ()), result
    elif op == "save" and plant in ("blobs/<2 hex>", "pack-file"):
        assert error is None, error  # new chunks go to a pack in a real directory
    elif op == "load":
        # The outside copies hold the right bytes: only a read through the link loads.
        if plant == "blobs/tmp":
            assert error is None, error
        elif plant != "blobs/<2 hex>" or error is not None:  # a live chunk may lie there
            assert isinstance(error, ckptlite.CorruptCheckpointError), repr(error)
            assert "symlink" in str(error), error
    else:
        assert error is not None, f"{op} with a symlinked {plant} raised nothing: {result}"
        assert type(error).__name__ == "StoreLayoutError", repr(error)
        assert isinstance(error, ckptlite.StoreError)
        assert planted in str(error) and error.hint
    assert not (tmp_path / "backup").exists() and not (tmp_path / "archive.tar").exists()


def test_the_cli_reports_a_planted_symlink_and_gc_refuses(
    tmp_path: Path, templates: dict[bool, Template], capsys: pytest.CaptureFixture[str]
) -> None:
    from ckptlite.cli import main

    store = tmp_path / "store"
    shutil.copytree(templates[False].store, store, symlinks=True)
    outside = tmp_path / "outside"
    _plant_packs(store, templates[False], outside)
    before = _snapshot(outside)
    assert main(["--store", str(store), "verify", "--full"]) == 1
    assert "UNSAFE blobs/packs" in capsys.readouterr().out
    assert main(["--store", str(store), "gc"]) == 1
    err = capsys.readouterr().err
    assert "gc refused: blobs/packs is a symlink" in err and "hint:" in err
    assert _snapshot(outside) == before
