"""stepmodel.window_sums, the window-capped context sums of a decode run's steps, against brute force:
both of its ways (an outer sum for few contexts, a sorted table for many) give the exact integers."""
import numpy as np
import pytest

from simulator.stepmodel import window_sums


@pytest.mark.parametrize("m0,k", [(0, 5), (1, 1), (7, 30), (300, 400)])  # the last one takes the table
def test_window_sums_are_the_capped_sums_of_every_step(m0, k):
    rng = np.random.default_rng(m0 * 1000 + k)
    w = 64
    below = rng.integers(0, w - 1, m0)  # contexts under window - 1
    n = m0 + 5  # five more requests already at the window
    brute = [sum(min(int(c) + j + 1, w) for c in below) + 5 * w for j in range(k)]
    assert window_sums(below, n, k, w).tolist() == brute
