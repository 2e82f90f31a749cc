"""Manifests and chunk checks (issue 14): what a load verifies each chunk's bytes against.

A manifest entry holds a chunk's address (its digest), raw size and, since
issue 14, its check: XXH3-128 of the raw bytes, taken when they were hashed for
the address. A load compares the check (~0.03 ms per MiB) instead of hashing the
address again (BLAKE3 ~0.2 ms per MiB); ``verify(full=True)`` still recomputes
every address. Manifests written before have no checks and still load, checked
by their addresses.
"""

from __future__ import annotations

import msgpack
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from ckptlite import chunking
from ckptlite.errors import CorruptCheckpointError
from ckptlite.types import StoredChunk

_DIGESTS = st.binary(min_size=32, max_size=32).map(bytes.hex)
_MANIFESTS = st.lists(
    st.lists(st.tuples(_DIGESTS, st.integers(0, chunking.MAX_CHUNK)), max_size=6), max_size=4
)


@given(manifest=_MANIFESTS, data=st.data())
def test_manifests_round_trip_with_and_without_checks(
    manifest: chunking.Manifest, data: st.DataObject
) -> None:
    digests = {d for buf in manifest for d, _ in buf}
    checks = {d: data.draw(st.binary(min_size=16, max_size=16)) for d in digests}
    some = {d: c for d, c in checks.items() if data.draw(st.booleans())}
    for given_checks in (checks, some, {}):
        packed = chunking.pack_manifest(manifest, given_checks)
        assert chunking.unpack_manifest(packed) == manifest
        assert chunking.unpack_checked(packed) == (manifest, given_checks)
    # A manifest from before checks: two-item entries.
    old = msgpack.packb([[[bytes.fromhex(d), s] for d, s in buf] for buf in manifest])
    assert chunking.unpack_checked(old) == (manifest, {})


@pytest.mark.parametrize("check", [b"x" * 15, b"x" * 17, "a" * 16, 5, None])
def test_a_malformed_check_is_a_corrupt_manifest(check: object) -> None:
    bad = msgpack.packb([[[b"\x01" * 32, 10, check]]], use_bin_type=True)
    with pytest.raises(CorruptCheckpointError, match="malformed"):
        chunking.unpack_checked(bad)


def test_restore_compares_the_check_when_given_and_the_digest_otherwise() -> None:
    raw = bytes(range(256)) * 64
    digest = chunking.digest_of(raw, "blake3")
    check = chunking.check_of(raw)
    assert check == xxhash.xxh3_128_digest(raw) and len(check) == 16
    chunk = StoredChunk(digest, len(raw), chunking.CODEC_RAW, raw)
    out = memoryview(bytearray(len(raw)))
    chunking.restore_chunk_into(chunk, out, "blake3", check)
    assert out == raw
    chunking.restore_chunk_into(chunk, out, "blake3")
    with pytest.raises(CorruptCheckpointError, match="does not match its check") as e:
        chunking.restore_chunk_into(chunk, out, "blake3", chunking.check_of(raw[1:]))
    assert e.value.digest == digest
    damaged = StoredChunk(digest, len(raw), chunking.CODEC_RAW, b"\xff" + raw[1:])
    with pytest.raises(CorruptCheckpointError, match="does not match its check"):
        chunking.restore_chunk_into(damaged, out, "blake3", check)
    with pytest.raises(CorruptCheckpointError, match="does not match its digest"):
        chunking.restore_chunk_into(damaged, out, "blake3")
