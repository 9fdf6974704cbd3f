"""run.json's "meta" is RunResult's typed facts, flat: a run folder written before the facts were typed
(tests/data/old_run_format, written by capsim measure at commit 6912699 against measure.fakeserver)
still loads, and writing its facts back gives the same JSON, key for key and in the same order."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from measure.runfiles import json_dumps, load_run, load_run_info, run_summary
from simulator.records import OfficeFacts, RunResult

OLD = Path(__file__).parent / "data" / "old_run_format"


def _round_trip(meta: dict) -> dict:
    run = RunResult([], 0.0, 0.0, "open", **RunResult.facts_from_json(meta))
    return json.loads(json_dumps(run.meta_json()))


@pytest.mark.parametrize("kind", ["open", "closed"])
def test_an_old_run_folder_loads_and_writes_back_the_same_meta(kind):
    info = load_run_info(OLD / kind)
    run = load_run(OLD / kind)
    again = json.loads(json_dumps(run.meta_json()))
    assert again == info["meta"] and list(again) == list(info["meta"])
    assert run.extra == {}  # every key the old measure wrote has a typed field
    # and the summary computed from it is the one the old measure wrote
    assert json.loads(json_dumps(run_summary(run))) == json.loads((OLD / kind / "summary.json").read_text())


def test_the_typed_facts_of_an_old_open_run():
    run = load_run(OLD / "open")
    assert (run.open_loop.request_rate, run.open_loop.max_concurrency, run.open_loop.num_prompts) == (50.0, 4, 6)
    assert run.live.model == "fake-model" and run.live.status == run.status == "complete"
    assert run.live.failed == 3 and run.live.first_error == "HTTP 500: fake internal error"
    assert run.server_metrics.delta["ttft_count"] == 3 and run.server_metrics.available is True
    assert run.client.send_lag_s["max"] >= 0 and run.client.warnings == {}
    assert run.closed_loop is None and run.num_preemptions is None


def test_the_typed_facts_of_an_old_closed_run():
    run = load_run(OLD / "closed")
    assert run.closed_loop.tests == {"pp32 tg3 d0 c1": (32, 3, 0, 1), "pp32 tg3 d0 c2": (32, 3, 0, 2)}
    assert run.closed_loop.latency_mode == "api" and run.closed_loop.latency_s > 0
    assert run.open_loop is None and run.live.endpoint == "completions"


def test_rare_keys_nulls_and_unknown_keys_round_trip():
    meta = {"model": "m", "endpoint": "chat", "url": "http://h:1", "server": None, "wall_start": 1.0,
            "request_rate": "inf", "burstiness": 0.7, "max_concurrency": None, "num_prompts": 3, "seed": None,
            "sharegpt_dropped_records": 1, "sharegpt_records": 11, "stopped_in": "preparing prompts",
            "client_cpu_s": 0.0, "client_cpu_util": None, "client_warning": "cpu", "loop_lag_s": {"max": 0.5},
            "client_stalls": [[1.0, 0.5]], "client_stall_warning": "stalled", "send_lag_s": {"max": 0.4},
            "box_steal_share": 0.0132,
            "schedule_warning": "late", "status": "interrupted", "stop_reason": "interrupted by Ctrl-C",
            "failed": 0, "warmup_failed": 2, "wall_end": 2.0, "max_num_seqs": 4, "something_new": {"a": [1]}}
    assert _round_trip(meta) == meta
    facts = RunResult.facts_from_json(meta)
    assert facts["open_loop"].request_rate == math.inf
    assert facts["client"].steal_share == 0.0132
    assert facts["client"].warnings == {"client_warning": "cpu", "client_stall_warning": "stalled",
                                        "schedule_warning": "late"}
    assert facts["extra"] == {"max_num_seqs": 4, "something_new": {"a": [1]}}
    # a run that failed before it finished: run.json's meta holds its status and reason only
    failed = {"status": "failed", "stop_reason": "MeasureError: boom"}
    assert _round_trip(failed) == failed
    # a ramp: its three keys after the rest of the arrival process, and the rates it passed as sent
    ramp = {"request_rate": "inf", "burstiness": 1.0, "max_concurrency": None, "num_prompts": 9, "seed": 0,
            "ramp_up_strategy": "linear", "ramp_up_start_rps": 1, "ramp_up_end_rps": 4,
            "rps_change_events": [{"rps": 1, "timestamp": "2026-12-06T20:00:00"}]}
    assert _round_trip(ramp) == ramp
    op = RunResult.facts_from_json(ramp)["open_loop"]
    assert (op.ramp_up_strategy, op.ramp_up_start_rps, op.ramp_up_end_rps) == ("linear", 1, 4)
    assert "ramp_up_strategy" not in _round_trip({"request_rate": 2.0})  # none without a ramp


def test_the_defaults_of_facts_a_meta_leaves_out():
    assert RunResult.facts_from_json({"request_rate": 2.0})["open_loop"].burstiness == 1.0  # Poisson
    assert RunResult.facts_from_json({"seed": 3})["open_loop"].request_rate == math.inf
    closed = RunResult.facts_from_json({"tests": {"t": [1, 2, 0, 1]}})["closed_loop"]
    assert closed.tests == {"t": (1, 2, 0, 1)} and closed.latency_s == 0.0
    assert RunResult.facts_from_json({"latency_s": 0.2})["closed_loop"].tests == {}
    facts = RunResult.facts_from_json({"num_preemptions": 7})
    assert facts["num_preemptions"] == 7 and facts["extra"] == {} and "open_loop" not in facts
    assert RunResult.facts_from_json(None) == {"extra": {}}


def test_a_simulated_run_keeps_its_facts_typed():
    run = RunResult([], 0.0, 1.0, "closed")
    assert run.status == "complete" and run.meta_json() == {}
    office = RunResult([], 0.0, 1.0, "open", office=OfficeFacts()).meta_json()
    assert (office["boxes"], office["routing"], office["prefix_hit"], office["gateway_cap"]) == \
        (1, "round-robin", 0.0, None)
    assert "staff" not in office
