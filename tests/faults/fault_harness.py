"""The fault suite's harness: deterministic states, child workers, and the COMMON CHECK.

Children run as ``python -m fault_harness MODE ...`` (tests/faults on PYTHONPATH).
Each child appends to a *side file* one line per event, written only after the
call returned (``save ID SEED SIZE``) or before it starts (``del ID``): so
anything reported as saved must be in the store and load back equal.

The common check (``common_check``) runs after every fault:

- the store opens; ``PRAGMA integrity_check`` is ok and no foreign key dangles;
- ``verify(full=True)`` reports no corrupt checkpoint (beyond the ones a test
  damaged on purpose) and no record pointing at a missing chunk;
- every listed checkpoint loads and equals what the harness recorded (states
  are regenerated from the seed and size in their metadata), and every
  reported save is present;
- after ``gc`` the blob files are exactly the referenced chunk files and no
  temp file remains.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import ckptlite

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROC = "fault-run"
CHUNK = 128 * 1024  # random 128 KiB chunks exceed INLINE_MAX, so they become files
SIZES = (100, 3_000, 70_000, 300_000, 1_200_000)


# -- deterministic states ---------------------------------------------------------


@cache
def shared_block(k: int) -> bytes:
    """A 256 KiB block several states share, so chunks are deduplicated across saves."""
    return random.Random(-1 - k).randbytes(256 * 1024)


def make_state(seed: int, size: int, ways: int = 4) -> dict[str, Any]:
    """Return the state for (seed, size); the same arguments give an equal state.

    It shares one of ``ways`` blocks with other states (dedup across saves).
    """
    r = random.Random(seed)
    return {
        "seed": seed,
        "blob": r.randbytes(size),
        "shared": shared_block(seed % ways) if size >= 70_000 else b"",
        "zeros": bytes(size // 2),  # compressible: exercises zstd chunks
        "t": (seed, "x", r.random()),
    }


def expected_from_metadata(cp: ckptlite.Checkpoint) -> Any:
    """The state a harness-made checkpoint must hold, from its metadata."""
    return make_state(cp.metadata["seed"], cp.metadata["size"], cp.metadata.get("ways", 4))


# -- side files ---------------------------------------------------------------------


@dataclass
class Reported:
    """What children said they did: saves that returned, and deletes they began."""

    saved: dict[str, tuple[int, int]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    @property
    def must_exist(self) -> dict[str, tuple[int, int]]:
        return {k: v for k, v in self.saved.items() if k not in self.deleted}


def read_side(path: Path) -> Reported:
    """Parse a side file (a last line cut by the kill is ignored)."""
    rep = Reported()
    if not path.exists():
        return rep
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "save":
            rep.saved[parts[1]] = (int(parts[2]), int(parts[3]))
        elif len(parts) == 2 and parts[0] == "del":
            rep.deleted.add(parts[1])
    return rep


class Side:
    """An append-only side file; each line is one write(2), so a kill never splits one."""

    def __init__(self, path: str | Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def saved(self, cp: ckptlite.Checkpoint, seed: int, size: int) -> None:
        os.write(self.fd, f"save {cp.id} {seed} {size}\n".encode())

    def deleting(self, cid: str) -> None:
        os.write(self.fd, f"del {cid}\n".encode())


# -- the common check ---------------------------------------------------------------


@dataclass
class CheckResult:
    listed: int
    loaded: int
    blob_files: int
    corrupted: tuple[str, ...]


def blob_files(store: Path) -> tuple[set[str], list[Path]]:
    """Return (pack names and chunk digests on disk, every other entry found under blobs/)."""
    root = store / "blobs"
    names: set[str] = set()
    other: list[Path] = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if rel in ((".lock",), (".gate",), ("tmp",), ("packs",)):
            continue
        if len(rel) == 1 and len(rel[0]) == 2 and p.is_dir() and not p.is_symlink():
            continue
        if len(rel) == 2 and len(rel[1]) == 64 and rel[0] in ("packs", rel[1][:2]) and p.is_file():
            names.add(rel[1])
            continue
        other.append(p)
    return names, other


def common_check(
    store: Path,
    reported: Reported | None = None,
    *,
    expected: Callable[[ckptlite.Checkpoint], Any] = expected_from_metadata,
    damaged: frozenset[str] = frozenset(),
) -> CheckResult:
    """Assert the COMMON CHECK on a local store (see the module docstring).

    ``damaged`` names checkpoints a test broke on purpose: verify must report
    exactly those, and they are deleted before the gc part of the check.
    """
    reported = reported or Reported()
    with ckptlite.open(store, durability="none") as mgr:
        conn = mgr.backend.db.read()  # type: ignore[attr-defined]
        assert list(conn.execute("PRAGMA integrity_check")) == [("ok",)]
        assert list(conn.execute("PRAGMA foreign_key_check")) == []
        report = mgr.verify(full=True)
        assert set(report.corrupted) == set(damaged), report
        if not damaged:
            assert report.missing_chunks == (), report
        listed = {cp.id: cp for cp in mgr.list()}
        for cid, (seed, size) in reported.must_exist.items():
            assert cid in listed, f"reported save {cid} is not in the store"
            assert (listed[cid].metadata["seed"], listed[cid].metadata["size"]) == (seed, size)
        loaded = 0
        for cid, cp in listed.items():
            if cid in damaged:
                continue
            assert cp.status == ckptlite.Status.VALID, cp
            assert mgr.load(cid) == expected(cp), f"checkpoint {cid} does not load equal"
            loaded += 1
        for cid in damaged:
            if mgr.exists(cid):
                mgr.delete(cid)
        mgr.gc()
        # Files the chunk rows name: a pack, or a chunk's own file (stores before packs).
        referenced = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT coalesce(c.pack, c.digest) FROM refs r "
                "JOIN chunks c ON c.digest=r.digest WHERE c.data IS NULL"
            )
        }
        unreferenced_rows = list(
            conn.execute(
                "SELECT digest FROM chunks c WHERE NOT EXISTS "
                "(SELECT 1 FROM refs r WHERE r.digest=c.digest)"
            )
        )
    on_disk, other = blob_files(store)
    assert on_disk == referenced, (
        f"pack/chunk files {len(on_disk)} != referenced {len(referenced)}: "
        f"extra {sorted(on_disk - referenced)[:3]}, missing {sorted(referenced - on_disk)[:3]}"
    )
    assert not other, f"unexpected entries under blobs/: {other[:5]}"
    assert unreferenced_rows == [], "gc left unreferenced chunk rows"
    temps = list((store / "blobs" / "tmp").iterdir())
    assert temps == [], f"temp files left after gc: {temps}"
    return CheckResult(len(listed), loaded, len(on_disk), report.corrupted)


# -- children -----------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: this harness and the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("CKPTLITE_CRASH_AT", None)
    env.update(extra)
    return env


def spawn(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    """Start ``python -m fault_harness ARGS`` as a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "fault_harness", *args],
        env=env or child_env(),
        text=True,
        **kw,
    )


