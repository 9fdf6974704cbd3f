"""vLLM's own benchmark code, run in the vLLM venv, as the oracle for the conformance tests.

Run with the vLLM venv's python (never capsim's)::

    $CAPSIM_VLLM_PYTHON tests/vllm_oracle.py < job.json

`job.json` is a list of jobs; the script prints one JSON list with one answer per job.
Every answer comes from vLLM 0.32's code in `vllm.benchmarks` itself: `vllm bench
serve`'s CLI parser and defaults, its seeding (`random.seed`, `np.random.seed` as in
`main_async`), `get_samples` with its dataset classes, `get_request` for the arrival
schedule and `calculate_metrics` for the metrics. Nothing here re-implements a rule.

Jobs:
  {"kind": "pipeline", "argv": [...bench serve flags...], "tokenizer": DIR}
      -> {"offsets": [...], "rates": [...], "prompt_len": [...], "expected_output_len": [...],
          "prompts": [...] if job["prompts"]}   (vllm bench serve's samples and send schedule)
      (+ "input_lens", "output_lens", "token_offsets" for the random dataset: its raw draw)
  {"kind": "defaults", "argv": [...], "keys": [...]} -> {flag: parsed value}
  {"kind": "vocab", "tokenizer": DIR} -> {"vocab_size", "all_special_ids"}   (the tokenizer's own figures)
  {"kind": "engine_flags", "argv": [...vllm serve flags...], "keys": [...]}
      -> {key: parsed value} or {"error": "refused"}   (EngineArgs' parser: what `vllm serve` reads)
  {"kind": "context_limit", "max_model_len": N, "prompt": P, "max_tokens": M}
      -> {"max_tokens": served} or {"error": ...}   (the chat endpoint's length checks and clamp)
  {"kind": "kv_capacity", "model": DIR, "groups": [[block_size, count, window | null], ...],
   "num_blocks": N, "max_model_len": M, "max_num_batched_tokens": B, "async_scheduling": bool}
      -> {"kv_cache_size_tokens": tokens, "in_flight_tokens": ...}   (get_kv_cache_capacity)
  {"kind": "kv_groups", "model": DIR, "layer_types": [...], "window": W, "block_size": B}
      -> {"groups": [[block_size, count, window | null], ...]}   (get_kv_cache_groups on such layers)
  {"kind": "kv_holds", "block_size": B, "window": W | null, "chunks": [...]}
      -> {"held": [...]}   (blocks one request holds after each step, vLLM's KV-cache manager)
  {"kind": "kv_shared", "groups": [[block_size, count, window | null], ...], "num_blocks": N, "prefix": H,
   "prompts": [P, ...], "warm": bool}
      -> {"hits": [...], "used": [...]}   (vLLM's KV-cache manager with prefix caching: if warm, a probe of the
         H-token prefix allocated and freed; then each prompt (the prefix, then tokens of its own) allocated
         whole in turn; each one's cache hit and the blocks in use after it)
  {"kind": "kv_evict", "groups": [[block_size, count, window | null], ...], "num_blocks": N,
   "runs": [[["admit", name, tokens] | ["hit", name] | ["preempt", name] | ["finish", name] | ["grow", name, tokens],
             ...], ...]}
      -> {"hits": [[...], ...]}   (vLLM's KV-cache manager with prefix caching, each run afresh: each admission's
         or "hit"'s cache hit, a request admitted again finding what of its freed blocks is left)
  {"kind": "metrics", "outputs": [RequestFuncOutput fields...], "dur_s": D,
   "percentiles": [...], "tokenizer": DIR | null}
      -> {key: value}   (calculate_metrics' BenchmarkMetrics, keyed as the result JSON)
  {"kind": "histograms", "observe": {family: [values]}}
      -> {family: [exposition lines]}   (the family's bucket bounds from vllm.v1.metrics.buckets, in the
         prometheus_client Histogram vLLM's stat logger uses, as /metrics writes it: series `h`, label m="x")
  {"kind": "batch_defaults", "memory": BYTES | null, "name": DEVICE, "cpu": bool}
      -> {"max_num_batched_tokens", "max_num_seqs"}   (vllm serve's defaults on such a device)
  {"kind": "timeline", "results": [per-request dicts], "thresholds": [lo_s, hi_s]}
      -> {"segments": [{"request_id", "start", "end", "type", "duration"}], "colors": {label: color}}
         (generate_timeline_plot's data for plotly, the --plot-timeline figure's bars and legend)
  {"kind": "spec_metrics", "texts": [/metrics text, ...]}
      -> {"counters": [{"num_drafts", "num_draft_tokens", "num_accepted_tokens", "accepted_per_pos"} | null]}
         (fetch_spec_decode_metrics: the speculative decoding counters vllm bench serve reads off /metrics)
  {"kind": "stream", "endpoint": "chat" | "completions", "reads": [latin-1 text of each read]}
      -> {"success", "ttft", "itl", "latency", "output_tokens", "generated_text", "error"}
         (the request function's RequestFuncOutput, each read one second after the one before)
"""
from __future__ import annotations

