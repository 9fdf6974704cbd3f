"""The vLLM round trip on this machine: calibrate --live, then validate live.

One default server (vLLM CPU build, gemma3-dummy, 2 GiB of KV cache): calibrate.live
measures a closed-loop grid (two runs of every test) within a small budget and fits a
profile; then two open-loop loads run live, one light (0.35 of the fitted profile's
capacity) and one near saturation (0.8 of it), each twice. Then three servers with
scheduler limits, one at a time, each with a load that exercises its limit (run twice),
predicted by the calibrated profile with the new server's limits:

- --max-num-seqs 2: a burst queues behind two running requests (TTFT of the queued
  ones, the waiting count over time);
- --max-num-batched-tokens 64: 1024-token prompts split into 64-token chunks, eight
  arriving about one TTFT apart (TTFT, steps that returned tokens);
- a 64-block KV cache (--kv-cache-memory-bytes, --max-model-len 512): a burst of 24
  requests that outgrow their blocks and are preempted (against
  vllm:num_preemptions_total).

Targets: TTFT p50 and TPOT p50 within 20%, achieved RPS within 10%, preemption count
within 25%. Every load is scored against the mean of its two runs: one run of a load
differs from the other by up to 15-25% on this 2-core machine (the noise floor, printed
beside every error), a two-run mean by less. A run whose client fell behind its arrival
schedule is run again; so is a run after which the box's own reference speed is more than
DRIFT off its speed just after calibration (BoxSpeed); a pair of runs that disagree beyond
the usual noise gets a third run and the median one counts (RETRIES, DISAGREE below); a
calibration whose profile puts those reference probes more than CALIBRATION_DRIFT off their
measure was taken on a slowed box, and the server is calibrated once more.
TTFT p50 and TPOT p50 are held to 20% as the median over the five loads (as capsim
validate scores a family) and to twice that per load (see
test_timing_targets_across_the_five_loads for why). Achieved RPS is held to 10% where
the server follows the arrival rate (light, near saturation); where it cannot (the burst,
the chunking and small-KV loads arrive faster than the server serves them) achieved RPS is
one over the service time, a timing figure like TPOT.
Preemptions: within 25%.
Everything is printed (pytest -s); CAPSIM_LIVE_KEEP=DIR keeps the run folders. The
module starts four servers and takes 16-24 minutes here (5-6 more with a second
calibration); it skips when the vLLM CPU install is missing (fails instead with
CAPSIM_REQUIRE_VLLM=1).
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from calibrate.live import (LiveLoad, compare_load, live_calibrate, live_validate, measure_load, predict_live,
                            read_server)
from capsim.logs import stderr_lines
from simulator.load import OpenLoop
from simulator.sim import simulate_open
from simulator.summary import summarize_open
from simulator.workload import RandomWorkload
from tests.live_server import SETUP_SCRIPT, model_dir, start_vllm, vllm_available, vllm_home
from tests.helpers import reporter

pytestmark = [pytest.mark.live]

# The budget must leave room for the c16 stages with 256-1024-token prompts: they pin the prefill
# FLOP rate that the chunked-prefill and small-cache loads rest on (with 4 minutes, a server that
# probed slow got a 10-stage plan without them).
CAL_BUDGET = os.environ.get("CAPSIM_LIVE_BUDGET", "5m")
CAL_RUNS = 2  # every grid test twice: one CPU-build measurement alone is 5-15% off its repeat
PAGE_BYTES = 128 * 2 * 256 * 4 * 3  # a KV block of gemma3-dummy: 128 tokens x K,V x 256 x fp32 x 3 layers
# what vLLM 0.32's CPU build does not export (its defaults), and the KV layout of Gemma 3
BASE_LIMITS = {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "async_scheduling": False}

SHAPE = dict(input_len=128, output_len=32, range_ratio=0.5)
SETTINGS = [
    ("max-num-seqs-2", ["--max-num-seqs", "2"], {"max_num_seqs": 2},
     LiveLoad("max-num-seqs-2", 128, 32, 8, rate=math.inf, endpoint="chat")),
    ("max-num-batched-tokens-64", ["--max-num-batched-tokens", "64", "--max-num-seqs", "16"],
     {"max_num_batched_tokens": 64, "max_num_seqs": 16},
     # A burst: the prompts are computed one after another in 64-token chunks, and each request
     # decodes beside the next one's chunks, so every TPOT is a mixed step's. Spread out (8 at
     # 0.2/s), a request's decode met another's prefill or not by chance: one load measured TPOT
     # p50 57, 105 and 52 ms on one server, and the model said 57 or 111 by the same knife edge.
     # As a burst it measured 142 and 153 against 156 predicted, 128 output steps against 128.
     LiveLoad("max-num-batched-tokens-64", 1024, 16, 8, rate=math.inf, seed=3, endpoint="chat")),
    ("small-kv-cache", ["--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * PAGE_BYTES + 4096)], {},
     # A burst, not a Poisson stream: with arrivals spread out, the count turns on which step a
     # request's next block is due relative to the next arrival, so identical runs of one
     # Poisson load (16 at 2/s) measured 9 and 13 preemptions (the model said 9 or 13 by the
     # same knife edge). A burst of 250-token prompts had one edge left: whether the idle
     # engine's first step takes one request or two (a race of ~1 ms between the frontend and
     # the engine's wake), which moved the model's count between 8 and 11 from one calibration
     # to the next. 300-token prompts (3 blocks a layer group: three fit, the fourth block is
     # due after 84 tokens) give 8 whichever way that race goes: measured 8 and 8, predicted 8.
     LiveLoad("small-kv-cache", 292, 90, 24, rate=math.inf, seed=0, endpoint="chat")),
]

TTFT_P50, TPOT_P50, RPS, PREEMPT = 20.0, 20.0, 10.0, 25.0
# A box that holds the client up sends another load than the one predicted, or stamps tokens
# late: such a run is set aside and run again (calibrate.live.measure_load; on schedule, sends
# are a few ms late, at most 80 ms in six full round trips). A run disturbed on the server's side alone shows as two runs of
# one load that disagree: kept pairs differed by at most 25% in TTFT or TPOT p50, so a pair
# further apart than 1.5x gets a third run, and the load is scored on the median of the three.
RETRIES = 2
DISAGREE = 1.5
# A box slowed from outside between calibration and a load (CI's box once ran the light and
# near-saturation loads 24-33% slower in TPOT than the calibration minutes before, its server
# starts 48% slower than usual) measures another server than the calibrated one. A reference
# request pair, one at a time, after every load run tells it: a run after which the pair's TPOT
# is off by more than DRIFT from its first measure (just after calibration) is set aside and
# run again once the box is back (BoxSpeed).
DRIFT = 0.2
# The box can be slowed during the calibration's minutes as well: CI's box once ran the ladder's c2-c16
# stages 12-17% slower than the prompt stages after them, and the profile fitted to that mix put the
# reference probe at 92.5 ms against 72.7 measured (+27%; calm calibrations put it within +2 to +12%),
# and every decode-bound load 20-42% slow. A profile that misses the probes by more than this is set
# aside and the server calibrated once more (the second one counts whatever its error; both are printed).
CALIBRATION_DRIFT = 0.2
PROBE = LiveLoad("box-speed", 128, 32, 2, rate=math.inf, max_concurrency=1, seed=9, endpoint="chat")


def _wait_for_other_servers(limit_s: float = 900.0) -> None:
    """One test server at a time on this machine: wait while another capsim test server runs (this
    suite's or another checkout's, on the same model folder); a user's own vLLM is not waited on."""
    t0 = time.monotonic()
    ours = f"vllm.entrypoints.openai.api_server --model {model_dir()}"
    while time.monotonic() - t0 < limit_s:
        r = subprocess.run(["pgrep", "-f", ours], capture_output=True, text=True)
        if not r.stdout.strip():
            return
        print(f"waiting for another capsim test server to finish (pids {r.stdout.split()})", flush=True)
        time.sleep(30)
    pytest.fail("another capsim test server kept running for 15 minutes")


