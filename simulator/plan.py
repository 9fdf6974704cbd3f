"""How many staff can this box serve: `plan` searches the largest staff count whose office meets
an SLA in enough replications and says which constraint binds; `predicted_capacity` finds the
highest request rate of the suite's 11-rate-sweep that keeps p95 TTFT under 2, 5 and 10 s. The
definitions and why they make the answer reproducible and monotone: docs/design/plan-search.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Generator, Sequence

import numpy as np

from .evaluator import Evaluator, custom_backend, drive, resolve_jobs
from .load import OpenLoop
from .office import DAY_PROFILES, Office, Session, office_sessions, per_class, simulate_sessions, summarize_office
from .plan_report import PlanResult
from .profile import Profile
from .scenario import Scenario
from .sla import DEFAULT_SLA, Constraint, PlanError, binding_constraint, check_slas, parse_sla, summary_percentiles
from .uncertainty import draw_profile
from .workload import RandomWorkload

# Names that moved to their own modules, importable from here as before.
from .evaluator import Task, idle_cores  # noqa: F401
from .office import OfficeError  # noqa: F401
from .plan_report import format_compare, format_plan, plot_plan  # noqa: F401
from .profile import ProfileError  # noqa: F401
from .scenario import SCENARIO_KEYS, parse_scenario  # noqa: F401
from .sla import METRICS, fmt_ms, level, parse_slas  # noqa: F401


@dataclass(frozen=True)
class PlanSettings:
    """How a plan searches: replications and the confidence they give, seeds, bounds, workers."""

    replications: int = 10
    confidence: float = 0.9
    seed: int = 0
    staff_max: int = 5000
    tol: float = 0.05  # bisection stops when the bracket is within max(1, tol x lo) staff
    n_jobs: int | None = None  # None: the idle cores (idle_jobs), or the active joblib backend's workers
    # Replications a point shows per step of its pass/fail decision (Evaluator.decide). The answer's
    # details (how many replications ran at the first failing staff count, the curve) depend on it, so
    # it is fixed here and not taken from the number of workers: 2, as two idle cores always ran it.
    batch: int = 2
    capacity: bool = True
    capacity_seed: int = 42  # the suite's --seed
    # Capacity predicts the suite's own sweep: replication 0 is its seed (42), so the
    # very requests and arrival times it sent; more replications add other seeds and
    # take the median (docs/design/plan-search.md).
    capacity_replications: int = 1
    capacity_tol: float = 0.08
    capacity_thresholds_s: tuple[float, ...] = (2.0, 5.0, 10.0)

    def __post_init__(self):
        if self.replications < 1:
            raise PlanError(f"replications must be >= 1, got {self.replications}")
        if not 0 < self.confidence <= 1:
            raise PlanError(f"confidence must be in (0, 1], got {self.confidence}")
        if self.capacity_replications < 1:
            raise PlanError(f"capacity replications must be >= 1, got {self.capacity_replications}")
        if self.staff_max < 1:
            raise PlanError(f"the staff search bound must be >= 1, got {self.staff_max}")
        if self.batch < 1:
            raise PlanError(f"the replication batch must be >= 1, got {self.batch}")
        if self.n_jobs is not None and self.n_jobs < 1 and self.n_jobs != -1:  # 0 ran one, -2 every core
            raise PlanError(f"worker processes (--jobs) must be >= 1, or -1 for every core, got {self.n_jobs}")

    @property
    def need(self) -> int:
        """Replications that must pass."""
        return max(1, math.ceil(self.confidence * self.replications - 1e-9))

    @property
    def capacity_need(self) -> int:
        """More than half of the capacity replications: the median passes (odd counts)."""
        return self.capacity_replications // 2 + 1


def _search(passes: Callable[[int], Generator], start: int, n_max: int, tol: float = 0.0) -> Generator:
    """search_max as a generator: `passes(n)` is itself a generator that yields the
    simulations it waits for and returns a bool, so that several searches can share
    the workers (drive). The steps are search_max's, unchanged."""
    lo, hi = 0, None
    n = max(1, min(start, n_max))
    if (yield from passes(n)):
        lo = n
        while lo < n_max:
            n = min(2 * lo, n_max)
            if (yield from passes(n)):
                lo = n
            else:
                hi = n
                break
        if hi is None:
            return lo, None
    else:
        hi = n
        while hi > 1:
            n = hi // 2
            if (yield from passes(n)):
                lo = n
                break
            hi = n
    while hi - lo > max(1, int(tol * lo)):
        mid = (lo + hi) // 2
        if (yield from passes(mid)):
            lo = mid
        else:
            hi = mid
    return lo, hi