import asyncio
import os
import random
import sys
import types

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

_TOKENIZERS: dict = {}


def tokenizer(path):
    """The tokenizer as `vllm bench serve --tokenizer PATH` loads it."""
    if path is None:
        return None
    if path not in _TOKENIZERS:
        from vllm.tokenizers import get_tokenizer
        _TOKENIZERS[path] = get_tokenizer(path, tokenizer_mode="auto", trust_remote_code=False)
    return _TOKENIZERS[path]


def send_offsets(serve, requests, rate, burstiness, ramp=(None, None, None), rates=None):
    """get_request's schedule: the sleep target of every request on a frozen clock.

    With `time.time()` frozen at 0, get_request sleeps exactly `delay_ts[i]` before
    yielding request i (and does not sleep when delay_ts[i] == 0). `ramp`: its
    ramp-up strategy, start and end rps; the rate it yields with each request is
    appended to `rates` where one is given.
    """
    slept: list[float] = []

    async def fake_sleep(s):
        slept.append(float(s))

    real_time, real_asyncio = serve.time, serve.asyncio
    serve.time = types.SimpleNamespace(time=lambda: 0.0, perf_counter=lambda: 0.0)
    serve.asyncio = types.SimpleNamespace(sleep=fake_sleep)
    offsets: list[float] = []

    async def drive():
        seen = 0
        async for _req, yielded in serve.get_request(requests, rate, burstiness, *ramp):
            offsets.append(slept[-1] if len(slept) > seen else 0.0)
            if rates is not None:
                rates.append(float(yielded))
            seen = len(slept)

    try:
        asyncio.run(drive())
    finally:
        serve.time, serve.asyncio = real_time, real_asyncio
    return offsets


def _parser():
    """vllm bench serve's own argument parser."""
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    return parser


def _parse(argv):
    return _parser().parse_args(argv)


def pipeline(job):
    """vllm bench serve's main_async up to the first request: parse, seed, sample, schedule.

    The random dataset's raw draw (get_sampling_params: input lengths, output lengths,
    token offsets) is read off vLLM's own helper as RandomDataset calls it.
    """
    from vllm.benchmarks import serve
    import vllm.benchmarks.datasets.datasets as dmod

    args = _parse(job["argv"])
    random.seed(args.seed)  # main_async's first two lines
    np.random.seed(args.seed)
    tok = tokenizer(job["tokenizer"])
    drawn = {}
    real = dmod.get_sampling_params

    def spy(*a, **k):
        out = real(*a, **k)
        drawn["out"] = out
        return out

    dmod.get_sampling_params = spy
    try:
        samples = dmod.get_samples(args, tok)
    finally:
        dmod.get_sampling_params = real
    rates: list[float] = []
    offsets = send_offsets(serve, samples, args.request_rate, args.burstiness,
                           (args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps), rates)
    out = {
        "offsets": offsets, "rates": rates,
        "prompt_len": [int(s.prompt_len) for s in samples],
        "expected_output_len": [int(s.expected_output_len) for s in samples],
        "seed": args.seed, "request_rate": args.request_rate, "burstiness": args.burstiness,
    }
    if job.get("prompts"):
        out["prompts"] = [s.prompt if isinstance(s.prompt, str) else None for s in samples]
    if "out" in drawn:
        i, o, off = drawn["out"]
        out |= {"input_lens": [int(x) for x in i], "output_lens": [int(x) for x in o],
                "token_offsets": [int(x) for x in off]}
    return out


def serve_flags(job):
    """Every option of vllm bench serve's parser: its spellings, whether it takes a value, and its default."""
    return [{"opts": list(a.option_strings), "takes_value": a.nargs != 0, "default": repr(a.default)}
            for a in _parser()._actions if a.option_strings]


