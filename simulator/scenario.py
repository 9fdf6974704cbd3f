"""Scenarios: a named what-if for a plan, profile edits (`weights=fp8`) plus the serving setup
(boxes behind a router, routing, prefix-cache hit rate), and their `--compare` grammar
(`fp8:weights=fp8,max_num_seqs=64`). `plan` runs one scenario; `--compare` runs several.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .office import ROUTINGS
from .profile import Profile
from .sla import PlanError
from .whatif import apply_edits


SCENARIO_KEYS = ("boxes", "routing", "prefix_hit")


@dataclass(frozen=True)
class Scenario:
    """A named what-if: profile edits (whatif.apply_edits) plus serving-setup keys.

    boxes: identical engines behind a router; routing: round-robin or
    least-loaded; prefix_hit: prefix-cache hit rate (share of prompt tokens
    that need no prefill).
    """

    name: str = "base"
    edits: tuple[str, ...] = ()
    boxes: int = 1
    routing: str = "round-robin"
    prefix_hit: float = 0.0

    def __post_init__(self):
        if self.boxes < 1:
            raise PlanError(f"boxes must be >= 1, got {self.boxes}")
        if self.routing not in ROUTINGS:
            raise PlanError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        if not 0.0 <= self.prefix_hit < 1.0:
            raise PlanError(f"prefix_hit must be in [0, 1), got {self.prefix_hit}")

    def apply(self, profile: Profile) -> Profile:
        return apply_edits(profile, self.edits) if self.edits else profile

    def with_edits(self, edits: Sequence[str], name: str | None = None) -> "Scenario":
        """This scenario plus `key=value` edits; serving-setup keys are split off."""
        kw: dict = {}
        prof: list[str] = []
        for e in edits:
            if "=" not in e:
                raise PlanError(f"expected KEY=VALUE, got {e!r}")
            k, v = (s.strip() for s in e.split("=", 1))
            k = k.replace("-", "_")
            if k == "boxes":
                try:
                    kw["boxes"] = int(v)
                except ValueError:
                    raise PlanError(f"boxes must be a whole number, got {v!r}") from None
            elif k == "routing":
                kw["routing"] = v.replace("_", "-")
            elif k in ("prefix_hit", "prefix_cache_hit"):
                try:
                    kw["prefix_hit"] = float(v)
                except ValueError:
                    raise PlanError(f"prefix_hit must be a number, got {v!r}") from None
            else:
                prof.append(f"{k}={v}")
        return replace(self, name=name or self.name, edits=self.edits + tuple(prof), **kw)

    def describe(self) -> dict:
        return {"name": self.name, "edits": list(self.edits), "boxes": self.boxes, "routing": self.routing,
                "prefix_hit": self.prefix_hit}


def parse_scenario(text: str, base: Scenario | None = None) -> Scenario:
    """'fp8:weights=fp8,max_num_seqs=64', 'two:boxes=2,routing=least-loaded', 'base'."""
    base = base or Scenario()
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise PlanError(f"--compare {text!r}: a scenario needs a name, e.g. fp8:weights=fp8")
    edits = [e.strip() for e in rest.split(",") if e.strip()] if colon else []
    if not colon and "=" in name:
        edits, name = [name], name  # a bare 'weights=fp8' names itself
    return base.with_edits(edits, name=name)
