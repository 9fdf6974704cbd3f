"""Profiles, step-time models and what-if edits."""
import json

import numpy as np
import pytest

from simulator.profile import Profile, ProfileError, gemma4_spark_physics, load_profile
from simulator.stepmodel import EmpiricalStepModel, PhysicalStepModel, features
from simulator.whatif import apply_edits


def test_profile_json_round_trip(tmp_path):
    p = load_profile()
    f = tmp_path / "p.json"
    p.save(f)
    q = load_profile(f)
    assert q.to_json() == p.to_json()


def test_features_count_attention_pairs_exactly():
    f = features([(0, 4), (10, 1)], window=3)
    assert f.n_tokens == 5 and f.n_seqs == 2
    assert f.ctx_full == 4 + 11
    assert f.attn_full == (1 + 2 + 3 + 4) + 11  # causal chunk, then one query over 11 keys
    assert f.attn_window == (1 + 2 + 3 + 3) + 3
    assert f.ctx_window == 3 + 3


def test_decode_run_matches_single_steps():
    m = gemma4_spark_physics().step_model
    ctx = np.array([5, 900, 1023, 4000], dtype=np.int64)
    run = m.decode_run(ctx, 50)
    single = [m.time(features([(int(c) + j, 1) for c in ctx], m.window)) for j in range(50)]
    assert np.array_equal(run, np.array(single))


@pytest.mark.parametrize("window", [None, 1024])
def test_empirical_fit_recovers_coefficients(window):
    """Every coefficient, the sliding-window ones where the layers have a window."""
    rng = np.random.default_rng(0)
    w = 1.0 if window else 0.0
    true = EmpiricalStepModel(c0=0.02, c_tok=1e-4, c_seq=2e-3, c_ctx=3e-4, c_ctxw=5e-4 * w, c_attn=1e-3,
                              c_attnw=2e-3 * w, window=window)
    feats = [features([(int(rng.integers(0, 3000)), int(rng.choice([1, 1, 1, 256]))) for _ in range(int(k))], window)
             for k in rng.integers(1, 30, 300)]
    y = [true.time(f) for f in feats]
    fit = EmpiricalStepModel.fit(feats, y, window=window)
    assert fit.window == window
    for name in EmpiricalStepModel.FEATURES:
        assert getattr(fit, name) == pytest.approx(getattr(true, name), rel=1e-6, abs=1e-12)


def test_moe_expert_coverage_saturates():
    m = PhysicalStepModel(alpha=1.0)
    assert m.experts_touched(1) == pytest.approx(8.0)
    assert m.experts_touched(64) == pytest.approx(128 * (1 - (15 / 16) ** 64))
    assert m.experts_touched(10_000) == pytest.approx(128.0)


def test_what_if_edits():
    p = load_profile()
    q = apply_edits(p, ["max_num_batched_tokens=8192", "max_num_seqs=64", "step_model.flops=6e13", "weights=fp8"])
    assert q.engine.max_num_batched_tokens == 8192 and q.engine.max_num_seqs == 64
    assert q.step_model.weight_bytes_fixed == pytest.approx(p.step_model.weight_bytes_fixed / 2)
    assert q.step_model.flops == pytest.approx(1.2e14)  # 6e13, then fp8 doubles linear-layer throughput
    assert p.engine.max_num_seqs == 256  # the original is untouched
    kv = apply_edits(p, ["kv_dtype=bf16"])
    assert kv.engine.num_blocks == p.engine.num_blocks // 2
    with pytest.raises(ProfileError):
        apply_edits(p, ["nonsense=3"])
    with pytest.raises(ProfileError):
        apply_edits(p, ["max_num_seqs=0"])


def test_a_weights_what_if_scales_from_the_profiles_own_format():
    """weights=X moves the weights' bytes by X's bits over the profile's own (scales included, as
    calibration reads them), and only a move off 16 bits doubles the linear layers' FLOP rate."""
    p = load_profile()
    sm = p.step_model
    nv = apply_edits(p, ["weights=fp4"])  # NVFP4: 4 bits and an fp8 scale per 16
    assert nv.model["weights"] == "nvfp4" and nv.step_model.expert_bytes == pytest.approx(sm.expert_bytes * 4.5 / 16)
    assert nv.step_model.flops == pytest.approx(2 * sm.flops)
    mx = p.copy()
    mx.model["weights"] = "mxfp4"
    back = apply_edits(mx, ["weights=fp8"])  # from 4.25 bits to 8: more bytes, no faster compute
    assert back.step_model.weight_bytes_fixed == pytest.approx(sm.weight_bytes_fixed * 8 / 4.25)
    assert back.step_model.flops == sm.flops
    assert apply_edits(p, ["weights=bf16"]).step_model.weight_bytes_fixed == sm.weight_bytes_fixed
    with pytest.raises(ProfileError, match="weights must be one of bf16, fp16, fp8, int8, nvfp4, mxfp4, int4, awq, "
                                           "gptq, fp4, got 'fp2'"):
        apply_edits(p, ["weights=fp2"])