class BoxSpeed:
    """The box's decode speed now against its speed just after calibration: PROBE's TPOT p50.
    `check(run)` (measure_load's check) measures it; off by more than DRIFT it waits for the box
    to come back (up to WAITS probes, WAIT_S apart) and says why the run does not stand."""

    WAITS, WAIT_S = 4, 20.0

    def __init__(self, url: str, out: Path):
        self.url, self.out, self.seen, self.runs = url, out, [], []
        # three: one calm probe is 98-120 ms on this box (a single reference at its edge left 15% of the 20%)
        self.ref = float(np.median([self.tpot() for _ in range(3)]))

    def profile_error(self, profile) -> float:
        """How far `profile` puts the reference probes' TPOT from their measure (their median, as a
        fraction): a profile fitted while the box ran at its usual speed predicts them within a few
        percent, one fitted while it was slowed does not (see CALIBRATION_DRIFT)."""
        pred = [predict_live(profile, run, PROBE, replications=1)[0]["median_tpot_ms"] for run in self.runs[:3]]
        return float(np.median(pred)) / self.ref - 1.0

    def rebind(self, url: str) -> None:
        """Another server of the same model on the same box: the same reference speed."""
        self.url = url

    def tpot(self) -> float:
        run, _ = measure_load(self.url, PROBE, self.out / f"{len(self.seen):03d}")
        t = summarize_open(run)["median_tpot_ms"]
        self.seen.append(t)
        self.runs.append(run)
        return t

    def check(self, run) -> str | None:
        reason = None
        for _ in range(self.WAITS):
            drift = self.tpot() / self.ref - 1.0
            if abs(drift) <= DRIFT:
                return reason
            if reason is None:
                reason = (f"the box's reference TPOT was {100 * drift:+.0f}% off its value after calibration "
                          f"({self.seen[-1]:.0f} against {self.ref:.0f} ms)")
            time.sleep(self.WAIT_S)
        return reason


