"""Run the benchmarks in full mode and report every target of DESIGN.md §7.

    python -m bench.report            # full mode: prints the table, writes RESULTS.md + PNG
    python -m bench.report --quick    # the same from quick-mode sizes (a smoke test)
    python -m bench.report --from-json FILE   # re-render from an earlier run's JSON

Writes bench/RESULTS.md (table, machine, per-target notes, profiles) and
bench/throughput.png (save/load throughput against state size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    target: str
    work: str
    ckptlite: str
    baseline: str
    measured: str
    limit: str
    met: bool | None  # None: not measured

    def cells(self) -> list[str]:
        met = "n/a" if self.met is None else ("met" if self.met else "NOT met")
        return [
            self.target,
            self.work,
            self.ckptlite,
            self.baseline,
            self.measured,
            self.limit,
            met,
        ]


HEADER = ["target", "work", "ckptlite", "baseline", "measured", "limit", "result"]


def run_benchmarks(mode: str, json_path: Path) -> int:
    """Run pytest bench/ in ``mode``; return its exit code."""
    env = dict(os.environ, CKPTLITE_BENCH=mode)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        "--benchmark-columns=min,median,max,rounds",
    ]
    print("$ CKPTLITE_BENCH=" + mode, " ".join(cmd[2:]), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr, check=False).returncode


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


class Results:
    """pytest-benchmark JSON, indexed by (target, role, label)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.benches = data.get("benchmarks", [])

    def find(self, target: str, role: str | None = None, label: str | None = None) -> list[Any]:
        return [
            b
            for b in self.benches
            if b["extra_info"].get("target") == target
            and (role is None or b["extra_info"].get("role") == role)
            and (label is None or b["extra_info"].get("label") == label)
        ]

    def one(self, target: str, role: str, label: str | None = None) -> Any | None:
        found = self.find(target, role, label)
        return found[0] if found else None

    @staticmethod
    def median(b: Any) -> float:
        return float(b["stats"]["median"])


def _pair(
    r: Results,
    target: str,
    work: str,
    limit: float,
    better: str,
    inverse: bool = False,
) -> Row:
    """A ckptlite-vs-baseline row: ratio = ckptlite/baseline time (or its inverse).

    The ratio comes from the interleaved test (both sides alternately, same
    conditions); the separate benchmarks' ratio is shown beside it.
    """
    c, b = r.one(target, "ckptlite"), r.one(target, "baseline")
    pair = r.one(target, "pair")
    if pair is None and (c is None or b is None):
        return Row(target, work, "-", "-", "not measured", "", None)

    def ratio_of(ct: float, bt: float) -> float:
        return bt / ct if inverse else ct / bt

    separate = ""
    if c is not None and b is not None:
        separate = f" (separate runs: {ratio_of(r.median(c), r.median(b)):.2f}x)"
    if pair is not None:
        (cl, ct), (bl, bt) = list(pair["extra_info"]["medians"].items())[:2]
    else:
        cl, ct, bl, bt = (
            c["extra_info"]["label"],
            r.median(c),
            b["extra_info"]["label"],
            r.median(b),
        )
    ratio = ratio_of(ct, bt)
    met = ratio >= limit if better == ">=" else ratio <= limit
    return Row(
        target,
        work,
        f"{_fmt_time(ct)} ({cl})",
        f"{_fmt_time(bt)} ({bl})",
        f"{ratio:.2f}x{separate}",
        f"{better} {limit}x",
        met,
    )


