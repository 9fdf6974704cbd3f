"""Validation: predict open-loop runs that calibration never saw, and score the predictions.

Replication 0 replays the run's own seed (the very requests it measured) and is the prediction;
the others draw other seeds and the profile's uncertainty, and make the 5-95 % band.
Design: docs/design/calibration.md.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.load import OpenLoop, RampUp
from simulator.profile import Profile
from simulator.replicate import replicate_open
from simulator.workload import (PrefixRepetitionWorkload, PromptFormat, RandomWorkload, ShareGPTWorkload, Workload,
                                WorkloadError, bundled_sharegpt_path, tokenizer_counter)

from .architectures import layout_guessed
from .results import OpenRun

FAMILIES = {
    "ttft": ("mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p95_ttft_ms", "p99_ttft_ms"),
    "tpot": ("mean_tpot_ms", "median_tpot_ms", "p90_tpot_ms", "p95_tpot_ms", "p99_tpot_ms",
             "mean_itl_ms", "median_itl_ms", "p90_itl_ms", "p95_itl_ms", "p99_itl_ms"),
    "e2el": ("mean_e2el_ms", "median_e2el_ms", "p90_e2el_ms", "p95_e2el_ms", "p99_e2el_ms"),
    "throughput": ("request_throughput", "output_throughput", "total_token_throughput", "max_concurrent_requests"),
    "probe": ("probe_median_e2el_ms", "probe_p99_e2el_ms", "probe_max_e2el_ms"),  # --probe-request-rate's
}
OPTIONAL_FAMILIES = ("probe",)  # told only where a run has them
METRICS = [m for fam in FAMILIES.values() for m in fam]
FAMILY_OF = {m: f for f, ms in FAMILIES.items() for m in ms}
CAPACITY_THRESHOLDS_S = (2.0, 5.0, 10.0)
# A measured stream whose chunks per counted token stray further than this from one is named: every
# run of the suite but gpt-oss's and the speculative one streams 1.00 (to a chunk a request).
STREAM_TOLERANCE = 1.2


@dataclass
class Row:
    source: str
    test: str
    metric: str
    measured: float
    predicted: float
    band_lo: float
    band_hi: float
    median: float = math.nan  # median over replications (other seeds included)

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted - self.measured) / self.measured if self.measured else math.nan

    @property
    def in_band(self) -> bool:
        return self.band_lo <= self.measured <= self.band_hi

    def to_json(self) -> dict:
        return {"source": self.source, "test": self.test, "metric": self.metric, "measured": self.measured,
                "predicted": self.predicted, "band_lo": self.band_lo, "band_hi": self.band_hi,
                "error_pct": self.error_pct, "in_band": self.in_band, "median": self.median}


@dataclass
class Validation:
    rows: list[Row] = field(default_factory=list)
    capacity: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def families(self) -> dict[str, float]:
        out = {}
        for fam in FAMILIES:
            errs = [abs(r.error_pct) for r in self.rows if FAMILY_OF.get(r.metric) == fam and r.error_pct == r.error_pct]
            if errs or fam not in OPTIONAL_FAMILIES:
                out[fam] = float(np.median(errs)) if errs else math.nan
        return out

    def to_json(self) -> dict:
        return {"rows": [r.to_json() for r in self.rows], "families": self.families(), "capacity": self.capacity,
                "notes": self.notes}


def default_tokenizer() -> str | None:
    """A real tokenizer for ShareGPT lengths: $CAPSIM_TOKENIZER, else the test server's Gemma 3 one if set up."""
    env = os.environ.get("CAPSIM_TOKENIZER")
    if env:
        return env
    home = os.environ.get("CAPSIM_VLLM_HOME", os.path.expanduser("~/.cache/capsim"))
    cand = Path(home) / "gemma3-dummy" / "tokenizer.json"
    return str(cand) if cand.is_file() else None


def _template_tokens(total_in, n: int, raw: float, special: int, default: int) -> int:
    """A chat template's tokens a request, read off a run's total input tokens (vllm bench serve counts
    each prompt's `raw` tokens, the server the special and template tokens around them); `default` where
    the total is missing or the count is no template's."""
    if total_in and n:
        per = (float(total_in) - raw) / n - special
        if 0 <= per < 500:
            return int(round(per))
    return default


