"""The simulated load generators' own rules, by hand: the API server's serial frontend, the client's
--max-concurrency semaphore, refused requests, and llama-benchy's probes, warm-up and gaps."""
import math

import pytest

from simulator.load import ClosedLoop, OpenLoop
from simulator.sim import simulate_closed, simulate_open, simulate_workload_open
from simulator.workload import PromptFormat, RandomWorkload, RequestSpec
from tests.helpers import same_records, tiny_profile


def _profile(**kw):
    # every step 10 ms whatever it holds; 50 ms to reach the server, then 100 ms + 1 ms a prompt token in its
    # frontend one request at a time, 2 ms from a step's end to the chunk at the client
    return tiny_profile(c0=0.01, c_tok=0.0, c_seq=0.0, c_ctx=0.0, async_=False, request_s=0.05, frontend_s=0.1,
                        frontend_per_token_s=0.001, chunk_s=0.002, **kw)


def _spec(prompt=10):
    return RequestSpec(prompt_tokens=prompt, max_tokens=3, output_tokens=3)


def test_requests_sent_together_pass_the_frontend_one_at_a_time():
    stats: list = []
    run = simulate_open(_profile(), [_spec(), _spec(), _spec()], OpenLoop(rate=math.inf, max_concurrency=2),
                        stats=stats)
    a, b, c = run.records
    # a: at the server 0.05, out of the frontend 0.16, prefilled by 0.17, decoded 0.18 and 0.19 (+2 ms each)
    assert list(a.chunk_times) == pytest.approx([0.172, 0.182, 0.192])
    # b: sent with a, but the frontend is a's until 0.16: out at 0.27, after a has finished
    assert list(b.chunk_times) == pytest.approx([0.282, 0.292, 0.302])
    # c: the semaphore (2) passes to it the moment a's stream ends; at the server at 0.242, it waits for the
    # frontend until b leaves it at 0.27
    assert (c.scheduled_time, c.start_time) == (0.0, pytest.approx(0.192))
    assert list(c.chunk_times) == pytest.approx([0.392, 0.402, 0.412])
    assert [r.end_time for r in run.records] == [r.chunk_times[-1] for r in run.records]
    assert (run.start_time, run.end_time, run.kind) == (0.0, pytest.approx(c.chunk_times[-1]), "open")
    assert run.open_loop.max_concurrency == 2 and run.open_loop.request_rate == math.inf
    assert len(stats) == 1 and (stats[0].steps, stats[0].preemptions) == (9, 0)  # 3 requests of 3 steps


def test_a_refused_request_fails_on_arrival_and_frees_its_slot_without_the_frontend():
    run = simulate_open(_profile(max_model_len=20), [_spec(), _spec(19), _spec()],
                        OpenLoop(rate=math.inf, max_concurrency=1))
    a, refused, c = run.records
    assert refused.start_time == pytest.approx(0.192) and refused.end_time == pytest.approx(0.242)  # 50 ms to the server
    assert refused.error.startswith("HTTP 400") and len(refused.chunk_times) == 0
    # c starts as the refusal comes back, and the frontend, idle since 0.16, takes it at once
    assert c.start_time == pytest.approx(0.242)
    assert list(c.chunk_times) == pytest.approx([0.242 + 0.16 + 0.01 + 0.002 + d for d in (0.0, 0.01, 0.02)])


def test_arrivals_follow_the_schedule_when_the_semaphore_is_free():
    run = simulate_open(_profile(), [_spec(), _spec()], OpenLoop(rate=1.0, burstiness=1.0, seed=3, max_concurrency=1))
    a, b = run.records
    assert b.scheduled_time > a.end_time  # a's slot is back before b is due
    assert a.start_time == a.scheduled_time and b.start_time == b.scheduled_time > a.scheduled_time
    assert b.chunk_times[0] == pytest.approx(b.start_time + 0.16 + 0.01 + 0.002)  # alone on the box by then
    assert run.end_time == pytest.approx(max(b.chunk_times[-1], a.chunk_times[-1]))


