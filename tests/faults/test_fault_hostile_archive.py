"""Item 5: ``import-archive`` takes only what ``export`` writes, and unpacks nothing it refuses.

Each hostile archive is a real export with one thing changed: compressed
(gzip, bz2, xz, zstd), a symlink, hard link, device, FIFO or directory member,
an absolute or ``..`` name, an unexpected name (a ``-wal`` file next to the
database), a duplicate, a member declaring 10 GiB in a small file, a cut-off
archive, more declared bytes than the disk has free (a real 8 MiB tmpfs). The
hostile member comes last, after the good ones, so "refused before anything is
unpacked" is tested: an audit hook records every file opened for writing under
the unpack directory, and there must be none. The store is left as it was and
no temp file remains. A database inside the archive whose chunk rows declare
2**40 bytes is imported in a child process: a typed error, and its peak RSS
grows by less than 64 MiB.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import resource
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

import ckptlite
from ckptlite.archive import export_archive, import_archive

ROOT = "ckptlite-archive"
PACK = f"{ROOT}/store/blobs/packs/"
RSS_BOUND_KB = 64 * 1024

# -- the audit hook: which files does an import open for writing? --------------------

_watch: list[str] | None = None
_under = ""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watch is None or event != "open":
        return
    path, mode, flags = args
    writing = (
        any(c in mode for c in "wax+")
        if isinstance(mode, str)
        else bool(isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
    )
    if writing and str(path).startswith(_under):
        _watch.append(str(path))


sys.addaudithook(_audit)


@contextmanager
def writes_under(root: Path) -> Iterator[list[str]]:
    """Collect the files opened for writing under ``root`` inside the block."""
    global _watch, _under
    _watch, _under = [], str(root)
    try:
        yield _watch
    finally:
        _watch = None


# -- archives -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export: three checkpoints, their chunks in pack files."""
    d = tmp_path_factory.mktemp("good")
    with ckptlite.open(d / "src", durability="none") as src:
        top = src.save("geo", {"n": 1})
        src.save("geo", {"r": np.random.default_rng(5).random(100_000)}, parent=top)
        src.save("geo", b"tile" * 10, name="t0")
        export_archive(src, d / "good.tar")
    return d / "good.tar"


def members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        out = []
        for m in tar:
            f = tar.extractfile(m)
            assert f is not None
            out.append((m, f.read()))
    return out


