"""Paths given by callers, and the OS errors met on them, as ckptlite's typed errors.

A store path, a backup destination or an archive name reaches ``open()`` as a
caller's value: a NUL byte, ``~nouser``, bytes that are not UTF-8 (SQLite
names files in UTF-8) or a wrong type must be a typed error, never a
``ValueError`` or ``RuntimeError`` from deep inside pathlib.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import (
    CkptliteError,
    InvalidInputError,
    ReadOnlyStoreError,
    StoreError,
    StoreFullError,
    StoreIOError,
)

__all__ = ["os_error", "to_path"]

_BAD_PATH = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EINVAL,
}


def to_path(value: object, what: str, error: type[CkptliteError] = InvalidInputError) -> Path:
    """Return ``value`` (str or path-like) as a Path with ``~`` expanded.

    Raises:
        error: not a path, empty, a NUL byte, not UTF-8, or an unknown ``~user``.
    """
    if not isinstance(value, str | os.PathLike):
        raise error(f"{what} must be a path, not {value!r}")
    raw = os.fspath(value)
    text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    hint = "Give an absolute or relative directory path."
    if not text:
        raise error(f"{what} is empty", hint=hint)
    if "\0" in text:
        raise error(f"{what} contains a NUL byte: {text!r}", hint=hint)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"{what} is not valid UTF-8: {text!r}",
            hint="SQLite names its files in UTF-8: rename the directory, or pick another.",
        ) from None
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise error(
            f"{what}: no home directory for {text.split(os.sep, 1)[0]!r}",
            hint="Check the user name after ~, or give the full path.",
        ) from None


def os_error(
    e: OSError, what: str, bad_path: type[CkptliteError] = InvalidInputError
) -> CkptliteError:
    """Return the typed error for ``e``, met while ``what``; ``bad_path`` for path mistakes."""
    n = e.errno
    reason = e.strerror or str(e)
    if n in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"{what}: the disk is full ({reason})")
    if n == errno.EIO:
        return StoreIOError(f"{what}: I/O error ({reason})")
    if n == errno.EROFS:
        return ReadOnlyStoreError(
            f"{what}: the file system is read-only",
            hint="Pick a directory on a writable disk; open an existing store there with "
            "readonly=True (`--readonly`) to read it.",
        )
    if n in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"{what}: permission denied",
            hint="Check the owner and mode of the directory (ls -ld), or pick another one.",
        )
    if n in _BAD_PATH:
        return bad_path(f"{what}: {reason}", hint="Check the path and try again.")
    return StoreError(f"{what}: {reason}")
