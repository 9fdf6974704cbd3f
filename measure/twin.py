"""capsim twin: an OpenAI-compatible streaming server whose timings come from the simulator.

The simulator's own engine plays in real time (`speed` times faster) in a background thread; each
HTTP request becomes a RequestSpec, each step's tokens go out as SSE chunks at the wall time the
model says. `TwinServer(profile, speed=...).start()` for tests. Design: docs/design/twin.md.
"""
from __future__ import annotations

import asyncio
import json
import math
import queue
import re
import threading
import time
import uuid
import zlib
from bisect import bisect_left
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import simpy
import simpy.rt

from simulator.engine import Engine
from simulator.kvcache import kv_cache_size_tokens
from simulator.profile import Profile, ProfileError
from simulator.records import RequestRecord
from simulator.sim import Frontend
from simulator.workload import RequestSpec

from .httpwire import Connection, Server, error_body

DEFAULT_MODEL_NAME = "capsim-twin"
INF = float("inf")

# vLLM's histogram buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
ITER_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

_WORD = re.compile(r"\S+")
_OUT_WORDS = ("the", "of", "and", "to", "in", "is", "was", "that", "for", "it", "with", "as", "on", "be", "at",
              "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which", "one")
BOS_ID = 2


# ---------------------------------------------------------------- tokenizer

class TwinTokenizer:
    """One token per word; `t123` is token 123; specials and chat template from the profile."""

    def __init__(self, special_tokens: int = 1, chat_template_tokens: int = 0, vocab_size: int = 262144):
        self.special = int(special_tokens)
        self.template = int(chat_template_tokens)
        self.vocab = int(vocab_size)

    def ids(self, text: str, add_special: bool = True) -> list[int]:
        out = [BOS_ID] * self.special if add_special else []
        for w in _WORD.findall(text or ""):
            if len(w) > 1 and w[0] == "t" and w[1:].isdigit():
                out.append(int(w[1:]) % self.vocab)
            else:
                out.append(1000 + zlib.crc32(w.encode()) % max(1, self.vocab - 1000))
        return out

    def count(self, text: str, add_special: bool = True) -> int:
        return len(_WORD.findall(text or "")) + (self.special if add_special else 0)

    @staticmethod
    def content_text(content: Any) -> str:
        """A message's text: a string, or OpenAI content parts ({"type": "text", "text": ...})."""
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content)

    def chat_ids(self, messages: list, add_generation_prompt: bool = True) -> list[int]:
        out = [BOS_ID] * self.special + [BOS_ID + 1] * self.template
        for m in messages or []:
            if isinstance(m, dict):
                out += self.ids(self.content_text(m.get("content")), add_special=False)
        return out

    def chat_count(self, messages: list) -> int:
        n = self.special + self.template
        for m in messages or []:
            if isinstance(m, dict):
                n += len(_WORD.findall(self.content_text(m.get("content"))))
        return n

    @staticmethod
    def detokenize(ids: list[int]) -> str:
        return " ".join(f"t{int(i)}" for i in ids)


# ---------------------------------------------------------------- metrics

class _Hist:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels},le="{float(b)}"}} {float(acc)}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(self.count)}')
        out.append(f"{name}_count{{{labels}}} {float(self.count)}")
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        return out


