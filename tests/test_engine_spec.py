"""Speculative decoding's accepted drafts, draw by draw: each verify step of a request takes the next
number of the engine's generator (numpy default_rng([seed, 0x5BEC]).geometric(1 - acceptance)), one
per step in schedule order, however the engine draws them (it draws ahead in blocks); an acceptance
changed during the run continues the same generator from where single draws would have left it."""
import numpy as np
import pytest
import simpy

from simulator.engine import Engine
from simulator.load import OpenLoop
from simulator.records import RequestRecord
from simulator.sim import simulate_open
from simulator.summary import spec_decode_keys, summarize_open
from simulator.workload import RandomWorkload, RequestSpec
from tests.helpers import same_records, spec_profile


def _one_request(p, prompt, out, seed=0, switch=None):
    """One request alone on the engine; switch=(chunk, acceptance): the acceptance from that chunk on."""
    env = simpy.Environment()
    seen = [0]

    def on_emit(_rec, _t, _tokens):
        seen[0] += 1
        if switch is not None and seen[0] == switch[0]:
            p.engine.spec_acceptance = switch[1]

    eng = Engine(env, p, seed=seed, on_emit=on_emit)
    rec = _submit_at_zero(eng, 0, RequestSpec(prompt_tokens=prompt, max_tokens=out, output_tokens=out), lambda r: None)
    env.run()
    return rec


def _submit_at_zero(eng, i, spec, on_done):
    """Submit `spec` at time 0 with a fresh record (returned), the engine filling it in."""
    rec = RequestRecord(request_id=i, prompt_tokens=spec.prompt_tokens, output_tokens=0, scheduled_time=0.0,
                        start_time=0.0, max_tokens=spec.max_tokens)
    eng.submit(spec, 0.0, rec, on_done)
    return rec


def _expected(k, a, budget, prompt, out, seed=0, switch=None):
    """Chunk tokens of one request alone, drawing one geometric number per verify step."""
    rng = np.random.default_rng([seed, 0x5BEC])
    emitted, chunks = 1, [1]  # the prompt's step emits the first token
    while emitted < out:
        if switch is not None and len(chunks) == switch[0]:
            a = switch[1]
        d = max(0, min(k, budget - 1, out - emitted - 1))  # out_sched == emitted: no async with drafts
        acc = min(d, int(rng.geometric(1.0 - a)) - 1) if d and a > 0 else 0
        n = min(1 + acc, out - emitted)
        chunks.append(n)
        emitted += n
    return chunks


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("k,a,out", [(4, 0.7, 900), (15, 0.85, 3000), (3, 0.3, 200), (1, 0.5, 700)])
def test_each_verify_step_takes_the_next_draw(monkeypatch, inline, k, a, out):
    monkeypatch.setattr(Engine, "INLINE_DECODES", inline)
    p = spec_profile(k, a)
    rec = _one_request(p, 300, out, seed=5)
    want = _expected(k, a, p.engine.max_num_batched_tokens, 300, out, seed=5)
    got = rec.chunk_tokens.tolist() if rec.chunk_tokens is not None else [1] * len(rec.chunk_times)
    assert len(want) > 100 or k == 15  # long enough to cross several blocks of draws
    assert got == want
    assert rec.output_tokens == out


@pytest.mark.parametrize("prompt,budget", [(301, 100), (300, 100), (7, 3)])
def test_a_prompt_chunked_to_its_last_token_drafts_nothing_before_its_first_token(prompt, budget):
    """Drafts follow a sampled token: the step that computes a prompt's last token (a chunk of one here)
    verifies none, so the first chunk carries one token, as vLLM's first sample does."""
    p = spec_profile(4, 0.7, max_num_batched_tokens=budget)
    rec = _one_request(p, prompt, 400, seed=3)
    assert rec.chunk_tokens.tolist() == _expected(4, 0.7, budget, prompt, 400, seed=3)


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("at", [2, 30, 65, 66, 200])
def test_an_acceptance_changed_mid_run_continues_the_same_generator(monkeypatch, inline, at):
    monkeypatch.setattr(Engine, "INLINE_DECODES", inline)
    k = 4
    p = spec_profile(k, 0.7)
    rec = _one_request(p, 100, 2000, switch=(at, 0.2))
    want = _expected(k, 0.7, p.engine.max_num_batched_tokens, 100, 2000, switch=(at, 0.2))
    assert rec.chunk_tokens.tolist() == want


def test_no_acceptance_draws_nothing_and_every_chunk_is_one_token():
    p = spec_profile(4, 0.0)
    rec = _one_request(p, 100, 300)
    assert rec.chunk_tokens is None and len(rec.chunk_times) == 300


