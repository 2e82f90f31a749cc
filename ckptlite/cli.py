"""The ``ckptlite`` command line: parse, make one library call, render.

Every command takes the global options (``--store URL``, ``--json``, ``--debug``)
before or after its name. Exit codes: 0 ok, 1 problems found, 2 usage or
configuration error; the mapping from errors lives in ``EXIT_CODES`` only.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TextIO

from . import __version__
from . import config as _config
from .errors import (
    CheckpointNotFoundError,
    CkptliteError,
    ConfigError,
    InvalidInputError,
    MigrationError,
    PickleNotAllowedError,
)
from .manager import CheckpointManager, open_store
from .progress import Progress
from .types import Checkpoint, Level, Status
from .views import checkpoint_view, jsonable, state_view

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

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

#: The one place errors become exit codes: first matching class wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (InvalidInputError, EXIT_USAGE),
    (CheckpointNotFoundError, EXIT_USAGE),
    (PickleNotAllowedError, EXIT_USAGE),
    (MigrationError, EXIT_USAGE),
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

    def settings(self) -> _config.Settings:
        """Return the effective configuration, with this command's flags on top."""
        flags = {"url": (getattr(self.args, "store", None), "--store")}
        flags.update(getattr(self.args, "config_flags", lambda a: {})(self.args))
        return _config.load(flags)

    def open(self, *, create: bool = False, allow_pickle: bool = False) -> CheckpointManager:
        """Open the selected store; an absent local store is an error unless ``create``."""
        return open_store(self.settings().url, create=create, allow_pickle=allow_pickle)

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
    except ConfigError:
        pass
    try:
        return datetime.fromisoformat(text).astimezone()
    except ValueError:
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


# -- inspect ---------------------------------------------------------------------


def _add_ls(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "ls",
        "list checkpoints, newest first (or as a tree)",
        "ckptlite ls --process geo-run --level step --since 2d",
    )
    p.add_argument("--process", "-p", metavar="ID", help="only this process_id")
    p.add_argument("--level", "-l", choices=[lv.value for lv in Level], help="only this level")
    p.add_argument("--name", help="only this slot name")
    p.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    p.add_argument("--since", type=_since, metavar="WHEN", help="ISO time, or an age: 2h, 3d")
    p.add_argument("--limit", "-n", type=int, metavar="N", help="at most N checkpoints")
    p.add_argument("--tree", action="store_true", help="draw the parent/child hierarchy")
    p.set_defaults(func=_ls)
    return p


def _ls(ctx: Context) -> int:
    a = ctx.args
    with ctx.open() as mgr:
        cps = mgr.list(a.process, a.level, a.name, a.status, since=a.since, limit=a.limit)
    if a.tree:
        from .tree import TreeNode, build_tree, render_tree

        roots = build_tree(cps)

        def node(n: TreeNode) -> dict[str, Any]:
            return {
                "checkpoint": checkpoint_view(n.checkpoint),
                "detached": n.detached,
                "children": [node(c) for c in n.children],
            }

        ctx.emit({"tree": [node(r) for r in roots]}, render_tree(roots, _label))
        return EXIT_OK
    rows = [["ID", "PROCESS", "LEVEL", "NAME", "STATUS", "CREATED", "SIZE", "PROGRESS"]]
    rows += [
        [
            c.id,
            c.process_id,
            c.level.value,
            c.name,
            c.status.value,
            _when(c),
            _human(c.size),
            f"{c.progress[0]}/{c.progress[1]}" if c.progress else "",
        ]
        for c in cps
    ]
    ctx.emit({"checkpoints": cps}, _table(rows) if cps else "no checkpoints")
    return EXIT_OK


def _add_show(sub: Any) -> argparse.ArgumentParser:
    p = new_command(sub, "show", "show one checkpoint's record", "ckptlite show chk_step_2026...")
    p.add_argument("id", help="checkpoint id")
    p.set_defaults(func=_show)
    return p


def _show(ctx: Context) -> int:
    with ctx.open() as mgr:
        cp = mgr.get(ctx.args.id)
    view = checkpoint_view(cp)
    width = max(map(len, view))
    lines = []
    for k, v in view.items():
        shown = json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
        lines.append(f"{k.ljust(width)}  {'-' if v is None else shown}")
    ctx.emit({"checkpoint": cp}, lines)
    return EXIT_OK


def _add_cat(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "cat",
        "print a checkpoint's state as JSON (every byte verified)",
        "ckptlite cat chk_step_2026... --full > state.json",
        description="Print a checkpoint's state as JSON. Arrays show dtype, shape, min and "
        "max, and bytes longer than 64 show size and sha256, unless --full.",
    )
    p.add_argument("id", help="checkpoint id")
    p.add_argument("--full", action="store_true", help="include array data and all bytes")
    p.add_argument(
        "--allow-pickle", action="store_true", help="load pickled values (runs code: trust!)"
    )
    p.set_defaults(func=_cat)
    return p


