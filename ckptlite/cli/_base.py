"""Shared pieces of the command line: exit codes, the handler context, helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from .. import config as _config
from ..errors import (
    CheckpointNotFoundError,
    CkptliteError,
    ConfigError,
    InvalidInputError,
    MigrationError,
    PickleNotAllowedError,
    ReadOnlyStoreError,
    RunNotFoundError,
)
from ..manager import CheckpointManager, open_store, store_is_read_only
from ..progress import Progress
from ..types import Checkpoint, Status
from ..views import jsonable

__all__ = [
    "EXIT_CODES",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "Context",
    "exit_code",
    "new_command",
]

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

#: The one place errors become exit codes: first matching class wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (InvalidInputError, EXIT_USAGE),
    (CheckpointNotFoundError, EXIT_USAGE),
    (RunNotFoundError, EXIT_USAGE),
    (PickleNotAllowedError, EXIT_USAGE),
    (MigrationError, EXIT_USAGE),
    (ReadOnlyStoreError, EXIT_USAGE),  # a write asked of a store that cannot take one
    (CkptliteError, EXIT_PROBLEMS),
)


def exit_code(exc: BaseException) -> int:
    """Return the exit code for an error (1 for anything unexpected)."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_PROBLEMS)


@dataclass
class Context:
    """What a command handler gets: parsed args, output streams and helpers."""

    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def terminal(self) -> bool:
        """Tell whether the output goes to a terminal (a person reads it)."""
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty())

    def settings(self) -> _config.Settings:
        """Return the effective configuration, with this command's flags on top."""
        flags = {"url": (getattr(self.args, "store", None), "--store")}
        flags.update(getattr(self.args, "config_flags", lambda a: {})(self.args))
        return _config.load(flags)

    def open(
        self, *, create: bool = False, allow_pickle: bool = False, reads: bool = False
    ) -> CheckpointManager:
        """Open the selected store; an absent local store is an error unless ``create``.

        ``--readonly`` opens it read-only; so does a command that only ``reads`` when
        the store cannot be written (a read-only mount, someone else's directory).
        """
        url = self.settings().url
        readonly = bool(getattr(self.args, "readonly", False))
        if reads and not readonly:
            readonly = store_is_read_only(url)
        return open_store(url, create=create, allow_pickle=allow_pickle, readonly=readonly)

    def progress(self, label: str) -> Progress:
        """Return a progress display on stderr (silent unless stderr is a terminal)."""
        return Progress(label, stream=self.err)

    def emit(self, data: Any, text: Iterable[str] | str) -> None:
        """Print ``data`` as JSON with ``--json``, else the text lines."""
        if self.json:
            self.out.write(json.dumps(jsonable(data), indent=2, ensure_ascii=False) + "\n")
        else:
            lines = [text] if isinstance(text, str) else list(text)
            self.out.write("".join(line + "\n" for line in lines))


# -- shared parsing helpers -----------------------------------------------------


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults let the options come before or after the command name
    # without the subparser's defaults overwriting what the main parser saw.
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument("--store", metavar="URL", help="store URL or directory (default: config)")
    g.add_argument("--json", action="store_true", help="print JSON (schema in the README)")
    g.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    g.add_argument(
        "--readonly",
        action="store_true",
        help="open the store read-only: write nothing (automatic for reading commands "
        "on a store that cannot be written)",
    )
    return p


def new_command(
    sub: Any, name: str, help: str, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    """Create a subcommand parser with the global options and an ``Example`` in its help."""
    return sub.add_parser(  # type: ignore[no-any-return]
        name,
        help=help,
        description=description or help,
        epilog=f"Example:\n  {example}",
        parents=[_global_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _since(text: str) -> datetime:
    """Parse --since: an ISO date/time (naive = local time) or an age like 2h, 3d."""
    try:
        return datetime.now().astimezone() - _config.parse_duration(text)
    except (ConfigError, OverflowError):  # OverflowError: an age beyond year 1
        pass
    try:
        return datetime.fromisoformat(text).astimezone()
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"not a time or age: {text!r} (use e.g. 2026-11-01, 2026-11-01T12:00Z or 3d)"
        ) from None


def _human(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _when(cp: Checkpoint) -> str:
    return cp.created_at.strftime("%Y-%m-%d %H:%M:%SZ")


def _label(cp: Checkpoint) -> str:
    prog = f"  {cp.progress[0]}/{cp.progress[1]}" if cp.progress else ""
    status = "" if cp.status == Status.VALID else f"  [{cp.status.value}]"
    return f"{cp.level.value} {cp.name or '-'}  {cp.id}  {_human(cp.size)}{prog}{status}"
