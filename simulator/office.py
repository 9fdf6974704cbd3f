"""The office: staff, how often each person asks, what they ask, and when.

An `Office` becomes sessions (one request, or a whole multi-turn conversation whose next turn waits
for the reply plus a think time), started by a gamma arrival process mapped through the working
day's rate; `simulate_sessions` plays them on the engine. Design: docs/design/office.md.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import simpy

from .engine import Engine
from .errors import CapsimError
from .profile import Profile
from .records import OfficeFacts, OpenLoopFacts, RequestRecord, RunResult
from .sim import Frontend
from .summary import DEFAULT_PERCENTILES, summarize_open
from .workload import PromptFormat, RandomWorkload, RequestSpec, Workload


class OfficeError(CapsimError):
    """An impossible office; the message is one line for the user."""


# ------------------------------------------------------------------ request shapes

@dataclass
class ShareGPTLike(Workload):
    """ShareGPT-like chat lengths without the ShareGPT file.

    A lognormal population whose shape follows ShareGPT V3's first turns (heavy
    tails, log-sd about 1.5 for prompts), passed through vLLM's own ShareGPT
    filter (prompt and output >= 4, prompt <= 1024, prompt + output <= 2048).
    The medians are set so the filtered means hit the published anchors
    (reference/metric-definitions.md section 4): prompt about 230 tokens with the
    chat template (215 + BOS-counted raw tokens on /v1/completions, 229.7 via
    chat), output about 200 (185-203 measured with EOS allowed).
    """

    fmt: PromptFormat = field(default_factory=lambda: PromptFormat(1, 13))
    prompt_mu: float = 5.053  # log-median of raw prompt tokens (BOS counted), before the filter
    prompt_sigma: float = 1.5
    output_mu: float = 4.707
    output_sigma: float = 1.2
    max_prompt: int = 1024
    max_total: int = 2048
    name = "chat"
    mixed_topics = True

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        rng = np.random.default_rng([seed, 0x5ade])
        ps, os_ = [], []
        got = 0
        while got < n:
            m = max(64, 2 * (n - got))
            p = np.rint(np.exp(rng.normal(self.prompt_mu, self.prompt_sigma, m))).astype(np.int64)
            o = np.rint(np.exp(rng.normal(self.output_mu, self.output_sigma, m))).astype(np.int64)
            keep = (p >= 4) & (o >= 4) & (p <= self.max_prompt) & (p + o <= self.max_total)
            ps.append(p[keep])
            os_.append(o[keep])
            got += int(keep.sum())
        p = np.concatenate(ps)[:n]
        o = np.concatenate(os_)[:n]
        t = self.fmt.chat_template_tokens
        return [RequestSpec(prompt_tokens=int(a) + t, max_tokens=int(b), output_tokens=int(b), tag=self.name,
                            raw_prompt_tokens=int(a)) for a, b in zip(p, o)]

    def describe(self) -> dict:
        return {"dataset": "sharegpt-like", "prompt_mu": self.prompt_mu, "prompt_sigma": self.prompt_sigma,
                "output_mu": self.output_mu, "output_sigma": self.output_sigma}


@dataclass(frozen=True)
class WorkClass:
    """One kind of work in the office.

    `share` is the share of *requests*. `workload` gives each request's lengths;
    for a conversation (`turns` > 1) it gives each turn's new message and reply,
    and turn j's prompt is the whole history: every earlier message and reply
    plus the new message. `think_s` is the mean (exponential) pause between a
    reply's end and the next turn.
    """

    name: str
    share: float
    workload: Workload
    turns: int = 1
    think_s: float = 0.0


PRESETS = ("chat", "rag", "code", "multiturn")
DEFAULT_MIX = (("chat", 0.55), ("multiturn", 0.25), ("rag", 0.15), ("code", 0.05))


def preset_class(name: str, share: float, fmt: PromptFormat, turns: int = 5, think_s: float = 30.0) -> WorkClass:
    """The named classes, shaped after the seed's runs.

    chat: ShareGPT-like (test I). rag: run F's 8k prompt and 512-token answer,
    +-25%. code: run G's long output (256-token instruction, 4096 tokens out),
    +-50%. multiturn: run E's five-turn conversations, each turn a ShareGPT-like
    message and reply on top of the history, 30 s think time by default.
    """
    if name == "chat":
        return WorkClass("chat", share, ShareGPTLike(fmt=fmt))
    if name == "rag":
        return WorkClass("rag", share, RandomWorkload(8192, 512, 0.25, fmt=fmt))
    if name == "code":
        return WorkClass("code", share, RandomWorkload(256, 4096, 0.5, fmt=fmt))
    if name == "multiturn":
        return WorkClass("multiturn", share, ShareGPTLike(fmt=fmt), turns=turns, think_s=think_s)
    raise OfficeError(f"unknown work class {name!r} (known: {', '.join(PRESETS)})")


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """'chat=0.6,rag=0.4' or 'chat' (one class, share 1) -> ((name, share), ...)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, val = part.partition("=")
        name = name.strip()
        if name not in PRESETS:
            raise OfficeError(f"--mix: unknown work class {name!r} (known: {', '.join(PRESETS)})")
        try:
            share = float(val) if eq else 1.0
        except ValueError:
            raise OfficeError(f"--mix: share of {name} is not a number: {val!r}") from None
        if not share >= 0:
            raise OfficeError(f"--mix: share of {name} must be >= 0, got {val}")
        out.append((name, share))
    if not out or sum(s for _, s in out) <= 0:
        raise OfficeError(f"--mix needs at least one class with a positive share, got {text!r}")
    return tuple(out)


