"""simulator/kvcache.py: vLLM V1's paged KV cache counted in blocks of one pool (issue 13).

Every expected number below is worked out by hand from vLLM's rules (../shared/reference/
vllm-and-spark-physics.md sections 1.4 and 2.2, vllm/v1/core/kv_cache_utils.py) and written as a
literal with its derivation, never computed by the code under test:

- a full-attention group holds ceil(tokens / block_size) blocks;
- a sliding-window group frees the blocks that fell out of the window and holds at most
  ceil((window - 1 + chunk) / block_size) + 1 of them while `chunk` new tokens are computed;
- all groups draw from one pool of `num_blocks` blocks; hybrid_layout picks every group's block size
  so that all pages (one block of one group of g layers) have the same size.
"""
import math

import pytest

from simulator.kvcache import KVCache, hybrid_layout, kv_cache_size_tokens
from simulator.profile import EngineLimits, KVGroup
from tests.helpers import GEMMA4_KV_GROUPS as GEMMA4  # Gemma-4-26B-A4B with fp8 KV (reference section 2.2)


def cache(groups=(KVGroup(16),), num_blocks=None, **kw) -> KVCache:
    return KVCache(EngineLimits(num_blocks=num_blocks, kv_groups=tuple(groups), **kw))


# ------------------------------------------------------------------ blocks per request

@pytest.mark.parametrize("tokens, expected", [
    (0, 0),    # nothing computed holds nothing
    (1, 1),    # ceil(1/16) = 1
    (15, 1),   # ceil(15/16) = 1
    (16, 1),   # exactly one full block: ceil(16/16) = 1
    (17, 2),   # one token over a block boundary opens a second block: ceil(17/16) = 2
    (32, 2),   # ceil(32/16) = 2
    (33, 3),   # ceil(33/16) = 3
    (1000, 63),  # ceil(1000/16) = ceil(62.5) = 63
])
def test_full_attention_group_holds_ceil_tokens_over_block(tokens, expected):
    kv = cache()
    assert kv.blocks(tokens, 1) == expected
    assert kv.blocks(tokens, tokens) == expected  # the chunk does not matter without a window


def test_groups_of_one_kind_count_once_each():
    # 3 full-attention groups of 16-token blocks at 17 tokens: 3 x ceil(17/16) = 3 x 2 = 6
    assert cache((KVGroup(16, 3),)).blocks(17, 1) == 6
    # two kinds add up: 1 x ceil(40/8) + 2 x ceil(40/32) = 5 + 2 x 2 = 9
    assert cache((KVGroup(8, 1), KVGroup(32, 2))).blocks(40, 1) == 9


@pytest.mark.parametrize("tokens, chunk, expected", [
    # decode at 4500 tokens: full ceil(4500/32) = ceil(140.625) = 141; each sliding group
    # min(ceil(4500/16) = 282, ceil((1024 - 1 + 1)/16) + 1 = 64 + 1 = 65) = 65; 141 + 5 x 65 = 466
    # (reference 2.2: "~65 blocks/group -> ~325 blocks" of sliding KV in steady decode)
    (4500, 1, 466),
    # a 2048-token prefill chunk ending at 4096: full 4096/32 = 128; sliding
    # min(ceil(4096/16) = 256, ceil((1023 + 2048)/16) + 1 = ceil(191.94) + 1 = 193) = 193;
    # 128 + 5 x 193 = 1093 (reference 2.2: "~193 blocks/group -> ~965 blocks")
    (4096, 2048, 1093),
    # a short request inside the window: full ceil(100/32) = 4; sliding min(ceil(100/16) = 7,
    # ceil(1123/16) + 1 = 71 + 1 = 72) = 7; 4 + 5 x 7 = 39
    (100, 100, 39),
    # exactly the window, decoding: full 1024/32 = 32; sliding min(1024/16 = 64, 64 + 1 = 65) = 64;
    # 32 + 5 x 64 = 352
    (1024, 1, 352),
    # one token past the window: full ceil(1025/32) = 33; sliding min(ceil(1025/16) = 65, 65) = 65;
    # 33 + 5 x 65 = 358
    (1025, 1, 358),
    # far past it the sliding groups stay capped at 65: full 131072/32 = 4096; 4096 + 325 = 4421
    (131072, 1, 4421),
])
def test_sliding_window_groups_drop_blocks_that_left_the_window(tokens, chunk, expected):
    assert cache(GEMMA4).blocks(tokens, chunk) == expected


