"""Commands that look inside a store: ls, show, cat, stats, runs."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from .._filters import parse_where
from .._items import ITEM_STATUSES, item_status
from ..errors import InvalidInputError, PickleNotAllowedError
from ..manager import CheckpointManager
from ..runs import RUN_KEY
from ..types import Checkpoint, ItemRecord, Level, Status
from ..views import checkpoint_view, jsonable, run_view, state_view
from ._base import (
    EXIT_OK,
    Context,
    _human,
    _since,
    _table,
    _when,
    new_command,
)

# -- inspect ---------------------------------------------------------------------

#: ``ls`` on a terminal shows this many checkpoints unless ``-n`` says otherwise.
TERMINAL_ROWS = 50


@contextlib.contextmanager
def _pickle_hint() -> Iterator[None]:
    """Say what to do in CLI words: ``--allow-pickle``, not the library's argument."""
    try:
        yield
    except PickleNotAllowedError as e:
        raise PickleNotAllowedError(
            e.message,
            hint="It holds pickled values: rerun with --allow-pickle, only if you trust "
            "whoever wrote the store (unpickling runs code).",
        ) from e


def _add_ls(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "ls",
        "list checkpoints, newest first (or as a tree)",
        "ckptlite ls --process geo-run --level step --since 2d --where crs=EPSG:4326",
    )
    p.add_argument("--process", "-p", metavar="ID", help="only this process_id")
    p.add_argument("--level", "-l", choices=[lv.value for lv in Level], help="only this level")
    p.add_argument("--name", help="only this slot name")
    p.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    p.add_argument("--since", type=_since, metavar="WHEN", help="ISO time, or an age: 2h, 3d")
    p.add_argument(
        "--limit",
        "-n",
        type=int,
        metavar="N",
        help=f"at most N checkpoints (on a terminal: {TERMINAL_ROWS} unless given; 0: all)",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only checkpoints whose metadata KEY is VALUE (repeatable)",
    )
    p.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="only with this tag (repeatable)"
    )
    p.add_argument("--tree", action="store_true", help="draw the parent/child hierarchy")
    p.set_defaults(func=_ls)
    return p


def _ls(ctx: Context) -> int:
    a = ctx.args
    if a.limit is not None and a.limit < 0:
        raise InvalidInputError(f"--limit must be >= 0, not {a.limit}", hint="0 lists all.")
    limit = a.limit or None
    # A person at a terminal sees the newest TERMINAL_ROWS and how many more there
    # are; a pipe or --json gets everything, as before.
    cut = a.limit is None and not ctx.json and not a.tree and ctx.terminal
    where = dict(parse_where(w) for w in a.where)
    filters: dict[str, Any] = {"since": a.since, "where": where, "tags": a.tag}
    with ctx.open(reads=True) as mgr:
        query = (a.process, a.level, a.name, a.status)
        cps = mgr.list(*query, **filters, limit=TERMINAL_ROWS + 1 if cut else limit)
        more = 0
        if cut and len(cps) > TERMINAL_ROWS:
            more = len(mgr.list(*query, **filters)) - TERMINAL_ROWS
            cps = cps[:TERMINAL_ROWS]
        if a.tree:
            return _tree(ctx, mgr, cps)
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
    lines = _table(rows) if cps else ["no checkpoints"]
    if more:
        lines.append(f"... and {more} more (older; `ckptlite ls -n 0` lists all)")
    ctx.emit({"checkpoints": cps}, lines)
    return EXIT_OK


#: Work items drawn under a run's item group in ``ls --tree`` (``items`` lists all).
TREE_ITEMS = 20


