"""Helpers that damage real files (importable by name from any test directory)."""

from __future__ import annotations

from pathlib import Path


def flip_bit(path: Path, offset: int = 0) -> None:
    """Flip one bit of a real file in place."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))
