"""HTTP/1.1 for capsim's own servers (the twin, the test fake), read and framed by h11.

This module only moves bytes between an h11.Connection and asyncio streams, writing each streamed
event the moment a server makes it; unreadable requests get 400 (413 for a body over MAX_BODY)
with an OpenAI-shaped error. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Awaitable, Callable

import h11

from simulator.errors import CapsimError

MAX_HEAD = 64 * 1024       # request line + headers (h11's default is 16 KiB; uvicorn's and vLLM's too)
MAX_BODY = 64 * 1024 * 1024  # a max_model_len prompt as JSON is a few MB
_READ = 64 * 1024
_MAX_PIPELINED = 1 << 20   # bytes kept from a client that sends while its response is being generated

log = logging.getLogger("capsim.http")


class BadRequest(CapsimError):
    """A request that cannot be read: answered with `status` and the connection closed."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str          # without the query string
    headers: dict      # lower-case names (the last value of a repeated header)
    body: bytes


def error_body(status: int, message: str, typ: str = "BadRequestError", param: str | None = None) -> dict:
    """OpenAI's (and vLLM's) error shape. vLLM's `type` is "BadRequestError" for a value it refuses (with the
    parameter's name) and "Bad Request" for a body its schema refuses (`param` "body.FIELD")."""
    return {"error": {"message": message, "type": typ, "param": param, "code": status}}


def invalid_body(field: str, message: str) -> dict:
    """A 400 for a body vLLM's request schema refuses (FastAPI's validation error, as vLLM maps it)."""
    return error_body(400, message, "Bad Request", f"body.{field}" if field else "body")


def message_text(content: Any) -> str:
    """An OpenAI chat message's text: a string, or content parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Error"


class Connection:
    """One client's TCP connection: requests in, responses out, through one h11.Connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: str = "capsim"):
        self.reader = reader
        self.writer = writer
        self.server = server.encode()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.closed = False  # the client closed or reset its side
        self._head = False   # answering a HEAD request: headers only

    # ------------------------------------------------------------ reading
    async def _receive(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        try:
            data = await self.reader.read(_READ)
        except OSError:
            data = b""
        if not data:
            self.closed = True
        self.h11.receive_data(data)

    async def _next_event(self):
        while True:
            ev = self.h11.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            if self.h11.they_are_waiting_for_100_continue:  # curl asks before a body over 1 KiB
                self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[],
                                                                          reason=b"Continue")))
            await self._receive()

    async def next_request(self) -> Request | None:
        """The next whole request, or None when the client closed the connection between requests.

        Raises BadRequest for a request h11 cannot read (a client that closed in the middle of one
        included) or one too large."""
        try:
            ev = await self._next_event()
        except h11.RemoteProtocolError as e:
            raise BadRequest(f"malformed HTTP request: {str(e)[:200]}") from None
        if not isinstance(ev, h11.Request):  # ConnectionClosed, or PAUSED after a close
            return None
        if len(ev.target) + sum(len(k) + len(v) + 4 for k, v in ev.headers) > MAX_HEAD:
            # h11's limit holds for a head still incomplete; one that arrived whole is measured here
            raise BadRequest(f"request line and headers over {MAX_HEAD} bytes")
        if not ev.http_version.startswith(b"1."):  # h11 reads any digit.digit
            raise BadRequest(f"HTTP/{ev.http_version.decode()} is not supported: HTTP/1.1 is", 505)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in ev.headers}  # h11 lower-cases names
        cl = headers.get("content-length")
        if cl is not None and int(cl) > MAX_BODY:  # h11 checked that it is digits
            raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
        body = bytearray()
        while True:
            try:
                part = await self._next_event()
            except h11.RemoteProtocolError as e:
                raise BadRequest(f"malformed HTTP request body: {str(e)[:200]}") from None
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return None
        method = ev.method.decode("latin-1").upper()
        self._head = method == "HEAD"
        # keep-alive is h11's to decide (Connection: close, HTTP/1.0): serve_connection reads its states
        return Request(method, ev.target.decode("latin-1").split("?", 1)[0], headers, bytes(body))

    async def until_closed(self) -> None:
        """Return when the client closes or resets the connection (for a server to abort work meant for it).

        What the client sends meanwhile (a pipelined next request) stays buffered for next_request."""
        while not self.closed:
            if len(self.h11.trailing_data[0]) > _MAX_PIPELINED:
                await asyncio.Future()  # read no more: only the caller's cancel ends this
            await self._receive()

    # ------------------------------------------------------------ writing
    @property
    def gone(self) -> bool:
        """The client closed, or the socket can take no more writes."""
        tr = self.writer.transport
        return self.closed or tr is None or tr.is_closing()

    def _write(self, *events) -> None:
        """h11's bytes for `events` in one write (one send(2) for a whole small response)."""
        tr = self.writer.transport
        if tr is None or tr.is_closing():  # asyncio would drop the bytes and log a warning per write
            raise ConnectionResetError("the client closed the connection")
        self.writer.write(b"".join(self.h11.send(ev) for ev in events if ev is not None))

    def _response(self, status: int, ctype: str, length: int | None, close: bool) -> h11.Response:
        headers = [(b"content-type", ctype.encode()), (b"server", self.server)]
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        if close:
            headers.append((b"connection", b"close"))
        return h11.Response(status_code=status, headers=headers, reason=_reason(status))

    def _data(self, payload: bytes) -> h11.Data | None:
        return h11.Data(data=payload) if payload and not self._head else None

    def start(self, status: int, ctype: str = "application/json", close: bool = False) -> None:
        """The headers of a streamed response: its body is chunked (to an HTTP/1.0 client: ends at close)."""
        self._write(self._response(status, ctype, None, close))

    def data(self, payload: bytes) -> None:
        """One chunk of the body, written now; ConnectionResetError if the client has gone."""
        if payload and not self._head:
            self._write(self._data(payload))

    def end(self, payload: bytes = b"") -> None:
        """The last chunk (if any) and the end of the body, in one write."""
        self._write(self._data(payload), h11.EndOfMessage())

    async def respond(self, status: int, obj, ctype: str = "application/json", close: bool = False) -> bool:
        """A whole response (bytes as they are, anything else as JSON); True, so a handler can return it."""
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self._write(self._response(status, ctype, len(data), close), self._data(data), h11.EndOfMessage())
        await self.writer.drain()
        return True

    async def refuse(self, status: int, message: str) -> None:
        """An error answer to a request that could not be read, if no response has begun; then close."""
        tr = self.writer.transport  # a client that only shut its sending side may still read the answer
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and tr is not None and not tr.is_closing():
            self._head = False
            typ = "InternalServerError" if status >= 500 else "BadRequestError"
            await self.respond(status, error_body(status, message, typ), close=True)


