"""Workloads built here, beside the conformance tests that hold the random and ShareGPT samples to
vLLM's own code: llama-benchy's fixed shapes, a cut ShareGPT file, the tokenizer-free count, the
request a ShareGPT pair becomes, mixtures and what each workload says of itself."""
import json

import numpy as np
import pytest

from simulator.workload import (FixedWorkload, MixtureWorkload, PromptFormat, RandomWorkload, RequestSpec,
                                ShareGPTWorkload, WorkloadError, approx_token_count, load_sharegpt_json,
                                random_length_bounds, sharegpt_pairs, sharegpt_spec, stop_lengths, tokenizer_counter)
from tests.helpers import sharegpt_conversation


# ------------------------------------------------------------------ llama-benchy's fixed shapes

def test_a_fixed_request_counts_its_depth_and_prompt_scaled_to_the_servers_tokenizer():
    specs = FixedWorkload(pp=512, tg=32, depth=4096).sample(3)
    assert len(specs) == 3 and len(set(specs)) == 1
    s = specs[0]
    assert (s.prompt_tokens, s.max_tokens, s.output_tokens, s.raw_prompt_tokens) == (4608, 32, 32, 4608)
    assert s.tag == "pp512 tg32 @ d4096" and not s.stops_early
    assert FixedWorkload(pp=512, tg=32).test_name == "pp512 tg32"
    scaled = FixedWorkload(pp=100, tg=8, depth=100, prompt_scale=1.26).sample(1)[0]
    assert scaled.prompt_tokens == 252 and scaled.raw_prompt_tokens == 200
    assert FixedWorkload(pp=1, tg=1, prompt_scale=0.01).sample(1)[0].prompt_tokens == 1  # never an empty prompt
    assert FixedWorkload(pp=64, tg=8).describe() == {"dataset": "fixed", "pp": 64, "tg": 8, "depth": 0}


def test_fixed_answers_that_stop_at_eos_follow_their_law():
    specs = FixedWorkload(pp=64, tg=400, stop_mean=100.0).sample(50)
    outs = [s.output_tokens for s in specs]
    assert all(s.max_tokens == 400 for s in specs) and max(outs) <= 400 and min(outs) >= 1
    assert np.mean(outs) == pytest.approx(100.0, rel=0.05)
    assert any(s.stops_early for s in specs)


@pytest.mark.parametrize("kw, word", [(dict(pp=0, tg=8), "pp >= 1"), (dict(pp=8, tg=0), "tg >= 1"),
                                      (dict(pp=8, tg=8, depth=-1), "depth >= 0"),
                                      (dict(pp=8, tg=8, stop_mean=0.5), "stop_mean must be >= 1"),
                                      (dict(pp=8, tg=8, stop_shape=0.0), "stop_shape must be > 0")])
def test_an_impossible_fixed_shape_is_one_clear_error(kw, word):
    with pytest.raises(WorkloadError, match=word):
        FixedWorkload(**kw)
    FixedWorkload(pp=1, tg=1, depth=0, stop_mean=1.0, stop_shape=0.01)  # the edges themselves are fine


# ------------------------------------------------------------------ random

def test_random_requests_carry_the_servers_added_tokens_and_their_share_of_answers():
    fmt = PromptFormat(special_tokens=1, chat_template_tokens=13)
    wl = RandomWorkload(100, 50, range_ratio=0.0, prefix_len=7, fmt=fmt)
    s = wl.sample(4, seed=1)
    assert all(r.prompt_tokens == 99 + 1 + 13 + 7 and r.raw_prompt_tokens == 99 + 7 for r in s)
    assert all(r.max_tokens == r.output_tokens == 50 for r in s)
    half = RandomWorkload(100, 50, fmt=fmt, output_fraction=0.5).sample(4, seed=1)
    assert [r.output_tokens for r in half] == [25] * 4 and all(r.max_tokens == 50 for r in half)
    assert RandomWorkload(100, 1, fmt=fmt, output_fraction=0.1).sample(1)[0].output_tokens == 1
    assert RandomWorkload(100, 50).describe() == {"dataset": "random", "random_input_len": 100,
                                                   "random_output_len": 50, "random_range_ratio": 0.0,
                                                   "random_prefix_len": 0}
    assert RandomWorkload(100, 50, output_fraction=0.5).describe()["output_fraction"] == 0.5


def test_random_bounds_and_refusals():
    assert random_length_bounds(101, 10, 0.5, 1) == (50, 150, 5, 15)
    assert random_length_bounds(10, 1, 0.9, 0)[2:] == (1, 2)  # an answer is at least a token
    for kw in (dict(range_ratio=1.0), dict(range_ratio=-0.1)):
        with pytest.raises(WorkloadError, match="range-ratio"):
            RandomWorkload(100, 10, **kw)
    for il, ol in ((0, 10), (10, 0)):
        with pytest.raises(WorkloadError, match="must be >= 1"):
            RandomWorkload(il, ol)
    with pytest.raises(WorkloadError, match="random-prefix-len must be >= 0"):
        RandomWorkload(100, 10, prefix_len=-1)
    with pytest.raises(WorkloadError, match="the shortest prompt is 0 tokens"):
        RandomWorkload(1, 10)  # the BOS alone: nothing sampled
    RandomWorkload(1, 10, prefix_len=1)  # a prefix makes it a prompt
    for f in (0.0, 1.5):
        with pytest.raises(WorkloadError, match="output_fraction"):
            RandomWorkload(100, 10, output_fraction=f)


