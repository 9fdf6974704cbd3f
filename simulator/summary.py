"""Summaries computed from records only, with the tools' exact definitions.

`summarize_open` is vllm bench serve's `calculate_metrics` (TTFT, TPOT excl. the
first token, pooled per-chunk ITL, E2EL, throughputs, peak output tokens per
second, peak concurrent requests); `summarize_closed` is llama-benchy 0.4.0's
`_process_batch` and table aggregation. See shared/reference/metric-definitions.md.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .records import RequestRecord, RunResult

DEFAULT_PERCENTILES = (50, 90, 95, 99)
OPEN_METRICS = ("ttft", "tpot", "itl", "e2el")


# --------------------------------------------------------------------------- vllm bench serve

def percentile_key(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p}"


class Pooled:
    """A large pooled sample kept as sorted (value, count) pairs.

    Simulated runs repeat the same inter-chunk gaps for every request in a step,
    so pooling 50M ITLs of 100k requests needs only as many pairs as there are
    distinct gaps. Statistics equal numpy's on the expanded array (np.percentile's
    linear rule included).
    """

    def __init__(self, batch: int = 250_000):
        self.values = np.zeros(0)
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        # merged batches as sorted (values, counts) runs, each at least twice the next one's size: a
        # batch merges only with runs of its own order, so pooling stays O(n log n) as the number of
        # distinct gaps grows with the run (merging every batch into one table was quadratic)
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.batch = batch

    def add(self, x: np.ndarray) -> None:
        if len(x):
            self._pending.append(x)
            self._n_pending += len(x)
            if self._n_pending >= self.batch:
                self._flush()

    @staticmethod
    def _union(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Two sorted runs of distinct values as one: counts of equal values added, the others inserted in
        order (np.unique's result on both, in less memory than sorting them together)."""
        if len(a[0]) < len(b[0]):
            a, b = b, a
        av, ac = a
        bv, bc = b
        if not len(bv):
            return av, ac
        if np.isnan(av[-1]) or np.isnan(bv[-1]):  # NaN != NaN: np.unique's own rule
            values, inv = np.unique(np.concatenate([av, bv]), return_inverse=True)
            return values, np.bincount(inv, weights=np.concatenate([ac, bc])).astype(np.int64)
        pos = np.searchsorted(av, bv)
        match = np.zeros(len(bv), dtype=bool)
        inside = pos < len(av)
        match[inside] = av[pos[inside]] == bv[inside]
        counts = ac.astype(np.int64)  # a copy
        counts[pos[match]] += bc[match]  # distinct positions: bv's values are distinct
        new = ~match
        return np.insert(av, pos[new], bv[new]), np.insert(counts, pos[new], bc[new])

    def add_counted(self, values: np.ndarray, counts: np.ndarray) -> None:
        """values[i] pooled counts[i] times."""
        if len(values):
            v, inv = np.unique(values, return_inverse=True)
            # float sums of integer counts: exact below 2**53
            self._push((v, np.bincount(inv.reshape(-1), weights=counts, minlength=len(v)).astype(np.int64)))

    def _flush(self) -> None:
        if not self._pending:
            return
        run = np.unique(np.concatenate(self._pending), return_counts=True)
        self._pending, self._n_pending = [], 0
        self._push(run)

    def _push(self, run: tuple[np.ndarray, np.ndarray]) -> None:
        runs = self._runs
        while runs and len(runs[-1][0]) <= 2 * len(run[0]):
            run = self._union(runs.pop(), run)
        runs.append(run)

    def _merge(self) -> None:
        self._flush()
        if not self._runs:
            return
        run = (self.values, self.counts)
        while self._runs:
            run = self._union(self._runs.pop(), run)
        self.values, self.counts = run

    def stats(self, name: str, percentiles: Sequence[float]) -> dict[str, float]:
        self._merge()
        if len(self.values) == 0:
            return _stats(name, np.zeros(0), percentiles)
        v, c = self.values, self.counts
        n = int(c.sum())
        mean = float((v * c).sum() / n)
        std = float(np.sqrt((c * (v - mean) ** 2).sum() / n))
        ends = np.cumsum(c)  # element i of the expanded array is v[searchsorted(ends, i, 'right')]

        def at(i: int) -> float:
            return float(v[np.searchsorted(ends, i, side="right")])

        def pct(p: float) -> float:
            pos = p / 100 * (n - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, n - 1)
            a, b = at(lo), at(hi)
            return a + (pos - lo) * (b - a)

        out = {f"mean_{name}_ms": mean * 1000, f"median_{name}_ms": pct(50) * 1000, f"std_{name}_ms": std * 1000}
        for p in percentiles:
            out[f"{percentile_key(p)}_{name}_ms"] = pct(p) * 1000
        return out


