"""Many threads saving through one manager: every checkpoint loads and verifies."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

import ckptlite
from ckptlite import CheckpointPolicy

THREADS, SAVES = 8, 500


def test_8_threads_x_500_saves_all_load_and_verify(store_dir: Path) -> None:
    mgr = ckptlite.open(store_dir, chunk_size=64 * 1024)  # default durability: "safe"
    errors: list[BaseException] = []
    saved: dict[int, list[ckptlite.Checkpoint]] = {}
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        mine = []
        try:
            start.wait()
            for i in range(SAVES):
                state = {"t": t, "i": i}
                if i % 100 == 0:  # some chunked states too
                    state["arr"] = np.full(20_000, t * SAVES + i, dtype="f8")
                mine.append(mgr.save(f"proc-{t % 3}", state, name=f"t{t}"))
        except BaseException as e:
            errors.append(e)
        saved[t] = mine

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    all_cps = [cp for t in range(THREADS) for cp in saved[t]]
    assert len(all_cps) == THREADS * SAVES
    assert len({cp.id for cp in all_cps}) == len({cp.seq for cp in all_cps}) == 4000
    for t in range(THREADS):
        for i, cp in enumerate(saved[t]):
            state = mgr.load(cp.id)
            assert (state["t"], state["i"]) == (t, i)
            if i % 100 == 0:
                assert float(state["arr"][0]) == t * SAVES + i
        latest = mgr.latest(f"proc-{t % 3}", name=f"t{t}")
        assert latest is not None and latest.id == saved[t][-1].id
    report = mgr.verify(full=True)
    assert report.ok and report.checked == 4000
    mgr.close()


def test_threads_with_a_policy_keep_every_stamps_unique_positions(store_dir: Path) -> None:
    mgr = ckptlite.open(
        store_dir, durability="none", policy=CheckpointPolicy(keep_last=2, keep_every=25)
    )
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(50):
                mgr.save("p", i, name="shared")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    positions = sorted(c.metadata["ckptlite.slot_index"] for c in mgr.list("p"))
    # 200 saves: positions 25, 50, ..., 200 by keep_every, plus the newest two.
    assert positions == [25, 50, 75, 100, 125, 150, 175, 199, 200]
    mgr.close()
