"""edge-bench reports as text tables and CSV, and the stage-by-stage comparison of two reports."""
from __future__ import annotations

import csv
from pathlib import Path

from edge.bench.pipeline import STAGES

# what tells one grid point from another
CONFIG_KEYS = ("bundle", "backend", "precision", "threads", "frame_size", "tile", "batch")


def format_report(r: dict) -> str:
    lines = [f"{r['frames']} fields of {r['frame_size']} after {r['warmup']} warm-up ({r['source']}); "
             f"{r['backend']} {r['precision']}, batch {r['batch']}, tile {r['tile']}, "
             f"threads {r['threads'] or 'default'}",
             fields_line(r),
             f"{r['cells']} cells ({r['accepted']} counted, {r['rejected']} to review)",
             f"{'stage':<11} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9} {'share':>6}"]
    for name, s in r["stages"].items():
        lines.append(f"{name:<11} {s['p50_ms']:9.3f} {s['p90_ms']:9.3f} {s['p99_ms']:9.3f} "
                     f"{s['max_ms']:9.3f} {s['share']:6.1%}")
    lat = r["latency_ms"]
    lines.append(f"{'field':<11} {lat['p50']:9.3f} {lat['p90']:9.3f} {lat['p99']:9.3f} {lat['max']:9.3f}")
    lines.append(f"throughput {r['fields_per_s']:.2f} fields/s, {r['cells_per_s']:.0f} cells/s; "
                 f"CPU use {r['cpu_use']:.2f} cores; peak RSS {r['peak_rss_mb']:.0f} MB")
    if r.get("background_writes"):
        w = r["background_writes"]
        lines.append(f"record writes (background thread, while the next field is counted) "
                     f"{w['ms_per_field']:.1f} ms per field, {w['share_of_wall']:.1%} of the wall time")
    for model, f in r["roofline"].items():
        lines.append(f"roofline {model:<10} {f['ops_per_input'] / 1e6:8.2f} Mop/input, achieved "
                     f"{_giga(f['achieved_ops_per_s'])} of peak {_giga(f['peak_ops_per_s'])} Gop/s "
                     f"({f['precision']}): {_percent(f['fraction_of_peak'])}" + (f"  [{f['note']}]" if "note" in f else ""))
    if r.get("tegrastats"):
        t = r["tegrastats"]
        lines.append(f"tegrastats RAM (shared with GPU) max {t['ram_used_mb_max']} MB, GPU load "
                     f"{t['gpu_load_percent_mean']} %, board power {t['board_power_mw_mean']} mW")
    return "\n".join(lines)


def fields_line(r: dict) -> str:
    """Fields counted and refused (and why), and the cells found per counted field."""
    f = r["fields"]
    refused = (f"{f['refused']} refused by the quality gate ("
               + ", ".join(f"{check} {n}" for check, n in f["refused_by"].items()) + ")") if f["refused"] else \
        "none refused" + ("" if r["quality_gate"] else " (the bundle's quality gate is off)")
    if not f["counted"]:
        return f"NO FIELD COUNTED: {f['timed']} timed, {refused}"
    c = f["cells_per_field"]
    return (f"fields: {f['counted']} of {f['timed']} counted, {refused}; cells per counted field "
            f"{c['mean']:.1f} (min {c['min']}, max {c['max']})")


def nothing_counted(r: dict) -> bool:
    return r["fields"]["counted"] == 0


def _giga(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 1e9:.1f}"


