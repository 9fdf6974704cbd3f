"""summarize_open pools the chunk times of records that view a common array (a simulated run's pages of
chunk times) a page at a time, each gap and chunk counted with the number of requests holding it (issue
12). The summary must equal the one of the same records holding copies of their chunk times (pooled a
request at a time), key for key and bit for bit."""
import copy

import numpy as np
import pytest

from simulator.load import OpenLoop
from simulator.profile import load_profile
from simulator.records import RunResult
from simulator.sim import simulate_open
from simulator.summary import summarize_open
from simulator.workload import RandomWorkload
from tests.helpers import rec

PCT = (1, 25, 50, 90, 99, 99.9)


def _copied(run: RunResult) -> RunResult:
    out = copy.copy(run)
    out.records = [copy.copy(r) for r in run.records]
    for r in out.records:
        if r.chunk_times is not None:
            r.chunk_times = np.array(r.chunk_times)  # owns its data: no page to share
            assert r.chunk_times.base is None
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert repr(a[k]) == repr(b[k]), (k, a[k], b[k])


def _sim(engine, n, prompt, out, rate):
    p = load_profile()
    for k, v in engine.items():
        setattr(p.engine, k, v)
    specs = RandomWorkload(prompt, out, 0.9, fmt=p.prompt_format).sample(n, 5)
    return simulate_open(p.validate(), specs, OpenLoop(rate, 0.7, seed=5))


@pytest.mark.parametrize("make", [
    lambda: _sim({}, 400, 4000, 500, 0.5),  # test H's shape: chunk times over several pages
    lambda: _sim({"num_blocks": 3000}, 300, 512, 256, 8.0),  # preemptions: records of several segments
    lambda: _sim({"max_num_batched_tokens": 256}, 200, 512, 256, 6.0),
], ids=["H", "preemptions", "budget256"])
def test_simulated_records_summarise_as_their_copies(make):
    run = make()
    shared = sum(r.chunk_times.base is not None for r in run.records if r.ok)
    assert shared > len(run.records) // 2  # most records view the pages
    _same(summarize_open(run, percentiles=PCT), summarize_open(_copied(run), percentiles=PCT))


def test_views_of_any_array_overlapping_or_not_summarise_as_copies():
    rng = np.random.default_rng(3)
    base = np.cumsum(np.round(rng.exponential(0.02, 5000), 3)) + 1.0
    other = np.cumsum(np.round(rng.exponential(0.03, 800), 3)) + 2.0
    ints = np.arange(100, 300)
    recs = []
    for i in range(600):
        b = base if i % 3 else other
        lo = int(rng.integers(0, len(b) - 1))
        n = int(rng.integers(1, min(200, len(b) - lo) + 1))
        ct = b[lo:lo + n]
        if i % 50 == 7:
            ct = b[lo:lo + 2 * n:2]  # a strided view: not a page span
        if i % 70 == 9:
            ct = ints[lo % 150:lo % 150 + n % 50 + 1].astype(np.float64)  # owns its data
        recs.append(rec(i, float(ct[0]) - 0.5, ct, out=len(ct)))
    recs.append(rec(600, 1.0, [], error="refused"))
    run = RunResult(records=recs, start_time=0.0, end_time=max(float(r.end_time) for r in recs), kind="open")
    _same(summarize_open(run, percentiles=PCT), summarize_open(_copied(run), percentiles=PCT))
