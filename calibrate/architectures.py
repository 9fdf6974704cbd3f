"""Architecture facts of a served model, as priors for the step-time model.

`architecture_for(server)` takes layers, KV heads, windows, state and experts from a small table of
model families, or infers them from the name; `step_quantities` turns them and the run's dtypes into
the step model's fixed quantities. Priors only, never per-model corrections (docs/design/calibration.md).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from simulator.whatif import KV_BYTES, WEIGHT_BITS


@dataclass
class Architecture:
    """Per-model facts; counts are per model, bytes per element come from the run's dtypes."""

    family: str
    params_total_b: float
    params_active_b: float
    layers: int
    attn_layers: int  # full-attention layers: KV grows with context
    kv_heads: int = 8
    head_dim: int = 128
    q_heads: int = 32
    window_layers: int = 0  # sliding-window attention layers
    window: int | None = None
    window_kv_heads: int | None = None
    window_head_dim: int | None = None
    mla_dim: int | None = None  # MLA: latent + rope elements per token per layer (replaces 2 x kv_heads x head_dim)
    state_layers: int = 0  # Mamba / linear-attention layers: a fixed state per sequence
    state_elems_layer: float = 0.0  # state elements per sequence per such layer
    # bytes per state element as vLLM keeps it: the model's dtype (mamba_ssm_cache_dtype "auto") unless the
    # family's config class sets float32 (NemotronH by default, Qwen3.5 from its config's mamba_ssm_dtype)
    state_elem_bytes: float = 2.0
    n_experts: int = 0
    top_k: int = 0
    moe_layers: int = 0
    expert_bits: float | None = None  # when experts are quantised apart from the rest (gpt-oss: mxfp4)
    source: str = ""
    assumed: list[str] = field(default_factory=list)  # facts that fell back on guesses
    # The KV bytes per token of a layer rest on a guess (no table gives the KV heads): off by the
    # 2-8x that separates GQA layouts, where a guessed depth is off by tens of percent. A cache
    # size computed from them is not let bind (calibrate.priors).
    kv_layout_assumed: bool = False

    @property
    def moe(self) -> bool:
        return self.n_experts > 0 and self.top_k > 0 and self.params_active_b < self.params_total_b

    def to_json(self) -> dict:
        return asdict(self)


