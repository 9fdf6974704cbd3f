"""Simulated benchmark runs: the same load patterns as the live tools, on the engine model.

`simulate_open` plays vllm bench serve (arrival schedule, client semaphore for
--max-concurrency with the arrival clock running on); `simulate_closed` plays
llama-benchy (latency probes, then per test a warmup batch and `runs` batches
of N simultaneous requests). Both return a RunResult of RequestRecords, the
very type live runs produce.
"""
from __future__ import annotations

import gc
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import simpy

from .engine import Engine
from .load import ClosedLoop, OpenLoop, context_load_keys
from .profile import Profile
from .records import PROBE_TAG, ClosedLoopFacts, OpenLoopFacts, RequestRecord, RunResult
from .summary import spec_decode_keys
from .workload import PromptFormat, RequestSpec, Workload


@dataclass
class SimStats:
    """What one simulated run cost the engine model, appended to `stats=` by simulate_open/closed.

    steps: engine steps taken; events: SimPy events the engine loop waited on (fewer than steps when
    fast-forward took decode runs of several steps at once); preemptions: requests preempted;
    max_members: the most requests that decoded as members at once (fast-forward's path where a
    request decoding one token a step costs no per-step work; 0 when that path was never taken:
    fast-forward off, a trace or on_emit, speculative decoding, or a KV cache that could refuse a block).
    """
    steps: int
    events: int
    preemptions: int
    max_members: int = 0


class Frontend:
    """The API server: network time in parallel, then a serial frontend per request."""

    def __init__(self, engine: Engine, profile: Profile):
        self.engine = engine
        self.api = profile.api
        self.free_at = 0.0

    def submit(self, spec: RequestSpec, rec: RequestRecord, on_done) -> None:
        """Rejected requests fail like vLLM's HTTP 400; others reach the engine after the frontend."""
        env = self.engine.env
        t_in = rec.start_time + self.api.request_s
        reason = self.engine.reject_reason(spec)
        if reason is not None:
            rec.error = reason
            rec.end_time = t_in
            _at(env, t_in, lambda: on_done(None, rec))
            return
        # FIFO in send order: requests are submitted in non-decreasing start_time
        arrive = max(self.free_at, t_in) + self.api.frontend_s + self.api.frontend_per_token_s * spec.prompt_tokens
        self.free_at = arrive
        _at(env, arrive, lambda: self.engine.submit(spec, arrive, rec, lambda r: on_done(r, rec)))


def _at(env: simpy.Environment, t: float, fn: Callable[[], None]) -> None:
    """Call fn at time t: a bare timeout with a callback, cheaper than a process per request."""
    ev = env.timeout(max(0.0, t - env.now))
    ev.callbacks.append(lambda _ev: fn())


