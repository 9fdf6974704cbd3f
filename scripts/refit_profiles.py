"""Refit the shipped profiles (calibrate/profiles/) from their closed-loop sources with today's method.

Usage: python scripts/refit_profiles.py [SHARED_DIR]
The seed's profile comes from the seed's tests A-G (shipped with the package); the spark-bench ones
from ../shared/data/spark-bench (CC-BY-4.0, Django de Vreng, djangodevreng/dgx-spark-benchmarks).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from calibrate.fit import fit_closed  # noqa: E402
from calibrate.sources import load_closed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "spark-gemma4-26b-a4b": "seed",
    "spark-bench-gemma-4-26b-a4b-it-bf16": "gemma-4/gemma-4-26b-a4b-it/bf16",
    "spark-bench-gemma-4-26b-a4b-it-bf16-v23": "gemma-4/gemma-4-26b-a4b-it/bf16-v23",
    "spark-bench-gemma-4-31b-it-bf16": "gemma-4/gemma-4-31b-it/bf16",
    "spark-bench-qwen-3.6-35b-a3b-bf16": "qwen-3.6/qwen-3.6-35b-a3b/bf16",
}


def main():
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared")
    for name, src in SOURCES.items():
        path = src if src == "seed" else str(shared / "data" / "spark-bench" / "results" / src)
        fr = fit_closed(load_closed([path]))
        fr.profile.name = name
        fr.profile.save(ROOT / "calibrate" / "profiles" / f"{name}.json")
        bw = fr.profile.step_model.bw_weights
        print(f"{name:<42} median |err| {fr.profile.provenance['median_abs_error_pct']:.1f}%  bandwidth "
              f"{bw / 1e9:.0f} GB/s  decode band sigma {100 * fr.profile.uncertainty.model_sigma:.1f}%  {fr.seconds:.0f} s")


if __name__ == "__main__":
    main()
