"""The dashboard in a real browser: headless Chromium on a store a running pipeline writes.

A pipeline process works through a 30x30 tile grid (one tile fails), ``ckptlite ui``
serves its store from another process, and Chromium loads the runs page and the
run page (``--dump-dom`` after the page's own polls ran): the rendered DOM shows
the counts, the statuses and the tile map (the map's data island, which the page
writes after drawing the canvas). Then one run page stays open (driven through
the DevTools protocol, over a small stdlib websocket client) and is read twice:
the same document (a marker set on ``window`` survives), its counts and map
advanced in place by its polls.
``CKPTLITE_UI_SCREENSHOT=docs/ui.png`` also saves the run page's screenshot there.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

import ckptlite

PIPELINE = textwrap.dedent(
    """
    import sys, time, ckptlite
    store, n, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with ckptlite.open(store, durability="none") as mgr:
        with mgr.run("tiles", batch_size=5, batch_seconds=0.2) as run:
            for name, seconds in (("generate", 0.4), ("resample", 0.6)):
                stage = run.stage(name)
                if not stage.done:
                    time.sleep(seconds)
                    stage.complete({"grid": [n, n], "stage": name})
            ids = [f"tile_{r}_{c}" for r in range(n) for c in range(n)]
            for item in run.items("tile", ids):
                time.sleep(delay)
                if item.id == "tile_0_3":
                    item.fail(ValueError("no data in tile_0_3"))
                else:
                    item.done({"px": 1})
    """
)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed: apt-get install -y chromium (.ci/run does it)"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _browse(url: str, profile: Path, *extra: str) -> str:
    """Load ``url`` in headless Chromium, let its scripts run ~3 s, return stdout."""
    argv = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        *extra,
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class DevTools:
    """The DevTools protocol over a websocket: enough to open a page and evaluate in it."""

    def __init__(self, ws_url: str) -> None:
        u = urlparse(ws_url)
        assert u.hostname and u.port
        self.sock = socket.create_connection((u.hostname, u.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self._read(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.calls = 0

    def close(self) -> None:
        self.sock.close()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the websocket")
            buf += chunk
        return buf

    def _send(self, message: dict[str, Any]) -> None:
        data, mask = json.dumps(message).encode(), os.urandom(4)
        n = len(data)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 1 << 16:
            head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))  # clients mask frames
        self.sock.sendall(head + mask + masked)

    def _receive(self) -> dict[str, Any]:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            if b0 & 0x0F in (0x0, 0x1):  # text and its continuations (no pings expected)
                parts.append(payload)
                if b0 & 0x80:
                    return dict(json.loads(b"".join(parts)))

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.calls += 1
        message: dict[str, Any] = {"id": self.calls, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(message)
        while (reply := self._receive()).get("id") != self.calls:
            pass  # an event
        assert "error" not in reply, reply
        return dict(reply["result"])


def _field(dom: str, key: str) -> str:
    m = re.search(rf'data-k="{key}"[^>]*>([^<]*)<', dom)
    assert m, f"no {key} in the DOM"
    return m[1]


@pytest.fixture
def live_store(tmp_path: Path) -> Iterator[str]:
    """A store a pipeline process is writing to (killed at the end)."""
    store = tmp_path / "store"
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    proc = subprocess.Popen([sys.executable, str(script), str(store), "30", "0.05"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (store / "ckptlite.db").exists():
                try:
                    mgr = ckptlite.open(store, readonly=True)
                except ckptlite.ConfigError:
                    # The file exists before the pipeline's first transaction makes
                    # it a store (user_version 0): "no ckptlite store" yet.
                    time.sleep(0.2)
                    continue
                with mgr:
                    runs = mgr.list_runs()
                    if runs and runs[0].progress and runs[0].progress[0] >= 20:
                        break
            assert proc.poll() is None, "the pipeline ended early"
            time.sleep(0.2)
        else:
            raise AssertionError("the pipeline did not start")
        yield str(store)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def server(live_store: str) -> Iterator[str]:
    """``ckptlite ui`` on a free port, in its own process; yields its base URL."""
    port = _free_port()
    code = "import sys; from ckptlite.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "--store", live_store, "ui", "--port", str(port)]
    with subprocess.Popen([*argv, "--poll", "1"], stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stderr.readline() if proc.stderr else ""
            assert f"http://127.0.0.1:{port}/" in line, line
            for _ in range(100):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.slow
def test_runs_and_run_pages_in_chromium_follow_a_running_pipeline(
    server: str, live_store: str, tmp_path: Path
) -> None:
    with ckptlite.open(live_store, readonly=True) as mgr:
        run_id = mgr.list_runs()[0].id

    runs_dom = _browse(f"{server}/", tmp_path / "p1", "--dump-dom")
    row = runs_dom.split(f'data-run="{run_id}"', 1)[1].split("</tr>", 1)[0]
    assert _field(row, "status") == "running" and _field(row, "process_id") == "tiles"
    assert int(_field(row, "done")) >= 20 and _field(row, "failed") == "1"
    assert re.search(r'id="live"[^>]*data-polls="[1-9]', runs_dom), "the page never polled"

    def observe() -> tuple[int, dict[str, object]]:
        dom = _browse(f"{server}/runs/{run_id}", tmp_path / "p2", "--dump-dom")
        assert _field(dom, "status") == "running"
        assert "no data in tile_0_3" in dom
        assert ">generate<" in dom and ">resample<" in dom  # the stages, on the timeline
        island = re.search(r'<script type="application/json" id="map-json">([^<]*)</script>', dom)
        assert island, "the tile map was not drawn"
        return int(_field(dom, "done")), json.loads(island[1])

    done1, map1 = observe()
    assert (map1["layout"], map1["cols"], map1["row0"], map1["col0"]) == ("tiles", 30, 0, 0)
    assert map1["rows"] == 30  # rows not reached yet are drawn pending
    cells = str(map1["cells"])
    assert cells[3] == "f"  # tile_0_3
    assert cells[0] == cells[1] == cells[29] == "d"  # tile_0_0, tile_0_1, tile_0_29
    assert cells[-1] == "."  # tile_29_29: pending
    assert cells.count("d") >= done1 - 5

    # One page, left open: its polls advance it in place (no reload: the marker stays).
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    argv += [f"--user-data-dir={tmp_path / 'p4'}", "--remote-debugging-port=0", "about:blank"]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as browser:
        try:
            assert browser.stderr
            line = next(x for x in browser.stderr if "DevTools listening on" in x)
            cdp = DevTools(line.split(" on ", 1)[1].strip())
            target = cdp.call("Target.createTarget", url=f"{server}/runs/{run_id}")["targetId"]
            session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)
            probe = (
                "[window.__probe, document.querySelector('#summary [data-k=done]').textContent,"
                " +(document.getElementById('live').dataset.polls || 0),"
                " JSON.parse(document.getElementById('map-json').textContent).cells || '']"
            )

            def look(first: bool) -> list[Any]:
                expr = ("window.__probe = 'same page'; " if first else "") + probe
                result = cdp.call(
                    "Runtime.evaluate", session["sessionId"], expression=expr, returnByValue=True
                )
                return list(result["result"]["value"])

            try:
                time.sleep(2.0)
                _, done_a, polls_a, cells_a = look(True)
                time.sleep(3.0)
                probe_b, done_b, polls_b, cells_b = look(False)
            finally:
                cdp.close()
        finally:
            browser.terminate()
            browser.wait(10)
    assert probe_b == "same page", "the page was reloaded"
    assert polls_b >= polls_a + 2 and int(done_b) > int(done_a) >= done1
    assert cells_b.count("d") > cells_a.count("d") and cells_b[3] == "f"

    shot = tmp_path / "ui.png"
    size = "--window-size=1280,1000"
    _browse(f"{server}/runs/{run_id}", tmp_path / "p3", f"--screenshot={shot}", size)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    if os.environ.get("CKPTLITE_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CKPTLITE_UI_SCREENSHOT"])
