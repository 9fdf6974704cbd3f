"""How long a model's answers run in llama-benchy's tests, from how long each test took.

llama-benchy 0.4.0 sends no ignore_eos, so a model that answers a book excerpt in a few hundred
tokens stops long before tg. Its tables do not say so, but the suite runner logs each test's wall
time: a test that took a tenth of what decoding tg tokens would take stopped early. The mean
answer length is what makes the simulated test take as long as the measured one; how alike the
lengths are (the shape of their gamma law) is what makes a batch's decode rate per request, its
total rate and its peak agree with the table, as answers that end early leave the others a
smaller batch. Design: docs/design/calibration.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

from simulator.profile import Profile
from simulator.sim import simulate_closed

from .results import ClosedRun

# What a test's wall time holds besides its batches: loading the tokenizer, the warmup and latency
# probes, the coherence test (seconds each).
OVERHEAD_S = 10.0
# A test decides its answer length only where decoding is a good part of its time: with the
# shortest answers it must take at least this share less than with every answer at tg.
MIN_DECODE_SHARE = 0.2
# And it must have taken at most half what full answers would. The fitted model misses a test's
# time by tens of percent (more where a model's layout is guessed): a smaller shortfall may be that
# miss, and lengths read off it would carry the miss into the batch costs (with 5 %, the boards of
# benchmarks/accuracy.py went 10.1 -> 8.9 % TPOT named but 13.5 -> 14.9 % anonymized).
MIN_SHORTFALL = 0.5
STEPS = 12  # bisection steps on log(length): within 0.3 % of the length
# Gamma shapes tried for the answer lengths: 1 is a constant chance of EOS per token (the most
# spread), 32 answers within about 20 % of each other.
SHAPES = (1.0, 4.0, 32.0)


def simulated_wall(profile: Profile, run: ClosedRun, scale: float, stop_mean: float | None) -> float:
    """Seconds the whole llama-benchy invocation takes on `profile`: each test's batch, once per
    run and once for its warmup, as the batches run one after another on an idle engine."""
    from .fit import closed_pattern  # fit uses this module

    pattern = closed_pattern(run, scale)
    pattern.stop_mean = stop_mean
    spans: dict[str, list[float]] = defaultdict(lambda: [math.inf, -math.inf])
    for r in simulate_closed(profile, pattern).records:
        s = spans[r.test]
        s[0] = min(s[0], r.start_time)
        s[1] = max(s[1], r.end_time if r.end_time is not None else r.start_time)
    return ((run.runs or 3) + 1) * sum(hi - lo for lo, hi in spans.values())


def estimate_stop_mean(profile: Profile, run: ClosedRun, scale: float) -> float | None:
    """The mean answer length (tokens, lengths of run.stop_shape) that makes the simulated test last
    as long as the measured one, or None: no wall time, no sign of early stops, or a test whose time
    decoding hardly moves."""
    if not run.wall_s:
        return None
    target = run.wall_s - OVERHEAD_S
    full = simulated_wall(profile, run, scale, None)
    shortest = simulated_wall(profile, run, scale, 1.0)
    if full - shortest < MIN_DECODE_SHARE * full or target > (1.0 - MIN_SHORTFALL) * full or target <= shortest:
        return None
    lo, hi = 0.0, math.log(8 * max(r.tg for r in run.rows))
    for _ in range(STEPS):
        mid = 0.5 * (lo + hi)
        if simulated_wall(profile, run, scale, math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def with_answer_lengths(profile: Profile, runs: list[ClosedRun], scale: float, loss) -> list[ClosedRun] | None:
    """The runs with the answer lengths their wall times imply, at the shape whose simulated
    figures `loss(runs)` finds closest to the tables; None when no test shows early stops."""
    best = None
    for shape in SHAPES:
        shaped = [replace(run, stop_shape=shape, stop_mean=None) for run in runs]
        shaped = [replace(run, stop_mean=estimate_stop_mean(profile, run, scale)) for run in shaped]
        if all(run.stop_mean is None for run in shaped):
            return None
        value = loss(shaped)
        if best is None or value < best[0]:
            best = (value, shaped)
    return best[1]
