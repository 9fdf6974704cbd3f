"""Simulation-based calibration: the step-model parameters that make the simulator reproduce
closed-loop benchmark tables.

Each evaluation simulates the llama-benchy runs on the candidate profile and compares the metrics
they printed; scipy's least_squares (soft-L1) fits the log-ratios. Only closed-loop runs are read.
Design: docs/design/calibration.md.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from simulator.evaluator import fork_map, in_fork, resolve_jobs
from simulator.load import ClosedLoop
from simulator.profile import Profile, refused_for_length
from simulator.records import benchy_expected_prompt
from simulator.sim import simulate_closed
from simulator.uncertainty import Uncertainty
from simulator.summary import ClosedRow, summarize_closed

from .answer_lengths import with_answer_lengths
from .architectures import layout_guessed
from .priors import ROOFLINE_BW, prior_profile
from .results import ClosedRun

# step-model parameters fitted in log space, with bounds
# Effective bandwidth stays under the box's roofline (priors.ROOFLINE_BW): above it the fitted
# bytes would mean nothing, and a free bandwidth let t0 absorb whole decode steps.
FIT_PARAMS = {
    "t0": (1e-4, 0.1),
    "t_seq": (1e-7, 5e-3),
    "bw_weights": (0.1 * ROOFLINE_BW, ROOFLINE_BW),
    "alpha": (0.2, 1.5),
    "expert_pool": (0.05, 1.0),
    "flops": (1e11, 1e17),
    "attn_flops": (1e10, 1e17),
    "t_ctx": (1e-10, 1e-5),
}
START = {"t_ctx": 1e-7, "t_seq": 2e-5}  # where a prior leaves a parameter at zero
# t_seq is host work per running request and step (scheduling, sampling, output handling): tens of
# microseconds in vLLM. A fit that puts milliseconds there is explaining what grows with the batch
# (the experts it touches, its KV) with a term that grows linearly for ever, where those saturate:
# Mistral-Small-4's fit put 3.75 ms there and predicted TPOT 50-60 % too slow at 150-250 requests in
# flight. Such a fit is redone with t_seq held under this bound (the other fits are left as they are).
T_SEQ_MAX = 5e-4
API_PARAMS = {"request_s": (1e-4, 1.0), "wake_s": (1e-4, 0.3), "frontend_per_token_s": (1e-8, 1e-4)}

# llama-benchy 0.4.0 sends no ignore_eos: outputs may stop early at lengths the table
# does not give, and "t/s (total)" mixes that in, so it carries little weight.
# peak t/s (most tokens in a 1-s window) is the batch's pure decode rate: all c requests decoding, no
# prefill in the window. It pins the step time against batch size, which TPOT at larger loads rests on.
WEIGHTS = {"tg_req_throughput": 1.0, "tg_throughput": 0.1, "peak_throughput": 1.0, "pp_throughput": 0.5, "ttfr": 1.0,
           "e2e_ttft": 1.0}
PEAK_FULL_WEIGHT_COUNT = 20.0  # tokens in the peak 1-s window from which peak t/s gets its full weight
SPREAD_WEIGHT = 0.3  # ttfr std at c > 1: how prefills queue behind each other
# Spreads are compared above 10% of the metric's mean: two requests sent together land in one
# step (no spread) or in two (a whole step's), a coin flip of a few ms of client timing, and a
# log ratio against ~0 let that one figure outweigh the rest (a twin calibration picked the wrong
# combine rule over a c2 spread of 40 ms measured against 0 simulated).
SPREAD_FLOOR = 0.1
LATENCY_WEIGHT = 0.5


@dataclass
class Residual:
    source: str
    test: str
    shape: str
    metric: str
    measured: float
    simulated: float
    weight: float
    floor: float = 0.0  # the fit counts values below this as this (error_pct stays the raw one)

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.simulated - self.measured) / self.measured

    def to_json(self) -> dict:
        return {"source": self.source, "test": self.test, "shape": self.shape, "metric": self.metric,
                "measured": self.measured, "simulated": self.simulated, "error_pct": self.error_pct,
                "weight": self.weight} | ({"floor": self.floor} if self.floor else {})


@dataclass
class FitResult:
    profile: Profile
    residuals: list[Residual]
    prompt_scale: float
    origin: dict
    seconds: float
    evaluations: int
    prior_residuals: list[Residual] = field(default_factory=list)


def _shape(r) -> str:
    return f"pp{r.pp} tg{r.tg}" + (f" d{r.depth}" if r.depth else "") + f" c{r.concurrency}"


def closed_pattern(run: ClosedRun, prompt_scale: float = 1.0) -> ClosedLoop:
    """The run's tests as one simulated llama-benchy invocation.

    One batch per test suffices: the engine is idle between llama-benchy's runs,
    so without step noise every run repeats the first. With prefix caching the
    contexts are loaded first, and found cached unless the server's cache was off.
    """
    return ClosedLoop(combos=[(r.pp, max(r.tg, 1), r.depth, r.concurrency) for r in run.rows if not r.context_load],
                      runs=1, warmup=False, latency_mode=run.latency_mode or "generation", prompt_scale=prompt_scale,
                      stop_mean=run.stop_mean, stop_shape=run.stop_shape, prefix_caching=run.prefix_caching,
                      server_caches=run.server.get("enable_prefix_caching") is not False)


def paired_rows(run: ClosedRun, simulated: list[ClosedRow]) -> list[tuple[ClosedRow, ClosedRow]]:
    """Each of the run's rows with its row of the simulated closed_pattern(run): the simulated rows in
    order, a context load's only where the run kept one for that test."""
    kept = {r.key for r in run.rows if r.context_load}
    return list(zip(run.rows, [s for s in simulated if not s.context_load or s.key in kept]))


