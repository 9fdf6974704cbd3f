"""Summary definitions, checked against hand-computed values."""

import numpy as np
import pytest

from simulator.records import ClosedLoopFacts, RequestRecord, RunResult
from simulator.summary import (format_closed_table, format_open_summary, peak_concurrency_bucket,
                               peak_concurrency_sweep, peak_window_rate, summarize_closed, summarize_open)
from tests.helpers import rec


def test_open_metrics_by_hand():
    # request 0: sent 0.0, chunks at 1.0, 1.5, 2.5 -> ttft 1.0, itls 0.5, 1.0, e2el 2.5, tpot (2.5-1)/2 = 0.75
    # request 1: sent 1.0, chunks at 3.0, 3.2 -> ttft 2.0, itl 0.2, e2el 2.2, tpot 0.2
    # request 2: sent 2.0, one chunk at 2.4 (1 token: no tpot), ttft 0.4, e2el 0.4
    # request 3: failed
    r = [rec(0, 0.0, [1.0, 1.5, 2.5], prompt=100), rec(1, 1.0, [3.0, 3.2], prompt=50),
         rec(2, 2.0, [2.4], prompt=10), rec(3, 2.5, [], prompt=7, out=0, error="HTTP 500")]
    s = summarize_open(RunResult(r, 0.0, 4.0, "open"))
    assert s["completed"] == 3 and s["failed"] == 1
    assert s["total_input_tokens"] == 160 and s["total_output_tokens"] == 6
    assert s["duration"] == 4.0
    assert s["request_throughput"] == pytest.approx(0.75)
    assert s["output_throughput"] == pytest.approx(1.5)
    assert s["total_token_throughput"] == pytest.approx(166 / 4)
    assert s["mean_ttft_ms"] == pytest.approx(1000 * (1.0 + 2.0 + 0.4) / 3)
    assert s["median_ttft_ms"] == pytest.approx(1000.0)
    assert s["p99_ttft_ms"] == pytest.approx(1000 * np.percentile([1.0, 2.0, 0.4], 99))
    assert s["mean_tpot_ms"] == pytest.approx(1000 * (0.75 + 0.2) / 2)  # unweighted over requests with >1 token
    assert s["mean_itl_ms"] == pytest.approx(1000 * (0.5 + 1.0 + 0.2) / 3)  # pooled over chunks
    assert s["std_e2el_ms"] == pytest.approx(1000 * np.std([2.5, 2.2, 0.4]))
    # chunk times relative to the first start 0.0: bins 1,1,2,3,3,2 -> max 2 in one second
    assert s["max_output_tokens_per_s"] == 2
    # intervals [0,2.5], [1,3.2], [2,2.4]: at t=2.2 all three run
    assert s["max_concurrent_requests"] == 3
    assert s["max_concurrent_requests_sweep"] == 3


def test_peak_concurrency_rules_differ_as_in_vllm():
    # back to back: [0, 1) then [1, 2): the sweep sees 1, the inclusive buckets see 2
    starts, ends = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    assert peak_concurrency_sweep(starts, ends) == 1
    assert peak_concurrency_bucket(starts, ends) == 2
    # within one second but disjoint: buckets overcount
    assert peak_concurrency_bucket(np.array([0.1, 0.6]), np.array([0.4, 0.9])) == 2
    assert peak_concurrency_sweep(np.array([0.1, 0.6]), np.array([0.4, 0.9])) == 1


def test_empty_run_reports_zeros():
    s = summarize_open(RunResult([rec(0, 0.0, [], out=0, error="refused")], 0.0, 1.0, "open"))
    assert s["completed"] == 0 and s["failed"] == 1 and s["mean_ttft_ms"] == 0.0


def test_peak_window_rate():
    # llama-benchy 0.4.0's window is (t - 1, t]: the token exactly 1 s before is out
    assert peak_window_rate(np.array([0.0, 0.5, 1.0, 1.5, 2.0])) == 2
    assert peak_window_rate(np.array([0.0, 0.5, 0.99, 1.5, 2.0])) == 3
    assert peak_window_rate(np.array([0.0, 0.25, 0.5])) == pytest.approx(3 / 0.5)  # span < 1 s


