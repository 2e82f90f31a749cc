"""Save and load through each peer the way a careful user would (fsync where it writes)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.conftest import fsync_path


def pickle_save(path: Path, obj: Any) -> None:
    """pickle.dump to one file, then fsync it."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())


def pickle_load(path: Path) -> Any:
    """pickle.load of that file (verifies nothing)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def numpy_save(path: Path, arr: Any) -> None:
    """numpy.save to one file, then fsync it."""
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def numpy_load(path: Path) -> Any:
    import numpy as np

    return np.load(path, allow_pickle=False)


def joblib_save(path: Path, obj: Any) -> None:
    """joblib.dump (no compression), then fsync the file."""
    import joblib

    joblib.dump(obj, path)
    fsync_path(path)


def joblib_load(path: Path) -> Any:
    import joblib

    return joblib.load(path)


#: name -> (save(path, obj), load(path), file name)
FILE_PEERS: dict[str, tuple[Callable[[Path, Any], None], Callable[[Path], Any], str]] = {
    "pickle.dump+fsync": (pickle_save, pickle_load, "state.pkl"),
    "numpy.save+fsync": (numpy_save, numpy_load, "state.npy"),
    "joblib.dump+fsync": (joblib_save, joblib_load, "state.joblib"),
}
