"""llama-benchy 0.4.0's own result code as an oracle, run in the vLLM venv (scripts/setup_vllm_cpu.sh
installs llama-benchy there, without its client's dependencies on transformers).

Reads a JSON list of cases on stdin; each case is one llama-benchy test (pp, tg, depth, concurrency,
latency) with its runs' requests as a client saw them: start and end times, every SSE chunk with
choices (time, whether it had content, how many token_ids it carried) and the usage counts. Each
request goes through llama-benchy's LLMClient._finalize_stream_tokens (how 0.4.0 turns chunks into
token timestamps) and the test through BenchmarkResults.add (its table values). Writes, per case,
every metric's (mean, std) or null, its report rows and its md table. A case with "reads" instead is
a stream: LLMClient.run_generation reads those bytes (stream()); one with "body" gives the request
body it posts (body()); one with "progress" the --emit-progress events of such a read (progress()).
"""
from llama_benchy.client import LLMClient, RequestResult
from llama_benchy.results import BenchmarkMetadata, BenchmarkResults

METRICS = ("pp_throughput", "pp_req_throughput", "tg_throughput", "tg_req_throughput", "peak_throughput",
           "peak_req_throughput", "ttfr", "est_ppt", "e2e_ttft")


def request(r: dict) -> RequestResult:
    res = RequestResult(start_ts=r["start"], end_ts=r["end"], prompt_tokens=r["prompt_tokens"])
    chunks = r["chunks"]
    if chunks:
        res.first_response_ts = chunks[0][0]
    content = [c for c in chunks if c[1]]
    if content:
        res.first_token_ts = content[0][0]
    client = LLMClient("http://unused", "none", "m")
    client._finalize_stream_tokens(res, [{"text": "x", "timestamp": t, "token_ids": list(range(n))}
                                         for t, _, n in content], r["completion_tokens"])
    return res


def case(c: dict) -> dict:
    b = BenchmarkResults()
    b.add("m", c["pp"], c["tg"], c["depth"], c["concurrency"], [[request(r) for r in batch] for batch in c["batches"]],
          c["latency"], c["expected_pp"], is_context_phase=c.get("context_phase", False),
          save_total_throughput_timeseries=True, save_all_throughput_timeseries=True)
    run = b.runs[-1]
    out = {}
    for m in METRICS:
        v = getattr(run, m)
        out[m] = None if v is None else [float(v.mean), float(v.std), [float(x) for x in v.values]]
    # its --save-total-throughput-timeseries and --save-all-throughput-timeseries, and the JSON entry's keys
    dumped = run.model_dump()
    out["series"] = {k: dumped[k] for k in ("throughput_over_time", "requests_throughput_over_time")}
    out["json_keys"] = list(dumped)
    out["is_context_prefill_phase"] = dumped["is_context_prefill_phase"]
    out["head_keys"] = list(BenchmarkMetadata.model_fields)  # the top of its --format json, before benchmarks
    # its report rows (the md table's and the csv's) and the md table, of a suite of this one test
    b.metadata = BenchmarkMetadata(version="0.4.0", timestamp="t", latency_mode="generation", latency_ms=0.0,
                                   model="m", prefix_caching_enabled=c.get("prefix_caching", False),
                                   max_concurrency=c["concurrency"])
    out["report_rows"] = [[r["test_name"], {k: None if r[k] is None else [float(r[k].mean), float(r[k].std)]
                                            for k in ("t_s", "t_s_req", "peak_ts", "peak_ts_req", "ttfr", "est_ppt",
                                                      "e2e_ttft")}] for r in b._generate_rows()]
    out["md"] = b._generate_md_report(c["concurrency"])
    return out


def _generate(reads: list[str], client_cls=LLMClient, **kw):
    """LLMClient.run_generation (or a subclass's) reading a stream whose bytes come in `reads`, each one
    second after the one before on its clock (the request is sent at 0); `kw`: its progress arguments."""
    import asyncio
    import types

    from llama_benchy import client as benchy_client
    from oracle_io import stream_session

    session, clock = stream_session(reads)
    real_time, benchy_client.time = benchy_client.time, types.SimpleNamespace(perf_counter=lambda: clock.t)
    try:
        return asyncio.run(client_cls("http://unused", "none", "m").run_generation(session, "", "x", 8, False, **kw))
    finally:
        benchy_client.time = real_time


def stream(job: dict) -> dict:
    """_generate's read of the job's stream: when it saw the first response, the first token, each content
    chunk and the end."""
    seen = []  # the content chunks it streamed, as it hands them to _finalize_stream_tokens

    class Client(LLMClient):
        def _finalize_stream_tokens(self, result, content_chunks, *rest):
            seen.extend(c["timestamp"] for c in content_chunks)
            return super()._finalize_stream_tokens(result, content_chunks, *rest)

    res = _generate(job["reads"], Client)
    return {"start": res.start_ts, "end": res.end_ts, "first_response": res.first_response_ts,
            "first_token": res.first_token_ts, "total_tokens": res.total_tokens, "chunk_times": seen,
            "error": res.error}


def progress(job: dict) -> list[dict]:
    """The --emit-progress events (ProgressEmitter's JSONL) of _generate's read of the job's stream, as
    measured request 0: each event's fields, less its wall-clock ts."""
    import json
    import os
    import tempfile

    from llama_benchy.progress import ProgressEmitter

    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        with ProgressEmitter(path, llama_benchy_version="0.4.0") as emitter:
            _generate(job["progress"], progress=emitter, request_id=0)
        with open(path) as f:
            events = [json.loads(line) for line in f]
    finally:
        os.unlink(path)
    return [{k: v for k, v in e.items() if k != "ts"} for e in events]


def body(job: dict) -> dict:
    """The body LLMClient.run_generation posts (llama-benchy's --exact-tg, --no-cache and --extra-body as its
    CLI passes them on: the job's "exact_tg", "no_cache" and "extra_body") for a context, a prompt and a
    length."""
    import asyncio

    from oracle_io import stream_session

    session, _clock = stream_session(["data: [DONE]\n\n"])
    posted = []
    real_post = session.post

    def post(*a, **kw):
        posted.append(kw["json"])
        return real_post(*a, **kw)

    session.post = post
    j = job["body"]
    client = LLMClient("http://unused", "none", j["model"], extra_body=j["extra_body"], exact_tg=j["exact_tg"])
    asyncio.run(client.run_generation(session, j["context"], j["prompt"], j["max_tokens"], j["no_cache"]))
    return posted[0]


def defaults() -> dict:
    """Every option of llama-benchy's own parser (BenchmarkConfig.from_args), by its first flag: its flags
    and default. The parser is caught as it parses (from_args builds it inside)."""
    import argparse

    from llama_benchy.config import BenchmarkConfig

    class Parsed(Exception):
        pass

    def stop(parser, *a, **kw):
        raise Parsed(parser)

    parse, argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_args, stop
    try:
        BenchmarkConfig.from_args()
    except Parsed as e:
        parser = e.args[0]
    finally:  # the jobs after this one in the same process parse as argparse does
        argparse.ArgumentParser.parse_args = parse
    return {a.option_strings[0]: {"flags": list(a.option_strings), "default": a.default} for a in parser._actions
            if a.option_strings and a.dest != "help"}


def answer(job: dict) -> dict:
    if job.get("defaults"):
        return defaults()
    if "body" in job:
        return body(job)
    if "progress" in job:
        return progress(job)
    return stream(job) if "reads" in job else case(job)


if __name__ == "__main__":
    from oracle_io import serve  # this script's folder is on sys.path when run as a script

    serve(answer)
