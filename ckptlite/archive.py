"""Self-contained archives of a store: ``export_archive`` writes one tar file, ``import_archive``
verifies it and adds what the store lacks.

An archive is an uncompressed tar (chunks are compressed already)::

    ckptlite-archive/ARCHIVE.json          {"format": "ckptlite-archive", "version": 1, ...}
    ckptlite-archive/store/ckptlite.db     a local store: SQLite online backup, never a raw copy
    ckptlite-archive/store/blobs/packs/<64 hex>     chunks, many per pack file
    ckptlite-archive/store/blobs/<2 hex>/<64 hex>   one chunk (stores written before packs)

Import first reads every header, writing nothing: a compressed file (gzip, bzip2,
xz, zstd, ... by its first bytes), a name other than those above, a link, device,
FIFO, directory or sparse member, a name twice, a member reaching past the end
of the file, a missing end-of-archive marker, or more bytes than the unpack
directory has free, are refused there. Only then does it copy each member's
declared bytes, piece by piece, into a fresh temp directory, open the store the
archive holds, verify every byte, and copy the checkpoints the target lacks
(parents first, chunks before the records that use them, runs and ledger
merged: ``ckptlite.sync``). An archive that fails any check changes nothing.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ._paths import os_error, to_path
from .backends.local import DB_NAME, forget_store_file
from .errors import (
    CorruptCheckpointError,
    InvalidInputError,
    ReadOnlyStoreError,
    StoreFullError,
    StoreIOError,
)
from .manager import CheckpointManager, open_store
from .sync import sync

__all__ = ["ARCHIVE_FORMAT", "ArchiveReport", "export_archive", "import_archive"]

ARCHIVE_FORMAT = "ckptlite-archive"
ARCHIVE_VERSION = 1
_ROOT = "ckptlite-archive"
_MEMBER_RE = re.compile(
    r"^ckptlite-archive/(ARCHIVE\.json|store/ckptlite\.db"
    r"|store/blobs/([0-9a-f]{2})/(\2[0-9a-f]{62})|store/blobs/packs/[0-9a-f]{64})$"
)

Progress = Callable[[int, int | None], None]  # (done, total or None when unknown)

#: First bytes of compressed files: an archive is the uncompressed tar export writes.
_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
    b"\x5d\x00\x00": "lzma",
    b"PK\x03\x04": "zip",
}
_HEADER_MAX = 1 << 20  # ARCHIVE.json is a few hundred bytes
_PIECE = 1 << 20  # bytes copied per read while unpacking


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    """What an export wrote or an import added.

    ``checkpoints`` and ``chunks`` count what the archive holds; ``imported`` is
    how many checkpoints an import added (the rest were in the store already),
    ``runs_imported`` and ``items_imported`` the runs and ledger entries it merged.
    """

    path: str
    checkpoints: int
    chunks: int
    archive_bytes: int
    imported: int = 0
    runs_imported: int = 0
    items_imported: int = 0


def export_archive(
    mgr: CheckpointManager, path: str | os.PathLike[str], progress: Progress | None = None
) -> ArchiveReport:
    """Write every checkpoint, run and ledger entry of the store to a new tar at ``path``.

    Raises:
        InvalidInputError: ``path`` exists, or is not a path (in a directory).
        StoreFullError, StoreIOError: the disk failed; no archive is left behind.

    >>> import ckptlite, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with ckptlite.open("memory://") as mgr:
    ...     _ = mgr.save("run", {"x": 1})
    ...     export_archive(mgr, os.path.join(d, "a.tar")).checkpoints
    1
    """
    target = to_path(path, "archive")
    if target.exists():
        raise InvalidInputError(f"{target} exists", hint="Pick a new archive file name.")
    try:
        return _export(mgr, target, progress)
    except OSError as e:
        raise os_error(e, f"writing the archive {target}") from e


def _export(mgr: CheckpointManager, target: Path, progress: Progress | None) -> ArchiveReport:
    from . import __version__

    with tempfile.TemporaryDirectory(prefix=".ckptlite-export-", dir=target.parent) as tmp:
        store = Path(tmp) / "store"
        if mgr.backend.supports_backup:
            mgr.backup(store, progress)  # one consistent snapshot of everything
        else:
            # Made with the store's algorithm: sync then copies chunks without renaming.
            with open_store(store, durability="none", hash=mgr.hash_name) as copy:
                sync(mgr, copy, progress=progress)
        with open_store(store, durability="none", create=False) as copy:
            stats = copy.stats()
        # The snapshot has its own store id (a backup's, or a new store's). Unbound
        # from this temp file, it keeps that id wherever it is unpacked: importing
        # one archive twice is a no-op. Two stores unpacked from it by hand share
        # the id; sync tells them apart by its marks (sync.py).
        forget_store_file(store / DB_NAME)
        header = {
            "format": ARCHIVE_FORMAT,
            "version": ARCHIVE_VERSION,
            "ckptlite": __version__,
            "created_at": datetime.now(UTC).isoformat(),
            "source": mgr.url,
            "checkpoints": stats["checkpoints"],
            "chunks": stats["chunks"],
        }
        partial = Path(tmp) / "archive.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(header, indent=2).encode()
            info = tarfile.TarInfo(f"{_ROOT}/ARCHIVE.json")
            info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.now().timestamp())
            tar.addfile(info, io.BytesIO(data))
            tar.add(store / "ckptlite.db", f"{_ROOT}/store/ckptlite.db")
            for f in sorted((store / "blobs").glob("*/*")):
                name = f"{_ROOT}/store/blobs/{f.parent.name}/{f.name}"
                if _MEMBER_RE.match(name) and f.is_file():
                    tar.add(f, name)
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, target)
    return ArchiveReport(str(target), stats["checkpoints"], stats["chunks"], target.stat().st_size)


def import_archive(
    mgr: CheckpointManager, path: str | os.PathLike[str], progress: Progress | None = None
) -> ArchiveReport:
    """Verify the archive at ``path`` byte by byte, then add what ``mgr`` lacks.

    The copy is ``ckptlite.sync`` from the archive's store: checkpoints the
    store lacks, their chunks, runs and ledger entries. Idempotent: importing the
    same archive again adds nothing. The archive is unpacked in the temp
    directory ($TMPDIR) first, and only once its headers have been checked.

    Raises:
        InvalidInputError: ``path`` is not a ckptlite archive, or is compressed (store
            unchanged, nothing unpacked).
        CorruptCheckpointError: the archive is damaged or truncated; names the
            checkpoints when it can (store unchanged).
        StoreFullError: the temp directory has less free space than the archive
            declares (nothing unpacked).
        ReadOnlyStoreError: ``mgr`` is open read-only (nothing is unpacked).
    """
    if mgr.readonly:
        raise ReadOnlyStoreError(f"{mgr.url} is open read-only: cannot import an archive")
    source = to_path(path, "archive")
    try:
        f = source.open("rb")
    except FileNotFoundError:
        raise InvalidInputError(f"no archive at {source}") from None
    except OSError as e:  # a directory, no permission
        raise os_error(e, f"reading {source}") from e
    with f:
        members, header = _plan(source, f)
        _check_free_space(source, sum(size for _, _, size in members))
        with tempfile.TemporaryDirectory(prefix="ckptlite-import-") as tmp:
            _unpack(source, f, members, Path(tmp))
            with open_store(Path(tmp) / "store", durability="none", create=False) as src:
                report = src.verify(full=True)
                if not report.ok:
                    raise CorruptCheckpointError(
                        f"archive {source} is damaged: {len(report.corrupted)} checkpoint(s) "
                        f"fail verification ({', '.join(report.corrupted[:5])}); nothing was "
                        "imported",
                        hint="Export the archive again from a store that `ckptlite verify "
                        "--full` passes.",
                        path=str(source),
                    )
                if report.checked != header.get("checkpoints"):
                    raise CorruptCheckpointError(
                        f"archive {source} holds {report.checked} checkpoints, its header says "
                        f"{header.get('checkpoints')}; nothing was imported",
                        hint="The archive is truncated or was altered: export it again.",
                    )
                stats = src.stats()
                copied = sync(src, mgr, progress=progress)
    return ArchiveReport(
        str(source),
        stats["checkpoints"],
        stats["chunks"],
        source.stat().st_size,
        copied.checkpoints_copied,
        copied.runs_copied,
        copied.items_copied,
    )


_Member = tuple[str, int, int]  # name, offset of its data in the archive, size


def _plan(archive: Path, f: BinaryIO) -> tuple[list[_Member], dict[str, object]]:
    """Read and check every header of the archive; return its members and ARCHIVE.json.

    Nothing is written: every refusal happens here, before anything is unpacked.

    Raises:
        InvalidInputError: compressed, foreign, or a member export never writes.
        CorruptCheckpointError: truncated, or sizes that reach past the end of the file.
    """
    not_archive = f"{archive} is not a ckptlite archive"
    first = f.read(8)
    for magic, kind in _COMPRESSED.items():
        if first.startswith(magic):
            raise InvalidInputError(
                f"{archive} is {kind}-compressed; a ckptlite archive is the uncompressed "
                "tar file `ckptlite export` writes",
                hint="Decompress it first (gunzip, xz -d, zstd -d, ...) and import the .tar.",
            )
    file_size = os.fstat(f.fileno()).st_size
    damaged = f"archive {archive} is truncated or damaged"
    try:
        f.seek(0)
        tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - closed by the with below
    except tarfile.TarError as e:
        raise InvalidInputError(f"{not_archive}: {e}") from None
    members: list[_Member] = []
    seen: set[str] = set()
    try:
        with tar:  # iterating reads each header and seeks past the data
            for m in tar:
                if _MEMBER_RE.match(m.name) is None:
                    raise InvalidInputError(f"{not_archive}: unexpected member {m.name!r}")
                if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or m.sparse is not None:
                    raise InvalidInputError(
                        f"{not_archive}: member {m.name!r} is not a regular file"
                    )
                if m.name in seen:
                    raise InvalidInputError(f"{not_archive}: {m.name!r} appears twice")
                seen.add(m.name)
                if not 0 <= m.offset_data <= m.offset_data + m.size <= file_size:
                    raise CorruptCheckpointError(
                        f"{damaged}: {m.name!r} declares {m.size} bytes, the file ends first",
                        hint="Copy or download the archive again; export it again if the "
                        "copy is truncated too.",
                        path=str(archive),
                    )
                members.append((m.name, m.offset_data, m.size))
            end = tar.offset
    except tarfile.TarError as e:
        raise CorruptCheckpointError(f"{damaged}: {e}", path=str(archive)) from None
    # tarfile stops quietly at a missing or garbled header: only the end-of-archive
    # marker (two zero blocks) says that nothing was cut off.
    f.seek(end)
    if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
        raise CorruptCheckpointError(
            f"{damaged}: no end-of-archive marker after {len(members)} member(s)",
            hint="Copy or download the archive again; export it again if the copy is "
            "truncated too.",
            path=str(archive),
        )
    return members, _header(archive, f, members)


def _header(archive: Path, f: BinaryIO, members: list[_Member]) -> dict[str, object]:
    """Read and check ARCHIVE.json (bounded), and that the database is there.

    Raises:
        InvalidInputError: no header, an oversized or foreign one, another version.
        CorruptCheckpointError: no database.
    """
    not_archive = f"{archive} is not a ckptlite archive"
    found = {name: (offset, size) for name, offset, size in members}
    offset, size = found.get(f"{_ROOT}/ARCHIVE.json", (0, -1))
    header: object = None
    if 0 <= size <= _HEADER_MAX:
        f.seek(offset)
        try:
            header = json.loads(f.read(size))
        except ValueError:
            header = None
    if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
        raise InvalidInputError(f"{not_archive}: no ARCHIVE.json header")
    if header.get("version") != ARCHIVE_VERSION:
        raise InvalidInputError(
            f"{archive} is archive version {header.get('version')}; this ckptlite reads "
            f"{ARCHIVE_VERSION}",
            hint="Upgrade ckptlite.",
        )
    if f"{_ROOT}/store/ckptlite.db" not in found:
        raise CorruptCheckpointError(f"archive {archive} has no database", path=str(archive))
    return header


def _check_free_space(archive: Path, declared: int) -> None:
    """Refuse, before writing, an archive that declares more than $TMPDIR has free.

    Raises:
        StoreFullError: the unpack directory has not that much free space.
    """
    where = tempfile.gettempdir()
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    need = declared + (declared >> 6) + (1 << 20)  # and room for directories, SQLite's -wal
    if need > free:
        raise StoreFullError(
            f"archive {archive} declares {declared} bytes; {where} has {free} bytes free "
            "to unpack it",
            hint="Free space there, or point TMPDIR at a directory with room for the "
            "archive (TMPDIR=/big/dir ckptlite import-archive ...).",
        )


def _unpack(archive: Path, f: BinaryIO, members: list[_Member], dest: Path) -> None:
    """Copy each member's declared bytes, and not one more, into ``dest``.

    Raises:
        CorruptCheckpointError: the file got shorter than its headers said.
        StoreFullError, StoreIOError: the disk filled up or failed.
    """
    fd = f.fileno()
    for name, offset, size in members:
        out = dest / name.removeprefix(f"{_ROOT}/")
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _disk_errors(f"unpacking {name}"):
            w = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                at, end = offset, offset + size
                while at < end:  # reads stop at the declared end: more never arrives
                    piece = os.pread(fd, min(_PIECE, end - at), at)
                    if not piece:
                        raise CorruptCheckpointError(
                            f"archive {archive} got shorter while it was read ({name!r})",
                            path=str(archive),
                        )
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(w, view) :]
                    at += len(piece)
            finally:
                os.close(w)


@contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(
                f"{what}: the disk is full",
                hint="Free space in the temp directory, or point TMPDIR at a bigger one.",
            ) from e
        raise StoreIOError(f"{what}: {e.strerror or e}") from e