def _stats(name: str, values: np.ndarray, percentiles: Sequence[float]) -> dict[str, float]:
    # vllm: np.mean(x or 0) etc.; an empty list reports zeros, not NaN.
    v = values if len(values) else np.zeros(1)
    out = {f"mean_{name}_ms": float(np.mean(v)) * 1000, f"median_{name}_ms": float(np.median(v)) * 1000,
           f"std_{name}_ms": float(np.std(v)) * 1000}
    for p in percentiles:
        out[f"{percentile_key(p)}_{name}_ms"] = float(np.percentile(v, p)) * 1000
    return out


def peak_concurrency_bucket(starts: np.ndarray, ends: np.ndarray) -> int:
    """vllm bench serve before ~Sep 2026: 1-s buckets, both ends inclusive.

    Every published result capsim validates against (vLLM 0.20-0.26 era) used it.
    """
    if len(starts) == 0:
        return 0
    t0 = starts.min()
    lo = (starts - t0).astype(np.int64)
    hi = (ends - t0).astype(np.int64)
    # the bucket counts change only where a request enters (lo) or has left (hi + 1): summed there, in
    # order, they reach the same peak as vLLM's array over every second, without one (a run at a request
    # a day spans millions of seconds)
    where, first = np.unique(np.concatenate([lo, hi + 1]), return_inverse=True)
    diff = np.bincount(first, weights=np.concatenate([np.ones(len(lo)), -np.ones(len(hi))]), minlength=len(where))
    return int(np.cumsum(diff).max())


def peak_concurrency_sweep(starts: np.ndarray, ends: np.ndarray) -> int:
    """Newest vllm bench serve: sweep over half-open [start, end); departures first on ties."""
    if len(starts) == 0:
        return 0
    times = np.concatenate([starts, ends])
    deltas = np.concatenate([np.ones(len(starts), np.int64), -np.ones(len(ends), np.int64)])
    order = np.lexsort((deltas, times))  # ties: -1 (departure) sorts before +1
    return int(np.cumsum(deltas[order]).max())


# Seconds a run may span for its 1-s buckets to be one array (32 MB); a longer one (a request an hour
# for a year) counts only the seconds that hold a chunk.
DENSE_SECONDS = 1 << 22


class SecondBuckets:
    """Output tokens in 1-s buckets counted from `t_min` (vllm bench serve's peak output throughput)."""

    def __init__(self, t_min: float, t_max: float):
        self.t_min = t_min
        self.span = int(t_max - t_min) + 1
        self.dense = np.zeros(self.span, dtype=np.int64) if self.span <= DENSE_SECONDS else None
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, times: np.ndarray, counts: np.ndarray | None = None) -> None:
        """A token at each of `times` (`counts` tokens each, if given)."""
        idx = (times - self.t_min).astype(np.int64)
        idx[idx < 0] += self.span  # np.add.at's wrap-around on negative buckets, kept
        if self.dense is None:
            self.parts.append((idx, np.ones(len(idx), np.int64) if counts is None else counts.astype(np.int64)))
        elif counts is None:
            self.dense += np.bincount(idx, minlength=self.span)
        else:
            self.dense += np.bincount(idx, weights=counts, minlength=self.span).astype(np.int64)

    def peak(self) -> int:
        if self.dense is not None:
            return int(self.dense.max())
        _, bucket = np.unique(np.concatenate([x[0] for x in self.parts]), return_inverse=True)
        return int(np.bincount(bucket, weights=np.concatenate([x[1] for x in self.parts])).max())