# ------------------------------------------------------------------ the office

WARMUP_MIN_S, WARMUP_MAX_S = 150.0, 1800.0
# A warm-up of more sessions than this only deepens an overloaded box's queue (at 50 req/s a
# 414-s warm-up drew 16 000 sessions a replication; at 1e9 req/s it never ended): a busier
# office's warm-up starts later and holds about this many. It binds from ~12 sessions/s on
# the default mix, where a box that keeps up ends a 5-turn conversation well within it.
WARMUP_MAX_SESSIONS = 5000
# One window's requests at most: a duration at an absurd rate would fill memory before the box ran.
WINDOW_MAX_REQUESTS = 1_000_000

# Relative request rate by clock hour of a working day (rush after arrival, lunch dip,
# a second peak after lunch, a tail at the end of the day). Hours not listed: 0.
DAY_PROFILES = {
    "office": {8: 0.5, 9: 1.5, 10: 1.4, 11: 1.2, 12: 0.6, 13: 1.0, 14: 1.3, 15: 1.2, 16: 0.9, 17: 0.4},
    "flat": {h: 1.0 for h in range(9, 17)},
}


@dataclass(frozen=True)
class Office:
    """Who asks, how often, what, and in which pattern. Plain data; see the module doc."""

    staff: int = 25
    per_hour: float = 43.2  # requests per person per hour (the seed's 0.3 req/s for 25 people)
    per_day: float | None = None  # instead of per_hour: requests per person per working day
    day_profile: str | None = None  # DAY_PROFILES key; with per_day (default "office")
    at_hour: float | None = None  # clock hour the window starts (default: the profile's busiest)
    mix: tuple = DEFAULT_MIX  # ((name, share), ...) of PRESETS, or WorkClass objects
    turns: int = 5  # turns of a multiturn conversation
    think_s: float = 30.0  # mean think time between turns
    burstiness: float = 0.7  # gamma shape of the aggregate gaps (1.0 = Poisson)
    burst_factor: float = 1.0  # Monday morning: rate x factor ...
    burst_s: float = 0.0  # ... for the first burst_s seconds of the window
    max_concurrency: int | None = None  # gateway cap on requests in flight
    queue_in_ttft: bool = True  # the gateway wait counts in TTFT/E2EL
    requests: int = 250  # requests per simulated window (when duration_s is None)
    duration_s: float | None = None  # a window of fixed length instead
    warmup_s: float | None = None  # office time simulated before the window (None: auto, see warmup())

    def __post_init__(self):
        self.validate()

    def validate(self) -> "Office":
        if not isinstance(self.staff, (int, np.integer)) or self.staff < 0:
            raise OfficeError(f"staff must be a whole number >= 0, got {self.staff}")
        if self.per_day is None and not self.per_hour > 0:
            raise OfficeError(f"requests per person per hour must be > 0, got {self.per_hour}")
        if self.per_day is not None and not self.per_day > 0:
            raise OfficeError(f"requests per person per day must be > 0, got {self.per_day}")
        if self.profile_name() is not None and self.profile_name() not in DAY_PROFILES:
            raise OfficeError(f"unknown day profile {self.day_profile!r} (known: {', '.join(DAY_PROFILES)})")
        if self.at_hour is not None:
            if self.profile_name() is None:  # a constant rate has no clock for the hour to move
                raise OfficeError("a start hour needs a day profile (per_day or day_profile): a rate per hour "
                                  "is the same at every hour")
            if not 0 <= self.at_hour < 24:
                raise OfficeError(f"the start hour must be a clock hour in [0, 24), got {self.at_hour}")
        if not self.burstiness > 0:
            raise OfficeError(f"burstiness must be > 0, got {self.burstiness}")
        if not self.burst_factor > 0 or self.burst_s < 0:
            raise OfficeError(f"a burst needs factor > 0 and minutes >= 0 (got {self.burst_factor}, {self.burst_s / 60:g} min)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise OfficeError(f"max concurrency must be >= 1, got {self.max_concurrency}")
        if self.turns < 1:
            raise OfficeError(f"turns must be >= 1, got {self.turns}")
        if self.think_s < 0:
            raise OfficeError(f"think time must be >= 0, got {self.think_s}")
        if self.duration_s is None and not 1 <= self.requests <= WINDOW_MAX_REQUESTS:
            raise OfficeError(f"requests per window must be in [1, {WINDOW_MAX_REQUESTS:,}], got {self.requests}")
        if self.warmup_s is not None and not self.warmup_s >= 0:
            raise OfficeError(f"warm-up must be >= 0 s, got {self.warmup_s}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise OfficeError(f"window duration must be > 0, got {self.duration_s}")
        if not self.mix:
            raise OfficeError("the mix needs at least one work class")
        shares = [c.share if isinstance(c, WorkClass) else c[1] for c in self.mix]
        if any(not s >= 0 for s in shares) or sum(shares) <= 0:
            raise OfficeError("mix shares must be >= 0 with a positive sum")
        for c in self.mix:
            if not isinstance(c, WorkClass):
                if c[0] not in PRESETS:
                    raise OfficeError(f"unknown work class {c[0]!r} (known: {', '.join(PRESETS)})")
            elif c.turns < 1 or c.think_s < 0:
                raise OfficeError(f"work class {c.name}: turns >= 1 and think time >= 0 needed")
        return self

    def warmup(self, fmt: PromptFormat | None = None) -> float:
        """Seconds of office simulated before the measured window.

        Auto (warmup_s None): none with a burst (Monday morning starts from an idle
        box); otherwise long enough for the longest kind of job to be in its steady
        number: the time one such job (a whole conversation) takes at 10 tok/s (the
        seed's per-user decode speed with ten users), at least WARMUP_MIN_S, at most
        WARMUP_MAX_S. Over 250 requests from an idle box the default mix reads TPOT
        p50 about 20% low; chat alone about 5%.
        """
        if self.warmup_s is not None:
            return float(self.warmup_s)
        if self.burst_s > 0:
            return 0.0
        longest = 0.0
        for c in self.classes(fmt or PromptFormat(1, 13)):
            out = float(np.mean([x.output_tokens for x in c.workload.sample(64, seed=0)]))
            longest = max(longest, c.turns * (out / 10.0) + (c.turns - 1) * c.think_s)
        return float(min(WARMUP_MAX_S, max(WARMUP_MIN_S, longest)))

    # ---------------------------------------------------------- rates
    def profile_name(self) -> str | None:
        if self.day_profile is not None:
            return self.day_profile
        return "office" if self.per_day is not None else None

    def _weights(self) -> dict[int, float] | None:
        name = self.profile_name()
        return None if name is None else DAY_PROFILES[name]

    def start_hour(self) -> float:
        w = self._weights()
        if self.at_hour is not None:
            return float(self.at_hour)
        if w is None:
            return 0.0
        return float(max(w, key=lambda h: (w[h], -h)))  # the busiest hour, earliest on ties

    def person_rate_at_hour(self, hour: int) -> float:
        """Requests per second of one person during clock hour `hour` (before any burst)."""
        w = self._weights()
        if w is None:
            return self.per_hour / 3600.0
        total = sum(w.values())
        # per_hour with a day profile is the mean over the profile's working hours
        per_day = self.per_day if self.per_day is not None else self.per_hour * sum(1 for x in w.values() if x > 0)
        return per_day * w.get(int(hour) % 24, 0.0) / total / 3600.0

    def peak_person_rate(self) -> float:
        """Requests per second of one person at the window's start (burst included)."""
        return self.person_rate_at_hour(int(math.floor(self.start_hour()))) * (
            self.burst_factor if self.burst_s > 0 else 1.0)

    def office_rps(self, staff: int | None = None) -> float:
        """The office's request rate at the window's start, without a burst."""
        n = self.staff if staff is None else staff
        return n * self.person_rate_at_hour(int(math.floor(self.start_hour())))

    def segments(self, until_s: float, from_s: float = 0.0):
        """Piecewise-constant person rate over [from_s, until_s] of the window: [(t0, t1, rate)]."""
        out = []
        t = from_s
        h0 = self.start_hour() * 3600.0
        varying = self._weights() is not None
        while t < until_s:
            edges = [until_s]
            if varying:
                clock = h0 + t
                edges.append(t + (math.floor(clock / 3600.0 + 1e-12) + 1) * 3600.0 - clock)
            if self.burst_s > 0 and t < self.burst_s:
                edges.append(self.burst_s)
            t1 = min(e for e in edges if e > t)
            rate = self.person_rate_at_hour(int(math.floor((h0 + t) / 3600.0 + 1e-12)))
            if self.burst_s > 0 and t < self.burst_s:
                rate *= self.burst_factor
            out.append((t, t1, rate))
            t = t1
        return out

    def classes(self, fmt: PromptFormat) -> list[WorkClass]:
        out = []
        for c in self.mix:
            out.append(c if isinstance(c, WorkClass) else preset_class(c[0], c[1], fmt, self.turns, self.think_s))
        return out

    def shares(self) -> list[tuple[str, float]]:
        """(class, share of requests) of the mix, as the office draws them: a mix may be given in any
        proportions (chat=2,rag=1), the shares here sum to 1."""
        named = [(c.name, c.share) if isinstance(c, WorkClass) else (c[0], c[1]) for c in self.mix]
        total = sum(s for _, s in named)
        return [(n, s / total) for n, s in named]

    def describe(self) -> dict:
        # (to 12 digits: shares typed to sum to 1 stay as typed, not 0.6000000000000001)
        mix = [{"class": n, "share": round(s, 12)} | ({"turns": c.turns} if isinstance(c, WorkClass) else {})
               for c, (n, s) in zip(self.mix, self.shares())]
        return {"staff": self.staff, "per_hour": self.per_hour, "per_day": self.per_day,
                "day_profile": self.profile_name(), "at_hour": self.start_hour(), "mix": mix, "turns": self.turns,
                "think_s": self.think_s, "burstiness": self.burstiness, "burst_factor": self.burst_factor,
                "burst_minutes": self.burst_s / 60.0, "max_concurrency": self.max_concurrency,
                "queue_in_ttft": self.queue_in_ttft, "requests": self.requests, "duration_s": self.duration_s,
                "office_rps": self.office_rps()}


# ------------------------------------------------------------------ sessions

@dataclass(frozen=True, slots=True)
class Session:
    """One person's request, or conversation: turn specs and the think times between them."""

    time: float
    specs: tuple[RequestSpec, ...]
    thinks: tuple[float, ...] = ()
    tag: str = ""


_BLOCK = 256  # sessions are drawn in blocks, so any prefix of the sequence is the same for every staff count


def _conversation(specs: Sequence[RequestSpec], tag: str) -> tuple[RequestSpec, ...]:
    """Turn j's prompt = every earlier message and reply + turn j's new message."""
    out = []
    history = 0
    for s in specs:
        prompt = history + s.prompt_tokens
        out.append(RequestSpec(prompt_tokens=prompt, max_tokens=s.max_tokens, output_tokens=s.output_tokens,
                               tag=tag, raw_prompt_tokens=prompt))
        history = prompt + s.output_tokens
    return tuple(out)


class SessionScript:
    """The staff-independent part of one replication: an endless seeded sequence of sessions.

    Block b (of _BLOCK sessions) depends only on (seed, b): unit-rate gamma gaps,
    the class of each session, its request shapes and think times.
    """

    def __init__(self, office: Office, fmt: PromptFormat, seed: int, stream: int = 0):
        self.office = office
        self.classes = office.classes(fmt)
        shares = np.array([share for _, share in office.shares()])
        turns = np.array([c.turns for c in self.classes], dtype=float)
        w = shares / turns  # sessions per request of each class
        self.sessions_per_request = float(w.sum())
        self.p_class = w / w.sum()
        self.seed = seed
        self.stream = stream  # 0: the measured window; 1: the warm-up before it
        self.u: list[float] = []  # operational times (unit mean gaps)
        self.items: list[tuple[tuple[RequestSpec, ...], tuple[float, ...], str]] = []

    def _extend(self) -> None:
        b = len(self.u) // _BLOCK
        rng = np.random.default_rng([self.seed, self.stream, b, 1])
        k = self.office.burstiness
        gaps = rng.gamma(shape=k, scale=1.0 / k, size=_BLOCK)
        start = self.u[-1] if self.u else 0.0
        self.u.extend((start + np.cumsum(gaps)).tolist())
        picks = rng.choice(len(self.classes), size=_BLOCK, p=self.p_class)
        block: list = [None] * _BLOCK
        for ci, c in enumerate(self.classes):
            idx = np.flatnonzero(picks == ci)
            if len(idx) == 0:
                continue
            wseed = int(np.random.SeedSequence([self.seed, self.stream, b, ci]).generate_state(1)[0])
            specs = c.workload.sample(len(idx) * c.turns, seed=wseed)
            think_rng = np.random.default_rng([self.seed, self.stream, b, 2, ci])
            thinks = think_rng.exponential(c.think_s, size=(len(idx), max(0, c.turns - 1))) if c.think_s > 0 \
                else np.zeros((len(idx), max(0, c.turns - 1)))
            for j, i in enumerate(idx):
                turn_specs = specs[j * c.turns:(j + 1) * c.turns]
                if c.turns > 1:
                    block[i] = (_conversation(turn_specs, c.name), tuple(float(x) for x in thinks[j]), c.name)
                else:
                    s = turn_specs[0]
                    block[i] = ((replace(s, tag=c.name) if s.tag != c.name else s,), (), c.name)
        self.items.extend(block)

    def get(self, i: int):
        while i >= len(self.u):
            self._extend()
        return self.u[i], self.items[i]


def office_sessions(office: Office, staff: int, seed: int, fmt: PromptFormat | None = None,
                    script: SessionScript | None = None) -> list[Session]:
    """The sessions of one replication (`seed`) for `staff` people, in simulation time.

    The first office.warmup() seconds are warm-up at the window's starting rate
    (about WARMUP_MAX_SESSIONS sessions at most: a busier office's starts later),
    drawn from a stream of their own, so the measured window holds the very same
    sessions at every staff count (only their pace changes); the window follows,
    with the day profile and burst counted from its start. Requests pressed in the
    window are the ones measured (simulate_sessions' measure_from).
    """
    fmt = fmt or PromptFormat(1, 13)
    if staff <= 0:
        return []
    script = script or SessionScript(office, fmt, seed)
    spr = script.sessions_per_request
    w = office.warmup(fmt)
    out: list[Session] = []
    if w > 0:
        warm = SessionScript(office, fmt, seed, stream=1)
        rate0 = staff * spr * office.person_rate_at_hour(int(math.floor(office.start_hour())))
        start = max(0.0, w - WARMUP_MAX_SESSIONS / rate0) if rate0 > 0 else w
        i = 0
        while rate0 > 0:
            u, (specs, thinks, tag) = warm.get(i)
            t = start + u / rate0
            if t >= w:
                break
            out.append(Session(t, specs, thinks, tag))
            i += 1
    count_based = office.duration_s is None
    t_min = max(office.burst_s, 0.0) if count_based else max(office.duration_s, office.burst_s)
    n_requests = 0
    # Lambda(t) = staff * sessions-per-request * integral of the person rate, walked lazily
    horizon = max(t_min, 3600.0)
    segs = office.segments(horizon)
    seg_i, lam0 = 0, 0.0
    i = 0
    while True:
        u, (specs, thinks, tag) = script.get(i)
        while True:
            if seg_i == len(segs):
                if horizon > 400 * 86400:
                    raise OfficeError("the office's request rate is zero: no requests arrive")
                segs = segs + office.segments(2 * horizon, horizon)
                horizon *= 2
            t0, t1, r = segs[seg_i]
            lam_rate = staff * spr * r
            lam1 = lam0 + lam_rate * (t1 - t0)
            if u <= lam1 and lam_rate > 0:
                t = t0 + (u - lam0) / lam_rate
                break
            lam0 = lam1
            seg_i += 1
        if count_based:
            if n_requests >= office.requests and t > t_min:
                break
        elif t > t_min:
            break
        out.append(Session(w + t, specs, thinks, tag))
        n_requests += len(specs)
        if n_requests > WINDOW_MAX_REQUESTS:
            raise OfficeError(f"the window holds more than {WINDOW_MAX_REQUESTS:,} requests at {staff} staff "
                              f"({staff * office.peak_person_rate():.3g} req/s): shorten it or lower the rate")
        i += 1
    return out


# ------------------------------------------------------------------ simulation

ROUTINGS = ("round-robin", "least-loaded")


def simulate_sessions(profile: Profile, sessions: Sequence[Session], boxes: int = 1, routing: str = "round-robin",
                      prefix_hit: float = 0.0, max_concurrency: int | None = None, queue_in_ttft: bool = True,
                      noise_seed: int = 0, fast_forward: bool = True, measure_from: float = 0.0,
                      staff: int | None = None, request_rate: float = math.inf,
                      burstiness: float = 1.0) -> RunResult:
    """Play sessions on `boxes` identical engines behind a router; every request's record.

    Routing is per request: round-robin, or least-loaded by requests in flight
    (lowest box index on ties). A prefix-cache hit rate h leaves ceil((1-h) x prompt)
    tokens of every prompt (at least one) uncached: the engine computes them from
    vLLM's hit (the whole blocks before them), while the KV cache holds and
    attention reads the whole prompt. Records keep the full prompt, as the server
    reports it. With one box, single-request sessions and no cap this is simulate_open.
    Records carry their work class in `test` and their session's index in `batch`.
    Requests pressed before `measure_from` (warm-up) load the box but are left
    out of the result, whose clock then starts at `measure_from`. `staff`, `request_rate`
    and `burstiness` are only recorded in the result's facts (simulate_office passes them).
    """
    if boxes < 1:
        raise OfficeError(f"boxes must be >= 1, got {boxes}")
    if routing not in ROUTINGS:
        raise OfficeError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
    if not 0.0 <= prefix_hit < 1.0:
        raise OfficeError(f"prefix-cache hit rate must be in [0, 1), got {prefix_hit}")
    env = simpy.Environment()
    engines = [Engine(env, profile, fast_forward=fast_forward, seed=noise_seed if b == 0 else noise_seed + 7919 * b)
               for b in range(boxes)]
    fronts = [Frontend(e, profile) for e in engines]
    load = [0] * boxes
    sent_per_box = [0] * boxes
    rr = [0]
    records: list[RequestRecord] = []
    send_time: dict[int, float] = {}
    queue: deque = deque()
    in_flight = [0]
    cap = max_concurrency

    def engine_spec(spec: RequestSpec) -> RequestSpec:
        if prefix_hit <= 0:
            return spec
        keep = max(1, math.ceil(spec.prompt_tokens * (1.0 - prefix_hit)))
        return replace(spec, cached_tokens=spec.prompt_tokens - keep)

    def press(sess: Session, turn: int, t: float) -> None:
        """A person hits enter: the request is created, then sent or queued at the gateway."""
        spec = sess.specs[turn]
        rec = RequestRecord(request_id=len(records), prompt_tokens=spec.prompt_tokens, output_tokens=0,
                            scheduled_time=float(t), start_time=float(t), max_tokens=spec.max_tokens, test=sess.tag,
                            batch=index[id(sess)])
        records.append(rec)
        if cap is not None and in_flight[0] >= cap:
            queue.append((sess, turn, rec))
        else:
            send(sess, turn, rec, float(t))

    def send(sess: Session, turn: int, rec: RequestRecord, t: float) -> None:
        in_flight[0] += 1
        rec.start_time = t
        send_time[rec.request_id] = t
        if routing == "round-robin":
            b = rr[0] % boxes
            rr[0] += 1
        else:
            b = min(range(boxes), key=lambda k: (load[k], k))
        load[b] += 1
        sent_per_box[b] += 1
        fronts[b].submit(engine_spec(sess.specs[turn]), rec, lambda _r, r: done(sess, turn, r, b))

    def done(sess: Session, turn: int, rec: RequestRecord, b: int) -> None:
        load[b] -= 1
        end = rec.end_time
        if cap is None:
            in_flight[0] -= 1
        else:
            # the slot frees when the client sees the stream end (a chunk's delay after the
            # engine's step), and passes to the oldest waiter at that moment
            env.process(_at(env, end, release))
        if turn + 1 < len(sess.specs) and rec.error is None:
            t_next = end + sess.thinks[turn]
            env.process(_at(env, t_next, lambda: press(sess, turn + 1, t_next)))

    def release() -> None:
        in_flight[0] -= 1
        if queue:
            s2, t2, r2 = queue.popleft()
            send(s2, t2, r2, env.now)

    index = {id(sess): i for i, sess in enumerate(sessions)}  # records' `batch` = their session's index

    def dispatcher():
        for sess in sessions:
            if sess.time > env.now:
                yield env.timeout(sess.time - env.now)
            press(sess, 0, sess.time)

    env.process(dispatcher())
    env.run()
    records = [r for r in records if r.scheduled_time >= measure_from]
    waits = np.array([send_time[r.request_id] - r.scheduled_time for r in records]) if records else np.zeros(0)
    if queue_in_ttft and cap is not None:
        for r in records:
            r.start_time = r.scheduled_time  # the user's clock: from pressing enter
    end = max((r.end_time for r in records if r.end_time is not None), default=measure_from)
    last = max(sessions[-1].time if sessions else 0.0, measure_from)
    return RunResult(records, measure_from, max(end, last), "open",
                     open_loop=OpenLoopFacts(request_rate=request_rate, burstiness=burstiness,
                                             max_concurrency=None if (queue_in_ttft or cap is None) else cap),
                     num_preemptions=sum(e.num_preemptions for e in engines),
                     office=OfficeFacts(boxes=boxes, routing=routing, requests_per_box=sent_per_box,
                                        prefix_hit=prefix_hit, gateway_cap=cap, queue_in_ttft=queue_in_ttft,
                                        gateway_wait_s=waits, staff=staff))


def _at(env: simpy.Environment, t: float, fn: Callable[[], None]):
    if t > env.now:
        yield env.timeout(t - env.now)
    fn()


def simulate_office(profile: Profile, office: Office, staff: int | None = None, seed: int = 0, boxes: int = 1,
                    routing: str = "round-robin", prefix_hit: float = 0.0, noise_seed: int | None = None,
                    script: SessionScript | None = None) -> RunResult:
    """One replication of the office on the model (staff defaults to office.staff). Staff ask about
    unrelated things: their traffic has mixed topics (Profile.for_traffic)."""
    n = office.staff if staff is None else staff
    sessions = office_sessions(office, n, seed, profile.prompt_format, script)
    return simulate_sessions(profile.for_traffic(True), sessions, boxes=boxes, routing=routing, prefix_hit=prefix_hit,
                             max_concurrency=office.max_concurrency, queue_in_ttft=office.queue_in_ttft,
                             noise_seed=seed if noise_seed is None else noise_seed, measure_from=office.warmup(profile.prompt_format),
                             staff=n, request_rate=office.office_rps(n), burstiness=office.burstiness)


def summarize_office(run: RunResult, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """summarize_open's keys, plus the gateway wait and the office's own rates."""
    s = summarize_open(run, percentiles)
    waits = run.office.gateway_wait_s if run.office is not None else None
    if waits is not None and run.office.gateway_cap:
        w = waits if len(waits) else np.zeros(1)
        s["mean_gateway_wait_ms"] = float(np.mean(w)) * 1000
        for p in percentiles:
            key = f"p{int(p)}" if float(p).is_integer() else f"p{p}"
            s[f"{key}_gateway_wait_ms"] = float(np.percentile(w, p)) * 1000
    s["num_preemptions"] = run.num_preemptions or 0
    s["requests"] = len(run.records)
    return s


def per_class(run: RunResult) -> dict[str, dict]:
    """A few headline numbers per work class (TTFT p50/p95, TPOT p50, E2EL p95)."""
    out: dict[str, dict] = {}
    tags = sorted({r.test for r in run.records})
    for tag in tags:
        ok = [r for r in run.records if r.test == tag and r.ok]
        if not ok:
            out[tag] = {"requests": 0}
            continue
        ttft = np.array([r.chunk_times[0] - r.start_time for r in ok])
        e2el = np.array([r.chunk_times[-1] - r.start_time for r in ok])
        tp = [(r.chunk_times[-1] - r.chunk_times[0]) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
        out[tag] = {"requests": len(ok), "median_ttft_ms": float(np.median(ttft)) * 1000,
                    "p95_ttft_ms": float(np.percentile(ttft, 95)) * 1000,
                    "median_tpot_ms": float(np.median(tp)) * 1000 if tp else 0.0,
                    "p95_e2el_ms": float(np.percentile(e2el, 95)) * 1000,
                    "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in ok]))}
    return out
