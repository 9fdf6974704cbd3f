"""What-ifs as profile edits: `key=value` strings from the command line.

Plain keys name engine limits (max_num_batched_tokens, max_num_seqs, num_blocks,
max_model_len, async_scheduling), step-model parameters (flops, bw_weights,
...; or `step_model.flops`), API overheads (`api.request_s`) or step_noise_cv.
Named scenarios change several physical parameters at once: `weights=fp8`
halves weight bytes of a bf16 profile, `kv_dtype=bf16` doubles KV bytes and
halves the block count, `speed=1.5` makes every step 1.5x faster.
"""
from __future__ import annotations


from .profile import Profile, ProfileError
from .stepmodel import PhysicalStepModel

# Bits per weight as read from memory, scales included: NVFP4 an fp8 scale per 16 weights, MXFP4 an
# 8-bit one per 32, int4 (AWQ, GPTQ) a 16-bit scale and zero per 128. FP8 and int8 checkpoints scale
# per tensor, per output channel or per 128 x 128 block: under 0.01 bit a weight.
WEIGHT_BITS = {"bf16": 16.0, "fp16": 16.0, "fp8": 8.0, "int8": 8.0, "nvfp4": 4.5, "mxfp4": 4.25, "int4": 4.25,
               "awq": 4.25, "gptq": 4.25}
WEIGHT_ALIASES = {"fp4": "nvfp4"}  # weights=fp4 in a what-if
# Bytes per KV-cache element by vLLM's --kv-cache-dtype (vllm/config/cache.py CacheDType), and bf16/fp16.
# NVFP4 carries an fp8 scale per 16 elements (4.5 bits); the turboquant / ultraquant and int4 layouts
# count the bits their names state, without their scales.
KV_BYTES = {"bf16": 2.0, "fp16": 2.0, "auto": 2.0, "bfloat16": 2.0, "float16": 2.0,
            "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "fp8_inc": 1.0, "fp8_ds_mla": 1.0,
            "fp8_per_token_head": 1.0, "int8_per_token_head": 1.0, "int4_per_token_head": 0.5,
            "nvfp4": 0.5625, "nvfp4_ds_mla": 0.5625, "nvfp4_4over6": 0.5625,
            "turboquant_k8v4": 0.75, "turboquant_4bit_nc": 0.5, "turboquant_k3v4_nc": 0.4375,
            "turboquant_3bit_nc": 0.375, "ultraquant_4bit": 0.5}


def _coerce(value: str, current):
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ProfileError(f"expected true/false, got {value!r}")
    if value.lower() in ("none", "null"):
        return None
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            return int(float(value)) if float(value).is_integer() else float(value)
        except ValueError:
            raise ProfileError(f"expected a number, got {value!r}") from None
    try:
        return float(value)
    except ValueError:
        return value


def _scenario(p: Profile, key: str, value: str) -> bool:
    m = p.step_model
    if key == "weights":
        value = WEIGHT_ALIASES.get(value, value)
        if value not in WEIGHT_BITS:
            raise ProfileError(f"weights must be one of {', '.join([*WEIGHT_BITS, *WEIGHT_ALIASES])}, got {value!r}")
        if not isinstance(m, PhysicalStepModel):
            raise ProfileError("weights=... needs a physical step model")
        cur = p.model.get("weights", "bf16")
        now = WEIGHT_BITS.get(WEIGHT_ALIASES.get(cur, cur), 16.0)
        f = WEIGHT_BITS[value] / now
        m.weight_bytes_fixed *= f
        m.expert_bytes *= f
        if WEIGHT_BITS[value] < 16.0 <= now:
            m.flops *= 2.0  # fp8/fp4 tensor cores run linear layers about twice as fast
        p.model["weights"] = value
        return True
    if key == "kv_dtype":
        if value not in KV_BYTES:
            raise ProfileError(f"kv_dtype must be one of {', '.join(KV_BYTES)}, got {value!r}")
        cur = p.model.get("kv_cache_dtype", "fp8")
        f = KV_BYTES[value] / KV_BYTES.get(cur, 1.0)
        if isinstance(m, PhysicalStepModel):
            m.kv_bytes_full *= f
            m.kv_bytes_window *= f
        if p.engine.num_blocks is not None:
            p.engine.num_blocks = int(p.engine.num_blocks / f)
        p.model["kv_cache_dtype"] = value
        return True
    if key == "speed":
        s = float(value)
        if s <= 0:
            raise ProfileError(f"speed must be > 0, got {value}")
        m.scale(memory=s, compute=s)
        return True
    return False


def apply_edits(profile: Profile, edits) -> Profile:
    """A copy of `profile` with every `key=value` applied; unknown keys are an error."""
    p = profile.copy()
    for e in edits:
        if "=" not in e:
            raise ProfileError(f"--set expects KEY=VALUE, got {e!r}")
        key, value = (s.strip() for s in e.split("=", 1))
        if _scenario(p, key, value):
            continue
        section, _, name = key.rpartition(".")
        targets = {"engine": p.engine, "step_model": p.step_model, "api": p.api}
        if section:
            if section not in targets or not hasattr(targets[section], name):
                raise ProfileError(f"unknown profile key {key!r}")
            obj = targets[section]
        elif name == "step_noise_cv":
            p.step_noise_cv = float(value)
            continue
        else:
            owners = [o for o in targets.values() if hasattr(o, name) and not name.startswith("_")]
            if not owners:
                raise ProfileError(f"unknown profile key {key!r}")
            obj = owners[0]
        setattr(obj, name, _coerce(value, getattr(obj, name)))
    p.provenance = {**p.provenance, "edits": list(p.provenance.get("edits", [])) + list(edits)}
    return p.validate()
