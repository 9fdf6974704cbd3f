"""simulator/whatif.py by hand: the KV cache's bytes per element as each `--kv-cache-dtype` name states
them, how a `--set KEY=VALUE` is typed, and the physical what-ifs (`kv_dtype=`, `speed=`, `weights=`)."""
import pytest

from simulator.profile import ProfileError, load_profile
from simulator.whatif import KV_BYTES, WEIGHT_BITS, apply_edits


def test_kv_bytes_are_what_each_dtype_name_states():
    for name in ("bf16", "fp16", "auto", "bfloat16", "float16"):
        assert KV_BYTES[name] == 2.0
    for name in ("fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla", "fp8_per_token_head", "int8_per_token_head"):
        assert KV_BYTES[name] == 1.0
    assert KV_BYTES["int4_per_token_head"] == 0.5
    for name in ("nvfp4", "nvfp4_ds_mla", "nvfp4_4over6"):
        assert KV_BYTES[name] == (4 + 8 / 16) / 8  # an fp8 scale per 16
    # turboquant's names give the key's and the value's bits: the mean of the two
    assert KV_BYTES["turboquant_k8v4"] == (8 + 4) / 2 / 8 and KV_BYTES["turboquant_k3v4_nc"] == (3 + 4) / 2 / 8
    assert KV_BYTES["turboquant_4bit_nc"] == KV_BYTES["ultraquant_4bit"] == 4 / 8
    assert KV_BYTES["turboquant_3bit_nc"] == 3 / 8


def test_weight_bits_count_their_scales():
    assert WEIGHT_BITS["nvfp4"] == 4 + 8 / 16 and WEIGHT_BITS["mxfp4"] == 4 + 8 / 32
    assert WEIGHT_BITS["int4"] == WEIGHT_BITS["awq"] == WEIGHT_BITS["gptq"] == 4 + 2 * 16 / 128
    assert WEIGHT_BITS["fp8"] == WEIGHT_BITS["int8"] == 8.0 and WEIGHT_BITS["bf16"] == WEIGHT_BITS["fp16"] == 16.0


def test_values_take_the_type_of_what_they_set():
    p = load_profile()
    for word, want in (("yes", True), ("on", True), ("1", True), ("TRUE", True), ("no", False), ("off", False),
                       ("0", False), ("False", False)):
        assert apply_edits(p, [f"async_scheduling={word}"]).engine.async_scheduling is want, word
    with pytest.raises(ProfileError, match="expected true/false, got 'maybe'"):
        apply_edits(p, ["async_scheduling=maybe"])
    q = apply_edits(p, ["max_num_seqs=64.0"])
    assert q.engine.max_num_seqs == 64 and type(q.engine.max_num_seqs) is int
    assert apply_edits(p, ["num_blocks=none"]).engine.num_blocks is None  # capacity unknown: not binding
    with pytest.raises(ProfileError, match="expected a number, got 'many'"):
        apply_edits(p, ["max_num_seqs=many"])
    assert apply_edits(p, ["api.request_s=0.25"]).api.request_s == 0.25
    assert apply_edits(p, ["step_model.t0=1e-3"]).step_model.t0 == 1e-3


@pytest.mark.parametrize("key", ["max_model_len", "max_num_seqs", "max_num_batched_tokens", "num_speculative_tokens",
                                 "long_prefill_token_threshold", "spec_acceptance"])
def test_none_is_refused_where_a_number_is_needed(key):
    """Only the KV cache's size may be unknown (it was a TypeError from the checks before)."""
    with pytest.raises(ProfileError, match=f"^{key} must be a (whole )?number.*, got None$"):
        apply_edits(load_profile(), [f"{key}=none"])


@pytest.mark.parametrize("edit", ["engine.nonsense=1", "bogus.max_num_seqs=1", "nonsense=1", "engine._cache=1"])
def test_unknown_keys_are_refused(edit):
    with pytest.raises(ProfileError, match=f"unknown profile key '{edit.split('=')[0]}'"):
        apply_edits(load_profile(), [edit])


def test_kv_dtype_moves_the_kv_bytes_and_the_blocks_from_the_profiles_own():
    p = load_profile()  # fp8 KV
    sm = p.step_model
    bf = apply_edits(p, ["kv_dtype=bf16"])
    assert bf.step_model.kv_bytes_full == 2 * sm.kv_bytes_full and bf.step_model.kv_bytes_window == 2 * sm.kv_bytes_window
    assert bf.engine.num_blocks == p.engine.num_blocks // 2 and bf.model["kv_cache_dtype"] == "bf16"
    nv = apply_edits(bf, ["kv_dtype=nvfp4"])  # from bf16 now
    assert nv.step_model.kv_bytes_full == pytest.approx(sm.kv_bytes_full * 0.5625)
    unnamed = p.copy()
    del unnamed.model["kv_cache_dtype"]  # a profile that does not say: fp8, as vLLM's on the Spark
    assert apply_edits(unnamed, ["kv_dtype=bf16"]).step_model.kv_bytes_full == 2 * sm.kv_bytes_full
    unnamed.model["kv_cache_dtype"] = "fp7_mystery"  # nor one it cannot read
    assert apply_edits(unnamed, ["kv_dtype=bf16"]).step_model.kv_bytes_full == 2 * sm.kv_bytes_full
    with pytest.raises(ProfileError, match="kv_dtype must be one of bf16, fp16"):
        apply_edits(p, ["kv_dtype=fp3"])


def test_speed_scales_every_step_and_must_be_positive():
    p = load_profile()
    fast = apply_edits(p, ["speed=2"]).step_model
    assert fast.bw_weights == 2 * p.step_model.bw_weights and fast.flops == 2 * p.step_model.flops
    assert apply_edits(p, ["speed=0.5"]).step_model.bw_weights == 0.5 * p.step_model.bw_weights
    for bad in ("0", "-1"):
        with pytest.raises(ProfileError, match=f"speed must be > 0, got {bad}"):
            apply_edits(p, [f"speed={bad}"])


def test_weights_from_fp16_double_the_rate_as_from_bf16_and_a_silent_profile_is_bf16():
    p = load_profile()
    half = p.copy()
    half.model["weights"] = "fp16"
    q = apply_edits(half, ["weights=fp8"])
    assert q.step_model.flops == 2 * p.step_model.flops
    assert q.step_model.weight_bytes_fixed == pytest.approx(p.step_model.weight_bytes_fixed / 2)
    silent = p.copy()
    del silent.model["weights"]
    assert apply_edits(silent, ["weights=fp8"]).step_model.weight_bytes_fixed == \
        pytest.approx(p.step_model.weight_bytes_fixed / 2)
    silent.model["weights"] = "w3a9"  # a format it does not know: 16 bits
    assert apply_edits(silent, ["weights=fp8"]).step_model.weight_bytes_fixed == \
        pytest.approx(p.step_model.weight_bytes_fixed / 2)
    same = apply_edits(p, ["weights=bf16"]).step_model  # 16 bits to 16: nothing moves
    assert (same.weight_bytes_fixed, same.flops) == (p.step_model.weight_bytes_fixed, p.step_model.flops)
    eight = apply_edits(p, ["weights=fp8"])
    four = apply_edits(eight, ["weights=nvfp4"])  # 8 -> 4.5 bits: the rate was doubled once already
    assert four.step_model.flops == eight.step_model.flops
    assert four.step_model.weight_bytes_fixed == pytest.approx(eight.step_model.weight_bytes_fixed * 4.5 / 8)
