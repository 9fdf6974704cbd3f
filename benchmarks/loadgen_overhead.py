"""How much latency does capsim's load generator add to every streamed chunk?

    .venv/bin/python benchmarks/loadgen_overhead.py            # about a minute
    .venv/bin/python benchmarks/loadgen_overhead.py --quick    # about 20 s

A fast fake SSE server (measure.fakeserver, in its own process) writes the
perf_counter() of the moment it sends each chunk into the chunk's text.
perf_counter is CLOCK_MONOTONIC, shared by all processes of the machine, so
for every chunk

    lag = (client's recorded chunk time) - (server's send time)

is the whole error the client adds to TTFT/ITL timestamps: kernel loopback,
the event loop getting around to the socket, httpx/httpcore, SSE parsing.
The same streams read by vllm bench serve's own client design (aiohttp, a
perf_counter() per SSE message) and by a bare asyncio socket reader (no HTTP
library, no JSON: the floor any Python asyncio client pays on this machine)
run beside it.

Scenarios:
  staggered-100  100 concurrent streams whose chunks arrive at independent
                 times (the target: p99 lag < 1 ms)
  lockstep-100   100 streams started at once, so their chunks arrive in
                 bursts of 100, as from one vLLM decode step (every client
                 that timestamps in one event loop serialises a burst)
  sustain-500    500 concurrent streams held open (new ones start as old ones
                 end), 10 chunks/s each
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import run_open_async  # noqa: E402
from simulator.load import OpenLoop  # noqa: E402
from simulator.summary import summarize_open  # noqa: E402
from simulator.workload import RandomWorkload  # noqa: E402

STAMP = re.compile(rb'"text": "(\d+\.\d+) ')


def start_server(itl: float, ttft: float) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "measure.fakeserver", "--port", "0", "--itl", str(itl),
                          "--ttft", str(ttft), "--stamp"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = p.stdout.readline().strip()
    if not url.startswith("http"):
        p.kill()
        raise SystemExit("fake server did not start")
    return p, url


def pct(a: np.ndarray) -> dict:
    return {"n": len(a), "mean": float(np.mean(a)) * 1e3, "p50": float(np.percentile(a, 50)) * 1e3,
            "p99": float(np.percentile(a, 99)) * 1e3, "max": float(np.max(a)) * 1e3}


async def capsim_client(url: str, streams: int, n_req: int, tokens: int, rate: float) -> dict:
    run = await run_open_async(url, "fake-model", RandomWorkload(16, tokens), OpenLoop(rate=rate, max_concurrency=streams),
                               n_req, endpoint="completions", progress=False, scrape_metrics=False,
                               keep_text=True)
    cpu = run.client.cpu_s  # CPU of the dispatch-to-drain phase (prompt preparation excluded)
    texts = run.live.texts
    lags, mismatched = [], 0
    for r in run.records:
        stamps = np.array([float(x) for x in texts[r.request_id].split()])
        if len(stamps) == len(r.chunk_times):
            lags.append(r.chunk_times - stamps)
        else:  # the client recorded other chunks than the server sent: a defect, counted and shown
            mismatched += 1
    lag = np.concatenate(lags)
    s = summarize_open(run)
    dispatch = np.array([r.start_time - r.scheduled_time for r in run.records])
    return {"lag": pct(lag), "chunks": len(lag), "mismatched": mismatched, "failed": s["failed"],
            "completed": s["completed"],
            "peak_concurrency": s["max_concurrent_requests_sweep"], "duration": run.duration,
            "chunk_rate": len(lag) / run.duration, "cpu_us_per_chunk": 1e6 * cpu / max(1, len(lag)),
            "queue_p99_ms": float(np.percentile(dispatch, 99)) * 1e3 if rate != math.inf else None}


async def at_arrivals(one, rate: float, n_req: int) -> None:
    """Start one() at each arrival of OpenLoop(rate) (capsim's schedule, vLLM's rule) and wait for all."""
    t0 = time.perf_counter()
    tasks = []
    for g in OpenLoop(rate=rate).arrival_times(n_req):
        d = t0 + g - time.perf_counter()
        if d > 0:
            await asyncio.sleep(d)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)


async def bare_client(url: str, streams: int, n_req: int, tokens: int, rate: float) -> dict:
    """The floor: raw asyncio sockets, a timestamp per read, no HTTP library."""
    host, port = url.removeprefix("http://").split(":")
    body = (b'{"model": "fake-model", "prompt": "t1 t2 t3", "max_tokens": %d, "stream": true}' % tokens)
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    lags: list[float] = []
    sem = asyncio.Semaphore(streams)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, int(port))
            w.write(req)
            while True:
                data = await r.read(65536)
                t = time.perf_counter()
                if not data:
                    break
                for m in STAMP.finditer(data):
                    lags.append(t - float(m.group(1)))
                if b"[DONE]" in data:
                    break
            w.close()

    await at_arrivals(one, rate, n_req)
    return {"lag": pct(np.array(lags)), "chunks": len(lags)}


async def aiohttp_client(url: str, streams: int, n_req: int, tokens: int, rate: float) -> dict | None:
    """vllm bench serve's client: aiohttp, one ClientSession with a TCPConnector limited to the
    concurrency, response.content.iter_any() through its SSE splitter, a perf_counter() per message
    (vllm/benchmarks/lib/endpoint_request_func.py, async_request_openai_completions)."""
    try:
        import aiohttp
    except ImportError:
        return None
    body = {"model": "fake-model", "prompt": "t1 t2 t3", "max_tokens": tokens, "repetition_penalty": 1.0,
            "stream": True, "stream_options": {"include_usage": True}}
    lags: list[float] = []
    mismatched = [0]
    sem = asyncio.Semaphore(streams)
    conn = aiohttp.TCPConnector(limit=streams, limit_per_host=streams, keepalive_timeout=60, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=conn, trust_env=True,
                                     timeout=aiohttp.ClientTimeout(total=6 * 60 * 60)) as session:
        async def one():
            async with sem:
                buf, times, stamps = "", [], []
                async with session.post(url + "/v1/completions", json=body) as resp:
                    async for chunk in resp.content.iter_any():
                        buf += chunk.decode()
                        while "\n\n" in buf:  # vLLM's StreamedResponseHandler: one message per blank line
                            msg, buf = buf.split("\n\n", 1)
                            msg = msg.strip().removeprefix("data: ")
                            if not msg or msg.startswith(":") or msg == "[DONE]":
                                continue
                            data = json.loads(msg)
                            if choices := data.get("choices"):
                                times.append(time.perf_counter())
                                stamps.append(float(choices[0]["text"].split()[0]))
                if len(times) == tokens:
                    lags.extend(np.array(times) - np.array(stamps))
                else:
                    mismatched[0] += 1

        await at_arrivals(one, rate, n_req)
    return {"lag": pct(np.array(lags)), "chunks": len(lags), "mismatched": mismatched[0]}


def show(name: str, res: dict, bare: dict | None, aio: dict | None = None) -> None:
    lag = res["lag"]
    line = (f"{name:<14} streams ok {res['completed']:>4} failed {res['failed']}  peak concurrent "
            f"{res['peak_concurrency']:>3}  {res['chunk_rate']:>6.0f} chunks/s  client CPU "
            f"{res['cpu_us_per_chunk']:.0f} us/chunk\n"
            f"{'':<14} capsim (httpx) lag per chunk: mean {lag['mean']:.3f} ms  p50 {lag['p50']:.3f}  "
            f"p99 {lag['p99']:.3f}  max {lag['max']:.2f} ms  ({lag['n']} chunks)")
    if res["mismatched"]:
        line += f"\n{'':<14} DEFECT: {res['mismatched']} streams recorded other chunks than the server sent (left out)"
    if aio:
        b = aio["lag"]
        line += (f"\n{'':<14} aiohttp (vllm bench serve) lag: mean {b['mean']:.3f} ms  p50 {b['p50']:.3f}  "
                 f"p99 {b['p99']:.3f}  max {b['max']:.2f} ms  ({b['n']} chunks"
                 + (f", {aio['mismatched']} streams mismatched" if aio["mismatched"] else "") + ")")
    if bare:
        b = bare["lag"]
        line += (f"\n{'':<14} bare asyncio socket floor:    mean {b['mean']:.3f} ms  p50 {b['p50']:.3f}  "
                 f"p99 {b['p99']:.3f}  max {b['max']:.2f} ms"
                 f"\n{'':<14} added by httpx + SSE/JSON parsing: p50 {lag['p50'] - b['p50']:+.3f} ms, "
                 f"p99 {lag['p99'] - b['p99']:+.3f} ms")
    print(line, flush=True)


DESIGNS = """\
Client design, side by side
                         vllm bench serve (lib/endpoint_request_func.py)   capsim measure (measure/client.py)
