"""Office model and `capsim plan`: arrivals, conversations, gateway cap, boxes, SLA search.

Kept fast (small windows, few replications, one worker) so the whole file runs in
well under a minute on two cores.
"""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from simulator.load import OpenLoop
from simulator.office import (DEFAULT_MIX, Office, OfficeError, Session, ShareGPTLike, office_sessions,
                              parse_mix, simulate_office, simulate_sessions, summarize_office)
from simulator.plan import (PlanError, PlanSettings, Scenario, ladder_step, parse_scenario, parse_sla, plan,
                            predicted_capacity, search_max, sweep_prompts, sweep_workload)
from simulator.profile import load_profile
from simulator.sim import simulate_open
from simulator.summary import summarize_open
from simulator.workload import PromptFormat, RandomWorkload

PROFILE = load_profile()
CHAT = (("chat", 1.0),)
FAST = PlanSettings(replications=4, confidence=0.75, n_jobs=1, capacity=False, staff_max=400)


def small_office(**kw):
    kw.setdefault("mix", CHAT)
    kw.setdefault("requests", 100)
    kw.setdefault("warmup_s", 0.0)  # unit tests start from an idle box (one test covers warm-up)
    return Office(**kw)


# ------------------------------------------------------------------ request shapes and arrivals

def test_sharegpt_like_matches_the_published_anchors():
    specs = ShareGPTLike(fmt=PromptFormat(1, 13)).sample(20000, seed=3)
    prompt = np.array([s.prompt_tokens for s in specs])
    out = np.array([s.output_tokens for s in specs])
    raw = prompt - 13
    assert 220 <= prompt.mean() <= 240  # ~230 with the chat template (metric-definitions.md section 4)
    assert 190 <= out.mean() <= 210  # ~200
    assert raw.min() >= 4 and raw.max() <= 1024 and out.min() >= 4 and (raw + out).max() <= 2048  # vLLM's filter
    assert np.median(raw) < 0.7 * raw.mean()  # heavy-tailed: mostly short, a long tail
    assert [s.prompt_tokens for s in ShareGPTLike().sample(50, 1)] == [s.prompt_tokens for s in ShareGPTLike().sample(50, 1)]


def test_one_box_single_requests_equal_simulate_open():
    wl = RandomWorkload(4000, 500, 0.9, fmt=PROFILE.prompt_format)
    specs = wl.sample(60, 42)
    pat = OpenLoop(0.7, 0.7, seed=42)
    a = simulate_open(PROFILE, specs, pat)
    sessions = [Session(float(t), (s,), (), "random") for t, s in zip(pat.arrival_times(60), specs)]
    b = simulate_sessions(PROFILE, sessions)
    assert len(a.records) == len(b.records)
    for x, y in zip(a.records, b.records):
        assert x.start_time == y.start_time and np.array_equal(x.chunk_times, y.chunk_times)
    assert a.duration == b.duration


def test_more_staff_means_the_same_sessions_arriving_faster():
    o = small_office(mix=DEFAULT_MIX, warmup_s=None)
    w = o.warmup(PROFILE.prompt_format)
    assert w > 300  # the default mix warms up for as long as a long code job takes
    a = [x for x in office_sessions(o, 20, seed=5, fmt=PROFILE.prompt_format) if x.time >= w]
    b = [x for x in office_sessions(o, 40, seed=5, fmt=PROFILE.prompt_format) if x.time >= w]
    assert len(a) == len(b)
    assert all(math.isclose(x.time - w, 2 * (y.time - w), rel_tol=1e-9) and x.specs == y.specs for x, y in zip(a, b))
    # the aggregate rate is staff x per-person rate (requests, conversations counted by their turns)
    o2 = Office(mix=DEFAULT_MIX, requests=20000, warmup_s=0)
    s = office_sessions(o2, 25, seed=1, fmt=PROFILE.prompt_format)
    n_req = sum(len(x.specs) for x in s)
    assert n_req / s[-1].time == pytest.approx(0.3, rel=0.05)
    shares = {}
    for x in s:
        shares[x.tag] = shares.get(x.tag, 0) + len(x.specs)
    for name, share in DEFAULT_MIX:
        assert shares[name] / n_req == pytest.approx(share, abs=0.02)


