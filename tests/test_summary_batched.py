"""summarize_open takes the chunk times of many requests at once (issue 12): one diff over their
concatenation, the gaps across request boundaries dropped, gives the pooled ITLs of a diff per request,
and the chunks per 1-s bucket are those counted request by request. Sizes straddle the 2**19-chunk
batch, so several batches (and one-chunk requests at their edges) are taken."""
import numpy as np
import pytest

from collections import Counter

from simulator import summary
from simulator.records import RunResult
from simulator.summary import Pooled, peak_concurrency_bucket, summarize_open
from tests.helpers import rec


def _run(seed, n, mean_len):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        start = float(rng.uniform(0, 500))
        k = int(rng.integers(1, 2 * mean_len)) if rng.random() > 0.05 else 1  # some one-chunk requests
        gaps = np.round(rng.exponential(0.02, k), 4)  # repeated gaps, as a simulation gives
        chunks = start + 0.1 + np.cumsum(gaps)
        recs.append(rec(i, start, chunks, out=k))
    recs.append(rec(n, 1.0, [], error="refused"))  # a failed request: not pooled
    return RunResult(records=recs, start_time=0.0, end_time=max(float(r.end_time) for r in recs), kind="open")


@pytest.mark.parametrize("seed,n,mean_len", [(1, 1, 5), (2, 7, 3), (3, 3000, 400), (4, 5000, 150)])
def test_batched_gaps_and_buckets_equal_request_by_request(seed, n, mean_len):
    run = _run(seed, n, mean_len)
    got = summarize_open(run, percentiles=(1, 25, 50, 90, 99, 99.9))
    ok = [r for r in run.records if r.ok]
    ref = Pooled()
    for r in ok:
        ref.add(np.diff(r.chunk_times))
    want = ref.stats("itl", (1, 25, 50, 90, 99, 99.9))
    assert {k: got[k] for k in want} == want
    t_min = min(r.start_time for r in ok)
    per_second = np.zeros(int(max(r.chunk_times[-1] for r in ok) - t_min) + 1, dtype=np.int64)
    for r in ok:
        np.add.at(per_second, (r.chunk_times - t_min).astype(np.int64), 1)
    assert got["max_output_tokens_per_s"] == float(per_second.max())


def _per_second_peak(ok):
    """vllm bench serve's peak output throughput by its definition: chunks per whole second since the first send."""
    t_min = min(r.start_time for r in ok)
    return max(Counter(int(t - t_min) for r in ok for t in r.chunk_times).values())


@pytest.mark.parametrize("seed,n,mean_len", [(2, 7, 3), (3, 3000, 40)])
def test_seconds_counted_one_by_one_past_the_dense_bound_give_the_same_peak(monkeypatch, seed, n, mean_len):
    run = _run(seed, n, mean_len)
    dense = summarize_open(run)
    monkeypatch.setattr(summary, "DENSE_SECONDS", 0)
    sparse = summarize_open(run)
    assert sparse == dense and dense["max_output_tokens_per_s"] == _per_second_peak([r for r in run.records if r.ok])


def test_a_run_over_a_year_is_summarized_without_an_array_over_its_seconds():
    """At a request a day an array of its seconds held 10^7 counts; at 1e-9 req/s (3e9 s) it never came back."""
    rng = np.random.default_rng(5)
    recs = []
    for i, start in enumerate(np.sort(rng.uniform(0, 3e9, 40))):
        chunks = start + 0.3 + np.cumsum(rng.exponential(0.05, 30))
        recs.append(rec(i, float(start), chunks, out=30))
    recs.append(rec(40, float(recs[-1].start_time) + 0.5, recs[-1].chunk_times + 0.01, out=30))  # two at once
    run = RunResult(records=recs, start_time=0.0, end_time=max(float(r.end_time) for r in recs), kind="open")
    got = summarize_open(run)
    assert got["max_output_tokens_per_s"] == _per_second_peak(recs) > 20
    assert got["max_concurrent_requests"] == 2 and got["completed"] == 41


def test_peak_concurrency_buckets_as_vllm_counts_them_second_by_second():
    rng = np.random.default_rng(8)
    for span in (3.0, 40.0, 1e4):
        starts = rng.uniform(0, span, 60)
        ends = starts + rng.exponential(span / 20, 60)
        t0 = starts.min()
        lo, hi = (starts - t0).astype(int), (ends - t0).astype(int)
        per_second = np.zeros(hi.max() + 1, dtype=int)  # vLLM's: every second from the first send, ends inclusive
        for a, b in zip(lo, hi):
            per_second[a:b + 1] += 1
        assert peak_concurrency_bucket(starts, ends) == per_second.max()
