"""Load patterns at their boundaries: what OpenLoop and ClosedLoop accept and refuse, and llama-benchy's
row names. A mutation sweep of simulator/load.py (scripts/mutation_sweep.py) found these unpinned."""
from __future__ import annotations

import datetime
import math

import numpy as np
import pytest

from simulator.load import ClosedLoop, LoadError, OpenLoop, RampUp


@pytest.mark.parametrize("kw, says", [
    ({"rate": 0.0}, "--request-rate must be > 0"), ({"rate": -1.0}, "--request-rate must be > 0"),
    ({"rate": math.nan}, "--request-rate must be > 0"), ({"burstiness": 0.0}, "--burstiness must be > 0"),
    ({"max_concurrency": 0}, "--max-concurrency must be >= 1")])
def test_an_open_loop_vllm_would_not_run_is_refused(kw, says):
    with pytest.raises(LoadError, match=says):
        OpenLoop(**kw)


def test_the_smallest_open_loop_runs():
    assert OpenLoop(rate=0.05).arrival_times(2)[-1] == pytest.approx(40.0)  # an office's rate, below 1 req/s
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


@pytest.mark.parametrize("args, says", [
    (("step", 1, 4), "must be linear or exponential"), (("linear", 0, 4), "--ramp-up-start-rps must be > 0"),
    (("exponential", -1, 4), "--ramp-up-start-rps must be > 0"), (("linear", 5, 4), "a ramp goes up"),
    (("linear", 1, math.inf), "must be finite"), (("linear", math.nan, 4), "must be finite")])
def test_a_ramp_vllm_would_not_run_is_refused(args, says):
    with pytest.raises(LoadError, match=says):
        RampUp(*args)


def test_a_ramp_sets_each_requests_rate_and_its_own_schedule():
    lin, exp = RampUp("linear", 1, 5), RampUp("exponential", 2, 32)
    assert lin.rates(5) == [1.0, 2.0, 3.0, 4.0, 5.0] and exp.rates(5) == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert lin.rates(1) == [1.0]  # one request: progress 0 of max(n - 1, 1)
    assert RampUp("linear", 2, 2).rates(3) == [2.0] * 3  # a flat ramp is one vllm bench serve runs
    # gamma gaps of mean 1 / rate at any burstiness: 4000 requests at 4 req/s span about 1000 s
    assert OpenLoop(burstiness=0.5, seed=1, ramp_up=RampUp("linear", 4, 4)).arrival_times(4000)[-1] == \
        pytest.approx(1000, rel=0.05)
    # a constant gap a request at its own rate, summed: not rescaled to n / rate as a fixed rate is
    np.testing.assert_allclose(OpenLoop(burstiness=math.inf, ramp_up=lin).arrival_times(5),
                               np.cumsum([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5]))
    drawn = OpenLoop(seed=3, ramp_up=exp).arrival_times(400)
    gaps = np.diff(drawn)
    assert gaps[:100].mean() > 4 * gaps[-100:].mean()  # 1-2 req/s at the start, 8-16 at the end
    with pytest.raises(LoadError, match="the ramp sets the rate"):
        OpenLoop(rate=2.0, ramp_up=lin)
    assert OpenLoop(ramp_up=lin).describe()["ramp_up_strategy"] == "linear"
    assert OpenLoop(ramp_up=RampUp("linear", 0.5, 2)).ramp_keys() == {
        "ramp_up_strategy": "linear", "ramp_up_start_rps": 0.5, "ramp_up_end_rps": 2}  # vLLM writes whole ints


def test_a_ramps_rate_steps_are_stamped_at_the_first_send_that_reaches_them():
    ramp = RampUp("linear", 1, 5)  # rates 1, 2, 3, 4, 5 at sends 0.0, 0.5, 0.8, 1.0, 1.2 s
    ev = ramp.change_events([0.0, 0.5, 0.8, 1.0, 1.2], 5, wall_start=1_000_000.0)
    assert [e["rps"] for e in ev] == [1, 2, 3, 4, 5]
    sent = [datetime.datetime.fromisoformat(e["timestamp"]).timestamp() - 1_000_000.0 for e in ev]
    np.testing.assert_allclose(sent, [0.0, 0.5, 0.8, 1.0, 1.2], atol=1e-6)
    # a ramp that jumps several whole rates between two sends names each, at that send; one cut short stops
    ev = RampUp("linear", 1, 9).change_events([0.0, 2.0], 3, wall_start=0.0)
    assert [e["rps"] for e in ev] == [1, 2, 3, 4, 5]
    assert len({e["timestamp"] for e in ev[1:]}) == 1
    assert [e["rps"] for e in RampUp("linear", 0.5, 2.5).change_events([0, 1, 2], 3, 0.0)] == [0.5, 1, 2]
    assert RampUp.from_keys({"ramp_up_strategy": None, "ramp_up_start_rps": 3}) is None
    with pytest.raises(LoadError, match="needs both"):
        RampUp.from_keys({"ramp_up_strategy": "linear", "ramp_up_end_rps": 3})


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
