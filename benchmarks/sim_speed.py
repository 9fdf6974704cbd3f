"""Simulator speed and memory, measured side by side in one run.

Prints:
  1. simulated seconds per wall second on the seed's test H shape (random 4000/500,
     range ratio 0.9, 200 prompts, 0.3 rps, burstiness 0.7), one core (target >= 5,000);
  2. fast-forward against step-by-step on decode-heavy work (the seed's run G:
     pp 256, tg 4096, c = 1/5/10, 3 runs; target >= 10x), with a check that both
     give identical records;
  3. peak memory (max RSS of a fresh process) simulating and summarising 100,000
     requests of test H's shape (target < 500 MB).

Usage: python benchmarks/sim_speed.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simulator.load import ClosedLoop, OpenLoop  # noqa: E402
from simulator.profile import load_profile  # noqa: E402
from simulator.sim import SimStats, simulate_closed, simulate_open  # noqa: E402
from simulator.summary import summarize_open  # noqa: E402
from simulator.workload import RandomWorkload  # noqa: E402


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def identical(a, b) -> bool:
    """Every RequestRecord field and the run's preemptions equal (tests.helpers.same_records)."""
    from tests.helpers import same_records

    try:
        same_records(a, b)
    except AssertionError:
        return False
    return True


def memory_child(n: int) -> None:
    prof = load_profile()
    specs = RandomWorkload(4000, 500, 0.9, fmt=prof.prompt_format).sample(n, 42)
    t = time.perf_counter()
    run = simulate_open(prof, specs, OpenLoop(0.3, 0.7, seed=42))
    s = summarize_open(run)
    wall = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{rss_mb:.1f} {wall:.2f} {run.duration:.0f} {s['completed']} {s['total_output_tokens']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller memory run (20,000 requests)")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        memory_child(a.memory_child)
        return
    prof = load_profile()

    # 1. test H's shape
    specs = RandomWorkload(4000, 500, 0.9, fmt=prof.prompt_format).sample(200, 42)
    pat = OpenLoop(0.3, 0.7, seed=42)
    st: list[SimStats] = []
    wall, run = best_of(lambda: simulate_open(prof, specs, pat, stats=st), 5)
    wall_step, run_step = best_of(lambda: simulate_open(prof, specs, pat, fast_forward=False), 3)
    print("1. test H shape (200 requests, 0.3 rps), one core")
    print(f"   simulated {run.duration:.0f} s in {wall * 1000:.1f} ms: {run.duration / wall:,.0f} simulated s per wall s "
          f"(target >= 5,000); {st[-1].steps} steps in {st[-1].events} events")
    print(f"   step-by-step: {run_step.duration / wall_step:,.0f} sim s/s; fast-forward speed-up {wall_step / wall:.1f}x; "
          f"identical records: {identical(run, run_step)}")

    # 2. decode-heavy: run G
    g = ClosedLoop(pp=[256], tg=[4096], concurrency=[1, 5, 10], runs=3)
    st_ff: list[SimStats] = []
    st_step: list[SimStats] = []
    wall_ff, run_ff = best_of(lambda: simulate_closed(prof, g, stats=st_ff), 3)
    wall_st, run_st = best_of(lambda: simulate_closed(prof, g, fast_forward=False, stats=st_step), 2)
    print("2. decode-heavy (run G: pp 256, tg 4096, c 1/5/10, 3 runs + warmups)")
    print(f"   fast-forward {wall_ff * 1000:.1f} ms ({st_ff[-1].events} events), step-by-step {wall_st * 1000:.1f} ms "
          f"({st_step[-1].events} events): {wall_st / wall_ff:.1f}x (target >= 10x); "
          f"identical records: {identical(run_ff, run_st)}")

    # 3. memory
    n = 20_000 if a.quick else 100_000
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                         check=True).stdout.split()
    rss, wall_m, dur, done, toks = out
    print(f"3. memory: {n:,} requests of test H's shape ({int(float(toks)):,} output tokens, {float(dur):,.0f} simulated s)")
    print(f"   peak RSS {float(rss):.0f} MB (target < 500 MB), wall {float(wall_m):.1f} s, completed {done}")


if __name__ == "__main__":
    main()