def estimate_prompt_scale(runs: list[ClosedRun], latency_ms: float) -> float:
    """Server tokens per requested pp+depth token, from single-user prefill rows.

    llama-benchy reports pp t/s = prompt_tokens / est_ppt with the server's token
    count; when it sized prompts with another tokenizer (gpt2 is its fallback) the
    two differ. prompt_tokens = pp t/s x est_ppt recovers the server's count. It
    takes the server's count only within a fifth of the count it asked for (its
    results.py), so a scale beyond 0.8-1.2 reads as 1 here, as in its table.
    """
    scales = []
    for run in runs:
        lat = run.latency_ms if run.latency_ms is not None else latency_ms
        for r in run.rows:
            m = r.metrics
            if r.concurrency != 1 or "pp_throughput" not in m or run.after_cached_context(r):
                continue  # a prompt after a cached context: the server counts the context, llama-benchy pp alone
            tps, sd = m["pp_throughput"]
            if not tps > 0 or (sd == sd and sd / tps > 0.2):
                continue  # no throughput (a failed row), or a noisy one (e.g. a cold first run): says little
            if "est_ppt" in m:
                est = m["est_ppt"][0]
            else:
                first = m.get("ttfr") or m.get("e2e_ttft")
                if first is None:
                    continue
                est = first[0] - lat
            if est > 0:
                scales.append(tps * est / 1000.0 / benchy_expected_prompt(r.pp, r.depth, r.context_load))
    return float(np.median(scales)) if scales else 1.0


