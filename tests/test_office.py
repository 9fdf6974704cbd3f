"""The office's own rules, exactly: what it refuses, its rates through the working day, the window's
pieces, its warm-up, the sessions it draws and how simulate_sessions and the summaries read them.
(tests/test_plan.py holds the office played on the model: conversations, the gateway, boxes.)"""
import math
from dataclasses import replace

import numpy as np
import pytest

from simulator import office as office_module
from simulator.office import (DAY_PROFILES, WARMUP_MAX_S, WARMUP_MAX_SESSIONS, WARMUP_MIN_S, Office, OfficeError,
                              Session, ShareGPTLike, WorkClass, office_sessions, parse_mix, per_class, preset_class,
                              simulate_office, simulate_sessions, summarize_office)
from simulator.profile import load_profile
from simulator.workload import FixedWorkload, PromptFormat, RandomWorkload, RequestSpec

PROFILE = load_profile()
FMT = PromptFormat(1, 13)
CHAT = (("chat", 1.0),)


# ------------------------------------------------------------------ what an office refuses

@pytest.mark.parametrize("bad, good, word", [
    (dict(staff=-1), dict(staff=0), "staff must be a whole number"),
    (dict(staff=2.5), dict(staff=np.int64(3)), "staff must be a whole number"),
    (dict(per_hour=0.0), dict(per_hour=1e-9), "per person per hour must be > 0"),
    (dict(per_day=0.0), dict(per_day=0.1), "per person per day must be > 0"),
    (dict(day_profile="weekend"), dict(day_profile="flat"), "unknown day profile 'weekend'"),
    (dict(burstiness=0.0), dict(burstiness=1e-3), "burstiness must be > 0"),
    (dict(burst_factor=0.0), dict(burst_factor=0.01), "a burst needs factor > 0"),
    (dict(burst_s=-1.0), dict(burst_s=0.0), "minutes >= 0"),
    (dict(max_concurrency=0), dict(max_concurrency=1), "max concurrency must be >= 1"),
    (dict(turns=0), dict(turns=1), "turns must be >= 1"),
    (dict(think_s=-0.1), dict(think_s=0.0), "think time must be >= 0"),
    (dict(requests=0), dict(requests=1), "requests per window must be in \\[1, 1,000,000\\], got 0"),
    (dict(requests=1_000_001), dict(requests=1_000_000), "requests per window must be in"),
    (dict(at_hour=13.0), dict(at_hour=13.0, day_profile="flat"), "a start hour needs a day profile"),
    (dict(at_hour=24.0, per_day=5.0), dict(at_hour=23.99, per_day=5.0), "a clock hour in"),
    (dict(at_hour=-0.01, per_day=5.0), dict(at_hour=0.0, per_day=5.0), "a clock hour in"),
    (dict(warmup_s=-1.0), dict(warmup_s=0.0), "warm-up must be >= 0 s"),
    (dict(duration_s=0.0), dict(duration_s=0.1), "window duration must be > 0"),
    (dict(mix=()), dict(mix=CHAT), "the mix needs at least one work class"),
    (dict(mix=(("chat", -0.1), ("rag", 1.0))), dict(mix=(("chat", 0.0), ("rag", 1.0))), "shares must be >= 0"),
    (dict(mix=(("chat", 0.0),)), dict(mix=(("chat", 1e-9),)), "with a positive sum"),
    (dict(mix=(("poetry", 1.0),)), dict(mix=(("code", 1.0),)), "unknown work class 'poetry'"),
    (dict(mix=(WorkClass("w", 1.0, ShareGPTLike(), turns=0),)), dict(mix=(WorkClass("w", 1.0, ShareGPTLike()),)),
     "work class w: turns >= 1"),
    (dict(mix=(WorkClass("w", 1.0, ShareGPTLike(), think_s=-1.0),)),
     dict(mix=(WorkClass("w", 1.0, ShareGPTLike(), think_s=0.0),)), "work class w: turns >= 1 and think time")])
def test_an_impossible_office_is_refused_at_its_bound_and_its_edge_is_not(bad, good, word):
    with pytest.raises(OfficeError, match=word):
        Office(**bad)
    Office(**good)