def search_max(passes: Callable[[int], bool], start: int, n_max: int, tol: float = 0.0) -> tuple[int, int | None]:
    """Largest n in [0, n_max] that passes, by gallop then bisection.

    Returns (lo, hi): lo passed (0 = nothing tested passed; n = 0 is never
    tested), hi is the smallest failing n tested above lo (None when n_max passed).
    """
    def step(n: int) -> Generator:
        return passes(n)
        yield  # never reached: makes `step` a generator that waits for nothing

    search = _search(step, start, n_max, tol)
    try:
        next(search)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("unreachable: a plain predicate never waits")


def _office_rep(profile: Profile, office: Office, staff: int, scenario: Scenario, seed: int,
                percentiles: tuple[float, ...], classes: bool) -> dict:
    sessions = office_sessions(office, staff, seed, profile.prompt_format)
    run = simulate_sessions(profile, sessions, boxes=scenario.boxes, routing=scenario.routing,
                            prefix_hit=scenario.prefix_hit, max_concurrency=office.max_concurrency,
                            queue_in_ttft=office.queue_in_ttft, noise_seed=seed,
                            measure_from=office.warmup(profile.prompt_format))
    s = summarize_office(run, percentiles)
    if classes:
        s["classes"] = per_class(run)
    return s


def _office_rep_drawn(profile: Profile, office: Office, staff: int, scenario: Scenario, seed: int,
                      percentiles: tuple[float, ...], classes: bool) -> dict:
    """One replication on a profile drawn from the fit's uncertainty (simulator.uncertainty)."""
    return _office_rep(draw_profile(profile, seed), office, staff, scenario, seed, percentiles, classes)


def refused(profile: Profile, specs: Sequence) -> tuple[int, str | None]:
    """How many of these requests the server would refuse outright (longer than max_model_len, or
    than the KV cache holds), and the first reason: a plan on the rest would be silent nonsense."""
    import simpy

    from .engine import Engine

    eng = Engine(simpy.Environment(), profile)
    why = [w for w in (eng.reject_reason(s) for s in specs) if w]
    return len(why), (why[0].removeprefix("HTTP 400: ") if why else None)


def _refuse_if_refused(profile: Profile, specs: Sequence, what: str) -> None:
    n, why = refused(profile, specs)
    if n:
        raise PlanError(f"{n} of {len(specs)} {what} would be refused by the server ({why}); "
                        "plan on a profile whose max_model_len and KV cache hold them, or change the workload")


def _refuse_if_capacity_refused(profile: Profile, settings: "PlanSettings", hint: str = "") -> None:
    _refuse_if_refused(profile, sweep_workload(profile).sample(sweep_prompts(1.0), settings.capacity_seed),
                       f"requests of the capacity search (random 4000/500, range 0.9{hint})")


def sweep_workload(profile: Profile) -> RandomWorkload:
    """The suite's 11-rate-sweep requests: random 4000/500, range ratio 0.9, chat template."""
    return RandomWorkload(4000, 500, 0.9, fmt=profile.prompt_format)


def sweep_prompts(rate: float) -> int:
    """The suite's num_prompts rule (0.5 -> 125, 1.0 -> 250, at least 100), capped at 500 for cost."""
    return int(min(500, max(100, round(250 * rate))))


def _rate_rep(profile: Profile, rate: float, scenario: Scenario, seed: int, noise_seed: int) -> dict:
    n = sweep_prompts(rate)
    specs = sweep_workload(profile).sample(n, seed=seed)
    arrivals = OpenLoop(rate=rate, burstiness=0.7, seed=seed).arrival_times(n)
    sessions = [Session(float(t), (s,), (), "random") for t, s in zip(arrivals, specs)]
    run = simulate_sessions(profile, sessions, boxes=scenario.boxes, routing=scenario.routing,
                            prefix_hit=scenario.prefix_hit, noise_seed=noise_seed)
    s = summarize_office(run)
    return {k: s[k] for k in ("p95_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "request_throughput",
                              "output_throughput", "max_concurrent_requests")}



FEEL_KEYS = ("median_ttft_ms", "p95_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_e2el_ms", "p95_e2el_ms",
             "max_concurrent_requests", "request_throughput", "num_preemptions")
