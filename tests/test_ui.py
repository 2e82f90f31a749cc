"""The dashboard (``ckptlite ui``) over HTTP: every page and /api endpoint, on stores tests build.

Local and PostgreSQL stores hold a failed run (a 4x5 tile grid with one failed
tile, a completed stage), a run still in progress, a checkpoint tree and a
corrupted checkpoint. The JSON under /api is compared with what the CLI's --json
prints for the same store.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

import ckptlite
from ckptlite import Level, Status
from ckptlite.cli import main
from ckptlite.errors import ConfigError, ReadOnlyStoreError
from ckptlite.ui import check_bind, is_loopback, open_readonly
from ckptlite.ui.app import TOKEN_COOKIE, create_app

HOSTILE = "<script>alert(1)</script>"
TOKEN = "s3cret-token-0123456789"
STATIC = Path(ckptlite.__file__).parent / "ui" / "static"


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("CKPTLITE_") and var not in ("CKPTLITE_TEST_PG", "CKPTLITE_REQUIRE_PG"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "no-such-config.toml"))


def build(mgr: ckptlite.CheckpointManager) -> dict[str, Any]:
    """Fill a store: checkpoint tree, a corrupted checkpoint, a failed run, a running run."""
    top = mgr.save("geo", {"tiles": 20}, level=Level.PIPELINE, name="run")
    stage = mgr.save(
        "geo",
        {"raster": np.arange(12, dtype="f4").reshape(3, 4), "crs": "EPSG:4326"},
        level=Level.STAGE,
        name="resample",
        parent=top,
        metadata={"source": "dem.tif"},
    )
    step = mgr.save(
        "geo", {"tile": 0}, level=Level.STEP, name="tile_0", parent=stage, progress=(1, 4)
    )
    bad = mgr.save("geo", {"blob": b"x" * 1000}, level=Level.STAGE, name="broken", parent=top)
    mgr.backend.set_status(bad.id, Status.CORRUPTED)  # as verify marks a damaged one
    with mgr.run("geo") as failed_run:
        failed_run.stage("load").complete(np.zeros((8, 8), "f4"))
        for it in failed_run.items("tile", [f"tile_{r}_{c}" for r in range(4) for c in range(5)]):
            if it.id == "tile_2_3":
                it.fail(ValueError("no data in tile_2_3"))
            else:
                it.done({"sum": 1.5})
    live = mgr.run("live", batch_size=1)
    for n, it in enumerate(live.items("part", [f"p{i:02d}" for i in range(10)])):
        if n == 6:
            break
        it.done(n)
    live.commit()
    return {
        "top": top,
        "stage": stage,
        "step": step,
        "bad": bad,
        "failed_run": failed_run.id,
        "live_run": live.id,
    }


@pytest.fixture(params=["local", "postgres"])
def built(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(store URL, ids) of a built store on each backend."""
    if request.param == "local":
        url = str(tmp_path / "store")
    else:
        url = request.getfixturevalue("pg_schema")
    with ckptlite.open(url, durability="none") as mgr:
        ids = build(mgr)
    yield url, ids


@pytest.fixture
def client(built: tuple[str, dict[str, Any]]) -> Iterator[TestClient]:
    mgr = open_readonly(built[0])
    try:
        yield TestClient(create_app(mgr))
    finally:
        mgr.close()


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    return json.loads(out)


