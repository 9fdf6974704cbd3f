"""`capsim plan`'s flags (capsim/plan_cli.py): what office, settings and scenario they make, and the one line
that refuses a contradiction.

The plan search itself is tested in tests/test_plan.py; here `plan` is replaced by a stand-in that
records its arguments, so each test reads what the flags made without running a search.
"""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import capsim.plan_cli as plan_cli
from capsim.cli import main
from simulator.office import Office
from simulator.plan import PlanError, PlanSettings, Scenario
from simulator.sla import parse_slas


@pytest.fixture
def asked(monkeypatch):
    """plan()'s arguments, one dict per scenario; the command then stops with a PlanError."""
    calls = []

    def stand_in(profile, office, constraints, scenario, settings, plot_points=0):
        calls.append(dict(office=office, constraints=constraints, scenario=scenario, settings=settings,
                          plot_points=plot_points))
        raise PlanError("stopped by the test")

    monkeypatch.setattr(plan_cli, "plan", stand_in)
    return calls


def plan(*args):
    return CliRunner().invoke(main, ["plan", *args])


def test_no_flags_plan_the_seeds_office_with_the_default_settings(asked):
    res = plan()
    assert res.exit_code == 1 and "stopped by the test" in res.output
    (a,) = asked
    assert a["office"] == Office()  # 25 staff at 0.3 req/s, the default mix, 5 turns, burstiness 0.7, 250 requests
    assert a["settings"] == PlanSettings(n_jobs=None)
    assert a["scenario"] == Scenario() and a["constraints"] == parse_slas(None)
    assert a["plot_points"] == 0  # no --plot: no curve to draw


def test_a_plot_asks_the_plan_for_its_curve(asked, tmp_path):
    plan("--plot", str(tmp_path / "plan.png"))
    assert asked[0]["plot_points"] == 8


def test_an_office_of_one(asked):
    plan("--staff", "1")
    assert asked[0]["office"].staff == 1


class Result:
    """A plan's answer as the command reads it."""

    def __init__(self, name="base"):
        self.name = name

    def to_json(self):
        return {"name": self.name}


def test_one_scenario_prints_its_plan_and_several_their_comparison(monkeypatch, tmp_path):
    shown = []
    monkeypatch.setattr(plan_cli, "plan", lambda profile, office, c, scenario, settings, plot_points=0:
                        Result(scenario.name))
    monkeypatch.setattr(plan_cli, "format_plan", lambda r: f"plan of {r.name}")
    monkeypatch.setattr(plan_cli, "format_compare", lambda rs: "compare " + " ".join(r.name for r in rs))
    monkeypatch.setattr(plan_cli, "plot_plan", lambda what, path: shown.append(what))
    png = str(tmp_path / "p.png")
    res = plan("--plot", png)
    assert res.output.splitlines()[0] == "plan of base" and shown[-1].name == "base"
    res = plan("--compare", "base", "fp8:weights=fp8", "--plot", png)
    assert res.output.splitlines()[0] == "compare base fp8" and [r.name for r in shown[-1]] == ["base", "fp8"]
    res = plan("--json")
    assert res.output == '{\n  "name": "base"\n}\n'
    res = plan("--json", "--compare", "base", "fp8:weights=fp8")
    assert json.loads(res.output) == {"scenarios": [{"name": "base"}, {"name": "fp8"}]}


def test_rates_and_bursts_become_the_offices(asked):
    plan("--staff", "10", "--rps", "0.6")
    plan("--per-day", "20", "--day-profile", "office")
    plan("--monday")
    plan("--burst", "2.5x10m", "--turns", "3", "--burstiness", "1", "--requests", "100", "--replications", "4",
         "--staff-max", "300", "--seed", "7")
    rps, per_day, monday, burst = (a["office"] for a in asked)
    assert (rps.staff, rps.per_hour) == (10, pytest.approx(0.6 / 10 * 3600))
    assert (per_day.per_day, per_day.day_profile) == (20, "office")
    assert (monday.burst_factor, monday.burst_s) == (5.0, 900.0)  # the seed's test J
    assert (burst.burst_factor, burst.burst_s, burst.turns, burst.burstiness, burst.requests) == (2.5, 600.0, 3, 1.0,
                                                                                                  100)
    s = asked[3]["settings"]
    assert (s.replications, s.staff_max, s.seed) == (4, 300, 7)


def test_parse_burst():
    assert plan_cli.parse_burst("5x15m") == (5.0, 900.0)
    assert plan_cli.parse_burst(" 0.5 X 90s") == (0.5, 90.0)
    assert plan_cli.parse_burst("2x1s") == (2.0, 1.0)
    for bad in ("5", "x15m", "0x15m", "5x0s", "-1x5m"):
        with pytest.raises(PlanError, match="--burst"):
            plan_cli.parse_burst(bad)


@pytest.mark.parametrize("args, words", [
    (["--staff", "0"], "--staff must be >= 1"),
    (["--staff", "-3"], "--staff must be >= 1"),
    (["--sla", "p95_latency<=3s"], "unknown metric"),
    (["--sla", "p95_ttft=3s"], "expected STAT_METRIC<=VALUE"),
    (["--sla", "p95_ttft<=3"], "give a unit"),
    (["--mix", "poetry"], "unknown work class"),
    (["--burst", "lots"], "--burst"),
    (["--compare", "a:boxes=0"], "boxes must be >= 1"),
    (["--profile", "no-such-box"], "no profile file"),
    (["--rps", "1", "--per-hour", "2"], "only one of --rps, --per-hour and --per-day"),
    (["--per-day", "3", "--per-hour", "2"], "only one of --rps, --per-hour and --per-day"),
    (["--rps", "1", "--per-hour", "2", "--per-day", "3"], "only one of --rps, --per-hour and --per-day"),
    (["--rps", "inf"], "--rps must be a finite number > 0"),
    (["--rps", "0"], "--rps must be a finite number > 0"),
    (["--monday", "--burst", "2x5m"], "only one of --burst and --monday"),
    (["--burst", "0x15m"], "factor and duration must be > 0"),
    (["--burst", "2x0m"], "factor and duration must be > 0"),
    (["--day-profile", "nosuch"], "--day-profile: unknown profile 'nosuch'"),
    (["--at", "12"], "--at needs --per-day or --day-profile"),
    (["--rps", "1", "--at", "12"], "--at needs --per-day or --day-profile"),
    (["--per-day", "20", "--at", "25"], "clock hour in [0, 24), got 25.0"),
    # options another turns off, which did nothing without a word
    (["--dask-timeout", "30s"], "--dask-timeout: only with --dask"),
    (["--no-capacity", "--capacity-replications", "3"], "--capacity-replications: the capacity search is off"),
])
def test_bad_input_is_one_line_before_any_search(asked, args, words):
    res = plan(*args)
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1
    assert words in res.output and not asked


def test_json_holds_no_nan_or_infinity(monkeypatch):
    """A plan's figures can be NaN (no request finished at some staff count) or infinite (no bound found):
    JSON has neither, so they print as null; numpy numbers print as plain numbers."""
    class Odd(Result):
        def to_json(self):
            return {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "np": np.float64(1.5), "i": np.int64(3),
                    "rows": [(1, math.nan)], 2: "key"}

    monkeypatch.setattr(plan_cli, "plan", lambda *a, **k: Odd())
    res = plan("--json", "--no-capacity")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"nan": None, "inf": None, "ninf": None, "np": 1.5, "i": 3, "rows": [[1, None]],
                                      "2": "key"}
