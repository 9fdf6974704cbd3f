"""The step models' scalar path (time / time_of, one step, Python floats) against the vectorised
reference (times, numpy float64, what fast-forward's decode runs use): equal bit for bit (==, not
approx), so records stay identical whether steps are taken one by one or in runs."""
import dataclasses
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simulator.profile import load_profile
from simulator.stepmodel import EmpiricalStepModel, PhysicalStepModel, StepFeatures, features

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits(x) -> bytes:
    return struct.pack("<d", float(x))


def reference(m, f: StepFeatures) -> float:
    return float(m.times(f.n_tokens, f.n_seqs, np.array([f.ctx_full], dtype=np.int64),
                         np.array([f.ctx_window], dtype=np.int64), np.array([f.attn_full], dtype=np.int64),
                         np.array([f.attn_window], dtype=np.int64))[0])


def assert_same(m, f: StepFeatures) -> None:
    want = reference(m, f)
    got = m.time(f)
    got2 = m.time_of(f.n_tokens, f.n_seqs, f.ctx_full, f.ctx_window, f.attn_full, f.attn_window)
    assert type(got) is float and type(got2) is float
    assert bits(got) == bits(want) and bits(got2) == bits(want), (m, f, got, got2, want)
    if not math.isnan(want):
        assert got == want and got2 == want


def pos(lo, hi):
    """Positive floats spread over orders of magnitude (uniform in log)."""
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


def maybe(strategy, zero=0.0):
    return st.one_of(st.just(zero), strategy)


@st.composite
def step_features(draw, window=None):
    """A batch as stepmodel.features would see it, or raw integer sums (possibly large)."""
    if draw(st.booleans()):
        items = draw(st.lists(st.tuples(st.integers(0, 200_000), st.integers(1, 4096)), min_size=1, max_size=40))
        return features(items, window)
    n_seqs = draw(st.integers(1, 1024))
    n_tokens = draw(st.integers(n_seqs, 65536))
    cf = draw(st.integers(0, 2**40))
    af = draw(st.integers(0, 2**52))
    return StepFeatures(n_tokens, n_seqs, cf, draw(st.integers(0, cf)), af, draw(st.integers(0, af)))


def as_type(draw, x):
    """The same parameter as a float, sometimes an int (a profile's JSON) or a numpy float64."""
    kind = draw(st.sampled_from(["float", "float", "int", "np64"]))
    if kind == "int" and float(x).is_integer() and abs(x) < 2**53:
        return int(x)
    if kind == "np64":
        return np.float64(x)
    return x


@st.composite
def physical(draw):
    moe = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 8192)))
    p = dict(
        t0=draw(maybe(pos(1e-5, 0.1))), t_seq=draw(maybe(pos(1e-7, 1e-2))),
        weight_bytes_fixed=draw(pos(1e6, 1e12)), expert_bytes=draw(pos(1e3, 1e9)),
        moe_layers=draw(st.integers(1, 96)) if moe else 0, n_experts=draw(st.integers(1, 512)) if moe else 0,
        alpha=draw(st.floats(0.05, 1.0)), bw_weights=draw(pos(1e9, 1e13)), bw_kv=draw(pos(1e9, 1e13)),
        kv_bytes_full=draw(maybe(pos(1.0, 1e7))), kv_bytes_window=draw(maybe(pos(1.0, 1e7))) if window else 0.0,
        window=window, flops_per_token=draw(pos(1e6, 1e13)), flops=draw(pos(1e9, 1e16)),
        attn_flops_full=draw(maybe(pos(1.0, 1e8))),
        attn_flops_window=draw(maybe(pos(1.0, 1e8))) if window else 0.0, attn_flops=draw(pos(1e9, 1e16)),
        combine=draw(st.sampled_from(["max", "l2", "sum"])), t_ctx=draw(maybe(pos(1e-9, 1e-3))),
        state_bytes_seq=draw(maybe(pos(1.0, 1e9))),
    )
    if moe:
        p["top_k"] = draw(st.integers(1, p["n_experts"]))
    p = {k: as_type(draw, v) if isinstance(v, float) else v for k, v in p.items()}
    if draw(st.booleans()):
        pts = draw(st.lists(st.tuples(st.integers(1, 512), pos(0.2, 5.0)), min_size=1, max_size=6,
                            unique_by=lambda t: t[0]))
        p["decode_factors"] = [list(t) for t in pts]
    return PhysicalStepModel(**p)


@st.composite
def empirical(draw):
    window = draw(st.one_of(st.none(), st.integers(1, 8192)))
    p = {name: as_type(draw, draw(maybe(pos(1e-9, 1.0)))) for name in EmpiricalStepModel.FEATURES}
    return EmpiricalStepModel(**p, window=window)


