"""A long-lived process's read caches against a store changed behind its back.

The local backend keeps records by id and slots' latest records (under the
store's stamp), their chunk rows, open pack descriptors per thread (``PackReaders``)
and parsed records (``StateIO._parse``). Each test loads through a manager (which
fills those caches), changes the store another way (a real second process, a
second manager or thread in this process, a forked child, the disk itself), then
loads again and checks what a user expects: a deleted checkpoint is not found,
damage is reported, intact bytes are returned, ``latest`` is the newest.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ckptlite
from ckptlite import CheckpointNotFoundError, CorruptCheckpointError, Status

#: The directory this run imports ckptlite from: the other processes import the same.
_ROOT = str(Path(ckptlite.__file__).resolve().parents[1])
_ENV = {**os.environ, "PYTHONPATH": _ROOT}
_MiB = 1 << 20


def _command(store: Path, code: str, *args: str) -> list[str]:
    """The command running ``code`` with ``m``, a manager on ``store``, and ``args``."""
    script = (
        "import sys, pathlib, ckptlite\n"
        "args = sys.argv[2:]\n"
        "with ckptlite.open(sys.argv[1], durability='none') as m:\n"
        + textwrap.indent(textwrap.dedent(code), "    ")
    )
    return [sys.executable, "-c", script, str(store), *args]


def _other_process(store: Path, code: str, *args: str) -> str:
    """Run ``code`` in a new Python process with ``m``, a manager on ``store``; return its stdout.

    ``args`` are the script's ``args`` (strings).
    """
    done = subprocess.run(
        _command(store, code, *args),
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _save_alone(store: Path, state: bytes, name: str = "a") -> ckptlite.Checkpoint:
    """Save from a manager of its own: its pack is closed after (gc may take it)."""
    with ckptlite.open(store, durability="none") as mgr:
        return mgr.save("p", state, name=name)


def _pack_of(mgr: ckptlite.CheckpointManager, cp: ckptlite.Checkpoint) -> tuple[Path, int, int]:
    """Return the pack holding ``cp``'s first packed chunk, its offset and stored size."""
    digest = mgr.backend.get_record(cp.id).digests[0]
    conn = mgr.backend.db.read()  # type: ignore[attr-defined]
    row = conn.execute(
        "SELECT pack, pack_offset, stored_size FROM chunks WHERE digest=?", (digest,)
    ).fetchone()
    assert row is not None and row[0] is not None
    return Path(mgr.url) / "blobs" / "packs" / row[0], int(row[1]), int(row[2])


def _flip(path: Path, at: int) -> None:
    """Flip one bit of the byte at ``at`` in ``path``, in place."""
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))


