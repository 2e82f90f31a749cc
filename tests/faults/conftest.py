"""The fault-injection suite (issue 7). Every test here is marked ``faults``.

Run it alone with ``pytest tests/faults`` or ``pytest -m faults``; the main
pytest command (and so ``.ci/run``) runs it too. The harness and the common
check every fault ends with live in ``fault_harness.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault-injection suite (tests/faults)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.faults)