def defaults(job):
    """vllm bench serve's parsed flags (its defaults when argv names only the model)."""
    args = _parse(job["argv"])
    return {k: getattr(args, k) for k in job["keys"]}


def metrics(job):
    from vllm.benchmarks import serve
    from vllm.benchmarks.datasets.datasets import SampleRequest
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput

    outs = [RequestFuncOutput(**o) for o in job["outputs"]]
    reqs = [SampleRequest(prompt="x", prompt_len=o.prompt_len, expected_output_len=o.output_tokens) for o in outs]
    serve.TERM_PLOTLIB_AVAILABLE = False
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # it prints failed requests and a tip
    try:
        m, actual = serve.calculate_metrics(input_requests=reqs, outputs=outs, dur_s=job["dur_s"],
                                            tokenizer=tokenizer(job.get("tokenizer")),
                                            selected_percentiles=job["percentiles"], goodput_config_dict={})
    finally:
        sys.stdout = real_stdout
    # keyed as benchmark() writes its result JSON
    res = {"duration": job["dur_s"], "completed": m.completed, "failed": m.failed,
           "total_input_tokens": m.total_input, "total_output_tokens": m.total_output,
           "request_throughput": m.request_throughput, "output_throughput": m.output_throughput,
           "total_token_throughput": m.total_token_throughput,
           "max_output_tokens_per_s": m.max_output_tokens_per_s,
           "max_concurrent_requests": m.max_concurrent_requests}
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            res[f"{stat}_{name}_ms"] = float(getattr(m, f"{stat}_{name}_ms"))
        for p, v in getattr(m, f"percentiles_{name}_ms"):
            p_word = str(int(p)) if int(p) == p else str(p)
            res[f"p{p_word}_{name}_ms"] = float(v)
    res["actual_output_lens"] = [int(x) for x in actual]
    return res


def engine_flags(job):
    """`vllm serve`'s reading of its engine flags (EngineArgs' parser), or the parser's refusal."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    real_stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # argparse prints its usage on a refusal
    try:
        args = parser.parse_args(job["argv"])
    except SystemExit:
        return {"error": "refused"}
    finally:
        sys.stderr.close()
        sys.stderr = real_stderr
    return {k: getattr(args, k) for k in job["keys"]}


def context_limit(job):
    """What `vllm serve`'s chat endpoint does with a prompt of `prompt` tokens and `max_tokens` on a
    server of `max_model_len`: the max_tokens it runs the request with, or its refusal (HTTP 400).
    The path of chat_completion/serving.py: the request's TokenizeParams check the prompt's tokens,
    get_max_tokens clamps, to_sampling_params builds (and checks) the SamplingParams."""
    from types import SimpleNamespace

    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
    from vllm.exceptions import VLLMValidationError

    mml = job["max_model_len"]
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=job["max_tokens"])
    try:
        params = req.build_tok_params(SimpleNamespace(max_model_len=mml))
        params.apply_post_tokenization(None, {"prompt_token_ids": list(range(job["prompt"]))})
        max_tokens = get_max_tokens(mml, req.max_tokens, job["prompt"], {})
        return {"max_tokens": req.to_sampling_params(max_tokens, {}).max_tokens}
    except (VLLMValidationError, ValueError) as ex:  # the server answers either with HTTP 400
        return {"error": str(ex).splitlines()[0]}


_VLLM_CONFIGS: dict = {}


def _kv_spec(block_size, window):
    """A full-attention (window None) or sliding-window layer spec of one KV head: block counts do not
    depend on the bytes a block holds."""
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

    kw = dict(block_size=block_size, num_kv_heads=1, head_size=64, dtype=torch.bfloat16)
    return FullAttentionSpec(**kw) if window is None else SlidingWindowSpec(**kw, sliding_window=window)


def _vllm_config(model, mml, budget):
    """A VllmConfig of these limits (built once per limits: it loads the model's config)."""
    from vllm.config import ModelConfig, SchedulerConfig, VllmConfig

    # the figures are arithmetic on the limits: the small model's 32k positions need not hold a 262k context
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    key = (model, mml, budget)
    if key not in _VLLM_CONFIGS:
        mc = ModelConfig(model=model, max_model_len=mml)
        sc = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=8, max_model_len=mml,
                             is_encoder_decoder=False)
        _VLLM_CONFIGS[key] = VllmConfig(model_config=mc, scheduler_config=sc)
    return _VLLM_CONFIGS[key]


