"""llama-benchy's --emit-progress: the closed loop's requests as JSONL events while they run.

The schema is llama-benchy 0.4.0's (progress.py, `llama-benchy-progress.v1`): a header, then
latency_measured, and per measured request request_start, request_first_response,
request_first_token, tokens (one a content chunk) and request_end, and bench_complete at the end.
Each line carries `schema`, `type` and `ts` (wall-clock seconds). Warmup requests emit nothing, as
there. A write that fails later (a consumer that hung up) is dropped so the run goes on, as there;
a PATH that cannot be opened stops the run before any request.
"""
from __future__ import annotations

import json
import sys
import time
from typing import IO, TYPE_CHECKING

from .errors import MeasureError

if TYPE_CHECKING:
    from .client import Inflight

SCHEMA = "llama-benchy-progress.v1"
BENCHY_VERSION = "0.4.0"  # the llama-benchy whose events these are (the header's llama_benchy_version)


class ProgressEvents:
    """JSONL progress events to PATH, to stdout where PATH is "-" (the caller keeps its own output off
    stdout then, as llama-benchy sends its prints to stderr), or to an open text stream, left open."""

    def __init__(self, target: str | IO[str]) -> None:
        if not isinstance(target, str) or target == "-":
            self._stream: IO[str] | None = sys.stdout if target == "-" else target
            self._owned = False
        else:
            try:
                self._stream = open(target, "w", buffering=1, encoding="utf-8")
            except OSError as e:
                raise MeasureError(f"--emit-progress {target}: cannot write: {e.strerror or e}") from None
            self._owned = True
        self._seen_token: set[int] = set()  # the requests whose first content chunk has come
        self._write({"schema": SCHEMA, "type": "header", "ts": time.time(), "llama_benchy_version": BENCHY_VERSION})

    def emit(self, kind: str, **fields) -> None:
        self._write({"schema": SCHEMA, "type": kind, "ts": time.time(), **fields})

    def request_start(self, request_id: int, model: str, base_url: str, pp: int, tg: int, depth: int,
                      concurrency: int, run_index: int) -> None:
        """A measured request about to go out; pp, tg and depth as the test names them."""
        self.emit("request_start", request_id=request_id, model=model, base_url=base_url, prompt_size=pp,
                  response_size=tg, context_size=depth, concurrency=concurrency, run_index=run_index,
                  target_label="")

    def chunk(self, req: Inflight, t: float, text: str | None, token_ids) -> None:
        """A streamed chunk with choices, just appended to `req` (client.Client.stream's watch): the first
        response, the first content chunk, and each content chunk's tokens (len(token_ids), else 1 estimated)."""
        rid = req.request_id
        if len(req.chunk_times) == 1:
            self.emit("request_first_response", request_id=rid, ttfr_s=t - req.start_time)
        if not text:
            return
        if rid not in self._seen_token:
            self._seen_token.add(rid)
            self.emit("request_first_token", request_id=rid, ttft_s=t - req.start_time)
        fields = {"request_id": rid, "count": len(token_ids) if isinstance(token_ids, list) else 1, "snippet": text}
        if not isinstance(token_ids, list):
            fields["estimated"] = True
        self.emit("tokens", **fields)

    def request_end(self, req: Inflight) -> None:
        """A measured request's end, however it ended. total_tokens is llama-benchy's count: the content
        chunks' token_ids where every one has them, else the usage's completion_tokens, else a token a chunk
        (llama-benchy tokenizes the text locally before that last resort; capsim has no local tokenizer)."""
        content = [i for i, c in enumerate(req.content) if c]
        ids = [req.tokens[i] for i in content]
        usage = req.usage or {}
        ct, pt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        if ids and min(ids) >= 0:
            total = sum(ids)
        elif isinstance(ct, int) and ct >= 0:
            total = ct
        else:
            total = len(ids)
        # llama-benchy stamps the end only of a stream it read to its close without an exception
        clean = req.error is None or req.error.startswith("stream ended without")
        decode = req.end_time - req.chunk_times[content[0]] if content and clean and req.end_time else 0.0
        self.emit("request_end", request_id=req.request_id, total_tokens=total if clean else 0,
                  prompt_tokens=pt if isinstance(pt, int) else 0, decode_seconds=max(0.0, decode),
                  error=req.error or "")

    def complete(self, status: str) -> None:
        """bench_complete: ok, interrupted (Ctrl-C) or error, as llama-benchy's statuses."""
        self.emit("bench_complete", status=status)

    def close(self) -> None:
        if self._owned and self._stream is not None:
            try:
                self._stream.close()
            except OSError:
                pass
        self._stream = None

    def _write(self, obj: dict) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a consumer that hung up must not stop the benchmark (llama-benchy's rule)
            pass
