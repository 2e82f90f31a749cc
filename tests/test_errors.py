"""Errors: a message, a hint said once, context."""

from __future__ import annotations

import traceback

import pytest

import ckptlite
from ckptlite.errors import CheckpointNotFoundError, UnsupportedTypeError


def test_an_unsupported_type_shows_its_hint_once() -> None:
    # The report: the hint came out twice (it was part of str(e), and printed again
    # by whoever shows a message and its hint, the way the CLI does).
    with ckptlite.open("memory://") as mgr, pytest.raises(UnsupportedTypeError) as err:
        mgr.save("p", {"f": object()})
    e = err.value
    assert e.hint and e.hint not in str(e) and str(e) == e.message
    shown = f"error: {e}\n  hint: {e.hint}"
    assert shown.count(e.hint) == 1
    # A traceback still tells what to do, once (as a note).
    assert "".join(traceback.format_exception(e)).count(e.hint) == 1


def test_key_errors_print_their_message_not_its_repr() -> None:
    e = CheckpointNotFoundError("no checkpoint x")
    assert str(e) == "no checkpoint x"
    assert "hint: " in "".join(traceback.format_exception(e))


def test_reprs_are_bounded() -> None:
    from ckptlite.types import ItemRecord

    item = ItemRecord("run_1", "tiles", "t7", False, 3, "E" * 50_000, b"\0" * 138_000, 5)
    text = repr(item)
    assert len(text) < 400
    assert "138000 bytes" in text and "'t7'" in text and "attempts=3" in text
    from ckptlite.types import ItemMark, StoredChunk

    assert len(repr(ItemMark("g", "i", True, b"\0" * 100_000, None))) < 200
    assert len(repr(StoredChunk("d" * 64, 1 << 20, 1, b"\0" * (1 << 20)))) < 250
