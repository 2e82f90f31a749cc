"""Every SQLite setting in one place: pragmas, writers, migrations, fork guard.

One apsw connection per thread (and per process: a fork gets fresh ones),
closed when its thread ends (``_perthread``): each holds three descriptors
(the database, its -wal and -shm).
Writers use ``BEGIN IMMEDIATE`` so a busy store waits up to the busy timeout at
the start of a transaction instead of failing half-way. The stdlib ``sqlite3``
module is never used on a store.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import apsw

from ._perthread import ThreadOwner
from .errors import (
    ConfigError,
    MigrationError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
)

__all__ = ["Database", "translate_errors"]

APPLICATION_ID = 0x636B7074  # "ckpt"
_INHERITED: list[apsw.Connection] = []
_NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "fuse.sshfs",
    "afs",
    "ceph",
    "glusterfs",
}


def _check_version() -> None:
    if tuple(int(p) for p in apsw.sqlite_lib_version().split(".")[:3]) < (3, 51, 3):
        raise ConfigError(
            f"SQLite {apsw.sqlite_lib_version()} is too old: before 3.51.3 a WAL database "
            "can be corrupted when several connections write at once",
            hint="pip install -U apsw",
        )


class translate_errors:  # a class, not @contextmanager: it wraps every query (~1 us less)
    """Map apsw errors raised inside the block to ckptlite's typed errors."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, tp: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is None:
            return
        what = self.what
        if isinstance(e, apsw.BusyError | apsw.LockedError):
            raise StoreLockedError(f"{what}: the store is busy ({e})") from e
        if isinstance(e, apsw.FullError):
            raise StoreFullError(f"{what}: the disk is full ({e})") from e
        if isinstance(e, apsw.IOError):
            raise StoreIOError(f"{what}: I/O error ({e})") from e
        if isinstance(e, apsw.CorruptError | apsw.NotADBError):
            raise StoreError(
                f"{what}: the database file is damaged ({e})",
                hint="Restore from a backup (`ckptlite backup`), or run `sqlite3 .recover` on a "
                "copy.",
            ) from e
        if isinstance(e, apsw.CantOpenError):
            raise StoreError(f"{what}: cannot open the database ({e})") from e
        if isinstance(e, OSError):
            import errno

            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(f"{what}: the disk is full ({e})") from e
            if e.errno == errno.EIO:
                raise StoreIOError(f"{what}: I/O error ({e})") from e