def rows(r: Results) -> list[Row]:
    """Evaluate every target."""
    out = [
        _pair(r, "P1", "save a ~1 KB state (median)", 0.6, "<="),
        _pair(r, "P2", "latest + load of it (median)", 1.5, "<="),
        _pair(r, "P3", "save 64 MiB float32: throughput vs baseline", 1.0, ">=", inverse=True),
        _pair(r, "P4", "load it, verified: throughput vs baseline", 0.6, ">=", inverse=True),
    ]
    resave, first = r.one("P5", "ckptlite"), r.one("P5", "baseline")
    if resave and first:
        worst = float(resave["extra_info"]["new_bytes_max"])
        mean = float(resave["extra_info"]["new_bytes_mean"])
        out.append(
            Row(
                "P5",
                "save again, 1% rows changed: new bytes stored (mean over rounds, band at "
                "a random row)",
                f"{mean * 100:.2f}% of the first save (worst round {worst * 100:.2f}%)",
                "-",
                f"{mean * 100:.2f}%",
                "<= 3%",
                mean <= 0.03,
            )
        )
        ratio = r.median(resave) / r.median(first)
        out.append(
            Row(
                "P5",
                "save again, 1% rows changed: time vs first save",
                _fmt_time(r.median(resave)),
                f"{_fmt_time(r.median(first))} (first save)",
                f"{ratio:.2f}x",
                "<= 0.5x",
                ratio <= 0.5,
            )
        )
    else:
        out.append(Row("P5", "save again, 1% rows changed", "-", "-", "not measured", "", None))
    out += _limits(r, "P6", lambda b: b["extra_info"]["label"].startswith("latest"), "latest")
    out += _limits(r, "P6", lambda b: b["extra_info"]["label"].startswith("open"), "open")
    legacy, ck = r.one("P7", "baseline"), r.one("P7", "ckptlite")
    pair = r.one("P7", "pair")
    if pair:
        (_, ct), (_, lt) = list(pair["extra_info"]["medians"].items())[:2]
        separate = ""
        if legacy and ck:
            separate = f" (separate runs: {r.median(legacy) / r.median(ck):.0f}x)"
        out.append(
            Row(
                "P7",
                f"save at {pair['extra_info']['checkpoints']:,} checkpoints: speed-up",
                _fmt_time(ct),
                f"{_fmt_time(lt)} (legacy core manager)",
                f"{lt / ct:.0f}x faster{separate}",
                ">= 20x",
                lt / ct >= 20,
            )
        )
    else:
        out.append(Row("P7", "legacy core manager", "-", "-", "not measured", "", None))
    marks = [b for b in r.find("P8", "ckptlite") if "marks_per_s" in b["extra_info"]]
    if marks:
        rate = float(marks[0]["extra_info"]["marks_per_s"])
        out.append(
            Row(
                "P8",
                f"item done-marks ({marks[0]['extra_info']['items']:,} in one run)",
                f"{rate:,.0f} /s",
                "-",
                f"{rate:,.0f} /s",
                ">= 200,000 /s",
                rate >= 200_000,
            )
        )
    else:
        out.append(Row("P8", "item done-marks", "-", "-", "not measured", "", None))
    out += _limits(r, "P8", lambda b: "scan" in b["extra_info"]["label"], "pending scan")
    sync = r.one("P9", "ckptlite")
    if sync:
        info = sync["extra_info"]
        for what, secs, lim in (
            (f"sync {info['checkpoints']:,} checkpoints to PostgreSQL", info["first_sync_s"], 10),
            ("no-op resync", info["resync_s"], 0.5),
        ):
            out.append(
                Row(
                    "P9",
                    what,
                    _fmt_time(secs),
                    "-",
                    _fmt_time(secs),
                    f"<= {lim} s",
                    secs <= lim,
                )
            )
    else:
        out.append(Row("P9", "sync to PostgreSQL", "-", "-", "not measured", "", None))
    rss, peer = r.one("P10", "ckptlite"), r.one("P10", "peer")
    if rss:
        info = rss["extra_info"]
        worst = max(info["save_peak_ratio"], info["load_peak_ratio"])
        base = "-"
        if peer:
            p = peer["extra_info"]
            base = f"pickle: {max(p['save_peak_ratio'], p['load_peak_ratio']):.2f}x"
        out.append(
            Row(
                "P10",
                f"peak RSS, save + load of a {info['nbytes'] >> 20} MiB array",
                f"save {info['save_peak_ratio']:.2f}x, load {info['load_peak_ratio']:.2f}x",
                base,
                f"{worst:.2f}x the array",
                "<= 1.25x",
                worst <= 1.25,
            )
        )
    else:
        out.append(Row("P10", "peak RSS", "-", "-", "not measured", "", None))
    out += _tile_rows(r, "P11", "save one float32 noise tile (new each round, median)")
    out += _tile_rows(r, "P12", "verified load of one float32 noise tile (warm cache, median)")
    out += _raster_rows(r)
    out += _loop_rows(r)
    out += _worker_rows(r)
    out += _ui_rows(r)
    return out


