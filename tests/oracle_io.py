"""The protocol of the oracles that run in the vLLM venv (vllm_oracle.py, benchy_oracle.py): a JSON
list of jobs on stdin, the list of answers as JSON on stdout, and whatever the library under test
prints sent to stderr so that it cannot corrupt the answer."""
import json
import sys
import types


def serve(answer) -> None:
    jobs = json.load(sys.stdin)
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        answers = [answer(j) for j in jobs]
    finally:
        sys.stdout = real_stdout
    json.dump(answers, sys.stdout)


def stream_session(reads: list[str]):
    """(session, clock): an aiohttp-like session whose every post() answers 200 and hands `reads` (latin-1 text
    of each read; None: the connection breaks there) to `response.content.iter_any()`, moving `clock.t`
    one second before each read; a tool's `time` module replaced by
    `types.SimpleNamespace(perf_counter=lambda: clock.t)` then records the read each chunk came in (sent
    at 0)."""
    clock = types.SimpleNamespace(t=0.0)
    data = [None if r is None else r.encode("latin-1") for r in reads]

    async def iter_any():
        for r in data:
            clock.t += 1.0
            if r is None:
                raise ConnectionResetError("connection reset by peer")
            yield r

    class Response:
        status = 200
        reason = "OK"
        content = types.SimpleNamespace(iter_any=iter_any)

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

    return types.SimpleNamespace(post=lambda *a, **kw: Response()), clock
