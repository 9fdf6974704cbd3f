"""How long `capsim plan` takes to answer, end to end, as a user runs it.

Runs the real command line in a fresh process (interpreter start, imports, worker
start-up, the staff search and the capacity search all included) for:
  1. the seed's office: 25 staff at 0.3 req/s, ShareGPT-like chat (test I's office),
     the shipped Spark profile, the default SLA (target: under 10 s on a 2-core machine);
  2. the default office mix (chat, multi-turn, 8k RAG, long-output code) likewise;
  3. case 1 on one core (--jobs 1), to show what the second core buys.
Prints wall time, CPU time (the command and its workers) and the 1-minute load average
before each run: on a small shared machine other processes show up directly in the
wall time, so CPU seconds are the load-independent measure of the work.

Usage: python benchmarks/plan_speed.py [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TARGET_S = 10.0
CASES = [
    ("seed office, ShareGPT-like chat", ["--mix", "chat"]),
    ("seed office, default mix", []),
    ("seed office, ShareGPT-like chat, one core", ["--mix", "chat", "--jobs", "1"]),
]


def run(args: list[str]) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds (the command and its worker processes) and the JSON answer."""
    cmd = [sys.executable, "-m", "capsim", "plan", "--staff", "25", "--rps", "0.3", *args, "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"capsim plan failed: {out.stderr.strip()}")
    return wall, cpu, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (best and all are printed)")
    a = ap.parse_args()
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    worst_first = None
    for name, args in CASES:
        walls = []
        for _ in range(a.repeat):
            load = os.getloadavg()[0]
            wall, cpu, d = run(args)
            walls.append((wall, load, cpu))
        best = min(w for w, _, _ in walls)
        caps = ", ".join(f"{k}: {v if v is not None else 'none'}" for k, v in d["capacity_rps"].items())
        print(f"\n{name}: capsim plan {' '.join(args)}")
        print(f"  wall {best:.2f} s (runs: {', '.join(f'{w:.2f} s wall, {c:.1f} s CPU, load {l:.2f} before' for w, l, c in walls)}), "
              f"{d['evaluations']} staff counts simulated x {d['replications']} replications")
        print(f"  answer: {d['staff']} staff ({d['rps']:.3g} req/s), binds first: {d['binding']}; "
              f"capacity req/s at p95 TTFT {caps}")
        if worst_first is None:
            worst_first = best
    verdict = "meets" if worst_first < TARGET_S else "MISSES"
    print(f"\nseed office (case 1) answers in {worst_first:.2f} s: {verdict} the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