def compare(profile: Profile, runs: list[ClosedRun], prompt_scale: float) -> list[Residual]:
    """Simulate every run on `profile` and pair measured with simulated metrics."""
    out: list[Residual] = []
    for run in runs:
        sim = simulate_closed(profile, closed_pattern(run, prompt_scale))
        for meas, got in paired_rows(run, summarize_closed(sim)):
            for metric, w in WEIGHTS.items():
                if metric == "e2e_ttft" and "ttfr" in meas.metrics:
                    continue
                if metric not in meas.metrics or metric not in got.metrics:
                    continue
                mu, sd = meas.metrics[metric]
                if not (mu > 0):
                    continue
                # trust noisy single-user figures less, each by its own spread (none given: in full)
                cv_noise = 1.0 / (1.0 + (sd / mu) / 0.1) if sd == sd else 1.0
                if metric == "peak_throughput":
                    # a count of tokens in one 1-s window is known to a token: 5 of them say little
                    w = w * min(1.0, mu / PEAK_FULL_WEIGHT_COUNT)
                out.append(Residual(run.source, run.test, _shape(meas), metric, mu, got.metrics[metric][0],
                                    w * (cv_noise if meas.concurrency == 1 else 1.0)))
                if metric in ("ttfr", "e2e_ttft") and meas.concurrency > 1 and sd == sd and sd > 0:
                    out.append(Residual(run.source, run.test, _shape(meas), metric + "_std", sd,
                                        got.metrics[metric][1], SPREAD_WEIGHT, SPREAD_FLOOR * mu))
        if run.latency_ms and run.latency_mode == "generation":
            out.append(Residual(run.source, run.test, "latency probe", "latency_ms", run.latency_ms,
                                sim.closed_loop.latency_s * 1000, LATENCY_WEIGHT))
    return out


def residual_vector(res: list[Residual]) -> np.ndarray:
    return np.array([r.weight * math.log(max(r.simulated, r.floor, 1e-9) / max(r.measured, r.floor)) for r in res])


def fit_parameters(prof: Profile, runs: list[ClosedRun], scale: float, params: dict[str, tuple[float, float]],
                   api_params: dict[str, tuple[float, float]], start: dict[str, float], max_nfev: int,
                   progress: Callable[[int, float], None] | None = None, jobs: int = 1):
    """Least-squares fit of step-model and API parameters (log space, within bounds) to closed-loop runs.

    jobs: processes for each finite-difference Jacobian (its points split over forks, simulator.evaluator.
    fork_map); the points and the results are scipy's own either way, so the fit is too.

    `params` are step-model attributes; unless `bw_kv` is among them it is tied to `bw_weights`:
    KV and weights stream from the same memory, closed-loop runs rarely batch enough long
    contexts to tell them apart, and a free bw_kv absorbs the single-user context slope
    (which t_ctx models) instead. Returns (profile, residuals, evaluations).
    """
    names = [n for n in params if hasattr(prof.step_model, n)
             and not (n in ("alpha", "expert_pool") and getattr(prof.step_model, "n_experts", 0) == 0)]
    api_names = list(api_params)
    bounds = [params[n] for n in names] + [api_params[n] for n in api_names]
    tie_kv = hasattr(prof.step_model, "bw_kv") and "bw_kv" not in names

    def apply(x: np.ndarray) -> Profile:
        p = prof.copy()
        for n, v in zip(names, x[:len(names)]):
            setattr(p.step_model, n, float(math.exp(v)))
        if tie_kv:
            p.step_model.bw_kv = p.step_model.bw_weights
        for n, v in zip(api_names, x[len(names):]):
            setattr(p.api, n, float(math.exp(v)))
        return p

    x0 = np.array([math.log(getattr(prof.step_model, n) or start.get(n, 1.0)) for n in names]
                  + [math.log(getattr(prof.api, n)) for n in api_names])
    lo = np.array([math.log(b[0]) for b in bounds])
    hi = np.array([math.log(b[1]) for b in bounds])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    evals = [0]

    here = os.getpid()

    def counted(v: np.ndarray) -> None:
        if os.getpid() != here:  # a fork of fork_map: its results are counted when they reach us
            return
        evals[0] += 1
        if progress:
            progress(evals[0], float(np.sum(v ** 2)))

    def fun(x):
        v = residual_vector(compare(apply(x), runs, scale))
        counted(v)
        return v

    def workers(fn, points):  # what a fork computed is counted here
        return fork_map(fn, points, jobs, on_remote=counted)

    from scipy.optimize import least_squares  # here, not at import: `capsim --help` stays fast

    sol = least_squares(fun, x0, bounds=(lo, hi), loss="soft_l1", f_scale=F_SCALE, diff_step=0.03, max_nfev=max_nfev,
                        workers=workers)
    best = apply(sol.x)
    res = compare(best, runs, scale)
    best.uncertainty = fit_uncertainty(sol, [f"step_model.{n}" for n in names] + [f"api.{n}" for n in api_names],
                                       res, runs)
    best.provenance = {
        "fitted_on": sorted({f"{r.source}:{r.test}" for r in runs}),
        "fitted_parameters": {n: getattr(best.step_model, n) for n in names}
                             | {f"api.{n}": getattr(best.api, n) for n in api_names},
        "prompt_scale": scale,
        **residual_provenance(res),
        "evaluations": evals[0],
        "envelope": envelope(runs),
    }
    return best, res, evals[0]


