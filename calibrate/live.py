"""Live calibration and validation against a running server.

    capsim calibrate --live URL [--budget 10m] -o PROFILE.json
    capsim validate  --live URL --profile PROFILE.json [--scale K] [--repeat]

Calibration (`live_calibrate`):

1. Read what the server tells: /v1/models (max_model_len), /metrics
   (vllm:cache_config_info: block size, number of KV blocks, KV capacity in tokens;
   a twin also exports capsim:scheduler_config_info) and /version. Scheduler limits
   vLLM does not export (max_num_seqs, max_num_batched_tokens, async scheduling) and
   the KV-cache group layout of hybrid models come from flags (--max-num-seqs,
   --max-num-batched-tokens, --no-async-scheduling, --kv-groups / --hf-config);
   `ServerFacts.origin` says where each came from.
2. Probe: one small single-user test (with a warmup) gives the decode step time,
   the prefill speed and the client-server latency.
3. Plan a closed-loop grid that fits the time budget, each test's duration predicted
   by simulating it on a rough profile from the probe: single-user prompt sizes
   doubling from 32 tokens up to a useful share of the context (half of
   max_model_len, or of the KV cache); a concurrency ladder 2, 4, 8, ... measured one
   step at a time until decode speed per user has fallen below `falloff` of the
   single-user speed (one step past the knee, read from the third rung on) or
   max_num_seqs / the KV cache / the budget stops it; then prompt sizes at a middle
   concurrency while budget remains.
4. Run it with capsim measure (one run folder per stage under RUN_DIR, kept; a stage
   whose client was held up is run once more, the first run kept in RUN_DIR/set-aside), fit
   a profile with the same simulation-based least squares as `capsim calibrate`
   (calibrate.fit), with the server's engine limits and KV layout fixed and the
   per-request step cost t_seq fitted too, and write RUN_DIR/profile.json,
   plan.json and fit.json.

Validation (`live_validate`): run open-loop loads live (by default the seed's H, I
and J scaled to the server, see `seed_loads`), predict each on the very requests
and send times it used (replication 0; other replications resample arrivals and
requests for the 5-95% band) and print calibrate.validate's table. Extra rows
compare the server's preemption count (vllm:num_preemptions_total), the number of
engine steps that returned tokens (vllm:iteration_tokens_total's count: a step that
only computes part of a prompt returns none, so long prompts split into many chunks
show up as fewer output steps than steps), and the time-averaged and peak number of
waiting and running requests (the /metrics series capsim measure records once a
second) with the simulator's trace. `repeat=True` runs every load twice: the
second run 'predicting' the first is the noise floor.

Twins: a `capsim twin --speed s` runs the model s times faster than real time.
`clock_scale=s` multiplies every measured time by s (and open-loop rates are sent s
times faster), so runs, the fitted profile and predictions are all in the model's
time and compare with the twin's profile directly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simulator.load import ClosedLoop, LoadError, OpenLoop, parse_duration
from simulator.profile import ApiOverhead, EngineLimits, KVGroup, Profile, load_profile
from simulator.records import RunResult
from simulator.sim import simulate_closed, simulate_open
from simulator.stepmodel import EmpiricalStepModel
from simulator.summary import summarize_closed, summarize_open
from simulator.workload import RandomWorkload, RequestSpec

from .fit import (API_PARAMS, FIT_PARAMS, START, FitResult, _vector, compare, fit_decode_factors, fit_parameters,
                  residual_provenance)
from .priors import prior_profile
from .results import ClosedRun, OpenRun
from .validate import METRICS, Row, Validation, format_validation, noise_floor

# calibrate.fit's parameters plus the per-request step cost and a KV bandwidth of its own: the live
# grid batches long contexts (the ladder's top concurrency at large prompts), which tells the
# KV term (grows with the batch's total context) from t_ctx (the mean context) and the weights.
# The box is whatever serves: no Spark roofline bounds its bandwidth, and a CPU server's steps take
# a fifth of a second.
LIVE_FIT_PARAMS = dict(FIT_PARAMS) | {"t0": (1e-4, 1.0), "bw_weights": (1e8, 5e13), "t_seq": (1e-7, 1.0),
                                      "bw_kv": (1e8, 1e15)}
# and the API server's serial time per request: requests sent together reach the engine that far
# apart, which decides how many share the first step (the spread of TTFT at concurrency > 1)
LIVE_API_PARAMS = dict(API_PARAMS) | {"frontend_s": (1e-5, 0.2)}

# vLLM 0.32's API-server defaults (engine/arg_utils.py) when the user gives no flag
VLLM_DEFAULTS = {"cpu": {"max_num_batched_tokens": 2048, "max_num_seqs": 128, "async_scheduling": False},
                 "gpu": {"max_num_batched_tokens": 8192, "max_num_seqs": 1024, "async_scheduling": True}}


class LiveError(ValueError):
    """A live calibration/validation problem; the message is one line for the user."""


Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ============================================================================ server facts

@dataclass
class ServerFacts:
    """What a live server tells about itself (and what flags filled in)."""

    url: str
    model: str
    max_model_len: int
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    kv_cache_size_tokens: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    async_scheduling: bool = True
    kv_groups: tuple[KVGroup, ...] = ()
    num_blocks: int | None = None  # for the simulator (== num_gpu_blocks, or a single-group equivalent)
    server: str | None = None
    version: str | None = None
    origin: dict[str, str] = field(default_factory=dict)

    def engine_limits(self) -> EngineLimits:
        return EngineLimits(max_num_batched_tokens=self.max_num_batched_tokens, max_num_seqs=self.max_num_seqs,
                            max_model_len=self.max_model_len, num_blocks=self.num_blocks,
                            kv_groups=self.kv_groups or (KVGroup(self.block_size or 16),),
                            async_scheduling=self.async_scheduling)

    def server_dict(self) -> dict:
        """The `server` dict of ClosedRun / prior_profile."""
        return {"model": self.model, "max_model_len": self.max_model_len,
                "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "async_scheduling": self.async_scheduling, "vllm_version": self.version, "url": self.url,
                "num_gpu_blocks": self.num_gpu_blocks, "block_size": self.block_size,
                "kv_cache_size_tokens": self.kv_cache_size_tokens}

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["kv_groups"] = [dataclasses.asdict(g) for g in self.kv_groups]
        return d


def parse_kv_groups(spec: str) -> tuple[KVGroup, ...]:
    """'1x128,5x128@512': COUNTxBLOCK[@WINDOW] per kind of KV-cache group (window: sliding attention)."""
    out = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(?:(\d+)x)?(\d+)(?:@(\d+))?", part)
        if not m:
            raise LiveError(f"--kv-groups: cannot read {part!r} (expected COUNTxBLOCK[@WINDOW], e.g. 1x128,5x128@512)")
        out.append(KVGroup(int(m.group(2)), int(m.group(1) or 1), int(m.group(3)) if m.group(3) else None))
    if not out:
        raise LiveError("--kv-groups is empty")
    return tuple(out)


def kv_groups_from_hf_config(config: dict | str | Path, block_size: int) -> tuple[KVGroup, ...]:
    """vLLM's KV-cache groups of a hybrid model from its config.json (layer_types, sliding_window).

    Layers of one attention kind share groups of equal size; with G layers per group (the
    smallest count of any kind), each kind gets count / G groups (Gemma 3 270M: 3 full +
    15 sliding layers -> 1 full group and 5 sliding-window groups).
    """
    if not isinstance(config, dict):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError) as e:
            raise LiveError(f"--hf-config: cannot read {config} ({e})") from None
    cfg = config.get("text_config", config)
    types = cfg.get("layer_types")
    window = cfg.get("sliding_window")
    if not types or not window:
        return (KVGroup(block_size),)
    full = sum(1 for t in types if "sliding" not in str(t))
    sliding = len(types) - full
    if not sliding:
        return (KVGroup(block_size),)
    if not full:
        return (KVGroup(block_size, 1, int(window)),)
    g = min(full, sliding)
    return (KVGroup(block_size, -(-full // g), None), KVGroup(block_size, -(-sliding // g), int(window)))


def _get(http, path: str):
    try:
        r = http.get(path)
    except Exception as e:  # httpx errors
        raise LiveError(f"GET {http.base_url.join(path)}: cannot reach the server ({type(e).__name__}: {e})") from None
    return r


def _info_labels(text: str, name: str) -> dict | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = line[len(name) + 1:line.rfind("}")]
            return {k: v for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)}
    return None


def _num(v) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def read_server(url: str, model: str | None = None, *, max_num_seqs: int | None = None,
                max_num_batched_tokens: int | None = None, async_scheduling: bool | None = None,
                kv_groups: str | Sequence[KVGroup] | None = None, hf_config: str | dict | None = None,
                api_key: str | None = None, timeout: float = 30.0) -> ServerFacts:
    """Ask the server what it is; flags fill what it does not tell (see ServerFacts.origin)."""
    import httpx

    from measure.client import split_url
    from measure.twin import kv_cache_size_tokens

    base, public, auth = split_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    origin: dict[str, str] = {}
    with httpx.Client(base_url=base, headers=headers, auth=auth, timeout=timeout, trust_env=False) as http:
        r = _get(http, "/v1/models")
        if r.status_code != 200:
            raise LiveError(f"GET /v1/models at {public}: HTTP {r.status_code}")
        models = [m for m in (r.json().get("data") or []) if isinstance(m, dict)]
        if not models:
            raise LiveError(f"{public} serves no model")
        entry = models[0] if model is None else next((m for m in models if m.get("id") == model), None)
        if entry is None:
            raise LiveError(f"model {model!r} is not served by {public}")
        mml = _num(entry.get("max_model_len"))
        origin["max_model_len"] = "GET /v1/models" if mml else "unknown: 4096 assumed"
        facts = ServerFacts(url=public, model=str(entry["id"]), max_model_len=mml or 4096, origin=origin)
        r = _get(http, "/version")
        if r.status_code == 200:
            try:
                facts.version = str(r.json().get("version"))
            except ValueError:
                pass
        r = _get(http, "/metrics")
        text = r.text if r.status_code == 200 else ""
    cc = _info_labels(text, "vllm:cache_config_info") or {}
    sc = _info_labels(text, "capsim:scheduler_config_info") or {}
    facts.server = "capsim-twin" if sc else ("vllm" if cc or "vllm:" in text else None)
    facts.block_size = _num(cc.get("block_size"))
    facts.num_gpu_blocks = _num(cc.get("num_gpu_blocks"))
    facts.kv_cache_size_tokens = _num(cc.get("kv_cache_size_tokens"))
    # vLLM's CPU build sizes its KV cache in bytes (VLLM_CPU_KVCACHE_SPACE) and uses 128-token blocks
    cpu = facts.block_size == 128 and cc.get("kv_cache_memory_bytes") not in (None, "None")
    defaults = VLLM_DEFAULTS["cpu" if cpu else "gpu"]
    kind = "vLLM CPU" if cpu else "vLLM GPU"
    for key, flag, conv in (("max_num_seqs", max_num_seqs, int), ("max_num_batched_tokens", max_num_batched_tokens, int),
                            ("async_scheduling", async_scheduling, bool)):
        if flag is not None:
            setattr(facts, key, conv(flag))
            origin[key] = "flag"
        elif key in sc:
            setattr(facts, key, sc[key] == "True" if key == "async_scheduling" else int(sc[key]))
            origin[key] = "/metrics capsim:scheduler_config_info"
        else:
            setattr(facts, key, defaults[key])
            origin[key] = f"not exported: {kind} default {defaults[key]} assumed (pass it as a flag)"
    if "max_model_len" in sc and not mml:
        facts.max_model_len = int(sc["max_model_len"])
    # KV cache layout
    bs = facts.block_size or 16
    if kv_groups is not None:
        groups = parse_kv_groups(kv_groups) if isinstance(kv_groups, str) else tuple(kv_groups)
        origin["kv_groups"] = "flag"
    elif hf_config is not None:
        groups = kv_groups_from_hf_config(hf_config, bs)
        origin["kv_groups"] = "from the model's config.json"
    else:
        groups = (KVGroup(bs),)
        origin["kv_groups"] = "one full-attention group (none given)"
    facts.kv_groups = groups
    if facts.num_gpu_blocks is None:
        facts.num_blocks = None
        origin["num_blocks"] = "not exported: KV capacity treated as not binding"
        return facts
    facts.num_blocks = facts.num_gpu_blocks
    origin["num_blocks"] = "/metrics vllm:cache_config_info num_gpu_blocks"
    if facts.kv_cache_size_tokens:
        want = facts.kv_cache_size_tokens
        got = kv_cache_size_tokens(facts.engine_limits())
        if got is not None and abs(got - want) > max(0.03 * want, facts.max_model_len * 0.05):
            if origin["kv_groups"].startswith("one full"):
                # a hybrid cache the flags did not describe: the single-group equivalent
                facts.num_blocks = max(1, want // bs)
                origin["num_blocks"] = (f"kv_cache_size_tokens {want} / block_size {bs} (the server's pool of "
                                        f"{facts.num_gpu_blocks} blocks holds more than one KV group; pass "
                                        "--kv-groups or --hf-config for the exact layout)")
            else:
                origin["kv_groups"] += (f" -- WARNING: implies {got} KV tokens, the server reports {want}")
        else:
            origin["kv_groups"] += f" (consistent with kv_cache_size_tokens {want})"
    return facts


def apply_server_limits(profile: Profile, facts: ServerFacts) -> Profile:
    """A copy of `profile` with the limits the live server (or a flag) told; assumed defaults are ignored.

    For validating a profile against a server restarted with other limits (a smaller KV cache,
    fewer sequences) without re-calibrating: the step-time model stays, the scheduler changes.
    """
    p = profile.copy()
    e = p.engine
    told = lambda k: facts.origin.get(k, "").startswith(("flag", "/metrics", "GET"))  # noqa: E731
    for k in ("max_num_seqs", "max_num_batched_tokens", "async_scheduling", "max_model_len"):
        if told(k):
            setattr(e, k, getattr(facts, k))
    if facts.origin.get("kv_groups", "").startswith(("flag", "from the model")):
        e.kv_groups = facts.kv_groups
        e.num_blocks = facts.num_blocks
    elif facts.num_gpu_blocks is not None:
        from measure.twin import kv_cache_size_tokens

        trial = dataclasses.replace(e, num_blocks=facts.num_gpu_blocks)
        want = facts.kv_cache_size_tokens
        got = kv_cache_size_tokens(trial)
        # the profile's own layout, if it explains the server's pool; else the single-group equivalent
        if want is None or got is None or abs(got - want) <= max(0.03 * want, 0.05 * e.max_model_len):
            e.num_blocks = facts.num_gpu_blocks
        else:
            e.kv_groups = facts.kv_groups
            e.num_blocks = facts.num_blocks
    p.engine = e
    return p.validate()


# ============================================================================ runs

def scale_run(run: RunResult, s: float) -> RunResult:
    """Multiply every time of a run by s (in place): wall time on a twin at speed s -> model time."""
    if s == 1.0:
        return run
    for r in run.records:
        r.start_time *= s
        r.scheduled_time *= s
        r.chunk_times = np.asarray(r.chunk_times, dtype=np.float64) * s
        if r.end_time is not None:
            r.end_time *= s
    run.start_time *= s
    run.end_time *= s
    if "latency_s" in run.meta:
        run.meta["latency_s"] = float(run.meta["latency_s"]) * s
    run.meta["clock_scale"] = s
    return run


def closed_run_from_result(run: RunResult, facts: ServerFacts, source: str, test: str) -> ClosedRun:
    """A measured closed-loop run as calibrate's ClosedRun (rows from summarize_closed)."""
    rows = summarize_closed(run)
    return ClosedRun(source=source, test=test, model=facts.model, runs=int(run.meta.get("runs") or 1),
                     latency_mode=run.meta.get("latency_mode", "generation"),
                     latency_ms=1000.0 * float(run.meta.get("latency_s") or 0.0), version="capsim measure",
                     rows=[r for r in rows if r.metrics], server=facts.server_dict(), path=source)


