"""How long the client's event loop was held up during a run.

A task that sleeps TICK_S and records how late it wakes: a held-up loop stamps chunks late, all
at once, and this sees it wherever it falls. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
from array import array
from time import perf_counter

import numpy as np

TICK_S = 0.05


class LoopWatch:
    """Started just before a run's clock and stopped after its last request."""

    def __init__(self, stall_s: float, tick: float = TICK_S):
        self.stall_s = stall_s
        self.tick = tick
        self.late = array("d")  # one entry per tick: 8 bytes, 72 k an hour
        self.stalls: list[tuple[float, float]] = []  # (when the loop should have woken, how late), perf_counter
        self._task: asyncio.Task | None = None
        self._due: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._due = perf_counter() + self.tick
            await asyncio.sleep(self.tick)
            self._note(perf_counter())

    def _note(self, now: float) -> None:
        due, self._due = self._due, None
        late = now - due
        self.late.append(late)
        if late > self.stall_s:
            self.stalls.append((due, late))

    async def stop(self) -> None:
        if self._task is None:
            return
        # a stall that ends the run (the last streams' tokens stamped when the loop came back)
        # leaves an overdue tick the loop has not run yet: count it here
        now = perf_counter()
        if self._due is not None and now > self._due:
            self._note(now)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    def summary(self) -> dict | None:
        """{p50, p99, max} of the wake-up lateness in s, or None before the first tick."""
        return lag_summary(np.frombuffer(self.late, dtype=float)) if len(self.late) else None


def lag_summary(lag: np.ndarray) -> dict:
    """{p50, p99, max} of delays in s (send lag, loop lag), to 0.1 ms."""
    return {"p50": round(float(np.median(lag)), 4), "p99": round(float(np.percentile(lag, 99)), 4),
            "max": round(float(lag.max()), 4)}
