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


def grid(nbytes: int, itemsize: int) -> tuple[int, int]:
    """A raster shape of ``nbytes``: square when it can be, else twice as wide as high."""
    n = max(1, nbytes // itemsize)
    w = 1
    while w * w < n:
        w *= 2
    return max(1, n // w), w


class NoiseTiles:
    """Distinct float32 noise tiles of ``nbytes`` each, cheap enough to make one per save.

    Tile ``i`` is noise tile ``i % pool`` times ``1 + (i // pool) / 1024``: every
    mantissa changes, so each tile is new bytes (no chunk of it is stored yet)
    and exactly as incompressible as fresh noise, at the cost of one multiply
    instead of a new draw (standard_normal of 1 MiB takes ~6 ms here).
    """

    def __init__(self, nbytes: int, pool: int = 8, seed: int = 0) -> None:
        import numpy as np

        self.pool = np.random.default_rng(seed).standard_normal(
            (pool, *grid(nbytes, 4)), dtype=np.float32
        )
        self.nbytes = self.pool[0].nbytes

    def make(self, i: int) -> Any:
        """Return tile ``i`` (a new array; the same ``i`` gives the same bytes)."""
        import numpy as np

        k, j = divmod(i, len(self.pool))
        return self.pool[j] * np.float32(1 + k / 1024)


def _waves(
    shape: tuple[int, int], seed: int, octaves: int, decay: float, dtype: str = "float64"
) -> Any:
    """Sum of plane-ish waves, wavelengths 2048 px down to 2048 / 2**(octaves-1) px.

    Each wave is sin(ky*y + p) * sin(kx*x + q) at a random angle; octave ``o`` has
    amplitude ``decay**o``. Separable, so the whole sum is one matrix product.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    rows, cols = [], []
    for o in range(octaves):
        k = 2 * np.pi * 2**o / 2048
        for _ in range(3):
            angle = rng.uniform(0, np.pi)
            rows.append(decay**o * np.sin(k * np.sin(angle) * y + rng.uniform(0, 2 * np.pi)))
            cols.append(np.sin(k * np.cos(angle) * x + rng.uniform(0, 2 * np.pi)))
    # One BLAS thread: OpenBLAS's idle threads spin for a while after a product,
    # and in the untimed setup that took a core from the timed save that followed
    # (P13 4 MiB: 19.6 against 14.1 ms, pickle unchanged: it uses one core).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return np.stack(rows, axis=1).astype(dtype) @ np.stack(cols).astype(dtype)


def terrain(shape: tuple[int, int], seed: int = 0) -> Any:
    """Heights in metres (float64): 8 octaves of waves, ~2,000 m mean, ~5.6 m mean step."""
    return 2000.0 + 600.0 * _waves(shape, seed, octaves=8, decay=0.6)


def smooth_surface(nbytes: int, seed: int = 0) -> Any:
    """A DEM-like float32 surface: terrain plus 5 cm of noise, rounded to float32."""
    import numpy as np

    shape = grid(nbytes, 4)
    noise = np.random.default_rng(seed + 1_000_000).normal(0.0, 0.05, shape)
    return (terrain(shape, seed) + noise).astype(np.float32)


def dem_int16(nbytes: int, seed: int = 0) -> Any:
    """An int16 DEM in whole metres (SRTM-like): terrain plus 1 m of noise, rounded."""
    import numpy as np

    shape = grid(nbytes, 2)
    noise = np.random.default_rng(seed + 1_000_000).normal(0.0, 1.0, shape)
    return np.rint(terrain(shape, seed) + noise).astype(np.int16)


def land_cover(nbytes: int, seed: int = 0) -> Any:
    """A uint8 land-cover map: 9 classes in irregular blobs (~4% of pixels on an edge).

    The class is which of three random fields is highest (3 ways) times where
    the sum of two of them falls (3 bands).
    """
    import numpy as np

    shape = grid(nbytes, 1)
    f0, f1, f2 = (_waves(shape, seed * 3 + s, 8, 0.8, "float32") for s in range(3))
    out = np.where(f1 > f0, np.uint8(3), np.uint8(0))
    out[f2 > np.maximum(f0, f1)] = 6
    f0 += f1
    out += f0 > -0.5
    out += f0 > 0.5
    return out


#: raster kind -> make(nbytes, seed): the compressible states of P13
RASTERS = {
    "float32 surface": smooth_surface,
    "int16 DEM": dem_int16,
    "uint8 land cover": land_cover,
}
