"""Background saves: a bounded queue, one writer thread, errors that are never lost.

``save_async`` validates and encodes the state in the caller's thread and copies
its large buffers, so later changes to the state are not seen; only the writing
(chunking, compression, commit, retention) happens in the background. One
writer thread keeps saves in submission order. At most ``max_pending`` saves
wait at a time: one more blocks the caller until a slot frees (backpressure).

A failed save sets its future's exception *and* is kept for the next
``flush()``, which raises it: an error is raised even when nobody looks at the
future. Pending saves are written before the interpreter exits (errors then go
to stderr) and on ``close()``.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from . import codec
from .policies import CheckpointPolicy
from .types import Checkpoint

__all__ = ["AsyncSaver", "Prepare", "Write"]

#: Checks a save's arguments and encodes its state, in the caller's thread:
#: ``prepare(process_id, state, **record) -> (checkpoint, encoded state)``.
Prepare = Callable[..., tuple[Checkpoint, codec.EncodedState]]
#: Writes an encoded save and prunes its slot (the manager's save path after encoding).
Write = Callable[[Checkpoint, codec.EncodedState, CheckpointPolicy | None], Checkpoint]

_live: weakref.WeakSet[AsyncSaver] = weakref.WeakSet()


def _flush_all_at_exit() -> None:
    for saver in list(_live):
        try:
            saver.flush()
        except BaseException as e:  # the interpreter is exiting: report, do not hide
            print("ckptlite: an asynchronous save failed before exit:", file=sys.stderr)
            traceback.print_exception(e, file=sys.stderr)


# Run before concurrent.futures' own exit hook, while pools still take work
# (a save hashes its chunks on the manager's pool).
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_flush_all_at_exit)
else:  # pragma: no cover - CPython has had it since 3.9
    import atexit

    atexit.register(_flush_all_at_exit)


class AsyncSaver:
    """The save_async queue of one manager, which passes in its ``prepare`` and ``write``."""

    def __init__(self, prepare: Prepare, write: Write, max_pending: int = 8) -> None:
        self._prepare = prepare
        self._write_save = write
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._pending: set[Future[Checkpoint]] = set()
        self._errors: list[BaseException] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        _live.add(self)

    def _after_fork(self) -> None:
        # A child inherits the parent's queue state but not its writer thread: the
        # parent's pending saves are the parent's to write (and to report).
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._slots = threading.BoundedSemaphore(self.max_pending)
            self._pending = set()
            self._errors = []
            self._pool = None
            self._pid = os.getpid()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="ckptlite-async")
            return self._pool

    def submit(
        self,
        process_id: str,
        state: Any,
        *,
        policy: CheckpointPolicy | None,
        **record: Any,
    ) -> Future[Checkpoint]:
        """Snapshot ``state`` now and queue its save; block while the queue is full."""
        self._after_fork()
        self._slots.acquire()
        released = False
        try:
            try:
                cp, encoded = self._prepare(process_id, state, **record)
                # The snapshot: large buffers are views into the caller's objects.
                encoded = codec.EncodedState(
                    encoded.skeleton,
                    tuple(memoryview(bytes(b)) for b in encoded.buffers),
                    encoded.pickled,
                    encoded.itemsizes,
                )
            except Exception as e:
                self._slots.release()
                released = True
                failed: Future[Checkpoint] = Future()
                failed.set_exception(e)
                with self._lock:
                    self._errors.append(e)
                return failed
            fut = self._executor().submit(self._write, cp, encoded, policy)
        except BaseException:
            if not released:
                self._slots.release()
            raise
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)
        return fut

    def _write(
        self, cp: Checkpoint, encoded: codec.EncodedState, policy: CheckpointPolicy | None
    ) -> Checkpoint:
        try:
            return self._write_save(cp, encoded, policy)
        finally:
            self._slots.release()

    def _done(self, fut: Future[Checkpoint]) -> None:
        err = fut.exception() if not fut.cancelled() else None
        with self._lock:
            self._pending.discard(fut)
            if err is not None:
                self._errors.append(err)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every queued save; raise the first error since the last flush.

        In a child process after fork(), only the child's own saves count.

        Raises:
            CkptliteError (or the save's own error): a queued save failed; a note
                tells how many more failed. The errors are cleared once raised.
            TimeoutError: saves are still pending after ``timeout`` seconds.
        """
        self._after_fork()
        with self._lock:
            pending = set(self._pending)
        if pending:
            _, not_done = wait_futures(pending, timeout=timeout)
            if not_done:
                raise TimeoutError(f"{len(not_done)} asynchronous save(s) still pending")
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.add_note(f"{len(errors) - 1} more asynchronous save(s) failed")
            raise first

    def close(self) -> None:
        """Flush, then stop the writer thread.

        Raises:
            CkptliteError: as ``flush``.
        """
        try:
            self.flush()
        finally:
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)
            _live.discard(self)