def test_day_profile_and_monday_burst_shape_the_rate():
    o = Office(per_day=100, mix=CHAT)  # "office" profile: busiest hour 9:00, weight 1.5 of 10
    assert o.start_hour() == 9
    assert o.person_rate_at_hour(9) == pytest.approx(100 * 1.5 / 10 / 3600)
    assert o.person_rate_at_hour(3) == 0.0
    burst = Office(mix=CHAT, burst_factor=5, burst_s=600, requests=50)
    s = office_sessions(burst, 25, seed=2, fmt=PROFILE.prompt_format)
    assert len(s) > 50 and 590 < s[-1].time <= 600  # a burst is simulated whole
    in_burst = sum(1 for x in s if x.time < 600)
    assert in_burst / 600 == pytest.approx(5 * 0.3, rel=0.15)
    # per_hour with a day profile is the mean over its working hours
    assert Office(per_hour=10, day_profile="flat").person_rate_at_hour(10) == pytest.approx(10 / 3600)


def test_warmup_loads_the_box_but_is_not_measured():
    o = small_office(warmup_s=120.0)
    run = simulate_office(PROFILE, o, 60, seed=0)
    assert run.start_time == 120.0 and len(run.records) >= 100
    assert all(r.scheduled_time >= 120.0 for r in run.records)
    assert sum(run.office.requests_per_box) > len(run.records)  # warm-up requests ran too
    cold = simulate_office(PROFILE, small_office(), 60, seed=0)
    assert summarize_office(run)["median_tpot_ms"] > summarize_office(cold)["median_tpot_ms"]
    assert small_office(burst_factor=5, burst_s=60, warmup_s=None).warmup() == 0.0  # Monday starts idle


def test_conversation_turns_wait_for_the_reply_and_carry_the_history():
    o = small_office(mix=(("multiturn", 1.0),), turns=4, think_s=20.0, requests=40)
    sessions = office_sessions(o, 10, seed=1, fmt=PROFILE.prompt_format)
    run = simulate_sessions(PROFILE, sessions)
    for i, sess in enumerate(sessions[:5]):
        recs = sorted((r for r in run.records if r.batch == i), key=lambda r: r.scheduled_time)
        assert [r.prompt_tokens for r in recs] == [s.prompt_tokens for s in sess.specs]
        for k in range(3):
            assert recs[k + 1].scheduled_time == pytest.approx(recs[k].end_time + sess.thinks[k])
            assert recs[k + 1].prompt_tokens > recs[k].prompt_tokens + recs[k].output_tokens
    assert len(run.records) == sum(len(s.specs) for s in sessions)


def test_gateway_cap_holds_and_its_wait_counts_for_users():
    o = small_office(burst_factor=5, burst_s=300, max_concurrency=8)
    run = simulate_office(PROFILE, o, 60, seed=0)
    sends = np.array([run.office.gateway_wait_s[i] for i in range(len(run.records))])
    starts = np.array([r.scheduled_time for r in run.records]) + sends + 1e-9  # (rounding of wait + press)
    ends = np.array([r.end_time for r in run.records])
    ev = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends], key=lambda x: (x[0], x[1]))
    assert max(np.cumsum([d for _, d in ev])) <= 8
    assert sends.max() > 0
    s = summarize_office(run)
    assert s["p95_gateway_wait_ms"] > 0
    assert all(r.start_time == r.scheduled_time for r in run.records)  # the user's clock
    vllm_clock = simulate_office(PROFILE, replace(o, queue_in_ttft=False), 60, seed=0)
    assert summarize_office(vllm_clock)["p95_ttft_ms"] < s["p95_ttft_ms"]


