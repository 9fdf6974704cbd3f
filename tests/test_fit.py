"""The fit's own rules by hand: what each closed-loop figure weighs, the loss, the prompt scale, the
envelope, and the uncertainty a fit leaves (Gauss-Newton covariance, the unidentified held, the misfit)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from calibrate.fit import (DECODE_SIGMA_FLOOR, FIT_PARAMS, LATENCY_WEIGHT, SPREAD_FLOOR, SPREAD_WEIGHT, Residual,
                           closed_pattern, compare, envelope, estimate_prompt_scale, fit_closed, fit_decode_factors,
                           fit_parameters, fit_uncertainty, residual_vector, robust_loss, single_user_decode)
from calibrate.priors import prior_profile
from calibrate.results import ClosedRun
from simulator.sim import simulate_closed
from simulator.summary import ClosedRow, summarize_closed
from tests.helpers import tiny_profile


def _run(rows, latency_ms=None, latency_mode="generation"):
    return ClosedRun(source="s", test="t", model="m", runs=3, latency_mode=latency_mode, latency_ms=latency_ms,
                     version="0.4.0", rows=rows)


def test_the_loss_is_soft_l1_of_weighted_log_ratios():
    res = [Residual("s", "t", "x", "ttfr", 100.0, 110.0, 1.0), Residual("s", "t", "x", "pp_throughput", 50.0, 40.0, 0.5)]
    z = [(math.log(1.1) / 0.05) ** 2, (0.5 * math.log(0.8) / 0.05) ** 2]
    assert robust_loss(res) == pytest.approx(sum(2 * (math.sqrt(1 + x) - 1) for x in z))


def test_the_envelope_and_the_single_user_speed():
    rows = [ClosedRow(1000, 100, 0, 1, {"tg_req_throughput": (20.0, 0.1)}),
            ClosedRow(500, 200, 4000, 4, {"tg_req_throughput": (15.0, 0.1)}),
            ClosedRow(2000, 50, 0, 1, {"tg_req_throughput": (30.0, 0.1)}),
            ClosedRow(100, 10, 0, 1, {"tg_req_throughput": (10.0, 0.1)}),
            ClosedRow(100, 10, 0, 2)]
    assert envelope([_run(rows)]) == {"max_concurrency": 4, "max_context": 500 + 4000 + 200}
    assert envelope([]) == {"max_concurrency": 1, "max_context": 0}
    assert single_user_decode([_run(rows)]) == 20.0  # the median of the c1 rows: 10, 20, 30
    assert single_user_decode([_run(rows[1:2])]) is None


def test_the_prompt_scale_is_the_servers_tokens_per_requested_token():
    rows = [ClosedRow(1000, 32, 0, 1, {"pp_throughput": (2000.0, 10.0), "est_ppt": (450.0, 1.0)}),  # 900 of 1000
            ClosedRow(1000, 32, 1000, 1, {"pp_throughput": (2000.0, 10.0), "ttfr": (1020.0, 1.0)}),  # (1020-100): 1840/2000
            ClosedRow(1000, 32, 0, 1, {"pp_throughput": (2000.0, 900.0), "est_ppt": (900.0, 1.0)}),  # too noisy
            ClosedRow(1000, 32, 0, 2, {"pp_throughput": (2000.0, 10.0), "est_ppt": (900.0, 1.0)}),  # not single-user
            ClosedRow(1000, 32, 0, 1, {"pp_throughput": (2000.0, 10.0)})]  # no time to the first token
    assert estimate_prompt_scale([_run(rows, latency_ms=100.0)], 0.0) == pytest.approx((0.9 + 0.92) / 2)
    # a run without its own latency takes the one given
    assert estimate_prompt_scale([_run(rows[1:2])], 20.0) == pytest.approx(2000 * 1.0 / 2000)
    assert estimate_prompt_scale([_run(rows[2:])], 0.0) == 1.0  # nothing to read: as requested


def test_what_each_closed_loop_figure_weighs_in_the_fit():
    rows = [ClosedRow(64, 8, 0, 1, {"tg_req_throughput": (50.0, 5.0), "pp_throughput": (500.0, math.nan),
                                    "peak_throughput": (10.0, 1.0), "tg_throughput": (50.0, 5.0),
                                    "ttfr": (100.0, 10.0), "e2e_ttft": (110.0, 10.0)}),
            ClosedRow(64, 8, 0, 2, {"tg_req_throughput": (40.0, 8.0), "peak_throughput": (80.0, 0.0),
                                    "ttfr": (150.0, 30.0), "e2e_ttft": (150.0, 30.0), "pp_throughput": (0.0, 0.0)})]
    res = compare(tiny_profile(), [_run(rows, latency_ms=40.0)], 1.0)
    w = {(r.shape, r.metric): r for r in res}
    # single-user rows count less the noisier they are: 1 / (1 + cv / 0.1), cv of the figure itself
    assert w["pp64 tg8 c1", "tg_req_throughput"].weight == pytest.approx(1.0 / 2.0)  # cv 0.1
    assert w["pp64 tg8 c1", "ttfr"].weight == pytest.approx(1.0 / 2.0)
    assert w["pp64 tg8 c1", "tg_throughput"].weight == pytest.approx(0.1 / 2.0)
    assert w["pp64 tg8 c1", "pp_throughput"].weight == 0.5  # no spread given: in full, whatever came before
    # a peak of 10 tokens in its best second counts half (full from 20); at c2 no noise discount
    assert w["pp64 tg8 c1", "peak_throughput"].weight == pytest.approx(1.0 * 10 / 20 / 2.0)
    assert w["pp64 tg8 c2", "peak_throughput"].weight == 1.0 and w["pp64 tg8 c2", "tg_req_throughput"].weight == 1.0
    # e2e_ttft only where ttfr is missing; a figure of 0 is no figure
    assert ("pp64 tg8 c1", "e2e_ttft") not in w and ("pp64 tg8 c2", "pp_throughput") not in w
    # the spread of first tokens at c > 1, above 10 % of its mean
    spread = w["pp64 tg8 c2", "ttfr_std"]
    assert (spread.measured, spread.weight, spread.floor) == (30.0, SPREAD_WEIGHT, SPREAD_FLOOR * 150.0)
    assert ("pp64 tg8 c1", "ttfr_std") not in w
    probe = w["latency probe", "latency_ms"]
    assert (probe.measured, probe.weight) == (40.0, LATENCY_WEIGHT)
    assert not any(r.metric == "latency_ms" for r in compare(tiny_profile(), [_run(rows, 40.0, "api")], 1.0))


def _residual(metric, ratio):
    return Residual("s", "t", "x", metric, 100.0, 100.0 * ratio, 1.0)


def test_the_fits_uncertainty_by_hand():
    # two parameters, four residuals: J^T J = diag(2, 8); cost 0.5 sum r^2 = 0.1 over 4 - 2 dof: s^2 = 0.1
    sol = SimpleNamespace(jac=np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]]), cost=0.1,
                          x=np.array([0.5, -1.0]))
    res = [_residual("tg_req_throughput", math.exp(0.3)), _residual("peak_throughput", math.exp(-0.1)),
           _residual("ttfr", math.exp(0.2)), _residual("pp_throughput", math.exp(2.0))]  # capped at 0.5
    runs = [_run([ClosedRow(64, 8, 0, 1), ClosedRow(64, 8, 0, 6)])]
    u = fit_uncertainty(sol, ["step_model.t0", "step_model.flops"], res, runs)
    assert u.log_mean == [0.5, -1.0] and u.envelope_batch == 6
    assert np.allclose(u.log_cov, [[0.1 / 2, 0.0], [0.0, 0.1 / 8]])
    assert u.model_sigma == pytest.approx(max(math.sqrt((0.09 + 0.01) / 2), DECODE_SIGMA_FLOOR))
    assert u.model_sigma_prefill == pytest.approx(math.sqrt((0.04 + 0.25) / 2))
    calm = fit_uncertainty(sol, ["a.b", "c.d"], [_residual("tg_req_throughput", 1.01)], runs)
    assert calm.model_sigma == DECODE_SIGMA_FLOOR and calm.model_sigma_prefill == 0.0  # the floor; no prefill figure


def test_a_parameter_the_runs_leave_unidentified_is_held_and_the_others_drawn_given_it():
    # the second parameter is barely seen (sd 1.6 > 0.5 in log space) and correlated with the first
    J = np.array([[1.0, 0.1], [1.0, 0.1], [0.0, 0.1], [1.0, 0.0]])
    sol = SimpleNamespace(jac=J, cost=0.5 * 4 * 0.01, x=np.array([0.0, 0.0]))
    cov = 0.02 * np.linalg.pinv(J.T @ J)
    assert math.sqrt(cov[1, 1]) > 0.5 > math.sqrt(cov[0, 0])
    u = fit_uncertainty(sol, ["a.b", "c.d"], [], [_run([])])
    held = np.array(u.log_cov)
    assert held[1, 1] == pytest.approx(0.0, abs=1e-15) and held[0, 1] == pytest.approx(0.0, abs=1e-15)
    assert held[0, 0] == pytest.approx(cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1])  # the Gaussian conditional
    assert u.envelope_batch == 1
    # none identified: nothing drawn
    lost = fit_uncertainty(SimpleNamespace(jac=J * 1e-3, cost=sol.cost, x=sol.x), ["a.b", "c.d"], [], [_run([])])
    assert np.allclose(lost.log_cov, 0.0)


def test_a_residuals_error_and_its_floor():
    assert Residual("s", "t", "x", "ttfr", 200.0, 230.0, 1.0).error_pct == pytest.approx(15.0)
    nothing = Residual("s", "t", "x", "ttfr", 100.0, 0.0, 1.0)  # a figure the simulation never produced
    assert residual_vector([nothing])[0] == pytest.approx(math.log(1e-9 / 100.0))


def test_a_run_becomes_one_simulated_llama_benchy_invocation():
    run = _run([ClosedRow(512, 0, 0, 1), ClosedRow(128, 32, 1024, 4)], latency_mode=None)
    run.stop_mean, run.stop_shape = 20.0, 2.0
    p = closed_pattern(run, 0.9)
    assert list(p.combos) == [(512, 1, 0, 1), (128, 32, 1024, 4)]  # a prefill-only row still decodes its token
    assert (p.runs, p.warmup, p.latency_mode, p.prompt_scale, p.stop_mean, p.stop_shape) == \
        (1, False, "generation", 0.9, 20.0, 2.0)  # a table that does not say: llama-benchy's default probe
    assert closed_pattern(_run([ClosedRow(64, 8, 0, 1)], latency_mode="api")).latency_mode == "api"


def test_the_prompt_scales_edges():
    def scale(pp_sd, est=450.0, tps=2000.0):
        row = ClosedRow(1000, 32, 0, 1, {"pp_throughput": (tps, pp_sd), "est_ppt": (est, 1.0)})
        return estimate_prompt_scale([_run([row])], 0.0)
    assert scale(400.0) == pytest.approx(0.9)  # a spread of 20 % is still read
    assert scale(401.0) == 1.0  # above it, not
    assert scale(math.nan) == pytest.approx(0.9)  # one run: no spread to judge it by
    assert scale(1.0, est=0.0) == 1.0  # all of the time to the first token was latency
    assert scale(1.0, tps=0.0) == 1.0  # a failed row (0 t/s) is no figure, not a scale of 0
    lat = ClosedRow(1000, 32, 0, 1, {"pp_throughput": (2000.0, 1.0), "ttfr": (100.0, 1.0)})  # all latency
    assert estimate_prompt_scale([_run([lat], latency_ms=100.0)], 0.0) == 1.0


def test_spreads_latency_and_time_to_first_token_without_ttfr():
    rows = [ClosedRow(64, 8, 0, 2, {"e2e_ttft": (150.0, 30.0), "tg_req_throughput": (40.0, 0.0)}),
            ClosedRow(64, 8, 0, 3, {"ttfr": (150.0, 0.0)})]
    prof = tiny_profile()
    res = compare(prof, [_run(rows, latency_ms=40.0)], 1.0)
    w = {(r.shape, r.metric): r for r in res}
    assert w["pp64 tg8 c2", "e2e_ttft_std"].floor == SPREAD_FLOOR * 150.0
    assert ("pp64 tg8 c3", "ttfr_std") not in w  # no spread measured: none compared
    sim = simulate_closed(prof, closed_pattern(_run(rows)))
    assert w["latency probe", "latency_ms"].simulated == pytest.approx(sim.closed_loop.latency_s * 1000)
    # a spread is compared with the simulated spread, not its mean
    assert w["pp64 tg8 c2", "e2e_ttft_std"].simulated == summarize_closed(sim)[0].metrics["e2e_ttft"][1]


def test_the_misfit_skips_figures_measured_at_zero_and_a_square_fit_has_one_degree():
    sol = SimpleNamespace(jac=np.eye(2), cost=0.05, x=np.zeros(2))  # as many residuals as parameters
    u = fit_uncertainty(sol, ["a.b", "c.d"], [_residual("tg_req_throughput", 1.5),
                                             Residual("s", "t", "x", "peak_throughput", 0.0, 3.0, 1.0)], [_run([])])
    assert np.allclose(u.log_cov, np.eye(2) * 0.1)  # s^2 = 2 x 0.05 over max(1, 0)
    assert u.model_sigma == pytest.approx(max(math.log(1.5), DECODE_SIGMA_FLOOR))


def _physical():
    return prior_profile({"model": "Qwen/Qwen3-0.6B"}, 100.0)[0]


def test_a_fit_ties_the_kv_bandwidth_to_the_weights_and_counts_its_evaluations():
    run = _run([ClosedRow(256, 16, 0, 1, {"tg_req_throughput": (80.0, 1.0), "pp_throughput": (4000.0, 40.0)}),
                ClosedRow(256, 16, 0, 2, {"tg_req_throughput": (70.0, 1.0)})])
    seen = []
    params = {k: FIT_PARAMS[k] for k in ("bw_weights", "t0", "alpha")}  # a dense model has no experts to spread
    best, res, evals = fit_parameters(_physical(), [run], 1.0, params, {}, {}, max_nfev=3,
                                      progress=lambda n, cost: seen.append(n))
    assert list(best.provenance["fitted_parameters"]) == ["bw_weights", "t0"]
    assert best.step_model.bw_kv == best.step_model.bw_weights != _physical().step_model.bw_weights
    assert seen == list(range(1, evals + 1)) and evals == best.provenance["evaluations"] >= 3
    assert [r.metric for r in res] == ["tg_req_throughput", "pp_throughput", "tg_req_throughput"]


def test_decode_factors_need_two_batch_sizes():
    rows = [ClosedRow(256, 16, 0, 1, {"tg_req_throughput": (80.0, 1.0)}),
            ClosedRow(256, 16, 0, 2, {"tg_req_throughput": (50.0, 1.0)})]
    assert fit_decode_factors(_physical(), [_run(rows[:1])], 1.0).step_model.decode_factors is None
    two = fit_decode_factors(_physical(), [_run(rows)], 1.0).step_model.decode_factors
    assert [b for b, _ in two] == [1, 2] and two[1][1] > two[0][1]  # c2 measured slower than the model gives


def test_a_max_model_len_too_short_for_what_the_runs_served_is_raised_to_the_longest():
    # the server's prompt is the row's pp + depth + 11 (a BOS and 10 template tokens); 256 is far too short
    rows = [ClosedRow(1000, 100, 0, 1, {"tg_req_throughput": (80.0, 1.0)}),
            ClosedRow(500, 2000, 0, 1, {"tg_req_throughput": (80.0, 1.0)}),
            ClosedRow(100, 10, 3000, 1, {"tg_req_throughput": (80.0, 1.0)}),  # 3111 + 10: the longest
            ClosedRow(9000, 9000, 0, 1)]  # a row with no figures served nothing
    fr = fit_closed([_run(rows)], server={"model": "Qwen/Qwen3-0.6B", "max_model_len": 256}, max_nfev=1)
    assert fr.profile.engine.max_model_len == 3121
    assert fr.origin["max_model_len"] == ("256 (server flag) is too short for what t measured (about 3111 prompt + "
                                          "10 output tokens): raised to 3121")
