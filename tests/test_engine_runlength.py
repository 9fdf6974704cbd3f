"""The decode-run length (Engine._run_length): one rule for the general path and the members path.

test_engine.py holds fast-forward to the records of stepping one by one; here every decode run that
fast-forward takes, on either schedule path, is checked against the steps stepping one by one took at
the same step indices: a run of k steps must be k steps of the same batch size, none preempting, none
but the first admitting (the first is scheduled as usual: it may admit a one-token prompt). Each case
asserts which paths took runs of several steps, so a run length that returned 1 everywhere
(fast-forward off in effect) fails it. The records, steps and preemptions must be the same as well.
"""
import math

import numpy as np
import pytest

from simulator.engine import Engine
from simulator.load import ClosedLoop, OpenLoop
from simulator.profile import load_profile
from simulator.sim import simulate_closed, simulate_open
from simulator.workload import RandomWorkload
from tests.helpers import same_records, tiny_profile
from tests.test_engine import spec

MEMBERS, GENERAL = True, False


class _Launches(dict):
    def __init__(self):
        super().__init__()
        self.shrunk: set[int] = set()

    def clear(self) -> None:
        super().clear()
        self.shrunk.clear()


@pytest.fixture
def launches(monkeypatch):
    """Every step or decode run the engine launches: first step index -> [k, batch size, members path];
    k as an arrival may have shrunk it (.shrunk: the first step indices of the runs an arrival shrank)."""
    log = _Launches()
    launch, shrink = Engine._launch, Engine._shrink

    def spy_launch(self, sched, start):
        launch(self, sched, start)
        st = self.inflight[-1]
        items, _, sums, mem = sched
        log[st.first_idx] = [st.k, len(items) + (sums[0] if mem else 0), mem]

    def spy_shrink(self, step, k_new):
        shrink(self, step, k_new)
        log[step.first_idx][0] = k_new
        log.shrunk.add(step.first_idx)

    monkeypatch.setattr(Engine, "_launch", spy_launch)
    monkeypatch.setattr(Engine, "_shrink", spy_shrink)
    return log


def _tiny(async_=True, budget=64, seqs=8, blocks=None, block=8, window=None, threshold=0):
    prof = tiny_profile(budget=budget, seqs=seqs, num_blocks=blocks, block=block, window=window, async_=async_,
                        noise=0.1, request_s=0.01, chunk_s=0.001, frontend_s=0.001, wake_s=0.002)
    prof.engine.long_prefill_token_threshold = threshold
    return prof


def _specs(seed, n, pmax=200, omax=120, spare=3):
    """Prompts below pmax, answers below omax, each stopping up to spare - 1 tokens before its max_tokens."""
    rng = np.random.default_rng(seed)
    return [spec(int(p), int(o), int(o) + int(e)) for p, o, e in
            zip(rng.integers(1, pmax, n), rng.integers(1, omax, n), rng.integers(0, spare, n))]


def _shipped_chat():
    prof = load_profile()
    return prof, RandomWorkload(512, 256, 0.5, fmt=prof.prompt_format).sample(120, 7)


