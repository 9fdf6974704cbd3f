"""calibrate.live.validate's scoring without a server: a load "measured" by simulating it on the very
profile that predicts it, so every figure has one right answer (the twin and vLLM round trips measure
for real)."""
import dataclasses
import json

import numpy as np
import pytest

import calibrate.live.validate as live_validation
from calibrate.live import EXTRA_METRICS, LiveLoad, compare_load, live_validate
from calibrate.validate import METRICS
from simulator.profile import load_profile
from simulator.records import ServerMetrics
from simulator.sim import simulate_open
from simulator.summary import summarize_open

PROFILE = load_profile("spark-gemma4-26b-a4b")
LOAD = LiveLoad("l1", 500, 40, 30, rate=2.0, seed=3)


def measured(load=LOAD, preemptions=None, start=0.0, profile=PROFILE):
    """The load simulated as if measured, its clock starting at `start` (a live run's is the wall clock)."""
    run = simulate_open(profile, load.workload().sample(load.num_prompts, load.seed), load.pattern(1.0),
                        fast_forward=False)
    run.start_time, run.end_time = run.start_time + start, run.end_time + start
    for r in run.records:
        r.scheduled_time, r.start_time, r.end_time = r.scheduled_time + start, r.start_time + start, r.end_time + start
        r.chunk_times = r.chunk_times + start
    if preemptions is not None:
        run.server_metrics = ServerMetrics(delta={"num_preemptions": preemptions})
    return run


def chunk_steps(run):
    return len(np.unique(np.concatenate([r.chunk_times for r in run.records])))


def test_replication_zero_replays_the_measured_run_to_the_last_figure():
    run = measured(start=1000.0)
    res = compare_load(PROFILE, LOAD, run, None, None, replications=3)
    m = summarize_open(run)
    keys = [k for k in METRICS if k in m]  # all but the probe's: this load ran none
    assert len(keys) == len(METRICS) - 3 and not any(k.startswith("probe_") for k in res.predicted)
    assert {k: res.predicted[k] for k in keys} == pytest.approx({k: m[k] for k in keys}, rel=1e-9)
    assert all(res.band_lo[k] <= res.median[k] <= res.band_hi[k] for k in keys)
    assert any(res.band_lo[k] < res.band_hi[k] for k in keys)  # the other two redraw the load
    assert res.extras == {} and res.series == {} and res.run_dir is None  # no /metrics read, no steps counted
    alone = compare_load(PROFILE, LOAD, run, None, None, replications=1)  # the replay only: no band
    assert all(alone.band_lo[k] == alone.predicted[k] == alone.band_hi[k] for k in keys)


def test_the_servers_counters_beside_the_replays():
    """Preemptions from the run's /metrics delta; engine steps that returned tokens against the replay's
    distinct chunk times."""
    run = measured(preemptions=4.0)
    res = compare_load(PROFILE, LOAD, run, None, steps=123.0, replications=1)
    assert res.extras == {"num_preemptions": (4.0, 0.0), "output_steps": (123.0, float(chunk_steps(run)))}


def test_the_queue_gauges_read_over_the_run_only(tmp_path):
    """metrics.jsonl's samples inside the run's window (wall clock: model time / clock scale), errors and
    samples without the gauges left out; the replay's gauges at the same instants."""
    scale = 2.0
    run = measured(start=1000.0)
    t0, t1 = run.start_time / scale, run.end_time / scale
    samples = [{"t": t0 - 1.0, "num_requests_waiting": 50, "num_requests_running": 50},  # before the run
               {"t": t0 + 0.5, "num_requests_waiting": 2, "num_requests_running": 6},
               {"t": t0 + 1.0, "error": "timeout", "num_requests_waiting": 90},
               {"t": t0 + 1.5, "kv_cache_usage_perc": 0.5},
               {"t": t0 + 2.5, "num_requests_waiting": 0, "num_requests_running": 10},
               {"t": t1 + 1.0, "num_requests_waiting": 70, "num_requests_running": 70}]  # after it
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    res = compare_load(PROFILE, LOAD, run, tmp_path, None, replications=1, clock_scale=scale)
    assert res.series["t"] == pytest.approx([1.0, 5.0])  # model seconds from the run's start
    assert (res.series["waiting"], res.series["running"]) == ([2.0, 0.0], [6.0, 10.0])
    assert res.extras["mean_waiting"][0] == 1.0 and res.extras["peak_waiting"][0] == 2.0
    assert res.extras["mean_running"][0] == 8.0
    assert res.extras["mean_waiting"][1] == pytest.approx(np.mean(res.series["waiting_pred"]))
    assert res.extras["mean_running"][1] == pytest.approx(np.mean(res.series["running_pred"]))
    assert all(0 <= r <= PROFILE.engine.max_num_seqs for r in res.series["running_pred"])
    assert res.series["running_pred"][0] > 0  # at 1 s of a 2 req/s load the replay is busy
    (tmp_path / "metrics.jsonl").write_text(json.dumps(samples[1]) + "\n")
    assert compare_load(PROFILE, LOAD, run, tmp_path, None, replications=1, clock_scale=scale).series == {}


