"""The load path: where loaded bytes land, how chunk rows are fetched; the shuffle codec."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import apsw
import numpy as np
import pytest
import xxhash
import zstandard
from damage import chunk_span, flip_bit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptlite
from ckptlite import _chunkio, chunking, codec
from ckptlite.types import StoredChunk


def test_loaded_arrays_are_owned_writable_and_never_aliased(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random(1 << 19).astype(np.float32)  # 2 MiB: 2 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20) as mgr:
        cp = mgr.save("p", {"a": arr, "f": np.asfortranarray(arr.reshape(512, 1024))})
        first = mgr.load(cp)
        second = mgr.load(cp)
        for key in ("a", "f"):
            assert first[key].flags.writeable and second[key].flags.writeable
            assert not np.shares_memory(first[key], second[key])
        first["a"][:] = -1  # the caller owns it: writing it changes no other load
        assert np.array_equal(second["a"], arr)
        del first  # its memory goes back to the allocator, and may serve the next load
        third = mgr.load(cp)
        assert np.array_equal(third["a"], arr)
        assert np.array_equal(third["f"], arr.reshape(512, 1024))
        assert not np.shares_memory(third["a"], second["a"])
        third["f"][0, 0] = 7.0
        assert second["f"][0, 0] == arr[0] and mgr.load(cp)["f"][0, 0] == arr[0]


def test_the_buffer_pool_hands_out_a_buffer_again_only_once_released() -> None:
    pool = _chunkio.BufferPool()
    n = 1 << 20
    first = np.frombuffer(pool.take(n), np.uint8)  # a result: a view of a pooled buffer
    second = np.frombuffer(pool.take(n), np.uint8)
    assert not np.shares_memory(first, second)
    where = first.ctypes.data
    view = first[10:20]  # any view keeps the buffer its holder's
    del first
    third = np.frombuffer(pool.take(n), np.uint8)
    assert not np.shares_memory(third, view) and not np.shares_memory(third, second)
    del view, third
    again = np.frombuffer(pool.take(n), np.uint8)
    assert again.ctypes.data == where  # released: handed out again, already faulted in
    big = pool.take(pool.MAX_BUFFER + 1)  # bigger than a tile: never kept
    assert all(b.nbytes == n for b in pool._bufs) and big.nbytes == pool.MAX_BUFFER + 1


def test_a_warm_load_lands_in_memory_already_faulted_in(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).random(1 << 20, dtype=np.float32)  # 4 MiB: 1024 pages
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20) as mgr:
        cp = mgr.save("p", arr)
        for _ in range(3):  # warm: pool threads, connections, the buffer itself
            assert np.array_equal(mgr.load(cp), arr)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            got = mgr.load(cp)
            del got  # released: the next load may land there
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert faults < 4 * 1024 // 4  # a fresh buffer faults in all of its 1024 pages


def test_a_load_fetches_its_chunk_rows_in_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arr = np.random.default_rng(1).random(1 << 19)  # 4 MiB: 4 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20) as mgr:
        cp = mgr.save("p", arr)
        backend = mgr.backend
        singles: list[str] = []
        real = backend._chunk_row  # type: ignore[attr-defined]

        def one_row(digest: str) -> object:
            singles.append(digest)
            return real(digest)

        monkeypatch.setattr(backend, "_chunk_row", one_row)
        assert np.array_equal(mgr.load(cp), arr)
        assert singles == []  # no SELECT per chunk from the pool threads


def _rewrite_manifest(mgr: ckptlite.CheckpointManager, cid: str, checks: dict[str, bytes]) -> None:
    """Give checkpoint ``cid`` a manifest with ``checks`` and a checksum that matches it."""
    record = mgr.backend.get_record(cid)
    manifest = chunking.unpack_manifest(record.manifest)
    packed = chunking.pack_manifest(manifest, checks)
    checksum = chunking.record_checksum(record.payload, packed, mgr.hash_name)
    # Another connection, as another process would: the manager's caches see its commit.
    conn = apsw.Connection(str(mgr.backend.db.path))  # type: ignore[attr-defined]
    try:
        conn.execute(
            "UPDATE checkpoints SET manifest=?, checksum=? WHERE id=?", (packed, checksum, cid)
        )
    finally:
        conn.close()


def test_a_load_checks_chunks_by_their_check_not_by_hashing_their_address(
    tmp_path: Path, count_digests: Callable[[], list[int]]
) -> None:
    arr = np.random.default_rng(3).random(1 << 20, dtype=np.float32)  # 4 MiB: 4 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20, durability="none") as mgr:
        cp = mgr.save("p", arr)
        record = mgr.backend.get_record(cp.id)
        manifest, checks = chunking.unpack_checked(record.manifest)
        assert len(checks) == 4  # every chunk has its check, taken when it was saved
        for (d, _), piece in zip(manifest[0], np.split(arr.view(np.uint8), 4), strict=True):
            assert checks[d] == xxhash.xxh3_128_digest(piece)
        hashed = count_digests()
        assert np.array_equal(mgr.load(cp), arr)
        assert hashed == []  # no chunk hashed again for its address
        file, offset, _ = chunk_span(tmp_path / "s", manifest[0][2][0])
        flip_bit(file, offset + 1000)  # damage is still caught, by the check
        with pytest.raises(ckptlite.CorruptCheckpointError) as e:
            mgr.load(cp)
        assert e.value.digests == (manifest[0][2][0],)
        assert mgr.get(cp.id).status == ckptlite.Status.CORRUPTED


def test_checkpoints_saved_without_checks_load_verified_by_their_address(
    tmp_path: Path, count_digests: Callable[[], list[int]]
) -> None:
    arr = np.random.default_rng(4).random(1 << 19, dtype=np.float32)  # 2 MiB: 2 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20, durability="none") as mgr:
        cp = mgr.save("p", arr)
        _rewrite_manifest(mgr, cp.id, {})  # what a store written before checks holds
        hashed = count_digests()
        assert np.array_equal(mgr.load(cp), arr)
        assert hashed == [1 << 20, 1 << 20]
        digest = chunking.unpack_manifest(mgr.backend.get_record(cp.id).manifest)[0][1][0]
        file, offset, _ = chunk_span(tmp_path / "s", digest)
        flip_bit(file, offset + 7)
        with pytest.raises(ckptlite.CorruptCheckpointError, match="digest") as e:
            mgr.load(cp)
        assert e.value.digests == (digest,)


def test_a_record_with_a_wrong_check_fails_its_load_and_a_full_verify(tmp_path: Path) -> None:
    arr = np.random.default_rng(5).random(1 << 18, dtype=np.float32)  # 1 MiB: 1 chunk
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20, durability="none") as mgr:
        good = mgr.save("p", arr, name="good")
        bad = mgr.save("p", arr, name="bad")  # the same chunk, deduplicated
        (digest,) = mgr.backend.get_record(bad.id).digests
        _rewrite_manifest(mgr, bad.id, {digest: chunking.check_of(b"other bytes")})
        report = mgr.verify(full=True)
        assert report.corrupted == (bad.id,)  # the chunk's address is right; the record is not
        assert mgr.get(bad.id).status == ckptlite.Status.CORRUPTED
        with pytest.raises(ckptlite.CorruptCheckpointError, match="check"):
            mgr.load(bad)
        assert np.array_equal(mgr.load(good), arr)
        assert mgr.verify(full=True).corrupted == (bad.id,)


# -- the byte-shuffle codec ---------------------------------------------------------

NUMERIC = ["<i2", ">u2", "<f2", "<i4", "<f4", ">f4", "<u8", "<f8", ">i8", "<c8", "<c16", "<M8[s]"]


def _smooth(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values of ``dtype`` whose neighbours share their high bytes: shuffling pays."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.integers(-3, 4, int(np.prod(shape)))) + 1000
    if dtype.startswith(("<M", ">M")):
        return (walk + 1_700_000_000).astype(dtype).reshape(shape)
    return walk.astype(dtype).reshape(shape)


def _codecs(mgr: ckptlite.CheckpointManager) -> set[int]:
    conn = mgr.backend.db.read()  # type: ignore[attr-defined]
    return {r[0] for r in conn.execute("SELECT codec FROM chunks")}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dtype=st.sampled_from(NUMERIC),
    rows=st.integers(1, 700),
    cols=st.integers(60, 140),
    fortran=st.booleans(),
    chunk=st.integers(4096, 9001),
    seed=st.integers(0, 2**16),
)
def test_shuffled_arrays_round_trip_at_any_chunk_boundary(
    tmp_path_factory: pytest.TempPathFactory,
    dtype: str,
    rows: int,
    cols: int,
    fortran: bool,
    chunk: int,
    seed: int,
) -> None:
    arr = _smooth(dtype, (rows, cols), seed)
    if fortran:
        arr = np.asfortranarray(arr)
    odd = np.frombuffer(np.random.default_rng(seed).bytes(70_001), np.uint8)  # not shuffled
    store = tmp_path_factory.mktemp("s")
    with ckptlite.open(store, chunk_size=chunk, durability="none") as mgr:
        cp = mgr.save("p", {"a": arr, "odd": odd, "b": arr[::-1].copy()})
        got = mgr.load(cp)
        assert got["a"].dtype == arr.dtype
        assert got["a"].flags.f_contiguous == arr.flags.f_contiguous
        assert np.array_equal(got["a"], arr) and np.array_equal(got["b"], arr[::-1])
        assert np.array_equal(got["odd"], odd)
        assert mgr.verify(full=True).ok
        if arr.nbytes >= max(4 * chunk, codec.BUFFER_THRESHOLD):  # stored as chunks
            itemsize = arr.dtype.itemsize // (2 if arr.dtype.kind == "c" else 1)
            assert chunking.CODEC_ZSTD_SHUFFLE[itemsize] in _codecs(mgr)


@settings(max_examples=200, deadline=None)
@given(
    k=st.sampled_from([2, 4, 8]),
    data=st.binary(min_size=0, max_size=3000),
    block=st.sampled_from([1, 7, 1 << 18]),
)
def test_shuffle_and_unshuffle_invert_with_and_without_numpy(
    k: int, data: bytes, block: int
) -> None:
    n = len(data)
    view = memoryview(data)
    real_block, chunking._BLOCK = chunking._BLOCK, block  # numpy works block by block
    try:
        with_numpy = bytes(chunking._shuffled(view, k, n))
        out = memoryview(bytearray(n))
        chunking._unshuffle_into(with_numpy, k, out)
    finally:
        chunking._BLOCK = real_block
    assert out == data
    m = n - n % k
    # Byte j of every element, then byte j + 1, ...; the tail as it was.
    assert with_numpy == b"".join(data[j:m:k] for j in range(k)) + data[m:]
    real = chunking._numpy
    chunking._numpy = lambda: None  # type: ignore[assignment]
    try:
        assert bytes(chunking._shuffled(view, k, n)) == with_numpy
        back = memoryview(bytearray(n))
        chunking._unshuffle_into(with_numpy, k, back)
        assert back == data
    finally:
        chunking._numpy = real  # type: ignore[assignment]


def test_noise_stays_raw_and_smooth_numbers_are_shuffled() -> None:
    noise = np.random.default_rng(0).random(1 << 18, dtype=np.float32)  # 1 MiB
    view = memoryview(noise).cast("B")
    assert chunking.compress_chunk("d", view, 1, itemsize=4).codec == chunking.CODEC_RAW
    x = np.arange(1 << 19)  # a DEM profile: 600 m of relief, 3 m of noise (1 MiB)
    noise = np.random.default_rng(1).normal(0, 3, x.size)
    dem = memoryview((1000 + 300 * np.sin(x / 900) + noise).astype("<i2")).cast("B")
    stored = chunking.compress_chunk("d", dem, 1, itemsize=2)
    plain = chunking.compress_chunk("d", dem, 1)
    assert stored.codec == chunking.CODEC_ZSTD_SHUFFLE[2] and plain.codec == chunking.CODEC_ZSTD
    assert stored.stored_size < plain.stored_size
    out = memoryview(bytearray(dem.nbytes))
    chunking.restore_chunk_into(
        StoredChunk(chunking.digest_of(dem, "blake3"), stored.size, stored.codec, stored.data),
        out,
        "blake3",
    )
    assert out == dem


def test_old_codecs_still_read() -> None:
    data = bytes(range(256)) * 400
    d = chunking.digest_of(data, "sha256")  # an older store's
    packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    for chunk in (
        StoredChunk(d, len(data), chunking.CODEC_RAW, data),
        StoredChunk(d, len(data), chunking.CODEC_ZSTD, packed),
    ):
        out = memoryview(bytearray(len(data)))
        chunking.restore_chunk_into(chunk, out, "sha256")
        assert out == data and chunking.raw_bytes(chunk) == data


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_shuffled_chunks_sync_and_load_in_every_backend(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    x = np.arange(3 << 18)  # an int16 DEM profile, and its float32 twin: 1.5 + 3 MiB
    dem = (1000 + 300 * np.sin(x / 900) + np.random.default_rng(3).normal(0, 3, x.size)).astype(
        "<i2"
    )
    state = {"dem": dem, "f": dem.astype("<f4") / 3, "c": (dem[:70_000] * 1j).astype("<c8")}
    with ckptlite.open(tmp_path / "a", durability="none") as a:
        cp = a.save("p", state)
        assert {chunking.CODEC_ZSTD_SHUFFLE[2], chunking.CODEC_ZSTD_SHUFFLE[4]} <= _codecs(a)
        where = "memory://" if kind == "memory" else request.getfixturevalue("pg_schema")
        with ckptlite.open(where) as b:
            # Saved there directly, and copied there as stored (codec and all) by sync.
            direct = b.load(b.save("q", state))
            assert ckptlite.sync(a, b).checkpoints_copied == 1
            for got in (b.load(cp.id), direct):
                assert all(np.array_equal(got[k], v) for k, v in state.items())
            assert b.verify(full=True).ok


def test_share_runs_every_job_in_order_with_the_caller_taking_part() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        ran: list[int] = []
        threads: set[int] = set()
        lock = threading.Lock()

        def job(j: int) -> int:
            with lock:
                ran.append(j)
                threads.add(threading.get_ident())
            return j * j

        for n in (0, 1, 2, 3, 7, 16):
            ran.clear()
            threads.clear()
            assert _chunkio._share(pool, job, list(range(n))) == [j * j for j in range(n)]
            assert sorted(ran) == list(range(n))
            if n:
                assert threading.get_ident() in threads  # the caller ran a share


def test_share_finishes_every_share_before_raising() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    done: list[int] = []
    lock = threading.Lock()

    def job(j: int) -> int:
        if j == 0:
            raise ValueError("first job")  # the caller's share fails at once
        time.sleep(0.01)  # the pool's shares are still running then
        with lock:
            done.append(j)
        return j

    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="first job"):
        _chunkio._share(pool, job, list(range(8)))
    # Every pool share ran to its end before the raise: none writes into a buffer later.
    first = 8 // min(_chunkio._CORES, 8)  # the caller's share is jobs 0 .. first-1
    assert sorted(done) == list(range(first, 8))


def test_a_state_saved_again_takes_unchanged_chunks_checks_from_the_last_save(
    tmp_path: Path, count_digests: Callable[[], list[int]]
) -> None:
    arr = np.random.default_rng(6).random(1 << 21, dtype=np.float32)  # 8 MiB: 8 chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20, durability="none") as mgr:
        first = mgr.save("p", arr, name="t")
        _, before = chunking.unpack_checked(mgr.backend.get_record(first.id).manifest)
        arr[0] += 1  # chunk 0 changes; chunks 1-7 are compared, not hashed
        hashed = count_digests()
        second = mgr.save("p", arr, name="t")
        assert hashed == [1 << 20]
        manifest, after = chunking.unpack_checked(mgr.backend.get_record(second.id).manifest)
        digests = [d for d, _ in manifest[0]]
        assert [after[d] for d in digests[1:]] == [before[d] for d in digests[1:]]
        assert after[digests[0]] == xxhash.xxh3_128_digest(arr[: 1 << 18])
        assert np.array_equal(mgr.load(second), arr)
        # After a save without checks, the compared chunks have none: checked by digest.
        _rewrite_manifest(mgr, second.id, {})
        arr[-1] += 1
        third = mgr.save("p", arr, name="t")
        _, checks = chunking.unpack_checked(mgr.backend.get_record(third.id).manifest)
        assert len(checks) == 1
        hashed.clear()
        assert np.array_equal(mgr.load(third), arr)
        assert len(hashed) == 7


@pytest.mark.parametrize(("kind", "groups"), [("smooth", 2), ("noise", 1)])
def test_a_compressible_state_is_spread_over_the_cores_and_noise_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, groups: int
) -> None:
    """Compressing is CPU work: one group per core. Raw chunks are I/O: one pack, one fsync."""
    rng = np.random.default_rng(8)
    n = 1 << 20  # 4 MiB of float32: four chunks, under one 8 MiB write group
    if kind == "smooth":
        arr = (np.cumsum(rng.normal(0, 0.01, n)) + 100).astype(np.float32)
    else:
        arr = rng.random(n, dtype=np.float32)
    monkeypatch.setattr(_chunkio, "_CORES", 2)
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20, durability="none") as mgr:
        calls: list[int] = []
        real = mgr.backend.stage_chunks

        def counting(chunks: object) -> object:
            calls.append(1)
            return real(chunks)  # type: ignore[arg-type]

        monkeypatch.setattr(mgr.backend, "stage_chunks", counting)
        cp = mgr.save("p", arr)
        assert len(calls) == groups
        assert np.array_equal(mgr.load(cp), arr)
        assert (mgr.stats()["stored_bytes"] < arr.nbytes * 0.9) == (kind == "smooth")


@pytest.mark.parametrize("chunks", [1, 4])
def test_a_tile_load_after_a_write_runs_one_statement(
    tmp_path: Path, chunks: int, trace_sql: Callable[[ckptlite.CheckpointManager], list[str]]
) -> None:
    """The record with its refs and their chunk rows in one statement (~10-40 us each).

    Loaded again from an unchanged store, not even that (``test_local``).
    """
    arr = np.random.default_rng(10).random(chunks << 18, dtype=np.float32)  # 1 MiB chunks
    with ckptlite.open(tmp_path / "s", chunk_size=1 << 20, durability="none") as mgr:
        cp = mgr.save("p", arr)
        assert np.array_equal(mgr.load(cp), arr)  # warm: connections, statements
        mgr.save("q", 1)  # the store changed: the load reads its rows again
        statements = trace_sql(mgr)
        assert np.array_equal(mgr.load(cp), arr)
        assert [s.split()[0] for s in statements if not s.startswith("PRAGMA")] == ["SELECT"], (
            statements
        )
        assert mgr.backend.get_record(cp.id).digests == tuple(
            sorted(
                d
                for buf in chunking.unpack_manifest(mgr.backend.get_record(cp.id).manifest)
                for d, _ in buf
            )
        )
