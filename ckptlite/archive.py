"""Self-contained archives of a store: ``export_archive`` writes one tar file, ``import_archive``
verifies it and adds what the store lacks.

An archive is an uncompressed tar (chunks are compressed already)::

    ckptlite-archive/ARCHIVE.json          {"format": "ckptlite-archive", "version": 1, ...}
    ckptlite-archive/store/ckptlite.db     a local store: SQLite online backup, never a raw copy
    ckptlite-archive/store/blobs/packs/<64 hex>     chunks, many per pack file
    ckptlite-archive/store/blobs/<2 hex>/<64 hex>   one chunk (stores written before packs)

Import reads only those names (regular files; no links, no other paths), opens
the store the archive holds, verifies every byte, and only then copies the
checkpoints the target lacks (parents first, chunks before the records that use
them, runs and ledger merged: ``ckptlite.sync``). An archive that fails
verification changes nothing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .backends.local import DB_NAME, forget_store_file
from .errors import CorruptCheckpointError, InvalidInputError
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
        InvalidInputError: ``path`` exists.
        StoreFullError, StoreIOError: the disk failed; no archive is left behind.

    >>> import ckptlite, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with ckptlite.open("memory://") as mgr:
    ...     _ = mgr.save("run", {"x": 1})
    ...     export_archive(mgr, os.path.join(d, "a.tar")).checkpoints
    1
    """
    from . import __version__

    target = Path(path).expanduser()
    if target.exists():
        raise InvalidInputError(f"{target} exists", hint="Pick a new archive file name.")
    with tempfile.TemporaryDirectory(prefix=".ckptlite-export-", dir=target.parent) as tmp:
        store = Path(tmp) / "store"
        if hasattr(mgr.backend, "backup"):
            mgr.backup(store, progress)  # one consistent snapshot of everything
        else:
            with open_store(store, durability="none") as copy:
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
    directory ($TMPDIR) first.

    Raises:
        InvalidInputError: ``path`` is not a ckptlite archive (store unchanged).
        CorruptCheckpointError: the archive is damaged; names the checkpoints (store unchanged).
    """
    source = Path(path).expanduser()
    with tempfile.TemporaryDirectory(prefix="ckptlite-import-") as tmp:
        header = _unpack(source, Path(tmp))
        with open_store(Path(tmp) / "store", durability="none", create=False) as src:
            report = src.verify(full=True)
            if not report.ok:
                raise CorruptCheckpointError(
                    f"archive {source} is damaged: {len(report.corrupted)} checkpoint(s) fail "
                    f"verification ({', '.join(report.corrupted[:5])}); nothing was imported",
                    hint="Export the archive again from a store that `ckptlite verify --full` "
                    "passes.",
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


def _unpack(archive: Path, dest: Path) -> dict[str, object]:
    """Extract the archive's known members into ``dest``; return its header."""
    not_archive = f"{archive} is not a ckptlite archive"
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise InvalidInputError(f"no archive at {archive}") from None
    except tarfile.TarError as e:
        raise InvalidInputError(f"{not_archive}: {e}") from None
    header: dict[str, object] | None = None
    try:
        with tar:
            for member in tar:
                m = _MEMBER_RE.match(member.name)
                if m is None or not member.isreg():
                    raise InvalidInputError(f"{not_archive}: unexpected member {member.name!r}")
                out = dest / member.name.removeprefix(f"{_ROOT}/")
                if out.exists():
                    raise InvalidInputError(f"{not_archive}: {member.name!r} appears twice")
                out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has data
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with src, os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(src, f)
                if m.group(1) == "ARCHIVE.json":
                    header = json.loads(out.read_text())
    except InvalidInputError:
        raise
    except (tarfile.TarError, EOFError, ValueError) as e:  # truncated, bad gzip, bad header
        raise CorruptCheckpointError(f"archive {archive} is damaged: {e}") from None
    if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
        raise InvalidInputError(f"{not_archive}: no ARCHIVE.json header")
    if header.get("version") != ARCHIVE_VERSION:
        raise InvalidInputError(
            f"{archive} is archive version {header.get('version')}; this ckptlite reads "
            f"{ARCHIVE_VERSION}",
            hint="Upgrade ckptlite.",
        )
    if not (dest / "store" / "ckptlite.db").is_file():
        raise CorruptCheckpointError(f"archive {archive} has no database")
    return header
