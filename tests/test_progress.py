"""The progress line of a live run (measure.progress): what it prints, and an ETA that holds.

The ETA is held to the truth on runs played on the model: each request's arrival and end are
fed to the line at the times they happened, and what it says is left compared with what was.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from measure import run_closed, run_open
from measure.progress import Progress
from simulator.load import ClosedLoop, OpenLoop
from simulator.profile import load_profile
from simulator.sim import simulate_workload_open
from simulator.workload import RandomWorkload

CHECKS = (0.1, 0.2, 0.3, 0.5, 0.7)  # shares of the run at which the ETA is read


T0 = 1000.0  # the clock's reading when a line starts (a monotonic clock starts anywhere)


class Clock:
    """A clock the test sets: `at(x)` puts it x s after T0."""

    def __init__(self):
        self.t = T0

    def at(self, x: float) -> float:
        self.t = T0 + x
        return self.t

    def __call__(self) -> float:
        return self.t


def played(rate: float, max_concurrency: int | None, n: int = 200):
    """The seed office's 4k-prompt load on the shipped profile: (arrivals, sends, ends, last arrival)."""
    pattern = OpenLoop(rate=rate, max_concurrency=max_concurrency, seed=0)
    run = simulate_workload_open(load_profile(None), RandomWorkload(4096, 512), n, pattern)
    t0 = run.start_time
    recs = sorted(run.records, key=lambda r: r.end_time)
    arrive = np.array([r.scheduled_time - t0 for r in recs])
    send = np.array([r.start_time - t0 for r in recs])
    end = np.array([r.end_time - t0 for r in recs])
    return arrive, send, end, float(OpenLoop(rate=rate, seed=0).arrival_times(n)[-1])


def etas(arrive, send, end, schedule_end, limit):
    """(true seconds left, ETA, floor) at each check, the line fed every answer as it came."""
    clock = Clock()
    prog = Progress(len(end), enabled=False, schedule_end=schedule_end, limit=limit, clock=clock)
    out, i, total = [], 0, end[-1]
    for share in CHECKS:
        now = share * total
        while i < len(end) and end[i] <= now:
            clock.at(end[i])
            inflight = int(((send <= end[i]) & (end > end[i])).sum())
            prog.update(done=i + 1, inflight=inflight, latency=end[i] - arrive[i])
            i += 1
        clock.at(now)
        prog.update(inflight=int(((send <= now) & (end > now)).sum()))
        out.append((total - now, prog.eta(), prog.floor()))
    return out


@pytest.mark.parametrize("rate,limit", [(0.1, None), (0.3, None), (0.3, 16), (1.0, None), (1.0, 16),
                                        (float("inf"), 16)])
def test_the_eta_is_within_a_factor_of_two_of_the_truth(rate, limit):
    """Light, loaded and saturated open loops, with and without a concurrency limit: wherever the line
    gives an ETA it is within 2x of the time left, and a floor ("ETA > 05:00") is never above it. The
    pace since the start alone (the line's rule before) said 5461 s with 169 left at 1 req/s, and
    2871 with 662 at 0.3: a run's first answers come a whole latency after its first sends."""
    arrive, send, end, last = played(rate, limit)
    rows = etas(arrive, send, end, last, limit)
    for left, eta, floor in rows:
        assert eta is None or floor is None
        if eta is not None:
            assert left / 2 <= eta <= left * 2, (left, eta)
        if floor is not None:
            assert floor <= left
    assert sum(eta is not None for _, eta, _ in rows) >= 2


def test_a_light_load_reads_the_schedule():
    """At 0.1 req/s the run ends at its last arrival plus about one latency: the ETA is within 10 % from
    the first answers on, where the pace since the start said 40-60 % more at first."""
    arrive, send, end, last = played(0.1, None)
    for left, eta, _ in etas(arrive, send, end, last, None):
        assert eta == pytest.approx(left, rel=0.1)
    for left, eta, _ in etas(arrive, send, end, None, None)[:2]:
        assert eta > 1.4 * left


def test_the_floor_before_any_answer_is_the_schedule_left():
    clock = Clock()
    prog = Progress(10, enabled=False, schedule_end=300.0, clock=clock)
    clock.at(100.0)
    assert prog.eta() is None and prog.floor() == 200.0
    clock.at(400.0)
    assert prog.floor() == 0.0
    prog.update(done=1, latency=50.0)
    assert prog.floor() is None
    assert Progress(10, enabled=False, clock=clock).floor() is None  # no schedule: no floor


def test_the_eta_rules_one_by_one():
    """The schedule's estimate (last arrival + mean latency), the pace since the first answer where that
    is less, and the pace since the start at the concurrency limit or without a schedule."""
    clock = Clock()
    prog = Progress(12, enabled=False, schedule_end=100.0, limit=4, clock=clock)
    clock.at(20.0)
    prog.update(done=1, latency=10.0, inflight=2)
    clock.at(30.0)
    prog.update(done=2, latency=30.0, inflight=2)
    # schedule: 100 + 20 - 30 = 90 s; pace since the first answer: 10 s a request x 10 left = 100 s
    assert prog.eta() == pytest.approx(90.0)
    clock.at(22.0)
    prog.update(done=3, latency=20.0)  # pace: 2 s / 2 answers x 9 left = 9 s, less than 98 s of schedule
    assert prog.eta() == pytest.approx(9.0)
    prog.update(inflight=4)  # at the limit: the pace since the start, 22 / 3 x 9
    assert prog.eta() == pytest.approx(22 / 3 * 9)
    clock.at(500.0)  # past the schedule's estimate: the pace since the first answer
    prog.update(inflight=1)
    assert prog.eta() == pytest.approx((500 - 20) / 2 * 9)
    plain = Progress(10, enabled=False, clock=clock)  # started at 500
    clock.at(520.0)
    plain.update(done=4, latency=1.0)
    assert plain.eta() == pytest.approx(20 / 4 * 6)
    assert Progress(0, enabled=False, clock=clock).eta() is None
    assert Progress(5, enabled=False, clock=clock).eta() is None  # nothing done yet: nothing to go on
    pair = Progress(12, enabled=False, schedule_end=100.0, clock=clock)  # started at 520
    clock.at(530.0)
    pair.update(done=1, latency=5.0)
    clock.at(531.0)
    pair.update(done=2, latency=5.0)  # two answers 1 s apart: a pace (10 s) under the schedule's 100 + 5 - 11
    assert pair.eta() == pytest.approx(10.0)