def _pool_chunks(ok: list[RequestRecord], itls: Pooled, per_second: SecondBuckets) -> None:
    """Every request's inter-chunk gaps into `itls`, and its chunks into the 1-s buckets of `per_second`.

    Records that view a common array (a simulated run's chunk-time pages) are taken a page at a time:
    a gap between elements i and i + 1 of the page is the same subtraction of the same two floats in
    every request whose chunks hold both, so the page's gaps are pooled once, each with the number of
    requests holding it (and each chunk time counted with the number holding it): the same pooled
    values and counts as from each request's own gaps, from as many gaps as steps rather than chunks.
    Other records (live ones, or chunks from several pages) are pooled a batch at a time: one diff of
    the concatenated times takes each request's gaps plus one across each boundary between two
    requests, which is dropped.
    """
    pages: dict[int, tuple[np.ndarray, int, list, list] | None] = {}  # id(base): (base, address, offsets, lengths)
    loose = []
    f8 = np.dtype(np.float64)
    for r in ok:
        ct = r.chunk_times
        b = ct.base
        if b is not None:
            g = pages.get(id(b), False)
            if g is False:  # a new base: a 1-D float64 array of contiguous elements, or no page
                g = pages[id(b)] = (b, b.ctypes.data, [], []) if (
                    isinstance(b, np.ndarray) and b.dtype == f8 and b.strides == (8,)) else None
            if g is not None and ct.strides == (8,) and ct.dtype == f8 and len(ct):
                off, rem = divmod(ct.ctypes.data - g[1], 8)  # ct is b[off:off + len(ct)]
                if not rem and 0 <= off and off + len(ct) <= len(b):
                    g[2].append(off)
                    g[3].append(len(ct))
                    continue
        loose.append(ct)

    batch: list[tuple[np.ndarray, np.ndarray]] = []
    n_batch = 0
    for g in pages.values():
        if g is None or not g[2]:
            continue
        b, _, offs, lens = g
        o = np.array(offs, dtype=np.int64)
        e = o + np.array(lens, dtype=np.int64)  # each request's chunks: seg[o:e], e > o
        lo = int(o.min())
        seg = b[lo:int(e.max())]
        o -= lo
        e -= lo
        m = len(seg)
        held = np.cumsum(np.bincount(o, minlength=m + 1) - np.bincount(e, minlength=m + 1))[:m]
        gaps_held = np.cumsum(np.bincount(o, minlength=m) - np.bincount(e - 1, minlength=m))[:m - 1]
        keep = gaps_held > 0
        batch.append((np.diff(seg)[keep], gaps_held[keep]))
        n_batch += len(batch[-1][0])
        if n_batch >= 1 << 19:
            itls.add_counted(np.concatenate([x[0] for x in batch]), np.concatenate([x[1] for x in batch]))
            batch, n_batch = [], 0
        keep = held > 0
        per_second.add(seg[keep], held[keep])
    if batch:
        itls.add_counted(np.concatenate([x[0] for x in batch]), np.concatenate([x[1] for x in batch]))

    parts: list[np.ndarray] = []
    n_parts = 0
    for i, ct in enumerate(loose):
        parts.append(ct)
        n_parts += len(ct)
        if n_parts >= 1 << 19 or i == len(loose) - 1:
            times = np.concatenate(parts)
            gaps = np.diff(times)
            if len(parts) > 1:
                ends = np.cumsum([len(x) for x in parts[:-1]])  # each request's first chunk but the first's
                gaps = np.delete(gaps, ends - 1)
            itls.add(gaps)
            per_second.add(times)
            parts, n_parts = [], 0


@dataclass(frozen=True)
class RequestTimes:
    """Per-request times of completed requests, in seconds, as vllm bench serve computes them.

    starts / lasts / scheds: send, last chunk and scheduled send; ttft = first chunk - send;
    e2el = last chunk - send; outs: output tokens; tpot = (e2el - ttft) / (outs - 1) over the
    requests of more than one output token only (vllm bench serve leaves the others out).
    """

    starts: np.ndarray
    lasts: np.ndarray
    scheds: np.ndarray
    ttft: np.ndarray
    e2el: np.ndarray
    outs: np.ndarray
    tpot: np.ndarray


def request_times(ok: Sequence[RequestRecord]) -> RequestTimes:
    """RequestTimes of completed records (each with at least one chunk), in their order."""
    # one pass over the records (a pass per field was a slow part of 100k requests); the differences
    # below are the same float subtractions a request at a time would make. fromiter frees each row's
    # tuple as it goes: 100k of them alive at once made the cyclic collector walk every object of the
    # run, several times.
    firsts, lasts, starts, scheds = np.fromiter(
        ((r.chunk_times[0], r.chunk_times[-1], r.start_time, r.scheduled_time) for r in ok),
        dtype=np.dtype((np.float64, 4)), count=len(ok)
    ).reshape(-1, 4).T.copy()  # rows of a C-ordered table: contiguous, as the per-field arrays were
    ttft = firsts - starts
    e2el = lasts - starts
    outs = np.array([r.output_tokens for r in ok], dtype=np.int64)
    multi = outs > 1
    tpot = (e2el[multi] - ttft[multi]) / (outs[multi] - 1)
    return RequestTimes(starts, lasts, scheds, ttft, e2el, outs, tpot)


