"""The little of HTTP/1.1 that capsim's own servers (the twin, the test fake) speak.

Both serve streaming responses over asyncio streams; an HTTP framework would add a
dependency and hide the write timing the twin's clock depends on.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Awaitable, Callable

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str          # without the query string
    headers: dict      # lower-case names
    body: bytes
    keep_alive: bool   # the client did not ask to close (HTTP/1.1 default)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection, or None when the client closed it or sent garbage."""
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
        n = int(headers.get("content-length", "0") or 0)
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
            req = await read_request(reader)
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
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
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
