"""The client's loop watch (measure.loopwatch) on a clock the test moves: each tick's lateness is
exactly how long the loop overslept, a stall past the threshold is kept with when it was due, and
a stall that ends the run is counted at stop().

The live drivers' stall test (tests/test_measure.py) holds a real loop up and can bound a stall
only from below; here every figure has one right answer.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from measure import loopwatch
from measure.loopwatch import LoopWatch, lag_summary


def test_each_tick_is_as_late_as_the_loop_overslept_and_a_final_stall_is_counted_at_stop(monkeypatch):
    clock = [100.0]
    overslept = [0.001, 0.003, 0.5, 0.002]  # one entry a tick; then the loop parks
    real_sleep = asyncio.sleep

    async def sleep(seconds):
        if overslept:
            clock[0] += seconds + overslept.pop(0)
            await real_sleep(0)
        else:
            await real_sleep(3600)

    monkeypatch.setattr(loopwatch, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(loopwatch.asyncio, "sleep", sleep)

    async def main():
        watch = LoopWatch(stall_s=0.25, tick=0.05)
        assert watch.summary() is None  # before the first tick
        await watch.stop()  # stopping a watch that never started does nothing
        watch.start()
        for _ in range(20):
            await real_sleep(0)
        assert list(watch.late) == pytest.approx([0.001, 0.003, 0.5, 0.002], abs=1e-9)
        # the third tick was due 0.05 s after the second woke: 100 + 0.051 + 0.053 + 0.05
        assert len(watch.stalls) == 1 and watch.stalls[0] == pytest.approx((100.154, 0.5), abs=1e-9)
        # the loop is held 0.7 s past the parked tick's start and the run ends before it wakes
        parked = clock[0]
        clock[0] += 0.7
        await watch.stop()
        assert watch.stalls[1] == pytest.approx((parked + 0.05, 0.65), abs=1e-9)
        n = len(watch.late)
        await watch.stop()  # a second stop changes nothing
        clock[0] += 5.0
        await real_sleep(0)
        assert len(watch.late) == n == 5  # the task was cancelled: no tick after stop
        # a run that ends before its tick is due adds no tick
        early = LoopWatch(stall_s=0.25, tick=0.05)
        early.start()
        await real_sleep(0)
        clock[0] += 0.04
        await early.stop()
        assert early.summary() is None and early.stalls == []
        return watch.summary()

    assert asyncio.run(main()) == {"p50": 0.003, "p99": 0.644, "max": 0.65}


def test_lag_summary_is_the_median_99th_percentile_and_max_to_a_tenth_of_a_ms():
    assert lag_summary(np.array([0.00012, 0.00049, 1.23456])) == {"p50": 0.0005, "p99": 1.2099, "max": 1.2346}
