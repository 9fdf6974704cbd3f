"""measure/netbackend.py: the asyncio network backend and connection pool under httpx (issue 13).

Everything runs against real loopback servers started in the test: measure.fakeserver's streaming
OpenAI fake (the `fake` fixture), a measure.httpwire.Server that records who connects, and bare
asyncio servers for socket-level behaviour (silence, a close). No mocks.
"""
import asyncio
import json
import socket
import ssl
import struct
import time

import httpcore
import httpx
import pytest
from click.testing import CliRunner

from capsim.cli import main
from measure.httpwire import Server
from measure.netbackend import AsyncioBackend, FastPool, make_transport
from measure.runfiles import load_run
from tests.helpers import refused_port, tls_front

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


def test_tls_through_the_asyncio_backend_checked_as_vllm_bench_serve_checks_it(fake, tmp_path, monkeypatch):
    """https: the backend's start_tls carries the stream; the certificate is checked against the system's
    trust store (SSL_CERT_FILE names an office's own CA), or not at all (--insecure); an unknown CA is one
    MeasureError line that names --insecure. calibrate --live's first look at the server checks alike."""
    import trustme

    from calibrate.live import LiveError, read_server
    from measure.client import Client, tls_check
    from measure.errors import MeasureError

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    srv = fake(itl=0.0)
    assert tls_check(srv.url) is True and tls_check(srv.url, verify=False) is False  # plain http: nothing to check

    async def models(url: str, verify: bool = True):
        c = Client(url, timeout=10.0, verify=verify)
        try:
            return [m["id"] for m in await c.list_models()]
        finally:
            await c.aclose()

    with tls_front(srv.port, str(tmp_path / "server.pem")) as port:
        url = f"https://127.0.0.1:{port}"
        assert tls_check(url).verify_mode == ssl.CERT_REQUIRED
        with pytest.raises(MeasureError) as e:
            asyncio.run(models(url))
        assert "its TLS certificate did not verify (unable to get local issuer certificate; --insecure skips " \
               "the check)" in str(e.value) and "\n" not in str(e.value)
        assert asyncio.run(models(url, verify=False)) == ["fake-model"]
        t = make_transport(httpx.Limits(max_connections=2), verify=tls_check(url, verify=False))
        chunks = asyncio.run(stream_chunks(url, t, max_tokens=3))
        assert t.network_backend == "asyncio" and chunks[-1][1] == b"[DONE]" and len(chunks) == 4
        with pytest.raises(LiveError, match="certificate verify failed"):  # calibrate --live's server facts
            read_server(url)
        assert read_server(url, insecure=True).model == "fake-model"  # calibrate / validate --live --insecure
        closed = ["measure", "closed", url, "--pp", "16", "--tg", "2", "--runs", "1", "--no-warmup", "--no-progress",
                  "--no-metrics"]  # measure closed, capsim's own --insecure (llama-benchy has none)
        res = CliRunner().invoke(main, [*closed, "-o", str(tmp_path / "checked")])
        assert res.exit_code == 1 and "did not verify" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        res = CliRunner().invoke(main, [*closed, "--insecure", "-o", str(tmp_path / "unchecked")])
        assert res.exit_code == 0 and load_run(tmp_path / "unchecked").records[0].ok, res.output
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        assert asyncio.run(models(url)) == ["fake-model"] and read_server(url).model == "fake-model"


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


def test_idle_connections_are_kept_to_the_keepalive_limit_and_expire():
    """The pool's sweep (at most once a second, or when full) closes idle connections past
    max_keepalive_connections and expired ones, as httpcore's pool does on every call."""
    with Recorder(delay=0.1) as srv:
        async def burst(c, n):
            before = len(srv.ports)
            await asyncio.gather(*(c.get(f"/{i}") for i in range(n)))
            return set(srv.ports[before:])

        async def go():
            t = make_transport(httpx.Limits(max_connections=3, max_keepalive_connections=1, keepalive_expiry=60))
            async with httpx.AsyncClient(base_url=srv.url, transport=t, timeout=10) as c:
                first = await burst(c, 3)
                await asyncio.sleep(1.1)  # the next request sweeps: one idle connection is kept
                one = await burst(c, 1)
                again = await burst(c, 3)
            t2 = make_transport(httpx.Limits(max_connections=3, max_keepalive_connections=3, keepalive_expiry=0.2))
            async with httpx.AsyncClient(base_url=srv.url, transport=t2, timeout=10) as c:
                fresh = await burst(c, 1)
                await asyncio.sleep(0.4)  # idle past its expiry: not used again
                later = await burst(c, 1)
            return first, one, again, fresh, later

        first, one, again, fresh, later = asyncio.run(go())
        assert len(first) == 3 and one <= first
        assert len(again & first) == 1  # the kept one; the two closed at the sweep are new connections
        assert fresh.isdisjoint(later)


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


