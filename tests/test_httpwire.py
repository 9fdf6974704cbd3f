"""The HTTP layer of capsim's own servers (measure/httpwire.py on h11), issue 11: a request that
cannot be read gets HTTP 400 with an OpenAI-shaped JSON error, never a traceback in the server's
log, and the server goes on serving. Raw sockets, so the bytes are exactly the ones written here.
"""
from __future__ import annotations

import gc
import json
import logging
import re
import socket
import struct
import time
import tomllib
from pathlib import Path

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from measure import httpwire
from measure.fakeserver import FakeConfig, FakeServer
from measure.twin import TwinServer
from simulator.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def twin():
    with TwinServer(load_profile(None), speed=50.0).start() as tw:
        yield tw


@pytest.fixture(scope="module")
def fake():
    with FakeServer(FakeConfig(ttft=0.0, itl=0.0)) as f:
        yield f


@pytest.fixture(scope="module")
def short_twin():
    """A twin whose context is 256 tokens, so that any request it accepts is over in moments."""
    prof = load_profile(None)
    prof.engine.max_model_len = 256
    with TwinServer(prof.validate(), speed=200.0).start() as tw, httpx.Client(base_url=tw.url, timeout=60) as c:
        tw.client = c
        yield tw


@pytest.fixture(params=["twin", "fake"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def quiet(caplog):
    """The server's log (its thread's records reach the root logger) must stay empty."""
    caplog.set_level(logging.WARNING)
    yield caplog
    time.sleep(0.02)
    noise = [f"{r.name}: {r.getMessage()}" for r in caplog.records]
    assert noise == []


def exchange(port: int, data: bytes, shut: bool = False, timeout: float = 20) -> bytes:
    """Send `data`, read until the server closes the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def split(resp: bytes) -> tuple[int, dict, bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + extra + b"content-length: %d\r\n\r\n" % len(body) + body)


def still_serves(srv) -> None:
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=20)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- framing h11 refuses: 400, then close

P = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"
CHUNKED = P + b"transfer-encoding: chunked\r\n\r\n"
FRAMING = {
    "request line": b"GARBAGE\r\n\r\n",
    "request line with spaces": b"GET / / HTTP/1.1\r\nhost: x\r\n\r\n",
    "version 1.x9": b"GET /v1/models HTTP/1.x9\r\nhost: x\r\n\r\n",
    "no host (HTTP/1.1)": b"GET /v1/models HTTP/1.1\r\n\r\n",
    "header without colon": b"GET /v1/models HTTP/1.1\r\nhost: x\r\nnonsense\r\n\r\n",
    "NUL in header": b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-a: b\x00c\r\n\r\n",
    "Content-Length 12x": P + b"content-length: 12x\r\n\r\n",
    "Content-Length -5": P + b"content-length: -5\r\n\r\n",
    "Content-Length 25 digits": P + b"content-length: " + b"9" * 25 + b"\r\n\r\n",
    "two Content-Lengths": P + b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}",
    "transfer-encoding gzip": P + b"transfer-encoding: gzip\r\n\r\n",
    "chunk size zz": CHUNKED + b"zz\r\n",
    "chunk size -1": CHUNKED + b"-1\r\n",
    "chunk size 0x10": CHUNKED + b"0x10\r\n",
    "chunk without its CRLF": CHUNKED + b"2\r\n{}XX0\r\n\r\n",
    "oversized header": b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (httpwire.MAX_HEAD + 10) + b"\r\n\r\n",
    "oversized request line": b"GET /" + b"a" * (httpwire.MAX_HEAD + 10) + b" HTTP/1.1\r\nhost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", list(FRAMING))
def test_unreadable_request_gets_400_and_the_server_goes_on(server, quiet, case):
    status, headers, body = split(exchange(server.port, FRAMING[case]))
    assert status == 400, case
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert err["code"] == 400 and err["type"] == "BadRequestError" and err["message"]
    still_serves(server)


def test_an_http_version_other_than_1_gets_505(server, quiet):
    status, headers, body = split(exchange(server.port, b"GET /v1/models HTTP/7.3\r\nhost: x\r\n\r\n"))
    assert status == 505 and json.loads(body)["error"]["code"] == 505 and headers["connection"] == "close"
    still_serves(server)


def test_a_body_over_the_limit_gets_413_before_it_is_sent(server, quiet):
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (httpwire.MAX_BODY + 1)
    status, headers, body = split(exchange(server.port, head))
    assert status == 413 and json.loads(body)["error"]["code"] == 413
    still_serves(server)


@pytest.fixture
def small_limits(monkeypatch):
    """A fake server whose head and body limits are 600 and 1000 bytes, so their edges are cheap to reach."""
    monkeypatch.setattr(httpwire, "MAX_HEAD", 600)
    monkeypatch.setattr(httpwire, "MAX_BODY", 1000)
    with FakeServer(FakeConfig(ttft=0.0, itl=0.0)) as f:
        yield f


def completion_body(size: int) -> bytes:
    """A completions request of exactly `size` bytes of JSON."""
    body = b'{"prompt": "", "max_tokens": 1}'
    return body[:12] + b"a" * (size - len(body)) + body[12:]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_the_limit_is_served_and_one_byte_more_gets_413(small_limits, quiet, chunked):
    for size, want in ((1000, 200), (1001, 413)):
        body = completion_body(size)
        if chunked:  # no length up front: the body is counted as it arrives
            head = CHUNKED.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
            req = head + b"%x\r\n%s\r\n0\r\n\r\n" % (size, body)
        else:
            req = post("/v1/completions", body, b"connection: close\r\n")
        status, _, got = split(exchange(small_limits.port, req))
        assert status == want, (size, got)


def test_a_head_of_the_limit_is_served_and_one_byte_more_gets_400(small_limits, quiet):
    # the limit counts the target and each header as name, value, ": " and CRLF
    def head(pad: int) -> bytes:
        return b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-pad: " + b"p" * pad + b"\r\n\r\n"

    fixed = sum(len(b) for b in (b"/v1/models", b"host", b"x", b"connection", b"close", b"x-pad")) + 3 * 4
    assert split(exchange(small_limits.port, head(600 - fixed)))[0] == 200
    status, _, body = split(exchange(small_limits.port, head(601 - fixed)))
    assert status == 400 and "over 600 bytes" in json.loads(body)["error"]["message"]


def test_a_client_that_shuts_its_side_after_garbage_still_reads_the_400(twin, quiet):
    status, _, _ = split(exchange(twin.port, b"GARBAGE\r\n\r\n", shut=True))
    assert status == 400


@pytest.mark.parametrize("partial", [b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{\"pro",
                                     b"POST /v1/compl", b"\r\n"])
def test_a_client_that_leaves_mid_request_is_not_news(server, quiet, partial):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    s.sendall(partial)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(20)
    got = s.recv(65536)
    s.close()
    assert got in (b"",) or got.startswith(b"HTTP/1.1 400 ")
    still_serves(server)


# ---------------------------------------------------------------- bodies the routes refuse: 400, keep-alive

BODIES = {
    "not JSON": b"{nope",
    "not UTF-8": b"\xff\xfe{}",
    "a JSON array": b"[1, 2]",
    "a JSON string": b'"prompt"',
    "nested 100k deep": b"[" * 100_000 + b"]" * 100_000,
    "max_tokens 1e400": b'{"prompt": "x", "max_tokens": 1e400}',
    "max_tokens NaN": b'{"prompt": "x", "max_tokens": NaN}',
    "max_tokens -Infinity": b'{"prompt": "x", "max_tokens": -Infinity}',
    "max_tokens 2.5": b'{"prompt": "x", "max_tokens": 2.5}',
    "max_tokens a string": b'{"prompt": "x", "max_tokens": "7"}',
    "max_tokens 5000 digits": b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("case", list(BODIES))
def test_a_body_that_is_no_request_gets_400_on_a_connection_that_lives(server, quiet, case):
    req = post("/v1/completions", BODIES[case])
    nxt = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    resp = exchange(server.port, req + nxt)  # pipelined: the second answer shows the connection lived
    first, second = resp.split(b"HTTP/1.1 ", 2)[1:]
    status, headers, body = split(b"HTTP/1.1 " + first)
    assert status == 400, (case, body)
    assert json.loads(body[:int(headers["content-length"])])["error"]
    assert split(b"HTTP/1.1 " + second)[0] == 200


def test_twin_tokenize_refuses_messages_that_are_no_list(twin, quiet):
    r = httpx.post(twin.url + "/tokenize", json={"messages": 5})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400


# ---------------------------------------------------------------- HTTP that must keep working

def test_keep_alive_pipelining_head_and_http10(server, quiet):
    two = (b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"
           + post("/v1/completions", b'{"prompt": "a", "max_tokens": 2}', b"connection: close\r\n"))
    resp = exchange(server.port, two)
    assert resp.count(b"HTTP/1.1 200 OK\r\n") == 2
    head = split(exchange(server.port, b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"))
    assert head[2] == b""  # HEAD: no body, whatever the status
    status, headers, body = split(exchange(server.port, b"GET /v1/models HTTP/1.0\r\n\r\n"))
    assert status == 200 and headers["connection"].lower() == "close" and json.loads(body)["data"]


def test_expect_100_continue_is_answered(twin, quiet):
    body = json.dumps({"prompt": "a " * 600, "max_tokens": 2}).encode()
    s = socket.create_connection(("127.0.0.1", twin.port), timeout=20)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nconnection: close\r\n"
              b"content-length: %d\r\n\r\n" % len(body))
    assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
    s.sendall(body)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert split(out)[0] == 200


def test_a_stream_is_chunked_one_event_per_chunk(server, quiet):
    req = post("/v1/completions", b'{"prompt": "a", "max_tokens": 3, "stream": true}', b"connection: close\r\n")
    status, headers, body = split(exchange(server.port, req))
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"].startswith("text/event-stream")
    chunks, rest = [], body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            assert rest == b"\r\n"
            break
        chunks.append(rest[:n])
        assert rest[n:n + 2] == b"\r\n"
        rest = rest[n + 2:]
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"data: ") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n" and len(chunks) >= 4


def test_resets_mid_stream_stay_out_of_the_log(server, quiet):
    body = json.dumps({"prompt": "hello", "max_tokens": 3000, "stream": True}).encode()
    if isinstance(server, FakeServer):
        server.config.itl = 0.002
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
            s.sendall(post("/v1/completions", body))
            got = b""
            while b"data:" not in got:
                got += s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, mid-stream
        time.sleep(0.5)  # the fake goes on writing for a while: none of it may reach the log
        still_serves(server)
        gc.collect()  # an unretrieved task exception is logged when the task is collected
    finally:
        if isinstance(server, FakeServer):
            server.config.itl = 0.0


class _Broken(httpwire.Server):
    server_name = "broken"

    async def answer(self, req, http) -> bool:
        if req.path == "/bug":
            raise KeyError("a bug of the server")
        return await http.respond(200, {"ok": True})


def test_a_server_bug_is_a_500_and_one_logged_error(caplog):
    caplog.set_level(logging.WARNING)
    with _Broken() as srv:
        status, headers, body = split(exchange(srv.port, b"GET /bug HTTP/1.1\r\nhost: x\r\n\r\n"))
        assert status == 500 and json.loads(body)["error"]["type"] == "InternalServerError"
        assert httpx.get(srv.url + "/fine").json() == {"ok": True}
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("capsim.http", "ERROR", "GET /bug failed")]


def test_stop_and_kill_are_no_ops_before_start_and_after_stop_and_start_twice_is_one_server():
    srv = _Broken()
    srv.kill()
    srv.stop()  # never started: nothing to stop
    assert srv.start() is srv
    port = srv.port
    assert srv.start() is srv and srv.port == port  # already listening: the same server
    assert httpx.get(srv.url + "/fine").json() == {"ok": True}
    srv.stop()
    srv.kill()
    srv.stop()  # stopped already: its loop is closed
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/fine", timeout=2)


# ---------------------------------------------------------------- property: any bytes

@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda a, b: a + b"\r\n\r\n" + b, st.binary(max_size=200), st.binary(max_size=100)),
    st.builds(lambda m, t, h: m + b" " + t + b" HTTP/1.1\r\nhost: x\r\n" + h + b"\r\n\r\n",
              st.sampled_from([b"GET", b"POST", b"PUT", b"get", b""]), st.binary(min_size=1, max_size=40),
              st.binary(max_size=80)),
))
def test_any_bytes_get_an_answer_or_a_close_never_a_log(twin, junk):
    with _capture() as records:
        s = socket.create_connection(("127.0.0.1", twin.port), timeout=20)
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        s.close()
    assert out == b"" or re.match(rb"HTTP/1\.1 [1-5]\d\d ", out), out[:100]
    assert b"HTTP/1.1 500" not in out
    assert records == []


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]),
       body=st.dictionaries(st.sampled_from(["prompt", "messages", "max_tokens", "max_completion_tokens", "stream",
                                             "stream_options", "tokens", "model", "add_special_tokens"]),
                            st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                                         lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                                max_size=4),
                                         max_leaves=10)))
def test_any_json_body_gets_a_4xx_or_a_2xx_never_a_500(short_twin, path, body):
    with _capture() as records:
        data = json.dumps(body).encode()  # NaN and Infinity included: Python writes them, clients may too
        r = short_twin.client.post(path, content=data, headers={"content-type": "application/json"})
    model = body.get("model")
    unknown = path.startswith("/v1/") and isinstance(model, str) and model not in ("", short_twin.model)
    assert r.status_code in ((404,) if unknown else (200, 400)), (body, r.text[:200])  # vLLM: no such model, 404
    assert records == []


class _capture:
    """Log records at WARNING and above from every thread, for use inside @given (no caplog there)."""

    def __enter__(self):
        self.records: list = []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = self.records.append
        logging.getLogger().addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)


# ---------------------------------------------------------------- the h11 we rely on

def test_h11_is_declared_with_an_upper_bound_that_the_installed_one_meets():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "h11"]
    assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), req  # an upper bound
    assert req.specifier.contains(version("h11")), (str(req), version("h11"))


def test_h11_api_we_rely_on():
    """Fails loudly if an h11 release changes what httpwire uses: names, states, framing, errors."""
    for name in ("Connection", "SERVER", "NEED_DATA", "PAUSED", "Request", "Data", "EndOfMessage", "Response",
                 "InformationalResponse", "ConnectionClosed", "RemoteProtocolError", "LocalProtocolError",
                 "IDLE", "SEND_RESPONSE", "DONE", "MUST_CLOSE", "ERROR"):
        assert hasattr(h11, name), name
    c = h11.Connection(h11.SERVER, max_incomplete_event_size=httpwire.MAX_HEAD)
    c.receive_data(b"POST /x?q=1 HTTP/1.1\r\nHost: a\r\nX-Key: V\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"2\r\n{}\r\n0\r\n\r\nGET /y HTTP/1.1\r\nhost: a\r\n\r\n")
    ev = c.next_event()
    assert isinstance(ev, h11.Request) and ev.method == b"POST" and ev.target == b"/x?q=1"
    assert ev.http_version == b"1.1" and (b"x-key", b"V") in list(ev.headers)  # names lower-cased
    assert isinstance(c.next_event(), h11.Data) and isinstance(c.next_event(), h11.EndOfMessage)
    assert c.next_event() is h11.PAUSED and c.they_are_waiting_for_100_continue is False
    assert len(c.trailing_data[0]) > 0 and c.trailing_data[1] is False
    head = c.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")], reason=b"OK"))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked\r\n" in head.lower()
    assert c.send(h11.Data(data=b"hello")) == b"5\r\nhello\r\n"
    assert c.send(h11.EndOfMessage()) == b"0\r\n\r\n"
    assert c.our_state is h11.DONE and c.their_state is h11.DONE
    c.start_next_cycle()
    assert isinstance(c.next_event(), h11.Request)
    # the errors httpwire turns into 400s are RemoteProtocolErrors (nothing else escapes next_event)
    for bad in (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1x\r\n\r\n",
                b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * (httpwire.MAX_HEAD + 1)):
        c = h11.Connection(h11.SERVER, max_incomplete_event_size=httpwire.MAX_HEAD)
        c.receive_data(bad)
        with pytest.raises(h11.RemoteProtocolError):
            while c.next_event() is not h11.NEED_DATA:
                pass
            raise AssertionError("h11 asked for more data")
        assert c.their_state is h11.ERROR and c.our_state in (h11.IDLE, h11.SEND_RESPONSE)
        # and a response can still be sent after one (the 400)
        out = c.send(h11.Response(status_code=400, headers=[(b"content-length", b"0"), (b"connection", b"close")],
                                  reason=b"Bad Request"))
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        c.send(h11.EndOfMessage())
        assert c.our_state is h11.MUST_CLOSE
    # a close between requests is ConnectionClosed, keep-alive off for HTTP/1.0
    c = h11.Connection(h11.SERVER)
    c.receive_data(b"")
    assert isinstance(c.next_event(), h11.ConnectionClosed)
    c = h11.Connection(h11.SERVER)
    c.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    c.next_event()
    assert b"connection: close" in c.send(h11.Response(status_code=200, headers=[], reason=b"OK")).lower()