@contextmanager
def _collector_off():
    """The cyclic garbage collector paused while a run simulates. The run makes hundreds of thousands
    of objects that live on (records, requests, chunk-time pages) and almost no cycles (SimPy clears an
    event's callbacks once it is processed), so the collector's full passes found nothing and cost
    about 5% of a 100,000-request run."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


PROBE_PROMPT = 1  # --probe-request-rate's "Hi", before the special and chat-template tokens


def simulate_open(profile: Profile, specs: Sequence[RequestSpec], pattern: OpenLoop, fast_forward: bool = True,
                  noise_seed: int = 0, trace=None, stats: list | None = None,
                  probe_format: PromptFormat | None = None) -> RunResult:
    """vllm bench serve on the model: returns every request's record. `probe_format`: the tokens the server adds
    around --probe-request-rate's "Hi" (the workload's; default the profile's chat format)."""
    env = simpy.Environment()
    engine = Engine(env, profile, fast_forward=fast_forward, seed=noise_seed, trace=trace)
    front = Frontend(engine, profile)
    arrivals = pattern.arrival_times(len(specs))
    records: list[RequestRecord | None] = [None] * len(specs)
    cap = pattern.max_concurrency
    queue: deque[int] = deque()
    in_flight = [0]

    def start(i: int, t: float) -> None:
        in_flight[0] += 1
        spec = specs[i]
        rec = RequestRecord(request_id=i, prompt_tokens=spec.prompt_tokens, output_tokens=0,
                            scheduled_time=float(arrivals[i]), start_time=t, max_tokens=spec.max_tokens,
                            test=spec.tag)
        records[i] = rec
        front.submit(spec, rec, done)

    left = [len(specs), 0.0]  # load requests not yet done, and the last end so far: the probe loop's stop

    def done(_req, rec: RequestRecord) -> None:
        in_flight[0] -= 1
        left[0] -= 1
        left[1] = max(left[1], rec.end_time)
        if queue:
            # the semaphore passes to the oldest waiter the moment this stream ends
            start(queue.popleft(), rec.end_time)

    n = len(arrivals)
    nxt = [0]

    def dispatch(ev) -> None:
        """Send the requests due now, then wait for the next: a timeout's callback, cheaper than a
        process resumed per arrival, and the same events at the same times. Called back by a timeout,
        its request is sent without comparing the clock again, as after the process's yield."""
        i, due = nxt[0], ev is not None
        while i < n:
            t = arrivals[i]
            if not due and t > env.now:
                nxt[0] = i
                env.timeout(t - env.now).callbacks.append(dispatch)
                return
            due = False
            if cap is not None and in_flight[0] >= cap:
                queue.append(i)
            else:
                start(i, float(t))
            i += 1

    def dispatcher():
        dispatch(None)  # at the process's start, where the first arrivals were sent before
        return
        yield

    probes: list[RequestRecord] | None = None
    if pattern.probe_rate > 0:
        probes = []
        fmt = probe_format or profile.prompt_format
        probe = RequestSpec(prompt_tokens=PROBE_PROMPT + fmt.special_tokens + fmt.chat_template_tokens, max_tokens=1,
                            output_tokens=1, tag=PROBE_TAG)
        interval = 1.0 / pattern.probe_rate

        def send_probe(t: float) -> None:
            rec = RequestRecord(request_id=len(probes), prompt_tokens=probe.prompt_tokens, output_tokens=0,
                                scheduled_time=t, start_time=t, max_tokens=1, test=PROBE_TAG)
            probes.append(rec)
            front.submit(probe, rec, lambda _r, rec: _at(env, rec.end_time + interval, wake))

        def wake() -> None:  # the probe loop's check after its sleep: stop once the load is done
            if left[0] > 0 or env.now < left[1]:  # an end may be told before its time (the chunk's delay)
                send_probe(env.now)

        send_probe(0.0)  # before the load's first request: vLLM's probe task is created, and runs, first
    env.process(dispatcher())
    with _collector_off():
        env.run()
    recs = [r for r in records if r is not None]
    end = max(max((r.end_time for r in recs if r.end_time is not None), default=0.0), float(arrivals[-1]))
    if probes is not None:
        probes, end = _probe_loop_until(probes, end, interval)
    if stats is not None:
        stats.append(SimStats(engine.steps, engine.events, engine.num_preemptions, engine.max_members))
    return RunResult(recs, 0.0, end, "open",
                     open_loop=OpenLoopFacts(request_rate=pattern.rate, burstiness=pattern.burstiness,
                                             max_concurrency=cap, **pattern.ramp_keys(), **pattern.probe_keys(),
                                             **pattern.warmup_keys()),
                     num_preemptions=engine.num_preemptions, probes=probes,
                     extra=spec_decode_keys(*engine.spec_counts, engine.spec_per_pos))


def _probe_loop_until(probes: list[RequestRecord], load_end: float, interval: float):
    """The probes vllm bench serve's loop sends before it stops, and the run's end: the loop checks its stop
    after each sleep, so it stops at the first wake (a probe's end + interval) at or past the load's end, and
    the benchmark's duration runs to there. The simulation may have sent one more, when the engine told the
    load's last end after that wake: sent after every load request ended, it changed none of theirs."""
    for k, rec in enumerate(probes):
        wake = rec.end_time + interval
        if wake >= load_end:
            return probes[:k + 1], wake
    return probes, load_end  # unreachable: the loop runs until a wake past the load's end


LATENCY_PROBE_PROMPT = 2  # "hello" plus BOS, before the chat template


