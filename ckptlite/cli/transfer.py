"""Commands that move checkpoints between stores: migrate, import, export-legacy, sync."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigError,
)
from ..manager import open_store
from ._base import (
    EXIT_OK,
    EXIT_PROBLEMS,
    Context,
    _human,
    new_command,
)


def _migrate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="read and check, write nothing")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read pickled payloads (restricted unpickler; only if you trust their author)",
    )
    p.add_argument(
        "--process", metavar="ID", help="process id for formats without one (tile, script)"
    )
    p.set_defaults(func=_migrate)


def _add_migrate(sub: Any) -> argparse.ArgumentParser:
    from ..legacy import FORMATS

    p = new_command(
        sub,
        "migrate",
        "import the legacy checkpoint systems' checkpoints",
        "ckptlite --store ./ckpts migrate ./checkpoints --trust-pickle --dry-run",
        description="Import every legacy checkpoint at PATH (a checkpoint directory or "
        "file) or DSN (postgresql://...), autodetecting the format; the source is only "
        "read. A rerun imports nothing twice. One report line per checkpoint: imported, "
        "already imported, would import (--dry-run) or failed (why).",
    )
    p.add_argument("source", metavar="PATH|DSN", help="legacy directory, file or DSN")
    p.add_argument("--format", choices=FORMATS, help="skip autodetection")
    _migrate_options(p)
    return p


def _add_import(sub: Any) -> argparse.ArgumentParser:
    from ..legacy import FORMATS

    p = new_command(
        sub,
        "import",
        "import one legacy format (migrate --format FORMAT)",
        "ckptlite import tile ./tile_checkpoint --trust-pickle --process geo-tiles",
    )
    p.add_argument("format", choices=FORMATS, help="legacy format")
    p.add_argument("source", metavar="PATH|DSN", help="legacy directory, file or DSN")
    _migrate_options(p)
    return p


def _migrate(ctx: Context) -> int:
    from ..legacy import MigrationEntry, migrate

    a = ctx.args
    decided = 0

    def show(entry: MigrationEntry) -> None:
        nonlocal decided
        decided += 1
        if ctx.json:  # the bar (stderr, terminals only) stands in for the lines
            bar.update(decided)
        else:  # one line per checkpoint as it is decided
            ctx.out.write(entry.line() + "\n")
            ctx.out.flush()

    opened: list[Any] = []

    def create() -> Any:  # the store is made on the first import, not before
        opened.append(ctx.open(create=True))
        return opened[-1]

    target: Any
    try:
        target = ctx.open(reads=a.dry_run)
        opened.append(target)
    except ConfigError:
        if a.dry_run:
            target = open_store("memory://")  # a dry run into a store that does not exist yet
            opened.append(target)
        else:
            target = create
    with contextlib.ExitStack() as stack, ctx.progress("migrate") as bar:
        stack.callback(lambda: [m.close() for m in opened])
        report = migrate(
            a.source,
            target,
            format=a.format,
            dry_run=a.dry_run,
            trust_pickle=a.trust_pickle,
            process_id=a.process,
            on_entry=show,
        )
    if ctx.json:
        ctx.emit(report.to_dict(), [])
    else:
        ctx.out.write("".join(line + "\n" for line in report.summary()))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _add_export_legacy(sub: Any) -> argparse.ArgumentParser:
    from ..legacy import EXPORT_FORMATS

    p = new_command(
        sub,
        "export-legacy",
        "write this store's checkpoints back in a legacy format (rollback)",
        "ckptlite --store ./ckpts export-legacy --format core ./checkpoints",
        description="Write the checkpoints as the legacy code wrote them, so it reads them "
        "again: core (registry.json + <id>/*.pkl.gz with checksums), pipeline "
        "(<experiment>/checkpoint_<stage>.json), script (checkpoint_<stage>.json), tile "
        "(the ProcessingCheckpoint pickle, one file per process) or postgres "
        "(pipeline_checkpoints rows at DEST, a DSN). Existing files are never overwritten "
        "with other content. One line per checkpoint: written, already there, skipped "
        "(why) or failed (why); what a format cannot hold is listed.",
    )
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="legacy format")
    p.add_argument("dest", metavar="DEST", help="folder to write into, or a DSN for postgres")
    p.add_argument("--process", metavar="ID", help="only this process")
    p.set_defaults(func=_export_legacy)
    return p


def _export_legacy(ctx: Context) -> int:
    from ..legacy import ExportEntry, export_legacy

    a = ctx.args

    def show(entry: ExportEntry) -> None:
        if not ctx.json:
            ctx.out.write(entry.line() + "\n")
            ctx.out.flush()

    with ctx.open(reads=True) as mgr:
        report = export_legacy(mgr, a.dest, format=a.format, process_id=a.process, on_entry=show)
    if ctx.json:
        ctx.emit(report.to_dict(), [])
    else:
        ctx.out.write("".join(line + "\n" for line in report.summary()))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _add_sync(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "sync",
        "copy checkpoints, chunks, runs and the ledger to or from another store",
        "ckptlite --store ./ckpts sync --to postgresql://user@db.example/ckpts",
        description="Copy what the other store lacks: --to URL pushes this store (--store "
        "or the default) there, --from URL pulls from there into this store. Resumes "
        "where the last sync stopped; a rerun copies nothing twice. Deletes and later "
        "status changes are not propagated. URL is a URL, a path (with a '/': ./new "
        "creates a directory), a remote's name (`ckptlite remote list`), or `postgres`: "
        "the server libpq's environment names (PGHOST, PGDATABASE, PGUSER, ~/.pgpass, "
        "PGSERVICE). Any other bare name is an error.",
    )
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", metavar="URL", help="copy this store into URL")
    way.add_argument("--from", dest="from_url", metavar="URL", help="copy URL into this store")
    p.add_argument("--process", metavar="ID", help="only this process (and its ancestors)")
    p.set_defaults(func=_sync)
    return p


def _sync(ctx: Context) -> int:
    from ..sync import sync

    a = ctx.args
    with contextlib.ExitStack() as stack:
        here: Any = ctx.settings().url
        if getattr(a, "readonly", False):  # a sync --from into it is then refused
            here = stack.enter_context(ctx.open())
        else:  # this store is a path or a URL, not a name (sync resolves names)
            here = here if "://" in here or "/" in here else Path(here)
        # A bare name is a remote (or `postgres`): sync resolves it as the library does.
        there = a.to or a.from_url
        source, target = (here, there) if a.to else (there, here)
        bar = stack.enter_context(ctx.progress("sync"))
        r = sync(source, target, a.process, progress=bar.update)
    lines = [
        f"synced {r.source} -> {r.target}: {r.checkpoints_copied} checkpoint(s) copied, "
        f"{r.checkpoints_skipped} already there, {r.chunks_copied} chunk(s) "
        f"({_human(r.bytes_copied)}), {r.runs_copied} run(s), {r.items_copied} ledger "
        f"entr{'y' if r.items_copied == 1 else 'ies'} in {r.seconds:.1f}s"
    ]
    if r.failed:
        lines.append(f"not copied (unreadable at the source, or refused): {', '.join(r.failed)}")
    ctx.emit(r.to_dict(), lines)
    return EXIT_OK if r.ok else EXIT_PROBLEMS
