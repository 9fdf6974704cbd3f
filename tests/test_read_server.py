"""What calibrate --live and validate --live read off a server (calibrate.live.read_server) and how a
profile takes a restarted server's limits (apply_server_limits), against canned answers: vLLM 0.32
CPU's own cache_config_info line (taken from the real server: block_size 128, kv_cache_memory_bytes
set, the CPU build's defaults), a GPU build's (block 16, no byte budget), servers that leave facts
out. tests/test_twin_live.py reads the real vLLM CPU server the same way."""
from __future__ import annotations

import pytest

from calibrate.live import LiveError, apply_server_limits, read_server
from simulator.profile import KVGroup
from tests.helpers import canned_server
from tests.test_twin import twin_profile

# vLLM 0.32.0 CPU serving gemma3-dummy (Gemma 3 270M: 3 full + 15 sliding layers, window 512) with a
# 2 GiB KV cache, as its /metrics says it
CPU_INFO = (
    'vllm:cache_config_info{_block_size_resolved="True",block_size="128",cache_dtype="auto",'
    'cache_hit_alignment_tokens="None",effective_attention_block_size="128",enable_mamba_shared_prefix_checkpoint='
    '"False",enable_prefix_caching="False",engine="0",gpu_memory_utilization="0.92",hash_block_size="None",'
    'is_attention_free="False",kv_cache_dtype_skip_layers="[]",kv_cache_layout="None",kv_cache_max_concurrency='
    '"19.927007299270073",kv_cache_memory_bytes="2147483648",kv_cache_size_tokens="81621",kv_offloading_backend='
    '"native",kv_offloading_size="None",kv_sharing_fast_prefill="False",mamba_block_size="None",mamba_cache_dtype='
    '"auto",mamba_cache_mode="none",mamba_page_size_padded="None",mamba_ssm_cache_dtype="float32",num_cpu_blocks='
    '"None",num_gpu_blocks="2730",num_gpu_blocks_override="None",prefix_cache_retention_interval="0",'
    'prefix_caching_hash_algo="sha256",prefix_match_unit="None",replayssm_buffer_len="16",skip_page_size_padded='
    '"None",sliding_window="None",swa_bounded_replay="True",use_kda_recoverssm="False",use_replayssm="False",'
    'user_specified_block_size="False"} 1.0')