def open_store(store: str | Path, durability: str = "safe") -> ckptlite.CheckpointManager:
    return ckptlite.open(store, durability=durability, chunk_size=CHUNK)


def save_one(
    mgr: ckptlite.CheckpointManager, side: Side | None, seed: int, size: int, ways: int = 4
) -> ckptlite.Checkpoint:
    """Save the harness state for (seed, size) and report it once save returned."""
    cp = mgr.save(
        PROC,
        make_state(seed, size, ways),
        name=f"slot{seed % 3}",
        metadata={"seed": seed, "size": size, "ways": ways},
    )
    if side is not None:
        side.saved(cp, seed, size)
    return cp


def saver_loop(store: str, side_path: str, base_seed: int, keep: int = 10) -> None:
    """Save forever: random sizes, delete beyond ``keep``, gc every few saves."""
    mgr = open_store(store)
    side = Side(side_path)
    rng = random.Random(base_seed)
    live = [cp.id for cp in reversed(mgr.list(process_id=PROC))]
    i = 0
    while True:
        i += 1
        seed = base_seed * 1_000_000 + i
        cp = save_one(mgr, side, seed, rng.choice(SIZES))
        live.append(cp.id)
        while len(live) > keep:
            victim = live.pop(0)
            side.deleting(victim)
            with contextlib.suppress(ckptlite.CheckpointNotFoundError):
                mgr.delete(victim)
        if i % 5 == 0:
            mgr.gc()