@SETTINGS
@given(st.data())
def test_physical_scalar_path_is_times_bit_for_bit(data):
    m = data.draw(physical())
    for _ in range(8):
        assert_same(m, data.draw(step_features(m.window)))


@SETTINGS
@given(st.data(), st.sampled_from(["max", "l2", "sum"]))
def test_every_combine_rule_with_and_without_extras(data, combine):
    m = data.draw(physical())
    m.combine = combine
    f = data.draw(step_features(m.window))
    assert_same(m, f)
    m.decode_factors = None
    m.t_ctx = 0.0
    assert_same(m, f)
    # a pure decode step (n_tokens == n_seqs: decode_factors apply) and a step with prompt tokens
    n = f.n_seqs
    m.decode_factors = [[1, 1.7], [8, 0.6], [64, 1.25]]
    m.t_ctx = 4e-6
    for g in (StepFeatures(n, n, f.ctx_full, f.ctx_window, f.ctx_full, f.ctx_window),
              StepFeatures(n + 37, n, f.ctx_full, f.ctx_window, f.attn_full, f.attn_window)):
        assert_same(m, g)


@SETTINGS
@given(st.data())
def test_empirical_scalar_path_is_times_bit_for_bit(data):
    m = data.draw(empirical())
    for _ in range(8):
        assert_same(m, data.draw(step_features(m.window)))


@example(a=1.0, b=1.0)
@example(a=0.0, b=-0.0)
@example(a=-0.0, b=0.0)
@example(a=math.nan, b=1.0)
@example(a=1.0, b=math.nan)
@example(a=math.inf, b=-math.inf)
@given(st.floats(allow_nan=True), st.floats(allow_nan=True))
def test_max_combine_follows_np_maximum_on_ties_zeros_and_nan(a, b):
    """The "max" rule picks what np.maximum picks, signed zeros and NaN included."""
    want = float(np.maximum(np.array([a]), np.array([b]))[0])
    got = a if (a > b or a != a) else b  # the expression time_of uses
    assert bits(got) == bits(want)
    # and through the model: memory time a (weights a bytes at 1 B/s), compute time b
    m = PhysicalStepModel(combine="max", t0=0.0, t_seq=0.0, weight_bytes_fixed=a, bw_weights=1.0, moe_layers=0,
                          n_experts=0, kv_bytes_full=0.0, kv_bytes_window=0.0, window=None, bw_kv=1.0,
                          flops_per_token=b, flops=1.0, attn_flops_full=0.0, attn_flops_window=0.0, attn_flops=1.0)
    assert_same(m, StepFeatures(1, 1, 3, 0, 5, 0))


def test_shipped_profile_and_its_variants_over_many_steps():
    base = load_profile().step_model
    rng = np.random.default_rng(12)
    for combine in ("max", "l2", "sum"):
        for extras in (False, True):
            m = PhysicalStepModel(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
            m.combine = combine
            if extras:
                m.t_ctx, m.state_bytes_seq, m.t_seq = 3e-6, 1.5e6, 2e-4
                m.decode_factors = [[1, 1.3], [4, 0.9], [32, 1.1]]
            for _ in range(2000):
                b = int(rng.integers(1, 300))
                items = [(int(rng.integers(0, 100_000)), 1 if rng.random() < 0.8 else int(rng.integers(2, 2049)))
                         for _ in range(b)]
                assert_same(m, features(items, m.window))


def test_times_still_vectorised_and_matches_per_step():
    """decode_run (fast-forward) goes through times(); each of its steps equals time() of that step."""
    for m in (load_profile().step_model, EmpiricalStepModel(c_ctx=2e-4, c_attnw=1e-3, window=64)):
        for comb in (["max", "l2", "sum"] if isinstance(m, PhysicalStepModel) else [None]):
            if comb:
                m.combine = comb
            ctx = np.array([5, 900, 1023, 1024, 4000, 70_000], dtype=np.int64)
            run = m.decode_run(ctx, 40)
            single = [m.time(features([(int(c) + j, 1) for c in ctx], m.window)) for j in range(40)]
            assert [bits(x) for x in run] == [bits(x) for x in single]


def test_unknown_combine_rule_raises_on_both_paths():
    m = PhysicalStepModel(combine="mean")
    with pytest.raises(ValueError, match="unknown combine rule"):
        m.time(StepFeatures(1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="unknown combine rule"):
        reference(m, StepFeatures(1, 1, 1, 1, 1, 1))
