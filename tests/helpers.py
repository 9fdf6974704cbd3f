"""Small builders shared by the simulator tests."""
from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from simulator.profile import ApiOverhead, EngineLimits, KVGroup, Profile, load_profile
from simulator.records import RequestRecord, RunResult
from simulator.stepmodel import EmpiricalStepModel


# Gemma 4's KV cache: 1 full-attention group (blocks of 32) and 5 sliding-window groups (blocks of 16,
# a 1024-token window) sharing one block pool (reference/vllm-and-spark-physics.md)
GEMMA4_KV_GROUPS = (KVGroup(32, 1, None), KVGroup(16, 5, 1024))


def sharegpt_conversation(prompt: str, answer: str) -> dict:
    """One ShareGPT record: a question and its reply, the first turn pair vLLM samples."""
    return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}


def tiny_profile(budget=64, seqs=4, num_blocks=None, block=4, async_=True, c0=0.01, c_tok=1e-4, c_seq=1e-3,
                 window=None, max_model_len=100000, c_ctx=2e-4, frontend_s=0.0, frontend_per_token_s=0.0, wake_s=0.0, request_s=0.0, chunk_s=0.0, noise=0.0) -> Profile:
    groups = (KVGroup(block, 1, None),) if window is None else (KVGroup(block, 1, None), KVGroup(block, 2, window))
    return Profile(
        name="tiny",
        engine=EngineLimits(max_num_batched_tokens=budget, max_num_seqs=seqs, max_model_len=max_model_len,
                            num_blocks=num_blocks, kv_groups=groups, async_scheduling=async_),
        step_model=EmpiricalStepModel(c0=c0, c_tok=c_tok, c_seq=c_seq, c_ctx=c_ctx, window=window),
        api=ApiOverhead(request_s=request_s, chunk_s=chunk_s, frontend_s=frontend_s,
                        frontend_per_token_s=frontend_per_token_s, wake_s=wake_s),
        step_noise_cv=noise,
    ).validate()


def rec(i, start, chunks, prompt=10, out=None, mask=None, test="", batch=0, error=None, scheduled=None):
    chunks = np.asarray(chunks, dtype=float)
    return RequestRecord(request_id=i, prompt_tokens=prompt, output_tokens=len(chunks) if out is None else out,
                         scheduled_time=start if scheduled is None else scheduled, start_time=start,
                         chunk_times=chunks, content_mask=None if mask is None else np.asarray(mask, bool),
                         end_time=float(chunks[-1]) if len(chunks) else start, error=error, test=test, batch=batch)


RECORD_FIELDS = ("request_id", "prompt_tokens", "output_tokens", "scheduled_time", "start_time", "chunk_times",
                 "content_mask", "end_time", "error", "max_tokens", "test", "batch", "preemptions", "chunk_tokens")


def same_records(a: RunResult, b: RunResult) -> None:
    """Two runs gave the very same records: every RequestRecord field, and the run's preemptions."""
    assert set(RECORD_FIELDS) == set(RequestRecord.__slots__), "a RequestRecord field is not compared"
    assert len(a.records) == len(b.records)
    for x, y in zip(a.records, b.records):
        for f in RECORD_FIELDS:
            u, v = getattr(x, f), getattr(y, f)
            if f in ("chunk_times", "content_mask", "chunk_tokens"):
                assert (u is None) == (v is None), (x.request_id, f)
                assert u is None or np.array_equal(u, v), (x.request_id, f)
            else:
                assert u == v, (x.request_id, f, u, v)
    assert a.num_preemptions == b.num_preemptions


def reporter(path):
    """print, and keep the lines in `path` too (pytest without -s shows nothing of a passing test)."""
    def say(*parts):
        text = " ".join(str(x) for x in parts)
        print(text)
        with open(path, "a") as f:
            f.write(text + "\n")
    return say


