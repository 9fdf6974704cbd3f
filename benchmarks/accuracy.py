"""The accuracy scoreboard: calibrate every spark-bench run on its closed-loop tests (01-06), predict
its open-loop tests (07-11) and score the predictions; the seed likewise (A-G -> H-J).

Each source goes through exactly what a user runs (`capsim calibrate RUN -o p.json && capsim
validate --profile p.json RUN`): calibrate.sources.load_closed -> calibrate.fit.fit_closed ->
calibrate.validate.validate on calibrate.sources.load_open. Sources run in parallel over cores.

Prints per run x test x metric: measured, predicted, error, in band; then per metric the median and
90th percentile of |error| over rows, the capacity matches (p95 TTFT under 2/5/10 s on
11-rate-sweep) and how often the 5-95 % band holds the measured value. Writes the table as JSON
(--json PATH, default benchmarks/accuracy.json) and as docs/accuracy.md.

--anonymize scores copies of the runs whose model ids keep only their size and dtype (e.g.
"acme/Model-35B-A3B"): no family table applies, as for a model capsim has never heard of.

Usage: python benchmarks/accuracy.py [--shared DIR] [--jobs N] [--replications R] [--only SUBSTR ...] [--profiles DIR]
                                     [--anonymize]
Data: shared/data/spark-bench (CC-BY-4.0, Django de Vreng, djangodevreng/dgx-spark-benchmarks).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The metrics the targets name, with the target on the median and on the 90th percentile of |error|.
SCORED = {
    "median_ttft_ms": ("TTFT p50", 5.0, 15.0),
    "p95_ttft_ms": ("TTFT p95", 5.0, None),
    "p99_ttft_ms": ("TTFT p99", 5.0, None),
    "median_tpot_ms": ("TPOT p50", 5.0, 15.0),
    "median_itl_ms": ("ITL p50", 7.0, None),
    "mean_e2el_ms": ("E2E mean", 5.0, 15.0),
    "request_throughput": ("request throughput", 3.0, None),
    "max_concurrent_requests": ("peak concurrency", 3.0, None),
}
ROOT = Path(__file__).resolve().parents[1]


def sources(shared: Path, only: list[str]) -> list[str]:
    res = shared / "data" / "spark-bench" / "results"
    out = ["seed"] + [str(d) for d in sorted(res.glob("*/*/*")) if (d / "meta.json").is_file()]
    return [s for s in out if not only or any(o in s for o in only)]


def anonymize(srcs: list[str], into: Path) -> list[str]:
    """Copies of the runs whose model ids keep only the size and dtype tokens of the name."""
    out = []
    for i, src in enumerate(srcs):
        if src == "seed":
            out.append(src)
            continue
        run = Path(src)
        dst = into / "results" / "anon" / f"model-{i}" / run.name
        shutil.copytree(run, dst)
        meta = json.loads((dst / "meta.json").read_text())
        name = str(meta.get("model", "")).split("/")[-1]
        keep = re.findall(r"(?i)(?<![a-z])(?:a?\d+(?:\.\d+)?b|bf16|fp8|nvfp4|mxfp4|awq|gptq)(?![a-z])",
                          name.replace("-", " - "))
        meta["model"] = "acme/Model-" + "-".join(keep)
        meta["served_name"] = f"model-{i}"
        (dst / "meta.json").write_text(json.dumps(meta, indent=1))
        print(f"{short(src)} -> {short(str(dst))} ({meta['model']})")
        out.append(str(dst))
    return out


def short(source: str) -> str:
    return "seed" if source == "seed" else "/".join(Path(source).parts[-2:])


def score_one(source: str, replications: int, profiles: str | None = None) -> dict:
    """Calibrate `source` on its closed-loop runs and validate on its open-loop runs (one process);
    the fitted profile is saved under `profiles` when given (for looking into a row by hand)."""
    from calibrate.fit import fit_closed
    from calibrate.sources import load_closed, load_open
    from calibrate.validate import validate

    t0 = time.perf_counter()
    fr = fit_closed(load_closed([source]), n_jobs=1)  # this script's workers fill the cores already
    t_fit = time.perf_counter() - t0
    if profiles:
        Path(profiles).mkdir(parents=True, exist_ok=True)
        fr.profile.save(Path(profiles) / (short(source).replace("/", "__") + ".json"))
    v = validate(load_open([source]), fr.profile, replications=replications, n_jobs=1)
    return {"source": short(source), "fit_seconds": t_fit, "validate_seconds": time.perf_counter() - t0 - t_fit,
            "fitted_parameters": fr.profile.provenance.get("fitted_parameters", {}),
            "profile_model": fr.profile.model, "notes": list(v.notes),
            "rows": [r.to_json() for r in v.rows if r.metric in SCORED], "capacity": v.capacity}


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else math.nan


def summarise(results: list[dict]) -> dict:
    rows = [r | {"source": res["source"]} for res in results for r in res["rows"]]
    per_metric = {}
    for m, (label, tmed, tp90) in SCORED.items():
        errs = [abs(r["error_pct"]) for r in rows if r["metric"] == m and r["error_pct"] == r["error_pct"]]
        per_metric[m] = {"label": label, "rows": len(errs), "median_abs_error_pct": pct(errs, 50),
                         "p90_abs_error_pct": pct(errs, 90), "target_median": tmed, "target_p90": tp90}
    reasoning = [abs(r["error_pct"]) for r in rows if r["metric"] == "median_tpot_ms" and r["test"].startswith("09")]
    cap = [c for res in results for c in res["capacity"]]
    banded = [r["in_band"] for r in rows]
    return {"per_metric": per_metric, "reasoning_tpot_median_abs_error_pct": pct(reasoning, 50),
            "capacity_matches": sum(1 for c in cap if c["match"]), "capacity_cases": len(cap),
            "band_coverage": float(np.mean(banded)) if banded else math.nan, "rows": len(rows)}


def fmt_table(results: list[dict]) -> list[str]:
    out = [f"{'run':<36} {'test':<20} {'metric':<24} {'measured':>10} {'predicted':>10} {'error':>8} {'band':>5}"]
    for res in results:
        for r in res["rows"]:
            out.append(f"{res['source'][-36:]:<36} {r['test'][:20]:<20} {r['metric']:<24} {r['measured']:>10.4g} "
                       f"{r['predicted']:>10.4g} {r['error_pct']:>+7.1f}% {'yes' if r['in_band'] else 'no':>5}")
    return out


def fmt_summary(s: dict, results: list[dict]) -> list[str]:
    out = [f"{'metric':<20} {'rows':>5} {'median |err|':>13} {'target':>7} {'p90 |err|':>10} {'target':>7}"]
    for m, d in s["per_metric"].items():
        t90 = f"{d['target_p90']:.0f}%" if d["target_p90"] else "-"
        out.append(f"{d['label']:<20} {d['rows']:>5} {d['median_abs_error_pct']:>12.1f}% {d['target_median']:>6.0f}% "
                   f"{d['p90_abs_error_pct']:>9.1f}% {t90:>7}")
    out.append(f"09-reasoning TPOT p50 median |err|: {s['reasoning_tpot_median_abs_error_pct']:.1f}% (target 8%)")
    out.append(f"capacity (p95 TTFT 2/5/10 s on 11-rate-sweep) right: {s['capacity_matches']} of {s['capacity_cases']}")
    out.append(f"5-95% band holds the measured value: {100 * s['band_coverage']:.0f}% of {s['rows']} rows (target 80%)")
    out.append("")
    out.append(f"{'run':<36} {'TTFT p50':>9} {'TPOT p50':>9} {'E2E mean':>9} {'fit s':>6}   (median signed error over 07-11)")
    for res in results:
        def med(m):
            e = [r["error_pct"] for r in res["rows"] if r["metric"] == m]
            return f"{np.median(e):>+8.1f}%" if e else f"{'-':>9}"
        out.append(f"{res['source'][-36:]:<36} {med('median_ttft_ms')} {med('median_tpot_ms')} {med('mean_e2el_ms')} "
                   f"{res['fit_seconds']:>6.1f}")
    return out


def write_markdown(path: Path, s: dict, results: list[dict], wall: float, cores: int):
    lines = ["# Accuracy scoreboard", "",
             "Written by `python benchmarks/accuracy.py`: every run of `shared/data/spark-bench` (CC-BY-4.0, "
             "Django de Vreng, djangodevreng/dgx-spark-benchmarks) calibrated on its own closed-loop tests 01-06 "
             "and validated on its open-loop tests 07-11, as `capsim calibrate RUN -o p.json && capsim validate "
             "--profile p.json RUN` does; the seed likewise (A-G -> H-J). Errors are (predicted - measured) / "
             f"measured. {len(results)} sources in {wall:.0f} s on {cores} cores.", "", "## Per metric", "",
             "| metric | rows | median abs error | target | p90 abs error | target |", "| --- | --- | --- | --- | --- | --- |"]
    for d in s["per_metric"].values():
        t90 = f"{d['target_p90']:.0f} %" if d["target_p90"] else "-"
        lines.append(f"| {d['label']} | {d['rows']} | {d['median_abs_error_pct']:.1f} % | {d['target_median']:.0f} % | "
                     f"{d['p90_abs_error_pct']:.1f} % | {t90} |")
    lines += ["", f"- 09-reasoning TPOT p50: median abs error {s['reasoning_tpot_median_abs_error_pct']:.1f} % (target 8 %)",
              f"- capacity at p95 TTFT 2/5/10 s (11-rate-sweep): right in {s['capacity_matches']} of {s['capacity_cases']}",
              f"- the 5-95 % band holds the measured value in {100 * s['band_coverage']:.0f} % of {s['rows']} rows (target 80 %)",
              "", "## Per run (median signed error over the open-loop tests)", "",
              "| run | TTFT p50 | TPOT p50 | ITL p50 | E2E mean | request throughput | calibrate s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        def med(m):
            e = [r["error_pct"] for r in res["rows"] if r["metric"] == m]
            return f"{np.median(e):+.1f} %" if e else "-"
        lines.append(f"| {res['source']} | {med('median_ttft_ms')} | {med('median_tpot_ms')} | {med('median_itl_ms')} | "
                     f"{med('mean_e2el_ms')} | {med('request_throughput')} | {res['fit_seconds']:.1f} |")
    lines += ["", "## Every row", "", "| run | test | metric | measured | predicted | error | in band |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['source']} | {r['test']} | {r['metric']} | {r['measured']:.4g} | {r['predicted']:.4g} | "
                         f"{r['error_pct']:+.1f} % | {'yes' if r['in_band'] else 'no'} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--replications", type=int, default=10)
    ap.add_argument("--only", nargs="*", default=[], help="score only sources whose path contains one of these")
    ap.add_argument("--json", dest="json_path", default=str(ROOT / "benchmarks" / "accuracy.json"))
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "accuracy.md"))
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    ap.add_argument("--profiles", help="save each fitted profile in this folder")
    ap.add_argument("--anonymize", action="store_true",
                    help="score copies whose model ids keep only size and dtype (no family table applies); "
                         "writes no markdown unless --markdown is given")
    a = ap.parse_args(argv)
    srcs = sources(Path(a.shared), a.only)
    if not srcs:
        sys.exit(f"accuracy: no runs under {a.shared}/data/spark-bench/results")
    tmp = None  # the anonymized copies' folder, removed when main returns
    write_md = not a.only
    if a.anonymize:
        tmp = tempfile.TemporaryDirectory(prefix="capsim-anon-")
        srcs = anonymize(srcs, Path(tmp.name))
        if a.json_path == ap.get_default("json_path"):
            a.json_path = str(ROOT / "benchmarks" / "accuracy-anonymized.json")
        write_md = write_md and a.markdown != ap.get_default("markdown")
    from joblib import Parallel, delayed
    t = time.perf_counter()
    results = Parallel(n_jobs=a.jobs)(delayed(score_one)(s, a.replications, a.profiles) for s in srcs)
    wall = time.perf_counter() - t
    s = summarise(results)
    if not a.quiet:
        print("\n".join(fmt_table(results)))
        print()
    print("\n".join(fmt_summary(s, results)))
    print(f"\n{len(results)} sources in {wall:.0f} s on {a.jobs} processes")
    Path(a.json_path).write_text(json.dumps({"summary": s, "results": results, "wall_seconds": wall}, indent=1) + "\n")
    if write_md:
        write_markdown(Path(a.markdown), s, results, wall, a.jobs)


if __name__ == "__main__":
    main()
