"""A small progress line on stderr: requests done, failures, in flight, ETA."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO


def fmt_clock(s: float | None) -> str:
    """Seconds as mm:ss (h:mm:ss from an hour); --:-- where unknown."""
    if s is None or s != s or s == float("inf"):
        return "--:--"
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """`update()` is cheap; the line is redrawn at most `min_interval` s apart.

    On a terminal it redraws one line in place; otherwise (logs, CI) it prints
    a full line every 10 s at most.

    `schedule_end`: an open loop's last arrival, in seconds after the start (its arrivals
    are drawn up front); `limit`: its --max-concurrency. The ETA then reads the schedule (`eta`).
    `warmups`: requests sent among the counted ones but not counted (a closed loop's warmup
    batches), whose time the pace spends too.
    """

    def __init__(self, total: int, enabled: bool = True, label: str = "requests",
                 stream: TextIO | None = None, schedule_end: float | None = None, limit: int | None = None,
                 warmups: int = 0, clock: Callable[[], float] = time.monotonic):
        self.total = max(0, int(total))
        self.enabled = enabled
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = 0.2 if self.tty else 10.0
        self.clock = clock
        self.t0 = clock()
        self._last = 0.0
        self.done = self.failed = self.inflight = 0
        self.note = ""
        self.schedule_end = schedule_end if schedule_end is not None and math.isfinite(schedule_end) else None
        self.limit = limit
        self.warmups = warmups
        self.warmups_done = 0
        self._latency_sum = 0.0  # arrival to end, over the requests finished
        self._latencies = 0
        self._first_done: float | None = None
        self._drawn = False

    def update(self, done: int | None = None, failed: int | None = None, inflight: int | None = None,
               note: str | None = None, force: bool = False, latency: float | None = None,
               warmup: bool = False) -> None:
        """`latency`: a request just finished, this many seconds after its arrival; `warmup`: a warmup
        request just finished (one the line was started to count, a closed loop's)."""
        self.warmups_done += warmup
        if done is not None:
            if done > 0 and self._first_done is None:
                self._first_done = self.clock()
            self.done = done
        if latency is not None and math.isfinite(latency):
            self._latency_sum += latency
            self._latencies += 1
        if failed is not None:
            self.failed = failed
        if inflight is not None:
            self.inflight = inflight
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        self._draw(now)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left, None while there is nothing to go on.

        Without a schedule, or at the concurrency limit (sends wait on it, as in a closed loop),
        the pace so far, warmups counted. With one, the last arrival plus the mean latency so
        far, or where more is left, the pace since the first answer: an open loop's answers come
        a latency after their sends, so early on the pace reads a fraction of the rate while the
        schedule is known; a server falling behind shows in the pace.
        """
        now = self.clock() if now is None else now
        el = now - self.t0
        spent = self.done + self.warmups_done
        if spent <= 0 or self.total <= 0:
            return None
        left = self.total - self.done
        if self.schedule_end is None or (self.limit is not None and self.inflight >= self.limit):
            return el / spent * (left + self.warmups - self.warmups_done)
        pace = None
        if self.done >= 2 and self._first_done is not None and now > self._first_done:
            pace = (now - self._first_done) / (self.done - 1) * left
        sched = (self.schedule_end + self._latency_sum / self._latencies - el) if self._latencies else None
        if sched is not None and sched > 0 and (pace is None or sched < pace):
            return sched
        return pace

    def floor(self, now: float | None = None) -> float | None:
        """Seconds left at least, before any answer: the schedule's sends still to go."""
        now = self.clock() if now is None else now
        if self.schedule_end is None or self.done > 0:
            return None
        return max(0.0, self.schedule_end - (now - self.t0))

    def _draw(self, now: float) -> None:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        fill = int(round(width * min(1.0, frac)))
        bar = "#" * fill + "." * (width - fill)
        line = (f"[{bar}] {self.done}/{self.total} {self.label} done, {self.failed} failed, "
                f"{self.inflight} in flight, {fmt_clock(now - self.t0)} elapsed, ETA {self._eta_text(now)}")
        if self.note:
            line += f"  {self.note}"
        try:
            if self.tty:
                self.stream.write("\r" + line + "\x1b[K")
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
            self._drawn = True
            self._drawn_state = (self.done, self.failed, self.inflight, self.note)
        except (OSError, ValueError):
            self.enabled = False

    def _eta_text(self, now: float) -> str:
        floor = self.floor(now)
        if floor:
            return f"> {fmt_clock(floor)}"
        return fmt_clock(self.eta(now))

    def close(self) -> None:
        if not self.enabled:
            return
        state = (self.done, self.failed, self.inflight, self.note)
        if state != getattr(self, "_drawn_state", None):
            self._draw(self.clock())
        self.enabled = False
        if self.tty:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