# Model families: (name pattern, facts), the first pattern that matches the lower-cased last part of the
# model id wins (so a narrower pattern comes before a broader one). Facts a name fixes (total/active
# parameters) come from the name when it carries them; the rest is the family's published configuration.
# Where a family's sizes differ in depth or heads, `sizes` maps the total parameters in the name (in B)
# to the facts of that size; a size not listed keeps only the family's size-independent facts and
# infers the rest (listed in `assumed`).
FAMILIES: list[tuple[str, dict]] = [
    (r"gemma-?4-26b-a4b", dict(family="gemma-4 MoE", params_total_b=25.2, params_active_b=3.8, layers=30, attn_layers=5,
                               kv_heads=2, head_dim=512, q_heads=16, window_layers=25, window=1024, window_kv_heads=8,
                               window_head_dim=256, n_experts=128, top_k=8, moe_layers=30)),
    (r"gemma-?4-31b", dict(family="gemma-4 dense", params_total_b=30.7, params_active_b=30.7, layers=60, attn_layers=10,
                           kv_heads=4, head_dim=512, q_heads=32, window_layers=50, window=1024, window_kv_heads=16,
                           window_head_dim=256)),
    # gpt-oss-safeguard-20b / -120b are the same models fine-tuned
    (r"gpt-oss-(?:safeguard-)?20b", dict(family="gpt-oss", params_total_b=20.9, params_active_b=3.6, layers=24,
                                          attn_layers=12, kv_heads=8, head_dim=64, q_heads=64, window_layers=12,
                                          window=128, window_kv_heads=8, window_head_dim=64, n_experts=32, top_k=4,
                                          moe_layers=24, expert_bits=4.25)),
    (r"gpt-oss-(?:safeguard-)?120b", dict(family="gpt-oss", params_total_b=116.8, params_active_b=5.1, layers=36,
                                           attn_layers=18, kv_heads=8, head_dim=64, q_heads=64, window_layers=18,
                                           window=128, window_kv_heads=8, window_head_dim=64, n_experts=128, top_k=4,
                                           moe_layers=36, expert_bits=4.25)),
    (r"nemotron-?3-nano-30b-a3b", dict(family="nemotron-3 hybrid Mamba MoE", params_total_b=31.6, params_active_b=3.6,
                                       layers=52, attn_layers=6, kv_heads=2, head_dim=128, q_heads=32, state_layers=23,
                                       state_elems_layer=64 * 64 * 128, state_elem_bytes=4.0, n_experts=128, top_k=6,
                                       moe_layers=23)),
    # Mistral Small 4 (transformers' Mistral4Config, documented as mistralai/Mistral-Small-4-119B-2603): MLA with a
    # KV latent of 256 and a rope key of 64, so 320 elements a token a layer (DeepSeek-V3's are 512 + 64).
    (r"mistral-small-4", dict(family="mistral-small-4 MoE (MLA)", params_total_b=119.0, params_active_b=6.5, layers=36,
                              attn_layers=36, mla_dim=320, q_heads=32, head_dim=128, n_experts=128, top_k=4,
                              moe_layers=36)),
    # Qwen3.5 / 3.6: Gated DeltaNet linear attention and gated full attention, 3:1; attention heads of 256, a
    # DeltaNet state of (V heads) x 128 x 128 a layer. The Qwen3.6 of a size keeps its architecture.
    # The 35B-A3B: 40 layers, 10 x (3 Gated DeltaNet + 1 gated attention), each with 256 experts top-8
    # (transformers' Qwen3_5MoeTextConfig, documented as Qwen/Qwen3.5-35B-A3B; 40 x 256 experts of
    # 3 x 2048 x 512 are its 32B of experts). The other sizes from the model cards of Qwen/Qwen3.5-*, each
    # checked against its size (layers x (FFN or experts, attention or DeltaNet) + embeddings): the 122B-A10B
    # 48 layers of 256 experts of 3 x 3072 x 1024 (116B), 32 query heads, 64 DeltaNet V heads; the
    # 397B-A17B 60 layers of 512 experts top-10; the dense 0.8B and 2B 24 layers with 8 query and 2 KV
    # heads and 16 DeltaNet V heads, the 4B and 9B 32 layers (the 9B is Qwen3_5TextConfig's defaults:
    # hidden 4096, 16 / 4 heads), the 27B 64 layers with 24 query heads and 48 DeltaNet V heads.
    (r"qwen3\.[56]-.*a\d+(\.\d+)?b", dict(family="qwen3.5 hybrid MoE", hybrid_attn_fraction=0.25, kv_heads=2,
                                            head_dim=256, q_heads=16, state_elems_layer=32 * 128 * 128,
                                            state_elem_bytes=4.0, n_experts=256, top_k=8, sizes={
                                                35: dict(layers=40),
                                                122: dict(layers=48, q_heads=32, state_elems_layer=64 * 128 * 128),
                                                397: dict(layers=60, q_heads=32, state_elems_layer=64 * 128 * 128,
                                                          n_experts=512, top_k=10)})),
    (r"qwen3\.[56]-", dict(family="qwen3.5 hybrid dense", hybrid_attn_fraction=0.25, kv_heads=4, head_dim=256,
                            q_heads=16, state_elems_layer=32 * 128 * 128, state_elem_bytes=4.0, sizes={
                                0.8: dict(layers=24, kv_heads=2, q_heads=8, state_elems_layer=16 * 128 * 128),
                                2: dict(layers=24, kv_heads=2, q_heads=8, state_elems_layer=16 * 128 * 128),
                                4: dict(layers=32),
                                9: dict(layers=32),
                                27: dict(layers=64, q_heads=24, state_elems_layer=48 * 128 * 128)})),
    # Qwen3-Next-80B-A3B (its only size; transformers' Qwen3NextConfig): 48 layers, 12 x (3 + 1) as above.
    # Qwen3-Coder-Next is that model trained for code, with no size in its name.
    (r"qwen3-(?:coder-)?next", dict(family="qwen3-next hybrid MoE", params_total_b=80.0, params_active_b=3.0,
                                    hybrid_attn_fraction=0.25, layers=48, kv_heads=2, head_dim=256, q_heads=16,
                                    state_elems_layer=32 * 128 * 128, n_experts=512, top_k=10)),
    # Qwen3 (config.json of Qwen/Qwen3-30B-A3B, -235B-A22B and the dense Qwen/Qwen3-0.6B .. -32B): head_dim 128;
    # the MoE 128 experts, top-8, in every layer; the dense 8 KV heads at every size.
    (r"qwen3-.*a\d+(\.\d+)?b", dict(family="qwen3 MoE", head_dim=128, q_heads=32, n_experts=128, top_k=8, sizes={
        30: dict(layers=48, kv_heads=4, q_heads=32),
        235: dict(layers=94, kv_heads=4, q_heads=64)})),
    (r"qwen3-", dict(family="qwen3 dense", kv_heads=8, head_dim=128, q_heads=32, sizes={
        0.6: dict(layers=28, q_heads=16),
        1.7: dict(layers=28, q_heads=16),
        4: dict(layers=36, q_heads=32),
        8: dict(layers=36, q_heads=32),
        14: dict(layers=40, q_heads=40),
        32: dict(layers=64, q_heads=64)})),
    # Llama 3.x (config.json of meta-llama/Llama-3.2-1B, -3.2-3B, -3.1-8B, -3.1-70B / -3.3-70B, -3.1-405B): 8 KV
    # heads at every size. DeepSeek-R1-Distill-Llama-8B / -70B are Llama-3.1-8B / Llama-3.3-70B.
    (r"llama-?3(?!\d)|distill-llama", dict(family="llama-3 dense", kv_heads=8, head_dim=128, q_heads=32, sizes={
        1: dict(layers=16, q_heads=32, head_dim=64),
        3: dict(layers=28, q_heads=24),
        8: dict(layers=32, q_heads=32),
        70: dict(layers=80, q_heads=64),
        405: dict(layers=126, q_heads=128)})),
    # Llama 4 Scout (config.json of meta-llama/Llama-4-Scout-17B-16E-Instruct, text_config): 109B total, 17B active;
    # 16 routed experts top-1 (and a shared one) in all 48 layers; every 4th layer global attention, the other 36
    # chunked local attention (attention_chunk_size 8192), taken as a window of 8192: an upper bound on its KV.
    (r"llama-?4-scout", dict(family="llama-4-scout MoE", params_total_b=109.0, params_active_b=17.0, layers=48,
                             attn_layers=12, kv_heads=8, head_dim=128, q_heads=40, window_layers=36, window=8192,
                             n_experts=16, top_k=1, moe_layers=48)),
    # Qwen2.5 (config.json of Qwen/Qwen2.5-0.5B .. -72B; the Coder and Math models of these sizes, the
    # DeepSeek-R1-Distill-Qwen models and QwQ-32B are built on them): head_dim 128 except 64 at 0.5B.
    (r"qwen2\.5-|distill-qwen|qwq-32b", dict(family="qwen2.5 dense", head_dim=128, sizes={
        0.5: dict(layers=24, kv_heads=2, q_heads=14, head_dim=64),
        1.5: dict(layers=28, kv_heads=2, q_heads=12),
        3: dict(layers=36, kv_heads=2, q_heads=16),
        7: dict(layers=28, kv_heads=4, q_heads=28),
        14: dict(layers=48, kv_heads=8, q_heads=40),
        32: dict(layers=64, kv_heads=8, q_heads=40),
        72: dict(layers=80, kv_heads=8, q_heads=64)})),
    # Gemma 3 (config.json of google/gemma-3-1b-it and text_config of -4b-it, -12b-it, -27b-it): every 6th layer
    # global attention, the other 5 a sliding window (512 tokens at 1B, 1024 above), of the same KV heads.
    (r"gemma-?3-", dict(family="gemma-3 dense", sizes={
        1: dict(layers=26, attn_layers=4, window_layers=22, window=512, kv_heads=1, q_heads=4, head_dim=256),
        4: dict(layers=34, attn_layers=5, window_layers=29, window=1024, kv_heads=4, q_heads=8, head_dim=256),
        12: dict(layers=48, attn_layers=8, window_layers=40, window=1024, kv_heads=8, q_heads=16, head_dim=256),
        27: dict(layers=62, attn_layers=10, window_layers=52, window=1024, kv_heads=16, q_heads=32, head_dim=128)})),
    # Gemma 2 (config.json of google/gemma-2-2b, -9b, -27b): local (sliding window 4096) and global layers alternate.
    (r"gemma-?2-", dict(family="gemma-2 dense", window=4096, sizes={
        2: dict(layers=26, attn_layers=13, window_layers=13, kv_heads=4, q_heads=8, head_dim=256),
        9: dict(layers=42, attn_layers=21, window_layers=21, kv_heads=8, q_heads=16, head_dim=256),
        27: dict(layers=46, attn_layers=23, window_layers=23, kv_heads=16, q_heads=32, head_dim=128)})),
    # Mistral Small 3 / 3.1 / 3.2 (config.json of mistralai/Mistral-Small-24B-Instruct-2501, text_config of
    # -3.1-24B-Instruct-2503): 8 KV heads of 128 (as the older 22B -Instruct-2409). Not Mistral Small 4 (above).
    (r"mistral-small-(?!4)", dict(family="mistral-small dense", kv_heads=8, head_dim=128, q_heads=32, sizes={
        24: dict(layers=40, q_heads=32)})),
    # Devstral Small and Magistral Small: Mistral Small 3.x at 24B, with no size in their names.
    (r"(?:devstral|magistral)-small", dict(family="mistral-small dense", params_total_b=24.0, params_active_b=24.0,
                                           layers=40, attn_layers=40, kv_heads=8, head_dim=128, q_heads=32)),
    # Mistral Nemo (config.json of mistralai/Mistral-Nemo-Instruct-2407): 12.2B, no size in its name.
    (r"mistral-nemo(?!-minitron)", dict(family="mistral-nemo dense", params_total_b=12.2, params_active_b=12.2,
                                         layers=40, attn_layers=40, kv_heads=8, head_dim=128, q_heads=32)),
    # Ministral 8B (config.json of mistralai/Ministral-8B-Instruct-2410); its interleaved sliding window is not
    # modelled (all layers full attention: an upper bound on its KV).
    (r"ministral-8b", dict(family="ministral-8b dense", layers=36, attn_layers=36, kv_heads=8, head_dim=128,
                           q_heads=32)),
    # Phi-4-mini (config.json of microsoft/Phi-4-mini-instruct; not the hybrid -mini-flash) and Phi-4 (microsoft/phi-4,
    # and the Phi-4-reasoning models built on it): no size in their names.
    (r"phi-?4-mini(?!-flash)", dict(family="phi-4-mini dense", params_total_b=3.8, params_active_b=3.8, layers=32,
                                    attn_layers=32, kv_heads=8, head_dim=128, q_heads=24)),
    (r"phi-?4(?!\d|-mini|-multimodal)", dict(family="phi-4 dense", params_total_b=14.7, params_active_b=14.7,
                                               layers=40, attn_layers=40, kv_heads=10, head_dim=128, q_heads=40)),
    # Config classes whose defaults are the checkpoint their docstring names (transformers 5.19): Ministral 3 8B
    # (Ministral3Config, mistralai/Ministral-3-8B-Base-2512), SmolLM3-3B (SmolLM3Config), Seed-OSS-36B
    # (SeedOssConfig) and Olmo-3-7B (Olmo3Config: full multi-head attention, 3 layers in 4 a window of 4096).
    (r"ministral-?3-8b", dict(family="ministral-3 dense", layers=34, attn_layers=34, kv_heads=8, head_dim=128,
                              q_heads=32)),
    (r"smollm3-3b", dict(family="smollm3 dense", layers=36, attn_layers=36, kv_heads=4, head_dim=128, q_heads=16)),
    (r"seed-oss-36b", dict(family="seed-oss dense", layers=64, attn_layers=64, kv_heads=8, head_dim=128, q_heads=80)),
    (r"olmo-?3-7b", dict(family="olmo-3 dense", layers=32, attn_layers=8, kv_heads=32, head_dim=128, q_heads=32,
                         window_layers=24, window=4096)),
    # GLM-4.7-Flash (transformers' Glm4MoeLiteConfig, whose defaults are its configuration though its docstring names
    # GLM-4.5): MLA (a latent of 512 and a rope key of 64 a token a layer), 20 query heads; the first of 47 layers
    # dense, the other 46 64 routed experts top-4 (and a shared one) of 3 x 2048 x 1536. Its shapes give 29.9B,
    # 3.6B a token without the input embeddings. No size in its name.
    (r"glm-4\.7-flash", dict(family="glm-4.7-flash MoE (MLA)", params_total_b=29.9, params_active_b=3.6, layers=47,
                              attn_layers=47, mla_dim=576, q_heads=20, head_dim=256, n_experts=64, top_k=4,
                              moe_layers=46)),
    # GLM-4.5-Air (config.json of zai-org/GLM-4.5-Air): 106B total, 12B active; the first layer dense, the other 45
    # 128 routed experts top-8 (and a shared one); 96 query heads, 8 KV heads of 128. No size in its name.
    (r"glm-4\.5-air", dict(family="glm-4.5-air MoE", params_total_b=106.0, params_active_b=12.0, layers=46,
                           attn_layers=46, kv_heads=8, head_dim=128, q_heads=96, n_experts=128, top_k=8,
                           moe_layers=45)),
]


