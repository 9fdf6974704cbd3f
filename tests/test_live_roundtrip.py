"""The vLLM round trip on this machine: calibrate --live, then validate live.

One default server (vLLM CPU build, gemma3-dummy, 2 GiB of KV cache): calibrate.live
measures a closed-loop grid within a small budget and fits a profile; then two
open-loop loads run live (one light, one near saturation of the fitted profile's
capacity), each twice -- the second run of a load 'predicting' the first is the noise
floor. Then three servers with scheduler limits, one at a time, each with a load that
exercises its limit, predicted by the calibrated profile with the new server's limits:

- --max-num-seqs 2: a burst queues behind two running requests (TTFT of the queued
  ones, the waiting count over time);
- --max-num-batched-tokens 64: 1024-token prompts split into 64-token chunks (TTFT,
  steps that returned tokens);
- a 64-block KV cache (--kv-cache-memory-bytes, --max-model-len 512): requests
  outgrow their blocks and are preempted (against vllm:num_preemptions_total).

Targets: TTFT p50 and TPOT p50 within 20%, achieved RPS within 10% (for the loads whose
arrival rate the server can follow: light, near saturation, the chunking load; for a burst
RPS is one over the service time and follows TPOT), preemption count within 25%. The two
main loads are scored against the mean of their two runs (one run alone differs from the
other by up to 15-20% on this shared machine). Everything is printed (pytest -s) with the
noise floor beside it; CAPSIM_LIVE_KEEP=DIR keeps the run folders. The whole
module starts four servers and takes about 12-15 minutes here; it skips when the vLLM
CPU install is missing (fails instead with CAPSIM_REQUIRE_VLLM=1).
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

import pytest

from calibrate.live import LiveLoad, compare_load, live_calibrate, live_validate, measure_load, read_server
from simulator.load import OpenLoop
from simulator.sim import simulate_open
from simulator.summary import summarize_open
from simulator.workload import RandomWorkload
from tests.live_server import SETUP_SCRIPT, model_dir, start_vllm, vllm_available, vllm_home

# Four vLLM CPU server starts and their loads: 15-20 minutes here; `pytest -m slow` runs it.
pytestmark = [pytest.mark.live, pytest.mark.slow]

CAL_BUDGET = os.environ.get("CAPSIM_LIVE_BUDGET", "3m")
PAGE_BYTES = 128 * 2 * 256 * 4 * 3  # a KV block of gemma3-dummy: 128 tokens x K,V x 256 x fp32 x 3 layers
# what vLLM 0.32's CPU build does not export (its defaults), and the KV layout of Gemma 3
BASE_LIMITS = {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "async_scheduling": False}

SHAPE = dict(input_len=128, output_len=32, range_ratio=0.5)
SETTINGS = [
    ("max-num-seqs-2", ["--max-num-seqs", "2"], {"max_num_seqs": 2},
     LiveLoad("max-num-seqs-2", 128, 32, 8, rate=math.inf, endpoint="chat")),
    ("max-num-batched-tokens-64", ["--max-num-batched-tokens", "64", "--max-num-seqs", "16"],
     {"max_num_batched_tokens": 64, "max_num_seqs": 16},
     LiveLoad("max-num-batched-tokens-64", 1024, 16, 4, rate=0.5, seed=3, endpoint="chat")),
    ("small-kv-cache", ["--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * PAGE_BYTES + 4096)], {},
     LiveLoad("small-kv-cache", 242, 40, 16, rate=2.0, seed=0, endpoint="chat")),
]

TTFT_P50, TPOT_P50, RPS, PREEMPT = 20.0, 20.0, 10.0, 25.0


def _wait_for_other_servers(limit_s: float = 900.0) -> None:
    """One vLLM at a time on this machine: wait while someone else's server runs."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        r = subprocess.run(["pgrep", "-f", "vllm.entrypoints"], capture_output=True, text=True)
        if not r.stdout.strip():
            return
        print(f"waiting for another vLLM server to finish (pids {r.stdout.split()})", flush=True)
        time.sleep(30)
    pytest.fail("another vLLM server kept running for 15 minutes")


