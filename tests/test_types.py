"""types: the one fast Checkpoint copy agrees with dataclasses.replace."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from ckptlite.types import Checkpoint, Level, Status

BASE = Checkpoint(
    "chk_1", "p", Level.STAGE, "n", "chk_0", 3, Status.CORRUPTED,
    datetime(2026, 1, 1, tzinfo=UTC), 10, 20, "c", {"k": 1}, (1, 2),
)  # fmt: skip


@given(
    seq=st.none() | st.integers(0, 2**40),
    size=st.none() | st.integers(0, 2**40),
    stored_size=st.none() | st.integers(0, 2**40),
    checksum=st.none() | st.text(max_size=8),
    metadata=st.none() | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
def test_copy_is_replace_of_the_fields_given(
    seq: int | None,
    size: int | None,
    stored_size: int | None,
    checksum: str | None,
    metadata: dict[str, int] | None,
) -> None:
    given_ = {
        "seq": seq,
        "size": size,
        "stored_size": stored_size,
        "checksum": checksum,
        "metadata": metadata,
    }
    changes = {k: v for k, v in given_.items() if v is not None}
    assert BASE.copy(**given_) == dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


def test_copy_keeps_the_metadata_dict_unless_given() -> None:
    assert BASE.copy(seq=9).metadata is BASE.metadata
    assert BASE.copy(metadata={}).metadata == {}
