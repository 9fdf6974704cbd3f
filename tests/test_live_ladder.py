"""The live calibration's plan (calibrate.live.ladder): the prompt sizes it measures, the planning profile
it predicts each stage's time on, and the box's steadiness. tests/test_twin.py runs the whole ladder
against a twin."""
from __future__ import annotations

import pytest

from calibrate.live import ServerFacts, predict_seconds, prompt_sizes, rough_profile, steadiness
from simulator.profile import KVGroup
from simulator.records import ClosedLoopFacts, RunResult
from tests.helpers import rec


def facts(max_model_len=4096, kv_tokens=None, num_blocks=None) -> ServerFacts:
    return ServerFacts(url="http://x", model="m", max_model_len=max_model_len, kv_cache_size_tokens=kv_tokens,
                       num_blocks=num_blocks, kv_groups=(KVGroup(16),))


@pytest.mark.parametrize("server, tg, pp_max, sizes", [
    (facts(), 32, None, [32, 64, 128, 256, 512, 1024, 2048]),  # to half the context
    (facts(16384), 32, 5000, [32, 64, 128, 256, 512, 1024, 2048, 4096]),  # 5000 is within 1.5x of 4096
    (facts(16384), 32, 7000, [32, 64, 128, 256, 512, 1024, 2048, 4096, 7000]),
    (facts(16384, kv_tokens=3000, num_blocks=200), 32, None, [32, 64, 128, 256, 512, 1024]),  # half the KV cache
    (facts(16384, kv_tokens=3000), 32, None, [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]),  # not binding
    (facts(1024), 1000, None, [23]),  # the context less the answer
    (facts(64), 60, None, [16]),  # never below 16
])
def test_the_prompt_sizes_double_up_to_a_share_of_the_context(server, tg, pp_max, sizes):
    assert prompt_sizes(server, tg, pp_max) == sizes


def test_the_planning_profile_takes_the_probes_decode_step():
    """A lone decode step of the planning profile is the probe's (fixed + one token + one request), a
    prompt token costs the probe's prefill time, a request the probe's latency / 4; every term positive."""
    p = rough_profile(facts(), decode_s=0.05, prefill_s_per_token=2e-4, latency_s=0.008, seq_share=0.2)
    sm = p.step_model
    assert (sm.c_seq, sm.c_tok) == pytest.approx((0.01, 2e-4)) and sm.c0 + sm.c_tok + sm.c_seq == pytest.approx(0.05)
    assert p.api.request_s == pytest.approx(0.002) and p.engine.max_model_len == 4096
    tiny = rough_profile(facts(), decode_s=1e-5, prefill_s_per_token=0.0, latency_s=0.0).step_model
    assert (tiny.c0, tiny.c_tok) == (1e-4, 1e-7)
    # before the ladder has measured a rung, a request's share of the step is taken as a tenth
    assert rough_profile(facts(), decode_s=0.05, prefill_s_per_token=2e-4, latency_s=0.0).step_model.c_seq == \
        pytest.approx(0.005)


def test_a_stage_is_predicted_as_simulated_with_its_latency_probes_once():
    """A test of one request (100 prompt tokens, 10 out) on a profile of 50 ms decode steps: three latency
    probes of one step each, the prompt's step and nine decode steps, a few ms of API time, and the call's
    own second; twice the runs, about twice the requests' time."""
    p = rough_profile(facts(), decode_s=0.05, prefill_s_per_token=2e-4, latency_s=0.008)
    one = predict_seconds(p, [(100, 10, 0, 1)], per_call_s=0.0)
    assert one == pytest.approx(3 * 0.05 + (0.05 + 99 * 2e-4) + 9 * 0.05, abs=0.03)
    assert predict_seconds(p, [(100, 10, 0, 1)]) == pytest.approx(one + 1.0)
    assert predict_seconds(p, [(100, 10, 0, 1)], runs=2, per_call_s=0.0) == pytest.approx(2 * one - 0.15, abs=0.03)


def probe_run(decode_s: float) -> RunResult:
    """Three single-user requests of 16 tokens, one decode step every `decode_s` seconds."""
    records = [rec(i, 10.0 * i, [10.0 * i + 0.1 + k * decode_s for k in range(16)], prompt=128,
                   test="pp128 tg16 d0 c1", batch=i) for i in range(3)]
    return RunResult(records, start_time=0.0, end_time=40.0, kind="closed",
                     closed_loop=ClosedLoopFacts(tests={"pp128 tg16 d0 c1": (128, 16, 0, 1)}, latency_mode="generation",
                                                 runs=3))


def test_steadiness_is_the_probes_single_user_decode_speed_again():
    s = steadiness(probe_run(0.05), probe_run(0.0625))  # each step 25 % longer: 20 % fewer tokens a second
    assert s["drift_pct"] == pytest.approx(-20.0, abs=1.0)
    assert s["end_tok_s"] / s["start_tok_s"] == pytest.approx(0.8, abs=0.01)
    assert steadiness(probe_run(0.05), probe_run(0.05))["drift_pct"] == pytest.approx(0.0)