def test_two_boxes_split_the_load_and_prefix_hits_cut_ttft():
    o = small_office(requests=150)
    one = summarize_office(simulate_office(PROFILE, o, 120, seed=0))
    rr = simulate_office(PROFILE, o, 120, seed=0, boxes=2)
    assert rr.office.requests_per_box == [75, 75]
    ll = simulate_office(PROFILE, o, 120, seed=0, boxes=2, routing="least-loaded")
    assert sum(ll.office.requests_per_box) == 150
    two = summarize_office(rr)
    assert two["median_tpot_ms"] < one["median_tpot_ms"]
    rag = small_office(mix=(("rag", 1.0),), requests=60)
    base = summarize_office(simulate_office(PROFILE, rag, 5, seed=0))
    hit = summarize_office(simulate_office(PROFILE, rag, 5, seed=0, prefix_hit=0.5))
    assert hit["median_ttft_ms"] < 0.7 * base["median_ttft_ms"]
    assert hit["total_input_tokens"] == base["total_input_tokens"]  # records keep the full prompt


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("text,key,bound,strict", [
    ("p95_ttft<=3s", "p95_ttft_ms", 3000, False), ("p50_tpot <= 150ms", "p50_tpot_ms", 150, False),
    ("median_e2el<1min", "p50_e2el_ms", 60000, True), ("p99.9_itl<=0.5s", "p99.9_itl_ms", 500, False),
    ("mean_ttft<=800ms", "mean_ttft_ms", 800, False)])
def test_parse_sla(text, key, bound, strict):
    c = parse_sla(text)
    assert (c.key, c.bound_ms, c.strict) == (key, bound, strict)


@pytest.mark.parametrize("text", ["p95_latency<=3s", "p95_ttft>=3s", "p95_ttft<=3", "ttft<=3s", "p95_ttft<=3 parsecs",
                                  "p100_ttft<=1s", ""])
def test_parse_sla_rejects(text):
    with pytest.raises(PlanError):
        parse_sla(text)


def test_parse_mix_and_scenarios():
    assert parse_mix("chat") == (("chat", 1.0),)
    assert parse_mix("chat=0.7, rag=0.3") == (("chat", 0.7), ("rag", 0.3))
    with pytest.raises(OfficeError):
        parse_mix("chat=0.5,poetry=0.5")
    sc = parse_scenario("two:boxes=2,routing=least-loaded,weights=fp8,prefix_hit=0.3")
    assert (sc.name, sc.boxes, sc.routing, sc.prefix_hit, sc.edits) == ("two", 2, "least-loaded", 0.3, ("weights=fp8",))
    assert parse_scenario("base").edits == ()
    # rejected where the scenario is made, before any office is simulated
    assert Scenario(boxes=1).boxes == 1
    with pytest.raises(PlanError, match="boxes must be >= 1, got 0"):
        Scenario(boxes=0)
    with pytest.raises(OfficeError):
        Office(staff=-1)


@pytest.mark.parametrize("office", [Office(per_day=20, at_hour=3), Office(per_day=20, at_hour=3, duration_s=600.0),
                                    Office(per_hour=10, day_profile="flat", at_hour=17.5)])
def test_a_plan_for_an_hour_nobody_asks_is_refused(office):
    """A window from a quiet hour either waits for the morning (an answer for 8h labelled 3h, at "0 req/s") or
    holds no request at all (every percentile 0 ms, "ok")."""
    with pytest.raises(PlanError, match=f"nobody asks at {office.at_hour:g}h on the"):
        plan(PROFILE, office)


# ------------------------------------------------------------------ search

@given(st.integers(0, 300), st.integers(1, 300), st.integers(1, 300))
@settings(max_examples=200, deadline=None)
def test_search_finds_the_threshold_of_a_monotone_predicate(t, start, n_max):
    lo, hi = search_max(lambda n: n <= t, start, n_max)
    assert lo == min(t, n_max)
    assert hi == (None if t >= n_max else t + 1)