def tar_bytes(items: list[tuple[tarfile.TarInfo, bytes | None]], end: bool = True) -> bytes:
    """A PAX tar of ``items``; without ``end``, no end-of-archive blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item, data in items:
            tar.addfile(item, None if data is None else io.BytesIO(data))
        body = buf.getvalue()
    return buf.getvalue() if end else body


def info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.size, t.linkname, t.mode = kind, size, link, 0o600
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        t.devmajor, t.devminor = 1, 3
    return t


def with_member(extra: tarfile.TarInfo, data: bytes | None = None) -> Callable[[Path], bytes]:
    def build(good: Path) -> bytes:
        items: list[tuple[tarfile.TarInfo, bytes | None]] = list(members(good))
        return tar_bytes([*items, (extra, data)])

    return build


def compressed(how: Callable[[bytes], bytes]) -> Callable[[Path], bytes]:
    return lambda good: how(good.read_bytes())


def declares_10_gib(good: Path) -> bytes:
    """The good members, then a header declaring 10 GiB followed by 1 MiB of zeros."""
    header = info(PACK + "cd" * 32, size=10 << 30).tobuf(tarfile.PAX_FORMAT)
    return tar_bytes(list(members(good)), end=False) + header + bytes(1 << 20)


def cut_inside_last_member(good: Path) -> bytes:
    with tarfile.open(good) as tar:
        last = tar.getmembers()[-1]
    return good.read_bytes()[: last.offset_data + last.size // 2]


def cut_before_last_member(good: Path) -> bytes:
    with tarfile.open(good) as tar:
        last = tar.getmembers()[-1]
    return good.read_bytes()[: last.offset]


def duplicate_header(good: Path) -> bytes:
    items: list[tuple[tarfile.TarInfo, bytes | None]] = list(members(good))
    header = json.loads(items[0][1])
    header["checkpoints"] += 1
    data = json.dumps(header).encode()
    return tar_bytes([*items, (info(f"{ROOT}/ARCHIVE.json", size=len(data)), data)])


EVIL = "ckptlite-evil"
# case -> (builder, expected error, words the message must hold)
CASES: dict[str, tuple[Callable[[Path], bytes], type[Exception], str]] = {
    "gzip": (compressed(gzip.compress), ckptlite.InvalidInputError, "compressed"),
    "bz2": (compressed(bz2.compress), ckptlite.InvalidInputError, "compressed"),
    "xz": (compressed(lzma.compress), ckptlite.InvalidInputError, "compressed"),
    "zstd": (
        compressed(zstandard.ZstdCompressor().compress),
        ckptlite.InvalidInputError,
        "compressed",
    ),
    "symlink": (
        with_member(info(PACK + "ab" * 32, tarfile.SYMTYPE, link="/etc/passwd")),
        ckptlite.InvalidInputError,
        "not a regular file",
    ),
    "hardlink": (
        with_member(info(PACK + "ab" * 32, tarfile.LNKTYPE, link=f"{ROOT}/store/ckptlite.db")),
        ckptlite.InvalidInputError,
        "not a regular file",
    ),
    "char-device": (
        with_member(info(PACK + "ab" * 32, tarfile.CHRTYPE)),
        ckptlite.InvalidInputError,
        "not a regular file",
    ),
    "block-device": (
        with_member(info(PACK + "ab" * 32, tarfile.BLKTYPE)),
        ckptlite.InvalidInputError,
        "not a regular file",
    ),
    "fifo": (
        with_member(info(PACK + "ab" * 32, tarfile.FIFOTYPE)),
        ckptlite.InvalidInputError,
        "not a regular file",
    ),
    "directory": (
        with_member(info(f"{ROOT}/store/blobs/packs", tarfile.DIRTYPE)),
        ckptlite.InvalidInputError,
        "unexpected member",
    ),
    "absolute-path": (
        with_member(info(f"/tmp/{EVIL}", size=1), b"x"),
        ckptlite.InvalidInputError,
        "unexpected member",
    ),
    "dotdot-path": (
        with_member(info(f"{ROOT}/../../{EVIL}", size=1), b"x"),
        ckptlite.InvalidInputError,
        "unexpected member",
    ),
    "leading-dotdot": (
        with_member(info(f"../{EVIL}", size=1), b"x"),
        ckptlite.InvalidInputError,
        "unexpected member",
    ),
    "wal-next-to-the-db": (
        with_member(info(f"{ROOT}/store/ckptlite.db-wal", size=1), b"x"),
        ckptlite.InvalidInputError,
        "unexpected member",
    ),
    "unexpected-name": (
        with_member(info(f"{ROOT}/store/blobs/tmp/" + "ab" * 32, size=1), b"x"),
        ckptlite.InvalidInputError,
        "unexpected member",
    ),
    "duplicate": (duplicate_header, ckptlite.InvalidInputError, "twice"),
    "declares-10GiB": (declares_10_gib, ckptlite.CorruptCheckpointError, "truncated"),
    "cut-inside-a-member": (cut_inside_last_member, ckptlite.CorruptCheckpointError, "truncated"),
    "cut-before-a-member": (cut_before_last_member, ckptlite.CorruptCheckpointError, "truncated"),
}


@pytest.fixture
def dst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ckptlite.CheckpointManager]:
    """A store holding one checkpoint; imports unpack under ``tmp_path/unpack``."""
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "unpack").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "unpack"))
    with ckptlite.open(tmp_path / "dst", durability="none") as mgr:
        mgr.save("mine", {"keep": 1})
        yield mgr


def assert_refused(
    mgr: ckptlite.CheckpointManager, archive: Path, error: type[Exception], words: str
) -> ckptlite.CkptliteError:
    before = ([c.id for c in mgr.list()], mgr.stats()["chunks"])
    unpack = Path(tempfile.gettempdir())
    with writes_under(unpack) as written, pytest.raises(error) as exc:
        import_archive(mgr, archive)
    assert written == [], "files were unpacked from a refused archive"
    assert isinstance(exc.value, ckptlite.CkptliteError) and exc.value.hint
    assert words in str(exc.value)
    assert list(unpack.iterdir()) == []  # no temp file or directory left
    assert ([c.id for c in mgr.list()], mgr.stats()["chunks"]) == before
    assert not (archive.parent.parent / EVIL).exists() and not Path(f"/tmp/{EVIL}").exists()
    return exc.value


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_archive_is_refused_before_anything_is_unpacked(
    good: Path, tmp_path: Path, dst: ckptlite.CheckpointManager, case: str
) -> None:
    build, error, words = CASES[case]
    archive = tmp_path / "in" / "hostile.tar"
    archive.parent.mkdir()
    archive.write_bytes(build(good))
    assert_refused(dst, archive, error, words)


def test_the_good_archive_imports(good: Path, dst: ckptlite.CheckpointManager) -> None:
    """The control: the untouched export imports, and leaves no temp file."""
    report = import_archive(dst, good)
    assert report.imported == 3 and len(dst.list()) == 4
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


def test_more_than_the_free_space_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive bigger than the free space of the unpack directory (an 8 MiB tmpfs)."""
    from fault_harness import tmpfs

    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "none.toml"))
    archive = tmp_path / "big.tar"
    with ckptlite.open(tmp_path / "src", durability="none") as src:
        src.save("big", {"r": np.random.default_rng(1).random(1_500_000)})  # 12 MB, random
        export_archive(src, archive)
    with tmpfs(tmp_path / "small", "size=8m") as mounted:
        if not mounted:
            pytest.fail("mount -t tmpfs refused; run the fault suite as root (CI does)")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "small"))
        with ckptlite.open(tmp_path / "dst", durability="none") as mgr:
            err = assert_refused(mgr, archive, ckptlite.StoreFullError, "free")
            assert "TMPDIR" in err.hint


