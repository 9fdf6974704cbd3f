"""Starting points for a fit: engine limits from the run's flags, step-model quantities from the
architecture facts (or, for a model nothing knows, from its name and its single-user decode speed).
"""
from __future__ import annotations

import re

from simulator.kvcache import hybrid_layout
from simulator.profile import ApiOverhead, EngineLimits, KVGroup, Profile, clamps_max_tokens, gemma4_spark_physics
from simulator.stepmodel import PhysicalStepModel
from simulator.whatif import WEIGHT_BITS
from simulator.workload import PromptFormat

from .architectures import architecture_for, kv_dtype_bytes, step_quantities, weight_dtype
from .server_flags import GB10_BATCH_DEFAULTS

GB10_MEMORY_GIB = 121.69  # what torch reports on a DGX Spark (NVML reports nothing)
ROOFLINE_BW = 273e9  # B/s: the DGX Spark's LPDDR5x peak, the roofline every fitted bandwidth is held under


# Per-position acceptance of draft tokens by method, as priors: llama-benchy counts one token per
# streamed chunk, so its tables cannot tell how many tokens a speculative step kept.
SPEC_ACCEPTANCE_PRIOR = {"ngram": 0.4, "medusa": 0.5, "eagle": 0.6, "eagle3": 0.65, "draft_model": 0.6, "mtp": 0.7,
                         "dflash": 0.7}
# vLLM names a model's own multi-token-prediction heads "<model type>_mtp" (deepseek_mtp, qwen3_5_mtp,
# nemotron_h_mtp, ...; config/speculative.py MTPModelTypes), and prompt lookup on the GPU "ngram_gpu"
SPEC_METHOD_KIND = ((r"_mtp$", "mtp"), (r"^ngram", "ngram"))


def spec_method_prior(method: str) -> float | None:
    """The acceptance prior of a --speculative-config method, None for a method no prior covers."""
    m = method.lower()
    for pat, kind in SPEC_METHOD_KIND:
        if re.search(pat, m):
            m = kind
    return SPEC_ACCEPTANCE_PRIOR.get(m)


def acceptance_for_length(tokens_per_step: float, k: int) -> float:
    """The per-position acceptance a whose mean tokens per step (1 - a^(k+1)) / (1 - a) is `tokens_per_step`."""
    target = min(max(tokens_per_step, 1.0), k + 1 - 1e-6)
    lo, hi = 0.0, 1.0 - 1e-9
    for _ in range(60):
        a = (lo + hi) / 2
        if (1 - a ** (k + 1)) / (1 - a) < target:
            lo = a
        else:
            hi = a
    return lo


def spec_acceptance_prior(spec: dict, tokens_per_chunk: float | None) -> tuple[float, str]:
    k = int(spec["num_speculative_tokens"])
    if tokens_per_chunk and tokens_per_chunk > 1.0:
        a = acceptance_for_length(tokens_per_chunk, k)
        return a, f"measured: {tokens_per_chunk:.2f} tokens per streamed chunk in the closed-loop runs"
    method = str(spec.get("method") or "draft_model").lower()
    a = spec_method_prior(method) or 0.6
    return a, (f"prior for method {method!r} ({a}, {(1 - a ** (k + 1)) / (1 - a):.2f} tokens per step): the runs "
               "count streamed chunks, not tokens, so they do not identify it")


# A model whose name reads dense but which decodes alone faster than a dense model of that size could
# read its weights, by more than this factor, is taken for a mixture of experts (another quantisation
# than the name's explains at most 4x, and the dtype is read off the run).
MOE_BELOW = 0.2

OTHER_GIB = 3.0  # activations, CUDA graphs and the allocator's slack beside weights and KV


def gemma4_kv_blocks(gpu_memory_utilization: float, weights_gib: float = 48.1, other_gib: float = OTHER_GIB) -> int:
    """Gemma-4-26B-A4B fp8 KV pool on a GB10: blocks of 5 x 64 KiB (physics reference section 2.4)."""
    pool = (gpu_memory_utilization * GB10_MEMORY_GIB - weights_gib - other_gib) * 2 ** 30
    # 5 full-attention layers of 2 x 2 x 512 fp8 bytes a token, 25 sliding (window 1024) of 2 x 8 x 256
    return hybrid_layout(pool, 5, 2048, 25, 4096, 1024)[0]


_MEASURED = "measured: {n} blocks of {bs} tokens (the server's num_gpu_blocks, read off its /metrics)"


def _measured_blocks(server: dict) -> int | None:
    n = server.get("num_gpu_blocks")
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


