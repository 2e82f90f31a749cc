"""Commands that care for a store: rm, verify, gc, prune, backup, export, import-archive, config."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import (
    ConfigError,
    InvalidInputError,
)
from ..views import jsonable
from ._base import (
    EXIT_OK,
    EXIT_PROBLEMS,
    Context,
    _human,
    _table,
    new_command,
)

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
        "hash every byte. Damaged checkpoints are marked corrupted (not on a read-only "
        "store: --readonly, or a read-only disk) and listed; exit code 1.",
    )
    p.add_argument("--full", action="store_true", help="read and hash every chunk")
    p.set_defaults(func=_verify)
    return p


def _verify(ctx: Context) -> int:
    with ctx.open(reads=True) as mgr, ctx.progress("verify") as bar:
        report = mgr.verify(full=ctx.args.full, progress=bar.update)
    kind = "full" if report.full else "quick (chunks present; --full hashes every byte)"
    lines = [f"checked {report.checked} checkpoints, {kind}"]
    lines += [f"CORRUPTED {cid}" for cid in report.corrupted]
    lines += [f"missing chunk {d}" for d in report.missing_chunks]
    lines += [f"UNSAFE {p}: a symlink or foreign file, never followed" for p in report.unsafe_paths]
    if report.orphan_chunks:
        lines.append(f"{len(report.orphan_chunks)} unused chunks (`ckptlite gc` reclaims them)")
    if report.orphan_packs:
        lines.append(f"{len(report.orphan_packs)} unused pack files (`ckptlite gc` removes them)")
    lines.append("ok" if report.ok else f"PROBLEMS: {len(report.corrupted)} damaged checkpoints")
    ctx.emit(report, lines)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _add_gc(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "gc",
        "remove chunks no checkpoint uses",
        "ckptlite gc --dry-run --verbose",
        description="Remove chunks no checkpoint uses, delete packs with nothing live, cut "
        "dead tails off packs and compact packs mostly dead. The bytes reported are the "
        "drop in disk usage; --dry-run reports exactly what gc would do. Prints a summary; "
        "--verbose (or --json) lists every chunk, pack and temp file.",
    )
    p.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    p.add_argument("-v", "--verbose", action="store_true", help="list every chunk and pack")
    p.set_defaults(func=_gc)
    return p


def _gc(ctx: Context) -> int:
    with ctx.open(reads=ctx.args.dry_run) as mgr, ctx.progress("gc"):
        r = mgr.gc(dry_run=ctx.args.dry_run)
    dry = r.dry_run
    verb = "would remove" if dry else "removed"
    lines = []
    if ctx.args.verbose:
        lines += [f"{verb} chunk {d}" for d in r.chunks]
        lines += [f"{verb} temp {t}" for t in r.temp_files]
        lines += [f"{'would delete' if dry else 'deleted'} pack {p}" for p in r.deleted_packs]
        lines += [f"{'would compact' if dry else 'compacted'} pack {p}" for p in r.compacted_packs]
        lines += [
            f"{'would cut' if dry else 'cut'} the dead tail of pack {p}" for p in r.truncated_packs
        ]
    parts = [f"{len(r.chunks)} chunks", f"{len(r.temp_files)} temp files"]
    packs = []
    if r.deleted_packs:
        packs.append(f"{'would delete' if dry else 'deleted'} {len(r.deleted_packs)} pack(s)")
    if r.compacted_packs:
        packs.append(f"{'would compact' if dry else 'compacted'} {len(r.compacted_packs)}")
    if r.truncated_packs:
        packs.append(f"{'would cut' if dry else 'cut'} {len(r.truncated_packs)} tail(s)")
    summary = f"{verb} {', '.join(parts)}: {_human(r.bytes_reclaimed)} of disk"
    if packs:
        summary += f" ({'; '.join(packs)})"
    if r.inline_bytes:
        summary += f"; {_human(r.inline_bytes)} of database rows (reused, the file keeps its size)"
    lines.append(summary)
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
    from ..policies import CheckpointPolicy

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
    with ctx.open(reads=ctx.args.dry_run) as mgr:
        report = mgr.apply_retention(ctx.args.process, policy, dry_run=ctx.args.dry_run)
    verb = "would remove" if report.dry_run else "removed"
    lines = [report.explain()] if report.decisions else []
    lines.append(f"{verb} {len(report.removed)} of {len(report.decisions)} checkpoints")
    ctx.emit(report, lines)
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
    with ctx.open(reads=True) as mgr, ctx.progress("backup") as bar:
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
    from ..archive import export_archive

    with ctx.open(reads=True) as mgr, ctx.progress("export") as bar:
        r = export_archive(mgr, ctx.args.archive, bar.update)
    ctx.emit(r, f"exported {r.checkpoints} checkpoints ({_human(r.archive_bytes)}) to {r.path}")
    return EXIT_OK


def _add_import_archive(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "import-archive",
        "verify an archive from `ckptlite export`, then add what the store lacks",
        "ckptlite --store ./ckpts import-archive ckpts-2026-11-26.tar",
        description="Check every header first (only the uncompressed tar export writes, "
        "with export's names, regular files, sizes within the file and the free space of "
        "$TMPDIR), unpack the archive in the temp directory, hash every byte, and only if "
        "all of it verifies add the checkpoints the store lacks (creating the store if "
        "needed). A damaged archive changes nothing and exits 1. Importing twice adds "
        "nothing the second time.",
    )
    p.add_argument("archive", help="archive file written by `ckptlite export`")
    p.set_defaults(func=_import_archive)
    return p


def _import_archive(ctx: Context) -> int:
    from ..archive import import_archive

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
