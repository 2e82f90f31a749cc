"""Tags and metadata filters of checkpoints (pure functions): ``save(tags=)``, ``ls --where``.

Tags live in a checkpoint's metadata under ``TAGS_KEY`` (a sorted list of
strings). ``where`` maps metadata keys to values; a checkpoint matches when each
key holds that value (numbers compare as numbers: 3 finds 3.0; the string "3"
is another value).

>>> from ckptlite._filters import parse_where
>>> parse_where("zoom=3"), parse_where("crs=EPSG:4326")
(('zoom', 3), ('crs', 'EPSG:4326'))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInputError
from .types import Checkpoint

__all__ = ["TAGS_KEY", "check_tags", "matches", "parse_where"]

#: Metadata key holding a checkpoint's tags.
TAGS_KEY = "ckptlite.tags"


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


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want  # True is not 1
    return (type(have) is type(want) and have == want) or (
        isinstance(have, int | float) and isinstance(want, int | float) and have == want
    )


def matches(cp: Checkpoint, where: Mapping[str, Any], tags: Iterable[str]) -> bool:
    """Tell whether ``cp`` has every tag of ``tags`` and each ``where`` key's value."""
    own = cp.metadata.get(TAGS_KEY)
    have = set(own) if isinstance(own, list) else set()
    if not set(tags) <= have:
        return False
    return all(k in cp.metadata and _same(cp.metadata[k], v) for k, v in where.items())
