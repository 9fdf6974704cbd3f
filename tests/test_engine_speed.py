"""Shortcuts the engine takes for speed (issue 12) give the records of stepping one by one, bit for bit.

Decode runs get their durations from the run's integer features (members keep the sums; only contexts
under the sliding window are summed per step), and an arrival during a decode run shortens the run from
submit() without waking the engine loop. Stepping one by one takes neither path: each step's time comes
from its own features. Each load below takes many decode runs (fewer events than steps) with arrivals
landing inside them, on each side of the window. The clock's jumps over waits nothing can interrupt
are held to the records of waiting on SimPy for each one.
"""
import math

import pytest

from simulator.load import OpenLoop
from simulator.profile import load_profile
from simulator.sim import SimStats, simulate_open
from simulator.workload import RandomWorkload
from tests.helpers import same_records, tiny_profile
from tests.test_engine_runlength import _specs


def _shipped(n, prompt, out, rate):
    prof = load_profile()
    return prof, RandomWorkload(prompt, out, 0.9, fmt=prof.prompt_format).sample(n, 3), OpenLoop(rate, 0.7, seed=3)


def _tiny(async_, **kw):
    return tiny_profile(noise=0.1, request_s=0.01, chunk_s=0.001, frontend_s=0.001, wake_s=0.002, async_=async_, **kw)


@pytest.mark.parametrize("make", [
    lambda: _shipped(150, 4000, 500, 0.3),  # test H's shape: contexts on both sides of the window
    lambda: _shipped(150, 512, 256, 4.0),  # chat-like: most contexts under the window
    lambda: (_tiny(False, budget=32, seqs=8, window=16), _specs(4, 60), OpenLoop(6.0, 0.3, seed=4)),
    lambda: (_tiny(True, budget=64, seqs=8), _specs(8, 80), OpenLoop(3.0, 0.7, seed=8)),
    lambda: (_tiny(False, budget=64, seqs=8), _specs(8, 80), OpenLoop(3.0, 0.7, seed=8)),
    lambda: (_tiny(True, budget=64, seqs=6), _specs(5, 60), OpenLoop(math.inf, max_concurrency=4)),
], ids=["H", "chat", "tiny-window-sync", "tiny-async", "tiny-sync", "tiny-concurrency-cap"])
def test_decode_runs_and_arrivals_inside_them_give_the_records_of_stepping(make):
    prof, specs, load = make()
    st: list[SimStats] = []
    a = simulate_open(prof, specs, load, stats=st)
    b = simulate_open(prof, specs, load, fast_forward=False, stats=st)
    assert st[0].events < st[0].steps and st[0].max_members > 1  # decode runs of members were taken
    assert st[0].steps == st[1].steps
    same_records(a, b)


@pytest.mark.parametrize("make", [
    lambda: _shipped(150, 4000, 500, 0.3),
    lambda: (_tiny(True, budget=64, seqs=6), _specs(5, 60), OpenLoop(math.inf, max_concurrency=4)),
    lambda: (_tiny(False, budget=32, seqs=5, num_blocks=60, window=16), _specs(2, 40, 120, 120),
             OpenLoop(4.0, seed=2)),
    None,  # a closed loop: each batch's requests are sent when the one before ends (events due at once)
], ids=["H", "tiny-concurrency-cap", "tiny-preempting-sync", "closed"])
@pytest.mark.parametrize("fast_forward", [True, False])
def test_jumping_the_clock_gives_the_records_of_waiting(monkeypatch, make, fast_forward):
    """Engine._skip_to moves the clock over a wait when no event is due by its end; waiting on SimPy for
    every step and run instead must give the same records and steps, and the jumps must have happened."""
    from simulator.engine import Engine
    from simulator.load import ClosedLoop
    from simulator.sim import simulate_closed

    prof, specs, load = make() if make else (_tiny(True, seqs=6), None,
                                             ClosedLoop(pp=[50, 300], tg=[40], concurrency=[1, 3, 6], runs=2))

    def run(st):
        if specs is None:
            return simulate_closed(prof, load, fast_forward=fast_forward, stats=st)
        return simulate_open(prof, specs, load, fast_forward=fast_forward, stats=st)
    jumps = []
    skip_to = Engine._skip_to

    def counted(self, t):
        jumped = skip_to(self, t)
        jumps.append(jumped)
        return jumped

    monkeypatch.setattr(Engine, "_skip_to", counted)
    st: list[SimStats] = []
    a = run(st)
    assert any(jumps) and not all(jumps)  # some waits jumped, some waited for an event due first
    monkeypatch.setattr(Engine, "_skip_to", lambda self, t: False)
    b = run(st)
    assert st[0].steps == st[1].steps and st[0].preemptions == st[1].preemptions
    same_records(a, b)


@pytest.mark.parametrize("window", [None, 1024, 16])
def test_run_times_equal_decode_run_on_both_paths(window):
    """Engine._run_times gives StepModel.decode_run's durations bit for bit, whether a short run with few
    contexts under the window takes its Python sums and the scalar time_of, or a longer one numpy's
    window_sums and times."""
    from types import SimpleNamespace

    import numpy as np
    import simpy

    from simulator.engine import Engine

    prof = load_profile()
    prof.step_model.window = window
    eng = Engine(simpy.Environment(), prof)
    rng = np.random.default_rng(12)
    paths = set()
    for _ in range(300):
        b = int(rng.integers(1, 12))
        k = int(rng.integers(2, 30))
        w = window or 10 ** 9
        ctx = [int(c) for c in rng.integers(max(0, w - 40), w + 40, size=b)] if rng.random() < 0.7 else \
            [int(c) for c in rng.integers(0, 200000, size=b)]
        items = [(SimpleNamespace(computed=c + 1), 1, True, 0) for c in ctx]  # as scheduled in step 1
        below = sum(1 for c in ctx if window and c < window - 1)
        paths.add(k <= 10 and below * k <= 64)
        got = eng._run_times(items, False, 0, k)
        want = prof.step_model.decode_run(np.array(ctx), k)
        assert got.tolist() == want.tolist()
    assert paths == {True, False}
