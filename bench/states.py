"""The states the benchmarks save: a ~1 KB processor state and float32 rasters."""

from __future__ import annotations

from typing import Any


def small_state(i: int = 0) -> dict[str, Any]:
    """A ~1 KB pipeline state, shaped like the legacy processors' ``processor_state``."""
    return {
        "class": "ResamplingProcessor",
        "config": {
            "memory_limit_mb": 1024,
            "skip_existing": True,
            "retry_failed": True,
            "max_retries": 3,
            "target_crs": "EPSG:4326",
            "resolution": 0.0083333,
        },
        "items_processed": 1200 + i,
        "progress_node_id": f"resample/tile_{i % 64}",
        "last_completed_index": 37 + i,
        "total_datasets": 120,
        "completed_datasets": [f"dataset_{k:03d}.tif" for k in range(40)],
        "bounds": (-180.0, -90.0, 180.0, 90.0),
    }


def raster(mib: int, seed: int = 0) -> Any:
    """A float32 raster of ``mib`` MiB with full-precision noise (zstd cannot shrink it much)."""
    import numpy as np

    n = mib * (1 << 20) // 4
    side = 1 << 10 if mib >= 4 else 1 << 8
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n // side, side), dtype=np.float32)


def blob_state(nbytes: int, seed: int = 0) -> Any:
    """A float32 array of about ``nbytes`` (for the throughput sweep)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal(max(1, nbytes // 4), dtype=np.float32)
