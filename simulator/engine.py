"""A SimPy model of vLLM V1's engine loop.

One `_schedule()` per step follows vllm/v1/core/sched/scheduler.py (running requests first, then
waiting ones FCFS within the token budget, max_num_seqs and KV blocks; recompute preemption; async
scheduling one step ahead). Fast-forward takes runs of unchanging decode steps as one event with
bit-identical token times. Design: docs/design/engine.md.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Callable

import numpy as np
import simpy
import simpy.rt

from .kvcache import KVCache, window_cap
from .profile import Profile, refused_for_length
from .records import RequestRecord
from .stepmodel import window_pairs, window_sums
from .workload import RequestSpec

WAITING, RUNNING, FINISHED = 0, 1, 2
_PAGE = 1 << 15


class _TimeStore:
    """Chunk times of all steps in fixed pages, so records can be views."""

    def __init__(self):
        self.pages: list[np.ndarray] = []
        self.n = 0

    def put(self, values) -> int:
        first = self.n
        for v in np.atleast_1d(values):
            p, o = divmod(self.n, _PAGE)
            if p == len(self.pages):
                self.pages.append(np.empty(_PAGE))
            self.pages[p][o] = v
            self.n += 1
        return first

    def put1(self, value: float) -> int:
        n = self.n
        p, o = divmod(n, _PAGE)
        if p == len(self.pages):
            self.pages.append(np.empty(_PAGE))
        self.pages[p][o] = value
        self.n = n + 1
        return n

    def put_run(self, values: np.ndarray) -> int:
        first = self.n
        i = 0
        while i < len(values):
            p, o = divmod(self.n, _PAGE)
            if p == len(self.pages):
                self.pages.append(np.empty(_PAGE))
            take = min(_PAGE - o, len(values) - i)
            self.pages[p][o:o + take] = values[i:i + take]
            self.n += take
            i += take
        return first

    def get(self, start: int, length: int) -> np.ndarray:
        p, o = divmod(start, _PAGE)
        if o + length <= _PAGE:
            return self.pages[p][o:o + length]
        return np.concatenate([self.get(start, _PAGE - o), self.get(start + _PAGE - o, length - (_PAGE - o))])


class _Req:
    __slots__ = ("spec", "prompt", "max_tokens", "target", "computed", "out_sched", "emitted", "held",
                 "state", "epoch", "record", "segments", "seg_start", "seg_len", "arrival", "on_done", "order",
                 "kv_until", "drafts", "accepted", "chunks", "multi", "mem", "ub", "hit", "group", "sb", "own", "kept",
                 "m_id", "m_f", "m_oj", "m_cj", "m_base", "m_stop", "m_fs", "m_in")

    def __init__(self, spec: RequestSpec, record: RequestRecord, arrival: float, on_done, order: int,
                 max_tokens: int):
        self.spec = spec
        self.prompt = spec.prompt_tokens
        self.max_tokens = max_tokens
        self.target = min(spec.output_tokens, max_tokens)
        self.computed = 0
        self.out_sched = 0
        self.emitted = 0
        self.held = 0
        self.state = WAITING
        self.epoch = 0
        self.record = record
        self.segments: list[tuple[int, int]] = []
        self.seg_start = -1
        self.seg_len = 0
        self.arrival = arrival
        self.on_done = on_done
        self.order = order
        self.kv_until = -1  # decode steps keep the same blocks while computed + 1 <= kv_until
        self.drafts = 0  # speculative decoding: draft tokens of the step in flight, and how many pass
        self.accepted = 0
        self.chunks = 0  # chunks emitted so far
        self.multi: list[tuple[int, int]] | None = None  # (chunk number, tokens) of chunks of != 1 token
        self.mem = False  # a member: its decode counters live in the engine's member arrays
        self.ub = 0  # the most KV blocks it can ever hold
        self.hit = 0  # prompt tokens found in the prefix cache: computed from the start, and again after a preemption
        self.group: str | None = None  # the prefix group whose blocks it may share (RequestSpec.prefix_group)
        self.sb = 0  # full-attention blocks of that prefix it holds
        # preempted with the prefix cache on: (free-queue position, blocks, tokens) of the blocks it gave back,
        # cached until evicted (Engine._own_hit)
        self.own: tuple[int, int, int] | None = None
        self.kept = 0  # of those, blocks still cached when its hit was last found

    @property
    def known(self) -> int:
        return self.prompt + self.out_sched

    def emit(self, idx: int, count: int = 1, tokens: int | None = None) -> None:
        """`count` chunks from chunk index idx on, carrying `tokens` tokens (default one each)."""
        if self.seg_len and idx == self.seg_start + self.seg_len:
            self.seg_len += count
        else:
            if self.seg_len:
                self.segments.append((self.seg_start, self.seg_len))
            self.seg_start, self.seg_len = idx, count
        if tokens is not None and tokens != count:  # only a speculative step's single chunk
            if self.multi is None:
                self.multi = []
            self.multi.append((self.chunks, tokens))
        self.chunks += count
        self.emitted += count if tokens is None else tokens


class _Step:
    __slots__ = ("items", "start", "end", "k", "ends", "first_idx", "mem")

    def __init__(self, items, start, k=1, ends=None, mem=False):
        self.items = items  # [(req, n_tokens, emits, epoch)]
        self.mem = mem  # members decode in it too (one token each, not in items)
        self.start = start
        self.k = k
        self.ends = ends
        self.end = float(ends[-1]) if ends is not None else None
        self.first_idx = -1


class _Relay:
    """A callback that triggers `event` the first time it is called (Condition.any_events, without a value)."""
    __slots__ = ("event",)

    def __init__(self, event: simpy.Event):
        self.event = event

    def __call__(self, _ev) -> None:
        ev = self.event
        if ev is not None and not ev.triggered:
            ev.succeed()


class Engine:
    """The engine. `submit()` a request at an exact time; `on_done(req)` fires when it ends."""

    MIN_RUN = 3  # shorter decode runs are stepped one by one
    # A plain decode (one token, its block held) and a speculative decode whose blocks fit are taken
    # inline by the scheduler, without the general path's calls. False sends every request through the
    # general path: the reference the inline code must equal, step for step (tests/test_engine_spec.py).
    INLINE_DECODES = True

    def __init__(self, env: simpy.Environment, profile: Profile, fast_forward: bool = True, seed: int = 0,
                 trace: Callable[[dict], None] | None = None,
                 on_emit: Callable[[RequestRecord, float, int], None] | None = None):
        self.env = env
        self.profile = profile
        self.lim = profile.engine
        self.model = profile.step_model
        self.window = getattr(self.model, "window", None)
        self.kv = KVCache(self.lim)
        # most_blocks() grows with its tokens, so when the longest request's blocks fit, every request's
        # do, and reject_reason need not count them
        self._any_fits = self.kv.capacity is None or self.kv.most_blocks(self.lim.max_model_len) <= self.kv.capacity
        self._blocks1: dict[int, tuple] = {}
        # prefix groups: the tokens of each prefix in the cache, and the blocks of it each holder holds
        self._cached: dict[str, int] = {}
        self._holders: dict[str, list[int]] = {}
        # with the prefix cache on, a preempted request's blocks stay cached in vLLM's free queue until taken
        # fresh (evicted): the blocks given back to it and taken from it as a preempted request's hit, so far
        self._recache = self.lim.prefix_caching and self.kv.capacity is not None
        self._freed = 0
        self._touched = 0
        self._evictable: list[_Req] = []  # preempted requests whose blocks may still be cached
        # the first group's block size, by which a preempted request's own hit shrinks (None: a group slides)
        self._own_bs = self.kv.groups[0][0] if self.kv.groups and all(w is None for _, _, w in self.kv.groups) else None
        self.spec_k = self.lim.num_speculative_tokens
        self._spec_rng = np.random.default_rng([seed, 0x5BEC])
        # its geometric draws, drawn ahead in blocks (the same numbers in the same order as one by one)
        self._g_buf: list = []
        self._g_i = 0
        self._g_p = None
        self._g_state = None
        self._g_n = 64
        # with speculative decoding the scheduler waits for each step's accepted tokens (sync)
        self.async_ = self.lim.async_scheduling and not self.spec_k
        self.fast_forward = fast_forward
        # a virtual clock may jump over waits nothing else can interrupt (_skip_to); a real-time one must wait
        self._jumps = not isinstance(env, simpy.rt.RealtimeEnvironment)
        self.trace = trace
        # Called as on_emit(record, chunk_time, tokens) when a step's tokens are out; a
        # live twin streams them. Decode runs report their tokens at the run's end, so a
        # real-time caller uses fast_forward=False.
        self.on_emit = on_emit
        self.chunk_s = profile.api.chunk_s
        self.wake_s = profile.api.wake_s
        self.noise_cv = profile.step_noise_cv
        self.noise_seed = seed
        self._noise_pages: dict[int, np.ndarray] = {}
        self.waiting: deque[_Req] = deque()
        self.running: list[_Req] = []
        self.inflight: deque[_Step] = deque()
        self.clock = 0.0
        self.times = _TimeStore()
        self.steps = 0
        self.num_preemptions = 0
        # speculative decoding as vLLM's spec_decode counters count it: drafts (a request's step with drafts),
        # draft tokens, accepted tokens, and accepted tokens at each draft position
        self.spec_counts = [0, 0, 0]
        self.spec_per_pos = [0] * self.spec_k
        self.events = 0
        self.max_members = 0  # the most requests that were members at once (SimStats.max_members)
        self._wake = env.event()
        self._pending: float | None = None  # earliest arrival since the last decode run was scheduled
        self._run_wait = None  # (run, event the loop waits on, relay of the run's timeout) while it waits on a run
        self._order = 0
        self._ub_total = 0  # sum of ub over requests in the engine
        self._m_seq = 0  # joinings so far
        self._m_clear()
        env.process(self._loop())

    # ------------------------------------------------------------------ input
    def served_max_tokens(self, spec: RequestSpec) -> int:
        """The max_tokens the engine runs the request with: vLLM >= 0.32 cuts it to the context left."""
        if self.lim.clamp_max_tokens:
            return min(spec.max_tokens, self.lim.max_model_len - spec.prompt_tokens)
        return spec.max_tokens

    def reject_reason(self, spec: RequestSpec) -> str | None:
        L = self.lim
        if refused_for_length(spec.prompt_tokens, spec.max_tokens, L.max_model_len, L.clamp_max_tokens):
            return (f"HTTP 400: This model's maximum context length is {L.max_model_len} tokens; the request "
                    f"has {spec.prompt_tokens} prompt tokens and max_tokens {spec.max_tokens}")
        if spec.prompt_tokens < 1 or spec.max_tokens < 1:
            return "HTTP 400: prompt and max_tokens must be >= 1"
        m = self.served_max_tokens(spec)
        if not self._any_fits:
            need = self.kv.blocks(spec.prompt_tokens + m - 1, 1)
            need = max(need, self.kv.blocks(spec.prompt_tokens, min(spec.prompt_tokens, L.max_num_batched_tokens)))
            if L.reserve_full_prompt:  # (re)admitted only with its whole sequence's blocks free
                need = max(need, self.kv.admission_blocks(spec.prompt_tokens + m - 1))
            if need > self.kv.capacity:
                return f"request needs {need} KV blocks but the cache holds {self.kv.capacity}"
        return None

    def submit(self, spec: RequestSpec, t: float, record: RequestRecord, on_done) -> None:
        """Queue a request arriving at exact time t (== env.now up to rounding)."""
        req = _Req(spec, record, t, on_done, self._order, self.served_max_tokens(spec))
        self._order += 1
        if spec.cached_tokens and spec.prefix_group:
            req.group = spec.prefix_group  # its hit is found at admission
            if spec.prefix_warm and spec.cached_tokens > self._cached.get(req.group, 0):
                self._cached[req.group] = spec.cached_tokens
        elif spec.cached_tokens:
            req.hit = req.computed = self.kv.cache_hit(spec.prompt_tokens, spec.cached_tokens)
        if self.kv.capacity is not None:
            req.ub = self.kv.most_blocks(spec.prompt_tokens + req.max_tokens)
            self._ub_total += req.ub
        self.waiting.append(req)
        if self._pending is None or t < self._pending:
            self._pending = t
        if not self._wake.triggered:
            if self._run_wait is not None and self._cut_run():
                return
            self._wake.succeed()

    def _knowable(self, run: _Step) -> int:
        """How many of the run's steps stay knowable given the arrival at _pending: the steps before the
        one whose schedule would first have seen it (its end, with async scheduling, is in flight then)."""
        t_a = self._pending
        q = 0 if t_a <= run.start else int(run.ends.searchsorted(t_a, "left")) + 1
        return min(run.k, q + 1) if self.async_ else min(run.k, max(q, 1))

    def _cut_run(self) -> bool:
        """An arrival while the loop waits on a decode run: cut the run here, without waking the loop,
        when some of its steps still end before the loop must act (else the loop is woken, as before).

        Waking costs two events and a resume per arrival, only for the loop to shrink the run and wait
        again for the shortened end; here the shortened end gets its timeout at once, the same time
        the loop would have given it."""
        run, first, relay = self._run_wait
        if first.triggered:
            return False  # its end is reached: the loop resumes at once, and sees the arrival after it
        k_new = self._knowable(run)
        if (k_new - 1 if self.async_ else k_new) <= 0:
            return False
        if k_new < run.k:
            self._shrink(run, k_new)
            relay.event = None  # the run's old end resumes nothing now
            relay = _Relay(first)
            n_exec = k_new - 1 if self.async_ else k_new
            env = self.env
            env.timeout(max(0.0, float(run.ends[n_exec - 1]) - env.now)).callbacks.append(relay)
            self._run_wait = (run, first, relay)
        return True

    # ------------------------------------------------------------------ noise
    def _noise(self, first: int, k: int) -> np.ndarray | None:
        if self.noise_cv <= 0:
            return None
        out = np.empty(k)
        sigma = math.sqrt(math.log1p(self.noise_cv ** 2))
        for i in range(k):
            p, o = divmod(first + i, 4096)
            page = self._noise_pages.get(p)
            if page is None:
                z = np.random.default_rng([self.noise_seed, p]).standard_normal(4096)
                page = self._noise_pages[p] = np.exp(sigma * z - sigma * sigma / 2)
            out[i] = page[o]
        return out

    # ------------------------------------------------------------------ scheduling
    def _alloc(self, req: _Req, n: int) -> bool:
        if n == 1 and req.computed + 1 <= req.kv_until:
            return True
        if n == 1:
            new_held, until = self._decode_blocks(req.computed + 1)
        else:
            new_held, until = self.kv.blocks(req.computed + n, n), -1
        extra = new_held - req.held
        group = req.group
        if group is not None:
            prefix = min(req.computed + n, req.spec.cached_tokens)  # of its prefix, what it holds after this
            sb = self.kv.shared_blocks(prefix)
            if sb != req.sb:
                common = self._in_common(group, req.sb, sb)
                extra -= common
        if not self.kv.fits(extra):
            return False
        if group is not None:
            if sb != req.sb:
                self._in_common(group, req.sb, sb, apply=True)
                self.kv.shared += common
                req.sb = sb
            if prefix > self._cached.get(group, 0):
                self._cached[group] = prefix  # vLLM caches a block when a step is allocated it
        self.kv.used += new_held - req.held
        req.held = new_held
        req.kv_until = until
        return True

    def _decode_blocks(self, tokens: int):
        """(kv.blocks(tokens, 1), kv.stable_until(tokens)), remembered per token count."""
        e = self._blocks1.get(tokens)
        if e is None:
            e = (self.kv.blocks(tokens, 1), self.kv.stable_until(tokens))
            # the same pair holds up to stable_until (no group gains a block before it)
            hi = tokens if math.isinf(e[1]) else min(int(e[1]), tokens + 64)
            for t in range(tokens, hi + 1):
                self._blocks1[t] = e
        return e

    def _find_hit(self, req: _Req) -> None:
        """A waiting request's hit as it is admitted: of a prefix group, what of its prefix the cache holds
        (again after a preemption); preempted with the prefix cache on, what of its own blocks the free
        queue still holds, if more."""
        if req.group is not None:
            req.hit = req.computed = self.kv.cache_hit(req.prompt, min(req.spec.cached_tokens,
                                                                       self._cached.get(req.group, 0)))
        if req.own is not None:
            tokens, req.kept = self._own_hit(req)
            req.computed = max(req.hit, self.kv.cache_hit(req.known, tokens))

    def _pops(self) -> int:
        """Blocks taken fresh from vLLM's free queue so far (each evicts the cached block at its head): those
        in use, less those taken as hits, plus those given back."""
        return self.kv.in_use + self._freed - self._touched

    def _own_hit(self, req: _Req) -> tuple[int, int]:
        """(tokens, blocks) of a preempted request's own blocks still cached. vLLM gives a request's cached
        blocks back to the free queue's tail, group by group, each group's last block first, and takes fresh
        ones from its head, so they are evicted once as many blocks were taken as were ahead of them: the
        first group's from its last on, and a hit needs every group's. Where a group slides, its window's
        blocks before the hit may be gone with them (freed earlier, so evicted earlier): counted as no hit
        past the prefix once any is evicted (under vLLM's; tests/test_conformance_vllm.py)."""
        pos, size, tokens = req.own
        evicted = min(size, max(0, self._pops() - pos))
        if not evicted:
            return tokens, size
        if self._own_bs is None:
            return 0, 0
        bs = self._own_bs
        return max(0, tokens // bs - evicted) * bs, size - evicted

    def _reclaim(self, req: _Req) -> None:
        """An admitted preempted request takes its blocks still cached (as _find_hit found them, before its
        fresh ones were taken) out of the free queue; those given back after it move up."""
        if req.own is None:
            return
        pos = req.own[0]
        kept = req.kept if req.computed > req.hit else 0
        self._touched += kept
        self._evictable.remove(req)
        req.own = None
        if kept:
            for r in self._evictable:
                if r.own[0] > pos:
                    r.own = (r.own[0] - kept, *r.own[1:])

    def _in_common(self, group: str, old: int, new: int, apply: bool = False) -> int:
        """How many more blocks the holders of a prefix hold in common when one of them goes from `old`
        to `new` of its blocks (0: none): each holds a leading run of the same blocks, held once, so
        their blocks in common are the sum of the runs less the longest."""
        held = self._holders.setdefault(group, [])
        after = list(held)
        if old:
            after.remove(old)
        if new:
            after.append(new)
        if apply:
            self._holders[group] = after
        return sum(after) - max(after, default=0) - (sum(held) - max(held, default=0))

    def _held_in_common(self, req: _Req) -> int:
        """Blocks of a waiting request's hit that another request holds: it need not find them free
        (vLLM's get_num_blocks_to_allocate counts referenced hits out)."""
        if req.group is None or req.held:
            return 0
        return min(self.kv.shared_blocks(req.hit), max(self._holders.get(req.group, ()), default=0))

    def release(self, req: _Req) -> None:
        """Give back a request's blocks (finished, preempted or aborted); a prefix it shares stays in use
        while another request holds it."""
        before = self.kv.in_use
        if req.sb:
            self.kv.shared += self._in_common(req.group, req.sb, 0, apply=True)
            req.sb = 0
        self.kv.used -= req.held
        req.held = 0
        self._freed += before - self.kv.in_use
        if self._evictable:  # its blocks not full go to the free queue's head, ahead of every cached one
            part = self.kv.partial_blocks(req.computed)
            if part:
                for r in self._evictable:
                    r.own = (r.own[0] + part, *r.own[1:])

    def _preempt(self, req: _Req) -> None:
        ahead, before, tokens = self.kv.free, self.kv.in_use, req.computed
        self.release(req)
        if self._recache:  # its blocks not full (never cached) go to the queue's head, ahead of the rest
            part = self.kv.partial_blocks(tokens)
            req.own = (self._pops() + ahead + part, before - self.kv.in_use - part, tokens)
            self._evictable.append(req)
        req.kv_until = -1
        req.computed = req.hit  # vLLM frees its blocks; the prefix it found cached is still there (and its own
        # blocks, cached until evicted, are found again as it is admitted: _find_hit)
        req.drafts = 0
        req.out_sched = req.emitted
        req.state = WAITING
        req.epoch += 1
        req.record.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _take(self, req: _Req, n: int, items: list) -> None:
        req.computed += n
        emits = req.computed == req.known
        if emits:
            req.out_sched += 1
        items.append((req, n, emits, req.epoch))

    def _drafts(self, req: _Req, budget: int) -> int:
        """Draft tokens a decoding request verifies this step (vLLM caps them by budget, length, max_tokens)."""
        if not self.spec_k or req.out_sched < 1 or req.known - req.computed != 1:
            return 0
        return max(0, min(self.spec_k, budget - 1, req.max_tokens - req.out_sched - 1,
                          self.lim.max_model_len - 2 - req.computed))

    def _geometric(self, p: float) -> int:
        """The next draw of _spec_rng.geometric(p), as an int."""
        i = self._g_i
        if i < len(self._g_buf) and p == self._g_p:
            self._g_i = i + 1
            return self._g_buf[i]
        return self._g_refill(p)

    def _g_refill(self, p: float) -> int:
        """Draw the next block of geometric(p) numbers and return the first.

        Generator.geometric(p, size=n) makes the very numbers n calls of geometric(p) make, one after
        another, and leaves the generator in the same state. Should p change with draws of the block
        left, the generator is put back where single draws would have left it first.
        """
        rng = self._spec_rng
        if self._g_p is not None and self._g_i < len(self._g_buf):
            rng.bit_generator.state = self._g_state
            if self._g_i:
                rng.geometric(self._g_p, size=self._g_i)
        self._g_state = rng.bit_generator.state
        n = self._g_n
        self._g_n = min(2 * n, 8192)
        self._g_buf = rng.geometric(p, size=n).tolist()
        self._g_p = p
        self._g_i = 1
        return self._g_buf[0]

    def _take_spec(self, req: _Req, d: int, items: list) -> None:
        """A decode step with d drafts: 1 + d tokens computed, the accepted prefix drawn now, kept at the step's end."""
        a = self.lim.spec_acceptance
        req.drafts = d
        req.accepted = min(d, self._geometric(1.0 - a) - 1) if a > 0 else 0
        req.computed += 1 + d
        req.out_sched += 1
        items.append((req, 1 + d, True, req.epoch))

    def _schedule(self):
        """One schedule() call: (items, preempted, sums), or None when nothing can run.

        A plain decode (one token whose KV block is already held, no drafts) is taken inline, the
        rest through the general path; `sums` holds the plain decodes' count and context sums and the
        other items, so the step's integer features need not walk the whole batch again.
        """
        if self.fast_forward and not self.spec_k and self.trace is None and self.on_emit is None and (
                self.kv.capacity is None or self._ub_total <= self.kv.capacity):
            sched = self._schedule_members()
            if sched is not False:
                return sched
        if self._mem:
            self._dissolve()
        L = self.lim
        budget = L.max_num_batched_tokens
        items: list = []
        others: list = []  # items of the general path
        preempted = False
        running = self.running
        spec_k = self.spec_k
        inline = self.INLINE_DECODES
        plain = inline and not spec_k
        thr = L.long_prefill_token_threshold
        # speculative decodes whose blocks fit are taken inline too (what the general path does for them)
        fast_spec = inline and spec_k and (thr <= 0 or thr >= 1)
        kv = self.kv
        cap = kv.capacity
        a = L.spec_acceptance
        mml1 = L.max_model_len - 1
        w = self.window
        dec_n = dec_cf = dec_cw = 0
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            out = req.out_sched
            if out >= req.max_tokens:
                i += 1
                continue
            c = req.computed
            if fast_spec and out >= 1 and req.prompt + out - c == 1 and c < mml1:
                # _drafts, _alloc (1 + d tokens: the blocks of c + 1 + d, no kv_until) and _take_spec,
                # inline; a request with no drafts or whose blocks do not fit takes the general path
                # d = min(spec_k, budget - 1, req.max_tokens - out - 1, mml1 - 1 - c), integers
                d = spec_k
                if budget <= d:
                    d = budget - 1
                x = req.max_tokens - out - 1
                if x < d:
                    d = x
                x = mml1 - 1 - c
                if x < d:
                    d = x
                if d > 0:
                    n = 1 + d
                    extra = kv.blocks(c + n, n) - req.held
                    if cap is None or kv.used - kv.shared + extra <= cap:
                        kv.used += extra
                        req.held += extra
                        req.kv_until = -1
                        req.drafts = d
                        if a > 0:
                            # self._geometric(1.0 - a), inline
                            p = 1.0 - a
                            gi = self._g_i
                            if gi < len(self._g_buf) and p == self._g_p:
                                self._g_i = gi + 1
                                g = self._g_buf[gi]
                            else:
                                g = self._g_refill(p)
                            req.accepted = g - 1 if g <= d else d
                        else:
                            req.accepted = 0
                        req.computed = c + n
                        req.out_sched = out + 1
                        it = (req, n, True, req.epoch)
                        items.append(it)
                        others.append(it)
                        budget -= n
                        i += 1
                        continue
            if plain and req.prompt + out - c == 1 and c < req.kv_until and c < mml1:
                # _alloc keeps the blocks, _take computes one token and emits it
                c += 1
                req.computed = c
                req.out_sched = out + 1
                items.append((req, 1, True, req.epoch))
                budget -= 1
                dec_n += 1
                dec_cf += c
                if w:
                    dec_cw += c if c < w else w
                i += 1
                continue
            n = req.known - req.computed
            if L.long_prefill_token_threshold > 0:
                n = min(n, L.long_prefill_token_threshold)
            n = min(n, budget, L.max_model_len - 1 - req.computed)
            if n <= 0:
                i += 1
                continue
            d = self._drafts(req, budget)
            n += d
            while not self._alloc(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            if req.state != RUNNING:
                break
            if d:
                self._take_spec(req, d, items)
            else:
                self._take(req, n, items)
            others.append(items[-1])
            budget -= n
            i += 1
        admitted = []
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < L.max_num_seqs:
                req = self.waiting[0]
                if req.group is not None or req.own is not None:
                    self._find_hit(req)
                n = req.known - req.computed
                if L.long_prefill_token_threshold > 0:
                    n = min(n, L.long_prefill_token_threshold)
                n = min(n, budget)
                if L.reserve_full_prompt and not self.kv.fits(
                        self.kv.admission_blocks(req.known) - self._held_in_common(req)):
                    break
                if not self._alloc(req, n):
                    break
                self.waiting.popleft()
                self._reclaim(req)
                req.state = RUNNING
                self.running.append(req)
                admitted.append(req)
                self._take(req, n, items)
                others.append(items[-1])
                budget -= n
        if not items:
            return None
        if self.trace is not None:
            self._trace(sum(it[1] for it in items), preempted, [r.order for r in admitted], 1)
        return items, preempted, (dec_n, dec_cf, dec_cw, others), False

    def _step_time(self, sums) -> float:
        """The step's duration, from its integer features: the general items' plus the plain decodes' sums.

        stepmodel.features over the general items, inline, with the plain decodes' sums added: a plain
        decode at context c (after the step) adds 1 token, 1 sequence, c to ctx_full and attn_full, and
        min(c, window) to ctx_window and attn_window. Integer sums, so the order they are added in does
        not matter; model.time_of is model.time of those features, without building them.
        """
        dec_n, cf, cw, others = sums
        if not dec_n:
            cf = cw = 0
        n_tok = n_seq = dec_n
        af, aw = cf, cw
        w = self.window
        for r, n, _, _ in others:
            ctx = r.computed
            start = ctx - n
            n_tok += n
            n_seq += 1
            cf += ctx
            af += n * start + n * (n + 1) // 2
            if w:
                cw += ctx if ctx < w else w
                aw += window_pairs(start, n, w)
        return self.model.time_of(n_tok, n_seq, cf, cw, af, aw)

    def _trace(self, tokens: int, preempted: bool, admitted: list[int], k: int) -> None:
        self.trace({"time": self.clock, "tokens": tokens, "kv_used": self.kv.in_use, "kv_capacity": self.kv.capacity,
                    "preemptions": self.num_preemptions, "running": len(self.running), "waiting": len(self.waiting),
                    "preempted": preempted, "admitted": admitted, "k": k})

    def _run_length(self, items, preempted: bool, others, n_mem: int = 0, mem: bool = False) -> int:
        """How many identical decode steps can be taken at once, from this one.

        One rule for both schedule paths; a step of the general path is a step with no members.
        others: the items that must each be one token that emits (the general path's plain decodes,
        taken inline, are). n_mem: members scheduled in this step, each decoding one token, not in
        items. mem: the step came from the members path: the member heaps bound the run as well, and
        the KV cache cannot bind (members exist only while every request's blocks fit)."""
        if not self.fast_forward or not (items or n_mem) or self.spec_k:
            return 1
        if preempted:
            # this step skipped admission; the next one tries the waiting queue (the victim first) again
            return 1
        for _, n, emits, _ in others:
            if n != 1 or not emits:
                return 1
        s = self.steps
        if n_mem:
            top = self._h_top(self._h_stop, True)
            if top is not None and top[0] == s + 1:
                return 1  # a member's out_sched reaches max_tokens in this step: not counted as unfinished
        rest = self._nonmembers() if mem and self._mem else self.running  # the running requests not members
        n = len(items) + n_mem
        unfinished = n_mem
        for r in rest:
            if r.out_sched < r.max_tokens:
                unfinished += 1
        if n != unfinished or n > self.lim.max_num_batched_tokens:
            return 1
        k = self._h_top(self._h_k, True)[0] - s if n_mem else math.inf
        extra = 2 if self.async_ else 1
        for r, _, _, _ in items:
            o, m, t = r.out_sched, r.max_tokens, r.target
            if 1 + m - o < k:
                k = 1 + m - o
            if t < m and t - o + extra < k:
                k = t - o + extra  # the block step that emits its last token (+1 with async)
        if self.waiting and self.async_:
            # a finish at the end of the step in flight would let the scheduler admit
            if mem:
                top = self._h_top(self._h_fs, False)
                if top is not None and top[0] <= s:
                    return 1
            if any(r.emitted < r.target and r.out_sched >= r.target for r in rest
                   if r.out_sched >= r.max_tokens or r.target < r.max_tokens):
                return 1
        if k < self.MIN_RUN:
            return 1
        k = int(k)
        if not mem and self.kv.capacity is not None:
            reqs = [it[0] for it in items]
            c = np.array([r.computed for r in reqs], dtype=np.int64)  # after step 1
            held = sum(r.held for r in reqs)
            free = self.kv.capacity - self.kv.in_use + held

            def need(j):  # blocks all requests hold after block step j (>= 1)
                return sum(count * (np.minimum(-(-(c + j - 1) // bs), window_cap(bs, w, 1)) if w else
                                    -(-(c + j - 1) // bs)).sum() for bs, count, w in self.kv.groups)

            if need(k) > free:
                lo, hi = 1, k  # need(lo) <= free < need(hi)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if need(mid) <= free:
                        lo = mid
                    else:
                        hi = mid
                k = lo
            if k < self.MIN_RUN:
                return 1
        return k

    def _advance(self, items, steps: int) -> None:
        """Move every request of a decode run `steps` decode steps on (negative: back)."""
        used = self.kv.used
        blocks1 = self._blocks1
        for req, _, _, _ in items:
            c = req.computed + steps
            req.computed = c
            req.out_sched += steps
            e = blocks1.get(c)
            if e is None:
                e = self._decode_blocks(c)
            used += e[0] - req.held
            req.held, req.kv_until = e
        self.kv.used = used

    def _shrink(self, step: _Step, k_new: int) -> None:
        """Undo decode-run steps k_new+1..k: an arrival made them unknowable."""
        back = step.k - k_new
        self._advance(step.items, -back)
        step.k = k_new
        self.steps -= back
        step.ends = step.ends[:k_new]
        step.end = float(step.ends[-1])

    def _run_times(self, items, mem: bool, first_idx: int, k: int) -> np.ndarray:
        """model.decode_run(ctx0, k) for the run launched now, ctx0 being every request's context before its
        first step (items: computed - 1, as step 1 is scheduled; members scheduled now: m_base + first_idx - 1).

        The context array decode_run starts from is not built: the full-context sums follow from the
        total, which the members keep, and only the contexts under the window change the window sums
        (stepmodel.window_sums, decode_run's own). The same integer features go to the model's times.
        """
        w = self.window
        b = len(items)
        s0 = 0
        below = []  # contexts under window - 1: min(c + j + 1, w) grows for some steps
        for r, _, _, _ in items:
            c = r.computed - 1
            s0 += c
            if w and c < w - 1:
                below.append(c)
        if mem and self._mem:  # every member scheduled now decodes in all k steps (_run_length)
            n = self._m_n
            b += n
            s0 += self._m_base_sum + n * (first_idx - 1)
            if self._m_bel:  # members under the window at this step (_schedule_members keeps _m_bel)
                below += [r.m_base + first_idx - 1 for r in self._m_bel]
        if k <= 10 and len(below) * k <= 64:
            # a short run with few contexts under the window: its integer sums in Python (window_sums' own:
            # min(c + j + 1, w) summed) and the model's scalar path, without numpy calls on a few elements
            t = self.model.time_of
            out = []
            rest = (b - len(below)) * w if w else 0
            for j in range(1, k + 1):
                x = s0 + b * j
                y = rest
                for c in below:
                    y += c + j if c + j < w else w
                out.append(t(b, b, x, y, x, y))
            return np.array(out)
        cf = np.arange(s0 + b, s0 + b * k + 1, b, dtype=np.int64)  # s0 + b * (j + 1), j < k
        if not w:
            cw = np.zeros(k, dtype=np.int64)
        elif below:
            cw = window_sums(np.array(below, dtype=np.int64), b, k, w)
        else:
            cw = np.full(k, b * w, dtype=np.int64)  # every context at the window: window_sums' own sum
        if k <= 10:
            # a short run: the model's scalar path step by step costs less than times()'s ~18 numpy calls on
            # a few elements, and gives the same floats (tests/test_stepmodel_scalar.py holds them equal)
            t = self.model.time_of
            return np.array([t(b, b, x, y, x, y) for x, y in zip(cf.tolist(), cw.tolist())])
        return self.model.times(b, b, cf, cw, cf, cw)

    def _launch(self, sched, start: float) -> None:
        items, preempted, sums, mem = sched
        k = self._run_length(items, preempted, sums[3], sums[0] if mem else 0, mem)
        first_idx = self.steps
        if k == 1:
            d = self._step_time(sums)
            if self.noise_cv > 0:
                d = d * self._noise(first_idx, 1)[0]
            step = _Step(items, start, 1, [start + d], mem=mem)  # a list: only runs need arrays of ends
        else:
            d = self._run_times(items, mem, first_idx, k)
            self._advance(items, k - 1)  # step 1 was scheduled normally
            noise = self._noise(first_idx, k)
            if noise is not None:
                d = d * noise
            ends = np.empty(k + 1)  # start, then the durations: accumulated in order, the ends
            ends[0] = start
            ends[1:] = d
            ends = np.add.accumulate(ends)[1:]
            step = _Step(items, start, k, ends, mem=mem)
            self._pending = None  # arrivals before this schedule are in `waiting` already
            if self.trace is not None:
                self._trace(len(items) * k, False, [], k)
        step.first_idx = first_idx
        self.steps += k
        self.inflight.append(step)

    # ------------------------------------------------------------------ members
    # With fast-forward, a request decoding one token a step becomes a *member*: its counters
    # follow from the step index, so a step (or a decode run) costs nothing per member. A member
    # joins at step f with out_sched oj and computed cj (before that step); it is then scheduled in
    # every step until its out_sched reaches max_tokens (`stop`: the first step it is not) and it
    # finishes when step fs = f + target - oj - 1 is processed (with async scheduling step fs + 1
    # was already scheduled: the wasted step). The step's feature sums over the members scheduled
    # in it (the set `_m_in`) are kept as integers, updated when one joins, stops, reaches the
    # sliding window or finishes; heaps of (step, join id, request) say when. Members exist only
    # while no KV block can be refused (the blocks every request in the engine could ever hold
    # fit), so their blocks are counted again only when they stop being members (_dissolve), and
    # only without trace, on_emit or speculative decoding; anything else dissolves them first.

    def _m_clear(self) -> None:
        self._mem: dict[_Req, None] = {}  # members, in joining order
        self._m_in: dict[_Req, None] = {}  # members scheduled in the step being scheduled
        self._h_stop: list = []  # (stop, id, req)
        self._h_cross: list = []  # (step whose context reaches the window, id, req)
        self._h_fs: list = []  # (fs, id, req)
        self._h_k: list = []  # (last step a decode run may reach + 1, id, req)
        self._m_bel: dict[_Req, None] = {}  # the scheduled members whose context is still under the window
        self._m_n = self._m_base_sum = self._m_below_sum = 0

    def _m_out(self, r: _Req) -> None:
        """r is no longer scheduled: out of the step sums."""
        del self._m_in[r]
        r.m_in = False
        self._m_n -= 1
        self._m_base_sum -= r.m_base
        if r in self._m_bel:
            self._m_unbelow(r)

    def _m_unbelow(self, r: _Req) -> None:
        """r's window sum no longer grows: its context reached the window, or it left the step."""
        del self._m_bel[r]
        self._m_below_sum -= r.m_base

    @staticmethod
    def _h_top(h: list, scheduled: bool):
        """The heap's first entry that still stands (its request a member of that joining, and
        scheduled if asked), or None."""
        while h:
            _, i, r = h[0]
            if r.mem and r.m_id == i and (r.m_in or not scheduled):
                return h[0]
            heapq.heappop(h)
        return None

    def _nonmembers(self) -> list:
        """Running requests that are not members, in running order (they sit at the end, mostly)."""
        want = len(self.running) - len(self._mem)
        out = []
        if want:
            for req in reversed(self.running):
                if not req.mem:
                    out.append(req)
                    if len(out) == want:
                        break
            out.reverse()
        return out

    def _schedule_members(self):
        """schedule() with members; False when the budget could bind somewhere the order matters."""
        L = self.lim
        budget = L.max_num_batched_tokens
        s = self.steps  # the index of the step being scheduled
        mml1 = L.max_model_len - 1
        thr = L.long_prefill_token_threshold
        w = self.window
        running = self.running
        h = self._h_stop
        while h and h[0][0] <= s:
            _, i, r = heapq.heappop(h)
            if r.mem and r.m_id == i and r.m_in:
                self._m_out(r)
        h = self._h_cross
        while h and h[0][0] <= s:
            _, i, r = heapq.heappop(h)
            if r.mem and r.m_id == i and r in self._m_bel:
                self._m_unbelow(r)
        join, general = [], []
        demand = 0
        last = running[-1] if running else None
        for req in self._nonmembers():
            o, c = req.out_sched, req.computed
            if o >= req.max_tokens:
                continue
            if req.prompt + o - c == 1 and o < req.target and c < mml1:
                join.append(req)
                continue
            general.append(req)
            if req is not last:
                n = req.prompt + o - c
                if thr > 0:
                    n = min(n, thr)
                n = min(n, mml1 - c)
                if n > 0:
                    demand += n
        n_mem = self._m_n + len(join)
        if n_mem + demand > budget:
            return False  # else every request but the last gets all it asks for, in any order
        extra = 2 if self.async_ else 1
        for r in join:
            self._m_seq += 1
            i = r.m_id = self._m_seq
            oj, cj, m, t = r.out_sched, r.computed, r.max_tokens, r.target
            r.m_f, r.m_oj, r.m_cj, r.m_base = s, oj, cj, cj - s + 1
            r.m_stop = stop = s + m - oj
            r.m_fs = fs = s + t - oj - 1
            r.mem = r.m_in = True
            self._mem[r] = None
            self._m_in[r] = None
            self._m_n += 1
            self._m_base_sum += r.m_base
            if w and cj + 1 < w:
                self._m_bel[r] = None
                self._m_below_sum += r.m_base
                heapq.heappush(self._h_cross, (w - r.m_base, i, r))
            heapq.heappush(self._h_stop, (stop, i, r))
            heapq.heappush(self._h_fs, (fs, i, r))
            heapq.heappush(self._h_k, (min(stop, fs + extra) if t < m else stop, i, r))
        if join and len(self._mem) > self.max_members:
            self.max_members = len(self._mem)
        dec_cf = self._m_base_sum + n_mem * s  # contexts after this step
        nb = len(self._m_bel)
        dec_cw = self._m_below_sum + nb * s + w * (n_mem - nb) if w else 0
        budget -= n_mem
        items: list = []
        for req in general:
            if budget <= 0:
                break
            n = req.known - req.computed
            if thr > 0:
                n = min(n, thr)
            n = min(n, budget, mml1 - req.computed)
            if n <= 0:
                continue
            if not self._alloc(req, n):
                raise RuntimeError("a KV block was refused with members, whose blocks always fit")
            self._take(req, n, items)
            budget -= n
        while self.waiting and budget > 0 and len(running) < L.max_num_seqs:
            req = self.waiting[0]
            if req.group is not None or req.own is not None:
                self._find_hit(req)
            n = req.known - req.computed
            if thr > 0:
                n = min(n, thr)
            n = min(n, budget)
            # (reserve_full_prompt's check always passes here: every request's blocks fit)
            if not self._alloc(req, n):
                raise RuntimeError("a KV block was refused with members, whose blocks always fit")
            self.waiting.popleft()
            self._reclaim(req)
            req.state = RUNNING
            running.append(req)
            self._take(req, n, items)
            budget -= n
        if not items and not n_mem:
            return None
        return items, False, (n_mem, dec_cf, dec_cw, items), True

    def _m_write_back(self, r: _Req, emitted_upto: int) -> None:
        """r's counters from the step index, and its chunks of member steps up to emitted_upto."""
        ls = min(self.steps - 1, r.m_stop - 1)  # its last scheduled step
        ticks = ls - r.m_f + 1
        r.computed, r.out_sched = r.m_cj + ticks, r.m_oj + ticks
        cnt = min(emitted_upto, ls) - r.m_f + 1
        if cnt > 0:
            r.emit(r.m_f, cnt)
        if r.m_in:
            self._m_out(r)
        del self._mem[r]
        r.mem = False

    def _members_done(self, x: int) -> list:
        """Members whose last token is in steps up to x, written back."""
        h = self._h_fs
        done = []
        while h and h[0][0] <= x:
            fs, i, r = heapq.heappop(h)
            if r.mem and r.m_id == i:
                self._m_write_back(r, fs)
                done.append(r)
        return done

    def _dissolve(self) -> None:
        """Members back to ordinary requests: counters, chunks, KV blocks, and their item in the step in flight."""
        last_done = self.times.n - 1  # steps processed so far
        flight = [st for st in self.inflight if st.mem]
        for st in flight:
            assert st.k == 1
        used = self.kv.used
        for r in list(self._mem):
            ls = min(self.steps - 1, r.m_stop - 1)
            f = r.m_f
            self._m_write_back(r, last_done)
            held, until = self._decode_blocks(r.computed)
            used += held - r.held
            r.held, r.kv_until = held, until
            for st in flight:
                if f <= st.first_idx <= ls:
                    st.items.append((r, 1, True, r.epoch))
        self.kv.used = used
        for st in flight:
            st.mem = False
        self._m_clear()

    # ------------------------------------------------------------------ outputs
    def _finish(self, req: _Req, t: float) -> None:
        req.state = FINISHED
        self._ub_total -= req.ub
        self.running.remove(req)
        self.release(req)
        if req.seg_len:
            req.segments.append((req.seg_start, req.seg_len))
        segs = [self.times.get(s, n) for s, n in req.segments]
        rec = req.record
        rec.chunk_times = segs[0] if len(segs) == 1 else np.concatenate(segs)
        rec.output_tokens = req.emitted
        if req.multi:
            k = np.ones(len(rec.chunk_times), dtype=np.int64)
            pos, n = zip(*req.multi)
            k[list(pos)] = n
            rec.chunk_tokens = k
        rec.end_time = float(rec.chunk_times[-1])
        req.on_done(req)

    def _process(self, step: _Step, upto: int) -> None:
        """Outputs of the first `upto` steps of `step` (a block) or of the single step."""
        if upto <= 0:
            return
        if upto == 1:  # most steps: a float, not an array
            last_t = float(step.ends[0]) + self.chunk_s
            first = self.times.put1(last_t)
        else:
            t_emit = step.ends[:upto] + self.chunk_s
            first = self.times.put_run(t_emit)
            last_t = float(t_emit[-1])
        done = []
        for req, _, emits, epoch in step.items:
            if not emits or req.state != RUNNING or req.epoch != epoch:
                continue
            if req.drafts:
                # the accepted drafts and the token sampled after them: one chunk of several tokens
                d, a = req.drafts, req.accepted
                req.drafts = 0
                sc = self.spec_counts
                sc[0] += 1
                sc[1] += d
                sc[2] += a
                for j in range(a):
                    self.spec_per_pos[j] += 1
                req.computed -= d - a  # the rejected drafts' KV is dropped
                req.out_sched += a
                count = 1 + a
                if req.target - req.emitted < count:
                    count = req.target - req.emitted
                # req.emit(first, 1, count), inline
                if req.seg_len and first == req.seg_start + req.seg_len:
                    req.seg_len += 1
                else:
                    if req.seg_len:
                        req.segments.append((req.seg_start, req.seg_len))
                    req.seg_start, req.seg_len = first, 1
                if count != 1:
                    if req.multi is None:
                        req.multi = []
                    req.multi.append((req.chunks, count))
                req.chunks += 1
                req.emitted += count
            else:
                count = req.target - req.emitted
                if count > upto:
                    count = upto
                # req.emit(first, count), inline: this runs for every request of every step
                if req.seg_len and first == req.seg_start + req.seg_len:
                    req.seg_len += count
                else:
                    if req.seg_len:
                        req.segments.append((req.seg_start, req.seg_len))
                    req.seg_start, req.seg_len = first, count
                req.chunks += count
                req.emitted += count
            if self.on_emit is not None:
                self.on_emit(req.record, last_t, count)
            if req.emitted >= req.target:
                done.append(req)
        if step.mem and self._h_fs and self._h_fs[0][0] <= step.first_idx + upto - 1:
            done += self._members_done(step.first_idx + upto - 1)
        if len(done) > 1:
            done.sort(key=self.running.index)  # finish in running order, as the items are
        for req in done:
            self._finish(req, last_t)

    # ------------------------------------------------------------------ loop
    def _skip_to(self, t: float) -> bool:
        """Move the clock to t at once when no event is due before then (or at the same time), and say so.

        A wait on a timeout to t with nothing else due by then resumes the loop at t with nothing else
        done in between: the clock is set as the timeout would have set it (now + delay, the same float),
        and the SimPy event, its scheduling and the resume are spared. Another event due at t is
        processed first when the loop waits (it was scheduled first), so then the loop waits."""
        if not self._jumps:
            return False
        env = self.env
        now = env._now  # noqa: SLF001 -- tests/test_upstream_private_api.py
        at = now + max(0.0, t - now)
        if env.peek() <= at:
            return False
        env._now = at
        return True

    def _loop(self):
        env = self.env
        while True:
            if not self.inflight:
                sched = self._schedule()
                if sched is None:
                    self._wake = env.event()
                    yield self._wake
                    t = max(self.clock, min(r.arrival for r in self.waiting)) + self.wake_s
                    if t > env.now:
                        yield env.timeout(t - env.now)
                    self.clock = t
                    continue
                self._launch(sched, self.clock)
            head = self.inflight[0]
            if self.async_ and len(self.inflight) == 1 and head.k == 1:
                sched = self._schedule()
                if sched is not None:
                    self._launch(sched, head.end)
                    head = self.inflight[0]
            if head.k == 1:
                self.events += 1
                if not self._skip_to(head.end):
                    yield env.timeout(max(0.0, head.end - env.now))
                self.clock = head.end
                self.inflight.popleft()
                self._process(head, 1)
                continue
            # A decode run: wait for its steps, unless an arrival makes later ones unknowable.
            while True:
                if self._pending is not None:
                    k_new = self._knowable(head)
                    if k_new < head.k:
                        self._shrink(head, k_new)
                n_exec = head.k - 1 if self.async_ else head.k
                if n_exec == 0:
                    break
                target = float(head.ends[n_exec - 1])
                if self._skip_to(target):
                    self.events += 1
                    break  # nothing can arrive before it: the run stands as it is
                # timeout | wake without a Condition (its value and callbacks cost more than the wait):
                # either one triggers `first`, whose processing resumes the loop, as the Condition's did
                wake = self._wake = env.event()
                first = env.event()
                relay = _Relay(first)
                env.timeout(max(0.0, target - env.now)).callbacks.append(relay)
                wake.callbacks.append(relay)
                self.events += 1
                self._run_wait = (head, first, relay)
                yield first
                self._run_wait = None
                if wake.processed:
                    continue  # an arrival was processed by then: re-check how far the run stays knowable
                n_exec = head.k - 1 if self.async_ else head.k  # _cut_run may have shortened it
                break
            self._process(head, n_exec)
            if n_exec:
                self.clock = float(head.ends[n_exec - 1])
            if self.async_:
                # the run's last step stays in flight as an ordinary step
                rest = _Step(head.items, float(head.ends[-2]) if head.k > 1 else head.start, 1, head.ends[-1:],
                             mem=head.mem)
                rest.first_idx = head.first_idx + head.k - 1
                self.inflight[0] = rest
            else:
                self.inflight.popleft()