GEMMA3_270M = {"layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3, "sliding_window": 512}


def exposition(*lines: str) -> str:
    return "\n".join(["# HELP vllm:num_requests_running Number of requests in model execution batches.",
                      "# TYPE vllm:num_requests_running gauge",
                      'vllm:num_requests_running{engine="0",model_name="m"} 0.0', *lines, ""])


def routes(metrics: str | None, models=({"id": "m", "max_model_len": 4096},), version="0.32.0") -> dict:
    out = {"/v1/models": (200, {"object": "list", "data": [dict(m, object="model") for m in models]}),
           "/version": (200, {"version": version})}
    if metrics is not None:
        out["/metrics"] = (200, metrics)
    return out


def cache_info(block_size=16, num_gpu_blocks=10000, kv_cache_size_tokens=160000, kv_cache_memory_bytes="None") -> str:
    labels = {"block_size": block_size, "num_gpu_blocks": num_gpu_blocks, "kv_cache_size_tokens": kv_cache_size_tokens,
              "kv_cache_memory_bytes": kv_cache_memory_bytes}
    return "vllm:cache_config_info{" + ",".join(f'{k}="{v}"' for k, v in labels.items() if v is not None) + "} 1.0"


def test_a_vllm_cpu_server_its_defaults_and_its_pool_without_a_layout():
    with canned_server(routes(exposition(CPU_INFO))) as url:
        f = read_server(url)
    assert (f.server, f.version, f.model, f.max_model_len) == ("vllm", "0.32.0", "m", 4096)
    assert (f.block_size, f.num_gpu_blocks, f.kv_cache_size_tokens) == (128, 2730, 81621)
    assert (f.max_num_seqs, f.max_num_batched_tokens, f.async_scheduling) == (128, 2048, False)
    assert f.origin["max_num_seqs"] == "not exported: vLLM CPU default 128 assumed (pass it as a flag)"
    # 2730 blocks hold 81621 tokens only as six groups share them: without the layout, the single group
    # that holds as many tokens
    assert f.kv_groups == (KVGroup(128),) and f.num_blocks == 81621 // 128
    assert f.origin["num_blocks"].startswith("kv_cache_size_tokens 81621 / block_size 128 (the server's pool of 2730")


@pytest.mark.parametrize("layout", [{"kv_groups": "1x128,5x128@512"}, {"hf_config": {"text_config": GEMMA3_270M}},
                                    {"kv_groups": (KVGroup(128, 1, None), KVGroup(128, 5, 512))}])
def test_a_layout_that_explains_the_pool_keeps_the_servers_blocks(layout):
    with canned_server(routes(exposition(CPU_INFO))) as url:
        f = read_server(url, **layout)
    assert f.kv_groups == (KVGroup(128, 1, None), KVGroup(128, 5, 512)) and f.num_blocks == 2730
    assert f.origin["kv_groups"].endswith("(consistent with kv_cache_size_tokens 81621)")


@pytest.mark.parametrize("block, budget, kind", [(16, "None", "GPU"), (128, "None", "GPU"), (16, "2147483648", "GPU"),
                                                 (128, "2147483648", "CPU")])
def test_the_cpu_build_is_told_by_its_128_token_blocks_and_byte_budget_together(block, budget, kind):
    with canned_server(routes(exposition(cache_info(block, 10000, 10000 * block, budget)))) as url:
        f = read_server(url)
    want = (128, 2048, False) if kind == "CPU" else (256, 2048, True)
    assert (f.max_num_seqs, f.max_num_batched_tokens, f.async_scheduling) == want
    device = "" if kind == "CPU" else "a GB10's; "  # a GPU's defaults depend on the device, which vLLM does not tell
    assert f.origin["max_num_batched_tokens"] == (f"not exported: vLLM {kind} default 2048 assumed "
                                                  f"({device}pass it as a flag)")


def test_flags_fill_what_vllm_does_not_export():
    with canned_server(routes(exposition(CPU_INFO))) as url:
        f = read_server(url, max_num_seqs=8, max_num_batched_tokens=512, async_scheduling=True)
    assert (f.max_num_seqs, f.max_num_batched_tokens, f.async_scheduling) == (8, 512, True)
    assert {f.origin[k] for k in ("max_num_seqs", "max_num_batched_tokens", "async_scheduling")} == {"flag"}


@pytest.mark.parametrize("tokens, agrees", [(164900, True), (165000, False), (155400, True), (155200, False)])
def test_a_layouts_figure_agrees_within_3_percent_of_the_servers(tokens, agrees):
    """10000 blocks of 16 in one group hold 160000 tokens."""
    with canned_server(routes(exposition(cache_info(16, 10000, tokens)))) as url:
        f = read_server(url, kv_groups="16")
    assert f.num_blocks == 10000
    assert f.origin["kv_groups"] == ("flag (consistent with kv_cache_size_tokens %d)" % tokens if agrees else
                                     "flag -- WARNING: implies 160000 KV tokens, the server reports %d" % tokens)


@pytest.mark.parametrize("tokens, agrees, context", [(1800, True, 4096), (1810, False, 4096), (1400, True, 4096),
                                                     (1390, False, 4096), (1800, True, 4000), (1801, False, 4000)])
def test_a_small_pools_figure_agrees_within_5_percent_of_the_context(tokens, agrees, context):
    """100 blocks of 16 hold 1600 tokens; 5 % of a 4096-token context is 204.8 of them, of 4000 200."""
    models = ({"id": "m", "max_model_len": context},)
    with canned_server(routes(exposition(cache_info(16, 100, tokens)), models=models)) as url:
        f = read_server(url, kv_groups="16")
    assert ("WARNING" not in f.origin["kv_groups"]) is agrees, f.origin


def test_a_server_that_exports_no_kv_cache_leaves_capacity_unbound():
    for metrics in (exposition(), "", None):
        with canned_server(routes(metrics)) as url:
            f = read_server(url)
        assert f.server == ("vllm" if metrics else None), metrics
        assert f.block_size is None and f.num_blocks is None and f.kv_groups == (KVGroup(16),)
        assert f.origin["num_blocks"] == "not exported: KV capacity treated as not binding"
        assert f.origin["max_num_seqs"] == "not exported: vLLM GPU default 256 assumed (a GB10's; pass it as a flag)"


def test_the_model_asked_for_among_several_and_one_not_served():
    models = ({"id": "a", "max_model_len": 1024}, {"id": "b", "max_model_len": 2048})
    with canned_server(routes(exposition(), models=models)) as url:
        assert (read_server(url).model, read_server(url).max_model_len) == ("a", 1024)
        assert (read_server(url, "b").model, read_server(url, "b").max_model_len) == ("b", 2048)
        with pytest.raises(LiveError, match=f"model 'c' is not served by {url}"):
            read_server(url, "c")
    with canned_server(routes(exposition(), models=())) as url:
        with pytest.raises(LiveError, match="serves no model"):
            read_server(url)


def test_a_context_the_models_list_does_not_give():
    """From a twin's scheduler info when /v1/models lacks it (and said so); else 4096, said to be assumed."""
    info = 'capsim:scheduler_config_info{max_model_len="2048",max_num_seqs="4"} 1.0'
    with canned_server(routes(exposition(info), models=({"id": "m"},))) as url:
        f = read_server(url)
    assert f.server == "capsim-twin" and f.max_model_len == 2048 and f.max_num_seqs == 4
    assert f.origin["max_model_len"] == "/metrics capsim:scheduler_config_info"
    with canned_server(routes(exposition(), models=({"id": "m"},))) as url:
        f = read_server(url)
    assert f.max_model_len == 4096 and f.origin["max_model_len"] == "unknown: 4096 assumed"


def test_a_restarted_servers_limits_replace_the_profiles_and_assumed_defaults_do_not():
    prof = twin_profile(max_model_len=4096, max_num_seqs=64, max_num_batched_tokens=2048, num_blocks=4000)
    with canned_server(routes(exposition(cache_info(16, 500, 8000)))) as url:
        told = apply_server_limits(prof, read_server(url, max_num_seqs=2))
    e = told.engine
    assert (e.max_num_seqs, e.max_num_batched_tokens, e.max_model_len) == (2, 2048, 4096)  # 8192 only assumed
    assert e.num_blocks == 500 and e.kv_groups == (KVGroup(16),)  # the profile's layout explains 8000 tokens
    assert prof.engine.num_blocks == 4000  # a copy
    # a pool the profile's one group does not explain (the server has six): its single-group equivalent
    with canned_server(routes(exposition(CPU_INFO))) as url:
        e = apply_server_limits(prof, read_server(url)).engine
    assert e.kv_groups == (KVGroup(128),) and e.num_blocks == 81621 // 128
    # blocks but no figure to check them against: the server's blocks in the profile's layout
    with canned_server(routes(exposition(cache_info(16, 500, None)))) as url:
        e = apply_server_limits(prof, read_server(url)).engine
    assert e.num_blocks == 500 and e.kv_groups == (KVGroup(16),)
    # no KV cache exported: the profile's stays
    with canned_server(routes(exposition())) as url:
        e = apply_server_limits(prof, read_server(url)).engine
    assert e.num_blocks == 4000 and e.kv_groups == (KVGroup(16),)
