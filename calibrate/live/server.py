"""What a live server is: its model, context, KV cache and scheduler limits.

`read_server` asks /v1/models, /version and /metrics, and flags fill in what vLLM does not
export (`ServerFacts.origin` says where each fact came from).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from simulator.kvcache import kv_cache_size_tokens, layer_groups
from simulator.profile import EngineLimits, KVGroup, Profile, clamps_max_tokens

from ..server_flags import GB10_BATCH_DEFAULTS, vllm_batch_defaults
from .messages import LiveError

# vLLM 0.32's API-server defaults (calibrate.server_flags.vllm_batch_defaults) when the user gives no flag.
# A GPU's depend on its device, which the server does not tell (nor any of its figures: vLLM counts a
# prompt's tokens in vllm:iteration_tokens_total at its last chunk): the GB10's, the box capsim is for.
VLLM_DEFAULTS = {kind: {"max_num_batched_tokens": budget, "max_num_seqs": seqs, "async_scheduling": kind == "gpu"}
                 for kind, (budget, seqs) in (("cpu", vllm_batch_defaults(None, cpu=True)),
                                              ("gpu", GB10_BATCH_DEFAULTS))}


@dataclass
class ServerFacts:
    """What a live server tells about itself (and what flags filled in)."""

    url: str
    model: str
    max_model_len: int
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    kv_cache_size_tokens: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    async_scheduling: bool = True
    prefix_caching: bool | None = None  # /metrics' cache_config label (None: not read)
    kv_groups: tuple[KVGroup, ...] = ()
    num_blocks: int | None = None  # for the simulator (== num_gpu_blocks, or a single-group equivalent)
    server: str | None = None
    version: str | None = None
    origin: dict[str, str] = field(default_factory=dict)

    def engine_limits(self) -> EngineLimits:
        return EngineLimits(max_num_batched_tokens=self.max_num_batched_tokens, max_num_seqs=self.max_num_seqs,
                            max_model_len=self.max_model_len, num_blocks=self.num_blocks,
                            kv_groups=self.kv_groups or (KVGroup(self.block_size or 16),),
                            async_scheduling=self.async_scheduling, clamp_max_tokens=clamps_max_tokens(self.version),
                            prefix_caching=self.prefix_caching is not False)

    def server_dict(self) -> dict:
        """The `server` dict of ClosedRun / prior_profile."""
        return {"model": self.model, "max_model_len": self.max_model_len,
                "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "async_scheduling": self.async_scheduling, "vllm_version": self.version, "url": self.url,
                "num_gpu_blocks": self.num_gpu_blocks, "block_size": self.block_size,
                "kv_cache_size_tokens": self.kv_cache_size_tokens, "enable_prefix_caching": self.prefix_caching}

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["kv_groups"] = [dataclasses.asdict(g) for g in self.kv_groups]
        return d


def parse_kv_groups(spec: str) -> tuple[KVGroup, ...]:
    """'1x128,5x128@512': COUNTxBLOCK[@WINDOW] per kind of KV-cache group (window: sliding attention)."""
    out = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(?:(\d+)x)?(\d+)(?:@(\d+))?", part)
        if not m:
            raise LiveError(f"--kv-groups: cannot read {part!r} (expected COUNTxBLOCK[@WINDOW], e.g. 1x128,5x128@512)")
        out.append(KVGroup(int(m.group(2)), int(m.group(1) or 1), int(m.group(3)) if m.group(3) else None))
    if not out:
        raise LiveError("--kv-groups is empty")
    return tuple(out)


def kv_groups_from_hf_config(config: dict | str | Path, block_size: int) -> tuple[KVGroup, ...]:
    """vLLM's KV-cache groups of a hybrid model from its config.json (layer_types, sliding_window).

    Layers of one attention kind share groups of equal size, as vLLM groups them
    (simulator.kvcache.layer_groups): Gemma 3 270M's 3 full + 15 sliding layers make 1 full
    group and 5 sliding-window groups.
    """
    if not isinstance(config, dict):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError) as e:
            raise LiveError(f"--hf-config: cannot read {config} ({e})") from None
    cfg = config.get("text_config", config)
    types = cfg.get("layer_types")
    window = cfg.get("sliding_window")
    if not types or not window:
        return (KVGroup(block_size),)
    full = sum(1 for t in types if "sliding" not in str(t))
    sliding = len(types) - full
    if not sliding:
        return (KVGroup(block_size),)
    if not full:
        return (KVGroup(block_size, 1, int(window)),)
    _, (n_full, n_sliding) = layer_groups([full, sliding])
    return (KVGroup(block_size, n_full, None), KVGroup(block_size, n_sliding, int(window)))


def _get(http, path: str):
    try:
        r = http.get(path)
    except Exception as e:  # httpx errors
        raise LiveError(f"GET {http.base_url.join(path)}: cannot reach the server ({type(e).__name__}: {e})") from None
    return r


def _num(v) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def read_server(url: str, model: str | None = None, *, max_num_seqs: int | None = None,
                max_num_batched_tokens: int | None = None, async_scheduling: bool | None = None,
                kv_groups: str | Sequence[KVGroup] | None = None, hf_config: str | dict | None = None,
                api_key: str | None = None, timeout: float = 30.0, insecure: bool = False) -> ServerFacts:
    """Ask the server what it is; flags fill what it does not tell (see ServerFacts.origin)."""
    import httpx

    from measure.client import split_url, tls_check
    from measure.prom import info_labels, label_switch

    base, public, auth = split_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    origin: dict[str, str] = {}
    with httpx.Client(base_url=base, headers=headers, auth=auth, timeout=timeout, trust_env=False,
                      verify=tls_check(base, not insecure)) as http:
        r = _get(http, "/v1/models")
        if r.status_code != 200:
            raise LiveError(f"GET /v1/models at {public}: HTTP {r.status_code}")
        models = [m for m in (r.json().get("data") or []) if isinstance(m, dict)]
        if not models:
            raise LiveError(f"{public} serves no model")
        entry = models[0] if model is None else next((m for m in models if m.get("id") == model), None)
        if entry is None:
            raise LiveError(f"model {model!r} is not served by {public}")
        mml = _num(entry.get("max_model_len"))
        origin["max_model_len"] = "GET /v1/models" if mml else "unknown: 4096 assumed"
        facts = ServerFacts(url=public, model=str(entry["id"]), max_model_len=mml or 4096, origin=origin)
        r = _get(http, "/version")
        if r.status_code == 200:
            try:
                facts.version = str(r.json().get("version"))
            except ValueError:
                pass
        r = _get(http, "/metrics")
        text = r.text if r.status_code == 200 else ""
    cc = info_labels(text, "vllm:cache_config_info") or {}
    sc = info_labels(text, "capsim:scheduler_config_info") or {}
    facts.server = "capsim-twin" if sc else ("vllm" if cc or "vllm:" in text else None)
    facts.block_size = _num(cc.get("block_size"))
    facts.num_gpu_blocks = _num(cc.get("num_gpu_blocks"))
    facts.kv_cache_size_tokens = _num(cc.get("kv_cache_size_tokens"))
    facts.prefix_caching = label_switch(cc.get("enable_prefix_caching"))
    # vLLM's CPU build sizes its KV cache in bytes (VLLM_CPU_KVCACHE_SPACE) and uses 128-token blocks
    cpu = facts.block_size == 128 and cc.get("kv_cache_memory_bytes") not in (None, "None")
    defaults = VLLM_DEFAULTS["cpu" if cpu else "gpu"]
    kind = "vLLM CPU" if cpu else "vLLM GPU"
    for key, flag, conv in (("max_num_seqs", max_num_seqs, int), ("max_num_batched_tokens", max_num_batched_tokens, int),
                            ("async_scheduling", async_scheduling, bool)):
        if flag is not None:
            setattr(facts, key, conv(flag))
            origin[key] = "flag"
        elif key in sc:
            setattr(facts, key, sc[key] == "True" if key == "async_scheduling" else int(sc[key]))
            origin[key] = "/metrics capsim:scheduler_config_info"
        else:
            setattr(facts, key, defaults[key])
            device = "" if cpu or key == "async_scheduling" else "a GB10's; "
            origin[key] = f"not exported: {kind} default {defaults[key]} assumed ({device}pass it as a flag)"
    if "max_model_len" in sc and not mml:
        facts.max_model_len = int(sc["max_model_len"])
        origin["max_model_len"] = "/metrics capsim:scheduler_config_info"
    # KV cache layout
    bs = facts.block_size or 16
    if kv_groups is not None:
        groups = parse_kv_groups(kv_groups) if isinstance(kv_groups, str) else tuple(kv_groups)
        origin["kv_groups"] = "flag"
    elif hf_config is not None:
        groups = kv_groups_from_hf_config(hf_config, bs)
        origin["kv_groups"] = "from the model's config.json"
    else:
        groups = (KVGroup(bs),)
        origin["kv_groups"] = "one full-attention group (none given)"
    facts.kv_groups = groups
    if facts.num_gpu_blocks is None:
        facts.num_blocks = None
        origin["num_blocks"] = "not exported: KV capacity treated as not binding"
        return facts
    facts.num_blocks = facts.num_gpu_blocks
    origin["num_blocks"] = "/metrics vllm:cache_config_info num_gpu_blocks"
    if facts.kv_cache_size_tokens:
        want = facts.kv_cache_size_tokens
        got = _kv_figure(facts.engine_limits(), want)
        if got is not None and not _agree(got, want, facts.max_model_len):
            if origin["kv_groups"].startswith("one full"):
                # a hybrid cache the flags did not describe: the single-group equivalent
                facts.num_blocks = max(1, want // bs)
                origin["num_blocks"] = (f"kv_cache_size_tokens {want} / block_size {bs} (the server's pool of "
                                        f"{facts.num_gpu_blocks} blocks holds more than one KV group; pass "
                                        "--kv-groups or --hf-config for the exact layout)")
            else:
                origin["kv_groups"] += (f" -- WARNING: implies {got} KV tokens, the server reports {want}")
        else:
            origin["kv_groups"] += f" (consistent with kv_cache_size_tokens {want})"
    return facts


def _kv_figure(limits, want: int) -> int | None:
    """The KV-cache figure (kv_cache_size_tokens) these limits give, as the server's build counts it: vLLM
    0.32 sizes sliding-window groups for every batch in flight (two with async scheduling), earlier builds
    for one, and the version alone does not say which a build does. The one nearer the server's `want`."""
    figures = [f for f in (kv_cache_size_tokens(limits), kv_cache_size_tokens(limits, 1)) if f is not None]
    return min(figures, key=lambda f: abs(f - want), default=None)


