"""`capsim plan`: parse flags, call simulator.plan.plan once per scenario, print.

Loaded on first use by the `capsim` group (capsim/cli.py's `LazyGroup`): its `LAZY_COMMANDS` entry
"plan" names `capsim.plan_cli:plan_cmd` and carries the help line `capsim --help` shows
without importing this module: keep it this command's own help (tests/test_cli_startup.py compares).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re

import click

from simulator.load import parse_duration
from simulator.office import DAY_PROFILES, DEFAULT_MIX, Office, parse_mix
from simulator.plan import (DEFAULT_SLA, PlanError, PlanSettings, Scenario, format_compare, format_plan,
                            parse_scenario, parse_slas, plan, plot_plan)
from simulator.profile import load_profile

from .errors import friendly
from .options import SET_VALUE, MultiValue, typed

def parse_burst(text: str) -> tuple[float, float]:
    """'5x15m' -> (factor 5, 900 s)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*x\s*(.+)", str(text).lower())
    if not m:
        raise PlanError(f"--burst: expected FACTORxDURATION such as 5x15m, got {text!r}")
    factor = float(m.group(1))
    dur = parse_duration(m.group(2), "--burst")
    if not factor > 0 or not dur > 0:
        raise PlanError(f"--burst: factor and duration must be > 0, got {text!r}")
    return factor, dur


def build_office(staff, rps, per_hour, per_day, day_profile, at_hour, mix, turns, think, burstiness, burst, monday,
                 max_concurrency, gateway_wait, requests, duration, warmup=None) -> Office:
    if staff is not None and staff < 1:  # 0 staff send nothing: no plan to print
        raise PlanError(f"--staff must be >= 1, got {staff}")
    given = [x is not None for x in (rps, per_hour, per_day)]
    if sum(given) > 1:
        raise PlanError("give only one of --rps, --per-hour and --per-day")
    if at_hour is not None and per_day is None and day_profile is None:
        raise PlanError("--at needs --per-day or --day-profile: a rate per hour (--rps, --per-hour) is the same at "
                        "every hour")
    staff = 25 if staff is None else staff
    kw: dict = {}
    if per_day is not None:
        kw["per_day"] = per_day
    elif per_hour is not None:
        kw["per_hour"] = per_hour
    elif rps is not None:
        if not (rps > 0 and math.isfinite(rps)):
            raise PlanError(f"--rps must be a finite number > 0, got {rps}")
        kw["per_hour"] = rps / staff * 3600.0
    else:
        kw["per_hour"] = 0.3 / 25 * 3600.0  # the seed's office: 25 staff at 0.3 req/s
    if monday and burst:
        raise PlanError("give only one of --burst and --monday")
    if monday:
        burst = "5x15m"  # the seed's test J: five times the office's load
    factor, burst_s = parse_burst(burst) if burst else (1.0, 0.0)
    if day_profile is not None and day_profile not in DAY_PROFILES:
        raise PlanError(f"--day-profile: unknown profile {day_profile!r} (known: {', '.join(DAY_PROFILES)})")
    return Office(staff=staff, day_profile=day_profile, at_hour=at_hour,
                  mix=parse_mix(mix) if mix else DEFAULT_MIX, turns=turns,
                  think_s=parse_duration(think, "--think"), burstiness=burstiness, burst_factor=factor,
                  burst_s=burst_s, max_concurrency=max_concurrency, queue_in_ttft=gateway_wait,
                  requests=requests, duration_s=parse_duration(duration, "--duration") if duration else None,
                  warmup_s=parse_duration(warmup, "--warmup") if warmup is not None else None, **kw)


@click.command("plan")
@click.option("--profile", "profile_path", default=None,
              help="Profile JSON file or shipped profile name (default: the seed's DGX Spark).")
@click.option("--set", "sets", cls=MultiValue, item=click.STRING, accept=SET_VALUE, metavar="KEY=VALUE",
              help="What-if edit, repeatable: max_num_batched_tokens=8192, max_num_seqs=64, weights=fp8|nvfp4|bf16, "
                   "kv_dtype=bf16, speed=1.5, step_model.flops=6e13, boxes=2, routing=least-loaded, prefix_hit=0.3.")