def _ui_rows(r: Results) -> list[Row]:
    """P18: the dashboard's cold pages of a 100,000-item run, and what polling it costs."""
    out = []
    pages = r.one("P18", "limits")
    if pages:
        for label, med in pages["extra_info"]["medians_s"].items():
            out.append(
                Row(
                    "P18",
                    f"dashboard {label}, a run of 100,000 items, cold cache (median)",
                    _fmt_time(med),
                    "-",
                    f"{med:.2f} s",
                    "< 1 s",
                    med < 1.0,
                )
            )
    else:
        out.append(Row("P18", "dashboard pages", "-", "-", "not measured", "", None))
    poll = r.one("P18", "pair")
    if poll:
        info = poll["extra_info"]
        out.append(
            Row(
                "P18",
                "a pipeline's save rate, dashboard polled every second vs not "
                "(median of alternating intervals)",
                f"{info['median_with']:.0f} saves/s",
                f"{info['median_without']:.0f} saves/s (no dashboard)",
                f"{info['ratio']:.3f}x",
                ">= 0.95x",
                info["ratio"] >= 0.95,
            )
        )
    else:
        out.append(Row("P18", "save rate with a dashboard", "-", "-", "not measured", "", None))
    return out


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


#: How P11 labels its second pickle side (``bench.test_p11_p12_tiles.KEPT``).
KEPT_SUFFIX = ", files kept"


def _ratio_row(target: str, work: str, medians: dict[str, float], limit: float) -> Row:
    """A row from one interleaved test's medians: the first side over the second."""
    (cl, ct), (bl, bt) = list(medians.items())[:2]
    ratio = ct / bt
    return Row(
        target,
        work,
        f"{_fmt_time(ct)} ({cl})",
        f"{_fmt_time(bt)} ({bl})",
        f"{ratio:.2f}x",
        f"<= {limit}x",
        ratio <= limit,
    )


def _tile_rows(r: Results, target: str, work: str) -> list[Row]:
    """P11, P12: one row per tile size, ckptlite over pickle in the same rounds."""
    found = sorted(r.find(target, "pair"), key=lambda b: b["extra_info"]["nbytes"])
    if not found:
        return [Row(target, work, "-", "-", "not measured", "", None)]
    rows = []
    for b in found:
        medians, size = b["extra_info"]["medians"], _size(b["extra_info"]["nbytes"])
        limit = float(b["extra_info"]["limit"])
        rows.append(_ratio_row(target, f"{work}, {size}", medians, limit))
        kept = [label for label in medians if label.endswith(KEPT_SUFFIX)]
        if kept:  # P11's second baseline: pickle keeping its files, as a tile pipeline does
            first = next(iter(medians))
            pair = {first: medians[first], kept[0]: medians[kept[0]]}
            what = f"{work}, {size}, pickle keeping its files"
            rows.append(_ratio_row(target, what, pair, limit))
    return rows


def _raster_rows(r: Results) -> list[Row]:
    """P13: per raster kind and size, the bytes stored on disk and the save time."""
    found = sorted(
        r.find("P13", "pair"), key=lambda b: (b["extra_info"]["kind"], b["extra_info"]["nbytes"])
    )
    if not found:
        return [Row("P13", "compressible rasters", "-", "-", "not measured", "", None)]
    out = []
    for b in found:
        info = b["extra_info"]
        what = f"{info['kind']}, {_size(info['nbytes'])}"
        disk, index, lim = (
            float(info["stored_disk_ratio"]),
            float(info["stored_stats_ratio"]),
            float(info["bytes_limit"]),
        )
        out.append(
            Row(
                "P13",
                f"{what}: stored bytes / raw (store's files on disk, {info['saves']} saves)",
                f"{disk:.3f}x on disk (index: {index:.3f}x)",
                "-",
                f"{disk:.3f}x",
                f"<= {lim}x",
                disk <= lim,
            )
        )
        out.append(
            _ratio_row("P13", f"{what}: save time (median)", info["medians"], float(info["limit"]))
        )
    return out


