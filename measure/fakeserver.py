"""A small, fast fake OpenAI-compatible streaming server on loopback, with fault injection.

For tests of `capsim measure` and the load-generator benchmark: `FakeServer(FakeConfig(...)).start()`
in a background thread, or `python -m measure.fakeserver --port 0`. One token per word; faults
(`http500`, `malformed`, `hang`, `close`, ...) by request index. Design: docs/design/measure.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from dataclasses import dataclass, field
from time import perf_counter

from .httpwire import Connection, Server, message_text


@dataclass
class FakeConfig:
    model: str = "fake-model"
    ttft: float = 0.01  # seconds before the first chunk
    itl: float = 0.005  # seconds between chunks
    api_key: str | None = None  # require "Authorization: Bearer KEY"
    fault: str | None = None
    fault_after: int = 0
    fault_every: int = 0
    fault_chunk: int = 2
    stamp: bool = False  # content of each chunk = perf_counter() at send (overhead benchmark)
    role_chunk: bool = True  # chat: a role-only first delta, as vLLM sends
    tokenize: bool = True  # serve /tokenize and /detokenize
    metrics: bool = True
    template_tokens: int = 5  # chat template tokens, BOS included
    max_running: int = 0  # > 0: requests beyond this wait (shows up as waiting)
    max_model_len: int = 4096
    no_usage: bool = False
    dialect: str = "vllm"  # or "llamacpp": llama-server's /tokenize, /detokenize, /apply-template, /props, /metrics
    tokens_per_chunk: int = 1  # > 1: each chunk carries that many tokens, as a speculative step's would


def _tok_ids(text: str) -> list[int]:
    out = []
    for w in text.split():
        if w[0] == "t" and w[1:].isdigit():
            out.append(int(w[1:]))
        else:
            out.append(1000 + zlib.crc32(w.encode()) % 200000)
    return out


@dataclass
class _Stats:
    requests: int = 0
    running: int = 0
    waiting: int = 0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    auth_failures: int = 0
    completed: int = 0  # streams that reached [DONE]
    # tokens_per_chunk > 1: each chunk a speculative step of tokens_per_chunk - 1 drafts, all but the
    # chunk's shortfall accepted, counted as vLLM's spec_decode counters count them
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_per_pos: list = field(default_factory=list)
    seen_auth: list = field(default_factory=list)
    bodies: list = field(default_factory=list)  # the generation requests' JSON bodies (the first 10000)
    headers: list = field(default_factory=list)  # and their headers (lower-case names), in the same order


class FakeServer(Server):
    server_name = "capsim-fake"
    thread_name = "fake-openai-server"

    def __init__(self, config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.config = config or FakeConfig()
        self.stats = _Stats()
        self._gen_index = 0
        self._sem: asyncio.Semaphore | None = None

    async def _prepare(self) -> None:
        if self.config.max_running > 0:
            self._sem = asyncio.Semaphore(self.config.max_running)

    # ------------------------------------------------------------ HTTP (lifecycle: httpwire.Server)
    async def answer(self, req, http: Connection) -> bool:
        return await self._route(req.method, req.path, req.headers, req.body, http)

    async def _send(self, http: Connection, status: int, obj, ctype="application/json") -> bool:
        return await http.respond(status, obj, ctype)

    async def _route(self, method, path, headers, body, http) -> bool:
        c = self.config
        auth = headers.get("authorization")
        self.stats.seen_auth.append(auth)
        if len(self.stats.seen_auth) > 100:
            del self.stats.seen_auth[:50]
        if c.api_key and auth != f"Bearer {c.api_key}":
            self.stats.auth_failures += 1
            return await self._send(http, 401, {"error": {"message": "invalid API key", "type": "auth"}})
        try:
            req = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            req = None
        if not isinstance(req, dict):
            return await self._send(http, 400, {"error": {"message": "bad JSON"}})
        if method == "GET" and path == "/v1/models":
            return await self._send(http, 200, {"object": "list", "data": [
                {"id": c.model, "object": "model", "max_model_len": c.max_model_len}]})
        if c.dialect == "llamacpp":
            handled = await self._llamacpp(method, path, req, http)
            if handled is not None:
                return handled
        if method == "GET" and path == "/version":
            return await self._send(http, 200, {"version": "fake-0.1"})
        if method == "GET" and path == "/metrics":
            if not c.metrics:
                return await self._send(http, 404, {"detail": "Not Found"})
            return await self._send(http, 200, self._metrics_text().encode(), ctype="text/plain")
        if method == "POST" and path == "/tokenize" and c.tokenize:
            if "messages" in req:
                n = sum(len(_tok_ids(message_text(m.get("content")))) for m in req["messages"]) \
                    + c.template_tokens
                return await self._send(http, 200, {"count": n, "max_model_len": c.max_model_len,
                                                      "tokens": list(range(n))})
            if "prompt" not in req:
                return await self._send(http, 400, {"error": {"message": "prompt missing"}})
            ids = ([2] if req.get("add_special_tokens", True) else []) + _tok_ids(req["prompt"])
            return await self._send(http, 200, {"count": len(ids), "max_model_len": c.max_model_len,
                                                  "tokens": ids})
        if method == "POST" and path == "/detokenize" and c.tokenize:
            return await self._send(http, 200, {"prompt": " ".join(f"t{i}" for i in req.get("tokens", []))})
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            if len(self.stats.bodies) < 10000:
                self.stats.bodies.append(req)
                self.stats.headers.append(dict(headers))
            return await self._generate(path.endswith("chat/completions"), req, http)
        return await self._send(http, 404, {"detail": "Not Found"})

    async def _llamacpp(self, method, path, req, http):
        c, s = self.config, self.stats
        if method == "POST" and path == "/tokenize" and c.tokenize:
            ids = ([2] if req.get("add_special") else []) + _tok_ids(str(req.get("content", "")))
            if req.get("with_pieces"):
                return await self._send(http, 200, {"tokens": [{"id": i, "piece": f"t{i}"} for i in ids]})
            return await self._send(http, 200, {"tokens": ids})
        if method == "POST" and path == "/detokenize" and c.tokenize:
            return await self._send(http, 200, {"content": " ".join(f"t{i}" for i in req.get("tokens", []))})
        if method == "POST" and path == "/apply-template":
            words = " ".join(message_text(m.get("content")) for m in req.get("messages", []))
            tmpl = [f"tmpl{k}" for k in range(c.template_tokens - 1)]  # + the BOS /tokenize adds
            return await self._send(http, 200, {"prompt": " ".join(tmpl[:1] + [words] + tmpl[1:])})
        if method == "GET" and path == "/props":
            return await self._send(http, 200, {"total_slots": 4, "build_info": "b0000-fake",
                                                  "default_generation_settings": {"n_ctx": c.max_model_len}})
        if method == "GET" and path == "/version":
            return await self._send(http, 404, {"error": {"message": "File Not Found"}})
        if method == "GET" and path == "/metrics":
            text = "\n".join([
                "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.",
                "# TYPE llamacpp:prompt_tokens_total counter",
                f"llamacpp:prompt_tokens_total {s.prompt_tokens}",
                f"llamacpp:tokens_predicted_total {s.generation_tokens}",
                f"llamacpp:requests_processing {s.running}",
                f"llamacpp:requests_deferred {s.waiting}",
                f"llamacpp:n_decode_total {s.generation_tokens}", ""])
            return await self._send(http, 200, text.encode(), ctype="text/plain")
        return None

    def _metrics_text(self) -> str:
        s, lab = self.stats, f'engine="0",model_name="{self.config.model}"'
        return "\n".join([
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lab}}} {float(s.running)}",
            f"vllm:num_requests_waiting{{{lab}}} {float(s.waiting)}",
            f"vllm:kv_cache_usage_perc{{{lab}}} {min(1.0, s.running * 0.01)}",
            f"vllm:num_preemptions_total{{{lab}}} 0.0",
            f'vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="False",'
            f'{lab},kv_cache_size_tokens="16000",num_gpu_blocks="1000"}} 1.0',
            f"vllm:prompt_tokens_total{{{lab}}} {float(s.prompt_tokens)}",
            f"vllm:generation_tokens_total{{{lab}}} {float(s.generation_tokens)}",
            f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} {float(s.ttft_count)}',
            f"vllm:time_to_first_token_seconds_count{{{lab}}} {float(s.ttft_count)}",
            f"vllm:time_to_first_token_seconds_sum{{{lab}}} {s.ttft_sum}",
            *(self._spec_lines(lab) if self.config.tokens_per_chunk > 1 else ()),
            ""])

    def _spec_lines(self, lab: str) -> list[str]:
        """vLLM's speculative decoding counters, with the _created samples prometheus_client writes beside them."""
        s = self.stats
        out = []
        for name, v in (("num_drafts", s.spec_drafts), ("num_draft_tokens", s.spec_draft_tokens),
                        ("num_accepted_tokens", sum(s.spec_accepted_per_pos))):
            out += [f"# TYPE vllm:spec_decode_{name} counter", f"vllm:spec_decode_{name}_total{{{lab}}} {float(v)}",
                    f"vllm:spec_decode_{name}_created{{{lab}}} 1.7e9"]
        out += [f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{lab},position="{i}"}} {float(v)}'
                for i, v in enumerate(s.spec_accepted_per_pos)]
        return out

    async def _generate(self, chat: bool, req: dict, http) -> bool:
        c = self.config
        t_arrive = perf_counter()
        idx = self._gen_index
        self._gen_index += 1
        self.stats.requests += 1
        fault = None
        if c.fault and idx >= c.fault_after and (c.fault_every <= 0 or idx % c.fault_every == 0):
            fault = c.fault
        if fault == "http500":
            return await self._send(http, 500, {"error": {"message": "fake internal error", "code": 500}})
        if fault == "http429":
            return await self._send(http, 429, {"error": {"message": "rate limited (fake)", "code": 429}})
        if chat:
            prompt_tokens = sum(len(_tok_ids(message_text(m.get("content"))))
                                for m in req.get("messages", [])) + c.template_tokens
        else:
            prompt_tokens = len(_tok_ids(str(req.get("prompt", "")))) + 1
        n_out = req.get("max_completion_tokens") or req.get("max_tokens") or 16
        if isinstance(n_out, bool) or not (isinstance(n_out, int) or isinstance(n_out, float) and n_out.is_integer()):
            return await self._send(http, 400, {"error": {"message": "max_tokens must be an integer", "code": 400}})
        n_out = int(n_out)
        if not req.get("stream"):
            self.stats.prompt_tokens += prompt_tokens
            self.stats.generation_tokens += n_out
            msg = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x " * n_out}}],
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n_out,
                             "total_tokens": prompt_tokens + n_out}}
            return await self._send(http, 200, msg)
        http.start(200, "text/event-stream")  # chunked

        def sse(obj_or_bytes) -> bytes:
            data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
            return b"data: " + data + b"\n\n"

        def event(obj_or_bytes) -> None:  # one SSE event, one chunk
            http.data(sse(obj_or_bytes))

        self.stats.waiting += 1
        if self._sem is not None:
            await self._sem.acquire()
        self.stats.waiting -= 1
        self.stats.running += 1
        try:
            obj = "chat.completion.chunk" if chat else "text_completion"
            base = {"id": f"cmpl-{idx}", "object": obj, "created": int(time.time()), "model": c.model}
            t_next = perf_counter() + c.ttft
            await asyncio.sleep(max(0.0, t_next - perf_counter()))
            self.stats.ttft_sum += perf_counter() - t_arrive
            self.stats.ttft_count += 1
            if chat and c.role_chunk:
                event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                           "finish_reason": None}]})
            pending: list[tuple[str, int]] = []  # tokens of the chunk being built
            for k in range(n_out):
                if k > 0:
                    t_next += c.itl
                    d = t_next - perf_counter()
                    if d > 0:
                        await asyncio.sleep(d)
                if fault in ("malformed", "no_done", "hang", "close") and k == c.fault_chunk:
                    if fault == "malformed":
                        event(b'{"choices": [{"index": 0, "delta": {"content": "x"')
                        http.end(sse(b"[DONE]"))
                        await http.writer.drain()
                        return True
                    if fault == "no_done":
                        http.end()
                        await http.writer.drain()
                        return True
                    if fault == "hang":
                        await http.writer.drain()
                        await asyncio.sleep(3600)
                    if fault == "close":
                        await http.writer.drain()
                        http.writer.transport.abort()
                        return False
                txt = f"{perf_counter():.9f} " if c.stamp else f"t{k + 5} "
                pending.append((txt, k + 5))
                if len(pending) < c.tokens_per_chunk and k < n_out - 1:
                    continue
                txt = "".join(t for t, _ in pending)
                if chat:
                    ch = {"index": 0, "delta": {"content": txt}, "finish_reason": None}
                else:
                    ch = {"index": 0, "text": txt, "finish_reason": None}
                if req.get("return_token_ids"):
                    ch["token_ids"] = [i for _, i in pending]
                if c.tokens_per_chunk > 1:
                    st = self.stats
                    st.spec_drafts += 1
                    st.spec_draft_tokens += c.tokens_per_chunk - 1
                    st.spec_accepted_per_pos += [0] * (c.tokens_per_chunk - 1 - len(st.spec_accepted_per_pos))
                    for i in range(len(pending) - 1):
                        st.spec_accepted_per_pos[i] += 1
                pending = []
                if k == n_out - 1:
                    ch["finish_reason"] = "length"
                event({**base, "choices": [ch]})
                if http.writer.transport.get_write_buffer_size() > 1 << 16:
                    await http.writer.drain()
            self.stats.prompt_tokens += prompt_tokens
            self.stats.generation_tokens += n_out
            if req.get("stream_options", {}).get("include_usage") and not c.no_usage:
                event({**base, "choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": n_out,
                    "total_tokens": prompt_tokens + n_out}})
            http.end(sse(b"[DONE]"))
            await http.writer.drain()
            self.stats.completed += 1
            return True
        finally:
            self.stats.running -= 1
            if self._sem is not None:
                self._sem.release()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible streaming server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ttft", type=float, default=0.01)
    ap.add_argument("--itl", type=float, default=0.005)
    ap.add_argument("--stamp", action="store_true")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--fault", default=None)
    ap.add_argument("--fault-after", type=int, default=0)
    ap.add_argument("--fault-every", type=int, default=0)
    ap.add_argument("--max-running", type=int, default=0)
    a = ap.parse_args(argv)
    cfg = FakeConfig(ttft=a.ttft, itl=a.itl, stamp=a.stamp, api_key=a.api_key, fault=a.fault,
                     fault_after=a.fault_after, fault_every=a.fault_every, max_running=a.max_running)
    srv = FakeServer(cfg, a.host, a.port)

    async def run():
        await srv.serve()
        print(srv.url, flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
