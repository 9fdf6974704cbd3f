"""The server's /metrics: parse, snapshot, and scrape once a second.

Each sample is one flat dict with the same keys for vLLM and llama.cpp (requests running and
waiting, KV-cache use, preemptions, token and latency counters, cache facts). Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from time import perf_counter
from typing import Any, Callable

import httpx

from simulator.summary import spec_decode_keys

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

VLLM_MAP = {
    "vllm:num_requests_running": "num_requests_running",
    "vllm:num_requests_waiting": "num_requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage_perc",
    "vllm:num_preemptions_total": "num_preemptions",
    "vllm:num_preemptions": "num_preemptions",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum",
    "vllm:time_to_first_token_seconds_count": "ttft_count",
    "vllm:e2e_request_latency_seconds_sum": "e2el_sum",
    "vllm:e2e_request_latency_seconds_count": "e2el_count",
    "vllm:request_queue_time_seconds_sum": "queue_sum",
    "vllm:request_queue_time_seconds_count": "queue_count",
}
LLAMACPP_MAP = {
    "llamacpp:requests_processing": "num_requests_running",
    "llamacpp:requests_deferred": "num_requests_waiting",
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage_perc",
    "llamacpp:kv_cache_tokens": "kv_cache_tokens",
    "llamacpp:prompt_tokens_total": "prompt_tokens_total",
    "llamacpp:tokens_predicted_total": "generation_tokens_total",
    "llamacpp:n_decode_total": "n_decode_total",
    "llamacpp:n_tokens_max": "n_tokens_max",
    "llamacpp:prompt_seconds_total": "prompt_seconds_total",
    "llamacpp:tokens_predicted_seconds_total": "tokens_predicted_seconds_total",
}
SERIES_KEYS = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "num_preemptions",
               "prompt_tokens_total", "generation_tokens_total", "ttft_sum", "ttft_count")


def _num(s: str) -> Any:
    try:
        v = float(s)
    except ValueError:
        return s
    if math.isfinite(v) and v.is_integer() and "." not in s and "e" not in s.lower():
        return int(v)
    return v


def info_labels(text: str, name: str) -> dict[str, str] | None:
    """The labels (as text) of the first sample of the info series `name` (vllm:cache_config_info and
    its kind: a gauge of 1 whose labels carry the facts); None where the exposition has no such sample."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return dict(_LABEL.findall(line[len(name) + 1:line.rfind("}")]))
    return None


def label_switch(value) -> bool | None:
    """An on/off label of an info series ("True" or "False": vLLM writes its config's Python bools); None
    for anything else (not read, "None")."""
    return {"True": True, "False": False}.get(str(value))


def spec_decode_counters(text: str) -> dict[str, Any] | None:
    """The speculative decoding counters as vllm bench serve reads them (fetch_spec_decode_metrics): every
    `vllm:spec_decode*_total` sample summed over its labels, by the first of num_drafts, num_draft_tokens,
    num_accepted_tokens_per_pos (by its position label) and num_accepted_tokens its name holds; None where
    the exposition has no such sample (no speculative decoding)."""
    out: dict[str, Any] = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0, "accepted_per_pos": {}}
    found = False
    for line in text.split("\n"):
        line = line.strip()
        if not line.startswith("vllm:spec_decode"):
            continue
        parts = line.split(None, 1)
        name = parts[0].split("{")[0]
        if not name.endswith("_total"):
            continue
        found = True
        try:
            v = int(float(parts[-1]))
        except ValueError:
            continue
        if "num_drafts" in name:
            out["num_drafts"] += v
        elif "num_draft_tokens" in name:
            out["num_draft_tokens"] += v
        elif "num_accepted_tokens_per_pos" in name:
            if 'position="' in line:
                start = line.index('position="') + len('position="')
                try:
                    pos = str(int(line[start:line.index('"', start)]))
                except ValueError:  # vLLM's reader skips such a line
                    continue
                out["accepted_per_pos"][pos] = out["accepted_per_pos"].get(pos, 0) + v
        elif "num_accepted_tokens" in name:
            out["num_accepted_tokens"] += v
    return out if found else None


def spec_decode_stats(before: dict | None, after: dict | None) -> dict[str, Any]:
    """vllm bench serve's spec_decode_* result keys from the counters before and after a run (samples'
    "spec_decode"), as its benchmark computes them: none unless both were read and drafts were made."""
    b, a = (before or {}).get("spec_decode"), (after or {}).get("spec_decode")
    if b is None or a is None:
        return {}
    per_pos = []
    for pos in sorted({*b["accepted_per_pos"], *a["accepted_per_pos"]}, key=int):
        was = b["accepted_per_pos"].get(pos, 0)
        per_pos.append(a["accepted_per_pos"].get(pos, was) - was)
    return spec_decode_keys(a["num_drafts"] - b["num_drafts"], a["num_draft_tokens"] - b["num_draft_tokens"],
                            a["num_accepted_tokens"] - b["num_accepted_tokens"], per_pos)


