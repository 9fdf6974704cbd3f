"""Architecture facts per model family (calibrate/architectures.py): published config.json facts per
family and size, the fallback for a size the table lacks, and the nine spark-bench models unchanged."""
import pytest

from calibrate.architectures import Architecture, architecture_for, layout_guessed, name_params, step_quantities
from calibrate.importers import load_meta
from calibrate.server_flags import unmodelled_flags
from tests.test_importers import RESULTS, shared_missing

# model id -> facts its config.json gives (a sample per family, not every size)
SAMPLES = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(family="llama-3 dense", layers=32, attn_layers=32, kv_heads=8,
                                             head_dim=128, q_heads=32),
    "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic": dict(family="llama-3 dense", layers=80, kv_heads=8, q_heads=64),
    "meta-llama/Llama-3.2-1B-Instruct": dict(layers=16, kv_heads=8, head_dim=64, q_heads=32),
    "meta-llama/Llama-3.2-3B-Instruct": dict(layers=28, kv_heads=8, head_dim=128, q_heads=24),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": dict(family="llama-3 dense", layers=32, kv_heads=8),
    "Qwen/Qwen2.5-32B-Instruct-AWQ": dict(family="qwen2.5 dense", layers=64, kv_heads=8, q_heads=40, head_dim=128),
    "Qwen/Qwen2.5-7B-Instruct": dict(layers=28, kv_heads=4, q_heads=28),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(layers=24, kv_heads=2, q_heads=14, head_dim=64),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": dict(family="qwen2.5 dense", layers=48, kv_heads=8, q_heads=40),
    "Qwen/QwQ-32B": dict(family="qwen2.5 dense", layers=64, kv_heads=8),
    "Qwen/Qwen3-8B": dict(family="qwen3 dense", layers=36, kv_heads=8, q_heads=32),
    "Qwen/Qwen3-0.6B": dict(layers=28, kv_heads=8, q_heads=16, head_dim=128),
    "Qwen/Qwen3-32B-FP8": dict(layers=64, kv_heads=8, q_heads=64),
    "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8": dict(family="qwen3 MoE", layers=48, attn_layers=48, kv_heads=4,
                                                 n_experts=128, top_k=8, moe_layers=48, params_active_b=3.0),
    "Qwen/Qwen3-235B-A22B": dict(layers=94, kv_heads=4, q_heads=64, n_experts=128, top_k=8),
    "google/gemma-3-27b-it": dict(family="gemma-3 dense", layers=62, attn_layers=10, window_layers=52, window=1024,
                                  kv_heads=16, head_dim=128, q_heads=32),
    "unsloth/gemma-3-12b-it-qat-unsloth-bnb-4bit": dict(layers=48, attn_layers=8, window_layers=40, window=1024,
                                                        kv_heads=8, head_dim=256),
    "google/gemma-3-1b-it": dict(layers=26, attn_layers=4, window_layers=22, window=512, kv_heads=1, head_dim=256),
    "google/gemma-2-9b-it": dict(family="gemma-2 dense", layers=42, attn_layers=21, window_layers=21, window=4096,
                                 kv_heads=8, head_dim=256),
    "mistralai/Mistral-Small-3.2-24B-Instruct-2506": dict(family="mistral-small dense", layers=40, kv_heads=8,
                                                          head_dim=128),
    "mistralai/Mistral-Nemo-Instruct-2407": dict(family="mistral-nemo dense", params_total_b=12.2, layers=40,
                                                 kv_heads=8, head_dim=128),
    "mistralai/Ministral-8B-Instruct-2410": dict(layers=36, kv_heads=8, params_total_b=8.0),
    "microsoft/phi-4": dict(family="phi-4 dense", params_total_b=14.7, layers=40, kv_heads=10, q_heads=40),
    "microsoft/Phi-4-mini-instruct": dict(family="phi-4-mini dense", params_total_b=3.8, layers=32, kv_heads=8,
                                          q_heads=24),
    "zai-org/GLM-4.5-Air-FP8": dict(family="glm-4.5-air MoE", params_total_b=106.0, params_active_b=12.0, layers=46,
                                    kv_heads=8, q_heads=96, n_experts=128, top_k=8, moe_layers=45),
    "mistralai/Devstral-Small-2507": dict(family="mistral-small dense", params_total_b=24.0, layers=40, kv_heads=8),
    "mistralai/Magistral-Small-2509": dict(family="mistral-small dense", params_total_b=24.0, layers=40),
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": dict(params_total_b=109.0, params_active_b=17.0, layers=48,
                                                      attn_layers=12, window_layers=36, n_experts=16, top_k=1),
}


