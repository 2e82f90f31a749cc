"""Item 3: fsync fails with EIO in the chunk writer: the save fails and commits nothing.

os.fsync is patched for the blob writer (SQLite's own syncs are C calls and go
through the VFS shim of item 4). The k-th fsync call fails, for k = 1, 2, ...
until a save makes fewer calls than k; once as a one-shot fault (the next save
must then succeed) and once persistent (every retry must fail too: a chunk file
left behind by the failed attempt must not let a retry skip the fsync).
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from fault_harness import Reported, common_check, open_store, save_one

import ckptlite


class FailingFsync:
    """os.fsync that raises EIO on call ``k`` (and after it, when persistent)."""

    def __init__(self, k: int, persistent: bool) -> None:
        self.k, self.persistent, self.calls, self.failed = k, persistent, 0, 0
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.k or (self.persistent and self.calls > self.k):
            self.failed += 1
            raise OSError(errno.EIO, "Input/output error (injected)")
        self.real(fd)


def _state(seed: int) -> dict[str, bytes]:
    return {"b": random.Random(seed).randbytes(100_000)}  # one chunk file


def _expected(cp: ckptlite.Checkpoint) -> object:
    if "seed" in cp.metadata and "size" in cp.metadata:
        from fault_harness import expected_from_metadata

        return expected_from_metadata(cp)
    return _state(cp.metadata["b"])


@pytest.mark.parametrize("persistent", [False, True], ids=["one-shot", "persistent"])
def test_fsync_eio_fails_the_save_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, persistent: bool
) -> None:
    store = tmp_path / "store"
    reported = Reported()
    with open_store(store) as mgr:
        cp = save_one(mgr, None, 1, 300_000)
        reported.saved[cp.id] = (1, 300_000)
    k = 0
    while True:
        k += 1
        assert k < 50, "the save never stopped calling fsync"
        fault = FailingFsync(k, persistent)
        with open_store(store) as mgr:
            before = len(mgr.list())
            monkeypatch.setattr(os, "fsync", fault)
            seed = 1000 + k
            try:
                mgr.save("eio", _state(seed), metadata={"b": seed})
            except ckptlite.StoreIOError as e:
                assert fault.failed, "StoreIOError without an injected fault"
                assert e.hint
                assert len(mgr.list()) == before, "a failed save committed a checkpoint"
                if persistent:
                    # No retry may turn into a success while fsync keeps failing.
                    for _ in range(3):
                        with pytest.raises(ckptlite.StoreIOError):
                            mgr.save("eio", _state(seed), metadata={"b": seed})
                    assert len(mgr.list()) == before
                monkeypatch.setattr(os, "fsync", fault.real)
                # Once the disk is healthy again the same save succeeds.
                mgr.save("eio", _state(seed), metadata={"b": seed})
                assert len(mgr.list()) == before + 1
            else:
                assert not fault.failed
                monkeypatch.setattr(os, "fsync", fault.real)
                break
            finally:
                monkeypatch.setattr(os, "fsync", fault.real)
        common_check(store, reported, expected=_expected)
    assert k >= 3, "expected a save to fsync its pack file and the pack directory"


def test_eio_on_the_fdatasync_of_an_append_commits_nothing_and_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append to the open pack fails its fdatasync: the save fails, the pack is cut back
    to its committed chunks and closed; the next save goes to a new pack and loads."""
    from damage import chunk_span

    store = tmp_path / "store"
    real = os.fdatasync
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error (injected)")

    with open_store(store) as mgr:
        first = mgr.save("eio", _state(1), metadata={"b": 1})
        (pack,) = {chunk_span(store, d)[0] for d in mgr.backend.get_record(first.id).digests}
        size = pack.stat().st_size
        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(ckptlite.StoreIOError) as exc:
            mgr.save("eio", _state(2), metadata={"b": 2})
        monkeypatch.setattr(os, "fdatasync", real)
        assert calls and exc.value.hint
        assert [cp.id for cp in mgr.list()] == [first.id]
        assert pack.stat().st_size == size  # the failed append's bytes were cut off
        again = mgr.save("eio", _state(2), metadata={"b": 2})
        packs = {chunk_span(store, d)[0] for d in mgr.backend.get_record(again.id).digests}
        assert pack not in packs  # never appended after bytes whose sync failed
        assert mgr.load(again.id) == _state(2) and mgr.load(first.id) == _state(1)
        assert mgr.verify(full=True).ok
    common_check(store, Reported(), expected=_expected)