# -- declared sizes in the database: memory stays bounded ----------------------------

ROW_CASES = {
    "stored_size-2**40": "UPDATE chunks SET stored_size = 1 << 40 WHERE pack IS NOT NULL",
    "pack_offset-2**62": "UPDATE chunks SET pack_offset = 1 << 62 WHERE pack IS NOT NULL",
    "size-2**40": "UPDATE chunks SET size = 1 << 40 WHERE pack IS NOT NULL",
}


def crafted_db_archive(good: Path, out: Path, sql: str) -> None:
    """``good`` with its database's chunk rows changed by ``sql`` (sizes are real)."""
    items: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for m, data in members(good):
        if m.name.endswith("/ckptlite.db"):
            db = out.with_suffix(".db")
            db.write_bytes(data)
            conn = sqlite3.connect(db)
            assert conn.execute(sql).rowcount > 0
            conn.commit()
            conn.close()
            data = db.read_bytes()
            m.size = len(data)
        items.append((m, data))
    out.write_bytes(tar_bytes(items))


def child(archive: str, store: str) -> None:
    """Import ``archive`` in this fresh process; print the error type and RSS growth."""
    import gc

    gc.collect()
    with ckptlite.open(store, durability="none") as mgr:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            import_archive(mgr, archive)
            error = "no error"
        except ckptlite.CkptliteError as e:
            error = type(e).__name__
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"error": error, "rss_growth_kb": grown, "left": len(mgr.list())}))


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_declared_chunk_sizes_do_not_allocate(good: Path, tmp_path: Path, case: str) -> None:
    from fault_harness import child_env

    archive = tmp_path / "crafted.tar"
    crafted_db_archive(good, archive, ROW_CASES[case])
    r = subprocess.run(
        [sys.executable, __file__, str(archive), str(tmp_path / "dst")],
        env=child_env(TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] == "CorruptCheckpointError", out
    assert out["left"] == 0, out  # nothing imported
    assert out["rss_growth_kb"] < RSS_BOUND_KB, out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ckptlite-import")] == []


if __name__ == "__main__":
    # A ceiling, so a regression fails here instead of taking the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    child(sys.argv[1], sys.argv[2])
