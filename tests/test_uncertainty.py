"""simulator/uncertainty.py by hand: what `draw_profile` draws (the fitted parameters from their log-normal
law, the memory and compute sides' misfit, the acceptance of speculative decoding over its range, and
nothing else), with which key, and which uncertainties `validate` refuses."""
import math

import numpy as np
import pytest

from simulator.profile import load_profile
from simulator.uncertainty import Uncertainty, draw_profile


def spark(**edits):
    """The shipped Spark profile with no uncertainty of its own, `edits` set on its engine."""
    p = load_profile()
    p.uncertainty = None
    for k, v in edits.items():
        setattr(p.engine, k, v)
    return p


def logs(draws, attr, section="step_model"):
    return np.log([getattr(getattr(d, section), attr) for d in draws])


def test_parameters_are_drawn_log_normal_about_the_log_mean_with_the_covariance():
    p = spark()
    p.uncertainty = Uncertainty(names=["step_model.t0", "api.request_s"],
                                log_mean=[math.log(0.01), math.log(0.002)],
                                log_cov=[[0.04, 0.03], [0.03, 0.09]]).validate()
    draws = [draw_profile(p, k) for k in range(1, 801)]
    a, b = logs(draws, "t0"), logs(draws, "request_s", "api")
    assert np.mean(a) == pytest.approx(math.log(0.01), abs=0.03)
    assert np.mean(b) == pytest.approx(math.log(0.002), abs=0.04)
    assert np.std(a) == pytest.approx(0.2, rel=0.1) and np.std(b) == pytest.approx(0.3, rel=0.1)
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(0.03 / (0.2 * 0.3), abs=0.08)
    # parameters not named keep their values; the drawn profile carries no uncertainty of its own
    assert {d.step_model.bw_weights for d in draws} == {p.step_model.bw_weights}
    assert all(d.uncertainty is None for d in draws) and p.uncertainty is not None


def test_a_draw_depends_on_its_key_only():
    p = spark()
    p.uncertainty = Uncertainty(names=["step_model.t0"], log_mean=[math.log(0.01)], log_cov=[[0.04]],
                                model_sigma=0.1, model_sigma_prefill=0.1)
    a, b = draw_profile(p, 7), draw_profile(p, 7)
    assert a.step_model == b.step_model and a.api == b.api
    assert draw_profile(p, 8).step_model.t0 != a.step_model.t0


def test_bandwidth_of_the_kv_stays_tied_to_the_weights_unless_drawn_on_its_own():
    p = spark()
    p.step_model.bw_kv = 0.5 * p.step_model.bw_weights
    p.uncertainty = Uncertainty(names=["step_model.bw_weights"], log_mean=[math.log(2e11)], log_cov=[[0.01]])
    d = draw_profile(p, 3).step_model
    assert d.bw_kv == d.bw_weights != 2e11  # tied in the fit, tied in the draw
    p.uncertainty = Uncertainty(names=["step_model.bw_weights", "step_model.bw_kv"],
                                log_mean=[math.log(2e11), math.log(1e11)], log_cov=[[0.01, 0.0], [0.0, 0.01]])
    d = draw_profile(p, 3).step_model
    assert d.bw_kv != d.bw_weights and d.bw_kv == pytest.approx(1e11, rel=0.5)
    # a draw that leaves the bandwidth alone leaves the KV's alone
    p.uncertainty = Uncertainty(names=["step_model.t0"], log_mean=[math.log(0.01)], log_cov=[[0.01]])
    assert draw_profile(p, 3).step_model.bw_kv == p.step_model.bw_kv


def test_acceptance_is_drawn_over_its_range_only_for_speculative_decoding():
    u = Uncertainty(spec_acceptance_range=[0.3, 0.6])
    p = spark(num_speculative_tokens=3, spec_acceptance=0.7)
    p.uncertainty = u
    drawn = [draw_profile(p, k).engine.spec_acceptance for k in range(1, 200)]
    assert 0.3 <= min(drawn) < 0.33 and 0.57 < max(drawn) <= 0.6
    assert np.mean(drawn) == pytest.approx(0.45, abs=0.02)  # uniform
    plain = spark(spec_acceptance=0.0)  # no drafts: nothing to accept
    plain.uncertainty = u
    assert draw_profile(plain, 1).engine.spec_acceptance == 0.0
    # drafts with a measured acceptance (no range): kept
    measured = spark(num_speculative_tokens=3, spec_acceptance=0.7)
    measured.uncertainty = Uncertainty(model_sigma=0.1)
    assert draw_profile(measured, 1).engine.spec_acceptance == 0.7


@pytest.mark.parametrize("side", ["model_sigma", "model_sigma_prefill"])
def test_each_sides_misfit_scales_its_own_side_of_the_step(side):
    p = spark()
    p.uncertainty = Uncertainty(**{side: 0.2})
    sm = p.step_model
    draws = [draw_profile(p, k).step_model for k in range(1, 300)]
    mem = np.log([sm.bw_weights / d.bw_weights for d in draws])
    comp = np.log([sm.flops / d.flops for d in draws])
    moved, still = (mem, comp) if side == "model_sigma" else (comp, mem)
    assert np.std(moved) == pytest.approx(0.2, rel=0.15) and abs(np.mean(moved)) < 0.04
    assert np.all(still == 0.0)


def test_decode_beyond_the_calibrated_batch_spreads_by_doublings():
    p = spark()
    p.uncertainty = Uncertainty(model_sigma=0.1, envelope_batch=8)
    d = draw_profile(p, 4).step_model
    f = dict((int(b), x) for b, x in d.decode_factors)
    assert sorted(f) == [8, 16, 32, 64, 128, 256] and f[8] == 1.0
    z = math.log(f[16])
    assert z != 0 and all(math.log(f[8 * 2 ** k]) == pytest.approx(k * z) for k in range(6))
    # one model_sigma a doubling, about no change: extrapolation widens the band, it does not move it
    zs = [math.log(dict(draw_profile(p, k).step_model.decode_factors)[16]) for k in range(1, 400)]
    assert abs(np.mean(zs)) < 0.02 and np.std(zs) == pytest.approx(0.1, rel=0.15)
    # without an envelope, no extra spread
    p.uncertainty = Uncertainty(model_sigma=0.1)
    assert not draw_profile(p, 4).step_model.decode_factors


@pytest.mark.parametrize("bad, words", [
    (dict(spec_acceptance_range=[0.6, 0.3]), "spec_acceptance_range"),
    (dict(spec_acceptance_range=[-0.1, 0.3]), "spec_acceptance_range"),
    (dict(spec_acceptance_range=[0.2, 1.0]), "spec_acceptance_range"),
    (dict(spec_acceptance_range=[0.2]), "spec_acceptance_range"),
    (dict(spec_acceptance_range=[0.1, 0.2, 0.3]), "spec_acceptance_range"),
    (dict(model_sigma=-0.1), "model_sigma must be finite and >= 0"),
    (dict(model_sigma=math.inf), "model_sigma must be finite and >= 0"),
    (dict(model_sigma_prefill=math.nan), "model_sigma_prefill must be finite and >= 0"),
    (dict(names=["step_model.t0"], log_mean=[0.0], log_cov=[[1.0, 0.0]]), "matching sizes"),
])
def test_impossible_uncertainty_is_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        Uncertainty(**bad).validate()


def test_edges_of_a_valid_uncertainty_pass():
    Uncertainty(spec_acceptance_range=[0.0, 0.0], model_sigma=0.0, model_sigma_prefill=0.0).validate()
    Uncertainty(spec_acceptance_range=[0.5, 0.99]).validate()