def _prompt_scale(runs: list[RunResult]) -> float:
    ratios = []
    for run in runs:
        tests = run.meta.get("tests") or {}
        for r in run.records:
            if r.ok and r.test in tests:
                pp, _tg, depth, _c = tests[r.test]
                ratios.append(r.prompt_tokens / max(1, pp + depth))
    return float(np.median(ratios)) if ratios else 1.0


# ============================================================================ planning

@dataclass
class Stage:
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
    """Wall seconds one measure call of these tests takes (simulated on the planning profile)."""
    pat = ClosedLoop(combos=combos, runs=runs, warmup=False, latency_mode="generation")
    sim = simulate_closed(profile, pat)
    return sim.duration + 3 * sim.meta["latency_s"] + per_call_s


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


# ============================================================================ fitting

def fit_live(runs: list[ClosedRun], facts: ServerFacts, max_nfev: int = 150, prompt_scale: float = 1.0,
             start: Profile | None = None, progress: Callable[[int, float], None] | None = None,
             combine: str | Sequence[str] | None = ("l2", "sum"), decode_factors: bool = True) -> FitResult:
    """calibrate.fit.fit_closed with the server's engine limits and KV layout fixed, t_seq fitted.

    Same residuals (calibrate.fit.compare), loss and parameterisation as `capsim
    calibrate`; the start is the generic prior (or `start`, e.g. a perturbed profile).
    With several `combine` rules (how memory and compute time of a step add up: "l2"
    overlaps them partly, as GPUs do; "sum" not at all, as a CPU does) each is fitted
    and the one with the lower loss is kept. With `decode_factors`, pure decode steps then
    get the per-batch-size corrections the grid's concurrency ladder measured.
    """
    if combine is not None and not isinstance(combine, str):
        fits = [fit_live(runs, facts, max_nfev, prompt_scale, start, progress, c, decode_factors) for c in combine]
        best = min(fits, key=lambda f: float(np.sum(_vector(f.residuals) ** 2)))
        best.profile.provenance["combine_losses"] = {f.profile.step_model.combine: float(np.sum(_vector(f.residuals) ** 2))
                                                     for f in fits}
        return best
    if not runs:
        raise LiveError("calibration needs at least one closed-loop run")
    t_start = time.perf_counter()
    c1 = [r.metrics["tg_req_throughput"][0] for run in runs for r in run.rows
          if r.concurrency == 1 and "tg_req_throughput" in r.metrics]
    c1_tps = float(np.median(c1)) if c1 else None
    prof, origin = prior_profile(facts.server_dict(), c1_tps)
    if start is not None:
        prof.step_model = start.step_model.__class__(**dataclasses.asdict(start.step_model))
        prof.api = dataclasses.replace(start.api)
        prof.prompt_format = start.prompt_format
    prof.engine = facts.engine_limits()
    prof.model.pop("roofline_bw", None)  # the Spark's; a live box's is unknown
    origin.update({k: v for k, v in facts.origin.items()})
    if combine is not None:
        prof.step_model.combine = combine
    start_vals = dict(START) | {"t_seq": 0.05 / c1_tps if c1_tps else 1e-3}
    prior_res = compare(prof, runs, prompt_scale)
    best, res, evals = fit_parameters(prof, runs, prompt_scale, LIVE_FIT_PARAMS, LIVE_API_PARAMS, start_vals,
                                      max_nfev, progress)
    if decode_factors:
        fitted = best.provenance
        best = fit_decode_factors(best, runs, prompt_scale)
        res = compare(best, runs, prompt_scale)
        best.provenance = fitted | residual_provenance(res) | {
            "decode_factors": "measured decode speed per user at each concurrency of the grid "
                              "(calibrate.fit.fit_decode_factors)"}
    best.name = facts.model
    best.provenance |= {
        "method": "live: capsim measure closed-loop grid; scipy least_squares (soft-L1) on weighted log-ratios "
                  "of simulated to measured llama-benchy metrics (calibrate.fit.compare)",
        "engine_limits_origin": origin,
        "server": facts.to_json(),
    }
    return FitResult(best, res, prompt_scale, origin, time.perf_counter() - t_start, evals, prior_res)


