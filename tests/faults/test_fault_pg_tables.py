"""Issue 13 item 11: PostgreSQL stores under other table names, beside the default ones.

``?ckptlite_table=NAME`` (with or without ``ckptlite_prefix``) must work in a
database that already holds the default tables, and the default must work
after a custom table was used: each store keeps to its own rows. Names
PostgreSQL would truncate (over 63 bytes, counting every name the schema
derives: indexes, constraints, sequences) are refused with ConfigError
before anything is created. Every test runs in a schema of its own (the
``pg_schema`` fixture's search_path), so the "default" tables are its own too.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import ckptlite
from ckptlite import Level
from ckptlite.errors import ConfigError

if os.environ.get("CKPTLITE_REQUIRE_PG") == "1":
    import psycopg  # CI: the postgres extra must be installed, never skipped
else:
    psycopg = pytest.importorskip("psycopg")
pytestmark = pytest.mark.postgres


def with_params(dsn: str, **params: str) -> str:
    return dsn + "&" + urllib.parse.urlencode({f"ckptlite_{k}": v for k, v in params.items()})


def open_pg(dsn: str) -> ckptlite.CheckpointManager:
    return ckptlite.open(dsn, durability="none", chunk_size=64 * 1024)


@pytest.fixture
def admin(pg_schema: str) -> Iterator[Any]:
    with psycopg.connect(pg_schema, autocommit=True) as conn:
        yield conn


def schema_of(dsn: str) -> str:
    m = re.search(r"search_path%3D(\w+)", dsn)
    assert m
    return m.group(1)


def relations(admin: Any, schema: str) -> set[str]:
    """Every relation (tables, indexes, sequences) in ``schema``."""
    return {
        r[0]
        for r in admin.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s",
            (schema,),
        )
    }


def references(admin: Any, schema: str, table: str) -> str:
    """The table that ``table``'s foreign key to a checkpoints table points at."""
    (target,) = admin.execute(
        "SELECT c.confrelid::regclass::text FROM pg_constraint c WHERE c.contype = 'f' "
        "AND c.conrelid = to_regclass(%s) AND c.confrelid <> c.conrelid",
        (psycopg.sql.Identifier(schema, table).as_string(admin),),
    ).fetchone()
    return str(target)


def fill(mgr: ckptlite.CheckpointManager, tag: str) -> set[str]:
    root = mgr.save(tag, {"tag": tag}, level=Level.STAGE)
    kid = mgr.save(tag, {"x": np.arange(50_000) + len(tag)}, parent=root)  # chunked
    return {root.id, kid.id}


def check(url: str, expected: set[str]) -> None:
    """The store at ``url`` lists exactly ``expected``, and every one loads."""
    with open_pg(url) as mgr:
        assert {c.id for c in mgr.list()} == expected
        for cid in expected:
            mgr.load(cid)
        assert mgr.verify(full=True).ok


@pytest.mark.parametrize("prefix", [None, "exp_"])
def test_a_custom_table_beside_the_default_tables(
    pg_schema: str, admin: Any, prefix: str | None
) -> None:
    default = pg_schema
    custom = with_params(pg_schema, table="experiments", **({"prefix": prefix} if prefix else {}))
    with open_pg(default) as mgr:
        in_default = fill(mgr, "d")
    with open_pg(custom) as mgr:
        in_custom = fill(mgr, "c")
    check(default, in_default)
    check(custom, in_custom)
    schema = schema_of(pg_schema)
    own = prefix or "ckptlite_experiments_"
    assert references(admin, schema, f"{own}records") == "experiments"
    assert references(admin, schema, "ckptlite_records") == "pipeline_checkpoints"
    # Two stores: each syncs into the other.
    assert ckptlite.sync(default, custom).checkpoints_copied == 2
    assert ckptlite.sync(custom, default).checkpoints_copied == 2
    check(default, in_default | in_custom)
    check(custom, in_default | in_custom)


def test_the_default_tables_after_a_custom_one(pg_schema: str, admin: Any, tmp_path: Any) -> None:
    custom = with_params(pg_schema, table="experiments")
    with open_pg(custom) as mgr:
        in_custom = fill(mgr, "c")
    with open_pg(pg_schema) as mgr:
        in_default = fill(mgr, "d")
    check(custom, in_custom)
    check(pg_schema, in_default)
    with ckptlite.open(tmp_path / "local", durability="none") as local:
        in_local = fill(local, "l")
    for url in (custom, pg_schema):
        assert ckptlite.sync(str(tmp_path / "local"), url).checkpoints_copied == 2
        assert not ckptlite.sync(str(tmp_path / "local"), url).changed
    check(custom, in_custom | in_local)
    check(pg_schema, in_default | in_local)