def test_a_refused_burst_says_its_minutes():
    with pytest.raises(OfficeError) as e:
        Office(burst_factor=2.0, burst_s=-90.0)
    assert str(e.value) == "a burst needs factor > 0 and minutes >= 0 (got 2.0, -1.5 min)"


def test_a_window_of_fixed_length_needs_no_request_count():
    Office(duration_s=60.0, requests=0)  # the count is not read


def test_parse_mix_reads_names_shares_and_blanks():
    assert parse_mix("chat") == (("chat", 1.0),)
    assert parse_mix(" chat = 0.5 ,, rag=0.5, ") == (("chat", 0.5), ("rag", 0.5))
    assert parse_mix("code=0,rag") == (("code", 0.0), ("rag", 1.0))
    for text, word in (("poetry=1", "unknown work class 'poetry'"), ("chat=lots", "share of chat is not a number"),
                       ("chat=-1", "share of chat must be >= 0"), ("chat=0", "at least one class with a positive"),
                       ("", "at least one class"), ("chat=nan", "must be >= 0")):
        with pytest.raises(OfficeError, match=word):
            parse_mix(text)


def test_the_preset_classes_are_the_seeds_runs():
    rag, code = preset_class("rag", 0.2, FMT), preset_class("code", 0.1, FMT)
    assert (rag.workload.input_len, rag.workload.output_len, rag.workload.range_ratio) == (8192, 512, 0.25)
    assert (code.workload.input_len, code.workload.output_len, code.workload.range_ratio) == (256, 4096, 0.5)
    assert rag.share == 0.2 and rag.turns == 1 and rag.workload.fmt == FMT
    mt = preset_class("multiturn", 0.3, FMT, turns=3, think_s=12.0)
    assert (mt.turns, mt.think_s) == (3, 12.0) and isinstance(mt.workload, ShareGPTLike)
    assert preset_class("chat", 1.0, FMT).turns == 1
    with pytest.raises(OfficeError, match="unknown work class 'poetry'"):
        preset_class("poetry", 1.0, FMT)
    classes = Office(mix=(("multiturn", 1.0),), turns=7, think_s=3.0).classes(FMT)
    assert (classes[0].turns, classes[0].think_s) == (7, 3.0)


# ------------------------------------------------------------------ rates through the day

def test_the_window_starts_at_the_busiest_hour_or_where_it_is_told():
    assert Office().start_hour() == 0.0  # no day profile: a flat rate, the clock unused
    assert Office(per_day=50).start_hour() == 9.0  # "office": 1.5 at 9:00
    assert Office(per_hour=5, day_profile="flat").start_hour() == 9.0  # all 1.0: the earliest
    assert Office(per_day=50, at_hour=13.5).start_hour() == 13.5
    for hour in (-3, 24, 25.5, float("nan")):  # a clock hour, not one to wrap: -3 read as 21h is nobody's intent
        with pytest.raises(OfficeError, match="clock hour in \\[0, 24\\)"):
            Office(per_day=50, at_hour=hour)
    with pytest.raises(OfficeError, match="needs a day profile"):
        Office(per_hour=50, at_hour=13.5)  # a constant rate: the hour would be silently ignored


def test_a_persons_rate_by_the_clock():
    w = DAY_PROFILES["office"]
    assert Office(per_hour=36.0).person_rate_at_hour(3) == pytest.approx(0.01)  # no profile: every hour alike
    day = Office(per_day=100.0)
    assert day.person_rate_at_hour(14) == pytest.approx(100 * w[14] / sum(w.values()) / 3600)
    assert day.person_rate_at_hour(14 + 48) == day.person_rate_at_hour(14)  # the clock wraps at 24
    assert day.person_rate_at_hour(20) == 0.0
    hourly = Office(per_hour=6.0, day_profile="office")  # per_hour: the mean over the ten working hours
    assert hourly.person_rate_at_hour(9) == pytest.approx(6.0 * 10 * 1.5 / sum(w.values()) / 3600)
    assert Office(per_day=100.0, at_hour=12.7).office_rps(10) == pytest.approx(10 * day.person_rate_at_hour(12))
    assert Office(staff=4, per_hour=36.0).office_rps() == pytest.approx(0.04)
    burst = Office(per_hour=36.0, burst_factor=3.0, burst_s=60.0)
    assert burst.peak_person_rate() == pytest.approx(0.03) and burst.office_rps(1) == pytest.approx(0.01)
    assert Office(per_hour=36.0, burst_factor=3.0).peak_person_rate() == pytest.approx(0.01)  # no burst minutes