@pytest.mark.parametrize("tokens, chunk, expected", [
    # window 4 < block 16: the cap is ceil((4 - 1 + 1)/16) + 1 = 1 + 1 = 2 blocks (the block the
    # window starts in and the one it ends in)
    (100, 1, 2),    # min(ceil(100/16) = 7, 2) = 2
    (100, 13, 2),   # cap ceil((3 + 13)/16) + 1 = 1 + 1 = 2
    (100, 14, 3),   # cap ceil((3 + 14)/16) + 1 = 2 + 1 = 3: the chunk itself spans two blocks
    (1, 1, 1),      # min(ceil(1/16) = 1, 2) = 1: never more than the tokens need
])
def test_a_window_smaller_than_a_block(tokens, chunk, expected):
    assert cache((KVGroup(16, 1, 4),)).blocks(tokens, chunk) == expected


# ------------------------------------------------------------------ when the block count next changes

def test_stable_until_is_the_end_of_the_current_block():
    kv = cache()
    assert kv.stable_until(0) == 0     # 0 blocks: the first token needs one
    assert kv.stable_until(16) == 16   # block 1 is full: token 17 needs block 2
    assert kv.stable_until(17) == 32   # ceil(17/16) x 16 = 32 tokens fit the 2 blocks
    assert kv.blocks(32, 1) == kv.blocks(17, 1) < kv.blocks(33, 1)  # 2 == 2 < 3


def test_stable_until_with_sliding_groups():
    kv = cache(GEMMA4)
    # at 100 tokens the sliding groups still grow: min(full 4 x 32 = 128, sliding 7 x 16 = 112) = 112
    assert kv.stable_until(100) == 112
    # at 4500 they are capped (ceil(4500/16) = 282 >= ceil(1024/16) + 1 = 65): only the full group,
    # ceil(4500/32) x 32 = 141 x 32 = 4512
    assert kv.stable_until(4500) == 4512
    # only a capped sliding group: it never grows again
    assert cache((KVGroup(16, 1, 64),)).stable_until(1000) == math.inf  # 63 >= 64/16 + 1 = 5


@pytest.mark.parametrize("groups", [(KVGroup(16),), GEMMA4, (KVGroup(4, 1, None), KVGroup(4, 2, 17)),
                                    (KVGroup(4, 2, 16),), (KVGroup(8, 1, 9),), (KVGroup(4, 1, 3),)])
def test_stable_until_is_exactly_where_the_decode_blocks_change(groups):
    """The engine reuses a decode's block count up to stable_until: the count must hold to it and change just
    after it. Windows one past a block's end (17 over blocks of 4, 9 over 8) cap a block later than others."""
    kv = cache(groups)
    for t in range(0, 400):
        until = kv.stable_until(t)
        last = min(until, 2000)
        assert all(kv.blocks(u, 1) == kv.blocks(t, 1) for u in range(t, int(last) + 1)), (t, until)
        if until != math.inf:
            assert kv.blocks(int(until) + 1, 1) != kv.blocks(t, 1), (t, until)
        else:
            assert kv.blocks(2000, 1) == kv.blocks(t, 1)


# ------------------------------------------------------------------ pool accounting

