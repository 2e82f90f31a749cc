"""The ``remote`` command: named stores for ``sync --to NAME`` / ``--from NAME``."""

from __future__ import annotations

import argparse
from typing import Any

from .. import config as _config
from ._base import EXIT_OK, Context, _table, new_command


def _add_remote(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "remote",
        "add, list or remove named remotes (for sync --to NAME)",
        "ckptlite remote add hub postgresql://ckpt@db.example/ckpts",
        description="Name stores for `ckptlite sync --to NAME` / `--from NAME`: kept as "
        "[remotes.NAME] url = ... in ckptlite.toml (`ckptlite config` shows the file). "
        "$CKPTLITE_REMOTE_<NAME> defines one too, and wins. A name is a bare word "
        "(letters, digits, - and _), so it is never taken for a path.",
    )
    way = p.add_subparsers(dest="remote_action", metavar="ACTION", required=True)
    add = new_command(way, "add", "add a remote: NAME URL", "ckptlite remote add hub ./hub")
    add.add_argument("name", help="a bare word: letters, digits, - and _")
    add.add_argument("url", help="a store URL or path")
    add.set_defaults(func=_remote_add)
    ls = new_command(
        way, "list", "list the remotes and where each is defined", "ckptlite remote list"
    )
    ls.set_defaults(func=_remote_list)
    rm = new_command(
        way, "remove", "remove a remote from ckptlite.toml", "ckptlite remote remove hub"
    )
    rm.add_argument("name")
    rm.set_defaults(func=_remote_remove)
    return p


def _remote_add(ctx: Context) -> int:
    path = _config.add_remote(ctx.args.name, ctx.args.url)
    ctx.emit(
        {"added": ctx.args.name, "url": ctx.args.url, "config_file": str(path)},
        f"added remote {ctx.args.name} = {ctx.args.url} to {path}",
    )
    return EXIT_OK


def _remote_list(ctx: Context) -> int:
    found = _config.remotes()
    data = {"remotes": {r.name: {"url": r.url, "source": r.source} for r in found.values()}}
    if not found:
        ctx.emit(data, "no remotes (add one: ckptlite remote add NAME URL)")
        return EXIT_OK
    rows = [["NAME", "URL", "SOURCE"]] + [[r.name, r.url, r.source] for r in found.values()]
    ctx.emit(data, _table(rows))
    return EXIT_OK


def _remote_remove(ctx: Context) -> int:
    path = _config.remove_remote(ctx.args.name)
    ctx.emit(
        {"removed": ctx.args.name, "config_file": str(path)},
        f"removed remote {ctx.args.name} from {path}",
    )
    return EXIT_OK
