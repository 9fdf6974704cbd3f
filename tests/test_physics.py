"""Step-time physics that carries over: architecture priors, the roofline bound, honest bands, the envelope."""
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from calibrate.architectures import architecture_for, kv_dtype_bytes, name_params, step_quantities, weight_dtype
from calibrate.fit import DECODE_SIGMA_FLOOR_GUESSED, fit_closed, single_user_decode
from calibrate.benchy_tables import parse_benchy_markdown
from calibrate.importers import ImporterError, closed_runs, load_meta, load_source, open_runs
from calibrate.priors import ROOFLINE_BW, prior_profile
from calibrate.results import OpenRun
from calibrate.validate import failed_note, stream_note, validate, workload_for
from simulator.load import OpenLoop
from simulator.profile import Profile, ProfileError, load_profile
from simulator.uncertainty import Uncertainty, draw_profile
from simulator.whatif import apply_edits
from simulator.workload import RandomWorkload, ShareGPTWorkload
from tests.test_importers import RESULTS, needs_data

NEMOTRON = RESULTS / "nemotron-3" / "nemotron-3-nano-30b-a3b" / "bf16"
GPT_OSS = RESULTS / "gpt-oss" / "gpt-oss-20b" / "mxfp4"
GEMMA_31B = RESULTS / "gemma-4" / "gemma-4-31b-it" / "bf16"
MISTRAL = RESULTS / "mistral-small-4" / "mistral-small-4-119b" / "nvfp4"


def test_name_params():
    assert name_params("qwen3.6-35b-a3b") == (35.0, 3.0)
    assert name_params("gpt-oss-20b") == (20.0, None)
    assert name_params("mistral-small-4-119b-2603-nvfp4") == (119.0, None)
    assert name_params("qwen3.5-0.8b") == (0.8, None)
    assert name_params("some-model") == (None, None)
    assert name_params("hunyuan-a13b-instruct") == (None, 13.0)  # not a total of 3B from "13B"
    assert name_params("gemma-3-270m-it") == (0.27, None)  # millions
    assert name_params("gemma-4-e4b-it") == (4.0, None)  # effective size: what a token reads
    assert name_params("gemma-3n-E2B-it") == (2.0, None)
    assert name_params("smollm2-360M-instruct") == (0.36, None)
    assert name_params("qwen2.5-7b-instruct-1m") == (7.0, None)  # 1M tokens of context, not a size
    assert name_params("mamba-codestral-7b-v0.1") == (7.0, None)
    assert name_params("gpt-oss-20b-mxfp4") == (20.0, None)  # no M size from the dtype
    assert name_params("llama-3_3-nemotron-super-49b-v1_5") == (49.0, None)


def test_weight_dtype_from_what_the_run_says():
    assert weight_dtype({"model": "mistralai/Mistral-Small-4-119B-2603-NVFP4"})[0] == "nvfp4"
    assert weight_dtype({"model": "x/y", "weights_profile": "fp8"})[0] == "fp8"
    assert weight_dtype({"model": "nvidia/Llama-3.3-70B-Instruct-FP4"})[0] == "nvfp4"
    assert weight_dtype({"model": "x/y", "extra_args": "--quantization awq"})[0] == "awq"
    assert weight_dtype({"model": "x/y"})[0] == "bf16"
    # vLLM's other names for the formats, and compressed-tensors' / bitsandbytes' checkpoint names
    assert weight_dtype({"model": "x/y", "extra_args": "--quantization modelopt_fp4"})[0] == "nvfp4"
    assert weight_dtype({"model": "x/y", "extra_args": "--quantization=modelopt"})[0] == "fp8"
    assert weight_dtype({"model": "x/y", "extra_args": "--max-num-seqs 8 -q awq_marlin"})[0] == "awq"
    assert weight_dtype({"model": "RedHatAI/Qwen3-32B-quantized.w4a16"})[0] == "int4"
    assert weight_dtype({"model": "RedHatAI/Llama-3.1-8B-Instruct-quantized.w8a8"})[0] == "int8"
    assert weight_dtype({"model": "RedHatAI/gemma-3-27b-it-FP8-dynamic"})[0] == "fp8"
    assert weight_dtype({"model": "unsloth/Qwen3-14B-bnb-4bit"})[0] == "int4"
    assert weight_dtype({"model": "x/y-q", "extra_args": "--max-model-len 8192"})[0] == "bf16"  # no -q flag
    # the command line's other dtypes are not the weights'
    assert weight_dtype({"model": "x/y", "extra_args": "--kv-cache-dtype fp8 --mamba-ssm-cache-dtype float32"})[0] \
        == "bf16"


def test_kv_bytes_from_vllms_cache_dtypes():
    assert kv_dtype_bytes({"kv_cache_dtype": "fp8_e4m3"}, "bf16")[0] == 1.0
    # "auto" is the model's (16-bit) dtype in vLLM, fp8 weights or not
    assert kv_dtype_bytes({"kv_cache_dtype": "auto"}, "fp8")[0] == kv_dtype_bytes({}, "bf16")[0] == 2.0
    assert kv_dtype_bytes({"kv_cache_dtype": "bfloat16"}, "bf16")[0] == 2.0
    assert kv_dtype_bytes({"kv_cache_dtype": "nvfp4"}, "bf16")[0] == 0.5625  # 4 bits and a scale per 16
    assert kv_dtype_bytes({"kv_cache_dtype": "int4_per_token_head"}, "bf16")[0] == 0.5
    b, why = kv_dtype_bytes({"kv_cache_dtype": "fp3_future"}, "bf16")
    assert b == 2.0 and "not a dtype capsim knows" in why
    # a quantized checkpoint may declare an fp8 cache, which no file of a run shows: the note says so
    assert "fp8 checkpoint that declares" in kv_dtype_bytes({}, "fp8")[1]
    assert "declares" not in kv_dtype_bytes({}, "bf16")[1]