def _cat(ctx: Context) -> int:
    a = ctx.args
    with ctx.open(allow_pickle=a.allow_pickle) as mgr:
        state = mgr.load(a.id)
    view = state_view(state, full=a.full)
    if ctx.json:
        ctx.emit({"id": a.id, "state": view}, "")
    else:
        ctx.out.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def _add_stats(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub, "stats", "counts per process and level, bytes, dedup ratio", "ckptlite stats --json"
    )
    p.set_defaults(func=_stats)
    return p


def _stats(ctx: Context) -> int:
    with ctx.open() as mgr:
        s = mgr.stats()
    lines = [
        f"store          {ctx.settings().url}",
        f"checkpoints    {s['checkpoints']}",
        f"chunks         {s['chunks']}",
        f"logical bytes  {_human(s['logical_bytes'])} ({s['logical_bytes']})",
        f"stored bytes   {_human(s['stored_bytes'])} ({s['stored_bytes']})",
        f"dedup ratio    {s['dedup_ratio']:.2f}x (logical / stored)",
    ]
    if s["by_status"]:
        lines.append("by status      " + ", ".join(f"{k} {v}" for k, v in s["by_status"].items()))
    levels = [lv.value for lv in Level]
    if s["by_process"]:
        rows = [["PROCESS", *(lv.upper() for lv in levels), "TOTAL"]]
        for pid, counts in sorted(s["by_process"].items()):
            rows.append(
                [pid, *(str(counts.get(lv, 0)) for lv in levels), str(sum(counts.values()))]
            )
        lines += ["", *_table(rows)]
    ctx.emit(s, lines)
    return EXIT_OK


# -- maintain --------------------------------------------------------------------


def _add_rm(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "rm",
        "delete a checkpoint (and, with -r, its descendants)",
        "ckptlite rm -r chk_stage_2026...",
    )
    p.add_argument("id", help="checkpoint id")
    p.add_argument("-r", "--recursive", action="store_true", help="also delete its descendants")
    p.set_defaults(func=_rm)
    return p


def _rm(ctx: Context) -> int:
    a = ctx.args
    with ctx.open() as mgr:
        if not a.recursive and mgr.list(parent=a.id, limit=1):
            raise InvalidInputError(
                f"checkpoint {a.id} has children; deleting it deletes them too",
                hint="Pass -r to delete it with all its descendants.",
            )
        deleted = mgr.delete(a.id)
    ctx.emit({"deleted": deleted}, [f"deleted {d}" for d in deleted])
    return EXIT_OK


def _add_verify(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "verify",
        "check the store; exit 1 if any checkpoint is damaged",
        "ckptlite verify --full",
        description="Check that every checkpoint's chunks are present; with --full, read and "
        "hash every byte. Damaged checkpoints are marked corrupted and listed; exit code 1.",
    )
    p.add_argument("--full", action="store_true", help="read and hash every chunk")
    p.set_defaults(func=_verify)
    return p


def _verify(ctx: Context) -> int:
    with ctx.open() as mgr, ctx.progress("verify") as bar:
        report = mgr.verify(full=ctx.args.full, progress=bar.update)
    kind = "full" if report.full else "quick (chunks present; --full hashes every byte)"
    lines = [f"checked {report.checked} checkpoints, {kind}"]
    lines += [f"CORRUPTED {cid}" for cid in report.corrupted]
    lines += [f"missing chunk {d}" for d in report.missing_chunks]
    if report.orphan_chunks:
        lines.append(f"{len(report.orphan_chunks)} unused chunks (`ckptlite gc` reclaims them)")
    lines.append("ok" if report.ok else f"PROBLEMS: {len(report.corrupted)} damaged checkpoints")
    ctx.emit(report, lines)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _add_gc(sub: Any) -> argparse.ArgumentParser:
    p = new_command(sub, "gc", "remove chunks no checkpoint uses", "ckptlite gc --dry-run")
    p.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    p.set_defaults(func=_gc)
    return p


def _gc(ctx: Context) -> int:
    with ctx.open() as mgr, ctx.progress("gc"):
        r = mgr.gc(dry_run=ctx.args.dry_run)
    verb = "would remove" if r.dry_run else "removed"
    lines = [f"{verb} chunk {d}" for d in r.chunks] + [f"{verb} temp {t}" for t in r.temp_files]
    lines.append(
        f"{verb} {len(r.chunks)} chunks, {len(r.temp_files)} temp files, "
        f"{_human(r.bytes_reclaimed)}"
    )
    ctx.emit(r, lines)
    return EXIT_OK


