"""The live calibration: a closed-loop grid planned to a time budget, measured, then fitted.

A probe, single-user prompt sizes, a concurrency ladder 2, 4, 8, ... to one rung past the knee,
larger prompts under load; each stage's duration predicted on a rough profile first.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.load import ClosedLoop, LoadError, parse_duration
from simulator.profile import ApiOverhead, Profile
from simulator.records import RunResult
from simulator.sim import simulate_closed
from simulator.stepmodel import EmpiricalStepModel
from simulator.summary import summarize_closed

from .fit import fit_live
from .messages import LiveError
from .runs import closed_run_from_result, measured_prompt_scale, scale_run, until_free
from .server import ServerFacts, read_server

log = logging.getLogger("capsim.calibrate.live.ladder")


@dataclass
class Stage:
    """One measure call of the grid: its tests (pp, tg, depth, concurrency), predicted and measured seconds."""

    name: str
    combos: list[tuple[int, int, int, int]]
    predicted_s: float
    measured_s: float | None = None
    note: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "tests": [list(c) for c in self.combos], "predicted_s": self.predicted_s,
                "measured_s": self.measured_s, "note": self.note}


def rough_profile(facts: ServerFacts, decode_s: float, prefill_s_per_token: float, latency_s: float,
                  seq_share: float = 0.1) -> Profile:
    """A planning profile from the probe: step = c0 + c_tok*tokens + c_seq*requests."""
    c_seq = seq_share * decode_s
    c_tok = max(1e-7, prefill_s_per_token)
    c0 = max(1e-4, decode_s - c_seq - c_tok)
    return Profile(name="planning", engine=facts.engine_limits(),
                   step_model=EmpiricalStepModel(c0=c0, c_tok=c_tok, c_seq=c_seq),
                   api=ApiOverhead(request_s=max(1e-4, latency_s / 4))).validate()


def predict_seconds(profile: Profile, combos: list[tuple[int, int, int, int]], runs: int = 1,
                    per_call_s: float = 1.0) -> float:
    """Wall seconds one measure call of these tests takes: simulated on the planning profile (its three
    latency probes, then the tests), and `per_call_s` of the call's own (connecting, preparing prompts)."""
    pat = ClosedLoop(combos=combos, runs=runs, warmup=False, latency_mode="generation")
    return simulate_closed(profile, pat).duration + per_call_s


