"""Per-thread connections that are closed when their thread ends.

CPython frees a thread's ``threading.local`` values as the thread finishes
(before ``join()`` returns). A ``ThreadOwner`` kept there closes the thread's
connection then: short-lived threads would otherwise each leave one open (and
its descriptors) until the whole pool is closed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadOwner"]


class ThreadOwner:
    """Close ``conn`` (with ``close``) when the thread-local storage holding this ends.

    ``conns`` is the pool's list of open connections, guarded by ``lock``: a
    connection no longer in it (taken by the pool's ``close()``, or by a fork
    which must never close the parent's) is left alone. In another process
    (after fork) the connection goes to ``inherited`` instead, so it is never
    garbage-collected, and so never closed, there.
    """

    __slots__ = ("close", "conn", "conns", "inherited", "lock", "pid")

    def __init__(
        self,
        conn: Any,
        conns: list[Any],
        lock: threading.Lock,
        close: Callable[[Any], None],
        inherited: list[Any],
    ) -> None:
        self.conn, self.conns, self.lock, self.close = conn, conns, lock, close
        self.inherited, self.pid = inherited, os.getpid()

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter exit, module globals may be gone already.
        try:  # noqa: SIM105
            self._release()
        except Exception:
            pass

    def _release(self) -> None:
        if os.getpid() != self.pid:
            self.inherited.append(self.conn)
            return
        with self.lock:
            for i, c in enumerate(self.conns):
                if c is self.conn:
                    del self.conns[i]
                    break
            else:
                return
        self.close(self.conn)
