"""`capsim plan`'s text: the report of one plan and scenarios side by side, read line by line from a
plan result built by hand (tests/test_plan.py runs the search itself), so that a wrong word, unit or
column shows as a failed line.
"""
from simulator.office import Office
from simulator.plan import PlanSettings
from simulator.plan_report import PlanResult, format_compare, format_plan
from simulator.scenario import Scenario
from simulator.sla import parse_sla


def result(**kw):
    """A plan of a two-box scenario: 40 staff, p95 TTFT binding at 41."""
    slas = [parse_sla("p95_ttft<=2s"), parse_sla("p50_tpot<150ms")]
    base = dict(staff=40, unbounded=False, first_failing=41, binding="p95_ttft",
                binding_detail={"staff": 41, "failed": 3, "replications": 4, "median_ms": 2100.0, "worst_ms": 2600.0,
                                "bound_ms": 2000.0},
                slas=slas, office=Office(staff=25, max_concurrency=16, burst_factor=2.0, burst_s=600),
                scenario=Scenario("two", edits=("weights=fp8",), boxes=2, routing="least-loaded", prefix_hit=0.25),
                profile_name="spark", settings=PlanSettings(replications=4, confidence=0.75),
                rps=0.48,
                at_answer={"p95_ttft": {"level_ms": 1900.0, "ok": True}, "p50_tpot": {"level_ms": 140.0, "ok": True}},
                at_office={"p95_ttft": {"level_ms": 900.0, "ok": True}, "p50_tpot": {"level_ms": 120.0, "ok": True}},
                feel={"median_ttft_ms": 300.0, "p95_ttft_ms": 900.0, "p99_ttft_ms": 1200.0, "median_tpot_ms": 125.0,
                      "p95_e2el_ms": 65000.0, "max_concurrent_requests": 12.0},
                classes={"chat": {"median_ttft_ms": 250.0, "p95_ttft_ms": 800.0, "median_tpot_ms": 120.0,
                                  "p95_e2el_ms": 30000.0, "mean_prompt_tokens": 812.4},
                         "rag": {"median_ttft_ms": 900.0, "p95_ttft_ms": 1500.0, "median_tpot_ms": 130.0,
                                 "p95_e2el_ms": 60000.0, "mean_prompt_tokens": 4100.0}},
                capacity_rps={"2s": 0.52, "5s": 0.71, "10s": None},
                capacity_ladder_rps={"2s": 0.5, "5s": 0.7, "10s": None},
                at_answer_uncertain={"p95_ttft": {"lo_ms": 1500.0, "hi_ms": 2500.0},
                                     "p50_tpot": {"lo_ms": 120.0, "hi_ms": 170.0}})
    base.update(kw)
    return PlanResult(**base)


FULL = (
    'capsim plan: profile spark, scenario two (weights=fp8), 2 boxes (least-loaded), prefix-cache hit 25%\n'
    'office: 43.2 requests/person/hour, mix chat 0.55, multiturn 0.25, rag 0.15, code 0.05, burstiness 0.7, burst x2 for 10 min, max 16 in flight\n'
    'SLA, each met in >= 3 of 4 replications: p95_ttft<=2s, p50_tpot<150ms\n'
    '\n'
    'Largest staff: 40  (0.48 req/s)\n'
    'Binds first: p95_ttft (at 41 staff it fails in 3 of 4 replications run there; median 2.1s, worst 2.6s, bound 2s)\n'
    '\n'
    'constraint            bound            at 25 staff            at 40 staff     fit uncertainty, 5-95%   (the value met in 3 of 4 replications)\n'
    'p95_ttft                 2s               900ms ok                1.9s ok                1.5s - 2.5s\n'
    'p50_tpot              150ms               120ms ok               140ms ok              120ms - 170ms\n'
    "(fit uncertainty: the replications at 40 staff run again with the profile's fitted parameters and model error drawn per replication)\n"
    '\n'
    'How 25 staff feel it (median of replications): TTFT p50 300ms, p95 900ms, p99 1.2s; 8.0 tok/s per user (TPOT p50 125ms); E2EL p95 65s; peak 12 in flight or queued at the gateway\n'
    '  chat       TTFT p50   250ms  p95   800ms  TPOT p50   120ms  E2EL p95     30s  prompt 812 tok\n'
    '  rag        TTFT p50   900ms  p95    1.5s  TPOT p50   130ms  E2EL p95    1min  prompt 4100 tok\n'
    '\n'
    'Capacity on the 11-rate-sweep workload (random 4000/500, range 0.9, burstiness 0.7, seed 42):\n'
    '  p95 TTFT under        2s      5s     10s\n'
    '  req/s               0.52    0.71    none\n'
    '  suite ladder        0.50    0.70    none')


def test_a_plan_reads_scenario_office_sla_answer_table_feel_classes_and_capacity():
    assert format_plan(result()).split("\n") == FULL.split("\n")


