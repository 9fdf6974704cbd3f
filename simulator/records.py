"""One record per request, identical for live and simulated runs, and the run's facts.

Every metric capsim reports (vllm bench serve's and llama-benchy's) is computed
from these records alone, so a live run and a simulated run go through the same
summary code. A RunResult also carries typed facts about the run (its arrival
process or closed-loop tests, what measure saw of the client and the server, a
simulation's preemptions); measure writes them to run.json's flat "meta" object
(RunResult.meta_json) and reads them back (RunResult.facts_from_json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_EMPTY = np.empty(0, dtype=np.float64)
PROBE_TAG = "probe"  # the `test` of --probe-request-rate's records (RunResult.probes)


@dataclass(slots=True, eq=False)
class RequestRecord:
    """A request as a client saw it. Times are seconds on one monotonic clock."""

    request_id: int
    prompt_tokens: int  # the server's count (usage.prompt_tokens)
    output_tokens: int  # usage.completion_tokens; 0 when the request failed
    scheduled_time: float  # when the load pattern wanted it sent (arrival)
    start_time: float  # when it was sent: after any client-side semaphore
    # Every streamed chunk whose `choices` was non-empty, in order. vllm bench
    # serve's TTFT, ITL and E2EL are all read off these.
    chunk_times: np.ndarray = field(default_factory=lambda: _EMPTY)
    # llama-benchy separates the first response (any choices, e.g. a role-only
    # delta) from the first content token; None means every chunk had content.
    content_mask: np.ndarray | None = None
    end_time: float | None = None  # stream closed ([DONE] or connection end)
    error: str | None = None
    max_tokens: int | None = None
    test: str = ""  # closed loop: llama-benchy's test key; mixtures: the class
    batch: int = 0  # closed loop: run index within the test
    preemptions: int = 0  # simulated runs only (live: unknown per request)
    # Tokens each chunk carried, where a chunk may carry several (speculative decoding); None
    # means one each. llama-benchy 0.4.0 counts tokens per chunk (from token_ids), so a chunk of
    # k tokens is k token timestamps in its tg and peak t/s.
    chunk_tokens: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.chunk_times) > 0

    @property
    def first_response_time(self) -> float | None:
        return float(self.chunk_times[0]) if len(self.chunk_times) else None

    def content_times(self) -> np.ndarray:
        if self.content_mask is None:
            return self.chunk_times
        return self.chunk_times[self.content_mask]

    def content_token_times(self) -> np.ndarray:
        """One timestamp per content token, as llama-benchy 0.4.0 stamps them: a content chunk of k
        tokens spreads them evenly over (the previous token's time, the chunk's time]; the first
        content chunk's are all at its own time. Tokens of chunks without content are not counted."""
        ct = self.content_times()
        if self.chunk_tokens is None:
            return ct
        k = self.chunk_tokens if self.content_mask is None else self.chunk_tokens[self.content_mask]
        keep = k > 0
        ct, k = ct[keep], k[keep].astype(np.int64)
        if len(ct) == 0 or (k == 1).all():
            return ct
        prev = np.concatenate([ct[:1], ct[:-1]])  # the last token of a chunk is stamped at the chunk's time
        start = np.repeat(np.cumsum(k) - k, k)
        frac = (np.arange(int(k.sum())) - start + 1) / np.repeat(k, k)
        return np.repeat(prev, k) + np.repeat(ct - prev, k) * frac

    @property
    def first_token_time(self) -> float | None:
        ct = self.content_times()
        return float(ct[0]) if len(ct) else None

    @property
    def ttft(self) -> float | None:
        return None if not self.ok else float(self.chunk_times[0]) - self.start_time

    @property
    def e2el(self) -> float | None:
        return None if not self.ok else float(self.chunk_times[-1]) - self.start_time

    def to_json(self) -> dict[str, Any]:
        d = {
            "request_id": self.request_id,
            "prompt_tokens": int(self.prompt_tokens),
            "output_tokens": int(self.output_tokens),
            "scheduled_time": self.scheduled_time,
            "start_time": self.start_time,
            "chunk_times": [float(t) for t in self.chunk_times],
            "end_time": self.end_time,
            "error": self.error,
            "max_tokens": self.max_tokens,
            "test": self.test,
            "batch": self.batch,
        }
        if self.content_mask is not None:
            d["content_mask"] = [bool(x) for x in self.content_mask]
        if self.preemptions:
            d["preemptions"] = self.preemptions
        if self.chunk_tokens is not None:
            d["chunk_tokens"] = [int(x) for x in self.chunk_tokens]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RequestRecord":
        mask, toks = d.get("content_mask"), d.get("chunk_tokens")
        return cls(
            request_id=int(d["request_id"]),
            prompt_tokens=int(d["prompt_tokens"]),
            output_tokens=int(d["output_tokens"]),
            scheduled_time=float(d["scheduled_time"]),
            start_time=float(d["start_time"]),
            chunk_times=np.asarray(d.get("chunk_times", []), dtype=np.float64),
            content_mask=None if mask is None else np.asarray(mask, dtype=bool),
            end_time=d.get("end_time"),
            error=d.get("error"),
            max_tokens=d.get("max_tokens"),
            test=d.get("test", ""),
            batch=int(d.get("batch", 0)),
            preemptions=int(d.get("preemptions", 0)),
            chunk_tokens=None if toks is None else np.asarray(toks, dtype=np.int64),
        )


