"""The contract every ckptlite backend satisfies, as test classes to subclass (zarr's StoreTests).

A backend outside this package proves itself by subclassing the suites and
giving them a ``backend`` fixture that yields a fresh, empty backend::

    import pytest
    from ckptlite.testing import BackendTests, LedgerTests

    class TestMyBackend(BackendTests, LedgerTests):
        @pytest.fixture
        def backend(self, tmp_path):
            b = MyBackend(tmp_path)
            yield b
            b.close()

The tests call the backend directly (records, chunks, ledger rows, and each
optional capability of ``BaseBackend``); records are built by the state engine,
as a save builds them. Needs pytest (``pip install 'ckptlite[dev]'``).
"""

from __future__ import annotations

from ._backend import BackendTests
from ._ledger import LedgerTests

__all__ = ["BackendTests", "LedgerTests"]