def _retention_flags(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    return {
        "retention.keep_last": (args.keep_last, "--keep-last"),
        "retention.keep_every": (args.keep_every, "--keep-every"),
        "retention.max_age": (args.max_age, "--max-age"),
        "retention.keep_best": (args.keep_best, "--keep-best"),
    }


def _add_prune(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "prune",
        "remove checkpoints the retention policy does not keep",
        "ckptlite prune --process geo-run --keep-last 3 --keep-every 10 --dry-run",
        description="Apply retention per (process, level, name) slot: keep the last N, every "
        "Nth, the best by a metadata metric, nothing older than --max-age. Rules not given "
        "as flags come from [retention] in ckptlite.toml or $CKPTLITE_KEEP_LAST etc. The "
        "newest valid checkpoint of a slot and archived ones are never removed. "
        "--dry-run explains every decision and removes nothing.",
    )
    p.add_argument("--process", "-p", metavar="ID", help="only this process (default: all)")
    p.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest of each slot")
    p.add_argument("--keep-every", type=int, metavar="N", help="keep every Nth save of a slot")
    p.add_argument("--max-age", metavar="AGE", help="remove older than AGE (90m, 12h, 30d)")
    p.add_argument("--keep-best", metavar="METRIC:min|max", help="keep the best by metadata")
    p.add_argument("--dry-run", action="store_true", help="explain, remove nothing")
    p.set_defaults(func=_prune, config_flags=_retention_flags)
    return p


def _prune(ctx: Context) -> int:
    from .policies import CheckpointPolicy

    s = ctx.settings()
    if not any(v is not None for v in (s.keep_last, s.keep_every, s.max_age, s.keep_best)):
        raise ConfigError(
            "no retention rule: nothing to prune by",
            hint="Pass --keep-last/--keep-every/--max-age/--keep-best, or set them under "
            "[retention] in ckptlite.toml (`ckptlite config` shows the file).",
        )
    policy = CheckpointPolicy(
        keep_last=s.keep_last, keep_every=s.keep_every, max_age=s.max_age, keep_best=s.keep_best
    )
    with ctx.open() as mgr:
        report = mgr.apply_retention(ctx.args.process, policy, dry_run=ctx.args.dry_run)
    verb = "would remove" if report.dry_run else "removed"
    lines = [report.explain()] if report.decisions else []
    lines.append(f"{verb} {len(report.removed)} of {len(report.decisions)} checkpoints")
    ctx.emit(report, lines)
    return EXIT_OK


def _add_runs(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "runs",
        "list pipeline runs: status, progress of their work items, error",
        "ckptlite runs --process geo-run",
    )
    p.add_argument("--process", "-p", metavar="ID", help="only this process")
    p.set_defaults(func=_runs)
    return p


def _runs(ctx: Context) -> int:
    with ctx.open() as mgr:
        runs = mgr.list_runs(ctx.args.process)
    rows = [["RUN", "PROCESS", "STATUS", "STARTED", "UPDATED", "ITEMS DONE", "ERROR"]]
    for r in runs:
        prog = f"{r.progress[0]}/{r.progress[1]}" if r.progress else ""
        rows.append(
            [
                r.id,
                r.process_id,
                r.status.value,
                r.started_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                r.updated_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                prog,
                r.error.splitlines()[0][:60] if r.error else "",
            ]
        )
    ctx.emit({"runs": runs}, _table(rows) if runs else "no runs")
    return EXIT_OK


def _add_backup(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "backup",
        "copy a live local store to a new directory",
        "ckptlite backup /mnt/backups/ckpts-2026-11-26",
        description="Copy the store while it is in use: the database through SQLite's "
        "online backup API, then its chunk files. DEST must not exist (or be empty).",
    )
    p.add_argument("dest", help="new directory for the copy")
    p.set_defaults(func=_backup)
    return p


def _backup(ctx: Context) -> int:
    with ctx.open() as mgr, ctx.progress("backup") as bar:
        r = mgr.backup(ctx.args.dest, bar.update)
    ctx.emit(
        r,
        f"backed up {r.checkpoints} checkpoints, {r.chunks} chunks "
        f"({_human(r.stored_bytes)}) to {r.dest}",
    )
    return EXIT_OK


def _add_export(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "export",
        "write the whole store to one self-contained archive file",
        "ckptlite --store ./ckpts export ckpts-2026-11-26.tar",
        description="Write every checkpoint, run and work-item ledger entry to a new tar "
        "archive: a store copied with SQLite's online backup API plus its chunk files. "
        "Works while the store is in use, from any kind of store.",
    )
    p.add_argument("archive", help="new archive file (.tar)")
    p.set_defaults(func=_export)
    return p


def _export(ctx: Context) -> int:
    from .archive import export_archive

    with ctx.open() as mgr, ctx.progress("export") as bar:
        r = export_archive(mgr, ctx.args.archive, bar.update)
    ctx.emit(r, f"exported {r.checkpoints} checkpoints ({_human(r.archive_bytes)}) to {r.path}")
    return EXIT_OK


def _add_import_archive(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "import-archive",
        "verify an archive from `ckptlite export`, then add what the store lacks",
        "ckptlite --store ./ckpts import-archive ckpts-2026-11-26.tar",
        description="Unpack the archive in the temp directory, hash every byte, and only if "
        "all of it verifies add the checkpoints the store lacks (creating the store if "
        "needed). A damaged archive changes nothing and exits 1. Importing twice adds "
        "nothing the second time.",
    )
    p.add_argument("archive", help="archive file written by `ckptlite export`")
    p.set_defaults(func=_import_archive)
    return p


def _import_archive(ctx: Context) -> int:
    from .archive import import_archive

    with ctx.open(create=True) as mgr, ctx.progress("import") as bar:
        r = import_archive(mgr, ctx.args.archive, bar.update)
    ctx.emit(
        r,
        f"verified {r.checkpoints} checkpoints in {r.path}; imported {r.imported}, "
        f"{r.checkpoints - r.imported} already present; merged {r.runs_imported} runs, "
        f"{r.items_imported} ledger entries",
    )
    return EXIT_OK


def _add_config(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "config",
        "print the effective configuration and where each value came from",
        "CKPTLITE_DURABILITY=full ckptlite config",
        description="Print every setting, its value and its source. Precedence, lowest "
        "first: defaults, ckptlite.toml ($CKPTLITE_CONFIG overrides its path), "
        "$CKPTLITE_* environment variables, command-line flags.",
    )
    p.set_defaults(func=_config_cmd)
    return p


def _config_cmd(ctx: Context) -> int:
    s = ctx.settings()
    exists = "" if s.config_file_exists else " (not found)"
    rows = [["KEY", "VALUE", "SOURCE"]]
    rows += [[k, "-" if v is None else str(v), src] for k, v, src in s.items()]
    data = {
        "config_file": str(s.config_file),
        "config_file_exists": s.config_file_exists,
        "values": {k: {"value": jsonable(v), "source": src} for k, v, src in s.items()},
    }
    ctx.emit(data, [f"config file  {s.config_file}{exists}", "", *_table(rows)])
    return EXIT_OK


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
    from .legacy import FORMATS

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
    from .legacy import FORMATS

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
    from .legacy import MigrationEntry, migrate

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

    try:
        mgr = ctx.open(create=not a.dry_run)
    except ConfigError:
        if not a.dry_run:
            raise
        mgr = open_store("memory://")  # a dry run into a store that does not exist yet
    with mgr, ctx.progress("migrate") as bar:
        report = migrate(
            a.source,
            mgr,
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


def _add_sync(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "sync",
        "copy checkpoints, chunks, runs and the ledger to or from another store",
        "ckptlite --store ./ckpts sync --to postgresql://user@db.example/ckpts",
        description="Copy what the other store lacks: --to URL pushes this store (--store "
        "or the default) there, --from URL pulls from there into this store. Resumes "
        "where the last sync stopped; a rerun copies nothing twice. Deletes and later "
        "status changes are not propagated.",
    )
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", metavar="URL", help="copy this store into URL")
    way.add_argument("--from", dest="from_url", metavar="URL", help="copy URL into this store")
    p.add_argument("--process", metavar="ID", help="only this process (and its ancestors)")
    p.set_defaults(func=_sync)
    return p


def _sync(ctx: Context) -> int:
    from .sync import sync

    a = ctx.args
    here = ctx.settings().url
    source, target = (here, a.to) if a.to else (a.from_url, here)
    with ctx.progress("sync") as bar:
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


#: Every subcommand, in help order. Other modules' commands plug in here.
COMMANDS: list[tuple[str, Callable[[Any], argparse.ArgumentParser]]] = [
    ("ls", _add_ls),
    ("show", _add_show),
    ("cat", _add_cat),
    ("stats", _add_stats),
    ("runs", _add_runs),
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
    ("sync", _add_sync),
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except UsageError as e:
        usage_ctx = Context(argparse.Namespace(json="--json" in argv))
        return _report(usage_ctx, "UsageError", e.message, e.usage.strip(), EXIT_USAGE)
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
