"""Where runs come from: a name on the command line becomes ClosedRun/OpenRun lists.

`seed` is the seed write-up's reference data; a folder with meta.json is a suite
run (shared/data/spark-bench layout); a folder with run.json is a capsim measure
run; a .md or .json file is one llama-benchy table or vllm bench serve result.
Closed-loop loading never opens an open-loop file.
"""
from __future__ import annotations

from pathlib import Path

from simulator.records import LiveFacts

from .files import ImporterError
from .importers import closed_runs, is_suite_dir, load_source, open_runs
from .results import ClosedRun, OpenRun
from .seed import seed_closed_runs, seed_open_runs


def _count(v) -> int | None:
    """A positive whole number from a server figure (Prometheus labels arrive as text), else None."""
    try:
        n = int(float(v))
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _capsim_run(path: Path, kind: str) -> list:
    """A `capsim measure` run folder as a ClosedRun or OpenRun (summaries from its records)."""
    from measure.errors import MeasureError
    from measure.prom import label_switch
    from measure.runfiles import load_run, load_run_info
    from simulator.summary import summarize_closed, summarize_open

    try:
        run = load_run(path)
        info = load_run_info(path)
    except MeasureError as e:
        raise ImporterError(str(e)) from None
    if run.kind != kind:
        return []
    live = run.live or LiveFacts()
    x = run.extra  # server limits an older measure wrote into meta
    # what measure read off the server: /v1/models (run.json's server) and /metrics' cache_config
    facts = info.get("server") if isinstance(info.get("server"), dict) else {}
    cache = (run.server_metrics.cache_config if run.server_metrics is not None else None) or {}
    server = {"model": live.model, "url": live.url,
              "max_model_len": x.get("max_model_len") or _count(facts.get("max_model_len")),
              "max_num_batched_tokens": x.get("max_num_batched_tokens"), "max_num_seqs": x.get("max_num_seqs"),
              "num_gpu_blocks": _count(cache.get("num_gpu_blocks")),
              "kv_cache_size_tokens": _count(cache.get("kv_cache_size_tokens")), "block_size": _count(cache.get("block_size")),
              "enable_prefix_caching": label_switch(cache.get("enable_prefix_caching")),
              "vllm_version": str(facts["server_version"]) if facts.get("server") == "vllm" and facts.get("server_version")
              else None}
    ok = [r for r in run.records if r.ok]
    chunks = sum(len(r.chunk_times) for r in ok)
    if chunks:  # usage tokens per streamed chunk: above 1 with speculative decoding
        server["tokens_per_chunk"] = sum(r.output_tokens for r in ok) / chunks
    if kind == "closed":
        if run.closed_loop is None or not run.closed_loop.tests:
            # a run.json not written by capsim measure (it writes them from the start)
            raise ImporterError(f"{path}: a closed-loop run without its tests' shapes (run.json's meta.tests: "
                                "each test's pp, tg, depth and concurrency)")
        cl = run.closed_loop
        return [ClosedRun(source=str(path), test=path.name, model=str(live.model), runs=cl.runs,
                          latency_mode=cl.latency_mode if cl.latency_mode is not None else "generation",
                          latency_ms=1000.0 * float(cl.latency_s or 0.0), version="capsim measure",
                          rows=[r for r in summarize_closed(run) if r.metrics], server=server, path=str(path),
                          prefix_caching=cl.prefix_caching)]
    wl = dict(live.workload or {})
    op = run.open_loop
    params = {"backend": "openai-chat" if live.endpoint == "chat" else "openai",
              "endpoint": "/v1/chat/completions" if live.endpoint == "chat" else "/v1/completions",
              "num_prompts": op.num_prompts if op is not None and op.num_prompts is not None else len(run.records),
              "request_rate": op.request_rate if op is not None else None,
              "burstiness": op.burstiness if op is not None else 1.0,
              "max_concurrency": op.max_concurrency if op is not None else None,
              "seed": op.seed if op is not None and op.seed is not None else 0,
              **(op.ramp_keys() | op.probe_keys() | op.warmup_keys() if op is not None else {}),
              **{k: v for k, v in wl.items() if k != "dataset"}}
    return [OpenRun(source=str(path), test=path.name, path=str(path), dataset=str(wl.get("dataset", "random")),
                    params=params, result=summarize_open(run), server=server)]


def load_closed(sources: list[str]) -> list[ClosedRun]:
    out: list[ClosedRun] = []
    for s in sources:
        p = Path(s)
        if s == "seed":
            out += seed_closed_runs()
        elif is_suite_dir(p):
            out += closed_runs(p)
        elif (p / "run.json").is_file():
            out += _capsim_run(p, "closed")
        elif p.is_file() and p.suffix == ".md":
            out += [r for r in load_source(p) if isinstance(r, ClosedRun)]
        elif p.exists():
            raise ImporterError(f"{p}: not a closed-loop source (a suite folder, a capsim run folder, a llama-benchy .md)")
        else:
            raise ImporterError(f"{p}: no such file or folder")
    return out


def load_open(sources: list[str]) -> list[OpenRun]:
    out: list[OpenRun] = []
    for s in sources:
        p = Path(s)
        if s == "seed":
            out += seed_open_runs()
        elif is_suite_dir(p):
            out += open_runs(p)
        elif (p / "run.json").is_file():
            out += _capsim_run(p, "open")
        elif p.is_file():
            out += [r for r in load_source(p) if isinstance(r, OpenRun)]
        elif p.exists():
            raise ImporterError(f"{p}: not an open-loop source")
        else:
            raise ImporterError(f"{p}: no such file or folder")
    return out


def server_key(run) -> tuple:
    s = run.server or {}
    return (s.get("model"), s.get("max_num_batched_tokens"), s.get("max_num_seqs"), s.get("gpu_memory_utilization"),
            s.get("kv_cache_dtype"), s.get("vllm_version"))
