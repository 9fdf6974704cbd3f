"""stepmodel.window_sums, the window-capped context sums of a decode run's steps, and window_pairs, a chunk's
query-key pairs under a sliding window, against brute force: each of their ways (an outer sum for few
contexts, a sorted table for many; a chunk under, across or past the window) gives the exact integers."""
import numpy as np
import pytest

from simulator.stepmodel import features, window_pairs, window_sums


@pytest.mark.parametrize("m0,k", [(0, 5), (1, 1), (7, 30), (300, 400)])  # the last one takes the table
def test_window_sums_are_the_capped_sums_of_every_step(m0, k):
    rng = np.random.default_rng(m0 * 1000 + k)
    w = 64
    below = rng.integers(0, w - 1, m0)  # contexts under window - 1
    n = m0 + 5  # five more requests already at the window
    brute = [sum(min(int(c) + j + 1, w) for c in below) + 5 * w for j in range(k)]
    assert window_sums(below, n, k, w).tolist() == brute


def test_window_pairs_are_the_capped_positions_of_a_chunk():
    for window in (1, 4, 16, 17):
        for start in range(0, 40):
            for n in range(1, 40):
                assert window_pairs(start, n, window) == sum(min(p, window) for p in range(start + 1, start + n + 1))


def test_features_sum_each_requests_tokens_contexts_and_pairs():
    f = features([(0, 5), (30, 1), (100, 12)], window=16)
    assert (f.n_tokens, f.n_seqs, f.ctx_full, f.ctx_window) == (18, 3, 5 + 31 + 112, 5 + 16 + 16)
    assert f.attn_full == sum(range(1, 6)) + 31 + sum(range(101, 113))
    assert f.attn_window == sum(range(1, 6)) + 16 + 16 * 12
    assert features([(0, 5)], window=None).attn_window == 0
