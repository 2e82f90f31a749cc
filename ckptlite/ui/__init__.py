"""``ckptlite ui``: a read-only web dashboard of a store's runs, checkpoints and health.

Needs the ``ui`` extra (``pip install 'ckptlite[ui]'``: Starlette, uvicorn, Jinja2).
A local store is opened with ``readonly=True`` (nothing is written to it, not even
a ``-wal``); a PostgreSQL store, which has no read-only mode, is only read. The
server binds 127.0.0.1; another host needs a token, which every request must then
carry (``?token=`` once in the browser, which keeps it in a cookie).

>>> from ckptlite.ui import is_loopback
>>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
(True, False)
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import webbrowser
from typing import Any, TextIO
from urllib.parse import quote

from ..errors import ConfigError
from ..manager import CheckpointManager, open_store, resolve_url

__all__ = ["check_bind", "is_loopback", "listen", "open_readonly", "serve"]

_EXTRA_HINT = "Install the dashboard's extra: pip install 'ckptlite[ui]'."
_BIND_HINT = "Pick another --port (another program uses it), or a --host of this machine."


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a store beyond this machine without a token.

    Raises:
        ConfigError: ``host`` is not loopback and no ``token`` is given, or the token is weak.
    """
    if token is not None and len(token) < 16:
        raise ConfigError(
            "--token must be at least 16 characters",
            hint="Make one with: python -c 'import secrets; print(secrets.token_urlsafe())'",
        )
    if not is_loopback(host) and token is None:
        raise ConfigError(
            f"refusing to serve the store on {host} without --token: anyone who can reach "
            "that address could read every run, checkpoint and item error",
            hint="Pass --token T (e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe())'`), or keep the default --host 127.0.0.1 and use "
            "an SSH tunnel (ssh -L 8765:127.0.0.1:8765 host).",
        )


def listen(host: str, port: int) -> socket.socket:
    """Return a socket bound to ``host:port`` (the server accepts on it).

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, no such host).
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e}", hint=_BIND_HINT) from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}", hint=_BIND_HINT) from e
    return sock


def open_readonly(url: str | None) -> CheckpointManager:
    """Open a store for the dashboard read-only (memory://: as it is, it has nothing else).

    Raises:
        ConfigError: no store at ``url`` (a dashboard never creates one), or a bad URL.
        MigrationError: PostgreSQL tables older than this ckptlite (not upgraded).
    """
    resolved = resolve_url(url)
    if resolved.startswith("memory://"):
        return open_store(resolved, create=False)
    return open_store(resolved, create=False, readonly=True)


def serve(
    url: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    open_browser: bool = False,
    poll_seconds: float = 3.0,
    out: TextIO | None = None,
) -> None:
    """Serve the dashboard of the store at ``url`` until interrupted (Ctrl-C).

    Raises:
        ConfigError: a non-loopback ``host`` without ``token``; the ``ui`` extra is
            missing; no store at ``url``; ``host:port`` cannot be bound (in use).

    Example: ``ckptlite --store ./ckpts ui --port 8765 --open``.
    """
    check_bind(host, token)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise ConfigError(f"the dashboard needs {e.name or 'its extra'}", hint=_EXTRA_HINT) from e
    out = out or sys.stderr
    mgr = open_readonly(url)
    try:
        sock = listen(host, port)
    except BaseException:
        mgr.close()
        raise
    try:
        loopback = is_loopback(host)
        hosts = [host, "localhost", "127.0.0.1", "[::1]", "::1"] if loopback else None
        app = create_app(mgr, token=token, poll_seconds=poll_seconds, allowed_hosts=hosts)
        shown = f"[{host}]" if ":" in host else host
        link = f"http://{shown}:{port}/" + (f"?token={quote(token)}" if token else "")
        if not loopback:
            out.write(f"warning: serving {mgr.url} beyond this machine, on {host}\n")
        out.write(f"ckptlite dashboard of {mgr.url}: {link}\n")
        out.flush()
        if open_browser:
            webbrowser.open(link)
        config: Any = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        mgr.close()