Handler = Callable[[Request, Connection], Awaitable[bool]]


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler,
                           writers: set, server: str = "capsim") -> None:
    """Serve requests on one connection until the client closes it, asks to, or `handle` returns False.

    `handle(request, connection)` answers through the connection's respond(), or start()/data()/end()
    for a stream. `writers` holds the open connections (so a server can abort them when it stops).
    Nothing a client sends or does (garbage, a reset mid-stream) is logged; a handler that raises
    gets the client a 500 and one logged error with its traceback, since that is a bug of the server.
    """
    conn = Connection(reader, writer, server)
    writers.add(writer)
    try:
        while True:
            try:
                req = await conn.next_request()
            except BadRequest as e:
                await conn.refuse(e.status, str(e))
                return
            if req is None:
                return
            try:
                ok = await handle(req, conn)
            except (ConnectionError, h11.RemoteProtocolError):
                return
            except Exception:
                log.exception("%s %s failed", req.method, req.path)
                await conn.refuse(500, "internal server error")
                return
            if not ok or conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                return  # the handler gave up, or either side asked to close (Connection: close, HTTP/1.0)
            conn.h11.start_next_cycle()
    except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
        return
    finally:
        writers.discard(writer)
        try:
            writer.close()
        except RuntimeError:
            pass


class Server:
    """The lifecycle the twin and the fake share: listen on the running loop (serve), or from a thread
    of its own (start, returns when listening); drop every connection at once (kill, like a crash);
    stop. A subclass answers requests in `answer` and may get ready in `_prepare`."""

    server_name = "capsim"
    thread_name = "capsim-http"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = int(port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._start_err: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _prepare(self) -> None:
        """On the loop, before listening."""

    async def answer(self, req: Request, http: Connection) -> bool:
        raise NotImplementedError

    async def serve(self) -> None:
        """Start listening on the running loop."""
        self._loop = asyncio.get_running_loop()
        await self._prepare()
        self._server = await asyncio.start_server(self._connected, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_connection(reader, writer, self.answer, self._writers, self.server_name)
        except asyncio.CancelledError:  # stopped with requests in flight: nothing to log
            pass

    def start(self):
        """Serve from a background thread (tests, notebooks); returns when listening (again: no-op)."""
        if self._thread is not None:
            return self

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except BaseException as e:
                self._start_err = e
                self._ready.set()
                loop.close()
                return
            try:
                loop.run_forever()
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=self.thread_name)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"{self.server_name} did not start")
        if self._start_err is not None:
            raise self._start_err
        return self

    def _call(self, fn) -> None:
        """Run fn on the server's loop and wait for it (a few seconds at most)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def wrapped():
            try:
                fn()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(wrapped)
        except RuntimeError:  # the loop closed meanwhile
            return
        done.wait(5)

    def _drop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            if w.transport is not None:
                w.transport.abort()
        self._writers.clear()

    def kill(self) -> None:
        """Like a crashed server: stop listening, drop every connection now."""
        self._call(self._drop)

    def _halt(self) -> None:
        self._call(lambda: (self._drop(), self._loop.stop()))

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(5)

    def stop(self) -> None:
        self._halt()
        self._join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