def load_calibration_runs(run_dir, clock_scale: float | None = None) -> tuple[ServerFacts, list[RunResult], list[str]]:
    """A live calibration's folder read back: (server facts, runs in model time, stage folder names)."""
    from measure.runfiles import load_run

    d = Path(run_dir)
    try:
        sj = json.loads((d / "server.json").read_text())
    except (OSError, ValueError) as e:
        raise LiveError(f"{d}: not a live calibration folder ({e})") from None
    sj["kv_groups"] = tuple(KVGroup(**g) for g in sj.get("kv_groups", []))
    facts = ServerFacts(**sj)
    if clock_scale is None:
        try:
            clock_scale = float(json.loads((d / "plan.json").read_text()).get("clock_scale", 1.0))
        except (OSError, ValueError):
            clock_scale = 1.0
    folders = sorted(p.name for p in d.iterdir() if p.is_dir() and (p / "run.json").is_file())
    runs = [scale_run(load_run(d / f), clock_scale) for f in folders]
    return facts, runs, folders


def refit(run_dir, max_nfev: int = 150, clock_scale: float | None = None, **kw) -> FitResult:
    """Fit again from a kept live-calibration folder (no server needed)."""
    facts, runs, folders = load_calibration_runs(run_dir, clock_scale)
    d = Path(run_dir)
    runs_c = [closed_run_from_result(r, facts, source=str(d / f), test=f) for r, f in zip(runs, folders)]
    return fit_live(runs_c, facts, max_nfev=max_nfev, prompt_scale=_prompt_scale(runs), **kw)


