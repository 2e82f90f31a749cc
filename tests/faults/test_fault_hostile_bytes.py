"""Item 7: decompression bombs and hostile msgpack: a typed error with bounded memory.

Someone who can write the store can plant any record, with a matching record
checksum. Each case below plants one whose recorded size is 1 KB but whose
bytes declare far more (a 1 GiB zstd bomb, 2**32-element containers, a 1 GiB
buffer in the manifest) or nest thousands deep. Each runs in a fresh child
process that reports the typed error and its peak RSS growth (ru_maxrss).

Issue 13 item 5 adds sizes the database merely declares: a chunk row whose
stored_size is 2**40 or whose pack offset is 2**62, a record whose size and
payload frame both claim 2**40 bytes; and a sync of the store to another, which
reads every chunk too.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RSS_BOUND_KB = 64 * 1024  # the recorded size is 1 KB: 64 MiB of growth is generous
GIB = 1 << 30


def _zstd_bomb(size: int) -> bytes:
    import zstandard

    cobj = zstandard.ZstdCompressor(level=3, write_content_size=True).compressobj(size=size)
    zeros = bytes(1 << 20)
    out = [cobj.compress(zeros) for _ in range(size >> 20)]
    return b"".join(out) + cobj.flush()


def _nested_arrays(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def _nested_tuples(depth: int) -> bytes:
    import msgpack

    inner = msgpack.packb(None)
    for _ in range(depth):  # a tuple ext holding a 1-element array holding the next
        inner = msgpack.packb(msgpack.ExtType(1, b"\x91" + inner))
    return inner  # type: ignore[no-any-return]


def _ndarray(descr: Any, shape: list[int], payload: Any) -> bytes:
    import msgpack

    return msgpack.packb(msgpack.ExtType(5, msgpack.packb([descr, shape, "C", payload])))  # type: ignore[no-any-return]


# case -> (payload skeleton or None, manifest builder name)
SKELETONS: dict[str, Any] = {
    "array32-of-4G-elements": b"\xdd\xff\xff\xff\xff",
    "map32-of-4G-pairs": b"\xdf\xff\xff\xff\xff",
    "str32-of-4GB": b"\xdb\xff\xff\xff\xff" + b"x" * 10,
    "bin32-of-4GB": b"\xc6\xff\xff\xff\xff" + b"x" * 10,
    "ext32-of-4GB": b"\xc9\xff\xff\xff\xff\x01" + b"x" * 10,
    "nested-arrays-100k-deep": _nested_arrays(100_000),
    "nested-tuple-exts-20k-deep": None,  # built in the child (slow to build here)
    "ndarray-shape-2**40": _ndarray("<f8", [1 << 40], b"\x00" * 8),
    "ndarray-object-dtype": _ndarray("|O", [1], b"\x00" * 8),
    "ndarray-buffer-index-out-of-range": _ndarray("<f8", [4], 7),
}
#: Chunk rows edited after a good save: what they declare is not what the pack holds.
ROWS = {
    "chunk-row-stored_size-2**40": "UPDATE chunks SET stored_size = 1 << 40 WHERE pack IS NOT NULL",
    "chunk-row-pack_offset-2**62": "UPDATE chunks SET pack_offset = 1 << 62 WHERE pack IS NOT NULL",
}
CASES = [
    *SKELETONS,
    *ROWS,
    "payload-zstd-bomb-1GiB",
    "payload-and-size-declare-2**40",
    "chunk-zstd-bomb-1GiB",
    "manifest-declares-1GiB-buffer",
    "manifest-digest-is-a-1G-int",
]


def plant(store: str, case: str) -> str:
    """Commit one hostile record (valid checksum) after a good one; return its id."""
    import msgpack
    import zstandard

    import ckptlite
    from ckptlite import chunking
    from ckptlite.types import StoredChunk, StoredRecord

    mgr = ckptlite.open(store, durability="none")
    good = mgr.save("bomb", {"ok": 1})
    if case in ROWS:  # a real chunk in a pack, then its row says otherwise
        cp = mgr.save("bomb", {"r": random.Random(7).randbytes(300_000)})
        with mgr.backend.db.write() as conn:  # type: ignore[attr-defined]
            conn.execute(ROWS[case])
        mgr.close()
        return cp.id
    size = 1000
    manifest: list[Any] = []
    digests: tuple[str, ...] = ()
    payload = b"\x00" + msgpack.packb({"ok": 2})
    if case in SKELETONS:
        skel = SKELETONS[case] if SKELETONS[case] is not None else _nested_tuples(20_000)
        payload = b"\x00" + skel
    elif case == "payload-zstd-bomb-1GiB":
        payload = b"\x01" + _zstd_bomb(GIB)
    elif case == "payload-and-size-declare-2**40":
        # A 55-byte frame whose header claims 2**40 bytes, and a record that agrees.
        cobj = zstandard.ZstdCompressor(write_content_size=True).compressobj(size=1 << 40)
        payload, size = b"\x01" + cobj.compress(bytes(1 << 20)), 1 << 40
    elif case == "chunk-zstd-bomb-1GiB":
        d = "ab" * 32
        mgr.backend.write_chunks([StoredChunk(d, 1000, chunking.CODEC_ZSTD, _zstd_bomb(GIB))])
        manifest, digests = [[(bytes.fromhex(d), 1000)]], (d,)
    elif case == "manifest-declares-1GiB-buffer":
        d = "cd" * 32
        mgr.backend.write_chunks([StoredChunk(d, GIB, chunking.CODEC_ZSTD, _zstd_bomb(GIB))])
        manifest, digests = [[(bytes.fromhex(d), GIB)]], (d,)
    elif case == "manifest-digest-is-a-1G-int":
        d = "ef" * 32
        mgr.backend.write_chunks([StoredChunk(d, 1000, chunking.CODEC_RAW, b"\x00" * 1000)])
        manifest, digests = [[(10**9, 1000)]], (d,)
    manifest_bytes = msgpack.packb(manifest, use_bin_type=True)
    cp = good.replace(
        id=ckptlite.generate_checkpoint_id(good.level),
        size=size,
        checksum=chunking.record_checksum(payload, manifest_bytes, mgr.hash_name),
    )
    mgr.backend.commit(StoredRecord(cp, payload, manifest_bytes, digests))
    mgr.close()
    return cp.id


def child(store: str, case: str) -> None:
    """Plant, then load in this fresh process and report error type and RSS growth."""
    import gc

    import ckptlite

    cid = plant(store, case)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {}
    with ckptlite.open(store, durability="none") as mgr:
        try:
            mgr.load(cid)
            out["load"] = "no error"
        except ckptlite.CkptliteError as e:
            out["load"] = type(e).__name__
        hit = mgr.load_latest("bomb")
        out["fallback"] = hit is not None and hit[1] == {"ok": 1}
        # verify checks stored bytes against their checksums (these match: the
        # record was planted whole); it must finish, bounded, naming nothing else.
        out["verify"] = set(mgr.verify(full=True).corrupted) <= {cid}
        # sync reads and checks every chunk it copies: bounded too, typed.
        with ckptlite.open("memory://") as other:
            try:
                report = ckptlite.sync(mgr, other)
                out["sync"] = "ok" if report.ok else "refused"
            except ckptlite.CkptliteError as e:
                out["sync"] = type(e).__name__
    out["rss_growth_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps(out))


@pytest.mark.parametrize("case", CASES)
def test_hostile_record_gives_typed_error_with_bounded_memory(tmp_path: Path, case: str) -> None:
    from fault_harness import child_env

    r = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "store"), case],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["load"] == "CorruptCheckpointError", out
    assert out["fallback"] and out["verify"], out
    assert out["sync"] in ("ok", "refused"), out
    assert out["rss_growth_kb"] < RSS_BOUND_KB, out


def test_nesting_limit_is_the_same_for_save_and_load(tmp_path: Path) -> None:
    """What save accepts, load reads back: the nesting limit is checked on both sides."""
    import ckptlite
    from ckptlite.codec import MAX_NESTING

    ok: Any = "leaf"
    for _ in range(MAX_NESTING):
        ok = (ok,)
    with ckptlite.open(tmp_path / "store", durability="none") as mgr:
        cp = mgr.save("deep", ok)
        assert mgr.load(cp.id) == ok
        with pytest.raises(ckptlite.UnsupportedTypeError):
            mgr.save("deep", (ok,))
        assert len(mgr.list()) == 1


def test_the_backend_bound_is_the_chunk_bound() -> None:
    """The local backend checks chunk rows against chunking's bound (it cannot import it)."""
    from ckptlite import chunking
    from ckptlite.backends import _local_schema

    assert _local_schema.MAX_CHUNK == chunking.MAX_CHUNK


if __name__ == "__main__":
    sys.setrecursionlimit(1000)  # the default; deep nesting must not need more
    child(sys.argv[1], sys.argv[2])
