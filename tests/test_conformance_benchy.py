"""capsim's closed-loop summary against llama-benchy 0.4.0's own result code.

The same requests (chunk times, content or not, token_ids per chunk, usage) go through capsim's
summarize_closed and, in the vLLM venv, through llama-benchy's LLMClient._finalize_stream_tokens and
BenchmarkResults.add (tests/benchy_oracle.py): every table value must agree. The cases cover one
token a chunk, chunks of several tokens (speculative decoding: 0.4.0 counts token_ids and spreads a
chunk's tokens over the time since the token before), role-only and empty chunks, tokens that sit
exactly one second apart (the peak window's edge) and requests that end within one chunk.
Needs the vLLM venv with llama-benchy (scripts/setup_vllm_cpu.sh); fails without it in CI.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zlib

import numpy as np
import pytest

from capsim.benchy_flags import closed_csv
from measure.progress_events import ProgressEvents
from simulator.records import ClosedLoopFacts, RequestRecord, RunResult
from simulator.summary import (BENCHY_METRICS, ClosedRow, closed_report_head, closed_report_rows, closed_rows_json,
                               format_closed_table, peak_window_rate, peak_window_series, summarize_closed)
from tests.live_server import SETUP_SCRIPT, oracle_answers, vllm_available
from tests.stream_cases import STREAMS, capsim_reads, sse_event


def _request(rng, start, ttfr, n_chunks, itl, tokens=lambda rng: 1, role=True, empty_every=0, grid=None):
    """One request: a role chunk (no content) at ttfr, then content chunks, some empty ones carrying
    held-back tokens; times on `grid` (exact multiples) when given, so ties and 1-s edges occur."""
    t = start + ttfr
    chunks = [[t, False, 0]] if role else []
    for i in range(n_chunks):
        t += grid if grid else itl * rng.uniform(0.5, 1.5)
        if empty_every and i % empty_every == empty_every - 1:
            chunks.append([t, False, 1])
        else:
            chunks.append([t, True, int(tokens(rng))])
    completion = sum(c[2] for c in chunks)
    return {"start": start, "end": t + 0.004, "chunks": chunks, "prompt_tokens": 0, "completion_tokens": completion}


def _case(name, pp, tg, c, runs, latency, n_chunks: int = 40, usage=(), depth=0, prefix=None, **kw):
    """`usage`: the server's prompt token counts, request after request (0: none reported); pp where it ends.
    `prefix`: llama-benchy's --enable-prefix-caching, "ctx" for a test's context loads (its runner.py expects
    depth prompt tokens of them), "cached" for its requests after them (expects pp)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same requests in every process
    batches, t0, usage = [], 0.0, list(usage)
    for _ in range(runs):
        batch = [_request(rng, t0 + (0.0 if kw.get("grid") else rng.uniform(0, 0.002)),
                          0.25 + 0.05 * j, n_chunks, 0.03, **kw) for j in range(c)]
        for r in batch:
            r["prompt_tokens"] = usage.pop(0) if usage else pp
        batches.append(batch)
        t0 = max(r["end"] for r in batch) + 0.5
    expected = {"ctx": depth, "cached": pp}.get(prefix, pp + depth)
    return {"name": name, "pp": pp, "tg": tg, "depth": depth, "concurrency": c, "latency": latency,
            "expected_pp": expected, "batches": batches, "context_phase": prefix == "ctx",
            "prefix_caching": prefix is not None}


def _no_content(case: dict, which=(1,)) -> dict:
    """The case with the requests `which` of every batch answering no content (its role chunk only, no tokens:
    an answer that ended at once): llama-benchy counts their first response and prompt, and no first token,
    prompt or decode speed, nor peak for them; a batch of only such answers has no batch figures."""
    for batch in case["batches"]:
        for i in which:
            r = batch[i]
            r["chunks"], r["completion_tokens"] = r["chunks"][:1], 0
            r["end"] = r["chunks"][0][0] + 0.004
    return case


