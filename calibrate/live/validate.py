"""Live validation: open-loop loads measured on the server and predicted on the model.

Each load's replay is replication 0, resampled arrivals give the 5-95% band; extra rows compare
preemptions, output steps and the waiting/running series from /metrics.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simulator.load import OpenLoop
from simulator.profile import Profile
from simulator.records import RunResult
from simulator.sim import simulate_open
from simulator.summary import summarize_open

from ..results import OpenRun
from ..validate import METRICS, Row, Validation, format_validation, noise_floor
from .loads import LiveLoad
from .messages import LiveError
from .replay import replay_specs, simulate_replay
from .runs import client_figures, scale_run, until_free

log = logging.getLogger("capsim.calibrate.live.validate")


def _series(samples: list[dict], run: RunResult, clock_scale: float) -> dict[str, np.ndarray]:
    t0, t1 = run.start_time / clock_scale, run.end_time / clock_scale
    rows = [s for s in samples if "error" not in s and t0 <= float(s.get("t", -1)) <= t1
            and "num_requests_waiting" in s]
    return {"t": np.array([(float(s["t"]) - t0) * clock_scale for s in rows]),
            "waiting": np.array([float(s["num_requests_waiting"]) for s in rows]),
            "running": np.array([float(s.get("num_requests_running", 0.0)) for s in rows])}


def _trace_at(trace: list[dict], key: str, times: np.ndarray) -> np.ndarray:
    """The engine's running/waiting count at `times`, as vLLM's gauges show it.

    vLLM sets num_requests_running/waiting after each step's outputs: finished requests are gone
    and the next step's admissions are not in yet (running: the next schedule's count before it
    admits), and requests that arrived during the step are not in the scheduler's queue yet
    (waiting: what the last schedule left waiting).
    """
    if not trace or not len(times):
        return np.zeros(len(times))
    tt = np.array([d["time"] for d in trace])
    if key == "running":
        vv = np.array([float(d[key]) - len(d.get("admitted") or ()) for d in trace])
    else:
        vv = np.array([float(d[key]) for d in trace])
    idx = np.searchsorted(tt, times, side="right") - 1
    out = np.where(idx >= 0, vv[np.clip(idx, 0, None)], 0.0)
    # after the last step the engine is idle
    out[times > tt[-1] + 1e-9] = 0.0 if key != "running" else out[times > tt[-1] + 1e-9]
    return out


def _scrape_steps(url: str, api_key: str | None = None, insecure: bool = False) -> float | None:
    """vllm:iteration_tokens_total's count: engine steps that returned tokens (None if not exported)."""
    import httpx

    from measure.client import split_url, tls_check

    base, _pub, auth = split_url(url)
    try:
        r = httpx.get(base + "/metrics", auth=auth, timeout=10, trust_env=False, verify=tls_check(base, not insecure),
                      headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    except httpx.HTTPError:
        return None
    total = None
    for line in r.text.splitlines():
        if line.startswith("vllm:iteration_tokens_total_count"):
            total = (total or 0.0) + float(line.split()[-1])
    return total


@dataclass
class LiveResult:
    """One load measured live and predicted."""

    load: LiveLoad
    run: RunResult
    run_dir: Path | None
    predicted: dict
    band_lo: dict
    band_hi: dict
    median: dict
    extras: dict[str, tuple[float, float]]  # metric -> (measured, predicted)
    series: dict[str, Any] = field(default_factory=dict)


@dataclass
class LiveValidation:
    validation: Validation
    floor: Validation | None
    results: list[LiveResult]
    repeats: list[LiveResult] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"set aside: {r.load.name}{tag}: {a['warning']} (kept in {a['run_dir']})"
                 for runs, tag in ((self.results, ""), (self.repeats, " (repeat)"))
                 for r in runs for a in (r.run.live.set_aside if r.run.live else [])]
        return "\n".join([format_validation(self.validation, self.floor)] + lines)

    def to_json(self) -> dict:
        out = self.validation.to_json()
        if self.floor is not None:
            out["noise_floor"] = self.floor.to_json()
        out["loads"] = [{"load": r.load.to_json(), "run_dir": str(r.run_dir) if r.run_dir else None,
                         "extras": {k: {"measured": a, "predicted": b} for k, (a, b) in r.extras.items()}}
                        | client_figures(r.run) | {"set_aside": r.run.live.set_aside if r.run.live else []}
                        for r in self.results + self.repeats]
        return out