def test_closed_metrics_by_hand():
    # c=2, one run, latency 0.1 s. Request a: start 0, first response 0.5 (role chunk, no content),
    # tokens at 0.6, 0.8, 1.0. Request b: start 0, tokens at 1.0, 1.2, 1.4, 1.6.
    a = rec(0, 0.0, [0.5, 0.6, 0.8, 1.0], prompt=100, out=3, mask=[False, True, True, True], test="t", batch=0)
    b = rec(1, 0.0, [1.0, 1.2, 1.4, 1.6], prompt=100, out=4, test="t", batch=0)
    run = RunResult([a, b], 0.0, 1.6, "closed",
                    closed_loop=ClosedLoopFacts(tests={"t": (100, 4, 0, 2)}, latency_s=0.1))
    (row,) = summarize_closed(run)
    m = row.metrics
    assert m["ttfr"][0] == pytest.approx((500 + 1000) / 2)
    assert m["e2e_ttft"][0] == pytest.approx((600 + 1000) / 2)
    assert m["est_ppt"][0] == pytest.approx((400 + 900) / 2)
    assert m["pp_req_throughput"][0] == pytest.approx((100 / 0.4 + 100 / 0.9) / 2)
    assert m["pp_req_throughput"][1] == pytest.approx(np.std([100 / 0.4, 100 / 0.9]))
    # batch pp: 200 tokens / (max first content token 1.0 - min start 0.0)
    assert m["pp_throughput"][0] == pytest.approx(200.0)
    # tg per request: a (3-1)/(1.0-0.6) = 5, b (4-1)/(1.6-1.0) = 5
    assert m["tg_req_throughput"][0] == pytest.approx(5.0)
    # batch tg: (7 tokens - 2 requests) / (1.6 - 0.6)
    assert m["tg_throughput"][0] == pytest.approx(5.0)
    table = format_closed_table([row], model="m")
    assert "pp100 (c2)" in table and "tg4 (c2)" in table and "200.00 ± 0.00" in table


def test_closed_metrics_count_the_tokens_of_each_chunk():
    # llama-benchy 0.4.0 counts tokens per chunk (token_ids) and spreads a chunk's tokens over the
    # time since the token before: a speculative step's chunk of 3 tokens is 3 token timestamps.
    # Request: role chunk at 0.5, then chunks of 1, 3, 2 tokens at 0.6, 0.8, 1.0.
    a = rec(0, 0.0, [0.5, 0.6, 0.8, 1.0], prompt=100, out=6, mask=[False, True, True, True], test="t")
    a.chunk_tokens = np.array([0, 1, 3, 2])
    run = RunResult([a], 0.0, 1.0, "closed",
                    closed_loop=ClosedLoopFacts(tests={"t": (100, 6, 0, 1)}, latency_s=0.1))
    (row,) = summarize_closed(run)
    assert row.metrics["tg_req_throughput"][0] == pytest.approx((6 - 1) / (1.0 - 0.6))
    assert row.metrics["peak_throughput"][0] == pytest.approx(6 / 0.4)  # span < 1 s: count / span
    np.testing.assert_allclose(a.content_token_times(), [0.6, 0.6 + 0.2 / 3, 0.6 + 0.4 / 3, 0.8, 0.9, 1.0])
    # vllm bench serve's metrics stay per chunk (ITL) and per usage token (TPOT)
    m = summarize_open(RunResult([a], 0.0, 1.0, "open"))
    assert m["mean_itl_ms"] == pytest.approx(np.mean([100, 200, 200]))
    assert m["mean_tpot_ms"] == pytest.approx((1000 - 500) / 5)


def test_open_summary_block_has_every_metric():
    r = [rec(0, 0.0, [1.0, 1.5, 2.5]), rec(1, 1.0, [3.0, 3.2])]
    text = format_open_summary(summarize_open(RunResult(r, 0.0, 4.0, "open")), rate=0.3)
    for label in ("Successful requests", "Request rate configured", "Peak concurrent requests", "Mean TTFT",
                  "P99 TTFT", "Mean TPOT", "P90 ITL", "Median E2EL", "Total token throughput"):
        assert label in text


def test_a_request_is_ok_with_no_error_and_a_chunk_and_its_ttft_and_e2el_run_from_its_send():
    r = rec(0, 1.0, [1.5, 2.0, 3.25], scheduled=0.5)
    assert r.ok and (r.ttft, r.e2el) == (0.5, 2.25)  # from start_time (sent), not scheduled_time
    silent = rec(1, 1.0, [])  # vllm bench serve: "Never received a valid chunk to calculate TTFT."
    assert not silent.ok and (silent.ttft, silent.e2el) == (None, None)
    failed = rec(2, 1.0, [1.5], error="HTTP 500")
    assert not failed.ok and (failed.ttft, failed.e2el) == (None, None)


def test_token_times_of_chunks_of_several_tokens_and_of_none():
    """llama-benchy 0.4.0 stamps a chunk's k tokens evenly after the token before; the first content chunk's
    all at its own time; a chunk of no tokens stamps nothing and is no token before."""
    r = rec(0, 0.0, [1.0, 1.4])
    r.chunk_tokens = np.array([2, 2])
    np.testing.assert_allclose(r.content_token_times(), [1.0, 1.0, 1.2, 1.4])
    r = rec(0, 0.0, [1.0, 1.2, 1.4])
    r.chunk_tokens = np.array([1, 0, 2])
    np.testing.assert_allclose(r.content_token_times(), [1.0, 1.2, 1.4])
    r.chunk_tokens = np.array([0, 0, 0])
    assert len(r.content_token_times()) == 0