def summarize_open(run: RunResult, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                   metrics: Sequence[str] | None = None, goodput: dict[str, float] | None = None) -> dict[str, float]:
    """vllm bench serve's result-JSON keys for one run.

    metrics: the statistics to report (its --percentile-metrics: ttft, tpot, itl, e2el,
    client_queue_time, e2el_including_client_queue); None: ttft, tpot, itl, e2el and,
    with a client max concurrency, client_queue_time.
    goodput: its --goodput SLOs in ms ({"ttft": 500, "tpot": 50, "e2el": ...}); adds
    request_goodput = requests meeting every SLO (TPOT 0 for one output token) / duration.
    """
    ok = [r for r in run.records if r.ok]
    dur = run.duration
    t = request_times(ok)
    starts, lasts, scheds, ttfts, e2els, outs, tpots = t.starts, t.lasts, t.scheds, t.ttft, t.e2el, t.outs, t.tpot
    ins = np.array([r.prompt_tokens for r in ok], dtype=np.int64)
    itls = Pooled()
    total_out = int(outs.sum())
    total_in = int(ins.sum())
    res: dict[str, float] = {
        "duration": dur,
        "completed": len(ok),
        "failed": len(run.records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur if dur > 0 else 0.0,
        "output_throughput": total_out / dur if dur > 0 else 0.0,
        "total_token_throughput": (total_in + total_out) / dur if dur > 0 else 0.0,
    }
    if ok:
        per_second = SecondBuckets(starts.min(), max(r.chunk_times[-1] for r in ok))
        _pool_chunks(ok, itls, per_second)
        res["max_output_tokens_per_s"] = float(per_second.peak())
        res["max_concurrent_requests"] = peak_concurrency_bucket(starts, starts + e2els)
        # the ends themselves, not start + e2el: that sum can land an ulp past the end, and a request
        # sent the instant another finished (a client semaphore) would count as overlapping it
        res["max_concurrent_requests_sweep"] = peak_concurrency_sweep(starts, lasts)
    else:
        res["max_output_tokens_per_s"] = 0.0
        res["max_concurrent_requests"] = 0
        res["max_concurrent_requests_sweep"] = 0
    if goodput:
        all_tpots = np.where(outs > 1, (e2els - ttfts) / np.maximum(outs - 1, 1), 0.0) if len(ok) else np.zeros(0)
        good = np.ones(len(ok), dtype=bool)
        for name, vals in (("ttft", ttfts), ("tpot", all_tpots), ("e2el", e2els)):
            if name in goodput:
                good &= goodput[name] / 1000.0 >= vals
        res["request_goodput"] = int(good.sum()) / dur if dur > 0 else 0.0
    if run.probes is not None:
        res.update(probe_stats(run.probes))
    # speculative decoding as the server counted it across the run (measure.prom), or the engine (sim)
    res.update({k: v for k, v in run.extra.items() if k.startswith("spec_decode_")})
    queue = starts - scheds
    want = tuple(metrics) if metrics else \
        OPEN_METRICS + (("client_queue_time",) if run.open_loop is not None and run.open_loop.max_concurrency else ())
    values = {"ttft": ttfts, "tpot": tpots, "e2el": e2els, "client_queue_time": queue,
              "e2el_including_client_queue": e2els + queue}
    for name in want:
        res.update(itls.stats("itl", percentiles) if name == "itl" else _stats(name, values[name], percentiles))
    return res


def probe_stats(probes: Sequence[RequestRecord]) -> dict[str, float]:
    """vllm bench serve's probe keys of --probe-request-rate's requests: their end-to-end latencies (start to
    last chunk), at numpy's median, 99th percentile and max; none at all where no probe succeeded, as there."""
    lats = [r.e2el for r in probes if r.ok]
    if not lats:
        return {}
    return {"probe_completed": len(lats), "probe_failed": len(probes) - len(lats),
            "probe_median_e2el_ms": float(np.median(lats)) * 1000,
            "probe_p99_e2el_ms": float(np.percentile(lats, 99)) * 1000, "probe_max_e2el_ms": float(max(lats)) * 1000}


DETAILED_ARRAYS = ("input_lens", "output_lens", "ttfts", "itls", "start_times", "generated_texts", "errors")


def spec_decode_keys(drafts: int, draft_tokens: int, accepted: int, accepted_per_pos: Sequence[int]) -> dict:
    """vllm bench serve's spec_decode_* result keys from a run's speculative-decoding counts (vLLM's
    spec_decode counters over the run: drafts, draft tokens, accepted tokens, and accepted tokens at each
    draft position), as its benchmark computes them: none unless drafts were made."""
    if draft_tokens <= 0:
        return {}
    return {"spec_decode_acceptance_rate": accepted / draft_tokens * 100,
            "spec_decode_acceptance_length": 1 + accepted / drafts if drafts > 0 else 0.0,
            "spec_decode_num_drafts": int(drafts), "spec_decode_draft_tokens": int(draft_tokens),
            "spec_decode_accepted_tokens": int(accepted),
            "spec_decode_per_position_acceptance_rates": [n / drafts for n in accepted_per_pos] if drafts > 0 else []}


def result_arrays(records: Sequence[RequestRecord], texts: dict[int, str] | None = None) -> dict[str, list]:
    """vllm bench serve's per-request arrays of its result (the detailed ones, then `latencies` and
    `queue_times`, which it keeps without --save-detailed too), an entry for every request, in order.

    A failed request keeps what vLLM's RequestFuncOutput kept: its prompt length, start and queue time, the
    first chunk's time and the gaps its stream got to before it broke; latency 0.0 (set only at a stream's
    normal end), no output tokens, no text. `texts`: generated text by request id (else "")."""
    texts = texts or {}
    return {"input_lens": [r.prompt_tokens for r in records],
            "output_lens": [r.output_tokens if r.ok else 0 for r in records],
            "ttfts": [float(r.chunk_times[0]) - r.start_time if len(r.chunk_times) else 0.0 for r in records],
            "itls": [np.diff(r.chunk_times).tolist() for r in records],
            "start_times": [r.start_time for r in records],
            "generated_texts": [texts.get(r.request_id, "") if r.ok else "" for r in records],
            "errors": [r.error or "" for r in records],
            "latencies": [r.e2el if r.ok else 0.0 for r in records],
            "queue_times": [r.start_time - r.scheduled_time for r in records]}


def _percentiles_in(s: dict) -> list[float]:
    found = set()
    for k in s:
        m = re.fullmatch(r"p(\d+(?:\.\d+)?)_(?:ttft|tpot|itl|e2el|client_queue_time|e2el_including_client_queue)_ms",
                         k)
        if m:
            found.add(float(m.group(1)))
    return sorted(found) or list(DEFAULT_PERCENTILES)


def format_open_summary(s: dict, rate: float | None = None, title: str = "Serving Benchmark Result",
                        percentiles: Sequence[float] | None = None, bands: dict | None = None,
                        metrics: Sequence[str] | None = None) -> str:
    """The block vllm bench serve prints (with optional [lo, hi] bands): `metrics` (its
    --percentile-metrics; default ttft, tpot, itl, e2el) where the summary holds them, at
    `percentiles` (default: those of the summary's keys)."""
    if percentiles is None:
        percentiles = _percentiles_in(s)

    def line(label, key, fmt="{:.2f}"):
        v = s.get(key)
        txt = "" if v is None else fmt.format(v)
        if bands and key in bands:
            lo, hi = bands[key]
            txt += f"  [{fmt.format(lo)} - {fmt.format(hi)}]"
        return f"{label:<40} {txt:<10}"

    out = [f"{title:=^50}",
           line("Successful requests:", "completed", "{:d}" if isinstance(s.get("completed"), int) else "{:.0f}"),
           line("Failed requests:", "failed", "{:d}" if isinstance(s.get("failed"), int) else "{:.0f}")]
    if rate is not None:
        out.append(f"{'Request rate configured (RPS):':<40} {rate:<10.2f}")
    out += [line("Benchmark duration (s):", "duration"),
            line("Total input tokens:", "total_input_tokens", "{:.0f}"),
            line("Total generated tokens:", "total_output_tokens", "{:.0f}"),
            line("Request throughput (req/s):", "request_throughput")]
    if s.get("request_goodput") is not None:
        out.append(line("Request goodput (req/s):", "request_goodput"))
    out += [
            line("Output token throughput (tok/s):", "output_throughput"),
            line("Peak output token throughput (tok/s):", "max_output_tokens_per_s"),
            line("Peak concurrent requests:", "max_concurrent_requests"),
            line("Total token throughput (tok/s):", "total_token_throughput")]
    if "probe_completed" in s:
        out += [f"{'Probe Requests':-^50}", line("Probe requests completed:", "probe_completed", "{:.0f}"),
                line("Probe requests failed:", "probe_failed", "{:.0f}"),
                line("Median probe E2EL (ms):", "probe_median_e2el_ms"),
                line("P99 probe E2EL (ms):", "probe_p99_e2el_ms"), line("Max probe E2EL (ms):", "probe_max_e2el_ms")]
    names = {"ttft": ("Time to First Token", "TTFT"), "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
             "itl": ("Inter-token Latency", "ITL"), "e2el": ("End-to-end Latency", "E2EL"),
             "client_queue_time": ("Client Queue Time", "Client Queue Time"),
             "e2el_including_client_queue": ("E2EL Including Client Queue", "E2EL Incl. Queue")}
    for m in (metrics or OPEN_METRICS):
        head, short = names[m]
        if f"mean_{m}_ms" not in s:
            continue
        out.append(f"{head:-^50}")
        out.append(line(f"Mean {short} (ms):", f"mean_{m}_ms"))
        out.append(line(f"Median {short} (ms):", f"median_{m}_ms"))
        for p in percentiles:
            k = percentile_key(p)
            out.append(line(f"{k.upper()} {short} (ms):", f"{k}_{m}_ms"))
    if "spec_decode_acceptance_rate" in s:
        out += [f"{'Speculative Decoding':-^50}", line("Acceptance rate (%):", "spec_decode_acceptance_rate"),
                line("Acceptance length:", "spec_decode_acceptance_length"),
                line("Drafts:", "spec_decode_num_drafts", "{:.0f}"),
                line("Draft tokens:", "spec_decode_draft_tokens", "{:.0f}"),
                line("Accepted tokens:", "spec_decode_accepted_tokens", "{:.0f}")]
        if s.get("spec_decode_per_position_acceptance_rates"):
            out.append("Per-position acceptance (%):")
            out += [f"{f'  Position {i}:':<40} {r * 100:<10.2f}"
                    for i, r in enumerate(s["spec_decode_per_position_acceptance_rates"])]
    out.append("=" * 50)
    return "\n".join(out)


# --------------------------------------------------------------------------- llama-benchy

BENCHY_METRICS = ("pp_throughput", "pp_req_throughput", "tg_throughput", "tg_req_throughput",
                  "peak_throughput", "peak_req_throughput", "ttfr", "est_ppt", "e2e_ttft")


@dataclass
class ClosedRow:
    """One llama-benchy result (its pp row and tg row): metric -> (mean, std).

    Throughputs are tokens/s; ttfr, est_ppt and e2e_ttft are milliseconds, as
    llama-benchy prints them.
    """

    pp: int
    tg: int
    depth: int
    concurrency: int
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    # llama-benchy's --save-total-throughput-timeseries (one series a run: all its requests' tokens) and
    # --save-all-throughput-timeseries (a series a request, a list a run); None where not asked for
    throughput_over_time: list | None = None
    requests_throughput_over_time: list | None = None
    values: dict[str, list[float]] = field(default_factory=dict)  # each metric's raw values (llama-benchy's JSON)
    # a test's context loads (llama-benchy's --enable-prefix-caching phase 1; its rows ctx_pp and ctx_tg)
    context_load: bool = False

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.pp, self.tg, self.depth, self.concurrency)