class Database:
    """A SQLite file shared by threads: one connection each, created on first use.

    ``migrations[i]`` upgrades user_version i to i+1; all pending run in one
    transaction.
    """

    def __init__(
        self,
        path: Path,
        migrations: Sequence[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        file_mode: int = 0o600,
        vfs: str | None = None,
    ) -> None:
        _check_version()
        self.path = path
        self.migrations = migrations
        self.synchronous = synchronous
        self.busy_ms = int(busy_timeout * 1000)
        self.file_mode = file_mode
        self.vfs = vfs
        self._pid = os.getpid()
        self._local = threading.local()
        self._all: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._writer = threading.RLock()
        self._writing = f"writing {path}"  # formatted once: every save passes here
        refuse_network_fs(path.parent)
        self._migrate(self.connection())

    def connection(self) -> apsw.Connection:
        """Return this thread's connection, opening it on first use.

        Raises:
            ForkedStoreError: never; a forked child silently gets a fresh connection.
        """
        if os.getpid() != self._pid:
            self._after_fork()
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
            self._local.owner = ThreadOwner(conn, self._all, self._lock, _close, _INHERITED)
        return conn

    def _after_fork(self) -> None:
        # Connections inherited across fork() must never be used or closed in the
        # child (closing one could checkpoint or delete the parent's WAL): keep them
        # referenced forever and open fresh ones.
        _INHERITED.extend(self._all)
        self._pid = os.getpid()
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()
        self._writer = threading.RLock()  # a parent's thread may have held it at fork

    def _open(self) -> apsw.Connection:
        new = not self.path.exists()
        if new:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, self.file_mode)
            # Not cut by the umask; SQLite gives -wal and -shm the database file's mode.
            os.fchmod(fd, self.file_mode)
            os.close(fd)
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_NOFOLLOW
        with translate_errors(f"opening {self.path}"):
            if self.vfs:
                conn = apsw.Connection(str(self.path), flags=flags, vfs=self.vfs)
            else:
                conn = apsw.Connection(str(self.path), flags=flags)
            conn.set_busy_timeout(self.busy_ms)
            mode = self._to_wal(conn)
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r})",
                    hint="Put the store on a local disk that supports shared memory.",
                )
            self._pragma(conn, "synchronous", self.synchronous)
            self._pragma(conn, "foreign_keys", "ON")
            self._pragma(conn, "trusted_schema", "OFF")
            self._pragma(conn, "cell_size_check", "ON")
            self._pragma(conn, "journal_size_limit", str(64 << 20))
        return conn

    def _to_wal(self, conn: apsw.Connection) -> object:
        # Two connections opening a brand-new store at once: switching it to WAL needs
        # a lock SQLite then refuses at once (BUSY without its busy handler, to avoid
        # a deadlock). The other one finishes in milliseconds: retry, up to the timeout.
        deadline = time.monotonic() + self.busy_ms / 1000
        while True:
            try:
                return self._pragma(conn, "journal_mode", "wal")
            except apsw.BusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    @staticmethod
    def _pragma(conn: apsw.Connection, name: str, value: str) -> object:
        # One statement per call: apsw runs multi-statement strings lazily.
        row = conn.execute(f"PRAGMA {name}={value}").fetchone()
        return row[0] if row else None

    def _migrate(self, conn: apsw.Connection) -> None:
        with translate_errors(f"migrating {self.path}"):
            version = _scalar(conn, "PRAGMA user_version")
            app = _scalar(conn, "PRAGMA application_id")
            if app not in (0, APPLICATION_ID):
                raise ConfigError(
                    f"{self.path} is a SQLite file of another application (id {app:#x})",
                    hint="Point ckptlite at its own directory.",
                )
            target = len(self.migrations)
            if version > target:
                raise MigrationError(
                    f"{self.path} has schema version {version}; this ckptlite knows up to {target}"
                )
            if version == target:
                return
            with self.write(conn):
                version = _scalar(conn, "PRAGMA user_version")  # re-read under lock
                for i in range(version, target):
                    # Exhaust the cursor: apsw runs a script statement by statement as read.
                    for _ in conn.execute(self.migrations[i]):
                        pass
                conn.execute(f"PRAGMA user_version={target}")
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")

    @contextlib.contextmanager
    def write(self, conn: apsw.Connection | None = None) -> Iterator[apsw.Connection]:
        """Run the block in a ``BEGIN IMMEDIATE`` transaction; roll back on error."""
        conn = conn or self.connection()
        # Threads of this process queue on a mutex: in SQLite's busy handler they would
        # sleep in steps of milliseconds while another thread holds the write lock.
        with self._writer, translate_errors(self._writing):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self) -> apsw.Connection:
        """Return this thread's connection for reads (autocommit)."""
        return self.connection()

    def close(self) -> None:
        """Close every connection this process opened."""
        if os.getpid() != self._pid:
            self._after_fork()
            return
        with self._lock:
            # Emptied in place: the threads' owners look for their connection in it.
            conns = list(self._all)
            self._all.clear()
        for c in conns:
            _close(c)
        self._local = threading.local()

    def backup_to(self, dest: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy the live database to ``dest`` with SQLite's online backup API."""
        with translate_errors(f"backing up {self.path}"):
            target = apsw.Connection(str(dest))
            try:
                with target.backup("main", self.connection(), "main") as b:
                    while not b.done:
                        # All pages in one step, from one read snapshot: a backup done in
                        # several steps restarts whenever another process commits, so a
                        # busy store would never finish.
                        b.step(-1)
                        if progress:
                            progress(b.page_count - b.remaining, b.page_count)
            finally:
                target.close()


def _close(conn: apsw.Connection) -> None:
    with contextlib.suppress(apsw.Error):
        conn.close()


def _scalar(conn: apsw.Connection, sql: str) -> Any:
    row: Any = conn.execute(sql).fetchone()
    return row[0]


def refuse_network_fs(directory: Path, mounts_text: str | None = None) -> None:
    """Raise ConfigError when ``directory`` is on a network file system.

    ``mounts_text`` defaults to /proc/self/mounts.

    Raises:
        ConfigError: SQLite's locking is unreliable there.
    """
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/self/mounts").read_text()
        except OSError:
            return
    mounts = mounts_text.splitlines()
    target = str(directory.resolve())
    best, fstype = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    if fstype in _NETWORK_FS:
        raise ConfigError(
            f"{directory} is on a network file system ({fstype}); SQLite locking is not safe there",
            hint="Use a local disk for the store, or a PostgreSQL URL for a shared store.",
        )
