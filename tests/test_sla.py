"""simulator/sla.py by hand: the SLA grammar (`p95_ttft<=3s`), the units, the refusals, how a bound
prints, and the verdicts `plan` reads: met in at least `need` replications, the level `need` of them
stay under, the band, and the binding constraint."""
import math

import numpy as np
import pytest

from simulator.sla import (DEFAULT_SLA, Constraint, PlanError, binding_constraint, check_slas, fmt_ms, level,
                           parse_sla, parse_slas, summary_percentiles)


@pytest.mark.parametrize("text, stat, metric, bound, strict", [
    ("p95_ttft<=3s", "p95", "ttft", 3000.0, False),
    ("P50_TPOT <= 150ms", "p50", "tpot", 150.0, False),
    ("median_e2el<1min", "p50", "e2el", 60000.0, True),
    ("mean_itl<=0.5sec", "mean", "itl", 500.0, False),
    ("p99.9_ttft<=1.5e3ms", "p99.9", "ttft", 1500.0, False),
    ("p90_gateway_wait<10s", "p90", "gateway_wait", 10000.0, True),
    (" p99_ttft <= .25 s ", "p99", "ttft", 250.0, False),
])
def test_the_grammar_and_its_units(text, stat, metric, bound, strict):
    c = parse_sla(text)
    assert (c.stat, c.metric, c.bound_ms, c.strict, c.text) == (stat, metric, bound, strict, text.strip())
    assert c.key == f"{stat}_{metric}_ms" and c.label == f"{stat}_{metric}"