def _window_counts(ts: np.ndarray) -> np.ndarray:
    """At each of the sorted token times `ts`, the tokens in the 1-s window (t - 1, t] ending at it."""
    return np.arange(len(ts)) - np.searchsorted(ts, ts - 1.0, side="right") + 1


def peak_window_rate(ts: np.ndarray) -> float:
    """llama-benchy 0.4.0's peak t/s: most tokens in a 1-s window (t - 1, t] ending at a token; a
    span under a second gives count / span."""
    if len(ts) == 0:
        return 0.0
    ts = np.sort(ts)
    span = ts[-1] - ts[0]
    if 0 < span < 1.0:
        return len(ts) / span
    return float(_window_counts(ts).max())


def peak_window_series(ts: np.ndarray) -> list[list[float]]:
    """llama-benchy 0.4.0's throughput time series behind peak_window_rate: at each token, [its time since
    the first token, tokens in the 1-s window (t - 1, t] ending at it, per second]."""
    if len(ts) == 0:
        return []
    ts = np.sort(ts)
    return [[float(t), float(n)] for t, n in zip(ts - ts[0], _window_counts(ts) / 1.0)]


def decode_tokens(ts: np.ndarray) -> int:
    """llama-benchy 0.4.0's decode tokens of a request: its tokens stamped after its first one."""
    return int((ts > ts[0]).sum()) if len(ts) > 1 else 0


