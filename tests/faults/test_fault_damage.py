"""Item 6: the chunk damage matrix.

Three checkpoints A, C, B (oldest to newest) in one slot, each with two chunks
in a pack file of its own. One kind of damage is done to B's pack file (and,
for a swap, to C's): loading B raises CorruptCheckpointError, load_latest falls back to
the newest intact one, and verify(full=True) names exactly the damaged ones.
The common check then holds with those named as damaged.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from damage import chunk_span
from fault_harness import CHUNK, child_env, common_check, open_store

import ckptlite

PROC = "dmg"


def _state(seed: int) -> dict[str, bytes]:
    return {"b": random.Random(seed).randbytes(2 * CHUNK)}  # two chunk files


def _expected(cp: ckptlite.Checkpoint) -> object:
    return _state(cp.metadata["k"])


def _make(store: Path) -> dict[str, ckptlite.Checkpoint]:
    made = {}
    for label, seed in (("A", 1), ("C", 2), ("B", 3)):
        # A manager of its own per save: one that stays open appends to its open pack.
        with open_store(store) as mgr:
            made[label] = mgr.save(PROC, _state(seed), name="s", metadata={"k": seed})
    return made


def _chunk_file(store: Path, cp: ckptlite.Checkpoint) -> Path:
    """The file holding the checkpoint's chunks: its save's own pack."""
    with open_store(store) as mgr:
        digest = mgr.backend.get_record(cp.id).digests[0]
    return chunk_span(store, digest)[0]


def _bit_flip(p: Path, other: Path, outside: Path) -> None:
    data = bytearray(p.read_bytes())
    data[1000] ^= 0x10
    p.write_bytes(bytes(data))


def _truncate(p: Path, other: Path, outside: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _empty(p: Path, other: Path, outside: Path) -> None:
    os.truncate(p, 0)


def _zero_4k(p: Path, other: Path, outside: Path) -> None:
    with open(p, "r+b") as f:
        f.seek(4096)
        f.write(bytes(4096))


def _delete(p: Path, other: Path, outside: Path) -> None:
    p.unlink()


def _swap(p: Path, other: Path, outside: Path) -> None:
    tmp = p.with_name("swap")
    os.rename(p, tmp)
    os.rename(other, p)
    os.rename(tmp, other)


def _symlink(p: Path, other: Path, outside: Path) -> None:
    # Even a link to the very same bytes is refused: chunk paths are never followed.
    shutil.copyfile(p, outside)
    p.unlink()
    p.symlink_to(outside)


DAMAGE: dict[str, tuple[Callable[[Path, Path, Path], None], set[str]]] = {
    "bit-flip": (_bit_flip, {"B"}),
    "truncation": (_truncate, {"B"}),
    "empty-file": (_empty, {"B"}),
    "zeroed-4KiB": (_zero_4k, {"B"}),
    "deleted-file": (_delete, {"B"}),
    "swapped-with-another-valid-chunk": (_swap, {"B", "C"}),
    "symlink-planted": (_symlink, {"B"}),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_chunk_damage(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "store"
    cps = _make(store)
    outside = tmp_path / "outside-target"
    damage, labels = DAMAGE[kind]
    damage(_chunk_file(store, cps["B"]), _chunk_file(store, cps["C"]), outside)
    planted = outside.read_bytes() if outside.exists() else None
    damaged = {cps[label].id for label in labels}
    with open_store(store) as mgr:
        with pytest.raises(ckptlite.CorruptCheckpointError) as exc:
            mgr.load(cps["B"].id)
        assert cps["B"].id in str(exc.value) and exc.value.hint
        assert mgr.get(cps["B"].id).status == ckptlite.Status.CORRUPTED
        hit = mgr.load_latest(PROC, name="s")
        fallback = "A" if "C" in labels else "C"
        assert hit is not None and hit[0].id == cps[fallback].id
        assert hit[1] == _state(cps[fallback].metadata["k"])
        report = mgr.verify(full=True)
        assert set(report.corrupted) == damaged
        assert mgr.latest(PROC, name="s").id == cps[fallback].id  # type: ignore[union-attr]
    common_check(store, expected=_expected, damaged=frozenset(damaged))
    if planted is not None:  # gc removed the planted link, never what it pointed to
        assert outside.read_bytes() == planted


def test_chunk_chmod_000_as_root_still_reads(tmp_path: Path) -> None:
    """Root ignores mode bits: the bytes are intact, so nothing may be called corrupt."""
    assert os.geteuid() == 0, "this case is about root; the nobody case covers the rest"
    store = tmp_path / "store"
    cps = _make(store)
    _chunk_file(store, cps["B"]).chmod(0)
    with open_store(store) as mgr:
        assert mgr.load(cps["B"].id) == _state(3)
        assert mgr.verify(full=True).corrupted == ()
    common_check(store, expected=_expected)


CHILD = textwrap.dedent(
    """
    import errno, json, os, stat, sys
    import ckptlite
    store, b, c = sys.argv[1:4]
    mgr = ckptlite.open(store, durability="none")
    # Drop root only now: the interpreter's own files may be readable by root alone.
    os.setgid(65534); os.setuid(65534)
    with mgr:
        for what, call in (
            ("load", lambda: mgr.load(b)),
            ("load_latest", lambda: mgr.load_latest("dmg", name="s")),
            ("verify", lambda: mgr.verify(full=True)),
        ):
            try:
                call()
                print(what + ": no error")
            except ckptlite.StoreIOError as e:
                print(what + ":", type(e).__name__, "permission" in str(e), e.path is not None)
            except BaseException as e:
                print(what + ":", type(e).__name__, e)
        print("status:", mgr.get(b).status.value)
    """
)


def test_chunk_chmod_000_for_a_normal_user(tmp_path: Path) -> None:
    """As an unprivileged user (nobody), an unreadable pack is an I/O error, never corruption."""
    try:
        pwd.getpwuid(65534)
    except KeyError:
        pytest.fail("no user with uid 65534 (nobody) to run the unprivileged case")
    base = Path(tempfile.mkdtemp(prefix="ckptlite-nobody-"))  # tmp_path is root-only
    try:
        store = base / "store"
        cps = _make(store)
        chunk = _chunk_file(store, cps["B"])
        for p in [base, *base.rglob("*")]:
            os.chown(p, 65534, 65534, follow_symlinks=False)
        chunk.chmod(0)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(store), cps["B"].id, cps["C"].id],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        # Unreadable is an I/O error, not damage: B stays VALID, nothing is marked.
        assert out.stdout.split("\n")[:4] == [
            "load: StoreIOError True True",
            "load_latest: StoreIOError True True",
            "verify: StoreIOError True True",
            "status: valid",
        ], out.stdout
        chunk.chmod(0o600)
        common_check(store, expected=_expected)  # readable again: verify marks B valid
    finally:
        shutil.rmtree(base)


def test_an_io_error_reading_a_pack_is_not_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO mid-read (a failing disk): StoreIOError naming the pack; nothing marked CORRUPTED."""
    import errno

    import ckptlite.blobs

    store = tmp_path / "store"
    cps = _make(store)

    def failing(fd: int, out: memoryview, offset: int) -> int:
        raise OSError(errno.EIO, "Input/output error (injected)")

    with open_store(store) as mgr:
        with monkeypatch.context() as mp:
            mp.setattr(ckptlite.blobs, "pread_into", failing)
            for call in (
                lambda: mgr.load(cps["B"].id),
                lambda: mgr.load_latest(PROC, name="s"),
                lambda: mgr.verify(full=True),
            ):
                with pytest.raises(ckptlite.StoreIOError) as e:
                    call()
                assert e.value.path is not None and e.value.path.startswith("packs/")
        assert {c.status for c in mgr.list()} == {ckptlite.Status.VALID}
        assert mgr.load(cps["B"].id) == _state(3)  # the disk is back: nothing was lost
    common_check(store, expected=_expected)