def test_faster_profile_is_faster():
    from simulator.load import OpenLoop
    from simulator.sim import simulate_open
    from simulator.summary import summarize_open
    from simulator.workload import RandomWorkload
    p = load_profile()
    specs = RandomWorkload(2000, 200, 0.5, fmt=p.prompt_format).sample(60, 1)
    base = summarize_open(simulate_open(p, specs, OpenLoop(0.5, seed=1)))
    fast = summarize_open(simulate_open(apply_edits(p, ["speed=2"]), specs, OpenLoop(0.5, seed=1)))
    assert fast["mean_ttft_ms"] < base["mean_ttft_ms"] and fast["mean_tpot_ms"] < base["mean_tpot_ms"]


def test_decode_factors_correct_pure_decode_steps_only(tmp_path):
    m = PhysicalStepModel(decode_factors=[[4, 0.8], [1, 1.0], [2, 1.3]])
    plain = PhysicalStepModel()

    def t(model, items):
        return model.time(features(items, model.window))

    assert m.decode_factors == [[1, 1.0], [2, 1.3], [4, 0.8]]  # sorted
    for items, f in (([(100, 1)], 1.0), ([(100, 1)] * 2, 1.3), ([(100, 1)] * 4, 0.8), ([(100, 1)] * 16, 0.8)):
        assert t(m, items) == pytest.approx(f * t(plain, items), rel=1e-12)
    # between knots: linear in log2(batch); a step with prompt tokens is not corrected
    assert m.decode_factor(3) == pytest.approx(1.3 + (0.8 - 1.3) * (np.log2(3) - 1), rel=1e-12)
    mixed = [(100, 1), (0, 64)]
    assert t(m, mixed) == t(plain, mixed)
    prof = load_profile("spark-gemma4-26b-a4b")
    prof.step_model.decode_factors = [[1, 1.1], [8, 0.9]]
    assert prof.step_model.decode_factor(8) == 0.9  # the cache follows a new value
    prof.save(tmp_path / "p.json")
    assert load_profile(str(tmp_path / "p.json")).step_model.decode_factors == [[1, 1.1], [8, 0.9]]
    bad = json.loads((tmp_path / "p.json").read_text())
    bad["step_model"]["params"]["decode_factors"] = [[0, 1.0]]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ProfileError, match="decode_factors"):
        load_profile(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("version, clamps", [
    ("0.32.0", True), ("0.32.0+cpu", True), ("v0.34.1", True), ("1.0.0", True),
    ("0.31.0", False), ("0.26.1rc1.dev608+g99a10304d", False), ("0.9.2", False),
    (None, False), ("", False), ("fake-0.1", False), ("capsim-twin", False)])
def test_the_vllm_versions_that_cut_max_tokens_to_the_context(version, clamps):
    """vLLM 0.32.0 is the first to serve prompt + max_tokens past max_model_len (tests/test_conformance_vllm.py
    holds the rule to its code); a version that does not read as one keeps the older rule. Calibration's
    prior takes it from the run's vllm_version and says which rule it took."""
    from calibrate.priors import prior_profile
    from simulator.profile import clamps_max_tokens
    assert clamps_max_tokens(version) is clamps
    prof, origin = prior_profile({"model": "Qwen/Qwen3-8B", "vllm_version": version})
    assert prof.engine.clamp_max_tokens is clamps
    assert ("cut to the context left" in origin["clamp_max_tokens"]) is clamps
    assert ("is refused" in origin["clamp_max_tokens"]) is not clamps


def test_a_profile_without_the_rule_keeps_refusing_and_round_trips_it(tmp_path):
    """A profile saved before the field existed reads as the older rule; a saved one keeps its rule."""
    prof = gemma4_spark_physics()
    d = prof.to_json()
    d["engine"].pop("clamp_max_tokens")
    assert Profile.from_json(d).engine.clamp_max_tokens is False
    prof.engine.clamp_max_tokens = True
    assert Profile.from_json(json.loads(json.dumps(prof.to_json()))).engine.clamp_max_tokens is True