@pytest.mark.parametrize("model", sorted(SAMPLES))
def test_a_known_family_gives_its_published_facts(model):
    arch = architecture_for({"model": model})
    got = {k: getattr(arch, k) for k in SAMPLES[model]}
    assert got == SAMPLES[model]
    assert arch.source.startswith("family table") and arch.assumed == [] and not arch.kv_layout_assumed


def test_the_size_in_the_name_picks_the_depth():
    qwen = {n: architecture_for({"model": f"Qwen/Qwen3-{n}"}) for n in ("1.7B", "4B", "14B")}
    assert [a.layers for a in qwen.values()] == [28, 36, 40]
    assert qwen["14B"].source == "family table: qwen3 dense, 14B"


def test_a_size_the_table_lacks_keeps_the_family_facts_and_says_what_it_guessed():
    arch = architecture_for({"model": "Qwen/Qwen3-2B"})  # no such size: the family's KV heads, a guessed depth
    assert arch.family == "qwen3 dense" and arch.kv_heads == 8 and not arch.kv_layout_assumed
    assert any("size 2B not in the qwen3 dense table" in a for a in arch.assumed)
    assert any("layers (typical for the size)" in a for a in arch.assumed)
    assert arch.attn_layers == arch.layers
    # a family whose KV heads depend on the size: an unlisted size does not get them
    gemma = architecture_for({"model": "google/gemma-3-270m"})
    assert gemma.family == "gemma-3 dense" and gemma.kv_layout_assumed and gemma.window_layers == 0
    assert any("size 0.27B not in the gemma-3 dense table" in a for a in gemma.assumed)  # 270m: 0.27B
    assert any("no size in the name" in a for a in architecture_for({"model": "google/gemma-3-it"}).assumed)
    coder = architecture_for({"model": "Qwen/Qwen3-Coder-480B-A35B-Instruct"})
    assert coder.family == "qwen3 MoE" and coder.kv_layout_assumed and coder.moe_layers == coder.layers


def test_a_mixture_of_experts_no_table_knows_takes_the_depth_of_its_active_size():
    """Published MoEs are as deep as dense models of their active size, not of their total: Qwen3-30B-A3B
    48 layers, Nemotron-3-Nano-30B-A3B 52, Gemma-4-26B-A4B 30, where a dense 30B guess gives 65."""
    moe = architecture_for({"model": "acme/Model-35B-A3B"})
    dense3 = architecture_for({"model": "acme/Model-3B"})
    dense35 = architecture_for({"model": "acme/Model-35B"})
    assert moe.n_experts and moe.moe_layers == moe.layers
    assert moe.layers == dense3.layers < dense35.layers
    assert any(f"{moe.layers} layers (typical for the size)" in a for a in moe.assumed)


def test_new_patterns_do_not_capture_the_older_entries_names():
    assert architecture_for({"model": "mistralai/Mistral-Small-4-119B-2603-NVFP4"}).mla_dim == 320
    assert architecture_for({"model": "Qwen/Qwen3.6-35B-A3B"}).family == "qwen3.5 hybrid MoE"
    assert architecture_for({"model": "Qwen/Qwen3.5-4B"}).family == "qwen3.5 hybrid dense"
    assert architecture_for({"model": "Qwen/Qwen3-Next-80B-A3B-Instruct"}).family == "qwen3-next hybrid MoE"
    assert architecture_for({"model": "google/gemma-4-31B-it"}).family == "gemma-4 dense"
    assert architecture_for({"model": "codellama/CodeLlama-34b-hf"}).family == "unknown"  # not Llama 3
    assert architecture_for({"model": "google/gemma-3n-E4B-it"}).family == "unknown"