def prior_profile(server: dict, c1_decode_tps: float | None = None) -> tuple[Profile, dict]:
    """A starting profile for the server described by `server` (see calibrate.importers.load_meta).

    Returns the profile and a dict saying where each engine limit came from.
    """
    model = str(server.get("model") or "")
    budget = server.get("max_num_batched_tokens")
    seqs = server.get("max_num_seqs")
    origin = {
        "max_num_batched_tokens": "server flag" if budget else "vLLM default on GB10 (NVML reports no memory)",
        "max_num_seqs": "server flag" if seqs else "vLLM default",
        "max_model_len": "server flag" if server.get("max_model_len") else "unknown: 131072 assumed",
        "async_scheduling": ("server flag" if server.get("async_scheduling") is not None
                             else "not given: on, vLLM's default on a GPU"),
        "prefix_caching": ("server flag" if server.get("enable_prefix_caching") is not None
                           else "not given: on, vLLM V1's default"),
        "clamp_max_tokens": (f"vLLM {server.get('vllm_version')}: " if server.get("vllm_version") else "vLLM version unknown: ")
        + ("max_tokens past max_model_len is cut to the context left (vLLM >= 0.32)"
           if clamps_max_tokens(server.get("vllm_version")) else "prompt + max_tokens past max_model_len is refused"
                                                                 " (vLLM <= 0.31)"),
    }
    # vLLM's defaults where NVML cannot read device memory, the GB10's (reference/vllm-and-spark-physics.md 1.6)
    limits = dict(max_num_batched_tokens=int(budget or GB10_BATCH_DEFAULTS[0]),
                  max_num_seqs=int(seqs or GB10_BATCH_DEFAULTS[1]),
                  max_model_len=int(server.get("max_model_len") or 131072),
                  async_scheduling=server.get("async_scheduling") is not False,
                  clamp_max_tokens=clamps_max_tokens(server.get("vllm_version")),
                  prefix_caching=server.get("enable_prefix_caching") is not False)
    spec = server.get("speculative_config")
    if spec:
        limits["num_speculative_tokens"] = int(spec["num_speculative_tokens"])
        if spec.get("num_speculative_tokens_assumed"):
            origin["num_speculative_tokens"] = (f"not given: 1 assumed (with method {spec.get('method')!r} vLLM drafts as "
                                                "many tokens as the model has MTP layers, one in the published ones)")
        limits["spec_acceptance"], origin["spec_acceptance"] = spec_acceptance_prior(spec, server.get("tokens_per_chunk"))
    if "gemma-4-26b-a4b" in model.lower():
        p = gemma4_spark_physics()
        e = p.engine
        for k, v in limits.items():
            setattr(e, k, v)
        gmu = server.get("gpu_memory_utilization")
        measured = _measured_blocks(server)
        if measured:
            e.num_blocks, origin["num_blocks"] = measured, _MEASURED.format(n=measured, bs=server.get("block_size"))
        elif gmu:
            e.num_blocks = gemma4_kv_blocks(float(gmu))
            origin["num_blocks"] = (f"architecture prior: {e.num_blocks} blocks at gpu_memory_utilization {gmu} "
                                    "(not identified by the runs)")
        else:
            e.num_blocks = None
            origin["num_blocks"] = "unidentified: treated as not binding"
        p.name = model
        p.model["roofline_bw"] = ROOFLINE_BW
        return p, origin
    # Any other model: architecture facts (a family table, else the name) and the run's dtypes.
    arch = architecture_for(server)
    weights, w_origin = weight_dtype(server)
    kv_b, kv_origin = kv_dtype_bytes(server, weights)
    q = step_quantities(arch, weights, kv_b)
    if arch.params_total_b <= 0:
        # no size anywhere: bytes of one decode step from the single-user decode speed at ~70% of the roofline
        w1 = (1.0 / c1_decode_tps if c1_decode_tps else 0.05) * 0.7 * ROOFLINE_BW
        q.update(weight_bytes_fixed=w1, flops_per_token=w1 * 16.0 / WEIGHT_BITS.get(weights, 16.0))
    elif c1_decode_tps:
        # a decode step cannot read its weights faster than the roofline: a name whose size says otherwise
        # (another quantisation) gives way to the measured speed. With speculative decoding a step
        # keeps several tokens, so the steps per second are the tokens per second over that.
        spec = EngineLimits(num_speculative_tokens=limits.get("num_speculative_tokens", 0),
                            spec_acceptance=limits.get("spec_acceptance", 0.0))
        steps_per_s = c1_decode_tps / spec.tokens_per_spec_step
        active = q["weight_bytes_fixed"] + q["top_k"] * q["moe_layers"] * q["expert_bytes"]
        t_min = active / ROOFLINE_BW
        if t_min > 0.9 / steps_per_s:
            f = 0.7 / steps_per_s / t_min
            cannot = (f"cannot decode at the measured {c1_decode_tps:.1f} tokens/s ({steps_per_s:.1f} steps/s) "
                      f"within {ROOFLINE_BW / 1e9:.0f} GB/s")
            if not arch.moe and f < MOE_BELOW:
                # A dense model of the name's size would need several times the box's bandwidth: it
                # holds its size in memory but reads a fraction of it per token, so it is a mixture
                # of experts whose name carries no active count (Mistral-Small-4-119B reads ~6.5B
                # a token). Experts make the bytes a step reads grow with the batch; a dense model
                # shrunk to the active size would not.
                arch.params_active_b = f * arch.params_total_b
                arch.n_experts, arch.top_k, arch.moe_layers = 128, 8, arch.layers
                arch.assumed.append(f"a mixture of experts, {arch.params_active_b:.1f}B active (the name's "
                                    f"{arch.params_total_b:g}B cannot decode at the measured speed), 128 experts, top-8")
                q = step_quantities(arch, weights, kv_b)
                origin["architecture_scaled"] = (f"taken for a mixture of experts with {arch.params_active_b:.1f}B active: "
                                                 f"the name's {arch.params_total_b:g}B dense {cannot}")
            else:
                q["weight_bytes_fixed"] *= f
                q["expert_bytes"] *= f
                origin["architecture_scaled"] = f"weights read per step scaled by {f:.2f}: the name's size {cannot}"
    model_step = PhysicalStepModel(t0=0.003, bw_weights=0.8 * ROOFLINE_BW, bw_kv=0.8 * ROOFLINE_BW, alpha=0.8,
                                   flops=50e12, attn_flops=15e12, **q)
    num_blocks, groups = None, (KVGroup(16),)
    full_layer = q["kv_bytes_full"] / max(1, arch.attn_layers)  # KV bytes per token of one layer of each kind
    win_layer = q["kv_bytes_window"] / max(1, arch.window_layers) if arch.window_layers else 0.0
    gmu = server.get("gpu_memory_utilization")
    if gmu and arch.params_total_b > 0:
        # the KV pool is what vLLM's memory profiling leaves of gpu_memory_utilization x the box's memory
        weights_total = q["weight_bytes_fixed"] + q["n_experts"] * q["moe_layers"] * q["expert_bytes"]
        pool = float(gmu) * GB10_MEMORY_GIB * 2 ** 30 - weights_total - OTHER_GIB * 2 ** 30
        num_blocks, groups = hybrid_layout(pool, arch.attn_layers, full_layer, arch.window_layers, win_layer,
                                           arch.window)
    measured = _measured_blocks(server)
    if measured:
        # the server's own count (a capsim measure run read it off /metrics): no prior needed. The
        # groups are the architecture's layout at the server's block size when that layout is known.
        bs = int(server.get("block_size") or 16)
        groups = (KVGroup(bs),)
        if not arch.kv_layout_assumed and arch.window_layers and arch.window:
            groups = hybrid_layout(1.0, arch.attn_layers, full_layer, arch.window_layers, win_layer, arch.window,
                                   base_block=bs)[1]
        num_blocks = measured
        origin["num_blocks"] = _MEASURED.format(n=measured, bs=bs)
    elif num_blocks and arch.kv_layout_assumed:
        # A cache size from guessed KV bytes per token is a guess, and a binding one is a confident
        # queueing cliff: Muse-Glimmer-30B (depth and KV heads guessed) got 12764 blocks and ran about
        # 42 requests at once where the box ran about 130 (ITL at 1 req/s 0.66 s predicted, 4.26 s
        # measured; 2.07 s with the cache not binding).
        origin["num_blocks"] = (f"unidentified: the KV layout is assumed ({', '.join(arch.assumed)}), so the "
                                f"{num_blocks} blocks it would give are not used and the cache is treated as not "
                                "binding; set engine.num_blocks from vLLM's log (num_gpu_blocks) to bind it")
        num_blocks, groups = None, (KVGroup(16),)
    elif num_blocks:
        origin["num_blocks"] = (f"architecture prior: {num_blocks} blocks from gpu_memory_utilization {gmu} of "
                                f"{GB10_MEMORY_GIB} GiB less {weights_total / 2 ** 30:.1f} GiB of weights "
                                "(not identified by the runs)")
    else:
        origin["num_blocks"] = "unidentified: treated as not binding"
    origin["architecture"] = arch.source + ("; assumed: " + ", ".join(arch.assumed) if arch.assumed else "")
    origin["weights"] = f"{weights} ({w_origin})"
    origin["kv_cache_dtype"] = kv_origin
    prof = Profile(name=model or "unknown", engine=EngineLimits(num_blocks=num_blocks, kv_groups=groups, **limits),
                   step_model=model_step, api=ApiOverhead(0.02, 0.001),
                   prompt_format=PromptFormat(special_tokens=1, chat_template_tokens=10),
                   model={"name": model, "params_total_b": arch.params_total_b, "params_active_b": arch.params_active_b,
                          "weights": weights, "kv_cache_dtype": server.get("kv_cache_dtype"),
                          "architecture": arch.to_json(), "roofline_bw": ROOFLINE_BW},
                   provenance={"prior": arch.source})
    return prof.validate(), origin
