"""Property: every command (simulate, validate, calibrate, report, profile show, plan, measure, twin)
with random and adversarial flag values and files never prints a traceback, exits 0, 1 or 2, and on
error says why in exactly one line on stderr (issue 11). plan and twin get only values they must
refuse (a valid plan searches for seconds, a valid twin serves until stopped); measure gets a URL
where nothing listens."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.cli import main
from tests.helpers import refused_port

INTS = ["-5", "0", "abc", "1e3", "", "99999999999999999999", "-99999999999"]


def flag(name, valid, bad=()):
    """Mostly left out or valid; now and then one adversarial value (so most examples get to simulate)."""
    bad = st.sampled_from(list(bad) or INTS)
    pick = st.integers(0, 19)
    return st.tuples(pick, valid, bad).map(lambda t: [] if t[0] >= 10 else [name, t[2] if t[0] == 0 else t[1]])


def vals(*v):
    return st.sampled_from(list(v))


SETS = ["step_model.flops=0", "step_model.flops=nan", "flops=-1", "max_num_seqs=0", "max_model_len=64",
        "num_blocks=1", "bogus=1", "noequals", "api.request_s=inf", "max_num_batched_tokens=1.5"]
COMMON = [flag("--set", vals("speed=2", "weights=fp8", "step_noise_cv=0.1", "max_num_seqs=2"), SETS),
          flag("--replications", vals("1", "2"), ["0", "-1", "100000", "x"]),
          flag("--profile", vals("spark-gemma4-26b-a4b"), ["no-such-profile", "/proc/x/p.json"]),
          st.sampled_from([[], ["--json"]])]

OPEN = st.tuples(
    flag("--num-prompts", vals("1", "5", "12"), INTS + ["1000000000000"]),
    flag("--random-input-len", vals("16", "200", "4000"), INTS + ["10000000"]),
    flag("--random-output-len", vals("1", "8", "32"), INTS + ["10000000"]),
    flag("--random-range-ratio", vals("0", "0.5", "0.99"), ["1", "-0.1", "nan", "inf"]),
    flag("--random-prefix-len", vals("0", "10"), ["-3", "10000000"]),
    flag("--request-rate", vals("inf", "1", "50"), ["0", "-1", "nan", "fast", "1e-300", "-inf"]),
    flag("--burstiness", vals("1", "0.5", "2"), ["0", "-1", "inf", "nan"]),
    flag("--max-concurrency", vals("1", "4"), INTS),
    flag("--seed", vals("0", "42"), INTS),
    flag("--dataset-name", vals("random"), ["bogus", "sharegpt-ish"]),
    flag("--endpoint", vals("chat", "completions"), ["x"]),
    *COMMON)

CLOSED = st.tuples(
    flag("--pp", vals("16", "128", "16 128"), ["0", "-1", "10000000", "x", "64,128", "16 10000000"]),
    flag("--tg", vals("1", "8"), INTS + ["10000000"]),
    flag("--depth", vals("0", "64"), INTS + ["10000000"]),
    flag("--concurrency", vals("1", "2", "4"), INTS + ["1000000000"]),
    flag("--runs", vals("1", "2"), INTS),
    flag("--latency-mode", vals("api", "generation", "none"), ["x"]),
    *COMMON)


def check(res):
    out = res.output + res.stderr
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 1, 2), (res.exit_code, out)
    if res.exit_code:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:"), res.stderr


def _argv(parts):
    argv = []
    for p in parts:
        if len(p) == 2 and p[0] == "--pp":
            argv += [p[0], *p[1].split()]
        else:
            argv += p
    return argv


FAST = settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(OPEN)
def test_simulate_open_never_tracebacks(parts):
    check(CliRunner().invoke(main, ["simulate", "open", *_argv(parts)]))


@FAST
@given(CLOSED)
def test_simulate_closed_never_tracebacks(parts):
    check(CliRunner().invoke(main, ["simulate", "closed", *_argv(parts)]))


# ---------------------------------------------------------------- every other command
# Files a user may point a command at: missing, empty, truncated, a folder, the wrong kind.
import json as _json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

_FILES = Path(tempfile.mkdtemp(prefix="capsim-fuzz-"))
(_FILES / "empty.json").write_text("")
(_FILES / "truncated.json").write_text('{"engine": {"max_num_seqs": 4}, "step_model": ')
(_FILES / "list.json").write_text("[1, 2, 3]")
(_FILES / "dir").mkdir()
(_FILES / "run").mkdir()
(_FILES / "run" / "run.json").write_text(_json.dumps({"capsim_run": 1, "kind": "open", "status": "complete",
                                                       "records": 3, "num_prompts": 3}))
(_FILES / "run" / "records.jsonl").write_text('{"request_id": 0, "prompt_tokens": 3, "output_tokens": 2, '
                                              '"scheduled_time": 0, "start_time": 0, "chunk_times": [0.1, 0.2]}\n'
                                              '{"request_id": 1, "prompt_tok')
(_FILES / "garbage.md").write_text("| a | b |\n|---|\n| 1 |\n")
PATHS = [str(_FILES / n) for n in ("empty.json", "truncated.json", "list.json", "dir", "run", "garbage.md",
                                   "missing", "run/records.jsonl")] + ["/proc/x/y", "", "-", "seed"]
OUT = [str(_FILES / "dir"), "/proc/x/out.png", str(_FILES / "missing" / "x.csv"), str(_FILES / "o.txt"), ""]


def _any_of(*strategies):
    return st.tuples(*strategies).map(lambda parts: [x for p in parts for x in p])


def _bad(name, values):
    return st.sampled_from([[]] + [[name, v] for v in values])


SEVERAL = settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@SEVERAL
@given(_any_of(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2),
               _bad("--replications", ["0", "-1", "x"]), _bad("--profile", PATHS), _bad("--plot", OUT),
               _bad("--tokenizer", PATHS), _bad("--noise-floor", PATHS), st.sampled_from([[], ["--json"]])))
def test_validate_never_tracebacks(argv):
    check(CliRunner().invoke(main, ["validate", *argv]))


@SEVERAL
@given(_any_of(st.lists(st.sampled_from([p for p in PATHS if p != "seed"]), min_size=1, max_size=2),
               _bad("-o", OUT), _bad("--max-evals", ["0", "-1", "x"]), _bad("--plot", OUT), _bad("--name", ["", "x"])))
def test_calibrate_never_tracebacks(argv):
    check(CliRunner().invoke(main, ["calibrate", *argv]))


@SEVERAL
@given(st.tuples(st.sampled_from([p for p in PATHS if p]), _bad("--csv", OUT), _bad("--plot", OUT),
                 st.sampled_from([[], ["--json"]])).map(lambda t: [t[0], *t[1], *t[2], *t[3]]))
def test_report_never_tracebacks(argv):
    check(CliRunner().invoke(main, ["report", *argv]))


@SEVERAL
@given(st.tuples(st.sampled_from(PATHS + ["no-such-profile"]), _bad("--plot", OUT)).map(lambda t: [t[0], *t[1]]))
def test_profile_show_never_tracebacks(argv):
    check(CliRunner().invoke(main, ["profile", "show", *argv]))


# plan: only values it must refuse, so no example runs a whole search
PLAN_BAD = st.sampled_from([["--staff", v] for v in ("0", "-3", "x", "1e9")]
                           + [["--sla", v] for v in ("p95_ttft<=", "p101_ttft<=3s", "ttft<3s", "p95_ttft<=-1s",
                                                       "p95_ttft<=3parsecs", "", "p50_tpot<=nan ms")]
                           + [["--rps", v] for v in ("0", "-1", "nan", "inf")]
                           + [["--mix", v] for v in ("bogus=1", "chat=-1", "chat=x")]
                           + [["--burstiness", v] for v in ("0", "-1", "nan")]
                           + [["--seed", "-1"], ["--at", "12"], ["--per-day", "5", "--at", "25"],
                              ["--per-day", "5", "--at", "3"], ["--requests", "2000000"]]
                           + [["--profile", p] for p in PATHS if p not in ("", "-")]
                           + [["--set", s] for s in SETS if s not in ("step_model.flops=nan",)])


@SEVERAL
@given(_any_of(st.sampled_from([["open"], ["closed"]]),
               _bad("--num-prompts", INTS), _bad("--request-rate", ["0", "-1", "nan"]), _bad("--pp", INTS),
               _bad("--concurrency", INTS), _bad("--api-key", ["", "k"]), _bad("--timeout", ["0", "-1", "x"]),
               _bad("-o", OUT), _bad("--extra-body", ["{", "[1]", '{"a": 1}'])))
def test_measure_against_a_dead_server_never_tracebacks(argv):
    kind, *rest = argv
    # flags of the other kind of run are refused by click: still one line, exit 2
    with refused_port() as port:  # nothing listens, and no other process can start to: measure fails at once
        res = CliRunner().invoke(main, ["measure", kind, f"http://127.0.0.1:{port}", "--no-progress", *rest])
    check(res)
    assert res.exit_code != 0


# twin: only values it must refuse, so no example starts serving
TWIN_BAD = st.sampled_from([["--port", v] for v in ("70000", "-1", "x")] + [["--speed", v] for v in ("0", "-1", "nan", "x")]
                           + [["--seed", "-1"]]
                           + [["--profile", p] for p in PATHS if p not in ("", "-", "seed")]
                           + [["--set", s] for s in ("bogus=1", "noequals", "max_num_seqs=0")])


@pytest.mark.parametrize("command, bad", [("plan", PLAN_BAD), ("twin", TWIN_BAD)])
def test_plan_and_twin_refuse_bad_input_in_one_line(command, bad):
    @SEVERAL
    @given(st.lists(bad, min_size=1, max_size=3).map(lambda ps: [x for p in ps for x in p]))
    def refuses(argv):
        res = CliRunner().invoke(main, [command, *argv])
        check(res)
        assert res.exit_code != 0, argv

    refuses()
