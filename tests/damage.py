"""Helpers that damage real files (importable by name from any test directory)."""

from __future__ import annotations

from pathlib import Path


def flip_bit(path: Path, offset: int = 0) -> None:
    """Flip one bit of a real file in place."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def chunk_span(store: Path, digest: str) -> tuple[Path, int, int]:
    """Return (file, offset, length) of where a chunk's stored bytes lie in a local store.

    A chunk lives in a pack file at an offset, or (stores written before packs)
    alone in ``blobs/<2 hex>/<digest>``.
    """
    import apsw

    conn = apsw.Connection(str(store / "ckptlite.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        row = conn.execute(
            "SELECT pack, pack_offset, stored_size, data IS NULL FROM chunks WHERE digest=?",
            (digest,),
        ).fetchone()
    finally:
        conn.close()
    assert row is not None, f"chunk {digest} has no row"
    pack, offset, size, in_file = row
    assert in_file, f"chunk {digest} is inline in the database, not in a file"
    if pack is None:
        return store / "blobs" / digest[:2] / digest, 0, size
    return store / "blobs" / "packs" / pack, offset, size


def stored_files(store: Path) -> list[Path]:
    """Return every file holding chunks: pack files, then single chunk files."""
    packs = sorted(p for p in (store / "blobs" / "packs").glob("*") if p.is_file())
    return packs + sorted(p for p in (store / "blobs").glob("??/*") if p.is_file())
