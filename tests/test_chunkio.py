"""The load path: where loaded bytes land, how chunk rows are fetched; the shuffle codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ckptlite


def test_loaded_arrays_are_owned_writable_and_never_aliased(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random(1 << 19).astype(np.float32)  # 2 MiB: 2 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20) as mgr:
        cp = mgr.save("p", {"a": arr, "f": np.asfortranarray(arr.reshape(512, 1024))})
        first = mgr.load(cp)
        second = mgr.load(cp)
        for key in ("a", "f"):
            assert first[key].flags.writeable and second[key].flags.writeable
            assert not np.shares_memory(first[key], second[key])
        first["a"][:] = -1  # the caller owns it: writing it changes no other load
        assert np.array_equal(second["a"], arr)
        del first  # its memory goes back to the allocator, and may serve the next load
        third = mgr.load(cp)
        assert np.array_equal(third["a"], arr)
        assert np.array_equal(third["f"], arr.reshape(512, 1024))
        assert not np.shares_memory(third["a"], second["a"])
        third["f"][0, 0] = 7.0
        assert second["f"][0, 0] == arr[0] and mgr.load(cp)["f"][0, 0] == arr[0]


def test_a_load_fetches_its_chunk_rows_in_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arr = np.random.default_rng(1).random(1 << 19)  # 4 MiB: 4 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20) as mgr:
        cp = mgr.save("p", arr)
        backend = mgr.backend
        singles: list[str] = []
        real = backend._chunk_row  # type: ignore[attr-defined]

        def one_row(digest: str) -> object:
            singles.append(digest)
            return real(digest)

        monkeypatch.setattr(backend, "_chunk_row", one_row)
        assert np.array_equal(mgr.load(cp), arr)
        assert singles == []  # no SELECT per chunk from the pool threads