CASES = [
    _case("one token a chunk, c1", 512, 40, 1, 3, 0.1),
    _case("one token a chunk, c4", 512, 40, 4, 2, 0.1),
    _case("speculative chunks, c1", 256, 120, 1, 3, 0.05, tokens=lambda rng: rng.integers(1, 6)),
    _case("speculative chunks, c3", 256, 120, 3, 2, 0.05, tokens=lambda rng: rng.integers(1, 6)),
    _case("held-back tokens in empty chunks", 128, 40, 2, 2, 0.0, empty_every=7),
    _case("tokens exactly 1/8 s apart", 64, 40, 2, 2, 0.0, grid=0.125),
    _case("no role chunk, first chunk of 4 tokens", 64, 30, 2, 1, 0.0, role=False,
          tokens=lambda rng: 4),
    _case("a whole answer in one chunk", 64, 5, 2, 2, 0.0, n_chunks=1, tokens=lambda rng: 5),
    _case("one token an answer (tg 1), c2", 128, 1, 2, 2, 0.0, n_chunks=1),
    _case("two tokens an answer (tg 2), c1", 128, 2, 1, 2, 0.0, n_chunks=2),
    _case("three tokens an answer, decode under a second, c2", 128, 3, 2, 2, 0.0, n_chunks=3),
    # llama-benchy divides by the server's prompt count only within 20 % of pp (+ depth); a chat template's
    # tokens on a short prompt, a count 20 % off exactly, one far under and none reported fall back to pp
    _case("the server's prompt count near and far from pp, c3", 100, 40, 3, 2, 0.05,
          usage=(119, 120, 112, 81, 80, 0)),
    _case("the server's prompt count far from pp, c1", 16, 40, 1, 3, 0.0, usage=(31, 16, 19)),
    # --enable-prefix-caching: a context load ("." after the context; usage near the depth) and the test's
    # prompts after it (the server counts the cached context too: llama-benchy divides by pp)
    _case("a context load (prefix caching's phase 1), c2", 128, 40, 2, 2, 0.05, depth=1024, prefix="ctx",
          usage=(1040, 1040, 1300, 0)),
    _case("a prompt after its cached context, c2", 128, 40, 2, 2, 0.05, depth=1024, prefix="cached",
          usage=(1168, 1168, 140, 1168)),
    _no_content(_case("an answer with no content, c3", 256, 40, 3, 2, 0.1)),
    _no_content(_case("no content in any answer, c2", 256, 40, 2, 2, 0.1), which=(0, 1)),
]


def _records(case) -> RunResult:
    recs = []
    for b, batch in enumerate(case["batches"]):
        for i, r in enumerate(batch):
            t = np.array([c[0] for c in r["chunks"]])
            recs.append(RequestRecord(request_id=len(recs), prompt_tokens=r["prompt_tokens"],
                                      output_tokens=r["completion_tokens"], scheduled_time=r["start"],
                                      start_time=r["start"], chunk_times=t,
                                      content_mask=np.array([c[1] for c in r["chunks"]]),
                                      chunk_tokens=np.array([c[2] for c in r["chunks"]]), end_time=r["end"],
                                      test="t", batch=b))
    loop = ClosedLoopFacts(tests={"t": (case["pp"], case["tg"], case["depth"], case["concurrency"])},
                           latency_s=case["latency"], prefix_caching=case["prefix_caching"],
                           context_loads=["t"] if case["context_phase"] else [])
    return RunResult(recs, 0.0, max(r.end_time for r in recs), "closed", closed_loop=loop)


