"""Medians, ratios, the Markdown tables and the PNG chart of a benchmark run."""

from __future__ import annotations

import statistics
from pathlib import Path

METRICS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "bytes_per_s", "errors")


def summarize(runs: dict[str, list[dict]], baseline: str) -> dict:
    """Per target: the median of each metric over rounds, and ratios to `baseline`."""
    out = {}
    for name, rounds in runs.items():
        out[name] = {k: statistics.median(r[k] for r in rounds) for k in METRICS}
        out[name]["errors"] = sum(r["errors"] for r in rounds)
    base = out[baseline]
    for name, s in out.items():
        s["rps_ratio"] = round(s["rps"] / base["rps"], 3)
        s["cpu_ratio"] = round(s["cpu_us_per_request"] / base["cpu_us_per_request"], 3)
        s["p99_ratio"] = round(s["p99_ms"] / base["p99_ms"], 3)
    return out


def markdown(scenario: str, description: str, baseline: str, summary: dict, unit: str = "requests/s") -> str:
    """`unit`: what one wrk request is (handshakes/s when each is a new TLS connection)."""
    lines = [f"### {scenario}: {description}", "",
             f"| target | {unit} | p50 | p99 | CPU/request | MiB/s | req/s vs {baseline} "
             f"| CPU vs {baseline} | p99 vs {baseline} | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['rps']:,.0f} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms "
                     f"| {s['cpu_us_per_request']:.1f} µs | {s['bytes_per_s'] / (1 << 20):,.1f} "
                     f"| {s['rps_ratio']:.2f}x | {s['cpu_ratio']:.2f}x | {s['p99_ratio']:.2f}x | {s['errors']} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, dict], path: Path) -> None:
    """One panel per scenario: requests/s (or handshakes/s) of each target, labelled with its ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], names):
        summary = results[scenario]["summary"]
        targets = list(summary)
        values = [summary[t]["rps"] for t in targets]
        bars = ax.bar(targets, values, color=["#888888" if not t.startswith("edge") else "#2a7ab8" for t in targets])
        for bar, t in zip(bars, targets):
            ax.annotate(f"{summary[t]['rps_ratio']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=9)
        ax.set_title(f"{scenario}\n(ratio to {results[scenario]['baseline']})", fontsize=10)
        ax.set_ylabel(results[scenario].get("unit", "requests/s"))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
