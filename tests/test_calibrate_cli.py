"""`capsim calibrate` and `capsim validate` offline (calibrate/cli.py): the report a user reads, the
defaults the help promises, and which profile validate says it scores.

Each test runs the command through click on the seed or one spark-bench run; where only the
default handed to the fit or the validation is checked, the library call is wrapped to record it
and runs with a small budget.
"""
import json
import re

import pytest
from click.testing import CliRunner

import calibrate.cli as ccli
from capsim.cli import main
from simulator.profile import load_profile
from tests.helpers import refused_port
from tests.test_importers import RESULTS, needs_data

SUITE = RESULTS / "gemma-4" / "gemma-4-26b-a4b-it" / "bf16"


def invoke(args):
    return CliRunner().invoke(main, args)


def test_calibrate_reports_the_roofline_share_and_the_misfit_of_the_profile_it_wrote(tmp_path):
    out = tmp_path / "p.json"
    res = invoke(["calibrate", "seed", "-o", str(out), "--max-evals", "2"])
    assert res.exit_code == 0, res.output
    prof = load_profile(str(out))
    bw, roof, u = prof.step_model.bw_weights, prof.model["roofline_bw"], prof.uncertainty
    assert roof == 273e9 and 0 < bw < roof
    assert (f"effective memory bandwidth {bw / 1e9:.0f} GB/s: {100 * bw / roof:.0f}% of the box's 273 GB/s roofline"
            in res.stdout)
    assert (f"model misfit on these runs (log RMS): decode {100 * u.model_sigma:.1f}%, prefill "
            f"{100 * u.model_sigma_prefill:.1f}%" in res.stdout)
    assert res.stdout.rstrip().endswith(f"wrote {out}")  # -o given: no hint of where validate looks


