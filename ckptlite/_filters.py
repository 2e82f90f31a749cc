"""Tags and metadata filters of checkpoints (pure functions): ``save(tags=)``, ``ls --where``.

Tags live in a checkpoint's metadata under ``TAGS_KEY`` (a sorted list of
strings). ``where`` maps metadata keys to values; a checkpoint matches when each
key holds that value (numbers compare as numbers: 3 finds 3.0; the string "3"
is another value). The backends filter (``ListQuery.metadata`` / ``tags``).

>>> from ckptlite._filters import parse_where
>>> parse_where("zoom=3"), parse_where("crs=EPSG:4326")
(('zoom', 3), ('crs', 'EPSG:4326'))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .backends.base import TAGS_KEY
from .errors import InvalidInputError

__all__ = ["TAGS_KEY", "check_tags", "check_where", "parse_where"]


def check_tags(tags: object) -> list[str]:
    """Return ``tags`` as a sorted list without repeats.

    Raises:
        InvalidInputError: not a list/tuple/set of non-empty strings.
    """
    if isinstance(tags, str) or not isinstance(tags, list | tuple | set | frozenset):
        raise InvalidInputError(
            f"tags must be a list of strings, not {tags!r}", hint='For example tags=["nightly"].'
        )
    if not all(isinstance(t, str) and t for t in tags):
        raise InvalidInputError(f"every tag must be a non-empty str, not {tags!r}")
    return sorted(set(tags))


def parse_where(text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE``; VALUE is read as JSON when it is JSON (3, true, "x"), else text.

    Raises:
        InvalidInputError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidInputError(
            f"--where takes KEY=VALUE, not {text!r}", hint="For example --where crs=EPSG:4326."
        )
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def check_where(where: object) -> tuple[tuple[str, Any], ...]:
    """Return ``where`` (a dict of metadata key -> JSON value) as ``ListQuery.metadata``.

    Raises:
        InvalidInputError: not a dict of str keys (without '"') to JSON values.
    """
    if where is None:
        return ()
    if not isinstance(where, Mapping):
        raise InvalidInputError(f"where must be a dict, not {where!r}")
    for key, value in where.items():
        if not isinstance(key, str) or not key or '"' in key:
            raise InvalidInputError(f"a where key must be a non-empty str without '\"': {key!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidInputError(f"where[{key!r}] is not a JSON value: {value!r}") from None
    return tuple(where.items())
