"""capsim twin: an OpenAI-compatible streaming server whose timings come from the simulator.

The simulator's own engine plays in real time (`speed` times faster) in a background thread; each
HTTP request becomes a RequestSpec, each step's tokens go out as SSE chunks at the wall time the
model says (the engine side is measure.twin_engine). `TwinServer(profile, speed=...).start()` for
tests. Design: docs/design/twin.md.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from time import monotonic
from typing import Any

from simulator.kvcache import kv_cache_size_tokens
from simulator.profile import Profile, refused_for_length
from simulator.workload import RequestSpec

from .httpwire import Connection, Server, error_body, invalid_body
from .twin_engine import Generation, TwinEngine, TwinTokenizer, label_text

DEFAULT_MODEL_NAME = "capsim-twin"


# ---------------------------------------------------------------- HTTP

class TwinServer(Server):
    """The HTTP side: asyncio streams, HTTP/1.1 through h11 (measure/httpwire.py), keep-alive, chunked SSE."""

    server_name = "capsim-twin"
    thread_name = "capsim-twin-http"

    def __init__(self, profile: Profile, host: str = "127.0.0.1", port: int = 0, speed: float = 1.0,
                 model: str | None = None, seed: int = 0):
        super().__init__(host, port)
        self.profile = profile
        # the vLLM whose length rule the twin follows, as a local version: a client that reads /version
        # (capsim measure's check, calibrate --live) then expects the refusals the twin makes
        self.version = ("0.32.0" if profile.engine.clamp_max_tokens else "0.31.0") + "+capsim.twin"
        self.fingerprint = f"vllm-{self.version}"  # vLLM's: vllm-VERSION-HASH
        self.speed = float(speed)
        self.model = model or DEFAULT_MODEL_NAME
        fmt = profile.prompt_format
        self.tok = TwinTokenizer(fmt.special_tokens, fmt.chat_template_tokens, fmt.vocab_size)
        self.engine = TwinEngine(profile, speed, seed)
        self.stats = self.engine.stats

    # ------------------------------------------------------------ lifecycle (httpwire.Server)
    async def _prepare(self) -> None:
        """The engine thread starts with the server (serve() or start())."""
        self.engine.start(self._loop, self._deliver)
        if self.engine.error is not None:
            raise self.engine.error

    def stop(self) -> None:
        self._halt()
        self.engine.stop()
        self._join()

    # ------------------------------------------------------------ connection
    async def answer(self, req, http: Connection) -> bool:
        return await self._route(req.method, req.path, req.body, http)

    async def _send(self, http: Connection, status: int, obj, ctype: str = "application/json") -> bool:
        return await http.respond(status, obj, ctype)

    async def _route(self, method, path, body, http: Connection) -> bool:
        if len(path) > 1:
            path = path.rstrip("/")
        req: Any = {}
        if body:
            try:
                req = json.loads(body)
            except (ValueError, RecursionError) as e:  # RecursionError: arrays nested thousands deep
                # pydantic's location of a JSON error: the body and the character it stopped at
                at = str(e.pos) if isinstance(e, json.JSONDecodeError) else ""
                return await self._send(http, 400, invalid_body(at, "request body is not valid JSON"))
            if not isinstance(req, dict):
                return await self._send(http, 400, invalid_body("", "request body must be a JSON object"))
        if method == "GET" and path == "/v1/models":
            mml = self.profile.engine.max_model_len
            return await self._send(http, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                 "root": self.model, "parent": None, "max_model_len": mml, "permission": [self._permission()]}]})
        if method == "GET" and path == "/health":
            ok = self.engine.error is None
            return await self._send(http, 200 if ok else 503, b"", ctype="text/plain")
        if method == "GET" and path == "/version":
            return await self._send(http, 200, {"version": self.version})
        if method == "GET" and path == "/metrics":
            return await self._send(http, 200, self.metrics_text().encode(),
                                    ctype="text/plain; version=0.0.4; charset=utf-8")
        if method == "POST" and path == "/tokenize":
            return await self._tokenize(req, http)
        if method == "POST" and path == "/detokenize":
            toks = req.get("tokens")
            if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
                return await self._send(http, 400, invalid_body("tokens", "tokens must be a list of integers"))
            return await self._send(http, 200, {"prompt": self.tok.detokenize(toks)})
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return await self._generate(path == "/v1/chat/completions", req, http)
        if path in ("/v1/models", "/health", "/version", "/metrics", "/tokenize", "/detokenize",
                    "/v1/chat/completions", "/v1/completions"):
            return await self._send(http, 405, {"detail": "Method Not Allowed"})
        return await self._send(http, 404, {"detail": "Not Found"})

    async def _tokenize(self, req: dict, http) -> bool:
        mml = self.profile.engine.max_model_len
        if "messages" in req:
            if not isinstance(req["messages"] or [], list):
                return await self._send(http, 400, invalid_body("messages", "messages must be a list"))
            ids = self.tok.chat_ids(req.get("messages") or [], bool(req.get("add_generation_prompt", True)))
        elif "prompt" in req:
            ids = self.tok.ids(str(req.get("prompt") or ""), bool(req.get("add_special_tokens", True)))
        else:
            return await self._send(http, 400, invalid_body("prompt", "either prompt or messages is required"))
        return await self._send(http, 200, {"count": len(ids), "max_model_len": mml, "tokens": ids,
                                              "token_strs": None})

    # ------------------------------------------------------------ generation
    def _prompt_tokens(self, chat: bool, req: dict) -> int | dict:
        """The prompt's tokens, or the error body vLLM answers the request with."""
        if chat:
            msgs = req.get("messages")
            if not isinstance(msgs, list):
                return invalid_body("messages", "messages must be a list")
            if not msgs:
                return error_body(400, "Cannot apply chat template to an empty conversation. Provide at least "
                                       "one message.")
            return self._text_tokens(self.tok.chat_count(msgs))
        p = req.get("prompt")
        if isinstance(p, list):
            if p and all(isinstance(x, int) for x in p):
                return len(p)  # token ids
            if len(p) == 1 and isinstance(p[0], str):
                p = p[0]
            else:
                return error_body(400, "the twin serves one prompt per request", param="prompt")
        if not isinstance(p, str):
            return invalid_body("prompt", "prompt must be a string")
        return self._text_tokens(self.tok.count(p, add_special=True))

    def _text_tokens(self, n: int) -> int:
        """A text prompt's count as vLLM >= 0.32 takes it: its tokenizer stops at max_model_len + 1
        (TokenizeParams.get_encode_kwargs), enough to refuse it."""
        L = self.profile.engine
        return min(n, L.max_model_len + 1) if L.clamp_max_tokens else n

    async def _generate(self, chat: bool, req: dict, http) -> bool:
        wall_in = monotonic()
        mml = self.profile.engine.max_model_len
        model = req.get("model")
        if model is not None and not isinstance(model, str):
            return await self._send(http, 400, invalid_body("model", "model must be a string"))
        if model and model != self.model:  # vLLM's _check_model, before any value is read ("": the served one)
            return await self._send(http, 404, error_body(
                404, f"The model `{model}` does not exist. Valid aliases: {self.model}.", "NotFoundError", "model"))
        n = req.get("n")
        if n is not None and n != 1:  # vLLM would decode n sequences; answering one would miscount them
            return await self._send(http, 400, error_body(400, f"the twin serves one sequence per request, not n={n}",
                                                          param="n"))
        pt = self._prompt_tokens(chat, req)
        if isinstance(pt, dict):
            return await self._send(http, 400, pt)
        name = "max_completion_tokens" if chat and req.get("max_completion_tokens") is not None else "max_tokens"
        mt = req.get(name)
        if mt is None:
            mt = mml - pt
        # an integer, or a float that is one (JSON's 1e400 parses as inf, 2.5 is no token count)
        if isinstance(mt, bool) or not (isinstance(mt, int) or isinstance(mt, float) and mt.is_integer()):
            return await self._send(http, 400, invalid_body(name, f"{name} must be an integer"))
        mt = int(mt)
        clamp = self.profile.engine.clamp_max_tokens
        # vLLM >= 0.32 checks in this order: max_tokens against max_model_len (TokenizeParams), the prompt's
        # tokens (the renderer: a text prompt is tokenized to at most max_model_len + 1, and that count is
        # "at least"), then max_tokens cut to the context left (SamplingParams: a prompt that fills the
        # context leaves 0)
        if clamp and mt > mml:
            return await self._send(http, 400, error_body(
                400, f"{name}={mt} cannot be greater than max_model_len={mml}. Please request fewer output tokens. "
                     f"(parameter={name}, value={mt})", param=name))
        if clamp and pt > mml:
            return await self._send(http, 400, error_body(
                400, f"This model's maximum context length is {mml} tokens. However, your prompt contains "
                     f"{'at least ' if pt == mml + 1 else ''}{pt} input tokens, which exceeds this limit even without "
                     f"any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
                     f"value={pt})", param="input_tokens"))
        left = min(mt, mml - pt) if clamp else mt
        if left < 1:
            return await self._send(http, 400, error_body(
                400, f"max_tokens must be at least 1, got {left}. (parameter=max_tokens, value={left})",
                param="max_tokens"))
        if refused_for_length(pt, mt, mml, clamp):
            return await self._send(http, 400, error_body(
                400, f"This model's maximum context length is {mml} tokens. However, you requested {pt + mt} tokens "
                     f"({pt} in the messages, {mt} in the completion). Please reduce the length of the messages or "
                     f"completion."))
        spec = RequestSpec(prompt_tokens=pt, max_tokens=mt, output_tokens=mt, tag="twin")
        why = self.engine.reject_reason(spec)
        if why is not None:
            return await self._send(http, 400, error_body(400, why.removeprefix("HTTP 400: ")))
        stream = bool(req.get("stream"))
        so = req.get("stream_options") or {}
        include_usage = bool(so.get("include_usage")) if isinstance(so, dict) else False
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        done = self._loop.create_future()
        gen = Generation(rid, chat, stream, include_usage, http, pt, self.engine.served_max_tokens(spec), done,
                         self.model)
        if stream:  # chunked: each SSE event is one chunk, written when the engine makes it
            http.start(200, "text/event-stream; charset=utf-8")
        self.engine.submit(gen, spec, wall_in)
        # a client that goes away mid-request: abort it in the engine (as vLLM does)
        gone = asyncio.ensure_future(http.until_closed())
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not gone.done():
                gone.cancel()
            try:  # always retrieved: a reset connection's error is the news that the client left, not a fault
                await gone
            except (asyncio.CancelledError, OSError):
                pass
        if not done.done():
            gen.dead = True
            self.engine.abort(gen)
            return False
        if stream:
            try:
                await http.writer.drain()
            except ConnectionError:
                return False
            return True
        return await self._send(http, 200, self._full_response(gen))

    def _full_response(self, gen: Generation) -> dict:
        """vLLM 0.32's response body, key for key (its unset fields null)."""
        text = "".join(gen.texts)
        usage = {"prompt_tokens": gen.prompt_tokens, "total_tokens": gen.prompt_tokens + gen.sent,
                 "completion_tokens": gen.sent, "prompt_tokens_details": None, "completion_tokens_details": None}
        top = {"id": gen.rid, "object": "chat.completion" if gen.chat else "text_completion", "created": gen.created,
               "model": gen.model}
        done = {"service_tier": None, "system_fingerprint": self.fingerprint, "usage": usage}
        tail = {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
        if gen.chat:
            message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
                       "function_call": None, "reasoning": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None, "token_ids": None, "routed_experts": None}
            return {**top, "choices": [choice], **done, "prompt_logprobs": None, "prompt_token_ids": None,
                    "prompt_text": None, **tail}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None,
                  "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}
        return {**top, "choices": [choice], **done, **tail}

    @staticmethod
    def _permission() -> dict:
        return {"id": f"modelperm-{uuid.uuid4().hex[:16]}", "object": "model_permission", "created": int(time.time()),
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                "group": None, "is_blocking": False}

    # ------------------------------------------------------------ delivery (asyncio thread)
    def _deliver(self, batch: list) -> None:
        """A step's outputs from the engine thread: write them at their wall time."""
        loop = self._loop
        now = loop.time()
        by_time: dict[float, list] = {}
        for item in batch:
            by_time.setdefault(item[1], []).append(item)
        for t, items in by_time.items():
            when = self.engine.env.wall_of(t)
            if when <= now:
                self._write(items)
            else:
                loop.call_at(when, self._write, items)

    def _write(self, items: list) -> None:
        for gen, _t, tokens in items:
            if gen.dead or gen.done.done():
                continue
            if tokens < 0:  # refused by the engine after all
                if gen.stream:
                    try:
                        self._event(gen, error_body(400, "request refused by the engine")["error"])
                        self._end(gen)
                    except ConnectionError:
                        gen.dead = True
                gen.done.set_result(False)
                continue
            n = min(tokens, gen.max_tokens - gen.sent)
            if n <= 0:
                continue
            text = gen.words(n)
            first = gen.sent == 0
            gen.sent += n
            final = gen.sent >= gen.max_tokens
            if not gen.stream:
                gen.texts.append(text)
                if final:
                    gen.done.set_result(True)
                continue
            try:
                self._stream_chunk(gen, text, first, final)
            except (ConnectionError, RuntimeError):
                gen.dead = True
                gen.done.set_result(False)

    @staticmethod
    def _sse(obj) -> bytes:
        data = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
        return b"data: " + data + b"\n\n"

    def _event(self, gen: Generation, obj) -> None:
        gen.http.data(self._sse(obj))  # one event, one chunk

    def _end(self, gen: Generation) -> None:
        gen.http.end(self._sse(b"[DONE]"))  # the last chunk and the end of the body in one write

    def _stream_chunk(self, gen: Generation, text: str, first: bool, final: bool) -> None:
        """vLLM 0.32's chunks, key for key: the chat stream opens with a role-only delta; the last chunk (or
        the usage chunk after it) carries the system fingerprint."""
        if gen.http.gone:
            raise ConnectionError("client gone")
        finish = "length" if final else None
        fp = {"system_fingerprint": self.fingerprint}
        if gen.chat:
            base = {"id": gen.rid, "object": "chat.completion.chunk", "created": gen.created, "model": gen.model}
            if first:
                self._event(gen, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                       "logprobs": None, "finish_reason": None}],
                                  "prompt_token_ids": None, "prompt_text": None})
            ch = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
            if final:
                ch["stop_reason"] = None
            ch["token_ids"] = None
        else:
            base = {"id": gen.rid, "object": "text_completion", "created": gen.created, "model": gen.model}
            ch = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
                  "prompt_token_ids": None, "token_ids": None}
        last = {**base, "choices": [ch]}
        if final and not gen.include_usage:
            last |= fp
        self._event(gen, last)
        if final:
            if gen.include_usage:
                self._event(gen, {**base, "choices": [], "usage": {
                    "prompt_tokens": gen.prompt_tokens, "total_tokens": gen.prompt_tokens + gen.sent,
                    "completion_tokens": gen.sent}, **fp})
            self._end(gen)
            gen.done.set_result(True)

    # ------------------------------------------------------------ /metrics
    def metrics_text(self) -> str:
        s = self.stats
        g = self.engine.gauges()
        labels = {"engine": "0", "model_name": self.model}
        lab = label_text(labels)
        L = self.profile.engine
        kvt = kv_cache_size_tokens(self.profile)
        bs = L.kv_groups[0].block_size
        out = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lab}}} {float(g['running'])}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{lab}}} {float(g['waiting'])}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{lab}}} {float(g['kv'])}",
            "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
            "# TYPE vllm:num_preemptions_total counter",
            f"vllm:num_preemptions_total{{{lab}}} {float(g['preemptions'])}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{lab}}} {float(s.prompt_tokens)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{lab}}} {float(s.generation_tokens)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{label_text(labels | {"finished_reason": "length"})}}} {float(s.finished)}',
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="{bs}",cache_dtype="auto",enable_prefix_caching="False",'
            f'engine="0",kv_cache_size_tokens="{kvt}",num_gpu_blocks="{L.num_blocks}"}} 1.0',
            # not a vLLM metric: the scheduler limits vLLM does not export (calibrate.live reads them)
            "# HELP capsim:scheduler_config_info Scheduler limits of the twin's profile",
            "# TYPE capsim:scheduler_config_info gauge",
            f'capsim:scheduler_config_info{{async_scheduling="{L.async_scheduling}",'
            f'max_model_len="{L.max_model_len}",max_num_batched_tokens="{L.max_num_batched_tokens}",'
            f'max_num_seqs="{L.max_num_seqs}",speed="{self.speed}"}} 1.0',
        ]
        for name, h, doc in (("vllm:time_to_first_token_seconds", s.ttft, "Histogram of time to first token in seconds."),
                             ("vllm:inter_token_latency_seconds", s.itl, "Histogram of inter-token latency in seconds."),
                             ("vllm:e2e_request_latency_seconds", s.e2e, "Histogram of e2e request latency in seconds."),
                             ("vllm:iteration_tokens_total", s.iteration_tokens, "Histogram of number of tokens per engine_step.")):
            out += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"] + h.lines(name, labels)
        return "\n".join(out) + "\n"




# ---------------------------------------------------------------- a twin in its own process

class TwinProcess:
    """`capsim twin` in a child process (its own GIL: the measuring client does not slow it).

        with TwinProcess("profile.json", speed=10) as tw:
            run_closed(tw.url, None, pattern)
    """

    def __init__(self, profile_path: str, speed: float = 1.0, host: str = "127.0.0.1", port: int = 0,
                 sets: tuple[str, ...] = (), model: str | None = None, timeout: float = 30.0):
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "measure.twin_cli", "--profile", str(profile_path), "--speed", str(speed),
               "--host", host, "--port", str(port)]
        for s in sets:
            cmd += ["--set", s]
        if model:
            cmd += ["--model", model]
        from pathlib import Path
        root = str(Path(__file__).resolve().parent.parent)
        import os
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.url = None
        deadline = monotonic() + timeout
        lines = []
        while monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r" on (http://\S+) ", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.stop()
            raise RuntimeError("capsim twin did not start: " + "".join(lines)[-2000:])
        # keep draining stderr so the child never blocks on a full pipe
        self._drain = threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True)
        self._drain.start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "TwinProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