def gc_loop(store: str, side_path: str, base_seed: int) -> None:
    """Make orphans and collect them, forever: a kill lands inside gc most of the time."""
    mgr = open_store(store)
    side = Side(side_path)
    rng = random.Random(base_seed)
    i = 0
    while True:
        batch = []
        for _ in range(6):
            i += 1
            batch.append(save_one(mgr, side, base_seed * 1_000_000 + i, rng.choice(SIZES[2:])))
        for cp in batch[:-1]:
            side.deleting(cp.id)
            mgr.delete(cp.id)
        mgr.gc()


def retention_loop(store: str, side_path: str, base_seed: int) -> None:
    """Save into three slots and apply keep_last=2 retention, forever."""
    from ckptlite import CheckpointPolicy

    mgr = open_store(store)
    side = Side(side_path)
    rng = random.Random(base_seed)
    policy = CheckpointPolicy(keep_last=2)
    i = 0
    while True:
        for _ in range(4):
            i += 1
            save_one(mgr, side, base_seed * 1_000_000 + i, rng.choice(SIZES[:4]))
        mgr.apply_retention(PROC, policy)
        if i % 8 == 0:
            mgr.gc()


def sync_loop(store: str, side_path: str, base_seed: int) -> None:
    """Sync $FAULT_SOURCE into ``store`` over and over (the first run does the copying)."""
    source = os.environ["FAULT_SOURCE"]
    while True:
        ckptlite.sync(source, store, batch_size=7)


def migrate_loop(store: str, side_path: str, base_seed: int) -> None:
    """Migrate the legacy tree at $FAULT_SOURCE into ``store``, over and over."""
    from ckptlite.legacy.migrate import migrate

    source = os.environ["FAULT_SOURCE"]
    mgr = open_store(store)
    while True:
        migrate(source, mgr, format="pipeline")


def zygote(mode: str, store: str, side_path: str) -> None:
    """Fork a fresh worker per ``go SEED`` line; report ``pid N`` and ``dead STATUS``.

    Forking from a warm interpreter makes each of many SIGKILLs cheap.
    """
    target = {
        "saver": saver_loop,
        "gc": gc_loop,
        "retention": retention_loop,
        "sync": sync_loop,
        "migrate": migrate_loop,
    }[mode]
    for line in sys.stdin:
        seed = int(line.split()[1])
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                target(store, side_path, seed)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"dead {status}", flush=True)