@pytest.mark.parametrize("blocks", [None, 900, 1200])
@pytest.mark.parametrize("budget,thr", [(2048, 0), (96, 64), (7, 0)])
def test_speculative_runs_identical_with_and_without_fast_forward(blocks, budget, thr):
    """Speculative decoding never takes decode runs, so fast_forward changes nothing, under a cache that
    preempts, chunked prefill, and a budget that caps the drafts."""
    p = spec_profile(4, 0.6, num_blocks=blocks, max_num_batched_tokens=budget, long_prefill_token_threshold=thr)
    specs = RandomWorkload(1200, 300, 0.6, fmt=p.prompt_format).sample(30, 7)
    stats = []
    a = simulate_open(p, specs, OpenLoop(rate=4.0, burstiness=0.7, seed=5), stats=stats)
    b = simulate_open(p, specs, OpenLoop(rate=4.0, burstiness=0.7, seed=5), fast_forward=False, stats=stats)
    same_records(a, b)
    assert stats[0].steps == stats[1].steps and stats[0].events == stats[0].steps
    assert all(r.chunk_tokens is not None for r in a.records if r.ok)
    if blocks == 900 and budget == 2048:
        assert a.num_preemptions > 0  # the small cache did preempt


@pytest.mark.parametrize("k,a", [(0, 0.0), (4, 0.6), (15, 0.85), (3, 0.0)])
@pytest.mark.parametrize("blocks", [None, 900])
@pytest.mark.parametrize("budget,thr,mml", [(2048, 0, 100000), (96, 64, 100000), (7, 0, 100000), (2048, 0, 1700)])
def test_decodes_taken_inline_are_what_the_general_path_takes(monkeypatch, k, a, blocks, budget, thr, mml):
    """The scheduler's inline decodes (plain, and speculative whose blocks fit) equal the general path's
    _drafts / _alloc / _take_spec / _take, step for step: drafts capped by budget, max_tokens and
    max_model_len, blocks allocated for the drafts, accepted drafts drawn in schedule order."""
    p = spec_profile(k, a, num_blocks=blocks, max_num_batched_tokens=budget, long_prefill_token_threshold=thr,
                     max_model_len=mml)
    specs = RandomWorkload(1200, 300, 0.6, fmt=p.prompt_format).sample(30, 7)
    pat = OpenLoop(rate=4.0, burstiness=0.7, seed=5)
    stats: list = []
    inline = simulate_open(p, specs, pat, fast_forward=False, stats=stats)
    monkeypatch.setattr(Engine, "INLINE_DECODES", False)
    general = simulate_open(p, specs, pat, fast_forward=False, stats=stats)
    same_records(inline, general)
    assert stats[0].steps == stats[1].steps
    assert any(r.ok for r in inline.records)
    if blocks and budget == 2048 and mml > 2000:
        assert inline.num_preemptions > 0  # the small cache did preempt
    if k and a and budget == 2048:
        assert any(r.chunk_tokens is not None and r.chunk_tokens.max() > 1 for r in inline.records if r.ok)


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("k,a,budget", [(0, 0.0, 2048), (4, 0.6, 2048), (4, 0.6, 7), (15, 0.9, 96)])
@pytest.mark.parametrize("async_", [True, False])
def test_every_kv_block_is_held_by_a_request_and_returned_when_it_ends(monkeypatch, inline, k, a, budget, async_):
    """At every step the cache's used blocks are the blocks the requests hold, a running request holds
    the blocks of every token it has computed (drafts included), a waiting one (preempted) none and has
    computed nothing (vLLM V1 preempts by recomputing the prompt and the tokens it had sampled), and
    the cache is empty once every request has ended: under a cache small enough to preempt."""
    monkeypatch.setattr(Engine, "INLINE_DECODES", inline)
    p = spec_profile(k, a, num_blocks=1000, max_num_batched_tokens=budget, async_scheduling=async_)
    env = simpy.Environment()
    seen = {"steps": 0, "preempted": 0}

    def check(s):
        seen["steps"] += 1
        seen["preempted"] += s["preempted"]
        held = [r.held for r in eng.running] + [r.held for r in eng.waiting]
        assert eng.kv.used == sum(held) == s["kv_used"] <= eng.kv.capacity
        assert all(r.held >= eng.kv.blocks(r.computed, 1) for r in eng.running)
        assert all(r.held == 0 and r.computed == 0 for r in eng.waiting)  # recompute preemption: from scratch

    eng = Engine(env, p, fast_forward=False, seed=1, trace=check)
    specs = RandomWorkload(1500, 300, 0.6, fmt=p.prompt_format).sample(24, 3)
    done = []
    for i, sp in enumerate(specs):
        _submit_at_zero(eng, i, sp, done.append)
    env.run()
    assert len(done) == len(specs) and seen["steps"] > 100
    assert seen["preempted"] > 0 or budget == 7  # the cache did bind (a budget of 7 tokens keeps few running)
    assert eng.kv.used == 0 and not eng.running and not eng.waiting


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("k,a", [(0, 0.0), (4, 0.6), (15, 0.85)])
@pytest.mark.parametrize("budget", [2048, 6])
@pytest.mark.parametrize("ff", [True, False])
def test_every_answer_is_whole_and_ends_at_its_last_chunk(monkeypatch, inline, k, a, budget, ff):
    """Every answer, stopping at its EOS or running to max_tokens, plain or speculative, preempted or not,
    taken step by step or in decode runs: its chunks carry exactly the tokens it generates (a verify
    step's accepted drafts past the EOS are not streamed), their times rise, and the request ends at its
    last chunk. A budget of 6 leaves the second decoding request one token: a verify step with no
    drafts after steps with them."""
    monkeypatch.setattr(Engine, "INLINE_DECODES", inline)
    p = spec_profile(k, a, num_blocks=900, max_num_batched_tokens=budget)
    specs = RandomWorkload(1200, 300, 0.6, fmt=p.prompt_format).sample(30, 7)
    specs = [s if i % 2 else RequestSpec(s.prompt_tokens, s.max_tokens, max(1, s.max_tokens // 3))
             for i, s in enumerate(specs)]  # half stop early, at EOS
    r = simulate_open(p, specs, OpenLoop(rate=4.0, burstiness=0.7, seed=5), fast_forward=ff)
    assert all(x.ok for x in r.records)
    if budget == 2048:
        assert r.num_preemptions > 0  # the small cache did preempt
    for x, s in zip(r.records, specs):
        tokens = int(x.chunk_tokens.sum()) if x.chunk_tokens is not None else len(x.chunk_times)
        assert tokens == x.output_tokens == min(s.output_tokens, s.max_tokens), x.request_id
        assert np.all(np.diff(x.chunk_times) > 0) and x.end_time == x.chunk_times[-1], x.request_id


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("k,a,out", [(4, 0.7, 900), (3, 0.3, 200), (15, 0.85, 3000)])
def test_a_simulated_run_counts_its_drafts_as_vllm_counts_them(monkeypatch, inline, k, a, out):
    """simulate open's spec_decode_* keys: vLLM's spec_decode counters over the run (a draft for each verify
    step that had drafts, its draft tokens, its accepted ones, and each accepted position), through vllm bench
    serve's formulas (summary.spec_decode_keys, which measure reads a live server's counters with). One request
    alone: its verify steps are its chunks after the first, each of 1 + accepted tokens, of drafts capped by the
    tokens left."""
    monkeypatch.setattr(Engine, "INLINE_DECODES", inline)
    p = spec_profile(k, a)
    run = simulate_open(p, [RequestSpec(prompt_tokens=300, max_tokens=out, output_tokens=out)],
                        OpenLoop(rate=1.0, seed=3))
    (rec,) = run.records
    emitted, counts, per_pos = 1, [0, 0, 0], [0] * k
    for n in rec.chunk_tokens.tolist()[1:]:
        d = min(k, p.engine.max_num_batched_tokens - 1, out - emitted - 1)
        if d > 0:
            counts = [counts[0] + 1, counts[1] + d, counts[2] + n - 1]
            for j in range(n - 1):
                per_pos[j] += 1
        emitted += n
    assert emitted == out and counts[0] > 50
    assert run.extra == spec_decode_keys(*counts, per_pos)
    s = summarize_open(run)
    assert {key: s[key] for key in run.extra} == run.extra
    # per-position acceptance a^(j+1), as the geometric draw of the profile's per-position acceptance makes it
    rates = s["spec_decode_per_position_acceptance_rates"]
    assert len(rates) == k and rates == sorted(rates, reverse=True)
    assert rates[0] == pytest.approx(a, abs=4 / counts[0] ** 0.5)
    assert s["spec_decode_acceptance_length"] == 1 + counts[2] / counts[0]


def test_spec_decode_keys_take_vllm_bench_serves_edges():
    """vLLM's benchmark (serve.py, after the run) reports the block once a draft token was counted, and
    leaves the acceptance length 0.0 and the positions empty where the drafts' count did not grow (its
    counters read twice: a server restarted between them counts less)."""
    assert spec_decode_keys(1, 1, 1, [1]) == {
        "spec_decode_acceptance_rate": 100.0, "spec_decode_acceptance_length": 2.0, "spec_decode_num_drafts": 1,
        "spec_decode_draft_tokens": 1, "spec_decode_accepted_tokens": 1,
        "spec_decode_per_position_acceptance_rates": [1.0]}
    for drafts in (0, -2):
        keys = spec_decode_keys(drafts, 3, 1, [1])
        assert keys["spec_decode_acceptance_length"] == 0.0 and keys["spec_decode_per_position_acceptance_rates"] == []
        assert keys["spec_decode_acceptance_rate"] == pytest.approx(100 / 3)
    assert spec_decode_keys(2, 0, 0, [0]) == {} == spec_decode_keys(2, -1, 0, [0])


def test_a_run_without_drafts_has_no_spec_decode_keys():
    p = spec_profile(0, 0.0)
    run = simulate_open(p, RandomWorkload(200, 20).sample(5, 1), OpenLoop(rate=2.0, seed=1))
    assert run.extra == {} and not any(k.startswith("spec_decode") for k in summarize_open(run))