def test_the_window_is_cut_at_each_clock_hour_and_the_bursts_end():
    o = Office(per_day=100.0, at_hour=9.5, burst_factor=2.0, burst_s=600.0)
    r = o.person_rate_at_hour
    segs = o.segments(4000.0)
    assert [(a, b) for a, b, _ in segs] == [(0.0, 600.0), (600.0, 1800.0), (1800.0, 4000.0)]
    assert [x for _, _, x in segs] == pytest.approx([2 * r(9), r(9), r(10)])
    later = o.segments(9000.0, from_s=4000.0)
    assert [(a, b) for a, b, _ in later] == [(4000.0, 5400.0), (5400.0, 9000.0)]
    assert [x for _, _, x in later] == pytest.approx([r(10), r(11)])
    flat = Office(per_hour=36.0).segments(10000.0)
    assert flat == [(0.0, 10000.0, pytest.approx(0.01))]  # no day profile: no hours to cut at


def test_warm_up_is_long_enough_for_the_longest_job_within_its_bounds():
    assert Office(warmup_s=42.0).warmup() == 42.0
    assert Office(burst_factor=2.0, burst_s=60.0).warmup() == 0.0  # Monday morning starts from an idle box
    assert Office(burst_factor=2.0, burst_s=60.0, warmup_s=5.0).warmup() == 5.0
    assert Office(mix=CHAT).warmup() == WARMUP_MIN_S  # a ~200-token answer at 10 tok/s: under the floor
    code = Office(mix=(("code", 1.0),)).warmup()
    mean_out = np.mean([s.output_tokens for s in RandomWorkload(256, 4096, 0.5, fmt=FMT).sample(64, seed=0)])
    assert code == pytest.approx(mean_out / 10.0) and WARMUP_MIN_S < code < WARMUP_MAX_S
    long_talk = Office(mix=(("multiturn", 1.0),), turns=20, think_s=120.0)
    assert long_talk.warmup() == WARMUP_MAX_S
    talk = Office(mix=(("multiturn", 1.0),), turns=3, think_s=100.0)
    mean_turn = np.mean([s.output_tokens for s in ShareGPTLike(fmt=FMT).sample(64, seed=0)])
    assert talk.warmup() == pytest.approx(3 * mean_turn / 10.0 + 2 * 100.0)


def test_describe_says_what_the_office_is():
    d = Office(staff=7, per_day=80.0, mix=(("chat", 0.5), WorkClass("w", 0.5, ShareGPTLike(), turns=2)),
               burst_s=120.0, burst_factor=2.0, max_concurrency=4).describe()
    assert d["staff"] == 7 and d["day_profile"] == "office" and d["at_hour"] == 9.0
    assert d["mix"] == [{"class": "chat", "share": 0.5}, {"class": "w", "share": 0.5, "turns": 2}]
    assert d["burst_minutes"] == 2.0 and d["max_concurrency"] == 4
    assert d["office_rps"] == pytest.approx(7 * Office(per_day=80.0).person_rate_at_hour(9))


def test_a_mix_in_any_proportions_is_told_as_the_shares_the_office_draws():
    """chat=2,rag=6 draws a quarter chat: the text and JSON said 'chat 2, rag 6' (or 0.5 and 0.6 for
    shares summing to 1.1), the shares as typed."""
    o = Office(mix=parse_mix("chat=2,rag=6"), requests=4000, warmup_s=0.0)
    assert o.shares() == [("chat", 0.25), ("rag", 0.75)]
    assert o.describe()["mix"] == [{"class": "chat", "share": 0.25}, {"class": "rag", "share": 0.75}]
    # shares typed to sum to 1 are told as typed (their float sum is 0.9999999999999999)
    typed = Office(mix=parse_mix("chat=0.6,rag=0.3,code=0.1")).describe()["mix"]
    assert [m["share"] for m in typed] == [0.6, 0.3, 0.1]
    per = {"chat": 0, "rag": 0}
    for x in office_sessions(o, 25, seed=1):
        per[x.tag] += len(x.specs)
    assert per["chat"] / sum(per.values()) == pytest.approx(0.25, abs=0.03)


