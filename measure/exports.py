"""A measured run as files people open: `capsim report RUN --csv FILE --plot FILE.png`.

CSV: one row per record, fixed columns, floats exact. Plot: TTFT, ITL and TPOT distributions,
per-request latencies against send time, and the requests in flight with the server's own
counts. Design: docs/design/measure.md.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from simulator.records import RequestRecord, RunResult
from simulator.summary import request_times

from .runfiles import atomic_write

# records.jsonl's fields (RequestRecord.to_json), the three optional ones last: every row has every column
RECORD_FIELDS = ("request_id", "prompt_tokens", "output_tokens", "scheduled_time", "start_time", "chunk_times",
                 "end_time", "error", "max_tokens", "test", "batch", "content_mask", "preemptions", "chunk_tokens")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v), separators=(",", ":"))
    if isinstance(v, float):
        return repr(v)  # round-trips exactly
    return v


def record_row(rec: RequestRecord) -> list:
    d = rec.to_json()
    d.setdefault("preemptions", 0)
    return [_cell(d.get(k)) for k in RECORD_FIELDS]


def records_csv(run: RunResult) -> str:
    """The CSV text: a header of RECORD_FIELDS, then one row per record in request order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RECORD_FIELDS)
    for rec in sorted(run.records, key=lambda r: r.request_id):
        w.writerow(record_row(rec))
    return buf.getvalue()


def write_records_csv(run: RunResult, path: str | os.PathLike) -> int:
    """Write the run's records as CSV (all at once: a reader never sees half a file); returns the rows."""
    atomic_write(Path(path), records_csv(run))
    return len(run.records)


# ---------------------------------------------------------------- the plot's data

def _end_of(r: RequestRecord) -> float:
    if r.end_time is not None:
        return float(r.end_time)
    return float(r.chunk_times[-1]) if len(r.chunk_times) else float(r.start_time)


