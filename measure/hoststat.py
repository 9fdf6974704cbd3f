"""The share of the box's CPU time its hypervisor gave to others (steal) over a run, from /proc/stat.

A virtual machine whose host is busy runs slower than the same machine alone, the client and a
server on loopback alike; a run's timings then measure the neighbours too. Linux counts that time
as steal. None where /proc/stat is missing or has no steal column (not Linux, old kernels).
"""
from __future__ import annotations

PROC_STAT = "/proc/stat"


def cpu_ticks(path: str = PROC_STAT) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, or None when the file does not tell."""
    try:
        with open(path) as f:
            first = f.readline().split()
    except OSError:
        return None
    if len(first) < 9 or first[0] != "cpu":
        return None
    try:
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is inside user
        ticks = [int(x) for x in first[1:9]]
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Steal over all CPU time between two cpu_ticks() readings (None without both, or no ticks between)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 4)
