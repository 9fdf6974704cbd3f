"""Measured runs as the live fit and validation use them (calibrate.live.runs): a twin's wall time as
model time, the prompt scale a server applied, and a run made again while its client was held up."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from calibrate.live import closed_run_from_result, measured_prompt_scale, read_server, scale_run, until_free
from simulator.records import ClientHealth, ClosedLoopFacts, RunResult
from tests.helpers import canned_server, rec
from tests.test_read_server import exposition, routes


def closed_run(prompts=(100, 104, 98), pp=96, chunks=(0.5, 0.6, 0.7), latency_s=0.02, error=None) -> RunResult:
    records = [rec(i, 10.0 + i, [10.0 + i + c for c in chunks], prompt=p, test="pp96 tg3 d0 c1",
                   error=error if i == 0 else None, scheduled=9.999 + i) for i, p in enumerate(prompts)]
    return RunResult(records, start_time=9.5, end_time=20.0, kind="closed",
                     closed_loop=ClosedLoopFacts(tests={"pp96 tg3 d0 c1": (pp, 3, 0, 1)}, latency_s=latency_s,
                                                 latency_mode="generation", runs=3))


def test_a_twins_wall_time_becomes_model_time():
    run = closed_run()
    before = [(r.start_time, r.scheduled_time, list(r.chunk_times), r.end_time) for r in run.records]
    assert scale_run(run, 1.0) is run and run.live is None  # no speed: untouched
    assert scale_run(run, 4.0) is run
    for r, (start, sched, chunks, end) in zip(run.records, before):
        assert (r.start_time, r.scheduled_time, r.end_time) == (4 * start, 4 * sched, 4 * end)
        assert np.allclose(r.chunk_times, 4 * np.asarray(chunks))
    assert (run.start_time, run.end_time, run.closed_loop.latency_s) == (38.0, 80.0, 0.08)
    assert run.live.clock_scale == 4.0


def test_the_prompt_scale_is_the_median_of_served_over_asked():
    """96 tokens asked, 100, 104 and 98 served (a chat template the server added): the median 100/96;
    a failed request and a record of no test of the run do not count."""
    assert measured_prompt_scale([closed_run()]) == pytest.approx(100 / 96)
    assert measured_prompt_scale([closed_run(error="HTTP 500")]) == pytest.approx(101 / 96)
    stray = closed_run()
    for r in stray.records:
        r.test = "another"
    assert measured_prompt_scale([stray]) == 1.0 and measured_prompt_scale([]) == 1.0
    deep = closed_run(prompts=(140, 140, 140), pp=96)
    deep.closed_loop.tests["pp96 tg3 d0 c1"] = (96, 3, 32, 1)  # a context of 32 tokens before the prompt
    assert measured_prompt_scale([deep]) == pytest.approx(140 / 128)


def test_a_measured_run_as_calibrates_closed_run():
    with canned_server(routes(exposition())) as url:
        facts = read_server(url)
    c = closed_run_from_result(closed_run(), facts, source="/runs/x", test="02-single")
    assert (c.source, c.test, c.model, c.runs, c.latency_mode, c.latency_ms) == ("/runs/x", "02-single", "m", 3,
                                                                                 "generation", 20.0)
    assert c.server == facts.server_dict() and [(r.pp, r.tg, r.concurrency) for r in c.rows] == [(96, 3, 1)]
    bare = closed_run()
    bare.closed_loop = ClosedLoopFacts(tests=bare.closed_loop.tests)  # no runs or latency mode recorded
    c = closed_run_from_result(bare, facts, source="/runs/x", test="02-single")
    assert (c.runs, c.latency_mode, c.latency_ms) == (1, "generation", 0.0)


def held(run: RunResult) -> RunResult:
    run.client = ClientHealth(warnings={"schedule_warning": "sends were late"})
    return run


def test_a_run_whose_client_was_held_up_is_made_again_and_set_aside(tmp_path, caplog):
    out = tmp_path / "02-single"
    made = []

    def attempt():
        out.mkdir()
        (out / "records.jsonl").write_text(str(len(made)))
        made.append(held(closed_run()) if len(made) < 2 else closed_run())
        return made[-1], len(made)

    with caplog.at_level(logging.INFO, logger="capsim.calibrate.live.runs"):
        run, extra, aside = until_free(attempt, out, 5, lambda k: tmp_path / f"aside-{k}" / out.name, "02-single")
    assert run is made[2] and extra == 3 and len(made) == 3
    assert [a["run_dir"] for a in aside] == [str(tmp_path / f"aside-{k}" / "02-single") for k in (1, 2)]
    assert all(a["warning"] == "sends were late" and "send_lag_s" in a for a in aside)
    assert [(tmp_path / f"aside-{k}" / "02-single" / "records.jsonl").read_text() for k in (1, 2)] == ["0", "1"]
    assert (out / "records.jsonl").read_text() == "2"
    assert caplog.messages.count("  02-single: set aside and run again: sends were late") == 2


def test_retries_run_out_and_a_callers_own_check():
    runs = iter([held(closed_run()), held(closed_run()), closed_run()])
    run, _, aside = until_free(lambda: (next(runs), None), None, 1, lambda k: None, "x")
    assert run.client.warnings and len(aside) == 1 and aside[0]["run_dir"] is None  # one retry, still held up
    checked = []

    def check(r):
        checked.append(r)
        return "the box ran slow" if len(checked) == 1 else None

    run, _, aside = until_free(lambda: (closed_run(), None), None, 3, lambda k: None, "x", check=check)
    assert len(checked) == 2 and run is checked[1] and [a["warning"] for a in aside] == ["the box ran slow"]
