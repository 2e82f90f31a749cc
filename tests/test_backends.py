"""Run the backend contract (``ckptlite.testing``) on the memory, local and PostgreSQL backends.

Each backend is opened directly, not through a manager: the suites call it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BACKENDS

from ckptlite._stores import open_backend
from ckptlite.backends.base import Backend
from ckptlite.testing import BackendTests, LedgerTests
from ckptlite.types import StorageConfig


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty backend of each kind in turn."""
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


class TestBackendContract(BackendTests):
    pass


class TestLedgerContract(LedgerTests):
    pass
