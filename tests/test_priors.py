"""A fit's starting point by hand: the KV pool vLLM leaves of gpu_memory_utilization, the server's own
block count, the weights a name's size cannot read at the measured speed, and the engine's defaults."""
import pytest

from calibrate.architectures import architecture_for
from calibrate.priors import GB10_MEMORY_GIB, OTHER_GIB, ROOFLINE_BW, acceptance_for_length, prior_profile
from simulator.profile import KVGroup

GIB = 2 ** 30


def test_the_kv_pool_is_what_gpu_memory_utilization_leaves_of_the_box_after_the_weights():
    # 8 t/s: 28 GB a step at the roofline is 0.10 s, within reach (a faster box would scale the weights)
    prof, origin = prior_profile({"model": "Qwen/Qwen3-14B", "gpu_memory_utilization": 0.8}, 8.0)
    # 40 layers of 8 KV heads of 128 at 2 bytes: 163840 bytes a token; 14B of bf16 weights
    pool = 0.8 * GB10_MEMORY_GIB * GIB - 14e9 * 2 - 3 * GIB  # 3 GiB of activations, CUDA graphs and slack
    assert prof.engine.num_blocks == int(pool // (16 * 40 * 2 * 8 * 128 * 2))
    assert prof.engine.kv_groups == (KVGroup(16, 1, None),)
    assert origin["num_blocks"] == (f"architecture prior: {prof.engine.num_blocks} blocks from gpu_memory_utilization "
                                    f"0.8 of {GB10_MEMORY_GIB} GiB less {28e9 / GIB:.1f} GiB of weights (not identified "
                                    "by the runs)")


def test_a_mixture_of_experts_holds_all_its_experts_in_memory():
    server = {"model": "Qwen/Qwen3.6-35B-A3B", "gpu_memory_utilization": 0.9, "kv_cache_dtype": "fp8"}
    prof, _ = prior_profile(server, 20.0)
    arch = architecture_for(server)
    pool = 0.9 * GB10_MEMORY_GIB * GIB - arch.params_total_b * 1e9 * 2 - OTHER_GIB * GIB  # every expert, not the active
    per_token = arch.attn_layers * 2 * arch.kv_heads * arch.head_dim * 1.0  # fp8; the DeltaNet layers hold a state
    assert prof.engine.num_blocks == int(pool // (16 * per_token))


def test_the_servers_own_block_count_replaces_the_prior_at_its_block_size():
    plain, origin = prior_profile({"model": "Qwen/Qwen3-14B", "gpu_memory_utilization": 0.8, "num_gpu_blocks": 5000,
                                   "block_size": 32}, 8.0)
    assert (plain.engine.num_blocks, plain.engine.kv_groups) == (5000, (KVGroup(32),))
    assert origin["num_blocks"].startswith("measured: 5000 blocks of 32 tokens")
    # a known layout of windowed layers keeps its groups, at the server's block size: Gemma-3-27B's 10 full
    # and 52 sliding layers (window 1024) of equal bytes, in groups of 10 layers (vLLM pads the 52 to 6 groups)
    windowed, _ = prior_profile({"model": "google/gemma-3-27b-it", "num_gpu_blocks": 5000, "block_size": 32}, 20.0)
    assert windowed.engine.kv_groups == (KVGroup(32, 1, None), KVGroup(32, 6, 1024))
    assert windowed.engine.num_blocks == 5000
    # not a count: the prior stands
    assert prior_profile({"model": "Qwen/Qwen3-14B", "num_gpu_blocks": 0}, 8.0)[0].engine.num_blocks is None


def test_a_dense_name_that_decodes_too_fast_for_its_size_is_a_mixture_of_experts():
    # 30B of bf16 is 60 GB: 0.22 s a step at the roofline, where the box decodes 50 tokens a second
    prof, origin = prior_profile({"model": "acme/Big-30B"}, c1_decode_tps=50.0)
    arch = prof.model["architecture"]
    f = 0.7 / 50.0 / (60e9 / ROOFLINE_BW)
    assert prof.model["params_active_b"] == pytest.approx(30.0 * f)
    assert (arch["n_experts"], arch["top_k"], arch["moe_layers"]) == (128, 8, arch["layers"])
    m = prof.step_model
    active = m.weight_bytes_fixed + m.top_k * m.moe_layers * m.expert_bytes
    assert active / ROOFLINE_BW == pytest.approx(0.7 / 50.0)  # a step at 70 % of the roofline
    assert "taken for a mixture of experts" in origin["architecture_scaled"]


def test_a_name_a_little_too_big_for_its_speed_has_its_weights_scaled():
    slow, origin = prior_profile({"model": "acme/Big-30B"}, c1_decode_tps=4.2)  # 0.22 s a step, 0.9 / 4.2 = 0.21
    f = 0.7 / 4.2 / (60e9 / ROOFLINE_BW)
    assert slow.step_model.weight_bytes_fixed == pytest.approx(60e9 * f)
    assert origin["architecture_scaled"].startswith(f"weights read per step scaled by {f:.2f}")
    fits, origin = prior_profile({"model": "acme/Big-30B"}, c1_decode_tps=4.0)  # 0.9 / 4.0 = 0.225: it can
    assert fits.step_model.weight_bytes_fixed == pytest.approx(60e9) and "architecture_scaled" not in origin
    # with speculative decoding a step keeps several tokens: 2.5 a step at 10 t/s is 4 steps a second
    spec = {"method": "dflash", "num_speculative_tokens": 15}
    drafts, origin = prior_profile({"model": "acme/Big-30B", "speculative_config": spec, "tokens_per_chunk": 2.5},
                                   c1_decode_tps=10.0)
    assert drafts.step_model.weight_bytes_fixed == pytest.approx(60e9) and "architecture_scaled" not in origin


@pytest.mark.parametrize("model, tps, bits", [("acme/mystery", 20.0, 16.0), ("acme/mystery-fp8", 20.0, 8.0),
                                              ("acme/mystery", None, 16.0)])
def test_a_name_without_a_size_reads_what_the_single_user_speed_allows(model, tps, bits):
    prof, _ = prior_profile({"model": model}, tps)
    w1 = (1 / tps if tps else 0.05) * 0.7 * ROOFLINE_BW
    assert prof.step_model.weight_bytes_fixed == pytest.approx(w1)
    assert prof.step_model.flops_per_token == pytest.approx(w1 * 16.0 / bits)


def test_the_engines_limits_where_the_run_is_silent():
    prof, origin = prior_profile({"model": "acme/Plain-8B"}, 30.0)
    e = prof.engine
    assert (e.max_num_batched_tokens, e.max_num_seqs, e.max_model_len, e.async_scheduling) == (2048, 256, 131072, True)
    assert origin["max_num_batched_tokens"] == "vLLM default on GB10 (NVML reports no memory)"
    assert (origin["max_num_seqs"], origin["max_model_len"]) == ("vLLM default", "unknown: 131072 assumed")
    set_, origin = prior_profile({"model": "acme/Plain-8B", "max_num_batched_tokens": 8192, "max_num_seqs": 64,
                                  "max_model_len": 32768, "async_scheduling": False}, 30.0)
    e = set_.engine
    assert (e.max_num_batched_tokens, e.max_num_seqs, e.max_model_len, e.async_scheduling) == (8192, 64, 32768, False)
    assert {origin[k] for k in ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "async_scheduling")} \
        == {"server flag"}


def test_weights_scaled_to_the_measured_speed_are_also_the_weights_held():
    # at 20 t/s the 14B's 28 GB a step cannot be bf16: another quantisation, so memory holds less of it too
    prof, _ = prior_profile({"model": "Qwen/Qwen3-14B", "gpu_memory_utilization": 0.8}, 20.0)
    f = 0.7 / 20.0 / (28e9 / ROOFLINE_BW)
    pool = 0.8 * GB10_MEMORY_GIB * GIB - 28e9 * f - OTHER_GIB * GIB
    assert prof.engine.num_blocks == int(pool // (16 * 40 * 2 * 8 * 128 * 2))


def test_a_small_model_keeps_its_size_and_its_cache():
    # 0.6B: 1.2 GB a step, far within reach at 100 t/s; a size under 1B is a size, not "no size"
    prof, origin = prior_profile({"model": "Qwen/Qwen3-0.6B", "gpu_memory_utilization": 0.5}, 100.0)
    assert prof.step_model.weight_bytes_fixed == pytest.approx(1.2e9) and "architecture_scaled" not in origin
    pool = 0.5 * GB10_MEMORY_GIB * GIB - 1.2e9 - OTHER_GIB * GIB
    assert prof.engine.num_blocks == int(pool // (16 * 28 * 2 * 8 * 128 * 2))
    assert prof.name == prof.model["name"] == "Qwen/Qwen3-0.6B"


def test_a_known_mixture_too_fast_for_its_size_has_both_its_parts_scaled():
    server = {"model": "Qwen/Qwen3.6-35B-A3B"}
    arch = architecture_for(server)
    slow, _ = prior_profile(server, 20.0)  # 6 GB a step (3B active, bf16): 0.022 s, within 0.9 / 20
    fast, origin = prior_profile(server, 60.0)  # not within 0.9 / 60
    f = 0.7 / 60.0 / (arch.params_active_b * 1e9 * 2 / ROOFLINE_BW)
    assert fast.step_model.weight_bytes_fixed == pytest.approx(slow.step_model.weight_bytes_fixed * f)
    assert fast.step_model.expert_bytes == pytest.approx(slow.step_model.expert_bytes * f)
    assert origin["architecture_scaled"] == (f"weights read per step scaled by {f:.2f}: the name's size cannot decode "
                                             "at the measured 60.0 tokens/s (60.0 steps/s) within 273 GB/s")


def test_a_dense_name_a_quarter_too_fast_is_another_quantisation_not_a_mixture():
    tps = 0.7 / (0.25 * 60e9 / ROOFLINE_BW)  # a quarter of the 30B's bytes: above MOE_BELOW (0.2)
    prof, origin = prior_profile({"model": "acme/Big-30B"}, tps)
    assert prof.model["architecture"]["n_experts"] == 0
    assert prof.step_model.weight_bytes_fixed == pytest.approx(0.25 * 60e9)
    assert origin["architecture_scaled"].startswith("weights read per step scaled by 0.25")


def test_the_acceptance_of_a_measured_number_of_tokens_per_step():
    a = acceptance_for_length(2.5, 3)  # 1 + a + a^2 + a^3 = 2.5
    assert 1 + a + a ** 2 + a ** 3 == pytest.approx(2.5, abs=1e-9)
    assert acceptance_for_length(0.5, 3) == 0.0  # under one token a step: no draft kept
    top = acceptance_for_length(9.0, 3)  # more than k + 1 is k + 1, just under
    assert 0.999 < top < 1.0 and (1 - top ** 4) / (1 - top) == pytest.approx(4.0, abs=1e-5)
    spec = {"method": "eagle", "num_speculative_tokens": 3}
    measured, origin = prior_profile({"model": "acme/X-8B", "speculative_config": spec, "tokens_per_chunk": 1.2}, 30.0)
    a = measured.engine.spec_acceptance
    assert 1 + a + a ** 2 + a ** 3 == pytest.approx(1.2, abs=1e-9)
    assert origin["spec_acceptance"] == "measured: 1.20 tokens per streamed chunk in the closed-loop runs"
    # a chunk a token (llama-benchy 0.3.0 counted chunks) measures nothing: the method's prior
    one, origin = prior_profile({"model": "acme/X-8B", "speculative_config": spec, "tokens_per_chunk": 1.0}, 30.0)
    assert one.engine.spec_acceptance == 0.6
    assert origin["spec_acceptance"].startswith("prior for method 'eagle' (0.6, 2.18 tokens per step)")


def test_the_starting_point_where_nothing_is_measured():
    prof, origin = prior_profile({}, None)
    assert prof.name == "unknown" and prof.engine.kv_groups == (KVGroup(16),) and prof.engine.num_blocks is None
    # the chat template's tokens reach every prompt; the fit starts the API's times here
    assert (prof.prompt_format.special_tokens, prof.prompt_format.chat_template_tokens) == (1, 10)
    assert (prof.api.request_s, prof.api.chunk_s) == (0.02, 0.001)
    guessed, _ = prior_profile({"model": "acme/Foo-30B", "gpu_memory_utilization": 0.9}, 30.0)
    assert guessed.engine.kv_groups == (KVGroup(16),) and guessed.engine.num_blocks is None
    # the server's count without its block size: vLLM's 16
    counted, _ = prior_profile({"model": "Qwen/Qwen3-14B", "num_gpu_blocks": 700}, 8.0)
    assert (counted.engine.num_blocks, counted.engine.kv_groups) == (700, (KVGroup(16),))