def _deleted_packs_open() -> list[str]:
    """The pack files this process holds open although they were unlinked."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "/blobs/packs/" in target and target.endswith(" (deleted)"):
            found.append(target)
    return found


def _warm(mgr: ckptlite.CheckpointManager, *pairs: tuple[ckptlite.Checkpoint, Any]) -> None:
    """Load each checkpoint twice (the second from the caches) and check its bytes."""
    for cp, state in pairs:
        assert mgr.load(cp) == state
        assert mgr.load(cp.id) == state


def _two_saved_alone(
    store: Path, a_size: int, b_size: int
) -> tuple[ckptlite.Checkpoint, bytes, ckptlite.Checkpoint, bytes]:
    """Save a (slot p/a) and b (slot p/b), each by a manager of its own: separate packs."""
    a_state, b_state = os.urandom(a_size), os.urandom(b_size)
    return _save_alone(store, a_state), a_state, _save_alone(store, b_state, name="b"), b_state


def _two_warm_in_a_slot(
    mgr: ckptlite.CheckpointManager, a_size: int, b_size: int
) -> tuple[ckptlite.Checkpoint, bytes, ckptlite.Checkpoint, bytes]:
    """Save a then b in slot p/a, load both twice; b is the latest."""
    a_state, b_state = os.urandom(a_size), os.urandom(b_size)
    a = mgr.save("p", a_state, name="a")
    b = mgr.save("p", b_state, name="a")
    _warm(mgr, (a, a_state), (b, b_state))
    assert mgr.load_latest("p", name="a") == (b, b_state)
    return a, a_state, b, b_state


# -- another process deletes, prunes, collects, compacts -------------------------------


def test_a_checkpoint_another_process_deleted_is_not_found(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        a, a_state, b, _ = _two_warm_in_a_slot(mgr, 300_000, 300_000)
        _other_process(store, "m.delete(args[0])", b.id)
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(b)
        assert not mgr.exists(b.id)
        assert mgr.latest("p", name="a") == a
        assert mgr.load_latest("p", name="a") == (a, a_state)


def test_checkpoints_another_process_pruned_and_collected_are_not_found(tmp_path: Path) -> None:
    store = tmp_path / "s"
    states = [os.urandom(200_000) for _ in range(3)]
    cps = [_save_alone(store, s) for s in states]  # a pack each: gc deletes the dead ones
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, *zip(cps, states, strict=True))
        out = _other_process(
            store,
            """
            r = m.apply_retention("p", ckptlite.CheckpointPolicy(keep_last=1))
            g = m.gc()
            print(len(r.removed), len(g.deleted_packs))
            """,
        )
        assert out.split() == ["2", "2"]
        for cp in cps[:2]:
            with pytest.raises(CheckpointNotFoundError):
                mgr.load(cp)
            with pytest.raises(CheckpointNotFoundError):
                mgr.load(cp.id)
        assert mgr.load(cps[2]) == states[2]
        assert mgr.load_latest("p", name="a") == (cps[2], states[2])
        assert [c.id for c in mgr.list("p")] == [cps[2].id]
        # Nothing was damaged: a false alarm would have marked the survivor CORRUPTED.
        assert mgr.get(cps[2].id).status is Status.VALID


def test_a_pack_another_process_compacted_is_read_where_the_chunks_moved(tmp_path: Path) -> None:
    store = tmp_path / "s"
    dead, live = os.urandom(3 * _MiB), os.urandom(_MiB)
    with ckptlite.open(store, durability="none") as w:
        both = w.save("p", {"dead": dead, "live": live}, name="both")  # one pack, "dead" first
        kept = w.save("p", {"live": live}, name="kept")  # shares "live": no new pack
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, (kept, {"live": live}))
        old, _, _ = _pack_of(mgr, kept)
        out = _other_process(
            store, "m.delete(args[0]); g = m.gc(); print(*g.compacted_packs)", both.id
        )
        assert out.split() == [old.name]  # the live chunk moved to a new pack
        assert not old.exists()
        assert mgr.load(kept) == {"live": live}
        assert mgr.load(kept.id) == {"live": live}
        assert mgr.get(kept.id).status is Status.VALID
        assert _pack_of(mgr, kept)[0] != old
        assert mgr.verify(full=True).ok
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(both)


def test_packs_another_process_deleted_are_not_kept_open(tmp_path: Path) -> None:
    store = tmp_path / "s"
    a, a_state, b, b_state = _two_saved_alone(store, 3 * _MiB, 3 * _MiB)  # 3 chunks: the pool reads
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, (a, a_state), (b, b_state))
        before = _deleted_packs_open()
        _other_process(store, "m.delete(args[0]); assert len(m.gc().deleted_packs) == 1", a.id)
        assert mgr.load(b) == b_state  # the store changed: a record cache miss, a sweep
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(a)
        assert _deleted_packs_open() == before  # gc's bytes_reclaimed went back to the disk


# -- damage: on the disk, then recorded by another process's verify --------------------


def test_damage_another_process_s_verify_found_is_reported_and_latest_skips_it(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        a, a_state, b, _ = _two_warm_in_a_slot(mgr, 200_000, 300_000)
        pack, offset, size = _pack_of(mgr, b)
        _flip(pack, offset + size // 2)
        out = _other_process(store, "print(*m.verify(full=True).corrupted)")
        assert out.split() == [b.id]
        assert mgr.get(b.id).status is Status.CORRUPTED
        assert mgr.latest("p", name="a") == a
        assert mgr.load_latest("p", name="a") == (a, a_state)
        with pytest.raises(CorruptCheckpointError):
            mgr.load(b)
        assert mgr.load(a) == a_state  # intact: never reported


def test_damage_healed_by_another_process_loads_again(tmp_path: Path) -> None:
    store = tmp_path / "s"
    state = os.urandom(300_000)
    with ckptlite.open(store, durability="none") as mgr:
        cp = mgr.save("p", state, name="a")
        _warm(mgr, (cp, state))
        pack, offset, _ = _pack_of(mgr, cp)
        _flip(pack, offset + 7)
        with pytest.raises(CorruptCheckpointError):
            mgr.load(cp)  # flags the chunk: the next save of these bytes stores them again
        (tmp_path / "state").write_bytes(state)
        out = _other_process(
            store,
            """
            m.save("q", pathlib.Path(args[0]).read_bytes())
            print(len(m.verify(full=True).corrupted))
            """,
            str(tmp_path / "state"),
        )
        assert out.split() == ["0"]
        assert mgr.get(cp.id).status is Status.VALID
        assert mgr.load(cp) == state  # the repaired copy, not the damaged pack kept open
        assert mgr.load_latest("p", name="a") == (mgr.get(cp.id), state)


@pytest.mark.parametrize("size", [300_000, 3 * _MiB], ids=["one chunk", "pool"])
def test_a_pack_replaced_by_a_damaged_copy_is_reported_without_any_commit(
    tmp_path: Path, size: int
) -> None:
    # No commit: the record, its chunk rows and the open pack would all be cache hits.
    store = tmp_path / "s"
    state = os.urandom(size)
    with ckptlite.open(store, durability="none") as mgr:
        cp = mgr.save("p", state)
        _warm(mgr, (cp, state))
        pack, offset, stored = _pack_of(mgr, cp)
        data = bytearray(pack.read_bytes())
        data[offset + stored // 2] ^= 1
        (tmp_path / "copy").write_bytes(data)
        os.replace(tmp_path / "copy", pack)  # a new file under the pack's name
        with pytest.raises(CorruptCheckpointError):
            mgr.load(cp)
        assert mgr.get(cp.id).status is Status.CORRUPTED


def test_damage_undone_on_the_disk_is_not_reported_again(tmp_path: Path) -> None:
    store = tmp_path / "s"
    state = os.urandom(3 * _MiB)
    with ckptlite.open(store, durability="none") as mgr:
        cp = mgr.save("p", state)
        _warm(mgr, (cp, state))
        assert mgr.load_latest("p") == (cp, state)
        assert mgr.latest("p") == cp
        pack, offset, stored = _pack_of(mgr, cp)
        _flip(pack, offset + stored - 1)
        with pytest.raises(CorruptCheckpointError):
            mgr.load(cp)
        # Marked CORRUPTED by this thread's own commit (no data_version change here).
        assert mgr.latest("p") is None
        assert mgr.load_latest("p") is None
        _flip(pack, offset + stored - 1)  # the bit flips back: the bytes are intact again
        assert mgr.load(cp) == state
        assert mgr.load(cp.id) == state


def test_a_record_rewritten_in_the_index_by_another_process_is_checked_again(
    tmp_path: Path,
) -> None:
    # The engine keeps a cached record's parse: a record read anew must be verified anew.
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        cp = mgr.save("p", {"v": list(range(50))})
        _warm(mgr, (cp, {"v": list(range(50))}))
        _other_process(
            store,
            """
            conn = m.backend.db.connection()
            (payload,) = conn.execute("SELECT payload FROM checkpoints WHERE id=?", args).fetchone()
            bad = bytes(payload[:-1]) + bytes([payload[-1] ^ 1])
            with m.backend.db.write() as c:
                c.execute("UPDATE checkpoints SET payload=? WHERE id=?", (bad, args[0]))
            """,
            cp.id,
        )
        with pytest.raises(CorruptCheckpointError):
            mgr.load(cp)


# -- another process adds: a save, a sync, an archive, a backup brought back -----------


def test_a_save_in_another_process_is_latest_and_loads(tmp_path: Path) -> None:
    store = tmp_path / "s"
    old = os.urandom(3 * _MiB)
    with ckptlite.open(store, durability="none") as mgr:
        a = mgr.save("p", old, name="a")
        assert mgr.load_latest("p", name="a") == (a, old)
        assert mgr.latest("p", name="a") == a
        out = _other_process(
            store,
            """
            cp = m.save("p", bytes(range(256)) * 12_000, name="a",
                        policy=ckptlite.CheckpointPolicy(keep_last=1))
            m.gc()
            print(cp.id)
            """,
        )
        (new_id,) = out.split()
        got = mgr.load_latest("p", name="a")
        assert got is not None and got[0].id == new_id and got[1] == bytes(range(256)) * 12_000
        latest = mgr.latest("p", name="a")
        assert latest is not None and latest.id == new_id
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(a)  # pruned by the other save's policy


def test_a_sync_and_an_archive_import_by_another_process_are_seen(tmp_path: Path) -> None:
    store, source = tmp_path / "s", tmp_path / "src"
    mine = os.urandom(300_000)
    theirs, archived = os.urandom(300_000), os.urandom(300_000)
    with ckptlite.open(source, durability="none") as src:
        synced = src.save("p", theirs, name="a")
    with ckptlite.open(tmp_path / "arch", durability="none") as other:
        from_archive = other.save("p", archived, name="a")
        ckptlite.export_archive(other, tmp_path / "a.tar")
    with ckptlite.open(store, durability="none") as mgr:
        a = mgr.save("p", mine, name="a")
        _warm(mgr, (a, mine))
        assert mgr.load_latest("p", name="a") == (a, mine)
        _other_process(store, "ckptlite.sync(args[0], m)", str(source))
        assert mgr.latest("p", name="a") == mgr.get(synced.id)
        assert mgr.load(synced.id) == theirs
        assert mgr.load_latest("p", name="a") == (mgr.get(synced.id), theirs)
        _other_process(store, "ckptlite.import_archive(m, args[0])", str(tmp_path / "a.tar"))
        assert mgr.load(from_archive.id) == archived
        got = mgr.load_latest("p", name="a")
        assert got is not None and got[0].id == from_archive.id and got[1] == archived


def test_a_checkpoint_deleted_then_brought_back_from_a_backup_loads_its_bytes(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    state = os.urandom(3 * _MiB)
    cp = _save_alone(store, state)
    with ckptlite.open(store, durability="none") as mgr:
        mgr.backup(tmp_path / "backup")
        _warm(mgr, (cp, state))
        _other_process(store, "m.delete(args[0]); m.gc()", cp.id)
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(cp)
        # Restored: the same id, its pack copied back under its old name.
        out = _other_process(
            store, "print(ckptlite.sync(args[0], m).checkpoints_copied)", str(tmp_path / "backup")
        )
        assert out.split() == ["1"]
        assert mgr.load(cp) == state
        assert mgr.load_latest("p", name="a") == (mgr.get(cp.id), state)
        assert mgr.get(cp.id).status is Status.VALID


# -- this process: another manager, another thread -------------------------------------


def test_another_manager_in_this_process_deletes_verifies_and_saves(tmp_path: Path) -> None:
    store = tmp_path / "s"
    a_state, b_state, c_state = os.urandom(200_000), os.urandom(300_000), os.urandom(100_000)
    with ckptlite.open(store, durability="none") as mgr:
        a = mgr.save("p", a_state, name="a")
        b = mgr.save("p", b_state, name="a")
        _warm(mgr, (a, a_state), (b, b_state))
        pack, offset, size = _pack_of(mgr, b)
        _flip(pack, offset + size // 3)
        with ckptlite.open(store, durability="none") as other:
            assert other.verify(full=True).corrupted == (b.id,)
        assert mgr.latest("p", name="a") == a
        with pytest.raises(CorruptCheckpointError):
            mgr.load(b)
        with ckptlite.open(store, durability="none") as other:
            other.delete(a.id)
            c = other.save("p", c_state, name="a")
            other.gc()
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(a)
        assert mgr.load_latest("p", name="a") == (c, c_state)


def test_another_thread_deletes_and_collects_between_two_loads(tmp_path: Path) -> None:
    store = tmp_path / "s"
    a, a_state, b, b_state = _two_saved_alone(store, 3 * _MiB, 300_000)
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, (a, a_state), (b, b_state))
        errors: list[BaseException] = []

        def other() -> None:
            try:
                _warm(mgr, (a, a_state))  # this thread's caches too
                mgr.delete(a.id)
                assert len(mgr.gc().deleted_packs) == 1
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert not errors
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(a)
        assert mgr.load(b) == b_state
        assert mgr.latest("p", name="a") is None


def test_a_gc_here_closes_what_every_thread_kept_of_the_packs_it_deleted(
    tmp_path: Path,
) -> None:
    # Threads that loaded (the pool's, another one still alive) keep the pack open; a
    # gc in this process gives its space back at once, before anyone loads again.
    store = tmp_path / "s"
    a, a_state, b, b_state = _two_saved_alone(store, 3 * _MiB, 300_000)
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, (a, a_state), (b, b_state))
        loaded, end = threading.Event(), threading.Event()

        def other() -> None:
            _warm(mgr, (a, a_state))
            loaded.set()
            end.wait(10)  # alive: a thread that ends closes its own

        t = threading.Thread(target=other)
        t.start()
        try:
            assert loaded.wait(10)
            before = _deleted_packs_open()
            mgr.delete(a.id)
            assert len(mgr.gc().deleted_packs) == 1
            assert _deleted_packs_open() == before
        finally:
            end.set()
            t.join()


def test_loads_of_an_unchanged_store_look_for_deleted_packs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each first load of a tile misses the record cache (P14): the kept packs are
    # looked at only when the store changed since this thread last looked.
    with ckptlite.open(tmp_path / "s", durability="none") as mgr:
        cps = [mgr.save("p", os.urandom(100_000), name=str(i)) for i in range(5)]
        blobs = mgr.backend.blobs  # type: ignore[attr-defined]
        swept: list[int] = []
        sweep = blobs.sweep_readers
        monkeypatch.setattr(blobs, "sweep_readers", lambda: swept.append(1) or sweep())
        for cp in cps:
            mgr.load(cp)
        assert len(swept) == 1
        mgr.save("p", b"x", name="other")  # a commit: the stamp changes
        mgr.load(cps[0].id)  # cached, but under the old stamp: read again
        assert len(swept) == 2


def test_loads_while_two_other_processes_replace_and_collect_get_no_wrong_bytes(
    tmp_path: Path,
) -> None:
    # Two real processes replace the slot's newest checkpoint and collect, over and
    # over, while this one loads: every load returns the bytes of the id it got,
    # or says that id is gone; none reports damage.
    store = tmp_path / "s"
    with ckptlite.open(store, durability="none") as mgr:
        mgr.save("p", os.urandom(200_000) + b"0", name="a")
        code = """
            import os
            for i in range(12):
                tag = f"{args[0]}{i}".encode()
                m.save("p", os.urandom(200_000) + tag, name="a",
                       policy=ckptlite.CheckpointPolicy(keep_last=1))
                m.gc()
            """
        procs = [subprocess.Popen(_command(store, code, k), env=_ENV) for k in ("x", "y")]
        seen: set[bytes] = set()
        try:
            while any(p.poll() is None for p in procs):
                got = mgr.load_latest("p", name="a")
                assert got is not None  # a save commits before it prunes: never empty
                cp, state = got
                assert cp.status is Status.VALID
                seen.add(state[200_000:])
                with contextlib.suppress(CheckpointNotFoundError):  # by id: the same, or gone
                    assert mgr.load(cp.id) == state
        finally:
            for p in procs:
                assert p.wait(60) == 0
        last = mgr.load_latest("p", name="a")
        assert last is not None and last[1][200_000:] in {b"x11", b"y11"}
        seen.add(last[1][200_000:])
        assert len(seen) >= 2
        assert mgr.verify(full=True).ok
        assert not mgr.list(status=Status.CORRUPTED)


# -- a forked child ---------------------------------------------------------------------


def _in_child(body: Callable[[], bool]) -> int:
    """Run ``body`` in a forked child; return its exit code (0: it returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            code = 0 if body() else 3
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_sees_what_its_parent_changed_after_the_fork(tmp_path: Path) -> None:
    store = tmp_path / "s"
    a, a_state, b, b_state = _two_saved_alone(store, 3 * _MiB, 300_000)
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, (a, a_state), (b, b_state))  # the child inherits these caches
        go_r, go_w = os.pipe()

        def child() -> bool:
            os.read(go_r, 1)  # the parent deleted a, collected it, damaged b
            try:
                mgr.load(a)
                return False
            except CheckpointNotFoundError:
                pass
            try:
                mgr.load(b)
                return False
            except CorruptCheckpointError:
                return mgr.latest("p", name="b") is None  # marked by this load

        pid_code: list[int] = []
        t = threading.Thread(target=lambda: pid_code.append(_in_child(child)))
        t.start()
        mgr.delete(a.id)
        assert len(mgr.gc().deleted_packs) == 1
        pack, offset, size = _pack_of(mgr, b)
        _flip(pack, offset + size // 2)
        os.write(go_w, b"x")
        t.join(30)
        os.close(go_r)
        os.close(go_w)
        assert pid_code == [0]
        assert mgr.get(b.id).status is Status.CORRUPTED  # the child's mark is seen
        with pytest.raises(CorruptCheckpointError):
            mgr.load(b)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_parent_sees_what_its_forked_child_changed(tmp_path: Path) -> None:
    store = tmp_path / "s"
    dead, live = os.urandom(3 * _MiB), os.urandom(_MiB)
    with ckptlite.open(store, durability="none") as w:
        both = w.save("p", {"dead": dead, "live": live}, name="both")
        kept = w.save("p", {"live": live}, name="kept")
    with ckptlite.open(store, durability="none") as mgr:
        _warm(mgr, (kept, {"live": live}), (both, {"dead": dead, "live": live}))

        def child() -> bool:
            # The child's loads come from its own caches, then it compacts.
            ok = mgr.load(kept) == {"live": live}
            mgr.delete(both.id)
            return ok and len(mgr.gc().compacted_packs) == 1

        assert _in_child(child) == 0
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(both)
        assert mgr.load(kept) == {"live": live}
        assert mgr.get(kept.id).status is Status.VALID


# -- a read-only view -------------------------------------------------------------------


@pytest.mark.parametrize("writer_open", [False, True], ids=["immutable", "mode=ro"])
def test_a_read_only_view_sees_another_process_delete_and_collect(
    tmp_path: Path, writer_open: bool
) -> None:
    store = tmp_path / "s"
    a_state, b_state = os.urandom(300_000), os.urandom(3 * _MiB)
    a = _save_alone(store, a_state)
    b = _save_alone(store, b_state)
    writer = ckptlite.open(store, durability="none") if writer_open else None
    try:
        with ckptlite.open(store, readonly=True) as view:
            _warm(view, (a, a_state), (b, b_state))
            assert view.load_latest("p", name="a") == (b, b_state)
            _other_process(store, "m.delete(args[0]); m.gc()", b.id)
            with pytest.raises(CheckpointNotFoundError):
                view.load(b)
            assert view.latest("p", name="a") == a
            assert view.load_latest("p", name="a") == (a, a_state)
    finally:
        if writer is not None:
            writer.close()
