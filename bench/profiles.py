"""cProfile of ckptlite's hot paths, for the report: where the time of each op goes."""

from __future__ import annotations

import cProfile
import io
import pstats
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ckptlite
from bench.states import raster, small_state


def _profile(fn: Callable[[], Any], repeat: int, top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    return "\n".join(ln.replace(str(Path.cwd()) + "/", "") for ln in lines[start - 1 :])


def _profile_threads(fn: Callable[[], Any], repeat: int, top: int) -> str:
    """cProfile of ``fn`` in this thread AND in every thread it starts (the chunk pool).

    Own time in the pool threads is where a big save or load goes; the main
    thread mostly waits for them.
    """
    profs: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(frame: Any, event: str, arg: Any) -> None:
        p = cProfile.Profile()
        with lock:
            profs.append(p)
        p.enable()  # replaces this hook in the new thread

    main = cProfile.Profile()
    threading.setprofile(start)
    main.enable()
    try:
        for _ in range(repeat):
            fn()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    out = io.StringIO()
    stats = pstats.Stats(main, stream=out)
    for p in profs:
        stats.add(p)
    stats.sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start_at = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    head = f"all threads ({len(profs)} pool threads started), own time summed over threads"
    body = "\n".join(ln.replace(str(Path.cwd()) + "/", "") for ln in lines[start_at - 1 :])
    return head + "\n" + body


def profiles(big_mib: int = 64, top: int = 12) -> dict[str, str]:
    """Return {operation: cProfile table sorted by own time}."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ckptlite-prof-") as d:
        state = small_state()
        with ckptlite.open(Path(d) / "small") as mgr:
            for _ in range(200):
                mgr.save("p", state)
            out["P1 save ~1 KB (x2000)"] = _profile(lambda: mgr.save("p", state), 2000, top)
            out["P2 load_latest ~1 KB (x2000)"] = _profile(lambda: mgr.load_latest("p"), 2000, top)
        arr = raster(big_mib)
        stores = iter(range(1000))

        def save_fresh() -> None:
            with ckptlite.open(Path(d) / f"big{next(stores)}") as m:
                m.save("p", arr)

        out[f"P3 save {big_mib} MiB (x3, fresh stores)"] = _profile_threads(save_fresh, 3, top)
        with ckptlite.open(Path(d) / "big-load") as mgr:
            cp = mgr.save("p", arr)

        def load_fresh() -> None:  # a new manager, so its pool threads start profiled
            with ckptlite.open(Path(d) / "big-load") as m:
                m.load(cp.id)

        out[f"P4 load {big_mib} MiB (x3)"] = _profile_threads(load_fresh, 3, top)
    return out


def _medians(parts: dict[str, Callable[[], Any]], rounds: int, block: int = 50) -> dict[str, float]:
    """Median seconds per call of each part: blocks of calls, the parts alternated."""
    import statistics
    import time

    per_block: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(rounds):
        for k, fn in parts.items():
            times = []
            for _ in range(block):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            per_block[k].append(statistics.median(times))
    return {k: statistics.median(v) for k, v in per_block.items()}


def breakdowns(rounds: int = 30) -> dict[str, list[tuple[str, float]]]:
    """Time P1's and P2's parts against diskcache's whole calls, in one run.

    Returns {target: [(part, seconds)]}, the budget included: what the report shows
    under "Where P1 and P2 go". The SQLite parts run the statements ckptlite runs,
    on a store of the same schema, with no Python of ckptlite around them.
    """
    import itertools

    import diskcache

    from ckptlite import Level, chunking, codec
    from ckptlite.backends._local_schema import CHECKPOINT_COLS, row_to_checkpoint
    from ckptlite.backends.local import _fresh

    state = small_state()
    out: dict[str, list[tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ckptlite-parts-") as d:
        mgr = ckptlite.open(Path(d) / "store")
        raw_store = ckptlite.open(Path(d) / "raw")
        dc = diskcache.Cache(str(Path(d) / "dc"))
        try:
            for _ in range(300):
                mgr.save("p", state, name="n")
                raw_store.save("p", state, name="n")
            conn = raw_store.backend.db.connection()  # type: ignore[attr-defined]
            payload = b"\x00" + codec.encode(state).skeleton
            n = itertools.count()

            def transaction() -> None:
                i = next(n)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO checkpoints(id, process_id, level, name, parent_id, status, "
                    "created_at, size, stored_size, checksum, metadata, progress_done, "
                    "progress_total, payload, manifest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        f"raw{i:09d}",
                        "p",
                        "step",
                        "n",
                        None,
                        "valid",
                        1_700_000_000_000_000 + i,
                        len(payload),
                        len(payload),
                        "0" * 64,
                        "{}",
                        None,
                        None,
                        payload,
                        chunking.EMPTY_MANIFEST,
                    ),
                )
                conn.execute("COMMIT")

            def empty_transaction() -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("COMMIT")

            keys = itertools.count()
            p1 = _medians(
                {
                    "diskcache.Cache.set, whole call": lambda: dc.set(f"k{next(keys)}", state),
                    "ckptlite save, whole call": lambda: mgr.save("p", state, name="n"),
                    "its SQLite transaction alone (BEGIN IMMEDIATE, the INSERT of one row, "
                    "COMMIT), no Python around it": transaction,
                    "an empty BEGIN IMMEDIATE + COMMIT": empty_transaction,
                    "msgpack encode of the state": lambda: codec.encode(state),
                },
                rounds,
            )
            budget = 0.6 * p1["diskcache.Cache.set, whole call"]
            out["P1"] = [*p1.items(), ("the 0.6x budget", budget)]

            dc.set("k", state)
            where = "process_id=? AND level=? AND name=?"
            args = ("p", "step", "n")
            read = mgr.backend.db.read()  # type: ignore[attr-defined]

            def two_selects() -> Any:
                top = read.execute(
                    f"SELECT seq FROM checkpoints WHERE {where} ORDER BY seq DESC LIMIT 1", args
                ).fetchone()
                return read.execute(
                    f"SELECT {CHECKPOINT_COLS}, payload, manifest FROM checkpoints WHERE seq=?",
                    top,
                ).fetchone()

            row = two_selects()
            record = mgr.backend.latest_record("p", Level.STEP, "n")  # type: ignore[attr-defined]

            def verify_and_decode() -> None:
                chunking.record_checksum(row[14], row[15], mgr.hash_name)
                codec.decode(memoryview(row[14])[1:], [])

            p2 = _medians(
                {
                    "diskcache.Cache.get, whole call": lambda: dc.get("k"),
                    "its SELECT alone (one unique-index probe)": lambda: dc._sql(
                        "SELECT rowid, expire_time, tag, mode, filename, value FROM Cache "
                        "WHERE key = ? AND raw = ?",
                        ("k", True),
                    ).fetchall(),
                    "ckptlite load_latest, whole call": lambda: mgr.load_latest(
                        "p", level="step", name="n"
                    ),
                    "its cache check while the store is unchanged (PRAGMA data_version)": (
                        lambda: read.execute("PRAGMA data_version").fetchone()
                    ),
                    "a fresh Checkpoint of the cached record (the caller owns its metadata)": (
                        lambda: _fresh(record, "{}")
                    ),
                    "on a cache miss: its two SELECTs (newest seq of the slot, then that row)": (
                        two_selects
                    ),
                    "on a cache miss: row to Checkpoint (frozen dataclass, enums, datetime)": (
                        lambda: row_to_checkpoint(row[:14])
                    ),
                    "verification (SHA-256 of payload + manifest) and msgpack decode": (
                        verify_and_decode
                    ),
                },
                rounds,
            )
            budget = 1.5 * p2["diskcache.Cache.get, whole call"]
            out["P2"] = [*p2.items(), ("the 1.5x budget", budget)]
        finally:
            dc.close()
            raw_store.close()
            mgr.close()
    return out


def _alternate(
    parts: dict[str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]],
    rounds: int,
) -> dict[str, float]:
    """Median seconds per call of each part, one call per part per round, setups untimed."""
    import statistics
    import time

    times: dict[str, list[float]] = {k: [] for k in parts}
    for i in range(rounds + 1):  # the first round warms up
        for k, (fn, setup) in parts.items():
            args = setup() if setup else ()
            t = time.perf_counter()
            fn(*args)
            if i:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def tile_breakdown(nbytes: int = 1 << 20, rounds: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Time a tile's save and load against the physical steps any durable save takes.

    Returns {"save ...": [(part, seconds)], "load ...": [...]}: ckptlite's and
    pickle's whole calls beside what bounds them on this machine (a file write
    plus fsync, the directory fsync that makes a new file's name durable, one
    SQLite commit, hashing the bytes, copying them into new or reused memory),
    all alternated round by round. No ckptlite internals are used.
    """
    import itertools
    import os

    import apsw
    import blake3
    import numpy as np
    import xxhash

    from bench.peers import pickle_load, pickle_save
    from bench.states import NoiseTiles

    tiles = NoiseTiles(nbytes)
    size = f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"
    n = itertools.count()
    out: dict[str, list[tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ckptlite-tile-parts-") as tmp:
        d = Path(tmp)
        mgr = ckptlite.open(d / "store")
        dbs = []
        try:

            def new_tile() -> tuple[Any, ...]:
                return (tiles.make(next(n)),)

            def new_file() -> tuple[Any, ...]:
                (d / "f.pkl").unlink(missing_ok=True)
                (d / "f.raw").unlink(missing_ok=True)
                return (tiles.make(next(n)),)

            def write_fsync(tile: Any, dir_too: bool = False) -> None:
                fd = os.open(d / "f.raw", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, memoryview(tile).cast("B"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if dir_too:
                    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)

            def commit(sync: str) -> Callable[[], None]:
                db = apsw.Connection(str(d / f"commit-{sync}.db"))
                dbs.append(db)
                db.execute(f"PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}")
                db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
                row = os.urandom(200)

                def fn() -> None:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("INSERT INTO t(v) VALUES (?)", (row,))
                    db.execute("COMMIT")

                return fn

            save_parts: dict[
                str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]
            ] = {
                "ckptlite save, whole call (a new tile, its own name)": (
                    lambda t: mgr.save("tiles", t, name=f"tile_{next(n)}"),
                    new_tile,
                ),
                "pickle.dump + fsync to a new file, whole call": (
                    lambda t: pickle_save(d / "f.pkl", t),
                    new_file,
                ),
                "write() of the bytes to a new file + its fsync": (write_fsync, new_file),
                "the same + fsync of the directory (makes the new name durable)": (
                    lambda t: write_fsync(t, dir_too=True),
                    new_file,
                ),
                "one SQLite commit of a 200-byte row, WAL, synchronous=NORMAL": (
                    commit("NORMAL"),
                    None,
                ),
                "one SQLite commit of a 200-byte row, WAL, synchronous=FULL": (
                    commit("FULL"),
                    None,
                ),
                "BLAKE3 of the tile (its address)": (
                    lambda t: blake3.blake3(memoryview(t).cast("B")).digest(),
                    new_tile,
                ),
            }
            out[f"save of one {size} noise tile"] = list(_alternate(save_parts, rounds).items())

            tile = tiles.make(next(n))
            cp = mgr.save("tiles", tile, name="loaded")
            pickle_save(d / "loaded.pkl", tile)
            raw = d / "loaded.raw"
            raw.write_bytes(memoryview(tile).cast("B"))
            reused = bytearray(tile.nbytes)

            def read_into(buf: Any) -> None:
                with open(raw, "rb", buffering=0) as f:
                    f.readinto(buf)

            load_parts: dict[
                str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]
            ] = {
                "ckptlite load, whole call (verified)": (lambda: mgr.load(cp.id), None),
                # P12 loads one tile again and again: its record and chunk rows come
                # from the read cache. After any write they are read from the index.
                "ckptlite load, the store changed since (record and rows read again)": (
                    lambda _cp: mgr.load(cp.id),
                    lambda: (mgr.save("bump", 0),),
                ),
                "pickle.load, whole call": (lambda: pickle_load(d / "loaded.pkl"), None),
                "read of the bytes into new memory (np.empty)": (
                    lambda: read_into(np.empty(tile.nbytes, np.uint8)),
                    None,
                ),
                "read of the bytes into a reused, already-touched buffer": (
                    lambda: read_into(reused),
                    None,
                ),
                "XXH3-128 of the tile (the check a load compares)": (
                    lambda: xxhash.xxh3_128_digest(tile),
                    None,
                ),
            }
            out[f"load of one {size} noise tile (warm cache)"] = list(
                _alternate(load_parts, rounds).items()
            )
            assert np.array_equal(mgr.load(cp.id), tile)
        finally:
            for db in dbs:
                db.close()
            mgr.close()
    return out


def raster_breakdown(nbytes: int = 4 << 20, rounds: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Time a compressible raster's save against the CPU work its stored bytes need.

    Per P13 raster kind: ckptlite's and pickle's whole calls (a new raster each
    round) beside the byte shuffle, zstd level 1 of the shuffled bytes in 1 MiB
    pieces (one core, as ckptlite stores them), BLAKE3 of the raster (its
    addresses), and the durable write of the compressed bytes to a new file, all
    alternated round by round. The CPU parts run on one core; ckptlite spreads a
    raster over both. No ckptlite internals are used.
    """
    import itertools
    import os

    import blake3
    import numpy as np
    import zstandard

    from bench.peers import pickle_save
    from bench.states import RASTERS

    mib = 1 << 20
    zstd = zstandard.ZstdCompressor(level=1)
    size = f"{nbytes >> 20} MiB"
    out: dict[str, list[tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ckptlite-raster-parts-") as tmp:
        d = Path(tmp)
        for kind, make in RASTERS.items():
            # ckptlite saves each raster once (one more round warms up): an equal one
            # would be found stored and not written again. The other parts reuse them.
            pool = [make(nbytes, seed) for seed in range(rounds + 1)]
            k = pool[0].dtype.itemsize

            def next_of(pool: list[Any] = pool) -> Callable[[], tuple[Any, ...]]:
                seeds = itertools.count()
                return lambda: (pool[next(seeds) % len(pool)],)

            new_raster, unsaved = next_of(), next_of()

            def new_file() -> tuple[Any, ...]:
                path = d / "f.pkl"
                path.unlink(missing_ok=True)
                return (path,)

            def shuffled(a: Any, k: int = k) -> Any:
                b = np.frombuffer(a.tobytes(), np.uint8)
                return b.reshape(-1, k).T.copy() if k > 1 else b

            def compressed(a: Any, k: int = k) -> list[bytes]:
                raw = memoryview(shuffled(a, k)).cast("B")
                return [zstd.compress(raw[i : i + mib]) for i in range(0, raw.nbytes, mib)]

            packed = b"".join(compressed(pool[0]))

            def write_fsync(path: Path, data: bytes = packed) -> None:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)

            with ckptlite.open(d / f"store-{k}") as mgr:
                parts: dict[
                    str, tuple[Callable[..., Any], Callable[[], tuple[Any, ...]] | None]
                ] = {
                    "ckptlite save, whole call (a new raster)": (
                        lambda a, mgr=mgr: mgr.save("r", a, name=f"r{id(a)}"),
                        unsaved,
                    ),
                    "pickle.dump + fsync to a new file, whole call": (
                        lambda a: pickle_save(new_file()[0], a),
                        new_raster,
                    ),
                    "byte shuffle (numpy, one core)": (shuffled, new_raster),
                    "shuffle + zstd level 1 in 1 MiB pieces (one core)": (compressed, new_raster),
                    "BLAKE3 of the raster (its addresses, one core)": (
                        lambda a: blake3.blake3(memoryview(a).cast("B")).digest(),
                        new_raster,
                    ),
                    f"write + fsync of its {len(packed) / nbytes:.2f}x compressed bytes": (
                        write_fsync,
                        new_file,
                    ),
                }
                out[f"{kind}, {size}"] = list(_alternate(parts, rounds).items())
    return out
