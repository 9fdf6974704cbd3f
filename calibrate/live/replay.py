"""A measured run played again on the model.

The very requests a run sent (server-side prompt counts) at the times it sent them, simulated
step by step with the engine's trace kept.
"""
from __future__ import annotations

import math

import numpy as np

from simulator.load import OpenLoop
from simulator.profile import Profile
from simulator.records import RunResult
from simulator.sim import simulate_open
from simulator.workload import RequestSpec


class _Arrivals(OpenLoop):
    """An OpenLoop whose arrival offsets are given (a measured run's schedule)."""

    def __init__(self, offsets: np.ndarray, max_concurrency: int | None = None):
        super().__init__(rate=math.inf, max_concurrency=max_concurrency)
        self._offsets = np.asarray(offsets, dtype=float)

    def arrival_times(self, n: int) -> np.ndarray:
        return self._offsets[:n]


def replay_specs(run: RunResult) -> tuple[list[RequestSpec], np.ndarray]:
    """The requests a measured run sent (server-side prompt counts) and when they were sent.

    Send times (RequestRecord.start_time: after any client-side semaphore) rather than the
    schedule: the server saw the requests then, and the measured latencies count from then.
    """
    recs = sorted(run.records, key=lambda r: r.request_id)
    specs = [RequestSpec(prompt_tokens=int(r.prompt_tokens), max_tokens=int(r.max_tokens or r.output_tokens or 1),
                         output_tokens=int(r.max_tokens or r.output_tokens or 1), tag="replay") for r in recs]
    offsets = np.array([r.start_time - run.start_time for r in recs])
    return specs, offsets


def simulate_replay(profile: Profile, run: RunResult):
    """The measured requests at their measured send times, on the model: (RunResult, trace)."""
    specs, offsets = replay_specs(run)
    order = np.argsort(offsets, kind="stable")
    specs = [specs[i] for i in order]
    trace: list[dict] = []
    stats: list = []
    # step by step: the engine's fast-forward skips the admission a step-by-step scheduler (and vLLM)
    # makes right after a preemption, so it under-counts preemptions under KV pressure
    sim = simulate_open(profile, specs, _Arrivals(offsets[order]), trace=trace.append, stats=stats,
                        fast_forward=False)
    return sim, trace
