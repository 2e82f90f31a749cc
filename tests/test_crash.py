"""SIGKILL a saving process at random moments: what was listed stays loadable; gc cleans up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ckptlite

CHILD = textwrap.dedent(
    """
    import sys, numpy as np, ckptlite
    store = sys.argv[1]
    with ckptlite.open(store, chunk_size=256 * 1024) as mgr:
        print("ready", flush=True)
        i = 0
        while True:
            rng = np.random.default_rng(i)
            state = {"a": rng.random(200_000 + i * 1000), "i": i}   # ~1.6 MB: 6+ file chunks
            mgr.save("crash", state, name=f"n{i % 3}")
            i += 1
    """
)


@pytest.mark.slow
def test_sigkill_at_50_random_moments_loses_nothing(tmp_path: Path) -> None:
    store = tmp_path / "s"
    rnd = random.Random(1234)
    for _ in range(50):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

    with ckptlite.open(store) as mgr:
        listed = mgr.list()
        assert len(listed) > 20  # the kills did not stop every save
        for cp in listed:
            state = mgr.load(cp.id)
            rng = np.random.default_rng(state["i"])
            assert np.array_equal(state["a"], rng.random(200_000 + state["i"] * 1000))
        report = mgr.verify(full=True)
        assert report.ok and not report.corrupted

        mgr.gc()
        assert mgr.verify().orphan_chunks == ()
        referenced = {d for cp in listed for d in mgr.backend.get_record(cp.id).digests}
        files = {p.name for p in (store / "blobs").glob("??/*")}
        assert files <= referenced
        assert os.listdir(store / "blobs" / "tmp") == []