@click.option("--sla", "slas", cls=MultiValue, item=click.STRING, accept=r"[A-Za-z0-9_.]+\s*[<>=].*",
              metavar="CONSTRAINT",
              help=f"Repeatable, e.g. p95_ttft<=3s, p99_ttft<=6s, p50_tpot<=150ms, p95_e2el<=60s "
                   f"(default: {', '.join(DEFAULT_SLA)}).")
@click.option("--staff", type=int, default=None, help="Your office's staff count: the search starts here and the "
                                                       "report says how it feels at it [default: 25].")
@click.option("--rps", type=float, default=None, help="The office's total request rate at --staff "
                                                      "[default: 0.3, the seed's office].")
@click.option("--per-hour", type=float, default=None, help="Requests per person per hour (instead of --rps).")
@click.option("--per-day", type=float, default=None,
              help="Requests per person per working day, spread by --day-profile (default profile: office).")
@click.option("--day-profile", default=None, help=f"Rate by clock hour: {', '.join(DAY_PROFILES)}.")
@click.option("--at", "at_hour", type=float, default=None,
              help="Clock hour the simulated window starts (default: the day profile's busiest hour).")
@click.option("--mix", default=None, help="Shares of requests, e.g. chat=0.55,multiturn=0.25,rag=0.15,code=0.05 "
                                          "(the default) or just chat.")
@click.option("--turns", type=int, default=5, show_default=True, help="Turns of a multiturn conversation.")
@click.option("--think", default="30s", show_default=True, help="Mean think time between turns.")
@click.option("--burstiness", type=float, default=0.7, show_default=True,
              help="Gamma shape of the office's arrival gaps (1.0 = Poisson).")
@click.option("--burst", default=None, help="Monday-morning burst: FACTORxDURATION, e.g. 5x15m.")
@click.option("--monday", is_flag=True, help="Shorthand for --burst 5x15m (the seed's test J: fivefold load).")
@click.option("--max-concurrency", type=int, default=None, help="Gateway cap on requests in flight (test J: 25).")
@click.option("--gateway-wait/--no-gateway-wait", default=True, show_default=True,
              help="Count the wait at the gateway cap in TTFT and E2EL (--no-...: vllm bench serve's client clock).")
@click.option("--requests", type=int, default=250, show_default=True,
              help="Requests per simulated window and replication.")
@click.option("--duration", default=None, help="Simulate a window of this length instead (e.g. 1h).")
@click.option("--warmup", default=None, help="Office time simulated before the window, e.g. 5m (default: as long "
                                             "as the longest kind of job takes; none with a burst).")
@click.option("--boxes", type=int, default=1, show_default=True, help="Identical boxes behind a router.")
@click.option("--routing", type=click.Choice(["round-robin", "least-loaded"]), default="round-robin",
              show_default=True)
@click.option("--prefix-hit", type=float, default=0.0, show_default=True,
              help="Prefix-cache hit rate: share of prompt tokens that need no prefill.")
@click.option("--compare", "compares", cls=MultiValue, item=click.STRING, sep=None, accept=r"[A-Za-z0-9_][^\s]*",
              metavar="NAME[:KEY=VALUE,...]",
              help="A scenario to put side by side, repeatable: base, fp8:weights=fp8, "
                   "budget8k:max_num_batched_tokens=8192, two:boxes=2,routing=least-loaded.")
@click.option("--replications", type=int, default=10, show_default=True)
@click.option("--confidence", type=float, default=0.9, show_default=True,
              help="Share of replications in which every constraint must hold.")
@click.option("--capacity-replications", type=int, default=1, show_default=True,
              help="Seeds per rate of the capacity search: 1 is the suite's own run (seed 42); more take the median.")
@click.option("--staff-max", type=int, default=5000, show_default=True, help="Upper bound of the staff search.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--jobs", type=int, default=None, help="Worker processes (default: the idle cores; -1: every core).")
@click.option("--dask", "dask_address", default=None, metavar="tcp://HOST:PORT",
              help="Run the simulations on a Dask cluster: its scheduler's address (needs pip install "
                   "'capsim[dask]'). Same answer as a local run with the same seeds.")