def _limits(extra: dict) -> dict:
    return BASE_LIMITS | {"hf_config": str(model_dir() / "config.json")} | extra


@pytest.fixture(scope="module", autouse=True)
def progress_lines():
    """The live modules' progress lines (logging) on stderr, as calibrate --live shows them."""
    with stderr_lines("capsim.calibrate.live"):
        yield


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
        prof, cal_dir = live_calibrate(h.url, budget_s=CAL_BUDGET, out_dir=out / "calibrate", facts=facts,
                                       runs=CAL_RUNS)
        timings["calibrate"] = time.monotonic() - t
        box = BoxSpeed(h.url, out / "box-speed")
        calibrations = [(cal_dir, box.profile_error(prof))]
        if abs(calibrations[0][1]) > CALIBRATION_DRIFT:
            print(f"the calibrated profile puts the box's reference TPOT {100 * calibrations[0][1]:+.0f}% off its "
                  f"measure ({box.ref:.0f} ms): the box was not at its usual speed while calibrating; once more")
            t = time.monotonic()
            prof, cal_dir = live_calibrate(h.url, budget_s=CAL_BUDGET, out_dir=out / "calibrate-again", facts=facts,
                                           runs=CAL_RUNS)
            timings["calibrate again"] = time.monotonic() - t
            calibrations.append((cal_dir, box.profile_error(prof)))
        specs = RandomWorkload(**SHAPE).sample(60, seed=0)
        mu = summarize_open(simulate_open(prof, specs, OpenLoop(rate=math.inf)))["request_throughput"]
        loads = [LiveLoad("light", num_prompts=20, rate=0.35 * mu, seed=1, endpoint="chat", **SHAPE),
                 LiveLoad("near-saturation", num_prompts=40, rate=0.8 * mu, seed=2, endpoint="chat", **SHAPE)]
        t = time.monotonic()
        lv = live_validate(h.url, prof, loads, out / "validate", repeat=True, retries=RETRIES, check=box.check)
        runs = {a.load.name: [a, b] for a, b in zip(lv.results, lv.repeats)}
        for load in loads:
            _third_run_if_disturbed(h.url, prof, load, out / "validate", runs[load.name], box)
        timings["validate 2 loads x 2"] = time.monotonic() - t
    finally:
        h.stop()
    limits = {}
    for name, args, extra, load in SETTINGS:
        h = start_vllm(None, extra_args=args)
        timings[f"start {name}"] = h.startup_s
        box.rebind(h.url)
        try:
            f = read_server(h.url, **_limits(extra))
            p = prof.copy()
            p.engine = f.engine_limits()
            t = time.monotonic()
            results = [_run_load(h.url, p, load, out / name, box), _run_load(h.url, p, load, out / f"{name}-repeat", box)]
            _third_run_if_disturbed(h.url, p, load, out, results, box)
            runs[name] = results
            limits[name] = f
            timings[f"load {name}"] = time.monotonic() - t
        finally:
            h.stop()
    timings["total"] = time.monotonic() - t0
    return {"profile": prof, "cal_dir": cal_dir, "calibrations": calibrations, "mu": mu, "validation": lv,
            "limits": limits, "runs": runs, "timings": timings, "out": out, "box": box}


