"""Measured runs as the live fit and validation use them.

Model time for a twin's runs (`scale_run`), calibrate's ClosedRun from a measured run, the
prompt scale the server applied, and a run made again while its client was held up.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simulator.records import ClosedLoopFacts, LiveFacts, RunResult
from simulator.summary import summarize_closed

from ..results import ClosedRun
from .server import ServerFacts

log = logging.getLogger("capsim.calibrate.live.runs")


def scale_run(run: RunResult, s: float) -> RunResult:
    """Multiply every time of a run by s (in place): wall time on a twin at speed s -> model time."""
    if s == 1.0:
        return run
    for r in run.records:
        r.start_time *= s
        r.scheduled_time *= s
        r.chunk_times = np.asarray(r.chunk_times, dtype=np.float64) * s
        if r.end_time is not None:
            r.end_time *= s
    run.start_time *= s
    run.end_time *= s
    if run.closed_loop is not None:
        run.closed_loop.latency_s = float(run.closed_loop.latency_s) * s
    if run.live is None:
        run.live = LiveFacts()
    run.live.clock_scale = s
    return run


def closed_run_from_result(run: RunResult, facts: ServerFacts, source: str, test: str) -> ClosedRun:
    """A measured closed-loop run as calibrate's ClosedRun (rows from summarize_closed)."""
    rows = summarize_closed(run)
    cl = run.closed_loop or ClosedLoopFacts()
    return ClosedRun(source=source, test=test, model=facts.model, runs=int(cl.runs or 1),
                     latency_mode=cl.latency_mode if cl.latency_mode is not None else "generation",
                     latency_ms=1000.0 * float(cl.latency_s or 0.0), version="capsim measure",
                     rows=[r for r in rows if r.metrics], server=facts.server_dict(), path=source)


def measured_prompt_scale(runs: list[RunResult]) -> float:
    """The median ratio of the server's prompt counts to the requested prompt tokens."""
    ratios = []
    for run in runs:
        tests = run.closed_loop.tests if run.closed_loop is not None else {}
        for r in run.records:
            if r.ok and r.test in tests:
                pp, _tg, depth, _c = tests[r.test]
                ratios.append(r.prompt_tokens / max(1, pp + depth))
    return float(np.median(ratios)) if ratios else 1.0


def client_figures(run: RunResult) -> dict:
    """How freely a live run's client ran, for a report: its send and event-loop lags, and the box's steal."""
    c = run.client
    return {"send_lag_s": c.send_lag_s if c else None, "loop_lag_s": c.loop_lag_s if c else None,
            "steal_share": c.steal_share if c else None}


def until_free(attempt: Callable[[], tuple[RunResult, Any]], out_dir, retries: int,
                aside_dir: Callable[[int], Path], name: str,
                check: Callable[[RunResult], str | None] | None = None) -> tuple[RunResult, Any, list[dict]]:
    """`attempt()` -> (run, extra), made again while capsim measure says the run's client was
    held up (its timings are the client's), or `check(run)` gives a reason the run does not
    stand for the box (a caller's own test of it, run after each attempt), at most `retries`
    more times. The K-th set-aside run's folder moves to aside_dir(K), and is told (logging,
    "capsim.calibrate.live.runs", INFO). Returns (run, extra, one record per set-aside run)."""
    from measure.session import held_up

    set_aside: list[dict] = []
    while True:
        run, extra = attempt()
        warning = held_up(run.client) or (check(run) if check is not None else None)
        if warning is None or len(set_aside) == retries:
            return run, extra, set_aside
        aside = None
        if out_dir is not None:
            aside = aside_dir(len(set_aside) + 1)
            aside.parent.mkdir(parents=True, exist_ok=True)
            Path(out_dir).rename(aside)
        set_aside.append({"run_dir": str(aside) if aside else None, "warning": warning} | client_figures(run))
        log.info(f"  {name}: set aside and run again: {warning}")