def workload_for(run: OpenRun, profile: Profile, tokenizer: str | None = None) -> Workload:
    """The workload a measured run sent, rebuilt from its parameters.

    Chat-template tokens and (for ShareGPT) how much of the reference output the
    model generated before EOS are workload facts read off the run's token totals;
    no latency of the run is used.
    """
    p = run.params
    fmt = profile.prompt_format
    res = run.result
    n = int(p.get("num_prompts") or res.get("completed") or 0)
    chat = "chat" in str(p.get("backend", "openai-chat")) or "chat" in str(p.get("endpoint", ""))
    if run.dataset == "random":
        base = RandomWorkload(int(p["random_input_len"]), int(p["random_output_len"]),
                              float(p.get("random_range_ratio") or 0.0), int(p.get("random_prefix_len") or 0),
                              fmt=PromptFormat(fmt.special_tokens, 0, fmt.vocab_size))
        raw, outs, _ = base.lengths(n, int(p.get("seed") or 0)) if n else (None, None, None)
        raw_total = float(raw.sum()) + n * base.prefix_len if n else 0.0  # the prompts as vLLM counts them
        template = _template_tokens(res.get("total_input_tokens"), n, raw_total, fmt.special_tokens,
                                    fmt.chat_template_tokens if chat else 0)
        frac = 1.0
        total_out = res.get("total_output_tokens")
        if total_out and n and float(total_out) < 0.98 * float(outs.sum()):  # stopped at EOS before max_tokens
            frac = max(1e-3, float(total_out) / float(outs.sum()))
        return RandomWorkload(base.input_len, base.output_len, base.range_ratio, base.prefix_len,
                              fmt=PromptFormat(fmt.special_tokens, template, fmt.vocab_size), output_fraction=frac)
    if run.dataset == "prefix_repetition":
        kw = {k: int(p[f"prefix_repetition_{k}"]) for k in ("prefix_len", "suffix_len", "num_prefixes", "output_len")
              if p.get(f"prefix_repetition_{k}") is not None}
        base = PrefixRepetitionWorkload(**kw, fmt=PromptFormat(fmt.special_tokens, 0, fmt.vocab_size),
                                        shuffle=not p.get("disable_shuffle"))
        sent = base.sent(n)
        template = _template_tokens(res.get("total_input_tokens"), sent, sent * (base.prefix_len + base.suffix_len),
                                    fmt.special_tokens, fmt.chat_template_tokens if chat else 0)
        total_out = res.get("total_output_tokens")
        frac = 1.0  # it may stop at EOS: the share of output_len it wrote, read off the total
        if total_out and sent:
            frac = min(1.0, max(1e-3, float(total_out) / (sent * base.output_len)))
        return dataclasses.replace(base, fmt=PromptFormat(fmt.special_tokens, template, fmt.vocab_size),
                                   output_fraction=frac)
    if run.dataset == "sharegpt":
        path = p.get("dataset_path")
        if not path or not Path(path).is_file():
            path = bundled_sharegpt_path()
        tok = tokenizer or default_tokenizer()
        sub = PromptFormat(fmt.special_tokens, fmt.chat_template_tokens if chat else 0, fmt.vocab_size)
        if path is None:  # the seed's test I ships its lengths (a plain install has no ShareGPT file)
            from .seed_sharegpt import shipped_sharegpt
            wl = shipped_sharegpt(run, sub, tok)
        else:
            # the run's --sharegpt-output-len, --disable-shuffle and --no-oversample pick which requests it sent
            wl = ShareGPTWorkload(path=path, fmt=sub, count_tokens=tokenizer_counter(tok) if tok else None,
                                  output_len=p.get("sharegpt_output_len"), shuffle=not p.get("disable_shuffle"),
                                  oversample=not p.get("no_oversample"))
        total_out, total_in = res.get("total_output_tokens"), res.get("total_input_tokens")
        if (total_out or total_in) and n:
            sample = wl.sample(n, int(p.get("seed") or 0))
            if total_out:
                wl.output_fraction = min(1.0, float(total_out) / sum(s.max_tokens for s in sample))
            # vllm bench serve counts each prompt with the served model's tokenizer (no chat
            # template): the tokenizer at hand counts ShareGPT 8% under to 12% over it
            raw = sum(s.raw_prompt_tokens or 0 for s in sample)
            if total_in and raw:
                wl.prompt_scale = float(total_in) / raw
        return wl
    raise WorkloadError(f"{run.test}: cannot rebuild a {run.dataset!r} workload")


