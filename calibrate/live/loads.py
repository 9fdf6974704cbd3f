"""The open-loop loads live validation runs.

`LiveLoad` is one vllm bench serve random-dataset test in model time; `seed_loads` scales the
seed's tests H and J to a server; `load_loads` reads them from a JSON file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from simulator.load import OpenLoop
from simulator.profile import Profile, load_profile
from simulator.sim import simulate_open
from simulator.workload import RandomWorkload, RequestSpec

from .messages import LiveError

log = logging.getLogger("capsim.calibrate.live.loads")


@dataclass
class LiveLoad:
    """One open-loop test: vllm bench serve's random dataset, in model time."""

    name: str
    input_len: int
    output_len: int
    num_prompts: int
    rate: float
    range_ratio: float = 0.0
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    endpoint: str = "completions"

    def workload(self) -> RandomWorkload:
        return RandomWorkload(self.input_len, self.output_len, self.range_ratio)

    def pattern(self, clock_scale: float = 1.0) -> OpenLoop:
        return OpenLoop(rate=self.rate * clock_scale, burstiness=self.burstiness,
                        max_concurrency=self.max_concurrency, seed=self.seed)

    def params(self) -> dict:
        chat = self.endpoint == "chat"
        return {"backend": "openai-chat" if chat else "vllm",
                "endpoint": "/v1/chat/completions" if chat else "/v1/completions", "dataset_name": "random",
                "random_input_len": self.input_len, "random_output_len": self.output_len,
                "random_range_ratio": self.range_ratio, "random_prefix_len": 0, "num_prompts": self.num_prompts,
                "request_rate": self.rate, "burstiness": self.burstiness, "max_concurrency": self.max_concurrency,
                "seed": self.seed, "ignore_eos": True}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def single_request_seconds(profile: Profile, prompt: int, output: int) -> float:
    """End-to-end latency of one request alone on the box."""
    spec = RequestSpec(prompt_tokens=prompt, max_tokens=output, output_tokens=output)
    sim = simulate_open(profile, [spec], OpenLoop(rate=math.inf))
    return float(sim.records[0].e2el or math.nan)


def seed_loads(profile: Profile, max_model_len: int | None = None, scale: float | None = None,
               length_scale: float | None = None, budget_s: float = 600.0, endpoint: str = "completions"
               ) -> list[LiveLoad]:
    """The seed's open-loop tests H and J (random 4000/500, range 0.9) scaled to this server.

    - token lengths x `length_scale` (default: the largest request fills at most 45% of
      max_model_len, never more than the seed's);
    - request rates x `scale` (default: the seed box's single-request latency for the
      original shape over this box's for the scaled shape, so each load is about as
      heavy relative to the box as it was on the DGX Spark);
    - num_prompts cut so that each load's arrivals span at most its share of `budget_s`.
    I (ShareGPT: real text, lengths cannot be scaled) is left out. Each scaling is told
    (logging, "capsim.calibrate.live.loads", INFO).
    """
    from ..seed import seed_open_runs

    ref = load_profile("spark-gemma4-26b-a4b")
    mml = max_model_len or profile.engine.max_model_len
    loads = []
    runs = [r for r in seed_open_runs() if r.dataset == "random"]
    for run in runs:
        p = run.params
        n_in, n_out, rr = int(p["random_input_len"]), int(p["random_output_len"]), float(p["random_range_ratio"] or 0)
        ls = length_scale if length_scale is not None else min(1.0, 0.45 * mml / ((n_in + n_out) * (1 + rr)))
        i2, o2 = max(16, int(round(n_in * ls))), max(4, int(round(n_out * ls)))
        k = scale
        if k is None:
            k = single_request_seconds(ref, n_in + 13, n_out) / single_request_seconds(profile, i2 + 1, o2)
        rate = float(p["request_rate"]) * k
        n = int(p["num_prompts"])
        n2 = max(8, min(n, int(rate * budget_s / max(1, len(runs)))))
        mc = p.get("max_concurrency")
        loads.append(LiveLoad(name=f"{run.test}-scaled", input_len=i2, output_len=o2, range_ratio=rr, num_prompts=n2,
                              rate=rate, burstiness=float(p.get("burstiness") or 1.0),
                              max_concurrency=int(mc) if mc else None, seed=int(p.get("seed") or 0),
                              endpoint=endpoint))
        log.info(f"  {run.test}: {n_in}/{n_out} tokens -> {i2}/{o2} (x{ls:.3g}); {p['request_rate']}/s -> "
                 f"{rate:.3g}/s (x{k:.3g}); {n} -> {n2} prompts")
    return loads


def load_loads(path: str) -> list[LiveLoad]:
    """Loads from a JSON file: a list of LiveLoad fields."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise LiveError(f"--loads {path}: {e}") from None
    fields = [f.name for f in dataclasses.fields(LiveLoad)]
    required = [f.name for f in dataclasses.fields(LiveLoad) if f.default is dataclasses.MISSING]
    if not isinstance(items, list) or not items:
        raise LiveError(f"--loads {path}: expected a non-empty JSON list of loads, each an object of "
                        f"{', '.join(fields)}")
    for i, d in enumerate(items, 1):
        if not isinstance(d, dict):
            said = "is not a JSON object"
        elif missing := [k for k in required if k not in d]:
            said = "has no " + ", ".join(missing)
        elif unknown := [k for k in d if k not in fields]:
            said = "has unknown " + ", ".join(unknown)
        else:
            continue
        raise LiveError(f"--loads {path}: load {i} {said} (a load's fields: {', '.join(fields)})")
    return [LiveLoad(**d) for d in items]