def _limits(extra: dict) -> dict:
    return BASE_LIMITS | {"hf_config": str(model_dir() / "config.json")} | extra


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    if not vllm_available():
        msg = f"vLLM CPU install missing under {vllm_home()}; run {SETUP_SCRIPT}"
        if os.environ.get("CAPSIM_REQUIRE_VLLM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    _wait_for_other_servers()
    keep = os.environ.get("CAPSIM_LIVE_KEEP")  # a folder to keep the runs in (pytest's tmp rotates)
    out = Path(keep) / time.strftime("live-roundtrip-%Y%m%d-%H%M%S") if keep else tmp_path_factory.mktemp("live-roundtrip")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    h = start_vllm(None)
    timings["start default server"] = h.startup_s
    try:
        facts = read_server(h.url, **_limits({}))
        t = time.monotonic()
        prof, cal_dir = live_calibrate(h.url, budget_s=CAL_BUDGET, out_dir=out / "calibrate", facts=facts, say=print)
        timings["calibrate"] = time.monotonic() - t
        specs = RandomWorkload(**SHAPE).sample(60, seed=0)
        mu = summarize_open(simulate_open(prof, specs, OpenLoop(rate=math.inf)))["request_throughput"]
        loads = [LiveLoad("light", num_prompts=20, rate=0.35 * mu, seed=1, endpoint="chat", **SHAPE),
                 LiveLoad("near-saturation", num_prompts=36, rate=0.85 * mu, seed=2, endpoint="chat", **SHAPE)]
        t = time.monotonic()
        lv = live_validate(h.url, prof, loads, out / "validate", repeat=True, say=print)
        timings["validate 2 loads x 2"] = time.monotonic() - t
    finally:
        h.stop()
    limits = {}
    for name, args, extra, load in SETTINGS:
        h = start_vllm(None, extra_args=args)
        timings[f"start {name}"] = h.startup_s
        try:
            f = read_server(h.url, **_limits(extra))
            p = prof.copy()
            p.engine = f.engine_limits()
            t = time.monotonic()
            run, steps = measure_load(h.url, load, out / name)
            limits[name] = (compare_load(p, load, run, out / name, steps, replications=5), f)
            timings[f"load {name}"] = time.monotonic() - t
        finally:
            h.stop()
    timings["total"] = time.monotonic() - t0
    return {"profile": prof, "cal_dir": cal_dir, "mu": mu, "validation": lv, "limits": limits, "timings": timings}


def _err(measured: float, predicted: float) -> float:
    return 100.0 * (predicted - measured) / measured if measured else math.nan


def test_report(roundtrip):
    """Print everything first (so a failing target below still shows the whole picture)."""
    rt = roundtrip
    prof = rt["profile"]
    pv = prof.provenance
    print(f"\n=== vLLM round trip (CPU build, gemma3-dummy) ===\ncalibration folder {rt['cal_dir']}")
    print(f"fit: median |error| {pv['median_abs_error_pct']:.1f}% over {len(pv['residuals'])} figures; "
          f"combine {prof.step_model.combine}; " + ", ".join(f"{k}={v:.4g}" for k, v in pv["fitted_parameters"].items()))
    print(f"capacity of the {SHAPE} shape on the fitted profile: {rt['mu']:.3f} req/s")
    print(rt["validation"].format())
    print(f"\n{'scheduler limit':<26} {'metric':<16} {'measured':>10} {'predicted':>10} {'error':>8}")
    for name, (res, _f) in rt["limits"].items():
        m = summarize_open(res.run)
        for k in ("median_ttft_ms", "p95_ttft_ms", "median_tpot_ms", "request_throughput"):
            print(f"{name:<26} {k:<16} {m[k]:>10.4g} {res.predicted[k]:>10.4g} {_err(m[k], res.predicted[k]):>+7.1f}%")
        for k, (a, b) in res.extras.items():
            print(f"{name:<26} {k:<16} {a:>10.4g} {b:>10.4g} {_err(a, b):>+7.1f}%")
        if res.series:
            s = res.series
            print(f"{'':<26} waiting over time (1 s samples): measured {[int(x) for x in s['waiting']]}")
            print(f"{'':<26}                                 predicted {[int(x) for x in s['waiting_pred']]}")
    print("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in rt["timings"].items()))


def test_calibration_fits_its_own_runs(roundtrip):
    pv = roundtrip["profile"].provenance
    assert pv["median_abs_error_pct"] < 15.0
    assert pv["engine_limits_origin"]["num_blocks"].startswith("/metrics")
    assert "consistent" in pv["engine_limits_origin"]["kv_groups"]


def _two_run_errors(lv) -> dict:
    """Per load and metric: error of the prediction against the mean of the two measurements."""
    out = {}
    for a, b in zip(lv.results, lv.repeats):
        ma, mb = summarize_open(a.run), summarize_open(b.run)
        for k in ("median_ttft_ms", "p95_ttft_ms", "median_tpot_ms", "request_throughput"):
            meas = (ma[k] + mb[k]) / 2
            pred = (a.predicted[k] + b.predicted[k]) / 2
            out[(a.load.name, k)] = (meas, pred, _err(meas, pred), _err(ma[k], a.predicted[k]),
                                     _err(mb[k], b.predicted[k]), _err(ma[k], mb[k]))
    return out


def test_open_loop_loads_within_targets(roundtrip):
    """Against the mean of the two runs of each load: one run differs from the other by up to
    15-20% on this shared 2-core machine (the noise floor), a two-run mean by about half that."""
    errs = _two_run_errors(roundtrip["validation"])
    print(f"\n{'load':<16} {'metric':<20} {'measured':>9} {'predicted':>9} {'error':>7} {'run 1':>7} {'run 2':>7} "
          f"{'noise':>7}   (measured, predicted: mean of the two runs)")
    for (load, k), (m, p, e, e1, e2, nf) in errs.items():
        print(f"{load:<16} {k:<20} {m:>9.4g} {p:>9.4g} {e:>+6.1f}% {e1:>+6.1f}% {e2:>+6.1f}% {nf:>+6.1f}%")
    for load in ("light", "near-saturation"):
        assert abs(errs[(load, "median_ttft_ms")][2]) <= TTFT_P50, load
        assert abs(errs[(load, "median_tpot_ms")][2]) <= TPOT_P50, load
        assert abs(errs[(load, "request_throughput")][2]) <= RPS, load


def test_queueing_behind_max_num_seqs(roundtrip):
    """A burst of 8 on a server that runs 2 at a time: TTFTs come in pairs, the queue drains in pairs.

    RPS of a burst is one over the service time (it follows TPOT); it is printed, not held to
    the 10% of the open-loop loads.
    """
    res, facts = roundtrip["limits"]["max-num-seqs-2"]
    assert facts.max_num_seqs == 2
    m = summarize_open(res.run)
    assert abs(_err(m["median_ttft_ms"], res.predicted["median_ttft_ms"])) <= TTFT_P50
    assert abs(_err(m["median_tpot_ms"], res.predicted["median_tpot_ms"])) <= TPOT_P50
    # 8 at once, 2 at a time: 6 wait at first, then 4, 2, 0 -- on the server and in the model
    assert res.extras["peak_waiting"] == (6.0, 6.0)
    assert set(res.series["waiting"]) == set(res.series["waiting_pred"]) == {0.0, 2.0, 4.0, 6.0}
    ttft = sorted(r.ttft for r in res.run.records)
    assert all(ttft[2 * i + 2] > ttft[2 * i + 1] + 5 * m["median_tpot_ms"] / 1000 for i in range(3))


def test_long_prompts_split_into_chunks(roundtrip):
    res, facts = roundtrip["limits"]["max-num-batched-tokens-64"]
    assert facts.max_num_batched_tokens == 64
    m = summarize_open(res.run)
    # a 1024-token prompt takes 16 steps of 64 tokens before its first token: TTFT is many steps long
    assert m["median_ttft_ms"] > 8 * m["median_tpot_ms"]
    assert abs(_err(m["median_ttft_ms"], res.predicted["median_ttft_ms"])) <= TTFT_P50
    assert abs(_err(m["median_tpot_ms"], res.predicted["median_tpot_ms"])) <= TPOT_P50
    assert abs(_err(m["request_throughput"], res.predicted["request_throughput"])) <= RPS
    # steps that returned tokens: partial-prompt steps return none, on the server and in the model
    a, b = res.extras["output_steps"]
    assert abs(_err(a, b)) <= 5.0


def test_preemptions_with_a_small_kv_cache(roundtrip):
    res, facts = roundtrip["limits"]["small-kv-cache"]
    assert facts.num_blocks is not None and facts.num_blocks <= 70
    measured, predicted = res.extras["num_preemptions"]
    assert measured > 0, "the load should preempt"
    assert abs(_err(measured, predicted)) <= PREEMPT
    m = summarize_open(res.run)
    assert abs(_err(m["median_ttft_ms"], res.predicted["median_ttft_ms"])) <= TTFT_P50
    assert abs(_err(m["median_tpot_ms"], res.predicted["median_tpot_ms"])) <= TPOT_P50
    assert res.extras["peak_waiting"][0] == res.extras["peak_waiting"][1]


def test_round_trip_fits_the_ci_budget(roundtrip):
    assert roundtrip["timings"]["total"] < 20 * 60