SUITE_LADDER = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def _median_keys(reps: list[dict], keys) -> dict:
    return {k: float(np.median([r[k] for r in reps])) for k in keys if all(k in r for r in reps)}


def _merge_classes(reps: list[dict]) -> dict:
    """Median over replications of each class's numbers."""
    names = sorted({n for r in reps for n in r.get("classes", {})})
    out = {}
    for n in names:
        rows = [r["classes"][n] for r in reps if n in r.get("classes", {}) and r["classes"][n].get("requests")]
        if rows:
            out[n] = {k: float(np.median([x[k] for x in rows])) for k in rows[0]}
    return out


def plan(profile: Profile, office: Office, slas: Sequence[Constraint] | Sequence[str] | None = None,
         scenario: Scenario | None = None, settings: PlanSettings | None = None, plot_points: int = 0,
         cache: dict | None = None) -> PlanResult:
    """The largest staff count meeting every constraint, what binds, and capacity in req/s.

    `cache` (staff -> replication summaries) lets several SLAs share one set of
    simulations; pass the same dict only with the same profile, office,
    scenario, seed and percentiles.

    The staff search, the fit-uncertainty replications and the capacity searches
    run side by side on the same workers (drive); each sees exactly the
    replications it would see alone, so the answer does not depend on the workers.
    Progress (the workers, each point's replications) is told on logging's
    "capsim.simulator.evaluator" (INFO).
    """
    scenario = scenario or Scenario()
    settings = settings or PlanSettings()
    slas = [c if isinstance(c, Constraint) else parse_sla(c) for c in (slas if slas else DEFAULT_SLA)]
    if office.max_concurrency is None and any(c.metric == "gateway_wait" for c in slas):
        raise PlanError("gateway_wait constraints need a concurrency cap (--max-concurrency)")
    if office.office_rps(1) == 0:  # the simulated window would wait for a working hour, or hold nothing
        hours = sorted(h for h, w in DAY_PROFILES[office.profile_name()].items() if w > 0)
        raise PlanError(f"nobody asks at {office.start_hour():g}h on the {office.profile_name()} day profile, which "
                        f"has requests from {hours[0]}h to {hours[-1] + 1}h: plan for an hour of the working day")
    prof = scenario.apply(profile)
    pcts = summary_percentiles(slas)
    _refuse_if_refused(prof, [q for ses in office_sessions(office, max(1, office.staff), settings.seed,
                                                          prof.prompt_format) for q in ses.specs],
                       "requests of the office (one replication)")
    if settings.capacity:
        _refuse_if_capacity_refused(prof, settings, "; --no-capacity skips it")
    # cores are chosen once, before our own workers add to the load average
    settings = replace(settings, n_jobs=None if custom_backend() else resolve_jobs(settings.n_jobs))
    need = settings.need
    staff_ref = max(1, office.staff)
    staff_prof = prof.for_traffic(True)  # staff ask about unrelated things (simulate_office)
    ev = Evaluator(_office_rep, lambda n, r: (staff_prof, office, n, scenario, settings.seed + r, pcts, n == staff_ref),
                   settings.replications, "staff", settings.batch)
    if cache is not None:
        ev.cache = cache
    ev_u = Evaluator(_office_rep_drawn, lambda n, r: (staff_prof, office, n, scenario, settings.seed + r, pcts, False),
                     settings.replications, "staff (fit uncertainty)", settings.batch)
    uncertain = prof.uncertainty is not None

    def passes(n: int) -> Generator:
        return (yield from ev.decide(n, lambda rep: all(c.ok(rep.get(c.key, math.nan)) for c in slas), need))

    def staff_search() -> Generator:
        lo, hi = yield from _search(passes, staff_ref, settings.staff_max, settings.tol)
        # everything the report reads, in one wait so that it all runs at once
        waits = [ev.want(staff_ref)] + ([ev.want(lo)] if lo > 0 else [])
        if plot_points:
            top = max(hi or lo, lo, staff_ref)
            grid = sorted({max(1, int(round(x))) for x in np.linspace(1, 1.25 * top, plot_points)})
            waits += [ev.want(n) for n in grid]
        if lo > 0 and uncertain:
            waits.append(ev_u.want(lo))
        yield waits
        return lo, hi

    searches = [staff_search()]
    if settings.capacity:
        cap_ev = _capacity_evaluator(prof, scenario, settings)
        searches += [_capacity_search(cap_ev, settings, thr) for thr in settings.capacity_thresholds_s]
    (lo, hi), *cap_los = drive(searches, settings.n_jobs)

    binding, detail = None, None
    if hi is not None:
        binding, detail = binding_constraint(ev.cache[hi], slas)
        detail = {"staff": hi, **detail}
    at_office = check_slas(ev[staff_ref], slas, need)
    at_answer = check_slas(ev[lo], slas, need) if lo > 0 else {}
    curve = []
    for n in sorted(ev.cache):
        reps = ev.cache[n]
        chk = check_slas(reps, slas, need)
        curve.append({"staff": n, "ok": all(v["ok"] for v in chk.values()),
                      "metrics": {k: {x: v[x] for x in ("median_ms", "lo_ms", "hi_ms", "level_ms", "ok")}
                                  for k, v in chk.items()},
                      "request_throughput": float(np.median([r["request_throughput"] for r in reps]))})
    result = PlanResult(
        staff=lo, unbounded=hi is None, first_failing=hi, binding=binding, binding_detail=detail, slas=list(slas),
        office=office, scenario=scenario, profile_name=prof.name, settings=settings, rps=office.office_rps(lo),
        at_answer=at_answer, at_office=at_office, feel=_median_keys(ev[staff_ref], FEEL_KEYS),
        classes=_merge_classes(ev[staff_ref]), curve=curve, evaluations=len(ev.cache))
    if lo > 0 and uncertain:
        result.at_answer_uncertain = check_slas(ev_u[lo], slas, need)
    if settings.capacity:
        result.capacity_rps, result.capacity_ladder_rps = _capacity_answer(settings, cap_los)
    return result


