"""bench/RESULTS.md and its plots, from one bench.suite result (``bench/results/latest.json``).

    python -m bench.report [bench/results/latest.json]     # rewrite the report from a saved run
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value}{unit}"


def _ms(d: dict[str, Any] | None) -> str:
    if not d or d.get("p50") is None:
        return "–"
    return f"{d['p50']} / {d['p99']} / {_fmt(d.get('max'))}"


def plots(r: dict[str, Any], out: Path) -> list[str]:
    """Latency and CPU against load, throughput beside its limits; the PNG names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    live = [x for x in r.get("live", []) if "publish_to_stored_ms" in x]
    if live:
        rate = [x.get("offered_msg_per_s") or 0 for x in live]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, label, style in (("publish_to_stored_ms", "publish → stored", "o-"),
                                  ("publish_to_station_ms", "publish → station screen", "s-"),
                                  ("alert_ms", "breaching reading → alert on MQTT", "^-")):
            pts = [(x0, y[key]["p99"]) for x0, y in zip(rate, live, strict=True) if y.get(key, {}).get("p99")]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{label}, p99")
            pts = [(x0, y[key]["p50"]) for x0, y in zip(rate, live, strict=True) if y.get(key, {}).get("p50")]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, alpha=0.35, label=f"{label}, p50")
        ax.axhline(100, color="grey", ls=":", lw=1)
        ax.axhline(50, color="grey", ls="--", lw=1)
        for x0, y in zip(rate, live, strict=True):
            ax.annotate(f"{y['patients']} pts" + (f" ×{y['speed']:g}" if y["speed"] != 1 else ""), (x0, 2),
                        fontsize=7, rotation=90, va="bottom", ha="center", color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("offered load, MQTT messages/s (log)")
        ax.set_ylabel("latency, ms")
        ax.set_ylim(bottom=0)
        ax.set_title("MonitorMe latency against load (one daemon, 2-core machine)")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "latency_vs_load.png", dpi=110)
        plt.close(fig)
        written.append("latency_vs_load.png")

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(rate, [x.get("cpu_share") or 0 for x in live], "o-", label="daemon CPU (1.0 = one core)")
        ax.axhline(0.6, color="grey", ls="--", lw=1, label="goal at 500 patients: 0.60")
        ax.axhline(0.35, color="grey", ls=":", lw=1, label="stretch: 0.35")
        ax.set_xscale("log")
        ax.set_xlabel("offered load, MQTT messages/s (log)")
        ax.set_ylabel("share of one core")
        ax.legend(fontsize=7)
        ax.set_title("Daemon CPU against load")
        fig.tight_layout()
        fig.savefig(out / "cpu_vs_load.png", dpi=110)
        plt.close(fig)
        written.append("cpu_vs_load.png")

    drain = (r.get("limits_and_drain") or {}).get("results") or {}
    bars = [(k, drain[k]["median"]) for k in ("aiomqtt_v5", "aiomqtt_v311", "paho_v5", "paho_v311", "monitorme")
            if k in drain]
    nodered = ((r.get("nodered") or {}).get("drain") or {}).get("rows_per_s")
    if nodered:
        bars.insert(-1, ("nodered_batched", nodered))
    if bars:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        colours = ["#4c72b0" if k != "monitorme" else "#c44e52" for k, _ in bars]
        ax.barh([k for k, _ in bars], [v for _, v in bars], color=colours)
        for i, (_, v) in enumerate(bars):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_xlabel("QoS 1 backlog drain, messages (or rows) per second")
        ax.set_title("End-to-end drain into PostgreSQL beside bare subscribers (same run)")
        fig.tight_layout()
        fig.savefig(out / "drain.png", dpi=110)
        plt.close(fig)
        written.append("drain.png")
    return written