# ------------------------------------------------------------------ ShareGPT files

def test_a_whole_sharegpt_file_is_read_as_is(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps([sharegpt_conversation("a b c d", "e f g h")] * 3))
    recs, dropped = load_sharegpt_json(p)
    assert len(recs) == 3 and dropped == 0


def test_a_cut_sharegpt_file_keeps_every_complete_conversation(tmp_path):
    text = json.dumps([sharegpt_conversation(f"question {i}", f"answer {i}") for i in range(5)], indent=1)
    p = tmp_path / "cut.json"
    p.write_text(text[: text.index("question 3") + 4])
    recs, dropped = load_sharegpt_json(p)
    assert [r["conversations"][0]["value"] for r in recs] == ["question 0", "question 1", "question 2"]
    assert dropped == 1
    p.write_text(text[:-1])  # only the closing bracket lost: every record whole, none dropped
    recs, dropped = load_sharegpt_json(p)
    assert len(recs) == 5 and dropped == 0


@pytest.mark.parametrize("text, word", [('{"conversations": []}', "must hold a JSON array"),
                                        ("not json at all", "not a ShareGPT JSON array"),
                                        ('[{"conversations": [', "no complete ShareGPT conversation")])
def test_an_unusable_sharegpt_file_is_one_clear_error(tmp_path, text, word):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(WorkloadError, match=word):
        load_sharegpt_json(p)


def test_an_empty_sharegpt_array_is_said_when_sampling(tmp_path):
    p = tmp_path / "empty.json"
    p.write_text("[]")
    wl = ShareGPTWorkload(path=str(p))
    with pytest.raises(WorkloadError, match="no ShareGPT conversation passes"):
        wl.sample(1)


def test_an_unreadable_sharegpt_path_is_one_clear_error(tmp_path):
    with pytest.raises(WorkloadError) as e:
        load_sharegpt_json(tmp_path / "missing.json")
    assert str(e.value) == f"{tmp_path / 'missing.json'}: cannot read ShareGPT file (No such file or directory)"
    with pytest.raises(WorkloadError, match="needs --dataset-path"):
        ShareGPTWorkload(path=None)


def test_the_tokenizer_free_count_is_a_bos_and_a_token_a_word_piece():
    assert approx_token_count("") == 1
    assert approx_token_count("hello") == 2
    assert approx_token_count("hello, world!") == 5  # two words, two marks
    assert approx_token_count("internationalisation") == 1 + 4  # 20 letters: pieces of 6
    assert approx_token_count("abcdef") == 2 and approx_token_count("abcdefg") == 3


def test_sharegpt_pairs_keep_first_turns_that_pass_vllms_length_filter():
    recs = [sharegpt_conversation("w " * 3, "w " * 10),  # prompt 4 tokens with the BOS: kept
            sharegpt_conversation("w " * 2, "w " * 10),  # prompt 3: too short
            sharegpt_conversation("w " * 10, "w " * 2),  # answer 3: too short
            sharegpt_conversation("w " * 1023, "w " * 3),  # prompt 1024 and answer 4: kept
            sharegpt_conversation("w " * 1024, "w " * 3),  # prompt 1025: too long
            sharegpt_conversation("w " * 1000, "w " * 1047),  # 1001 + 1048 = 2049: too long together
            sharegpt_conversation("w " * 1000, "w " * 1046),  # 2048: kept
            {"conversations": [{"value": "only one turn"}]}, "not a record"]
    got = [(p, o) for _, p, o in sharegpt_pairs(recs, 0, approx_token_count, shuffle=False)]
    assert got == [(4, 11), (1024, 4), (1001, 1047)]
    fixed = [(p, o) for _, p, o in sharegpt_pairs(recs, 0, approx_token_count, shuffle=False, output_len=5)]
    assert (11, 5) in fixed  # a fixed output length lifts the answer's own filter
    shuffled = [p for _, p, _ in sharegpt_pairs(recs, 1, approx_token_count)]
    assert sorted(shuffled) == sorted(p for p, _ in got)


def test_a_sharegpt_request_is_its_prompt_rescaled_with_its_share_of_the_reference_answer():
    fmt = PromptFormat(special_tokens=1, chat_template_tokens=10)
    s = sharegpt_spec(200, 100, fmt, output_fraction=0.37, prompt_scale=1.1, prompt="hi")
    assert (s.prompt_tokens, s.raw_prompt_tokens, s.max_tokens, s.output_tokens) == (230, 220, 100, 37)
    assert s.prompt_text == "hi" and s.tag == "sharegpt" and s.stops_early
    tiny = sharegpt_spec(1, 1, fmt, output_fraction=0.01, prompt_scale=0.1)
    assert tiny.raw_prompt_tokens == 1 and tiny.output_tokens == 1


