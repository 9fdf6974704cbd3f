"""The profile card: what calibration produced, as numbers a user can read.

`profile_card(profile, runs=None)` is the card as a JSON-ready dict (prefill and decode speeds,
KV capacity, engine limits, % of the memory roofline, measured points); `format_card` its text.
"""
from __future__ import annotations

import math

import numpy as np

from simulator.load import ClosedLoop
from simulator.profile import Profile
from simulator.records import benchy_expected_prompt
from simulator.sim import simulate_closed
from simulator.summary import summarize_closed

PREFILL_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
DECODE_CONTEXTS = (1024, 8192, 32768)
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_ROOFLINE_BW = 273e9  # DGX Spark (GB10): 273 GB/s LPDDR5x


def _num(x) -> float | None:
    """A finite float, or None."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def kv_blocks_needed(engine, n_requests: int, ctx: int) -> int | None:
    """KV blocks that n requests of ctx tokens each hold (all groups share one pool); None if unknown."""
    groups = getattr(engine, "kv_groups", None)
    if not groups:
        return None
    per_req = 0
    for g in groups:
        if g.window:
            per_req += g.count * (math.ceil(min(ctx, g.window) / g.block_size) + 1)
        else:
            per_req += g.count * math.ceil(ctx / g.block_size)
    return n_requests * per_req


def _limit(engine, b: int, ctx: int) -> str | None:
    """Why the engine cannot hold b requests of ctx tokens at once (None: it can, or capacity is unknown)."""
    max_len = getattr(engine, "max_model_len", None)
    if max_len and ctx > max_len:
        return f"context > max_model_len {max_len}"
    max_seqs = getattr(engine, "max_num_seqs", None)
    if max_seqs and b > max_seqs:
        return f"concurrency > max_num_seqs {max_seqs}"
    num_blocks = getattr(engine, "num_blocks", None)
    need = kv_blocks_needed(engine, b, ctx)
    if num_blocks is not None and need is not None and need > num_blocks:
        return "exceeds the KV cache"
    return None


def prefill_curve(profile: Profile, contexts=PREFILL_CONTEXTS) -> list[dict]:
    """Single-request prefill tokens/s by prompt length (server tokens), as llama-benchy's pp t/s would read.

    One simulated llama-benchy invocation, one request per prompt length (tg 1,
    concurrency 1); prompts the engine cannot hold are listed with tokens_per_s None.
    """
    out: list[dict] = []
    ok = []
    for pp in contexts:
        why = _limit(profile.engine, 1, int(pp) + 1)
        out.append({"context": int(pp), "tokens_per_s": None, "ttft_s": None, "limit": why})
        if why is None:
            ok.append(int(pp))
    if ok:
        pattern = ClosedLoop(combos=[(pp, 1, 0, 1) for pp in ok], runs=1, warmup=False, latency_mode="generation")
        rows = summarize_closed(simulate_closed(profile, pattern))
        got = {r.pp: r for r in rows}
        for item in out:
            r = got.get(item["context"])
            if r is None:
                continue
            tps = r.metrics.get("pp_throughput")
            ttfr = r.metrics.get("ttfr")
            item["tokens_per_s"] = _num(tps[0]) if tps else None
            item["ttft_s"] = _num(ttfr[0] / 1000.0) if ttfr else None
    return out


def decode_table(profile: Profile, contexts=DECODE_CONTEXTS, concurrency=CONCURRENCY) -> list[dict]:
    """Pure decode speed of the step model: b requests each holding ctx tokens, one token per step."""
    sm = profile.step_model
    out = []
    for ctx in contexts:
        for b in concurrency:
            step = float(sm.decode_run(np.full(int(b), int(ctx), dtype=np.int64), 1)[0])
            ok = step > 0 and math.isfinite(step)
            out.append({"context": int(ctx), "concurrency": int(b), "step_ms": step * 1000.0 if ok else None,
                        "per_user_tokens_per_s": 1.0 / step if ok else None,
                        "total_tokens_per_s": b / step if ok else None,
                        "limit": _limit(profile.engine, int(b), int(ctx))})
    return out


def weight_bytes_per_step(sm) -> float | None:
    """Weight bytes one single-request decode step reads (dense part + top_k experts per MoE layer)."""
    fixed = _num(getattr(sm, "weight_bytes_fixed", None))
    if fixed is None:
        return None
    expert = _num(getattr(sm, "expert_bytes", 0.0)) or 0.0
    layers = _num(getattr(sm, "moe_layers", 0)) or 0.0
    top_k = _num(getattr(sm, "top_k", 0)) or 0.0
    n_exp = getattr(sm, "n_experts", None)
    if n_exp is not None and _num(n_exp) is not None and n_exp <= 0:
        top_k = 0.0  # a dense model
    return fixed + top_k * layers * expert


def memory_roofline(profile: Profile, decode: list[dict] | None = None) -> dict:
    """How the step model's memory bandwidth compares with the box's peak."""
    sm = profile.step_model
    peak = _num((profile.model or {}).get("roofline_bw")) or DEFAULT_ROOFLINE_BW
    bw = _num(getattr(sm, "bw_weights", None))
    wb = weight_bytes_per_step(sm)
    out = {"peak_bw": peak, "bw_weights": bw,
           "bw_weights_pct_of_peak": 100.0 * bw / peak if bw else None,
           "weight_bytes_per_decode_step": wb,
           "weight_read_ms": 1000.0 * wb / bw if (wb and bw) else None,
           "roofline_decode_tokens_per_s": peak / wb if wb else None,
           "single_user_decode_tokens_per_s": None, "single_user_decode_pct_of_roofline": None,
           "single_user_context": None}
    if decode:
        one = [d for d in decode if d["concurrency"] == 1 and d["per_user_tokens_per_s"]]
        if one:
            d = min(one, key=lambda d: d["context"])
            out["single_user_context"] = d["context"]
            out["single_user_decode_tokens_per_s"] = d["per_user_tokens_per_s"]
            if wb:
                # weight bytes per step over the whole step time: the share of the roofline's speed it reaches
                out["single_user_decode_pct_of_roofline"] = 100.0 * d["per_user_tokens_per_s"] * wb / peak
    return out


def measured_points(runs, prompt_scale: float = 1.0) -> dict:
    """The measured closed-loop points the card overlays.

    Prompt lengths are the server's count: llama-benchy's requested pp+depth times
    the profile's fitted prompt_scale (as the fit simulated them). A decode row's
    context is its prompt plus half its generated tokens (the mean over its decode).
    """
    prefill, decode = [], []
    for run in runs or []:
        for r in run.rows:
            m = r.metrics
            requested = benchy_expected_prompt(int(r.pp), int(r.depth), r.context_load)
            ctx = requested * prompt_scale
            # a prompt after a cached context (prefix caching) prefilled only its part: no point of the curve
            whole = not run.after_cached_context(r)
            if r.concurrency == 1 and whole and "pp_throughput" in m and _num(m["pp_throughput"][0]):
                prefill.append({"test": run.test, "requested": requested, "context": ctx,
                                "tokens_per_s": float(m["pp_throughput"][0])})
            per_user = _num(m["tg_req_throughput"][0]) if "tg_req_throughput" in m else None
            peak = _num(m["peak_throughput"][0]) if "peak_throughput" in m else None
            total = _num(m["tg_throughput"][0]) if "tg_throughput" in m else None
            if per_user or peak:
                decode.append({"test": run.test, "requested": requested, "context": ctx + max(int(r.tg), 1) / 2.0,
                               "concurrency": int(r.concurrency), "per_user_tokens_per_s": per_user,
                               "peak_per_user_tokens_per_s": peak / r.concurrency if peak else None,
                               "total_tokens_per_s": total, "peak_tokens_per_s": peak})
    prefill.sort(key=lambda d: d["context"])
    decode.sort(key=lambda d: (d["context"], d["concurrency"]))
    return {"prompt_scale": prompt_scale, "prefill": prefill, "decode": decode}


def profile_card(profile: Profile, runs=None, prefill_contexts=PREFILL_CONTEXTS, decode_contexts=DECODE_CONTEXTS,
                 concurrency=CONCURRENCY) -> dict:
    """The card's table: prefill, decode, KV cache and engine limits, memory roofline (+ measured points)."""
    e = profile.engine
    sm = profile.step_model
    decode = decode_table(profile, decode_contexts, concurrency)
    model = profile.model or {}
    card = {
        "profile": profile.name,
        "model": model.get("name"),
        "box": model.get("box"),
        "step_model": getattr(sm, "kind", type(sm).__name__),
        "prefill": prefill_curve(profile, prefill_contexts),
        "decode": decode,
        "kv_cache": {"capacity_tokens": e.kv_capacity_tokens, "num_blocks": e.num_blocks,
                     "origin": (profile.provenance.get("engine_limits_origin") or {}).get("num_blocks")},
        "engine": {"max_num_batched_tokens": e.max_num_batched_tokens, "max_num_seqs": e.max_num_seqs,
                   "max_model_len": e.max_model_len},
        "memory": memory_roofline(profile, decode),
    }
    if runs:
        scale = _num(profile.provenance.get("prompt_scale")) or 1.0
        card["measured"] = measured_points(runs, scale)
    return card


