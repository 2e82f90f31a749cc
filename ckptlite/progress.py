"""A tiny progress display for long commands: drawn only when the stream is a terminal.

With a known total it draws a bar (``verify  [#####.....] 512/1024``); without
one, a spinner with the elapsed time. Off a terminal it prints nothing, so
scripts and ``--json`` output stay clean.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

_SPIN = "|/-\\"


class Progress:
    """Draw progress of one task on ``stream`` (stderr) while used as a context manager.

    ``update(done, total)`` is safe to call from any thread; pass it where the
    library takes a ``progress`` callback.

    >>> import io
    >>> with Progress("copy", stream=io.StringIO()) as p:  # not a terminal: draws nothing
    ...     p.update(1, 2)
    """

    def __init__(
        self, label: str, *, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self.done = 0
        self.total: int | None = None
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._width = 0

    def update(self, done: int, total: int | None = None) -> None:
        """Record progress; the display refreshes a few times a second."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        with self._lock:
            done, total = self.done, self.total
        if total:
            filled = min(20, 20 * done // total)
            bar = "#" * filled + "." * (20 - filled)
            return f"{self.label} [{bar}] {done}/{total} {elapsed:.0f}s"
        spin = _SPIN[int(elapsed * 8) % len(_SPIN)]
        return f"{self.label} {spin} {elapsed:.1f}s"

    def _draw(self, line: str) -> None:
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def _run(self) -> None:
        # A bar is drawn again only when its count moves (a finished "8/8" once, not on
        # every tick while the command writes its last bytes); a spinner spins.
        drawn: tuple[int, int | None] | None = None
        while not self._stop.wait(0.125):
            with self._lock:
                now = (self.done, self.total)
            if now[1] and now == drawn:
                continue
            drawn = now
            self._draw(self._line())

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="ckptlite-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._draw("")  # erase the line so later output starts clean
            self.stream.write("\r")
            self.stream.flush()