def _percent(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def config_of(r: dict) -> dict:
    return {k: r.get(k) for k in CONFIG_KEYS}


def sweep_table(runs: list[dict], varying: list[str]) -> str:
    head = "".join(f"{k:>12}" for k in varying)
    lines = [f"{head} {'counted':>7} {'refused':>7} {'cells/fld':>9} {'cells':>6} {'fields/s':>9} {'cells/s':>8} "
             f"{'p50 ms':>8} {'p99 ms':>8} {'detect':>7} {'classify':>8} {'det %peak':>9} {'cls %peak':>9}"]
    for r in runs:
        roof = r["roofline"]
        lines.append("".join(f"{_short(r[k]):>12}" for k in varying)
                     + f" {r['fields']['counted']:7d} {r['fields']['refused']:7d} {_cells_per_field(r):>9}"
                     f" {r['cells']:6d} {r['fields_per_s']:9.2f} {r['cells_per_s']:8.0f} {r['latency_ms']['p50']:8.1f} "
                     f"{r['latency_ms']['p99']:8.1f} {r['stages']['detect']['share']:7.0%} "
                     f"{r['stages']['classify']['share']:8.0%} {_percent(roof['detector']['fraction_of_peak']):>9} "
                     f"{_percent(roof['classifier']['fraction_of_peak']):>9}")
    return "\n".join(lines)


def _cells_per_field(r: dict) -> str:
    c = r["fields"]["cells_per_field"]
    return "n/a" if c is None else f"{c['mean']:.1f}"


def _short(v) -> str:
    return Path(v).name if isinstance(v, str) and "/" in v else str(v)


def csv_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        row = config_of(r)
        f = r["fields"]
        row.update(fields_per_s=r["fields_per_s"], cells_per_s=r["cells_per_s"], cells=r["cells"],
                   fields_counted=f["counted"], fields_refused=f["refused"],
                   cells_per_field=f["cells_per_field"]["mean"] if f["cells_per_field"] else None,
                   cpu_use=r["cpu_use"], peak_rss_mb=r["peak_rss_mb"])
        row.update({f"latency_{k}_ms": v for k, v in r["latency_ms"].items()})
        for stage, s in r["stages"].items():
            row.update({f"{stage}_p50_ms": s["p50_ms"], f"{stage}_p99_ms": s["p99_ms"],
                        f"{stage}_share": s["share"]})
        for model, f in r["roofline"].items():
            row.update({f"{model}_ops_per_input": f["ops_per_input"],
                        f"{model}_achieved_ops_per_s": f["achieved_ops_per_s"],
                        f"{model}_peak_ops_per_s": f["peak_ops_per_s"]})
        rows.append(row)
    return rows


def write_csv(runs: list[dict], path: Path) -> None:
    rows = csv_rows(runs)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def runs_of(report: dict) -> list[dict]:
    """The runs in a report file: one for a single run, several for a sweep."""
    return report["runs"] if "runs" in report else [report]


def compare_reports(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Stage-by-stage B / A tables; sweeps are paired by grid point (bundle aside)."""
    runs_a, runs_b = runs_of(a), runs_of(b)
    if len(runs_a) == 1 and len(runs_b) == 1:
        pairs = [(runs_a[0], runs_b[0])]
    else:
        index = {_grid_point(r): r for r in runs_b}
        pairs = [(r, index[_grid_point(r)]) for r in runs_a if _grid_point(r) in index]
        if not pairs:
            raise ValueError("the two sweeps share no grid point (backend, precision, threads, "
                             "frame size, tile, batch)")
    return "\n\n".join(_compare_pair(ra, rb, names) for ra, rb in pairs)


def _grid_point(r: dict) -> tuple:
    return tuple(v for k, v in config_of(r).items() if k != "bundle")


def _compare_pair(a: dict, b: dict, names: tuple[str, str]) -> str:
    na, nb = names
    differs = [f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in CONFIG_KEYS if a.get(k) != b.get(k)]
    lines = [f"{nb} / {na} (below 1: {nb} is faster)" + (": " + ", ".join(differs) if differs else ""),
             f"{'stage':<12} {na + ' p50':>10} {nb + ' p50':>10} {'ratio':>7} {na + ' p99':>10} "
             f"{nb + ' p99':>10} {'ratio':>7}"]
    rows = [(s, a["stages"][s]["p50_ms"], b["stages"][s]["p50_ms"], a["stages"][s]["p99_ms"],
             b["stages"][s]["p99_ms"]) for s in STAGES if s in a["stages"] and s in b["stages"]]
    rows.append(("field", a["latency_ms"]["p50"], b["latency_ms"]["p50"], a["latency_ms"]["p99"],
                 b["latency_ms"]["p99"]))
    for name, a50, b50, a99, b99 in rows:
        lines.append(f"{name:<12} {a50:10.3f} {b50:10.3f} {_ratio(b50, a50):>7} {a99:10.3f} {b99:10.3f} "
                     f"{_ratio(b99, a99):>7}")
    for key, unit in (("fields_per_s", "fields/s"), ("cells_per_s", "cells/s")):
        lines.append(f"{unit:<12} {a[key]:10.2f} {b[key]:10.2f} {_ratio(b[key], a[key]):>7}")
    return "\n".join(lines)


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}" if den > 0 else "n/a"