def kv_groups(job):
    """vLLM's KV-cache groups of a model whose layers are of `layer_types` (a sliding kind at `window`,
    the rest full attention), from get_kv_cache_groups: [[block_size, count, window | null], ...] in
    vLLM's order, a kind's groups counted."""
    from vllm.v1.core.kv_cache_utils import get_kv_cache_groups

    specs = {f"model.layers.{i}.attn": _kv_spec(job["block_size"], job["window"] if "sliding" in t else None)
             for i, t in enumerate(job["layer_types"])}
    vc = _vllm_config(job["model"], 4096, 2048)
    # the engine core resolves the layout from its attention backends; NHD, the default, packs no groups
    vc.cache_config.kv_cache_layout = vc.cache_config.kv_cache_layout or "NHD"
    out: list = []
    for g in get_kv_cache_groups(vc, specs):
        kind = [g.kv_cache_spec.block_size, getattr(g.kv_cache_spec, "sliding_window", None)]
        if out and out[-1][::2] == kind:
            out[-1][1] += 1
        else:
            out.append([kind[0], 1, kind[1]])
    return {"groups": out}


def kv_capacity(job):
    """vLLM's KV-cache figure (the "KV cache size: N tokens" of its startup log and cache_config_info's
    kv_cache_size_tokens) for a block pool of `num_blocks` shared by `groups` ([block_size, count, window
    or null]), from get_kv_cache_capacity with a VllmConfig of those limits. The CPU platform turns async
    scheduling off when the config is built, so it is set afterwards, as a GPU build keeps it."""
    from vllm.v1.core.kv_cache_utils import get_kv_cache_capacity
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheGroupSpec

    vc = _vllm_config(job["model"], job["max_model_len"], job["max_num_batched_tokens"])
    vc.scheduler_config.async_scheduling = job["async_scheduling"]
    groups = []
    for i, (bs, count, window) in enumerate(job["groups"]):
        spec = _kv_spec(bs, window)
        groups += [KVCacheGroupSpec([f"g{i}.{j}"], spec) for j in range(count)]
    cfg = KVCacheConfig(num_blocks=job["num_blocks"], kv_cache_tensors=[], kv_cache_groups=groups)
    tokens, concurrency = get_kv_cache_capacity(vc, cfg)
    return {"kv_cache_size_tokens": tokens, "in_flight_tokens": vc.max_in_flight_tokens}


def kv_holds(job):
    """The blocks one request holds in a KV-cache group of vLLM's own manager (FullAttentionManager or
    SlidingWindowManager) after each step of `chunks` new tokens, as allocate_slots takes them without
    async scheduling: the blocks behind the window freed first (remove_skipped_blocks at the tokens
    computed), then the blocks for the step's tokens allocated. Null blocks (freed) are not counted."""
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager, SlidingWindowManager

    bs, window = job["block_size"], job["window"]
    pool = BlockPool(num_gpu_blocks=1 << 20, enable_caching=False, hash_block_size=bs)
    manager = FullAttentionManager if window is None else SlidingWindowManager
    m = manager(_kv_spec(bs, window), block_pool=pool, enable_caching=False, kv_cache_group_id=0,
                scheduler_block_size=bs)
    computed, held = 0, []
    for n in job["chunks"]:
        m.remove_skipped_blocks("r", computed)
        m.allocate_new_blocks("r", computed + n, computed + n)
        computed += n
        held.append(sum(1 for b in m.req_to_blocks["r"] if b is not pool.null_block))
    return {"held": held}


def _caching_manager(job):
    """A fresh KVCacheManager with prefix caching on, of job's groups ([block size, layers, window]) and
    num_blocks, and the block hasher its requests need (blocks hashed at the smallest block size)."""
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheGroupSpec

    groups = []
    for i, (bs, count, window) in enumerate(job["groups"]):
        groups += [KVCacheGroupSpec([f"g{i}.{j}"], _kv_spec(bs, window)) for j in range(count)]
    sizes = [bs for bs, _, _ in job["groups"]]
    cfg = KVCacheConfig(num_blocks=job["num_blocks"], kv_cache_tensors=[], kv_cache_groups=groups)
    manager = KVCacheManager(cfg, max_model_len=1 << 20, scheduler_block_size=max(sizes),
                             hash_block_size=min(sizes), enable_caching=True)
    init_none_hash(sha256)
    return manager, get_request_block_hasher(min(sizes), sha256)