def test_record_json_round_trip():
    r = rec(3, 1.0, [1.5, 2.0], mask=[False, True])
    r2 = RequestRecord.from_json(r.to_json())
    assert r2.request_id == 3 and np.array_equal(r2.chunk_times, r.chunk_times)
    assert r2.first_token_time == 2.0 and r2.first_response_time == 1.5
    assert r2.chunk_tokens is None and "chunk_tokens" not in r.to_json()
    r.chunk_tokens = np.array([0, 4])
    assert np.array_equal(RequestRecord.from_json(r.to_json()).chunk_tokens, [0, 4])
    # the optional keys a records.jsonl line may lack
    bare = RequestRecord.from_json({"request_id": 1, "prompt_tokens": 5, "output_tokens": 0, "scheduled_time": 0.0,
                                    "start_time": 0.0})
    assert (bare.batch, bare.preemptions, bare.test, bare.error, len(bare.chunk_times)) == (0, 0, "", None, 0)


def test_pooled_equals_numpy_on_the_expanded_sample():
    from simulator.summary import Pooled
    rng = np.random.default_rng(0)
    parts = [rng.choice([0.1, 0.2, 0.35, 1.7], size=int(k)) for k in rng.integers(1, 50, 40)]
    parts.append(rng.random(30))
    pooled = Pooled(batch=100)
    for p in parts:
        pooled.add(p)
    got = pooled.stats("itl", (1, 50, 90, 95, 99, 99.9))
    x = np.concatenate(parts)  # numpy itself on the expanded sample, as vllm computes it
    want = {"mean_itl_ms": np.mean(x) * 1000, "median_itl_ms": np.median(x) * 1000, "std_itl_ms": np.std(x) * 1000,
            **{f"p{p}_itl_ms": np.percentile(x, p) * 1000 for p in (1, 50, 90, 95, 99)},
            "p99.9_itl_ms": np.percentile(x, 99.9) * 1000}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k


def test_sweep_peak_counts_a_request_sent_as_another_finished_once():
    """A client semaphore sends the next request the instant one finishes: [5.529367, 15.1532) then
    [15.1532, 16). 5.529367 + (15.1532 - 5.529367) is 15.153200000000002, so a sweep over start + e2el
    saw them overlap."""
    s0, end = 5.529367, 15.1532
    assert s0 + (end - s0) > end
    recs = [RequestRecord(request_id=0, prompt_tokens=4, output_tokens=2, scheduled_time=s0, start_time=s0,
                          chunk_times=np.array([6.0, end])),
            RequestRecord(request_id=1, prompt_tokens=4, output_tokens=2, scheduled_time=s0, start_time=end,
                          chunk_times=np.array([15.5, 16.0]))]
    assert summarize_open(RunResult(recs, s0, 16.0, "open"))["max_concurrent_requests_sweep"] == 1


def test_probe_keys_by_hand_and_none_without_a_successful_probe():
    """vllm bench serve's probe keys: successes and failures counted, then numpy's median, 99th percentile and
    max of the successes' end-to-end latencies (start to last chunk), in ms; the load's own keys unchanged."""
    load = [rec(0, 0.0, [1.0, 2.0]), rec(1, 0.5, [1.5, 3.0])]
    probes = [rec(0, 0.0, [0.2], test="probe"), rec(1, 0.7, [1.6], test="probe"),
              rec(2, 2.1, [], out=0, error="HTTP 503", test="probe"), rec(3, 2.4, [2.5], test="probe")]
    s = summarize_open(RunResult(load, 0.0, 3.0, "open", probes=probes))
    lats = [0.2, 0.9, 0.1]
    assert (s["probe_completed"], s["probe_failed"]) == (3, 1)
    assert s["probe_median_e2el_ms"] == pytest.approx(200.0)
    assert s["probe_p99_e2el_ms"] == pytest.approx(1000 * np.percentile(lats, 99))
    assert s["probe_max_e2el_ms"] == pytest.approx(900.0)
    plain = summarize_open(RunResult(load, 0.0, 3.0, "open"))
    assert {k: v for k, v in s.items() if not k.startswith("probe_")} == plain
    assert "Probe requests completed:                3" in format_open_summary(s)
    assert "Probe" not in format_open_summary(plain)
    failed = summarize_open(RunResult(load, 0.0, 3.0, "open", probes=[probes[2]]))
    assert not any(k.startswith("probe_") for k in failed)  # as vLLM: no probe keys when none succeeded
