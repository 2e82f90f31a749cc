"""PostgreSQL connections for the postgres backend: per thread, fork-safe, retried.

One connection per thread, opened lazily (autocommit; writes open explicit
transactions), closed when its thread ends (``_perthread``). A forked child opens its
own and never touches (or closes) the parent's. ``run`` redoes what is safe to
redo after a dropped connection and maps psycopg errors to ckptlite's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerr

from .._perthread import ThreadOwner
from ..errors import (
    CkptliteError,
    InvalidInputError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
)

__all__ = ["Conn", "Connections", "display_url", "run", "split_url", "translate"]

T = TypeVar("T")
Conn = psycopg.Connection[Any]

RETRY_DELAYS = (0.05, 0.25, 1.0, 0.0)  # sleep after attempt k fails

# Connections a forked child inherited: kept referenced so they are never
# garbage-collected (and so never closed) in the child.
_inherited: list[Conn] = []


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ckptlite's own ``ckptlite_*`` query parameters off a libpq URL."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k.removeprefix("ckptlite_"): v for k, v in query if k.startswith("ckptlite_")}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if not k.startswith("ckptlite_")])
    if not parts.netloc:  # postgresql:// alone (libpq's environment): urlunsplit drops the //
        return f"{parts.scheme}://{parts.path}{'?' + rest if rest else ''}", ours
    return urllib.parse.urlunsplit(parts._replace(query=rest)), ours


def display_url(url: str) -> str:
    """Return ``url`` with its password masked (for messages and reports)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def translate(what: str, e: psycopg.Error, broken: bool) -> CkptliteError:
    """Map a psycopg error to ckptlite's typed errors."""
    if broken:
        return StoreIOError(
            f"{what}: lost the connection to PostgreSQL ({e})",
            hint="Its transaction was rolled back (unless the connection died during COMMIT: "
            "check with exists()). Retry; a new connection is opened. A sync resumes.",
        )
    if isinstance(e, pgerr.DiskFull):
        return StoreFullError(f"{what}: the PostgreSQL server is out of disk ({e})")
    if isinstance(e, pgerr.LockNotAvailable | pgerr.QueryCanceled | pgerr.TransactionRollback):
        return StoreLockedError(f"{what}: PostgreSQL is busy ({e})")
    if isinstance(e, pgerr.DataError):
        return InvalidInputError(
            f"{what}: PostgreSQL rejected a value ({e})",
            hint="Ids and process ids are at most 255 characters; strings cannot hold NUL.",
        )
    if isinstance(e, psycopg.OperationalError):
        return StoreIOError(f"{what}: PostgreSQL failed ({e})", hint="Check the server, retry.")
    return StoreError(f"{what}: PostgreSQL error ({e})", hint="Check the server log.")


class Connections:
    """One connection per thread (autocommit; writes open explicit transactions)."""

    def __init__(self, conninfo: str, *, readonly: bool = False) -> None:
        self.conninfo = conninfo
        #: Sessions refuse every write (``default_transaction_read_only``): a store opened
        #: read-only stays unchanged even if a write got past the manager.
        self.readonly = readonly
        self._pid = os.getpid()
        self._local = threading.local()
        self._all: list[Conn] = []
        self._lock = threading.Lock()

    def get(self) -> Conn:
        if os.getpid() != self._pid:
            self._after_fork()
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.closed or conn.broken):
            self.discard(conn)
            conn = None
        if conn is None:
            try:
                conn = psycopg.connect(
                    self.conninfo, autocommit=True, connect_timeout=10, application_name="ckptlite"
                )
            except psycopg.Error as e:
                raise StoreIOError(
                    f"cannot connect to PostgreSQL: {e}",
                    hint="Check that the server runs and the URL (host, port, database, user).",
                ) from e
            # Short OLTP statements: JIT compilation only adds latency to them.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SET jit = off")
            if self.readonly:
                try:
                    conn.execute("SET default_transaction_read_only = on")
                except psycopg.Error as e:
                    conn.close()
                    raise StoreIOError(
                        f"cannot make the PostgreSQL session read-only: {e}",
                        hint="Check the server, retry.",
                    ) from e
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
            # Threads come and go (a sync's reader, short-lived workers): each
            # connection is closed when its thread ends, not kept until close().
            self._local.owner = ThreadOwner(conn, self._all, self._lock, _close, _inherited)
        return conn

    def discard(self, conn: Conn) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
            self._local.owner = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        _close(conn)

    def _after_fork(self) -> None:
        # The parent's sockets are shared with it: never close (or use) them here.
        _inherited.extend(self._all)
        self._pid = os.getpid()
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()

    def close(self) -> None:
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


def _close(conn: Conn) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


def run(
    conns: Connections,
    what: str,
    fn: Callable[[Conn], T],
    *,
    write: bool = False,
    idempotent: bool = False,
    tx: bool = True,
) -> T:
    """Run ``fn`` on this thread's connection (in one transaction when ``write``).

    ``tx=False``: a write that is one statement runs without BEGIN/COMMIT (autocommit
    makes it atomic alone), saving two round trips; it is retried like a write.

    After a dropped connection, a read, a write that failed at BEGIN (nothing
    was sent) and an ``idempotent`` write are redone on a new connection, with
    a short backoff while a restarting server comes back; another write raises
    StoreIOError (its transaction was rolled back). Deadlocks are redone.
    """
    for attempt, delay in enumerate(RETRY_DELAYS):
        last = attempt == len(RETRY_DELAYS) - 1
        try:
            conn = conns.get()
        except StoreIOError:
            if last:
                raise
            time.sleep(delay)
            continue
        began = False
        try:
            if write and tx:
                with conn.transaction():
                    began = True
                    return fn(conn)
            began = write
            return fn(conn)
        except CkptliteError:
            raise
        except psycopg.Error as e:
            broken = conn.closed or conn.broken
            if broken:
                conns.discard(conn)
            if not last and (
                isinstance(e, pgerr.DeadlockDetected | pgerr.SerializationFailure)
                or (broken and (not write or not began or idempotent))
            ):
                time.sleep(delay if broken else 0)
                continue  # rolled back, or a read: redo it
            raise translate(what, e, broken) from e
    raise AssertionError("unreachable")