class Zygote:
    """The test side of ``zygote``: start a worker, SIGKILL it after a delay."""

    def __init__(self, mode: str, store: Path, side: Path, **env: str) -> None:
        self.proc = spawn(
            "zygote",
            mode,
            str(store),
            str(side),
            env=child_env(**env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run_and_kill(self, seed: int, delay: float) -> int:
        """Run a worker for ``delay`` seconds, SIGKILL it; return its wait status."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"go {seed}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), f"zygote said {line!r}"
        pid = int(line.split()[1])
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        line = self.proc.stdout.readline()
        assert line.startswith("dead "), f"zygote said {line!r}"
        return int(line.split()[1])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout:
            self.proc.stdout.close()


def crash_once(store: str, side_path: str, action: str) -> None:
    """Run one action under CKPTLITE_CRASH_AT; it is expected to die by SIGKILL."""
    mgr = open_store(store)
    side = Side(side_path)
    if action == "save":
        # Two saves: the first makes a new pack, the second appends to it (pack.* points).
        save_one(mgr, side, 776, 300_000)
        save_one(mgr, side, 777, 300_000)
    elif action == "gc":
        for cp in mgr.list(process_id=PROC)[1:]:
            side.deleting(cp.id)
            mgr.delete(cp.id)
        mgr.gc()
    elif action == "gc-only":
        mgr.gc()
    elif action == "migrate":
        from ckptlite.legacy.migrate import migrate

        migrate(os.environ["FAULT_SOURCE"], mgr, format="pipeline")
    else:
        raise SystemExit(f"unknown action {action}")
    mgr.close()


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "size=8m") -> Iterator[bool]:
    """Mount a small tmpfs at ``path``; yield False (and do nothing) if mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    try:
        yield r.returncode == 0
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


# -- concurrency (item 5) ---------------------------------------------------------


def stress_saver(store: str, side_path: str, base_seed: int, seconds: float) -> None:
    """Save 1 KB-20 MB states (log-uniform sizes) until time is up; keep the last 4."""
    mgr = open_store(store)
    side = Side(side_path)
    rng = random.Random(base_seed)
    deadline = time.monotonic() + seconds
    live: list[str] = []
    i = 0
    while time.monotonic() < deadline:
        i += 1
        size = int(10 ** rng.uniform(3, 7.3))  # 1 KB .. 20 MB
        cp = save_one(mgr, side, base_seed * 1_000_000 + i, size, ways=64)
        live.append(cp.id)
        while len(live) > 4:
            victim = live.pop(0)
            side.deleting(victim)
            mgr.delete(victim)
    mgr.close()
    print(f"saves {i}", flush=True)


def stress_reader(store: str, seconds: float, base_seed: int) -> None:
    """Load random and latest checkpoints; each must equal its state or be gone."""
    mgr = open_store(store)
    rng = random.Random(base_seed)
    deadline = time.monotonic() + seconds
    loads = gone = 0
    while time.monotonic() < deadline:
        cps = mgr.list(process_id=PROC, limit=50)
        if not cps:
            time.sleep(0.05)
            continue
        cp = rng.choice(cps)
        try:
            state = mgr.load(cp.id)
        except ckptlite.CheckpointNotFoundError:
            gone += 1  # deleted by its saver since we listed it
            continue
        assert state == expected_from_metadata(cp), f"{cp.id} loaded wrong"
        loads += 1
        hit = mgr.load_latest(PROC, name=f"slot{rng.randrange(3)}")
        if hit is not None:
            assert hit[1] == expected_from_metadata(hit[0])
            loads += 1
    mgr.close()
    print(f"loads {loads} gone {gone}", flush=True)


def stress_gc(store: str, seconds: float, every: float) -> None:
    """Run gc every ``every`` seconds."""
    mgr = open_store(store)
    deadline = time.monotonic() + seconds
    runs = reclaimed = 0
    while time.monotonic() < deadline:
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))
        reclaimed += len(mgr.gc().chunks)
        runs += 1
    mgr.close()
    print(f"gc {runs} reclaimed {reclaimed}", flush=True)


def same_state_saver(store: str, side_path: str, start_at: float) -> None:
    """Wait until ``start_at`` (time.time()), then save the one shared state."""
    mgr = open_store(store)
    side = Side(side_path)
    state = make_state(424242, 20_000_000)
    time.sleep(max(0.0, start_at - time.time()))
    cp = mgr.save(PROC, state, metadata={"seed": 424242, "size": 20_000_000, "ways": 4})
    side.saved(cp, 424242, 20_000_000)
    mgr.close()


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "zygote":
        zygote(argv[1], argv[2], argv[3])
    elif mode == "crash":
        crash_once(argv[1], argv[2], argv[3])
    elif mode == "saver":
        saver_loop(argv[1], argv[2], int(argv[3]))
    elif mode == "stress_saver":
        stress_saver(argv[1], argv[2], int(argv[3]), float(argv[4]))
    elif mode == "stress_reader":
        stress_reader(argv[1], float(argv[2]), int(argv[3]))
    elif mode == "stress_gc":
        stress_gc(argv[1], float(argv[2]), float(argv[3]))
    elif mode == "same_state":
        same_state_saver(argv[1], argv[2], float(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