def in_flight(run: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """(t, n): requests in flight from t[i] on (a step function), seconds since the run's start.

    Every record counts from its send (start_time) to the end of its stream (end_time), failed
    ones too: the client held them open. Intervals are half-open, so on a tie an ending request
    leaves before a starting one arrives (vllm bench serve's newest peak-concurrency sweep)."""
    if not run.records:
        return np.zeros(1), np.zeros(1, dtype=np.int64)
    starts = np.array([r.start_time for r in run.records], dtype=float)
    ends = np.array([_end_of(r) for r in run.records], dtype=float)
    times = np.concatenate([starts, ends]) - run.start_time
    deltas = np.concatenate([np.ones(len(starts), np.int64), -np.ones(len(ends), np.int64)])
    order = np.lexsort((deltas, times))
    t, n = times[order], np.cumsum(deltas[order])
    keep = np.append(t[1:] != t[:-1], True)  # one value per instant: the count after all its events
    t, n = t[keep], n[keep]
    if t[0] > 0:  # nothing in flight from the run's start to the first send
        t, n = np.concatenate([[0.0], t]), np.concatenate([[0], n])
    return t, n


def latency_series(run: RunResult) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT and E2EL and the pooled ITLs of the completed requests, in ms (as summarize_open)."""
    ok = sorted((r for r in run.records if r.ok), key=lambda r: r.request_id)
    t = request_times(ok)
    itl = np.concatenate([np.diff(r.chunk_times) for r in ok]) * 1000 if ok else np.zeros(0)
    return {"sent_s": t.starts - run.start_time, "ttft_ms": t.ttft * 1000, "e2el_ms": t.e2el * 1000,
            "tpot_ms": t.tpot * 1000, "itl_ms": itl}


def read_metrics(run_dir: str | os.PathLike, run: RunResult) -> dict[str, np.ndarray]:
    """metrics.jsonl's server series on the run's clock (s since its start): t, running, waiting, kv (0-1)."""
    p = Path(run_dir) / "metrics.jsonl"
    rows = []
    if p.is_file():
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    s = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(s, dict) and isinstance(s.get("t"), (int, float)) and "error" not in s:
                    rows.append(s)
    rows.sort(key=lambda s: s["t"])

    def col(key):
        return np.array([float(s[key]) if isinstance(s.get(key), (int, float)) else np.nan for s in rows])

    return {"t": np.array([s["t"] - run.start_time for s in rows]), "running": col("num_requests_running"),
            "waiting": col("num_requests_waiting"), "kv": col("kv_cache_usage_perc")}


# ---------------------------------------------------------------- the plot

def plot_run(run: RunResult, path: str | os.PathLike, run_dir: str | os.PathLike | None = None,
             title: str | None = None) -> dict[str, Any]:
    """Draw the run's four panels into `path` (PNG, SVG, PDF); returns the plotted data.
    run_dir: the run folder, for the server's series in metrics.jsonl; title: the figure title's start."""
    from simulator.plotting import pyplot

    lat = latency_series(run)
    t_in, n_in = in_flight(run)
    server = read_metrics(run_dir, run) if run_dir is not None else {"t": np.zeros(0)}
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    a_ttft, a_tok, a_time, a_flight = axes.ravel()

    def hist(ax, values, label, color, bins=None):
        if len(values):
            ax.hist(values, bins=bins if bins is not None else min(50, max(5, len(values) // 4)),
                    histtype="step" if bins is not None else "stepfilled", color=color, alpha=0.85,
                    label=f"{label}: p50 {np.median(values):.3g} ms, p99 {np.percentile(values, 99):.3g} ms")

    hist(a_ttft, lat["ttft_ms"], "TTFT", "tab:blue")
    a_ttft.set_xlabel("time to first token (ms)")
    a_ttft.set_ylabel("requests")
    a_ttft.set_title("TTFT")
    both = np.concatenate([lat["itl_ms"], lat["tpot_ms"]])
    if len(both):
        lo, hi = float(both.min()), float(both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
        hist(a_tok, lat["itl_ms"], "ITL (each gap)", "tab:orange", bins)
        hist(a_tok, lat["tpot_ms"], "TPOT (each request)", "tab:green", bins)
        a_tok.set_yscale("log")
    a_tok.set_xlabel("ms per output token")
    a_tok.set_ylabel("count")
    a_tok.set_title("ITL and TPOT")
    if len(lat["sent_s"]):
        a_time.scatter(lat["sent_s"], lat["e2el_ms"], s=8, color="0.6", label="E2EL")
        a_time.scatter(lat["sent_s"], lat["ttft_ms"], s=8, color="tab:blue", label="TTFT")
    a_time.set_xlabel("sent at (s into the run)")
    a_time.set_ylabel("ms")
    a_time.set_title("latency over the run")
    a_flight.step(t_in, n_in, where="post", color="k", label=f"in flight (client), peak {int(n_in.max())}")
    if len(server["t"]):
        for key, color in (("running", "tab:green"), ("waiting", "tab:red")):
            if np.isfinite(server[key]).any():
                a_flight.plot(server["t"], server[key], color=color, lw=1, label=f"{key} (server /metrics)")
        if np.isfinite(server["kv"]).any():
            kv = a_flight.twinx()
            kv.plot(server["t"], 100 * server["kv"], color="tab:purple", lw=1, ls="--", label="KV cache used")
            kv.set_ylabel("KV cache used (%)", color="tab:purple")
            kv.set_ylim(0, 105)
            kv.legend(fontsize=7, loc="upper right")
    a_flight.set_xlabel("s into the run")
    a_flight.set_ylabel("requests")
    a_flight.set_title("requests in flight")
    for ax in axes.ravel():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        elif ax is not a_flight:
            ax.text(0.5, 0.5, "no completed requests", ha="center", va="center", transform=ax.transAxes)
    ok = len(lat["ttft_ms"])
    fig.suptitle(f"{title + ': ' if title else ''}{run.kind} loop, {ok} completed, {len(run.records) - ok} failed, "
                 f"{run.duration:.1f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {**lat, "in_flight_t": t_in, "in_flight_n": n_in, "server": server}
