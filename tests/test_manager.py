"""The manager on a real local store: round trips, dedup, corruption, bad input."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from damage import chunk_span, flip_bit, stored_files

import ckptlite
from ckptlite import Level, Status
from ckptlite.errors import (
    ConfigError,
    CorruptCheckpointError,
    InvalidInputError,
    PickleNotAllowedError,
    UnsupportedTypeError,
)


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def chunk_files(store: Path) -> list[Path]:
    return stored_files(store)


def test_64mib_array_and_nested_dict_round_trip_and_dedup(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.random((4096, 4096), dtype=np.float32)  # 64 MiB
    nested = {
        "when": datetime(2026, 11, 26, 14, 2, tzinfo=UTC),
        "blob": bytes(range(256)) * 10,
        "pair": (1, (2.5, "three")),
        "deep": {"list": [None, True, {"x": b"\x00"}]},
    }
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        first = mgr.save("geo", {"raster": arr, "nested": nested})
        back = mgr.load(first.id)
        assert back["raster"].dtype == arr.dtype and back["raster"].tobytes() == arr.tobytes()
        assert back["nested"] == nested and isinstance(back["nested"]["pair"][1], tuple)

        changed = arr.copy()
        rows = rng.choice(4096, size=41, replace=False)  # 1% of the rows
        changed[rows] += 1.0
        second = mgr.save("geo", {"raster": changed, "nested": nested})
        assert first.stored_size >= arr.nbytes * 0.8  # random floats barely compress
        # 41 scattered rows touch at most 41 of the 64 one-MiB chunks; contiguous rows
        # would touch one. Assert the design bound on the contiguous case below.
        assert second.stored_size <= 41 * (1 << 20) + 4096

        block = arr.copy()
        block[2000:2041] += 1.0  # 1% of the rows, contiguous, inside one 1 MiB chunk
        third = mgr.save("geo", {"raster": block, "nested": nested})
        assert third.stored_size <= 0.03 * first.stored_size
        straddle = arr.copy()
        straddle[1000:1041] += 1.0  # crosses a chunk boundary: two chunks, ~3.1%
        fourth = mgr.save("geo", {"raster": straddle, "nested": nested})
        assert fourth.stored_size <= 2 * (1 << 20) + 4096
        assert mgr.load(third.id)["raster"].tobytes() == block.tobytes()


def test_bit_flip_in_a_file_chunk_is_caught_and_latest_falls_back(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        good = mgr.save("p", {"a": np.random.default_rng(1).random(300_000)})
        bad = mgr.save("p", {"a": np.random.default_rng(2).random(300_000)})
        victim, at, _ = chunk_span(store, mgr.backend.get_record(bad.id).digests[0])
        flip_bit(victim, at + 1234)  # appended to the same pack as good's chunks

        with pytest.raises(CorruptCheckpointError) as e:
            mgr.load(bad.id)
        assert bad.id in str(e.value) and e.value.hint
        assert mgr.get(bad.id).status is Status.CORRUPTED
        assert mgr.latest("p").id == good.id  # type: ignore[union-attr]
        cp, state = mgr.load_latest("p")  # type: ignore[misc]
        assert cp.id == good.id and np.array_equal(
            state["a"], np.random.default_rng(1).random(300_000)
        )

        report = mgr.verify(full=True)
        assert report.corrupted == (bad.id,) and not report.ok


def test_load_latest_falls_back_without_a_prior_load(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        # Noise: a shuffled arange compresses to a chunk small enough to live in SQLite.
        ints = np.random.default_rng(0).integers(0, 1 << 62, 200_000)
        good = mgr.save("p", {"a": ints})
        bad = mgr.save("p", {"a": ints * 3})
        for d in mgr.backend.get_record(bad.id).digests:
            f, at, _ = chunk_span(store, d)
            flip_bit(f, at + 10)
        assert mgr.latest("p").id == bad.id  # type: ignore[union-attr]  # not yet detected
        cp, state = mgr.load_latest("p")  # type: ignore[misc]
        assert cp.id == good.id and np.array_equal(state["a"], ints)
        assert mgr.get(bad.id).status is Status.CORRUPTED


def test_bit_flip_in_an_inline_chunk_is_caught(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none", chunk_size=16 * 1024) as mgr:
        good = mgr.save("p", {"b": os.urandom(100_000)})
        bad = mgr.save("p", {"b": os.urandom(100_000)})
        assert not chunk_files(store)  # 16 KiB chunks all live inside SQLite
        digest = mgr.backend.get_record(bad.id).digests[0]
        conn = mgr.backend.db.connection()  # type: ignore[attr-defined]
        data = bytearray(
            conn.execute("SELECT data FROM chunks WHERE digest=?", (digest,)).fetchone()[0]
        )
        data[7] ^= 0x10
        conn.execute("UPDATE chunks SET data=? WHERE digest=?", (bytes(data), digest))
        with pytest.raises(CorruptCheckpointError):
            mgr.load(bad.id)
        assert mgr.load_latest("p")[0].id == good.id  # type: ignore[index]
        assert mgr.verify(full=True).corrupted == (bad.id,)


def test_verify_full_names_only_the_damaged_checkpoint_and_heals_after_repair(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        cps = [
            # Noise, so that the chunk lives in a file (a shuffled ramp fits in SQLite)
            mgr.save("p", {"a": np.random.default_rng(i).random(300_000)})
            for i in range(4)
        ]
        target = cps[2]
        digest = mgr.backend.get_record(target.id).digests[0]
        victim, offset, _ = chunk_span(store, digest)
        original = victim.read_bytes()
        flip_bit(victim, offset + 99)
        assert mgr.verify().ok  # the cheap check sees files, not bytes
        report = mgr.verify(full=True)
        assert report.corrupted == (target.id,)
        victim.write_bytes(original)
        assert mgr.verify(full=True).ok
        assert mgr.get(target.id).status is Status.VALID


def test_unsupported_type_leaves_the_store_unchanged(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", {"a": np.arange(100_000)})
        snap = tree_snapshot(store)
        with pytest.raises(UnsupportedTypeError):
            mgr.save("p", {"big": np.arange(300_000), "bad": {1, range(2)}})
        assert tree_snapshot(store) == snap
        assert len(mgr.list()) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"process_id": ""},
        {"level": "phase"},
        {"metadata": {"x": {1, 2}}},
        {"metadata": {"nan": float("nan")}},
        {"progress": (1, "2")},
        {"parent": "chk_step_20260101T000000.000000Z_" + "0" * 32},
    ],
)
def test_bad_arguments_are_typed_and_change_nothing(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", 1)
        snap = tree_snapshot(store)
        args = {"process_id": "p", **kwargs}
        with pytest.raises(InvalidInputError) as e:
            mgr.save(args.pop("process_id"), {"a": np.arange(50_000)}, **args)  # type: ignore[arg-type]
        assert e.value.hint
        assert len(mgr.list()) == 1
        mgr.gc()
        assert tree_snapshot(store).keys() == snap.keys()


def test_pickle_needs_opt_in_to_save_and_to_load(tmp_path: Path) -> None:
    store = tmp_path / "s"
    value = {"c": Fraction(1, 3)}
    with ckptlite.open(store, durability="none") as mgr, pytest.raises(UnsupportedTypeError):
        mgr.save("p", value)
    with ckptlite.open(store, durability="none", allow_pickle=True) as mgr:
        cp = mgr.save("p", value)
        assert mgr.load(cp.id) == value
    with ckptlite.open(store, durability="none") as mgr:
        with pytest.raises(PickleNotAllowedError):
            mgr.load(cp.id)
        assert mgr.get(cp.id).status is Status.VALID  # not corruption


def test_open_resolves_env_and_platformdirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CKPTLITE_URL", raising=False)
    monkeypatch.delenv("CKPTLITE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with ckptlite.open() as mgr:
        assert Path(mgr.url) == tmp_path / "xdg" / "ckptlite"
        assert (tmp_path / "xdg" / "ckptlite" / "ckptlite.db").exists()
    monkeypatch.setenv("CKPTLITE_HOME", str(tmp_path / "home"))
    with ckptlite.open() as mgr:
        assert Path(mgr.url) == tmp_path / "home"
    monkeypatch.setenv("CKPTLITE_URL", "memory://")
    with ckptlite.open() as mgr:
        assert mgr.url == "memory://"


def test_get_checkpoint_manager_is_a_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLITE_URL", "memory://")
    import ckptlite.manager as m

    monkeypatch.setattr(m, "_default", None)
    a = ckptlite.get_checkpoint_manager()
    assert a is ckptlite.get_checkpoint_manager()
    a.close()
    assert ckptlite.get_checkpoint_manager() is not a


@pytest.mark.parametrize(
    "kwargs", [{"durability": "maybe"}, {"chunk_size": 10}, {"url": "s3://bucket/x"}]
)
def test_bad_open_options_raise_config_error(tmp_path: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"url": tmp_path / "s", **kwargs}
    with pytest.raises(ConfigError):
        ckptlite.open(args.pop("url"), **args)  # type: ignore[arg-type]


def test_closed_manager_refuses_work(tmp_path: Path) -> None:
    mgr = ckptlite.open(tmp_path / "s")
    mgr.close()
    with pytest.raises(ConfigError):
        mgr.save("p", {"a": np.arange(100_000)})


def test_levels_accept_strings(tmp_path: Path) -> None:
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        cp = mgr.save("p", 1, level="stage", name="resample")
        assert cp.level is Level.STAGE
        assert mgr.latest("p", level="stage", name="resample") == cp