def test_fits_and_free_count_the_shared_pool():
    kv = cache(num_blocks=10)
    assert (kv.capacity, kv.used, kv.free, kv.usage()) == (10, 0, 10, 0.0)
    assert kv.fits(10) and not kv.fits(11)  # exactly full fits, one block over does not
    kv.used += 7  # what Engine does when it allocates (there is no allocate/free method)
    assert (kv.free, kv.usage()) == (3, 0.7)
    assert kv.fits(3) and not kv.fits(4)
    kv.used += 3
    assert kv.free == 0 and kv.usage() == 1.0 and kv.fits(0) and not kv.fits(1)
    kv.used -= 10  # a finished request gives back what it held
    assert kv.free == 10 and kv.fits(10)


def test_capacity_none_is_unbounded():
    kv = cache(num_blocks=None)
    assert kv.capacity is None and kv.free == math.inf and kv.usage() == 0.0
    assert kv.fits(10 ** 12)
    kv.used += 10 ** 9
    assert kv.fits(10 ** 12) and kv.free == math.inf and kv.usage() == 0.0


def test_a_request_that_exactly_fills_the_pool():
    # 4 blocks of 16 tokens hold 64 tokens: a 64-token request fits, a 65-token one does not
    kv = cache(num_blocks=4)
    assert kv.fits(kv.blocks(64, 64)) and not kv.fits(kv.blocks(65, 65))


@pytest.mark.parametrize("async_, tokens, expected", [
    # Gemma-4-26B-A4B at budget 2048: a full group of ceil(t/32) blocks and 5 sliding groups each capped
    # at ceil((1023 + in-flight tokens)/16) + 1 = 193 blocks (one batch) or 321 (two, async scheduling)
    (False, 1000, 32 + 5 * 63),       # under the window: every block of the sequence
    (False, 3071, 96 + 5 * 192),      # ceil(3071/16) = 192, one under the cap
    (False, 3088, 97 + 5 * 193),      # at the cap of one batch in flight
    (False, 100000, 3125 + 5 * 193),
    (True, 3088, 97 + 5 * 193),       # two batches in flight: the same sequence is under their cap
    (True, 100000, 3125 + 5 * 321),
])
def test_admission_asks_the_window_plus_every_batch_in_flight(async_, tokens, expected):
    """SlidingWindowSpec.max_admission_blocks_per_request (vLLM 0.32): not the chunk being admitted."""
    kv = cache(GEMMA4, max_num_batched_tokens=2048, max_model_len=131072, async_scheduling=async_)
    assert kv.admission_blocks(tokens) == expected
    # what the request then holds while its first chunk (the whole budget) is computed is capped lower
    assert kv.blocks(tokens, 2048) <= expected


# ------------------------------------------------------------------ hybrid allocator layout

def test_hybrid_layout_gemma4_26b_a4b_at_0_9():
    # Reference 2.2: 25 sliding layers of 2 (K, V) x 8 heads x 256 x 1 byte = 4096 B a token, 5 full
    # layers of 2 x 2 x 512 = 2048 B. Pages fill 16 tokens of the widest layer: 16 x 4096 = 65,536 B;
    # full layers get 65,536 / 2048 = 32-token blocks, sliding 65,536 / 4096 = 16. Groups of
    # min(5, 25) = 5 layers: 5 / 5 = 1 full group, 25 / 5 = 5 sliding groups; a block is 5 x 65,536 B.
    # Pool at gpu_memory_utilization 0.9 on a GB10 (121.69 GiB), weights 48.1 GiB, other 3.0 GiB:
    # (109.521 - 51.1) GiB = 58.421 GiB = 62,729,071,099.9 B; / 327,680 = 191,433.93 -> 191,433 blocks
    pool = (0.9 * 121.69 - 48.1 - 3.0) * 2 ** 30
    n, groups = hybrid_layout(pool, 5, 2048, 25, 4096, 1024)
    assert groups == GEMMA4
    assert n == 191433