def simulate_closed(profile: Profile, pattern: ClosedLoop, fast_forward: bool = True, noise_seed: int = 0,
                    gap_s: float = 0.0, trace=None, stats: list | None = None) -> RunResult:
    """llama-benchy on the model: latency probes, then warmup + runs per test."""
    env = simpy.Environment()
    engine = Engine(env, profile, fast_forward=fast_forward, seed=noise_seed, trace=trace)
    front = Frontend(engine, profile)
    batches = pattern.batches(include_warmup=True)
    records: list[RequestRecord] = []
    tests: dict[str, tuple[int, int, int, int]] = {}
    probe_ttfts: list[float] = []
    clock = [0.0]

    def run_batch(specs, test: str, batch: int, keep: bool):
        pending = [len(specs)]
        ev = env.event()
        recs = []

        def done(_req, rec):
            pending[0] -= 1
            if pending[0] == 0:
                ev.succeed()

        t0 = clock[0]
        for k, spec in enumerate(specs):
            rec = RequestRecord(request_id=len(records) + k, prompt_tokens=spec.prompt_tokens, output_tokens=0,
                                scheduled_time=t0, start_time=t0, max_tokens=spec.max_tokens, test=test, batch=batch)
            recs.append(rec)
            front.submit(spec, rec, done)
        yield ev
        clock[0] = max(r.end_time for r in recs) + gap_s
        if keep:
            records.extend(recs)
        return recs

    def driver():
        if pattern.latency_mode == "generation":
            probe = RequestSpec(prompt_tokens=LATENCY_PROBE_PROMPT + profile.prompt_format.chat_template_tokens,
                                max_tokens=1, output_tokens=1, tag="latency-probe")
            for _ in range(3):
                recs = yield from run_batch([probe], "latency-probe", 0, keep=False)
                probe_ttfts.append(recs[0].chunk_times[0] - recs[0].start_time if recs[0].ok else 0.0)
        for b in batches:
            tests.setdefault(b.test, (b.pp, b.tg, b.depth, b.concurrency))
            yield from run_batch(list(b.requests), b.test, b.run, keep=b.run >= 0)

    start = clock[0]
    env.process(driver())
    with _collector_off():
        env.run()
    if pattern.latency_mode == "generation":
        latency = sum(probe_ttfts) / len(probe_ttfts)
    elif pattern.latency_mode == "api":
        latency = profile.api.request_s + profile.api.chunk_s  # GET /v1/models round trip
    else:
        latency = 0.0
    if stats is not None:
        stats.append(SimStats(engine.steps, engine.events, engine.num_preemptions, engine.max_members))
    facts = ClosedLoopFacts(tests=tests, latency_s=latency, prefix_caching=pattern.prefix_caching,
                            context_loads=context_load_keys(batches))
    return RunResult(records, start, clock[0], "closed", closed_loop=facts, num_preemptions=engine.num_preemptions)


def served_specs(profile: Profile, workload: Workload, n: int, pattern: OpenLoop) -> list[RequestSpec]:
    """The workload's n requests (seeded with the pattern's seed, as vllm bench serve seeds them) as the profile's
    server takes them, with its prefix cache on: the prefix they share (one for all, or one per group of them)
    is found cached as far as the cache holds it, and its blocks are held once, in common; where the client sent
    the first prompt before the run (`pattern.warmups`: vllm bench serve's test request, its warmups), the first
    request finds that whole prompt cached, and so its group's prefix."""
    specs = workload.sample(n, seed=pattern.seed)
    if not profile.engine.prefix_caching or not specs:
        return specs
    shared, warm = workload.shared_prefix_tokens, pattern.warmups > 0
    if shared:
        first = specs[0].prefix_group
        specs = [replace(s, cached_tokens=shared, prefix_group=s.prefix_group or "shared prefix",
                         prefix_warm=warm and s.prefix_group == first) for s in specs]
    if warm:
        specs[0] = replace(specs[0], cached_tokens=specs[0].prompt_tokens)
    return specs


def simulate_workload_open(profile: Profile, workload: Workload, num_prompts: int, pattern: OpenLoop,
                           **kw) -> RunResult:
    """Sample the workload with the pattern's seed (as vllm bench serve does) and simulate; a probe's "Hi" is
    framed as the workload's prompts are (its endpoint's chat template, or none)."""
    kw.setdefault("probe_format", workload.fmt)
    return simulate_open(profile.for_traffic(workload.mixed_topics),
                         served_specs(profile, workload, num_prompts, pattern), pattern, **kw)
