"""Streaming OpenAI-compatible client: one shared httpx.AsyncClient.

Timestamps follow vllm bench serve's `endpoint_request_func` (start just before the send, every
SSE event with non-empty `choices` stamped at the read that completed it); token counts come from
the final usage event. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import ssl
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from simulator.records import RequestRecord

from .errors import MeasureError
from .sse import SSEParser

ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def split_url(url: str) -> tuple[str, str, tuple[str, str] | None]:
    """(base URL for requests, public URL without credentials, basic-auth pair).

    Accepts `http://host:port`, a trailing `/v1` or `/v1/` (dropped: the client
    adds `/v1/...` itself and needs the root for /tokenize and /metrics).
    """
    if not isinstance(url, str) or not url.strip():
        raise MeasureError("server URL is empty")
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeasureError(f"not an http(s) server URL: {public_url(url)}")
    auth = None
    if parts.username or parts.password:
        from urllib.parse import unquote

        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    base = urlunsplit((parts.scheme, netloc, path, "", ""))
    return base, base, auth


def public_url(url: str) -> str:
    """The URL with any user:password@ and ?query removed (safe to store)."""
    try:
        p = urlsplit(url if "://" in url else "http://" + url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def connect_reason(e: BaseException) -> str:
    """Why a connection failed, in a few words (refused, unknown host, ...)."""
    seen = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, ConnectionRefusedError):
            return "connection refused"
        if isinstance(x, OSError) and getattr(x, "errno", None) == 111:
            return "connection refused"
        import socket

        if isinstance(x, socket.gaierror):
            return "unknown host"
        if isinstance(x, ssl.SSLCertVerificationError):
            return f"its TLS certificate did not verify ({x.verify_message}; --insecure skips the check)"
        x = x.__cause__ or x.__context__
    txt = str(e)
    if "refused" in txt.lower() or "all connection attempts failed" in txt.lower():
        return "connection refused"
    return txt or type(e).__name__


def _error_message(body: bytes) -> str:
    """The server's error text from an OpenAI / vLLM / llama.cpp error body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200]
    msg = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        msg = msg or obj.get("message") or obj.get("detail")
    if not isinstance(msg, str):
        msg = json.dumps(obj)
    return " ".join(msg.split())[:200]


@dataclass
class Inflight:
    """A request being streamed; becomes a RequestRecord however it ends."""

    request_id: int
    scheduled_time: float
    expected_prompt_tokens: int
    max_tokens: int | None
    test: str = ""
    batch: int = 0
    start_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    content: list[bool] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # len(token_ids) of each chunk, -1 where it had none
    texts: list[str] | None = None
    usage: dict | None = None
    end_time: float | None = None
    error: str | None = None
    connect_failed: bool = False  # the server could not be reached at all
    # called with (this, time, text, token_ids) after each chunk with choices is recorded (--emit-progress)
    watch: Callable[[Inflight, float, str | None, Any], None] | None = None

    def to_record(self) -> RequestRecord:
        ok = self.error is None and len(self.chunk_times) > 0
        if self.error is None and not self.chunk_times:
            self.error = "no streamed chunk with choices"
        u = self.usage or {}
        pt = u.get("prompt_tokens")
        ct = u.get("completion_tokens")
        prompt_tokens = int(pt) if isinstance(pt, (int, float)) else int(self.expected_prompt_tokens)
        if ok:
            output_tokens = int(ct) if isinstance(ct, (int, float)) else int(sum(self.content))
        else:
            output_tokens = 0
        mask = None
        if self.content and not all(self.content):
            mask = np.asarray(self.content, dtype=bool)
        start = self.start_time if self.start_time is not None else self.scheduled_time
        # token_ids in every content chunk (return_token_ids, as llama-benchy 0.4.0 asks; vLLM's role
        # chunk has none): kept where a content chunk carried other than one token, e.g. a
        # speculative step's accepted drafts
        toks, chunk_tokens = self.tokens, None
        if toks and len(toks) == len(self.content):
            ours = [k for k, c in zip(toks, self.content) if c]
            if ours and min(ours) >= 0 and any(k != 1 for k in ours):
                chunk_tokens = np.maximum(np.asarray(toks, dtype=np.int64), 0)
        return RequestRecord(
            request_id=self.request_id, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            scheduled_time=self.scheduled_time, start_time=start,
            chunk_times=np.asarray(self.chunk_times, dtype=np.float64), content_mask=mask,
            end_time=self.end_time, error=self.error, max_tokens=self.max_tokens,
            test=self.test, batch=self.batch, chunk_tokens=chunk_tokens)

    @property
    def text(self) -> str:
        return "".join(self.texts or ())


