"""The latency chart: p50/p90/p99/p99.9 at the fixed 1,000 requests/s, one group per contender."""

from __future__ import annotations

from pathlib import Path

from .report import median

PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))


def latency_png(summary: dict, names: dict[str, str], path: Path, title: str) -> None:
    """Grouped bars (ms, log scale: direct's and a proxy's latencies differ by an order of
    magnitude) with each bar's value written on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = [c for c in summary if "p50_ms" in summary[c]]
    width = 0.8 / len(PERCENTILES)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for i, (metric, label) in enumerate(PERCENTILES):
        xs = [j + (i - (len(PERCENTILES) - 1) / 2) * width for j in range(len(contenders))]
        ys = [median(summary, c, metric) for c in contenders]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(contenders)), [names[c] for c in contenders])
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(ncols=len(PERCENTILES), fontsize=8, loc="upper left")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
