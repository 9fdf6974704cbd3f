"""measure/netbackend.py: the asyncio network backend and connection pool under httpx (issue 13).

Everything runs against real loopback servers started in the test: measure.fakeserver's streaming
OpenAI fake (the `fake` fixture), a measure.httpwire.Server that records who connects, and bare
asyncio servers for socket-level behaviour (silence, a close). No mocks.
"""
import asyncio
import json
import time

import httpcore
import httpx
import pytest

from measure.httpwire import Server
from measure.netbackend import AsyncioBackend, FastPool, make_transport
from tests.helpers import refused_port

BODY = {"model": "fake-model", "prompt": "t1 t2 t3", "stream": True}


class Recorder(Server):
    """Answers every request with {"ok": true} after `delay` s; records each request's client port and
    the most requests it was answering at once."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.ports: list[int] = []
        self.active = self.most_active = 0

    async def answer(self, req, http) -> bool:
        self.ports.append(http.writer.get_extra_info("peername")[1])
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return await http.respond(200, {"ok": True})


async def stream_chunks(url: str, transport, max_tokens: int, timeout: float = 10.0) -> list[tuple[float, bytes]]:
    """(arrival time, line) of every SSE data line of one streamed completion."""
    out = []
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=timeout) as c:
        async with c.stream("POST", "/v1/completions", json={**BODY, "max_tokens": max_tokens}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    out.append((time.perf_counter(), line[6:].encode()))
    return out


# ------------------------------------------------------------------ the transport httpx gets

def test_make_transport_streams_through_the_asyncio_backend(fake):
    srv = fake(ttft=0.01, itl=0.08)
    t = make_transport(httpx.Limits(max_connections=4))
    assert t.network_backend == "asyncio"  # the fast path is in place (httpcore 1.0)
    chunks = asyncio.run(stream_chunks(srv.url, t, max_tokens=6))
    texts = [json.loads(d)["choices"][0]["text"] for _, d in chunks[:-1]]
    assert texts == ["t5 ", "t6 ", "t7 ", "t8 ", "t9 ", "t10 "] and chunks[-1][1] == b"[DONE]"
    # chunks are delivered as the server sends them, 80 ms apart, not buffered to the end: the
    # server sends the last content chunk 5 x 80 ms = 400 ms after the first (250 ms leaves the
    # client 150 ms of scheduling delay on a busy machine)
    assert chunks[5][0] - chunks[0][0] >= 0.25


def test_the_escape_hatch_gives_httpx_as_shipped(fake, monkeypatch):
    monkeypatch.setenv("CAPSIM_HTTPX_DEFAULT_TRANSPORT", "1")
    t = make_transport(httpx.Limits(max_connections=4))
    assert getattr(t, "network_backend", None) != "asyncio"
    srv = fake(itl=0.0)
    chunks = asyncio.run(stream_chunks(srv.url, t, max_tokens=3))
    assert [d for _, d in chunks][-1] == b"[DONE]" and len(chunks) == 4


def test_fast_pool_is_httpcores_pool():
    # FastPool changes only the bookkeeping: it is an httpcore pool, so httpx accepts it unchanged
    assert issubclass(FastPool, httpcore.AsyncConnectionPool)


# ------------------------------------------------------------------ the pool, seen from the server

def test_sequential_requests_reuse_one_connection():
    with Recorder() as srv:
        async def go():
            t = make_transport(httpx.Limits(max_connections=4, max_keepalive_connections=4))
            async with httpx.AsyncClient(base_url=srv.url, transport=t) as c:
                for _ in range(5):
                    assert (await c.get("/x")).json() == {"ok": True}

        asyncio.run(go())
        assert len(srv.ports) == 5 and len(set(srv.ports)) == 1  # five requests, one TCP connection


def test_concurrent_requests_queue_for_max_connections():
    with Recorder(delay=0.05) as srv:
        async def go():
            t = make_transport(httpx.Limits(max_connections=2, max_keepalive_connections=2))
            async with httpx.AsyncClient(base_url=srv.url, transport=t, timeout=10) as c:
                rs = await asyncio.gather(*(c.get(f"/{i}") for i in range(8)))
            return [r.status_code for r in rs]

        assert asyncio.run(go()) == [200] * 8
        # all 8 answered, never more than 2 at once, over at most 2 connections
        assert len(srv.ports) == 8 and srv.most_active == 2 and len(set(srv.ports)) <= 2


# ------------------------------------------------------------------ failures, through httpx

def test_a_connection_dropped_mid_stream_is_an_error_after_the_chunks_sent(fake):
    srv = fake(itl=0.01, fault="close", fault_chunk=2)

    async def go():
        got = []
        async with httpx.AsyncClient(base_url=srv.url, transport=make_transport(httpx.Limits())) as c:
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                async with c.stream("POST", "/v1/completions", json={**BODY, "max_tokens": 8}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            got.append(json.loads(line[6:])["choices"][0]["text"])
        return got

    assert asyncio.run(go()) == ["t5 ", "t6 "]


def test_a_server_that_stops_sending_times_out(fake):
    srv = fake(itl=0.01, fault="hang", fault_chunk=1)

    async def go():
        async with httpx.AsyncClient(base_url=srv.url, transport=make_transport(httpx.Limits()),
                                     timeout=httpx.Timeout(10.0, read=0.3)) as c:
            t0 = time.perf_counter()
            with pytest.raises(httpx.ReadTimeout):
                async with c.stream("POST", "/v1/completions", json={**BODY, "max_tokens": 8}) as r:
                    async for _ in r.aiter_lines():
                        pass
            return time.perf_counter() - t0

    assert 0.25 < asyncio.run(go()) < 5.0


def test_a_refused_connection_is_a_connect_error():
    with refused_port() as port:
        async def go():
            async with httpx.AsyncClient(transport=make_transport(httpx.Limits())) as c:
                await c.get(f"http://127.0.0.1:{port}/")

        with pytest.raises(httpx.ConnectError):
            asyncio.run(go())


# ------------------------------------------------------------------ the backend's streams themselves

async def serve(handler):
    """A bare asyncio server on loopback; returns (server, port)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_stream_read_write_and_addresses():
    async def echo_then_close(reader, writer):
        data = await reader.readexactly(10)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async def go():
        server, port = await serve(echo_then_close)
        try:
            s = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            assert s.get_extra_info("server_addr") == ("127.0.0.1", port)
            assert s.get_extra_info("client_addr")[0] == "127.0.0.1"
            assert s.get_extra_info("socket") is not None and s.get_extra_info("ssl_object") is None
            assert s.get_extra_info("is_readable") is False  # nothing arrived yet
            await s.write(b"")  # nothing to send is a no-op
            await s.write(b"abcdefghij")
            first = await s.read(4, timeout=5)  # max_bytes cuts, the rest waits for the next read
            rest = b""
            while len(first + rest) < 10:
                rest += await s.read(100, timeout=5)
            assert (first, first + rest) == (b"ABCD", b"ABCDEFGHIJ")
            assert await s.read(100, timeout=5) == b""  # the server closed: end of stream
            assert s.get_extra_info("is_readable") is True  # an idle connection the server closed
            with pytest.raises(httpcore.WriteError):
                await s.write(b"more")
            await s.aclose()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(go())


def test_stream_read_timeout_and_connect_errors():
    async def silent(reader, writer):
        await asyncio.sleep(30)

    async def go():
        server, port = await serve(silent)
        try:
            s = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            t0 = time.perf_counter()
            with pytest.raises(httpcore.ReadTimeout):
                await s.read(100, timeout=0.2)
            waited = time.perf_counter() - t0
            await s.aclose()
        finally:
            server.close()
        with refused_port() as closed:
            with pytest.raises(httpcore.ConnectError):
                await AsyncioBackend().connect_tcp("127.0.0.1", closed, timeout=5)
        return waited

    assert 0.15 < asyncio.run(go()) < 5.0


def test_backend_sleep_sleeps():
    async def go():
        t0 = time.perf_counter()
        await AsyncioBackend().sleep(0.05)
        return time.perf_counter() - t0

    assert asyncio.run(go()) >= 0.045
