"""Calibration and validation on real DGX Spark data (shared/data/spark-bench and the seed)."""
import builtins
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibrate.cli import calibrate_cmd, validate_cmd
from calibrate.fit import estimate_prompt_scale, fit_closed
from calibrate.importers import closed_runs, open_runs
from calibrate.seed import seed_closed_runs, seed_open_runs
from calibrate.validate import validate, workload_for
from measure.hoststat import cpu_ticks
from simulator.profile import load_profile
from tests.test_importers import RESULTS, needs_data

SUITE = RESULTS / "gemma-4" / "gemma-4-26b-a4b-it" / "bf16"
OPEN_FILE = __import__("re").compile(r"(0[789]|1[01])-")


@needs_data
def test_calibrate_cli_opens_no_open_loop_file(tmp_path, monkeypatch):
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy(f, *a, **k):
        opened.append(str(f))
        return real_open(f, *a, **k)

    def spy_io(f, *a, **k):
        opened.append(str(f))
        return real_io_open(f, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy_io)
    out = tmp_path / "p.json"
    res = CliRunner().invoke(calibrate_cmd, [str(SUITE), "-o", str(out), "--max-evals", "2"])
    assert res.exit_code == 0, res.output
    suite_files = [Path(p).name for p in opened if str(SUITE) in p]
    assert "meta.json" in suite_files and "01-chat.md" in suite_files  # the spy saw the reads
    assert not [f for f in suite_files if OPEN_FILE.match(f) or f.endswith(".json") and f != "meta.json"]
    prof = json.loads(out.read_text())
    assert prof["provenance"]["fitted_on"] and all(":0" in s and s.split(":")[1][:2] in {"01", "02", "03", "04", "05", "06"}
                                                   for s in prof["provenance"]["fitted_on"])