def loop_errors() -> list:
    """Install a handler on the running loop that keeps what its callbacks raise (a protocol callback's
    error is otherwise only logged, and the stream goes on as if nothing happened)."""
    errors: list = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    return errors


def reset(writer) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a proxy's drop does."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_data_before_a_read_is_kept_and_a_reset_is_a_read_error():
    """Bytes that arrive while nobody reads wait in the buffer; a reset is a ReadError whether it comes
    while a read waits or before the read, never an end of stream (b"") that reads as a short answer."""
    go_on = None

    async def talk_then_reset(reader, writer):
        writer.write(b"hello")
        await writer.drain()
        await go_on.wait()
        reset(writer)

    async def go():
        nonlocal go_on
        errors, go_on = loop_errors(), asyncio.Event()
        server, port = await serve(talk_then_reset)
        try:
            s = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5, local_address="127.0.0.1")
            await asyncio.sleep(0.1)  # the greeting arrives with no read waiting
            assert await s.read(100, timeout=5) == b"hello"
            asyncio.get_running_loop().call_later(0.05, go_on.set)
            with pytest.raises(httpcore.ReadError, match="reset by peer"):  # comes while this read waits
                await s.read(100)  # no timeout: as httpx reads a stream
            with pytest.raises(httpcore.ReadError):  # and stays what the stream says
                await s.read(100, timeout=5)
            await s.aclose()
            s2 = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            go_on.set()  # this one resets at once: the read comes after the reset
            await asyncio.sleep(0.1)
            with pytest.raises(httpcore.ReadError, match="reset by peer"):
                while True:
                    assert await s2.read(100, timeout=5) == b"hello"
        finally:
            server.close()
        return errors

    assert asyncio.run(go()) == []


def test_a_read_of_exactly_what_arrived_leaves_the_stream_open():
    """A read whose max_bytes is exactly what is buffered returns it all and leaves nothing behind: the
    next read waits for the server (an empty leftover would read as the end of the stream)."""
    more = None

    async def two_parts(reader, writer):
        writer.write(b"abcd")
        await writer.drain()
        await more.wait()
        writer.write(b"efgh")
        await writer.drain()
        writer.close()

    async def go():
        nonlocal more
        more = asyncio.Event()
        server, port = await serve(two_parts)
        try:
            s = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            got = await s.read(4, timeout=5)
            while len(got) < 4:
                got += await s.read(4 - len(got), timeout=5)
            asyncio.get_running_loop().call_later(0.05, more.set)
            rest = await s.read(100, timeout=5)
            await s.aclose()
        finally:
            server.close()
        return got, rest

    assert asyncio.run(go()) == (b"abcd", b"efgh")


def test_socket_options_are_set_and_a_closed_stream_refuses_writes():
    async def idle(reader, writer):
        await reader.read()

    async def go():
        server, port = await serve(idle)
        try:
            s = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5,
                                                   socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)])
            assert s.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            plain = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            assert plain.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
            await s.aclose()  # closed on our side, the server still there
            with pytest.raises(httpcore.WriteError):
                await s.write(b"x")
            await plain.aclose()
        finally:
            server.close()

    asyncio.run(go())


def test_a_write_waits_for_a_slow_reader_and_times_out_on_none():
    """Past the transport's buffer a write waits until the server reads (it is not lost, and no error is
    raised in the loop's callbacks); a server that never reads is a WriteTimeout."""
    start_reading = stop = None
    got = bytearray()

    async def slow(reader, writer):
        await start_reading.wait()
        while chunk := await reader.read(1 << 16):
            got.extend(chunk)

    async def deaf(reader, writer):
        await stop.wait()

    async def go():
        nonlocal start_reading, stop
        errors, start_reading, stop = loop_errors(), asyncio.Event(), asyncio.Event()
        big = b"x" * (16 << 20)  # past both sockets' buffers and the transport's high-water mark
        server, port = await serve(slow)
        deaf_server, deaf_port = await serve(deaf)
        try:
            s = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            asyncio.get_running_loop().call_later(0.2, start_reading.set)
            t0 = time.perf_counter()
            await s.write(big)  # no timeout: as httpx writes a request
            waited = time.perf_counter() - t0
            await s.aclose()
            d = await AsyncioBackend().connect_tcp("127.0.0.1", deaf_port, timeout=5)
            with pytest.raises(httpcore.WriteTimeout):
                await d.write(big, timeout=0.2)
            await d.aclose()
            for _ in range(100):
                if len(got) == len(big):
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.sleep(0.05)
            server.close()
            deaf_server.close()
        return errors, waited

    errors, waited = asyncio.run(go())
    assert errors == [] and waited >= 0.15 and len(got) == 16 << 20


def test_backend_sleep_sleeps():
    async def go():
        t0 = time.perf_counter()
        await AsyncioBackend().sleep(0.05)
        return time.perf_counter() - t0

    assert asyncio.run(go()) >= 0.045
