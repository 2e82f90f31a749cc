"""The ``ui`` command: serve the read-only web dashboard (``ckptlite.ui``)."""

from __future__ import annotations

import argparse
from typing import Any

from ._base import EXIT_OK, Context, new_command


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return port


def _add_ui(sub: Any) -> argparse.ArgumentParser:
    p = new_command(
        sub,
        "ui",
        "serve a read-only web dashboard: runs, tile maps, checkpoints, store health",
        "ckptlite --store ./ckpts ui --port 8765 --open",
        description="Serve a read-only web dashboard of the store (needs "
        "pip install 'ckptlite[ui]'). Binds 127.0.0.1; another --host is refused "
        "without --token, which every request must then carry (open the printed URL).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765, help="TCP port (default 8765)")
    p.add_argument("--open", action="store_true", help="open the dashboard in a web browser")
    p.add_argument("--token", metavar="T", help="require this token (16+ characters)")
    p.add_argument(
        "--poll", type=float, default=3.0, metavar="SECONDS", help="page refresh interval"
    )
    p.set_defaults(func=_ui)
    return p


def _ui(ctx: Context) -> int:
    from ..ui import serve

    a = ctx.args
    serve(
        ctx.settings().url,
        host=a.host,
        port=a.port,
        token=a.token,
        open_browser=a.open,
        poll_seconds=max(0.5, a.poll),
        out=ctx.err,
    )
    return EXIT_OK
