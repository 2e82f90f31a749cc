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


def h5py_save(path: Path, arr: Any) -> None:
    """h5py: a new HDF5 file holding one dataset (no compression), then fsync the file."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("tile", data=arr)
    fsync_path(path)


def h5py_load(path: Path) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        return f["tile"][()]


def safetensors_save(path: Path, arr: Any) -> None:
    """safetensors.numpy.save_file of ``{"tile": arr}``, then fsync the file."""
    from safetensors.numpy import save_file

    save_file({"tile": arr}, str(path))
    fsync_path(path)


def safetensors_load(path: Path) -> Any:
    """safetensors.numpy.load_file (checks the header, not the bytes)."""
    from safetensors.numpy import load_file

    return load_file(str(path))["tile"]


#: The tile-size rows (P11, P12, P14): pickle (the baseline) first, then the peers.
#: Each writes one new file per tile and fsyncs it; none verifies what it loads.
TILE_PEERS: dict[str, tuple[Callable[[Path, Any], None], Callable[[Path], Any], str]] = {
    "pickle.dump+fsync": (pickle_save, pickle_load, "tile.pkl"),
    "numpy.save+fsync": (numpy_save, numpy_load, "tile.npy"),
    "h5py+fsync": (h5py_save, h5py_load, "tile.h5"),
    "safetensors+fsync": (safetensors_save, safetensors_load, "tile.safetensors"),
}


def load_label(peer: str) -> str:
    """The load side's name of a peer: ``pickle.dump+fsync`` -> ``pickle.load``."""
    return {
        "pickle.dump+fsync": "pickle.load",
        "numpy.save+fsync": "numpy.load",
        "h5py+fsync": "h5py read",
        "safetensors+fsync": "safetensors load_file",
    }.get(peer, peer)
