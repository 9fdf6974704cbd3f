"""PhysicalStepModel caches its weights time per token count (issue 12): a parameter set afterwards (a
what-if, scale()) must not leave a stale value, so every step time equals a fresh model's, bit for bit."""
import dataclasses

import numpy as np
import pytest

from simulator.stepmodel import PhysicalStepModel


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