# ============================================================================ live calibration

def parse_budget(text: str | float | int) -> float:
    """A time budget in seconds (> 0): '10m', '90s', '1h', '1h30m' or plain seconds."""
    try:
        secs = parse_duration(text, "budget")
    except LoadError:
        secs = 0.0
    if not secs > 0:
        raise LiveError(f"cannot read the duration {text!r} (e.g. 10m, 90s, 1h)")
    return secs


def _until_free(attempt: Callable[[], tuple[RunResult, Any]], out_dir, retries: int,
                aside_dir: Callable[[int], Path], name: str, say: Say) -> tuple[RunResult, Any, list[dict]]:
    """`attempt()` -> (run, extra), made again while capsim measure says the run's client was
    held up (its timings are the client's), at most `retries` more times. The K-th held-up run's
    folder moves to aside_dir(K). Returns (run, extra, one record per set-aside run)."""
    from measure.drivers import held_up

    set_aside: list[dict] = []
    while True:
        run, extra = attempt()
        warning = held_up(run.meta)
        if warning is None or len(set_aside) == retries:
            return run, extra, set_aside
        aside = None
        if out_dir is not None:
            aside = aside_dir(len(set_aside) + 1)
            aside.parent.mkdir(parents=True, exist_ok=True)
            Path(out_dir).rename(aside)
        set_aside.append({"run_dir": str(aside) if aside else None, "warning": warning,
                          "send_lag_s": run.meta.get("send_lag_s"), "loop_lag_s": run.meta.get("loop_lag_s")})
        say(f"  {name}: set aside and run again: {warning}")