def _tree(ctx: Context, mgr: CheckpointManager, cps: list[Checkpoint]) -> int:
    """Draw the hierarchy: runs as PIPELINE, stages as STAGE, item results as STEP rows."""
    from ..tree import build_tree, tree_view, walk

    if ctx.json:
        # The checkpoints' own tree, as the dashboard's /api/checkpoints gives it; a
        # run's items are in `ckptlite items RUN --json`.
        ctx.emit({"tree": tree_view(build_tree(cps))}, [])
        return EXIT_OK
    runs = {r.id: r for r in mgr.list_runs()}
    extra: dict[str, dict[str, str]] = {}  # node id -> its kind and status column
    nodes = list(cps)
    seq = max((c.seq for c in cps), default=0)
    for cp in cps:
        run = runs.get(str(cp.metadata.get(RUN_KEY)))
        if cp.level is not Level.PIPELINE or run is None:
            continue
        extra[cp.id] = {"status": run.status.value}
        groups: dict[str, list[ItemRecord]] = {}
        for e in mgr.list_items(run.id):
            groups.setdefault(e.group, []).append(e)
        for group, entries in groups.items():
            seq += 1
            gid = f"{run.id}/{group}"
            done = sum(e.ok for e in entries)
            size = sum(len(e.state or b"") for e in entries)
            nodes.append(_shown_as(cp, gid, Level.STAGE, f"items:{group}", cp.id, seq, size))
            failed = len(entries) - done
            status = f"{done} done" + (f", {failed} failed" if failed else "")
            extra[gid] = {"kind": "items", "status": status}
            for e in entries[:TREE_ITEMS]:
                seq += 1
                iid = f"{gid}/{e.item_id}"
                size = len(e.state or b"")
                nodes.append(_shown_as(cp, iid, Level.STEP, e.item_id, gid, seq, size))
                extra[iid] = {"kind": "item", "status": item_status(e)}
            if len(entries) > TREE_ITEMS:
                seq += 1
                more_id = f"{gid}/..."
                left = len(entries) - TREE_ITEMS
                hint = f"... {left} more (ckptlite items {run.id} --group {group})"
                nodes.append(_shown_as(cp, more_id, Level.STEP, hint, gid, seq, 0))
                extra[more_id] = {"kind": "more"}
    roots = build_tree(nodes)

    rows = [["TREE", "PROCESS", "LEVEL", "STATUS", "SIZE", "ID"]]
    notes: dict[int, str] = {}  # "... N more" lines, kept out of the column widths
    for prefix, n in walk(roots):
        c, more = n.checkpoint, extra.get(n.checkpoint.id, {})
        if more.get("kind") == "more":
            notes[len(rows) + len(notes)] = prefix + c.name
            continue
        status = more.get("status") or c.status.value
        if c.progress and "kind" not in more:
            status += f" {c.progress[0]}/{c.progress[1]}"
        rows.append(
            [prefix + (c.name or "-"), c.process_id, c.level.value, status, _human(c.size), c.id]
        )
    lines = _table(rows) if nodes else ["no checkpoints"]
    for at, note in sorted(notes.items()):
        lines.insert(at, note)
    ctx.emit({}, lines)
    return EXIT_OK


def _shown_as(
    run_cp: Checkpoint, cid: str, level: Level, name: str, parent: str, seq: int, size: int
) -> Checkpoint:
    """Return a ledger entry (a group, an item) dressed as a checkpoint for the tree."""
    return Checkpoint(
        id=cid,
        process_id=run_cp.process_id,
        level=level,
        name=name,
        parent_id=parent,
        seq=seq,
        status=Status.VALID,
        created_at=run_cp.created_at,
        size=size,
        stored_size=size,
        checksum="",
    )


def _add_show(sub: Any) -> argparse.ArgumentParser:
    p = new_command(sub, "show", "show one checkpoint's record", "ckptlite show chk_step_2026...")
    p.add_argument("id", help="checkpoint id")
    p.set_defaults(func=_show)
    return p


def _show(ctx: Context) -> int:
    with ctx.open(reads=True) as mgr:
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
        "print a checkpoint's state, or a work item's result, as JSON",
        "ckptlite cat chk_step_2026... --full > state.json",
        description="Print a checkpoint's state (every byte verified) as JSON; "
        "RUN/GROUP/ITEM prints the result a run's work item was marked done with "
        "(`ckptlite items RUN` lists them). Arrays show dtype, shape, min and "
        "max (masked arrays: of the valid values), DataFrames shape, columns and dtypes, "
        "xarray values dims and variables, and bytes longer than 64 show size and sha256, "
        "unless --full.",
    )
    p.add_argument("id", help="checkpoint id, or RUN/GROUP/ITEM")
    p.add_argument("--full", action="store_true", help="include array data and all bytes")
    p.add_argument(
        "--allow-pickle", action="store_true", help="load pickled values (runs code: trust!)"
    )
    p.set_defaults(func=_cat)
    return p