def test_too_few_passing_conversations_are_repeated_seeded_from_those_that_pass(tmp_path):
    p = tmp_path / "few.json"
    passing = [sharegpt_conversation(f"question number {i} here", "an answer of some words") for i in range(3)]
    p.write_text(json.dumps(passing + [sharegpt_conversation("no", "x")]))
    wl = ShareGPTWorkload(path=str(p))
    specs = wl.sample(10, seed=4)
    assert len(specs) == 10 and {s.prompt_text for s in specs} == {f"question number {i} here" for i in range(3)}
    assert len({s.prompt_text for s in specs[:3]}) == 3  # each passing one first, then the repeats
    assert [s.prompt_text for s in wl.sample(10, seed=4)] == [s.prompt_text for s in specs]
    assert len(wl.sample(2, seed=4)) == 2
    d = ShareGPTWorkload(path=str(p), output_len=9, prompt_scale=1.2, shuffle=False, output_fraction=0.5).describe()
    assert d == {"dataset": "sharegpt", "dataset_path": str(p), "output_fraction": 0.5, "prompt_scale": 1.2,
                 "sharegpt_output_len": 9, "disable_shuffle": True}
    assert wl.describe() == {"dataset": "sharegpt", "dataset_path": str(p), "output_fraction": 1.0}  # defaults unsaid
    for kw in (dict(output_fraction=0.0), dict(prompt_scale=0.0)):
        with pytest.raises(WorkloadError):
            ShareGPTWorkload(path=str(p), **kw)


# ------------------------------------------------------------------ mixtures

def test_a_mixture_draws_each_component_by_weight_reproducibly():
    a, b = FixedWorkload(pp=10, tg=5), FixedWorkload(pp=20, tg=5)
    mix = MixtureWorkload([(3.0, a), (1.0, b)])
    specs = mix.sample(4000, seed=2)
    share = sum(s.prompt_tokens == 10 for s in specs) / len(specs)
    assert share == pytest.approx(0.75, abs=0.03)
    assert specs == mix.sample(4000, seed=2) and specs != mix.sample(4000, seed=3)
    assert all(s.prompt_tokens == 20 for s in MixtureWorkload([(0.0, a), (1.0, b)]).sample(50))
    assert mix.describe() == {"dataset": "mixture", "components": [{"weight": 3.0, **a.describe()},
                                                                     {"weight": 1.0, **b.describe()}]}
    assert not mix.mixed_topics
    for comps in ([], [(-1.0, a), (2.0, b)], [(0.0, a)]):
        with pytest.raises(WorkloadError):
            MixtureWorkload(comps)


def test_a_mixtures_random_component_draws_its_own_seeded_sample():
    r = RandomWorkload(100, 20, range_ratio=0.5)
    mix = MixtureWorkload([(1.0, r), (1.0, FixedWorkload(pp=10, tg=5))])
    specs = mix.sample(40, seed=5)
    mine = [s for s in specs if s.tag == "random"]
    seed_of_first = 5 + 1000 * 1
    assert mine == r.sample(len(mine), seed=seed_of_first)


def test_a_tokenizer_that_cannot_be_loaded_is_one_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{")
    with pytest.raises(WorkloadError, match="cannot load tokenizer"):
        tokenizer_counter(str(bad))


def test_request_spec_stops_early_only_below_its_max_tokens():
    assert RequestSpec(10, 5, 4).stops_early and not RequestSpec(10, 5, 5).stops_early


@pytest.mark.parametrize("shape, mean, cap, n", [(1.0, 300.0, 256, 10), (4.0, 300.0, 256, 7), (2.0, 100.0, 400, 6),
                                                 (32.0, 300.0, 310, 5)])
def test_each_answer_length_is_its_slices_mean_of_the_capped_law(shape, mean, cap, n):
    """Slice i of n of the gamma law, as a length: n x E[min(X, cap); i/n < F(X) < (i+1)/n], by quadrature."""
    from scipy import integrate, stats
    law = stats.gamma(shape, scale=mean / shape)
    want = []
    for i in range(n):
        lo, hi = law.ppf(i / n), law.ppf((i + 1) / n)
        below = integrate.quad(lambda x: x * law.pdf(x), lo, min(hi, cap), limit=200)[0] if lo < cap else 0.0
        part = below + cap * max(0.0, law.cdf(hi) - law.cdf(max(lo, cap)))  # the capped answers: cap tokens each
        want.append(int(min(cap, max(1, round(part * n)))))
    assert stop_lengths(mean, cap, n, shape) == want


def test_the_library_defaults_are_the_tools():
    assert stop_lengths(300.0, 1000, 5) == stop_lengths(300.0, 1000, 5, 1.0)  # a constant chance of EOS a token
    assert PromptFormat() == PromptFormat(special_tokens=1, chat_template_tokens=0, vocab_size=262144)
    r = RandomWorkload()  # vllm bench serve's --random-input-len and --random-output-len
    assert (r.input_len, r.output_len, r.range_ratio, r.prefix_len) == (1024, 128, 0.0, 0)