def _measure_closed(url, model, combos, out_dir, clock_scale, endpoint, api_key, runs=1, warmup=False) -> RunResult:
    from measure import run_closed

    # concurrency= as well as combos=: measure sizes its connection pool by max(pattern.concurrency)
    pat = ClosedLoop(combos=combos, concurrency=sorted({c[3] for c in combos}), runs=runs, warmup=warmup,
                     latency_mode="generation")
    run = run_closed(url, model, pat, out_dir=out_dir, endpoint=endpoint, api_key=api_key, progress=False)
    if run.meta.get("status") != "complete":
        raise LiveError(f"measure stopped: {run.meta.get('stop_reason') or run.meta.get('status')}")
    bad = [r for r in run.records if not r.ok]
    if bad:
        raise LiveError(f"{len(bad)} of {len(run.records)} calibration requests failed (first: {bad[0].error})")
    return scale_run(run, clock_scale)


# The knee ends the ladder only from its third rung (2, 4, 8) on: a per-request step cost needs
# several batch sizes, and one rung is one stretch of time on the box. A CPU server once decoded
# 2 requests at 184 ms a step for both runs of that rung (96-121 ms in four other calibrations,
# 118 ms a minute later), which ended a ladder at 2 and left the fit to extrapolate from it.
MIN_RUNGS = 3


def _decode_tps(run: RunResult, c: int | None = None) -> dict[tuple, float]:
    return {(r.pp, r.concurrency): r.metrics["tg_req_throughput"][0] for r in summarize_closed(run)
            if "tg_req_throughput" in r.metrics and (c is None or r.concurrency == c)}


def live_calibrate(url: str, model: str | None = None, budget_s: float | str = 600.0, out_dir=None,
                   limits: dict | None = None, *, clock_scale: float = 1.0, endpoint: str = "chat", tg: int | None = None,
                   pp_max: int | None = None, runs: int = 1, falloff: float = 0.5, max_nfev: int = 150,
                   api_key: str | None = None, say: Say = _quiet, fit_start: Profile | None = None,
                   name: str | None = None, facts: ServerFacts | None = None) -> tuple[Profile, Path]:
    """Measure a closed-loop grid that fits `budget_s` on the live server and fit a profile.

    `limits`: what the server does not export, as read_server's keyword arguments
    (max_num_seqs, max_num_batched_tokens, async_scheduling, kv_groups, hf_config).
    Returns (profile, run folder); the folder keeps every measured run plus
    plan.json, fit.json, server.json and profile.json.
    """
    budget = parse_budget(budget_s)
    if runs < 1:
        raise LiveError(f"--runs must be at least 1, got {runs}")
    t_begin = time.monotonic()
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"calibrate-live-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if facts is None:
        facts = read_server(url, model, api_key=api_key, **(limits or {}))
    (out / "server.json").write_text(json.dumps(facts.to_json(), indent=2) + "\n")
    say(f"server: {facts.model} at {facts.url}: max_model_len {facts.max_model_len}, KV {facts.num_gpu_blocks} blocks "
        f"of {facts.block_size} ({facts.kv_cache_size_tokens} tokens), max_num_seqs {facts.max_num_seqs}, "
        f"max_num_batched_tokens {facts.max_num_batched_tokens}, async {facts.async_scheduling}")
    tg_ = int(tg or 32)
    stages: list[Stage] = []
    measured: list[RunResult] = []
    folders: list[str] = []

    def remaining() -> float:
        return budget - (time.monotonic() - t_begin)

    def run_stage(stage: Stage, warmup: bool = False) -> RunResult:
        folder = out / f"{len(stages) + 1:02d}-{stage.name}"
        say(f"  {folder.name}: {len(stage.combos)} test(s), predicted {stage.predicted_s:.0f} s "
            f"({remaining():.0f} s of budget left)")
        t0 = time.monotonic()
        # a stage whose client was held up is run once more; the first run moves to OUT/set-aside/,
        # where refit does not read it
        run, _, aside = _until_free(
            lambda: (_measure_closed(url, facts.model, stage.combos, folder, clock_scale, endpoint, api_key,
                                     runs=runs, warmup=warmup), None),
            folder, 1, lambda k: out / "set-aside" / folder.name, folder.name, say)
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
    probe = run_stage(Stage("probe", [(p0, tg_probe, 0, 1)], predicted_s=math.nan), warmup=True)
    row = summarize_closed(probe)[0].metrics
    decode_s = 1.0 / row["tg_req_throughput"][0]
    latency_s = float(probe.meta.get("latency_s") or 0.0)
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

    # 5. fit
    runs_c = [closed_run_from_result(r, facts, source=str(out / f), test=f) for r, f in zip(measured, folders)]
    scale = _prompt_scale(measured)
    say(f"  fitting on {sum(len(r.rows) for r in runs_c)} measured tests ({time.monotonic() - t_begin:.0f} s so far)")
    fr = fit_live(runs_c, facts, max_nfev=max_nfev, prompt_scale=scale, start=fit_start)
    prof = fr.profile
    prof.name = name or facts.model
    prof.provenance["budget_s"] = budget
    prof.provenance["clock_scale"] = clock_scale
    prof.provenance["run_dir"] = str(out)
    prof.provenance["wall_s"] = time.monotonic() - t_begin
    prof.save(out / "profile.json")
    (out / "plan.json").write_text(json.dumps({"budget_s": budget, "wall_s": time.monotonic() - t_begin,
                                               "clock_scale": clock_scale,
                                               "tg": tg_, "prompt_sizes": pps, "ladder": ladder,
                                               "stages": [s.to_json() for s in stages]}, indent=2) + "\n")
    (out / "fit.json").write_text(json.dumps({"seconds": fr.seconds, "evaluations": fr.evaluations,
                                              "prompt_scale": fr.prompt_scale, "origin": fr.origin,
                                              "fitted": prof.provenance["fitted_parameters"],
                                              "residuals": [r.to_json() for r in fr.residuals],
                                              "prior_residuals": [r.to_json() for r in fr.prior_residuals]},
                                             indent=2, default=str) + "\n")
    say(f"  done in {time.monotonic() - t_begin:.0f} s: median |error| "
        f"{prof.provenance['median_abs_error_pct']:.1f}% over {len(fr.residuals)} figures")
    return prof, out