def test_gemma3_sliding_windows_hold_less_kv_than_dense_attention():
    arch = architecture_for({"model": "google/gemma-3-27b-it"})
    q = step_quantities(arch, "bf16", 2.0)
    per_layer = 2 * 16 * 128 * 2.0
    assert q["kv_bytes_full"] == 10 * per_layer and q["kv_bytes_window"] == 52 * per_layer and q["window"] == 1024
    ctx = 32768
    windowed = q["kv_bytes_full"] * ctx + q["kv_bytes_window"] * min(ctx, q["window"])
    dense = 62 * per_layer * ctx  # every layer attending to the whole context
    assert windowed < dense / 4
    guess = step_quantities(architecture_for({"model": "acme/Unknown-27B"}), "bf16", 2.0)  # no table: all layers full
    assert windowed < guess["kv_bytes_full"] * ctx / 2


# architecture_for of the nine spark-bench runs before the families above were added: must not change at all
# (but for the recurrent state's float32, which vLLM keeps for Nemotron-H and Qwen3.5)
SPARK_BENCH = {
    "gemma-4/gemma-4-26b-a4b-it/bf16": Architecture(
        attn_layers=5, family="gemma-4 MoE", head_dim=512, kv_heads=2, layers=30, moe_layers=30, n_experts=128,
        params_active_b=3.8, params_total_b=25.2, q_heads=16, source="family table: gemma-4 MoE", top_k=8,
        window=1024, window_head_dim=256, window_kv_heads=8, window_layers=25),
    "gemma-4/gemma-4-26b-a4b-it/bf16-v23": Architecture(
        attn_layers=5, family="gemma-4 MoE", head_dim=512, kv_heads=2, layers=30, moe_layers=30, n_experts=128,
        params_active_b=3.8, params_total_b=25.2, q_heads=16, source="family table: gemma-4 MoE", top_k=8,
        window=1024, window_head_dim=256, window_kv_heads=8, window_layers=25),
    "gemma-4/gemma-4-31b-it/bf16": Architecture(
        attn_layers=10, family="gemma-4 dense", head_dim=512, kv_heads=4, layers=60, params_active_b=30.7,
        params_total_b=30.7, source="family table: gemma-4 dense", window=1024, window_head_dim=256,
        window_kv_heads=16, window_layers=50),
    "gpt-oss/gpt-oss-20b/mxfp4": Architecture(
        attn_layers=12, expert_bits=4.25, family="gpt-oss", head_dim=64, layers=24, moe_layers=24, n_experts=32,
        params_active_b=3.6, params_total_b=20.9, q_heads=64, source="family table: gpt-oss", top_k=4, window=128,
        window_head_dim=64, window_kv_heads=8, window_layers=12),
    "mistral-small-4/mistral-small-4-119b/nvfp4": Architecture(
        attn_layers=36, family="mistral-small-4 MoE (MLA)", layers=36, mla_dim=320, moe_layers=36, n_experts=128,
        params_active_b=6.5, params_total_b=119.0, source="family table: mistral-small-4 MoE (MLA)", top_k=4),
    "muse-glimmer/muse-glimmer-30b/bf16-spec": Architecture(
        assumed=["65 layers (typical for the size)", "8 KV heads of 128 (typical GQA)"], attn_layers=65,
        family="unknown", kv_layout_assumed=True, layers=65, params_active_b=30.0, params_total_b=30.0,
        source="inferred from the model name"),
    "nemotron-3/nemotron-3-nano-30b-a3b/bf16": Architecture(
        attn_layers=6, family="nemotron-3 hybrid Mamba MoE", kv_heads=2, layers=52, moe_layers=23, n_experts=128,
        params_active_b=3.6, params_total_b=31.6, source="family table: nemotron-3 hybrid Mamba MoE",
        state_elem_bytes=4.0, state_elems_layer=524288, state_layers=23, top_k=6),
    "qwen-3.5/qwen-3.5-4b/bf16": Architecture(
        attn_layers=8, family="qwen3.5 hybrid dense", head_dim=256, kv_heads=4, layers=32, params_active_b=4.0,
        params_total_b=4.0, q_heads=16, source="family table: qwen3.5 hybrid dense, 4B", state_elem_bytes=4.0,
        state_elems_layer=524288, state_layers=24),
    "qwen-3.6/qwen-3.6-35b-a3b/bf16": Architecture(
        attn_layers=10, family="qwen3.5 hybrid MoE", head_dim=256, kv_heads=2, layers=40, moe_layers=40,
        n_experts=256, params_active_b=3.0, params_total_b=35.0, q_heads=16,
        source="family table: qwen3.5 hybrid MoE, 35B", state_elem_bytes=4.0, state_elems_layer=524288,
        state_layers=30, top_k=8),
}