@given(st.lists(st.booleans(), min_size=64, max_size=64), st.lists(st.booleans(), min_size=64, max_size=64),
       st.integers(1, 64), st.sampled_from([0.0, 0.05, 0.2]))
@settings(max_examples=300, deadline=None)
def test_search_is_monotone_for_nested_predicates_even_when_noisy(a, b, start, tol):
    """If strict(n) implies loose(n) at every n, the strict answer is never larger, however
    non-monotone the predicates are in n: the by-construction guarantee behind the plan."""
    strict = [x and y for x, y in zip(a, b)]
    loose = [x or (not x and y) for x, y in zip(a, b)]
    s, _ = search_max(lambda n: strict[n - 1], start, 64, tol)
    lo, _ = search_max(lambda n: loose[n - 1], start, 64, tol)
    assert s <= lo


@pytest.mark.parametrize("t, start, n_max, tol, visited", [
    (37, 10, 100, 0.0, [10, 20, 40, 30, 35, 37, 38]),  # gallop up from the office, then bisect
    (3, 10, 100, 0.0, [10, 5, 2, 3, 4]),                # halve down until one passes, then bisect
    (0, 10, 100, 0.0, [10, 5, 2, 1]),                   # nothing passes: down to 1, never 0
    (500, 10, 100, 0.0, [10, 20, 40, 80, 100]),         # n_max passes: no bracket
    (37, 300, 100, 0.0, [100, 50, 25, 37, 43, 40, 38]), # a start past n_max starts at n_max
    (37, 0, 100, 0.0, [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]),  # a start of 0 starts at 1
    (70, 10, 1000, 0.1, [10, 20, 40, 80, 60, 70, 75]),  # stops within tol x lo (7) of the answer
])
def test_search_visits_exactly_these_staff_counts(t, start, n_max, tol, visited):
    """The points the search simulates are the plan's cost and its curve: gallop, halving and bisection
    visit exactly these, and the answer is the bracket they leave."""
    seen = []
    lo, hi = search_max(lambda n: seen.append(n) or n <= t, start, n_max, tol)
    assert seen == visited
    assert lo == max((n for n in seen if n <= t), default=0)
    assert hi == min((n for n in seen if n > t), default=None)


@pytest.mark.parametrize("reps, conf, need", [(10, 0.9, 9), (10, 1.0, 10), (1, 0.9, 1), (3, 0.5, 2), (10, 0.05, 1),
                                              (20, 0.95, 19), (7, 0.3, 3)])
def test_replications_that_must_pass(reps, conf, need):
    """ceil(confidence x replications), at least one: the SLA's 'in >= 9 of 10 replications'."""
    assert PlanSettings(replications=reps, confidence=conf).need == need


@pytest.mark.parametrize("reps, need", [(1, 1), (2, 2), (3, 2), (5, 3)])
def test_capacity_replications_pass_by_their_median(reps, need):
    assert PlanSettings(capacity_replications=reps).capacity_need == need


@pytest.mark.parametrize("field, bad, good", [("replications", 0, 1), ("confidence", 0.0, 1.0),
                                              ("confidence", 1.01, 0.01), ("capacity_replications", 0, 1),
                                              ("staff_max", 0, 1), ("batch", 0, 1), ("n_jobs", 0, 1),
                                              ("n_jobs", -2, -1)])
def test_plan_settings_refuse_only_past_their_bounds(field, bad, good):
    words = {"staff_max": "staff search bound", "n_jobs": "worker processes"}.get(field, field.split("_")[0])
    with pytest.raises(PlanError, match=words):
        PlanSettings(**{field: bad})
    assert getattr(PlanSettings(**{field: good}), field) == good


