"""The query builder's metadata and tag filters agree with ListQuery.matches (the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlite._stores import open_backend
from ckptlite.backends.base import TAGS_KEY, ListQuery
from ckptlite.testing._helpers import save
from ckptlite.types import StorageConfig

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, 2.5, -1.0]),
    st.sampled_from(["", "1", "a", "EPSG:4326", "é"]),
)
values = st.one_of(scalars, st.lists(st.integers(0, 2), max_size=2))
metadata = st.dictionaries(st.sampled_from(["k", "z", "a.b"]), values, max_size=3).flatmap(
    lambda m: (
        st.just(m)
        | st.lists(st.sampled_from(["x", "y"]), unique=True).map(lambda t: {**m, TAGS_KEY: t})
    )
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(metadata, min_size=1, max_size=6),
    key=st.sampled_from(["k", "z", "a.b"]),
    want=values,
    tags=st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=2),
)
def test_sqlite_filters_as_matches_does(
    tmp_path_factory: Any, records: list[dict[str, Any]], key: str, want: Any, tags: list[str]
) -> None:
    path: Path = tmp_path_factory.mktemp("q") / "s"
    backend = open_backend(StorageConfig(str(path), durability="none"))
    try:
        saved = [save(backend, i, metadata=m) for i, m in enumerate(records)]
        q = ListQuery(metadata=((key, want),), tags=tuple(tags))
        expected = [c.id for c in reversed(saved) if q.matches(c)]
        assert [c.id for c in backend.list(q)] == expected
    finally:
        backend.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(metadata, min_size=1, max_size=5),
    key=st.sampled_from(["k", "z", "a.b"]),
    want=values,
    tags=st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=2),
)
def test_postgres_filters_as_matches_does(
    pg_schema: str, records: list[dict[str, Any]], key: str, want: Any, tags: list[str]
) -> None:
    import uuid

    backend = open_backend(StorageConfig(pg_schema, durability="none"))
    pid = uuid.uuid4().hex  # one schema for every example: each has its own process
    try:
        saved = [save(backend, i, process_id=pid, metadata=m) for i, m in enumerate(records)]
        q = ListQuery(process_id=pid, metadata=((key, want),), tags=tuple(tags))
        expected = [c.id for c in reversed(saved) if q.matches(c)]
        assert [c.id for c in backend.list(q)] == expected
    finally:
        backend.close()
