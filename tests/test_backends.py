"""Run the shared backend contract against memory, local and (when built) postgres."""

from __future__ import annotations

from backend_contract import BackendContract, LedgerContract


class TestBackendContract(BackendContract):
    pass


class TestLedgerContract(LedgerContract):
    pass
