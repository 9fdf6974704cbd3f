"""A profile's own checks and figures: the engine limits' edges, the KV cache's capacity in tokens,
speculative decoding's tokens a step, the length rule of a request, the traffic's routing, and the
profile file's defaults and errors (simulator/profile.py).
"""
from __future__ import annotations

import json
import math

import pytest

from simulator.profile import (ApiOverhead, EngineLimits, KVGroup, Profile, ProfileError, load_profile,
                               refused_for_length)
from simulator.stepmodel import CHAT_ROUTING_SPREAD, EmpiricalStepModel, PhysicalStepModel
from tests.helpers import GEMMA4_KV_GROUPS



@pytest.mark.parametrize("field, lowest", [("max_num_batched_tokens", 1), ("max_num_seqs", 1),
                                           ("max_model_len", 2), ("num_blocks", 1),
                                           ("num_speculative_tokens", 0)])
def test_each_engine_limit_takes_its_lowest_value_and_refuses_one_below(field, lowest):
    EngineLimits(**{field: lowest}).validate()
    with pytest.raises(ProfileError, match=f"{field} must be .*got {lowest - 1}"):
        EngineLimits(**{field: lowest - 1}).validate()


def test_speculative_tokens_up_to_64_and_acceptance_below_1():
    EngineLimits(num_speculative_tokens=64, spec_acceptance=0.999).validate()
    with pytest.raises(ProfileError, match="num_speculative_tokens must be in 0..64, got 65"):
        EngineLimits(num_speculative_tokens=65).validate()
    for bad in (1.0, -0.01, math.nan):
        with pytest.raises(ProfileError, match="spec_acceptance"):
            EngineLimits(spec_acceptance=bad).validate()


@pytest.mark.parametrize("groups", [(), (KVGroup(0),), (KVGroup(16, 0),),
                                    (KVGroup(16), KVGroup(16, 1, 0), KVGroup(0, 2))])
def test_kv_groups_need_a_block_size_and_a_count(groups):
    with pytest.raises(ProfileError, match="kv_groups need block_size >= 1 and count >= 1"):
        EngineLimits(kv_groups=groups).validate()


def test_one_block_of_one_token_is_a_kv_group():
    EngineLimits(kv_groups=(KVGroup(1, 1),)).validate()


def test_kv_capacity_in_tokens_of_one_long_request():
    # one full-attention group of 16-token blocks: every block holds 16 tokens
    assert EngineLimits(num_blocks=1000).kv_capacity_tokens == 16_000
    # Gemma 4: a token takes 1/32 of a block (the full group); the 5 sliding groups hold their window
    # (1024 tokens: 64 blocks of 16, plus the one a window straddles) whatever the length
    assert EngineLimits(num_blocks=211_371, kv_groups=GEMMA4_KV_GROUPS).kv_capacity_tokens == (211_371 - 5 * 65) * 32
    # two full groups of 16 share the pool: 2/16 of a block a token
    assert EngineLimits(num_blocks=1000, kv_groups=(KVGroup(16, 2),)).kv_capacity_tokens == 8000
    # a pool the windows alone fill holds no context
    assert EngineLimits(num_blocks=300, kv_groups=GEMMA4_KV_GROUPS).kv_capacity_tokens == 0


def test_kv_capacity_unknown_without_blocks_or_a_full_attention_group():
    assert EngineLimits(num_blocks=None).kv_capacity_tokens is None
    assert EngineLimits(num_blocks=1000, kv_groups=(KVGroup(16, 5, 1024),)).kv_capacity_tokens is None


@pytest.mark.parametrize("k, a, tokens", [(0, 0.0, 1.0), (0, 0.7, 1.0), (3, 0.0, 1.0), (1, 0.5, 1.5),
                                          (3, 0.5, 1.875), (4, 0.8, (1 - 0.8 ** 5) / 0.2)])