def test_capacity_runs_the_suites_number_of_prompts_and_reads_its_ladder():
    """The suite's 11-rate-sweep sends 250 x rate prompts, at least 100 (its runs: 100, 100, 100, 125, 175 and
    250 at 0.1-1.0 req/s); capsim caps a step at 500. A capacity is read on the suite's ladder as the highest
    step at or under it."""
    assert [sweep_prompts(r) for r in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)] == [100, 100, 100, 125, 175, 250]
    assert sweep_prompts(0.41) == 102 and sweep_prompts(2.0) == 500 and sweep_prompts(3.0) == 500
    assert [ladder_step(r) for r in (None, 0.06, 0.1, 0.19, 0.2, 0.3, 0.49, 0.5, 0.82, 1.0, 1.05)] == \
        [None, None, 0.1, 0.1, 0.2, 0.3, 0.3, 0.5, 0.7, 1.0, 1.0]


def test_each_capacity_keeps_p95_ttft_under_its_threshold():
    """Re-simulated at the rate each threshold's search found (the suite's requests and arrivals, seed 42),
    the sweep keeps p95 TTFT under that threshold, and a rate 10 % higher does not (the search stops
    within 8 %); its ladder is the step under it."""
    def p95_ttft_ms(rate):
        n = sweep_prompts(rate)
        run = simulate_open(PROFILE, sweep_workload(PROFILE).sample(n, seed=42), OpenLoop(rate, 0.7, seed=42))
        return summarize_open(run)["p95_ttft_ms"]
    rps, ladder = predicted_capacity(PROFILE, settings=replace(PlanSettings(), n_jobs=1))
    for key, rate in rps.items():
        thr_ms = float(key[:-1]) * 1000.0
        assert rate is not None and ladder[key] == ladder_step(rate)
        assert p95_ttft_ms(rate) < thr_ms <= p95_ttft_ms(round(rate * 1.1 + 0.01, 2))


def test_the_office_as_sized_is_what_the_report_says_it_feels_like():
    """'How N staff feel it' and the SLAs at the office are the office's own staff count; a profile with
    fitted uncertainty adds the answer's spread, one without does not."""
    o = small_office(staff=60)
    r = plan(PROFILE, o, ["p95_ttft<=3s", "p50_tpot<=150ms"], settings=FAST)
    at = next(c for c in r.curve if c["staff"] == 60)
    assert {k: v["median_ms"] for k, v in r.at_office.items()} == {k: v["median_ms"] for k, v in at["metrics"].items()}
    assert PROFILE.uncertainty is not None and set(r.at_answer_uncertain) == set(r.at_answer)
    bare = replace(PROFILE, uncertainty=None)
    assert plan(bare, o, ["p95_ttft<=3s", "p50_tpot<=150ms"], settings=FAST).at_answer_uncertain == {}


def test_a_gateway_wait_constraint_needs_a_concurrency_cap():
    with pytest.raises(PlanError, match="gateway_wait constraints need a concurrency cap"):
        plan(PROFILE, small_office(), ["p95_gateway_wait<=2s"], settings=FAST)


# ------------------------------------------------------------------ plan: answers and monotonicity

def test_plan_answer_is_consistent_and_stricter_slas_never_give_more_staff():
    o = small_office()
    cache: dict = {}
    loose = plan(PROFILE, o, ["p95_ttft<=3s", "p50_tpot<=150ms"], settings=FAST, cache=cache)
    assert 25 < loose.staff < 400 and loose.binding in ("p95_ttft", "p50_tpot")
    assert 0 < loose.first_failing - loose.staff <= max(1, int(FAST.tol * loose.staff))
    assert all(v["ok"] for v in loose.at_answer.values())
    answers = {}
    for ttft in ("3s", "1s", "600ms", "400ms"):
        for tpot in ("200ms", "150ms", "120ms", "90ms"):
            r = plan(PROFILE, o, [f"p95_ttft<={ttft}", f"p50_tpot<={tpot}"], settings=FAST, cache=cache)
            answers[(ttft, tpot)] = r.staff
    order_t = ["3s", "1s", "600ms", "400ms"]
    order_p = ["200ms", "150ms", "120ms", "90ms"]
    for i, t in enumerate(order_t):
        for j, p in enumerate(order_p):
            if i + 1 < len(order_t):
                assert answers[(order_t[i + 1], p)] <= answers[(t, p)]
            if j + 1 < len(order_p):
                assert answers[(t, order_p[j + 1])] <= answers[(t, p)]
    # adding a constraint is stricter too
    more = plan(PROFILE, o, ["p95_ttft<=3s", "p50_tpot<=150ms", "p95_e2el<=40s"], settings=FAST, cache=cache)
    assert more.staff <= loose.staff


