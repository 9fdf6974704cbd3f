"""How many staff can this box serve? SLA search over the office model.

Definitions (each chosen so the answer is reproducible and monotone):

- An SLA is a list of constraints on vllm bench serve's summary keys, e.g.
  `p95_ttft<=3s` (p50/p90/p95/p99/any pNN, mean or median of ttft, tpot, itl,
  e2el, or gateway_wait when a concurrency cap is set).
- Replication r of staff count N simulates the office with seed `seed + r`
  (workload, arrivals, think times; step noise too). Sessions are shared
  across staff counts (see office.py), so N and N' differ only in how fast
  the same requests arrive.
- "Meets the SLA with 90% confidence": every constraint holds in at least
  ceil(0.9 x R) of the R replications (count rule; with R = 10, 9 of 10).
- The staff answer comes from a gallop (from the office's own staff count,
  doubling or halving) then a bisection, stopping when the bracket is within
  max(1, tol x lo) staff. Every step decides "answer >= n" on a pass and
  "answer < n" on a fail, with a stopping rule that looks only at the
  bracket. So if one SLA's pass at n implies another's (a stricter bound on
  the very same simulations), the two searches agree until they first differ
  at some n, where the stricter one goes below n and the looser one stays at
  n or above: a stricter SLA never yields more staff, by construction. A
  faster profile yields no fewer staff wherever it makes every replication's
  metrics no worse, which the tests check.
- A staff count stops being simulated as soon as its outcome is settled
  (with 9 of 10 needed, two failing replications settle a fail); the outcome
  is the one all R would give, so this saves time without changing answers.
- The binding constraint is the one that fails at the smallest failing staff
  count the search met (the bracket's upper end): the one failing in most of
  the replications run there, ties broken by how far over its bound it went.
- Capacity in requests per second is the suite's 11-rate-sweep measure: the
  highest arrival rate whose p95 TTFT stays under 2, 5 and 10 s, for its
  workload (random 4000/500, range ratio 0.9, burstiness 0.7, seed 42,
  num_prompts = 250 x rate with at least 100, here at most 500 for cost),
  not the office mix, so it can be checked against the suite's measurements.
  Searched the same way on a 0.01 req/s grid. Capacity predicts what the
  suite's sweep measures, so by default it simulates the suite's own run:
  seed 42, the very request lengths and arrival times it sent (as validate
  predicts a seeded run on its own sample). With more replications (other
  seeds) the rate passes when more than half of them do (the median). A 90%
  rule would mostly measure the noise of a p95 over 100 requests: one
  cluster of long prompts moves it by seconds.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Generator, Sequence

import numpy as np

from .load import OpenLoop
from .office import (ROUTINGS, Office, OfficeError, Session, office_sessions, per_class,
                     simulate_sessions, summarize_office)
from .profile import Profile, ProfileError
from .summary import DEFAULT_PERCENTILES, _pct_key
from .uncertainty import draw_profile
from .whatif import apply_edits
from .workload import RandomWorkload


class PlanError(ValueError):
    """Bad plan input; the message is one line for the user."""


# ------------------------------------------------------------------ SLA

METRICS = ("ttft", "tpot", "itl", "e2el", "gateway_wait")
_UNITS = {"ms": 1.0, "s": 1000.0, "sec": 1000.0, "min": 60000.0}
_SLA_RE = re.compile(r"^\s*(p\d+(?:\.\d+)?|mean|median)_([a-z0-9_]+?)\s*(<=|<)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)"
                     r"\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Constraint:
    """stat_metric <= bound (or <): e.g. p95 of TTFT at most 3000 ms."""

    stat: str  # "p95", "p50", "mean", ...
    metric: str  # "ttft", "tpot", "itl", "e2el", "gateway_wait"
    bound_ms: float
    strict: bool = False
    text: str = ""

    @property
    def label(self) -> str:
        return f"{self.stat}_{self.metric}"

    @property
    def key(self) -> str:
        """The summary key it reads (summarize_open's names)."""
        return f"{self.stat}_{self.metric}_ms"

    @property
    def percentile(self) -> float | None:
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    def ok(self, value_ms: float) -> bool:
        return value_ms < self.bound_ms if self.strict else value_ms <= self.bound_ms

    def __str__(self) -> str:
        return self.text or f"{self.label}{'<' if self.strict else '<='}{fmt_ms(self.bound_ms)}"


def parse_sla(text: str) -> Constraint:
    """'p95_ttft<=3s', 'p50_tpot <= 150ms', 'median_e2el<1min' -> Constraint."""
    m = _SLA_RE.match(text.lower())
    if not m:
        raise PlanError(f"--sla {text!r}: expected STAT_METRIC<=VALUE with a unit, e.g. p95_ttft<=3s or p50_tpot<=150ms")
    stat, metric, op, value, unit = m.groups()
    if metric not in METRICS:
        raise PlanError(f"--sla {text!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if stat == "median":
        stat = "p50"
    if stat.startswith("p"):
        p = float(stat[1:])
        if not 0 < p < 100:
            raise PlanError(f"--sla {text!r}: percentile must be between 0 and 100")
        stat = _pct_key(p)
    if not unit:
        raise PlanError(f"--sla {text!r}: give a unit (ms, s or min)")
    if unit not in _UNITS:
        raise PlanError(f"--sla {text!r}: unknown unit {unit!r} (use ms, s or min)")
    bound = float(value) * _UNITS[unit]
    if not bound > 0:
        raise PlanError(f"--sla {text!r}: the bound must be > 0")
    return Constraint(stat, metric, bound, op == "<", text.strip())


DEFAULT_SLA = ("p95_ttft<=3s", "p99_ttft<=6s", "p50_tpot<=150ms")


def parse_slas(texts: Sequence[str] | None) -> list[Constraint]:
    out = [parse_sla(t) for t in (texts or DEFAULT_SLA)]
    if not out:
        raise PlanError("at least one --sla constraint is needed")
    return out


def fmt_ms(ms: float | None) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms >= 60000 and ms % 60000 == 0:
        return f"{ms / 60000:g}min"
    if ms >= 1000:
        return f"{ms / 1000:.3g}s"
    return f"{ms:.3g}ms"


# ------------------------------------------------------------------ scenarios (what-ifs)

SCENARIO_KEYS = ("boxes", "routing", "prefix_hit")


@dataclass(frozen=True)
class Scenario:
    """A named what-if: profile edits (whatif.apply_edits) plus serving-setup keys.

    boxes: identical engines behind a router; routing: round-robin or
    least-loaded; prefix_hit: prefix-cache hit rate (share of prompt tokens
    that need no prefill).
    """

    name: str = "base"
    edits: tuple[str, ...] = ()
    boxes: int = 1
    routing: str = "round-robin"
    prefix_hit: float = 0.0

    def __post_init__(self):
        if self.boxes < 1:
            raise PlanError(f"boxes must be >= 1, got {self.boxes}")
        if self.routing not in ROUTINGS:
            raise PlanError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        if not 0.0 <= self.prefix_hit < 1.0:
            raise PlanError(f"prefix_hit must be in [0, 1), got {self.prefix_hit}")

    def apply(self, profile: Profile) -> Profile:
        return apply_edits(profile, self.edits) if self.edits else profile

    def with_edits(self, edits: Sequence[str], name: str | None = None) -> "Scenario":
        """This scenario plus `key=value` edits; serving-setup keys are split off."""
        kw: dict = {}
        prof: list[str] = []
        for e in edits:
            if "=" not in e:
                raise PlanError(f"expected KEY=VALUE, got {e!r}")
            k, v = (s.strip() for s in e.split("=", 1))
            k = k.replace("-", "_")
            if k == "boxes":
                try:
                    kw["boxes"] = int(v)
                except ValueError:
                    raise PlanError(f"boxes must be a whole number, got {v!r}") from None
            elif k == "routing":
                kw["routing"] = v.replace("_", "-")
            elif k in ("prefix_hit", "prefix_cache_hit"):
                try:
                    kw["prefix_hit"] = float(v)
                except ValueError:
                    raise PlanError(f"prefix_hit must be a number, got {v!r}") from None
            else:
                prof.append(f"{k}={v}")
        return replace(self, name=name or self.name, edits=self.edits + tuple(prof), **kw)

    def describe(self) -> dict:
        return {"name": self.name, "edits": list(self.edits), "boxes": self.boxes, "routing": self.routing,
                "prefix_hit": self.prefix_hit}


def parse_scenario(text: str, base: Scenario | None = None) -> Scenario:
    """'fp8:weights=fp8,max_num_seqs=64', 'two:boxes=2,routing=least-loaded', 'base'."""
    base = base or Scenario()
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise PlanError(f"--compare {text!r}: a scenario needs a name, e.g. fp8:weights=fp8")
    edits = [e.strip() for e in rest.split(",") if e.strip()] if colon else []
    if not colon and "=" in name:
        edits, name = [name], name  # a bare 'weights=fp8' names itself
    return base.with_edits(edits, name=name)


# ------------------------------------------------------------------ settings and search

@dataclass(frozen=True)
class PlanSettings:
    replications: int = 10
    confidence: float = 0.9
    seed: int = 0
    staff_max: int = 5000
    tol: float = 0.05  # bisection stops when the bracket is within max(1, tol x lo) staff
    n_jobs: int | None = None  # None: the idle cores (default_jobs), or the active joblib backend's workers
    # Replications a point shows per step of its pass/fail decision (Evaluator.decide). The answer's
    # details (how many replications ran at the first failing staff count, the curve) depend on it, so
    # it is fixed here and not taken from the number of workers: 2, as two idle cores always ran it.
    batch: int = 2
    capacity: bool = True
    capacity_seed: int = 42  # the suite's --seed
    # Capacity predicts the suite's own sweep: replication 0 is its seed (42), so the
    # very requests and arrival times it sent; more replications add other seeds and
    # take the median (see the module doc).
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
    the workers (_drive). The steps are search_max's, unchanged."""
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


def default_jobs() -> int:
    """Idle cores: the cores idle right now (Linux: /proc/stat over 50 ms), else the
    cores minus the 1-minute load average; at least one.

    Workers on busy cores only add switching: on the 2-core development machine,
    with other jobs keeping the load near 4, two workers took 16 s where one took
    10 s for the same plan. The load average trails by a minute and counts our own
    last run: after one plan on an idle machine it read about 1, and the next plan
    took one core (7.6 s) where two answered in 4.3 s.
    """
    n = os.cpu_count() or 1
    idle = idle_cores()
    if idle is None:
        try:
            idle = n - os.getloadavg()[0]
        except (OSError, AttributeError):  # not available on every platform
            idle = float(n)
    return max(1, min(n, int(round(idle))))


def idle_cores(window_s: float = 0.05) -> float | None:
    """Cores idle over the next `window_s` seconds, from /proc/stat (None where there is none)."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return v[3] + v[4], sum(v)

    try:
        idle0, total0 = read()
        time.sleep(window_s)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def resolve_jobs(n_jobs: int | None) -> int:
    """None: the idle cores; -1: every core; else as given."""
    if n_jobs is None:
        return default_jobs()
    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, int(n_jobs))


def _parallel(tasks: list, n_jobs: int | None):
    """Run (fn, args) tasks through joblib, so a Dask/Ray backend set with
    joblib.parallel_config(backend=...) spreads them over a cluster unchanged
    (n_jobs None there: all of the backend's workers); one task runs here."""
    if not tasks:
        return []
    if len(tasks) == 1:
        return [fn(*args) for fn, args in tasks]
    from joblib import Parallel, delayed
    return Parallel(n_jobs=-1 if n_jobs is None else n_jobs)(delayed(fn)(*args) for fn, args in tasks)


def _custom_backend() -> bool:
    """Whether the caller set a joblib backend (Dask, Ray, threads) with joblib.parallel_config."""
    if "joblib" not in sys.modules:  # nobody set one, and importing joblib to ask would cost 40 ms
        return False
    try:
        from joblib.parallel import get_active_backend
        backend, _ = get_active_backend()
        return type(backend).__name__ != "LokyBackend"
    except Exception:  # joblib internals vary between versions
        return False


def _percentiles(slas: Sequence[Constraint]) -> tuple[float, ...]:
    extra = {c.percentile for c in slas if c.percentile is not None}
    return tuple(sorted(set(DEFAULT_PERCENTILES) | extra))


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


Task = tuple  # (evaluator, point, replication)


class Evaluator:
    """Replicated summaries per staff count (or rate), each computed once.

    `cache[p]` holds what the answers read of point p: replications 0, 1, 2, ...
    in order, as many as the searches asked for (`decide` asks at least `batch`
    more at a time). So which replications a point shows depends on their
    results only, never on how many workers ran them or in which order they
    finished: a plan on one core, on two, or on a Dask cluster is the same plan. Workers may run more than was asked (a cluster runs every
    replication of a point at once, idle local workers start the next ones);
    those wait in `done` until a search asks for them.

    `decide` stops a point early once its pass/fail outcome can no longer change:
    with R = 10 and 9 needed, two failing replications settle it. The outcome is
    the one all R replications would give, so early stopping changes cost, not
    answers.
    """

    def __init__(self, fn: Callable, args: Callable[[object, int], tuple], replications: int,
                 progress: Callable[[str], None] | None = None, label: str = "staff", batch: int = 2):
        self.fn = fn
        self.args = args
        self.R = replications
        self.batch = max(1, int(batch))
        self.cache: dict = {}
        self.done: dict = {}  # (point, replication) -> summary, shown in `cache` or not yet
        self.progress = progress
        self.label = label

    def want(self, p, k: int | None = None) -> tuple:
        """A wait for replications 0..k-1 of p (default: all R)."""
        return (self, p, self.R if k is None else min(k, self.R))

    def missing(self, p, k: int) -> list[Task]:
        """Replications below k of p that are neither shown nor computed."""
        have = len(self.cache.get(p, ()))
        return [(self, p, r) for r in range(have, k) if (p, r) not in self.done]

    def spare(self, p, k: int) -> list[Task]:
        """The replications of p a search may ask for after the first k (and after those shown)."""
        start = max(k, len(self.cache.get(p, ())))
        return [(self, p, r) for r in range(start, self.R) if (p, r) not in self.done]

    def reveal(self, p, k: int) -> None:
        reps = self.cache.setdefault(p, [])
        if len(reps) < k:
            reps.extend(self.done.pop((p, r)) for r in range(len(reps), k))
            if self.progress:
                self.progress(f"{self.label} {p}: {len(reps)} replications")

    def __getitem__(self, p) -> list[dict]:
        return self.cache[p]

    def decide(self, p, ok: Callable[[dict], bool], need: int) -> Generator:
        """Whether at least `need` of the R replications satisfy `ok`, stopping early once
        settled (a generator for _drive: it yields the replications it waits for)."""
        while True:
            reps = self.cache.get(p, [])
            n_ok = sum(1 for r in reps if ok(r))
            n_bad = len(reps) - n_ok
            if n_ok >= need:
                return True
            if n_bad > self.R - need or len(reps) >= self.R:
                return False
            # the fewest further replications that could settle it, at least a batch
            settle = min(need - n_ok, self.R - need + 1 - n_bad)
            yield [self.want(p, len(reps) + max(settle, self.batch))]


def _drive(searches: Sequence[Generator], n_jobs: int | None, progress: Callable[[str], None] | None = None) -> list:
    """Run search generators side by side until each returns; their return values, in order.

    A search yields a list of waits (evaluator, point, k) and resumes once
    replications 0..k-1 of each are computed and shown in the evaluator's cache.
    Searches over one evaluator only ever see more replications of a point than
    they asked for, which does not change a settled outcome (Evaluator.decide).
    What runs the tasks (this process, local worker processes, a joblib backend
    such as Dask) decides the speed, not the answer.
    """
    runner = _runner(n_jobs)
    if progress:
        progress(f"workers: {runner.describe()}")
    out: list = [None] * len(searches)
    waiting: dict[int, list] = {}

    def advance(i: int) -> None:
        try:
            waiting[i] = searches[i].send(None)
        except StopIteration as stop:
            out[i] = stop.value
            waiting.pop(i, None)

    try:
        for i in range(len(searches)):
            advance(i)
        while waiting:
            ready = [i for i, ws in waiting.items() if not any(ev.missing(p, k) for ev, p, k in ws)]
            if ready:
                for i in ready:
                    for ev, p, k in waiting[i]:
                        ev.reveal(p, k)
                    advance(i)
                continue
            waits = [w for ws in waiting.values() for w in ws]
            needed = list(dict.fromkeys(t for ev, p, k in waits for t in ev.missing(p, k)))
            spare = list(dict.fromkeys(t for ev, p, k in waits for t in ev.spare(p, k)))
            runner.step(needed, spare)
    finally:
        runner.close()
    return out


def _runner(n_jobs: int | None):
    if _custom_backend():
        return _BackendRunner(n_jobs)
    n = resolve_jobs(n_jobs)
    return _InlineRunner() if n == 1 else _PoolRunner(n)


class _InlineRunner:
    """One worker: the task a search waits for runs in this process, nothing else."""

    def describe(self) -> str:
        return "1 (this process)"

    def step(self, needed: list[Task], spare: list[Task]) -> None:
        ev, p, r = needed[0]
        ev.done[(p, r)] = ev.fn(*ev.args(p, r))

    def close(self) -> None:
        pass


class _PoolRunner:
    """Local worker processes, handed one task each as soon as they are free (not in
    rounds, where every worker waits for the slowest task of the round): first the
    tasks searches wait for, and when none is left, the next replications of the
    points they wait on, which a passing point asks for next.

    Workers are forked where the platform can: a fork starts in milliseconds with
    everything imported, where a fresh interpreter (loky's workers) spent about
    half a second of CPU per worker importing numpy, simpy and the simulator.
    """

    def __init__(self, workers: int):
        import multiprocessing as mp
        import queue
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        self.pool = mp.get_context(method).Pool(workers)
        self.workers = workers
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.flight: set = set()

    def describe(self) -> str:
        return f"{self.workers} local processes"

    def _submit(self, t: Task) -> None:
        ev, p, r = t
        self.flight.add(t)
        self.pool.apply_async(ev.fn, ev.args(p, r), callback=lambda res: self.results.put((t, res, None)),
                              error_callback=lambda err: self.results.put((t, None, err)))

    def step(self, needed: list[Task], spare: list[Task]) -> None:
        for t in needed + spare:
            if len(self.flight) >= self.workers:
                break
            if t not in self.flight:
                self._submit(t)
        got = [self.results.get()]
        while not self.results.empty():  # whatever else finished meanwhile
            got.append(self.results.get())
        for t, res, err in got:
            self.flight.discard(t)
            if err is not None:
                raise err
            ev, p, r = t
            ev.done[(p, r)] = res

    def close(self) -> None:
        # tasks still running are replications no search asked for: stop them, do not wait
        self.pool.terminate()
        self.pool.join()


class _BackendRunner:
    """A joblib backend the caller set (joblib.parallel_config(backend="dask"), Ray, ...):
    rounds of work through joblib, each with every replication of every point a
    search waits on, so that a cluster's workers all have work."""

    def __init__(self, n_jobs: int | None):
        self.n_jobs = n_jobs

    def describe(self) -> str:
        from joblib.parallel import get_active_backend
        return f"joblib backend {type(get_active_backend()[0]).__name__}"

    def step(self, needed: list[Task], spare: list[Task]) -> None:
        tasks = list(dict.fromkeys(needed + spare))
        out = _parallel([(ev.fn, ev.args(p, r)) for ev, p, r in tasks], self.n_jobs)
        for (ev, p, r), res in zip(tasks, out):
            ev.done[(p, r)] = res

    def close(self) -> None:
        pass


def level(values: Sequence[float], need: int) -> float:
    """The value that `need` of the replications stay at or under (need-th smallest)."""
    v = sorted(values)
    return float(v[min(need, len(v)) - 1])


def _check(reps: list[dict], slas: Sequence[Constraint], need: int) -> dict[str, dict]:
    out = {}
    for c in slas:
        vals = [float(r.get(c.key, math.nan)) for r in reps]
        vals = [v for v in vals if v == v]
        if not vals:
            raise PlanError(f"{c.label}: no such summary value (gateway_wait needs --max-concurrency)")
        n_ok = sum(1 for v in vals if c.ok(v))
        lv = level(vals, need)
        out[c.label] = {"ok": n_ok >= need, "passed": n_ok, "level_ms": lv, "bound_ms": c.bound_ms,
                        "median_ms": float(np.median(vals)), "lo_ms": float(np.percentile(vals, 5)),
                        "hi_ms": float(np.percentile(vals, 95)), "severity": lv / c.bound_ms}
    return out


def _binding(reps: list[dict], slas: Sequence[Constraint]) -> tuple[str, dict]:
    """At the first failing staff count: the constraint failing in most replications
    (of those the search ran there), ties broken by how far over its bound it is."""
    best, key = None, None
    for c in slas:
        vals = [float(r.get(c.key, math.nan)) for r in reps]
        n_bad = sum(1 for v in vals if not c.ok(v))
        worst = max((v for v in vals if v == v), default=math.nan)
        k = (n_bad, worst / c.bound_ms if worst == worst else 0.0)
        if key is None or k > key:
            best, key = c, k
            detail = {"failed": n_bad, "replications": len(vals), "worst_ms": worst, "bound_ms": c.bound_ms,
                      "median_ms": float(np.median(vals))}
    return best.label, detail


# ------------------------------------------------------------------ results

@dataclass
class PlanResult:
    staff: int
    unbounded: bool  # the search bound passed: the answer is at least `staff`
    first_failing: int | None
    binding: str | None
    binding_detail: dict | None
    slas: list[Constraint]
    office: Office
    scenario: Scenario
    profile_name: str
    settings: PlanSettings
    rps: float  # the office's request rate at `staff`
    at_answer: dict[str, dict]
    at_office: dict[str, dict]
    feel: dict  # medians at the office's own staff count
    classes: dict
    capacity_rps: dict[str, float | None] = field(default_factory=dict)
    capacity_ladder_rps: dict[str, float | None] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # per evaluated staff count, for plots
    evaluations: int = 0
    # the constraints at the answer with the fitted parameters drawn per replication (a fitted profile's
    # uncertainty): how sure the answer is, beside the answer itself
    at_answer_uncertain: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "staff": self.staff, "binding": self.binding, "capacity_rps": self.capacity_rps,
            "rps": self.rps, "unbounded": self.unbounded, "first_failing_staff": self.first_failing,
            "binding_detail": self.binding_detail,
            "sla": [{"constraint": str(c), "key": c.key, "bound_ms": c.bound_ms, "strict": c.strict} for c in self.slas],
            "confidence": self.settings.confidence, "replications": self.settings.replications,
            "per_person_rps": self.office.office_rps(1),
            "at_staff": self.at_answer, "at_office_staff": self.at_office, "feel_at_office_staff": self.feel,
            "classes_at_office_staff": self.classes,
            "capacity_ladder_rps": self.capacity_ladder_rps,
            "capacity_workload": "random 4000/500, range ratio 0.9, burstiness 0.7, seed 42 (11-rate-sweep)",
            "profile": self.profile_name, "scenario": self.scenario.describe(), "office": self.office.describe(),
            "evaluated": self.curve, "evaluations": self.evaluations,
            "at_staff_with_fit_uncertainty": self.at_answer_uncertain,
        }


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
         progress: Callable[[str], None] | None = None, cache: dict | None = None) -> PlanResult:
    """The largest staff count meeting every constraint, what binds, and capacity in req/s.

    `cache` (staff -> replication summaries) lets several SLAs share one set of
    simulations; pass the same dict only with the same profile, office,
    scenario, seed and percentiles.

    The staff search, the fit-uncertainty replications and the capacity searches
    run side by side on the same workers (_drive); each sees exactly the
    replications it would see alone, so the answer does not depend on the workers.
    """
    scenario = scenario or Scenario()
    settings = settings or PlanSettings()
    slas = [c if isinstance(c, Constraint) else parse_sla(c) for c in (slas if slas else DEFAULT_SLA)]
    if office.max_concurrency is None and any(c.metric == "gateway_wait" for c in slas):
        raise PlanError("gateway_wait constraints need a concurrency cap (--max-concurrency)")
    prof = scenario.apply(profile)
    pcts = _percentiles(slas)
    _refuse_if_refused(prof, [q for ses in office_sessions(office, max(1, office.staff), settings.seed,
                                                          prof.prompt_format) for q in ses.specs],
                       "requests of the office (one replication)")
    if settings.capacity:
        _refuse_if_capacity_refused(prof, settings, "; --no-capacity skips it")
    # cores are chosen once, before our own workers add to the load average
    settings = replace(settings, n_jobs=None if _custom_backend() else resolve_jobs(settings.n_jobs))
    need = settings.need
    staff_ref = max(1, office.staff)
    ev = Evaluator(_office_rep, lambda n, r: (prof, office, n, scenario, settings.seed + r, pcts, n == staff_ref),
                   settings.replications, progress, "staff", settings.batch)
    if cache is not None:
        ev.cache = cache
    ev_u = Evaluator(_office_rep_drawn, lambda n, r: (prof, office, n, scenario, settings.seed + r, pcts, False),
                     settings.replications, progress, "staff (fit uncertainty)", settings.batch)
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
        cap_ev = _capacity_evaluator(prof, scenario, settings, progress)
        searches += [_capacity_search(cap_ev, settings, thr) for thr in settings.capacity_thresholds_s]
    (lo, hi), *cap_los = _drive(searches, settings.n_jobs, progress)

    binding, detail = None, None
    if hi is not None:
        binding, detail = _binding(ev.cache[hi], slas)
        detail = {"staff": hi, **detail}
    at_office = _check(ev[staff_ref], slas, need)
    at_answer = _check(ev[lo], slas, need) if lo > 0 else {}
    curve = []
    for n in sorted(ev.cache):
        reps = ev.cache[n]
        chk = _check(reps, slas, need)
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
        result.at_answer_uncertain = _check(ev_u[lo], slas, need)
    if settings.capacity:
        result.capacity_rps, result.capacity_ladder_rps = _capacity_answer(settings, cap_los)
    return result


def _capacity_evaluator(profile: Profile, scenario: Scenario, settings: PlanSettings,
                        progress: Callable[[str], None] | None) -> Evaluator:
    """The suite's run at rate k/100 req/s, replication r (seed 42 + r)."""
    return Evaluator(_rate_rep, lambda k, r: (profile, k / 100.0, scenario, settings.capacity_seed + r, r),
                     settings.capacity_replications, progress, "rate x0.01", settings.batch)


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
        below = [x for x in SUITE_LADDER if out[key] is not None and x <= out[key] + 1e-9]
        ladder[key] = max(below) if below else None
    return out, ladder


def capacity(profile: Profile, scenario: Scenario | None = None, settings: PlanSettings | None = None,
             progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Highest rate (0.01 req/s grid) whose p95 TTFT stays under each threshold, on the
    11-rate-sweep workload; and the same read on the suite's ladder of rates. The
    thresholds' searches run side by side: one rate each at a time keeps two workers busy."""
    scenario = scenario or Scenario()
    settings = settings or PlanSettings()
    prof = scenario.apply(profile)  # as plan() searches its capacity
    _refuse_if_capacity_refused(prof, settings)
    n_jobs = None if _custom_backend() else resolve_jobs(settings.n_jobs)
    ev = _capacity_evaluator(prof, scenario, settings, progress)
    los = _drive([_capacity_search(ev, settings, thr) for thr in settings.capacity_thresholds_s], n_jobs, progress)
    return _capacity_answer(settings, los)


# ------------------------------------------------------------------ text

def format_plan(r: PlanResult) -> str:
    o = r.office
    mix = ", ".join(f"{c[0]} {c[1]:g}" if not hasattr(c, "name") else f"{c.name} {c.share:g}" for c in o.mix)
    per_h = o.office_rps(1) * 3600
    lines = [f"capsim plan: profile {r.profile_name}" + (f", scenario {r.scenario.name}" if r.scenario.name != "base" else "")
             + (f" ({', '.join(r.scenario.edits)})" if r.scenario.edits else "")
             + (f", {r.scenario.boxes} boxes ({r.scenario.routing})" if r.scenario.boxes > 1 else "")
             + (f", prefix-cache hit {r.scenario.prefix_hit:.0%}" if r.scenario.prefix_hit else ""),
             f"office: {per_h:.3g} requests/person/hour"
             + (f" at {o.start_hour():g}h ({o.profile_name()} day)" if o.profile_name() else "")
             + f", mix {mix}, burstiness {o.burstiness:g}"
             + (f", burst x{o.burst_factor:g} for {o.burst_s / 60:g} min" if o.burst_s > 0 else "")
             + (f", max {o.max_concurrency} in flight" if o.max_concurrency else ""),
             f"SLA, each met in >= {r.settings.need} of {r.settings.replications} replications: "
             + ", ".join(str(c) for c in r.slas), ""]
    if r.staff == 0:
        lines.append(f"Largest staff: 0 (the SLA fails already at {r.first_failing} staff)")
    else:
        lines.append(f"Largest staff: {'>= ' if r.unbounded else ''}{r.staff}  ({r.rps:.3g} req/s)")
    if r.binding:
        d = r.binding_detail
        lines.append(f"Binds first: {r.binding} (at {d['staff']} staff it fails in {d['failed']} of {d['replications']} "
                     f"replications run there; median {fmt_ms(d['median_ms'])}, worst {fmt_ms(d['worst_ms'])}, "
                     f"bound {fmt_ms(d['bound_ms'])})")
    elif r.unbounded:
        lines.append(f"Binds first: nothing up to the search bound of {r.settings.staff_max} staff (--staff-max)")
    lines.append("")
    head = f"{'constraint':<18} {'bound':>8} {'at ' + str(o.staff) + ' staff':>22}"
    if r.staff:
        head += f" {'at ' + str(r.staff) + ' staff':>22}"
    if r.at_answer_uncertain:
        head += f" {'fit uncertainty, 5-95%':>26}"
    lines.append(head + f"   (the value met in {r.settings.need} of {r.settings.replications} replications)")
    for c in r.slas:
        a = r.at_office[c.label]
        row = f"{c.label:<18} {fmt_ms(c.bound_ms):>8} {fmt_ms(a['level_ms']) + (' ok' if a['ok'] else ' FAIL'):>22}"
        if r.staff:
            b = r.at_answer[c.label]
            row += f" {fmt_ms(b['level_ms']) + (' ok' if b['ok'] else ' FAIL'):>22}"
        if r.at_answer_uncertain:
            u = r.at_answer_uncertain[c.label]
            row += f" {fmt_ms(u['lo_ms']) + ' - ' + fmt_ms(u['hi_ms']):>26}"
        lines.append(row)
    if r.at_answer_uncertain:
        lines.append(f"(fit uncertainty: the replications at {r.staff} staff run again with the profile's fitted "
                     "parameters and model error drawn per replication)")
    f = r.feel
    lines += ["", f"How {o.staff} staff feel it (median of replications): TTFT p50 {fmt_ms(f.get('median_ttft_ms'))}, "
              f"p95 {fmt_ms(f.get('p95_ttft_ms'))}, p99 {fmt_ms(f.get('p99_ttft_ms'))}; "
              f"{1000 / f['median_tpot_ms']:.1f} tok/s per user (TPOT p50 {fmt_ms(f['median_tpot_ms'])}); "
              f"E2EL p95 {fmt_ms(f.get('p95_e2el_ms'))}; peak {f.get('max_concurrent_requests', 0):.0f} "
              + ("in flight or queued at the gateway" if o.max_concurrency and o.queue_in_ttft else "in flight")
              if f.get("median_tpot_ms") else f"How {o.staff} staff feel it: no completed requests"]
    if len(r.classes) > 1:
        for name, c in r.classes.items():
            lines.append(f"  {name:<10} TTFT p50 {fmt_ms(c['median_ttft_ms']):>7}  p95 {fmt_ms(c['p95_ttft_ms']):>7}  "
                         f"TPOT p50 {fmt_ms(c['median_tpot_ms']):>7}  E2EL p95 {fmt_ms(c['p95_e2el_ms']):>7}  "
                         f"prompt {c['mean_prompt_tokens']:.0f} tok")
    if r.capacity_rps:
        ks = list(r.capacity_rps)
        lines += ["", f"Capacity on the 11-rate-sweep workload (random 4000/500, range 0.9, burstiness 0.7, "
                      f"seed {r.settings.capacity_seed}):",
                  f"  {'p95 TTFT under':<16}" + "".join(f"{k:>8}" for k in ks),
                  f"  {'req/s':<16}" + "".join(f"{_rps(r.capacity_rps[k]):>8}" for k in ks),
                  f"  {'suite ladder':<16}" + "".join(f"{_rps(r.capacity_ladder_rps.get(k)):>8}" for k in ks)]
    return "\n".join(lines)


def _rps(v: float | None) -> str:
    return "none" if v is None else f"{v:.2f}"


def format_compare(results: Sequence[PlanResult]) -> str:
    """Scenarios side by side, one column each."""
    names = [r.scenario.name for r in results]
    rows: list[tuple[str, list[str]]] = [
        ("largest staff", [("≥" if r.unbounded else "") + str(r.staff) for r in results]),
        ("office req/s at that staff", [f"{r.rps:.3g}" for r in results]),
        ("binds first", [r.binding or "-" for r in results]),
    ]
    for c in results[0].slas:
        rows.append((f"{c.label} at {results[0].office.staff} staff", [fmt_ms(r.at_office[c.label]["level_ms"])
                                                                       for r in results]))
    rows.append((f"tok/s per user at {results[0].office.staff}",
                 [f"{1000 / r.feel['median_tpot_ms']:.1f}" if r.feel.get("median_tpot_ms") else "-" for r in results]))
    if results[0].capacity_rps:
        for k in results[0].capacity_rps:
            rows.append((f"capacity p95 TTFT<{k} (req/s)", [_rps(r.capacity_rps.get(k)) for r in results]))
    rows.append(("edits", [", ".join(r.scenario.edits + tuple(
        x for x in (f"boxes={r.scenario.boxes}" if r.scenario.boxes > 1 else "",
                    f"routing={r.scenario.routing}" if r.scenario.boxes > 1 else "",
                    f"prefix_hit={r.scenario.prefix_hit:g}" if r.scenario.prefix_hit else "") if x)) or "-"
                         for r in results]))
    w0 = max(len(k) for k, _ in rows)
    widths = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    out = [f"{'':<{w0}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    for k, vals in rows:
        out.append(f"{k:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, widths)))
    return "\n".join(out)


# ------------------------------------------------------------------ plot

def plot_plan(results: PlanResult | Sequence[PlanResult], path: str | None = None):
    """Each constraint's metric against staff: median and 5-95% band over replications,
    the value met with the plan's confidence (dashed), the SLA line, the answer (dotted).

    Saves to `path` (and closes the figure) when given; otherwise returns the open
    figure, which a notebook shows inline.
    """
    import matplotlib.pyplot as plt

    rs = [results] if isinstance(results, PlanResult) else list(results)
    slas = rs[0].slas
    fig, axes = plt.subplots(1, len(slas), figsize=(4.6 * len(slas), 3.8), squeeze=False)
    for ax, c in zip(axes[0], slas):
        for i, r in enumerate(rs):
            pts = [p for p in r.curve if c.label in p["metrics"]]
            x = [p["staff"] for p in pts]
            med = np.array([p["metrics"][c.label]["median_ms"] for p in pts]) / 1000
            lo = np.array([p["metrics"][c.label]["lo_ms"] for p in pts]) / 1000
            hi = np.array([p["metrics"][c.label]["hi_ms"] for p in pts]) / 1000
            lv = np.array([p["metrics"][c.label]["level_ms"] for p in pts]) / 1000
            color = f"C{i}"
            label = r.scenario.name if len(rs) > 1 else "median"
            ax.plot(x, med, "o-", color=color, ms=3, label=label)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(x, lv, "--", color=color, lw=1,
                    label=None if len(rs) > 1 else f"met in {r.settings.need} of {r.settings.replications}")
            if r.staff:
                ax.axvline(r.staff, color=color, ls=":", lw=1)
        ax.axhline(c.bound_ms / 1000, color="k", lw=1.2, label=f"SLA {fmt_ms(c.bound_ms)}")
        ax.set_title(c.label)
        ax.set_xlabel("staff")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rs[0].profile_name}: answer {', '.join(f'{r.scenario.name} {r.staff}' for r in rs)} staff"
                 f" (band: 5-95% of {rs[0].settings.replications} replications)", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


__all__ = ["Constraint", "PlanError", "PlanResult", "PlanSettings", "Scenario", "capacity", "format_compare",
           "format_plan", "parse_scenario", "parse_sla", "parse_slas", "plan", "plot_plan", "search_max",
           "OfficeError", "ProfileError"]