@pytest.mark.parametrize("run", sorted(SPARK_BENCH))
def test_the_spark_bench_models_are_unchanged(run):
    folder = RESULTS / run
    if not (folder / "meta.json").is_file():
        shared_missing(f"spark-bench run not found: {folder}")
    assert architecture_for(load_meta(folder)) == SPARK_BENCH[run]


@pytest.mark.parametrize("model", ["nvidia/NVIDIA-Nemotron-Nano-9B-v2", "ibm-granite/granite-4.0-h-small",
                                   "ai21labs/AI21-Jamba-Mini-1.7", "moonshotai/Kimi-Linear-48B-A3B-Instruct",
                                   "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8"])
def test_a_name_that_says_hybrid_holds_kv_on_few_layers(model):
    """No table entry, but the name says Mamba or linear attention beside full attention: KV grows on
    1 layer in 8 and the rest hold a state; the layout stays a guess (its cache is not let bind)."""
    a = architecture_for({"model": model})
    assert a.family == "unknown" and a.kv_layout_assumed
    assert a.attn_layers == max(1, round(a.layers / 8)) and a.state_layers == a.layers - a.attn_layers
    assert any("hybrid (the name says so): full attention on 1 layer in 8" in x for x in a.assumed)
    plain = architecture_for({"model": "acme/Plain-9B"})
    assert plain.attn_layers == plain.layers and plain.state_layers == 0
    assert step_quantities(a, "bf16", 2.0)["kv_bytes_full"] < step_quantities(plain, "bf16", 2.0)["kv_bytes_full"]


def test_a_hybrid_family_in_the_table_keeps_its_own_facts():
    # qwen3-next has a table entry: its 1 layer in 4, not the name rule's 1 in 8
    a = architecture_for({"model": "Qwen/Qwen3-Next-80B-A3B-Instruct"})
    assert a.family.startswith("qwen3-next") and not any("the name says so" in x for x in a.assumed)
    assert (a.layers, a.attn_layers, a.state_layers) == (48, 12, 36)
    coder = architecture_for({"model": "Qwen/Qwen3-Coder-Next-FP8"})  # the same model, no size in its name
    assert coder.family == a.family and (coder.params_total_b, coder.params_active_b) == (80.0, 3.0)
    assert (coder.layers, coder.attn_layers, coder.n_experts) == (48, 12, 512) and not coder.assumed
    # a hybrid's listed depth keeps the family's share of attention layers; an unlisted size guesses the depth
    big = architecture_for({"model": "Qwen/Qwen3.5-122B-A10B"})
    assert big.attn_layers == round(big.layers / 4) and big.state_layers == big.layers - big.attn_layers
    odd = architecture_for({"model": "Qwen/Qwen3.5-14B"})
    assert any("size 14B not in the qwen3.5 hybrid dense table" in x for x in odd.assumed)
    assert odd.attn_layers == round(odd.layers / 4) and odd.state_layers == odd.layers - odd.attn_layers


