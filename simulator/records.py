"""One record per request, identical for live and simulated runs.

Every metric capsim reports (vllm bench serve's and llama-benchy's) is computed
from these records alone, so a live run and a simulated run go through the same
summary code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_EMPTY = np.empty(0, dtype=np.float64)


@dataclass(slots=True, eq=False)
class RequestRecord:
    """A request as a client saw it. Times are seconds on one monotonic clock."""

    request_id: int
    prompt_tokens: int  # the server's count (usage.prompt_tokens)
    output_tokens: int  # usage.completion_tokens; 0 when the request failed
    scheduled_time: float  # when the load pattern wanted it sent (arrival)
    start_time: float  # when it was sent: after any client-side semaphore
    # Every streamed chunk whose `choices` was non-empty, in order. vllm bench
    # serve's TTFT, ITL and E2EL are all read off these.
    chunk_times: np.ndarray = field(default_factory=lambda: _EMPTY)
    # llama-benchy separates the first response (any choices, e.g. a role-only
    # delta) from the first content token; None means every chunk had content.
    content_mask: np.ndarray | None = None
    end_time: float | None = None  # stream closed ([DONE] or connection end)
    error: str | None = None
    max_tokens: int | None = None
    test: str = ""  # closed loop: llama-benchy's test key; mixtures: the class
    batch: int = 0  # closed loop: run index within the test
    preemptions: int = 0  # simulated runs only (live: unknown per request)
    # Tokens each chunk carried, where a chunk may carry several (speculative decoding); None
    # means one each. llama-benchy 0.4.0 counts tokens per chunk (from token_ids), so a chunk of
    # k tokens is k token timestamps in its tg and peak t/s.
    chunk_tokens: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.chunk_times) > 0

    @property
    def first_response_time(self) -> float | None:
        return float(self.chunk_times[0]) if len(self.chunk_times) else None

    def content_times(self) -> np.ndarray:
        if self.content_mask is None:
            return self.chunk_times
        return self.chunk_times[self.content_mask]

    def content_token_times(self) -> np.ndarray:
        """One timestamp per content token, as llama-benchy 0.4.0 stamps them: a content chunk of k
        tokens spreads them evenly over (the previous token's time, the chunk's time]; the first
        content chunk's are all at its own time. Tokens of chunks without content are not counted."""
        ct = self.content_times()
        if self.chunk_tokens is None:
            return ct
        k = self.chunk_tokens if self.content_mask is None else self.chunk_tokens[self.content_mask]
        keep = k > 0
        ct, k = ct[keep], k[keep].astype(np.int64)
        if len(ct) == 0 or (k == 1).all():
            return ct
        prev = np.concatenate([ct[:1], ct[:-1]])  # the last token of a chunk is stamped at the chunk's time
        start = np.repeat(np.cumsum(k) - k, k)
        frac = (np.arange(int(k.sum())) - start + 1) / np.repeat(k, k)
        return np.repeat(prev, k) + np.repeat(ct - prev, k) * frac

    @property
    def first_token_time(self) -> float | None:
        ct = self.content_times()
        return float(ct[0]) if len(ct) else None

    @property
    def ttft(self) -> float | None:
        return None if not self.ok else float(self.chunk_times[0]) - self.start_time

    @property
    def e2el(self) -> float | None:
        return None if not self.ok else float(self.chunk_times[-1]) - self.start_time

    def to_json(self) -> dict[str, Any]:
        d = {
            "request_id": self.request_id,
            "prompt_tokens": int(self.prompt_tokens),
            "output_tokens": int(self.output_tokens),
            "scheduled_time": self.scheduled_time,
            "start_time": self.start_time,
            "chunk_times": [float(t) for t in self.chunk_times],
            "end_time": self.end_time,
            "error": self.error,
            "max_tokens": self.max_tokens,
            "test": self.test,
            "batch": self.batch,
        }
        if self.content_mask is not None:
            d["content_mask"] = [bool(x) for x in self.content_mask]
        if self.preemptions:
            d["preemptions"] = self.preemptions
        if self.chunk_tokens is not None:
            d["chunk_tokens"] = [int(x) for x in self.chunk_tokens]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RequestRecord":
        mask, toks = d.get("content_mask"), d.get("chunk_tokens")
        return cls(
            request_id=int(d["request_id"]),
            prompt_tokens=int(d["prompt_tokens"]),
            output_tokens=int(d["output_tokens"]),
            scheduled_time=float(d["scheduled_time"]),
            start_time=float(d["start_time"]),
            chunk_times=np.asarray(d.get("chunk_times", []), dtype=np.float64),
            content_mask=None if mask is None else np.asarray(mask, dtype=bool),
            end_time=d.get("end_time"),
            error=d.get("error"),
            max_tokens=d.get("max_tokens"),
            test=d.get("test", ""),
            batch=int(d.get("batch", 0)),
            preemptions=int(d.get("preemptions", 0)),
            chunk_tokens=None if toks is None else np.asarray(toks, dtype=np.int64),
        )


@dataclass(slots=True, eq=False)
class RunResult:
    """All records of one benchmark run plus the run's own clock bounds.

    `start_time` is taken just before the first request is dispatched and
    `end_time` after the last one finished: vllm bench serve's benchmark
    duration is exactly `end_time - start_time`.
    """

    records: list[RequestRecord]
    start_time: float
    end_time: float
    kind: str  # "open" or "closed"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time