# ------------------------------------------------------------------ sessions

def test_no_staff_no_sessions():
    assert office_sessions(Office(mix=CHAT), 0, seed=0) == []


def test_a_window_counts_its_requests_turns_included_and_holds_a_burst_whole():
    o = Office(mix=(("multiturn", 1.0),), turns=3, requests=10, warmup_s=0.0)
    s = office_sessions(o, 25, seed=1)
    assert sum(len(x.specs) for x in s) == 12  # four conversations: the window ends once 10 are pressed
    assert all(len(x.specs) == 3 and len(x.thinks) == 2 for x in s)
    burst = Office(mix=CHAT, requests=1, warmup_s=0.0, burst_factor=2.0, burst_s=300.0)
    sb = office_sessions(burst, 25, seed=1)
    assert len(sb) > 1 and sb[-1].time <= 300.0  # a burst is played whole even past the count


def test_a_window_of_fixed_length_ends_at_its_length():
    o = Office(mix=CHAT, duration_s=600.0, warmup_s=0.0)
    s = office_sessions(o, 25, seed=1)
    assert s[-1].time <= 600.0 and len(s) == pytest.approx(600 * 0.3, rel=0.25)
    longer = office_sessions(replace(o, duration_s=1200.0), 25, seed=1)
    assert longer[:len(s)] == s and longer[-1].time > 600.0


def test_warm_up_sessions_run_at_the_windows_first_rate_and_end_before_it():
    o = Office(mix=CHAT, requests=20, warmup_s=400.0)
    s = office_sessions(o, 25, seed=1)
    warm = [x for x in s if x.time < 400.0]
    assert len(warm) == pytest.approx(400 * 0.3, rel=0.25)
    window = [x for x in s if x.time >= 400.0]
    assert len(window) == 20 and window[0].time > 400.0
    assert [x.specs for x in window] == [x.specs for x in office_sessions(replace(o, warmup_s=0.0), 25, seed=1)]


def test_a_busy_offices_warm_up_starts_later_and_holds_a_bounded_number_of_sessions():
    """At 50 req/s a 400-s warm-up drew 20 000 sessions a replication, at 1e9 req/s it never ended; an overloaded
    box only queues them deeper. The window keeps its sessions."""
    o = Office(mix=CHAT, requests=20, warmup_s=400.0, per_hour=50 / 25 * 3600)
    s = office_sessions(o, 25, seed=1)
    warm = [x for x in s if x.time < 400.0]
    assert len(warm) == pytest.approx(WARMUP_MAX_SESSIONS, rel=0.05)
    assert warm[0].time == pytest.approx(400.0 - WARMUP_MAX_SESSIONS / 50, rel=0.01)
    window = [x for x in s if x.time >= 400.0]
    assert [x.specs for x in window] == [x.specs for x in office_sessions(replace(o, warmup_s=0.0), 25, seed=1)]
    absurd = office_sessions(replace(o, per_hour=1e9 * 3600), 25, seed=1)
    assert len(absurd) == pytest.approx(WARMUP_MAX_SESSIONS + 20, rel=0.05)


def test_a_window_of_more_requests_than_can_be_held_is_refused(monkeypatch):
    monkeypatch.setattr(office_module, "WINDOW_MAX_REQUESTS", 1000)
    o = Office(mix=CHAT, duration_s=60.0, warmup_s=0.0, per_hour=3600.0)  # 60 s at 25 req/s: 1500 requests
    with pytest.raises(OfficeError, match="the window holds more than 1,000 requests at 25 staff \\(25 req/s\\)"):
        office_sessions(o, 25, seed=0)
    assert len(office_sessions(o, 15, seed=0)) == pytest.approx(900, rel=0.1)


def test_an_office_opening_later_waits_for_its_first_working_hour():
    o = Office(per_day=100.0, at_hour=18.0, mix=CHAT, requests=5, warmup_s=600.0)  # nobody asks until 8:00
    s = office_sessions(o, 25, seed=0)
    assert len(s) == 5  # no warm-up at a rate of zero
    assert s[0].time >= 600.0 + 14 * 3600 and s[-1].time < 600.0 + 15 * 3600


