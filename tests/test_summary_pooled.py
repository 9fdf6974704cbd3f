"""Pooled (the pooled ITL sample of summarize_open) against numpy on the expanded array, with batches
small enough that its sorted runs merge many times (issue 12: pooling had become quadratic)."""
import numpy as np
import pytest

from simulator.summary import Pooled, percentile_key


def _numpy_stats(name, x, percentiles):
    """vllm bench serve's figures of a plain array (an empty one reports zeros), by numpy directly."""
    v = x if len(x) else np.zeros(1)
    out = {f"mean_{name}_ms": np.mean(v) * 1000, f"median_{name}_ms": np.median(v) * 1000,
           f"std_{name}_ms": np.std(v) * 1000}
    out |= {f"{percentile_key(p)}_{name}_ms": np.percentile(v, p) * 1000 for p in percentiles}
    return out


@pytest.mark.parametrize("batch", [1, 3, 17, 250_000])
def test_pooled_equals_numpy(batch):
    rng = np.random.default_rng(batch)
    for _ in range(40):
        p, parts = Pooled(batch), []
        for _ in range(int(rng.integers(0, 40))):
            x = np.round(rng.exponential(1.0, int(rng.integers(0, 25))), int(rng.integers(0, 4)))
            p.add(x)
            parts.append(x)
        allx = np.concatenate(parts) if parts else np.zeros(0)
        v, c = np.unique(allx, return_counts=True)
        got = p.stats("itl", (50, 90, 99, 99.9))
        assert np.array_equal(p.values, v) and np.array_equal(p.counts, c) and p.counts.dtype == np.int64
        want = _numpy_stats("itl", allx, (50, 90, 99, 99.9))
        assert got.keys() == want.keys()
        for k in got:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k
