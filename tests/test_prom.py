"""Reading a server's /metrics (measure/prom.py): the Prometheus lines capsim keeps, the cache facts'
types, vLLM's two names of the KV-cache gauge, and the counters' differences over a run and over
several runs. tests/test_measure.py reads whole expositions of vLLM and llama.cpp; the live tests
read a real vLLM's.
"""
from __future__ import annotations

import math

import pytest

from measure.prom import add_deltas, delta, parse_metrics, spec_decode_stats


def test_comments_blank_lines_other_metrics_and_unreadable_values_are_skipped():
    text = ("# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "\n"
            "vllm:num_requests_running 3\n"  # no labels
            "vllm:num_requests_waiting{engine=\"0\"}\n"  # no value
            "vllm:prompt_tokens_total{engine=\"0\"} NaNish\n"
            "process_cpu_seconds_total 12.5\n")
    assert parse_metrics(text) == {"num_requests_running": 3.0, "server": "vllm"}
    assert parse_metrics("# nothing\n\n") == {}


def test_cache_facts_keep_their_types():
    line = ('vllm:cache_config_info{block_size="16",gpu_memory_utilization="0.9",num_gpu_blocks="5101",'
            'swap_space="4e0",cache_dtype="fp8",enable_prefix_caching="False",num_cpu_blocks="None",'
            'sliding_window="inf",label="a \\"quoted\\" word"} 1.0\n')
    cc = parse_metrics(line)["cache_config"]
    assert cc["block_size"] == 16 and isinstance(cc["block_size"], int)
    assert cc["num_gpu_blocks"] == 5101 and isinstance(cc["num_gpu_blocks"], int)
    assert cc["gpu_memory_utilization"] == 0.9
    assert cc["swap_space"] == 4.0 and isinstance(cc["swap_space"], float)  # written as a float: kept one
    assert math.isinf(cc["sliding_window"])
    assert (cc["cache_dtype"], cc["enable_prefix_caching"], cc["num_cpu_blocks"]) == ("fp8", "False", "None")
    assert cc["label"] == 'a \\"quoted\\" word'


@pytest.mark.parametrize("lines", [
    ['vllm:kv_cache_usage_perc{engine="0"} 0.25', 'vllm:gpu_cache_usage_perc{engine="0"} 0.2', 'vllm:x 1'],
    ['vllm:gpu_cache_usage_perc{engine="0"} 0.2', 'vllm:kv_cache_usage_perc{engine="0"} 0.25'],
])
def test_the_kv_cache_gauge_under_both_its_names_counts_once(lines):
    """vLLM renamed vllm:gpu_cache_usage_perc to vllm:kv_cache_usage_perc and exposed both for a while:
    the new name is read, whichever comes first."""
    assert parse_metrics("\n".join(lines))["kv_cache_usage_perc"] == 0.25


def test_the_older_kv_cache_gauge_alone_is_read():
    text = 'vllm:gpu_cache_usage_perc{engine="0"} 0.5\nvllm:gpu_cache_usage_perc{engine="1"} 0.25\n'
    assert parse_metrics(text)["kv_cache_usage_perc"] == 0.75  # engines summed, as every gauge


def test_counters_over_a_run_and_the_servers_own_means():
    before = {"prompt_tokens_total": 100.0, "ttft_sum": 1.0, "ttft_count": 2.0, "e2el_sum": 5.0, "e2el_count": 2.0,
              "queue_sum": 0.5, "queue_count": 2.0, "num_requests_running": 3.0}
    after = {"prompt_tokens_total": 400.0, "ttft_sum": 3.0, "ttft_count": 6.0, "e2el_sum": 25.0, "e2el_count": 6.0,
             "queue_sum": 0.5, "queue_count": 6.0, "num_requests_running": 1.0, "num_preemptions": 2.0}
    d = delta(before, after)
    assert d == {"prompt_tokens_total": 300.0, "ttft_sum": 2.0, "ttft_count": 4.0, "e2el_sum": 20.0,
                 "e2el_count": 4.0, "queue_sum": 0.0, "queue_count": 4.0,
                 "mean_ttft_ms": 500.0, "mean_e2el_ms": 5000.0, "mean_queue_ms": 0.0}
    # a counter only one side has, and a gauge, are no difference; no request counted, no mean
    assert delta({"ttft_sum": 1.0, "ttft_count": 2.0}, {"ttft_sum": 1.0, "ttft_count": 2.0}) == \
        {"ttft_sum": 0.0, "ttft_count": 0.0}
    assert delta(None, after) == delta(before, None) == delta({}, after) == {}


def test_differences_of_several_runs_add_and_their_means_come_from_the_sums():
    acc = add_deltas({}, {"ttft_sum": 2.0, "ttft_count": 4.0, "prompt_tokens_total": 10.0, "mean_ttft_ms": 500.0})
    acc = add_deltas(acc, {"ttft_sum": 6.0, "ttft_count": 4.0, "e2el_sum": 3.0, "e2el_count": 1.0,
                           "mean_ttft_ms": 1500.0, "mean_e2el_ms": 3000.0})
    assert acc == {"ttft_sum": 8.0, "ttft_count": 8.0, "prompt_tokens_total": 10.0, "e2el_sum": 3.0,
                   "e2el_count": 1.0, "mean_ttft_ms": 1000.0, "mean_e2el_ms": 3000.0}


def _spec(drafts, draft_tokens, accepted, per_pos):
    return {"spec_decode": {"num_drafts": drafts, "num_draft_tokens": draft_tokens, "num_accepted_tokens": accepted,
                            "accepted_per_pos": per_pos}}


def test_spec_decode_stats_are_vllm_bench_serves_formulas():
    """The spec_decode_* keys of two readings, as vllm bench serve's benchmark computes them: counter deltas;
    acceptance rate = accepted / draft tokens (%), length = 1 + accepted / drafts (0 without drafts); each
    position's accepted / drafts, a position read before but not after taken as unchanged, positions in numeric
    order; no keys at all without both readings or without draft tokens across the run."""
    before = _spec(2, 6, 3, {"0": 2, "1": 1, "10": 0})
    after = _spec(42, 66, 41, {"0": 5, "10": 4, "2": 7})
    assert spec_decode_stats(before, after) == {
        "spec_decode_acceptance_rate": 38 / 60 * 100, "spec_decode_acceptance_length": 1 + 38 / 40,
        "spec_decode_num_drafts": 40, "spec_decode_draft_tokens": 60, "spec_decode_accepted_tokens": 38,
        "spec_decode_per_position_acceptance_rates": [3 / 40, 0.0, 7 / 40, 4 / 40]}
    one = spec_decode_stats(before, _spec(3, 7, 3, {"0": 2}))  # one draft of one token, rejected
    assert (one["spec_decode_acceptance_length"], one["spec_decode_per_position_acceptance_rates"]) == (1.0, [0.0] * 3)
    none = spec_decode_stats(before, _spec(2, 9, 4, {"0": 3}))  # draft tokens but no draft counted
    assert none["spec_decode_acceptance_length"] == 0.0 and none["spec_decode_per_position_acceptance_rates"] == []
    assert none["spec_decode_acceptance_rate"] == pytest.approx(100 / 3)
    assert spec_decode_stats(before, before) == {} and spec_decode_stats(before, _spec(9, 5, 9, {})) == {}
    assert spec_decode_stats(None, after) == spec_decode_stats(before, {}) == {}
    assert spec_decode_stats({"spec_decode": None}, after) == {}