def parse_metrics(text: str) -> dict[str, Any]:
    """The sample fields found in a Prometheus text exposition (see module doc)."""
    out: dict[str, Any] = {}
    spec = spec_decode_counters(text)
    if spec is not None:
        out["spec_decode"] = spec
    older: dict[str, float] = {}  # vllm:gpu_cache_usage_perc, read only where vllm:kv_cache_usage_perc is not
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if not (line.startswith("vllm:") or line.startswith("llamacpp:")):
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            close = line.rfind("}")
            labels, rest = line[brace + 1:close], line[close + 1:]
        else:
            name, _, rest = line.partition(" ")
            labels = ""
        parts = rest.split()
        if not parts:
            continue
        if name == "vllm:cache_config_info":
            cc = {k: _num(v) for k, v in _LABEL.findall(labels)}
            out["cache_config"] = cc
            out["server"] = "vllm"
            continue
        key = VLLM_MAP.get(name) or LLAMACPP_MAP.get(name)
        if key is None:
            continue
        try:
            v = float(parts[0])
        except ValueError:
            continue
        out["server"] = "vllm" if name.startswith("vllm:") else "llama.cpp"
        if name == "vllm:gpu_cache_usage_perc":
            older[key] = older.get(key, 0.0) + v
            continue
        out[key] = out.get(key, 0.0) + v
    for key, v in older.items():
        out.setdefault(key, v)
    return out


def delta(before: dict | None, after: dict | None) -> dict[str, Any]:
    """Counter differences across a run, and the server's own mean TTFT/E2EL."""
    if not before or not after:
        return {}
    d: dict[str, Any] = {}
    for k in ("prompt_tokens_total", "generation_tokens_total", "ttft_sum", "ttft_count", "e2el_sum",
              "e2el_count", "queue_sum", "queue_count", "num_preemptions"):
        if k in before and k in after:
            d[k] = after[k] - before[k]
    for a, s, c in (("mean_ttft_ms", "ttft_sum", "ttft_count"), ("mean_e2el_ms", "e2el_sum", "e2el_count"),
                    ("mean_queue_ms", "queue_sum", "queue_count")):
        if d.get(c):
            d[a] = 1000.0 * d[s] / d[c]
    return d


def add_deltas(acc: dict, d: dict) -> dict:
    for k, v in d.items():
        if not k.startswith("mean_"):
            acc[k] = acc.get(k, 0) + v
    for a, s, c in (("mean_ttft_ms", "ttft_sum", "ttft_count"), ("mean_e2el_ms", "e2el_sum", "e2el_count"),
                    ("mean_queue_ms", "queue_sum", "queue_count")):
        if acc.get(c):
            acc[a] = 1000.0 * acc[s] / acc[c]
    return acc


class MetricsScraper:
    """Scrapes GET /metrics every `interval` s on its own connection.

    `sink(sample)` gets every sample (metrics.jsonl). A server without
    /metrics (404) stops the scraper after the first try; a server that
    stops answering yields samples with an `error` field.
    """

    def __init__(self, base_url: str, headers: dict, interval: float = 1.0,
                 sink: Callable[[dict], None] | None = None, extra: dict | None = None,
                 auth=None, verify=True):
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, auth=auth, trust_env=False, verify=verify,
                                      timeout=httpx.Timeout(5.0),
                                      limits=httpx.Limits(max_connections=2, max_keepalive_connections=1))
        self.interval = interval
        self.sink = sink
        self.extra = extra or {}  # e.g. llama.cpp's cache facts from /props
        self.available: bool | None = None
        self.samples = 0
        self.errors = 0
        self.last: dict | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def scrape(self) -> dict | None:
        """One sample, or None when the server has no usable /metrics."""
        t = perf_counter()
        wall = time.time()
        try:
            r = await self.http.get("/metrics")
        except httpx.HTTPError as e:
            self.errors += 1
            return {"t": t, "wall": wall, "error": f"{type(e).__name__}"}
        if r.status_code != 200:
            if r.status_code in (404, 501) and self.available is None:
                self.available = False
            self.errors += 1
            return None if self.available is False else {"t": t, "wall": wall, "error": f"HTTP {r.status_code}"}
        sample = parse_metrics(r.text)
        if not sample:
            if self.available is None:
                self.available = False
            return None
        self.available = True
        if self.extra and "cache_config" not in sample:
            sample["cache_config"] = dict(self.extra)
        sample = {"t": t, "wall": wall, **sample}
        self.last = sample
        return sample

    async def snapshot(self, expect_ttft_count: float | None = None, wait: float = 3.0) -> dict | None:
        """A sample outside the series, e.g. before/after a run.

        With `expect_ttft_count`, retries for up to `wait` s until the server's
        TTFT histogram has counted that many requests (its stats can lag the
        end of the stream a little).
        """
        deadline = perf_counter() + wait
        while True:
            s = await self.scrape()
            if s is None or "error" in s:
                return s if s and "error" not in s else None
            if expect_ttft_count is None or s.get("ttft_count", math.inf) >= expect_ttft_count:
                return s
            if perf_counter() > deadline:
                return s
            await asyncio.sleep(0.1)

    def start(self) -> None:
        if self.available is False:
            return
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        t0 = perf_counter()
        k = 0
        while not self._stop.is_set():
            s = await self.scrape()
            if s is None:
                return
            self.samples += 1
            if self.sink:
                self.sink(s)
            k += 1
            delay = t0 + k * self.interval - perf_counter()
            if delay < 0:  # fell behind (slow server): skip missed ticks
                k += int(-delay // self.interval) + 1
                delay = t0 + k * self.interval - perf_counter()
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, delay))
            except TimeoutError:
                pass

    async def stop(self, timeout: float = 6.0) -> None:
        """End the series; a scrape still waiting on the server gets `timeout` s (0 after a Ctrl-C)."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        await self.stop()
        await self.http.aclose()