HTTP library             aiohttp                                            httpx + httpcore (h11), on an asyncio-Protocol
                                                                            network backend instead of anyio, and a pool
                                                                            without httpcore's O(n^2) per-request sweep
sessions / pools         one ClientSession per run, TCPConnector            one AsyncClient per run, Limits(max_connections
                         (limit=max_concurrency or 0, keepalive)            = concurrency + 5, keepalive 600 s)
request bodies           built per request inside request_func             JSON-encoded before the run starts
reading the stream       response.content iter_any() ->                     response.aiter_raw() -> SSEParser (splits
                         StreamedResponseHandler (splits on \\n\\n)           lines, blank line ends an event, : comments)
timestamp                time.perf_counter() per SSE message               time.perf_counter() per network read, given
                                                                            to every event that read completed
TTFT / ITL / E2EL base   first message with non-empty choices / one ITL    identical (RequestRecord.chunk_times; role-only
                         per message / last choices message                 chat deltas counted, usage chunk and [DONE] not)
start_time               perf_counter() inside request_func, after the     perf_counter() just before the POST, after the
                         --max-concurrency semaphore                        --max-concurrency semaphore
arrivals                 precomputed gamma offsets, absolute sleeps        OpenLoop.arrival_times (the same rule), one
                                                                            task per arrival at start + offset