# ------------------------------------------------------------------ text form
def ctx_label(c) -> str:
    c = int(c)
    return f"{c // 1024}k" if c >= 1024 and c % 1024 == 0 else f"{c:,}"


def _f(x, fmt="{:,.0f}", none="-") -> str:
    return none if x is None else fmt.format(x)


def format_card(card: dict) -> str:
    """A plain table of the card's numbers."""
    lines = [f"profile card: {card['profile']}"]
    what = ", ".join(x for x in (card.get("model"), card.get("box")) if x)
    if what:
        lines.append(what)
    lines.append(f"step model: {card['step_model']}")

    lines += ["", "prefill, one request (llama-benchy pp t/s)",
              f"  {'prompt tokens':>13} {'tokens/s':>10} {'TTFT s':>8}"]
    for p in card["prefill"]:
        note = f"  ({p['limit']})" if p.get("limit") else ""
        lines.append(f"  {p['context']:>13,} {_f(p['tokens_per_s']):>10} {_f(p['ttft_s'], '{:.2f}'):>8}{note}")

    contexts = sorted({d["context"] for d in card["decode"]})
    conc = sorted({d["concurrency"] for d in card["decode"]})
    by = {(d["context"], d["concurrency"]): d for d in card["decode"]}
    lines += ["", "decode, pure decode steps: tokens/s per user and in total, by context and users "
                  "(* = the engine cannot hold them)",
              "  " + " " * 5 + "".join(f"   {ctx_label(c) + ' context':^17}" for c in contexts),
              "  " + f"{'users':>5}" + "".join(f"   {'per user':>8} {'total':>8}" for _ in contexts)]
    for b in conc:
        cells = []
        for c in contexts:
            d = by.get((c, b))
            if d is None or d["per_user_tokens_per_s"] is None:
                cells.append(f"   {'-':>8} {'-':>8}")
                continue
            mark = "*" if d.get("limit") else " "
            cells.append(f"   {d['per_user_tokens_per_s']:>8.1f} {d['total_tokens_per_s']:>7.0f}{mark}")
        lines.append(f"  {b:>5}" + "".join(cells))

    kv, eng, mem = card["kv_cache"], card["engine"], card["memory"]
    cap = kv["capacity_tokens"]
    cap_s = f"{cap:,} tokens" if cap is not None else "unknown (not binding in the runs)"
    if cap is not None and kv.get("num_blocks") is not None:
        cap_s += f" ({kv['num_blocks']:,} blocks)"
    lines += ["", "engine",
              f"  KV-cache capacity        {cap_s}",
              f"  max_num_batched_tokens   {eng['max_num_batched_tokens']:,}",
              f"  max_num_seqs             {eng['max_num_seqs']:,}",
              f"  max_model_len            {eng['max_model_len']:,}"]
    if kv.get("origin"):
        lines.append(f"  (KV capacity: {kv['origin']})")

    lines += ["", "memory roofline",
              f"  box peak bandwidth       {mem['peak_bw'] / 1e9:,.0f} GB/s"]
    if mem["bw_weights"] is not None:
        lines.append(f"  fitted weight bandwidth  {mem['bw_weights'] / 1e9:,.0f} GB/s "
                     f"({mem['bw_weights_pct_of_peak']:.0f}% of peak)")
        if mem["bw_weights_pct_of_peak"] > 100:
            lines.append("    (above the box's peak: the fit traded bandwidth for fixed step time; "
                         "the one-user share below is the physical one)")
    else:
        lines.append("  fitted weight bandwidth  - (the step model has none)")
    if mem["weight_bytes_per_decode_step"] is not None:
        lines.append(f"  weights read per step    {mem['weight_bytes_per_decode_step'] / 1e9:,.2f} GB "
                     f"(single-request decode)")
        lines.append(f"  roofline decode speed    {mem['roofline_decode_tokens_per_s']:,.1f} tokens/s "
                     f"(peak bandwidth / weight bytes)")
    if mem["single_user_decode_tokens_per_s"] is not None:
        pct = mem["single_user_decode_pct_of_roofline"]
        lines.append(f"  one user decodes         {mem['single_user_decode_tokens_per_s']:,.1f} tokens/s at "
                     f"{mem['single_user_context']:,} tokens" + (f" ({pct:.0f}% of the roofline)" if pct else ""))

    meas = card.get("measured")
    if meas:
        lines += ["", f"measured closed-loop points (prompt tokens x {meas['prompt_scale']:.3f} = server count)",
                  f"  {'test':<24} {'prompt':>8} {'users':>5} {'pp t/s':>8} {'tg t/s/user':>11} {'peak/user':>9}"]
        pts = {}
        for p in meas["prefill"]:
            pts[(p["test"], p["requested"], 1)] = {"pp": p["tokens_per_s"]}
        for d in meas["decode"]:
            pts.setdefault((d["test"], d["requested"], d["concurrency"]), {}).update(
                tg=d["per_user_tokens_per_s"], peak=d["peak_per_user_tokens_per_s"])
        for (test, req, c), v in sorted(pts.items()):  # by test, prompt, users (the keys are unique)
            lines.append(f"  {test:<24} {req:>8,} {c:>5} {_f(v.get('pp')):>8} {_f(v.get('tg'), '{:.1f}'):>11} "
                         f"{_f(v.get('peak'), '{:.1f}'):>9}")
    return "\n".join(lines)
