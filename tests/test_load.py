"""Load patterns at their boundaries: what OpenLoop and ClosedLoop accept and refuse, and llama-benchy's
row names. A mutation sweep of simulator/load.py (scripts/mutation_sweep.py) found these unpinned."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.load import ClosedLoop, LoadError, OpenLoop


@pytest.mark.parametrize("kw, says", [
    ({"rate": 0.0}, "--request-rate must be > 0"), ({"rate": -1.0}, "--request-rate must be > 0"),
    ({"rate": math.nan}, "--request-rate must be > 0"), ({"burstiness": 0.0}, "--burstiness must be > 0"),
    ({"max_concurrency": 0}, "--max-concurrency must be >= 1")])
def test_an_open_loop_vllm_would_not_run_is_refused(kw, says):
    with pytest.raises(LoadError, match=says):
        OpenLoop(**kw)


def test_the_smallest_open_loop_runs():
    one = OpenLoop(rate=2.0, burstiness=1e-3, max_concurrency=1)
    assert one.arrival_times(1) == pytest.approx([0.5])  # one request: its gap scaled to n / rate
    with pytest.raises(LoadError, match="--num-prompts must be >= 1, got 0"):
        one.arrival_times(0)
    np.testing.assert_array_equal(OpenLoop().arrival_times(3), [0.0, 0.0, 0.0])  # vLLM's default rate: inf
    # vllm bench serve's defaults (--request-rate inf, --burstiness 1, --seed 0; the conformance tests
    # hold the schedules to vLLM's own get_request)
    assert (OpenLoop().rate, OpenLoop().burstiness, OpenLoop().max_concurrency, OpenLoop().seed) == (math.inf, 1.0,
                                                                                                    None, 0)
    # a constant rate (burstiness inf): evenly spaced, the last at n / rate
    np.testing.assert_allclose(OpenLoop(rate=4.0, burstiness=math.inf).arrival_times(4), [0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("kw, says", [
    ({"pp": ()}, "needs at least one value each"), ({"concurrency": ()}, "needs at least one value each"),
    ({"combos": [(512, 32, 0)]}, r"concurrency >= 1\)"), ({"combos": [(512, 32, 0, 1, 9)]}, r"concurrency >= 1\)"),
    ({"combos": [(512, 32, 0, 0)]}, r"concurrency >= 1\)"), ({"concurrency": (1, 0)}, "values must be >= 1"),
    ({"runs": 0}, "--runs must be >= 1, got 0"), ({"warmup": -1}, "--warmup-runs must be >= 0, got -1")])
def test_a_closed_loop_llama_benchy_would_not_run_is_refused(kw, says):
    with pytest.raises(LoadError, match=says):
        ClosedLoop(**kw)


def test_the_smallest_closed_loop_runs():
    cl = ClosedLoop(pp=(1,), tg=(1,), depth=(0,), concurrency=(1,), runs=1, warmup=0, combos=[(1, 1, 0, 1)])
    (b,) = cl.batches(include_warmup=True)
    assert (b.run, b.concurrency, len(b.requests)) == (0, 1, 1)
    # warmup batches come first, numbered below 0, and only when asked for
    cl = ClosedLoop(pp=(64,), tg=(8,), concurrency=(2,), runs=2, warmup=2)
    assert [b.run for b in cl.batches(include_warmup=True)] == [-2, -1, 0, 1]
    assert [b.run for b in cl.batches()] == [0, 1]
    assert [len(b.requests) for b in cl.batches()] == [2, 2]
    # llama-benchy's prompt of pp tokens after depth tokens of context, answered with tg tokens
    r = ClosedLoop(pp=(64,), tg=(8,), depth=(100,)).batches()[0].requests[0]
    assert (r.prompt_tokens, r.max_tokens, r.output_tokens) == (164, 8, 8)


def test_row_names_carry_the_concurrency_only_when_some_test_is_concurrent():
    """llama-benchy 0.4.0 (results.py _generate_rows): ' (cN)' on every row name when the run's highest
    concurrency is over 1, on none otherwise."""
    assert ClosedLoop(concurrency=(1,)).test_names(512, 32, 0, 1) == ("pp512", "tg32")
    assert ClosedLoop(concurrency=(1,)).test_names(512, 32, 4096, 1) == ("pp512 @ d4096", "tg32 @ d4096")
    assert ClosedLoop(concurrency=(1, 2)).test_names(512, 32, 0, 1) == ("pp512 (c1)", "tg32 (c1)")
    assert ClosedLoop(concurrency=(2,)).test_names(512, 32, 0, 2) == ("pp512 (c2)", "tg32 (c2)")