EXTRA_METRICS = ("num_preemptions", "output_steps", "mean_waiting", "peak_waiting", "mean_running")


def predict_live(profile: Profile, run: RunResult, load: LiveLoad, replications: int = 5):
    """(prediction, lo, hi, median, sim run, trace): replication 0 replays the measured run."""
    sim, trace = simulate_replay(profile, run)
    s0 = summarize_open(sim)
    s0["num_preemptions"] = sim.num_preemptions
    reps = [s0]
    specs, _ = replay_specs(run)
    for r in range(1, replications):
        rng = np.random.default_rng([load.seed, r])
        pick = [specs[i] for i in rng.integers(0, len(specs), size=len(specs))]
        pat = OpenLoop(rate=load.rate, burstiness=load.burstiness, max_concurrency=load.max_concurrency,
                       seed=load.seed + r)
        sr = simulate_open(profile, pick, pat, fast_forward=False)
        s = summarize_open(sr)
        s["num_preemptions"] = sr.num_preemptions
        reps.append(s)
    keys = [k for k, v in s0.items() if isinstance(v, (int, float))]
    arr = {k: np.array([float(x.get(k, math.nan)) for x in reps]) for k in keys}
    lo = {k: float(np.nanpercentile(a, 5)) for k, a in arr.items()}
    hi = {k: float(np.nanpercentile(a, 95)) for k, a in arr.items()}
    med = {k: float(np.nanmedian(a)) for k, a in arr.items()}
    return s0, lo, hi, med, sim, trace


def measure_load(url: str, load: LiveLoad, out_dir=None, model: str | None = None, clock_scale: float = 1.0,
                 api_key: str | None = None, retries: int = 0,
                 check: Callable[[RunResult], str | None] | None = None,
                 insecure: bool = False) -> tuple[RunResult, float | None]:
    """Run one open-loop load live; returns (run in model time, engine steps during it or None).

    A run whose client was held up is run again, up to `retries` times: measure's
    schedule_warning (sends fell behind the arrival schedule, so the server got another load
    than the one predicted) or client_stall_warning (the client's event loop stalled, so the
    tokens of the requests in flight were stamped late). The set-aside runs keep their folders
    (NAME-set-aside-K) and are listed in the kept run's live.set_aside. `check(run)`, run after
    each attempt, may give another reason to run it again (runs.until_free).
    """
    from measure import run_open

    if retries < 0:
        raise LiveError(f"retries must be 0 or more, not {retries}")

    def attempt():
        steps0 = _scrape_steps(url, api_key, insecure)
        run = run_open(url, model, load.workload(), load.pattern(clock_scale), load.num_prompts, out_dir=out_dir,
                       endpoint=load.endpoint, api_key=api_key, progress=False, insecure=insecure)
        steps1 = _scrape_steps(url, api_key, insecure)
        if run.status != "complete":
            raise LiveError(f"{load.name}: measure stopped: {run.live.stop_reason or run.status}")
        return run, (steps0, steps1)

    run, (steps0, steps1), set_aside = until_free(
        attempt, out_dir, retries, lambda k: Path(out_dir).with_name(f"{Path(out_dir).name}-set-aside-{k}"),
        load.name, check)
    if set_aside:
        run.live.set_aside = set_aside
    scale_run(run, clock_scale)
    steps = steps1 - steps0 if steps0 is not None and steps1 is not None else None
    return run, steps


