"""Every SQLite setting in one place: pragmas, writers, migrations, fork guard.

One apsw connection per thread (and per process: a fork gets fresh ones),
closed when its thread ends (``_perthread``): each holds three descriptors
(the database, its -wal and -shm).
Writers use ``BEGIN IMMEDIATE`` so a busy store waits up to the busy timeout at
the start of a transaction instead of failing half-way. The stdlib ``sqlite3``
module is never used on a store.

A read-only database (``readonly=True``) is opened so that nothing is ever
written, nor a ``-wal`` or ``-shm`` file created: with SQLite's ``immutable=1``
when no ``-wal`` holds saves (a snapshot, a read-only mount, a closed store),
else with ``mode=ro``, which reads the ``-wal`` through its existing ``-shm``.
An immutable view is watched: once the file changes or a ``-wal`` appears (a
writer came), each thread reopens with ``mode=ro``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import apsw

from ._paths import os_error
from ._perthread import ThreadOwner
from .errors import (
    ConfigError,
    InvalidInputError,
    MigrationError,
    ReadOnlyStoreError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
)
from .types import same_json_value

__all__ = ["Database", "remember", "translate_errors"]

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
        if isinstance(e, apsw.ReadOnlyError):
            raise ReadOnlyStoreError(f"{what}: the database is read-only ({e})") from e
        if isinstance(e, UnicodeEncodeError):  # a lone surrogate in a str SQLite must store
            raise InvalidInputError(
                f"{what}: {e.object[e.start : e.end]!r} is not valid Unicode text",
                hint="Strings must be valid Unicode (no lone surrogates such as '\\ud800'); "
                "decode bytes with errors='replace' first.",
            ) from None
        if isinstance(e, OverflowError):  # an int beyond SQLite's 64 bits
            raise InvalidInputError(f"{what}: a number is too large ({e})") from None
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
        readonly: bool = False,
    ) -> None:
        _check_version()
        self.path = path
        self.readonly = readonly
        # Read-only: the URI connections open, and the file's stamp while it is immutable.
        self._uri = ""
        self._stamp: tuple[int, ...] | None = None
        self._generation = 0
        # Write transactions this process ended, on any of its connections. SQLite's
        # data_version does not change for a connection's own commits: the read cache
        # (``read_cached``) keys on both.
        self._commits = 0
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
        try:
            if readonly:
                self._uri, self._stamp = self._read_only_uri()
                self._check_schema(self.connection())
            else:
                self._migrate(self.connection())
        except BaseException:
            self.close()  # a store refused here keeps no connection (nor -wal) open
            raise

    def connection(self) -> apsw.Connection:
        """Return this thread's connection, opening it on first use.

        Raises:
            ForkedStoreError: never; a forked child silently gets a fresh connection.
        """
        if os.getpid() != self._pid:
            self._after_fork()
        if self._stamp is not None and self._stamp != _file_stamp(self.path):
            self._leave_immutable()
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self.readonly and self._local.generation != self._generation:
            conn = None  # an immutable view of a file that changed: this thread reopens
        if conn is None:
            conn = self._open()
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
            self._local.cache = {}  # what a new connection reads may differ: nothing kept
            self._local.stamp = None
            self._local.generation = self._generation
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

    def _read_only_uri(self) -> tuple[str, tuple[int, ...] | None]:
        """Return the URI to open the database read-only, and its stamp if immutable.

        Raises:
            StoreError: committed saves are in a ``-wal`` SQLite cannot read here.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            wal_size: int | None = wal.lstat().st_size
        except FileNotFoundError:
            wal_size = None
        shm = os.path.lexists(self.path.with_name(self.path.name + "-shm"))
        base = "file:" + urllib.parse.quote(os.path.abspath(self.path))
        if wal_size is None or (wal_size == 0 and not shm):
            # No -wal, or an empty one: the database file holds every commit. Immutable
            # reads it without locks or a -shm, so nothing is created, even on a
            # read-only mount (where mode=ro cannot open without a -wal).
            return base + "?immutable=1", _file_stamp(self.path)
        if shm:
            # SQLite reads the -wal through the -shm (only its lock and index file is
            # touched, and only where it is writable).
            return base + "?mode=ro", None
        raise StoreError(
            f"{self.path}: the newest saves are still in {wal.name}, and SQLite cannot read it "
            f"read-only without {self.path.name}-shm",
            hint="Copy the store directory to a writable place (cp -a) and open the copy; "
            "opening it there once writes the -wal into the database.",
        )

    def _leave_immutable(self) -> None:
        # The file changed under an immutable view (a writer came): each thread reopens,
        # with mode=ro once the -wal holds commits, which follows the writer safely.
        with self._lock:
            if self._stamp is None or self._stamp == _file_stamp(self.path):
                return
            self._uri, self._stamp = self._read_only_uri()
            self._generation += 1

    def _open(self) -> apsw.Connection:
        if self.readonly:
            flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_NOFOLLOW
            with translate_errors(f"opening {self.path} read-only"):
                if self.vfs:
                    conn = apsw.Connection(self._uri, flags=flags, vfs=self.vfs)
                else:
                    conn = apsw.Connection(self._uri, flags=flags)
                conn.set_busy_timeout(self.busy_ms)
                self._pragma(conn, "trusted_schema", "OFF")
                self._pragma(conn, "cell_size_check", "ON")
                _add_functions(conn)
            return conn
        new = not self.path.exists()
        if new:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, self.file_mode)
            except OSError as e:
                raise os_error(e, f"creating {self.path}", ConfigError) from e
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
            if not new:
                try:
                    self._refuse_foreign(conn)  # before WAL mode rewrites the file's header
                except BaseException:
                    conn.close()
                    raise
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
            _add_functions(conn)
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

    def _refuse_foreign(self, conn: apsw.Connection) -> None:
        """Raise ConfigError unless the file is empty or a ckptlite database.

        A ckptlite database gets its application id in the same transaction as its
        tables, so tables without the id are another program's: never add ours.
        One statement reads all three from one snapshot: another connection may be
        creating the store's tables right now.
        """
        row: Any = conn.execute(
            "SELECT a.application_id, u.user_version, EXISTS(SELECT 1 FROM sqlite_master) "
            "FROM pragma_application_id() a, pragma_user_version() u"
        ).fetchone()
        app, version, tables = row
        if app not in (0, APPLICATION_ID):
            raise ConfigError(
                f"{self.path} is a SQLite file of another application (id {app:#x})",
                hint="Point ckptlite at its own directory.",
            )
        if app == 0 and version == 0 and tables:
            raise ConfigError(
                f"{self.path} is not a ckptlite store: it is a SQLite database with other "
                "tables; it was left unchanged",
                hint="Point ckptlite at a new or empty directory, or at an existing store.",
            )

    def _check_schema(self, conn: apsw.Connection) -> None:
        """Check a read-only database is a ckptlite store at this version (nothing migrates).

        Raises:
            ConfigError: not a ckptlite database.
            MigrationError: its schema is newer, or older and needs upgrading first.
        """
        with translate_errors(f"reading {self.path}"):
            self._refuse_foreign(conn)
            version = _scalar(conn, "PRAGMA user_version")
        target = len(self.migrations)
        if version == 0:
            raise ConfigError(
                f"no ckptlite store at {self.path.parent}",
                hint="Check the path (`ckptlite config` shows where it came from).",
            )
        if version > target:
            raise MigrationError(
                f"{self.path} has schema version {version}; this ckptlite knows up to {target}"
            )
        if version < target:
            raise MigrationError(
                f"{self.path} has schema version {version} and needs upgrading to {target}, "
                "which writes: it cannot be read read-only",
                hint="Open it once without readonly on a writable copy to upgrade it.",
            )

    def _migrate(self, conn: apsw.Connection) -> None:
        with translate_errors(f"migrating {self.path}"):
            version = _scalar(conn, "PRAGMA user_version")
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

    def write(
        self, conn: apsw.Connection | None = None, *, durable: bool = False
    ) -> contextlib.AbstractContextManager[apsw.Connection]:
        """Run the block in a ``BEGIN IMMEDIATE`` transaction; roll back on error.

        ``durable``: the commit is on disk when the block's ``with`` ends, and so is
        every commit before it (a barrier): required before unlinking a file whose
        rows an earlier commit dropped. With synchronous=OFF it syncs nothing.

        Raises:
            ReadOnlyStoreError: the store is open read-only (when the block is entered).
        """
        if durable or self.readonly:
            return self._durable_write(conn, durable)
        return _Write(self, conn)  # every save passes here: a class, not a generator (~2 us)

    @contextlib.contextmanager
    def _durable_write(
        self, conn: apsw.Connection | None, durable: bool
    ) -> Iterator[apsw.Connection]:
        if self.readonly:
            raise ReadOnlyStoreError(f"{self._writing}: the store is open read-only")
        conn = conn or self.connection()
        barrier = durable and self.synchronous.upper() != "OFF"
        # Threads of this process queue on a mutex: in SQLite's busy handler they would
        # sleep in steps of milliseconds while another thread holds the write lock.
        with self._writer, translate_errors(self._writing):
            if barrier:  # not allowed inside a transaction; per connection, so our own
                self._pragma(conn, "synchronous", "FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    if barrier:
                        # Under FULL a commit syncs the whole WAL, earlier commits' frames
                        # (other connections' too) included, but only a commit that
                        # writes a frame: rewriting the (constant) application id always
                        # writes page 1, where an empty transaction would sync nothing.
                        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                except BaseException:
                    with contextlib.suppress(apsw.Error):
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                self._commits += 1  # even on rollback (or a failed COMMIT): one miss is cheap
                if barrier:
                    with contextlib.suppress(apsw.Error):  # a failed COMMIT may stay open
                        self._pragma(conn, "synchronous", self.synchronous)

    def read(self) -> apsw.Connection:
        """Return this thread's connection for reads (autocommit)."""
        return self.connection()

    def read_cached(self) -> tuple[apsw.Connection, dict[Any, Any], tuple[int, int]]:
        """Return this thread's connection, its cache, and the store's stamp now.

        A value cached under a stamp is still what the store holds while the stamp
        is equal: ``PRAGMA data_version`` changes when another connection (thread,
        process) commits, the write counter when one of ours does. The counter is read
        first, so a commit racing this call changes one or the other. The cache
        belongs to the connection: a fork, a ``close`` or a read-only view reopened
        after its file changed starts an empty one.
        """
        commits = self._commits
        conn = self.connection()
        row: Any = conn.execute("PRAGMA data_version").fetchone()
        cache: dict[Any, Any] = self._local.cache
        self._local.stamp = stamp = (commits, row[0])
        return conn, cache, stamp

    def forget_reads(self) -> None:
        """Empty this thread's read cache: the next reads look at the store itself."""
        cache: dict[Any, Any] | None = getattr(self._local, "cache", None)
        if cache is not None:
            cache.clear()

    def cache_as_read(self) -> tuple[dict[Any, Any], tuple[int, int] | None]:
        """Return this thread's read cache and the stamp its last ``read_cached`` read.

        For hints only, values a reader checks anyway: a load's chunk rows, right
        after its record (a chunk read through a stale row fails its check and is
        read again from the index). Saves reading ``PRAGMA data_version`` twice per
        load (~3 us warm, ~14 us with the CPU caches cold, P12).
        """
        self.connection()  # this thread's cache, new with a new connection
        cache: dict[Any, Any] = self._local.cache
        return cache, getattr(self._local, "stamp", None)

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


class _Write(contextlib.AbstractContextManager[apsw.Connection]):
    """``Database.write()`` without ``durable``: what ``_durable_write`` does, without a barrier.

    The write mutex, ``BEGIN IMMEDIATE``, the block, ``COMMIT`` (``ROLLBACK`` when
    the block raises), apsw errors translated, the write counter bumped.
    """

    __slots__ = ("_conn", "_db")

    def __init__(self, db: Database, conn: apsw.Connection | None) -> None:
        self._db = db
        self._conn = conn

    def __enter__(self) -> apsw.Connection:
        db = self._db
        conn = self._conn = self._conn or db.connection()
        db._writer.acquire()
        try:
            with translate_errors(db._writing):
                conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            db._commits += 1
            db._writer.release()
            raise
        return conn

    def __exit__(
        self, tp: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        db = self._db
        conn = self._conn
        assert conn is not None
        try:
            if e is None:
                with translate_errors(db._writing):
                    conn.execute("COMMIT")
            else:
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")
                translate_errors(db._writing).__exit__(tp, e, tb)  # raises the typed error
        finally:
            db._commits += 1  # even on rollback (or a failed COMMIT): one miss is cheap
            db._writer.release()


#: Entries per connection's read cache (``Database.read_cached``): slots' latest
#: records, records by id, a load's chunk rows. Emptied when full.
CACHE_SLOTS = 256


def remember(cache: dict[Any, Any], key: Any, entry: tuple[Any, ...]) -> None:
    """Keep ``entry`` (whose first item is the stamp it was read under) in ``cache``."""
    if len(cache) >= CACHE_SLOTS:
        cache.clear()
    cache[key] = entry


def _file_stamp(path: Path) -> tuple[int, ...]:
    """Return what changes when a database file or its ``-wal`` is written (or appears)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0,)
    try:
        wal = os.lstat(path.with_name(path.name + "-wal")).st_size
    except FileNotFoundError:
        wal = -1
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, wal)


def json_same(*args: Any) -> int:
    """SQL ``ckptlite_json_same(a, b)``: two JSON texts hold equal values (as jsonb compares).

    What ``ls --where KEY=[...]`` compares lists and objects with: by value (1 is
    1.0 at any depth, objects in any key order), not as text.
    """
    a, b = args
    if not isinstance(a, str) or not isinstance(b, str):
        return 0
    try:
        return int(same_json_value(json.loads(a), json.loads(b)))
    except ValueError:  # not JSON: equal only as the same text
        return int(a == b)


def _add_functions(conn: apsw.Connection) -> None:
    conn.create_scalar_function("ckptlite_json_same", json_same, 2, deterministic=True)


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