# A parameter whose log-space standard deviation exceeds this is taken as unidentified by the runs
# (attention FLOP/s in runs without long prompts).
MAX_LOG_SD = 0.5
# Closed-loop runs decode book text in lockstep at a few batch sizes; open-loop loads decode other
# text (random tokens, chat) with requests joining and leaving, and experts are routed differently.
# The floor is what the fitted model gets wrong on loads it never saw: across the spark-bench runs
# (benchmarks/accuracy.py, speculative run aside) the 90th percentile of |log(predicted/measured)|
# of open-loop TPOT p50 is 0.227, and a 5-95 % band is a 90 % band, so sigma = 0.227 / 1.645. (The
# median rule, 0.12, assumed normal errors; they have heavier tails, and that band held 78 %.)
# One constant for every model, revisited whenever the scoreboard moves (0.269 and 0.16 until the
# recurrent state's float32).
DECODE_SIGMA_FLOOR = 0.14
# The same rule on models no family table knows (`benchmarks/accuracy.py --anonymize`: every run's
# model id cut to its size and dtype, depth, KV heads and experts guessed): the 90th percentile of
# |log(predicted/measured)| of open-loop TPOT p50 is 0.40, so sigma = 0.40 / 1.645 (0.42 and 0.26 until a
# mixture of experts' guessed depth followed its active size).
DECODE_SIGMA_FLOOR_GUESSED = 0.24
# Per-position acceptance of draft tokens seen across methods and content (random tokens keep few
# drafts, chat and reasoning text many): the range a prior acceptance is drawn from.
SPEC_ACCEPTANCE_RANGE = (0.15, 0.85)
# Figures whose misfit measures how far each side of the step-time model is off.
DECODE_METRICS = ("tg_req_throughput", "peak_throughput")
PREFILL_METRICS = ("pp_throughput", "ttfr", "e2e_ttft")


def fit_uncertainty(sol, names: list[str], res: list[Residual], runs: list[ClosedRun]) -> Uncertainty:
    """The fit's parameter covariance (Gauss-Newton, s^2 (J^T J)^-1 in log space) and the model's misfit.

    model_sigma is the spread of the log ratios of simulated to measured figures after the fit: what
    the fitted model still gets wrong on data it saw, a floor on what it gets wrong on data it did not.
    """
    J = np.asarray(sol.jac, dtype=float)
    m, n = J.shape
    s2 = 2.0 * float(sol.cost) / max(1, m - n)
    cov = s2 * np.linalg.pinv(J.T @ J)
    cov = (cov + cov.T) / 2
    # Parameters the runs leave unidentified are held at their fitted value and the others drawn from
    # their distribution given those values (the Gaussian conditional): the unidentified ones trade off
    # against identified ones, so drawing them (or capping their spread) would undo what the data pin.
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    b = sd > MAX_LOG_SD
    if b.any() and not b.all():
        a = ~b
        cond = cov[np.ix_(a, a)] - cov[np.ix_(a, b)] @ np.linalg.pinv(cov[np.ix_(b, b)]) @ cov[np.ix_(b, a)]
        cov = np.zeros_like(cov)
        cov[np.ix_(a, a)] = cond
    elif b.all():
        cov = np.zeros_like(cov)
    w, v = np.linalg.eigh(cov)
    cov = (v * np.clip(w, 0.0, None)) @ v.T
    def misfit(metrics) -> float:
        lr = np.array([math.log(max(r.simulated, 1e-12) / r.measured) for r in res
                       if r.metric in metrics and r.measured > 0])
        # root mean square, tails included (the rows a robust fit lets go are where predictions miss
        # too), each row capped at a factor e^0.5 so one broken row cannot set the band
        return float(np.sqrt(np.mean(np.minimum(lr * lr, 0.25)))) if len(lr) else 0.0

    return Uncertainty(names=names, log_mean=[float(x) for x in sol.x], log_cov=cov.tolist(),
                       model_sigma=max(misfit(DECODE_METRICS), DECODE_SIGMA_FLOOR),
                       model_sigma_prefill=misfit(PREFILL_METRICS),
                       envelope_batch=envelope(runs)["max_concurrency"]).validate()