def prompt_sizes(facts: ServerFacts, tg: int, pp_max: int | None = None, first: int = 32,
                 factor: int = 2) -> list[int]:
    """Geometric (x2) from `first` to a useful share of the context.

    Small prompts matter: a step of a few dozen prompt tokens costs about as much compute as it
    reads weights, which is where the ways memory and compute time add up differ most (and
    where small --max-num-batched-tokens chunks live).
    """
    cap = pp_max or facts.max_model_len // 2
    if facts.num_blocks is not None and facts.kv_cache_size_tokens:
        cap = min(cap, facts.kv_cache_size_tokens // 2)
    cap = max(16, min(cap, facts.max_model_len - tg - 1))
    out = []
    p = min(first, cap)
    while p < cap:
        out.append(p)
        p *= factor
    if not out or cap > out[-1] * 1.5:
        out.append(cap)
    return out


def parse_budget(text: str | float | int) -> float:
    """A time budget in seconds (> 0): '10m', '90s', '1h', '1h30m' or plain seconds."""
    try:
        secs = parse_duration(text, "budget")
    except LoadError:
        secs = 0.0
    if not secs > 0:
        raise LiveError(f"--budget: cannot read the duration {text!r} (e.g. 10m, 90s, 1h)")
    return secs


def _measure_closed(url, model, combos, out_dir, clock_scale, endpoint, api_key, runs=1, warmup=False,
                    insecure=False) -> RunResult:
    from measure import run_closed

    # concurrency= as well as combos=: measure sizes its connection pool by max(pattern.concurrency)
    pat = ClosedLoop(combos=combos, concurrency=sorted({c[3] for c in combos}), runs=runs, warmup=warmup,
                     latency_mode="generation")
    run = run_closed(url, model, pat, out_dir=out_dir, endpoint=endpoint, api_key=api_key, progress=False,
                     insecure=insecure)
    if run.status != "complete":
        raise LiveError(f"measure stopped: {run.live.stop_reason or run.status}")
    bad = [r for r in run.records if not r.ok]
    if bad:
        raise LiveError(f"{len(bad)} of {len(run.records)} calibration requests failed (first: {bad[0].error})")
    return scale_run(run, clock_scale)


# The knee ends the ladder only from its third rung (2, 4, 8) on: a per-request step cost needs
# several batch sizes, and one rung is one stretch of time on the box (docs/design/live-calibration.md).
MIN_RUNGS = 3


def _decode_tps(run: RunResult, c: int | None = None) -> dict[tuple, float]:
    return {(r.pp, r.concurrency): r.metrics["tg_req_throughput"][0] for r in summarize_closed(run)
            if "tg_req_throughput" in r.metrics and (c is None or r.concurrency == c)}


# The probe measured again after the grid: a box whose single-user decode speed moved by more than
# this between the two ran another job for part of the grid, and the profile fits neither speed. On a
# calm box the second reads a few % faster (a server just started warms up over its first stage: the
# CPU server's 12.73 then 13.69 tok/s, +7.6%); one CI calibration whose first stages ran slow measured
# its probe at 10.70 tok/s where calm probes read 12.1-13.7 after it (+13% to +28%).
STEADY = 0.15


def steadiness(first: RunResult, again: RunResult) -> dict:
    """The single-user decode speed (llama-benchy's tg per request) of the grid's probe and of the
    same test measured again after the grid, and how far the second moved from the first."""
    a, b = (float(np.mean(list(_decode_tps(r, 1).values()))) for r in (first, again))
    return {"start_tok_s": a, "end_tok_s": b, "drift_pct": 100.0 * (b / a - 1.0)}


def live_calibrate(url: str, model: str | None = None, budget_s: float | str = 600.0, out_dir=None,
                   limits: dict | None = None, *, clock_scale: float = 1.0, endpoint: str = "chat", tg: int | None = None,
                   pp_max: int | None = None, runs: int = 1, falloff: float = 0.5, max_nfev: int = 150,
                   api_key: str | None = None, fit_start: Profile | None = None,
                   name: str | None = None, facts: ServerFacts | None = None,
                   insecure: bool = False) -> tuple[Profile, Path]:
    """Measure a closed-loop grid that fits `budget_s` on the live server and fit a profile.

    `limits`: what the server does not export, as read_server's keyword arguments
    (max_num_seqs, max_num_batched_tokens, async_scheduling, kv_groups, hf_config).
    Returns (profile, run folder); the folder keeps every measured run plus
    plan.json, fit.json, server.json and profile.json. Each stage is told as it starts
    (logging, "capsim.calibrate.live.ladder", INFO).
    """
    budget = parse_budget(budget_s)
    if runs < 1:
        raise LiveError(f"--runs must be at least 1, got {runs}")
    t_begin = time.monotonic()
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"calibrate-live-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if facts is None:
        facts = read_server(url, model, api_key=api_key, insecure=insecure, **(limits or {}))
    (out / "server.json").write_text(json.dumps(facts.to_json(), indent=2) + "\n")
    log.info(f"server: {facts.model} at {facts.url}: max_model_len {facts.max_model_len}, KV {facts.num_gpu_blocks} blocks "
             f"of {facts.block_size} ({facts.kv_cache_size_tokens} tokens), max_num_seqs {facts.max_num_seqs}, "
             f"max_num_batched_tokens {facts.max_num_batched_tokens}, async {facts.async_scheduling}")
    tg_ = int(tg or 32)
    stages: list[Stage] = []
    measured: list[RunResult] = []
    folders: list[str] = []

    def remaining() -> float:
        return budget - (time.monotonic() - t_begin)

    def measure_freely(combos, folder: Path, warmup: bool = False) -> tuple[RunResult, list[dict]]:
        """`combos` measured into `folder`; a run whose client was held up is made once more, the first
        moving to OUT/set-aside/, where refit does not read it. Returns (run, the set-aside runs)."""
        run, _, aside = until_free(
            lambda: (_measure_closed(url, facts.model, combos, folder, clock_scale, endpoint, api_key, runs=runs,
                                     warmup=warmup, insecure=insecure), None),
            folder, 1, lambda k: out / "set-aside" / folder.name, folder.name)
        return run, aside

    def run_stage(stage: Stage, warmup: bool = False) -> RunResult:
        folder = out / f"{len(stages) + 1:02d}-{stage.name}"
        log.info(f"  {folder.name}: {len(stage.combos)} test(s), predicted {stage.predicted_s:.0f} s "
                 f"({remaining():.0f} s of budget left)")
        t0 = time.monotonic()
        run, aside = measure_freely(stage.combos, folder, warmup)
        if aside:
            stage.note += f" set aside once: {aside[0]['run_dir']}"
        stage.measured_s = time.monotonic() - t0
        stages.append(stage)
        measured.append(run)
        folders.append(folder.name)
        return run

    # 1. probe: single user, small prompt, with a warmup batch
    p0 = min(128, max(16, facts.max_model_len // 8))
    tg_probe = min(tg_, 16)
    probe_combos = [(p0, tg_probe, 0, 1)]
    probe = run_stage(Stage("probe", probe_combos, predicted_s=math.nan), warmup=True)
    row = summarize_closed(probe)[0].metrics
    decode_s = 1.0 / row["tg_req_throughput"][0]
    latency_s = float(probe.closed_loop.latency_s or 0.0)
    pre_s_tok = max(1e-7, (row["est_ppt"][0] / 1000.0 - decode_s) / max(1, p0))
    wall_per_model = 1.0 / clock_scale
    rough = rough_profile(facts, decode_s, pre_s_tok, latency_s)

    def cost(combos) -> float:
        return predict_seconds(rough, combos, runs) * wall_per_model + 1.0

    # 2. single-user prompt sizes
    pps = prompt_sizes(facts, tg_, pp_max)
    combos_a = [(p, tg_, 0, 1) for p in pps]
    while len(combos_a) > 2 and cost(combos_a) > 0.35 * remaining():
        combos_a.pop()  # drop the largest prompt
    run_stage(Stage("single", combos_a, cost(combos_a)))
    c1 = _decode_tps(measured[-1], 1)
    c1_speed = float(np.median(list(c1.values()))) if c1 else 1.0 / decode_s

    # 3. concurrency ladder at a small prompt, one step at a time, past the knee
    p_ladder = next((p for p in pps if p >= 128), pps[-1])
    kv_tokens = facts.kv_cache_size_tokens if facts.num_blocks is not None else None
    c = 2
    ladder: list[int] = []
    seq_share = 0.1
    while True:
        if c > facts.max_num_seqs:
            stages[-1].note += f" ladder stops: max_num_seqs {facts.max_num_seqs}"
            break
        if kv_tokens and c * (p_ladder + tg_) > 0.8 * kv_tokens:
            stages[-1].note += " ladder stops: KV cache"
            break
        combos = [(p_ladder, tg_, 0, c)]
        est = cost(combos)
        if est > 0.6 * remaining():
            stages[-1].note += " ladder stops: budget"
            break
        run = run_stage(Stage(f"c{c}", combos, est))
        ladder.append(c)
        tps = _decode_tps(run).get((p_ladder, c))
        if tps:
            # refine the planning profile's per-request step cost from the measured slowdown
            step_c = 1.0 / tps
            seq_share = max(0.01, (step_c - 1.0 / c1_speed) / max(1, c - 1) * c1_speed)
            rough = rough_profile(facts, decode_s, pre_s_tok, latency_s, seq_share)
        if tps and tps < falloff * c1_speed and len(ladder) >= MIN_RUNGS:
            stages[-1].note += f" past the knee: decode/user {tps:.3g} < {falloff:g} x {c1_speed:.3g} tok/s"
            break
        c *= 2

    # 4. larger prompts at a middle and at the top concurrency of the ladder (prefill under load,
    #    queued prefills, decode of many long contexts)
    if ladder:
        c_mid = ladder[len(ladder) // 2] if len(ladder) > 1 else ladder[0]
        for cc in dict.fromkeys([c_mid, ladder[-1]]):
            for p in (p for p in pps if p > p_ladder):
                if kv_tokens and cc * (p + tg_) > 0.8 * kv_tokens:
                    continue
                combos = [(p, tg_, 0, cc)]
                est = cost(combos)
                if est > 0.9 * remaining():
                    break
                run_stage(Stage(f"c{cc}-pp{p}", combos, est))

    # 5. the probe once more, kept apart from the fit (OUT/check/): the box's speed at the end of
    #    the grid against its start; a held-up client's run is set aside and made again, as a stage's
    again, aside = measure_freely(probe_combos, out / "check" / "probe-again")
    steady = steadiness(probe, again)
    if aside:
        steady["set_aside"] = aside[0]["run_dir"]
    if abs(steady["drift_pct"]) > 100 * STEADY:
        log.warning(f"  the box's single-user decode speed moved {steady['drift_pct']:+.0f}% during calibration "
                    f"({steady['start_tok_s']:.3g} tok/s at the start, {steady['end_tok_s']:.3g} at the end): "
                    f"something else ran on it, and the profile fits neither speed; calibrate again when it is quiet")

    # 6. fit
    runs_c = [closed_run_from_result(r, facts, source=str(out / f), test=f) for r, f in zip(measured, folders)]
    scale = measured_prompt_scale(measured)
    log.info(f"  fitting on {sum(len(r.rows) for r in runs_c)} measured tests ({time.monotonic() - t_begin:.0f} s so far)")
    fr = fit_live(runs_c, facts, max_nfev=max_nfev, prompt_scale=scale, start=fit_start)
    prof = fr.profile
    prof.name = name or facts.model
    prof.provenance["budget_s"] = budget
    prof.provenance["clock_scale"] = clock_scale
    prof.provenance["run_dir"] = str(out)
    prof.provenance["wall_s"] = time.monotonic() - t_begin
    prof.provenance["steadiness"] = steady
    prof.save(out / "profile.json")
    (out / "plan.json").write_text(json.dumps({"budget_s": budget, "wall_s": time.monotonic() - t_begin,
                                               "clock_scale": clock_scale,
                                               "tg": tg_, "prompt_sizes": pps, "ladder": ladder,
                                               "stages": [s.to_json() for s in stages], "steadiness": steady},
                                              indent=2) + "\n")
    (out / "fit.json").write_text(json.dumps({"seconds": fr.seconds, "evaluations": fr.evaluations,
                                              "prompt_scale": fr.prompt_scale, "origin": fr.origin,
                                              "fitted": prof.provenance["fitted_parameters"],
                                              "residuals": [r.to_json() for r in fr.residuals],
                                              "prior_residuals": [r.to_json() for r in fr.prior_residuals]},
                                             indent=2, default=str) + "\n")
    log.info(f"  done in {time.monotonic() - t_begin:.0f} s: median |error| "
             f"{prof.provenance['median_abs_error_pct']:.1f}% over {len(fr.residuals)} figures")
    return prof, out