def test_a_mix_shares_requests_by_class_counting_a_conversations_turns():
    o = Office(mix=(("chat", 0.45), ("multiturn", 0.45), ("rag", 0.1)), turns=5, requests=6000, warmup_s=0.0)
    s = office_sessions(o, 25, seed=3)
    per = {"chat": 0, "multiturn": 0, "rag": 0}
    for x in s:
        per[x.tag] += len(x.specs)
        assert all(sp.tag == x.tag for sp in x.specs)
    assert per["chat"] / sum(per.values()) == pytest.approx(0.45, abs=0.03)
    assert per["rag"] / sum(per.values()) == pytest.approx(0.1, abs=0.02)


def test_a_conversations_turns_carry_the_history():
    fixed = WorkClass("talk", 1.0, FixedWorkload(pp=10, tg=5), turns=3, think_s=0.0)
    s = office_sessions(Office(mix=(fixed,), requests=3, warmup_s=0.0), 5, seed=0)
    assert [sp.prompt_tokens for sp in s[0].specs] == [10, 25, 40]  # 10; 10+5+10; 25+5+10
    assert [sp.raw_prompt_tokens for sp in s[0].specs] == [10, 25, 40]
    assert s[0].thinks == (0.0, 0.0) and s[0].tag == "talk"


# ------------------------------------------------------------------ simulate_sessions and the summaries

@pytest.mark.parametrize("kw, word", [(dict(boxes=0), "boxes must be >= 1"), (dict(routing="random"), "routing must"),
                                      (dict(prefix_hit=1.0), "hit rate must be in"),
                                      (dict(prefix_hit=-0.1), "hit rate must be in")])
def test_simulate_sessions_refuses_impossible_settings(kw, word):
    with pytest.raises(OfficeError, match=word):
        simulate_sessions(PROFILE, [], **kw)
    simulate_sessions(PROFILE, [], boxes=1, routing="least-loaded", prefix_hit=0.0)


def test_least_loaded_routing_sends_to_the_emptiest_box_lowest_first():
    spec = RequestSpec(prompt_tokens=100, max_tokens=400, output_tokens=400)
    sessions = [Session(0.0, (spec,)), Session(0.0, (spec,)), Session(0.0, (spec,))]
    run = simulate_sessions(PROFILE, sessions, boxes=2, routing="least-loaded")
    assert run.office.requests_per_box == [2, 1]
    assert simulate_sessions(PROFILE, sessions[:1], boxes=3).office.requests_per_box == [1, 0, 0]


def test_a_prefix_hit_shortens_the_prefill_to_at_least_one_token():
    spec = RequestSpec(prompt_tokens=1, max_tokens=4, output_tokens=4)
    run = simulate_sessions(PROFILE, [Session(0.0, (spec,))], prefix_hit=0.99)
    assert run.records[0].ok and run.records[0].prompt_tokens == 1


def test_the_office_summary_adds_the_gateway_wait_only_behind_a_gateway():
    o = Office(mix=CHAT, requests=30, warmup_s=0.0, burst_factor=5.0, burst_s=120.0)
    free_run = simulate_office(PROFILE, o, 40, seed=0)
    free = summarize_office(free_run)
    assert "mean_gateway_wait_ms" not in free and free["requests"] == len(free_run.records)
    assert free["num_preemptions"] == 0
    capped_run = simulate_office(PROFILE, replace(o, max_concurrency=2), 40, seed=0)
    capped = summarize_office(capped_run, percentiles=(50, 99.9))
    waits = capped_run.office.gateway_wait_s
    assert capped["mean_gateway_wait_ms"] == pytest.approx(np.mean(waits) * 1000)
    assert capped["p50_gateway_wait_ms"] == pytest.approx(np.percentile(waits, 50) * 1000)
    assert capped["p99.9_gateway_wait_ms"] == pytest.approx(np.percentile(waits, 99.9) * 1000)
    assert capped["p99.9_gateway_wait_ms"] > capped["p50_gateway_wait_ms"] >= 0