# (id, make: () -> (profile, specs, or None for a closed loop), load, whether to trace the fast-forward run
#  (a trace turns members off), the paths that must take runs of several steps, whether it must preempt)
CASES = [
    ("members, open loop, Poisson, async", lambda: (_tiny(True), _specs(1, 60)), OpenLoop(4.0, seed=1),
     False, {MEMBERS}, False),
    ("members, open loop, Poisson, sync", lambda: (_tiny(False), _specs(2, 60)), OpenLoop(4.0, seed=2),
     False, {MEMBERS}, False),
    ("members, max_num_seqs binds, queue waits, async", lambda: (_tiny(True, seqs=3), _specs(3, 50)),
     OpenLoop(20.0, seed=3), False, {MEMBERS}, False),
    ("members, bursts, chunked prefill, window", lambda: (_tiny(False, budget=32, window=16, threshold=24),
                                                          _specs(4, 60)),
     OpenLoop(6.0, 0.3, seed=4), False, {MEMBERS}, False),
    ("members, ample finite cache, concurrency cap", lambda: (_tiny(True, seqs=6, blocks=5000, block=4),
                                                              _specs(5, 60)),
     OpenLoop(math.inf, max_concurrency=4, seed=5), False, {MEMBERS}, False),
    ("members, closed loop", lambda: (_tiny(True, seqs=6), None),
     ClosedLoop(pp=[50, 300], tg=[40], concurrency=[1, 3, 6], runs=2), False, {MEMBERS}, False),
    ("general, ample cache (a trace turns members off), async", lambda: (_tiny(True, blocks=5000), _specs(6, 60)),
     OpenLoop(4.0, seed=6), True, {GENERAL}, False),
    ("general, closed loop, sync", lambda: (_tiny(False, seqs=6), None),
     ClosedLoop(pp=[50, 300], tg=[40], concurrency=[1, 3, 6], runs=2), True, {GENERAL}, False),
    ("both paths, a cache that stops being ample, preempting", lambda: (_tiny(True, seqs=6, blocks=60, block=8),
                                                                       _specs(7, 40, 120, 120)),
     OpenLoop(4.0, seed=7), False, {GENERAL, MEMBERS}, True),
    ("both paths, small cache, preempting, sync, window", lambda: (_tiny(False, seqs=5, blocks=60, window=16),
                                                                   _specs(2, 40, 120, 120)),
     OpenLoop(4.0, seed=2), False, {GENERAL, MEMBERS}, True),
    ("general, small cache (a trace turns members off), preempting, async",
     lambda: (_tiny(True, seqs=8, blocks=40, block=16), _specs(2, 40, 120, 120)),
     OpenLoop(4.0, seed=2), True, {GENERAL}, True),
    ("members, shipped profile, chat-like", _shipped_chat, OpenLoop(2.0, 0.7, seed=7), False, {MEMBERS}, False),
    # answers that stop at EOS long before max_tokens: the run ends at the step that emits the last token
    ("members, answers stop early, async", lambda: (_tiny(True), _specs(8, 60, spare=150)), OpenLoop(4.0, seed=8),
     False, {MEMBERS}, False),
    ("members, answers stop early, sync", lambda: (_tiny(False), _specs(9, 60, spare=150)), OpenLoop(4.0, seed=9),
     False, {MEMBERS}, False),
    ("general, answers stop early (a trace turns members off), async",
     lambda: (_tiny(True, blocks=5000), _specs(10, 60, spare=150)), OpenLoop(4.0, seed=10), True, {GENERAL}, False),
    ("general, answers stop early (a trace turns members off), sync",
     lambda: (_tiny(False, blocks=5000), _specs(11, 60, spare=150)), OpenLoop(4.0, seed=11), True, {GENERAL}, False),
]


@pytest.mark.parametrize("make, load, trace_ff, paths, preempts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_decode_run_is_a_run_of_identical_steps_when_stepping(launches, make, load, trace_ff, paths, preempts):
    prof, specs = make()

    def sim(ff, trace, stats):
        if specs is None:
            return simulate_closed(prof, load, fast_forward=ff, trace=trace, stats=stats)
        return simulate_open(prof, specs, load, fast_forward=ff, trace=trace, stats=stats)

    stats, trace_step = [], []
    a = sim(True, [].append if trace_ff else None, stats)
    runs = {i: v for i, v in launches.items() if v[0] > 1}
    shrunk = set(launches.shrunk)
    launches.clear()
    b = sim(False, trace_step.append, stats)
    same_records(a, b)
    ff, step = stats
    assert ff.steps == step.steps == len(trace_step) == step.events
    assert ff.preemptions == step.preemptions
    assert (step.preemptions > 0) == preempts
    assert all(k == 1 for k, _, _ in launches.values())  # stepping one by one took no runs
    assert {mem for _, _, mem in runs.values()} == paths, "a path took no decode run of several steps"
    assert ff.events < ff.steps  # the runs took fewer events than steps
    for i, (k, n, mem) in runs.items():
        # the run's first step is scheduled as usual (it may admit a one-token prompt), the rest repeat it
        for j, s in enumerate(trace_step[i:i + k]):
            assert (s["tokens"], s["preempted"]) == (n, False) and (j == 0 or not s["admitted"]), (i, k, mem, s)
        # and it is as long as it may be: where no arrival cut it short and no tight cache makes the run's
        # block count careful, the step after it is not one more of the same (a shorter run only costs
        # speed, which no record shows)
        if not preempts and i not in shrunk and i + k < len(trace_step):
            s = trace_step[i + k]
            assert (s["tokens"], s["preempted"], bool(s["admitted"])) != (n, False, False), (i, k, mem, s)