def test_hybrid_layout_matches_the_reference_sensitivity_table():
    # Reference 2.4's sensitivity table, row "48.1 GiB weights, 3.0 other" at 0.95: num_blocks 211,371
    # ((115.6055 - 51.1) GiB x 2^30 / 327,680 = 211,371.62)
    n, _ = hybrid_layout((0.95 * 121.69 - 48.1 - 3.0) * 2 ** 30, 5, 2048, 25, 4096, 1024)
    assert n == 211371


def test_hybrid_layout_exactly_full_pages():
    page = 5 * 65536  # one Gemma 4 block: 5 layers x 65,536 B
    assert hybrid_layout(10 * page, 5, 2048, 25, 4096, 1024)[0] == 10      # exactly 10 blocks
    assert hybrid_layout(10 * page - 1, 5, 2048, 25, 4096, 1024)[0] == 9   # one byte short of the 10th


def test_hybrid_layout_of_a_dense_model():
    # 32 full layers of 4096 B a token: one group of 32 layers, 16-token blocks, pages 16 x 4096 B,
    # a block 32 x 65,536 B = 2 MiB; 1 GiB holds 512 of them
    n, groups = hybrid_layout(2 ** 30, 32, 4096)
    assert groups == (KVGroup(16, 1, None),)
    assert n == 512
    # base_block 32 doubles the page: 32 x 4096 x 32 = 4 MiB a block, 256 in 1 GiB
    n, groups = hybrid_layout(2 ** 30, 32, 4096, base_block=32)
    assert (n, groups) == (256, (KVGroup(32, 1, None),))


def test_hybrid_layout_of_a_single_full_attention_layer():
    # a hybrid of one attention layer (the rest Mamba, held apart) lays that layer out, as one of 32 is
    n, groups = hybrid_layout(2 ** 30, 1, 4096)
    assert (n, groups) == (2 ** 30 // (16 * 4096), (KVGroup(16, 1, None),))
    n, groups = hybrid_layout(2 ** 30, 1, 2048, 3, 4096, 512)
    assert groups == (KVGroup(32, 1, None), KVGroup(16, 3, 512)) and n == 2 ** 30 // (16 * 4096)


def test_hybrid_layout_edge_cases():
    # nothing to lay out, or no pool: capacity unknown, vLLM's default 16-token block
    assert hybrid_layout(2 ** 30, 0, 4096) == (None, (KVGroup(16),))
    assert hybrid_layout(0, 32, 4096) == (None, (KVGroup(16),))
    assert hybrid_layout(-1.0, 32, 4096) == (None, (KVGroup(16),))
    # a pool smaller than one block still gives one block (never a zero-block cache)
    assert hybrid_layout(1000, 32, 4096)[0] == 1


def test_kv_cache_size_tokens_is_vllms_max_concurrency_figure():
    # Reference 2.2: a 131,072-token request needs 131072/32 = 4096 full blocks + 5 sliding groups x
    # (ceil((1024 - 1 + 2048)/16) + 1 = 193) = 4096 + 965 = 5061 blocks at budget 2048.
    # 50,610 blocks hold 10 such requests: 10 x 131,072 = 1,310,720 tokens.
    lim = EngineLimits(num_blocks=50610, kv_groups=GEMMA4, max_model_len=131072, max_num_batched_tokens=2048,
                       async_scheduling=False)
    assert kv_cache_size_tokens(lim) == 1310720
    # vLLM 0.32 with async scheduling sizes the window for two batches in flight: ceil((1023 + 4096)/16) + 1
    # = 321 a sliding group, 4096 + 1605 = 5701 blocks a request; 50,610 / 5701 x 131,072 = 1,163,577
    lim.async_scheduling = True
    assert kv_cache_size_tokens(lim) == 1163577
    assert kv_cache_size_tokens(lim, batches_in_flight=1) == 1310720  # a build that counts one batch
    lim.num_blocks = None
    assert kv_cache_size_tokens(lim) is None
