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
