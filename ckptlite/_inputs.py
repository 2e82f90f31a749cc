"""Checks of the manager's arguments: a bad one is an ``InvalidInputError``, found before any write.

Every string a store keeps (process ids, names, ids, metadata) must be valid
Unicode: a lone surrogate (``"\\ud800"``, what ``os.fsdecode`` makes of bytes
that are not UTF-8) cannot be encoded, by SQLite or PostgreSQL, so it is
refused here, before a chunk is written, rather than failing half-way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .errors import InvalidInputError
from .types import Level, Status

__all__ = ["level", "limit", "optional", "progress", "since", "status", "text"]

_INT64 = 2**63 - 1  # SQLite's INTEGER
_TEXT_HINT = (
    "Strings must be valid Unicode text: no lone surrogates such as '\\ud800' (bytes that "
    "are not UTF-8, decoded with errors='surrogateescape'); use errors='replace'."
)


def text(value: object, what: str, *, empty: bool = True) -> str:
    """Return ``value`` if it is a str that can be stored (non-empty unless ``empty``).

    Raises:
        InvalidInputError: not a str, empty when it must not be, or not valid Unicode.
    """
    if not isinstance(value, str) or (not empty and not value):
        kind = "a non-empty str" if not empty else "a str"
        raise InvalidInputError(f"{what} must be {kind}, not {value!r}")
    if not value.isascii():  # the encode is only needed (and only paid) for non-ASCII text
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInputError(
                f"{what} is not valid Unicode text: {value[e.start : e.end]!r} at {e.start}",
                hint=_TEXT_HINT,
            ) from None
    return value


def level(value: object) -> Level | None:
    """Return the Level named by ``value`` (None stays None).

    Raises:
        InvalidInputError: not a level.
    """
    if type(value) is Level:  # the common case, without Level()'s ~0.6 us
        return value
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return Level(value)
    except ValueError:
        raise InvalidInputError(
            f"unknown level {value!r}",
            hint=f"Use ckptlite.Level: {', '.join(m.value for m in Level)}.",
        ) from None


def status(value: object) -> Status | None:
    """Return the Status named by ``value`` (None stays None).

    Raises:
        InvalidInputError: not a status.
    """
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return Status(value)
    except ValueError:
        raise InvalidInputError(
            f"unknown status {value!r}",
            hint=f"Use ckptlite.Status: {', '.join(m.value for m in Status)}.",
        ) from None


def progress(value: object) -> tuple[int, int] | None:
    """Return ``(done, total)`` checked: ints, ``0 <= done <= total < 2**63``.

    Raises:
        InvalidInputError: anything else.
    """
    if value is None:
        return None
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in value)
    ):
        raise InvalidInputError(
            f"progress must be (done, total) ints, not {value!r}",
            hint="Pass progress=(items done, items in all), e.g. (37, 1200).",
        )
    done, total = int(value[0]), int(value[1])
    if not 0 <= done <= total <= _INT64:
        raise InvalidInputError(
            f"progress must be (done, total) with 0 <= done <= total < 2**63, not {value!r}",
            hint="Pass progress=(items done, items in all), e.g. (37, 1200).",
        )
    return (done, total)


def since(value: object) -> datetime | None:
    """Return ``value``: None or a timezone-aware datetime.

    Raises:
        InvalidInputError: anything else.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInputError(
            f"since must be a datetime, not {value!r}",
            hint="Use e.g. datetime.now(UTC) - timedelta(days=2).",
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError("since must be timezone-aware", hint="Use datetime.now(UTC).")
    return value


def limit(value: object) -> int | None:
    """Return ``value``: None or an int from 0 to 2**63 - 1.

    Raises:
        InvalidInputError: anything else.
    """
    return whole(value, "limit", "Pass limit=None for all of them.")


def whole(value: object, what: str, hint: str) -> int | None:
    """Return ``value``: None or an int from 0 to 2**63 - 1 (``what`` names it in errors).

    Raises:
        InvalidInputError: anything else (``hint`` says what to pass).
    """
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT64:
        raise InvalidInputError(f"{what} must be None or an int >= 0, not {value!r}", hint=hint)
    return value


def optional(value: Any, what: str) -> str | None:
    """Return ``value`` checked by ``text`` unless it is None."""
    return None if value is None else text(value, what)