def unidentified(u: Uncertainty, name: str) -> bool:
    """Whether the fit left `name` unidentified (fit_uncertainty holds such a parameter: no variance, up
    to the rounding of its eigen-decomposition)."""
    if name not in u.names:
        return False
    i = u.names.index(name)
    return u.log_cov[i][i] < 1e-12


def envelope(runs: list[ClosedRun]) -> dict:
    """What calibration saw: the largest concurrency and context of its runs."""
    rows = [r for run in runs for r in run.rows]
    return {"max_concurrency": max((r.concurrency for r in rows), default=1),
            "max_context": max((r.pp + r.depth + r.tg for r in rows), default=0)}


COMBINE_RULES = ("l2", "sum")
F_SCALE = 0.05  # least_squares' soft-L1 scale: log-ratios beyond ~5% count less than squared


def robust_loss(res: list[Residual]) -> float:
    """The cost least_squares minimises (soft-L1 of the weighted log-ratios), for comparing fits."""
    z = (residual_vector(res) / F_SCALE) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


def residual_provenance(res: list[Residual]) -> dict:
    """What a profile's provenance records of its fit's residuals."""
    return {"median_abs_error_pct": float(np.median([abs(r.error_pct) for r in res])) if res else math.nan,
            "residuals": [r.to_json() for r in res]}


def fit_decode_factors(prof: Profile, runs: list[ClosedRun], scale: float, iterations: int = 3) -> Profile:
    """A copy of `prof` whose pure decode steps are corrected per batch size (decode_factors).

    At each concurrency the runs measured, the factor is the median over its rows of simulated
    over measured decode speed per user, refined a few times (a factor moves only the decode
    steps of a run, not its prefills). Needs a physical step model and two concurrencies or more.
    """
    rows = [r for run in runs for r in run.rows if "tg_req_throughput" in r.metrics]
    conc = sorted({r.concurrency for r in rows})
    p = prof.copy()
    if len(conc) < 2 or not hasattr(p.step_model, "decode_factors"):
        return p
    factors = {c: 1.0 for c in conc}
    for _ in range(iterations):
        p.step_model.decode_factors = [[c, factors[c]] for c in conc]
        ratios: dict[int, list[float]] = {c: [] for c in conc}
        for run in runs:
            sim = summarize_closed(simulate_closed(p, closed_pattern(run, scale)))
            for meas, got in paired_rows(run, sim):
                if "tg_req_throughput" in meas.metrics and got.metrics.get("tg_req_throughput", (0,))[0] > 0:
                    ratios[meas.concurrency].append(got.metrics["tg_req_throughput"][0]
                                                    / meas.metrics["tg_req_throughput"][0])
        for c in conc:
            if ratios[c]:
                factors[c] *= float(np.median(ratios[c]))
    p.step_model.decode_factors = [[c, factors[c]] for c in conc]
    return p


def single_user_decode(runs: list[ClosedRun]) -> float | None:
    """Median decode speed per user (tokens/s) of the runs' single-user tests: the prior's c1 speed."""
    c1 = [r.metrics["tg_req_throughput"][0] for run in runs for r in run.rows
          if r.concurrency == 1 and "tg_req_throughput" in r.metrics]
    return float(np.median(c1)) if c1 else None


