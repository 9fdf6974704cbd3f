"""Load patterns: when requests are sent.

`OpenLoop` is vllm bench serve's arrival process (precomputed gamma gaps,
rescaled so the last arrival lands at exactly N/rate, a client semaphore for
--max-concurrency while the arrival clock keeps running; `RampUp` its
--ramp-up-strategy, a rate that grows request by request). `ClosedLoop` is
llama-benchy 0.4.0's: for every (depth, pp, tg, concurrency) it sends N requests
at once, waits for all, and repeats `runs` times.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .errors import CapsimError
from .workload import FixedWorkload, RequestSpec, WorkloadError


class LoadError(CapsimError):
    """An impossible load pattern; the message is one line for the user."""


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION_PART = r"([0-9]*\.?[0-9]+)\s*(ms|min|sec|h|m|s)?\s*"


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds (>= 0) from '30s', '2min', '15m', '500ms', '1h', '1h30m' or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        secs = float(text)
    else:
        t = str(text).strip().lower()
        try:
            secs = float(t)  # bare seconds, '1e3' included
        except ValueError:
            secs = (sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in re.findall(_DURATION_PART, t))
                    if re.fullmatch(f"(?:{_DURATION_PART})+", t) else math.nan)
    if not (math.isfinite(secs) and secs >= 0):
        raise LoadError(f"{what}: expected a duration such as 30s, 15m or 1h, got {text!r}")
    return secs


RAMP_STRATEGIES = ("linear", "exponential")


def _rps(x: float) -> float | int:
    """A rate as vllm bench serve writes it: its flags take whole numbers (capsim's also fractions)."""
    return int(x) if float(x).is_integer() else float(x)


@dataclass(frozen=True)
class RampUp:
    """vllm bench serve's --ramp-up-strategy: request i of n is sent at the rate `start_rps` grown
    towards `end_rps` by i / (n - 1), linearly or geometrically (`_get_current_request_rate`)."""

    strategy: str
    start_rps: float
    end_rps: float

    def __post_init__(self):
        if self.strategy not in RAMP_STRATEGIES:
            raise LoadError(f"--ramp-up-strategy must be linear or exponential, got {self.strategy!r}")
        start, end = self.start_rps, self.end_rps
        if not (math.isfinite(start) and math.isfinite(end)):
            raise LoadError(f"--ramp-up-start-rps and --ramp-up-end-rps must be finite, got {start} and {end}")
        if not start > 0:  # vllm bench serve refuses < 0, and stops at its first request on 0
            raise LoadError(f"--ramp-up-start-rps must be > 0 (the first request is sent at it), got {start}")
        if start > end:
            raise LoadError(f"--ramp-up-start-rps {start:g} is above --ramp-up-end-rps {end:g}: a ramp goes up")

    @classmethod
    def from_keys(cls, d: dict) -> "RampUp | None":
        """The ramp of vllm bench serve's result keys (records.RAMP_KEYS), or None where no strategy is named."""
        if d.get("ramp_up_strategy") in (None, ""):
            return None
        start, end = d.get("ramp_up_start_rps"), d.get("ramp_up_end_rps")
        if start is None or end is None:
            raise LoadError("--ramp-up-strategy needs both --ramp-up-start-rps and --ramp-up-end-rps")
        return cls(str(d["ramp_up_strategy"]), float(start), float(end))

    def keys(self) -> dict:
        return {"ramp_up_strategy": self.strategy, "ramp_up_start_rps": _rps(self.start_rps),
                "ramp_up_end_rps": _rps(self.end_rps)}

    def rates(self, n: int) -> list[float]:
        """Each request's rate, in vLLM's float operations (Python floats: numpy's power may differ by an ulp)."""
        start, end = float(self.start_rps), float(self.end_rps)
        progress = [i / max(n - 1, 1) for i in range(n)]
        if self.strategy == "linear":
            return [start + (end - start) * p for p in progress]
        ratio = end / start
        return [start * (ratio ** p) for p in progress]

    def change_events(self, offsets: Sequence[float], n: int, wall_start: float) -> list[dict]:
        """vllm bench serve's `rps_change_events` for the first len(offsets) of n requests sent from
        `wall_start` (epoch seconds): the start rate, then each whole rate the ramp passes, stamped
        (local ISO time, as vLLM's datetime.now()) at the send of the first request that reaches it."""
        def stamp(t: float) -> str:
            return _dt.datetime.fromtimestamp(wall_start + float(t)).isoformat()

        events = [{"rps": _rps(self.start_rps), "timestamp": stamp(0.0)}]
        last = math.floor(self.start_rps)
        for rate, t in zip(self.rates(n), offsets):
            now = int(rate)
            if now > last:
                events += [{"rps": v, "timestamp": stamp(t)} for v in range(last + 1, now + 1)]
                last = now
        return events


@dataclass
class OpenLoop:
    rate: float = math.inf  # requests per second; inf sends everything at t=0
    burstiness: float = 1.0  # gamma shape; 1.0 is Poisson
    max_concurrency: int | None = None
    seed: int = 0
    ramp_up: RampUp | None = None  # a rate that grows over the run, in place of `rate`
    # --probe-request-rate: one-token "Hi" requests sent one after another beside the load, each `1 / probe_rate`
    # s after the last one ended, outside --max-concurrency; 0: none (vllm bench serve's default)
    probe_rate: float = 0.0
    # the first request's prompt sent this many times before the run, unmeasured: vllm bench serve's test
    # request (with --ready-check-timeout-sec > 0) and its --num-warmups; a server that caches prefixes
    # then holds that prompt. 0: none (vllm bench serve's default)
    warmups: int = 0

    def __post_init__(self):
        if not (self.rate > 0):
            raise LoadError(f"--request-rate must be > 0 (or inf), got {self.rate}")
        if self.ramp_up is not None and math.isfinite(self.rate):
            raise LoadError(f"--request-rate {self.rate:g} and --ramp-up-strategy: the ramp sets the rate "
                            "(vllm bench serve takes one or the other)")
        if not (self.burstiness > 0):
            raise LoadError(f"--burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise LoadError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        # vllm bench serve runs no probe at 0 or below, and back to back at inf; capsim refuses both
        if not (0 <= self.probe_rate < math.inf):
            raise LoadError(f"--probe-request-rate must be a finite rate >= 0 (0: no probe), got {self.probe_rate}")
        if self.warmups < 0:
            raise LoadError(f"warmups (the first prompt's sends before the run) must be >= 0, got {self.warmups}")

    @staticmethod
    def warmups_of(num_warmups: int, ready_check_timeout_sec: float) -> int:
        """The first prompt's sends before vllm bench serve's run: one test request where the ready check
        runs (--ready-check-timeout-sec > 0; it is sent again only until it succeeds), then --num-warmups."""
        if (num_warmups or 0) < 0:
            raise LoadError(f"--num-warmups must be >= 0, got {num_warmups}")
        return int(num_warmups or 0) + (1 if (ready_check_timeout_sec or 0) > 0 else 0)

    def arrival_times(self, n: int) -> np.ndarray:
        """Offsets from the benchmark start, as vllm bench serve's `get_request`.

        vllm draws the gaps from numpy's global generator after
        `np.random.seed(seed)`; a RandomState with the same seed is that stream.
        """
        if n < 1:
            raise LoadError(f"--num-prompts must be >= 1, got {n}")
        if self.ramp_up is not None:
            # one gap per request at its own rate, not rescaled (vLLM rescales a fixed rate only)
            rates = np.array(self.ramp_up.rates(n))
            if math.isinf(self.burstiness):
                return np.cumsum(1.0 / rates)
            theta = 1.0 / (rates * self.burstiness)  # a gamma of array scale draws as one call a request
            return np.cumsum(np.random.RandomState(self.seed).gamma(shape=self.burstiness, scale=theta))
        if math.isinf(self.rate):
            return np.zeros(n)
        if math.isinf(self.burstiness):
            gaps = np.full(n, 1.0 / self.rate)
        else:
            rs = np.random.RandomState(self.seed)
            theta = 1.0 / (self.rate * self.burstiness)
            gaps = rs.gamma(shape=self.burstiness, scale=theta, size=n)
        delays = np.cumsum(gaps)
        if delays[-1] != 0:
            delays = delays * ((n / self.rate) / delays[-1])
        return delays

    def ramp_keys(self) -> dict:
        """vllm bench serve's ramp-up keys of its result JSON, or none without a ramp."""
        return self.ramp_up.keys() if self.ramp_up is not None else {}

    def probe_keys(self) -> dict:
        """run.json's probe_request_rate, or nothing where no probe runs."""
        return {"probe_request_rate": self.probe_rate} if self.probe_rate > 0 else {}

    def warmup_keys(self) -> dict:
        """run.json's warmups (the first prompt's sends before the run), or nothing where there were none."""
        return {"warmups": self.warmups} if self.warmups > 0 else {}

    def describe(self) -> dict:
        return {"pattern": "open", "request_rate": self.rate, "burstiness": self.burstiness,
                "max_concurrency": self.max_concurrency, "seed": self.seed, **self.ramp_keys(), **self.probe_keys(),
                **self.warmup_keys()}


@dataclass(frozen=True)
class Batch:
    """One closed-loop run: `requests` sent at once; the next batch waits for all."""

    test: str
    run: int
    concurrency: int
    requests: tuple[RequestSpec, ...]
    pp: int
    tg: int
    depth: int
    # llama-benchy's --enable-prefix-caching phase 1: the test's context alone (a "." for the user's
    # message), sent before the run's requests, which then find it in the server's prefix cache
    context_load: bool = False


def context_load_keys(batches: Sequence[Batch]) -> list[str]:
    """The test keys of the batches' context loads (prefix caching's phase 1), each once, in order."""
    return list(dict.fromkeys(b.test for b in batches if b.context_load))


@dataclass
class ClosedLoop:
    """llama-benchy: loops depth -> pp -> tg -> concurrency, `runs` each."""

    pp: Sequence[int] = (512,)
    tg: Sequence[int] = (128,)
    depth: Sequence[int] = (0,)
    concurrency: Sequence[int] = (1,)
    runs: int = 3
    latency_mode: str = "generation"  # llama-benchy's --latency-mode: api | generation | none
    warmup: bool | int = True  # warmup batches per test (True = 1), excluded from results
    # Explicit (pp, tg, depth, concurrency) tests instead of the full product, in order.
    combos: Sequence[tuple[int, int, int, int]] | None = None
    prompt_scale: float = 1.0
    # answers that stop at EOS before tg: their mean length and the shape of their law (FixedWorkload)
    stop_mean: float | None = None
    stop_shape: float = 1.0
    # llama-benchy's --enable-prefix-caching: each run of a test with depth > 0 first loads its contexts
    # (a batch of its own, rows ctx_pp and ctx_tg), then sends its prompts after the same contexts
    prefix_caching: bool = False
    # whether the server's prefix cache keeps the loaded contexts (vLLM's --enable-prefix-caching, on by
    # default in V1); off, the prompts after them prefill their contexts again
    server_caches: bool = True

    def __post_init__(self):
        self.pp, self.tg, self.depth, self.concurrency = (tuple(int(x) for x in v) for v in
                                                          (self.pp, self.tg, self.depth, self.concurrency))
        if not (self.pp and self.tg and self.depth and self.concurrency):
            raise LoadError("closed loop needs at least one value each of --pp, --tg, --depth, --concurrency")
        if self.combos is not None and any(len(c) != 4 or c[3] < 1 for c in self.combos):
            raise LoadError("closed-loop tests need (pp, tg, depth, concurrency >= 1)")
        if any(c < 1 for c in self.concurrency):
            raise LoadError(f"--concurrency values must be >= 1, got {list(self.concurrency)}")
        if self.runs < 1:
            raise LoadError(f"--runs must be >= 1, got {self.runs}")
        if int(self.warmup) < 0:
            raise LoadError(f"--warmup-runs must be >= 0, got {int(self.warmup)}")
        if self.latency_mode not in ("api", "generation", "none"):
            raise LoadError(f"--latency-mode must be api, generation or none, got {self.latency_mode!r}")
        try:
            for pp in self.pp:
                for tg in self.tg:
                    for d in self.depth:
                        FixedWorkload(pp, tg, d)
        except WorkloadError as e:
            raise LoadError(str(e)) from None

    @property
    def any_concurrent(self) -> bool:
        return max(self.concurrency) > 1

    def test_names(self, pp: int, tg: int, depth: int, c: int) -> tuple[str, str]:
        """llama-benchy's row names for the pp row and the tg row."""
        d = f" @ d{depth}" if depth else ""
        cs = f" (c{c})" if self.any_concurrent else ""
        return f"pp{pp}{d}{cs}", f"tg{tg}{d}{cs}"

    def tests(self) -> list[tuple[int, int, int, int]]:
        if self.combos is not None:
            return [tuple(int(x) for x in c) for c in self.combos]
        return [(pp, tg, d, c) for d in self.depth for pp in self.pp for tg in self.tg for c in self.concurrency]

    def batches(self, include_warmup: bool = False) -> list[Batch]:
        """Every batch in the order sent; with prefix caching a test's run is two, its context load first."""
        out = []
        for pp, tg, depth, c in self.tests():
            wl = FixedWorkload(pp, tg, depth, self.prompt_scale, self.stop_mean, self.stop_shape)
            key = f"pp{pp} tg{tg} d{depth} c{c}"  # the records' `test`
            runs = (list(range(-int(self.warmup), 0)) if include_warmup else []) + list(range(self.runs))
            # the context, then "." (one token): llama_benchy/client.py CONTEXT_LOAD_USER_MESSAGE
            ctx = FixedWorkload(1, tg, depth, self.prompt_scale, self.stop_mean, self.stop_shape) \
                if self.prefix_caching and depth > 0 else None
            cached = round(self.prompt_scale * depth) if ctx is not None and self.server_caches else 0
            for r in runs:
                specs = wl.sample(c)
                if ctx is not None:
                    out.append(Batch(f"{key} ctx", r, c, tuple(ctx.sample(c)), pp, tg, depth, True))
                if cached:
                    specs = [replace(s, cached_tokens=cached) for s in specs]
                out.append(Batch(key, r, c, tuple(specs), pp, tg, depth))
        return out

    def describe(self) -> dict:
        return {"pattern": "closed", "pp": list(self.pp), "tg": list(self.tg), "depth": list(self.depth),
                "concurrency": list(self.concurrency), "runs": self.runs, "latency_mode": self.latency_mode} \
            | ({"prefix_caching": True} if self.prefix_caching else {})