@pytest.mark.parametrize("text, words", [
    ("p95_ttft=3s", "expected STAT_METRIC<=VALUE with a unit"),
    ("p95_ttft<=3", "give a unit (ms, s or min)"),
    ("p95_ttft<=3h", "unknown unit 'h' (use ms, s or min)"),
    ("p95_foo<=3s", "unknown metric 'foo'"),
    ("p0_ttft<=3s", "percentile must be between 0 and 100"),
    ("p100_ttft<=3s", "percentile must be between 0 and 100"),
    ("p95_ttft<=0s", "the bound must be > 0"),
    ("p95_ttft<=0.0ms", "the bound must be > 0"),
])
def test_what_is_refused(text, words):
    with pytest.raises(PlanError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_sla(text)


def test_percentiles_just_inside_the_ends_are_taken():
    assert parse_sla("p0.1_ttft<=1s").percentile == 0.1 and parse_sla("p99.99_ttft<=1s").percentile == 99.99
    assert parse_sla("mean_ttft<=1s").percentile is None
    assert parse_sla("p95_ttft<=1e-3ms").bound_ms == 1e-3


def test_a_bound_is_met_at_its_value_unless_strict():
    c, s = parse_sla("p95_ttft<=3s"), parse_sla("p95_ttft<3s")
    assert c.ok(3000.0) and c.ok(2999.0) and not c.ok(3000.1)
    assert not s.ok(3000.0) and s.ok(2999.9)
    assert not c.ok(math.nan)


def test_how_bounds_print():
    assert str(Constraint("p95", "ttft", 3000.0)) == "p95_ttft<=3s"
    assert str(Constraint("p50", "tpot", 150.0, strict=True)) == "p50_tpot<150ms"
    assert str(Constraint("p95", "ttft", 3000.0, text="p95_ttft <= 3 s")) == "p95_ttft <= 3 s"  # as given
    assert [fmt_ms(v) for v in (None, math.nan, 120000.0, 60000.0, 90000.0, 1500.0, 1234.5, 999.0, 150.0, 0.5)] == \
        ["-", "-", "2min", "1min", "90s", "1.5s", "1.23s", "999ms", "150ms", "0.5ms"]
    assert fmt_ms(1000.0) == "1s" and fmt_ms(30000) == "30s"


def test_the_defaults_and_the_percentiles_a_summary_needs():
    assert [str(c) for c in parse_slas(None)] == list(DEFAULT_SLA) == ["p95_ttft<=3s", "p99_ttft<=6s",
                                                                       "p50_tpot<=150ms"]
    assert parse_slas([]) == parse_slas(None)
    assert summary_percentiles(parse_slas(["p99.9_ttft<=9s", "mean_tpot<=1s", "p95_itl<=1s"])) == (50, 90, 95, 99,
                                                                                                    99.9)
    assert summary_percentiles([]) == (50, 90, 95, 99)


def test_level_is_the_value_need_replications_stay_under():
    assert level([5.0, 1.0, 3.0, 4.0, 2.0], 4) == 4.0
    assert level([5.0, 1.0, 3.0], 1) == 1.0
    assert level([5.0, 1.0, 3.0], 9) == 5.0  # more than there are: the largest


def test_check_slas_on_replications():
    reps = [{"p95_ttft_ms": v, "p50_tpot_ms": 100.0 + i} for i, v in enumerate([1000.0, 2500.0, 3000.0, 4000.0,
                                                                                math.nan])]
    slas = parse_slas(["p95_ttft<=3s", "p50_tpot<=150ms"])
    got = check_slas(reps, slas, need=3)
    vals = [1000.0, 2500.0, 3000.0, 4000.0]  # a replication without the figure is not counted
    assert got["p95_ttft"] == {"ok": True, "passed": 3, "level_ms": 3000.0, "bound_ms": 3000.0,
                               "median_ms": 2750.0, "lo_ms": float(np.percentile(vals, 5)),
                               "hi_ms": float(np.percentile(vals, 95)), "severity": 1.0}
    assert not check_slas(reps, slas, need=4)["p95_ttft"]["ok"]
    assert check_slas(reps, slas, need=4)["p95_ttft"]["severity"] == pytest.approx(4000 / 3000)
    assert got["p50_tpot"]["passed"] == 5 and got["p50_tpot"]["level_ms"] == 102.0
    with pytest.raises(PlanError, match="p95_gateway_wait: no such summary value"):
        check_slas(reps, [parse_sla("p95_gateway_wait<=1s")], 1)


def test_the_binding_constraint_fails_most_often_then_furthest():
    slas = parse_slas(["p95_ttft<=3s", "p50_tpot<=100ms"])
    reps = [{"p95_ttft_ms": 4000.0, "p50_tpot_ms": 300.0}, {"p95_ttft_ms": 3500.0, "p50_tpot_ms": 90.0},
            {"p95_ttft_ms": 1000.0, "p50_tpot_ms": 80.0}]
    label, detail = binding_constraint(reps, slas)
    assert label == "p95_ttft"  # 2 failures against 1
    assert detail == {"failed": 2, "replications": 3, "worst_ms": 4000.0, "bound_ms": 3000.0, "median_ms": 3500.0}
    # as often: the one further over its bound (300 / 100 against 4000 / 3000)
    reps[1]["p50_tpot_ms"] = 120.0
    label, detail = binding_constraint(reps, slas)
    assert label == "p50_tpot" and detail["worst_ms"] == 300.0 and detail["failed"] == 2
    # exactly level: the first given
    tie = [{"p95_ttft_ms": 6000.0, "p50_tpot_ms": 200.0}]
    assert binding_constraint(tie, slas)[0] == "p95_ttft"
    assert binding_constraint(tie, slas[::-1])[0] == "p50_tpot"
    # a figure no replication has counts as failing, at no distance: a failing figure goes before it
    missing = [{"p95_ttft_ms": 3100.0}]
    label, detail = binding_constraint(missing, slas)
    assert label == "p95_ttft" and detail["failed"] == 1
    label, detail = binding_constraint([{"p50_tpot_ms": 50.0}], slas)
    assert label == "p95_ttft" and math.isnan(detail["worst_ms"])
    # even one met exactly at a strict bound (as far over as can be, at a severity of 1)
    strict = parse_slas(["p50_tpot<=100ms", "p95_ttft<3s"])
    assert binding_constraint([{"p95_ttft_ms": 3000.0}], strict)[0] == "p95_ttft"