@dataclass
class TwinStats:
    """Counters the engine thread writes and /metrics reads (wall-clock seconds)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests: int = 0
    finished: int = 0
    aborted: int = 0
    rejected: int = 0
    steps: int = 0
    ttft: _Hist = field(default_factory=lambda: _Hist(TTFT_BUCKETS))
    itl: _Hist = field(default_factory=lambda: _Hist(ITL_BUCKETS))
    e2e: _Hist = field(default_factory=lambda: _Hist(E2E_BUCKETS))
    iteration_tokens: _Hist = field(default_factory=lambda: _Hist(ITER_BUCKETS))


# ---------------------------------------------------------------- one generation

class _Gen:
    """A request being generated: owned by the asyncio thread, named by the engine thread."""

    __slots__ = ("rid", "chat", "stream", "include_usage", "http", "prompt_tokens", "max_tokens", "sent",
                 "done", "model", "created", "texts", "dead", "wall_in", "last_wall", "word0", "record")

    def __init__(self, rid, chat, stream, include_usage, http, prompt_tokens, max_tokens, done, model):
        self.rid = rid
        self.chat = chat
        self.stream = stream
        self.include_usage = include_usage
        self.http = http  # its client's httpwire.Connection
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.sent = 0
        self.done = done
        self.model = model
        self.created = int(time.time())
        self.texts: list[str] = []
        self.dead = False
        self.wall_in = 0.0
        self.last_wall = None
        self.word0 = zlib.crc32(rid.encode()) % len(_OUT_WORDS)
        self.record: RequestRecord | None = None

    def words(self, n: int) -> str:
        k0 = self.sent
        return "".join(" " + _OUT_WORDS[(self.word0 + k0 + i) % len(_OUT_WORDS)] for i in range(n))


# ---------------------------------------------------------------- the engine thread

class _RealtimeEnv(simpy.rt.RealtimeEnvironment):
    """SimPy's real-time environment, stepped by TwinEngine so that arrivals can wake it."""

    def wall_of(self, t: float) -> float:
        return self.real_start + (t - self.env_start) * self.factor

    def sim_of(self, wall: float) -> float:
        return self.env_start + (wall - self.real_start) / self.factor


