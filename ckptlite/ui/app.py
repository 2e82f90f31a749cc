"""The dashboard's web app (Starlette): HTML pages, their ``/api`` JSON, static files.

Every route is a GET that reads the store through ``Dashboard``; no route writes.
Pages are rendered by Jinja2 with autoescape (every store value is user data) and
refresh themselves by polling ``/api`` (``static/ui.js``, which writes values with
``textContent`` only). A Content-Security-Policy allows scripts and styles from
the app alone: no inline script, no CDN.

With a token, every request must carry it: ``?token=T`` (the page then sets a
cookie, so its polls carry it), an ``Authorization: Bearer T`` header, or the cookie.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import (
    CheckpointNotFoundError,
    CkptliteError,
    InvalidInputError,
    RunNotFoundError,
)
from ..manager import CheckpointManager
from ..views import jsonable
from ._data import Dashboard
from ._map import CELL_CODES

__all__ = ["TOKEN_COOKIE", "create_app"]

_HERE = Path(__file__).parent
TOKEN_COOKIE = "ckptlite_token"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_STATUS = {
    RunNotFoundError: 404,
    CheckpointNotFoundError: 404,
    InvalidInputError: 400,
}


def _human(n: float | int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    secs = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return _duration(max(0.0, secs)) + " ago"


def _duration(secs: float | int | None) -> str:
    if secs is None:
        return "-"
    if secs < 10:
        return f"{secs:.1f}s"
    secs = int(secs)
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m {secs % 60:02d}s"
    if secs < 172800:
        return f"{secs // 3600}h {secs % 3600 // 60:02d}m"
    return f"{secs // 86400}d {secs % 86400 // 3600:02d}h"


def _when(iso: str | None) -> str:
    return "-" if not iso else iso.replace("T", " ")[:19] + "Z"


def _pct(part: int, total: int) -> float:
    return 0.0 if total <= 0 else round(100.0 * part / total, 3)


def _templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(_HERE / "templates"))
    t.env.autoescape = True  # every template, whatever its name: store values are user data
    t.env.filters.update(human=_human, age=_age, duration=_duration, when=_when)
    t.env.globals.update(pct=_pct, quote=lambda s: quote(str(s), safe=""), codes=CELL_CODES)
    return t


def _error_body(e: CkptliteError) -> dict[str, Any]:
    return {"error": {"type": type(e).__name__, "message": e.message, "hint": e.hint}}


def _status_of(e: CkptliteError) -> int:
    return next((code for cls, code in _STATUS.items() if isinstance(e, cls)), 500)


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(f"{name} must be an integer, not {text!r}") from None


def create_app(
    manager: CheckpointManager,
    *,
    token: str | None = None,
    poll_seconds: float = 3.0,
    allowed_hosts: list[str] | None = None,
    max_state_bytes: int = 256 << 20,
) -> Starlette:
    """Return the dashboard app for an open store (open it with ``readonly=True``).

    ``token``: every request must carry it. ``allowed_hosts``: the Host headers
    answered (a guard against DNS rebinding on a loopback bind); None answers any.
    ``max_state_bytes``: bigger states are not loaded to be summarised.

    >>> import ckptlite
    >>> app = create_app(ckptlite.open("memory://"))
    """
    dash = Dashboard(manager, max_state_bytes=max_state_bytes)
    templates = _templates()

    def api(
        build: Callable[[Request], dict[str, Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                data = await run_in_threadpool(build, request)
            except CkptliteError as e:
                return JSONResponse(_error_body(e), status_code=_status_of(e))
            return JSONResponse(jsonable(data))

        return endpoint

    def page(
        name: str, build: Callable[[Request], dict[str, Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ctx: dict[str, Any] = {"poll_ms": int(poll_seconds * 1000), "url": manager.url}
            try:
                ctx.update(await run_in_threadpool(build, request))
            except CkptliteError as e:
                ctx["error"] = _error_body(e)["error"]
                return templates.TemplateResponse(
                    request, "error.html", ctx, status_code=_status_of(e)
                )
            return templates.TemplateResponse(request, name, ctx)

        return endpoint

    def runs(r: Request) -> dict[str, Any]:
        return dash.runs(r.query_params.get("process") or None, _int(r, "limit", 100))

    def run(r: Request) -> dict[str, Any]:
        return dash.run(r.path_params["run_id"])

    def run_page(r: Request) -> dict[str, Any]:
        data = dash.run(r.path_params["run_id"])
        data["group"] = r.query_params.get("group") or next(iter(data["groups"]), None)
        return data

    def items(r: Request) -> dict[str, Any]:
        q = r.query_params
        return dash.items(
            r.path_params["run_id"],
            q.get("group") or None,
            q.get("status") or None,
            _int(r, "offset", 0),
            _int(r, "limit", 100),
        )

    def item_map(r: Request) -> dict[str, Any]:
        return dash.item_map(r.path_params["run_id"], r.query_params.get("group", ""))

    def cell(r: Request) -> dict[str, Any]:
        return dash.cell(
            r.path_params["run_id"], r.query_params.get("group", ""), _int(r, "index", -1)
        )

    def checkpoints(r: Request) -> dict[str, Any]:
        return dash.checkpoints(r.query_params.get("process") or None, _int(r, "limit", 2000))

    def checkpoint(r: Request) -> dict[str, Any]:
        return dash.checkpoint(r.path_params["checkpoint_id"])

    def state(r: Request) -> dict[str, Any]:
        return dash.state(r.path_params["checkpoint_id"])

    def checkpoint_page(r: Request) -> dict[str, Any]:
        cid = r.path_params["checkpoint_id"]
        data = dash.checkpoint(cid)
        try:
            data.update(dash.state(cid))
        except CkptliteError as e:
            data["state_error"] = _error_body(e)["error"]
        return data

    def stats(r: Request) -> dict[str, Any]:
        return dash.stats()

    def health(r: Request) -> dict[str, Any]:
        return dash.health()

    routes = [
        Route("/", page("runs.html", runs)),
        Route("/runs/{run_id}", page("run.html", run_page)),
        Route("/checkpoints", page("checkpoints.html", checkpoints)),
        Route("/checkpoints/{checkpoint_id}", page("checkpoint.html", checkpoint_page)),
        Route("/health", page("health.html", health)),
        Route("/api/runs", api(runs)),
        Route("/api/runs/{run_id}", api(run)),
        Route("/api/runs/{run_id}/items", api(items)),
        Route("/api/runs/{run_id}/map", api(item_map)),
        Route("/api/runs/{run_id}/cell", api(cell)),
        Route("/api/checkpoints", api(checkpoints)),
        Route("/api/checkpoints/{checkpoint_id}", api(checkpoint)),
        Route("/api/checkpoints/{checkpoint_id}/state", api(state)),
        Route("/api/stats", api(stats)),
        Route("/api/health", api(health)),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=_guard(token))]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    # zlib's default level: the maps' status characters compress ~50x at it, for a
    # fraction of level 9's time.
    middleware.append(Middleware(GZipMiddleware, minimum_size=2048, compresslevel=6))
    return Starlette(routes=routes, middleware=middleware)


def _guard(
    token: str | None,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Return the middleware: only GET/HEAD, the token on every request, safe headers."""
    expected = token.encode() if token else None

    async def dispatch(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only dashboard", status_code=405)
        from_query = request.query_params.get("token")
        if expected is not None:
            given = (
                from_query
                or request.cookies.get(TOKEN_COOKIE)
                or request.headers.get("authorization", "").removeprefix("Bearer ")
            )
            if not hmac.compare_digest(given.encode(), expected):
                return PlainTextResponse(
                    "token required: open the URL ckptlite ui printed", status_code=401
                )
        response = await call_next(request)
        if expected is not None and from_query:
            response.set_cookie(TOKEN_COOKIE, from_query, httponly=True, samesite="strict")
        h = response.headers
        h["Content-Security-Policy"] = _CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Frame-Options"] = "DENY"
        h["Cache-Control"] = "no-store"
        return response

    return dispatch