@dataclass(slots=True)
class OpenLoopFacts:
    """The arrival process of an open-loop run: vllm bench serve's run keys."""

    request_rate: float = math.inf  # requests per second asked for; inf sends them all at once
    burstiness: float = 1.0  # gamma shape of the inter-arrival times (1: Poisson)
    max_concurrency: int | None = None  # client-side cap on requests in flight (--max-concurrency); None: none
    num_prompts: int | None = None  # requests asked for (live runs; a simulation counts its records)
    seed: int | None = None  # the sampling and arrival seed (live runs)
    # --ramp-up-strategy (linear | exponential) and its rates, in place of request_rate (inf then); None: no ramp
    ramp_up_strategy: str | None = None
    ramp_up_start_rps: float | None = None
    ramp_up_end_rps: float | None = None
    probe_request_rate: float | None = None  # --probe-request-rate's one-token probe beside the load; None: none
    warmups: int | None = None  # the first prompt's sends before the run (OpenLoop.warmups); None: none

    def ramp_keys(self) -> dict[str, Any]:
        """vllm bench serve's ramp-up keys, or none where the run had no ramp."""
        if self.ramp_up_strategy is None:
            return {}
        return {k: getattr(self, k) for k in RAMP_KEYS}

    def probe_keys(self) -> dict[str, Any]:
        """The probe's rate, or nothing where the run had no probe."""
        return {"probe_request_rate": self.probe_request_rate} if self.probe_request_rate else {}

    def warmup_keys(self) -> dict[str, Any]:
        """The first prompt's sends before the run, or nothing where there were none."""
        return {"warmups": self.warmups} if self.warmups else {}


