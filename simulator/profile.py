"""Profile: everything capsim knows about one box, stored as JSON.

Engine limits (vLLM's scheduler knobs), the KV-cache layout and capacity, the
step-time model, per-request API overhead, step-time noise, the prompt format,
model facts, and provenance (which runs it was fitted on, the residuals).
"""
from __future__ import annotations

import copy
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import CapsimError
from .stepmodel import CHAT_ROUTING_SPREAD, PhysicalStepModel, StepModel, step_model_from_json
from .uncertainty import Uncertainty
from .workload import PromptFormat


class ProfileError(CapsimError):
    """A missing or malformed profile; the message is one line for the user."""


@dataclass(frozen=True)
class KVGroup:
    """A KV-cache group of vLLM's (hybrid) allocator; all groups share one block pool."""

    block_size: int
    count: int = 1  # groups of this kind (Gemma 4: 1 full + 5 sliding)
    window: int | None = None  # sliding window in tokens; None = full attention


@dataclass
class EngineLimits:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int = 131072
    num_blocks: int | None = None  # None: KV capacity unknown/not binding
    kv_groups: tuple[KVGroup, ...] = (KVGroup(16),)
    async_scheduling: bool = True
    reserve_full_prompt: bool = True  # vLLM's scheduler_reserve_full_isl
    long_prefill_token_threshold: int = 0
    # Speculative decoding (--speculative-config): each decode step verifies up to this many draft
    # tokens per request (the token budget counts them) and keeps the accepted prefix plus one.
    num_speculative_tokens: int = 0
    # Chance that a draft token is accepted given the one before it was (per-position, geometric).
    spec_acceptance: float = 0.0
    # A request whose prompt + max_tokens passes max_model_len: vLLM >= 0.32 serves it with max_tokens cut
    # to the context left; up to 0.31 it was refused (HTTP 400). See clamps_max_tokens.
    clamp_max_tokens: bool = False
    # vLLM's --enable-prefix-caching (on by default in V1): the prefix every request of a load shares
    # (vllm bench serve's --random-prefix-len) is found cached, its whole blocks not computed again
    prefix_caching: bool = False

    def validate(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ProfileError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ProfileError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_model_len < 2:
            raise ProfileError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ProfileError(f"num_blocks must be >= 1 or null, got {self.num_blocks}")
        if not self.kv_groups or any(g.block_size < 1 or g.count < 1 for g in self.kv_groups):
            raise ProfileError("kv_groups need block_size >= 1 and count >= 1")
        if not 0 <= self.num_speculative_tokens <= 64:
            raise ProfileError(f"num_speculative_tokens must be in 0..64, got {self.num_speculative_tokens}")
        if not (_number(self.spec_acceptance) and 0.0 <= self.spec_acceptance < 1.0):
            raise ProfileError(f"spec_acceptance must be a number in [0, 1), got {self.spec_acceptance!r}")

    @property
    def tokens_per_spec_step(self) -> float:
        """Mean tokens a decode step emits per request: 1 + the accepted drafts, (1 - a^(k+1)) / (1 - a)."""
        a, k = self.spec_acceptance, self.num_speculative_tokens
        return (1 - a ** (k + 1)) / (1 - a) if k and a else 1.0

    @property
    def kv_capacity_tokens(self) -> int | None:
        """Context tokens the cache holds for one long request (full-attention view)."""
        if self.num_blocks is None:
            return None
        full = [g for g in self.kv_groups if g.window is None]
        if not full:
            return None
        per_token_blocks = sum(g.count / g.block_size for g in full)
        fixed = sum(g.count * (math.ceil(g.window / g.block_size) + 1) for g in self.kv_groups if g.window)
        return int(max(0, self.num_blocks - fixed) / per_token_blocks)


def clamps_max_tokens(vllm_version: str | None) -> bool:
    """Whether a vLLM of this version serves prompt + max_tokens past max_model_len, cutting max_tokens.

    vLLM 0.32.0 stopped subtracting max_tokens from the prompt's allowance (renderers/params.py
    TokenizeParams.max_input_tokens) and clamps it in entrypoints/serve/utils/api_utils.get_max_tokens;
    0.31.0 still refused the request. A version that does not read as one (None, "fake-0.1") is
    taken for the older rule, which refuses what the newer might serve: an unknown server is not
    credited with answers it may refuse.
    """
    m = re.match(r"\s*v?(\d+)\.(\d+)", str(vllm_version or ""))
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (0, 32)


def refused_for_length(prompt_tokens: int, max_tokens: int, max_model_len: int, clamp_max_tokens: bool) -> bool:
    """Whether vLLM refuses a request for its length alone (HTTP 400). Clamping (>= 0.32), it refuses a
    max_tokens past max_model_len (TokenizeParams), a prompt past it, and a prompt that fills it (max_tokens
    cut to 0 fails SamplingParams); before, any prompt + max_tokens past it."""
    if clamp_max_tokens:
        return max_tokens > max_model_len or prompt_tokens >= max_model_len
    return prompt_tokens + max_tokens > max_model_len


@dataclass
class ApiOverhead:
    """Time outside the engine's steps.

    The API server is one process: requests pass its frontend (chat template,
    tokenization) one at a time, so requests sent together reach the engine
    staggered; an idle engine needs `wake_s` from an arrival to its first schedule
    and takes every request that arrived by then.
    """

    request_s: float = 0.02  # client send -> API server (HTTP, network), in parallel
    chunk_s: float = 0.001  # step end -> chunk at the client (detokenize, SSE)
    frontend_s: float = 0.001  # serial frontend time per request
    frontend_per_token_s: float = 2e-6  # serial frontend time per prompt token
    wake_s: float = 0.002  # idle engine: arrival -> first schedule


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# step-model parameters that times are divided by (physical model's rates)
_STEP_RATES = ("bw_weights", "bw_kv", "flops", "attn_flops")


def _check_step_model(m: StepModel) -> None:
    """Every numeric step-model parameter finite and >= 0, the rates > 0, and the model's own check() (a
    profile edit is no exception)."""
    for f in fields(m):
        v = getattr(m, f.name)
        numeric = str(f.type).split(" |")[0] in ("float", "int")
        if v is None or not (numeric or isinstance(v, numbers.Real)) or isinstance(v, bool):
            continue
        need = "> 0" if f.name in _STEP_RATES else ">= 0"
        if not _number(v) or v < 0 or (f.name in _STEP_RATES and v == 0):
            raise ProfileError(f"step_model.{f.name} must be a finite number {need}, got {v!r}")
    try:
        m.check()
    except ValueError as ex:
        raise ProfileError(f"step_model.{ex}") from None


@dataclass
class Profile:
    name: str
    engine: EngineLimits
    step_model: StepModel
    api: ApiOverhead = field(default_factory=ApiOverhead)
    step_noise_cv: float = 0.0  # lognormal multiplicative noise per step
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    model: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    uncertainty: Uncertainty | None = None  # fitted profiles: what replications draw from

    def validate(self) -> "Profile":
        for k in ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "num_blocks",
                  "long_prefill_token_threshold", "num_speculative_tokens"):
            v = getattr(self.engine, k)
            if v is None and k == "num_blocks":  # capacity not known: not binding
                continue
            if not (_number(v) and float(v).is_integer()):
                raise ProfileError(f"{k} must be a whole number, got {v!r}")
        self.engine.validate()
        if not _number(self.step_noise_cv) or self.step_noise_cv < 0:
            raise ProfileError(f"step_noise_cv must be a finite number >= 0, got {self.step_noise_cv!r}")
        for k, v in asdict(self.api).items():
            if not _number(v) or v < 0:
                raise ProfileError(f"api.{k} must be a finite number >= 0, got {v!r}")
        _check_step_model(self.step_model)
        return self

    def copy(self) -> "Profile":
        return copy.deepcopy(self)

    def for_traffic(self, mixed_topics: bool) -> "Profile":
        """The profile serving this traffic: unrelated conversations (`Workload.mixed_topics`) route a
        mixture of experts' decode steps CHAT_ROUTING_SPREAD of the way to independent tokens; other
        traffic, models without experts, and a profile whose spread is set already (drawn for a
        replication) are the profile itself."""
        if not mixed_topics or not getattr(self.step_model, "n_experts", 0) or self.step_model.routing_spread:
            return self
        p = self.copy()
        p.step_model.routing_spread = CHAT_ROUTING_SPREAD
        return p

    # ----------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        e = asdict(self.engine)
        e["kv_groups"] = [asdict(g) for g in self.engine.kv_groups]
        return {
            "name": self.name,
            "engine": e,
            "step_model": self.step_model.to_json(),
            "api": asdict(self.api),
            "step_noise_cv": self.step_noise_cv,
            "prompt_format": asdict(self.prompt_format),
            "model": self.model,
            "provenance": self.provenance,
        } | ({"uncertainty": self.uncertainty.to_json()} if self.uncertainty is not None else {})

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "profile") -> "Profile":
        try:
            e = dict(d["engine"])
            e["kv_groups"] = tuple(KVGroup(**g) for g in e.get("kv_groups", [{"block_size": 16}]))
            prof = cls(
                name=str(d.get("name", where)),
                engine=EngineLimits(**e),
                step_model=step_model_from_json(d["step_model"]),
                api=ApiOverhead(**d.get("api", {})),
                step_noise_cv=float(d.get("step_noise_cv", 0.0)),
                prompt_format=PromptFormat(**d.get("prompt_format", {})),
                model=dict(d.get("model", {})),
                provenance=dict(d.get("provenance", {})),
                uncertainty=Uncertainty(**d["uncertainty"]).validate() if d.get("uncertainty") else None,
            )
        except KeyError as ex:
            raise ProfileError(f"{where}: missing key {ex.args[0]!r}") from None
        except (TypeError, ValueError) as ex:
            raise ProfileError(f"{where}: {ex}") from None
        return prof.validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def shipped_profiles() -> dict:
    """The shipped profiles by name: calibrate's (fitted from the spark-bench runs) first, then the simulator's."""
    out = {}
    for pkg in ("calibrate", "simulator"):
        try:
            folder = resources.files(pkg).joinpath("profiles")
        except ModuleNotFoundError:  # the simulator alone, without calibrate
            continue
        for f in sorted(folder.iterdir(), key=lambda f: f.name) if folder.is_dir() else ():
            if f.name.endswith(".json"):
                out.setdefault(f.name[:-len(".json")], f)
    return out


