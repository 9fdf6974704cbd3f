"""Property: `capsim simulate open|closed` with random and adversarial flag values never prints a traceback,
exits 0, 1 or 2, and on error says why in exactly one line on stderr (issue 11)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.cli import main

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
