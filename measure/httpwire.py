"""The little of HTTP/1.1 that capsim's own servers (the twin, the test fake) speak.

Both serve streaming responses over asyncio streams; an HTTP framework would add a
dependency and hide the write timing the twin's clock depends on.
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


class BadRequest(ValueError):
    """A request whose framing cannot be read (bad Content-Length or chunk size): answered with HTTP 400."""


@dataclass
class Request:
    method: str
    path: str          # without the query string
    headers: dict      # lower-case names
    body: bytes
    keep_alive: bool   # the client did not ask to close (HTTP/1.1 default)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection, or None when the client closed it or sent garbage.

    A body whose length cannot be read raises BadRequest (the connection cannot go on)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        cl = headers.get("content-length", "0") or "0"
        n = int(cl) if cl.isascii() and cl.isdigit() else -1
        if n < 0:
            raise BadRequest(f"bad Content-Length: {cl[:40]!r}")
        body = await reader.readexactly(n) if n else b""
    keep = headers.get("connection", "").lower() != "close" and version.upper() != "HTTP/1.0"
    return Request(method.upper(), target.split("?", 1)[0], headers, body, keep)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           handle: Callable[[Request], Awaitable[bool]], writers: set) -> None:
    """Serve requests on one connection until the client closes it, asks to, or `handle` returns False.

    `writers` holds the open connections (so a server can abort them when it stops).
    """
    writers.add(writer)
    try:
        while True:
            try:
                req = await read_request(reader)
            except BadRequest as e:  # answered, never a traceback in the server's log
                writer.write(response(400, {"error": {"message": str(e), "type": "BadRequestError", "code": 400}},
                                      keep=False))
                await writer.drain()
                return
            if req is None or not await handle(req) or not req.keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writers.discard(writer)
        try:
            writer.close()
        except RuntimeError:
            pass


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise BadRequest("chunk size line too long") from None
        text = line.split(b";")[0].strip() or b"0"
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", text):  # int(x, 16) would take -1, 0x10 and 1_0 too
            raise BadRequest(f"bad chunk size: {text[:40]!r}")
        size = int(text, 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return out
        out += await reader.readexactly(size)
        await reader.readexactly(2)


def response(status: int, obj, ctype: str = "application/json", keep: bool = True, server: str = "capsim") -> bytes:
    """A whole response with a body (bytes as they are, anything else as JSON)."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(data)}\r\nconnection: {'keep-alive' if keep else 'close'}\r\n"
            f"server: {server}\r\n\r\n").encode() + data
