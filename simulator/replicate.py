"""Replications: R seeded runs of one scenario, summarised as median and 5-95% band.

Replication r uses seed + r for the workload sample and the arrival schedule
(replication 0 is the seed the user gave, so a seeded measured run is predicted
on its very requests), r for step-time noise and, for r >= 1, a profile drawn from
the fit's uncertainty (simulator.uncertainty). Runs go to joblib workers.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np

from .load import ClosedLoop, OpenLoop
from .profile import Profile
from .records import RunResult
from .sim import served_specs, simulate_closed, simulate_open
from .summary import ClosedRow, summarize_closed, summarize_open
from .uncertainty import draw_profile
from .workload import Workload


# loky reports idle workers it retired between batches as a possible leak; they are not.
warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")


def default_jobs(r: int) -> int:
    return max(1, min(r, os.cpu_count() or 1))


def open_run(profile: Profile, workload: Workload, n: int, pattern: OpenLoop, r: int = 0) -> RunResult:
    """Replication r's simulated run itself, records and all (replicate_open summarises these)."""
    pat = replace(pattern, seed=pattern.seed + r)
    # replication 0 is the fitted profile itself; the others draw what the fit left uncertain
    prof = profile.for_traffic(workload.mixed_topics)
    prof = prof if r == 0 else draw_profile(prof, r)
    return simulate_open(prof, served_specs(prof, workload, n, pat), pat, noise_seed=r, probe_format=workload.fmt)


def _summary(run: RunResult, summary_kw: dict | None) -> dict:
    s = summarize_open(run, **(summary_kw or {}))
    s["num_preemptions"] = run.num_preemptions
    return s


def _open_one(profile: Profile, workload: Workload, n: int, pattern: OpenLoop, r: int,
              summary_kw: dict | None = None) -> dict:
    return _summary(open_run(profile, workload, n, pattern, r), summary_kw)


def _number(v) -> bool:
    return isinstance(v, (int, float))


def band(values: Sequence[dict], lo: float = 5, hi: float = 95) -> tuple[dict, dict, dict]:
    """Per key: median, 5th and 95th percentile over replications; of each element where the key holds a
    list of numbers of one length in every replication (spec_decode_per_position_acceptance_rates)."""
    first = values[0]
    keys = [k for k, x in first.items() if _number(x) or (
        isinstance(x, list) and x and all(_number(e) for e in x)
        and all(isinstance(v.get(k), list) and len(v[k]) == len(x) for v in values))]
    arr = {k: np.array([v[k] for v in values], dtype=float) for k in keys}

    def stat(f):  # tolist(): a Python float of a key's number, a list of floats of a list
        return {k: f(a).tolist() for k, a in arr.items()}
    return (stat(lambda a: np.median(a, axis=0)), stat(lambda a: np.percentile(a, lo, axis=0)),
            stat(lambda a: np.percentile(a, hi, axis=0)))


def replicate_open(profile: Profile, workload: Workload, num_prompts: int, pattern: OpenLoop, replications: int = 1,
                   n_jobs: int | None = None, summary_kw: dict | None = None,
                   first: RunResult | None = None) -> tuple[dict, dict, dict, list[dict]]:
    """(median, lo, hi, per-replication summaries) of vllm bench serve keys
    (summary_kw: summarize_open's percentiles, metrics and goodput). `first`: replication 0's run
    (`open_run(..., r=0)`), where the caller keeps its records, summarised in place of a second run."""
    if replications < 1:
        raise ValueError(f"--replications must be >= 1, got {replications}")
    rest = range(0 if first is None else 1, replications)
    jobs = n_jobs or default_jobs(len(rest))
    if jobs == 1 or len(rest) <= 1:
        runs = [_open_one(profile, workload, num_prompts, pattern, r, summary_kw) for r in rest]
    else:
        from joblib import Parallel, delayed  # here: every capsim command imports this module
        runs = Parallel(n_jobs=jobs)(delayed(_open_one)(profile, workload, num_prompts, pattern, r, summary_kw)
                                     for r in rest)
    if first is not None:
        runs.insert(0, _summary(first, summary_kw))
    med, lo, hi = band(runs)
    return med, lo, hi, runs


def _closed_one(profile: Profile, pattern: ClosedLoop, r: int) -> tuple[list[ClosedRow], float]:
    run = simulate_closed(profile if r == 0 else draw_profile(profile, r), pattern, noise_seed=r)
    return summarize_closed(run), run.closed_loop.latency_s


def replicate_closed(profile: Profile, pattern: ClosedLoop, replications: int = 1, n_jobs: int | None = None):
    """Median row metrics (mean and std columns each) over replications, plus bands of the means."""
    if replications < 1:
        raise ValueError(f"--replications must be >= 1, got {replications}")
    jobs = n_jobs or default_jobs(replications)
    if jobs == 1 or replications == 1:
        outs = [_closed_one(profile, pattern, r) for r in range(replications)]
    else:
        from joblib import Parallel, delayed
        outs = Parallel(n_jobs=jobs)(delayed(_closed_one)(profile, pattern, r) for r in range(replications))
    rows0 = outs[0][0]
    merged, lo_rows, hi_rows = [], [], []
    for i, row in enumerate(rows0):
        m, lo, hi = {}, {}, {}
        for name in row.metrics:
            means = np.array([o[0][i].metrics[name][0] for o in outs if name in o[0][i].metrics])
            stds = np.array([o[0][i].metrics[name][1] for o in outs if name in o[0][i].metrics])
            m[name] = (float(np.median(means)), float(np.median(stds)))
            lo[name] = (float(np.percentile(means, 5)), 0.0)
            hi[name] = (float(np.percentile(means, 95)), 0.0)
        # the raw values llama-benchy's JSON lists are replication 0's, the run of the seed
        shape = dict(pp=row.pp, tg=row.tg, depth=row.depth, concurrency=row.concurrency, context_load=row.context_load)
        merged.append(ClosedRow(**shape, metrics=m, values=row.values))
        lo_rows.append(ClosedRow(**shape, metrics=lo))
        hi_rows.append(ClosedRow(**shape, metrics=hi))
    latency = float(np.median([o[1] for o in outs]))
    return merged, lo_rows, hi_rows, latency
