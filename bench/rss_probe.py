"""Run one save or load of a big array in this process and print its peak RSS as JSON.

``python -m bench.rss_probe ckptlite-save DIR MIB`` saves, ``ckptlite-load DIR MIB``
loads it back (checking its SHA-256), ``pickle-save`` / ``pickle-load`` do the
same through pickle. Peak RSS is the kernel's VmHWM (resource's ru_maxrss when
/proc is absent), so nothing the process did before can hide.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
from pathlib import Path
from typing import Any


def peak_rss() -> int:
    """Return this process's peak resident set size in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_array(mib: int) -> Any:
    """Fill a float32 array slice by slice (no full-size temporaries)."""
    import numpy as np

    arr = np.empty(mib << 18, dtype=np.float32)
    rng = np.random.default_rng(10)
    step = 1 << 22
    for i in range(0, arr.size, step):
        rng.standard_normal(out=arr[i : i + step], dtype=np.float32)
    return arr.reshape(-1, 1024)


def digest(arr: Any) -> str:
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()


def main(argv: list[str]) -> None:
    action, where, mib = argv[0], Path(argv[1]), int(argv[2])
    import numpy as np

    import ckptlite

    out: dict[str, Any] = {"action": action, "nbytes": mib << 20}
    if action.endswith("-save"):
        arr = make_array(mib)
        out["rss_before"] = peak_rss()
        if action == "ckptlite-save":
            with ckptlite.open(where) as mgr:
                mgr.save("rss", arr, name="big")
        else:
            from bench.peers import pickle_save

            pickle_save(where / "big.pkl", arr)
        out["digest"] = digest(arr)
    else:
        out["rss_before"] = peak_rss()
        if action == "ckptlite-load":
            with ckptlite.open(where) as mgr:
                hit = mgr.load_latest("rss", name="big")
                assert hit is not None
                arr = hit[1]
        else:
            from bench.peers import pickle_load

            arr = pickle_load(where / "big.pkl")
        assert isinstance(arr, np.ndarray) and arr.nbytes == mib << 20
        out["digest"] = digest(arr)
    out["peak_rss"] = peak_rss()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
