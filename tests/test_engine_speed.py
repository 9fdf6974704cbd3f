"""Shortcuts the engine takes for speed (issue 12) give what the long way gives, bit for bit."""
import math

import numpy as np
import pytest

from simulator.engine import Engine
from simulator.load import OpenLoop
from simulator.profile import load_profile
from simulator.sim import simulate_open
from simulator.workload import RandomWorkload
from tests.helpers import tiny_profile
from tests.test_engine_runlength import _specs


def _shipped(n, prompt, out, rate):
    prof = load_profile()
    return prof, RandomWorkload(prompt, out, 0.9, fmt=prof.prompt_format).sample(n, 3), OpenLoop(rate, 0.7, seed=3)


@pytest.mark.parametrize("make", [
    lambda: _shipped(300, 4000, 500, 0.3),  # test H's shape: contexts on both sides of the window
    lambda: _shipped(300, 512, 256, 4.0),  # chat-like: most contexts under the window
    lambda: (tiny_profile(budget=32, seqs=8, window=16, noise=0.1), _specs(4, 60), OpenLoop(6.0, 0.3, seed=4)),
    lambda: (tiny_profile(budget=64, seqs=6, noise=0.1), _specs(5, 60), OpenLoop(math.inf, max_concurrency=4)),
], ids=["H", "chat", "tiny-window", "tiny-no-window"])
def test_run_times_are_decode_run(monkeypatch, make):
    """Engine._run_times, which builds a decode run's features itself, equals model.decode_run of the
    run's contexts in every run of a load (members and not, under the window and over it)."""
    prof, specs, load = make()
    seen = [0]
    run_times = Engine._run_times

    def check(self, items, mem, first_idx, k):
        got = run_times(self, items, mem, first_idx, k)
        ctx0 = [r.computed - 1 for r, _, _, _ in items]
        if mem and self._mem:
            ctx0 += [r.m_base + first_idx - 1 for r in self._m_in]
        want = self.model.decode_run(np.array(ctx0, dtype=np.int64), k)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        seen[0] += 1
        return got

    monkeypatch.setattr(Engine, "_run_times", check)
    simulate_open(prof, specs, load)
    assert seen[0] > 10


@pytest.mark.parametrize("async_", [True, False])
def test_arrivals_cut_runs_without_waking_the_loop(monkeypatch, async_):
    """Arrivals during decode runs shorten them from submit() (Engine._cut_run), and the records are
    those of stepping one by one."""
    from tests.helpers import same_records

    cut = [0, 0]
    cut_run = Engine._cut_run

    def count(self):
        ok = cut_run(self)
        cut[ok] += 1
        return ok

    monkeypatch.setattr(Engine, "_cut_run", count)
    prof = tiny_profile(budget=64, seqs=8, async_=async_, noise=0.1, request_s=0.01, chunk_s=0.001, frontend_s=0.001,
                        wake_s=0.002)
    specs = _specs(8, 80)
    a = simulate_open(prof, specs, OpenLoop(3.0, 0.7, seed=8))
    assert cut[True] > 5  # the shortcut was taken
    b = simulate_open(prof, specs, OpenLoop(3.0, 0.7, seed=8), fast_forward=False)
    same_records(a, b)