def pattern_for(run: OpenRun) -> OpenLoop:
    p = run.params
    rate = p.get("request_rate", math.inf)
    rate = math.inf if rate in (None, "inf") else float(rate)
    mc = p.get("max_concurrency")
    return OpenLoop(rate=rate, burstiness=float(p.get("burstiness") or 1.0), max_concurrency=int(mc) if mc else None,
                    seed=int(p.get("seed") or 0), ramp_up=RampUp.from_keys(p),
                    probe_rate=float(p.get("probe_request_rate") or 0.0),
                    # what capsim measure sent, else what the command's flags send
                    warmups=int(p["warmups"]) if "warmups" in p else
                    OpenLoop.warmups_of(p.get("num_warmups"), p.get("ready_check_timeout_sec")))


def predict_run(run: OpenRun, profile: Profile, replications: int = 10, tokenizer: str | None = None,
                n_jobs: int | None = None):
    wl = workload_for(run, profile, tokenizer)
    n = int(run.params.get("num_prompts") or run.result.get("completed"))
    med, lo, hi, runs = replicate_open(profile, wl, n, pattern_for(run), replications, n_jobs=n_jobs)
    pred = runs[0]
    specs = wl.sample(n, int(run.params.get("seed") or 0))
    pred["_max_context"] = max((s.prompt_tokens + s.output_tokens for s in specs), default=0)
    return pred, lo, hi, med


def outside_envelope(test: str, pred: dict, profile: Profile) -> str | None:
    """A note when a prediction reaches batch sizes or contexts that calibration never ran."""
    env = profile.provenance.get("envelope") or {}
    out = []
    peak, cal_c = pred.get("max_concurrent_requests"), env.get("max_concurrency")
    if peak and cal_c and peak > cal_c:
        out.append(f"{peak:.0f} requests in flight at the peak, calibration ran at most {cal_c}")
    ctx, cal_ctx = pred.get("_max_context"), env.get("max_context")
    if ctx and cal_ctx and ctx > cal_ctx:
        out.append(f"requests of up to {ctx} tokens, calibration's longest was {cal_ctx}")
    return f"{test}: outside the calibrated envelope ({'; '.join(out)}): extrapolated" if out else None


def acceptance_note(run: OpenRun, profile: Profile, pred: dict | None = None) -> str | None:
    """A note when the server kept far more or fewer tokens a speculative step than the prediction did.

    vllm bench serve reads the server's counters into `spec_decode_acceptance_length` (1 + accepted drafts
    per draft step). It is a result of the load, so only reported here, never fed to the prediction: the
    acceptance depends on the text, and random-token prompts are rejected far more than book excerpts.
    The simulated run counts its drafts the same way (`pred`), drafts cut short at an answer's end included;
    without it the profile's closed-form tokens a step stand in."""
    kept = run.result.get("spec_decode_acceptance_length")
    if not profile.engine.num_speculative_tokens or not _positive(kept):
        return None
    simulated = (pred or {}).get("spec_decode_acceptance_length")
    assumed = simulated if _positive(simulated) else profile.engine.tokens_per_spec_step
    if abs(math.log(assumed / kept)) < math.log(1.2):
        return None
    who = "the simulated server kept" if _positive(simulated) else "the profile assumes"
    return (f"{run.test}: the server kept {kept:.2f} tokens a speculative step (spec_decode_acceptance_length) "
            f"where {who} {assumed:.2f}, so its steps keep {assumed / kept:.1f}x the tokens the "
            "server's did (acceptance depends on the text; docs/physics.md, Speculative decoding)")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def stream_note(run: OpenRun, profile: Profile) -> str | None:
    """A note when the measured stream did not carry one chunk per token its usage counted.

    vLLM streams a chunk per generated token (every run of the suite does, to a chunk a request), and
    so does the simulated server; vllm bench serve's ITL is a gap between chunks and its TPOT divides
    by the usage's tokens. gpt-oss (harmony) streams fewer chunks than its usage counts, with silences
    of seconds (09-reasoning: median ITL 53 ms, mean 230 ms), and at 0.1 req/s more chunks than
    counted tokens. Speculative steps put several tokens in a chunk by design (acceptance_note)."""
    res = run.result
    if profile.engine.num_speculative_tokens:
        return None
    try:
        done, tokens = int(res["completed"]), float(res["total_output_tokens"])
        e2e, ttft, itl = float(res["mean_e2el_ms"]), float(res["mean_ttft_ms"]), float(res["mean_itl_ms"])
    except (KeyError, TypeError, ValueError):
        return None
    if done <= 0 or not tokens > done or not itl > 0 or not e2e > ttft:  # NaN fails every comparison
        return None
    chunks = (e2e - ttft) / itl + 1.0  # a request's chunks: its first, then one per inter-chunk gap
    per = chunks / (tokens / done)
    if abs(math.log(per)) < math.log(STREAM_TOLERANCE):
        return None
    return (f"{run.test}: the server streamed about {chunks:.0f} chunks a request for {tokens / done:.0f} counted "
            f"tokens ({per:.2f} a token); capsim streams a chunk a token, so ITL's mean and tail (and TPOT, where "
            "chunks outnumber counted tokens) measure a stream it does not simulate")