def _benchy_prompt_tokens(reported: int, expected: int) -> int:
    """The prompt tokens llama-benchy 0.4.0 divides by (results.py _process_batch): the server's count where
    there is one (> 0) within 20 % of what the test expected (ClosedLoopFacts.expected_prompt), else that."""
    return reported if reported > 0 and abs(reported - expected) < expected * 0.2 else expected


def _request_speeds(r: RequestRecord, latency_s: float, prompt_tokens: int):
    """Per request: (ttfr, e2e_ttft, est_ppt, pp t/s, tg t/s, token times)."""
    ct = r.content_token_times()  # llama-benchy 0.4.0 counts the tokens of each content chunk
    ttfr = r.chunk_times[0] - r.start_time
    e2e = ct[0] - r.start_time if len(ct) else math.nan
    est = max(0.0, ttfr - latency_s)
    pp_speed = prompt_tokens / est if est > 0 else math.nan
    n = decode_tokens(ct)
    tg_speed = n / (ct[-1] - ct[0]) if n > 0 and ct[-1] > ct[0] else math.nan
    return ttfr, e2e, est, pp_speed, tg_speed, ct


def _ms(x):
    return np.mean(x), np.std(x)


def summarize_closed(run: RunResult, total_series: bool = False, request_series: bool = False) -> list[ClosedRow]:
    """llama-benchy 0.4.0's table values from the records of a closed-loop run.

    Records carry `test` (one key per pp/tg/depth/concurrency) and `batch`
    (the run index); `run.closed_loop.latency_s` is the latency it subtracts and
    `run.closed_loop.tests` maps each key to (pp, tg, depth, concurrency); with prefix caching its
    `context_loads` are the keys of context loads, whose rows are llama-benchy's ctx_pp and ctx_tg.
    `total_series`, `request_series`: its throughput time series too (ClosedRow).
    """
    latency = float(run.closed_loop.latency_s)
    tests = run.closed_loop.tests
    by_test: dict[str, dict[int, list[RequestRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in run.records:
        if r.ok:
            by_test[r.test][r.batch].append(r)
    rows = []
    for key, (pp, tg, depth, c) in tests.items():
        batches = by_test.get(key, {})
        expected = run.closed_loop.expected_prompt(key)
        per_req = defaultdict(list)
        batch_vals = defaultdict(list)
        totals, each = [], []
        for recs in batches.values():
            prompts = [_benchy_prompt_tokens(r.prompt_tokens, expected) for r in recs]
            speeds = [_request_speeds(r, latency, p) for r, p in zip(recs, prompts)]
            tokens = np.concatenate([s[5] for s in speeds])
            if total_series and len(tokens):  # a run of no token times has no series, as there
                totals.append(peak_window_series(tokens))
            if request_series:
                each.append([peak_window_series(s[5]) for s in speeds])
            for (ttfr, e2e, est, pps, tgs, ct), r in zip(speeds, recs):
                per_req["ttfr"].append(ttfr * 1000)
                if not len(ct):  # no first token (an empty answer): no prompt, decode or peak figure, as there
                    continue
                per_req["e2e_ttft"].append(e2e * 1000)
                per_req["est_ppt"].append(est * 1000)
                if not math.isnan(pps):
                    per_req["pp_req_throughput"].append(pps)
                if not math.isnan(tgs):
                    per_req["tg_req_throughput"].append(tgs)
                per_req["peak_req_throughput"].append(peak_window_rate(ct))
            firsts = [s[5][0] for s in speeds if len(s[5])]
            lasts = [s[5][-1] for s in speeds if len(s[5])]
            starts = [r.start_time for r in recs]
            if c > 1 and firsts:  # a batch with no first token has no batch figures, as there
                span_pp = max(firsts) - min(starts)
                if span_pp > 0:
                    batch_vals["pp_throughput"].append(sum(prompts) / span_pp)
                span_tg = max(lasts) - min(firsts)
                n_tok = sum(decode_tokens(s[5]) for s in speeds)
                if span_tg > 0 and n_tok > 0:
                    batch_vals["tg_throughput"].append(n_tok / span_tg)
                batch_vals["peak_throughput"].append(peak_window_rate(tokens))
        m: dict[str, tuple[float, float]] = {}
        vals: dict[str, list[float]] = {}
        for name in ("ttfr", "est_ppt", "e2e_ttft", "pp_req_throughput", "tg_req_throughput", "peak_req_throughput"):
            if per_req[name]:
                m[name] = (float(np.mean(per_req[name])), float(np.std(per_req[name])))
                vals[name] = [float(v) for v in per_req[name]]
        if c > 1:
            for name in ("pp_throughput", "tg_throughput", "peak_throughput"):
                if batch_vals[name]:
                    m[name] = (float(np.mean(batch_vals[name])), float(np.std(batch_vals[name])))
                    vals[name] = [float(v) for v in batch_vals[name]]
        else:
            # c = 1: the single "t/s" column is the per-request speed over runs
            for total, req in (("pp_throughput", "pp_req_throughput"), ("tg_throughput", "tg_req_throughput"),
                               ("peak_throughput", "peak_req_throughput")):
                if req in m:
                    m[total], vals[total] = m[req], vals[req]
        rows.append(ClosedRow(pp, tg, depth, c, m, totals if total_series else None,
                              each if request_series else None, vals, key in run.closed_loop.context_loads))
    return rows


def closed_rows_json(rows: Iterable[ClosedRow]) -> list[dict]:
    """llama-benchy 0.4.0's --format json `benchmarks` entries (its BenchmarkRun dumped): the test, each
    metric as {mean, std, values} or null, and the throughput time series (null unless asked for)."""
    out = []
    for r in rows:
        d: dict[str, Any] = {"concurrency": r.concurrency, "context_size": r.depth, "prompt_size": r.pp,
                             "response_size": r.tg, "is_context_prefill_phase": r.context_load}
        for k in BENCHY_METRICS:
            d[k] = {"mean": r.metrics[k][0], "std": r.metrics[k][1], "values": r.values.get(k, [])} \
                if k in r.metrics else None
        d["throughput_over_time"] = r.throughput_over_time
        d["requests_throughput_over_time"] = r.requests_throughput_over_time
        out.append(d)
    return out


def closed_report_head(latency_mode: str, latency_s: float, model: str | None, rows: Sequence[ClosedRow],
                       version: str, timestamp: float | None, prefix_caching: bool = False) -> dict:
    """The top of llama-benchy 0.4.0's --format json (its BenchmarkMetadata), in its order; `timestamp`: the
    run's wall-clock start (None: not known); `prefix_caching`: its --enable-prefix-caching."""
    import datetime as _dt

    when = None if timestamp is None else \
        _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return {"version": version, "timestamp": when, "latency_mode": latency_mode, "latency_ms": 1000 * float(latency_s),
            "model": model, "prefix_caching_enabled": prefix_caching,
            "max_concurrency": max((r.concurrency for r in rows), default=1)}


BENCHY_COLUMNS = ("t_s", "t_s_req", "peak_ts", "peak_ts_req", "ttfr", "est_ppt", "e2e_ttft")


def closed_report_rows(rows: Iterable[ClosedRow], concurrent: bool | None = None) -> list[tuple[str, dict]]:
    """llama-benchy 0.4.0's report rows (results.py _generate_rows), which its md table and csv print: per
    test a pp row where it has a pp t/s and a tg row where it has a tg or peak t/s, each (test name,
    {column of BENCHY_COLUMNS: (mean, std) or None}). A "(cN)" suffix where any test ran concurrently."""
    rows = list(rows)
    if concurrent is None:
        concurrent = any(r.concurrency > 1 for r in rows)
    out = []
    for r in rows:
        d = f" @ d{r.depth}" if r.depth else ""
        cs = f" (c{r.concurrency})" if concurrent else ""
        pp_name, tg_name = (f"ctx_pp @ d{r.depth}", f"ctx_tg @ d{r.depth}") if r.context_load else \
            (f"pp{r.pp}{d}", f"tg{r.tg}{d}")
        m = r.metrics
        if "pp_throughput" in m:
            out.append((pp_name + cs, dict(zip(BENCHY_COLUMNS, (
                m["pp_throughput"], m.get("pp_req_throughput"), None, None, m.get("ttfr"), m.get("est_ppt"),
                m.get("e2e_ttft"))))))
        if "tg_throughput" in m or "peak_throughput" in m:
            out.append((tg_name + cs, dict(zip(BENCHY_COLUMNS, (
                m.get("tg_throughput"), m.get("tg_req_throughput"), m.get("peak_throughput"),
                m.get("peak_req_throughput"), None, None, None)))))
    return out


def format_closed_table(rows: Iterable[ClosedRow], model: str = "capsim", concurrent: bool | None = None,
                        latency_mode: str = "generation", version: str = "capsim") -> str:
    """llama-benchy 0.4.0's markdown table (results.py _generate_md_report) of closed_report_rows; its
    message where no test has a row."""
    rows = list(rows)
    if concurrent is None:
        concurrent = any(r.concurrency > 1 for r in rows)

    def cell(v):
        return "" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"

    if concurrent:
        head = ["model", "test", "t/s (total)", "t/s (req)", "peak t/s", "peak t/s (req)", "ttfr (ms)",
                "est_ppt (ms)", "e2e_ttft (ms)"]
        columns = BENCHY_COLUMNS
    else:
        head = ["model", "test", "t/s", "peak t/s", "ttfr (ms)", "est_ppt (ms)", "e2e_ttft (ms)"]
        columns = ("t_s", "peak_ts", "ttfr", "est_ppt", "e2e_ttft")
    body = [[model, test, *(cell(v[k]) for k in columns)] for test, v in closed_report_rows(rows, concurrent)]
    footer = ["", f"llama-benchy ({version})", f"latency mode: {latency_mode}"]
    if not body:
        return "\n".join(["No results collected. Check if the model is generating tokens.", *footer])
    # tabulate's pipe table (llama-benchy's): a column at least its header plus 2 wide (its MIN_PADDING)
    widths = [max(len(h) + 2, *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt_row = lambda cells: "| " + " | ".join(
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join((":" + "-" * (w + 1)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt_row(head), sep, *(fmt_row(b) for b in body), *footer])
