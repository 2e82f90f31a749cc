"""Checkpoint ids: unique, path-safe, parseable."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from ckptlite import Level, generate_checkpoint_id, parse_checkpoint_id
from ckptlite.errors import InvalidInputError


def test_generate_parse_round_trip() -> None:
    now = datetime(2026, 11, 26, 14, 2, 23, 123456, tzinfo=UTC)
    for level in Level:
        cid = generate_checkpoint_id(level, now=now)
        parsed = parse_checkpoint_id(cid)
        assert parsed.level is level and parsed.created_at == now
        assert len(cid) <= 255 and re.fullmatch(r"[A-Za-z0-9_.]+", cid)


def test_ids_are_unique() -> None:
    ids = {generate_checkpoint_id() for _ in range(20_000)}
    assert len(ids) == 20_000


@pytest.mark.parametrize(
    "bad", ["", "chk_step_x", "../etc/passwd", 42, "chk_phase_20260101T000000.000000Z_" + "0" * 32]
)
def test_parse_rejects_foreign_ids(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        parse_checkpoint_id(bad)  # type: ignore[arg-type]


def test_generate_rejects_unknown_level() -> None:
    with pytest.raises(InvalidInputError):
        generate_checkpoint_id("phase")
