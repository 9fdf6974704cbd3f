"""calibrate.live.fit: the live fit's own rules, on closed-loop runs simulated from a box whose step
times are known (the twin and vLLM round trips run it end to end, a couple of minutes each)."""
import numpy as np
import pytest

from calibrate.fit import residual_vector
from calibrate.live import LiveError, ServerFacts, closed_run_from_result, fit_live, load_calibration_runs
from calibrate.priors import prior_profile
from simulator.load import ClosedLoop
from simulator.profile import KVGroup
from simulator.sim import simulate_closed
from tests.helpers import write_run_folder

FACTS = ServerFacts(url="http://127.0.0.1:1", model="google/gemma-3-270m-it", max_model_len=4096, block_size=16,
                    num_gpu_blocks=2000, max_num_seqs=8, max_num_batched_tokens=512, async_scheduling=False,
                    kv_groups=(KVGroup(16),), num_blocks=2000, version="0.32.0",
                    origin={"max_num_seqs": "server flag --max-num-seqs"})


def box(combine="sum"):
    """The box the runs come from: 10 ms a step, 2 ms a request, 50 GB/s; compute a third of a step."""
    truth, _ = prior_profile(FACTS.server_dict())
    truth.engine = FACTS.engine_limits()
    sm = truth.step_model
    sm.t0, sm.t_seq, sm.bw_weights, sm.bw_kv, sm.flops, sm.combine = 0.01, 2e-3, 5e10, 5e10, 2e11, combine
    return truth


def runs_of(truth):
    out = []
    for pp, tg, c in ((256, 32, 1), (256, 32, 2), (256, 32, 4), (1024, 16, 4)):
        sim = simulate_closed(truth, ClosedLoop(combos=[(pp, tg, 0, c)], runs=2, warmup=False))
        out.append(closed_run_from_result(sim, FACTS, source="synthetic", test=f"pp{pp} c{c}"))
    return out


def loss(residuals):
    return float(np.sum(residual_vector(residuals) ** 2))


def decode_steps(prof, batches=(1, 2, 4, 8)):
    return [prof.step_model.time_of(b, b, 300 * b, 0, 300 * b, 0) for b in batches]


def test_the_live_fit_measures_the_box_back_with_the_servers_limits_fixed():
    truth = box()
    runs = runs_of(truth)
    fit = fit_live(runs, FACTS, max_nfev=40, combine="sum", decode_factors=False)
    prof = fit.profile
    assert prof.step_model.t_seq == pytest.approx(2e-3, rel=0.05)  # the per-request step cost is fitted
    assert decode_steps(prof) == pytest.approx(decode_steps(truth), rel=0.02)  # to c8, past the runs' c4
    assert loss(fit.residuals) < 1e-4 < loss(fit.prior_residuals)
    assert prof.engine == FACTS.engine_limits()  # the server's limits, not the priors' GB10 defaults
    assert prof.name == FACTS.model and "roofline_bw" not in prof.model  # no Spark roofline on a live box
    assert prof.provenance["method"].startswith("live: ")
    assert prof.provenance["server"] == FACTS.to_json()
    assert prof.provenance["engine_limits_origin"]["max_num_seqs"] == "server flag --max-num-seqs"
    assert fit.origin["max_num_seqs"] == "server flag --max-num-seqs"
    assert "decode_factors" not in prof.provenance and not prof.step_model.decode_factors


@pytest.mark.parametrize("rule", ["sum", "l2"])
def test_the_live_fit_keeps_the_combine_rule_the_runs_prefer(rule):
    """Both rules fitted; the lower loss is kept and both losses are told."""
    fit = fit_live(runs_of(box(rule)), FACTS, max_nfev=40, decode_factors=False)
    losses = fit.profile.provenance["combine_losses"]
    assert set(losses) == {"sum", "l2"}
    assert fit.profile.step_model.combine == rule
    assert losses[rule] == pytest.approx(loss(fit.residuals)) and losses[rule] < min(losses.values()) + 1e-12
    assert losses[rule] < 0.5 * losses[{"sum": "l2", "l2": "sum"}[rule]]