def load_profile(path_or_name: str | Path | None = None) -> Profile:
    """A profile from a JSON file, or a shipped one by name (default: the seed's Spark)."""
    if path_or_name is None:
        path_or_name = DEFAULT_PROFILE
    p = Path(path_or_name)
    if p.suffix != ".json" and not p.exists():
        shipped = shipped_profiles()
        if p.name in shipped:
            return Profile.from_json(json.loads(shipped[p.name].read_text()), where=p.name)
        raise ProfileError(f"no profile file or shipped profile named {str(path_or_name)!r} "
                           f"(shipped: {', '.join(shipped)})")
    try:
        text = p.read_text()
    except OSError as ex:
        raise ProfileError(f"{p}: cannot read profile ({ex.strerror or ex})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as ex:
        raise ProfileError(f"{p}: malformed JSON ({ex.msg} at line {ex.lineno} col {ex.colno})") from None
    if not isinstance(d, dict):
        raise ProfileError(f"{p}: a profile must be a JSON object")
    return Profile.from_json(d, where=str(p))


# Overridden once calibration ships a fitted profile of the seed's box.
DEFAULT_PROFILE = "spark-gemma4-26b-a4b"


def gemma4_spark_physics() -> Profile:
    """The seed's box from first principles (reference/vllm-and-spark-physics.md).

    vLLM 0.20.1 on a GB10 with no --max-num-batched-tokens: NVML reports no
    device memory, so the API server gets 2048 tokens / 256 seqs. KV at
    gpu_memory_utilization 0.95: about 211k blocks of 5 x 64 KiB; Gemma 4's
    hybrid cache is 1 full-attention group (block 32) + 5 sliding groups
    (block 16, window 1024) sharing the pool.
    """
    return Profile(
        name="spark-gemma4-26b-a4b-physics",
        engine=EngineLimits(max_num_batched_tokens=2048, max_num_seqs=256, max_model_len=131072,
                            num_blocks=211371,
                            kv_groups=(KVGroup(32, 1, None), KVGroup(16, 5, 1024)),
                            async_scheduling=True, reserve_full_prompt=True),
        step_model=PhysicalStepModel(),
        api=ApiOverhead(request_s=0.02, chunk_s=0.001),
        step_noise_cv=0.0,
        prompt_format=PromptFormat(special_tokens=1, chat_template_tokens=13, vocab_size=262144),
        model={"name": "google/gemma-4-26B-A4B-it", "weights": "bf16", "kv_cache_dtype": "fp8",
               "params_total": 25.23e9, "params_active": 3.82e9, "layers": 30, "sliding_layers": 25,
               "full_layers": 5, "n_experts": 128, "top_k": 8, "box": "NVIDIA DGX Spark (GB10, 273 GB/s)"},
        provenance={"source": "hand-set from reference/vllm-and-spark-physics.md (sections 2-5)", "fitted_on": []},
    )
