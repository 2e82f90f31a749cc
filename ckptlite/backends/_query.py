"""One query builder for both SQL dialects: a ``ListQuery`` to a WHERE clause and its params.

Pure functions, as sqlite-utils separates building a query from running it: the
local backend (SQLite, ``?`` params) and the PostgreSQL one (``%s`` params, its
legacy table's columns and status names) build the same filters here, and only
run them themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..types import Level, Status
from .base import ListQuery

__all__ = ["Dialect", "order_limit", "slot_where", "where"]


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
    return conds, args


def order_limit(d: Dialect, query: ListQuery, args: list[Any]) -> str:
    """Return the ORDER BY (and LIMIT) tail of ``query``; the limit is appended to ``args``."""
    tail = f"ORDER BY {d.seq} " + ("ASC" if query.ascending else "DESC")
    if query.limit is not None:
        tail += f" LIMIT {d.param}"
        args.append(query.limit)
    return tail