# Names that say "hybrid" where no table entry does (Mamba or linear attention beside full attention):
# KV grows on a fraction of the layers only. Jamba and MiniMax-M1 keep full attention on 1 layer in 8,
# Nemotron-H and Granite-4.0-H on about 1 in 10, Kimi-Linear on 1 in 4: 1 in 8 as the prior. Every
# Nemotron 3 (Nano, Super, Ultra) is a hybrid Mamba-Transformer MoE; the table knows the 30B-A3B Nano.
HYBRID_NAME = (r"mamba|jamba|granite-4\.\d+-h-|nemotron-h(?![a-z])|nemotron-nano-\d+b-v2|nemotron-?3-|kimi-linear"
               r"|minimax-m1")
HYBRID_ATTN_FRACTION = 0.125


# --mamba-ssm-cache-dtype: bytes per element of the recurrent state
STATE_DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}

UNKNOWN_FAMILY = "unknown"  # the family of a model no table entry matched: its layout is a guess


def layout_guessed(model: dict) -> bool:
    """Whether a profile's `model` (Profile.model) was matched by no family table: its depth, KV heads
    and experts are guesses from its name and speed."""
    return (model.get("architecture") or {}).get("family") == UNKNOWN_FAMILY


# Sizes in a model's name, as (pattern, how many of its units make a billion); the first that matches wins:
# - in B, not a digit run's tail ("Hunyuan-A13B" gives no total, not 3B; name_params splits "-A" off first);
# - in millions, for the small ones ("gemma-3-270m", "SmolLM2-360M"); never beside a size in B, where an M
#   is something else ("Qwen2.5-7B-Instruct-1M": a million tokens of context);
# - Gemma's "effective" sizes (gemma-3n-E4B, gemma-4-E2B): the parameters a token runs through; the rest are
#   per-layer embeddings, of which a step reads only its tokens' rows.
NAME_SIZES = ((r"(?<![a-zA-Z\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", 1.0),
              (r"(?<![a-zA-Z\d.])(\d+(?:\.\d+)?)[mM](?![a-zA-Z])", 1000.0),
              (r"(?<![a-zA-Z\d.])[eE](\d+(?:\.\d+)?)[bB](?![a-zA-Z])", 1.0))


