"""A small progress line on stderr: requests done, failures, in flight, ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_s(s: float | None) -> str:
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
    """

    def __init__(self, total: int, enabled: bool = True, label: str = "requests",
                 stream: TextIO | None = None):
        self.total = max(0, int(total))
        self.enabled = enabled
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = 0.2 if self.tty else 10.0
        self.t0 = time.monotonic()
        self._last = 0.0
        self.done = self.failed = self.inflight = 0
        self.note = ""
        self._drawn = False

    def update(self, done: int | None = None, failed: int | None = None, inflight: int | None = None,
               note: str | None = None, force: bool = False) -> None:
        if done is not None:
            self.done = done
        if failed is not None:
            self.failed = failed
        if inflight is not None:
            self.inflight = inflight
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        self._draw(now)

    def eta(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        el = now - self.t0
        if self.done <= 0 or self.total <= 0:
            return None
        return el / self.done * (self.total - self.done)

    def _draw(self, now: float) -> None:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        fill = int(round(width * min(1.0, frac)))
        bar = "#" * fill + "." * (width - fill)
        line = (f"[{bar}] {self.done}/{self.total} {self.label} done, {self.failed} failed, "
                f"{self.inflight} in flight, {_fmt_s(now - self.t0)} elapsed, ETA {_fmt_s(self.eta(now))}")
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

    def close(self) -> None:
        if not self.enabled:
            return
        state = (self.done, self.failed, self.inflight, self.note)
        if state != getattr(self, "_drawn_state", None):
            self._draw(time.monotonic())
        self.enabled = False
        if self.tty:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
