"""Checks `capsim simulate` makes before simulating: sizes it can run, requests the profile can serve.

Without them an absurd --num-prompts ran out of memory, and a load whose every
request exceeds max_model_len printed an all-zero table with exit 0.
"""
from __future__ import annotations

import math

import click
import simpy

from simulator.engine import Engine
from simulator.load import ClosedLoop
from simulator.profile import Profile
from simulator.workload import (FixedWorkload, PrefixRepetitionWorkload, RandomWorkload, RequestSpec, Workload,
                                random_length_bounds)

MAX_REQUESTS = 1_000_000  # per replication; a million requests already take minutes
MAX_REPLICATIONS = 1000


def check_range(value, flag: str, lo: int = 1, hi: int | None = None, what: str = "") -> None:
    if value is None:
        return
    if value < lo:
        raise click.BadParameter(f"must be >= {lo}, got {value}", param_hint=flag)
    if hi is not None and value > hi:
        raise click.BadParameter(f"{value} is more than capsim simulates{what} (at most {hi:,})", param_hint=flag)


def refusal(profile: Profile, spec: RequestSpec) -> str | None:
    """Why the simulated server refuses `spec` (max_model_len, KV capacity), as one clause; None if it serves it."""
    mml = profile.engine.max_model_len
    if spec.prompt_tokens + spec.max_tokens > mml:
        return (f"exceeds max_model_len of {mml} tokens (the smallest has {spec.prompt_tokens} prompt + "
                f"{spec.max_tokens} output tokens)")
    reason = Engine(simpy.Environment(), profile).reject_reason(spec)
    return None if reason is None else f"is refused by the profile's engine: {reason}"


def check_closed(profile: Profile, pattern: ClosedLoop) -> None:
    tests = pattern.tests()
    # prefix caching loads a test's contexts before each run of it (depth > 0)
    per_run = sum(c * (2 if pattern.prefix_caching and d else 1) for _, _, d, c in tests)
    total = per_run * (pattern.runs + int(pattern.warmup))
    if total > MAX_REQUESTS:
        raise click.ClickException(f"{total:,} requests (tests x --concurrency x --runs) are more than capsim "
                                   f"simulates in one run (at most {MAX_REQUESTS:,})")
    specs = sorted({FixedWorkload(pp, tg, d, pattern.prompt_scale).sample(1)[0] for pp, tg, d, _ in tests},
                   key=lambda s: (s.prompt_tokens + s.max_tokens, s.prompt_tokens))
    why = refusal(profile, specs[0])
    if why is not None and all(refusal(profile, s) for s in specs):
        raise click.ClickException(f"every request {why}")


def check_open(profile: Profile, wl: Workload) -> None:
    """A random workload whose smallest request is refused, or a prefix_repetition one (all its requests are
    alike): every request is."""
    if isinstance(wl, PrefixRepetitionWorkload):
        why = refusal(profile, wl.sample(wl.num_prefixes)[0])
    elif isinstance(wl, RandomWorkload):
        in_lo, _, out_lo, _ = random_length_bounds(wl.input_len, wl.output_len, wl.range_ratio,
                                                   wl.fmt.special_tokens)
        extra = wl.fmt.special_tokens + wl.fmt.chat_template_tokens + wl.prefix_len
        why = refusal(profile, RequestSpec(prompt_tokens=in_lo + extra, max_tokens=out_lo, output_tokens=out_lo))
    else:
        return
    if why is not None:
        raise click.ClickException(f"every request {why}")


def check_served(summary: dict) -> None:
    """After the fact, for workloads checked by no rule above: a run where nothing completed is an error."""
    done = summary.get("completed")
    if done is not None and not (isinstance(done, float) and math.isnan(done)) and done == 0:
        raise click.ClickException("no request completed: the profile's server refused every one "
                                   "(max_model_len or KV capacity)")
