"""The open-loop loads validate --live runs (calibrate.live.loads): the seed's tests H and J scaled to a
server, and loads read from a file."""
from __future__ import annotations

import json

import pytest

from calibrate.live import LiveError, LiveLoad, load_loads, seed_loads, single_request_seconds
from simulator.profile import load_profile

SPARK = load_profile("spark-gemma4-26b-a4b")


def test_the_seeds_loads_on_the_seeds_own_box_are_its_tests_h_and_j():
    """A context that holds the seed's longest request (4000 + 500 tokens, range 0.9: 8550) keeps its
    lengths; on the seed's own profile the rates stay (the single-request latencies' ratio is 1 but for
    the seed's 13 chat-template tokens); H's 200 prompts are cut to its half of the 600 s budget."""
    h, j = seed_loads(SPARK, max_model_len=65536)
    assert (h.name, j.name) == ("H-scaled", "J-scaled")
    for load in (h, j):
        assert (load.input_len, load.output_len, load.range_ratio, load.seed) == (4000, 500, 0.9, 42)
    assert (h.burstiness, h.max_concurrency, j.burstiness, j.max_concurrency) == (0.7, None, 1.0, 25)
    assert h.rate == pytest.approx(0.3, rel=1e-3) and j.rate == pytest.approx(1.5, rel=1e-3)
    assert h.num_prompts == int(h.rate * 600 / 2) == 90 and j.num_prompts == 300


def test_a_small_context_scales_the_lengths_and_the_rates_with_the_box():
    """The largest request fills 45 % of the context: 4096 x 0.45 / 8550 of the lengths; the rates scale by
    the seed box's single-request latency over this box's for the shorter shape."""
    ls = 0.45 * 4096 / (4500 * 1.9)
    h, j = seed_loads(SPARK, max_model_len=4096, budget_s=100)
    assert (h.input_len, h.output_len) == (j.input_len, j.output_len) == (round(4000 * ls), round(500 * ls))
    k = single_request_seconds(SPARK, 4013, 500) / single_request_seconds(SPARK, h.input_len + 1, h.output_len)
    assert k > 3 and h.rate == pytest.approx(0.3 * k) and j.rate == pytest.approx(1.5 * k)
    assert h.num_prompts == int(h.rate * 100 / 2) and j.num_prompts == 300


def test_given_scales_and_a_short_budget():
    h, j = seed_loads(SPARK, scale=2.0, length_scale=0.5, budget_s=1, endpoint="chat")
    assert (h.input_len, h.output_len, h.rate, j.rate) == (2000, 250, 0.6, 3.0)
    assert h.num_prompts == j.num_prompts == 8  # never fewer
    assert h.endpoint == "chat" and h.params()["endpoint"] == "/v1/chat/completions"
    tiny = seed_loads(SPARK, length_scale=0.001)[0]
    assert (tiny.input_len, tiny.output_len) == (16, 4)  # never shorter


def test_a_load_as_vllm_bench_serve_runs_it():
    load = LiveLoad("x", 100, 20, 50, rate=2.0, range_ratio=0.5, burstiness=0.5, max_concurrency=4, seed=3)
    assert load.params() == {"backend": "vllm", "endpoint": "/v1/completions", "dataset_name": "random",
                             "random_input_len": 100, "random_output_len": 20, "random_range_ratio": 0.5,
                             "random_prefix_len": 0, "num_prompts": 50, "request_rate": 2.0, "burstiness": 0.5,
                             "max_concurrency": 4, "seed": 3, "ignore_eos": True}
    pat = load.pattern(clock_scale=3.0)  # a twin at speed 3 runs three times the model's rate
    assert (pat.rate, pat.burstiness, pat.max_concurrency, pat.seed) == (6.0, 0.5, 4, 3)
    assert load.pattern().rate == 2.0
    w = load.workload()
    assert (w.input_len, w.output_len, w.range_ratio) == (100, 20, 0.5)


def test_loads_from_a_file_and_files_that_are_not(tmp_path):
    p = tmp_path / "loads.json"
    p.write_text(json.dumps([{"name": "a", "input_len": 10, "output_len": 2, "num_prompts": 5, "rate": 1.0}]))
    assert load_loads(str(p)) == [LiveLoad("a", 10, 2, 5, 1.0)]
    one = '{"name": "a", "input_len": 10, "output_len": 2, "num_prompts": 5, "rate": 1.0'
    for text, said in (("[{", "Expecting property name"), ("{}", "expected a non-empty JSON list of loads"),
                       ("[]", "expected a non-empty JSON list"), (f"[{one}}}, 1]", "load 2 is not a JSON object"),
                       ('[{"name": "a", "rate": 1}]', "load 1 has no input_len, output_len, num_prompts"),
                       (f'[{one}, "speed": 2}}]', "load 1 has unknown speed")):
        p.write_text(text)
        with pytest.raises(LiveError, match=f"--loads {p}: {said}"):
            load_loads(str(p))
    with pytest.raises(LiveError, match="--loads .*missing.json: "):
        load_loads(str(tmp_path / "missing.json"))