# ============================================================================ live validation

@dataclass
class LiveLoad:
    """One open-loop test: vllm bench serve's random dataset, in model time."""

    name: str
    input_len: int
    output_len: int
    num_prompts: int
    rate: float
    range_ratio: float = 0.0
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    endpoint: str = "completions"

    def workload(self) -> RandomWorkload:
        return RandomWorkload(self.input_len, self.output_len, self.range_ratio)

    def pattern(self, clock_scale: float = 1.0) -> OpenLoop:
        return OpenLoop(rate=self.rate * clock_scale, burstiness=self.burstiness,
                        max_concurrency=self.max_concurrency, seed=self.seed)

    def params(self) -> dict:
        chat = self.endpoint == "chat"
        return {"backend": "openai-chat" if chat else "vllm",
                "endpoint": "/v1/chat/completions" if chat else "/v1/completions", "dataset_name": "random",
                "random_input_len": self.input_len, "random_output_len": self.output_len,
                "random_range_ratio": self.range_ratio, "random_prefix_len": 0, "num_prompts": self.num_prompts,
                "request_rate": self.rate, "burstiness": self.burstiness, "max_concurrency": self.max_concurrency,
                "seed": self.seed, "ignore_eos": True}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class _Arrivals(OpenLoop):
    """An OpenLoop whose arrival offsets are given (a measured run's schedule)."""

    def __init__(self, offsets: np.ndarray, max_concurrency: int | None = None):
        super().__init__(rate=math.inf, max_concurrency=max_concurrency)
        self._offsets = np.asarray(offsets, dtype=float)

    def arrival_times(self, n: int) -> np.ndarray:
        return self._offsets[:n]


def replay_specs(run: RunResult) -> tuple[list[RequestSpec], np.ndarray]:
    """The requests a measured run sent (server-side prompt counts) and when they were sent.

    Send times (RequestRecord.start_time: after any client-side semaphore) rather than the
    schedule: the server saw the requests then, and the measured latencies count from then.
    """
    recs = sorted(run.records, key=lambda r: r.request_id)
    specs = [RequestSpec(prompt_tokens=int(r.prompt_tokens), max_tokens=int(r.max_tokens or r.output_tokens or 1),
                         output_tokens=int(r.max_tokens or r.output_tokens or 1), tag="replay") for r in recs]
    offsets = np.array([r.start_time - run.start_time for r in recs])
    return specs, offsets


def simulate_replay(profile: Profile, run: RunResult):
    """The measured requests at their measured send times, on the model: (RunResult, trace)."""
    specs, offsets = replay_specs(run)
    order = np.argsort(offsets, kind="stable")
    specs = [specs[i] for i in order]
    trace: list[dict] = []
    stats: list = []
    # step by step: the engine's fast-forward skips the admission a step-by-step scheduler (and vLLM)
    # makes right after a preemption, so it under-counts preemptions under KV pressure
    sim = simulate_open(profile, specs, _Arrivals(offsets[order]), trace=trace.append, stats=stats,
                        fast_forward=False)
    sim.meta["engine_steps"] = stats[0].steps if stats else None
    return sim, trace


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


def _scrape_steps(url: str, api_key: str | None = None) -> float | None:
    """vllm:iteration_tokens_total's count: engine steps that returned tokens (None if not exported)."""
    import httpx

    from measure.client import split_url

    base, _pub, auth = split_url(url)
    try:
        r = httpx.get(base + "/metrics", auth=auth, timeout=10, trust_env=False,
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
                 for r in runs for a in r.run.meta.get("set_aside", [])]
        return "\n".join([format_validation(self.validation, self.floor)] + lines)

    def to_json(self) -> dict:
        out = self.validation.to_json()
        if self.floor is not None:
            out["noise_floor"] = self.floor.to_json()
        out["loads"] = [{"load": r.load.to_json(), "run_dir": str(r.run_dir) if r.run_dir else None,
                         "extras": {k: {"measured": a, "predicted": b} for k, (a, b) in r.extras.items()},
                         "send_lag_s": r.run.meta.get("send_lag_s"), "loop_lag_s": r.run.meta.get("loop_lag_s"),
                         "set_aside": r.run.meta.get("set_aside", [])}
                        for r in self.results + self.repeats]
        return out


EXTRA_METRICS = ("num_preemptions", "output_steps", "mean_waiting", "peak_waiting", "mean_running")


def predict_live(profile: Profile, run: RunResult, load: LiveLoad, replications: int = 5):
    """(prediction, lo, hi, median, sim run, trace): replication 0 replays the measured run."""
    sim, trace = simulate_replay(profile, run)
    s0 = summarize_open(sim)
    s0["num_preemptions"] = sim.meta["num_preemptions"]
    reps = [s0]
    specs, _ = replay_specs(run)
    for r in range(1, replications):
        rng = np.random.default_rng([load.seed, r])
        pick = [specs[i] for i in rng.integers(0, len(specs), size=len(specs))]
        pat = OpenLoop(rate=load.rate, burstiness=load.burstiness, max_concurrency=load.max_concurrency,
                       seed=load.seed + r)
        sr = simulate_open(profile, pick, pat, fast_forward=False)
        s = summarize_open(sr)
        s["num_preemptions"] = sr.meta["num_preemptions"]
        reps.append(s)
    keys = [k for k, v in s0.items() if isinstance(v, (int, float))]
    arr = {k: np.array([float(x.get(k, math.nan)) for x in reps]) for k in keys}
    lo = {k: float(np.nanpercentile(a, 5)) for k, a in arr.items()}
    hi = {k: float(np.nanpercentile(a, 95)) for k, a in arr.items()}
    med = {k: float(np.nanmedian(a)) for k, a in arr.items()}
    return s0, lo, hi, med, sim, trace