def _loop_rows(r: Results) -> list[Row]:
    """P14: the tile loop's save total and load total, ckptlite over pickle."""
    b = r.one("P14", "pair")
    if b is None:
        return [Row("P14", "tile loop", "-", "-", "not measured", "", None)]
    info = b["extra_info"]
    what = f"loop of {info['tiles']:,} distinct {_size(info['nbytes'])} tiles"
    loops = "1 loop" if info["loops"] == 1 else f"median of {info['loops']} loops"
    return [
        _ratio_row(
            "P14", f"{what}: all saves ({loops})", info["medians_save"], float(info["limit_save"])
        ),
        _ratio_row(
            "P14",
            f"{what}: then all loads ({loops})",
            info["medians_load"],
            float(info["limit_load"]),
        ),
    ]


def _worker_rows(r: Results) -> list[Row]:
    """P15-P17: workers sharing one run, against one worker; duplicates; a killed worker."""
    out: list[Row] = []
    for target, where in (("P15", "PostgreSQL"), ("P17", "a local store")):
        b = r.one(target, "pair")
        if b is None:
            out.append(Row(target, f"4 workers on {where}", "-", "-", "not measured", "", None))
            continue
        info = b["extra_info"]
        what = f"{info['items']:,} items of {info['item_s'] * 1000:.0f} ms on {where}"
        out.append(_ratio_row(target, f"{what}: wall time", info["medians"], info["limit"]))
        out.append(
            Row(
                target,
                f"{what}: items done twice",
                str(info["duplicates"]),
                "-",
                str(info["duplicates"]),
                "0",
                info["duplicates"] == 0,
            )
        )
        if "overhead_limit_ms" in info:
            ms = float(info["overhead_ms_per_item"])
            out.append(
                Row(
                    target,
                    f"{what}: claim + mark overhead per item",
                    f"{ms:.3f} ms",
                    "-",
                    f"{ms:.3f} ms",
                    "<= 1 ms",
                    ms <= float(info["overhead_limit_ms"]),
                )
            )
    b = r.one("P16", "ckptlite")
    if b is None:
        return [*out, Row("P16", "one worker killed", "-", "-", "not measured", "", None)]
    info = b["extra_info"]
    ok = info["missing_or_duplicated"] == 0 and info["rerun_not_the_victims"] == 0
    out.append(
        Row(
            "P16",
            f"{info['items']:,} items, one of 4 workers SIGKILLed: all done once, "
            "only its items rerun",
            f"{info['rerun_items']} rerun (of {info['victim_started']} it started)",
            "-",
            "ok" if ok else "NOT ok",
            "all; only its",
            ok,
        )
    )
    after, lim = float(info["finished_after_kill_s"]), float(info["limit_after_kill_s"])
    out.append(
        Row(
            "P16",
            f"finished after the kill (lease {info['lease_s']:.0f} s)",
            _fmt_time(after),
            "-",
            _fmt_time(after),
            f"<= {lim:.0f} s",
            after <= lim,
        )
    )
    return out


def _library(label: str) -> str:
    """The library a side's label names: ``pickle.dump+fsync`` -> ``pickle``."""
    return label.replace("+", " ").replace(".", " ").split()[0]