COMPARE = (
    '                                                                                       two   base\n'
    'largest staff                                                                           40    ≥30\n'
    'office req/s at that staff                                                            0.48   0.48\n'
    'binds first                                                                       p95_ttft      -\n'
    'p95_ttft at 25 staff                                                                 900ms  900ms\n'
    'p50_tpot at 25 staff                                                                 120ms  120ms\n'
    'tok/s per user at 25                                                                   8.0      -\n'
    'capacity p95 TTFT<2s (req/s)                                                          0.52   0.52\n'
    'capacity p95 TTFT<5s (req/s)                                                          0.71   0.71\n'
    'capacity p95 TTFT<10s (req/s)                                                         none   none\n'
    'edits                          weights=fp8, boxes=2, routing=least-loaded, prefix_hit=0.25      -')


def test_scenarios_side_by_side_show_unbounded_answers_and_missing_values_as_such():
    other = result(scenario=Scenario(), staff=30, unbounded=True, binding=None, feel={})
    assert format_compare([result(), other]).split("\n") == COMPARE.split("\n")


NONE_PASS = (
    'capsim plan: profile spark\n'
    'office: 43.2 requests/person/hour, mix chat 0.55, multiturn 0.25, rag 0.15, code 0.05, burstiness 0.7\n'
    'SLA, each met in >= 3 of 4 replications: p95_ttft<=2s, p50_tpot<150ms\n'
    '\n'
    'Largest staff: 0 (the SLA fails already at 1 staff)\n'
    '\n'
    'constraint            bound            at 25 staff   (the value met in 3 of 4 replications)\n'
    'p95_ttft                 2s              2.5s FAIL\n'
    'p50_tpot              150ms               120ms ok\n'
    '\n'
    'How 25 staff feel it (median of replications): TTFT p50 300ms, p95 900ms, p99 1.2s; 8.0 tok/s per user (TPOT p50 125ms); E2EL p95 65s; peak 12 in flight')


def test_a_plan_no_staff_count_passes_names_where_it_fails():
    r = result(staff=0, first_failing=1, binding=None, unbounded=False, at_answer_uncertain={}, office=Office(staff=25),
               scenario=Scenario(), classes={}, capacity_rps={},
               at_office={"p95_ttft": {"level_ms": 2500.0, "ok": False}, "p50_tpot": {"level_ms": 120.0, "ok": True}})
    assert format_plan(r).split("\n") == NONE_PASS.split("\n")


UNBOUNDED = (
    'capsim plan: profile spark\n'
    'office: 45 requests/person/hour at 9h (office day), mix chat 0.55, multiturn 0.25, rag 0.15, code 0.05, burstiness 0.7\n'
    'SLA, each met in >= 3 of 4 replications: p95_ttft<=2s, p50_tpot<150ms\n'
    '\n'
    'Largest staff: >= 300  (0.48 req/s)\n'
    'Binds first: nothing up to the search bound of 5000 staff (--staff-max)\n'
    '\n'
    'constraint            bound            at 25 staff           at 300 staff   (the value met in 3 of 4 replications)\n'
    'p95_ttft                 2s               900ms ok                1.9s ok\n'
    'p50_tpot              150ms               120ms ok               140ms ok\n'
    '\n'
    'How 25 staff feel it: no completed requests')


def test_an_unbounded_plan_with_a_day_profile_and_no_completed_requests():
    r = result(staff=300, unbounded=True, first_failing=None, binding=None, binding_detail=None, feel={},
               classes={"chat": {}}, capacity_rps={}, at_answer_uncertain={}, scenario=Scenario(),
               office=Office(staff=25, per_day=300))
    assert format_plan(r).split("\n") == UNBOUNDED.split("\n")


def test_plan_json_carries_the_answer_its_bound_and_the_setup():
    d = result().to_json()
    assert (d["staff"], d["unbounded"], d["first_failing_staff"], d["binding"], d["rps"]) == (40, False, 41, "p95_ttft", 0.48)
    assert d["sla"] == [{"constraint": "p95_ttft<=2s", "key": "p95_ttft_ms", "bound_ms": 2000.0, "strict": False},
                        {"constraint": "p50_tpot<150ms", "key": "p50_tpot_ms", "bound_ms": 150.0, "strict": True}]
    assert (d["confidence"], d["replications"]) == (0.75, 4)
    assert d["per_person_rps"] == 43.2 / 3600
    assert d["scenario"] == {"name": "two", "edits": ["weights=fp8"], "boxes": 2, "routing": "least-loaded",
                             "prefix_hit": 0.25}
    assert d["office"]["max_concurrency"] == 16 and d["profile"] == "spark"
    assert d["capacity_rps"] == {"2s": 0.52, "5s": 0.71, "10s": None}
    assert d["at_staff_with_fit_uncertainty"]["p50_tpot"] == {"lo_ms": 120.0, "hi_ms": 170.0}


def test_the_office_line_gives_the_mix_as_the_shares_the_office_draws():
    """--mix chat=0.5,rag=0.6 said 'mix chat 0.5, rag 0.6' where the office drew 0.455 and 0.545."""
    r = result(office=Office(staff=25, mix=(("chat", 0.5), ("rag", 0.6))))
    assert "mix chat 0.455, rag 0.545, burstiness 0.7" in format_plan(r).split("\n")[1]
