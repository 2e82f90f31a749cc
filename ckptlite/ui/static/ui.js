// ckptlite dashboard: polls /api and updates the page in place.
// Store values are user data: they are written with textContent or setAttribute only.
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const api = body.dataset.api;
  const poll = Math.max(500, parseInt(body.dataset.poll || "3000", 10));
  const COLORS = { d: [46, 158, 79], f: [217, 70, 59], c: [224, 168, 0], ".": [213, 217, 222] };
  const enc = encodeURIComponent;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function link(href, text) { const a = el("a", text); a.setAttribute("href", href); return a; }
  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 10) return s.toFixed(1) + "s";
    s = Math.floor(s);
    const p = (n) => String(n).padStart(2, "0");
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m " + p(s % 60) + "s";
    if (s < 172800) return Math.floor(s / 3600) + "h " + p(Math.floor(s % 3600 / 60)) + "m";
    return Math.floor(s / 86400) + "d " + p(Math.floor(s % 86400 / 3600)) + "h";
  }
  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) + "Z" : "-"; }
  function human(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }
  function rate(l) {
    if (l.rate_per_min === null || l.rate_per_min === undefined) return "-";
    return l.rate_per_min.toFixed(1) + "/min" + (l.rate_basis === "average" ? " (avg)" : "");
  }
  function workers(ws) {
    if (!Array.isArray(ws) || !ws.length) return "-";
    return ws.map((w) => (w && typeof w === "object")
      ? Object.entries(w).map(([k, v]) => k + " " + v).join(" ") : String(w)).join("; ");
  }
  function set(root, k, v) {
    root.querySelectorAll('[data-k="' + k + '"]').forEach((e) => { e.textContent = v; });
  }
  function setStatus(root, status) {
    root.querySelectorAll('[data-k="status"]').forEach((e) => {
      e.textContent = status;
      e.className = "status st-" + status;
    });
  }
  function setBar(svg, l) {
    if (!svg) return;
    const t = l.total || 1;
    let x = 0;
    for (const seg of ["done", "failed", "claimed", "pending"]) {
      const r = svg.querySelector('[data-seg="' + seg + '"]');
      const w = seg === "pending" ? Math.max(0, 100 - x) : 100 * (l[seg] || 0) / t;
      r.setAttribute("x", x.toFixed(3));
      r.setAttribute("width", w.toFixed(3));
      x += w;
    }
    svg.setAttribute("aria-label", l.done + " done, " + l.failed + " failed, " +
      l.claimed + " claimed, " + l.pending + " pending");
  }
  function fillLive(root, run, l) {
    setStatus(root, run.status);
    for (const k of ["done", "failed", "claimed", "pending", "total"]) set(root, k, l[k]);
    set(root, "rate", rate(l));
    set(root, "eta", l.eta_seconds === null ? "-" : duration(l.eta_seconds));
    set(root, "started_at", when(run.started_at));
    set(root, "updated_at", when(run.updated_at));
    set(root, "finished_at", when(run.finished_at));
    set(root, "error", run.error || "");
    set(root, "workers", workers(run.workers));
    setBar(root.querySelector("svg.bar"), l);
  }
  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  // -- runs ---------------------------------------------------------------------------
  function updateRuns(data) {
    const rows = new Map();
    document.querySelectorAll("#runs tbody tr").forEach((tr) => rows.set(tr.dataset.run, tr));
    const ids = data.runs.map((r) => r.id);
    if (ids.length !== rows.size || ids.some((id) => !rows.has(id))) {
      location.reload(); // a run started or went: the table's rows change
      return;
    }
    for (const run of data.runs) fillLive(rows.get(run.id), run, data.live[run.id]);
  }

  // -- one run ------------------------------------------------------------------------
  let mapState = null;
  let lastCount = null;
  function updateRun(data) {
    fillLive(document.getElementById("summary"), data.run, data.live);
    set(document, "failed_total", "(" + data.failed_total + ")");
    document.querySelectorAll("[data-gcount]").forEach((e) => {
      const c = data.groups[e.dataset.gcount];
      if (c) e.textContent = "(" + c.done + " done, " + c.failed + " failed)";
    });
    const tbody = document.querySelector("#failed tbody");
    tbody.replaceChildren(...data.failed.map((it) => {
      const tr = el("tr");
      tr.append(el("td", it.group), el("td", it.item_id, "mono"), el("td", it.attempts, "num"),
        el("td", it.error || "", "error"));
      return tr;
    }));
    const count = data.live.done + ":" + data.live.failed;
    if (count !== lastCount) { lastCount = count; loadMap(); }
  }
  async function loadMap() {
    const fig = document.getElementById("map");
    if (!fig) return;
    const m = await getJSON("/api/runs/" + enc(fig.dataset.run) + "/map?group=" + enc(fig.dataset.group));
    drawMap(fig, m);
  }
  function drawMap(fig, m) {
    const canvas = document.getElementById("map-canvas");
    const cols = Math.max(1, m.cols), rows = Math.max(1, m.rows);
    const off = document.createElement("canvas");
    off.width = cols; off.height = rows;
    const octx = off.getContext("2d");
    const img = octx.createImageData(cols, rows);
    const px = img.data;
    for (let i = 0; i < cols * rows; i++) {
      const c = i < m.cells.length ? COLORS[m.cells[i]] : null;
      if (!c) continue; // past the last item of a grid: left blank
      px[4 * i] = c[0]; px[4 * i + 1] = c[1]; px[4 * i + 2] = c[2]; px[4 * i + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    const scale = Math.max(1, Math.floor(Math.min(900 / cols, 320 / rows)));
    canvas.width = cols * scale; canvas.height = rows * scale;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    mapState = m;
    const n = (ch) => m.cells.split(ch).length - 1;
    document.getElementById("map-layout").textContent = (m.layout === "tiles"
      ? "tile map, rows " + m.row0 + "–" + (m.row0 + rows - 1) + ", cols " + m.col0 + "–" + (m.col0 + cols - 1)
      : "grid of " + m.items + " items in ledger order") + ": " + n("d") + " done, " + n("f") + " failed" +
      (m.unplaced ? ", " + m.unplaced + " failed without a state to place them by" : "");
    // The map as data, for tools and tests: {layout, rows, cols, row0, col0, cells}.
    document.getElementById("map-json").textContent = JSON.stringify(m);
    fig.dataset.drawn = String((parseInt(fig.dataset.drawn || "0", 10)) + 1);
  }
  function mapTips() {
    const canvas = document.getElementById("map-canvas");
    const tip = document.getElementById("map-tip");
    if (!canvas) return;
    let pending = null;
    canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
    canvas.addEventListener("mousemove", (ev) => {
      const m = mapState;
      if (!m) return;
      const rect = canvas.getBoundingClientRect();
      const col = Math.floor((ev.clientX - rect.left) / rect.width * m.cols);
      const row = Math.floor((ev.clientY - rect.top) / rect.height * m.rows);
      const index = row * m.cols + col;
      if (col < 0 || row < 0 || col >= m.cols || row >= m.rows || index >= m.cells.length) { tip.hidden = true; return; }
      tip.style.left = (ev.clientX - rect.left + 12) + "px";
      tip.style.top = (ev.clientY - rect.top + 12) + "px";
      if (pending === index) return;
      pending = index;
      const fig = document.getElementById("map");
      getJSON("/api/runs/" + enc(fig.dataset.run) + "/cell?group=" + enc(fig.dataset.group) + "&index=" + index)
        .then((c) => {
          if (pending !== index) return;
          const lines = [];
          if (c.tile) lines.push("row " + c.tile[0] + ", col " + c.tile[1]);
          if (c.item) {
            lines.push(c.item.item_id, c.item.status + ", attempts " + c.item.attempts + ", result " + human(c.item.size));
            if (c.item.error) lines.push(c.item.error);
          } else lines.push("pending (not in the ledger yet)");
          tip.replaceChildren(...lines.map((t) => el("div", t)));
          tip.hidden = false;
        }).catch(() => { tip.hidden = true; });
    });
  }

  // -- checkpoints, one checkpoint, health -----------------------------------------------
  function treeNode(n) {
    const c = n.checkpoint;
    const li = el("li");
    li.dataset.id = c.id;
    const age = duration((Date.now() - Date.parse(c.created_at)) / 1000) + " ago";
    li.append(el("span", c.level, "lvl lvl-" + c.level), " ",
      link("/checkpoints/" + enc(c.id), c.process_id + " · " + (c.name || "-")), " ",
      el("span", c.status, "status st-" + c.status), " ",
      el("span", human(c.size) + " · " + age + (c.progress ? " · " + c.progress[0] + "/" + c.progress[1] : ""), "muted"));
    if (n.children.length) { const ul = el("ul"); ul.append(...n.children.map(treeNode)); li.append(ul); }
    return li;
  }
  function updateTree(data) { document.getElementById("tree").replaceChildren(...data.tree.map(treeNode)); }
  function updateCheckpoint(data) {
    const c = data.checkpoint;
    setStatus(document, c.status);
    set(document, "status", c.status);
  }
  function updateHealth(data) {
    const s = data.stats;
    set(document, "checkpoints", s.checkpoints);
    set(document, "chunks", s.chunks);
    set(document, "logical_bytes", human(s.logical_bytes) + " (" + s.logical_bytes + ")");
    set(document, "stored_bytes", human(s.stored_bytes) + " (" + s.stored_bytes + ")");
    set(document, "dedup_ratio", s.dedup_ratio.toFixed(2) + "x");
    set(document, "by_status", Object.entries(s.by_status).map(([k, v]) => k + " " + v).join(", "));
    document.getElementById("per").tBodies[0].replaceChildren(...Object.entries(data.bytes_by_process).map(([p, v]) => {
      const tr = el("tr");
      tr.append(el("td", p), el("td", v.checkpoints, "num"), el("td", human(v.size), "num"), el("td", human(v.stored_size), "num"));
      return tr;
    }));
    document.getElementById("corrupted").replaceChildren(...data.corrupted.map((c) => {
      const li = el("li");
      li.append(link("/checkpoints/" + enc(c.id), c.id), " " + c.process_id + " · " + (c.name || "-"));
      return li;
    }));
  }

  const updaters = { runs: updateRuns, run: updateRun, checkpoints: updateTree, checkpoint: updateCheckpoint, health: updateHealth };
  const live = document.getElementById("live");
  async function tick() {
    try {
      updaters[page](await getJSON(api));
      live.classList.remove("stale");
      live.dataset.polls = String(parseInt(live.dataset.polls || "0", 10) + 1);
    } catch (e) {
      live.classList.add("stale");
    } finally {
      setTimeout(tick, poll);
    }
  }
  if (page === "run") { mapTips(); }
  if (updaters[page] && api) tick();
})();