def tile_peers(r: Results) -> str:
    """Markdown: every side of P11, P12 and P14 (ckptlite, pickle and the peers), same rounds."""
    tables = []
    for target, what in (("P11", "save one tile"), ("P12", "load it")):
        found = sorted(r.find(target, "pair"), key=lambda b: b["extra_info"]["nbytes"])
        if not found:
            continue
        sizes = [_size(b["extra_info"]["nbytes"]) for b in found]
        table = [f"| {target}: {what} | " + " | ".join(sizes) + " |"]
        table.append("|---" * (len(sizes) + 1) + "|")
        for k, label in enumerate(found[0]["extra_info"]["medians"]):
            cells = []
            for b in found:
                med = list(b["extra_info"]["medians"].values())
                cells.append(f"{_fmt_time(med[k])} ({med[k] / med[1]:.2f}x)")
            table.append(f"| {label} | " + " | ".join(cells) + " |")
        tables.append("\n".join(table))
    loop = r.one("P14", "pair")
    if loop is not None:
        info = loop["extra_info"]
        table = [
            f"| P14: {info['tiles']:,} tiles of {_size(info['nbytes'])} | all saves | all loads |",
            "|---|---|---|",
        ]
        saves = list(info["medians_save"].items())
        loads = list(info["medians_load"].values())
        for (side, st), lt in zip(saves, loads, strict=True):
            table.append(
                f"| {_library(side)} | {_fmt_time(st)} ({st / saves[1][1]:.2f}x) | "
                f"{_fmt_time(lt)} ({lt / loads[1]:.2f}x) |"
            )
        tables.append("\n".join(table))
    if not tables:
        return ""
    return (
        "\n## Tile sizes: ckptlite, pickle and the peers in the same rounds\n\n"
        "Medians; in brackets, the ratio to pickle (the baseline) in the same test. Every "
        "side writes a new file per tile and fsyncs it; only ckptlite verifies what it loads.\n\n"
        + "\n\n".join(tables)
        + "\n"
    )


def _limits(r: Results, target: str, pick: Callable[[Any], bool], what: str) -> list[Row]:
    """Rows for absolute limits (extra_info limit_s): the median against the limit."""
    found = [b for b in r.find(target, "ckptlite") if pick(b) and "limit_s" in b["extra_info"]]
    if not found:
        return [Row(target, what, "-", "-", "not measured", "", None)]
    out = []
    for b in found:
        info = b["extra_info"]
        med, lim = r.median(b), float(info["limit_s"])
        n = info.get("checkpoints") or info.get("items")
        work = info["label"] + (f" ({n:,} in the store)" if info.get("checkpoints") else "")
        out.append(
            Row(
                target,
                f"{work} (median)",
                _fmt_time(med),
                "-",
                f"{med / lim:.3f}x the limit",
                f"<= {_fmt_time(lim)}",
                med <= lim,
            )
        )
    return out


def machine() -> dict[str, str]:
    """CPU, cores, RAM, disk and versions of the machine this runs on."""
    info: dict[str, str] = {}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["CPU"] = next(
            ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        info["CPU"] = platform.processor() or platform.machine()
    info["cores"] = str(os.cpu_count())
    try:
        kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
        info["RAM"] = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, StopIteration):
        info["RAM"] = "?"
    info["disk"] = _disk(Path(tempfile.gettempdir()))
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    for mod in ("numpy", "apsw", "zstandard", "msgpack", "diskcache", "joblib", "psycopg"):
        try:
            m = __import__(mod)
            v = getattr(m, "__version__", None) or getattr(m, "apswversion", lambda: "?")()
            if mod == "apsw":
                v = f"{m.apswversion()} (SQLite {m.sqlite_lib_version()})"
            info[mod] = str(v)
        except ImportError:
            info[mod] = "not installed"
    info["commit"] = _commit()
    return info