@click.option("--dask-timeout", default="10s", show_default=True, help="How long to try to reach the Dask scheduler.")
@click.option("--no-capacity", is_flag=True, help="Skip the req/s capacity search (11-rate-sweep workload).")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Percentiles against staff with SLA lines and 5-95% bands.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verbose", is_flag=True, help="Progress on stderr.")
@friendly
def plan_cmd(profile_path, sets, slas, staff, rps, per_hour, per_day, day_profile, at_hour, mix, turns, think,
             burstiness, burst, monday, max_concurrency, gateway_wait, requests, duration, warmup, boxes, routing, prefix_hit,
             compares, replications, confidence, capacity_replications, staff_max, seed, jobs, dask_address, dask_timeout,
             no_capacity, plot_path, as_json, verbose):
    """How many staff can this box serve within an SLA, what binds first, and the
    box's capacity in req/s; optionally what-if scenarios side by side."""
    if plot_path:  # before any work is done
        from calibrate.plots import check_plot_path
        check_plot_path(plot_path)
    refuse_idle_options(dask_address, no_capacity)
    constraints = parse_slas(slas)
    office = build_office(staff, rps, per_hour, per_day, day_profile, at_hour, mix, turns, think, burstiness, burst,
                          monday, max_concurrency, gateway_wait, requests, duration, warmup)
    base = Scenario(boxes=boxes, routing=routing, prefix_hit=prefix_hit).with_edits(list(sets))
    scenarios = [parse_scenario(c, base) for c in compares] if compares else [base]
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise PlanError(f"--compare names must differ, got {', '.join(names)}")
    settings = PlanSettings(replications=replications, confidence=confidence, seed=seed, staff_max=staff_max,
                            n_jobs=jobs, capacity=not no_capacity,
                            capacity_replications=capacity_replications)
    profile = load_profile(profile_path)
    with contextlib.ExitStack() as stack:
        if verbose:  # the plan search's progress lines (logging), as they were always shown
            from .logs import stderr_lines
            stack.enter_context(stderr_lines("capsim.simulator.evaluator"))
        if dask_address:
            stack.enter_context(on_dask(dask_address, parse_duration(dask_timeout, "--dask-timeout")))
        results = [plan(profile, office, constraints, sc, settings, plot_points=8 if plot_path else 0)
                   for sc in scenarios]
    if plot_path:
        plot_plan(results if compares else results[0], plot_path)
    if as_json:
        out = results[0].to_json() if not compares else {"scenarios": [r.to_json() for r in results]}
        click.echo(json.dumps(_clean(out), indent=2))
    else:
        click.echo(format_plan(results[0]) if not compares else format_compare(results))
        if plot_path:
            click.echo(f"\nplot: {plot_path}")


def refuse_idle_options(dask_address, no_capacity) -> None:
    """An option that another turns off did nothing without a word: typed, it is a mistake."""
    ctx = click.get_current_context()
    if typed(ctx, "dask_timeout") and not dask_address:
        raise PlanError("--dask-timeout: only with --dask (the simulations run on this machine)")
    if typed(ctx, "capacity_replications") and no_capacity:
        raise PlanError("--capacity-replications: the capacity search is off (--no-capacity)")


@contextlib.contextmanager
def on_dask(address: str, timeout_s: float):
    """A client of the Dask scheduler at `address`, with joblib's Dask backend active:
    plan() then sends its replications to the cluster (simulator/evaluator.py, the joblib backend runner)."""
    try:
        import joblib
        from distributed import Client
    except ImportError:
        raise PlanError("--dask needs Dask's distributed package: pip install 'capsim[dask]'") from None
    # distributed logs each failed connection attempt on its own; the one line below says it all
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        client = Client(address, timeout=timeout_s, set_as_default=True)
    except (OSError, TimeoutError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        why = "" if reason.startswith("Timed out") else f" ({reason})"  # the timeout is said already
        raise PlanError(f"--dask: cannot reach the Dask scheduler at {address} within {timeout_s:g} s{why}") from None
    finally:
        quiet.setLevel(level)
    try:
        with joblib.parallel_config(backend="dask"):
            yield client
    finally:
        client.close()


def _clean(x):
    """JSON without NaN/inf (null instead) and with plain floats."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return None if (math.isnan(x) or math.isinf(x)) else x
    if hasattr(x, "item") and callable(x.item):
        return _clean(x.item())
    return x
