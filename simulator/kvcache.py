"""vLLM's paged KV cache, counted in blocks of one shared pool.

Each KV-cache group (vLLM's hybrid allocator) holds ceil(tokens / block_size)
blocks; sliding-window groups drop blocks that fell out of the window and keep
about ceil((window - 1 + chunk) / block_size) + 1 while a chunk is computed.
"""
from __future__ import annotations

import math

from .profile import EngineLimits


class KVCache:
    def __init__(self, limits: EngineLimits):
        self.groups = [(g.block_size, g.count, g.window) for g in limits.kv_groups]
        self.capacity = limits.num_blocks  # None: unlimited
        self.used = 0

    def blocks(self, tokens: int, chunk: int) -> int:
        """Blocks one request holds with `tokens` computed, `chunk` of them new."""
        total = 0
        for bs, count, window in self.groups:
            full = -(-tokens // bs)
            if window is not None:
                full = min(full, -(-(window - 1 + chunk) // bs) + 1)
            total += count * full
        return total

    def stable_until(self, tokens: int) -> float:
        """Largest token count whose decode-time block count equals that at `tokens`."""
        until = math.inf
        for bs, _count, window in self.groups:
            if window is not None and -(-tokens // bs) >= -(-window // bs) + 1:
                continue  # capped: a sliding group never grows again
            until = min(until, -(-tokens // bs) * bs)
        return until

    @property
    def free(self) -> float:
        return math.inf if self.capacity is None else self.capacity - self.used

    def fits(self, extra: int) -> bool:
        return self.capacity is None or self.used + extra <= self.capacity

    def usage(self) -> float:
        return 0.0 if not self.capacity else self.used / self.capacity
