"""Run the backend contract (``ckptlite.testing``) on the memory, local and PostgreSQL backends.

Each backend is opened directly, not through a manager (``direct_backend`` in
conftest): the suites call it.
"""

from __future__ import annotations

import pytest

from ckptlite.backends.base import Backend
from ckptlite.testing import BackendTests, LedgerTests


@pytest.fixture
def backend(direct_backend: Backend) -> Backend:
    """The suites' backend: a fresh one of each kind."""
    return direct_backend


class TestBackendContract(BackendTests):
    pass


class TestLedgerContract(LedgerTests):
    pass
