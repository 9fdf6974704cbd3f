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
        # called for every request of every step: the full-attention groups as (block size, count), and
        # each sliding group's cap in blocks remembered per chunk length (a handful of lengths recur)
        self._full = [(bs, count) for bs, count, window in self.groups if window is None]
        self._sliding = [(bs, count, window) for bs, count, window in self.groups if window is not None]
        self._caps: dict[int, list[tuple[int, int, int]]] = {}

    def blocks(self, tokens: int, chunk: int) -> int:
        """Blocks one request holds with `tokens` computed, `chunk` of them new."""
        total = 0
        for bs, count in self._full:
            total += count * -(-tokens // bs)
        if self._sliding:
            caps = self._caps.get(chunk)
            if caps is None:
                caps = self._caps[chunk] = [(bs, count, -(-(window - 1 + chunk) // bs) + 1)
                                            for bs, count, window in self._sliding]
            for bs, count, cap in caps:
                full = -(-tokens // bs)
                total += count * (full if full < cap else cap)
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


def hybrid_layout(pool_bytes: float, full_layers: int, full_bytes: float, window_layers: int = 0,
                  window_bytes: float = 0.0, window: int | None = None, base_block: int = 16):
    """(num_blocks, kv_groups) of vLLM's hybrid allocator for a KV pool of `pool_bytes`.

    full_bytes / window_bytes: KV bytes per token of one full-attention / sliding-window layer.
    Layers are grouped in groups of equal size; every page (one block of one group) has the same
    size, so each kind's block size is chosen to fill `base_block` tokens of the widest layer
    (Gemma-4-26B-A4B: 1 full group of 32-token blocks + 5 sliding groups of 16, pages of 5 x 64 KiB).
    """
    from .profile import KVGroup

    kinds = [(n, b, w) for n, b, w in ((full_layers, full_bytes, None), (window_layers, window_bytes, window))
             if n > 0 and b > 0]
    if not kinds or pool_bytes <= 0:
        return None, (KVGroup(base_block),)
    g = min(n for n, _, _ in kinds)  # layers per group
    page_layer = base_block * max(b for _, b, _ in kinds)
    groups = tuple(KVGroup(max(1, int(page_layer // b)), max(1, round(n / g)), w) for n, b, w in kinds)
    return max(1, int(pool_bytes // (g * page_layer))), groups


def kv_cache_size_tokens(limits) -> int | None:
    """vLLM's figure: max_model_len x how many max_model_len requests fit the block pool.

    vllm/v1/core/kv_cache_utils.py get_max_concurrency_for_kv_cache_config: a full
    attention group needs cdiv(max_model_len, block) blocks per request, a sliding one
    cdiv(min(window - 1 + max_num_batched_tokens, max_model_len), block) + 1.
    """
    L = getattr(limits, "engine", limits)  # a Profile or its EngineLimits
    if L.num_blocks is None:
        return None
    per_req = 0
    for g in L.kv_groups:
        if g.window is None:
            per_req += g.count * -(-L.max_model_len // g.block_size)
        else:
            n = min(g.window - 1 + L.max_num_batched_tokens, L.max_model_len)
            per_req += g.count * (-(-n // g.block_size) + 1)
    return int(L.num_blocks / per_req * L.max_model_len) if per_req else None