def test_the_replays_gauges_are_vllms_after_each_step(tmp_path, monkeypatch):
    """vLLM sets its gauges after a step's outputs: running less the requests the next schedule admits,
    waiting as the last schedule left it; before the first step both 0; after the last the queue empty
    and running as the last step left it."""
    trace = [{"time": 1.0, "running": 3, "waiting": 2, "admitted": [7]},
             {"time": 2.0, "running": 5, "waiting": 1, "admitted": []},
             {"time": 3.0, "running": 4, "waiting": 6, "admitted": None}]
    run = measured(start=100.0)
    real = live_validation.predict_live
    monkeypatch.setattr(live_validation, "predict_live", lambda *a: real(*a)[:5] + (trace,))
    samples = [{"t": 100.0 + t, "num_requests_waiting": 0, "num_requests_running": 0}
               for t in (0.5, 1.5, 2.0, 3.0, 3.5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    res = compare_load(PROFILE, LOAD, run, tmp_path, None, replications=1)
    assert res.series["t"] == [0.5, 1.5, 2.0, 3.0, 3.5]
    assert res.series["running_pred"] == [0.0, 2.0, 5.0, 4.0, 4.0]
    assert res.series["waiting_pred"] == [0.0, 2.0, 1.0, 6.0, 0.0]  # at the last step's instant, as it left it
    assert res.extras["peak_waiting"] == (0.0, 6.0) and res.extras["mean_running"] == (0.0, 3.0)


def test_live_validate_scores_each_load_and_its_repeat(tmp_path, monkeypatch):
    loads = [LOAD, LiveLoad("l2", 300, 20, 20, rate=1.0, seed=5)]
    runs = {ld.name: measured(ld, preemptions=1.0) for ld in loads}
    again = {ld.name: measured(ld, preemptions=2.0) for ld in loads}
    seen = []

    def measure_load(url, load, out_dir, model, clock_scale, api_key, retries, check, insecure):
        assert insecure is False  # certificates checked unless --insecure
        seen.append((url, load.name, out_dir.name, retries))
        return (again if out_dir.name.endswith("-repeat") else runs)[load.name], 50.0

    monkeypatch.setattr(live_validation, "measure_load", measure_load)
    lv = live_validate("http://box:8000", PROFILE, loads, tmp_path, replications=2, repeat=True)
    assert seen == [("http://box:8000", "l1", "l1", 1), ("http://box:8000", "l2", "l2", 1),
                    ("http://box:8000", "l1", "l1-repeat", 1), ("http://box:8000", "l2", "l2-repeat", 1)]
    rows = lv.validation.rows
    assert {r.test for r in rows} == {"l1", "l2"} and {r.source for r in rows} == {"live http://box:8000"}
    for r in rows:
        if r.metric in METRICS:
            assert r.measured == r.predicted  # the replay of a run the profile made
        else:
            assert r.metric in ("num_preemptions", "output_steps")
            assert r.band_lo <= r.predicted <= r.band_hi
    assert [r.metric for r in rows if r.test == "l1" and r.metric in EXTRA_METRICS] == ["num_preemptions",
                                                                                      "output_steps"]
    assert {r.measured for r in rows if r.metric == "num_preemptions"} == {1.0}  # the first pass's
    assert [r.extras["num_preemptions"][0] for r in lv.results + lv.repeats] == [1.0, 1.0, 2.0, 2.0]
    assert lv.floor is not None
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert [x["load"]["name"] for x in saved["loads"]] == ["l1", "l2", "l1", "l2"]
    assert saved["loads"][0]["extras"]["num_preemptions"] == {"measured": 1.0, "predicted": 0.0}
    assert "noise_floor" in saved
    once = live_validate("http://box:8000", PROFILE, loads[:1], tmp_path / "once", replications=1)
    assert (len(once.results), once.repeats, once.floor) == (1, [], None)


def test_preemptions_get_the_redrawn_loads_band_and_engine_steps_a_point(tmp_path, monkeypatch):
    """A cache that preempts: the preemptions' band is the redrawn loads' (5-95 %), held to take in the
    replay's count; the engine steps are counted on the replay only."""
    small = PROFILE.copy()
    small.engine = dataclasses.replace(small.engine, num_blocks=900)
    run = measured(preemptions=7.0, profile=small)
    assert run.num_preemptions > 0
    monkeypatch.setattr(live_validation, "measure_load", lambda *a, **kw: (run, 50.0))
    lv = live_validate("http://box:8000", small, [LOAD], tmp_path, replications=4)
    rows = {r.metric: r for r in lv.validation.rows}
    pre, steps = rows["num_preemptions"], rows["output_steps"]
    assert (pre.measured, pre.predicted) == (7.0, float(run.num_preemptions))
    assert pre.band_lo <= pre.predicted <= pre.band_hi and pre.band_lo < pre.band_hi
    assert steps.band_lo == steps.predicted == steps.band_hi == chunk_steps(run)
