"""The workers of a shared run: identity, liveness, the background thread (Heart).

A worker is one ``Run`` object: ``host:pid:random``, a node (machine and pid
namespace) so that pids are compared only where they mean something, and a lease
its heartbeat renews. The thread holds its run weakly and stops with it.
:func:`claim_count` sizes a worker's claims (pure).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING

from .errors import InvalidInputError
from .types import WorkerInfo, WorkerRecord

if TYPE_CHECKING:
    from .runs import Run

__all__ = [
    "CLAIM_AHEAD_S",
    "LIVE",
    "Heart",
    "alive",
    "check_lease",
    "claim_count",
    "new_worker",
    "node",
]

#: Seconds of a worker's own work it claims at once when others work too (claim_count).
CLAIM_AHEAD_S = 1.0
_LOOK_EVERY = 1.0  # seconds between looks at who is live while items are claimed
#: Runs (workers) alive in this process, by worker id: a worker of this pid that is
#: not here (or whose manager closed) is dead, whatever its lease says.
LIVE: weakref.WeakValueDictionary[str, Run] = weakref.WeakValueDictionary()


def node() -> str:
    """Name this machine and pid namespace: pids are compared only within one node.

    ``$CKPTLITE_NODE`` names it instead (then only workers of the same name are
    checked by pid; a test uses it to stand for another machine).
    """
    if os.environ.get("CKPTLITE_NODE"):
        return os.environ["CKPTLITE_NODE"]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, pidns = "", 0
    return f"{socket.gethostname()}/{boot}/{pidns}"


def new_worker(lease: float) -> WorkerInfo:
    host, pid = socket.gethostname(), os.getpid()
    return WorkerInfo(f"{host}:{pid}:{secrets.token_hex(4)}", host, pid, node(), lease)


def alive(w: WorkerRecord, node: str, waiting: bool = False) -> bool:
    """Tell whether a worker recorded live may still run (False: seen dead from here).

    ``waiting``: the caller waits for work others hold. Then a worker of this process
    counts only while a thread works for it (an items loop or a stage's compute): a Run
    kept but left idle (a loop stopped early, the run reopened with ``run_id=``) must
    not hold its batches from the others of this process, which would wait forever.
    Otherwise (joining, leaving) an open Run of this process is alive, idle or not:
    threads that joined together may not have started their loops yet.
    """
    if w.node != node:
        return True  # another machine: only its lease tells
    if w.pid == os.getpid():
        run = LIVE.get(w.worker_id)
        if run is None or getattr(run.manager, "_closed", False):
            return False
        return run._active > 0 or not waiting
    try:
        os.kill(w.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_lease(lease: float, what: str = "lease") -> float:
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease > 0:
        raise InvalidInputError(f"{what} must be a positive number of seconds, not {lease!r}")
    return float(lease)


class Heart(threading.Thread):
    """A worker's one background thread: leases, looks at who is live, and commits.

    Renews the worker's leases every lease/3 s and, while items are claimed, looks
    at who is live each second (it sizes the claims), here and not on the item path.
    On a store where a commit is round trips (PostgreSQL), it also commits the due
    mark batches when woken (``due``), so a worker holds one connection besides its
    own thread's: a commit waits at most for the beat or look under way. A failed
    commit leaves its marks queued (the next commit retries them) and is remembered:
    the item path then commits itself, and raises. Holds the run weakly (stops with
    it); ``stop`` ends it.
    """

    def __init__(self, run: Run, due: threading.Event) -> None:
        super().__init__(name=f"ckptlite-heartbeat-{run.id}", daemon=True)
        self._run = weakref.ref(run)
        self.stop = threading.Event()
        self.due = due

    def run(self) -> None:
        beat = look = time.monotonic()
        while True:
            r = self._run()
            if r is None:
                return
            every = r._beat_every
            now = time.monotonic()
            wait = max(0.0, beat + every - now)
            if r._active:
                wait = min(wait, max(0.0, look + _LOOK_EVERY - now))
            del r
            woke = self.due.wait(wait)
            r = self._run()
            if self.stop.is_set() or r is None or getattr(r.manager, "_closed", False):
                return
            if woke:
                self.due.clear()
                try:
                    with r._commit_lock:
                        r._commit_queued()
                except Exception as e:
                    r._bg_error = e
            # A lost connection or a busy store: the next beat retries.
            with contextlib.suppress(Exception):
                now = time.monotonic()
                if now >= beat + every:
                    beat = look = now
                    r._others = r.manager.backend.heartbeat(r.id, r.worker_id)
                elif r._active and now >= look + _LOOK_EVERY:
                    look = now
                    workers = r.manager.backend.list_workers(r.id)
                    r._others = sum(1 for w in workers if w.live and w.worker_id != r.worker_id)
            del r


def claim_count(prev: int, others: int, left: int, seg_s: float, lone_cap: int) -> int:
    """Return how many batches a worker claims next (one claim is one round trip).

    Alone: twice the last claim, at most ``lone_cap`` (a worker that joins later finds
    most of the group free). With ``others`` live: about ``CLAIM_AHEAD_S`` seconds of
    this worker's work (``seg_s`` a batch as measured, 0: not yet, one batch), and at
    most a 2*workers-th of the ``left`` batches, so the last claims shrink to one batch
    and the workers finish together (guided self-scheduling); 64 at most.

    >>> claim_count(1, 3, 130, 0.3, 2), claim_count(3, 3, 10, 0.3, 2), claim_count(1, 0, 130, 0, 2)
    (3, 1, 2)
    """
    if not others:
        return max(1, min(prev * 2, lone_cap))
    ahead = int(CLAIM_AHEAD_S / seg_s) if seg_s > 0 else 1
    return max(1, min(ahead, left // (2 * (others + 1)), 64))