def _run_load(url, profile, load, d, box: BoxSpeed):
    run, steps = measure_load(url, load, d, retries=RETRIES, check=box.check)
    return compare_load(profile, load, run, d, steps, replications=5)


def _third_run_if_disturbed(url, profile, load, out, results, box: BoxSpeed) -> None:
    """Two runs of one load further apart than DISAGREE on TTFT or TPOT p50: a third run."""
    for k in ("median_ttft_ms", "median_tpot_ms"):
        v = [summarize_open(r.run)[k] for r in results]
        if max(v) > DISAGREE * min(v):
            print(f"{load.name}: the two runs disagree on {k} ({v[0]:.0f} and {v[1]:.0f} ms): a third run")
            results.append(_run_load(url, profile, load, out / f"{load.name}-third", box))
            return


def _err(measured: float, predicted: float) -> float:
    return 100.0 * (predicted - measured) / measured if measured else math.nan


KEYS = ("median_ttft_ms", "p95_ttft_ms", "median_tpot_ms", "request_throughput")


def _combine(meas: list[float], pred: list[float]) -> tuple:
    """(measured, predicted, error, per-run errors, noise floor). Two runs: the error of their
    means; three (a disturbed pair got a third): the median run. The noise floor is run 2
    'predicting' run 1."""
    per = [_err(m, p) for m, p in zip(meas, pred)]
    if len(meas) == 2:
        m, p = float(np.mean(meas)), float(np.mean(pred))
        err = _err(m, p)
    else:
        m, p, err = float(np.median(meas)), float(np.median(pred)), float(np.median(per))
    return m, p, err, per, _err(meas[0], meas[1])


def _score(results) -> dict:
    """Per metric of a load's runs: see _combine."""
    ms = [summarize_open(r.run) for r in results]
    out = {k: _combine([m[k] for m in ms], [r.predicted[k] for r in results]) for k in KEYS}
    for k in [k for k in results[0].extras if all(k in r.extras for r in results)]:
        out[k] = _combine([r.extras[k][0] for r in results], [r.extras[k][1] for r in results])
    return out


def _all_errors(rt) -> dict:
    return {name: _score(results) for name, results in rt["runs"].items()}


def _share(x: float | None) -> str:
    return "untold" if x is None else f"{100 * x:.1f}%"


