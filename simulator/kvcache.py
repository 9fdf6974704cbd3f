"""vLLM's paged KV cache, counted in blocks of one shared pool.

Each KV-cache group (vLLM's hybrid allocator) holds ceil(tokens / block_size)
blocks; sliding-window groups drop blocks that fell out of the window and keep
about ceil((window - 1 + chunk) / block_size) + 1 while a chunk is computed, and
admission asks them for the window plus every batch in flight; the full-attention
blocks of a prefix several requests share are held once (docs/design/engine.md).
"""
from __future__ import annotations

import math

from .profile import EngineLimits


class KVCache:
    def __init__(self, limits: EngineLimits):
        self.groups = [(g.block_size, g.count, g.window) for g in limits.kv_groups]
        self.capacity = limits.num_blocks  # None: unlimited
        self.used = 0  # the blocks every request holds, summed
        self.shared = 0  # of those, blocks held by more than one request: counted once more each further holder
        # called for every request of every step: the full-attention groups as (block size, count), and
        # each sliding group's cap in blocks remembered per chunk length (a handful of lengths recur)
        self._full = [(bs, count) for bs, count, window in self.groups if window is None]
        self._sliding = [(bs, count, window) for bs, count, window in self.groups if window is not None]
        self._caps: dict[int, list[tuple[int, int, int]]] = {}
        # vLLM's admission cap of a sliding group (SlidingWindowSpec.max_admission_blocks_per_request): the
        # window plus every batch in flight, as kv_cache_size_tokens counts them
        in_flight = in_flight_tokens(limits)
        self._admit = [(bs, count, window_cap(bs, window, in_flight, limits.max_model_len))
                       for bs, count, window in self._sliding]
        self._budget = limits.max_num_batched_tokens

    def cache_hit(self, prompt: int, cached: int) -> int:
        """Prompt tokens vLLM's prefix cache gives a request whose first `cached` tokens are in it: whole
        blocks of every group (a hybrid's hit is a multiple of each group's block size), and never the
        whole prompt, whose last token is computed to sample from (KVCacheManager.get_computed_blocks)."""
        b = math.lcm(*(bs for bs, _, _ in self.groups))
        return max(0, min(cached, prompt - 1)) // b * b

    def shared_blocks(self, hit: int) -> int:
        """Blocks of a cache hit of `hit` tokens that requests sharing the prefix hold in common: the
        full-attention groups' (a sliding group drops a prefix's blocks once its window has passed them,
        so they are counted as each request's own there: an overcount while the window still holds them)."""
        return sum(count * (hit // bs) for bs, count in self._full)

    def partial_blocks(self, tokens: int) -> int:
        """Blocks of `tokens` not full, one a group where they do not fill its last: never cached, so vLLM's
        block pool gives them back to the free queue's head, to be taken first."""
        return sum(count for bs, count, _ in self.groups if tokens % bs)

    def blocks(self, tokens: int, chunk: int) -> int:
        """Blocks one request holds with `tokens` computed, `chunk` of them new."""
        caps = self._caps.get(chunk) if self._sliding else ()
        if caps is None:
            caps = self._caps[chunk] = [(bs, count, window_cap(bs, window, chunk))
                                        for bs, count, window in self._sliding]
        return self._capped(tokens, caps)

    def admission_blocks(self, tokens: int) -> int:
        """Free blocks vLLM's scheduler asks of a waiting request of `tokens` before it admits it
        (scheduler_reserve_full_isl): its whole sequence, each sliding group capped at its admission cap."""
        return self._capped(tokens, self._admit)

    def most_blocks(self, tokens: int) -> int:
        """The most blocks a request that reaches `tokens` can hold (a chunk of the whole budget) or ask
        free to be admitted: while the sum of every request's fits the cache, no block is ever refused."""
        return max(self.blocks(tokens, self._budget), self.admission_blocks(tokens))

    def _capped(self, tokens: int, caps) -> int:
        """Every full group's blocks of `tokens`, each sliding group's capped at its (bs, count, cap)."""
        total = 0
        for bs, count in self._full:
            total += count * -(-tokens // bs)
        for bs, count, cap in caps:
            full = -(-tokens // bs)
            total += count * (full if full < cap else cap)
        return total

    def stable_until(self, tokens: int) -> float:
        """Largest token count whose decode-time block count equals that at `tokens`."""
        until = math.inf
        for bs, _count, window in self.groups:
            if window is not None and -(-tokens // bs) >= window_cap(bs, window, 1):
                continue  # capped: a sliding group never grows again
            until = min(until, -(-tokens // bs) * bs)
        return until

    @property
    def in_use(self) -> int:
        """Blocks in use as vLLM's block pool counts them: a shared block once."""
        return self.used - self.shared

    @property
    def free(self) -> float:
        return math.inf if self.capacity is None else self.capacity - self.in_use

    def fits(self, extra: int) -> bool:
        return self.capacity is None or self.used - self.shared + extra <= self.capacity

    def usage(self) -> float:
        return 0.0 if not self.capacity else self.in_use / self.capacity


def layer_groups(counts: list[int]) -> tuple[int, list[int]]:
    """How vLLM's get_kv_cache_groups groups a hybrid model's layers (all of one page size), given each
    attention kind's layer count: G layers a group, the fewest of any kind, or the most where every
    kind's count is under 1.5x the fewest (the smaller kinds padded: 12 full + 13 sliding layers are one
    group of each), and ceil(count / G) groups a kind. -> (G, groups of each kind)."""
    lo, hi = min(counts), max(counts)
    g = hi if hi < 1.5 * lo else lo
    return g, [-(-n // g) for n in counts]


def hybrid_layout(pool_bytes: float, full_layers: int, full_bytes: float, window_layers: int = 0,
                  window_bytes: float = 0.0, window: int | None = None, base_block: int = 16):
    """(num_blocks, kv_groups) of vLLM's hybrid allocator for a KV pool of `pool_bytes`.

    full_bytes / window_bytes: KV bytes per token of one full-attention / sliding-window layer.
    Layers are grouped as `layer_groups` says; every page (one block of one group) has the same
    size, so each kind's block size is chosen to fill `base_block` tokens of the widest layer
    (Gemma-4-26B-A4B: 1 full group of 32-token blocks + 5 sliding groups of 16, pages of 5 x 64 KiB).
    """
    from .profile import KVGroup

    kinds = [(n, b, w) for n, b, w in ((full_layers, full_bytes, None), (window_layers, window_bytes, window))
             if n > 0 and b > 0]
    if not kinds or pool_bytes <= 0:
        return None, (KVGroup(base_block),)
    g, counts = layer_groups([n for n, _, _ in kinds])
    page_layer = base_block * max(b for _, b, _ in kinds)
    groups = tuple(KVGroup(max(1, int(page_layer // b)), c, w) for (_, b, w), c in zip(kinds, counts))
    return max(1, int(pool_bytes // (g * page_layer))), groups


def in_flight_tokens(limits, batches_in_flight: int | None = None) -> int:
    """vLLM 0.32's VllmConfig.max_in_flight_tokens: max_num_batched_tokens for every batch that can be in
    flight at once (2 with async scheduling, 1 without; batches_in_flight overrides)."""
    if batches_in_flight is None:
        batches_in_flight = 2 if limits.async_scheduling else 1
    return batches_in_flight * limits.max_num_batched_tokens


def window_cap(block_size: int, window: int, unfreed: int, max_model_len: int | None = None) -> int:
    """Blocks a sliding-window group keeps for its window plus `unfreed` tokens whose blocks are not freed
    yet (the chunk being computed; for admission, every batch in flight: vLLM's
    SlidingWindowSpec.max_admission_blocks_per_request, whose tokens stop at max_model_len), +1 as the
    window need not start at a block's start."""
    n = window - 1 + unfreed
    if max_model_len is not None and max_model_len < n:
        n = max_model_len
    return -(-n // block_size) + 1


def kv_cache_size_tokens(limits, batches_in_flight: int | None = None) -> int | None:
    """vLLM's figure: max_model_len x how many max_model_len requests fit the block pool.

    vllm/v1/core/kv_cache_utils.py get_kv_cache_capacity: a full attention group needs
    cdiv(max_model_len, block) blocks per request, a sliding one its admission cap
    cdiv(min(window - 1 + in-flight tokens, max_model_len), block) + 1, where vLLM 0.32 counts
    max_num_batched_tokens for every batch in flight (VllmConfig.max_in_flight_tokens: 2 with
    async scheduling, 1 without; batches_in_flight overrides). Earlier builds counted one batch.
    """
    L = getattr(limits, "engine", limits)  # a Profile or its EngineLimits
    if L.num_blocks is None:
        return None
    in_flight = in_flight_tokens(L, batches_in_flight)
    per_req = 0
    for g in L.kv_groups:
        if g.window is None:
            per_req += g.count * -(-L.max_model_len // g.block_size)
        else:
            per_req += g.count * window_cap(g.block_size, g.window, in_flight, L.max_model_len)
    return int(L.num_blocks / per_req * L.max_model_len) if per_req else None