@pytest.mark.parametrize("mode, latency, first", [
    # three probes of "hello" (2 tokens): 0.05 + 0.1 + 0.002 + 0.01 + 0.002 each, 0.5 s apart; then the
    # warm-up batch (0.176 s) and its gap
    ("generation", 0.164, 3 * 0.664 + 0.676),
    ("api", 0.05 + 0.002, 0.676),  # a GET /v1/models round trip: to the server and back
    ("none", 0.0, 0.676)])
def test_the_closed_loop_probes_warms_up_and_waits_between_batches(mode, latency, first):
    run = simulate_closed(_profile(), ClosedLoop(pp=[4], tg=[2], depth=[0], concurrency=[1], runs=2,
                                                 latency_mode=mode), gap_s=0.5)
    assert run.closed_loop.latency_s == pytest.approx(latency)
    assert run.closed_loop.tests == {"pp4 tg2 d0 c1": (4, 2, 0, 1)}
    r0, r1 = run.records  # the warm-up batch is not kept
    assert (r0.request_id, r0.batch, r1.request_id, r1.batch) == (0, 0, 1, 1)
    assert r0.start_time == pytest.approx(first) and r1.start_time == pytest.approx(first + 0.676)
    assert list(r0.chunk_times - r0.start_time) == pytest.approx([0.166, 0.176])
    assert run.end_time == pytest.approx(r1.end_time + 0.5) and run.start_time == 0.0 and run.kind == "closed"


def test_a_workload_is_sampled_with_the_patterns_seed():
    prof, wl = _profile(), RandomWorkload(input_len=20, output_len=4, range_ratio=0.5)
    pattern = OpenLoop(rate=5.0, seed=7)
    same_records(simulate_workload_open(prof, wl, 6, pattern), simulate_open(prof, wl.sample(6, seed=7), pattern))


def test_a_concurrent_batch_ends_with_its_last_request_and_the_probe_carries_the_chat_template():
    prof = _profile()
    prof.prompt_format = PromptFormat(chat_template_tokens=5)
    run = simulate_closed(prof, ClosedLoop(pp=[4], tg=[2], depth=[0], concurrency=[2], runs=2,
                                           latency_mode="generation"))
    assert run.closed_loop.latency_s == pytest.approx(0.169)  # "hello" is 2 tokens, 7 in the template
    assert [r.request_id for r in run.records] == [0, 1, 2, 3] and [r.batch for r in run.records] == [0, 0, 1, 1]
    a, b, c, d = run.records
    # b passes the frontend after a (0.154 s in, not 0.104), so the batch ends with b; the next batch starts
    # there, with no gap by default
    assert b.end_time > a.end_time and c.start_time == d.start_time == pytest.approx(b.end_time)


def test_the_rate_probe_sleeps_after_each_answer_and_the_run_lasts_to_its_wake():
    """--probe-request-rate 10: one "Hi" at the run's start, done in the first step (10 ms) beside the load's
    prefill; the loop sleeps 0.1 s, wakes after the load's last token (0.03 s) and stops there: one probe,
    and a benchmark duration of 0.11 s, as vllm bench serve's clock stops after it awaits the loop."""
    prof = tiny_profile(c0=0.01, c_tok=0.0, c_seq=0.0, c_ctx=0.0, async_=False)
    fmt = PromptFormat(special_tokens=1, chat_template_tokens=6)
    run = simulate_open(prof, [_spec()], OpenLoop(rate=math.inf, probe_rate=10.0), probe_format=fmt)
    (p,) = run.probes
    assert (p.start_time, p.prompt_tokens, p.output_tokens, p.test, p.max_tokens) == (0.0, 1 + 1 + 6, 1, "probe", 1)
    assert list(p.chunk_times) == pytest.approx([0.01])
    assert list(run.records[0].chunk_times) == pytest.approx([0.01, 0.02, 0.03])
    assert run.end_time == pytest.approx(0.11) and run.open_loop.probe_request_rate == 10.0
    plain = simulate_open(prof, [_spec()], OpenLoop(rate=math.inf))
    assert plain.probes is None and plain.end_time == pytest.approx(0.03) and plain.open_loop.probe_request_rate is None


