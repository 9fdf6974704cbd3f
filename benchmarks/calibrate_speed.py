"""Time to fit one suite (01-06 closed-loop tests) on this machine; target (the accuracy issue): under 60 s each on 2 cores.

Each suite is fitted twice, side by side in one run: its two combine rules one after the other
(n_jobs=1) and on two cores (the second rule in a forked process, what `capsim calibrate` does where
two cores are idle); the ratio is the speed-up, and the two profiles must be the same.

Usage: python benchmarks/calibrate_speed.py [SHARED_DIR]
Reads shared/data/spark-bench (CC-BY-4.0, djangodevreng/dgx-spark-benchmarks) and the seed's runs.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from calibrate.fit import fit_closed  # noqa: E402
from calibrate.importers import closed_runs  # noqa: E402
from calibrate.seed import seed_closed_runs  # noqa: E402


def main():
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared")
    results = shared / "data" / "spark-bench" / "results"
    sources = [("seed A-G", seed_closed_runs())]
    for d in sorted(results.glob("*/*/*")):
        if (d / "meta.json").is_file():
            sources.append((str(d.relative_to(results)), closed_runs(d)))
    print(f"{'source':<40} {'1 core s':>9} {'2 cores s':>10} {'ratio':>6} {'simulations':>12} {'median |err|':>13}"
          "  target < 60 s")
    for name, runs in sources:
        t = time.perf_counter()
        one = fit_closed(runs, n_jobs=1)
        wall1 = time.perf_counter() - t
        t = time.perf_counter()
        fr = fit_closed(runs, n_jobs=2)
        wall = time.perf_counter() - t
        same = "" if fr.profile.to_json() == one.profile.to_json() else "  PROFILES DIFFER"
        err = np.median([abs(r.error_pct) for r in fr.residuals])
        print(f"{name:<40} {wall1:>9.1f} {wall:>10.1f} {wall1 / wall:>6.2f} {fr.evaluations:>12d} {err:>12.1f}%  "
              f"{'ok' if wall < 60 else 'SLOW'}{same}")


if __name__ == "__main__":
    main()