def measure_load(url: str, load: LiveLoad, out_dir=None, model: str | None = None, clock_scale: float = 1.0,
                 api_key: str | None = None, retries: int = 0, say: Say = _quiet) -> tuple[RunResult, float | None]:
    """Run one open-loop load live; returns (run in model time, engine steps during it or None).

    A run whose client was held up is run again, up to `retries` times: measure's
    schedule_warning (sends fell behind the arrival schedule, so the server got another load
    than the one predicted) or client_stall_warning (the client's event loop stalled, so the
    tokens of the requests in flight were stamped late). The set-aside runs keep their folders
    (NAME-set-aside-K) and are listed in the kept run's meta["set_aside"].
    """
    from measure import run_open

    if retries < 0:
        raise LiveError(f"retries must be 0 or more, not {retries}")

    def attempt():
        steps0 = _scrape_steps(url, api_key)
        run = run_open(url, model, load.workload(), load.pattern(clock_scale), load.num_prompts, out_dir=out_dir,
                       endpoint=load.endpoint, api_key=api_key, progress=False)
        steps1 = _scrape_steps(url, api_key)
        if run.meta.get("status") != "complete":
            raise LiveError(f"{load.name}: measure stopped: {run.meta.get('stop_reason') or run.meta.get('status')}")
        return run, (steps0, steps1)

    run, (steps0, steps1), set_aside = _until_free(
        attempt, out_dir, retries, lambda k: Path(out_dir).with_name(f"{Path(out_dir).name}-set-aside-{k}"),
        load.name, say)
    if set_aside:
        run.meta["set_aside"] = set_aside
    scale_run(run, clock_scale)
    steps = steps1 - steps0 if steps0 is not None and steps1 is not None else None
    return run, steps


def compare_load(profile: Profile, load: LiveLoad, run: RunResult, run_dir: Path | None, steps: float | None,
                 replications: int = 5, clock_scale: float = 1.0) -> LiveResult:
    pred, lo, hi, med, sim, trace = predict_live(profile, run, load, replications)
    extras: dict[str, tuple[float, float]] = {}
    sd = run.meta.get("server_delta") or {}
    if "num_preemptions" in sd:
        extras["num_preemptions"] = (float(sd["num_preemptions"]), float(sim.meta["num_preemptions"]))
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
                  retries: int = 1, say: Say = _quiet) -> LiveValidation:
    """Run each load live, predict it on the model, and score (see the module doc)."""
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"validate-live-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    source = f"live {url}"
    v = Validation()
    results, repeats = [], []
    for rep in range(2 if repeat else 1):
        for load in loads:
            d = out / (load.name + ("" if rep == 0 else "-repeat"))
            say(f"  {d.name}: {load.num_prompts} requests of ~{load.input_len}+{load.output_len} tokens at "
                f"{load.rate:.3g}/s" + (f", max concurrency {load.max_concurrency}" if load.max_concurrency else ""))
            run, steps = measure_load(url, load, d, model or None, clock_scale, api_key, retries, say)
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


# ============================================================================ default loads

def single_request_seconds(profile: Profile, prompt: int, output: int) -> float:
    """End-to-end latency of one request alone on the box."""
    spec = RequestSpec(prompt_tokens=prompt, max_tokens=output, output_tokens=output)
    sim = simulate_open(profile, [spec], OpenLoop(rate=math.inf))
    return float(sim.records[0].e2el or math.nan)


def seed_loads(profile: Profile, max_model_len: int | None = None, scale: float | None = None,
               length_scale: float | None = None, budget_s: float = 600.0, endpoint: str = "completions",
               say: Say = _quiet) -> list[LiveLoad]:
    """The seed's open-loop tests H and J (random 4000/500, range 0.9) scaled to this server.

    - token lengths x `length_scale` (default: the largest request fills at most 45% of
      max_model_len, never more than the seed's);
    - request rates x `scale` (default: the seed box's single-request latency for the
      original shape over this box's for the scaled shape, so each load is about as
      heavy relative to the box as it was on the DGX Spark);
    - num_prompts cut so that each load's arrivals span at most its share of `budget_s`.
    I (ShareGPT: real text, lengths cannot be scaled) is left out.
    """
    from .seed import seed_open_runs

    ref = load_profile("spark-gemma4-26b-a4b")
    mml = max_model_len or profile.engine.max_model_len
    loads = []
    runs = [r for r in seed_open_runs() if r.dataset == "random"]
    for run in runs:
        p = run.params
        n_in, n_out, rr = int(p["random_input_len"]), int(p["random_output_len"]), float(p["random_range_ratio"] or 0)
        ls = length_scale if length_scale is not None else min(1.0, 0.45 * mml / ((n_in + n_out) * (1 + rr)))
        i2, o2 = max(16, int(round(n_in * ls))), max(4, int(round(n_out * ls)))
        k = scale
        if k is None:
            k = single_request_seconds(ref, n_in + 13, n_out) / single_request_seconds(profile, i2 + 1, o2)
        rate = float(p["request_rate"]) * k
        n = int(p["num_prompts"])
        n2 = max(8, min(n, int(rate * budget_s / max(1, len(runs)))))
        mc = p.get("max_concurrency")
        loads.append(LiveLoad(name=f"{run.test}-scaled", input_len=i2, output_len=o2, range_ratio=rr, num_prompts=n2,
                              rate=rate, burstiness=float(p.get("burstiness") or 1.0),
                              max_concurrency=int(mc) if mc else None, seed=int(p.get("seed") or 0),
                              endpoint=endpoint))
        say(f"  {run.test}: {n_in}/{n_out} tokens -> {i2}/{o2} (x{ls:.3g}); {p['request_rate']}/s -> {rate:.3g}/s "
            f"(x{k:.3g}); {n} -> {n2} prompts")
    return loads