def test_faster_profile_never_gives_fewer_staff():
    o = small_office()
    sla = ["p95_ttft<=1s", "p50_tpot<=120ms"]
    base = plan(PROFILE, o, sla, settings=FAST).staff
    for edits in (["speed=1.25"], ["speed=2"], ["weights=fp8"]):
        faster = plan(PROFILE, o, sla, scenario=Scenario("f", tuple(edits)), settings=FAST).staff
        assert faster >= base, edits
    assert plan(PROFILE, o, sla, scenario=Scenario("slow", ("speed=0.7",)), settings=FAST).staff <= base
    assert plan(PROFILE, o, sla, scenario=Scenario("two", boxes=2), settings=FAST).staff >= base


def test_a_joblib_backend_set_by_the_caller_runs_the_same_search():
    """The README's Dask/Ray recipe: joblib.parallel_config(backend=...) around plan(), no new code.
    The whole result, not only the staff count, is the one-core result (tests/test_dask.py: a real cluster)."""
    import joblib
    from joblib.parallel import get_active_backend
    seen = []

    import simulator.evaluator as E
    real = E.joblib_map

    def spy(tasks, n_jobs):
        seen.append(type(get_active_backend()[0]).__name__)
        return real(tasks, n_jobs)

    o = small_office(requests=60)
    sla = ["p95_ttft<=1s", "p50_tpot<=120ms"]
    settings = replace(FAST, n_jobs=None)
    base = plan(PROFILE, o, sla, settings=replace(FAST, n_jobs=1))
    E.joblib_map = spy
    try:
        with joblib.parallel_config(backend="threading"):
            there = plan(PROFILE, o, sla, settings=settings)
    finally:
        E.joblib_map = real
    assert seen and set(seen) == {"ThreadingBackend"}
    assert there.to_json() == base.to_json()


def test_the_plan_does_not_depend_on_the_workers():
    """One core, two local worker processes (which run replications nobody asked for yet
    while they would idle) and a smaller batch: the same replications are read, so the
    same result, key by key, capacity included."""
    o = small_office(requests=60)
    sla = ["p95_ttft<=1s", "p50_tpot<=120ms"]
    s1 = replace(FAST, replications=6, confidence=0.8, n_jobs=1, capacity=True, capacity_thresholds_s=(10.0,),
                 capacity_tol=0.3)
    shown: dict = {}
    one = plan(PROFILE, o, sla, settings=s1, cache=shown).to_json()
    # some point was settled before all its replications ran: where workers could differ
    assert min(len(v) for v in shown.values()) < s1.replications
    two = plan(PROFILE, o, sla, settings=replace(s1, n_jobs=2)).to_json()
    assert one["capacity_rps"]["10s"] is not None
    assert two == one
    # the batch is what the result depends on: a batch of 1 shows fewer replications where a point
    # failed, but the decisions (and so the answer) are the same
    b1 = plan(PROFILE, o, sla, settings=replace(s1, batch=1)).to_json()
    assert (b1["staff"], b1["binding"], b1["capacity_rps"]) == (one["staff"], one["binding"], one["capacity_rps"])


def test_plan_reports_zero_when_even_one_person_fails():
    r = plan(PROFILE, small_office(mix=(("rag", 1.0),)), ["p95_ttft<=200ms"], settings=FAST)
    assert r.staff == 0 and r.first_failing == 1 and r.binding == "p95_ttft"


