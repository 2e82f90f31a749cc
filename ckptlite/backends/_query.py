"""One query builder for both SQL dialects: a ``ListQuery`` to a WHERE clause and its params.

Pure functions, as sqlite-utils separates building a query from running it: the
local backend (SQLite, ``?`` params) and the PostgreSQL one (``%s`` params, its
legacy table's columns and status names) build the same filters here, and only
run them themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import InvalidInputError
from ..types import Level, Status
from .base import TAGS_KEY, ListQuery

__all__ = [
    "Dialect",
    "order_limit",
    "postgres_has_tag",
    "postgres_meta_equals",
    "slot_where",
    "sqlite_has_tag",
    "sqlite_meta_equals",
    "where",
]


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one backend spells the filters: its parameter mark, columns and values."""

    param: str  # "?" or "%s"
    process_id: str
    level: str
    name: str
    status: str
    parent: str
    created_at: str
    seq: str
    status_value: Callable[[Status], str]
    time_value: Callable[[datetime], Any]
    #: (key, JSON value) -> a condition on the metadata and its params.
    meta_equals: Callable[[str, Any], tuple[str, list[Any]]]
    #: tag -> a condition that the metadata's tag list holds it, and its params.
    has_tag: Callable[[str], tuple[str, list[Any]]]


def slot_where(
    d: Dialect, process_id: str, level: Level | None, name: str | None
) -> tuple[list[str], list[Any]]:
    """Return the conditions and params that select one slot (None: any level / name)."""
    return where(d, ListQuery(process_id=process_id, level=level, name=name))


def where(d: Dialect, query: ListQuery) -> tuple[list[str], list[Any]]:
    """Return the conditions (to AND together) and params of ``query``'s filters.

    >>> from ckptlite.backends.local import SQLITE
    >>> where(SQLITE, ListQuery(process_id="p", after_seq=3))
    (['process_id=?', 'seq>?'], ['p', 3])
    """
    conds: list[str] = []
    args: list[Any] = []
    for col, val in (
        (d.process_id, query.process_id),
        (d.level, query.level.value if query.level else None),
        (d.name, query.name),
        (d.status, d.status_value(query.status) if query.status else None),
        (d.parent, query.parent),
    ):
        if val is not None:
            conds.append(f"{col}={d.param}")
            args.append(val)
    if query.since is not None:
        conds.append(f"{d.created_at}>={d.param}")
        args.append(d.time_value(query.since))
    if query.after_seq is not None:
        conds.append(f"{d.seq}>{d.param}")
        args.append(query.after_seq)
    for cond, params in [d.meta_equals(k, v) for k, v in query.metadata] + [
        d.has_tag(t) for t in query.tags
    ]:
        conds.append(cond)
        args += params
    return conds, args


def sqlite_meta_equals(key: str, value: Any) -> tuple[str, list[Any]]:
    """SQLite: the metadata JSON text's ``key`` equals ``value`` (``base.same_value``)."""
    path = _sqlite_path(key)
    if value is None:
        return "json_type(metadata, ?)='null'", [path]
    if isinstance(value, bool):
        return "json_type(metadata, ?)=?", [path, "true" if value else "false"]
    if isinstance(value, int | float):
        kinds = "('integer','real')"
        return f"json_type(metadata, ?) IN {kinds} AND json_extract(metadata, ?)=?", [
            path,
            path,
            value,
        ]
    if isinstance(value, str):
        return "json_type(metadata, ?)='text' AND json_extract(metadata, ?)=?", [path, path, value]
    # A list or an object: by value, as jsonb compares (1 is 1.0, keys in any order),
    # never as JSON text; the function runs only on rows whose value has that type.
    kind = "object" if isinstance(value, dict) else "array"
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (
        f"json_type(metadata, ?)='{kind}' AND ckptlite_json_same(json_extract(metadata, ?), ?)",
        [
            path,
            path,
            text,
        ],
    )


def sqlite_has_tag(tag: str) -> tuple[str, list[Any]]:
    """SQLite: the metadata's tag list holds ``tag``."""
    return (
        "EXISTS (SELECT 1 FROM json_each(metadata, ?) WHERE type='text' AND value=?)",
        [_sqlite_path(TAGS_KEY), tag],
    )


def _sqlite_path(key: str) -> str:
    if '"' in key:
        raise InvalidInputError(f"a metadata key to filter on cannot hold '\"': {key!r}")
    return f'$."{key}"'


def postgres_meta_equals(key: str, value: Any) -> tuple[str, list[Any]]:
    """PostgreSQL: ``data_summary.metadata[key]`` equals ``value`` as JSONB (3 = 3.0)."""
    return "(l.data_summary->'metadata'->%s) = %s::jsonb", [key, json.dumps(value)]


def postgres_has_tag(tag: str) -> tuple[str, list[Any]]:
    """PostgreSQL: the metadata's tag list holds ``tag``."""
    return "(l.data_summary->'metadata'->%s) @> %s::jsonb", [TAGS_KEY, json.dumps([tag])]


def order_limit(d: Dialect, query: ListQuery, args: list[Any]) -> str:
    """Return the ORDER BY (and LIMIT) tail of ``query``; the limit is appended to ``args``."""
    tail = f"ORDER BY {d.seq} " + ("ASC" if query.ascending else "DESC")
    if query.limit is not None:
        tail += f" LIMIT {d.param}"
        args.append(query.limit)
    return tail