def _commit() -> str:
    """HEAD, marked ``+changes`` when ckptlite/ has uncommitted edits."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ckptlite"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return head + (" (+ uncommitted changes in ckptlite/)" if dirty else "")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _disk(path: Path) -> str:
    try:
        mounts = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    target = str(path.resolve())
    best = max(
        (m for m in mounts if target == m[1] or target.startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    if best is None:
        return "?"
    dev, fstype = best[0], best[2]
    st = os.statvfs(path)
    size = st.f_blocks * st.f_frsize / (1 << 30)
    rot = "?"
    name = Path(dev).name
    for cand in (name, name.rstrip("0123456789")):
        p = Path(f"/sys/block/{cand}/queue/rotational")
        if p.exists():
            rot = f"queue/rotational={p.read_text().strip()}"
            break
    return f"{dev} ({fstype}, {size:.0f} GiB, {rot}), bench stores under {tempfile.gettempdir()}"


def markdown(table: list[Row], info: dict[str, str], data: dict[str, Any], extra: str) -> str:
    """The RESULTS.md text."""
    lines = [
        "# ckptlite benchmark results",
        "",
        "Generated by `python -m bench.report` on "
        f"{data.get('datetime', datetime.now(UTC).isoformat())[:19]} UTC. Every ratio compares "
        "medians measured in the same run (ckptlite and its baseline alternately, round by "
        "round; see the notes). Targets: DESIGN.md §7.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in table]
    met = sum(1 for x in table if x.met)
    lines += [
        "",
        f"{met} of {len(table)} rows met; {sum(1 for x in table if x.met is None)} not measured.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", extra.strip(), ""]
    return "\n".join(lines)


def _sweep_series(r: Results, op: str) -> dict[str, list[tuple[int, float]]]:
    """The size sweep: {library: [(bytes, MB/s)]} of separate benchmarks."""
    series: dict[str, list[tuple[int, float]]] = {}
    for b in r.find("sweep"):
        if b["group"] == f"sweep {op}":
            n = int(b["extra_info"]["nbytes"])
            series.setdefault(_library(b["extra_info"]["label"]), []).append(
                (n, n / r.median(b) / 1e6)
            )
    return series


def _tile_series(r: Results, target: str) -> dict[str, list[tuple[int, float]]]:
    """P11 or P12: {library: [(bytes, MB/s)]} from the interleaved medians."""
    series: dict[str, list[tuple[int, float]]] = {}
    for b in r.find(target, "pair"):
        n = int(b["extra_info"]["nbytes"])
        for label, med in b["extra_info"]["medians"].items():
            if not label.endswith(KEPT_SUFFIX):  # one pickle curve: the baseline's
                series.setdefault(_library(label), []).append((n, n / med / 1e6))
    return series


def plot(r: Results, path: Path) -> bool:
    """Write throughput (MB/s) against state size, save and load, per library.

    The top row is the size sweep (separate benchmarks); the bottom row, when
    P11/P12 ran, the tile sizes with every side measured in the same rounds.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    panels = []
    if r.find("sweep"):
        for op in ("save", "load"):
            how = "(fsynced)" if op == "save" else "(warm cache)"
            panels.append((f"{op} throughput {how}", "float32 array", _sweep_series(r, op)))
    if r.find("P11", "pair") or r.find("P12", "pair"):
        for target, op in (("P11", "save"), ("P12", "load")):
            how = "(fsynced)" if op == "save" else "(verified, warm cache)"
            title = f"{target}: tile {op} {how}, sides interleaved"
            panels.append((title, "float32 noise tile", _tile_series(r, target)))
    if not panels:
        return False
    nrows = len(panels) // 2
    fig, axes = plt.subplots(nrows, 2, figsize=(12, 4.5 * nrows), sharey=True, squeeze=False)
    libraries = sorted({label for _, _, series in panels for label in series})
    for ax, (title, state, series) in zip(axes.flat, panels, strict=True):
        for label, pts in sorted(series.items()):
            pts.sort()
            style = {"linewidth": 2.5} if label == "ckptlite" else {"linestyle": "--"}
            color = f"C{libraries.index(label) % 10}"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                label=label,
                color=color,
                **style,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"state size (bytes, {state})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for row in axes:
        row[0].set_ylabel("MB/s (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quick-mode sizes (smoke test)")
    ap.add_argument("--from-json", type=Path, help="render an earlier run's pytest-benchmark JSON")
    ap.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and the PNG go")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    ap.add_argument(
        "--notes",
        type=Path,
        default=HERE / "NOTES.md",
        help="markdown appended to RESULTS.md (analysis of targets not met)",
    )
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    load_before = _loadavg()
    commit_before = _commit()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        with tempfile.TemporaryDirectory() as d:
            jp = Path(d) / "bench.json"
            code = run_benchmarks(mode, jp)
            if not jp.exists():
                print(f"benchmarks failed (exit {code}) before writing results", file=sys.stderr)
                return code or 1
            data = json.loads(jp.read_text())
            saved = Path(tempfile.gettempdir()) / "ckptlite-bench-results.json"
            saved.write_text(json.dumps(data, indent=1))
            print(f"raw results: {saved} (re-render with --from-json)", file=sys.stderr)
            if code:
                print(f"warning: pytest exited with {code}", file=sys.stderr)
    r = Results(data)
    table = rows(r)
    widths = [max(len(x.cells()[i]) for x in [*table]) for i in range(len(HEADER))]
    widths = [max(w, len(h)) for w, h in zip(widths, HEADER, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row.cells(), widths, strict=True)))
    extra = ""
    if args.notes.exists():
        extra += args.notes.read_text() + "\n"
    extra += tile_peers(r)
    plotted = plot(r, args.out / "throughput.png")
    if plotted:
        extra += (
            "\n## Throughput against state size\n\n![save and load throughput](throughput.png)\n"
        )
    if not args.no_profile:
        from bench.profiles import breakdowns, profiles, raster_breakdown, tile_breakdown

        extra += (
            "\n## Where P1 and P2 go, measured in this run\n\n"
            "Medians of blocks of 50 calls, the parts alternated block by block (so all "
            "come from the same minutes). The SQLite parts run ckptlite's statements on a "
            "store of the same schema with no ckptlite Python around them.\n"
        )
        extra += _parts_tables(breakdowns(30 if mode == "full" else 2))
        extra += (
            "\n## Where a 1 MiB tile's save and load go, measured in this run\n\n"
            "Medians, one call of each part per round, the parts alternated round by round: "
            "ckptlite's and pickle's whole calls beside the steps that bound any durable "
            "save or verified load of a new tile on this machine, each timed alone.\n"
        )
        extra += _parts_tables(tile_breakdown(1 << 20, 30 if mode == "full" else 2))
        extra += (
            "\n## Where a 4 MiB raster's save goes (P13), measured in this run\n\n"
            "Medians, one call of each part per round, the parts alternated round by round: "
            "ckptlite's and pickle's whole calls beside the CPU work the stored bytes need "
            "(each on one core; ckptlite spreads a raster over both) and the durable write "
            "of the compressed bytes.\n"
        )
        extra += _parts_tables(raster_breakdown(4 << 20, 10 if mode == "full" else 1))
        extra += "\n## Profiles (cProfile, sorted by own time)\n"
        for op, text in profiles(64 if mode == "full" else 4).items():
            extra += f"\n### {op}\n\n```\n{text}\n```\n"
    info = machine()
    if not args.from_json:
        # The code measured is the code at the start: others may commit meanwhile.
        info["commit"] = commit_before
        info["load average (1/5/15 min) before / after the run"] = f"{load_before} / {_loadavg()}"
    info["mode"] = mode + (
        " (shared 2-core machine: other engineers' jobs ran at the same time)"
        if (os.cpu_count() or 0) <= 2
        else ""
    )
    (args.out / "RESULTS.md").write_text(markdown(table, info, data, extra))
    print(f"\nwrote {args.out / 'RESULTS.md'}" + (" and throughput.png" if plotted else ""))
    return 0


def _parts_tables(by_op: dict[str, list[tuple[str, float]]]) -> str:
    """Render one "part | median" table per operation of a breakdown."""
    out = ""
    for op, parts in by_op.items():
        out += f"\n| {op}: part | median |\n|---|---|\n"
        out += "".join(f"| {part} | {_fmt_time(s)} |\n" for part, s in parts)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