def _agree(got: int, want: int, max_model_len: int) -> bool:
    """A layout's KV-cache figure is the server's: within the larger of 3 % of it and 5 % of max_model_len
    (a small pool, whose figure the rounding of whole blocks moves by a larger share)."""
    return abs(got - want) <= max(0.03 * want, 0.05 * max_model_len)


def apply_server_limits(profile: Profile, facts: ServerFacts) -> Profile:
    """A copy of `profile` with the limits the live server (or a flag) told; assumed defaults are ignored.

    For validating a profile against a server restarted with other limits (a smaller KV cache,
    fewer sequences) without re-calibrating: the step-time model stays, the scheduler changes.
    """
    p = profile.copy()
    e = p.engine
    told = lambda k: facts.origin.get(k, "").startswith(("flag", "/metrics", "GET"))  # noqa: E731
    for k in ("max_num_seqs", "max_num_batched_tokens", "async_scheduling", "max_model_len"):
        if told(k):
            setattr(e, k, getattr(facts, k))
    if facts.origin.get("kv_groups", "").startswith(("flag", "from the model")):
        e.kv_groups = facts.kv_groups
        e.num_blocks = facts.num_blocks
    elif facts.num_gpu_blocks is not None:
        trial = dataclasses.replace(e, num_blocks=facts.num_gpu_blocks)
        want = facts.kv_cache_size_tokens
        got = _kv_figure(trial, want) if want else None
        # the profile's own layout, if it explains the server's pool; else the single-group equivalent
        if got is None or _agree(got, want, e.max_model_len):
            e.num_blocks = facts.num_gpu_blocks
        else:
            e.kv_groups = facts.kv_groups
            e.num_blocks = facts.num_blocks
    p.engine = e
    return p.validate()