@dataclass(slots=True)
class ClosedLoopFacts:
    """A closed-loop (llama-benchy) run's tests and its measured latency."""

    # llama-benchy's test key -> (pp, tg, depth, concurrency); records carry the key in `test`
    tests: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    latency_s: float = 0.0  # llama-benchy's latency, subtracted from its TTFT-derived columns
    latency_mode: str | None = None  # "generation", "api" or "none" (live runs)
    runs: int | None = None  # measured runs per test (live runs)
    warmup: bool | None = None  # whether each test began with a warmup batch (live runs)
    # llama-benchy's --enable-prefix-caching, and the keys in `tests` of its context loads (phase 1: a
    # test's context alone, its rows ctx_pp and ctx_tg); the test's own requests then find it cached
    prefix_caching: bool = False
    context_loads: list[str] = field(default_factory=list)

    def meta_json(self) -> dict[str, Any]:
        """These facts under run.json's meta keys (RunResult.meta_json; a closed loop writes them at its
        start too); a fact that is None was not recorded and is left out, and so is prefix caching off."""
        out: dict[str, Any] = {"tests": self.tests}
        for key in ("latency_mode", "runs", "warmup"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.prefix_caching:
            out["prefix_caching"], out["context_loads"] = True, list(self.context_loads)
        out["latency_s"] = self.latency_s
        return out

    def expected_prompt(self, key: str) -> int:
        """The prompt tokens llama-benchy expects of a test's requests (benchy_expected_prompt)."""
        pp, _tg, depth, _c = self.tests[key]
        return benchy_expected_prompt(pp, depth, key in self.context_loads, self.prefix_caching)


def benchy_expected_prompt(pp: int, depth: int, context_load: bool = False, prefix_caching: bool = False) -> int:
    """The prompt tokens llama-benchy 0.4.0 expects of a test's requests (runner.py), which its pp t/s
    divides by unless the server counts within 20 % of it: the depth for a context load (prefix caching's
    phase 1), pp where prefix caching found the context cached (only pp is prefilled), else pp + depth."""
    if context_load:
        return depth
    return pp if prefix_caching else pp + depth  # (with no depth, the same)


CLIENT_WARNINGS = ("client_warning", "schedule_warning", "client_stall_warning")


@dataclass(slots=True)
class ClientHealth:
    """How freely the measuring client ran: its CPU, send and event-loop lags, and the warnings they raised."""

    cpu_s: float | None = None  # process CPU seconds from the first send to the drain
    cpu_util: float | None = None  # cpu_s over the run's wall time (None for a zero-length run)
    send_lag_s: dict | None = None  # start_time - scheduled_time over the requests (measure.loopwatch.lag_summary)
    loop_lag_s: dict | None = None  # the event loop's tick lateness (lag_summary)
    stalls: list | None = None  # up to 20 [seconds into the run, stall seconds] past measure's HELD_UP_S
    # the box's CPU time its hypervisor gave to others over the run (/proc/stat steal over all; None: untold)
    steal_share: float | None = None
    # warning key (one of CLIENT_WARNINGS: "client_warning" CPU, "schedule_warning" sends late,
    # "client_stall_warning" loop stalls) -> the text told on stderr
    warnings: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ServerMetrics:
    """What the server's /metrics said about a live run (measure.prom)."""

    delta: dict | None = None  # counters and histograms over the run (prom.delta; closed: measured batches only)
    cache_config: dict | None = None  # vllm:cache_config_info's labels (strings, as Prometheus gives them)
    samples: int | None = None  # /metrics scrapes kept in metrics.jsonl
    available: bool | None = None  # whether the server had a /metrics at all


@dataclass(slots=True)
class LiveFacts:
    """What capsim measure knows of a live run besides its records (run.json's meta); None: not recorded."""

    model: str | None = None  # the served model name the requests used
    endpoint: str | None = None  # "chat" or "completions"
    url: str | None = None  # the server's base URL, credentials removed
    server: str | None = None  # the server software /v1/models revealed ("vllm", "llama.cpp"), None if unknown
    wall_start: float | None = None  # time.time() when the run folder was opened
    wall_end: float | None = None  # time.time() when the run was finished
    status: str | None = None  # "complete", "interrupted", "aborted" or "failed"
    stop_reason: str | None = None  # why an unfinished run stopped (Ctrl-C, SIGTERM, --exit-on-first-fail, error)
    stopped_in: str | None = None  # the setup step a run stopped in before sending anything
    failed: int | None = None  # measured requests that failed
    warmup_failed: int | None = None  # warmup requests that failed, when any did
    warmup_requests: int | None = None  # open loop: requests sent before the run and not recorded (--num-warmups)
    first_error: str | None = None  # the first failed request's error
    prompts: dict | None = None  # how the prompts were made (measure.prompts.PromptBuilder.describe, + seconds)
    workload: dict | None = None  # the workload as adapted to the server (Workload.describe)
    sent_or_queued: int | None = None  # open loop: requests released before the run ended
    random_format: dict | None = None  # random workloads: the server's special_tokens and chat_template_tokens
    sharegpt_records: int | None = None  # ShareGPT: conversations kept
    sharegpt_dropped_records: int | None = None  # ShareGPT: partial records dropped, when any were
    # The rest are never written to run.json.
    texts: dict[int, str] | None = None  # request id -> generated text (--save-detailed)
    unreadable_record_lines: int = 0  # records.jsonl lines load_run could not read (a crash cut them)
    set_aside: list[dict] = field(default_factory=list)  # calibrate --live: held-up runs made again
    clock_scale: float | None = None  # calibrate --live --speed: the factor times were scaled by


@dataclass(slots=True)
class OfficeFacts:
    """A simulated office or plan run (simulator.office.simulate_sessions): its boxes and gateway."""

    boxes: int = 1  # identical engines behind the router
    routing: str = "round-robin"  # "round-robin" or "least-loaded"
    requests_per_box: list[int] = field(default_factory=list)  # requests each box was sent, warm-up included
    prefix_hit: float = 0.0  # prefix-cache hit rate that shortened every prefill
    gateway_cap: int | None = None  # requests in flight the gateway allows; None: no gateway
    queue_in_ttft: bool = True  # whether a request's clock starts when it is pressed, gateway wait included
    gateway_wait_s: np.ndarray = field(default_factory=lambda: _EMPTY)  # per record: pressed to sent
    staff: int | None = None  # people in the office (simulate_office)


# run.json meta keys that belong to a typed field (the rest of a loaded meta is kept in RunResult.extra)
RAMP_KEYS = ("ramp_up_strategy", "ramp_up_start_rps", "ramp_up_end_rps")  # vllm bench serve's result keys
_OPEN_KEYS = ("request_rate", "burstiness", "max_concurrency", "num_prompts", "seed") + RAMP_KEYS + \
    ("probe_request_rate", "warmups")
_CLOSED_KEYS = ("tests", "latency_s", "latency_mode", "runs", "warmup")
_CLIENT_KEYS = ("client_cpu_s", "client_cpu_util", "send_lag_s", "loop_lag_s", "client_stalls",
                "box_steal_share") + CLIENT_WARNINGS
_SERVER_KEYS = ("server_delta", "server_cache_config", "metrics_samples", "metrics_available")
_LIVE_KEYS = ("model", "endpoint", "url", "server", "wall_start", "wall_end", "status", "stop_reason", "stopped_in",
              "failed", "warmup_failed", "warmup_requests", "first_error", "prompts", "workload", "sent_or_queued",
              "random_format", "sharegpt_records", "sharegpt_dropped_records")


@dataclass(slots=True, eq=False)
class RunResult:
    """All records of one benchmark run plus the run's own clock bounds and facts.

    `start_time` is taken just before the first request is dispatched and
    `end_time` after the last one finished: vllm bench serve's benchmark
    duration is exactly `end_time - start_time`. The facts are None where they
    do not apply (a simulation has no client health, a live run no office).
    """

    records: list[RequestRecord]
    start_time: float
    end_time: float
    kind: str  # "open" or "closed"
    open_loop: OpenLoopFacts | None = None  # open runs: the arrival process
    closed_loop: ClosedLoopFacts | None = None  # closed runs: tests and latency
    live: LiveFacts | None = None  # measured runs: what measure knows besides the records
    client: ClientHealth | None = None  # measured runs: how freely the client ran
    server_metrics: ServerMetrics | None = None  # measured runs: the server's /metrics
    num_preemptions: int | None = None  # simulated runs: the engines' preemptions (live: server_metrics.delta)
    office: OfficeFacts | None = None  # simulated office and plan runs
    extra: dict[str, Any] = field(default_factory=dict)  # run.json meta keys of no field above, kept as read
    # --probe-request-rate's requests, apart from `records` (whose summary they are not part of); None: no probe
    probes: list[RequestRecord] | None = None

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time

    @property
    def status(self) -> str:
        """The live run's status; a simulation (or a run.json without one) is complete."""
        return (self.live.status if self.live is not None else None) or "complete"

    def meta_json(self) -> dict[str, Any]:
        """run.json's "meta": the facts under the keys, and in the order, measure has always written
        them (a fact that is None was not recorded and is left out), then `extra`."""
        live, op, cl, cli, srv = self.live, self.open_loop, self.closed_loop, self.client, self.server_metrics
        out: dict[str, Any] = {}

        def put(key: str, value: Any) -> None:
            if value is not None:
                out[key] = value

        if live is not None and live.model is not None:  # written together; `server` may be null
            out |= {"model": live.model, "endpoint": live.endpoint, "url": live.url, "server": live.server,
                    "wall_start": live.wall_start}
        if op is not None:  # written together; max_concurrency and seed may be null
            out |= {"request_rate": op.request_rate, "burstiness": op.burstiness,
                    "max_concurrency": op.max_concurrency, "num_prompts": op.num_prompts, "seed": op.seed,
                    **op.ramp_keys(), **op.probe_keys(), **op.warmup_keys()}
        if cl is not None:
            out |= cl.meta_json()
        if live is not None:
            for key in ("random_format", "sharegpt_dropped_records", "sharegpt_records", "stopped_in", "prompts",
                        "workload", "sent_or_queued"):
                put(key, getattr(live, key))
        if cli is not None:
            if cli.cpu_s is not None:  # written together; client_cpu_util may be null
                out |= {"client_cpu_s": cli.cpu_s, "client_cpu_util": cli.cpu_util}
            put("client_warning", cli.warnings.get("client_warning"))
            put("loop_lag_s", cli.loop_lag_s)
            put("client_stalls", cli.stalls)
            put("box_steal_share", cli.steal_share)
            put("client_stall_warning", cli.warnings.get("client_stall_warning"))
            put("send_lag_s", cli.send_lag_s)
            put("schedule_warning", cli.warnings.get("schedule_warning"))
            out |= {k: v for k, v in cli.warnings.items() if k not in CLIENT_WARNINGS}
        if live is not None:
            put("status", live.status)
            put("stop_reason", live.stop_reason)
        if srv is not None:
            put("server_delta", srv.delta)
            put("server_cache_config", srv.cache_config)
        if live is not None:
            put("failed", live.failed)
            put("warmup_failed", live.warmup_failed)
            put("warmup_requests", live.warmup_requests)
            put("first_error", live.first_error)
        if srv is not None:
            put("metrics_samples", srv.samples)
            put("metrics_available", srv.available)
        if live is not None:
            put("wall_end", live.wall_end)
        put("num_preemptions", self.num_preemptions)
        if self.office is not None:  # simulated: never written to a run folder
            o = self.office
            out |= {"gateway_cap": o.gateway_cap, "queue_in_ttft": o.queue_in_ttft, "gateway_wait_s": o.gateway_wait_s,
                    "boxes": o.boxes, "routing": o.routing, "requests_per_box": o.requests_per_box,
                    "prefix_hit": o.prefix_hit}
            put("staff", o.staff)
        return out | self.extra

    @staticmethod
    def facts_from_json(meta: dict[str, Any]) -> dict[str, Any]:
        """RunResult's fact fields (keyword arguments) from a run.json "meta" as measure wrote it."""
        m = dict(meta or {})
        out: dict[str, Any] = {}
        if any(k in m for k in _OPEN_KEYS):
            rate = m.get("request_rate", math.inf)
            out["open_loop"] = OpenLoopFacts(request_rate=math.inf if rate in ("inf", None) else rate,
                                             burstiness=m.get("burstiness", 1.0),
                                             max_concurrency=m.get("max_concurrency"),
                                             num_prompts=m.get("num_prompts"), seed=m.get("seed"),
                                             probe_request_rate=m.get("probe_request_rate"),
                                             warmups=m.get("warmups"),
                                             **{k: m.get(k) for k in RAMP_KEYS})
        if "tests" in m or "latency_s" in m:
            tests = m.get("tests")
            out["closed_loop"] = ClosedLoopFacts(
                tests={k: tuple(int(x) for x in v) for k, v in tests.items()} if isinstance(tests, dict) else {},
                latency_s=m.get("latency_s", 0.0), latency_mode=m.get("latency_mode"), runs=m.get("runs"),
                warmup=m.get("warmup"), prefix_caching=bool(m.get("prefix_caching")),
                context_loads=[str(k) for k in m.get("context_loads") or []])
        if any(k in m for k in _CLIENT_KEYS):
            out["client"] = ClientHealth(cpu_s=m.get("client_cpu_s"), cpu_util=m.get("client_cpu_util"),
                                         send_lag_s=m.get("send_lag_s"), loop_lag_s=m.get("loop_lag_s"),
                                         stalls=m.get("client_stalls"), steal_share=m.get("box_steal_share"),
                                         warnings={k: m[k] for k in CLIENT_WARNINGS if k in m})
        if any(k in m for k in _SERVER_KEYS):
            out["server_metrics"] = ServerMetrics(delta=m.get("server_delta"), cache_config=m.get("server_cache_config"),
                                                  samples=m.get("metrics_samples"),
                                                  available=m.get("metrics_available"))
        if any(k in m for k in _LIVE_KEYS):
            out["live"] = LiveFacts(**{k: m.get(k) for k in _LIVE_KEYS})
        if "num_preemptions" in m:
            out["num_preemptions"] = m["num_preemptions"]
        used = set(_OPEN_KEYS + _CLOSED_KEYS + _CLIENT_KEYS + _SERVER_KEYS + _LIVE_KEYS + ("num_preemptions",))
        out["extra"] = {k: v for k, v in m.items() if k not in used}
        return out
