"""The SLA: constraints on vllm bench serve's summary keys (`p95_ttft<=3s`, `p50_tpot<=150ms`),
their grammar, and the verdict on a set of replications (a constraint is met when at least `need`
of them satisfy it). `PlanError` is the one error of bad plan input. The reasoning behind the count
rule is in docs/design/plan-search.md.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import CapsimError
from .summary import DEFAULT_PERCENTILES, percentile_key


class PlanError(CapsimError):
    """Bad plan input; the message is one line for the user."""


METRICS = ("ttft", "tpot", "itl", "e2el", "gateway_wait")
_UNITS = {"ms": 1.0, "s": 1000.0, "sec": 1000.0, "min": 60000.0}
_SLA_RE = re.compile(r"^\s*(p\d+(?:\.\d+)?|mean|median)_([a-z0-9_]+?)\s*(<=|<)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)"
                     r"\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Constraint:
    """stat_metric <= bound (or <): e.g. p95 of TTFT at most 3000 ms."""

    stat: str  # "p95", "p50", "mean", ...
    metric: str  # "ttft", "tpot", "itl", "e2el", "gateway_wait"
    bound_ms: float
    strict: bool = False
    text: str = ""

    @property
    def label(self) -> str:
        return f"{self.stat}_{self.metric}"

    @property
    def key(self) -> str:
        """The summary key it reads (summarize_open's names)."""
        return f"{self.stat}_{self.metric}_ms"

    @property
    def percentile(self) -> float | None:
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    def ok(self, value_ms: float) -> bool:
        return value_ms < self.bound_ms if self.strict else value_ms <= self.bound_ms

    def __str__(self) -> str:
        return self.text or f"{self.label}{'<' if self.strict else '<='}{fmt_ms(self.bound_ms)}"


def parse_sla(text: str) -> Constraint:
    """'p95_ttft<=3s', 'p50_tpot <= 150ms', 'median_e2el<1min' -> Constraint."""
    m = _SLA_RE.match(text.lower())
    if not m:
        raise PlanError(f"--sla {text!r}: expected STAT_METRIC<=VALUE with a unit, e.g. p95_ttft<=3s or p50_tpot<=150ms")
    stat, metric, op, value, unit = m.groups()
    if metric not in METRICS:
        raise PlanError(f"--sla {text!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if stat == "median":
        stat = "p50"
    if stat.startswith("p"):
        p = float(stat[1:])
        if not 0 < p < 100:
            raise PlanError(f"--sla {text!r}: percentile must be between 0 and 100")
        stat = percentile_key(p)
    if not unit:
        raise PlanError(f"--sla {text!r}: give a unit (ms, s or min)")
    if unit not in _UNITS:
        raise PlanError(f"--sla {text!r}: unknown unit {unit!r} (use ms, s or min)")
    bound = float(value) * _UNITS[unit]
    if not bound > 0:
        raise PlanError(f"--sla {text!r}: the bound must be > 0")
    return Constraint(stat, metric, bound, op == "<", text.strip())


DEFAULT_SLA = ("p95_ttft<=3s", "p99_ttft<=6s", "p50_tpot<=150ms")


def parse_slas(texts: Sequence[str] | None) -> list[Constraint]:
    out = [parse_sla(t) for t in (texts or DEFAULT_SLA)]
    if not out:
        raise PlanError("at least one --sla constraint is needed")
    return out


def fmt_ms(ms: float | None) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms >= 60000 and ms % 60000 == 0:
        return f"{ms / 60000:g}min"
    if ms >= 1000:
        return f"{ms / 1000:.3g}s"
    return f"{ms:.3g}ms"


def summary_percentiles(slas: Sequence[Constraint]) -> tuple[float, ...]:
    """The percentiles a summary must hold for these constraints (the defaults and theirs)."""
    extra = {c.percentile for c in slas if c.percentile is not None}
    return tuple(sorted(set(DEFAULT_PERCENTILES) | extra))


def level(values: Sequence[float], need: int) -> float:
    """The value that `need` of the replications stay at or under (need-th smallest)."""
    v = sorted(values)
    return float(v[min(need, len(v)) - 1])


def check_slas(reps: list[dict], slas: Sequence[Constraint], need: int) -> dict[str, dict]:
    """Each constraint's verdict on these replications: met in at least `need` of them, the level
    `need` of them stay under, and the median and 5-95% band."""
    out = {}
    for c in slas:
        vals = [float(r.get(c.key, math.nan)) for r in reps]
        vals = [v for v in vals if v == v]
        if not vals:
            raise PlanError(f"{c.label}: no such summary value (gateway_wait needs --max-concurrency)")
        n_ok = sum(1 for v in vals if c.ok(v))
        lv = level(vals, need)
        out[c.label] = {"ok": n_ok >= need, "passed": n_ok, "level_ms": lv, "bound_ms": c.bound_ms,
                        "median_ms": float(np.median(vals)), "lo_ms": float(np.percentile(vals, 5)),
                        "hi_ms": float(np.percentile(vals, 95)), "severity": lv / c.bound_ms}
    return out


def binding_constraint(reps: list[dict], slas: Sequence[Constraint]) -> tuple[str, dict]:
    """At the first failing staff count: the constraint failing in most replications
    (of those the search ran there), ties broken by how far over its bound it is."""
    best, key = None, None
    for c in slas:
        vals = [float(r.get(c.key, math.nan)) for r in reps]
        n_bad = sum(1 for v in vals if not c.ok(v))
        worst = max((v for v in vals if v == v), default=math.nan)
        k = (n_bad, worst / c.bound_ms if worst == worst else 0.0)
        if key is None or k > key:
            best, key = c, k
            detail = {"failed": n_bad, "replications": len(vals), "worst_ms": worst, "bound_ms": c.bound_ms,
                      "median_ms": float(np.median(vals))}
    return best.label, detail

