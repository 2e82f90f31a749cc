"""Named crash points for the fault-injection tests; free when unused.

Set ``CKPTLITE_CRASH_AT=NAME`` (or ``NAME@N`` for the N-th time it is reached)
before the process imports ckptlite, and the process SIGKILLs itself at that
point: no cleanup, no ``finally``, exactly like a power cut of the process.
The variable is read once, at import; unset, ``point`` is one comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "RUN_POINTS", "armed", "point"]

#: Every crash point the core calls, in write-path order.
POINTS = (
    "blob.after_write",  # a chunk's bytes in the temp pack file, not yet fsynced
    "blob.after_fsync",  # temp file durable, not yet renamed
    "blob.after_rename",  # pack (or chunk) file in place, its rows not yet inserted
    "pack.after_append",  # chunk bytes appended to an open pack, not yet fdatasynced
    "pack.after_sync",  # appended bytes durable, their rows not yet committed
    "commit.in_transaction",  # record inserted, COMMIT not yet run
    "commit.after_commit",  # committed, save() has not returned
    "gc.after_delete",  # chunk rows deleted and committed, files not yet unlinked
    "gc.after_repack",  # live chunks moved to a new pack and committed, old packs not unlinked
)
#: Crash points of runs shared by many workers (runs.py, the backends' ledgers).
RUN_POINTS = (
    "claim.in_transaction",  # batches claimed (rows updated), COMMIT not yet run
)


def _parse(spec: str | None) -> tuple[str | None, int]:
    if not spec:
        return None, 0
    name, _, nth = spec.partition("@")
    return name, int(nth or 1)


_CRASH_AT, _NTH = _parse(os.environ.get("CKPTLITE_CRASH_AT"))
_hits = 0


def point(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed crash point (else do nothing)."""
    global _hits
    if _CRASH_AT is not None and name == _CRASH_AT:
        _hits += 1
        if _hits >= _NTH:
            os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """Tell whether ``name`` is the armed crash point (a caller may keep a transaction open)."""
    return name == _CRASH_AT