# header names whose values are kept out of messages, as the API key is
_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie|password")


def tls_check(url: str, verify: bool = True) -> ssl.SSLContext | bool:
    """How the clients of one server check its TLS certificate: against the system's trust store, as vllm
    bench serve's aiohttp does (SSL_CERT_FILE / SSL_CERT_DIR honoured: an office's own CA), or not at all
    (`verify` False: its --insecure). httpx's default would read certifi's bundle alone."""
    if not verify:
        return False
    return ssl.create_default_context() if url.lower().startswith("https:") else True


class Client:
    """One shared connection pool to one server; never logs or stores the key."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 1800.0,
                 max_connections: int = 100, headers: dict[str, str] | None = None, verify: bool = True):
        """`headers`: sent with every request, over capsim's own (vllm bench serve's --header); `verify`
        False: the server's TLS certificate is not checked (vllm bench serve's --insecure)."""
        if not (timeout > 0) or math.isnan(timeout):
            raise MeasureError(f"--timeout must be > 0 seconds, got {timeout}")
        self.base, self.public_url, auth = split_url(url)
        self.verify = tls_check(self.base, verify)  # for every client of this server (metrics, /tokenize)
        self.api_key = api_key or None
        self.timeout = float(timeout)
        extra = dict(headers or {})
        headers = {"User-Agent": "capsim-measure", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers |= extra
        told = [x for k, v in extra.items() if _SECRET_HEADER.search(k) for x in (v, v.removeprefix("Bearer "))]
        self._secrets = [s for s in (self.api_key, *(auth or ()), *told) if s]
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=600.0)
        from .netbackend import make_transport

        # streams: the whole request is bounded by asyncio.timeout(self.timeout) in
        # stream(), so no per-read timer (one timer per chunk costs CPU at 100s of streams)
        self._stream_timeout = httpx.Timeout(connect=min(self.timeout, 30.0), read=None, write=self.timeout,
                                             pool=None)

        self.http = httpx.AsyncClient(
            base_url=self.base, headers=headers, auth=auth, transport=make_transport(limits, verify=self.verify),
            trust_env=False,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0), pool=None))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # ------------------------------------------------------------ helpers
    def redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _net_error(self, e: BaseException, what: str) -> MeasureError:
        if isinstance(e, httpx.ConnectError):
            return MeasureError(f"cannot connect to {self.public_url}: {self.redact(connect_reason(e))}")
        if isinstance(e, httpx.TimeoutException):
            return MeasureError(f"{what} at {self.public_url} timed out")
        return MeasureError(f"{what} at {self.public_url} failed: {self.redact(str(e) or type(e).__name__)}")

    async def get(self, path: str, timeout: float | None = None) -> httpx.Response:
        try:
            return await self.http.get(path, timeout=timeout or min(self.timeout, 30.0))
        except httpx.HTTPError as e:
            raise self._net_error(e, f"GET {path}") from None

    async def get_json(self, path: str, timeout: float | None = None) -> Any:
        r = await self.get(path, timeout)
        if r.status_code != 200:
            raise MeasureError(f"GET {path} at {self.public_url}: HTTP {r.status_code}: "
                               f"{self.redact(_error_message(r.content))}")
        try:
            return r.json()
        except ValueError:
            raise MeasureError(f"GET {path} at {self.public_url} did not return JSON") from None

    async def post_json(self, path: str, body: dict, timeout: float | None = None) -> tuple[int, Any]:
        """(status, parsed JSON or None). Network errors raise MeasureError."""
        try:
            r = await self.http.post(path, json=body, timeout=timeout or min(self.timeout, 60.0))
        except httpx.HTTPError as e:
            raise self._net_error(e, f"POST {path}") from None
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, data

    async def list_models(self) -> list[dict]:
        data = await self.get_json("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise MeasureError(f"GET /v1/models at {self.public_url} returned no model list")
        return [m for m in models if isinstance(m, dict) and m.get("id")]

    async def resolve_model(self, model: str | None) -> tuple[str, dict]:
        """The model to use (first served one when None) and its /v1/models entry."""
        models = await self.list_models()
        if not models:
            raise MeasureError(f"{self.public_url} serves no model (GET /v1/models is empty)")
        if model is None:
            return str(models[0]["id"]), models[0]
        for m in models:
            if m.get("id") == model:
                return model, m
        ids = ", ".join(str(m["id"]) for m in models[:5])
        raise MeasureError(f"model {model!r} is not served by {self.public_url} (it serves: {ids})")

    # ------------------------------------------------------------ streaming
    def build(self, endpoint: str, payload: dict, request_id: str | None = None) -> httpx.Request:
        """A ready request (JSON encoded, headers merged): built before a run, sent during it.
        `request_id`: its x-request-id header, the name the server gives it (vllm bench serve's)."""
        return self.http.build_request("POST", ENDPOINT_PATHS[endpoint], json=payload, timeout=self._stream_timeout,
                                       headers=None if request_id is None else {"x-request-id": request_id})

    async def stream(self, endpoint: str, payload: dict | httpx.Request, req: Inflight) -> Inflight:
        """Send one streaming request and fill `req`; never raises for server faults.

        `payload` is the JSON body or a request from `build()`. Cancellation
        (Ctrl-C) propagates after `req` was marked, so the caller can still
        write a record for it.
        """
        request = payload if isinstance(payload, httpx.Request) else self.build(endpoint, payload)
        parser = SSEParser()
        times = req.chunk_times
        content = req.content
        tokens = req.tokens
        texts = req.texts
        watch = req.watch
        chat = endpoint == "chat"
        done = False
        loads = json.loads
        try:
            async with asyncio.timeout(self.timeout):
                req.start_time = perf_counter()
                resp = await self.http.send(request, stream=True)
                try:
                    if resp.status_code != 200:
                        body = b""
                        async for part in resp.aiter_bytes():
                            body += part
                            if len(body) > 4096:
                                break
                        req.error = f"HTTP {resp.status_code}: {self.redact(_error_message(body))}"
                        return req
                    enc = resp.headers.get("content-encoding")
                    chunks = resp.aiter_raw() if enc is None or enc == "identity" else resp.aiter_bytes()
                    async for raw in chunks:
                        t = perf_counter()
                        for data in parser.feed(raw):
                            if data == b"[DONE]":
                                done = True
                                continue
                            try:
                                obj = loads(data)
                            except ValueError:
                                req.error = f"malformed SSE data: {self.redact(repr(data[:80].decode('utf-8', 'replace')))}"
                                return req
                            if not isinstance(obj, dict):
                                req.error = f"malformed SSE data: {self.redact(repr(data[:80].decode('utf-8', 'replace')))}"
                                return req
                            choices = obj.get("choices")
                            if choices:
                                times.append(t)
                                c0 = choices[0]
                                if chat:
                                    d = c0.get("delta") or {}
                                    txt = d.get("content") or d.get("reasoning_content") or d.get("reasoning")
                                else:
                                    txt = c0.get("text")
                                content.append(bool(txt))
                                tid = c0.get("token_ids")
                                tokens.append(len(tid) if isinstance(tid, list) else -1)
                                if texts is not None and txt:
                                    texts.append(txt)
                                if watch is not None:
                                    watch(req, t, txt, tid)
                            elif "error" in obj or obj.get("object") == "error":
                                err = obj.get("error", obj)
                                msg = err.get("message") if isinstance(err, dict) else str(err)
                                req.error = f"server error in stream: {self.redact(' '.join(str(msg).split())[:200])}"
                                return req
                            u = obj.get("usage")
                            if u:
                                req.usage = u
                    for data in parser.close():  # an event cut before its blank line
                        if data == b"[DONE]":
                            done = True
                    if not done:
                        req.error = ("stream ended without [DONE]" if times else
                                     "stream ended without any chunk")
                finally:
                    await resp.aclose()
        except TimeoutError:
            req.error = f"timeout: no complete response within {self.timeout:g} s"
        except httpx.ConnectError as e:
            req.connect_failed = True
            req.error = f"cannot connect: {self.redact(connect_reason(e))}"
        except httpx.TimeoutException as e:
            req.error = f"timeout ({type(e).__name__}) after {self.timeout:g} s"
        except httpx.RemoteProtocolError as e:
            req.error = ("server closed the connection mid-stream" if times else
                         f"server closed the connection: {self.redact(str(e))[:160]}")
        except httpx.HTTPError as e:
            req.error = f"connection error ({type(e).__name__}): {self.redact(str(e))[:160]}"
        except OSError as e:
            req.error = f"connection error: {self.redact(str(e))[:160]}"
        except asyncio.CancelledError:
            req.error = "interrupted: cancelled while in flight"
            req.end_time = perf_counter()
            raise
        finally:
            if req.end_time is None:
                req.end_time = perf_counter()
        return req

    # ------------------------------------------------------------ llama-benchy latency
    async def probe_latency(self, mode: str, model: str, endpoint: str = "chat", probes: int = 3) -> float:
        """llama-benchy's `measure_latency`: mean of `probes` probes, in seconds.

        api: GET /v1/models to the end of its body; generation: a streaming
        "hello" with max_tokens 1, start to the first body line; none: 0.
        """
        if mode == "none":
            return 0.0
        vals = []
        for _ in range(probes):
            if mode == "api":
                t0 = perf_counter()
                r = await self.get("/v1/models")
                if r.status_code != 200:
                    raise MeasureError(f"latency probe GET /v1/models: HTTP {r.status_code}")
                vals.append(perf_counter() - t0)
                continue
            if endpoint == "chat":
                body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
            else:
                body = {"model": model, "prompt": "hello"}
            body.update(max_tokens=1, stream=True)
            try:
                t0 = perf_counter()
                async with self.http.stream("POST", ENDPOINT_PATHS[endpoint], json=body) as resp:
                    if resp.status_code != 200:
                        msg = _error_message(await resp.aread())
                        raise MeasureError(f"latency probe: HTTP {resp.status_code}: {self.redact(msg)}")
                    t1 = None
                    async for line in resp.aiter_lines():
                        if t1 is None and line.strip():
                            t1 = perf_counter()  # keep reading: the connection stays reusable
                    if t1 is None:
                        raise MeasureError("latency probe: the server sent an empty body")
                    vals.append(t1 - t0)
            except httpx.HTTPError as e:
                raise self._net_error(e, "latency probe") from None
        return float(np.mean(vals))

    async def server_info(self) -> dict:
        """Version and kind of the server, best effort (never raises)."""
        info: dict[str, Any] = {}
        for path, key in (("/version", "vllm"), ("/props", "llamacpp")):
            try:
                r = await self.http.get(path, timeout=10.0)
            except httpx.HTTPError:
                continue
            if r.status_code != 200:
                continue
            try:
                d = r.json()
            except ValueError:
                continue
            if key == "vllm" and isinstance(d, dict) and "version" in d:
                info.update(server="vllm", server_version=str(d["version"]))
                break
            if key == "llamacpp" and isinstance(d, dict) and ("total_slots" in d or "build_info" in d):
                dgs = d.get("default_generation_settings") or {}
                info.update(server="llama.cpp", server_version=str(d.get("build_info", "")),
                            total_slots=d.get("total_slots"), n_ctx=dgs.get("n_ctx"))
                break
        return info


def env_api_key(explicit: str | None) -> str | None:
    return explicit or os.environ.get("OPENAI_API_KEY") or None
