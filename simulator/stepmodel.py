"""Step-time models: how long one engine step takes, given the batch.

A step is described by integer features (token and context sums), so the same
float arithmetic gives the same duration whether steps are taken one by one or a
run of identical decode steps is computed at once (fast-forward): records are
bit-identical in both modes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np


# Unrelated conversations (ShareGPT's first turns, an office's staff) route their decode tokens half way
# from the calibration text's correlation to independent tokens. llama-benchy's prompts are excerpts of
# one book, and the answers to vllm bench serve's random-token prompts route like them; ShareGPT's
# decode steps cost more on every mixture of experts of docs/physics.md ("Routing of unrelated
# conversations"), as half way gives. Replications draw it over the range.
CHAT_ROUTING_SPREAD = 0.5
CHAT_ROUTING_SPREAD_RANGE = (0.25, 0.75)


@dataclass(frozen=True, slots=True)
class StepFeatures:
    """Integer summary of one step's batch.

    n_tokens: tokens computed (decodes + prefill chunk tokens); n_seqs: requests
    in the step; ctx_full / ctx_window: sum over requests of the context their
    attention reads (window-capped for sliding layers); attn_full / attn_window:
    query-key pairs of the step's attention (chunks attend to everything before
    them, plus causally within the chunk).
    """

    n_tokens: int
    n_seqs: int
    ctx_full: int
    ctx_window: int
    attn_full: int
    attn_window: int


def window_pairs(start: int, n: int, window: int) -> int:
    """sum over query positions p = start+1 .. start+n of min(p, window)."""
    a, b = start + 1, start + n
    if b <= window:
        return (a + b) * n // 2
    if a > window:
        return window * n
    k = window - a + 1  # positions a..window
    return (a + window) * k // 2 + window * (n - k)


def window_sums(below: np.ndarray, n: int, k: int, window: int) -> np.ndarray:
    """sum over n decoding requests of min(c_i + j + 1, window), for the k steps j < k of a decode run.

    below: the contexts c_i (tokens before the run) under window - 1; the other n - len(below)
    requests are at the window in every step and add it. Exact integers: an outer sum for a few
    contexts, a sorted cumulative table when there are many (the outer sum's memory grows as both).
    """
    below = np.asarray(below, dtype=np.int64)
    m0 = len(below)
    j1 = np.arange(1, k + 1, dtype=np.int64)  # j + 1
    if m0 == 0:
        cw = np.zeros(k, dtype=np.int64)
    elif m0 * k <= 1 << 16:
        o = np.add.outer(below, j1)
        cw = np.add.reduce(np.minimum(o, window, out=o), axis=0)
    else:
        c = np.sort(below)
        pref = np.concatenate([[0], np.cumsum(c)])
        m = np.searchsorted(c, window - j1, side="left")  # requests with c_i + j + 1 < window
        cw = pref[m] + m * j1 + (m0 - m) * window
    cw += (n - m0) * window
    return cw


def features(items, window: int | None) -> StepFeatures:
    """items: iterable of (start, n): tokens already computed and new tokens."""
    n_tok = n_seq = cf = cw = af = aw = 0
    for start, n in items:
        ctx = start + n
        n_tok += n
        n_seq += 1
        cf += ctx
        af += n * start + n * (n + 1) // 2
        if window:
            cw += min(ctx, window)
            aw += window_pairs(start, n, window)
    return StepFeatures(n_tok, n_seq, cf, cw, af, aw)


class StepModel:
    """Interface: `time(f)` for one step, `decode_run(...)` for K identical decode steps."""

    kind: ClassVar[str] = "base"
    window: int | None = None

    def time(self, f: StepFeatures) -> float:
        return self.time_of(f.n_tokens, f.n_seqs, f.ctx_full, f.ctx_window, f.attn_full, f.attn_window)

    def time_of(self, n_tokens: int, n_seqs: int, ctx_full: int, ctx_window: int, attn_full: int,
                attn_window: int) -> float:
        """time() of a step given by its integer features, without building a StepFeatures.

        The default goes through times() (the reference); models override it with a scalar path that
        does the very same float operations in the same order, hence the same result bit for bit.
        """
        return float(self.times(n_tokens, n_seqs, np.array([ctx_full]), np.array([ctx_window]),
                                np.array([attn_full]), np.array([attn_window]))[0])

    def times(self, n_tokens: int, n_seqs: int, ctx_full: np.ndarray, ctx_window: np.ndarray,
              attn_full: np.ndarray, attn_window: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode_run(self, ctx_before: np.ndarray, k: int) -> np.ndarray:
        """Durations of k consecutive decode steps of the same requests.

        ctx_before: each request's computed tokens before the first of them.
        Step j (0-based) has every request at ctx_before + j + 1.
        """
        b = len(ctx_before)
        c = np.asarray(ctx_before, dtype=np.int64)
        cf = int(c.sum()) + b * np.arange(1, k + 1, dtype=np.int64)
        # decode attention pairs: one query over start+1 keys -> start + 1, so af = cf and aw = cw
        w = self.window
        cw = window_sums(c[c < w - 1], b, k, w) if w else np.zeros(k, dtype=np.int64)
        return self.times(b, b, cf, cw, cf, cw)

    # Rates multiplied and times divided when a side of the step gets faster (scale()).
    MEMORY_RATES: ClassVar[tuple[str, ...]] = ()
    MEMORY_TIMES: ClassVar[tuple[str, ...]] = ()
    COMPUTE_RATES: ClassVar[tuple[str, ...]] = ()
    COMPUTE_TIMES: ClassVar[tuple[str, ...]] = ()

    def scale(self, memory: float = 1.0, compute: float = 1.0) -> None:
        """Make the memory side (weights, KV, overheads) and the compute side (FLOPs) that many times faster."""
        for names, f, rate in ((self.MEMORY_RATES, memory, True), (self.MEMORY_TIMES, memory, False),
                               (self.COMPUTE_RATES, compute, True), (self.COMPUTE_TIMES, compute, False)):
            if f != 1.0:
                for n in names:
                    setattr(self, n, getattr(self, n) * f if rate else getattr(self, n) / f)

    def check(self) -> None:
        """Raise ValueError for a value no step of this model can have. Profile.validate calls it after
        its own check (every number finite, >= 0), so edits meet it as construction does."""

    def to_json(self) -> dict:
        return {"kind": self.kind, "params": {f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass
class PhysicalStepModel(StepModel):
    """Roofline of one step: t0 + t_seq*n_seqs + combine(memory time, compute time).

    Memory: weights read (dense part plus the experts the step's tokens touch,
    E*(1-(1-k/E)^(n^alpha)) per MoE layer; alpha < 1 means correlated routing)
    over `bw_weights`, plus KV bytes read over `bw_kv`. Compute: linear-layer
    FLOPs over `flops`, attention FLOPs over `attn_flops`. Every parameter has a
    physical meaning, so what-ifs (fp8 weights, a faster box) are profile edits.
    """

    kind: ClassVar[str] = "physical"
    MEMORY_RATES: ClassVar[tuple[str, ...]] = ("bw_weights", "bw_kv")
    MEMORY_TIMES: ClassVar[tuple[str, ...]] = ("t0", "t_seq", "t_ctx")
    COMPUTE_RATES: ClassVar[tuple[str, ...]] = ("flops", "attn_flops")
    t0: float = 0.003  # s, fixed per step (launch, sampling, sync)
    t_seq: float = 0.0  # s per request in the step (CPU-side bookkeeping)
    weight_bytes_fixed: float = 4.82e9  # dense weights + attention + embedding/LM head
    expert_bytes: float = 11.89e6  # one expert of one layer
    moe_layers: int = 30
    n_experts: int = 128
    top_k: int = 8
    alpha: float = 0.63
    # Share of the experts the text routes to at all (1: every expert in play): routing favours some
    # experts, so the experts a batch touches level off below n_experts.
    expert_pool: float = 1.0
    # How far the served text's routing across requests goes from the calibration text's (alpha and
    # expert_pool, fitted on llama-benchy's book excerpts) towards independent routing (1 and 1): 0 for
    # text like that, CHAT_ROUTING_SPREAD for unrelated conversations. Only decode steps move: a prompt's
    # tokens are one text. A property of the traffic, not of the box: not a field (profiles do not save
    # it); Profile.for_traffic sets it per simulation.
    routing_spread = 0.0
    bw_weights: float = 200e9  # B/s, effective
    bw_kv: float = 150e9  # B/s, effective
    kv_bytes_full: float = 10240.0  # KV bytes per context token on full-attention layers
    kv_bytes_window: float = 102400.0  # KV bytes per token on sliding-window layers
    window: int | None = 1024
    flops_per_token: float = 6.16e9  # 2 x active non-embedding parameters
    flops: float = 50e12  # effective linear-layer FLOP/s
    attn_flops_full: float = 163840.0  # FLOPs per query-key pair over full layers
    attn_flops_window: float = 409600.0  # FLOPs per query-key pair over sliding layers
    attn_flops: float = 15e12  # effective attention FLOP/s
    # How memory and compute time overlap: "max" (perfect overlap, a roofline),
    # "l2" (sqrt(mem^2 + comp^2): partial overlap near the ridge) or "sum" (none).
    combine: str = "l2"
    # Decode attention over one sequence is latency-bound at small batch: a cost per
    # token of the batch's mean context, on top of the KV bytes streamed at bw_kv.
    t_ctx: float = 0.0
    # Mamba / linear-attention layers keep a fixed state per sequence, read and written every
    # step whatever the context: bytes per sequence in the step, streamed at bw_kv.
    state_bytes_seq: float = 0.0
    # Measured corrections of pure decode steps by batch size, [[batch, factor], ...]: kernels
    # pick other code paths at some batch sizes (vLLM's CPU build decodes 2 requests slower
    # than 4), which no smooth roofline follows. Interpolated in log2(batch), constant past the
    # ends; steps that carry prompt tokens are not corrected. Live calibration fits them from
    # its concurrency ladder; None (every shipped GPU profile) changes nothing.
    decode_factors: list | None = None

    def __post_init__(self):
        self.check()
        if self.decode_factors is not None:
            pts = sorted((int(b), float(f)) for b, f in self.decode_factors)
            if not pts or any(b < 1 or not f > 0 for b, f in pts):
                raise ValueError(f"decode_factors must be [batch >= 1, factor > 0] pairs, got {self.decode_factors}")
            self.decode_factors = [[b, f] for b, f in pts]

    def check(self) -> None:
        if not 0.0 < self.expert_pool <= 1.0:  # a share of the experts: 1.5 would touch more than exist
            raise ValueError(f"expert_pool must be in (0, 1], got {self.expert_pool}")

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name == "decode_factors":  # interpolated factors are cached per batch size
            object.__setattr__(self, "_factor_cache", {})
        # the weights time is cached per token count (its two powers cost as much as the rest of a step's
        # time): any parameter set (what-ifs, scale()) drops it, so it never outlives the values it used
        object.__setattr__(self, "_weights_cache", {})

    def decode_factor(self, n_seqs: int) -> float:
        if not self.decode_factors:
            return 1.0
        f = self._factor_cache.get(n_seqs)
        if f is None:
            b, v = np.array(self.decode_factors, dtype=np.float64).T
            f = float(np.interp(np.log2(max(n_seqs, 1)), np.log2(b), v))
            self._factor_cache[n_seqs] = f
        return f

    def experts_touched(self, n_tokens: int, spread: float = 0.0) -> float:
        """Experts one MoE layer reads for n_tokens tokens, routed `spread` of the way from the
        calibration text's correlation towards independent tokens."""
        if self.n_experts <= 0 or n_tokens <= 0:
            return 0.0
        k = float(self.top_k)
        pool, alpha = self.expert_pool, self.alpha
        if spread:
            pool, alpha = pool + (1.0 - pool) * spread, max(alpha, alpha + (1.0 - alpha) * spread)
        e = max(k, float(self.n_experts) * pool)
        return e * (1.0 - (1.0 - k / e) ** (float(n_tokens) ** alpha))

    def _weights_time(self, n_tokens: int, decode: bool = False) -> float:
        key = -n_tokens if decode and self.routing_spread else n_tokens
        wt = self._weights_cache.get(key)
        if wt is None:
            touched = self.experts_touched(n_tokens, self.routing_spread if key < 0 else 0.0)
            wt = (self.weight_bytes_fixed + self.moe_layers * touched * self.expert_bytes) / self.bw_weights
            self._weights_cache[key] = wt
        return wt

    def time_of(self, n_tokens, n_seqs, ctx_full, ctx_window, attn_full, attn_window) -> float:
        """times() for one step in Python floats, operation for operation (it runs once per simulated step).

        Each array operation of times() is a float64 operation here, in the same order: a scalar that
        meets an array there is made a float64 by float() where it meets one here, and what times()
        computes on scalars alone is written as it is there. IEEE doubles give the same result either
        way, and math.sqrt, like np.sqrt, is correctly rounded. tests/test_stepmodel_scalar.py holds
        the two equal (==).
        """
        wt = float(self._weights_time(n_tokens, n_tokens == n_seqs))
        cf = float(ctx_full)
        mem = wt + (float(self.kv_bytes_full) * cf + float(self.kv_bytes_window) * float(ctx_window)
                    + float(self.state_bytes_seq * float(n_seqs))) / float(self.bw_kv)
        if self.t_ctx:
            mem = mem + float(self.t_ctx) * (cf / float(max(n_seqs, 1)))
        lin = float((self.flops_per_token * float(n_tokens)) / self.flops)
        att = (float(self.attn_flops_full) * float(attn_full)
               + float(self.attn_flops_window) * float(attn_window)) / float(self.attn_flops)
        comp = lin + att
        combine = self.combine
        if combine == "l2":
            both = math.sqrt(mem * mem + comp * comp)
        elif combine == "max":
            both = mem if (mem > comp or mem != mem) else comp  # np.maximum: NaN wins, ties give comp
        elif combine == "sum":
            both = mem + comp
        else:
            raise ValueError(f"unknown combine rule {self.combine!r} (max, l2, sum)")
        t = float(self.t0 + self.t_seq * float(n_seqs)) + both
        if self.decode_factors and n_tokens == n_seqs:
            t = t * self.decode_factor(n_seqs)
        return t

    def times(self, n_tokens, n_seqs, ctx_full, ctx_window, attn_full, attn_window):
        wt = self._weights_time(n_tokens, n_tokens == n_seqs)
        cf = ctx_full.astype(np.float64)
        mem = wt + (self.kv_bytes_full * cf + self.kv_bytes_window * ctx_window.astype(np.float64)
                    + self.state_bytes_seq * float(n_seqs)) / self.bw_kv
        if self.t_ctx:
            mem = mem + self.t_ctx * (cf / float(max(n_seqs, 1)))
        lin = (self.flops_per_token * float(n_tokens)) / self.flops
        att = (self.attn_flops_full * attn_full.astype(np.float64)
               + self.attn_flops_window * attn_window.astype(np.float64)) / self.attn_flops
        comp = lin + att
        if self.combine == "max":
            both = np.maximum(mem, comp)
        elif self.combine == "sum":
            both = mem + comp
        elif self.combine == "l2":
            both = np.sqrt(mem * mem + comp * comp)
        else:
            raise ValueError(f"unknown combine rule {self.combine!r} (max, l2, sum)")
        t = self.t0 + self.t_seq * float(n_seqs) + both
        if self.decode_factors and n_tokens == n_seqs:
            t = t * self.decode_factor(n_seqs)
        return t


@dataclass
class EmpiricalStepModel(StepModel):
    """Least squares on batch features, for boxes whose physics is unknown.

    time = c0 + c_tok*n_tokens + c_seq*n_seqs + c_ctx*ctx_full/1e3
           + c_ctxw*ctx_window/1e3 + c_attn*attn_full/1e6 + c_attnw*attn_window/1e6
    """

    kind: ClassVar[str] = "empirical"
    MEMORY_TIMES: ClassVar[tuple[str, ...]] = ("c0", "c_tok", "c_seq", "c_ctx", "c_ctxw")
    COMPUTE_TIMES: ClassVar[tuple[str, ...]] = ("c_attn", "c_attnw")
    c0: float = 0.02
    c_tok: float = 1e-4
    c_seq: float = 1e-3
    c_ctx: float = 0.0
    c_ctxw: float = 0.0
    c_attn: float = 0.0
    c_attnw: float = 0.0
    window: int | None = None

    FEATURES: ClassVar[tuple[str, ...]] = ("c0", "c_tok", "c_seq", "c_ctx", "c_ctxw", "c_attn", "c_attnw")

    def time_of(self, n_tokens, n_seqs, ctx_full, ctx_window, attn_full, attn_window) -> float:
        """times() for one step in Python floats, in the same order (see PhysicalStepModel.time_of)."""
        base = float(self.c0 + self.c_tok * float(n_tokens) + self.c_seq * float(n_seqs))
        return (base + float(self.c_ctx) * (float(ctx_full) / 1e3)
                + float(self.c_ctxw) * (float(ctx_window) / 1e3)
                + float(self.c_attn) * (float(attn_full) / 1e6)
                + float(self.c_attnw) * (float(attn_window) / 1e6))

    def times(self, n_tokens, n_seqs, ctx_full, ctx_window, attn_full, attn_window):
        base = self.c0 + self.c_tok * float(n_tokens) + self.c_seq * float(n_seqs)
        return (base + self.c_ctx * (ctx_full.astype(np.float64) / 1e3)
                + self.c_ctxw * (ctx_window.astype(np.float64) / 1e3)
                + self.c_attn * (attn_full.astype(np.float64) / 1e6)
                + self.c_attnw * (attn_window.astype(np.float64) / 1e6))

    @classmethod
    def fit(cls, feats: list[StepFeatures], durations, window: int | None = None) -> "EmpiricalStepModel":
        """Non-negative least squares (scipy) of measured step durations on features."""
        from scipy.optimize import nnls
        X = np.array([[1.0, f.n_tokens, f.n_seqs, f.ctx_full / 1e3, f.ctx_window / 1e3, f.attn_full / 1e6,
                       f.attn_window / 1e6] for f in feats])
        y = np.asarray(durations, dtype=float)
        coef, _ = nnls(X, y)
        return cls(**dict(zip(cls.FEATURES, (float(c) for c in coef))), window=window)


STEP_MODELS = {m.kind: m for m in (PhysicalStepModel, EmpiricalStepModel)}


def step_model_from_json(d: dict) -> StepModel:
    kind = d.get("kind")
    if kind not in STEP_MODELS:
        raise ValueError(f"unknown step model kind {kind!r} (known: {', '.join(STEP_MODELS)})")
    cls = STEP_MODELS[kind]
    params = dict(d.get("params", {}))
    known = {f.name for f in fields(cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown {kind} step-model parameter(s): {', '.join(sorted(unknown))}")
    return cls(**params)
