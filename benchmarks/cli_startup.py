"""How long `capsim --help` and shell completion take to answer (issue 11: under 0.3 s on a 2-core machine).

Runs each command as a user's shell does, in a fresh process through the installed `capsim`
console script, N times:
  1. `capsim --help`
  2. `capsim simulate --help`
  3. a bash completion request, `capsim si<TAB>`
     (_CAPSIM_COMPLETE=bash_complete COMP_WORDS='capsim si' COMP_CWORD=1 capsim)
  4. `capsim plan --help`, a command from another module: it imports its module when asked,
     so this one is expected to pay for the library
and `python -c pass` as the floor no command can go under (interpreter start and site-packages).
Prints median and min wall seconds side by side, and which heavy modules (numpy, scipy, pandas,
matplotlib, simpy, httpx) `capsim --help` imports, from `python -X importtime`.

Wall time on a small shared machine includes whatever else runs on it: the 1-minute load average
is printed, and the min is the closest to the command's own cost. With --baseline DIR (a checkout
of older code, e.g. `git archive HEAD~1 | tar -x -C /tmp/old`) each run alternates with the same
command importing DIR's packages, so both see the same load, and their outputs are compared.

Usage: python benchmarks/cli_startup.py [--repeat N] [--baseline DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 0.3
HEAVY = ("numpy", "scipy", "pandas", "matplotlib", "simpy", "httpx")
COMPLETE_ENV = {"_CAPSIM_COMPLETE": "bash_complete", "COMP_WORDS": "capsim si", "COMP_CWORD": "1"}
CASES = [
    ("python -c pass", None, {}),
    ("capsim --help", ["--help"], {}),
    ("capsim simulate --help", ["simulate", "--help"], {}),
    ("complete 'capsim si'", [], COMPLETE_ENV),
    ("capsim plan --help", ["plan", "--help"], {}),
]


def capsim_script() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "capsim")
    if not os.path.exists(script):
        raise SystemExit(f"no console script {script}: pip install -e . in this interpreter's environment")
    return script


def command(args: list[str] | None) -> list[str]:
    return [sys.executable, "-c", "pass"] if args is None else [capsim_script(), *args]


def env_for(src: str, extra: dict) -> dict:
    # PYTHONPATH comes before the editable install's finder, so the console script imports the
    # packages of `src`; set for both sides, so both pay the same extra sys.path entry
    return {**os.environ, "PYTHONPATH": src, "COLUMNS": "80", **extra}


def run(args: list[str] | None, extra: dict, src: str) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(command(args), capture_output=True, text=True, cwd=ROOT, env=env_for(src, extra))
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command(args))} failed in {src}: {out.stderr.strip()}")
    return wall, out.stdout


def heavy_imports(args: list[str], src: str) -> tuple[list[str], float]:
    """The heavy top-level modules `capsim ARGS` imports, and the cumulative import time of capsim.cli."""
    out = subprocess.run([sys.executable, "-X", "importtime", capsim_script(), *args], capture_output=True,
                         text=True, cwd=ROOT, env=env_for(src, {}))
    found, cli_us = set(), 0
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        name = name.strip()
        if name.split(".")[0] in HEAVY:
            found.add(name.split(".")[0])
        if name == "capsim.cli":
            cli_us = int(cumulative)
    return sorted(found), cli_us / 1e6


def stats(walls: list[float]) -> str:
    return f"{statistics.median(walls):7.3f} {min(walls):7.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20, help="runs per command")
    ap.add_argument("--baseline", default=None, help="a checkout of older code to run side by side")
    a = ap.parse_args()
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, {a.repeat} runs per command, "
          f"load average before: {os.getloadavg()[0]:.2f}" + (f", baseline {a.baseline}" if a.baseline else ""))
    walls = {name: [] for name, *_ in CASES}
    base = {name: [] for name, *_ in CASES}
    differs = set()
    for _ in range(a.repeat):
        for name, args, extra in CASES:
            w, text = run(args, extra, ROOT)
            walls[name].append(w)
            if a.baseline:
                w, base_text = run(args, extra, a.baseline)
                base[name].append(w)
                if base_text != text:
                    differs.add(name)
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    head = f"{'command':<24} {'median':>7} {'min':>7}  (wall seconds)"
    if a.baseline:
        head = f"{'command':<24} {'median':>7} {'min':>7} | {'baseline median':>15} {'min':>7}  (wall seconds)"
    print(head)
    for name, *_ in CASES:
        line = f"{name:<24} {stats(walls[name])}"
        if a.baseline:
            line += f" | {statistics.median(base[name]):15.3f} {min(base[name]):7.3f}"
            if name in differs:
                line += "  OUTPUT DIFFERS"
        print(line)
    floor = statistics.median(walls["python -c pass"])
    print()
    for src, label in [(ROOT, "this checkout"), *([(a.baseline, "baseline")] if a.baseline else [])]:
        mods, cli_s = heavy_imports(["--help"], src)
        print(f"{label}: `capsim --help` imports {', '.join(mods) if mods else 'none'} of {', '.join(HEAVY)}; "
              f"importing capsim.cli takes {cli_s:.3f} s (-X importtime, cumulative)")
    print()
    for name in ("capsim --help", "capsim simulate --help", "complete 'capsim si'"):
        med, worst = statistics.median(walls[name]), max(walls[name])
        print(f"{name}: median {med:.3f} s ({med - floor:+.3f} s over python -c pass), worst {worst:.3f} s: "
              f"{'under' if med < TARGET_S else 'NOT under'} the {TARGET_S} s target")


if __name__ == "__main__":
    main()