@contextmanager
def refused_port():
    """A loopback port that refuses connections while the block runs: bound, so that no other process can
    take it (a port found free and closed again can be taken before the test connects), and not listening,
    so that a connect is refused at once (Linux answers a SYN to a bound, unlistened port with a reset)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextmanager
def canned_server(routes: dict[str, tuple[int, dict | str]]):
    """A loopback HTTP server that answers a GET of each path in `routes` with its (status, body): a dict
    as JSON, a str as text (a /metrics exposition); any other path gets a 404. Yields its URL."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = routes.get(self.path, (404, {"detail": "Not Found"}))
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json" if isinstance(body, dict) else "text/plain")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def tls_front(port: int, cert_pem: str):
    """An HTTPS front on loopback for the plain HTTP server at `port`: TLS ends here with the certificate and
    key of the file `cert_pem`, and the bytes go on both ways unchanged. Yields the front's port."""
    import asyncio
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_pem)
    loop = asyncio.new_event_loop()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        except asyncio.CancelledError:  # the front closing: ended, not an error for asyncio to log
            pass

    front = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def shut():  # the connections still open end with the front, none left pending
        front.close()
        open_ = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in open_:
            t.cancel()
        await asyncio.gather(*open_, return_exceptions=True)

    try:
        yield front.sockets[0].getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def spec_profile(k: int, a: float, **engine) -> Profile:
    """The shipped profile with speculative decoding: k drafts a step, per-position acceptance a."""
    p = load_profile()
    p.engine.num_speculative_tokens = k
    p.engine.spec_acceptance = a
    for key, v in engine.items():
        setattr(p.engine, key, v)
    return p.validate()


class TokenizerEndpoints:
    """A stand-in for measure.client.Client's `post_json` that answers vLLM's /tokenize and
    /detokenize as vLLM's server does (serve/tokenize/serving.py), with a HuggingFace tokenizer.json
    (the `tokenizers` library, which transformers' fast tokenizers run): encode with or without the
    special tokens, decode keeping them. Chat bodies are counted through `template` (the text before
    and after each message's trimmed content) or, without one, get a 400 as from a model without a
    template; `detokenize=False` serves no /detokenize, `refuse_ids_from` refuses ids from there up.
    `calls` lists (path, body) in order."""

    def __init__(self, tokenizer_json, max_model_len: int = 8192, template: tuple[str, str] | None = None,
                 detokenize: bool = True, refuse_ids_from: int | None = None):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.max_model_len = max_model_len
        self.template = template
        self.detokenize = detokenize
        self.refuse_ids_from = refuse_ids_from
        self.calls: list[tuple[str, dict]] = []

    def _ids(self, text: str, special: bool) -> list[int]:
        return self.tok.encode(text, add_special_tokens=special).ids

    async def post_json(self, path: str, body: dict, timeout=None):
        self.calls.append((path, body))
        if path == "/tokenize" and isinstance(body.get("prompt"), str):
            ids = self._ids(body["prompt"], body.get("add_special_tokens", True))
            return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        if path == "/tokenize" and self.template and isinstance(body.get("messages"), list):
            before, after = self.template
            ids = self._ids("".join(before + m["content"].strip() + after for m in body["messages"]), True)
            return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        if path == "/detokenize" and self.detokenize and isinstance(body.get("tokens"), list):
            if self.refuse_ids_from is not None and max(body["tokens"], default=0) >= self.refuse_ids_from:
                return 400, {"error": {"message": "Token id out of vocabulary"}}
            return 200, {"prompt": self.tok.decode(body["tokens"], skip_special_tokens=False)}
        return 400, {"error": {"message": f"{path}: not served"}}


def write_run_folder(folder, run: RunResult, meta: dict | None = None) -> None:
    """A run folder of `run` (a simulated one) as `capsim measure` writes it: records.jsonl (and probes.jsonl),
    then run.json with the run's facts (`meta`: those, with more)."""
    from measure.runfiles import RunWriter

    w = RunWriter(folder)
    for r in run.records:
        w.append_record(r)
    for r in run.probes or ():
        w.append_record(r, probe=True)
    w.write_json("run.json", {"capsim_run": 1, "kind": run.kind, "status": "complete", "start_time": run.start_time,
                              "end_time": run.end_time, "records": len(run.records),
                              "meta": run.meta_json() if meta is None else meta})
    w.close()


