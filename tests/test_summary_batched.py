"""summarize_open takes the chunk times of many requests at once (issue 12): one diff over their
concatenation, the gaps across request boundaries dropped, gives the pooled ITLs of a diff per request,
and the chunks per 1-s bucket are those counted request by request. Sizes straddle the 2**19-chunk
batch, so several batches (and one-chunk requests at their edges) are taken."""
import numpy as np
import pytest

from simulator.records import RunResult
from simulator.summary import Pooled, summarize_open
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