def test_decode_factors_follow_the_fit_and_keep_its_provenance():
    fit = fit_live(runs_of(box()), FACTS, max_nfev=40, combine="sum")
    prof = fit.profile
    assert [b for b, _ in prof.step_model.decode_factors] == [1, 2, 4]  # the grid's pure-decode batches
    assert all(f == pytest.approx(1.0, abs=0.02) for _, f in prof.step_model.decode_factors)  # a smooth box
    assert "calibrate.fit.fit_decode_factors" in prof.provenance["decode_factors"]
    assert {"fitted_parameters", "method", "server", "residuals"} <= set(prof.provenance)
    assert loss(fit.residuals) < 1e-3


def test_a_start_profile_is_where_the_fit_begins():
    truth = box()
    truth.api.request_s = 0.0123
    fit = fit_live(runs_of(truth), FACTS, max_nfev=1, combine="sum", decode_factors=False, start=truth)
    assert loss(fit.prior_residuals) < 1e-6  # the start's step model and API times, not the priors'
    cold = fit_live(runs_of(truth), FACTS, max_nfev=1, combine="sum", decode_factors=False)
    assert loss(cold.prior_residuals) > 1.0


def test_no_runs_and_no_folder_are_one_line(tmp_path):
    with pytest.raises(LiveError, match="^calibration needs at least one closed-loop run$"):
        fit_live([], FACTS, combine="sum")
    with pytest.raises(LiveError, match=f"^{tmp_path}: not a live calibration folder"):
        load_calibration_runs(tmp_path)


def write_folder(d, runs, clock_scale=None):
    """A live calibration's folder as the ladder leaves it: server.json, plan.json and a run folder a stage."""
    import json

    d.mkdir()
    (d / "server.json").write_text(json.dumps(FACTS.to_json()))
    if clock_scale is not None:
        (d / "plan.json").write_text(json.dumps({"clock_scale": clock_scale}))
    for name, run in runs.items():
        write_run_folder(d / name, run)


def test_a_kept_folder_reads_back_in_model_time(tmp_path):
    """load_calibration_runs: the server facts as written, each stage folder's run (sorted by name; a
    folder without run.json and a loose file left out) with its times multiplied by the plan's clock
    scale, or by the one given."""
    truth = box()
    sims = {name: simulate_closed(truth, ClosedLoop(combos=[(256, 8, 0, c)], runs=1, warmup=False))
            for name, c in (("2-c2", 2), ("1-c1", 1))}
    d = tmp_path / "cal"
    write_folder(d, sims, clock_scale=2.0)
    (d / "set-aside").mkdir()
    (d / "notes.txt").write_text("x")
    facts, runs, folders = load_calibration_runs(d)
    assert facts == FACTS and folders == ["1-c1", "2-c2"]
    for run, name in zip(runs, folders):
        want = sims[name]
        assert len(run.records) == len(want.records)
        assert run.end_time - run.start_time == pytest.approx(2.0 * (want.end_time - want.start_time))
        for got, rec in zip(run.records, want.records):
            assert got.chunk_times == pytest.approx(2.0 * rec.chunk_times)
    _, runs, _ = load_calibration_runs(d, clock_scale=1.0)
    assert runs[0].end_time - runs[0].start_time == pytest.approx(sims["1-c1"].end_time - sims["1-c1"].start_time)


@pytest.mark.parametrize("server, plan", [("[1, 2]", None), ('{"url": "u", "model": "m", "max_model_len": 8, '
                                                              '"colour": "red"}', None),
                                          ('{"url": "u", "model": "m", "max_model_len": 8, "kv_groups": [3]}', None),
                                          (None, '{"clock_scale": {"x": 1}}'), (None, "[]")])
def test_a_damaged_folder_is_one_line(tmp_path, server, plan):
    """server.json that is not the facts a calibration writes is one LiveError naming the file; a
    plan.json without a clock scale in it reads as wall time (1), as a folder without one does."""
    d = tmp_path / "cal"
    write_folder(d, {"1-c1": simulate_closed(box(), ClosedLoop(combos=[(256, 8, 0, 1)], runs=1, warmup=False))})
    if server is not None:
        (d / "server.json").write_text(server)
        with pytest.raises(LiveError, match=f"^{d / 'server.json'}: not the server facts a live calibration writes"):
            load_calibration_runs(d)
    else:
        (d / "plan.json").write_text(plan)
        facts, runs, _ = load_calibration_runs(d)
        assert facts == FACTS and len(runs) == 1