def render(r: dict[str, Any], plot_dir: str = "plots") -> str:
    lines = ["# Benchmark results", "",
             f"One run of `python -m bench.suite` ({'quick' if r.get('quick') else 'full'}), {r.get('date', '?')}, "
             f"commit `{(r.get('source') or {}).get('commit', '?')}`. Everything below was measured in that one "
             "run on one private Mosquitto (no-loss configuration) and one PostgreSQL server; the machine is the "
             "project's shared 2-core box, so read ratios, not lone figures. Reproduce: `pytest bench/` "
             "(or `python -m bench.suite`); raw figures in `bench/results/latest.json`, whose `schema` field "
             "explains each one. How each figure is taken: bench/README.md.", "",
             "## Goals (issue 5)", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in r.get("goals", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['target']} | {_fmt(g['measured'])} | {met} |")
    drain = (r.get("limits_and_drain") or {}).get("results") or {}
    lines += ["", "## Throughput: a QoS 1 backlog drained, beside the limits", ""]
    if "error" in (r.get("limits_and_drain") or {}):
        lines.append(f"failed: {r['limits_and_drain']['error']}")
    lines += ["| what | rate | MonitorMe ÷ this |", "|---|---|---|"]
    mm = (drain.get("monitorme") or {}).get("median")
    names = {"aiomqtt_v311": "bare aiomqtt subscriber, MQTT 3.1.1", "aiomqtt_v5": "bare aiomqtt subscriber, MQTT 5",
             "paho_v311": "bare paho subscriber, MQTT 3.1.1", "paho_v5": "bare paho subscriber, MQTT 5",
             "wire_v5": "bare MonitorMe wire client (our protocol, no processing), MQTT 5",
             "copy": "raw asyncpg COPY into the same database, 10k batches",
             "monitorme": "**MonitorMe end to end** (decode, windows, rules, alerts, COPY, ack after commit)"}
    for key, label in names.items():
        if key in drain:
            v = drain[key]["median"]
            ratio = f"{mm / v:.2f}" if mm and v and key != "monitorme" else ""
            lines.append(f"| {label} | {_fmt(v)} {drain[key]['unit']} | {ratio} |")
    nd = r.get("nodered") or {}
    if nd.get("drain"):
        v = nd["drain"].get("rows_per_s")
        lines.append(f"| batched Node-RED flow (PERF.md's peer, run here) | {_fmt(v)} rows/s | "
                     f"{(mm / v if mm and v else 0):.2f} |")
    elif nd:
        lines.append(f"| batched Node-RED flow | {nd.get('skipped') or nd.get('error') or '–'} | |")
    m = drain.get("monitorme") or {}
    if m:
        lines += ["", f"MonitorMe during that drain: {m.get('cpu_s_per_1000_median')} CPU-s per 1,000 readings, "
                  f"peak RSS {', '.join(str(x) for x in m.get('peak_rss_mb') or [])} MB (500 patients)."]
    big = r.get("drain_5000") or {}
    if big.get("rows_per_s"):
        lines.append(f"With {big['patients']:,} patients ({big['messages']:,} messages): {_fmt(big['rows_per_s'])} "
                     f"rows/s, {big['cpu_s_per_1000']} CPU-s per 1,000 readings, peak RSS {big['peak_rss_mb']} MB.")
    paths = (r.get("ingest_paths") or {}).get("msg_per_s") or {}
    if paths:
        lines += ["", "Ingest-path alternatives, measured before choosing (bare QoS 1 drains of "
                  f"{r['ingest_paths']['messages']:,} messages, no processing; bench/ingest_paths.py):", "",
                  "| path | msg/s |", "|---|---|"]
        lines += [f"| {name} | {_fmt(rate)} |" for name, rate in paths.items()]
    lines += ["", f"![drain]({plot_dir}/drain.png)", "",
              "## Latency, CPU and memory against load (live, real time)", "",
              "Load from bench.loadgen in separate processes at the CONTRACT.md device periods (×speed), "
              "`ts` = publish time. p50 / p99 / max in ms.", "",
              "| patients | speed | offered msg/s | publish → stored | publish → station | reading → alert "
              "| daemon CPU (cores) | CPU-s / 1k | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r.get("live", []):
        if "error" in x:
            lines.append(f"| ? | | failed: {x['error'][:200]} | | | | | | |")
            continue
        lines.append(f"| {x['patients']:,} | {x['speed']:g} | {_fmt(x.get('offered_msg_per_s'))} | "
                     f"{_ms(x.get('publish_to_stored_ms'))} | {_ms(x.get('publish_to_station_ms'))} | "
                     f"{_ms(x.get('alert_ms'))} | {x.get('cpu_share')} | {x.get('cpu_s_per_1000')} | "
                     f"{x.get('peak_rss_mb')} |")
    lat = nd.get("latency") or {}
    if lat.get("p99_ms") is not None:
        lines.append(f"| Node-RED batched flow (peer), 500 | 1 | {_fmt(lat.get('publish_msg_per_s'))} | "
                     f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']} | – | – | {lat.get('node_cpu_share')} "
                     f"(+ PostgreSQL {lat.get('pg_cpu_share')}) | – | {lat.get('peak_rss_mb')} |")
    lines += ["", "publish → stored comes from the daemon's `monitorme_store_lag_seconds` histogram (5 ms "
              "buckets below 100 ms, interpolated; max is the bucket's upper bound). The station screen coalesces "
              "updates per 50 ms by design, so about 25 ms of its p50 is that window.", "",
              f"![latency against load]({plot_dir}/latency_vs_load.png)", "",
              f"![CPU against load]({plot_dir}/cpu_vs_load.png)", "",
              "## Several daemons on one machine (docs/scaling.md)", ""]
    sc = r.get("scaling") or {}
    if "error" in sc:
        lines.append(f"failed: {sc['error']}")
    for k in sc.get("runs", []):
        if k is sc["runs"][0]:
            lines += ["500 patients split over K ward daemons sharing one Mosquitto and one database.", "",
                      "| daemons | backlog drain rows/s | live publish → stored p50 / p99 ms | daemons' CPU (cores) "
                      "| peak RSS per daemon MB |", "|---|---|---|---|---|"]
        b, lv = k.get("backlog") or {}, k.get("live") or {}
        lag = lv.get("store_lag_ms") or {}
        lines.append(f"| {k['daemons']} | {_fmt(b.get('rows_per_s'))} | {lag.get('p50')} / {lag.get('p99')} | "
                     f"{lv.get('daemon_cpu_cores')} | {', '.join(str(x) for x in k.get('peak_rss_mb', []))} |")
    lines += ["", "## Operator core (windows + rules, no I/O)", ""]
    core = r.get("operator_core") or {}
    if "error" in core:
        lines.append(f"failed: {core['error']}")
    elif core:
        lines += ["| implementation | readings/s |", "|---|---|"]
        for key, label in (("monitorme_core_subset", "MonitorMe core, comparison subset, batches of 10,000"),
                           ("monitorme_core_per_reading_path", "MonitorMe core, same, per-reading path"),
                           ("naive_python_loop", "naive per-reading Python loop"),
                           ("bytewax_dataflow", f"bytewax 0.21 dataflow, input batches of {core.get('bytewax_batch')}"),
                           ("monitorme_core_all_rules", "MonitorMe core, every shipped rule + NEWS2")):
            if key in core:
                lines.append(f"| {label} | {_fmt(core[key])} |")
        lines += ["", f"{core.get('readings'):,} scalar readings; all implementations raise the same "
                  f"{core.get('alerts')} alerts (checked: naive {core.get('naive_agrees')}, bytewax "
                  f"{core.get('bytewax_agrees')}). MonitorMe ÷ bytewax: {core.get('ratio_vs_bytewax')}."]
    machine = r.get("machine") or {}
    if machine:
        lines += ["", "## Machine", "", "```", json.dumps(machine, indent=1), "```"]
    return "\n".join(lines) + "\n"


def write_report(r: dict[str, Any], path: Path, plot_dir: Path) -> None:
    plots(r, plot_dir)
    path.write_text(render(r, Path(os.path.relpath(plot_dir, path.parent)).as_posix()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else REPO / "bench" / "results" / "latest.json"
    write_report(json.loads(source.read_text()), REPO / "bench" / "RESULTS.md", REPO / "bench" / "plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