def caching_engine(groups, num_blocks: int, budget: int, max_seqs: int, trace=None):
    """An engine of the shipped profile that caches prefixes, schedules synchronously and does not fast-forward,
    with these KV groups ((block size, count, window or None)), blocks, token budget and max_num_seqs."""
    import simpy

    from simulator.engine import Engine

    p = load_profile()
    e = p.engine
    e.kv_groups, e.num_blocks = tuple(KVGroup(*g) for g in groups), num_blocks
    e.max_num_batched_tokens, e.max_num_seqs = budget, max_seqs
    e.async_scheduling, e.prefix_caching = False, True
    p.validate()
    return Engine(simpy.Environment(), p, fast_forward=False, trace=trace)


def first_step(groups, prompts, cached: int, prefix_group: str = "shared prefix", warm: bool = True,
               num_blocks: int = 1 << 20) -> dict:
    """The engine trace of its first step (no async scheduling, a budget for every prompt whole) given
    prompts that start with the same `cached` tokens: in the cache before the first if `warm` (or, with no
    `prefix_group`, each finding them cached, none shared); `groups` as (block size, count, window or None)."""
    from simulator.workload import RequestSpec

    seen = []
    eng = caching_engine(groups, num_blocks, sum(prompts), len(prompts), trace=seen.append)
    for i, n in enumerate(prompts):
        rec = RequestRecord(request_id=i, prompt_tokens=n, output_tokens=0, scheduled_time=0.0, start_time=0.0,
                            max_tokens=4)
        eng.submit(RequestSpec(n, 4, 4, cached_tokens=cached, prefix_group=prefix_group, prefix_warm=warm), 0.0, rec,
                   lambda r: None)
    eng.env.run()
    assert eng.kv.in_use == 0
    return seen[0]


def hits_around_preemptions(groups, num_blocks: int, steps) -> list[int]:
    """The engine's hits for vllm_oracle.kv_evict's steps on a box that caches prefixes, through its own
    allocation, preemption, release and re-admission: ("admit", name, tokens) a prompt whole (again: past
    its hit), ("hit", name) its hit alone, ("preempt", name), ("finish", name), ("grow", name, tokens) more
    blocks; each admission's or "hit"'s hit."""
    from simulator.engine import RUNNING
    from simulator.workload import RequestSpec

    eng = caching_engine(groups, num_blocks, 1 << 20, 64)
    reqs, hits = {}, []
    for op, name, *n in steps:
        if op == "hit":
            eng._find_hit(reqs[name])
            hits.append(reqs[name].computed)
        elif op == "admit":
            if name not in reqs:
                rec = RequestRecord(request_id=len(reqs), prompt_tokens=n[0], output_tokens=0, scheduled_time=0.0,
                                    start_time=0.0, max_tokens=4)
                eng.submit(RequestSpec(n[0], 4, 4), 0.0, rec, lambda r: None)
                reqs[name] = eng.waiting[-1]
            req = reqs[name]
            eng._find_hit(req)
            hits.append(req.computed)
            assert eng._alloc(req, req.known - req.computed), "pool too small"
            eng.waiting.remove(req)
            eng._reclaim(req)
            req.computed, req.state = req.known, RUNNING
            eng.running.append(req)
        elif op == "preempt":
            eng.running.remove(reqs[name])
            eng._preempt(reqs[name])
        elif op == "finish":
            eng.running.remove(reqs[name])
            eng.release(reqs[name])
        else:
            assert eng._alloc(reqs[name], n[0]), "pool too small to grow"
            reqs[name].computed += n[0]
    return hits


def blocks_in_use_after_admitting(groups, prompts, cached: int, **kw) -> int:
    """The KV blocks in use once the engine has admitted every prompt in its first step (`first_step`)."""
    step = first_step(groups, prompts, cached, **kw)
    assert step["admitted"] == list(range(len(prompts)))
    return step["kv_used"]