def get_json(client: TestClient, path: str, status: int = 200) -> Any:
    r = client.get(path)
    assert r.status_code == status, (path, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def get_page(client: TestClient, path: str, status: int = 200) -> str:
    r = client.get(path)
    assert r.status_code == status, (path, r.text)
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    return r.text


def test_runs_page_and_api(
    client: TestClient, built: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, ids = built
    data = get_json(client, "/api/runs")
    assert data["runs"] == cli_json(capsys, "--store", url, "runs")["runs"]
    by_id = {r["id"]: r for r in data["runs"]}
    assert by_id[ids["failed_run"]]["status"] == "failed"
    assert by_id[ids["failed_run"]]["error"] == "1 item(s) failed"
    assert by_id[ids["live_run"]]["status"] == "running"
    failed, live = data["live"][ids["failed_run"]], data["live"][ids["live_run"]]
    assert (failed["done"], failed["failed"], failed["pending"], failed["total"]) == (19, 1, 0, 20)
    assert failed["eta_seconds"] is None  # a finished run has no ETA
    assert (live["done"], live["failed"], live["pending"], live["total"]) == (6, 0, 4, 10)

    html = get_page(client, "/")
    for rid in (ids["failed_run"], ids["live_run"]):
        assert f'data-run="{rid}"' in html
    assert "st-failed" in html and "st-running" in html and "1 item(s) failed" in html
    # the bar of the live run: 6 of 10 done, 4 pending
    row = html.split(f'data-run="{ids["live_run"]}"')[1].split("</tr>")[0]
    assert 'data-seg="done" x="0" y="0" height="10" width="60.0"' in row
    assert re.search(r'data-seg="pending" x="60.0" y="0" height="10" width="40.0"', row)
    assert get_json(client, "/api/runs?process=live")["runs"][0]["id"] == ids["live_run"]


def test_run_page_api_map_cells_and_items(
    client: TestClient, built: tuple[str, dict[str, Any]]
) -> None:
    _, ids = built
    rid = ids["failed_run"]
    data = get_json(client, f"/api/runs/{rid}")
    assert data["run"]["id"] == rid and data["groups"] == {"tile": {"done": 19, "failed": 1}}
    assert [s["name"] for s in data["stages"]] == ["load"]
    assert data["stages"][0]["size"] > 8 * 8 * 4 - 1 and data["stages"][0]["duration"] >= 0
    assert data["failed_total"] == 1
    (item,) = data["failed"]
    assert (item["item_id"], item["attempts"], item["tile"]) == ("tile_2_3", 1, [2, 3])
    assert item["error"] == "ValueError: no data in tile_2_3"

    html = get_page(client, f"/runs/{rid}")
    assert 'id="map-canvas"' in html and "ValueError: no data in tile_2_3" in html
    assert ">load<" in html and 'class="stage"' in html
    assert html.count("<td") < 200  # the items are drawn on the canvas, not as cells

    m = get_json(client, f"/api/runs/{rid}/map?group=tile")
    assert (m["layout"], m["rows"], m["cols"], m["row0"], m["col0"]) == ("tiles", 4, 5, 0, 0)
    assert m["cells"] == "d" * 13 + "f" + "d" * 6  # tile_2_3 is cell 2*5+3
    cell = get_json(client, f"/api/runs/{rid}/cell?group=tile&index=13")
    assert cell["tile"] == [2, 3] and cell["item"]["status"] == "failed"
    assert cell["item"]["error"] == "ValueError: no data in tile_2_3"
    assert get_json(client, f"/api/runs/{rid}/cell?group=tile&index=0")["item"]["size"] > 0
    err = get_json(client, f"/api/runs/{rid}/cell?group=tile&index=20", 400)
    assert err["error"]["type"] == "InvalidInputError"

    page = get_json(client, f"/api/runs/{rid}/items?status=done&limit=5&offset=2")
    assert page["total"] == 19 and [i["item_id"] for i in page["items"]][:2] == [
        "tile_0_2",
        "tile_0_3",
    ]
    assert get_json(client, f"/api/runs/{rid}/items?status=failed")["total"] == 1
    assert get_json(client, f"/api/runs/{rid}/items?status=bogus", 400)["error"]["hint"]

    live = get_json(client, f"/api/runs/{ids['live_run']}/map?group=part")
    assert (live["layout"], live["cells"], live["items"]) == ("grid", "dddddd", 6)
    assert get_json(client, f"/api/runs/{ids['live_run']}")["live"]["rate_per_min"] > 0

    assert get_json(client, "/api/runs/nope", 404)["error"]["type"] == "RunNotFoundError"
    assert "RunNotFoundError" in get_page(client, "/runs/nope", 404)


def test_checkpoint_pages_match_the_cli(
    client: TestClient, built: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, ids = built
    tree = get_json(client, "/api/checkpoints")
    assert tree["tree"] == cli_json(capsys, "--store", url, "ls", "--tree")["tree"]
    html = get_page(client, "/checkpoints")
    for key in ("top", "stage", "step", "bad"):
        assert f'data-id="{ids[key].id}"' in html
    assert "lvl-pipeline" in html and "lvl-stage" in html and "lvl-step" in html
    assert "st-corrupted" in html and "1/4" in html

    sid = ids["stage"].id
    assert get_json(client, f"/api/checkpoints/{sid}") == cli_json(
        capsys, "--store", url, "show", sid
    )
    state = get_json(client, f"/api/checkpoints/{sid}/state")
    assert state == cli_json(capsys, "--store", url, "cat", sid)
    raster = state["state"]["raster"]
    assert (raster["dtype"], raster["shape"], raster["min"], raster["max"]) == (
        "float32",
        [3, 4],
        0.0,
        11.0,
    )
    assert "data" not in raster  # a summary, never the data
    html = get_page(client, f"/checkpoints/{sid}")
    assert "float32" in html and "dem.tif" in html and "EPSG:4326" in html
    assert ids["top"].id in html  # the parent, linked
    assert "CheckpointNotFoundError" in get_page(client, "/checkpoints/chk_nope", 404)
    assert get_json(client, "/api/checkpoints/chk_nope", 404)["error"]["hint"]


def test_health_page_and_stats(
    client: TestClient, built: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, ids = built
    stats = get_json(client, "/api/stats")
    assert stats == cli_json(capsys, "--store", url, "stats")
    health = get_json(client, "/api/health")
    assert health["stats"] == stats and health["last_verify"] is None
    assert [c["id"] for c in health["corrupted"]] == [ids["bad"].id]
    geo = health["bytes_by_process"]["geo"]
    assert geo["checkpoints"] == stats["checkpoints"]  # the run "geo" saved its stage there too
    assert geo["size"] >= 1000 and set(health["bytes_by_process"]) == {"geo"}
    html = get_page(client, "/health")
    assert ids["bad"].id in html and "dedup ratio" in html and "not recorded" in html
    assert "corrupted 1" in html


def test_no_endpoint_writes_and_local_stores_open_read_only(
    built: tuple[str, dict[str, Any]], client: TestClient
) -> None:
    url, ids = built

    def snapshot() -> Any:
        if "://" not in url:
            root = Path(url)
            return sorted(
                (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in root.rglob("*")
            )
        with ckptlite.open(url) as m:
            return m.stats(), [(r.id, r.changed) for r in m.list_runs()]

    before = snapshot()
    paths = ["/", "/checkpoints", "/health", "/api/runs", "/api/checkpoints", "/api/health"]
    for rid in (ids["failed_run"], ids["live_run"]):
        paths += [f"/runs/{rid}", f"/api/runs/{rid}", f"/api/runs/{rid}/items"]
    for key in ("stage", "bad"):
        paths += [f"/checkpoints/{ids[key].id}", f"/api/checkpoints/{ids[key].id}/state"]
    for p in paths:
        assert client.get(p).status_code in (200, 500), p
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.request(method, "/api/runs").status_code == 405
    assert snapshot() == before
    if "://" not in url:
        assert not list(Path(url).glob("*-wal"))
        mgr = open_readonly(url)
        with pytest.raises(ReadOnlyStoreError):
            mgr.save("geo", 1)
        mgr.close()


def test_hostile_values_are_escaped_everywhere(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with ckptlite.open(store, durability="none") as mgr:
        cp = mgr.save(
            HOSTILE,
            {"note": HOSTILE, HOSTILE: [HOSTILE]},
            name=HOSTILE,
            metadata={HOSTILE: HOSTILE, "x": "</pre><img src=x onerror=alert(1)>"},
        )
        with mgr.run(HOSTILE) as run:
            run.stage(HOSTILE).complete(HOSTILE)
            for it in run.items(HOSTILE, [HOSTILE, "ok_1_1"]):
                it.fail(HOSTILE) if it.id == HOSTILE else it.done(HOSTILE)
        rid = run.id
    mgr = open_readonly(str(store))
    client = TestClient(create_app(mgr))
    pages = ["/", f"/runs/{rid}", "/checkpoints", f"/checkpoints/{cp.id}", "/health"]
    for p in pages:
        html = get_page(client, p)
        assert HOSTILE not in html, p
        assert "<img src=x" not in html, p
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or "\\u003cscript" in html, p
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in get_page(client, f"/runs/{rid}")
    # The JSON keeps the values as they are (JSON is not HTML) ...
    data = get_json(client, f"/api/runs/{rid}")
    assert data["failed"][0]["item_id"] == HOSTILE and data["failed"][0]["error"] == HOSTILE
    # ... and the page script writes them with textContent only.
    js = (STATIC / "ui.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js
    mgr.close()


def test_token_is_checked_on_every_request(built: tuple[str, dict[str, Any]]) -> None:
    mgr = open_readonly(built[0])
    try:
        client = TestClient(create_app(mgr, token=TOKEN))
        for p in ("/", "/api/runs", "/static/ui.js", "/api/health"):
            assert client.get(p).status_code == 401, p
        assert client.get("/api/runs?token=wrong-token-0123456789").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/runs", headers=bearer).status_code == 200
        r = client.get(f"/?token={TOKEN}")
        assert r.status_code == 200 and TOKEN_COOKIE in r.cookies
        assert client.get("/api/runs").status_code == 200  # the page's polls: by cookie
        client.cookies.clear()
        assert client.get("/api/runs").status_code == 401
    finally:
        mgr.close()


def test_allowed_hosts_refuse_other_host_headers(built: tuple[str, dict[str, Any]]) -> None:
    mgr = open_readonly(built[0])
    try:
        client = TestClient(
            create_app(mgr, allowed_hosts=["127.0.0.1"]), base_url="http://127.0.0.1"
        )
        assert client.get("/api/runs").status_code == 200
        assert client.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400
    finally:
        mgr.close()


def test_non_loopback_bind_without_token_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="without --token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(ConfigError, match="16 characters"):
        check_bind("0.0.0.0", "short")
    store = tmp_path / "store"
    ckptlite.open(store).close()
    code = main(["--store", str(store), "ui", "--host", "0.0.0.0", "--port", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "without --token" in err and "hint:" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code = main(["--store", str(store), "ui", "--port", port])
        _, err = capsys.readouterr()
        assert code == 2 and "cannot listen on 127.0.0.1:" in err and "--port" in err
    code = main(["--store", str(tmp_path / "absent"), "ui", "--json"])
    out, _ = capsys.readouterr()
    assert code == 2 and json.loads(out)["error"]["type"] == "ConfigError"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ckptlite_ui_serves_a_real_server(built: tuple[str, dict[str, Any]]) -> None:
    import httpx2 as httpx

    url, ids = built
    port = _free_port()
    code = "import sys; from ckptlite.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "--store", url, "ui", "--port", str(port)]
    argv += ["--token", TOKEN]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stderr.readline() if proc.stderr else ""
            assert f"http://127.0.0.1:{port}/?token={TOKEN}" in line, line
            base, bearer = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
            for _ in range(100):
                try:
                    r = httpx.get(f"{base}/api/runs", headers=bearer)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert r.status_code == 200
            assert {run["id"] for run in r.json()["runs"]} == {ids["failed_run"], ids["live_run"]}
            assert httpx.get(f"{base}/api/runs").status_code == 401
            # DNS rebinding: a loopback bind answers its own host names only
            evil = httpx.get(f"{base}/api/runs", headers={**bearer, "Host": "evil.example"})
            assert evil.status_code == 400
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.slow
def test_a_run_of_100000_items(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = [f"r{r}_c{c}" for r in range(250) for c in range(400)]
    with ckptlite.open(store, durability="none") as mgr, mgr.run("big", batch_size=10_000) as run:
        for it in run.items("tile", ids):
            if it.id.endswith("_c7"):
                it.fail("no data")
            else:
                it.done(None)
    mgr = open_readonly(str(store))
    client = TestClient(create_app(mgr))
    data = get_json(client, "/api/runs")
    assert data["live"][run.id]["done"] == 100_000 - 250
    html = get_page(client, f"/runs/{run.id}")
    assert len(html) < 200_000  # 200 failed items listed, the rest on the canvas
    m = get_json(client, f"/api/runs/{run.id}/map?group=tile")
    assert (m["layout"], m["rows"], m["cols"], len(m["cells"])) == ("tiles", 250, 400, 100_000)
    assert m["cells"][7] == "f" and m["cells"][8] == "d" and m["cells"].count("f") == 250
    r = client.get(f"/api/runs/{run.id}/map?group=tile", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"
    assert get_json(client, f"/api/runs/{run.id}/items?status=failed&limit=1000")["total"] == 250
    mgr.close()


@pytest.mark.parametrize(
    "ids",
    [
        [f"tile_{r}_{c}" for r in range(6) for c in range(4)],  # a tile map, growing down
        [f"part-{n:03d}" for n in range(24)],  # a grid
    ],
)
def test_maps_followed_by_the_ledger_clock_equal_maps_built_afresh(
    tmp_path: Path, ids: list[str]
) -> None:
    from ckptlite.ui._data import Dashboard

    store = tmp_path / "store"
    with ckptlite.open(store, durability="none") as mgr:
        run = mgr.run("p", batch_size=1)
        items = list(run.items("g", iter(ids)))  # no total known: the map grows as items come
        for it in items[:10]:
            it.fail("boom") if it.id in (ids[3], ids[7]) else it.done(1)
        followed = Dashboard(open_readonly(str(store)), min_interval=0)
        first = followed.item_map(run.id, "g")
        assert first["cells"].count("f") == 2 and first["items"] == 10
        run.finish()  # this worker leaves; the rerun registers the group afresh
        rerun = mgr.run("p", run_id=run.id, batch_size=1)  # failed items done, new ones marked
        for it in rerun.items("g", iter(ids)):
            if it.id in (ids[3], ids[7], *ids[10:16]):
                it.fail("again") if it.id == ids[12] else it.done(2)
        grown = followed.item_map(run.id, "g")  # a row more below the tiles, or cells more
        assert grown == Dashboard(open_readonly(str(store))).item_map(run.id, "g")
        assert grown["rows"] == 4 and grown["cells"].count("d") == 15
        rerun.finish()  # other ids next: no other worker may be working on the group
        with mgr.run("p", run_id=run.id, batch_size=1) as last:  # a tile outside the map
            for it in last.items("g", ["tile_9_9"] if "tile_0_0" in ids else ["zz"]):
                it.done(3)
        fresh = Dashboard(open_readonly(str(store)))
        for group_map in (followed, fresh):
            m = group_map.item_map(run.id, "g")
            assert m["items"] == 17 and m["cells"].count("f") == 1
        assert followed.item_map(run.id, "g") == fresh.item_map(run.id, "g")
        assert (
            followed.run(run.id)["groups"]
            == fresh.run(run.id)["groups"]
            == {"g": {"done": 16, "failed": 1}}
        )


def test_tile_map_laid_out_by_row_col_in_item_states(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with ckptlite.open(store, durability="none") as mgr, mgr.run("scenes") as run:
        for n, it in enumerate(run.items("scene", [f"S2A_{n:04d}" for n in range(6)])):
            row, col = divmod(n, 3)
            it.done({"row": row + 10, "col": col + 20, "cloud": 0.1}) if n != 4 else it.fail("x")
    mgr = open_readonly(str(store))
    try:
        m = get_json(TestClient(create_app(mgr)), f"/api/runs/{run.id}/map?group=scene")
        assert (m["layout"], m["rows"], m["cols"], m["row0"], m["col0"]) == ("tiles", 2, 3, 10, 20)
        # the failed scene has no state to place it by: left out, and counted
        assert m["cells"] == "dddd.d" and m["unplaced"] == 1 and m["items"] == 6
    finally:
        mgr.close()


def test_big_states_are_not_loaded_to_be_summarised(built: tuple[str, dict[str, Any]]) -> None:
    url, ids = built
    mgr = open_readonly(url)
    try:
        client = TestClient(create_app(mgr, max_state_bytes=50))
        big, small = ids["stage"].id, ids["step"].id  # 85 and 7 bytes of state
        err = get_json(client, f"/api/checkpoints/{big}/state", 400)["error"]
        assert "up to 50 bytes" in err["message"] and f"ckptlite cat {big}" in err["hint"]
        html = get_page(client, f"/checkpoints/{big}")
        assert "up to 50 bytes" in html and "EPSG" not in html
        assert get_json(client, f"/api/checkpoints/{small}/state")["state"] == {"tile": 0}
    finally:
        mgr.close()


def test_workers_and_claimed_items_are_shown_when_runs_record_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared runs (issue 15) add claimed counts and workers to a run: both are rendered."""
    import dataclasses

    @dataclasses.dataclass(frozen=True, slots=True)
    class SharedRun(ckptlite.RunRecord):
        claimed: int = 0
        workers: tuple[dict[str, Any], ...] = ()

    with ckptlite.open(tmp_path / "store", durability="none") as mgr:
        live = build(mgr)["live_run"]
    mgr = open_readonly(str(tmp_path / "store"))
    try:
        plain = mgr.backend.get_run(live)
        worker = {"id": "w-7", "host": "<b>gpu-3</b>", "heartbeat": "2026-11-30T12:00:00+00:00"}
        shared = SharedRun(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)})
        shared = dataclasses.replace(shared, claimed=3, workers=(worker,))
        monkeypatch.setattr(mgr, "list_runs", lambda process_id=None: [shared])
        monkeypatch.setattr(mgr.backend, "get_run", lambda run_id: shared)
        client = TestClient(create_app(mgr))
        data = get_json(client, "/api/runs")
        assert data["runs"][0]["workers"] == [worker]
        assert data["live"][live]["claimed"] == 3 and data["live"][live]["pending"] == 1
        for page in ("/", f"/runs/{live}"):
            html = get_page(client, page)
            assert "w-7" in html and "&lt;b&gt;gpu-3&lt;/b&gt;" in html and "<b>gpu" not in html
            assert 'data-seg="claimed"' in html and 'width="30.0"' in html  # 3 of 10
    finally:
        mgr.close()


def test_the_dashboard_reads_through_the_manager_never_its_backend() -> None:
    """Imports point one way (cli/ui -> manager): the dashboard has no backend calls."""
    import ckptlite.ui

    for path in Path(ckptlite.ui.__file__).parent.glob("*.py"):
        assert ".backend" not in path.read_text(), path.name