def _cat(ctx: Context) -> int:
    a = ctx.args
    with ctx.open(allow_pickle=a.allow_pickle, reads=True) as mgr, _pickle_hint():
        if "/" in a.id:  # checkpoint ids never hold a '/'; RUN/GROUP/ITEM (ITEM may)
            run_id, _, rest = a.id.partition("/")
            group, sep, item = rest.partition("/")
            if not (run_id and group and sep and item):
                raise InvalidInputError(
                    f"{a.id!r} is neither a checkpoint id nor RUN/GROUP/ITEM",
                    hint="For example: ckptlite cat run_2026.../tiles/t_0042",
                )
            state = mgr.load_item(run_id, group, item)
        else:
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
    with ctx.open(reads=True) as mgr:
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
    items = s["item_results"]
    lines.insert(
        3,
        f"item results   {items['count']} ({_human(items['logical_bytes'])} logical, "
        f"{_human(items['stored_bytes'])} stored: in the byte totals)",
    )
    ctx.emit(s, lines)
    return EXIT_OK


def _add_items(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "items",
        "list a run's work items: status, attempts, error, size of the result",
        "ckptlite items run_2026... --status pending",
        description="List the work items of a run (`ckptlite runs` lists runs): group, "
        "item, status, attempts, the error of a failed item and the size of a done "
        "item's result (`ckptlite cat RUN/GROUP/ITEM` prints it). Without --status: the "
        "ledger (done and failed items); --status pending lists the ids run.items() "
        "registered that no one marked or holds, --status claimed those in batches live "
        "workers hold (lease not expired).",
    )
    p.add_argument("run", help="run id")
    p.add_argument("--group", "-g", metavar="G", help="only this group")
    p.add_argument("--status", choices=ITEM_STATUSES, help="only items with this status")
    p.set_defaults(func=_items)
    return p


def _items(ctx: Context) -> int:
    a = ctx.args
    with ctx.open(reads=True) as mgr:
        entries = mgr.list_items(a.run, a.group, a.status)
    data = {
        "run": a.run,
        "items": [
            {
                "group": e.group,
                "item": e.item_id,
                "status": item_status(e),
                "attempts": e.attempts,
                "error": e.error,
                "size": len(e.state or b""),
            }
            for e in entries
        ],
    }
    rows = [["GROUP", "ITEM", "STATUS", "ATTEMPTS", "SIZE", "ERROR"]]
    rows += [
        [
            e["group"],
            e["item"],
            e["status"],
            str(e["attempts"]),
            _human(e["size"]) if e["status"] == "done" else "-",
            (e["error"] or "").splitlines()[0][:80] if e["error"] else "",
        ]
        for e in data["items"]
    ]
    ctx.emit(data, _table(rows) if entries else "no items")
    return EXIT_OK


def _add_runs(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "runs",
        "list pipeline runs: status, items done / claimed / failed / pending, live workers",
        "ckptlite runs --process geo-run",
    )
    p.add_argument("--process", "-p", metavar="ID", help="only this process")
    p.set_defaults(func=_runs)
    return p


def _runs(ctx: Context) -> int:
    with ctx.open(reads=True) as mgr:
        views = mgr.run_overview(ctx.args.process)
    rows = [
        [
            "RUN",
            "PROCESS",
            "STATUS",
            "STARTED",
            "UPDATED",
            "ITEMS DONE",
            "CLAIMED",
            "FAILED",
            "PENDING",
            "WORKERS",
            "ERROR",
        ]
    ]
    lines: list[str] = []
    for v in views:
        r, c = v.run, v.counts
        prog = f"{r.progress[0]}/{r.progress[1]}" if r.progress else str(c.done)
        rows.append(
            [
                r.id,
                r.process_id,
                r.status.value,
                r.started_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                r.updated_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                prog,
                str(c.claimed),
                str(c.failed),
                str(c.pending),
                str(c.workers_live),
                r.error.splitlines()[0][:60] if r.error else "",
            ]
        )
        lines += [
            f"  {r.id}: worker {w.worker_id} on {w.host}, last heartbeat "
            f"{w.beat_at.strftime('%Y-%m-%d %H:%M:%SZ')}"
            for w in v.workers
            if w.live
        ]
    views_json = [run_view(v) for v in views]
    data = {
        "runs": [jsonable(v.run) for v in views],
        "items": {v["id"]: v["items"] for v in views_json},
        "workers": {v["id"]: v["workers"] for v in views_json},
    }
    if not views:
        ctx.emit(data, "no runs")
    else:
        ctx.emit(data, [*_table(rows), *(["", "live workers:", *lines] if lines else [])])
    return EXIT_OK
