"""What a profile does not know exactly: the fitted parameters' uncertainty, and the model's own misfit.

A calibrated profile carries `Uncertainty`: the covariance of its fitted parameters (in log space,
from the fit's Jacobian) and `model_sigma`, the spread of the log-ratios by which the fitted model
still misses the calibration figures. `draw_profile` turns it into one plausible box per
replication, so that the 5-95 % band over replications carries both, not only arrival and
sampling randomness. A profile without it (hand-set, shipped before) draws itself.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .stepmodel import CHAT_ROUTING_SPREAD_RANGE


@dataclass
class Uncertainty:
    names: list[str] = field(default_factory=list)  # "step_model.bw_weights", "api.request_s", ...
    log_mean: list[float] = field(default_factory=list)
    log_cov: list[list[float]] = field(default_factory=list)
    # Lognormal sigmas of whole-run factors on the step time's two sides: the memory side (weights,
    # KV, per-step and per-sequence overheads: what decode steps cost) and the compute side (FLOP
    # rates: what prefill chunks cost), each the fit's own misfit on figures of that side.
    model_sigma: float = 0.0
    model_sigma_prefill: float = 0.0
    # Largest batch calibration saw. Decode steps of larger batches are extrapolated: their drawn
    # factor gets one more model_sigma of independent spread per doubling beyond it.
    envelope_batch: int | None = None
    # Speculative decoding whose acceptance the runs did not measure: drawn uniformly in this range.
    spec_acceptance_range: list[float] | None = None

    def validate(self) -> "Uncertainty":
        n = len(self.names)
        if len(self.log_mean) != n or len(self.log_cov) != n or any(len(r) != n for r in self.log_cov):
            raise ValueError("uncertainty: names, log_mean and log_cov must have matching sizes")
        r = self.spec_acceptance_range
        if r is not None and not (len(r) == 2 and 0 <= r[0] <= r[1] < 1):
            raise ValueError(f"uncertainty: spec_acceptance_range must be [lo, hi] within [0, 1), got {r}")
        for name in ("model_sigma", "model_sigma_prefill"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"uncertainty: {name} must be finite and >= 0, got {v}")
        return self

    def to_json(self) -> dict:
        return asdict(self)


def draw_profile(profile, key: int):
    """A copy of `profile` with its uncertain parameters drawn (seeded by `key`); the profile itself if it has none."""
    u = getattr(profile, "uncertainty", None)
    spread = getattr(profile.step_model, "routing_spread", 0.0)  # set for the traffic (Profile.for_traffic)
    if not spread and (u is None or (not u.names and not u.model_sigma and not u.model_sigma_prefill
                                     and not u.spec_acceptance_range)):
        return profile
    u = u or Uncertainty()
    rng = np.random.default_rng([0x5EED, int(key)])
    p = profile.copy()
    if u.names:
        cov = np.array(u.log_cov, dtype=float)
        x = rng.multivariate_normal(np.array(u.log_mean, dtype=float), cov, method="eigh")
        targets = {"step_model": p.step_model, "api": p.api}
        for name, v in zip(u.names, x):
            section, _, attr = name.partition(".")
            setattr(targets[section], attr, float(math.exp(v)))
        if getattr(p.step_model, "bw_kv", None) is not None and "step_model.bw_kv" not in u.names \
                and "step_model.bw_weights" in u.names:
            p.step_model.bw_kv = p.step_model.bw_weights  # tied in the fit, tied in the draw
    if u.spec_acceptance_range and p.engine.num_speculative_tokens:
        lo, hi = u.spec_acceptance_range
        p.engine.spec_acceptance = float(rng.uniform(lo, hi))
    if u.model_sigma_prefill:
        p.step_model.scale(compute=math.exp(rng.normal(0.0, u.model_sigma_prefill)))
    if u.model_sigma:
        p.step_model.scale(memory=math.exp(rng.normal(0.0, u.model_sigma)))
        if u.envelope_batch and hasattr(p.step_model, "decode_factors") and not p.step_model.decode_factors:
            b0, z = int(u.envelope_batch), rng.normal(0.0, u.model_sigma)
            p.step_model.decode_factors = [[b0 * 2 ** d, math.exp(z * d)] for d in range(0, 6)]
    if spread:  # drawn last, so the other draws stay as they were
        p.step_model.routing_spread = float(rng.uniform(*CHAT_ROUTING_SPREAD_RANGE))
    p.uncertainty = None
    return p