def compare_load(profile: Profile, load: LiveLoad, run: RunResult, run_dir: Path | None, steps: float | None,
                 replications: int = 5, clock_scale: float = 1.0) -> LiveResult:
    pred, lo, hi, med, sim, trace = predict_live(profile, run, load, replications)
    extras: dict[str, tuple[float, float]] = {}
    sd = (run.server_metrics.delta if run.server_metrics is not None else None) or {}
    if "num_preemptions" in sd:
        extras["num_preemptions"] = (float(sd["num_preemptions"]), float(sim.num_preemptions))
    if steps is not None:
        # vllm:iteration_tokens_total counts engine steps that returned tokens (a step that only
        # computes part of a prompt returns none): the distinct chunk times of the replay
        out_steps = len(np.unique(np.concatenate([r.chunk_times for r in sim.records if len(r.chunk_times)])))
        extras["output_steps"] = (float(steps), float(out_steps))
    series = {}
    if run_dir is not None and (Path(run_dir) / "metrics.jsonl").is_file():
        samples = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        ser = _series(samples, run, clock_scale)
        if len(ser["t"]) >= 2:
            pw = _trace_at(trace, "waiting", ser["t"])
            pr = _trace_at(trace, "running", ser["t"])
            extras["mean_waiting"] = (float(ser["waiting"].mean()), float(pw.mean()))
            extras["peak_waiting"] = (float(ser["waiting"].max()), float(pw.max()))
            extras["mean_running"] = (float(ser["running"].mean()), float(pr.mean()))
            series = {"t": ser["t"].tolist(), "waiting": ser["waiting"].tolist(), "running": ser["running"].tolist(),
                      "waiting_pred": pw.tolist(), "running_pred": pr.tolist()}
    return LiveResult(load, run, Path(run_dir) if run_dir else None, pred, lo, hi, med, extras, series)


def _rows(res: LiveResult, source: str) -> list[Row]:
    m = summarize_open(res.run)
    rows = []
    for k in METRICS:
        if k in m and k in res.predicted:
            rows.append(Row(source, res.load.name, k, float(m[k]), float(res.predicted[k]), res.band_lo[k],
                            res.band_hi[k], res.median[k]))
    for k in EXTRA_METRICS:
        if k in res.extras:
            a, b = res.extras[k]
            lo = res.band_lo.get(k, b) if k == "num_preemptions" else b
            hi = res.band_hi.get(k, b) if k == "num_preemptions" else b
            rows.append(Row(source, res.load.name, k, a, b, min(lo, b), max(hi, b)))
    return rows


def _open_run(res: LiveResult, source: str) -> OpenRun:
    result = summarize_open(res.run)
    for k, (a, _b) in res.extras.items():
        result[k] = a
    return OpenRun(source=source, test=res.load.name, path=str(res.run_dir) if res.run_dir else None,
                   dataset="random", params=res.load.params(), result=result)


def live_validate(url: str, profile: Profile, loads: Sequence[LiveLoad], out_dir=None, *, model: str | None = None,
                  clock_scale: float = 1.0, replications: int = 5, repeat: bool = False, api_key: str | None = None,
                  retries: int = 1, check: Callable[[RunResult], str | None] | None = None,
                  insecure: bool = False) -> LiveValidation:
    """Run each load live, predict it on the model, and score (docs/design/live-calibration.md).
    Each load is told as it starts (logging, "capsim.calibrate.live.validate", INFO); `check`: see
    measure_load."""
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"validate-live-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    source = f"live {url}"
    v = Validation()
    results, repeats = [], []
    for rep in range(2 if repeat else 1):
        for load in loads:
            d = out / (load.name + ("" if rep == 0 else "-repeat"))
            log.info(f"  {d.name}: {load.num_prompts} requests of ~{load.input_len}+{load.output_len} tokens at "
                     f"{load.rate:.3g}/s" + (f", max concurrency {load.max_concurrency}" if load.max_concurrency else ""))
            run, steps = measure_load(url, load, d, model or None, clock_scale, api_key, retries, check,
                                      insecure=insecure)
            res = compare_load(profile, load, run, d, steps, replications, clock_scale)
            (results if rep == 0 else repeats).append(res)
            if rep == 0:
                v.rows += _rows(res, source)
    floor = None
    if repeat:
        floor = noise_floor([_open_run(r, "live") for r in results], [_open_run(r, "live repeat") for r in repeats])
    lv = LiveValidation(v, floor, results, repeats)
    (out / "validation.json").write_text(json.dumps(lv.to_json(), indent=2, default=str) + "\n")
    return lv