def test_the_rate_probe_is_serial_outside_the_semaphore_and_stops_at_its_first_wake_past_the_load():
    """Probes one after another, each sent `1 / rate` after the last one ended, while requests queue behind
    --max-concurrency 1 (the probe takes no slot); every probe but the first was sent before the load ended,
    and the run ends at the first wake past that end."""
    prof = _profile()
    specs = [RequestSpec(prompt_tokens=30, max_tokens=20, output_tokens=20) for _ in range(4)]
    run = simulate_open(prof, specs, OpenLoop(rate=math.inf, max_concurrency=1, probe_rate=20.0))
    probes, interval = run.probes, 1 / 20.0
    load_end = max(r.end_time for r in run.records)
    assert len(probes) >= 4 and probes[0].start_time == 0.0 and all(p.ok for p in probes)
    for a, b in zip(probes, probes[1:]):
        assert b.start_time == pytest.approx(a.end_time + interval) and b.start_time < load_end
    assert probes[-1].end_time + interval >= load_end and run.end_time == pytest.approx(probes[-1].end_time + interval)
    # a probe in flight beside a load request, though the semaphore's one slot is the load's
    assert any(r.start_time < p.start_time < r.end_time for p in probes[1:] for r in run.records)
    assert [r.request_id for r in run.records] == [0, 1, 2, 3]  # the load's records only
    # the default probe frame is the profile's chat format
    assert probes[0].prompt_tokens == 1 + prof.prompt_format.special_tokens + prof.prompt_format.chat_template_tokens


@pytest.mark.parametrize("interval, sent, end", [(0.129, [0.0, 0.293], 0.457 + 0.129), (0.131, [0.0], 0.295)])
def test_the_probe_loop_stops_on_the_loads_last_chunk_at_the_client_not_its_last_step(interval, sent, end):
    """The probe goes first through the frontend (at the server 0.05, out at 0.152, its token at 0.164), the load
    after it (out at 0.262, tokens at 0.274, 0.284, 0.294: each step's end + 2 ms). A wake at 0.293 falls
    after the load's last step (0.292) but before its last chunk reaches the client: the load is not over,
    so the loop sends again (out of the frontend at 0.445, answered at 0.457) and the run ends at that
    probe's end + the interval; a wake at 0.295 stops the loop there."""
    run = simulate_open(_profile(), [_spec()], OpenLoop(rate=math.inf, probe_rate=1 / interval))
    assert list(run.records[0].chunk_times) == pytest.approx([0.274, 0.284, 0.294])
    assert [p.start_time for p in run.probes] == pytest.approx(sent)
    assert run.probes[0].end_time == pytest.approx(0.164) and run.end_time == pytest.approx(end)


def test_a_simulated_workload_frames_the_probe_as_its_prompts():
    wl = RandomWorkload(input_len=40, output_len=4, fmt=PromptFormat(special_tokens=1, chat_template_tokens=0))
    run = simulate_workload_open(_profile(), wl, 3, OpenLoop(rate=5.0, probe_rate=0.5))
    assert len(run.probes) == 1 and run.probes[0].prompt_tokens == 2  # completions: "Hi" and the BOS


def test_a_negative_probe_rate_is_refused():
    from simulator.load import LoadError
    with pytest.raises(LoadError, match=r"--probe-request-rate must be a finite rate >= 0 \(0: no probe\), got -1"):
        OpenLoop(probe_rate=-1.0)
    for bad in (math.nan, math.inf):  # inf: vllm bench serve's back-to-back probes, refused here
        with pytest.raises(LoadError, match="--probe-request-rate must be a finite rate"):
            OpenLoop(probe_rate=bad)