def _require_benchy():
    if not vllm_available():
        msg = f"the vLLM venv with llama-benchy is missing: run {SETUP_SCRIPT}"
        if os.environ.get("CAPSIM_REQUIRE_VLLM") == "1":
            pytest.fail(msg + " [CAPSIM_REQUIRE_VLLM=1]", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def oracle():
    _require_benchy()
    answers = oracle_answers("benchy_oracle.py", CASES, timeout=300, hint=f" (run {SETUP_SCRIPT})")
    return dict(zip([c["name"] for c in CASES], answers))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_closed_summary_equals_llama_benchy(oracle, case):
    theirs = oracle[case["name"]]
    (row,) = summarize_closed(_records(case))
    for m in BENCHY_METRICS:
        if theirs[m] is None:
            assert m not in row.metrics and m not in row.values, m
        else:
            assert row.metrics[m] == pytest.approx(theirs[m][:2], rel=1e-9, abs=1e-9), m
            assert row.values[m] == pytest.approx(theirs[m][2], rel=1e-9, abs=1e-9), m


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_report_rows_and_md_table_are_llama_benchys(oracle, case):
    """The rows of llama-benchy's md table and csv (results.py _generate_rows: a pp row where the test has a pp
    t/s, a tg row where it has a tg or peak t/s) and its md table, character for character (capsim adds its
    version and latency mode below it); the csv of the same rows."""
    theirs = oracle[case["name"]]
    rows = summarize_closed(_records(case))
    ours = closed_report_rows(rows)
    assert [t for t, _ in ours] == [t for t, _ in theirs["report_rows"]]
    for (_, mine), (_, their) in zip(ours, theirs["report_rows"]):
        assert {k: v is None for k, v in mine.items()} == {k: v is None for k, v in their.items()}
        for k, v in their.items():
            assert v is None or list(mine[k]) == pytest.approx(v, rel=1e-9, abs=1e-9), k
    table = format_closed_table(rows, model="m").split("\n\nllama-benchy (capsim)")[0]
    assert table == theirs["md"]
    csv_rows = list(csv.DictReader(io.StringIO(closed_csv(rows, "m"))))
    assert [r["test_name"] for r in csv_rows] == [t for t, _ in theirs["report_rows"]]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_throughput_series_equal_llama_benchys(oracle, case):
    """--save-total-throughput-timeseries and --save-all-throughput-timeseries: llama-benchy's series behind its
    peak t/s, a run's of all its tokens and each request's, to the float, under the keys its BenchmarkRun dumps
    them; a --format json entry has them only where asked for."""
    theirs = oracle[case["name"]]
    (row,) = summarize_closed(_records(case), total_series=True, request_series=True)
    assert row.throughput_over_time == theirs["series"]["throughput_over_time"]
    assert row.requests_throughput_over_time == theirs["series"]["requests_throughput_over_time"]
    answered = any(c[1] for batch in case["batches"] for r in batch for c in r["chunks"])
    assert len(row.throughput_over_time) == (len(case["batches"]) if answered else 0)  # a series a run with tokens
    (entry,) = closed_rows_json([row])
    assert list(entry) == theirs["json_keys"]
    assert entry["is_context_prefill_phase"] is theirs["is_context_prefill_phase"]
    assert list(closed_report_head("generation", 0.01, "m", [row], "capsim", 1.7e9)) == theirs["head_keys"]
    (plain,) = closed_rows_json(summarize_closed(_records(case)))
    assert plain["throughput_over_time"] is None and plain["requests_throughput_over_time"] is None


def test_the_cases_have_teeth(oracle):
    """Counting one token a chunk, or stamping a chunk's tokens all at its time, would disagree."""
    spec = next(c for c in CASES if c["name"] == "speculative chunks, c1")
    run = _records(spec)
    for r in run.records:
        r.chunk_tokens = None
    (row,) = summarize_closed(run)
    assert row.metrics["tg_req_throughput"][0] < 0.6 * oracle[spec["name"]]["tg_req_throughput"][0]
    # on the exact grid a window [t - 1, t] (closed on the left) counts one more step than
    # (t - 1, t], so the grid case tells the two rules apart
    grid = next(c for c in CASES if c["name"] == "tokens exactly 1/8 s apart")
    ts = _records(grid).records[0].content_token_times()
    closed = (np.arange(len(ts)) - np.searchsorted(ts, ts - 1.0, side="left") + 1).max()
    assert closed == peak_window_rate(ts) + 1


# ------------------------------------------------------------------ the stream, read

CHAT_STREAMS = {k: v for k, v in STREAMS.items() if k[0] == "chat"}


def _benchy_reads(kind: str, streams: dict) -> dict:
    """Each stream's reads through llama-benchy's client, as benchy_oracle.py's job `kind` answers them."""
    _require_benchy()
    jobs = [{kind: [None if r is None else r.decode("latin-1") for r in reads]} for reads in streams.values()]
    return dict(zip(streams, oracle_answers("benchy_oracle.py", jobs, timeout=300, hint=f" (run {SETUP_SCRIPT})")))


@pytest.fixture(scope="module")
def stream_oracle():
    return _benchy_reads("reads", CHAT_STREAMS)


@pytest.mark.parametrize("case", list(CHAT_STREAMS), ids=lambda c: c[1])
def test_a_stream_reads_as_llama_benchy_reads_it(stream_oracle, case, monkeypatch):
    """The same bytes in the same reads through llama-benchy 0.4.0's LLMClient.run_generation and
    capsim's client: the first response (a chunk with choices), the first token, each content chunk
    and the end in the same read (how 0.4.0 then spreads a chunk's tokens is the summary's, above).
    llama-benchy takes a `data:` line when its newline comes and capsim (the SSE rule) at the blank
    line after it: a read that ends between the two newlines (every event of one cut here, some of
    the 7-byte cut's) gives capsim the event a read later; no other cut parts them."""
    v = stream_oracle[case]
    rec, text = capsim_reads("chat", CHAT_STREAMS[case], monkeypatch)
    assert v["error"] is None and rec.ok and text == "abc"
    content = rec.content_times().tolist()
    assert v["total_tokens"] == rec.output_tokens == len(content) == 3
    ours = [rec.start_time, rec.first_response_time, rec.first_token_time, *content, rec.end_time]
    theirs = [v["start"], v["first_response"], v["first_token"], *v["chunk_times"], v["end"]]
    if case[1] in ("cut between the newlines", "cut every 7 bytes"):
        lag = np.array(ours) - np.array(theirs)
        assert set(lag.tolist()) <= {0.0, 1.0}
        if case[1] == "cut between the newlines":
            assert lag[1:-1].tolist() == [1.0] * (len(lag) - 2)  # every event; the end is the last read
    else:
        assert ours == theirs


def _answer(chunks, usage: dict | None, done: bool = True) -> list:
    """A chat stream's reads, an event a read: the role chunk, a content chunk for each (text, token_ids or
    None), the usage chunk where given, [DONE] where `done` (else the connection breaks: a read of None)."""
    return [sse_event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            *(sse_event({"choices": [{"index": 0, "delta": {"content": w}}
                                     | ({"token_ids": ids} if ids is not None else {})]}) for w, ids in chunks),
            *([sse_event({"choices": [], "usage": usage})] if usage else []),
            b"data: [DONE]\n\n" if done else None]


# the chat streams, and what decides request_end's total_tokens and prompt_tokens: token_ids on every content
# chunk (a speculative step's several; an empty list on one), on some only, neither ids nor usage, a usage of
# no tokens; and a connection that breaks after a token (an error, no decode time, no tokens)
PROGRESS_STREAMS = {k[1]: v for k, v in CHAT_STREAMS.items()} | {
    "token_ids, several a chunk": _answer((("ab", [7, 8]), ("c", [9]), ("def", [10, 11, 12])),
                                          {"prompt_tokens": 5, "completion_tokens": 6}),
    "token_ids, none on a chunk": _answer((("ab", [7, 8]), ("c", [])), {"prompt_tokens": 5, "completion_tokens": 3}),
    "token_ids on some chunks": _answer((("ab", [7, 8]), ("c", None)), {"prompt_tokens": 5, "completion_tokens": 3}),
    "neither token_ids nor usage": _answer((("a", None), ("b", None)), None),
    "a usage of no tokens": _answer((("a", None),), {"prompt_tokens": 5, "completion_tokens": 0}),
    "the connection breaks": _answer((("a", None),), None, done=False),
}


@pytest.fixture(scope="module")
def progress_oracle():
    return _benchy_reads("progress", PROGRESS_STREAMS)


@pytest.mark.parametrize("case", list(PROGRESS_STREAMS))
def test_emit_progress_events_are_llama_benchys(progress_oracle, case, monkeypatch, tmp_path):
    """--emit-progress: the same reads through llama-benchy 0.4.0's run_generation with its ProgressEmitter
    and through capsim's client with measure.progress_events, request 0: the same JSONL events, field for
    field (the wall-clock ts aside): the header, first response, first token, a tokens event a content
    chunk (len(token_ids), or 1 marked estimated), the end with its total and prompt tokens and decode
    seconds. Where a read ends between an event's two newlines capsim takes it a read later (above), so
    there the times may differ by that read. A broken connection's error text is each client's own
    (aiohttp's or httpx's exception): capsim's ends with the same cause."""
    path = tmp_path / "p.jsonl"
    events = ProgressEvents(str(path))
    capsim_reads("chat", PROGRESS_STREAMS[case], monkeypatch, events=events)
    events.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert all(e["schema"] == "llama-benchy-progress.v1" and isinstance(e.pop("ts"), float) for e in lines)
    theirs = progress_oracle[case]
    kinds = [e["type"] for e in theirs]
    assert kinds[-1] == "request_end" and {"request_first_token", "tokens"} <= set(kinds)
    if case in ("cut between the newlines", "cut every 7 bytes"):
        times = ("ttfr_s", "ttft_s", "decode_seconds")
        lines, theirs = ([{k: v for k, v in e.items() if k not in times} for e in x] for x in (lines, theirs))
    if theirs[-1]["error"]:  # its str() of aiohttp's exception; capsim's names the error and then the same cause
        assert lines[-1]["error"].endswith(": " + theirs[-1]["error"])
        lines[-1]["error"] = theirs[-1]["error"]
    assert lines == theirs


@pytest.mark.parametrize("exact_tg, no_cache, prefix", [(False, False, False), (True, True, True)])
def test_request_bodies_are_llama_benchys(fake, tmp_path, exact_tg, no_cache, prefix):
    """capsim measure closed (--depth, --extra-body, with and without --exact-tg, --no-cache and
    --enable-prefix-caching) against a fake server that keeps every body: each body is the one llama-benchy
    0.4.0's LLMClient.run_generation posts for the same context, prompt and tg, with the same --exact-tg
    (min_tokens and ignore_eos, or an answer free to end at the model's end of text), --no-cache
    (cache_prompt: false) and --extra-body; a context load's prompt is its runner's ".", and its context
    the one the next batch's request sends again."""
    from click.testing import CliRunner

    from measure.cli import measure as measure_cli

    _require_benchy()
    srv = fake(itl=0.001)
    extra = {"top_k": 5, "max_tokens": 99, "chat_template_kwargs": {"enable_thinking": False}}
    res = CliRunner().invoke(measure_cli, ["closed", srv.url, "--pp", "40", "--tg", "3", "--depth", "0", "30",
                                           "--concurrency", "1", "2", "--runs", "1", "--no-warmup", "--extra-body",
                                           json.dumps(extra), "--no-progress", "-o", str(tmp_path / "c"),
                                           *(["--exact-tg"] if exact_tg else []),
                                           *(["--no-cache"] if no_cache else []),
                                           *(["--enable-prefix-caching"] if prefix else [])])
    assert res.exit_code == 0, res.output
    ours = [b for b in srv.stats.bodies if b["messages"][-1]["content"] != "hello"]  # less the latency probes
    assert len(ours) == (9 if prefix else 6) and {len(b["messages"]) for b in ours} == {1, 2}
    loads = [b for b in ours if b["messages"][-1]["content"] == "."]
    assert len(loads) == (3 if prefix else 0)
    if prefix:  # the batch of depth 30 at c1 (one load, then its prompt), then at c2 (two loads, two prompts)
        contexts = [b["messages"][0]["content"] for b in ours[3:]]
        assert contexts[0] == contexts[1] and sorted(contexts[2:4]) == sorted(contexts[4:])
    jobs = [{"body": {"model": "fake-model", "max_tokens": 3, "extra_body": extra, "exact_tg": exact_tg,
                      "no_cache": no_cache,
                      "context": b["messages"][0]["content"] if len(b["messages"]) == 2 else "",
                      "prompt": b["messages"][-1]["content"]}} for b in ours]
    theirs = oracle_answers("benchy_oracle.py", jobs, timeout=300, hint=f" (run {SETUP_SCRIPT})")
    assert ours == theirs
    assert all(("ignore_eos" in b) == exact_tg and b["max_tokens"] == (3 if exact_tg else 99) for b in ours)
    assert all(("cache_prompt" in b) == no_cache for b in ours)


# ------------------------------------------------------------------ the command line, pasted

# llama-benchy options whose default capsim does not share and --help does not name: why each runs the same
SAME_RUN = {"--api-key": "no key: capsim sends no Authorization header where llama-benchy sends 'Bearer EMPTY', "
                         "which a server without --api-key ignores",
            "--format": "none given prints the md table, as --help says"}


def _plain(v):
    """A default as a command line would spell it: lists and tuples of one value as that value, the
    empty ones (None, False, (), []) as None."""
    if isinstance(v, (list, tuple)):
        v = v[0] if len(v) == 1 else (list(v) or None)
    return None if v is False else v


def test_every_llama_benchy_flag_pastes_in_with_its_default():
    """Every option of llama-benchy 0.4.0's own parser (caught as BenchmarkConfig.from_args parses) is
    an option of `capsim measure closed` and `capsim simulate closed`; each one capsim runs (not a
    no-op, noted or refused flag) starts from llama-benchy's default, or says in --help what that
    default is ('[llama-benchy's default: 2048]'), or is in SAME_RUN."""
    import click

    from capsim import benchy_flags
    from capsim.cli import main
    from measure.cli import measure as measure_cli

    _require_benchy()
    theirs = oracle_answers("benchy_oracle.py", [{"defaults": True}], timeout=300,
                            hint=f" (run {SETUP_SCRIPT})")[0]
    assert {"--pp", "--tg", "--depth", "--concurrency", "--runs", "--latency-mode"} <= set(theirs)
    taken_unread = set(benchy_flags.BENCHY_NO_OP_FLAGS) | set(benchy_flags.BENCHY_NOTED_FLAGS)
    stated = 0
    for cmd in (measure_cli.commands["closed"], main.commands["simulate"].commands["closed"]):
        ours = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
        for first, opt in theirs.items():
            if first == "--version":  # capsim --version is capsim's
                continue
            assert all(f in ours for f in opt["flags"]), (cmd.name, opt["flags"])
            p = ours[first]
            if first in taken_unread or first in SAME_RUN:
                continue
            mine = p.default is True if p.is_flag else p.default  # click keeps an unset flag's default apart
            if _plain(mine) == _plain(opt["default"]):
                continue
            assert f"[llama-benchy's default: {_plain(opt['default'])}]" in (p.help or ""), (cmd.name, first)
            stated += 1
    assert stated == 4  # --pp (512: a quicker first run) and --latency-mode (generation), in both commands


def test_series_and_head_edges():
    """One token is a series of one point at one token a second and a peak of 1 t/s, none is no series and a
    peak of 0 (as llama-benchy's _calculate_peak_throughput walks them); the head's max_concurrency is the
    suite's largest, 1 with no test."""
    assert peak_window_series(np.array([3.5])) == [[0.0, 1.0]] and peak_window_series(np.array([])) == []
    assert peak_window_rate(np.array([3.5])) == 1.0 and peak_window_rate(np.array([])) == 0.0
    rows = [ClosedRow(64, 4, 0, c) for c in (1, 4, 2)]
    assert closed_report_head("none", 0.0, "m", rows, "v", None)["max_concurrency"] == 4
    head = closed_report_head("none", 0.0, "m", [], "v", 0.0)
    assert (head["max_concurrency"], head["timestamp"]) == (1, "1970-01-01 00:00:00Z")
