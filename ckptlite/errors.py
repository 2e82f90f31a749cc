"""Errors raised by ckptlite: one root, each with context and a ``.hint``.

::

    CkptliteError
    ├── CheckpointNotFoundError      (also KeyError)
    ├── RunNotFoundError             (also KeyError) no run with that id
    ├── CorruptCheckpointError       stored bytes fail verification
    ├── UnsupportedTypeError         (also TypeError) the codec cannot encode a value
    ├── PickleNotAllowedError        a pickled value met allow_pickle=False
    ├── InvalidInputError            (also ValueError) a bad argument, store unchanged
    ├── StoreError                   the store itself cannot do the operation
    │   ├── StoreLockedError         busy past the timeout, or a lock is held
    │   ├── StoreFullError           ENOSPC / EDQUOT
    │   ├── StoreIOError             an I/O error (EIO, a failed fsync)
    │   ├── MissingChunksError       a record would reference chunks the store lacks
    │   ├── StoreLayoutError         a symlink or foreign file where the store keeps its own
    │   ├── ForkedStoreError         a store used across fork() without reopening
    │   └── ReadOnlyStoreError       a write to a store opened read-only (or on a read-only disk)
    ├── ConfigError                  bad URL, option or environment
    ├── MigrationError               schema version too new / broken migration
    ├── LegacyFormatError            a legacy checkpoint cannot be read
    │   └── UnsafePickleError        a legacy pickle names a class outside the allow-list
    └── SyncError                    sync between two stores failed

The CLI maps each class to an exit code in one place (``ckptlite.cli``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointNotFoundError",
    "CkptliteError",
    "ConfigError",
    "CorruptCheckpointError",
    "ForkedStoreError",
    "InvalidInputError",
    "LegacyFormatError",
    "MigrationError",
    "MissingChunksError",
    "PickleNotAllowedError",
    "ReadOnlyStoreError",
    "RunNotFoundError",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreLayoutError",
    "StoreLockedError",
    "SyncError",
    "UnsafePickleError",
    "UnsupportedTypeError",
]


class CkptliteError(Exception):
    """Root of every error ckptlite raises on purpose.

    ``hint`` says what to do about it. The facts are typed attributes, None when
    they do not apply: ``checkpoint_id``, ``digest`` (one chunk), ``digests`` (every
    chunk concerned), ``path`` (relative to the store, or a user's path) and
    ``run_id``. ``context`` is the same facts as a dict (those that are set).
    """

    default_hint = "See the ckptlite README."

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        checkpoint_id: str | None = None,
        digest: str | None = None,
        digests: tuple[str, ...] | None = None,
        path: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.checkpoint_id = checkpoint_id
        self.digest = digest
        self.digests = digests
        self.path = path
        self.run_id = run_id
        # The hint is a note, not part of str(): a traceback shows it once, and whoever
        # prints the message and then the hint (the CLI does) does not repeat it.
        self.add_note(f"hint: {self.hint}")

    @property
    def context(self) -> dict[str, Any]:
        """Return the facts that are set, by name (a read-only view of the attributes)."""
        names = ("checkpoint_id", "digest", "digests", "path", "run_id", *self._extra)
        return {n: v for n in names if (v := getattr(self, n)) is not None}

    _extra: tuple[str, ...] = ()

    def facts(self) -> dict[str, Any]:
        """Return the base facts as keyword arguments, to raise a wrapping error with them."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "digest": self.digest,
            "digests": self.digests,
            "path": self.path,
            "run_id": self.run_id,
        }

    def __str__(self) -> str:
        return self.message


class CheckpointNotFoundError(CkptliteError, KeyError):
    default_hint = "List what exists with `ckptlite ls` or mgr.list()."

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return CkptliteError.__str__(self)


class RunNotFoundError(CkptliteError, KeyError):
    default_hint = "List the runs with mgr.list_runs(process_id)."

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return CkptliteError.__str__(self)


class CorruptCheckpointError(CkptliteError):
    default_hint = (
        "The stored bytes changed since they were written. Run `ckptlite verify --full`; "
        "load an earlier checkpoint with load_latest(), or restore the store from a backup."
    )