def _max_model_len_from_runs(prof, origin: dict, runs: list[ClosedRun]) -> None:
    """The runs decide: a max_model_len under which the box could not have served what the tables show
    measured (a flag copied wrong, a default assumed) is raised to what they needed, and the origin says so."""
    lim, fmt = prof.engine, prof.prompt_format
    extra = fmt.special_tokens + fmt.chat_template_tokens
    served = [(r.pp + r.depth + extra, r.tg, run.test) for run in runs for r in run.rows
              if r.metrics and r.pp + r.depth + r.tg > 0]
    bad = [x for x in served if refused_for_length(x[0], x[1], lim.max_model_len, lim.clamp_max_tokens)]
    if not bad:
        return
    p, m, test = max(bad, key=lambda x: x[0] + x[1])
    need = p + m
    origin["max_model_len"] = (f"{lim.max_model_len} ({origin.get('max_model_len', 'server flag')}) is too short for "
                               f"what {test} measured (about {p} prompt + {m} output tokens): raised to {need}")
    lim.max_model_len = need


def fit_closed(runs: list[ClosedRun], server: dict | None = None, max_nfev: int = 30,
               progress: Callable[[int, float], None] | None = None, combine: str | None = None,
               n_jobs: int | None = None) -> FitResult:
    """Fit a profile to closed-loop runs (one server configuration).

    n_jobs: processes (None: the idle cores; 1: everything here, one fit after the other). The two
    combine rules' fits run side by side, and the fits after them spread each finite-difference
    Jacobian over the processes. Every simulation is the same either way, so the profile is."""
    if not runs:
        raise ValueError("calibration needs at least one closed-loop run")
    t_start = time.perf_counter()
    server = server or runs[0].server
    prof, origin = prior_profile(server, single_user_decode(runs))
    _max_model_len_from_runs(prof, origin, runs)
    if server.get("skipped_tests"):
        origin["calibrated_without"] = "; ".join(server["skipped_tests"])
    if prof.engine.prefix_caching:
        # llama_benchy/prompts.py: each prompt is an excerpt of one book from a random place, so two share
        # no more than the chat template's first tokens (under a 16-token block)
        origin["prefix_caching"] = (
            f"on ({origin['prefix_caching']}). llama-benchy's prompts (book excerpts from random places) share "
            "no prefix to hit, but for the contexts its --enable-prefix-caching loads first; those, and the "
            "prefix every request of a vllm bench serve load shares (--random-prefix-len), capsim simulates as "
            "cached. Other traffic that repeats a long prefix (a shared system prompt) is simulated with no "
            "prefix cache, so it prefills faster on the server than simulated")
    if server.get("setting_conflicts"):
        origin["settings_in_conflict"] = "; ".join(server["setting_conflicts"])
    if server.get("unmodelled_flags"):
        origin["flags_not_modelled"] = (", ".join(server["unmodelled_flags"]) + ": what they do to step time is in "
                                        "the fitted rates; to the scheduler, nothing is assumed")
    # a first latency guess: the probe on the prior profile
    probe = simulate_closed(prof, ClosedLoop(combos=[(1, 1, 0, 1)], runs=1, warmup=False)).closed_loop.latency_s * 1000
    scale = estimate_prompt_scale(runs, probe)
    prior_res = compare(prof, runs, scale)
    # How a step's memory and compute time add up is a property of the box's kernels, not of the
    # model: fit each rule and keep the one the closed-loop runs prefer (as live calibration does).
    fits, evals = {}, 0
    params = dict(FIT_PARAMS)
    if layout_guessed(prof.model):
        # with the expert count itself assumed, a share of it would stand in for the guess's error
        # (benchmarks/accuracy.py --anonymize: TPOT 13.5 -> 14.8 %, unnamed Nemotron +28 -> +40 %)
        params.pop("expert_pool")

    jobs = resolve_jobs(n_jobs)

    def fit_rule(p: Profile, rule: str, runs: list[ClosedRun], progress=progress, jobs=jobs):
        """(profile, residuals, evaluations, what was refitted under T_SEQ_MAX or None)"""
        p = p.copy()
        p.step_model.combine = rule
        b, r, e = fit_parameters(p, runs, scale, params, API_PARAMS, START, max_nfev, progress, jobs)
        note = None
        if b.step_model.t_seq > T_SEQ_MAX:
            note = (f"refitted under {T_SEQ_MAX * 1e3:g} ms: the first fit put {b.step_model.t_seq * 1e3:.2f} ms "
                    "of host work on every request's step")
            p = prof.copy()
            p.step_model.combine = rule
            bounds = params | {"t_seq": (params["t_seq"][0], T_SEQ_MAX)}
            b, r, e2 = fit_parameters(p, runs, scale, bounds, API_PARAMS, START, max_nfev, progress, jobs)
            e += e2
        return b, r, e, note

    rules = [combine] if combine else list(COMBINE_RULES)
    # each rule's fit on a core of its own where two are idle: the other rules in forked processes
    # (their progress unshown), the first here; the fits after these spread each Jacobian instead
    others = {}
    if len(rules) > 1 and jobs > 1:
        for rule in rules[1:]:
            if (worker := in_fork(lambda rule=rule: fit_rule(prof, rule, runs, None, 1))) is not None:
                others[rule] = worker
    try:
        for rule in rules:
            b, r, e, note = (others[rule].result() if rule in others
                             else fit_rule(prof, rule, runs, jobs=max(1, jobs - len(others))))
            fits[rule] = (robust_loss(r), b, r, note)
            evals += e
    finally:  # a fit here that failed (or was interrupted) leaves no worker computing for nobody
        for worker in others.values():
            worker.cancel()
    rule = min(fits, key=lambda k: fits[k][0])
    _, best, res, note = fits[rule]
    if note:
        origin["t_seq"] = note
    if "expert_pool" in params and unidentified(best.uncertainty, "step_model.expert_pool"):
        # a pool the runs do not pin trades off against the bandwidth (the seed's fit took 0.46 of the
        # experts at 194 GB/s where 259 GB/s and every expert fit as well, and its TPOT fell 5 -> 17 %
        # short): every expert stays in play, as a prior that a batch can reach them all
        params.pop("expert_pool")
        origin["expert_pool"] = "not identified by the runs: every expert in play (1.0)"
        best, res, e, note = fit_rule(prof, rule, runs)
        evals += e
        if note:
            origin["t_seq"] = note
    # Answers that stopped at EOS before tg (known from the tests' wall times) decoded part of the
    # time in smaller batches than the table's concurrency: fitted as if they had not, a batch
    # would look cheaper than it is. Refit with the answer lengths the first fit implies.
    stopped = with_answer_lengths(best, runs, scale, lambda rs: robust_loss(compare(best, rs, scale)))
    if stopped is not None:
        runs = stopped
        best, res, e, note = fit_rule(best, rule, runs)
        evals += e
        if note:
            origin["t_seq"] = note
        origin["answer_lengths"] = (
            "llama-benchy sends no ignore_eos; from the tests' wall times the model stopped at about "
            + ", ".join(f"{r.stop_mean:.0f} tokens in {r.test}" for r in runs if r.stop_mean is not None)
            + f" (mean answer; lengths of gamma shape {runs[0].stop_shape:g}), and the fit simulates those lengths")
    if best.engine.num_speculative_tokens and str(origin.get("spec_acceptance", "")).startswith("prior"):
        # llama-benchy's tables do not identify how many drafts a step keeps: the band spans it
        best.uncertainty.spec_acceptance_range = list(SPEC_ACCEPTANCE_RANGE)
    if layout_guessed(best.model):
        # no family table: the layout the step model rests on is a guess, and misses grow accordingly
        best.uncertainty.model_sigma = max(best.uncertainty.model_sigma, DECODE_SIGMA_FLOOR_GUESSED)
    best.provenance |= {
        "method": "scipy least_squares (soft-L1) on weighted log-ratios of simulated to measured llama-benchy metrics",
        "engine_limits_origin": origin,
        "combine_losses": {k: v[0] for k, v in fits.items()},
    }
    return FitResult(best, res, scale, origin, time.perf_counter() - t_start, evals, prior_res)