@pytest.mark.parametrize("model, layers, kv_heads, v_heads, total_b", [
    ("Qwen/Qwen3.5-0.8B", 24, 2, 16, 0.8), ("Qwen/Qwen3.5-2B", 24, 2, 16, 2.0), ("Qwen/Qwen3.5-9B", 32, 4, 32, 9.0),
    ("Qwen/Qwen3.5-27B-FP8", 64, 4, 48, 27.0), ("Qwen/Qwen3.6-27B", 64, 4, 48, 27.0),
    ("Qwen/Qwen3.5-122B-A10B-NVFP4", 48, 2, 64, 122.0), ("Qwen/Qwen3.5-397B-A17B", 60, 2, 64, 397.0)])
def test_qwen35_sizes_hold_their_published_layouts(model, layers, kv_heads, v_heads, total_b):
    """Each size's depth, KV heads and DeltaNet state (V heads x 128 x 128 a layer, float32) from the table,
    nothing assumed; attention on 1 layer in 4."""
    a = architecture_for({"model": model})
    assert (a.layers, a.kv_heads, a.state_elems_layer, a.params_total_b) == (layers, kv_heads, v_heads * 128 * 128,
                                                                             total_b)
    assert a.attn_layers == layers // 4 and a.state_layers == layers - layers // 4 and not a.assumed


def test_glm47_flash_is_an_mla_moe_of_30b_without_a_size_in_its_name():
    a = architecture_for({"model": "zai-org/GLM-4.7-Flash"})
    assert (a.params_total_b, a.params_active_b, a.layers, a.moe_layers, a.n_experts, a.top_k) == (29.9, 3.6, 47, 46,
                                                                                                 64, 4)
    assert a.mla_dim == 512 + 64 and not a.kv_layout_assumed and not a.assumed
    # its KV a token: 47 layers of a 576-element latent, at the cache's bytes per element
    assert step_quantities(a, "bf16", 2.0)["kv_bytes_full"] == 47 * 576 * 2


def test_the_recurrent_state_is_float32_where_vllm_keeps_it_so():
    """vLLM keeps the SSM state of Nemotron-H (by default) and Qwen3.5 (its config's mamba_ssm_dtype) in
    float32, read and written back every step; --mamba-ssm-cache-dtype overrides it, "auto" does not."""
    def state(model, args=""):
        return step_quantities(architecture_for({"model": model, "extra_args": args}), "bf16", 1.0)["state_bytes_seq"]
    nemotron = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
    assert state(nemotron) == 23 * 64 * 64 * 128 * 4 * 2
    assert state(nemotron, "--mamba-ssm-cache-dtype bfloat16") == state(nemotron) / 2
    assert state(nemotron, "--mamba-ssm-cache-dtype=auto") == state(nemotron)
    assert state("Qwen/Qwen3.5-4B") == state("Qwen/Qwen3.5-4B", "--mamba_ssm_cache_dtype float32")
    nxt = "Qwen/Qwen3-Next-80B-A3B-Instruct"  # no config class sets it: the model's dtype
    assert state(nxt) == state(nxt, "--mamba-ssm-cache-dtype float16")
    assert unmodelled_flags("--mamba-ssm-cache-dtype float32 --mamba_ssm_cache_dtype=float32") == []


@pytest.mark.parametrize("model, layers, attn_layers, kv_heads, q_heads, window_layers", [
    ("mistralai/Ministral-3-8B-Instruct-2512", 34, 34, 8, 32, 0), ("HuggingFaceTB/SmolLM3-3B", 36, 36, 4, 16, 0),
    ("ByteDance-Seed/Seed-OSS-36B-Instruct", 64, 64, 8, 80, 0), ("allenai/Olmo-3-7B-Think", 32, 8, 32, 32, 24)])
