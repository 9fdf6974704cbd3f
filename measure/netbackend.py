"""An asyncio-native network backend for httpx/httpcore (streaming hot path).

Reads with an asyncio Protocol instead of anyio's per-read epoll registration, so a chunk is
stamped sooner at less CPU; everything above it is httpx as usual, and `make_transport()` falls
back to httpx's default transport if httpcore's internals change. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import ssl
import typing

import importlib.util
import os
import sys
import time

import httpcore
import httpx

# httpcore creates its locks through `current_async_library()`, which tries
# `import sniffio` every time; without sniffio installed each try walks
# sys.path (a dozen stat calls per request). A None entry in sys.modules is
# Python's own negative import cache: the failed import becomes instant.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]


class _Protocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "eof", "exc", "waiter", "paused", "drain_waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf: list[bytes] = []
        self.eof = False
        self.exc: BaseException | None = None
        self.waiter: asyncio.Future | None = None
        self.paused = False
        self.drain_waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self):
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        self.eof = True
        self.exc = exc
        self._wake()
        d = self.drain_waiter
        if d is not None and not d.done():
            d.set_result(None)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        d = self.drain_waiter
        if d is not None and not d.done():
            d.set_result(None)


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, proto: _Protocol) -> None:
        self._t = transport
        self._p = proto

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._p
        if not p.buf:
            if p.eof:
                if p.exc is not None:
                    raise httpcore.ReadError(str(p.exc) or type(p.exc).__name__) from p.exc
                return b""
            loop = asyncio.get_running_loop()
            fut = p.waiter = loop.create_future()
            handle = loop.call_later(timeout, _expire, fut) if timeout is not None else None
            try:
                await fut
            except TimeoutError:
                raise httpcore.ReadTimeout("read timed out") from None
            finally:
                p.waiter = None
                if handle is not None:
                    handle.cancel()
            if not p.buf:
                if p.exc is not None:
                    raise httpcore.ReadError(str(p.exc) or type(p.exc).__name__) from p.exc
                return b""
        buf = p.buf
        if len(buf) == 1:
            data = buf[0]
            buf.clear()
        else:
            data = b"".join(buf)
            buf.clear()
        if len(data) > max_bytes:
            buf.append(data[max_bytes:])
            data = data[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        p = self._p
        if p.eof or self._t.is_closing():
            raise httpcore.WriteError("connection closed")
        self._t.write(buffer)
        if p.paused:
            loop = asyncio.get_running_loop()
            fut = p.drain_waiter = loop.create_future()
            handle = loop.call_later(timeout, _expire, fut) if timeout is not None else None
            try:
                await fut
            except TimeoutError:
                raise httpcore.WriteTimeout("write timed out") from None
            finally:
                p.drain_waiter = None
                if handle is not None:
                    handle.cancel()

    async def aclose(self) -> None:
        self._t.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            new_t = await asyncio.wait_for(
                loop.start_tls(self._t, self._p, ssl_context, server_hostname=server_hostname), timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise httpcore.ConnectError(str(e)) from e
        self._p.transport = new_t
        return AsyncioStream(new_t, self._p)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":
            return self._t.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._t.get_extra_info("sockname")
        if info == "server_addr":
            return self._t.get_extra_info("peername")
        if info == "socket":
            return self._t.get_extra_info("socket")
        if info == "is_readable":  # an idle keep-alive connection the server closed or wrote to
            return self._p.eof or bool(self._p.buf)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options=None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            t, p = await asyncio.wait_for(
                loop.create_connection(_Protocol, host, port,
                                       local_addr=(local_address, 0) if local_address else None), timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        sock = t.get_extra_info("socket")
        if sock is not None:
            for opt in socket_options or ():
                sock.setsockopt(*opt)
        return AsyncioStream(t, p)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options=None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            t, p = await asyncio.wait_for(loop.create_unix_connection(_Protocol, path), timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connect to {path} timed out") from None
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        return AsyncioStream(t, p)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FastPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with bookkeeping that does not grow with every open stream.

    httpcore 1.0's `_assign_requests_to_connections` runs on every request
    start and end; it sweeps all connections for closed or expired ones and,
    for each idle one, builds a list of all connections: O(n^2), about 1 ms per
    call at 100 open streams and far more at 500, blocking the event loop
    while chunks wait. Here the sweep runs at most once a second, or when the
    pool is full and needs the capacity; a queued request takes the first
    available connection after checking that one for expiry (what the sweep
    would have checked). Same decisions, without the per-call O(n) sweep.
    httpcore's private names used here: tests/test_upstream_private_api.py.
    """

    _last_sweep = 0.0

    def _sweep(self, closing: list) -> None:
        conns = self._connections
        n = len(conns)
        keep = []
        for c in conns:
            if c.is_closed():
                n -= 1
            elif c.has_expired():
                n -= 1
                closing.append(c)
            elif c.is_idle() and n > self._max_keepalive_connections:
                # upstream compares the count of *all* remaining connections
                n -= 1
                closing.append(c)
            else:
                keep.append(c)
        if len(keep) != len(conns):
            conns[:] = keep
        self._last_sweep = time.monotonic()

    def _assign_requests_to_connections(self) -> list:
        closing: list = []
        conns = self._connections
        swept = False
        if time.monotonic() - self._last_sweep >= 1.0:
            self._sweep(closing)
            swept = True
        for pool_request in [r for r in self._requests if r.connection is None]:  # is_queued()
            origin = pool_request.request.url.origin
            connection = None
            i = 0
            while i < len(conns):
                c = conns[i]
                if c.is_available() and c.can_handle_request(origin):
                    if c.has_expired():  # e.g. the server closed it while idle
                        del conns[i]
                        closing.append(c)
                        continue
                    connection = c
                    break
                i += 1
            if connection is None and len(conns) >= self._max_connections and not swept:
                self._sweep(closing)  # closed connections may hold the capacity
                swept = True
            if connection is not None:
                pool_request.assign_to_connection(connection)
            elif len(conns) < self._max_connections:
                connection = self.create_connection(origin)
                conns.append(connection)
                pool_request.assign_to_connection(connection)
            else:
                idle = next((c for c in conns if c.is_idle()), None)
                if idle is not None:
                    conns.remove(idle)
                    closing.append(idle)
                    connection = self.create_connection(origin)
                    conns.append(connection)
                    pool_request.assign_to_connection(connection)
        return closing


def make_transport(limits: httpx.Limits, **kw) -> httpx.AsyncHTTPTransport:
    """httpx's transport with the asyncio backend (or the default one if that fails)."""
    transport = httpx.AsyncHTTPTransport(limits=limits, **kw)
    if os.environ.get("CAPSIM_HTTPX_DEFAULT_TRANSPORT"):  # escape hatch: httpx/httpcore/anyio as shipped
        return transport
    try:
        pool = transport._pool  # private: tests/test_upstream_private_api.py checks it still takes
        if type(pool) is httpcore.AsyncConnectionPool:
            cls = FastPool if httpcore.__version__.startswith("1.0.") else httpcore.AsyncConnectionPool
            transport._pool = cls(
                ssl_context=pool._ssl_context, max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry, http1=True, http2=False,
                retries=0, network_backend=AsyncioBackend())
            transport.network_backend = "asyncio"
    except (AttributeError, TypeError):
        pass
    return transport
