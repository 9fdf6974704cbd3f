"""Starting points for a fit: architecture facts where the package has them, rough guesses otherwise.

Priors set the step model's fixed quantities (bytes read per step, FLOPs per
token, KV bytes per token, sliding window) and the initial values of the fitted
ones. Nothing here is required: a model the package knows nothing about gets
generic values derived from its name (total and active parameter counts such as
"35B-A3B") or from the measured single-user decode speed.
"""
from __future__ import annotations

import re

from simulator.profile import ApiOverhead, EngineLimits, KVGroup, Profile, gemma4_spark_physics
from simulator.stepmodel import PhysicalStepModel
from simulator.workload import PromptFormat

GB10_MEMORY_GIB = 121.69  # what torch reports on a DGX Spark (NVML reports nothing)

# vLLM's API-server defaults when NVML cannot read device memory (GB10): see
# reference/vllm-and-spark-physics.md section 1.6.
GB10_DEFAULT_BUDGET = 2048
DEFAULT_MAX_NUM_SEQS = 256


def _name_params(name: str) -> tuple[float | None, float | None]:
    """(total, active) parameter counts in billions from names like 'Qwen3.6-35B-A3B'."""
    total = active = None
    m = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name.replace("-A", " A"))
    if m:
        total = float(m.group(1))
    m2 = re.search(r"[-_ ]A(\d+(?:\.\d+)?)[bB]", name)
    if m2:
        active = float(m2.group(1))
    return total, active


def gemma4_kv_blocks(gpu_memory_utilization: float, weights_gib: float = 48.1, other_gib: float = 3.0) -> int:
    """Gemma-4-26B-A4B fp8 KV pool on a GB10: blocks of 5 x 64 KiB (physics reference section 2.4)."""
    kv_gib = gpu_memory_utilization * GB10_MEMORY_GIB - weights_gib - other_gib
    return int(kv_gib * 2 ** 30 // 65536 // 5)


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
    }
    limits = dict(max_num_batched_tokens=int(budget or GB10_DEFAULT_BUDGET), max_num_seqs=int(seqs or DEFAULT_MAX_NUM_SEQS),
                  max_model_len=int(server.get("max_model_len") or 131072),
                  async_scheduling=bool(server.get("async_scheduling", True)))
    if "gemma-4-26b-a4b" in model.lower():
        p = gemma4_spark_physics()
        e = p.engine
        for k, v in limits.items():
            setattr(e, k, v)
        gmu = server.get("gpu_memory_utilization")
        if gmu:
            e.num_blocks = gemma4_kv_blocks(float(gmu))
            origin["num_blocks"] = (f"architecture prior: {e.num_blocks} blocks at gpu_memory_utilization {gmu} "
                                    "(not identified by the runs)")
        else:
            e.num_blocks = None
            origin["num_blocks"] = "unidentified: treated as not binding"
        p.name = model
        return p, origin
    # A model the package knows nothing about: generic MoE/dense roofline from its name.
    total, active = _name_params(model)
    weight_bytes = 2.0 if "fp8" not in model.lower() else 1.0
    moe = total is not None and active is not None and active < total
    e_, k_ = 128, 8
    if total is None:
        # bytes of one decode step guessed from the single-user decode speed at ~220 GB/s effective
        w1 = (1.0 / c1_decode_tps if c1_decode_tps else 0.05) * 220e9
        fixed, expert, n_exp = w1, 0.0, 0
        flops_tok = w1  # 2 FLOPs per 2-byte parameter
    elif moe:
        wa, wt = active * 1e9 * weight_bytes, total * 1e9 * weight_bytes
        fixed = max(0.05 * wa, (wa - wt * k_ / e_) / (1 - k_ / e_))
        expert, n_exp = (wt - fixed) / e_, e_
        flops_tok = 2 * active * 1e9
    else:
        fixed, expert, n_exp = total * 1e9 * weight_bytes, 0.0, 0
        flops_tok = 2 * total * 1e9
    model_step = PhysicalStepModel(t0=0.003, weight_bytes_fixed=fixed, expert_bytes=expert, moe_layers=1,
                                   n_experts=n_exp, top_k=k_, alpha=0.8, bw_weights=220e9, bw_kv=150e9,
                                   kv_bytes_full=1.0e5, kv_bytes_window=0.0, window=None,
                                   flops_per_token=flops_tok, flops=50e12, attn_flops_full=2.0e5,
                                   attn_flops_window=0.0, attn_flops=15e12)
    origin["num_blocks"] = "unidentified: treated as not binding"
    prof = Profile(name=model or "unknown", engine=EngineLimits(num_blocks=None, kv_groups=(KVGroup(16),), **limits),
                   step_model=model_step, api=ApiOverhead(0.02, 0.001),
                   prompt_format=PromptFormat(special_tokens=1, chat_template_tokens=10),
                   model={"name": model, "params_total_b": total, "params_active_b": active,
                          "weights": "fp8" if weight_bytes == 1 else "bf16", "kv_cache_dtype": server.get("kv_cache_dtype")},
                   provenance={"prior": "generic roofline from the model name" if total else "generic from decode speed"})
    return prof.validate(), origin
