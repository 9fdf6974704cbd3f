"""vllm bench serve's --plot-timeline and --plot-dataset-stats, drawn from a run's per-request arrays.

The arrays are those of vllm bench serve's result (`summary.result_arrays`), measured or simulated alike.
The timeline's segments are vLLM's (`construct_timeline_data` in vllm/benchmarks/plot.py): each request's
TTFT, then each gap of its stream, coloured by the ITL thresholds. vLLM draws them with plotly into HTML;
capsim draws the same segments with matplotlib into an image. The dataset figure is vLLM's own
(`generate_dataset_stats_plot`, matplotlib already).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .plotting import pyplot

TTFT_COLOR = "#636EFA"
ITL_COLORS = ("#109618", "#FF7F0E", "#D62728")


def itl_labels(thresholds_s: Sequence[float]) -> list[str]:
    """vLLM's legend names of the three ITL classes."""
    lo, hi = (t * 1000 for t in thresholds_s)
    return [f"ITL < {lo:.0f}ms", f"{lo:.0f}ms ≤ ITL < {hi:.0f}ms", f"ITL ≥ {hi:.0f}ms"]


@dataclass(frozen=True)
class Segment:
    """A stretch of one request's timeline, in seconds since the run's first request started."""

    request: int  # the request's index in the arrays ("Req i" in vLLM's plot)
    start: float
    end: float
    kind: int  # 0: TTFT; 1, 2, 3: an ITL below the first threshold, below the second, at or above it


def timeline_segments(arrays: dict, thresholds_s: Sequence[float]) -> list[Segment]:
    """vLLM's timeline segments, request by request: TTFT from the request's start, then its gaps end to end.
    As in vllm bench serve, a request's latency for the plot is its TTFT plus its gaps."""
    starts = arrays["start_times"]
    if not starts:
        return []
    t0 = min(starts)
    lo, hi = thresholds_s
    out = []
    for i, (start, ttft, itls) in enumerate(zip(starts, arrays["ttfts"], arrays["itls"])):
        t = start - t0 + ttft
        out.append(Segment(i, start - t0, t, 0))
        for gap in itls:
            out.append(Segment(i, t, t + gap, 1 if gap < lo else 2 if gap < hi else 3))
            t += gap
    return out


def plot_timeline(arrays: dict, path: str | Path, thresholds_s: Sequence[float], title: str = "") -> None:
    """Each request a row (the first on top), its TTFT and its gaps as bars coloured as vLLM colours them."""
    plt = pyplot()
    n = len(arrays["start_times"])
    segs = timeline_segments(arrays, thresholds_s)
    bars: dict[int, dict[int, list]] = {}  # kind -> request -> [(start, width)], a run of one kind as one bar
    for s in segs:
        row = bars.setdefault(s.kind, {}).setdefault(s.request, [])
        if row and abs(row[-1][0] + row[-1][1] - s.start) < 1e-12:
            row[-1] = (row[-1][0], s.end - row[-1][0])
        else:
            row.append((s.start, s.end - s.start))
    names = ["TTFT", *itl_labels(thresholds_s)]
    colors = [TTFT_COLOR, *ITL_COLORS]
    fig, ax = plt.subplots(figsize=(12, max(3.0, min(40.0, 0.12 * n + 1.5))))
    for kind in sorted(bars):
        first = True
        for req, spans in bars[kind].items():
            ax.broken_barh(spans, (req - 0.4, 0.8), facecolors=colors[kind], label=names[kind] if first else None)
            first = False
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("Time (s since the first request started)")
    ax.set_ylabel("Request")
    ax.set_title(title or f"Timeline of {n} requests")
    ax.legend(loc="upper right")
    ax.grid(True, alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(str(path), dpi=150)
    plt.close(fig)


def plot_dataset_stats(arrays: dict, path: str | Path) -> None:
    """vLLM's dataset figure: prompt, output and total token histograms and the tokens of each request."""
    plt = pyplot()
    prompt, output = list(arrays["input_lens"]), list(arrays["output_lens"])
    total = [p + o for p, o in zip(prompt, output)]
    fig, ((ax1, ax2), (ax3, ax4)) = plt.subplots(2, 2, figsize=(14, 10))
    for ax, values, color, what in ((ax1, prompt, "steelblue", "Prompt Tokens"),
                                    (ax2, output, "coral", "Output Tokens"),
                                    (ax3, total, "mediumseagreen", "Total Tokens")):
        ax.hist(values, bins=30, color=color, edgecolor="black", alpha=0.7)
        ax.set_xlabel("Total Tokens (Prompt + Output)" if ax is ax3 else what)
        ax.set_ylabel("Frequency")
        ax.set_title(f"{what} Distribution")
        ax.grid(True, alpha=0.3)
    ids = list(range(len(prompt)))
    ax4.bar(ids, prompt, label="Prompt Tokens", color="steelblue", alpha=0.7)
    ax4.bar(ids, output, bottom=prompt, label="Output Tokens", color="coral", alpha=0.7)
    ax4.set_xlabel("Request ID")
    ax4.set_ylabel("Tokens")
    ax4.set_title("Tokens per Request (Stacked)")
    ax4.legend()
    ax4.grid(True, alpha=0.3, axis="y")
    plt.tight_layout()
    plt.savefig(str(path), dpi=150, bbox_inches="tight")
    plt.close(fig)