def test_tokens_a_speculative_step_emits(k, a, tokens):
    """1 + a + a^2 + ... + a^k: the bonus token plus each accepted draft, a draft kept only if the one
    before it was."""
    assert EngineLimits(num_speculative_tokens=k, spec_acceptance=a).tokens_per_spec_step == pytest.approx(tokens)


def test_length_rule_of_a_request_before_and_after_vllm_cut_max_tokens():
    # up to 0.31: prompt + max_tokens must fit
    assert not refused_for_length(100, 28, 128, clamp_max_tokens=False)
    assert refused_for_length(100, 29, 128, clamp_max_tokens=False)
    # from 0.32: max_tokens is cut to the context left; a prompt that fills the context leaves 0 and is refused
    assert not refused_for_length(100, 128, 128, clamp_max_tokens=True)
    assert refused_for_length(100, 129, 128, clamp_max_tokens=True)
    assert not refused_for_length(127, 50, 128, clamp_max_tokens=True)
    assert refused_for_length(128, 50, 128, clamp_max_tokens=True)


def _profile(step_model) -> Profile:
    return Profile(name="p", engine=EngineLimits(), step_model=step_model)


def test_unrelated_conversations_spread_a_mixture_of_experts_routing_only():
    moe = _profile(PhysicalStepModel())
    spread = moe.for_traffic(mixed_topics=True)
    assert spread is not moe and spread.step_model.routing_spread == CHAT_ROUTING_SPREAD
    assert moe.step_model.routing_spread == 0.0  # the profile itself is left as it was
    assert moe.for_traffic(mixed_topics=False) is moe
    dense = _profile(PhysicalStepModel(n_experts=0))
    assert dense.for_traffic(mixed_topics=True) is dense
    assert spread.for_traffic(mixed_topics=True) is spread  # drawn for a replication already
    empirical = _profile(EmpiricalStepModel())  # no experts to speak of
    assert empirical.for_traffic(mixed_topics=True) is empirical


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "0.1", True])
def test_step_noise_must_be_a_finite_number_not_below_0(bad):
    p = _profile(PhysicalStepModel())
    p.step_noise_cv = bad
    with pytest.raises(ProfileError, match="step_noise_cv must be a finite number >= 0"):
        p.validate()


def test_a_profile_file_without_optional_keys_gets_vllms_defaults_and_no_noise(tmp_path):
    d = _profile(PhysicalStepModel()).to_json()
    for k in ("api", "step_noise_cv", "prompt_format", "model", "provenance"):
        del d[k]
    del d["engine"]["kv_groups"]
    p = Profile.from_json(d)
    assert p.engine.kv_groups == (KVGroup(16),)  # vLLM's default block size, one full-attention group
    assert p.step_noise_cv == 0.0 and p.api == ApiOverhead()
    assert _profile(PhysicalStepModel()).step_noise_cv == 0.0


@pytest.mark.parametrize("key", ["engine", "step_model"])
def test_a_profile_file_without_a_required_key_names_it(key):
    d = _profile(PhysicalStepModel()).to_json()
    del d[key]
    with pytest.raises(ProfileError, match=f"^box.json: missing key '{key}'$"):
        Profile.from_json(d, where="box.json")


def test_a_saved_profile_is_indented_json_that_loads_by_path_whatever_its_suffix(tmp_path):
    p = load_profile("spark-gemma4-26b-a4b")
    for name in ("box.json", "box.profile", "box"):
        p.save(tmp_path / name)
        text = (tmp_path / name).read_text()
        assert text.startswith('{\n  "name": ') and text.endswith("}\n")
        assert load_profile(tmp_path / name).to_json() == p.to_json()
    assert json.loads(text) == p.to_json()


def test_a_missing_profile_file_or_name_is_one_line(tmp_path):
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "gone.json")
    with pytest.raises(ProfileError, match="no profile file or shipped profile named 'gone'"):
        load_profile("gone")