def load_loads(path: str) -> list[LiveLoad]:
    """Loads from a JSON file: a list of LiveLoad fields."""
    try:
        items = json.loads(Path(path).read_text())
        return [LiveLoad(**d) for d in items]
    except (OSError, ValueError, TypeError) as e:
        raise LiveError(f"--loads {path}: {e}") from None


# ============================================================================ CLI

def _click():
    import click
    return click


def live_limit_options(f):
    """Flags for what the server may not export; shared by calibrate --live and validate --live."""
    click = _click()
    opts = [
        click.option("--model", default=None, help="Model id (default: the first one /v1/models lists)."),
        click.option("--max-num-seqs", type=int, default=None, help="The server's --max-num-seqs (vLLM does not export it)."),
        click.option("--max-num-batched-tokens", type=int, default=None,
                     help="The server's --max-num-batched-tokens (vLLM does not export it)."),
        click.option("--async-scheduling/--no-async-scheduling", default=None,
                     help="Whether the server schedules asynchronously (vLLM GPU default on, CPU off)."),
        click.option("--kv-groups", default=None,
                     help="KV-cache groups COUNTxBLOCK[@WINDOW], e.g. 1x128,5x128@512 (hybrid models)."),
        click.option("--hf-config", default=None, help="The model's config.json: KV-cache groups from its layer types."),
        click.option("--speed", "clock_scale", type=float, default=1.0, show_default=True,
                     help="A capsim twin's --speed: measured times are multiplied by it (model time)."),
        click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="Bearer token."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _limits(max_num_seqs, max_num_batched_tokens, async_scheduling, kv_groups, hf_config) -> dict:
    return {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
            "async_scheduling": async_scheduling, "kv_groups": kv_groups, "hf_config": hf_config}


def run_calibrate_live(url, out_path, budget, run_dir, name, max_evals, as_json, tg=None, pp_max=None, runs=1, **kw):
    """What `capsim calibrate --live URL` does (calibrate/cli.py calls this)."""
    click = _click()
    say = _quiet if as_json else (lambda m: click.echo(m, err=True))
    lim = _limits(kw.pop("max_num_seqs", None), kw.pop("max_num_batched_tokens", None),
                  kw.pop("async_scheduling", None), kw.pop("kv_groups", None), kw.pop("hf_config", None))
    try:
        prof, d = live_calibrate(url, kw.get("model"), budget, run_dir, lim, clock_scale=kw.get("clock_scale", 1.0),
                                 api_key=kw.get("api_key"), max_nfev=max_evals, say=say, name=name, tg=tg,
                                 pp_max=pp_max, runs=runs)
    except LiveError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:  # measure's errors
        from measure.errors import MeasureError
        if isinstance(e, MeasureError):
            raise click.ClickException(str(e)) from None
        raise
    if out_path:
        prof.save(out_path)
    pv = prof.provenance
    if as_json:
        click.echo(json.dumps({"profile": out_path or str(d / "profile.json"), "run_dir": str(d),
                               "fitted": pv["fitted_parameters"], "median_abs_error_pct": pv["median_abs_error_pct"],
                               "engine_limits_origin": pv["engine_limits_origin"], "residuals": pv["residuals"]},
                              indent=2, default=str))
        return prof, d
    click.echo(f"{'run':<22} {'shape':<26} {'metric':<20} {'measured':>10} {'simulated':>10} {'error':>8}")
    for r in pv["residuals"]:
        click.echo(f"{r['test']:<22} {r['shape']:<26} {r['metric']:<20} {r['measured']:>10.2f} {r['simulated']:>10.2f} "
                   f"{r['error_pct']:>+7.1f}%")
    click.echo(f"\nmedian |error| {pv['median_abs_error_pct']:.1f}% over {len(pv['residuals'])} figures")
    for k, v in pv["engine_limits_origin"].items():
        click.echo(f"{k}: {v}")
    click.echo("fitted: " + ", ".join(f"{k}={v:.4g}" for k, v in pv["fitted_parameters"].items()))
    click.echo(f"run folder {d}; wrote {out_path or d / 'profile.json'}")
    return prof, d


def run_validate_live(url, profile_path, loads_path, scale, length_scale, budget, repeat, replications, run_dir,
                      as_json, endpoint="completions", **kw):
    """What `capsim validate --live URL --profile P` does (calibrate/cli.py calls this)."""
    click = _click()
    say = _quiet if as_json else (lambda m: click.echo(m, err=True))
    try:
        prof = load_profile(profile_path)
        lim = _limits(kw.get("max_num_seqs"), kw.get("max_num_batched_tokens"), kw.get("async_scheduling"),
                      kw.get("kv_groups"), kw.get("hf_config"))
        facts = read_server(url, kw.get("model"), api_key=kw.get("api_key"), **lim)
        prof = apply_server_limits(prof, facts)  # e.g. a server restarted with other limits
        if loads_path:
            loads = load_loads(loads_path)
        else:
            say("default loads: the seed's H and J scaled to this server (see calibrate.live.seed_loads)")
            loads = seed_loads(prof, facts.max_model_len, scale, length_scale, parse_budget(budget), endpoint, say)
        lv = live_validate(url, prof, loads, run_dir, model=facts.model, clock_scale=kw.get("clock_scale", 1.0),
                           replications=replications, repeat=repeat, api_key=kw.get("api_key"),
                           retries=kw.get("retries", 1), say=say)
    except LiveError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:
        from measure.errors import MeasureError
        from simulator.profile import ProfileError
        if isinstance(e, (MeasureError, ProfileError)):
            raise click.ClickException(str(e)) from None
        raise
    click.echo(json.dumps(lv.to_json(), indent=2, default=str) if as_json else lv.format())
    return lv