def test_families_from_config_classes_that_match_their_checkpoint(model, layers, attn_layers, kv_heads, q_heads,
                                                                   window_layers):
    a = architecture_for({"model": model})
    assert (a.layers, a.attn_layers, a.kv_heads, a.q_heads, a.window_layers) == (layers, attn_layers, kv_heads,
                                                                                 q_heads, window_layers)
    assert not a.kv_layout_assumed and not a.assumed and a.family != "unknown"


@pytest.mark.parametrize("variant, base", [("openai/gpt-oss-safeguard-20b", "openai/gpt-oss-20b"),
                                           ("openai/gpt-oss-safeguard-120b", "openai/gpt-oss-120b")])
def test_a_fine_tuned_variant_keeps_its_base_models_facts(variant, base):
    assert architecture_for({"model": variant}) == architecture_for({"model": base})


def _arch(**kw) -> Architecture:
    facts = dict(family="t", params_total_b=10.0, params_active_b=3.0, layers=4, attn_layers=3, kv_heads=2,
                 head_dim=64, q_heads=8)
    facts.update(kw)
    return Architecture(**facts)


def test_step_quantities_of_a_mixture_of_experts_by_hand():
    # 4 MoE layers of 10 experts, top-2: the 7B of inactive parameters are 4 x 8 experts of 0.21875B, and the
    # 3B active hold 4 x 2 of them, leaving 1.25B that every token reads
    moe = _arch(n_experts=10, top_k=2, moe_layers=4, window_layers=1, window=100, window_kv_heads=4, window_head_dim=32)
    q = step_quantities(moe, "bf16", 1.0)
    assert q == pytest.approx(dict(
        weight_bytes_fixed=2 * 1.25e9, expert_bytes=2 * 0.21875e9, moe_layers=4, n_experts=10, top_k=2,
        kv_bytes_full=3 * 2 * 2 * 64, kv_bytes_window=1 * 2 * 4 * 32, window=100, state_bytes_seq=0.0,
        flops_per_token=6e9, attn_flops_full=4 * 8 * 64 * 3, attn_flops_window=4 * 8 * 32 * 1))
    fp8 = step_quantities(moe, "fp8", 2.0)  # a byte a weight (its scales are per block); KV at the cache's own bytes
    assert fp8["weight_bytes_fixed"] == pytest.approx(1.25e9)
    assert fp8["expert_bytes"] == pytest.approx(0.21875e9)
    nvfp4 = step_quantities(moe, "nvfp4", 1.0)  # 4 bits and an fp8 scale per 16
    assert nvfp4["weight_bytes_fixed"] == pytest.approx(1.25e9 * 4.5 / 8)
    assert fp8["kv_bytes_full"] == 3 * 2 * 2 * 64 * 2.0 and fp8["kv_bytes_window"] == 2 * 4 * 32 * 2.0
    assert step_quantities(moe, "no-such-dtype", 1.0)["weight_bytes_fixed"] == pytest.approx(2 * 1.25e9)  # 16-bit


def test_experts_quantised_apart_read_their_own_bits_only_under_mxfp4():
    moe = _arch(n_experts=10, top_k=2, moe_layers=4, expert_bits=4.25)
    mx = step_quantities(moe, "mxfp4", 1.0)
    assert mx["expert_bytes"] == pytest.approx(0.21875e9 * 4.25 / 8)
    assert mx["weight_bytes_fixed"] == pytest.approx(1.25e9 * 2)  # attention, router, embeddings stay bf16
    bf = step_quantities(moe, "bf16", 1.0)  # a bf16 copy of the same model reads 16 bits everywhere
    assert bf["expert_bytes"] == pytest.approx(0.21875e9 * 2) and bf["weight_bytes_fixed"] == pytest.approx(1.25e9 * 2)