def _capacity_evaluator(profile: Profile, scenario: Scenario, settings: PlanSettings) -> Evaluator:
    """The suite's run at rate k/100 req/s, replication r (seed 42 + r)."""
    return Evaluator(_rate_rep, lambda k, r: (profile, k / 100.0, scenario, settings.capacity_seed + r, r),
                     settings.capacity_replications, "rate x0.01", settings.batch)


def _capacity_search(ev: Evaluator, settings: PlanSettings, threshold_s: float) -> Generator:
    """The highest rate (in 0.01 req/s) whose p95 TTFT stays under threshold_s; 0 for none."""
    c = Constraint("p95", "ttft", threshold_s * 1000.0, strict=True)
    need = settings.capacity_need

    def passes(k: int) -> Generator:
        return (yield from ev.decide(k, lambda rep: c.ok(rep["p95_ttft_ms"]), need))

    lo, _ = yield from _search(passes, 30, 100 * 100, settings.capacity_tol)
    return lo


def _capacity_answer(settings: PlanSettings, los: Sequence[int]) -> tuple[dict, dict]:
    out, ladder = {}, {}
    for thr, lo in zip(settings.capacity_thresholds_s, los):
        key = f"{thr:g}s"
        out[key] = lo / 100.0 if lo > 0 else None
        ladder[key] = ladder_step(out[key])
    return out, ladder


def ladder_step(rate: float | None) -> float | None:
    """The step of the suite's 11-rate-sweep a capacity of `rate` req/s reads as: the highest at or under it."""
    below = [x for x in SUITE_LADDER if rate is not None and x <= rate + 1e-9]
    return max(below) if below else None


def predicted_capacity(profile: Profile, scenario: Scenario | None = None,
                       settings: PlanSettings | None = None) -> tuple[dict, dict]:
    """Highest rate (0.01 req/s grid) whose p95 TTFT stays under each threshold, on the
    11-rate-sweep workload; and the same read on the suite's ladder of rates. The
    thresholds' searches run side by side: one rate each at a time keeps two workers busy."""
    scenario = scenario or Scenario()
    settings = settings or PlanSettings()
    prof = scenario.apply(profile)  # as plan() searches its capacity
    _refuse_if_capacity_refused(prof, settings)
    n_jobs = None if custom_backend() else resolve_jobs(settings.n_jobs)
    ev = _capacity_evaluator(prof, scenario, settings)
    los = drive([_capacity_search(ev, settings, thr) for thr in settings.capacity_thresholds_s], n_jobs)
    return _capacity_answer(settings, los)


capacity = predicted_capacity  # the name the notebooks import; calibrate.validate.capacity is the measured one


__all__ = ["Constraint", "PlanError", "PlanResult", "PlanSettings", "Scenario", "predicted_capacity",
           "format_compare", "format_plan", "parse_scenario", "parse_sla", "parse_slas", "plan", "plot_plan", "search_max",
           "OfficeError", "ProfileError"]