timeouts                 aiohttp ClientTimeout(total=6 h)                  --timeout (default 1800 s) per request
"""


async def main_async(a) -> None:
    results = {}
    # staggered: arrivals at rate streams/stream_duration keep ~`streams` open with independent phases
    for name, streams, tokens, itl, n_req, staggered in a.scenarios:
        proc, url = start_server(itl, a.ttft)
        try:
            stream_s = a.ttft + tokens * itl
            # staggered: arrivals a little faster than streams/stream_s, so the client semaphore
            # stays full and each new stream starts when an old one ends (independent phases)
            rate = 1.1 * streams / stream_s if staggered else math.inf
            res = await capsim_client(url, streams, n_req, tokens, rate)
            aio = await aiohttp_client(url, streams, n_req, tokens, rate)
            bare = await bare_client(url, streams, n_req, tokens, rate) if not a.no_bare else None
        finally:
            proc.terminate()
            proc.wait(10)
        show(name, res, bare, aio)
        results[name] = (res, bare, aio)
    print()
    print(DESIGNS)
    stag = results.get("staggered-100")
    if stag:
        p99 = stag[0]["lag"]["p99"]
        print(f"target: p99 added latency per chunk < 1 ms at 100 concurrent streams -> {p99:.3f} ms "
              f"({'met' if p99 < 1.0 else 'NOT met'})")
    if any(r[2] for r in results.values()):
        for name, (res, _, aio) in results.items():
            a99, h99 = aio["lag"]["p99"], res["lag"]["p99"]
            print(f"{name}: p99 lag per chunk, capsim (httpx) {h99:.3f} ms against vllm bench serve's aiohttp "
                  f"{a99:.3f} ms ({h99 / a99:.2f}x)")
    else:
        print("aiohttp is not installed (pip install 'capsim[bench]'): its arm was skipped")
    sus = results.get("sustain-500")
    if sus:
        r = sus[0]
        print(f"target: >= 500 concurrent streams -> peak {r['peak_concurrency']}, {r['failed']} failed "
              f"({'met' if r['peak_concurrency'] >= 500 and r['failed'] == 0 else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--ttft", type=float, default=0.05)
    ap.add_argument("--no-bare", action="store_true", help="skip the bare-socket floor")
    a = ap.parse_args()
    k = 1 if a.quick else 2
    # name, concurrent streams, chunks per stream, chunk interval (s), requests, staggered
    a.scenarios = [("staggered-100", 100, 100, 0.03, 150 * k, True),
                   ("lockstep-100", 100, 100, 0.03, 100 * k, False),
                   ("sustain-500", 500, 60, 0.1, 750 * k, True)]
    print(f"loopback fake SSE server in its own process; {Path('/proc/cpuinfo').read_text().count('processor')} "
          f"CPUs; python {sys.version.split()[0]}", flush=True)
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
