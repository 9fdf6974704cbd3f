"""PhysicalStepModel caches its weights time per token count (issue 12): a parameter set afterwards (a
what-if, scale()) must not leave a stale value, so every step time equals a fresh model's, bit for bit."""
import dataclasses

import numpy as np
import pytest

from simulator.stepmodel import EmpiricalStepModel, PhysicalStepModel


def _all_times(m):
    cf = np.array([5000, 9000], dtype=np.int64)
    cw = np.array([1024, 2048], dtype=np.int64)
    return [m.time_of(n, n, 5000, 1024, 5000, 1024) for n in (1, 7, 64, 512)] + \
        [float(x) for n in (1, 7, 64) for x in m.times(n, n, cf, cw, cf, cw)]


@pytest.mark.parametrize("name,value", [("alpha", 0.9), ("n_experts", 64), ("top_k", 2), ("moe_layers", 12),
                                        ("expert_bytes", 3e6), ("weight_bytes_fixed", 9e9), ("bw_weights", 5e11)])
def test_a_parameter_set_after_use_gives_a_fresh_models_times(name, value):
    m = PhysicalStepModel()
    before = _all_times(m)
    setattr(m, name, value)
    fresh = dataclasses.replace(PhysicalStepModel(), **{name: value})
    assert _all_times(m) == _all_times(fresh) != before


def test_scale_after_use_gives_a_fresh_models_times():
    m = PhysicalStepModel()
    _all_times(m)
    m.scale(memory=2.0, compute=1.5)
    fresh = PhysicalStepModel()
    fresh.scale(memory=2.0, compute=1.5)
    assert _all_times(m) == _all_times(fresh)


@pytest.mark.parametrize("model", [PhysicalStepModel(t_ctx=1e-7), EmpiricalStepModel(c_ctx=1e-4, c_attn=1e-3)])
def test_scale_makes_each_side_that_many_times_faster(model):
    """scale(memory=2, compute=4): rates of the memory side doubled and its times halved, the compute
    side's 4x; a step of the memory side alone then takes half as long."""
    m = dataclasses.replace(model)
    m.scale(memory=2.0, compute=4.0)
    for names, f in ((m.MEMORY_RATES, 2.0), (m.MEMORY_TIMES, 0.5), (m.COMPUTE_RATES, 4.0), (m.COMPUTE_TIMES, 0.25)):
        for n in names:
            assert getattr(m, n) == pytest.approx(getattr(model, n) * f), n
    if isinstance(m, EmpiricalStepModel):  # a step of one sequence and its context: no attention term
        assert m.time_of(1, 1, 5000, 0, 0, 0) == pytest.approx(model.time_of(1, 1, 5000, 0, 0, 0) / 2)


def test_decode_factors_set_after_use_give_a_fresh_models_times():
    """The interpolated decode factors are cached per batch size too: new factors (a what-if) replace them."""
    m = PhysicalStepModel(decode_factors=[[1, 1.2], [4, 0.8]])
    before = _all_times(m)
    m.decode_factors = [[1, 0.9], [8, 1.3]]
    fresh = PhysicalStepModel(decode_factors=[[1, 0.9], [8, 1.3]])
    assert _all_times(m) == _all_times(fresh) != before


def test_decode_factors_interpolate_in_log2_batch_and_hold_past_the_ends():
    m = PhysicalStepModel(decode_factors=[[4, 0.8], [1, 1.2], [16, 1.1]])  # sorted on construction
    assert m.decode_factors == [[1, 1.2], [4, 0.8], [16, 1.1]]
    assert m.decode_factor(1) == 1.2 and m.decode_factor(4) == 0.8 and m.decode_factor(16) == 1.1
    assert m.decode_factor(2) == pytest.approx(1.0) and m.decode_factor(8) == pytest.approx(0.95)
    assert m.decode_factor(0) == 1.2 and m.decode_factor(64) == 1.1  # held past the ends
    assert PhysicalStepModel().decode_factor(3) == 1.0  # none: no correction
    # only pure decode steps are corrected: a step with prompt tokens is the roofline's
    plain = PhysicalStepModel()
    assert m.time_of(4, 4, 900, 900, 900, 900) == pytest.approx(0.8 * plain.time_of(4, 4, 900, 900, 900, 900))
    assert m.time_of(40, 4, 900, 900, 9000, 9000) == plain.time_of(40, 4, 900, 900, 9000, 9000)
    for bad in ([], [[0, 1.0]], [[2, 0.0]], [[2, -1.0]]):
        with pytest.raises(ValueError, match="decode_factors must be"):
            PhysicalStepModel(decode_factors=bad)


def test_one_token_reads_top_k_experts_and_more_tokens_read_more():
    m = PhysicalStepModel(n_experts=128, top_k=8, expert_pool=1.0, alpha=0.63)
    assert m.experts_touched(0) == 0.0 and m.experts_touched(1) == pytest.approx(8.0)
    assert 8.0 < m.experts_touched(2) < m.experts_touched(64) < 128.0
    # independent tokens (alpha 1): the expected number of distinct experts of n draws of k from E
    ind = PhysicalStepModel(n_experts=128, top_k=8, expert_pool=1.0, alpha=1.0)
    assert ind.experts_touched(10) == pytest.approx(128 * (1 - (1 - 8 / 128) ** 10))
    assert PhysicalStepModel(n_experts=0, top_k=0, moe_layers=0).experts_touched(10) == 0.0