def test_a_closed_loops_warmups_count_in_its_pace():
    """A closed loop's warmup batches take time as its counted ones do: with one warmup before every
    two runs, the pace over the counted answers alone would say half as much again."""
    clock = Clock()
    prog = Progress(4, enabled=False, warmups=2, clock=clock)
    clock.at(10.0)
    prog.update(warmup=True)
    prog.update(warmup=True)  # the warmup batch: 5 s a request, 4 to go
    assert prog.eta() == pytest.approx(20.0)
    clock.at(20.0)
    prog.update(done=2)
    assert prog.eta() == pytest.approx(10.0)


def test_the_line():
    """A log (not a terminal) gets a full line at most every 10 s, and one at close if anything changed;
    the bar, counts, elapsed time and ETA read as written, a floor with '>'."""
    clock, out = Clock(), io.StringIO()
    prog = Progress(8, stream=out, label="requests", schedule_end=3725.0, clock=clock)
    clock.at(5.0)
    prog.update(inflight=3, force=True)
    clock.at(6.0)
    prog.update(inflight=4)  # within 10 s of the last line: not drawn
    clock.at(17.0)
    prog.update(inflight=5)
    clock.at(65.0)
    prog.update(done=2, failed=1, inflight=2, latency=40.0, note="warm")
    prog.close()
    prog.close()
    assert out.getvalue().splitlines() == [
        "[........................] 0/8 requests done, 0 failed, 3 in flight, 00:05 elapsed, ETA > 1:02:00",
        "[........................] 0/8 requests done, 0 failed, 5 in flight, 00:17 elapsed, ETA > 1:01:48",
        "[######..................] 2/8 requests done, 1 failed, 2 in flight, 01:05 elapsed, ETA 1:01:40  warm",
    ]
    quiet = io.StringIO()
    off = Progress(3, enabled=False, stream=quiet)
    off.update(done=3, force=True)
    off.close()
    assert quiet.getvalue() == ""


def test_a_terminal_line_is_redrawn_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    clock, out = Clock(), Tty()
    prog = Progress(2, stream=out, clock=clock)
    clock.at(0.5)
    prog.update(inflight=2)  # no answer and no schedule: no ETA
    clock.at(1.0)
    prog.update(done=1, inflight=1)
    clock.at(1.25)
    prog.update(note="x")  # 0.25 s after: drawn
    clock.at(1.3)
    prog.update(done=2, inflight=0)  # 0.05 s after: not drawn until close
    prog.close()
    assert out.getvalue() == (
        "\r[........................] 0/2 requests done, 0 failed, 2 in flight, 00:00 elapsed, ETA --:--\x1b[K"
        "\r[############............] 1/2 requests done, 0 failed, 1 in flight, 00:01 elapsed, ETA 00:01\x1b[K"
        "\r[############............] 1/2 requests done, 0 failed, 1 in flight, 00:01 elapsed, ETA 00:01  x\x1b[K"
        "\r[########################] 2/2 requests done, 0 failed, 0 in flight, 00:01 elapsed, ETA 00:00  x\x1b[K\n")


def test_a_live_run_tells_the_line_each_answers_latency(fake, monkeypatch):
    """The open loop gives the line its schedule's last arrival and limit, and each answer's time from
    arrival to end, as its record has them; its warmups (--num-warmups), done before the line starts,
    are not the line's."""
    seen: list[Progress] = []

    class Kept(Progress):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.latencies: list[float] = []
            seen.append(self)

        def update(self, *a, latency=None, **kw):
            if latency is not None:
                self.latencies.append(latency)
            super().update(*a, latency=latency, **kw)

    monkeypatch.setattr("measure.drivers.Progress", Kept)
    srv = fake(itl=0.001)
    pattern = OpenLoop(rate=50.0, max_concurrency=3, seed=4)
    run = run_open(srv.url, None, RandomWorkload(16, 4), pattern, 6, progress=False, num_warmups=2)
    prog = seen[-1]
    assert prog.total == 6 and prog.limit == 3 and prog.warmups == prog.warmups_done == 0
    assert prog.schedule_end == pytest.approx(float(OpenLoop(rate=50.0, seed=4).arrival_times(6)[-1]))
    want = sorted(r.end_time - r.scheduled_time for r in run.records)
    assert sorted(prog.latencies) == pytest.approx(want)


def test_a_closed_loop_tells_the_line_its_warmups(fake, monkeypatch):
    """The closed loop counts its warmup batches (one a test, of the test's concurrency) beside the
    measured requests, and tells the line each warmup answer."""
    seen: list[Progress] = []

    class Kept(Progress):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self)

    monkeypatch.setattr("measure.drivers.Progress", Kept)
    srv = fake(itl=0.001)
    run = run_closed(srv.url, None, ClosedLoop(pp=[16], tg=[4], depth=[0], concurrency=[1, 2], runs=2,
                                               latency_mode="none"), progress=False)
    prog = seen[-1]
    assert len(run.records) == prog.total == 6 and prog.done == 6
    assert prog.warmups == prog.warmups_done == 3