def test_moe_bytes_add_up_to_the_parameter_counts():
    arch = architecture_for({"model": "acme/Foo-30B-A3B"})
    assert arch.moe and arch.source == "inferred from the model name" and arch.assumed
    q = step_quantities(arch, "bf16", 1.0)
    total = q["weight_bytes_fixed"] + q["moe_layers"] * q["n_experts"] * q["expert_bytes"]
    active = q["weight_bytes_fixed"] + q["moe_layers"] * q["top_k"] * q["expert_bytes"]
    assert total == pytest.approx(30e9 * 2, rel=1e-9)
    assert active == pytest.approx(3e9 * 2, rel=1e-9)


def test_the_experts_a_batch_touches_level_off_at_the_pool_in_play():
    m = load_profile().step_model  # Gemma-4-26B: 128 experts, top-8
    assert m.expert_pool == 1.0 and m.experts_touched(100_000) == pytest.approx(128, rel=1e-6)
    m.expert_pool = 0.25
    assert m.experts_touched(100_000) == pytest.approx(32, rel=1e-6)
    assert m.experts_touched(1) == pytest.approx(8)  # one token routes to its top-k, whatever the pool
    assert m.experts_touched(10) < 32
    m.expert_pool = 0.01  # a pool never holds fewer than top-k experts
    assert m.experts_touched(100_000) == pytest.approx(8)
    with pytest.raises(ValueError, match="expert_pool"):
        type(m)(expert_pool=0.0)
    for bad in ("1.5", "0"):  # a what-if edit meets the same check as a profile file
        with pytest.raises(ProfileError, match=r"step_model\.expert_pool must be in \(0, 1\]"):
            apply_edits(load_profile(), [f"step_model.expert_pool={bad}"])


def test_unrelated_conversations_route_decode_steps_wider_than_the_calibration_text():
    from simulator.office import ShareGPTLike
    from simulator.replicate import replicate_open
    from simulator.stepmodel import CHAT_ROUTING_SPREAD, CHAT_ROUTING_SPREAD_RANGE
    from simulator.workload import MixtureWorkload
    prof = load_profile()  # Gemma-4-26B: 128 experts, top-8
    prof.step_model.alpha, prof.step_model.expert_pool = 0.6, 0.5
    assert prof.for_traffic(False) is prof
    chat = prof.for_traffic(True)
    m0, m = prof.step_model, chat.step_model
    assert (m0.routing_spread, m.routing_spread) == (0.0, CHAT_ROUTING_SPREAD)
    assert "routing_spread" not in chat.to_json()["step_model"]["params"]  # the traffic's, not the box's
    one = np.array([0])
    for n in (1, 4, 16, 64):
        # decode steps: half way to independent tokens; spread 1 is independent tokens over every expert
        t0, t = (x.times(n, n, np.array([1000 * n]), one, one, one)[0] for x in (m0, m))
        assert (t > t0) if n > 1 else t == pytest.approx(t0, rel=1e-12)  # one token: its top-k, whatever the routing
        assert m.experts_touched(n, 1.0) == pytest.approx(128 * (1 - (1 - 8 / 128) ** n))
        assert m.experts_touched(n, 0.5) == pytest.approx(96 * (1 - (1 - 8 / 96) ** (n ** 0.8)))
        # a prompt's tokens are one text: a step with a chunk routes as the calibration's
        assert m.times(n + 256, n + 1, np.array([1000 * n]), one, one, one)[0] == \
            m0.times(n + 256, n + 1, np.array([1000 * n]), one, one, one)[0]
        assert m.time_of(n, n, 1000 * n, 0, 0, 0) == m.times(n, n, np.array([1000 * n]), one, one, one)[0]
    dense = prof.copy()
    dense.step_model.n_experts = 0
    assert dense.for_traffic(True) is dense
    # which traffic is mixed
    assert ShareGPTWorkload.mixed_topics and ShareGPTLike().mixed_topics
    from calibrate.seed_sharegpt import ShippedShareGPTWorkload  # the seed's test I
    assert ShippedShareGPTWorkload.mixed_topics and not RandomWorkload(4000, 500).mixed_topics
    assert MixtureWorkload([(0.5, RandomWorkload(4000, 500)), (0.5, ShareGPTLike())]).mixed_topics
    assert not MixtureWorkload([(1.0, RandomWorkload(4000, 500)), (0.0, ShareGPTLike())]).mixed_topics
    # replication 0 serves at the spread, the others draw it over its range, drawn last
    drawn = [draw_profile(chat, r).step_model.routing_spread for r in range(1, 40)]
    lo, hi = CHAT_ROUTING_SPREAD_RANGE
    assert all(lo <= x <= hi for x in drawn) and max(drawn) - min(drawn) > 0.3
    assert draw_profile(chat, 5).for_traffic(True).step_model.routing_spread == drawn[4]  # a draw stays drawn
    other = draw_profile(prof, 3).step_model
    assert other.routing_spread == 0.0 and other.bw_weights == draw_profile(chat, 3).step_model.bw_weights
    # the simulation of chat traffic costs more decode time than the same requests as random text
    pat = OpenLoop(rate=2.0, seed=1)
    s_chat = replicate_open(prof, ShareGPTLike(), 60, pat)[3][0]
    specs = ShareGPTLike().sample(60, seed=1)
    from simulator.sim import simulate_open
    from simulator.summary import summarize_open
    s_text = summarize_open(simulate_open(prof, specs, pat))
    assert summarize_open(simulate_open(chat, specs, pat))["median_tpot_ms"] == s_chat["median_tpot_ms"]
    assert s_chat["median_tpot_ms"] > 1.05 * s_text["median_tpot_ms"]


