"""The engine model: vLLM V1 scheduling rules, invariants, queueing theory, fast-forward."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from simulator.load import ClosedLoop, OpenLoop
from simulator.sim import simulate_closed, simulate_open
from simulator.stepmodel import PhysicalStepModel
from simulator.workload import RequestSpec
from tests.helpers import same_records, tiny_profile


def spec(p, o, max_tokens=None):
    return RequestSpec(prompt_tokens=p, max_tokens=max_tokens or o, output_tokens=o)


def run(profile, specs, rate=math.inf, trace=None, ff=True, cap=None, seed=0):
    return simulate_open(profile, specs, OpenLoop(rate=rate, max_concurrency=cap, seed=seed), fast_forward=ff,
                         trace=trace)


def test_chunked_prefill_splits_a_long_prompt_by_the_budget():
    steps = []
    prof = tiny_profile(budget=64, async_=False)
    r = run(prof, [spec(200, 3)], trace=steps.append)
    # 200 prompt tokens in 64-token chunks: 64, 64, 64, 8 (+ first token), then 2 decodes
    assert [s["tokens"] for s in steps] == [64, 64, 64, 8, 1, 1]
    assert r.records[0].output_tokens == 3 and len(r.records[0].chunk_times) == 3


def test_running_decodes_come_before_a_new_prefill():
    steps = []
    prof = tiny_profile(budget=16, seqs=8, async_=False)
    # request A decodes while B (40 tokens) arrives: each step A takes 1 token, B gets the other 15
    run(prof, [spec(4, 30), spec(40, 2)], rate=1e6, trace=steps.append)
    assert steps[0]["tokens"] == 4
    assert [s["tokens"] for s in steps[1:4]] == [16, 16, 11]  # 1 decode + 15, 1 + 15, 1 + 10


def test_max_num_seqs_queues_requests():
    prof = tiny_profile(budget=512, seqs=2, async_=False)
    r = run(prof, [spec(10, 20)] * 4)
    ttft = sorted(x.ttft for x in r.records)
    # two start at once, the other two wait for a slot: their TTFT is about one full request longer
    assert ttft[1] < ttft[2] * 0.2


def test_preemption_pops_the_most_recent_request_and_recomputes():
    steps = []
    # 10 blocks of 4 tokens: two requests of 12-token prompts fit (3 blocks each) but cannot both grow to 20+
    prof = tiny_profile(budget=64, seqs=4, num_blocks=10, block=4, async_=False)
    r = run(prof, [spec(12, 12), spec(12, 12)], trace=steps.append)
    assert r.num_preemptions >= 1
    assert all(x.ok and x.output_tokens == 12 for x in r.records)
    assert r.records[1].preemptions >= 1 and r.records[0].preemptions == 0  # the later admission is the victim
    assert max(s["kv_used"] for s in steps) <= 10


def test_requests_too_long_are_rejected_like_vllm():
    prof = tiny_profile(max_model_len=100, num_blocks=50, block=4)
    r = run(prof, [spec(90, 20), spec(10, 5), spec(60, 39)])
    assert "maximum context length" in r.records[0].error
    assert r.records[1].ok
    small = tiny_profile(num_blocks=5, block=4)
    r2 = run(small, [spec(30, 2)])
    assert "KV blocks" in r2.records[0].error


def test_a_long_prompt_waits_for_the_window_plus_every_batch_in_flight():
    """vLLM 0.32 admits a prompt longer than its sliding window only with blocks free for the window plus
    the tokens of every batch in flight (twice the budget with async scheduling), not for the chunk it
    takes: a cache one block short of that serves nothing of it, whatever the chunk would hold."""
    # window 16, blocks of 4, budget 8: a 100-token prompt asks 25 full blocks + 2 sliding groups x
    # (ceil((15 + 16) / 4) + 1 = 9) = 43 blocks with async scheduling, 39 without; its chunks hold 39
    for async_, need in ((True, 43), (False, 39)):
        prof = tiny_profile(budget=8, block=4, window=16, num_blocks=need, async_=async_)
        assert run(prof, [spec(100, 1)]).records[0].ok
        prof = tiny_profile(budget=8, block=4, window=16, num_blocks=need - 1, async_=async_)
        assert f"needs {need} KV blocks but the cache holds {need - 1}" in run(prof, [spec(100, 1)]).records[0].error
    # max_model_len 100 keeps what any request holds (39 blocks) within 42, not what the longest asks (43): it is
    # refused still, where taking the held count for the most it can need left it waiting for ever
    prof = tiny_profile(budget=8, block=4, window=16, num_blocks=42, async_=True, max_model_len=100)
    assert "needs 43 KV blocks but the cache holds 42" in run(prof, [spec(99, 1)]).records[0].error
    # beside a request holding 20 of 60 blocks, 40 are free: the 39 its chunks come to hold, not the 43 it
    # asks. It waits for the first to end; taken in on its chunk's count, it ran out of blocks and was preempted
    for ff in (True, False):
        prof = tiny_profile(budget=8, block=4, window=16, num_blocks=60, async_=True)
        r = run(prof, [spec(40, 60), spec(100, 1)], ff=ff)
        a, b = r.records
        assert a.ok and b.ok and b.chunk_times[0] > a.end_time, (a.end_time, b.chunk_times)
        assert r.num_preemptions == 0


def test_the_limits_a_request_may_reach_are_served():
    """A prompt and max_tokens that fill max_model_len exactly are served, one more token is refused;
    a request whose KV (prompt + max_tokens - 1 computed tokens: the last sampled one never is) fills
    the cache exactly is served, one block more is refused; an empty prompt or max_tokens is refused."""
    at_len = run(tiny_profile(max_model_len=100, num_blocks=50, block=4), [spec(60, 40), spec(60, 41, 41)])
    assert at_len.records[0].ok and at_len.records[0].output_tokens == 40
    assert "maximum context length" in at_len.records[1].error
    at_cache = run(tiny_profile(num_blocks=10, block=4), [spec(20, 21), spec(20, 22)])
    assert at_cache.records[0].ok and at_cache.records[0].output_tokens == 21
    assert "needs 11 KV blocks but the cache holds 10" in at_cache.records[1].error
    # vLLM >= 0.32 cuts max_tokens to the context left: the cut request's KV is what must fit
    cut = tiny_profile(max_model_len=100, num_blocks=25, block=4)
    cut.engine.clamp_max_tokens = True
    at_cut = run(cut, [spec(60, 100), spec(60, 40, 41), spec(60, 101)])
    assert [r.output_tokens for r in at_cut.records[:2]] == [40, 40] and all(r.ok for r in at_cut.records[:2])
    assert "maximum context length" in at_cut.records[2].error  # max_tokens past max_model_len itself
    empty = run(tiny_profile(), [RequestSpec(prompt_tokens=0, max_tokens=5, output_tokens=5),
                                 RequestSpec(prompt_tokens=5, max_tokens=0, output_tokens=0)])
    assert all("must be >= 1" in r.error for r in empty.records)


def test_async_scheduling_adds_one_step_for_a_busy_engine_and_wastes_one_at_eos():
    sync = tiny_profile(async_=False, c0=0.1, c_tok=0, c_seq=0, c_ctx=0)
    asyn = tiny_profile(async_=True, c0=0.1, c_tok=0, c_seq=0, c_ctx=0)
    # an idle engine: TTFT is one step either way (vLLM schedules two steps at once when idle)
    assert run(sync, [spec(8, 5)]).records[0].ttft == pytest.approx(0.1)
    assert run(asyn, [spec(8, 5)]).records[0].ttft == pytest.approx(0.1)
    # a request arriving while another decodes waits for the step in flight plus the one queued behind it
    specs = [spec(8, 50), spec(8, 5)]
    t_sync = simulate_open(sync, specs, OpenLoop(rate=2 / 1.05)).records[1].ttft
    t_async = simulate_open(asyn, specs, OpenLoop(rate=2 / 1.05)).records[1].ttft
    assert t_async > t_sync
    # EOS (output < max_tokens) holds the slot one extra step only with async scheduling
    steps_s, steps_a = [], []
    run(sync, [spec(8, 5, max_tokens=50)], trace=steps_s.append, ff=False)
    run(asyn, [spec(8, 5, max_tokens=50)], trace=steps_a.append, ff=False)
    assert len(steps_a) == len(steps_s) + 1


@pytest.mark.parametrize("async_, factors", [(True, None), (False, None), (False, [[1, 1.2], [3, 0.7], [6, 1.1]])])
def test_fast_forward_gives_identical_records(async_, factors):
    prof = tiny_profile(budget=256, seqs=6, num_blocks=400, block=8, async_=async_, noise=0.1, request_s=0.01,
                        chunk_s=0.001, frontend_s=0.001, frontend_per_token_s=1e-5, wake_s=0.002)
    if factors:  # a physical model with per-batch decode corrections: fast-forward stays exact
        prof.step_model = PhysicalStepModel(t0=0.01, t_seq=0.002, weight_bytes_fixed=1e9, n_experts=0, bw_weights=1e11,
                                            kv_bytes_full=1e4, window=None, flops=1e12, decode_factors=factors)
    rng = np.random.default_rng(1)
    specs = [spec(int(p), int(o), int(o) + int(e)) for p, o, e in
             zip(rng.integers(1, 300, 120), rng.integers(1, 200, 120), rng.integers(0, 3, 120))]
    for rate, cap in ((2.0, None), (8.0, 4), (math.inf, None)):
        trace_ff, trace_step, stats = [], [], []
        a = simulate_open(prof, specs, OpenLoop(rate=rate, max_concurrency=cap), fast_forward=True,
                          trace=trace_ff.append, stats=stats)
        b = simulate_open(prof, specs, OpenLoop(rate=rate, max_concurrency=cap), fast_forward=False,
                          trace=trace_step.append, stats=stats)
        _fast_forward_engaged(trace_ff, trace_step, *stats)
        same_records(a, b)
    pat = ClosedLoop(pp=[50, 300], tg=[40], concurrency=[1, 3], runs=2)
    trace_ff, trace_step, stats = [], [], []
    a = simulate_closed(prof, pat, fast_forward=True, trace=trace_ff.append, stats=stats)
    b = simulate_closed(prof, pat, fast_forward=False, trace=trace_step.append, stats=stats)
    _fast_forward_engaged(trace_ff, trace_step, *stats)
    same_records(a, b)


@pytest.mark.parametrize("async_", [True, False])
def test_fast_forward_gives_identical_records_under_preemption(async_):
    prof = tiny_profile(budget=256, seqs=6, num_blocks=40, block=8, async_=async_, noise=0.1)
    rng = np.random.default_rng(1)
    specs = [spec(int(p), int(o), int(o) + int(e)) for p, o, e in
             zip(rng.integers(1, 150, 60), rng.integers(1, 150, 60), rng.integers(0, 3, 60))]
    trace_ff, trace_step, stats = [], [], []
    a = simulate_open(prof, specs, OpenLoop(rate=4.0), fast_forward=True, trace=trace_ff.append, stats=stats)
    b = simulate_open(prof, specs, OpenLoop(rate=4.0), fast_forward=False, trace=trace_step.append, stats=stats)
    assert b.num_preemptions > 0 and any(r.preemptions for r in b.records)  # the case preempts
    _fast_forward_engaged(trace_ff, trace_step, *stats)
    same_records(a, b)


@pytest.mark.parametrize("seed, seqs, blocks, block, window, async_", [
    (2, 8, 40, 16, None, True),  # a preempting step was once taken as the start of a run: the victim's
    (2, 5, 80, 8, 16, True),     # re-admission one step later was skipped (async drops its in-flight tokens,
    (1, 3, 30, 4, None, True),   # so it can need fewer blocks than it gave up)
    (2, 8, 30, 8, None, False),
    (2, 4, 90, 4, 16, False)])
def test_fast_forward_gives_identical_records_under_kv_pressure(seed, seqs, blocks, block, window, async_):
    prof = tiny_profile(budget=64, seqs=seqs, num_blocks=blocks, block=block, window=window, async_=async_,
                        noise=0.1)
    rng = np.random.default_rng(seed)
    specs = [spec(int(p), int(o), int(o) + int(e)) for p, o, e in
             zip(rng.integers(1, 120, 40), rng.integers(1, 120, 40), rng.integers(0, 3, 40))]
    trace_ff, trace_step, stats = [], [], []
    a = simulate_open(prof, specs, OpenLoop(rate=4.0, seed=seed), fast_forward=True, trace=trace_ff.append,
                      stats=stats)
    b = simulate_open(prof, specs, OpenLoop(rate=4.0, seed=seed), fast_forward=False, trace=trace_step.append,
                      stats=stats)
    assert b.num_preemptions > 0  # the case preempts
    _fast_forward_engaged(trace_ff, trace_step, *stats)
    same_records(a, b)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), budget=st.sampled_from([16, 64, 256]), seqs=st.integers(1, 8),
       blocks=st.integers(24, 80), block=st.sampled_from([4, 8, 16]), async_=st.booleans(),
       window=st.sampled_from([None, 16]), rate=st.sampled_from([1.0, 4.0, 20.0, math.inf]))
def test_fast_forward_matches_stepping_under_kv_pressure(seed, budget, seqs, blocks, block, async_, window, rate):
    """Fast-forward against step-by-step, with a KV cache small enough to preempt often."""
    prof = tiny_profile(budget=budget, seqs=seqs, num_blocks=blocks, block=block, window=window, async_=async_,
                        noise=0.1)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    specs = [spec(int(p), int(o), int(o) + int(e)) for p, o, e in
             zip(rng.integers(1, 150, n), rng.integers(1, 150, n), rng.integers(0, 3, n))]
    a = simulate_open(prof, specs, OpenLoop(rate=rate, seed=seed), fast_forward=True)
    b = simulate_open(prof, specs, OpenLoop(rate=rate, seed=seed), fast_forward=False)
    same_records(a, b)


def _fast_forward_engaged(trace_ff, trace_step, ff, step):
    """Fast-forward really jumped (else the comparison is step-by-step against itself)."""
    assert any(s["k"] > 1 for s in trace_ff), "fast-forward never took a multi-step jump"
    assert all(s["k"] == 1 for s in trace_step)
    assert ff.steps == step.steps == len(trace_step)  # (a jump the trace logs may shrink at an arrival)
    assert step.events == step.steps
    assert ff.events < ff.steps  # whole decode runs took one event each
    assert ff.preemptions == step.preemptions


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(8, 256), seqs=st.integers(1, 8), blocks=st.one_of(st.none(), st.integers(30, 200)),
       block=st.sampled_from([2, 4, 16]), async_=st.booleans(), window=st.sampled_from([None, 16]),
       reqs=st.lists(st.tuples(st.integers(1, 120), st.integers(1, 40), st.integers(0, 5), st.floats(0, 5)),
                     min_size=1, max_size=25))
def test_invariants(budget, seqs, blocks, block, async_, window, reqs):
    prof = tiny_profile(budget=budget, seqs=seqs, num_blocks=blocks, block=block, async_=async_, window=window)
    specs = [spec(p, o, o + e) for p, o, e, _ in reqs]
    steps = []
    r = simulate_open(prof, specs, OpenLoop(rate=3.0, seed=len(reqs)), trace=steps.append)
    first_admission = []
    for s in steps:
        assert s["tokens"] <= budget * s["k"] if s["k"] > 1 else s["tokens"] <= budget  # token budget
        assert s["running"] <= seqs
        if blocks is not None:
            assert s["kv_used"] <= blocks  # KV never over capacity
        first_admission += [o for o in s["admitted"] if o not in first_admission]
    assert first_admission == sorted(first_admission)  # FCFS among first admissions
    assert len(r.records) == len(specs)  # every request finished or errored
    for rec, sp in zip(r.records, specs):
        if rec.error is None:
            assert rec.output_tokens == sp.output_tokens == len(rec.chunk_times)  # output tokens conserved
            assert np.all(np.diff(rec.chunk_times) > 0)
        else:
            assert "KV" in rec.error or "context length" in rec.error
    same_records(r, simulate_open(prof, specs, OpenLoop(rate=3.0, seed=len(reqs)), fast_forward=False))


def _single_server(service_tokens, rate, seed):
    """One request at a time, one step per request of c_tok * prompt seconds: an M/G/1 queue."""
    prof = tiny_profile(budget=10 ** 9, seqs=1, async_=False, c0=0.0, c_tok=1e-5, c_seq=0.0, c_ctx=0.0,
                        max_model_len=10 ** 9)
    specs = [spec(int(p), 1) for p in service_tokens]
    r = simulate_open(prof, specs, OpenLoop(rate=rate, burstiness=1.0, seed=seed))
    waits = np.array([x.ttft - 1e-5 * x.prompt_tokens for x in r.records])
    return waits.mean()


def test_md1_mean_wait():
    lam, s, n = 5.0, 0.1, 100_000  # rho = 0.5
    w = np.mean([_single_server(np.full(n, 10_000), lam, seed) for seed in range(3)])
    expected = lam * s * s / (2 * (1 - lam * s))  # M/D/1: rho*S / (2(1-rho))
    assert w == pytest.approx(expected, rel=0.02)


def test_mm1_mean_wait():
    lam, s, n = 5.0, 0.1, 100_000
    rng = np.random.default_rng(5)
    ws = []
    for seed in range(3):
        tokens = rng.geometric(1 / 10_000, size=n)  # geometric with mean 10k tokens: exponential service to 1e-4
        ws.append(_single_server(tokens, lam, seed))
    rho = lam * s
    assert np.mean(ws) == pytest.approx(rho * s / (1 - rho), rel=0.02)  # M/M/1: rho*S/(1-rho)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), budget=st.sampled_from([16, 64, 256]), seqs=st.integers(1, 12),
       blocks=st.sampled_from([None, 400, 2000]), block=st.sampled_from([4, 16]), async_=st.booleans(),
       window=st.sampled_from([None, 16, 64]), rate=st.sampled_from([2.0, 8.0, 40.0, math.inf]),
       threshold=st.sampled_from([0, 24]), cap=st.sampled_from([None, 3]))
def test_fast_forward_matches_stepping_with_members(seed, budget, seqs, blocks, block, async_, window, rate,
                                                     threshold, cap):
    """Fast-forward against step-by-step where the KV cache is ample, so decoding requests become
    members (counters in arrays, no per-request work per step); also where it stops being ample
    part-way (members written back), with early stops (output < max_tokens) and a prefill threshold."""
    prof = tiny_profile(budget=budget, seqs=seqs, num_blocks=blocks, block=block, window=window, async_=async_,
                        noise=0.1, request_s=0.01, chunk_s=0.001, frontend_s=0.001, wake_s=0.002)
    prof.engine.long_prefill_token_threshold = threshold
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    specs = [spec(int(p), int(o), int(o) + int(e)) for p, o, e in
             zip(rng.integers(1, 200, n), rng.integers(1, 120, n), rng.integers(0, 3, n))]
    a = simulate_open(prof, specs, OpenLoop(rate=rate, max_concurrency=cap, seed=seed), fast_forward=True)
    b = simulate_open(prof, specs, OpenLoop(rate=rate, max_concurrency=cap, seed=seed), fast_forward=False)
    same_records(a, b)


def test_members_are_used_and_match_stepping_on_the_shipped_profile():
    """The shipped profile under a chat-like load: decode runs and member steps, records identical."""
    from simulator.profile import load_profile
    from simulator.workload import RandomWorkload

    prof = load_profile()
    specs = RandomWorkload(512, 256, 0.5, fmt=prof.prompt_format).sample(150, 7)
    stats = []
    a = simulate_open(prof, specs, OpenLoop(2.0, 0.7, seed=7), stats=stats)
    b = simulate_open(prof, specs, OpenLoop(2.0, 0.7, seed=7), fast_forward=False, stats=stats)
    assert stats[0].max_members > 10  # many requests decoded as members at once
    assert stats[1].max_members == 0  # stepping one by one never takes the members path
    assert stats[0].events < stats[0].steps  # and decode runs still took several steps per event
    same_records(a, b)


@pytest.mark.parametrize("async_", [True, False])
def test_fast_forward_with_members_matches_stepping_in_closed_loops(async_):
    """llama-benchy's batches (all requests at once, then the next batch) with members: identical records."""
    prof = tiny_profile(budget=64, seqs=6, num_blocks=None, block=8, async_=async_, noise=0.1, request_s=0.01,
                        chunk_s=0.001, frontend_s=0.001, wake_s=0.002)
    pat = ClosedLoop(pp=[50, 300], tg=[40], concurrency=[1, 3, 6], runs=2)
    stats = []
    a = simulate_closed(prof, pat, fast_forward=True, stats=stats)
    b = simulate_closed(prof, pat, fast_forward=False, stats=stats)
    assert stats[0].events < stats[0].steps
    same_records(a, b)