def test_a_mixture_whose_experts_outweigh_its_active_count_reads_no_dense_part():
    # top-5 of 10 experts over 9B inactive: 9B of experts per token, more than the 1B active; the dense part is 0
    q = step_quantities(_arch(params_active_b=1.0, n_experts=10, top_k=5, moe_layers=4), "bf16", 1.0)
    assert q["weight_bytes_fixed"] == 0.0 and q["expert_bytes"] == pytest.approx(2 * 9e9 / 20)


@pytest.mark.parametrize("kw", [dict(n_experts=10, top_k=2, moe_layers=0),  # experts on no layer
                                dict(params_active_b=10.0, n_experts=10, top_k=2, moe_layers=4)])  # all active
def test_a_model_that_is_not_a_mixture_reads_all_its_weights_every_step(kw):
    q = step_quantities(_arch(**kw), "nvfp4", 1.0)
    assert q["weight_bytes_fixed"] == pytest.approx(10e9 * 4.5 / 8)
    assert (q["expert_bytes"], q["moe_layers"], q["n_experts"], q["top_k"]) == (0.0, 0, 0, 0)


def test_mla_state_and_window_quantities_by_hand():
    mla = step_quantities(_arch(params_active_b=10.0, mla_dim=320), "bf16", 1.0)
    assert mla["kv_bytes_full"] == 3 * 320  # the latent and the rope key, not 2 x heads x head_dim
    assert mla["attn_flops_full"] == 4 * 8 * 192 * 3  # a query-key pair over qk's 192 dims a head
    state = step_quantities(_arch(params_active_b=10.0, state_layers=2, state_elems_layer=1000.0,
                                  state_elem_bytes=4.0), "bf16", 2.0)
    assert state["state_bytes_seq"] == 2 * 1000 * 4.0 * 2  # read and written back every step
    no_size = step_quantities(_arch(params_active_b=10.0, window_layers=2), "bf16", 1.0)  # windowed, no size
    assert (no_size["kv_bytes_window"], no_size["window"]) == (0.0, None)
    own_heads = step_quantities(_arch(params_active_b=10.0, window_layers=2, window=64), "bf16", 1.0)
    assert own_heads["kv_bytes_window"] == 2 * 2 * 2 * 64  # the full layers' KV heads and head size
    assert own_heads["attn_flops_window"] == 4 * 8 * 64 * 2


def test_what_a_name_without_facts_gets():
    none = architecture_for({"model": "acme/mystery"})  # no size: a depth of 8B, the size left to the decode speed
    assert (none.params_total_b, none.params_active_b, none.layers) == (0.0, 0.0, 41)
    assert architecture_for({"model": "acme/Giant-1000B"}).layers == 96  # 16 + 9 x sqrt(B), within 16-96
    assert architecture_for({"model": "acme/Tiny-0.001B"}).layers == 16
    moe = architecture_for({"model": "acme/Model-35B-A3B"})
    assert (moe.n_experts, moe.top_k, moe.moe_layers) == (128, 8, moe.layers)
    assert name_params("acme-3b-a3b") == (3.0, None)  # an active count that is the total is no mixture


def test_a_table_entry_with_windowed_layers_attends_fully_on_the_rest(monkeypatch):
    entry = dict(family="w", params_total_b=8.0, params_active_b=8.0, layers=30, window_layers=24, window=512)
    monkeypatch.setattr("calibrate.architectures.FAMILIES", [(r"windowed", entry)])
    a = architecture_for({"model": "acme/windowed-8b"})
    assert (a.layers, a.attn_layers, a.window_layers) == (30, 6, 24)


def test_a_profile_without_a_known_layout_is_not_a_guessed_one():
    assert layout_guessed({"architecture": {"family": "unknown"}})
    assert not layout_guessed({"architecture": {"family": "qwen3 dense"}})
    assert not layout_guessed({}) and not layout_guessed({"architecture": None})  # a live profile's bare model
