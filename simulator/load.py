"""Load patterns: when requests are sent.

`OpenLoop` is vllm bench serve's arrival process (precomputed gamma gaps,
rescaled so the last arrival lands at exactly N/rate, a client semaphore for
--max-concurrency while the arrival clock keeps running). `ClosedLoop` is
llama-benchy 0.4.0's: for every (depth, pp, tg, concurrency) it sends N requests
at once, waits for all, and repeats `runs` times.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
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


@dataclass
class OpenLoop:
    rate: float = math.inf  # requests per second; inf sends everything at t=0
    burstiness: float = 1.0  # gamma shape; 1.0 is Poisson
    max_concurrency: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not (self.rate > 0):
            raise LoadError(f"--request-rate must be > 0 (or inf), got {self.rate}")
        if not (self.burstiness > 0):
            raise LoadError(f"--burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise LoadError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")

    def arrival_times(self, n: int) -> np.ndarray:
        """Offsets from the benchmark start, as vllm bench serve's `get_request`.

        vllm draws the gaps from numpy's global generator after
        `np.random.seed(seed)`; a RandomState with the same seed is that stream.
        """
        if n < 1:
            raise LoadError(f"--num-prompts must be >= 1, got {n}")
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

    def describe(self) -> dict:
        return {"pattern": "open", "request_rate": self.rate, "burstiness": self.burstiness,
                "max_concurrency": self.max_concurrency, "seed": self.seed}


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
        out = []
        for pp, tg, depth, c in self.tests():
            wl = FixedWorkload(pp, tg, depth, self.prompt_scale, self.stop_mean, self.stop_shape)
            key = f"pp{pp} tg{tg} d{depth} c{c}"
            runs = (list(range(-int(self.warmup), 0)) if include_warmup else []) + list(range(self.runs))
            for r in runs:
                out.append(Batch(key, r, c, tuple(wl.sample(c)), pp, tg, depth))
        return out

    def describe(self) -> dict:
        return {"pattern": "closed", "pp": list(self.pp), "tg": list(self.tg), "depth": list(self.depth),
                "concurrency": list(self.concurrency), "runs": self.runs, "latency_mode": self.latency_mode}