def kv_shared(job):
    """vLLM's KVCacheManager (prefix caching on) as its scheduler drives it for requests that share a
    prefix: the probe's blocks are cached when allocated and stay cached once freed; each request's hit
    comes from get_computed_blocks, its whole prompt past the hit from allocate_slots; the blocks in use
    are the pool's less its free ones (a block held by several requests counts once)."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    manager, hasher = _caching_manager(job)
    prefix = list(range(1, job["prefix"] + 1))
    pool = manager.block_pool

    def admit(i, prompt):
        own = [100_000 + 10_000 * i + k for k in range(prompt - len(prefix))]
        r = Request(f"r{i}", prefix + own, SamplingParams(max_tokens=16), None, block_hasher=hasher)
        blocks, hit, _ = manager.get_computed_blocks(r)
        assert manager.allocate_slots(r, prompt - hit, hit, blocks) is not None, "the pool is too small"
        r.num_computed_tokens = prompt
        return r, hit

    if job["warm"]:
        probe, _ = admit(-1, len(prefix) + 1)
        manager.free(probe)
    hits, used = [], []
    for i, prompt in enumerate(job["prompts"]):
        hits.append(admit(i, prompt)[1])
        used.append(pool.num_gpu_blocks - 1 - pool.get_num_free_blocks())  # the null block is never free
    return {"hits": hits, "used": used}


def kv_evict(job):
    """vLLM's KVCacheManager (prefix caching on) as its scheduler drives it around preemptions, for each list
    of steps afresh: a request preempted or finished gives its blocks back (its cached ones to the free
    queue's tail, still cached), new blocks come from the queue's head, evicting what they take, and a
    request admitted again finds what of its blocks is left (get_computed_blocks)."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    out = []
    for steps in job["runs"]:
        manager, hasher = _caching_manager(job)
        reqs, hits = {}, []
        for op, name, *n in steps:
            if op == "hit":  # what the cache holds of a request's tokens, allocating nothing
                hits.append(manager.get_computed_blocks(reqs[name])[1])
            elif op == "admit":  # its prompt whole, past what the cache holds of it
                if name not in reqs:
                    start = 1 + 1_000_000 * len(reqs)
                    reqs[name] = Request(name, list(range(start, start + n[0])), SamplingParams(max_tokens=16),
                                         None, block_hasher=hasher)
                r = reqs[name]
                blocks, hit, _ = manager.get_computed_blocks(r)
                assert manager.allocate_slots(r, r.num_tokens - hit, hit, blocks) is not None, "pool too small"
                r.num_computed_tokens = r.num_tokens
                hits.append(hit)
            elif op in ("preempt", "finish"):  # Scheduler._preempt_request, _free_request: the same free
                manager.free(reqs[name])
                reqs[name].num_computed_tokens = 0
            else:  # "grow": n more tokens' blocks
                assert manager.allocate_slots(reqs[name], n[0]) is not None, "pool too small to grow"
                reqs[name].num_computed_tokens += n[0]
        out.append(hits)
    return {"hits": out}


def stream(job):
    """vllm bench serve's request function reading a stream whose bytes come in the given reads.

    A session that answers 200 and hands the reads to `response.content.iter_any()` one by one, on a
    clock that moves one second before each read: the times it records say which read each chunk
    came in (the request is sent at 0)."""
    from oracle_io import stream_session
    from vllm.benchmarks.lib import endpoint_request_func as erf

    session, clock = stream_session(job["reads"])
    real_time, erf.time = erf.time, types.SimpleNamespace(perf_counter=lambda: clock.t)
    try:
        fn = (erf.async_request_openai_chat_completions if job["endpoint"] == "chat"
              else erf.async_request_openai_completions)
        path = "/v1/chat/completions" if job["endpoint"] == "chat" else "/v1/completions"
        inp = erf.RequestFuncInput(prompt="x", api_url="http://127.0.0.1:1" + path, prompt_len=1, output_len=8,
                                   model="m")
        out = asyncio.run(fn(inp, session))
    finally:
        erf.time = real_time
    return {"success": out.success, "ttft": out.ttft, "itl": out.itl, "latency": out.latency,
            "output_tokens": out.output_tokens, "generated_text": out.generated_text,
            "error": out.error.strip().splitlines()[-1] if out.error else ""}


def histograms(job):
    """What vLLM's /metrics writes for a histogram family after the job's observations."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from vllm.v1.metrics.buckets import histogram_buckets

    out = {}
    for family, values in job["observe"].items():
        registry = CollectorRegistry()
        h = Histogram("h", "doc", labelnames=["m"], buckets=histogram_buckets(family), registry=registry).labels("x")
        for v in values:
            h.observe(v)
        out[family] = [x for x in generate_latest(registry).decode().splitlines()
                       if x.startswith(("h_bucket", "h_count", "h_sum"))]
    return out


def batch_defaults(job):
    """`vllm serve`'s max_num_batched_tokens and max_num_seqs when no flag sets them
    (EngineArgs.get_batch_defaults, the API server's entries) on a device of `memory` bytes named `name`
    (memory null: NVML cannot read it, as on the GB10), or on the CPU platform (`cpu`)."""
    from vllm.engine import arg_utils
    from vllm.usage.usage_lib import UsageContext

    class Device:
        """The platform as get_batch_defaults asks it."""

        def get_device_total_memory(self):
            if job["memory"] is None:
                raise RuntimeError("NVML: Not Supported")
            return job["memory"]

        def get_device_name(self):
            return job["name"]

        def is_tpu(self):
            return False

        def is_cpu(self):
            return job["cpu"]

    real, arg_utils.current_platform = arg_utils.current_platform, Device()
    try:
        tokens, seqs = arg_utils.EngineArgs.get_batch_defaults(world_size=1)
    finally:
        arg_utils.current_platform = real
    return {"max_num_batched_tokens": tokens[UsageContext.OPENAI_API_SERVER],
            "max_num_seqs": seqs[UsageContext.OPENAI_API_SERVER]}


def vocab(job):
    """The two facts RandomDataset reads off the tokenizer vllm bench serve loads."""
    tok = tokenizer(job["tokenizer"])
    return {"vocab_size": int(tok.vocab_size), "all_special_ids": [int(i) for i in tok.all_special_ids]}


def timeline(job):
    """generate_timeline_plot's segments and legend for per-request data as vllm bench serve hands it over
    (start_time, ttft, itl, latency, prompt_len, output_tokens), its thresholds in seconds: what it would
    hand to plotly's px.timeline, caught there."""
    from vllm.benchmarks import plot

    caught = {}

    def px_timeline(data, **kw):
        caught.update(data=data, colors=kw["color_discrete_map"])
        return types.SimpleNamespace(update_traces=lambda **_: None, update_yaxes=lambda **_: None,
                                     update_layout=lambda **_: None)

    real = plot.px, plot.pio
    plot.px, plot.pio = types.SimpleNamespace(timeline=px_timeline), types.SimpleNamespace(write_html=lambda *a: None)
    try:
        plot.generate_timeline_plot(job["results"], "unused.html", itl_thresholds=job["thresholds"])
    finally:
        plot.px, plot.pio = real
    return {"segments": [{k: d[k] for k in ("request_id", "start", "end", "type", "duration")}
                         for d in caught["data"]], "colors": caught["colors"]}


def spec_metrics(job):
    """fetch_spec_decode_metrics on each /metrics text (a session stub answers it): its counters, or None."""
    from vllm.benchmarks import serve

    class Response:
        status = 200

        def __init__(self, text):
            self._text = text

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

        async def text(self):
            return self._text

    out = []
    for text in job["texts"]:
        got = asyncio.run(serve.fetch_spec_decode_metrics("http://x", types.SimpleNamespace(
            get=lambda url, _t=text: Response(_t))))
        out.append(None if got is None else {
            "num_drafts": got.num_drafts, "num_draft_tokens": got.num_draft_tokens,
            "num_accepted_tokens": got.num_accepted_tokens,
            "accepted_per_pos": {str(k): v for k, v in got.accepted_per_pos.items()}})
    return {"counters": out}


KINDS = {"pipeline": pipeline, "vocab": vocab, "defaults": defaults, "serve_flags": serve_flags, "metrics": metrics,
         "engine_flags": engine_flags, "context_limit": context_limit, "kv_capacity": kv_capacity,
         "kv_shared": kv_shared, "kv_evict": kv_evict, "kv_holds": kv_holds, "kv_groups": kv_groups, "stream": stream,
         "histograms": histograms,
         "batch_defaults": batch_defaults, "timeline": timeline, "spec_metrics": spec_metrics}


def _answer(job):
    """vLLM's answer, or the ValueError it raised when the job says one may come."""
    try:
        return KINDS[job["kind"]](job)
    except ValueError as ex:
        if not job.get("may_fail"):
            raise
        return {"error": str(ex)}


if __name__ == "__main__":
    from oracle_io import serve  # this script's folder is on sys.path when run as a script

    serve(_answer)