def test_per_class_figures_are_each_classs_own():
    mix = (("chat", 0.5), ("rag", 0.5))
    run = simulate_office(PROFILE, Office(mix=mix, requests=40, warmup_s=0.0), 10, seed=2)
    got = per_class(run)
    assert set(got) == {"chat", "rag"}
    for tag, fig in got.items():
        ok = [r for r in run.records if r.test == tag and r.ok]
        ttft = [r.chunk_times[0] - r.start_time for r in ok]
        e2el = [r.chunk_times[-1] - r.start_time for r in ok]
        tpot = [(r.chunk_times[-1] - r.chunk_times[0]) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
        assert fig["requests"] == len(ok)
        assert fig["median_ttft_ms"] == pytest.approx(np.median(ttft) * 1000)
        assert fig["p95_ttft_ms"] == pytest.approx(np.percentile(ttft, 95) * 1000)
        assert fig["median_tpot_ms"] == pytest.approx(np.median(tpot) * 1000)
        assert fig["p95_e2el_ms"] == pytest.approx(np.percentile(e2el, 95) * 1000)
        assert fig["mean_prompt_tokens"] == pytest.approx(np.mean([r.prompt_tokens for r in ok]))
    assert got["rag"]["mean_prompt_tokens"] > 5 * got["chat"]["mean_prompt_tokens"]
    one = RequestSpec(prompt_tokens=50, max_tokens=1, output_tokens=1)
    single = per_class(simulate_sessions(PROFILE, [Session(0.0, (one,), (), "t")]))
    assert single["t"]["requests"] == 1 and single["t"]["median_tpot_ms"] == 0.0  # one token: no TPOT
    assert math.isfinite(single["t"]["median_ttft_ms"])


def test_a_class_whose_every_request_failed_counts_none():
    huge = RequestSpec(prompt_tokens=PROFILE.engine.max_model_len + 1, max_tokens=4, output_tokens=4)
    run = simulate_sessions(PROFILE, [Session(0.0, (huge,), (), "big")])
    assert not run.records[0].ok and per_class(run) == {"big": {"requests": 0}}


# ------------------------------------------------------------------ edges the sweep found unpinned

def test_the_default_office_is_the_seeds():
    o = Office()
    assert o.office_rps() == pytest.approx(0.3)  # 25 people at the seed's 0.3 req/s
    assert (o.staff, o.burstiness, o.turns, o.think_s, o.requests) == (25, 0.7, 5, 30.0, 250)
    assert preset_class("multiturn", 1.0, FMT).turns == 5 and preset_class("multiturn", 1.0, FMT).think_s == 30.0


def test_sharegpt_like_keeps_prompts_and_totals_at_vllms_bounds():
    at_bounds = ShareGPTLike(fmt=FMT, prompt_mu=math.log(1024), prompt_sigma=0.0, output_mu=math.log(1024),
                             output_sigma=0.0, max_total=2048)
    s = at_bounds.sample(3, seed=0)  # prompt 1024 and prompt + output 2048: both kept, as vLLM keeps them
    assert [(x.raw_prompt_tokens, x.output_tokens) for x in s] == [(1024, 1024)] * 3
    shortest = ShareGPTLike(fmt=FMT, prompt_mu=math.log(4), prompt_sigma=0.0, output_mu=math.log(4),
                            output_sigma=0.0)  # 4 and 4: vLLM's shortest prompt and answer
    assert [(x.raw_prompt_tokens, x.output_tokens) for x in shortest.sample(2, seed=0)] == [(4, 4)] * 2


def test_shares_are_read_relative_to_their_sum():
    a = office_sessions(Office(mix=(("chat", 2.0), ("multiturn", 2.0)), requests=300, warmup_s=0.0), 25, seed=4)
    b = office_sessions(Office(mix=(("chat", 0.5), ("multiturn", 0.5)), requests=300, warmup_s=0.0), 25, seed=4)
    assert [(x.time, x.specs) for x in a] == [(x.time, x.specs) for x in b]


def test_a_warm_up_of_conversations_presses_the_windows_request_rate():
    o = Office(mix=(("multiturn", 1.0),), turns=5, think_s=0.0, requests=5, warmup_s=2000.0)
    warm = [x for x in office_sessions(o, 25, seed=1) if x.time < 2000.0]
    assert sum(len(x.specs) for x in warm) == pytest.approx(2000 * 0.3, rel=0.2)  # requests, a conversation's five


def test_a_class_drawn_once_in_a_block_is_drawn():
    s = office_sessions(Office(mix=(("chat", 255.0), ("rag", 1.0)), requests=3000, warmup_s=0.0), 25, seed=0)
    assert {x.tag for x in s} == {"chat", "rag"} and all(x.specs for x in s)


def test_arrivals_follow_the_rate_across_the_hours_of_the_window():
    o = Office(per_day=100.0, at_hour=16.5, mix=CHAT, duration_s=5400.0, warmup_s=0.0)  # 16:30 to 18:00
    s = office_sessions(o, 100, seed=2)
    first = sum(x.time < 1800.0 for x in s)  # 16:30-17:00 at 16:00's weight, then 17:00's
    second = sum(x.time >= 1800.0 for x in s)
    assert first == pytest.approx(1800 * 100 * o.person_rate_at_hour(16), rel=0.15)
    assert second == pytest.approx(3600 * 100 * o.person_rate_at_hour(17), rel=0.15)


def test_round_robin_and_least_loaded_differ_where_a_box_has_emptied():
    spec = RequestSpec(prompt_tokens=50, max_tokens=4, output_tokens=4)
    sessions = [Session(100.0 * i, (spec,)) for i in range(4)]  # each ends long before the next
    assert simulate_sessions(PROFILE, sessions, boxes=2).office.requests_per_box == [2, 2]
    assert simulate_sessions(PROFILE, sessions, boxes=2, routing="least-loaded").office.requests_per_box == [4, 0]


def test_the_gateway_fills_to_its_cap_and_frees_a_slot_per_answer():
    spec = RequestSpec(prompt_tokens=50, max_tokens=200, output_tokens=200)
    sessions = [Session(0.0, (spec,)) for _ in range(3)] + [Session(1000.0, (spec,))]
    run = simulate_sessions(PROFILE, sessions, max_concurrency=2, queue_in_ttft=False)
    waits = run.office.gateway_wait_s
    assert list(waits[:2]) == [0.0, 0.0] and waits[2] > 0 and waits[3] == 0.0  # the late one finds the box idle
    r = run.records
    assert waits[2] == pytest.approx(min(r[0].end_time, r[1].end_time) - r[2].scheduled_time)
    assert all(w == pytest.approx(x.start_time - x.scheduled_time) for w, x in zip(waits, r))  # vLLM's clock
    assert all(x.ok for x in r)
    assert run.open_loop.max_concurrency == 2  # vLLM's clock: the cap is the load's, as vllm bench serve's
    users = simulate_sessions(PROFILE, sessions, max_concurrency=2)
    assert users.open_loop.max_concurrency is None  # the user's clock: the gateway is part of the server
    assert all(x.start_time == x.scheduled_time for x in users.records)


def test_a_prefix_hit_leaves_the_engine_the_uncached_share_of_the_prompt():
    """The engine computes the uncached half of the prompt, after the cached half it reads (and holds): slower than
    a prompt of that half alone, faster than the whole prompt cold."""
    full = RequestSpec(prompt_tokens=4000, max_tokens=2, output_tokens=2)
    half = RequestSpec(prompt_tokens=2000, max_tokens=2, output_tokens=2)
    hit = simulate_sessions(PROFILE, [Session(0.0, (full,))], prefix_hit=0.5).records[0]
    cold_half, cold_full = (simulate_sessions(PROFILE, [Session(0.0, (s,))]).records[0] for s in (half, full))
    cached = simulate_sessions(PROFILE, [Session(0.0, (replace(full, cached_tokens=2000),))]).records[0]
    assert hit.chunk_times[0] == cached.chunk_times[0]
    assert cold_half.chunk_times[0] < hit.chunk_times[0] < 0.75 * cold_full.chunk_times[0]
    assert hit.prompt_tokens == 4000


def test_the_office_summary_counts_its_preemptions():
    small = replace(PROFILE, engine=replace(PROFILE.engine, num_blocks=300))
    spec = RequestSpec(prompt_tokens=300, max_tokens=400, output_tokens=400)
    run = simulate_sessions(small, [Session(0.0, (spec,)) for _ in range(6)])
    assert run.num_preemptions > 0 and summarize_office(run)["num_preemptions"] == run.num_preemptions