def failed_note(run: OpenRun) -> str | None:
    """What the server's failed requests do to a test's comparison: vllm bench serve computes every
    figure over the requests that completed, the simulated server completes them all."""
    failed, done = int(run.result.get("failed") or 0), run.result.get("completed")
    if done is None:  # a source that does not count them
        return None
    if not done:
        return f"{run.test}: no request completed ({failed} failed on the server): not validated"
    if failed:
        return (f"{run.test}: {failed} of {failed + done} requests failed on the server; its figures are the "
                f"{done} completed ones', the prediction's all {failed + done}")
    return None


def printout_note(run: OpenRun) -> str | None:
    """A test read from the report vllm bench serve printed, where its result JSON is missing."""
    if run.path and Path(run.path).suffix in (".md", ".log"):
        return (f"{run.test}: read from the report printed in {Path(run.path).name} (its result JSON is missing or "
                "cut off): figures rounded to 0.01")
    return None


def validate(runs: list[OpenRun], profile: Profile, replications: int = 10, tokenizer: str | None = None,
             progress=None, n_jobs: int | None = None) -> Validation:
    out = Validation()
    if layout_guessed(profile.model or {}):
        arch = profile.model["architecture"]
        out.notes.append(f"{profile.model.get('name') or profile.name} is in no family table, so its layout "
                         f"is guessed ({'; '.join(arch.get('assumed') or ['from its name'])}): the decode band is "
                         "wider for it")
    for skipped in dict.fromkeys(x for run in runs for x in (run.server or {}).get("skipped_tests", ())):
        out.notes.append(f"validated without {skipped}")
    preds = {}
    unbuilt: list[WorkloadError] = []
    for i, run in enumerate(runs):
        for note in (printout_note(run), failed_note(run)):
            if note:
                out.notes.append(note)
        if run.result.get("completed") != 0:  # else no request came back: nothing to hold a prediction against
            _compare(run, profile, replications, tokenizer, n_jobs, out, preds, unbuilt)
        if progress:
            progress(i + 1, len(runs), run)
    if unbuilt and not out.rows:
        raise unbuilt[0]
    out.capacity = capacity_rows(runs, preds)
    return out


def _compare(run: OpenRun, profile: Profile, replications: int, tokenizer: str | None, n_jobs: int | None,
             out: Validation, preds: dict, unbuilt: list[WorkloadError]) -> None:
    """One test predicted and held against what it measured: its rows and notes go to `out`."""
    try:
        pred, lo, hi, med = predict_run(run, profile, replications, tokenizer, n_jobs)
    except WorkloadError as e:  # one test this install cannot rebuild (a ShareGPT file missing): the others stand
        unbuilt.append(e)
        out.notes.append(f"not validated: {e}")
        return
    preds[(run.source, run.test)] = pred
    notes = (outside_envelope(run.test, pred, profile), acceptance_note(run, profile, pred), stream_note(run, profile))
    for note in notes:
        if note:
            out.notes.append(note)
    unmeasured = []
    for m in METRICS:  # vllm bench serve writes only the percentiles it was asked for: an absent one is no news
        if m in run.result and m in pred:
            measured = float("nan") if run.result[m] is None else float(run.result[m])
            if not math.isfinite(measured):  # NaN or null: no figure to hold a prediction against
                unmeasured.append(m)
                continue
            out.rows.append(Row(run.source, run.test, m, measured, pred[m], lo[m], hi[m], med[m]))
    if unmeasured:
        out.notes.append(f"{run.test}: {', '.join(unmeasured)} not a number in the result: not compared")
    if "probe_completed" in run.result and "probe_completed" not in pred:
        out.notes.append(f"{run.test}: its probe keys are not compared: the result does not say the probe's rate "
                         "(vllm bench serve writes no --probe-request-rate; its command or log does)")


