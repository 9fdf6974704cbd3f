"""Incremental server-sent-events parsing: bytes go in as they arrive from the socket, complete
`data:` payloads come out.

Events end at a blank line; `:` comment lines and other fields (`event:`, `id:`, `retry:`) are
skipped; several `data:` lines of one event are joined with a newline; CRLF and LF line ends both
work. Where reads end at events' ends (vLLM's server writes an event at a time), each event comes out
in the read in which vllm bench serve and llama-benchy take it (tests/test_conformance_vllm.py and
test_conformance_benchy.py run their own clients on the same reads); where a read ends inside an
event, it comes out at most one read later than in theirs, and whole where vLLM's loses it.
"""
from __future__ import annotations


class SSEParser:
    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of every event completed by `chunk`."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\n" not in buf:
            self._buf = buf
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()  # an unfinished line stays buffered
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # blank line: dispatch
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
                continue
            if line.startswith(b"data:"):
                v = line[5:]
                data.append(v[1:] if v.startswith(b" ") else v)
            # comments (":...") and other fields are ignored
        return out

    def close(self) -> list[bytes]:
        """At end of stream: an event cut before its blank line is still returned."""
        rest = self._buf.rstrip(b"\r")
        self._buf = b""
        if rest.startswith(b"data:"):
            v = rest[5:]
            self._data.append(v[1:] if v.startswith(b" ") else v)
        out = [b"\n".join(self._data)] if self._data else []
        self._data = []
        return out
