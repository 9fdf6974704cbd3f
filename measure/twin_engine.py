"""The twin's engine side: the simulator's Engine in a real-time thread, its word tokenizer and its
vLLM-style counters.

`TwinEngine` steps a SimPy RealtimeEnvironment (x speed) fed by a thread-safe inbox; `TwinTokenizer`
counts one token per word; `TwinStats` holds what /metrics reports. measure.twin serves them over
HTTP. Design: docs/design/twin.md.
"""
from __future__ import annotations

import asyncio
import math
import queue
import re
import threading
import time
import zlib
from bisect import bisect_left
from dataclasses import dataclass, field
from time import monotonic

import simpy
import simpy.rt

from simulator.engine import Engine
from simulator.profile import Profile, ProfileError
from simulator.records import RequestRecord
from simulator.sim import Frontend
from simulator.workload import RequestSpec

from .httpwire import message_text

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

    def chat_ids(self, messages: list, add_generation_prompt: bool = True) -> list[int]:
        out = [BOS_ID] * self.special + [BOS_ID + 1] * self.template
        for m in messages or []:
            if isinstance(m, dict):
                out += self.ids(message_text(m.get("content")), add_special=False)
        return out

    def chat_count(self, messages: list) -> int:
        n = self.special + self.template
        for m in messages or []:
            if isinstance(m, dict):
                n += len(_WORD.findall(message_text(m.get("content"))))
        return n

    @staticmethod
    def detokenize(ids: list[int]) -> str:
        return " ".join(f"t{int(i)}" for i in ids)


# ---------------------------------------------------------------- metrics

class Histogram:
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

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        """Its /metrics lines, the labels sorted by name with `le` among them, as prometheus_client writes."""
        def series(suffix: str, **le) -> str:
            return f"{name}_{suffix}{{{label_text(labels | le)}}}"

        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append(f"{series('bucket', le=str(float(b)))} {float(acc)}")
        out.append(f"{series('bucket', le='+Inf')} {float(self.count)}")
        out.append(f"{series('count')} {float(self.count)}")
        out.append(f"{series('sum')} {self.sum}")
        return out


def label_text(labels: dict[str, str]) -> str:
    """A series' labels as prometheus_client writes them: sorted by name."""
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


@dataclass
class TwinStats:
    """Counters the engine thread writes and /metrics reads (wall-clock seconds)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests: int = 0
    finished: int = 0
    aborted: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    iteration_tokens: Histogram = field(default_factory=lambda: Histogram(ITER_BUCKETS))


# ---------------------------------------------------------------- one generation

class Generation:
    """A request being generated: owned by the asyncio thread, named by the engine thread."""

    __slots__ = ("rid", "chat", "stream", "include_usage", "http", "prompt_tokens", "max_tokens", "sent",
                 "done", "model", "created", "texts", "dead", "word0", "record")

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
        self._gens: dict[int, Generation] = {}
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

    def served_max_tokens(self, spec: RequestSpec) -> int:
        return self._checker.served_max_tokens(spec)

    def submit(self, gen: Generation, spec: RequestSpec, wall: float) -> None:
        self._inbox.put(("gen", gen, spec, wall))
        self._wake.set()

    def abort(self, gen: Generation) -> None:
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

    def _abort(self, gen: Generation) -> None:
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
                    e.release(req)
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