def capacity(rates_p95: list[tuple[float, float]], threshold_s: float) -> float | None:
    """Highest rate whose p95 TTFT stays under the threshold (11-rate-sweep's rule)."""
    ok = [r for r, p95 in rates_p95 if p95 < threshold_s * 1000]
    return max(ok) if ok else None


def capacity_rows(runs: list[OpenRun], preds: dict) -> list[dict]:
    out = []
    by_source: dict[str, list[OpenRun]] = {}
    for r in runs:
        # a step where no request completed has no prediction and is left out
        if r.test.startswith("11-rate-sweep@") and (r.source, r.test) in preds:
            by_source.setdefault(r.source, []).append(r)
    for source, sweep in by_source.items():
        meas = [(float(r.params["request_rate"]), float(r.result["p95_ttft_ms"])) for r in sweep]
        pred = [(float(r.params["request_rate"]), preds[(source, r.test)]["p95_ttft_ms"]) for r in sweep]
        for t in CAPACITY_THRESHOLDS_S:
            m, p = capacity(meas, t), capacity(pred, t)
            out.append({"source": source, "threshold_s": t, "measured_rps": m, "predicted_rps": p, "match": m == p})
    return out


def noise_floor(runs_a: list[OpenRun], runs_b: list[OpenRun]) -> Validation:
    """Two measurements of the same tests, scored like predictions: b 'predicts' a."""
    out = Validation()
    b_by_test = {r.test: r for r in runs_b}
    for a in runs_a:
        b = b_by_test.get(a.test)
        if b is None:
            continue
        for m in METRICS:
            if m in a.result and m in b.result and a.result[m] is not None and b.result[m] is not None:
                v = float(b.result[m])
                out.rows.append(Row(f"{a.source} vs {b.source}", a.test, m, float(a.result[m]), v, v, v))
    return out


def _fit(text: str, width: int = 34) -> str:
    """A source name cut to the column from the left, marked where it was cut (its end says most)."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def format_validation(v: Validation, floor: Validation | None = None) -> str:
    floor_err = {(r.test, r.metric): r.error_pct for r in (floor.rows if floor else [])}
    lines = [f"{'source':<34} {'test':<22} {'metric':<24} {'measured':>11} {'predicted':>11} {'band 5-95%':>23} "
             f"{'error':>8} {'band':>5}" + ("  noise" if floor else "")]
    for r in v.rows:
        band = f"[{r.band_lo:.4g}, {r.band_hi:.4g}]"
        nf = floor_err.get((r.test, r.metric))
        lines.append(f"{_fit(r.source):<34} {r.test:<22} {r.metric:<24} {r.measured:>11.4g} {r.predicted:>11.4g} "
                     f"{band:>23} {r.error_pct:>+7.1f}% {'yes' if r.in_band else 'no':>5}"
                     + (f"  {nf:+.1f}%" if nf is not None else ""))
    lines.append("")
    lines.append("median |error| per family: " + ", ".join(f"{k} {x:.1f}%" for k, x in v.families().items()))
    if floor:
        lines.append("noise floor (repeat measurement):  " + ", ".join(f"{k} {x:.1f}%" for k, x in floor.families().items()))
    if v.capacity:
        lines.append("")
        lines.append("capacity (highest swept rate with p95 TTFT under the threshold):")
        for c in v.capacity:
            lines.append(f"  {_fit(c['source']):<34} p95 TTFT < {c['threshold_s']:>4.0f} s: measured {c['measured_rps']}, "
                         f"predicted {c['predicted_rps']}  {'match' if c['match'] else 'MISS'}")
    for n in v.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
