"""One streamed answer in several cuts into reads, and capsim's client reading them on a clock that
moves one second before each read: the conformance tests hand the same reads to vllm bench serve's
request function and to llama-benchy's client (tests/vllm_oracle.py, tests/benchy_oracle.py) and
compare the read each chunk is taken in."""
from __future__ import annotations

import asyncio
import json

import httpx

from measure import client as client_mod
from simulator.records import RequestRecord


def sse_event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stream_bytes(endpoint: str, ping: bool = False) -> list[bytes]:
    """The events of one streamed answer as vLLM's server writes them: a role chunk (chat), three
    tokens, the finishing chunk, the usage chunk (no choices), [DONE]; with `ping`, a comment between."""
    if endpoint == "chat":
        first = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        tok = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in ("a", "b", "c")]
        fin = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "length"}]}
    else:
        first = []
        tok = [{"choices": [{"index": 0, "text": w, "finish_reason": None}]} for w in ("a", "b", "c")]
        fin = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    events = [sse_event(o) for o in first + tok[:2]] + ([b": ping\n\n"] if ping else []) + \
        [sse_event(o) for o in (tok[2], fin, usage)] + [b"data: [DONE]\n\n"]
    return events


def cut_every(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


def cut_after(data: bytes, mark: bytes) -> list[bytes]:
    """Reads that end just after each `mark` (a read ends between an event's JSON and its blank line)."""
    parts, start = [], 0
    while (i := data.find(mark, start)) >= 0:
        parts.append(data[start:i + len(mark)])
        start = i + len(mark)
    return parts + ([data[start:]] if start < len(data) else [])


def stream_cases():
    cases = {}
    for ep in ("chat", "completions"):
        ev = stream_bytes(ep)
        cases[(ep, "an event a read")] = ev  # how vLLM's server writes and a prompt client reads
        cases[(ep, "two events a read")] = [b"".join(ev[i:i + 2]) for i in range(0, len(ev), 2)]
        cases[(ep, "all in one read")] = [b"".join(ev)]
        cases[(ep, "a ping between")] = stream_bytes(ep, ping=True)
    whole = b"".join(stream_bytes("chat"))
    for n in (7, 64):
        cases[("chat", f"cut every {n} bytes")] = cut_every(whole, n)
    cases[("chat", "cut after each JSON")] = cut_after(whole, b"}")
    cases[("chat", "cut between the newlines")] = cut_after(whole, b"}\n")
    return cases


STREAMS = stream_cases()
# reads that end inside an event: the payloads are the same, the read that completes one may not be
STREAM_SPLITS = {k for k in STREAMS if k[1].startswith("cut")}


def capsim_reads(endpoint: str, reads: list[bytes], monkeypatch, headers: dict | None = None,
                 events=None) -> tuple[RequestRecord, str]:
    """capsim's client streaming the same reads, on the same clock: one second before each read (a read of None: the
    connection breaks there; `headers`: the response's, beside its content-type; `events`: a
    measure.progress_events.ProgressEvents that sees the request as a measured one of a closed-loop run, request
    0)."""
    clock = [0.0]
    monkeypatch.setattr(client_mod, "perf_counter", lambda: clock[0])

    class Reads(httpx.AsyncByteStream):
        async def __aiter__(self):
            for r in reads:
                clock[0] += 1.0
                if r is None:
                    raise httpx.ReadError("connection reset by peer")
                yield r

    def answer(request):
        return httpx.Response(200, headers={"content-type": "text/event-stream", **(headers or {})}, stream=Reads())

    async def go():
        c = client_mod.Client("http://127.0.0.1:1")
        await c.http.aclose()
        c.http = httpx.AsyncClient(base_url=c.base, transport=httpx.MockTransport(answer))
        req = client_mod.Inflight(0, 0.0, 1, 8, texts=[], watch=events.chunk if events else None)
        async with c:
            await c.stream(endpoint, {"model": "m", "max_tokens": 8, "stream": True}, req)
        if events is not None:
            events.request_end(req)
        return req

    req = asyncio.run(go())
    return req.to_record(), "".join(req.texts)
