"""The live fit: calibrate.fit's least squares with the server's limits fixed.

`fit_live` fits a profile to a live calibration's closed-loop runs, adding a per-request step
cost, a KV bandwidth and the API server's serial time; `refit` fits again from a kept folder.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from simulator.profile import KVGroup, Profile
from simulator.records import RunResult

from ..fit import (API_PARAMS, FIT_PARAMS, START, FitResult, residual_vector, compare, fit_decode_factors, fit_parameters,
                   residual_provenance, single_user_decode)
from ..priors import prior_profile
from ..results import ClosedRun
from .messages import LiveError
from .runs import closed_run_from_result, measured_prompt_scale, scale_run
from .server import ServerFacts

# calibrate.fit's parameters plus the per-request step cost and a KV bandwidth of its own: the live
# grid batches long contexts (the ladder's top concurrency at large prompts), which tells the
# KV term (grows with the batch's total context) from t_ctx (the mean context) and the weights.
# The box is whatever serves: no Spark roofline bounds its bandwidth, and a CPU server's steps take
# a fifth of a second.
LIVE_FIT_PARAMS = dict(FIT_PARAMS) | {"t0": (1e-4, 1.0), "bw_weights": (1e8, 5e13), "t_seq": (1e-7, 1.0),
                                      "bw_kv": (1e8, 1e15)}
# and the API server's serial time per request: requests sent together reach the engine that far
# apart, which decides how many share the first step (the spread of TTFT at concurrency > 1)
LIVE_API_PARAMS = dict(API_PARAMS) | {"frontend_s": (1e-5, 0.2)}


def fit_live(runs: list[ClosedRun], facts: ServerFacts, max_nfev: int = 150, prompt_scale: float = 1.0,
             start: Profile | None = None, progress: Callable[[int, float], None] | None = None,
             combine: str | Sequence[str] | None = ("l2", "sum"), decode_factors: bool = True) -> FitResult:
    """calibrate.fit.fit_closed with the server's engine limits and KV layout fixed, t_seq fitted.

    Same residuals (calibrate.fit.compare), loss and parameterisation as `capsim
    calibrate`; the start is the generic prior (or `start`, e.g. a perturbed profile).
    With several `combine` rules (how memory and compute time of a step add up: "l2"
    overlaps them partly, as GPUs do; "sum" not at all, as a CPU does) each is fitted
    and the one with the lower loss is kept. With `decode_factors`, pure decode steps then
    get the per-batch-size corrections the grid's concurrency ladder measured.
    """
    if combine is not None and not isinstance(combine, str):
        fits = [fit_live(runs, facts, max_nfev, prompt_scale, start, progress, c, decode_factors) for c in combine]
        losses = {f.profile.step_model.combine: float(np.sum(residual_vector(f.residuals) ** 2)) for f in fits}
        best = min(fits, key=lambda f: losses[f.profile.step_model.combine])
        best.profile.provenance["combine_losses"] = losses
        return best
    if not runs:
        raise LiveError("calibration needs at least one closed-loop run")
    t_start = time.perf_counter()
    c1_tps = single_user_decode(runs)
    prof, origin = prior_profile(facts.server_dict(), c1_tps)
    if start is not None:
        prof.step_model = start.step_model.__class__(**dataclasses.asdict(start.step_model))
        prof.api = dataclasses.replace(start.api)
        prof.prompt_format = start.prompt_format
    prof.engine = facts.engine_limits()
    prof.model.pop("roofline_bw", None)  # the Spark's; a live box's is unknown
    origin.update({k: v for k, v in facts.origin.items()})
    if combine is not None:
        prof.step_model.combine = combine
    start_vals = dict(START) | {"t_seq": 0.05 / c1_tps if c1_tps else 1e-3}
    prior_res = compare(prof, runs, prompt_scale)
    best, res, evals = fit_parameters(prof, runs, prompt_scale, LIVE_FIT_PARAMS, LIVE_API_PARAMS, start_vals,
                                      max_nfev, progress)
    if decode_factors:
        fitted = best.provenance
        best = fit_decode_factors(best, runs, prompt_scale)
        res = compare(best, runs, prompt_scale)
        best.provenance = fitted | residual_provenance(res) | {
            "decode_factors": "measured decode speed per user at each concurrency of the grid "
                              "(calibrate.fit.fit_decode_factors)"}
    best.name = facts.model
    best.provenance |= {
        "method": "live: capsim measure closed-loop grid; scipy least_squares (soft-L1) on weighted log-ratios "
                  "of simulated to measured llama-benchy metrics (calibrate.fit.compare)",
        "engine_limits_origin": origin,
        "server": facts.to_json(),
    }
    return FitResult(best, res, prompt_scale, origin, time.perf_counter() - t_start, evals, prior_res)


def load_calibration_runs(run_dir, clock_scale: float | None = None) -> tuple[ServerFacts, list[RunResult], list[str]]:
    """A live calibration's folder read back: (server facts, runs in model time, stage folder names)."""
    from measure.runfiles import load_run

    d = Path(run_dir)
    try:
        sj = json.loads((d / "server.json").read_text())
    except (OSError, ValueError) as e:
        raise LiveError(f"{d}: not a live calibration folder ({e})") from None
    try:
        sj["kv_groups"] = tuple(KVGroup(**g) for g in sj.get("kv_groups", []))
        facts = ServerFacts(**sj)
    except (TypeError, AttributeError) as e:  # not an object, or keys ServerFacts / KVGroup do not have
        raise LiveError(f"{d / 'server.json'}: not the server facts a live calibration writes ({e})") from None
    if clock_scale is None:
        try:
            clock_scale = float(json.loads((d / "plan.json").read_text()).get("clock_scale", 1.0))
        except (OSError, ValueError, TypeError, AttributeError):  # no plan, or no number in it: wall time
            clock_scale = 1.0
    folders = sorted(p.name for p in d.iterdir() if p.is_dir() and (p / "run.json").is_file())
    runs = [scale_run(load_run(d / f), clock_scale) for f in folders]
    return facts, runs, folders


def refit(run_dir, max_nfev: int = 150, clock_scale: float | None = None, **kw) -> FitResult:
    """Fit again from a kept live-calibration folder (no server needed)."""
    facts, runs, folders = load_calibration_runs(run_dir, clock_scale)
    d = Path(run_dir)
    runs_c = [closed_run_from_result(r, facts, source=str(d / f), test=f) for r, f in zip(runs, folders)]
    return fit_live(runs_c, facts, max_nfev=max_nfev, prompt_scale=measured_prompt_scale(runs), **kw)