def test_capacity_reads_the_rate_sweep_rule():
    caps, ladder = predicted_capacity(PROFILE,
                                      settings=PlanSettings(capacity_replications=1, n_jobs=1, capacity_tol=0.1))
    assert set(caps) == {"2s", "5s", "10s"}
    vals = [caps[k] or 0.0 for k in ("2s", "5s", "10s")]
    assert vals == sorted(vals)
    assert 0.4 <= caps["5s"] <= 1.0 and 0.6 <= caps["10s"] <= 1.5  # measured on the seed's Spark: 0.7 and 1.0
    assert ladder["5s"] in (0.3, 0.5, 0.7, 1.0) and ladder["5s"] <= caps["5s"]


# ------------------------------------------------------------------ CLI

def _cli(args):
    from capsim.cli import main
    return CliRunner().invoke(main, ["plan", *args], catch_exceptions=False)


SMALL = ["--mix", "chat", "--requests", "80", "--warmup", "0", "--replications", "3", "--jobs", "1", "--staff-max", "300"]


def test_cli_json_keys_and_compare(tmp_path):
    res = _cli([*SMALL, "--no-capacity", "--sla", "p95_ttft<=2s", "--sla", "p50_tpot<=150ms", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert isinstance(d["staff"], int) and d["staff"] > 0
    assert d["binding"] in ("p95_ttft", "p50_tpot")
    assert d["capacity_rps"] == {}
    png = tmp_path / "p.png"
    res = _cli([*SMALL, "--no-capacity", "--compare", "base", "--compare", "fast:speed=1.5",
                "--compare", "two:boxes=2,routing=least-loaded", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "base" in res.output and "fast" in res.output and "two" in res.output and "largest staff" in res.output
    assert png.stat().st_size > 10_000


def test_cli_capacity_keys():
    res = _cli([*SMALL, "--staff-max", "30", "--capacity-replications", "1", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert set(d["capacity_rps"]) == {"2s", "5s", "10s"}


def test_an_unknown_profile_key_is_one_clear_line():
    """A what-if edit is applied to the profile inside the plan (the other flags' refusals, before any search,
    are tests/test_plan_cli.py's)."""
    res = _cli([*SMALL, "--no-capacity", "--set", "warp_drive=1"])
    assert res.exit_code != 0
    assert "unknown profile key" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_durations_plan_and_live_budget_share_one_parser():
    from calibrate.live import LiveError, parse_budget
    from simulator.load import LoadError, parse_duration

    cases = {"30s": 30, "2min": 120, "15m": 900, "500ms": 0.5, "1h": 3600, "1h30m": 5400, "90": 90, " 15 m ": 900,
             "0s": 0, 2.5: 2.5}
    for text, secs in cases.items():
        assert parse_duration(text) == pytest.approx(secs), text
    for bad in ("-5", "abc", "m", "1x", "nan", "inf", -1, "1h-3m", True, math.nan):
        with pytest.raises(LoadError, match="--think: expected a duration"):
            parse_duration(bad, "--think")
    assert parse_budget("10m") == 600 and parse_budget(120) == 120
    for bad in ("0", "-5", "2x"):  # a budget must be positive
        with pytest.raises(LiveError, match="cannot read the duration"):
            parse_budget(bad)


def test_a_plan_whose_requests_the_server_would_refuse_says_so():
    """max_model_len 6000 refuses the office's long RAG prompts (and the capacity search's 4000-token
    ones at range 0.9): a plan on the requests that are left would be silent nonsense."""
    from click.testing import CliRunner

    from capsim.cli import main
    res = CliRunner().invoke(main, ["plan", "--set", "max_model_len=6000"])
    assert res.exit_code == 1 and "requests of the office" in res.stderr and "maximum context length is 6000" in res.stderr
    res = CliRunner().invoke(main, ["plan", "--set", "max_model_len=6000", "--mix", "chat", "--staff", "5"])
    assert res.exit_code == 1 and "requests of the capacity search" in res.stderr
    res = CliRunner().invoke(main, ["plan", "--set", "num_blocks=1", "--no-capacity"])
    assert res.exit_code == 1 and "KV blocks" in res.stderr
