"""The ``ckptlite`` command line: parse, make one library call, render.

Every command takes the global options (``--store URL``, ``--json``, ``--debug``)
before or after its name. Exit codes: 0 ok, 1 problems found, 2 usage or
configuration error; the mapping from errors lives in ``EXIT_CODES`` only
(``cli/_base.py``). Commands live in ``inspect``, ``maintain`` and ``transfer``.

Adding a command (e.g. ``sync``, ``migrate``) takes two small edits: write a
function ``add_parser(sub) -> argparse.ArgumentParser`` that calls
``new_command(sub, name, help, example)``, adds its arguments and
``set_defaults(func=handler)`` where ``handler(ctx: Context) -> int``; then add
``("name", add_parser)`` to ``COMMANDS``. Use ``ctx.open()``, ``ctx.progress()``
and ``ctx.emit(json_data, text_lines)``. A command whose flags override settings
sets ``config_flags=fn`` too, ``fn(args) -> {key: (value, "--flag")}`` (see prune).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import CkptliteError
from ._base import (
    EXIT_CODES,
    EXIT_USAGE,
    Context,
    _global_options,
    exit_code,
    new_command,
)
from .inspect import _add_cat, _add_items, _add_ls, _add_runs, _add_show, _add_stats
from .maintain import (
    _add_backup,
    _add_config,
    _add_export,
    _add_gc,
    _add_import_archive,
    _add_prune,
    _add_rm,
    _add_verify,
)
from .remotes import _add_remote
from .serve import _add_ui
from .transfer import _add_export_legacy, _add_import, _add_migrate, _add_sync

__all__ = [
    "COMMANDS",
    "EXIT_CODES",
    "Context",
    "UsageError",
    "build_parser",
    "exit_code",
    "main",
    "new_command",
]


#: Every subcommand, in help order. Other modules' commands plug in here.
COMMANDS: list[tuple[str, Callable[[Any], argparse.ArgumentParser]]] = [
    ("ls", _add_ls),
    ("show", _add_show),
    ("cat", _add_cat),
    ("stats", _add_stats),
    ("runs", _add_runs),
    ("items", _add_items),
    ("verify", _add_verify),
    ("gc", _add_gc),
    ("prune", _add_prune),
    ("rm", _add_rm),
    ("backup", _add_backup),
    ("export", _add_export),
    ("import-archive", _add_import_archive),
    ("config", _add_config),
    ("migrate", _add_migrate),
    ("import", _add_import),
    ("export-legacy", _add_export_legacy),
    ("sync", _add_sync),
    ("remote", _add_remote),
    ("ui", _add_ui),
]


class UsageError(Exception):
    """A command line argparse rejects (exit code 2)."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message, self.usage = message, usage


class _Parser(argparse.ArgumentParser):
    # Subparsers are made with the parent's class, so every level raises instead
    # of exiting, and main() can report usage errors as JSON too.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser (every command in ``COMMANDS``)."""
    parser = _Parser(
        prog="ckptlite",
        description="Inspect, verify, prune and back up a ckptlite checkpoint store.",
        epilog="Example:\n  ckptlite --store ./ckpts ls --tree\n\n"
        "Exit codes: 0 ok, 1 problems found, 2 usage or configuration error.",
        parents=[_global_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ckptlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, add in COMMANDS:
        add(sub)
    return parser


def _report(ctx: Context, kind: str, message: str, hint: str, code: int) -> int:
    """Print an error (JSON on stdout with --json, else message and hint on stderr)."""
    if ctx.json:
        error = {"type": kind, "message": message, "hint": hint, "exit": code}
        ctx.out.write(json.dumps({"error": error}, indent=2, ensure_ascii=False) + "\n")
    else:
        ctx.err.write(f"ckptlite: error: {message}\n  hint: {hint}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (``ckptlite`` calls ``sys.exit`` on it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except UsageError as e:
        usage_ctx = Context(argparse.Namespace(json="--json" in argv))
        return _report(usage_ctx, "UsageError", e.message, e.usage.strip(), EXIT_USAGE)
    except (ValueError, OverflowError, TypeError) as e:  # a converter argparse does not catch
        if "--debug" in argv:
            traceback.print_exc()
        usage_ctx = Context(argparse.Namespace(json="--json" in argv))
        message = f"bad argument: {type(e).__name__}: {e}"
        return _report(usage_ctx, "UsageError", message, parser.format_usage().strip(), EXIT_USAGE)
    ctx = Context(args)
    try:
        return int(args.func(ctx))
    except KeyboardInterrupt:
        ctx.err.write("interrupted\n")
        return 130
    except Exception as e:
        if getattr(args, "debug", False):
            traceback.print_exc(file=ctx.err)
        if isinstance(e, CkptliteError):
            return _report(ctx, type(e).__name__, e.message, e.hint, exit_code(e))
        message = f"internal error: {type(e).__name__}: {e}"
        hint = "Rerun with --debug for the traceback, and report it."
        return _report(ctx, type(e).__name__, message, hint, exit_code(e))