def test_a_custom_table_made_with_the_default_prefix_keeps_its_tables(
    pg_schema: str, admin: Any
) -> None:
    # What a custom table got before: ckptlite's tables under the default prefix.
    old = with_params(pg_schema, table="experiments", prefix="ckptlite_")
    with open_pg(old) as mgr:
        in_custom = fill(mgr, "c")
    check(with_params(pg_schema, table="experiments"), in_custom)  # found without the prefix
    with open_pg(pg_schema) as mgr:  # the default then gets tables of its own
        in_default = fill(mgr, "d")
    check(pg_schema, in_default)
    check(old, in_custom)
    schema = schema_of(pg_schema)
    assert references(admin, schema, "ckptlite_records") == "experiments"
    assert (
        references(admin, schema, "ckptlite_pipeline_checkpoints_records") == "pipeline_checkpoints"
    )


def test_a_prefix_whose_tables_serve_another_table_is_refused(pg_schema: str, admin: Any) -> None:
    with open_pg(pg_schema) as mgr:
        in_default = fill(mgr, "d")
    before = relations(admin, schema_of(pg_schema))
    with pytest.raises(ConfigError, match="pipeline_checkpoints") as e:
        open_pg(with_params(pg_schema, table="experiments", prefix="ckptlite_"))
    assert "ckptlite_prefix" in e.value.hint
    assert relations(admin, schema_of(pg_schema)) == before  # "experiments" was not created
    check(pg_schema, in_default)


def test_names_postgres_would_truncate_are_refused_before_anything_is_created(
    pg_schema: str, admin: Any
) -> None:
    schema = schema_of(pg_schema)
    too_long = [
        {"table": "t" * 64},  # the table itself
        {"table": "é" * 32},  # 64 bytes in UTF-8, 32 characters
        {"table": "t" * 46, "prefix": "p_"},  # t_checkpoint_id_key would be 64 bytes
        {"prefix": "p" * 38},  # p..records_checkpoint_id_fkey would be 64 bytes
        {"table": "t" * 30, "prefix": "p" * 38},
    ]
    for params in too_long:
        with pytest.raises(ConfigError, match="63 bytes") as e:
            open_pg(with_params(pg_schema, **params))
        assert "shorter" in e.value.hint
        assert relations(admin, schema) == set(), params
    # At the limits, everything fits: a 45-byte table, a 37-byte prefix.
    at_limit = with_params(pg_schema, table="t" * 45, prefix="p" * 37)
    with open_pg(at_limit) as mgr:
        ids = fill(mgr, "x")
    check(at_limit, ids)
    assert f"{'t' * 45}_checkpoint_id_key" in relations(admin, schema)
    assert f"{'p' * 37}records_checkpoint_id_key" in relations(admin, schema)


def test_a_long_custom_table_gets_a_short_prefix(pg_schema: str, admin: Any) -> None:
    name = "experiments_" + "x" * 30  # ckptlite_<name>_ would pass 37 bytes
    url = with_params(pg_schema, table=name)
    with open_pg(pg_schema) as mgr:
        in_default = fill(mgr, "d")
    with open_pg(url) as mgr:
        in_custom = fill(mgr, "c")
    check(url, in_custom)
    check(pg_schema, in_default)
    rels = relations(admin, schema_of(pg_schema))
    prefixes = {r.removesuffix("records") for r in rels if r.endswith("records")}
    (short,) = prefixes - {"ckptlite_", "_ckptlite_"}  # the default's, and the custom's
    assert re.fullmatch(r"ckptlite_[0-9a-f]{12}_", short)
    assert references(admin, schema_of(pg_schema), f"{short}records") == name


def test_the_name_list_is_every_name_the_schema_makes(pg_schema: str, admin: Any) -> None:
    from ckptlite.backends import _pg_schema

    open_pg(with_params(pg_schema, table="tt", prefix="pp_")).close()
    made = relations(admin, schema_of(pg_schema))
    for sql in (
        "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = %s",
        "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = %s",
    ):
        made |= {r[0] for r in admin.execute(sql, (schema_of(pg_schema),))}
    assert made == set(_pg_schema.legacy_names("tt") + _pg_schema.own_names("pp_"))


def test_an_existing_long_legacy_table_is_used_as_it_is(pg_schema: str, admin: Any) -> None:
    name = "l" * 50  # its own index names were chosen by whoever made it
    admin.execute(
        psycopg.sql.SQL(
            "CREATE TABLE {} (id SERIAL PRIMARY KEY, checkpoint_id VARCHAR(255) UNIQUE NOT NULL, "
            "level VARCHAR(50) NOT NULL, parent_id VARCHAR(255) REFERENCES {}(checkpoint_id), "
            "processor_name VARCHAR(255) NOT NULL, data_summary JSONB NOT NULL DEFAULT '{{}}', "
            "file_path TEXT NOT NULL, file_size_bytes BIGINT NOT NULL, status VARCHAR(50) "
            "NOT NULL DEFAULT 'created', validation_checksum VARCHAR(64), "
            "created_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now())"
        ).format(psycopg.sql.Identifier(name), psycopg.sql.Identifier(name))
    )
    url = with_params(pg_schema, table=name, prefix="long_")
    with open_pg(url) as mgr:
        ids = fill(mgr, "x")
    check(url, ids)