def test_report(roundtrip):
    """Print everything first (so a failing target below still shows the whole picture)."""
    rt = roundtrip
    say = reporter(rt["out"] / "report.txt")  # also kept as a file: pytest without -s shows nothing
    prof = rt["profile"]
    pv = prof.provenance
    say(f"\n=== vLLM round trip (CPU build, gemma3-dummy) ===\ncalibration folder {rt['cal_dir']}")
    say("the profile's reference TPOT against its measure, by calibration: "
        + ", ".join(f"{Path(d).name} {100 * e:+.1f}%" for d, e in rt["calibrations"])
        + f"; the kept calibration's steadiness (its probe again after the grid): {pv['steadiness']}")
    say(f"fit: median |error| {pv['median_abs_error_pct']:.1f}% over {len(pv['residuals'])} figures; "
          f"combine {prof.step_model.combine}; " + ", ".join(f"{k}={v:.4g}" for k, v in pv["fitted_parameters"].items()))
    say(f"decode factors by batch size: {prof.step_model.decode_factors}")
    say(f"capacity of the {SHAPE} shape on the fitted profile: {rt['mu']:.3f} req/s")
    say(rt["validation"].format())
    for name in rt["limits"]:
        for r in rt["runs"][name]:
            if r.series:
                say(f"{name:<26} waiting over time (1 s samples): measured  {[int(x) for x in r.series['waiting']]}")
                say(f"{'':<26}                                 predicted {[int(x) for x in r.series['waiting_pred']]}")
    for name, results in rt["runs"].items():
        for r in results:
            lag = r.run.client.send_lag_s or {}
            for a in r.run.live.set_aside:
                say(f"{name}: set aside and run again: {a['warning']} ({a['run_dir']}; box steal "
                    f"{_share(a.get('steal_share'))})")
            loop = r.run.client.loop_lag_s or {}
            say(f"{name:<26} client send lag behind schedule: p50 {1e3 * lag.get('p50', math.nan):.1f} ms, "
                f"max {1e3 * lag.get('max', math.nan):.1f} ms; event loop lag max "
                f"{1e3 * loop.get('max', math.nan):.1f} ms; box steal {_share(r.run.client.steal_share)}")
    say(f"\n{'load':<26} {'metric':<18} {'measured':>9} {'predicted':>9} {'error':>7} {'noise':>7}  per run   "
        f"(two runs: error of their mean; three: the median run)")
    for load, rows in _all_errors(rt).items():
        for k, (m, p, e, per, nf) in rows.items():
            say(f"{load:<26} {k:<18} {m:>9.4g} {p:>9.4g} {e:>+6.1f}% {nf:>+6.1f}%  "
                + " ".join(f"{x:+.1f}%" for x in per))
    box = rt["box"]
    seen = [round(t, 1) for t in box.seen]
    say(f"\nbox reference TPOT p50 (ms, {PROBE.num_prompts} requests of {PROBE.input_len}+{PROBE.output_len} one at "
        f"a time): {box.ref:.1f} after calibration (median of {seen[:3]}), then after each load run {seen[3:]}")
    say("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in rt["timings"].items()))


def test_calibration_fits_its_own_runs(roundtrip):
    pv = roundtrip["profile"].provenance
    assert pv["median_abs_error_pct"] < 15.0
    assert pv["engine_limits_origin"]["num_blocks"].startswith("/metrics")
    assert "consistent" in pv["engine_limits_origin"]["kv_groups"]


def _service_bound(rt, load: str) -> bool:
    """Whether the server fell behind the load's arrivals. A server that keeps up ends the run about
    one request latency after the last arrival, so its achieved rate is n / (arrival span + mean
    E2EL); one that falls behind ends later, as its queue grows (a burst: about half that rate).
    Measured here: 0.99-1.13 on the light and near-saturation loads, 0.54-0.64 on the bursts. Not
    achieved / arrival rate: 40 requests at 0.8 of capacity achieve 0.82-0.85 of their rate while the
    server keeps up (the last one's latency is a tenth of the run), so a cut at 0.8 of it was noise."""
    r = rt["runs"][load][0]
    m = summarize_open(r.run)
    sched = [x.scheduled_time for x in r.run.records]
    kept_up = m["completed"] / (max(sched) - min(sched) + m["mean_e2el_ms"] / 1e3)
    return m["request_throughput"] < 0.8 * kept_up


LOADS = ("light", "near-saturation", "max-num-seqs-2", "max-num-batched-tokens-64", "small-kv-cache")
SANITY = 2.0  # no single load may miss a timing target by more than this factor


def _assert_sane(rt, load: str) -> None:
    """One load: within twice the timing targets (the targets themselves are held across loads)."""
    e = _all_errors(rt)[load]
    assert abs(e["median_ttft_ms"][2]) <= SANITY * TTFT_P50, (load, e["median_ttft_ms"])
    assert abs(e["median_tpot_ms"][2]) <= SANITY * TPOT_P50, (load, e["median_tpot_ms"])
    rate_err = e["request_throughput"][2]
    if _service_bound(rt, load):
        # achieved rate is one over the service time: hold the time it implies to TPOT's bound, as a
        # rate error is not (predicting 32% too fast in time is +47% in rate, 32% too slow -24%)
        time_err = 100.0 * (100.0 / (100.0 + rate_err) - 1.0)
        assert abs(time_err) <= SANITY * TPOT_P50, (load, time_err, e["request_throughput"])
    else:
        assert abs(rate_err) <= RPS, (load, RPS, e["request_throughput"])


def test_timing_targets_across_the_five_loads(roundtrip):
    """TTFT p50 and TPOT p50: the median over the five loads of |error| within 20%, as capsim
    validate scores a family. Per load the CPU server is too noisy to hold 20% every time: its
    speed drifts between the calibration's minutes and a load's (its 2-request decode step
    measured 96-121 ms in four calibrations, 100-111 ms on the --max-num-seqs 2 servers), so a
    single load has missed by up to 26% while the median stayed under 10%; every error is in
    the report. Achieved RPS: within 10% for each load whose arrival rate the server follows
    (light, near saturation); where it cannot (burst, past capacity) RPS is one over the
    service time, a timing figure like TPOT."""
    errs = _all_errors(roundtrip)
    for key, target in (("median_ttft_ms", TTFT_P50), ("median_tpot_ms", TPOT_P50)):
        med = float(np.median([abs(errs[load][key][2]) for load in LOADS]))
        assert med <= target, (key, med, {load: round(errs[load][key][2], 1) for load in LOADS})
    for load in ("light", "near-saturation"):
        assert not _service_bound(roundtrip, load)
        assert abs(errs[load]["request_throughput"][2]) <= RPS, (load, errs[load]["request_throughput"])


def test_open_loop_loads_are_sane(roundtrip):
    for load in ("light", "near-saturation"):
        _assert_sane(roundtrip, load)


def test_queueing_behind_max_num_seqs(roundtrip):
    """A burst of 8 on a server that runs 2 at a time: 6 wait, the queue drains in pairs."""
    res, facts = roundtrip["runs"]["max-num-seqs-2"], roundtrip["limits"]["max-num-seqs-2"]
    assert facts.max_num_seqs == 2
    _assert_sane(roundtrip, "max-num-seqs-2")
    for r in res:
        assert r.extras["peak_waiting"] == (6.0, 6.0)
        for series in (r.series["waiting"], r.series["waiting_pred"]):
            k = series.index(max(series))
            assert all(b <= a for a, b in zip(series[k:], series[k + 1:])), series
        # The measured queue is empty by the run's last sample. The predicted one is sampled at the
        # measured times, so whether it has drained by then is the model's speed, not its queueing
        # (a calibration 30% slow left 2 waiting at the last sample: a CI run of 2026-12-02). Nor
        # does the queue always read even: when the first step takes one request and the next step
        # the second, the pair ends a step apart and a 1-s sample can catch 3 waiting.
        assert r.series["waiting"][-1] == 0
        # the queued requests start in pairs, each pair a whole generation after the one before
        m = summarize_open(r.run)
        ttft = sorted(x.ttft for x in r.run.records)
        assert all(ttft[2 * i + 2] > ttft[2 * i + 1] + 5 * m["median_tpot_ms"] / 1000 for i in range(3))


def test_long_prompts_split_into_chunks(roundtrip):
    res, facts = roundtrip["runs"]["max-num-batched-tokens-64"], roundtrip["limits"]["max-num-batched-tokens-64"]
    assert facts.max_num_batched_tokens == 64
    _assert_sane(roundtrip, "max-num-batched-tokens-64")
    for r in res:
        m = summarize_open(r.run)
        # a 1024-token prompt takes 16 steps of 64 tokens before its first token: TTFT is many steps long
        assert m["median_ttft_ms"] > 8 * m["median_tpot_ms"]
        # steps that returned tokens: partial-prompt steps return none, on the server and in the model
        a, b = r.extras["output_steps"]
        assert abs(_err(a, b)) <= 5.0


def test_preemptions_with_a_small_kv_cache(roundtrip):
    res, facts = roundtrip["runs"]["small-kv-cache"], roundtrip["limits"]["small-kv-cache"]
    assert facts.num_blocks is not None and facts.num_blocks <= 70
    errs = _all_errors(roundtrip)
    measured, predicted, err = errs["small-kv-cache"]["num_preemptions"][:3]
    assert measured > 0, "the load should preempt"
    assert abs(err) <= PREEMPT, (measured, predicted)
    _assert_sane(roundtrip, "small-kv-cache")
    # requests held back by the full cache: the burst less the three the cache admits (21 of 24)
    measured, predicted, err = errs["small-kv-cache"]["peak_waiting"][:3]
    assert measured > 0 and abs(err) <= PREEMPT, (measured, predicted, [r.extras["peak_waiting"] for r in res])