class TwinEngine:
    """The simulator's engine in a thread, in real time (x speed).

    Arrivals come through a thread-safe inbox that wakes the thread at once (no
    polling): each is stamped with the simulated time of its wall-clock arrival and
    handed to simulator.sim.Frontend, which adds the profile's API overheads and
    submits it to the Engine. `on_emit` collects each step's tokens; after every
    SimPy event they go to the asyncio loop in one call_soon_threadsafe, where each
    batch is written out at the wall time of its chunk time.
    """

    def __init__(self, profile: Profile, speed: float = 1.0, seed: int = 0):
        if not (speed > 0) or math.isinf(speed):
            raise ProfileError(f"--speed must be a positive number, got {speed}")
        self.profile = profile
        self.speed = float(speed)
        self.seed = seed
        self.stats = TwinStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = False
        self._out: list = []
        self._iter_tokens = 0
        self._g_running = self._g_waiting = 0
        self._gens: dict[int, _Gen] = {}
        self._rid = 0
        self._pending_aborts: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver = None
        self._thread: threading.Thread | None = None
        self.env: _RealtimeEnv | None = None
        self.engine: Engine | None = None
        self.error: BaseException | None = None
        # a checker for requests the engine would refuse (HTTP 400), built once
        self._checker = Engine(simpy.Environment(), profile, fast_forward=False)

    # ------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop, deliver) -> None:
        self._loop = loop
        self._deliver = deliver
        ready = threading.Event()

        def run():
            try:
                self.env = _RealtimeEnv(initial_time=0.0, factor=1.0 / self.speed, strict=False)
                self.engine = Engine(self.env, self.profile, fast_forward=False, seed=self.seed,
                                     trace=self._trace, on_emit=self._on_emit)
                self.front = Frontend(self.engine, self.profile)
                ready.set()
                self._run()
            except BaseException as e:  # surfaced by /health and stop()
                self.error = e
                ready.set()
                raise

        self._thread = threading.Thread(target=run, name="capsim-twin-engine", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def reject_reason(self, spec: RequestSpec) -> str | None:
        return self._checker.reject_reason(spec)

    def submit(self, gen: _Gen, spec: RequestSpec, wall: float) -> None:
        self._inbox.put(("gen", gen, spec, wall))
        self._wake.set()

    def abort(self, gen: _Gen) -> None:
        self._inbox.put(("abort", gen, None, monotonic()))
        self._wake.set()

    # ------------------------------------------------------------ gauges (read from any thread)
    def gauges(self) -> dict[str, float]:
        e = self.engine
        if e is None:
            return {"running": 0, "waiting": 0, "kv": 0.0, "preemptions": 0}
        return {"running": self._g_running, "waiting": self._g_waiting, "kv": e.kv.usage(),
                "preemptions": e.num_preemptions}

    # ------------------------------------------------------------ engine-thread side
    def _trace(self, d: dict) -> None:
        self.stats.steps += int(d.get("k", 1))
        # vLLM's gauges as it sets them after each step's outputs: finished requests gone, the next
        # step's admissions not in yet; waiting as the last schedule left it
        self._g_running = d["running"] - len(d.get("admitted") or ())
        self._g_waiting = d["waiting"]

    def _on_emit(self, rec: RequestRecord, t: float, tokens: int) -> None:
        gen = self._gens.get(rec.request_id)
        if gen is None:
            return
        st = self.stats
        first = gen.record is None
        if first:
            gen.record = rec
            st.prompt_tokens += rec.prompt_tokens
            st.ttft.observe((t - rec.start_time) / self.speed)
            self._iter_tokens += rec.prompt_tokens
        st.generation_tokens += tokens
        self._iter_tokens += tokens
        self._out.append((gen, t, tokens))

    def _on_done(self, _req, rec: RequestRecord) -> None:
        gen = self._gens.pop(rec.request_id, None)
        st = self.stats
        if gen is None:
            return
        if rec.error:
            st.rejected += 1
            self._out.append((gen, rec.end_time or self.env.now, -1))
            return
        st.finished += 1
        e = self.engine
        self._g_running = min(self._g_running, len(e.running))
        if not e.running and not e.waiting:
            self._g_running = self._g_waiting = 0
        ct = rec.chunk_times
        st.e2e.observe((float(ct[-1]) - rec.start_time) / self.speed)
        for d in (ct[1:] - ct[:-1]):
            st.itl.observe(float(d) / self.speed)

    def _accept(self, item) -> None:
        kind, gen, spec, wall = item
        env = self.env
        t = max(env.now, env.sim_of(wall))
        # events due before this arrival happen first
        while env.peek() <= t:
            simpy.Environment.step(env)
        env._now = t  # noqa: SLF001 -- nothing is scheduled before t (tests/test_upstream_private_api.py)
        if kind == "abort":
            self._abort(gen)
            return
        rid = self._rid
        self._rid += 1
        self._gens[rid] = gen
        self.stats.requests += 1
        rec = RequestRecord(request_id=rid, prompt_tokens=spec.prompt_tokens, output_tokens=0, scheduled_time=t,
                            start_time=t, max_tokens=spec.max_tokens)
        gen.record = None
        self.front.submit(spec, rec, self._on_done)

    def _abort(self, gen: _Gen) -> None:
        """A client went away: free the request's slot and KV as vLLM's abort does."""
        rid = next((k for k, g in self._gens.items() if g is gen), None)
        if rid is None:
            return
        e = self.engine
        for req in list(e.waiting):
            if req.record.request_id == rid:
                e.waiting.remove(req)
                break
        else:
            for req in list(e.running):
                if req.record.request_id == rid:
                    e.running.remove(req)
                    e.kv.used -= req.held
                    req.held = 0
                    req.state = 2  # FINISHED: steps in flight skip it
                    break
            else:  # still in the API frontend: drop it when it reaches the engine
                self._pending_aborts.add(rid)
                return
        self._gens.pop(rid, None)
        self.stats.aborted += 1
        self._g_running = min(self._g_running, len(e.running))
        self._g_waiting = min(self._g_waiting, len(e.waiting))

    def _retry_aborts(self) -> None:
        e = self.engine
        for rid in list(self._pending_aborts):
            for req in e.waiting:
                if req.record.request_id == rid:
                    e.waiting.remove(req)
                    self._pending_aborts.discard(rid)
                    self._gens.pop(rid, None)
                    self.stats.aborted += 1
                    break

    def _flush(self) -> None:
        if self._iter_tokens:
            # as vLLM: one observation per engine step that returned tokens (prompt tokens
            # counted with a request's first token)
            self.stats.iteration_tokens.observe(self._iter_tokens)
            self._iter_tokens = 0
        if not self._out:
            return
        batch, self._out = self._out, []
        try:
            self._loop.call_soon_threadsafe(self._deliver, batch)
        except RuntimeError:  # the loop is closed: shutting down
            self._stop = True

    def _run(self) -> None:
        env = self.env
        inbox = self._inbox
        while not self._stop:
            nxt = env.peek()
            if inbox.empty():
                if nxt == INF:
                    self._wake.wait(0.5)
                else:
                    delay = env.wall_of(nxt) - monotonic()
                    if delay > 0:
                        self._wake.wait(min(delay, 0.5))
                self._wake.clear()
            got = False
            while True:
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
                got = True
                self._accept(item)
            if got:
                self._flush()
                continue
            nxt = env.peek()
            if nxt != INF and monotonic() >= env.wall_of(nxt):
                simpy.Environment.step(env)
                if self._pending_aborts:
                    self._retry_aborts()
                self._flush()


# ---------------------------------------------------------------- HTTP

class TwinServer(Server):
    """The HTTP side: asyncio streams, HTTP/1.1 through h11 (measure/httpwire.py), keep-alive, chunked SSE."""

    server_name = "capsim-twin"
    thread_name = "capsim-twin-http"

    def __init__(self, profile: Profile, host: str = "127.0.0.1", port: int = 0, speed: float = 1.0,
                 model: str | None = None, seed: int = 0):
        super().__init__(host, port)
        self.profile = profile
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
            except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
                return await self._send(http, 400, error_body(400, "request body is not valid JSON"))
            if not isinstance(req, dict):
                return await self._send(http, 400, error_body(400, "request body must be a JSON object"))
        if method == "GET" and path == "/v1/models":
            mml = self.profile.engine.max_model_len
            return await self._send(http, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "capsim",
                 "root": self.model, "parent": None, "max_model_len": mml, "permission": []}]})
        if method == "GET" and path == "/health":
            ok = self.engine.error is None
            return await self._send(http, 200 if ok else 503, b"", ctype="text/plain")
        if method == "GET" and path == "/version":
            return await self._send(http, 200, {"version": "capsim-twin"})
        if method == "GET" and path == "/metrics":
            return await self._send(http, 200, self.metrics_text().encode(),
                                    ctype="text/plain; version=0.0.4; charset=utf-8")
        if method == "POST" and path == "/tokenize":
            return await self._tokenize(req, http)
        if method == "POST" and path == "/detokenize":
            toks = req.get("tokens")
            if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
                return await self._send(http, 400, error_body(400, "tokens must be a list of integers"))
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
                return await self._send(http, 400, error_body(400, "messages must be a list"))
            ids = self.tok.chat_ids(req.get("messages") or [], bool(req.get("add_generation_prompt", True)))
        elif "prompt" in req:
            ids = self.tok.ids(str(req.get("prompt") or ""), bool(req.get("add_special_tokens", True)))
        else:
            return await self._send(http, 400, error_body(400, "either prompt or messages is required"))
        return await self._send(http, 200, {"count": len(ids), "max_model_len": mml, "tokens": ids,
                                              "token_strs": None})

    # ------------------------------------------------------------ generation
    def _prompt_tokens(self, chat: bool, req: dict) -> int | str:
        if chat:
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return "messages must be a non-empty list"
            return self.tok.chat_count(msgs)
        p = req.get("prompt")
        if isinstance(p, list):
            if p and all(isinstance(x, int) for x in p):
                return len(p)  # token ids
            if len(p) == 1 and isinstance(p[0], str):
                p = p[0]
            else:
                return "the twin serves one prompt per request"
        if not isinstance(p, str):
            return "prompt must be a string"
        return self.tok.count(p, add_special=True)

    async def _generate(self, chat: bool, req: dict, http) -> bool:
        wall_in = monotonic()
        mml = self.profile.engine.max_model_len
        pt = self._prompt_tokens(chat, req)
        if isinstance(pt, str):
            return await self._send(http, 400, error_body(400, pt))
        mt = req.get("max_completion_tokens") if chat else None
        if mt is None:
            mt = req.get("max_tokens")
        if mt is None:
            mt = mml - pt
        # an integer, or a float that is one (JSON's 1e400 parses as inf, 2.5 is no token count)
        if isinstance(mt, bool) or not (isinstance(mt, int) or isinstance(mt, float) and mt.is_integer()):
            return await self._send(http, 400, error_body(400, "max_tokens must be an integer"))
        mt = int(mt)
        if pt + max(mt, 0) > mml or mt < 1:
            msg = (f"This model's maximum context length is {mml} tokens. However, you requested {pt + mt} tokens "
                   f"({pt} in the messages, {mt} in the completion). Please reduce the length of the messages "
                   f"or completion." if mt >= 1 else "max_tokens must be at least 1")
            self.stats.rejected += 1
            return await self._send(http, 400, error_body(400, msg))
        spec = RequestSpec(prompt_tokens=pt, max_tokens=mt, output_tokens=mt, tag="twin")
        why = self.engine.reject_reason(spec)
        if why is not None:
            self.stats.rejected += 1
            return await self._send(http, 400, error_body(400, why.removeprefix("HTTP 400: ")))
        stream = bool(req.get("stream"))
        so = req.get("stream_options") or {}
        include_usage = bool(so.get("include_usage")) if isinstance(so, dict) else False
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        done = self._loop.create_future()
        gen = _Gen(rid, chat, stream, include_usage, http, pt, mt, done, str(req.get("model") or self.model))
        gen.wall_in = wall_in
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

    def _full_response(self, gen: _Gen) -> dict:
        text = "".join(gen.texts)
        usage = {"prompt_tokens": gen.prompt_tokens, "total_tokens": gen.prompt_tokens + gen.sent,
                 "completion_tokens": gen.sent, "prompt_tokens_details": None}
        if gen.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                              "tool_calls": [], "reasoning_content": None},
                      "logprobs": None, "finish_reason": "length", "stop_reason": None}
            return {"id": gen.rid, "object": "chat.completion", "created": gen.created, "model": gen.model,
                    "choices": [choice], "usage": usage, "prompt_logprobs": None}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None,
                  "prompt_logprobs": None}
        return {"id": gen.rid, "object": "text_completion", "created": gen.created, "model": gen.model,
                "choices": [choice], "usage": usage}

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
        now = self._loop.time()
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
            gen.last_wall = now
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

    def _event(self, gen: _Gen, obj) -> None:
        gen.http.data(self._sse(obj))  # one event, one chunk

    def _end(self, gen: _Gen) -> None:
        gen.http.end(self._sse(b"[DONE]"))  # the last chunk and the end of the body in one write

    def _stream_chunk(self, gen: _Gen, text: str, first: bool, final: bool) -> None:
        if gen.http.gone:
            raise ConnectionError("client gone")
        finish = "length" if final else None
        if gen.chat:
            base = {"id": gen.rid, "object": "chat.completion.chunk", "created": gen.created, "model": gen.model}
            if first:
                self._event(gen, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                       "logprobs": None, "finish_reason": None}]})
            ch = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
        else:
            base = {"id": gen.rid, "object": "text_completion", "created": gen.created, "model": gen.model}
            ch = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if final:
            ch["stop_reason"] = None
        self._event(gen, {**base, "choices": [ch]})
        if final:
            if gen.include_usage:
                self._event(gen, {**base, "choices": [], "usage": {
                    "prompt_tokens": gen.prompt_tokens, "total_tokens": gen.prompt_tokens + gen.sent,
                    "completion_tokens": gen.sent}})
            self._end(gen)
            gen.done.set_result(True)

    # ------------------------------------------------------------ /metrics
    def metrics_text(self) -> str:
        s = self.stats
        g = self.engine.gauges()
        lab = f'engine="0",model_name="{self.model}"'
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
            f'vllm:request_success_total{{{lab},finished_reason="length"}} {float(s.finished)}',
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
            out += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"] + h.lines(name, lab)
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