def test_a_share_of_experts_is_fitted_only_where_the_runs_pin_it_and_the_experts_are_known():
    from calibrate.fit import unidentified

    u = Uncertainty(names=["step_model.bw_weights", "step_model.expert_pool"], log_mean=[0.0, 0.0],
                    log_cov=[[0.01, 0.0], [0.0, 1e-25]])
    assert unidentified(u, "step_model.expert_pool") and not unidentified(u, "step_model.bw_weights")
    assert not unidentified(u, "step_model.alpha")  # not fitted at all
    guessed = fit_closed(closed_runs(GPT_OSS), max_nfev=2, combine="sum", server=load_meta(GPT_OSS)
                         | {"model": "acme/Model-20B-A4B"})
    assert "expert_pool" not in guessed.profile.provenance["fitted_parameters"]
    assert guessed.profile.step_model.expert_pool == 1.0


def test_hybrid_mamba_holds_kv_only_in_attention_layers():
    mamba = architecture_for({"model": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"})
    q = step_quantities(mamba, "bf16", 1.0)
    dense_like = step_quantities(architecture_for({"model": "acme/Foo-30B-A3B"}), "bf16", 1.0)
    assert q["state_bytes_seq"] > 0 and dense_like["state_bytes_seq"] == 0
    assert q["kv_bytes_full"] == mamba.attn_layers * 2 * mamba.kv_heads * mamba.head_dim  # 6 of 52 layers
    assert q["kv_bytes_full"] < dense_like["kv_bytes_full"] / 5


def test_mamba_state_costs_time_per_sequence_not_per_context():
    prof, _ = prior_profile({"model": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"}, 30.0)
    m = prof.step_model
    base = m.decode_run(np.full(8, 1000, dtype=np.int64), 1)[0]
    m2 = prof.copy().step_model
    m2.state_bytes_seq = 0.0
    assert base > m2.decode_run(np.full(8, 1000, dtype=np.int64), 1)[0]


def test_a_name_that_cannot_decode_that_fast_gives_way_to_the_measured_speed():
    # a "30B" dense bf16 model cannot read 60 GB in 1/50 s on a 273 GB/s box
    prof, origin = prior_profile({"model": "acme/Big-30B"}, c1_decode_tps=50.0)
    assert "architecture_scaled" in origin
    assert prof.step_model.weight_bytes_fixed / ROOFLINE_BW < 1 / 50.0


@needs_data
def test_a_renamed_model_in_no_table_still_calibrates_and_validates(tmp_path):
    run = tmp_path / "renamed"
    shutil.copytree(NEMOTRON, run)
    meta = json.loads((run / "meta.json").read_text())
    meta["model"] = "acme/Mystery-Model-30B-A3B"
    meta["served_name"] = "mystery"
    (run / "meta.json").write_text(json.dumps(meta))
    fr = fit_closed(closed_runs(run), max_nfev=8)
    assert fr.origin["architecture"].startswith("inferred from the model name")
    # a guessed layout widens the decode band to what guessed layouts miss by
    assert fr.profile.uncertainty.model_sigma >= DECODE_SIGMA_FLOOR_GUESSED
    assert fr.profile.step_model.bw_weights <= ROOFLINE_BW * (1 + 1e-9)
    v = validate([r for r in open_runs(run) if r.test == "08-sharegpt"], fr.profile, replications=2, n_jobs=1)
    assert v.rows and all(math.isfinite(r.predicted) for r in v.rows)
    assert any("no family table" in n and "guessed" in n for n in v.notes)


@needs_data
def test_a_suite_folder_without_its_meta_json_calibrates_from_the_reports_headers(tmp_path):
    from calibrate.sources import load_closed, load_open
    run = tmp_path / "nometa"
    shutil.copytree(GPT_OSS, run)
    (run / "meta.json").unlink()
    server = load_meta(run)
    assert (server["model"], server["weights_profile"]) == ("openai/gpt-oss-20b", "mxfp4")
    closed, opened = load_closed([str(run)]), load_open([str(run)])
    assert len(closed) == 6 and any(r.test == "08-sharegpt" for r in opened)
    assert any(s.startswith("meta.json: missing") for s in closed[0].server["skipped_tests"])
    fr = fit_closed(closed, max_nfev=2)
    assert fr.profile.model["architecture"]["source"] != "inferred from the model name"  # gpt-oss's table entry
    assert "meta.json: missing" in fr.origin["calibrated_without"]
    v = validate([r for r in opened if r.test == "08-sharegpt"], fr.profile, replications=1, n_jobs=1)
    assert any(n.startswith("validated without meta.json: missing") for n in v.notes)
    # a meta.json that does not name the model: the reports' headers do
    (run / "meta.json").write_text(json.dumps({"profile": "mxfp4", "server_config": {}}))
    assert load_meta(run)["model"] == "openai/gpt-oss-20b" and "skipped_tests" not in load_meta(run)
    # a folder with neither says what a suite folder needs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImporterError, match="no meta.json nor numbered reports"):
        load_source(empty)


@needs_data
def test_a_name_that_reads_dense_but_decodes_like_a_mixture_of_experts_is_taken_for_one():
    """Mistral-Small-4-119B renamed to a name with no active count and no table: a dense 119B in
    nvfp4 reads 67 GB a step, which the box cannot do at the 30 tokens/s the runs measured alone;
    the prior takes it for a mixture of experts with what the speed allows active (6.5B in truth)."""
    meta = load_meta(MISTRAL) | {"model": "acme/Mystery-119B-NVFP4", "served_name": "mystery"}
    prof, origin = prior_profile(meta, single_user_decode(closed_runs(MISTRAL)))
    arch = prof.model["architecture"]
    assert arch["n_experts"] > 0 and 3.0 < arch["params_active_b"] < 15.0 and arch["params_total_b"] == 119.0
    assert "mixture of experts" in origin["architecture_scaled"] and "mixture of experts" in origin["architecture"]
    assert prof.step_model.expert_bytes > 0 and prof.step_model.moe_layers == arch["layers"]
    # a name that fits its speed stays dense: Gemma-4-31B (a table entry) and the same size unnamed
    for model in ("google/gemma-4-31B-it", "acme/Mystery-31B"):
        p31, o31 = prior_profile(load_meta(GEMMA_31B) | {"model": model}, single_user_decode(closed_runs(GEMMA_31B)))
        assert p31.model["architecture"]["n_experts"] == 0 and "mixture" not in o31.get("architecture_scaled", "")


@needs_data
def test_fitted_bandwidth_stays_under_the_roofline_and_the_profile_carries_its_uncertainty(tmp_path):
    fr = fit_closed(closed_runs(MISTRAL), max_nfev=10)
    p = fr.profile
    assert 0.1 * ROOFLINE_BW <= p.step_model.bw_weights <= ROOFLINE_BW * (1 + 1e-9)
    u = p.uncertainty
    assert u is not None and "step_model.bw_weights" in u.names and u.model_sigma > 0
    assert u.model_sigma < DECODE_SIGMA_FLOOR_GUESSED  # a family table's layout keeps the narrower floor
    assert u.envelope_batch == 20 and p.provenance["envelope"]["max_concurrency"] == 20
    path = tmp_path / "p.json"
    p.save(path)
    back = load_profile(path)
    assert back.uncertainty == u


def _toy_uncertainty(prof: Profile) -> Profile:
    p = prof.copy()
    p.uncertainty = Uncertainty(names=["step_model.bw_weights", "step_model.t0"],
                                log_mean=[math.log(p.step_model.bw_weights), math.log(p.step_model.t0)],
                                log_cov=[[0.01, 0.0], [0.0, 0.04]], model_sigma=0.05, envelope_batch=8).validate()
    return p


def test_draws_are_seeded_differ_and_leave_a_profile_without_uncertainty_alone():
    base = load_profile()
    base.uncertainty = None
    assert draw_profile(base, 3) is base  # nothing uncertain: the profile itself
    p = _toy_uncertainty(base)
    a, b, a2 = draw_profile(p, 1), draw_profile(p, 2), draw_profile(p, 1)
    assert a.step_model.bw_weights == a2.step_model.bw_weights
    assert a.step_model.bw_weights != b.step_model.bw_weights
    assert a.uncertainty is None and p.uncertainty is not None
    # beyond the calibrated batch the drawn decode steps spread further
    ratios = []
    for k in range(1, 40):
        d = draw_profile(p, k).step_model
        ratios.append(math.log(d.decode_factor(64) / d.decode_factor(8)))
    assert np.std(ratios) > 0.05


def test_bad_uncertainty_is_refused():
    with pytest.raises(ValueError):
        Uncertainty(names=["step_model.t0"], log_mean=[0.0, 1.0], log_cov=[[1.0]]).validate()


@needs_data
def test_validation_notes_predictions_beyond_the_calibrated_batch():
    fr = fit_closed(closed_runs(MISTRAL), max_nfev=4)
    v = validate([r for r in open_runs(MISTRAL) if r.test == "07-office-baseline"], fr.profile, replications=1, n_jobs=1)
    assert any("outside the calibrated envelope" in n and "calibration ran at most 20" in n for n in v.notes)


@needs_data
@pytest.mark.parametrize("run_dir", [MISTRAL, GPT_OSS], ids=["tokenizer-counts-over", "tokenizer-counts-under"])
def test_sharegpt_prompts_are_counted_as_the_served_models_tokenizer_counted_them(run_dir):
    """The tokenizer at hand counts ShareGPT's prompts 11% over Mistral's and 8% under gpt-oss's:
    the rebuilt sample's raw prompt tokens add up to the run's total_input_tokens."""
    run = next(r for r in open_runs(run_dir) if r.test == "08-sharegpt")
    prof, _ = prior_profile(load_meta(run_dir), 50.0)
    wl = workload_for(run, prof)
    assert isinstance(wl, ShareGPTWorkload) and wl.prompt_scale != 1.0
    specs = wl.sample(int(run.params["num_prompts"]), int(run.params.get("seed") or 0))
    assert sum(s.raw_prompt_tokens for s in specs) == pytest.approx(run.result["total_input_tokens"], rel=0.01)
    assert sum(s.output_tokens for s in specs) == pytest.approx(run.result["total_output_tokens"], rel=0.01)
    assert all(s.prompt_tokens == s.raw_prompt_tokens + prof.prompt_format.chat_template_tokens for s in specs)


@needs_data
def test_a_run_whose_model_stopped_early_is_rebuilt_with_its_output_share():
    run = next(r for r in open_runs(GPT_OSS) if r.test == "11-rate-sweep@0.1")
    prof, _ = prior_profile(load_meta(GPT_OSS), 50.0)
    wl = workload_for(run, prof)
    assert isinstance(wl, RandomWorkload) and wl.output_fraction < 0.5
    specs = wl.sample(int(run.params["num_prompts"]), int(run.params.get("seed") or 0))
    assert sum(s.output_tokens for s in specs) == pytest.approx(run.result["total_output_tokens"], rel=0.01)
    assert all(s.max_tokens >= s.output_tokens for s in specs)


def test_hybrid_layout_reproduces_gemma4_pages_and_binds_for_a_dense_31b():
    from calibrate.priors import gemma4_kv_blocks
    from simulator.kvcache import hybrid_layout
    from simulator.profile import KVGroup

    pool = (0.9 * 121.69 - 48.1 - 3.0) * 2 ** 30
    n, groups = hybrid_layout(pool, 5, 2 * 2 * 512, 25, 2 * 8 * 256, 1024)
    assert groups == (KVGroup(32, 1, None), KVGroup(16, 5, 1024))
    assert n == gemma4_kv_blocks(0.9)
    prof, origin = prior_profile({"model": "google/gemma-4-31B-it", "gpu_memory_utilization": 0.9,
                                  "kv_cache_dtype": "fp8"}, 3.7)
    assert origin["num_blocks"].startswith("architecture prior")
    from simulator.kvcache import KVCache
    kv = KVCache(prof.engine)
    per_request = kv.blocks(4500, 1)
    assert 40 < prof.engine.num_blocks / per_request < 250  # the office loads of 07-11 run into it


def test_no_memory_figure_means_no_capacity_guess():
    prof, origin = prior_profile({"model": "acme/Foo-30B-A3B"}, 30.0)
    assert prof.engine.num_blocks is None and "not binding" in origin["num_blocks"]


def test_a_guessed_kv_layout_does_not_bind_the_cache():
    """Memory figure known, KV heads guessed (no table): the cache size would be a guess, so it is
    named and not used; a family whose table gives the KV layout still gets its capacity."""
    server = {"model": "acme/Foo-30B", "gpu_memory_utilization": 0.9}
    prof, origin = prior_profile(server, 30.0)
    assert prof.engine.num_blocks is None
    assert "KV layout is assumed" in origin["num_blocks"] and "KV heads" in origin["num_blocks"]
    assert "num_gpu_blocks" in origin["num_blocks"]  # says how to bind it
    known, origin = prior_profile({"model": "Qwen/Qwen3.6-35B-A3B", "gpu_memory_utilization": 0.9}, 30.0)
    assert known.engine.num_blocks and origin["num_blocks"].startswith("architecture prior")


@needs_data
def test_a_run_with_failed_closed_loop_tests_calibrates_from_what_is_there(tmp_path):
    run = tmp_path / "broken"
    shutil.copytree(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16", run)
    (run / "06-concurrency-stress.md").unlink()
    md = run / "05-big-context.md"
    text = md.read_text()
    i, j = text.index("| model"), text.index("llama-benchy (0.4.0)")
    md.write_text(text[:i] + "ERROR: the server crashed\n\n" + text[j:])
    runs = closed_runs(run)
    assert [r.test for r in runs] == ["01-chat", "02-rag-8k", "03-long-output", "04-multi-turn"]
    fr = fit_closed(runs, max_nfev=2)
    assert "05-big-context.md: no llama-benchy table found" in fr.origin["calibrated_without"]
    assert "06-concurrency-stress: no report" in fr.origin["calibrated_without"]


def _rag_report_copy(tmp_path):
    """A copy of Qwen3.5-4B's run to cut: (its folder, its 02-rag-8k.md, that report's text, its rows)."""
    run = tmp_path / "cut"
    shutil.copytree(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16", run)
    md = run / "02-rag-8k.md"
    return run, md, md.read_text(), [r for r in closed_runs(run) if r.test == "02-rag-8k"][0].rows


@needs_data
def test_a_report_cut_inside_its_table_calibrates_from_its_whole_shapes(tmp_path):
    """A report that ends inside a row of its table (the writer stopped there): the whole shapes before
    it are used, the cut row and a pp row left without its tg row are not, and calibration says so. A
    short row with more after it is a broken file, and stays an error."""
    run, md, text, whole = _rag_report_copy(tmp_path)
    line = next(ln for ln in text.splitlines() if "tg512 (c10)" in ln)
    md.write_text(text[:text.index(line)] + line[:len(line) // 2] + "\n")
    runs = closed_runs(run)
    rows = [r for r in runs if r.test == "02-rag-8k"][0].rows
    assert rows == [r for r in whole if r.concurrency < 10]  # c10's pp row lost its tg row: left out too
    assert len(rows) == 1 and rows[0].tg == 512
    skipped = runs[0].server["skipped_tests"]
    assert len(skipped) == 1 and skipped[0].startswith("the rest of 02-rag-8k.md after its first 1 shape (the table "
                                                       "is cut at line ")
    assert len(load_source(md)) == 1 and "the rest of 02-rag-8k.md" in load_source(md)[0].server["skipped_tests"][0]
    with pytest.raises(ImporterError, match="cells, header has 9"):
        parse_benchy_markdown(md.read_text(), md)
    md.write_text(text[:text.index(line)] + line[:len(line) // 2] + "\n" + text[text.index(line) + len(line):])
    with pytest.raises(ImporterError, match="02-rag-8k.md: line .*cells, header has 9"):
        closed_runs(run)


@needs_data
def test_a_report_cut_inside_a_rows_last_cell_or_its_first_row(tmp_path):
    """A report that ends inside the last cell of a row (every cell there, the closing pipe not) is cut
    there too; one cut inside its first row has nothing whole, and is left out and named as an empty
    table is, while the other tests calibrate."""
    run, md, text, whole = _rag_report_copy(tmp_path)
    line = next(ln for ln in text.splitlines() if "pp8192 (c10)" in ln)
    md.write_text(text[:text.index(line)] + line[:line.rindex("±") + 3])  # inside the last cell, no newline
    rows = [r for r in closed_runs(run) if r.test == "02-rag-8k"][0].rows
    assert rows == [r for r in whole if r.concurrency < 10] and len(rows) == 1
    with pytest.raises(ImporterError, match="line 25: its last cell has no closing '[|]'"):
        parse_benchy_markdown(md.read_text(), md)
    first = next(ln for ln in text.splitlines() if "pp8192 (c5)" in ln)
    md.write_text(text[:text.index(first)] + first[:len(first) // 2])
    runs = closed_runs(run)
    assert "02-rag-8k" not in {r.test for r in runs} and len({r.test for r in runs}) == 5
    assert runs[0].server["skipped_tests"] == [
        "02-rag-8k.md: llama-benchy table has no pp/tg rows before its cut line "
        f"{text[:text.index(first)].count(chr(10)) + 1}: {len(first[:len(first) // 2].split('|')) - 2} cells, "
        "header has 9 (the test failed on the box?)"]


@needs_data
def test_a_run_with_failed_open_loop_tests_validates_what_is_there(tmp_path):
    """The open side as the closed: a result cut off or empty (the box died) is skipped and named; a
    test whose requests all failed is not held against a prediction; failed requests are named."""
    run = tmp_path / "broken"
    shutil.copytree(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16", run)
    for stem in ("07-office-baseline", "08-sharegpt", "09-reasoning"):
        for f in run.glob(f"{stem}.*"):
            f.unlink()
    log = run / "11-rate-sweep.log"  # no printed reports either: nothing to read the broken steps from
    log.write_text(log.read_text().replace("Serving Benchmark Result", "(aborted)"))
    sweep = sorted(run.glob("11-rate-sweep-*.json"))
    sweep[0].write_text(sweep[0].read_text()[:300])
    sweep[1].write_text("")
    failed = json.loads(sweep[2].read_text())
    failed.update(completed=0, failed=failed["num_prompts"])
    sweep[2].write_text(json.dumps(failed))
    part = json.loads((run / "10-monday-peak.json").read_text())
    part.update(completed=part["completed"] - 3, failed=3, median_tpot_ms=math.nan)  # json writes NaN
    (run / "10-monday-peak.json").write_text(json.dumps(part))
    runs = open_runs(run)
    assert len(runs) == len(sweep) - 2 + 1
    skipped = runs[0].server["skipped_tests"]
    assert f"{sweep[0].name}: truncated JSON at line 1 col" in skipped[0] and "failed on the box" in skipped[0]
    assert skipped[1] == f"{sweep[1].name}: empty file (the test failed on the box?)"
    v = validate(runs, load_profile(None), replications=1, n_jobs=1)  # the shipped Spark profile
    gone = f"11-rate-sweep@{failed['request_rate']:g}"
    assert gone not in {r.test for r in v.rows} and {r.test for r in v.rows} == {r.test for r in runs} - {gone}
    assert all(r.measured > 0 for r in v.rows if r.metric.endswith("_ms"))
    assert any(n.startswith(f"{gone}: no request completed") for n in v.notes)
    assert any(n.startswith("10-monday-peak: 3 of ") for n in v.notes)
    # a figure the file gives as NaN is no measurement: not a row (nor a band miss), and said so
    assert ("10-monday-peak", "median_tpot_ms") not in {(r.test, r.metric) for r in v.rows}
    assert ("10-monday-peak", "median_ttft_ms") in {(r.test, r.metric) for r in v.rows}
    assert "10-monday-peak: median_tpot_ms not a number in the result: not compared" in v.notes
    assert sum(n.startswith("validated without ") for n in v.notes) == 2
    assert all(c["measured_rps"] != failed["request_rate"] for c in v.capacity)
    for f in sweep[2:] + [run / "10-monday-peak.json", run / "10-monday-peak.md", run / "10-monday-peak.log"]:
        f.write_text("")
    with pytest.raises(ImporterError, match="no open-loop results: "):
        open_runs(run)


@needs_data
def test_a_missing_or_cut_off_result_json_is_read_from_the_printed_report(tmp_path):
    """vllm bench serve prints its report before it saves the JSON: a JSON that was never saved or is cut
    off is read from the report in the test's .md, or in the log (each rate-sweep step's own), and named."""
    run = tmp_path / "nojson"
    shutil.copytree(NEMOTRON, run)
    whole = {r.test: r for r in open_runs(NEMOTRON)}
    (run / "07-office-baseline.json").unlink()
    (run / "09-reasoning.json").write_text((run / "09-reasoning.json").read_text()[:200])
    (run / "08-sharegpt.json").write_text("{}")  # what the suite leaves of a test that failed (its 11-rate-sweep.json)
    (run / "10-monday-peak.json").unlink()
    (run / "10-monday-peak.md").write_text("# Test 10\n")  # no report there: the log's is read
    for js in run.glob("11-rate-sweep-*.json"):
        js.unlink()
    runs = {r.test: r for r in open_runs(run)}
    assert set(runs) == set(whole) and "skipped_tests" not in runs["08-sharegpt"].server
    for test, name in [("07-office-baseline", "07-office-baseline.md"), ("08-sharegpt", "08-sharegpt.md"),
                       ("09-reasoning", "09-reasoning.md"),
                       ("10-monday-peak", "10-monday-peak.log"), ("11-rate-sweep@0.5", "11-rate-sweep.log")]:
        r, w = runs[test], whole[test]
        assert Path(r.path).name == name and r.detailed is None
        assert r.params == w.params  # the command as read from the .md or the log
        for k, v in r.result.items():
            assert v == pytest.approx(w.result[k], abs=0.006), (test, k)  # printed to 0.01
        assert {k for k in w.result if not k.startswith("std_")} - set(r.result) <= {
            "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "burstiness",
            "max_concurrency", "rtfx", "request_goodput"}
    v = validate([runs["07-office-baseline"], runs["11-rate-sweep@0.5"]], load_profile(None), replications=1,
                 n_jobs=1)
    assert [n for n in v.notes if "printed" in n] == [
        f"{t}: read from the report printed in {f} (its result JSON is missing or cut off): figures rounded to 0.01"
        for t, f in [("07-office-baseline", "07-office-baseline.md"), ("11-rate-sweep@0.5", "11-rate-sweep.log")]]
    assert {r.test for r in v.rows} == {"07-office-baseline", "11-rate-sweep@0.5"}


@needs_data
@needs_data
def test_a_printed_report_cut_inside_its_block_is_not_read(tmp_path):
    """A report whose block has no closing ruler stops mid-print: its last number may be cut ("1234.5" read
    as "12"), so a test with no JSON and such a report is left out and named; the others validate."""
    run = tmp_path / "cut"
    shutil.copytree(NEMOTRON, run)
    (run / "07-office-baseline.json").unlink()
    md = run / "07-office-baseline.md"
    text = md.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("Median TTFT (ms):"))
    md.write_text(text[:text.index(line) + len(line) - 6])
    runs = open_runs(run)
    assert "07-office-baseline" not in {r.test for r in runs} and len(runs) == len(open_runs(NEMOTRON)) - 1
    assert runs[0].server["skipped_tests"] == [
        "07-office-baseline: no result JSON; 07-office-baseline.md: its 'Serving Benchmark "
        "Result' block is cut off (no closing '=====' line) (the test failed on the box?)"]
    with pytest.raises(ImporterError, match="07-office-baseline.md: its 'Serving Benchmark Result' block is cut off"):
        load_source(md)


@pytest.mark.parametrize("result, why", [(None, "08-sharegpt: no result JSON and no printed report"),
                                         ("{}", "08-sharegpt.json: an empty result object ({})")])
def test_a_test_with_neither_result_json_nor_report_is_named(tmp_path, result, why):
    run = tmp_path / "died"
    shutil.copytree(NEMOTRON, run)
    if result is None:
        (run / "08-sharegpt.json").unlink()
    else:
        (run / "08-sharegpt.json").write_text(result)
    (run / "08-sharegpt.md").write_text("# Test 08\n\nERROR: the server died\n")
    (run / "08-sharegpt.log").write_text("Traceback (most recent call last):\n")
    runs = open_runs(run)
    assert "08-sharegpt" not in {r.test for r in runs}
    assert runs[0].server["skipped_tests"] == [f"{why} (the test failed on the box?)"]


@pytest.mark.parametrize("result, note", [
    ({"completed": 0, "failed": 5}, "T: no request completed (5 failed on the server): not validated"),
    ({"completed": 7, "failed": 3}, "T: 3 of 10 requests failed on the server; its figures are the 7 completed "
                                    "ones', the prediction's all 10"),
    ({"completed": 7}, None), ({}, None)])  # a source that does not count requests is validated as it is
def test_failed_requests_are_named(result, note):
    assert failed_note(OpenRun(source="s", test="T", path=None, dataset="random", result=result)) == note


STREAM = {"completed": 10, "total_output_tokens": 4000, "mean_ttft_ms": 500.0, "mean_e2el_ms": 20480.0}


@pytest.mark.parametrize("itl, note", [
    (50.0, None),  # 400 chunks for 400 tokens a request: the stream capsim simulates
    (45.0, None),  # 445: within 20 %
    (100.0, "T: the server streamed about 201 chunks a request for 400 counted tokens (0.50 a token); capsim streams "
            "a chunk a token, so ITL's mean and tail (and TPOT, where chunks outnumber counted tokens) measure a "
            "stream it does not simulate"),
    (20.0, "T: the server streamed about 1000 chunks a request for 400 counted tokens (2.50 a token); capsim streams "
           "a chunk a token, so ITL's mean and tail (and TPOT, where chunks outnumber counted tokens) measure a "
           "stream it does not simulate")])
def test_a_stream_of_other_than_a_chunk_a_token_is_named(itl, note):
    run = OpenRun(source="s", test="T", path=None, dataset="random", result=STREAM | {"mean_itl_ms": itl})
    assert stream_note(run, load_profile()) == note
    spec = load_profile()
    spec.engine.num_speculative_tokens, spec.engine.spec_acceptance = 3, 0.6
    assert stream_note(run, spec) is None  # several tokens a chunk by design: the acceptance note's business
    assert stream_note(OpenRun(source="s", test="T", path=None, dataset="random", result={"completed": 10}),
                       load_profile()) is None  # a source without the figures
    for bad in ({"total_output_tokens": float("nan")}, {"mean_itl_ms": float("nan")}, {"mean_itl_ms": 0.0}):
        assert stream_note(OpenRun(source="s", test="T", path=None, dataset="random",
                                   result=STREAM | {"mean_itl_ms": itl} | bad), load_profile()) is None


@pytest.mark.parametrize("change, named", [({"completed": 1, "total_output_tokens": 400}, True),  # one request counts
                                           ({"completed": 0}, False), ({"completed": -1}, False),
                                           ({"total_output_tokens": 10}, False),  # a token a request: nothing between
                                           ({"mean_e2el_ms": 500.0}, False),  # no time after the first chunk
                                           ({"mean_itl_ms": 0.5}, True)])  # gaps under a millisecond are gaps
def test_the_stream_note_at_its_guards(change, named):
    run = OpenRun(source="s", test="T", path=None, dataset="random", result=STREAM | {"mean_itl_ms": 100.0} | change)
    assert (stream_note(run, load_profile()) is not None) == named


@needs_data
def test_gpt_oss_streams_fewer_chunks_than_its_usage_counts_and_the_others_one_a_token():
    """Every run of the suite streams a chunk per counted token but gpt-oss's (harmony) and the speculative one."""
    prof = load_profile()
    named = {(r.source.split("/")[-2], r.test) for d in sorted(RESULTS.glob("*/*/*"))
             if "spec" not in d.name for r in open_runs(d) if stream_note(r, prof)}
    assert {m for m, _ in named} == {"gpt-oss-20b"}
    assert ("gpt-oss-20b", "09-reasoning") in named and ("gpt-oss-20b", "08-sharegpt") not in named


@needs_data
def test_an_empty_report_and_unknown_server_flags_are_named(tmp_path):
    """A test that left an empty .md (the box died before writing) is skipped and named, as a
    missing table is; server flags calibration does not read are named, not silently ignored."""
    run = tmp_path / "odd"
    shutil.copytree(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16", run)
    (run / "03-long-output.md").write_text("")
    meta = json.loads((run / "meta.json").read_text())
    meta["server_config"]["extra_vllm_args"] += " --enforce-eager --frobnicate-level=3"
    (run / "meta.json").write_text(json.dumps(meta))
    runs = closed_runs(run)
    assert "03-long-output" not in [r.test for r in runs] and len(runs) == 5
    assert runs[0].server["unmodelled_flags"] == ["--enforce-eager", "--frobnicate-level"]
    fr = fit_closed(runs, max_nfev=2)
    assert "03-long-output.md: empty file (the test failed on the box?)" in fr.origin["calibrated_without"]
    assert fr.origin["flags_not_modelled"].startswith("--enforce-eager, --frobnicate-level: ")


@needs_data
def test_a_fit_that_puts_milliseconds_on_each_sequence_is_redone_under_the_bound(monkeypatch):
    """t_seq is host work per request and step; a first fit above fit.T_SEQ_MAX (Mistral-Small-4's
    put 3.75 ms there) is redone with t_seq bounded, and the profile says so."""
    from calibrate import fit as fitmod

    real, calls = fitmod.fit_parameters, []

    def first_escapes(prof, runs, scale, params, *a, **k):
        b, r, e = real(prof, runs, scale, params, *a, **k)
        calls.append(params["t_seq"])
        if len(calls) == 1:
            b.step_model.t_seq = 4e-3  # as if the fit had escaped into t_seq
        return b, r, e

    monkeypatch.setattr(fitmod, "fit_parameters", first_escapes)
    fr = fitmod.fit_closed(closed_runs(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16"), max_nfev=2, combine="sum")
    assert calls == [fitmod.FIT_PARAMS["t_seq"], (fitmod.FIT_PARAMS["t_seq"][0], fitmod.T_SEQ_MAX)]
    assert fr.profile.step_model.t_seq <= fitmod.T_SEQ_MAX
    assert fr.origin["t_seq"].startswith("refitted under 0.5 ms: the first fit put 4.00 ms")


@needs_data
def test_the_combine_rules_fitted_side_by_side_give_the_profile_one_after_the_other_gives():
    """Two idle cores fit the two rules at once (the second in a forked process); the rules' fits are
    independent, so the profile and what calibration says of it are the very same."""
    from simulator.evaluator import in_fork
    runs = closed_runs(MISTRAL)
    one = fit_closed(runs, max_nfev=4, n_jobs=1)
    two = fit_closed(runs, max_nfev=4, n_jobs=2)
    assert one.profile.to_json() == two.profile.to_json()
    assert one.origin == two.origin and one.evaluations == two.evaluations
    assert [r.to_json() for r in one.residuals] == [r.to_json() for r in two.residuals]
    with pytest.raises(ZeroDivisionError):  # a worker's error is raised where its result is awaited
        in_fork(lambda: 1 / 0).result()
    assert in_fork(lambda: {"x": [1, 2]}).result() == {"x": [1, 2]}
    slow = in_fork(lambda: time.sleep(60))
    t = time.perf_counter()
    slow.cancel()  # a result nobody waits for any more: the worker stops at once
    assert time.perf_counter() - t < 5 and not slow.running


@needs_data
def test_a_fit_with_its_jacobians_spread_over_forks_is_the_fit_done_here():
    """fit_parameters(jobs=2) hands half of each finite-difference Jacobian to a forked process
    (scipy's least_squares(workers=...)): the same points, the same simulations, so the same profile,
    residuals and evaluation count, and the progress counts the fork's evaluations too, in order."""
    from calibrate.fit import API_PARAMS, FIT_PARAMS, START, compare, estimate_prompt_scale, fit_parameters
    from simulator.evaluator import fork_map
    from simulator.load import ClosedLoop
    from simulator.sim import simulate_closed
    runs = closed_runs(GPT_OSS)
    prof, _ = prior_profile(load_meta(GPT_OSS), single_user_decode(runs))
    probe = simulate_closed(prof, ClosedLoop(combos=[(1, 1, 0, 1)], runs=1, warmup=False)).closed_loop.latency_s * 1e3
    scale = estimate_prompt_scale(runs, probe)
    fits, seen = {}, {}
    for jobs in (1, 2):
        seen[jobs] = []
        fits[jobs] = fit_parameters(prof, runs, scale, dict(FIT_PARAMS), API_PARAMS, START, 2,
                                    lambda i, loss, jobs=jobs: seen[jobs].append((i, loss)), jobs)
    (one, r1, e1), (two, r2, e2) = fits[1], fits[2]
    assert one.to_json() == two.to_json()
    assert [r.to_json() for r in r1] == [r.to_json() for r in r2]
    assert e1 == e2 == len(seen[1]) > len(FIT_PARAMS)  # a Jacobian's points at least
    assert seen[1] == seen[2] and [i for i, _ in seen[2]] == list(range(1, e2 + 1))
    assert compare(two, runs, scale)[0].to_json() == r2[0].to_json()
    # fork_map: in order, whatever the split; a fork's results reach on_remote here, in order
    got = []
    assert fork_map(lambda x: x * x, range(7), 3, on_remote=got.append) == [x * x for x in range(7)]
    assert got == [x * x for x in range(2, 7)]  # the first run of items is computed here
    assert fork_map(lambda x: -x, [5], 4) == [-5]
    with pytest.raises(ZeroDivisionError):  # a fork's error is raised here
        fork_map(lambda x: 1 / x, [1, 2, 0], 2)