def test_json_reports_are_indented_by_two(tmp_path):
    res = invoke(["calibrate", "seed", "-o", str(tmp_path / "p.json"), "--max-evals", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith('{\n  "profile": ') and json.loads(res.stdout)["evaluations"] >= 1
    res = invoke(["validate", "seed", "--replications", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith('{\n  "rows": [\n    {\n      "source": ')


def test_calibrate_fits_with_30_evaluations_unless_told(tmp_path, monkeypatch):
    asked = []
    real = ccli.fit_closed

    def fit(runs, max_nfev, progress=None):
        asked.append(max_nfev)
        return real(runs, max_nfev=1, progress=progress)

    monkeypatch.setattr(ccli, "fit_closed", fit)
    for extra in ([], ["--max-evals", "1"]):
        res = invoke(["calibrate", "seed", "-o", str(tmp_path / "p.json"), "--json", *extra])
        assert res.exit_code == 0, res.output
    assert asked == [30, 1]  # --max-evals 1 is the smallest allowed


def test_validate_runs_10_replications_unless_told(monkeypatch):
    asked = []
    real = ccli.validate

    def validate(runs, prof, replications, **kw):
        asked.append(replications)
        return real(runs[:1], prof, replications=1, **kw)

    monkeypatch.setattr(ccli, "validate", validate)
    for extra in ([], ["--replications", "1"]):
        res = invoke(["validate", "seed", "--json", *extra])
        assert res.exit_code == 0, res.output
    assert asked == [10, 1]


def test_validate_live_takes_no_retries_but_not_fewer():
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        res = invoke(["validate", "--live", url, "--profile", "spark-gemma4-26b-a4b", "--retries", "-1"])
        assert res.exit_code == 2 and "--retries must be 0 or more, not -1" in res.output
        res = invoke(["validate", "--live", url, "--profile", "spark-gemma4-26b-a4b", "--retries", "0"])
    assert res.exit_code == 1 and "cannot reach the server" in res.output  # accepted: it went on to the server


@pytest.mark.parametrize("command, flags", [
    ("validate", ["--loads", "l.json"]), ("validate", ["--scale", "2"]), ("validate", ["--length-scale", "0.5"]),
    ("validate", ["--budget", "5m"]), ("validate", ["--repeat"]), ("validate", ["--retries", "2"]),
    ("validate", ["--endpoint", "chat"]), ("validate", ["--run-dir", "x"]),
    ("calibrate", ["--budget", "5m"]), ("calibrate", ["--run-dir", "x"]), ("calibrate", ["--tg", "64"]),
    ("calibrate", ["--pp-max", "4096"]), ("calibrate", ["--runs", "2"]),
    # what the server does not export (calibrate.live.live_limit_options), on both commands
    *[(c, f) for c in ("calibrate", "validate") for f in (
        ["--model", "m"], ["--max-num-seqs", "64"], ["--max-num-batched-tokens", "8192"], ["--kv-groups", "1x16"],
        ["--hf-config", "config.json"], ["--speed", "2"], ["--api-key", "k"], ["--insecure"])]])
def test_a_live_option_without_live_is_refused_not_ignored(command, flags):
    """Each did nothing offline: a user who meant a live run got an offline one without a word."""
    res = invoke([command, "seed", *flags])
    assert res.exit_code == 2 and f"{flags[0]}: only with --live URL" in res.stderr


@pytest.mark.parametrize("flag", ["--async-scheduling", "--no-async-scheduling"])
def test_a_live_switch_without_live_is_refused_under_both_its_names(flag):
    res = invoke(["calibrate", "seed", flag])
    assert res.exit_code == 2 and "--async-scheduling/--no-async-scheduling: only with --live URL" in res.stderr


def test_the_api_key_from_the_environment_is_no_live_option_given(monkeypatch):
    """OPENAI_API_KEY is set for other tools too: an offline run with it set is no mistake."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    res = invoke(["calibrate", "seed", "--max-evals", "1", "-o", "/dev/null"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("flags, words", [
    (["--scale", "nan"], "--scale must be a finite number > 0, got nan"),
    (["--scale", "0"], "'--scale': 0.0 is not in the range"),
    (["--length-scale", "-1"], "'--length-scale': -1.0 is not in the range"),
    (["--scale", "2", "--loads", "l.json"], "--scale scales the default loads; --loads gives its own"),
    (["--budget", "-5m"], "--budget: cannot read the duration '-5m'"),
    (["--loads", "no-such-loads.json"], "--loads no-such-loads.json:")])
def test_validate_live_reads_its_flags_before_it_asks_the_server(flags, words):
    with refused_port() as port:
        res = invoke(["validate", "--live", f"http://127.0.0.1:{port}", "--profile", "spark-gemma4-26b-a4b", *flags])
    assert res.exit_code in (1, 2) and words in res.output and "cannot reach" not in res.output


@pytest.mark.parametrize("command", ["calibrate", "validate"])
@pytest.mark.parametrize("flags, words", [
    (["--speed", "0"], "'--speed': must be a finite number > 0, got 0.0"),
    (["--speed", "nan"], "'--speed': must be a finite number > 0, got nan"),
    (["--speed", "-2"], "'--speed': must be a finite number > 0, got -2.0"),
    (["--max-num-seqs", "0"], "'--max-num-seqs': 0 is not in the range x>=1"),
    (["--max-num-batched-tokens", "-8"], "'--max-num-batched-tokens': -8 is not in the range x>=1")])
def test_a_live_run_refuses_impossible_server_facts_before_it_asks_the_server(command, flags, words):
    with refused_port() as port:
        res = invoke([command, "--live", f"http://127.0.0.1:{port}", "--profile", "spark-gemma4-26b-a4b", *flags]
                     if command == "validate" else [command, "--live", f"http://127.0.0.1:{port}", *flags])
    assert res.exit_code == 2 and words in res.output and "cannot reach" not in res.output


@pytest.mark.parametrize("flags, words", [(["--tg", "0"], "'--tg': 0 is not in the range x>=1"),
                                          (["--pp-max", "8"], "'--pp-max': 8 is not in the range x>=16")])
def test_calibrate_live_refuses_a_grid_it_would_have_changed_silently(flags, words):
    """--tg 0 ran the default 32, --pp-max 8 ran 16."""
    with refused_port() as port:
        res = invoke(["calibrate", "--live", f"http://127.0.0.1:{port}", *flags])
    assert res.exit_code == 2 and words in res.output


@needs_data
def test_validate_names_the_shipped_profile_where_nothing_was_calibrated(tmp_path, monkeypatch):
    """A run of the shipped profile's model, never calibrated: validate says it scores the shipped profile;
    the seed, which the shipped profile was fitted on, needs no such word."""
    monkeypatch.setenv("CAPSIM_PROFILE_DIR", str(tmp_path / "store"))
    real = ccli.validate
    monkeypatch.setattr(ccli, "validate", lambda runs, prof, **kw: real(runs[:1], prof, **kw))
    res = invoke(["validate", str(SUITE), "--replications", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[0] == "profile: the shipped Spark profile (no `capsim calibrate` of these sources yet)"
    res = invoke(["validate", "seed", "--replications", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert not re.search("^profile:", res.stderr, re.M)


def test_validates_progress_line_tells_the_time_left_at_the_pace_so_far(capsys):
    from types import SimpleNamespace

    now = iter([100.0, 130.0, 190.0])  # made at 100; tests done at 130 and 190
    told = ccli.validate_progress(clock=lambda: next(now))
    told(1, 4, SimpleNamespace(test="07-office-baseline"))
    told(2, 4, SimpleNamespace(test="08-sharegpt"))
    err = capsys.readouterr().err
    assert "predicted 1/4 tests (07-office-baseline), 00:30 elapsed, ETA 01:30" in err
    assert "predicted 2/4 tests (08-sharegpt), 01:30 elapsed, ETA 01:30" in err