def name_params(name: str) -> tuple[float | None, float | None]:
    """(total, active) parameter counts in billions from names like 'Qwen3.6-35B-A3B' or 'gpt-oss-20b'."""
    total = active = None
    split = name.replace("-A", " A").replace("-a", " a")
    for pat, units in NAME_SIZES:
        m = re.search(pat, split)
        if m:
            total = float(m.group(1)) / units
            break
    m2 = re.search(r"[-_ ][Aa](\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
    if m2:
        active = float(m2.group(1))
    if total is not None and active is not None and active >= total:
        active = None
    return total, active


# vLLM's --quantization methods that name a format under another word: ModelOpt's FP8 and NVFP4
# checkpoints, the Marlin kernels of AWQ / GPTQ, bitsandbytes (4-bit by default)
QUANTIZATION_ALIASES = {"modelopt": "fp8", "modelopt_fp4": "nvfp4", "awq_marlin": "awq", "gptq_marlin": "gptq",
                        "bitsandbytes": "int4", "fbgemm_fp8": "fp8", "ptpc_fp8": "fp8"}
# name parts of quantized checkpoints, as (pattern, dtype), in the order they are tried: compressed-tensors'
# "W4A16" / "W8A8" (RedHatAI, neuralmagic), bitsandbytes' "bnb-4bit" / "nf4", then the formats' own names
NAME_DTYPES = [("nvfp4", "nvfp4"), ("mxfp4", "mxfp4"), ("fp8", "fp8"), ("w4a16", "int4"), ("w8a(?:8|16)", "int8"),
               ("bnb-4bit", "int4"), ("nf4", "int4"), ("awq", "awq"), ("gptq", "gptq"), ("int4", "int4"),
               ("int8", "int8"), ("bf16", "bf16"), ("fp16", "fp16")]


def weight_dtype(server: dict) -> tuple[str, str]:
    """The weights' dtype from what the run says (model id, the run's profile name, --quantization)."""
    # names only: the command line's other flags name other dtypes (--kv-cache-dtype fp8)
    text = " ".join(str(server.get(k) or "") for k in ("model", "weights_profile", "served_name")).lower()
    m = re.search(r"(?:--quantization|(?<!\S)-q)[ =]['\"]?([\w-]+)", str(server.get("extra_args") or "").lower())
    if m:
        q = QUANTIZATION_ALIASES.get(m.group(1), m.group(1))
        if q in WEIGHT_BITS:
            return q, "--quantization flag"
    for pat, key in NAME_DTYPES:
        if re.search(rf"(?<![a-z0-9]){pat}", text):
            return key, "model id / run name"
    if re.search(r"(?<![a-z0-9])fp4(?![a-z0-9])", text):  # NVIDIA's "-FP4" checkpoints are NVFP4
        return "nvfp4", "model id / run name (FP4)"
    if "gpt-oss" in text:
        return "mxfp4", "gpt-oss ships mxfp4 experts"
    return "bf16", "assumed (no dtype in the model id or flags)"


def kv_dtype_bytes(server: dict, weights: str) -> tuple[float, str]:
    kv = str(server.get("kv_cache_dtype") or "auto").lower()
    if kv == "auto":
        # vLLM's "auto" is the model's dtype (vllm.utils.torch_utils.kv_cache_dtype_str_to_dtype), 16-bit
        # whatever the weights' quantization, unless the checkpoint's quantization config declares a
        # quantized KV cache (resolve_kv_cache_dtype_string), which no file of a run shows
        why = "kv_cache_dtype auto: the model's dtype (16-bit"
        why += (f"; a {weights} checkpoint that declares an fp8 KV cache holds half)" if weights != "bf16" else ")")
        return 2.0, why
    if kv not in KV_BYTES:
        return 2.0, f"kv_cache_dtype {kv} (not a dtype capsim knows: 2 bytes assumed)"
    return KV_BYTES[kv], f"kv_cache_dtype {kv}"


def _layers_for(params_b: float) -> int:
    """Typical depth of a transformer of this size (dense-equivalent); only a prior."""
    return int(round(min(96, max(16, 16 + 9 * math.sqrt(params_b)))))


def architecture_for(server: dict) -> Architecture:
    """Architecture facts for the run's model: a known family's table, else inferred from its name."""
    model = str(server.get("model") or server.get("served_name") or "")
    low = model.lower().split("/")[-1]
    total, active = name_params(low)
    facts: dict = {}
    source = "inferred from the model name"
    for pat, f in FAMILIES:
        if re.search(pat, low):
            facts = dict(f)
            source = f"family table: {f['family']}"
            break
    assumed: list[str] = []
    frac = facts.pop("hybrid_attn_fraction", None)
    if not facts and re.search(HYBRID_NAME, low):
        frac = HYBRID_ATTN_FRACTION
        assumed.append(f"a hybrid (the name says so): full attention on 1 layer in {round(1 / frac)}")
    sizes = facts.pop("sizes", None)
    if sizes is not None:
        size = next((v for k, v in sizes.items() if total is not None and abs(k - total) < 1e-6), None)
        if size is not None:
            facts.update(size)
            source += f", {total:g}B"
        else:
            which = f"size {total:g}B not" if total is not None else "no size in the name to look up"
            assumed.append(f"{which} in the {facts['family']} table "
                           f"(it lists {', '.join(f'{k:g}B' for k in sizes)}): the family's other facts only")
    if "params_total_b" not in facts:
        if total is None:
            assumed.append("parameter count (none in the name): from the single-user decode speed")
        facts["params_total_b"] = total or 0.0
        facts["params_active_b"] = active or facts["params_total_b"]
    # a name whose active count is under its total is a mixture of experts: its depth follows the active
    # size (published MoEs of 3-4B active run 24-52 layers, where their 20-35B totals would say 57-69)
    moe_by_name = "n_experts" not in facts and active is not None and total is not None and active < total
    if "layers" not in facts:
        moe = facts.get("n_experts") or moe_by_name
        facts["layers"] = _layers_for(facts["params_active_b"] if moe else facts["params_total_b"] or 8)
        assumed.append(f"{facts['layers']} layers (typical for the size)")
    if frac and "attn_layers" not in facts:  # a hybrid: full attention on its share of the layers, a state on the rest
        facts["attn_layers"] = max(1, int(round(facts["layers"] * frac)))
        facts["state_layers"] = facts["layers"] - facts["attn_layers"]
    # a size's depth: the layers not given as windowed attend fully; a MoE's layers all hold experts unless given
    facts.setdefault("attn_layers", facts["layers"] - facts.get("window_layers", 0))
    if facts.get("n_experts"):
        facts.setdefault("moe_layers", facts["layers"])
    if moe_by_name:
        facts.update(n_experts=128, top_k=8, moe_layers=facts["layers"])
        assumed.append("128 experts, top-8 (typical MoE)")
    if "kv_heads" not in facts and "mla_dim" not in facts:
        assumed.append("8 KV heads of 128 (typical GQA)")
    facts.setdefault("family", UNKNOWN_FAMILY)
    m = re.search(r"--mamba[-_]ssm[-_]cache[-_]dtype(?:=|\s+)['\"]?(\w+)", str(server.get("extra_args") or ""))
    if m and m.group(1).lower() in STATE_DTYPE_BYTES:  # "auto" leaves vLLM's choice for the family
        facts["state_elem_bytes"] = STATE_DTYPE_BYTES[m.group(1).lower()]
    return Architecture(**facts, source=source, assumed=assumed,
                        kv_layout_assumed="kv_heads" not in facts and "mla_dim" not in facts)


def step_quantities(arch: Architecture, weights: str, kv_bytes: float) -> dict:
    """PhysicalStepModel's fixed quantities from architecture facts and dtypes."""
    wb = WEIGHT_BITS.get(weights, 16.0) / 8.0
    eb = wb
    if arch.expert_bits and weights == "mxfp4":
        # a model that ships quantised experts: the rest (attention, router, embeddings) stays bf16
        eb, wb = arch.expert_bits / 8.0, 2.0
    p_t, p_a = arch.params_total_b * 1e9, arch.params_active_b * 1e9
    q: dict = {}
    if arch.moe and arch.moe_layers:
        per_expert = (p_t - p_a) / (arch.moe_layers * (arch.n_experts - arch.top_k))
        dense = max(0.0, p_a - arch.moe_layers * arch.top_k * per_expert)
        q.update(weight_bytes_fixed=dense * wb, expert_bytes=per_expert * eb, moe_layers=arch.moe_layers,
                 n_experts=arch.n_experts, top_k=arch.top_k)
    else:
        q.update(weight_bytes_fixed=p_t * wb, expert_bytes=0.0, moe_layers=0, n_experts=0, top_k=0)
    per_layer = (arch.mla_dim if arch.mla_dim else 2 * arch.kv_heads * arch.head_dim) * kv_bytes
    q["kv_bytes_full"] = float(arch.attn_layers * per_layer)
    if arch.window_layers and arch.window:
        wk = arch.window_kv_heads or arch.kv_heads
        wd = arch.window_head_dim or arch.head_dim
        q["kv_bytes_window"] = float(arch.window_layers * 2 * wk * wd * kv_bytes)
        q["window"] = int(arch.window)
    else:
        q["kv_bytes_window"] = 0.0
        q["window"] = None
    # the state is read and written back every step
    q["state_bytes_seq"] = float(arch.state_layers * arch.state_elems_layer * arch.state_elem_bytes * 2)
    q["flops_per_token"] = 2.0 * p_a
    # QK^T and PV: 2 x 2 FLOPs per query-key pair per head-dim element
    q["attn_flops_full"] = float(4 * arch.q_heads * (arch.head_dim if not arch.mla_dim else 192) * arch.attn_layers)
    q["attn_flops_window"] = float(4 * arch.q_heads * (arch.window_head_dim or arch.head_dim) * arch.window_layers)
    return q