@needs_data
def test_validate_of_another_model_without_its_profile_is_one_clear_line(tmp_path, monkeypatch):
    """No --profile and nothing calibrated from these sources: another model's run is not scored against
    the shipped Gemma-4 profile (a median miss of 80 %), it is told to calibrate first."""
    monkeypatch.setenv("CAPSIM_PROFILE_DIR", str(tmp_path / "store"))
    res = CliRunner().invoke(validate_cmd, [str(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16"), "--json"])
    assert res.exit_code == 2 and not res.stdout.strip(), res.output
    assert "no calibrated profile for Qwen/Qwen3.5-4B: run `capsim calibrate`" in res.output


@needs_data
def test_plain_calibrate_then_validate_validates_that_profile(tmp_path, monkeypatch):
    """`capsim calibrate RUN && capsim validate RUN`, no -o and no --profile: validate uses the
    profile calibrate fitted from RUN, not the shipped Spark one."""
    monkeypatch.setenv("CAPSIM_PROFILE_DIR", str(tmp_path / "store"))
    res = CliRunner().invoke(validate_cmd, [str(SUITE), "--replications", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["profile"] == "spark-gemma4-26b-a4b"  # nothing calibrated yet
    res = CliRunner().invoke(calibrate_cmd, [str(SUITE), "--max-evals", "2"])
    assert res.exit_code == 0, res.output
    (stored,) = (tmp_path / "store").glob("*.json")
    assert f"wrote {stored}" in res.output
    res = CliRunner().invoke(validate_cmd, [str(SUITE) + "/", "--replications", "1", "--json"])  # the same run
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["profile"] == str(stored)
    assert f"profile: {stored}" in res.stderr


def test_seed_calibration_reads_closed_runs_only(monkeypatch):
    opened = []
    real = Path.read_text

    def spy(self, *a, **k):
        opened.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", spy)
    runs = seed_closed_runs()
    assert [r.test for r in runs] == ["A", "B", "C", "E", "F", "G"]
    assert "open.json" not in opened


def test_shipped_default_profile_is_the_seed_fit():
    p = load_profile()
    prov = p.provenance
    assert p.name == "spark-gemma4-26b-a4b"
    assert sorted(prov["fitted_on"]) == [f"seed:{t}" for t in "ABCEFG"]
    assert prov["median_abs_error_pct"] < 6.0
    assert p.engine.max_num_batched_tokens == 2048  # vLLM 0.20.1 on a GB10 without the flag
    assert "not identified" in prov["engine_limits_origin"]["num_blocks"]


def test_fit_improves_on_the_physics_prior_and_recovers_prompt_scale():
    runs = seed_closed_runs()
    fr = fit_closed(runs, max_nfev=8)
    prior = np.median([abs(r.error_pct) for r in fr.prior_residuals])
    fitted = np.median([abs(r.error_pct) for r in fr.residuals])
    assert fitted < prior
    assert 0.85 < fr.prompt_scale < 1.0  # llama-benchy sized prompts with gpt2; Gemma counts ~0.9x


@needs_data
def test_prompt_scale_from_suite_rows():
    # pp t/s x est_ppt is the server's token count; the suite's logs show the gpt2 fallback tokenizer
    assert estimate_prompt_scale(closed_runs(SUITE), 120.0) == pytest.approx(0.907, abs=0.01)


@needs_data
def test_a_family_model_calibrates_from_family_facts_and_its_memory_figure():
    runs = closed_runs(RESULTS / "qwen-3.6" / "qwen-3.6-35b-a3b" / "bf16")
    fr = fit_closed(runs, max_nfev=3)
    assert fr.origin["architecture"].startswith("family table: qwen3.5 hybrid MoE")
    # KV capacity from gpu_memory_utilization 0.90 of the box less the weights, said to be a prior
    assert fr.profile.engine.num_blocks and fr.origin["num_blocks"].startswith("architecture prior")
    assert fr.origin["max_num_batched_tokens"].startswith("vLLM default")
    assert np.median([abs(r.error_pct) for r in fr.residuals]) < 25


@needs_data
@pytest.mark.parametrize("version, mml, need", [("0.26.0", 8192, 25267), ("0.32.0", 8192, 25267),
                                                ("0.26.0", 25100, 25267), ("0.32.0", 25100, None)])
def test_a_max_model_len_the_runs_contradict_gives_way_to_them(version, mml, need):
    """A max_model_len under which the server (by its version's rule) would have refused what the box
    measured (a flag copied wrong) is raised to what the runs needed, 25000-token prompts with BOS and
    chat template and their tg256, and the origin says so. One vLLM 0.32 would serve (cutting answers
    the closed loop lets stop early anyway) stays, as does the run's own."""
    import dataclasses
    runs = closed_runs(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16")
    assert max(r.pp + r.depth for run in runs for r in run.rows) == 25000
    short = [dataclasses.replace(run, server=run.server | {"max_model_len": mml, "vllm_version": version})
             for run in runs]
    fr = fit_closed(short, max_nfev=1)
    assert fr.profile.engine.max_model_len == (need or mml), fr.origin["max_model_len"]
    if need:
        assert fr.origin["max_model_len"].startswith(f"{mml} (server flag) is too short for what ")
        assert fr.origin["max_model_len"].endswith(f"raised to {need}")
    else:
        assert fr.origin["max_model_len"] == "server flag"
    assert all(r.simulated > 0 for r in fr.residuals)


@needs_data
def test_the_runs_own_max_model_len_holds_them():
    held = fit_closed(closed_runs(RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16"), max_nfev=1)
    assert held.profile.engine.max_model_len == 131072 and held.origin["max_model_len"] == "server flag"


@needs_data
@pytest.mark.parametrize("suite", ["gemma-4/gemma-4-26b-a4b-it/bf16", "gemma-4/gemma-4-26b-a4b-it/bf16-v23",
                                   "gemma-4/gemma-4-31b-it/bf16", "qwen-3.6/qwen-3.6-35b-a3b/bf16"])
def test_random_dataset_is_the_very_sample_vllm_drew(suite):
    prof = load_profile()
    for run in open_runs(RESULTS / suite):
        if run.dataset != "random":
            continue
        wl = workload_for(run, prof)
        n = run.params["num_prompts"]
        raw, outs, _ = wl.lengths(n, run.params["seed"])
        assert int(outs.sum()) == run.result["total_output_tokens"], run.test  # exact
        template = (run.result["total_input_tokens"] - raw.sum()) / n
        assert 9 <= template <= 15, (run.test, template)  # chat template (+BOS) per request


def test_seed_open_loop_predictions_meet_targets():
    """Calibrated on A-G only, the shipped profile predicts H, I, J."""
    v = validate(seed_open_runs(), load_profile(), replications=4, n_jobs=1)
    fam = v.families()
    assert fam["ttft"] <= 15.0

    def med(metric):
        return float(np.median([abs(r.error_pct) for r in v.rows if r.metric == metric]))

    assert med("median_tpot_ms") <= 12.0
    assert med("mean_e2el_ms") <= 12.0
    assert med("request_throughput") <= 10.0
    assert all(r.source == "seed" and r.test in "HIJ" for r in v.rows)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"completed": 3, "mean_ttft_ms": ')
    res = CliRunner().invoke(validate_cmd, [str(bad)])
    assert res.exit_code != 0 and "x.json" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(calibrate_cmd, [str(tmp_path / "missing"), "-o", str(tmp_path / "p.json")])
    assert res.exit_code != 0 and "no such file" in res.output


def test_capsim_run_folders_feed_calibrate_and_validate(tmp_path):
    """A measured closed run calibrates; a measured open run validates (the fake server stands in)."""
    from measure import run_closed, run_open
    from measure.fakeserver import FakeConfig, FakeServer
    from simulator.load import ClosedLoop, OpenLoop
    from simulator.workload import RandomWorkload

    srv = FakeServer(FakeConfig()).start()
    try:
        run_closed(srv.url, None, ClosedLoop(pp=[64, 256], tg=[8], concurrency=[1, 2], runs=1), out_dir=tmp_path / "c",
                   progress=False)
        run_open(srv.url, None, RandomWorkload(128, 8, 0.5), OpenLoop(rate=20.0, seed=3), 12, out_dir=tmp_path / "o",
                 progress=False)
    finally:
        srv.stop()
    prof = tmp_path / "p.json"
    res = CliRunner().invoke(calibrate_cmd, [str(tmp_path / "c"), "-o", str(prof), "--max-evals", "3"])
    assert res.exit_code == 0, res.output
    assert "pp256 tg8 c2" in res.output
    res = CliRunner().invoke(validate_cmd, [str(tmp_path / "o"), "--profile", str(prof), "--replications", "2", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output[res.output.index("{"):])["rows"]
    assert {r["metric"] for r in rows} >= {"median_ttft_ms", "request_throughput", "mean_e2el_ms"}
    # an open run is not calibration input
    res = CliRunner().invoke(calibrate_cmd, [str(tmp_path / "o"), "-o", str(prof)])
    assert res.exit_code != 0 and "no closed-loop runs" in res.output


def test_live_load_behind_schedule_is_run_again(tmp_path, monkeypatch, caplog):
    """A load whose client was held up is set aside (folder kept), told (logging), and run again."""
    from calibrate.live import LiveError, LiveLoad, measure_load
    from measure.fakeserver import FakeConfig, FakeServer
    from tests.test_measure import hold_up_client, stall_client

    load = LiveLoad("l", 16, 2, 6, rate=50.0, seed=1)
    srv = FakeServer(FakeConfig(itl=0.001)).start()
    try:
        hold_up_client(monkeypatch, 0.4)
        with caplog.at_level(logging.INFO, logger="capsim.calibrate.live"):
            run, _ = measure_load(srv.url, load, tmp_path / "l", retries=1)
        said = [r.getMessage() for r in caplog.records if r.name.startswith("capsim.calibrate.live")]
        assert "schedule_warning" not in run.client.warnings and run.client.send_lag_s["max"] < 0.25
        (aside,) = run.live.set_aside
        assert aside["run_dir"] == str(tmp_path / "l-set-aside-1") and aside["send_lag_s"]["max"] > 0.3
        st = aside["steal_share"]  # the box's steal over the set-aside run, where /proc/stat tells it
        assert st is None if cpu_ticks() is None else 0.0 <= st <= 1.0
        assert (tmp_path / "l-set-aside-1" / "records.jsonl").is_file() and (tmp_path / "l" / "run.json").is_file()
        assert len(said) == 1 and "run again" in said[0]
        # no retries left: the late run is what comes back, with its warning
        hold_up_client(monkeypatch, 0.4)
        run, _ = measure_load(srv.url, load, tmp_path / "m", retries=0)
        assert "schedule_warning" in run.client.warnings and not run.live.set_aside
        # a client stalled mid-stream (its sends on time) is set aside too
        stall_client(monkeypatch, 0.4)
        run, _ = measure_load(srv.url, load, tmp_path / "s", retries=1)
        assert "client_stall_warning" not in run.client.warnings and run.client.loop_lag_s["max"] < 0.25
        (aside,) = run.live.set_aside
        assert "stamped late" in aside["warning"] and aside["loop_lag_s"]["max"] > 0.35
        assert (tmp_path / "s-set-aside-1" / "records.jsonl").is_file()
        # a caller's own check (a box that ran slower than calibrated) sets the first run aside
        seen = []
        run, _ = measure_load(srv.url, load, tmp_path / "c", retries=2,
                              check=lambda r: seen.append(r) or ("box slow" if len(seen) == 1 else None))
        (aside,) = run.live.set_aside
        assert aside["warning"] == "box slow" and len(seen) == 2 and seen[1] is run
        assert (tmp_path / "c-set-aside-1" / "records.jsonl").is_file()
        with pytest.raises(LiveError, match="retries must be 0 or more"):
            measure_load(srv.url, load, None, retries=-1)
    finally:
        srv.stop()


def test_decode_factors_are_recovered_from_a_concurrency_ladder():
    """A box whose 2-request decode step is 30% slow and 4-request step 20% fast (as vLLM's CPU
    build is): a smooth model misses it; fit_decode_factors measures it back from closed-loop runs."""
    from calibrate.fit import compare, fit_decode_factors
    from calibrate.results import ClosedRun
    from simulator.load import ClosedLoop
    from simulator.sim import simulate_closed
    from simulator.summary import summarize_closed

    truth = load_profile("spark-gemma4-26b-a4b")
    truth.step_model.decode_factors = [[1, 1.0], [2, 1.3], [4, 0.8], [8, 1.0]]
    runs = []
    for c in (1, 2, 4, 8):
        sim = simulate_closed(truth, ClosedLoop(combos=[(512, 64, 0, c)], runs=2, warmup=False))
        runs.append(ClosedRun(source="synthetic", test=f"c{c}", model="m", runs=2, latency_mode="generation",
                              latency_ms=1000 * sim.closed_loop.latency_s, version="capsim",
                              rows=summarize_closed(sim)))
    smooth = truth.copy()
    smooth.step_model.decode_factors = None
    before = {r.test: r.error_pct for r in compare(smooth, runs, 1.0) if r.metric == "tg_req_throughput"}
    assert before["c2"] > 15 and before["c4"] < -10  # the smooth model misses both
    fitted = fit_decode_factors(smooth, runs, 1.0)
    got = dict((b, f) for b, f in fitted.step_model.decode_factors)
    for b, f in truth.step_model.decode_factors:
        assert got[b] == pytest.approx(f, rel=0.02), (b, got)
    after = [r.error_pct for r in compare(fitted, runs, 1.0) if r.metric == "tg_req_throughput"]
    assert max(map(abs, after)) < 2.0
    assert smooth.step_model.decode_factors is None  # the input profile is not changed


def test_spread_residual_counts_above_its_floor():
    """Two requests batched in one step (no spread) against a measured spread of 40 ms: above the
    floor (10% of the 112 ms mean) the log ratio is bounded; the reported error stays the raw one."""
    from calibrate.fit import SPREAD_FLOOR, Residual, residual_vector

    r = Residual("s", "t", "pp128 tg32 c2", "ttfr_std", 40.0, 0.0, 0.3, SPREAD_FLOOR * 112.0)
    assert residual_vector([r])[0] == pytest.approx(0.3 * math.log(11.2 / 40.0))
    assert r.error_pct == -100.0 and r.to_json()["floor"] == pytest.approx(11.2)
    plain = Residual("s", "t", "pp128 tg32 c1", "ttfr", 100.0, 110.0, 1.0)
    assert residual_vector([plain])[0] == pytest.approx(math.log(1.1)) and "floor" not in plain.to_json()
