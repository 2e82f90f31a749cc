"""Shared fixtures: stores on every backend, a Postgres DSN, helpers to damage files."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

import ckptlite
from ckptlite.backends.base import Backend

PG_DSN = os.environ.get("CKPTLITE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_available() -> bool:
    """Tell whether the test PostgreSQL answers."""
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def require_pg() -> None:
    """Skip (or, with CKPTLITE_REQUIRE_PG=1, fail) when PostgreSQL is not reachable."""
    if pg_available():
        return
    msg = f"PostgreSQL not reachable at {PG_DSN}"
    if os.environ.get("CKPTLITE_REQUIRE_PG") == "1":
        pytest.fail(msg + " and CKPTLITE_REQUIRE_PG=1")
    pytest.skip(msg)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test; yields a DSN whose search_path is that schema."""
    require_pg()
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield f"{PG_DSN}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A directory for a local store (not created yet)."""
    return tmp_path / "store"


@pytest.fixture
def mgr(store_dir: Path) -> Iterator[ckptlite.CheckpointManager]:
    """A manager on a fresh local store (durability none: tests need no fsync)."""
    m = ckptlite.open(store_dir, durability="none", chunk_size=64 * 1024)
    try:
        yield m
    finally:
        m.close()


# The postgres backend joins the contract suite once its module exists.
BACKENDS = ["memory", "local"] + (
    ["postgres"] if importlib.util.find_spec("ckptlite.backends.postgres") else []
)


@pytest.fixture(params=BACKENDS)
def any_mgr(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ckptlite.CheckpointManager]:
    """A manager on each backend in turn (the contract suite runs against all of them)."""
    kind = request.param
    if kind == "memory":
        url = "memory://"
    elif kind == "local":
        url = str(tmp_path / "store")
    else:
        url = request.getfixturevalue("pg_schema")
    m = ckptlite.open(url, durability="none", chunk_size=64 * 1024)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(params=BACKENDS)
def direct_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty backend of each kind in turn, opened directly (no manager)."""
    from ckptlite._stores import open_backend
    from ckptlite.types import StorageConfig

    kind = request.param
    if kind == "memory":
        url = "memory://"
    elif kind == "local":
        url = str(tmp_path / "store")
    else:
        url = request.getfixturevalue("pg_schema")
    b = open_backend(StorageConfig(url, durability="none"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def backend(any_mgr: ckptlite.CheckpointManager) -> Backend:
    """The backend under the parametrised manager."""
    return any_mgr.backend


@pytest.fixture
def count_digests(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[int]]:
    """Call it to start recording the size of every buffer hashed for a chunk address.

    (``chunking.digest_of``, the store's BLAKE3 or SHA-256.) Returns the list it fills.
    """
    from ckptlite import chunking

    def start() -> list[int]:
        sizes: list[int] = []
        real = chunking.digest_of

        def counting(data: bytes | bytearray | memoryview, algo: str) -> str:
            sizes.append(memoryview(data).nbytes)
            return real(data, algo)

        monkeypatch.setattr(chunking, "digest_of", counting)
        return sizes

    return start


@pytest.fixture
def trace_sql() -> Iterator[Callable[[ckptlite.CheckpointManager], list[str]]]:
    """Call it with a local store's manager to record every statement this thread runs.

    Returns the list it fills; tracing stops at the test's end.
    """
    traced: list[object] = []

    def start(mgr: ckptlite.CheckpointManager) -> list[str]:
        statements: list[str] = []
        conn = mgr.backend.db.read()  # type: ignore[attr-defined]

        def trace(_cursor: object, sql: str, _bindings: object) -> bool:
            statements.append(sql)
            return True

        conn.exec_trace = trace
        traced.append(conn)
        return statements

    yield start
    for conn in traced:
        with contextlib.suppress(apsw.ConnectionClosedError):  # the store closed first
            conn.exec_trace = None  # type: ignore[attr-defined]