class UnsupportedTypeError(CkptliteError, TypeError):
    """The codec has no encoding for a value; ``type_name`` names its type."""

    _extra = ("type_name",)

    def __init__(self, message: str, *, type_name: str | None = None, **facts: Any) -> None:
        super().__init__(message, **facts)
        self.type_name = type_name

    default_hint = (
        "Convert the value to a supported type (see the README's 'What a state may hold': "
        "builtins and containers, datetime/timedelta, UUID, Decimal, paths, numpy (masked) "
        "arrays, pandas and xarray values), or open the store with allow_pickle=True if you "
        "trust everyone who can write to it."
    )


class PickleNotAllowedError(CkptliteError):
    default_hint = (
        "This checkpoint holds pickled values. Open the store with allow_pickle=True "
        "only if you trust whoever wrote it: unpickling runs code."
    )


class InvalidInputError(CkptliteError, ValueError):
    default_hint = "Fix the argument and try again; the store was not changed."


class StoreError(CkptliteError):
    default_hint = "Check the store's disk and permissions, then retry."


class StoreLockedError(StoreError):
    default_hint = (
        "Another process holds the store's write lock. Retry later, or raise busy_timeout."
    )


class StoreFullError(StoreError):
    default_hint = (
        "The disk is full. Free space (run `ckptlite gc` and `ckptlite prune`), then retry; "
        "earlier checkpoints are intact."
    )


class StoreIOError(StoreError):
    default_hint = (
        "The disk reported an I/O error; nothing was committed. Check the device "
        "(dmesg, SMART) and retry."
    )


class MissingChunksError(StoreError):
    """A commit referenced chunks that are not (or no longer) stored; ``digests`` lists them.

    ``save`` rewrites them and retries, so callers only see this from a backend.
    """

    default_hint = "Write the chunks again, then retry the commit."

    def __init__(self, message: str, *, digests: tuple[str, ...], **facts: Any) -> None:
        super().__init__(message, digests=tuple(digests), **facts)
        self.digests: tuple[str, ...] = tuple(digests)


class StoreLayoutError(StoreError):
    """A symlink, or a file of the wrong type, is where the store keeps its own; never followed.

    ``path`` names it, relative to the store directory.
    """

    default_hint = (
        "ckptlite never puts a symlink in a store, and never follows one: look at what it "
        "points to, move it out of the store (restore the real directory or file from a "
        "backup), then run `ckptlite verify --full`."
    )


class ForkedStoreError(StoreError):
    default_hint = "Open a new manager in the child process after fork()."


class ReadOnlyStoreError(StoreError):
    default_hint = (
        "The store was opened with readonly=True (`--readonly`), or its disk or directory "
        "is read-only: it can be read, not changed. Open a writable copy to change it."
    )


class ConfigError(CkptliteError):
    default_hint = "Check the store URL, the options and $CKPTLITE_URL / $CKPTLITE_HOME."


class MigrationError(CkptliteError):
    default_hint = (
        "The store was written by a different ckptlite version. Upgrade ckptlite, or "
        "restore the store from a backup."
    )


class LegacyFormatError(CkptliteError):
    default_hint = "Check the path and --format; see the README's migration guide."


class UnsafePickleError(LegacyFormatError):
    """A legacy pickle refers to ``class_name``, which the restricted unpickler refuses."""

    default_hint = (
        "The pickle names a class outside the allow-list (builtins, numpy, pandas and the "
        "legacy project's classes); it was not loaded. If you trust its author, load it "
        "yourself and save the state with ckptlite."
    )

    _extra = ("class_name",)

    def __init__(self, message: str, *, class_name: str, **facts: Any) -> None:
        super().__init__(message, **facts)
        self.class_name = class_name


class SyncError(CkptliteError):
    """A sync failed part-way; ``report`` (a SyncReport, or None) holds what was done."""

    default_hint = "Rerun the sync: it resumes where it stopped and copies nothing twice."
    _extra = ("report",)

    def __init__(self, message: str, *, report: Any = None, **facts: Any) -> None:
        super().__init__(message, **facts)
        self.report = report
