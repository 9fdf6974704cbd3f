"""Importers for published benchmark results: spark-bench suite runs and the seed write-up.

The raw spark-bench data lives outside the project (shared/data/spark-bench); tests that need
it skip when it is absent (a clone without ../shared), or fail when CAPSIM_REQUIRE_SHARED=1 (CI).
Set CAPSIM_SHARED to point elsewhere.
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import math
import os
import re
from pathlib import Path

import pytest

from calibrate.benchy_tables import parse_benchy_markdown
from calibrate.importers import (
    ImporterError, closed_runs, load_meta, load_source, open_runs, parse_bench_serve_json,
    parse_bench_serve_text, parse_command, serve_params,
)
from calibrate.results import ClosedRun, OpenRun
from calibrate.seed import seed_closed_runs, seed_open_runs, seed_runs

SHARED = Path(os.environ.get("CAPSIM_SHARED") or Path(__file__).resolve().parents[2] / "shared")
RESULTS = SHARED / "data" / "spark-bench" / "results"
SUITES = {
    "gemma26": RESULTS / "gemma-4" / "gemma-4-26b-a4b-it" / "bf16",
    "gemma26v23": RESULTS / "gemma-4" / "gemma-4-26b-a4b-it" / "bf16-v23",
    "gemma31": RESULTS / "gemma-4" / "gemma-4-31b-it" / "bf16",
    "qwen": RESULTS / "qwen-3.6" / "qwen-3.6-35b-a3b" / "bf16",
}
HAVE_DATA = all(d.is_dir() for d in SUITES.values())


def shared_missing(msg: str) -> None:
    """Skip for lack of ../shared data, or fail when CAPSIM_REQUIRE_SHARED=1 (CI has the data)."""
    if os.environ.get("CAPSIM_REQUIRE_SHARED") == "1":
        pytest.fail(f"{msg} [CAPSIM_REQUIRE_SHARED=1]", pytrace=False)
    pytest.skip(msg)


def needs_data(test):
    """Decorator: the test needs the spark-bench suites (see `shared_missing`)."""
    if HAVE_DATA:
        return test

    @functools.wraps(test)  # keeps the signature (fixtures) and the marks (parametrize)
    def missing(*args, **kwargs):
        shared_missing(f"spark-bench data not found under {RESULTS}")

    return missing

G26 = SUITES["gemma26"]


def _run(runs, test):
    return next(r for r in runs if r.test == test)


def _row(run, pp, c, depth=0):
    return next(r for r in run.rows if (r.pp, r.concurrency, r.depth) == (pp, c, depth))


# --------------------------------------------------------------------------------------------
# closed loop (01–06)
# --------------------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_closed_runs_every_suite(suite):
    runs = closed_runs(SUITES[suite])
    assert [r.test for r in runs] == ["01-chat", "02-rag-8k", "03-long-output", "04-multi-turn",
                                      "05-big-context", "06-concurrency-stress"]
    assert [len(r.rows) for r in runs] == [3, 3, 3, 3, 12, 1]
    for r in runs:
        assert isinstance(r, ClosedRun)
        assert (r.version, r.latency_mode, r.runs) == ("0.4.0", "generation", 3)
        assert r.latency_ms and r.latency_ms > 50
        assert r.server["max_model_len"] == 131072 and r.server["vllm_version"] == "0.26.0"
        assert r.source.startswith("spark-bench/") and r.model
        for row in r.rows:
            # Every suite table has all nine columns filled (pp and tg rows merged).
            assert len(row.metrics) == 9, (r.test, row)
            assert row.tg > 0 and row.pp > 0
    multi = _run(runs, "04-multi-turn")
    assert {row.depth for row in multi.rows} == {4}
    big = _run(runs, "05-big-context")
    assert [(x.pp, x.concurrency) for x in big.rows[:4]] == [(4096, 1), (4096, 5), (4096, 10), (8192, 1)]
    assert {x.tg for x in big.rows} == {256}


@needs_data
def test_closed_exact_numbers_gemma26():
    runs = closed_runs(G26)
    chat = _run(runs, "01-chat")
    assert chat.source == "spark-bench/gemma-4-26b-a4b-it/bf16"
    assert chat.model == "gemma-4-26b-a4b-bf16"
    assert chat.latency_ms == 131.45
    c10 = _row(chat, 1024, 10)
    assert c10.tg == 1024
    assert c10.metrics["tg_throughput"] == (84.56, 1.70)
    assert c10.metrics["tg_req_throughput"] == (10.89, 0.60)
    assert c10.metrics["peak_throughput"] == (123.33, 4.71)
    assert c10.metrics["peak_req_throughput"] == (15.77, 4.00)
    assert c10.metrics["pp_req_throughput"] == (1101.91, 1166.62)
    c1 = _row(chat, 1024, 1)
    assert c1.metrics["ttfr"] == (556.16, 124.32)
    assert c1.metrics["est_ppt"] == (424.71, 124.32)
    assert c1.metrics["pp_throughput"] == c1.metrics["pp_req_throughput"] == (2387.55, 566.54)
    assert _row(_run(runs, "04-multi-turn"), 2048, 10, depth=4).metrics["tg_throughput"] == (89.64, 1.74)
    big = _row(_run(runs, "05-big-context"), 25000, 10)
    assert big.metrics["e2e_ttft"] == (41167.72, 20969.56)
    assert big.metrics["ttfr"] == (41167.00, 20969.46)
    stress = _run(runs, "06-concurrency-stress")
    assert (stress.rows[0].pp, stress.rows[0].tg, stress.rows[0].concurrency) == (25000, 256, 20)
    assert stress.rows[0].metrics["pp_throughput"] == (3089.31, 1.87)
    assert [r.latency_ms for r in runs] == [131.45, 119.40, 122.41, 119.62, 118.22, 119.10]


@needs_data
def test_suites_differ_where_expected():
    assert load_meta(G26)["gpu_memory_utilization"] == 0.90
    assert load_meta(G26)["max_num_batched_tokens"] == 8192
    assert load_meta(SUITES["gemma26v23"])["gpu_memory_utilization"] == 0.85
    qwen = load_meta(SUITES["qwen"])
    assert qwen["max_num_batched_tokens"] is None and qwen["max_num_seqs"] is None
    assert "--reasoning-parser qwen3" in qwen["extra_args"]
    assert qwen["model"] == "Qwen/Qwen3.6-35B-A3B"
    g31 = closed_runs(SUITES["gemma31"])
    assert g31[0].latency_ms == 389.26
    assert _row(g31[0], 1024, 1).metrics["tg_req_throughput"] == (3.67, 0.01)


# --------------------------------------------------------------------------------------------
# open loop (07–11)
# --------------------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_open_runs_every_suite(suite):
    runs = open_runs(SUITES[suite])
    assert [r.test for r in runs] == [
        "07-office-baseline", "08-sharegpt", "09-reasoning", "10-monday-peak",
        "11-rate-sweep@0.1", "11-rate-sweep@0.2", "11-rate-sweep@0.3",
        "11-rate-sweep@0.5", "11-rate-sweep@0.7", "11-rate-sweep@1.0"]
    for r in runs:
        assert isinstance(r, OpenRun)
        assert r.params["seed"] == 42 and r.params["backend"] == "openai-chat"
        assert r.params["endpoint"] == "/v1/chat/completions"
        assert r.result["completed"] == r.params["num_prompts"] and r.result["failed"] == 0
        assert r.detailed is None          # the suite saved summaries only
        assert r.server["kv_cache_dtype"] == "fp8"
    sweep = [r for r in runs if r.test.startswith("11-")]
    assert [r.params["request_rate"] for r in sweep] == [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    assert [r.params["num_prompts"] for r in sweep] == [100, 100, 100, 125, 175, 250]
    assert all(r.params["burstiness"] == 0.7 and r.dataset == "random" for r in sweep)
    assert all(r.params["random_input_len"] == 4000 and r.params["random_range_ratio"] == 0.9 for r in sweep)


@needs_data
def test_open_exact_numbers_gemma26():
    runs = open_runs(G26)
    office = _run(runs, "07-office-baseline")
    assert office.result["total_output_tokens"] == 97092
    assert office.result["total_input_tokens"] == 815399
    assert office.result["max_concurrent_requests"] == 39
    assert office.result["p99_ttft_ms"] == pytest.approx(3914.2595565260835)
    assert office.params["seed"] == 42
    assert office.params["request_rate"] == 0.3 and office.params["burstiness"] == 0.7
    assert office.params["random_input_len"] == 4000 and office.params["random_output_len"] == 500
    assert office.params["random_range_ratio"] == 0.9 and office.params["random_prefix_len"] == 0
    assert office.params["max_concurrency"] is None and office.dataset == "random"
    share = _run(runs, "08-sharegpt")
    assert share.dataset == "sharegpt" and share.params["dataset_path"] == "/tmp/ShareGPT_V3.json"
    assert share.params["random_input_len"] is None
    reasoning = _run(runs, "09-reasoning")
    assert (reasoning.params["random_input_len"], reasoning.params["random_output_len"]) == (1024, 4096)
    peak = _run(runs, "10-monday-peak")
    assert peak.params["max_concurrency"] == 25 and peak.params["request_rate"] == 1.5
    assert peak.params["burstiness"] == 1.0
    step = _run(runs, "11-rate-sweep@0.1")
    assert step.result["total_output_tokens"] == 49146
    assert step.path.endswith("11-rate-sweep-0.1.json")


@needs_data
@pytest.mark.parametrize("run", ["gemma-4/gemma-4-26b-a4b-it/bf16", "muse-glimmer/muse-glimmer-30b/bf16-spec"])
def test_printed_block_matches_json(run):
    text = (RESULTS / run / "07-office-baseline.md").read_text()
    printed = parse_bench_serve_text(text, RESULTS / run / "07-office-baseline.md")
    saved = parse_bench_serve_json(RESULTS / run / "07-office-baseline.json")
    assert printed["request_rate"] == 0.3
    for k, v in printed.items():
        assert v == pytest.approx(saved[k], abs=0.006), k
    assert "std_ttft_ms" not in printed        # the printout has no std lines
    assert {"p95_itl_ms", "median_e2el_ms", "max_output_tokens_per_s"} <= printed.keys()
    # the server's speculative-decoding counters, where it ran with them (all but the per-position rates)
    spec = {k for k in saved if k.startswith("spec_decode_")} - {"spec_decode_per_position_acceptance_rates"}
    assert spec <= printed.keys() and ("spec" in run) == bool(spec)


@needs_data
def test_load_source_dispatch(tmp_path):
    runs = load_source(G26)
    assert sum(isinstance(r, ClosedRun) for r in runs) == 6
    assert sum(isinstance(r, OpenRun) for r in runs) == 10
    (md_run,) = load_source(G26 / "01-chat.md")
    assert md_run.test == "01-chat" and md_run.latency_ms == 131.45
    (js_run,) = load_source(G26 / "10-monday-peak.json")
    assert js_run.params["max_concurrency"] == 25 and js_run.dataset == "random"
    (sw_run,) = load_source(G26 / "11-rate-sweep-0.5.json")
    assert sw_run.test == "11-rate-sweep@0.5" and sw_run.params["random_input_len"] == 4000
    (printed,) = load_source(G26 / "07-office-baseline.md")
    assert isinstance(printed, OpenRun) and printed.result["total_output_tokens"] == 97092
    # A bare JSON with nothing beside it: results known, dataset not.
    bare = tmp_path / "x.json"
    bare.write_text((G26 / "07-office-baseline.json").read_text())
    (b,) = load_source(bare)
    assert b.dataset == "unknown" and b.params["request_rate"] == 0.3 and b.server == {}
    capsim = tmp_path / "capsim-run"
    capsim.mkdir()
    (capsim / "run.json").write_text("{}")
    with pytest.raises(ImporterError, match="capsim run folders are read by measure.runfiles"):
        load_source(capsim)


def test_detailed_json_split(tmp_path):
    d = {"completed": 2, "failed": 0, "duration": 10.0, "total_input_tokens": 20, "total_output_tokens": 8,
         "request_throughput": 0.2, "output_throughput": 0.8, "mean_ttft_ms": 50.0, "request_rate": "inf",
         "burstiness": 1.0, "num_prompts": 2, "max_concurrency": None, "backend": "vllm",
         "request_goodput:": None,
         "input_lens": [10, 10], "output_lens": [4, 4], "ttfts": [0.05, 0.05], "itls": [[0.1] * 3] * 2,
         "latencies": [0.4, 0.4], "start_times": [1.0, 2.0], "generated_texts": ["a", "b"], "errors": ["", ""]}
    p = tmp_path / "detailed.json"
    p.write_text(json.dumps(d))
    (run,) = load_source(p)
    assert run.detailed["output_lens"] == [4, 4] and set(run.detailed) == {
        "input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times"}
    assert "ttfts" not in run.result and "generated_texts" not in run.result
    assert run.result["request_goodput"] is None and "request_goodput:" not in run.result
    assert math.isinf(run.params["request_rate"]) and run.params["backend"] == "vllm"


# --------------------------------------------------------------------------------------------
# markdown and command parsing without the data set
# --------------------------------------------------------------------------------------------

C1_ONLY = """\
| model | test | t/s | peak t/s | ttfr (ms) | est_ppt (ms) | e2e_ttft (ms) |
|:------|-----:|----:|---------:|----------:|-------------:|--------------:|
| m | ctx_pp @ d4096 | 900.00 ± 1.00 | | 10.00 ± 1.00 | 9.00 ± 1.00 | 10.00 ± 1.00 |
| m | ctx_tg @ d4096 | 20.00 ± 1.00 | 21.00 ± 0.00 | | | |
| m | pp4096 @ d4096 | 3000.50 ± 12.25 | | 1400.00 ± 5.00 | 1300.00 ± 5.00 | 1401.00 ± 5.00 |
| m | tg256 @ d4096 | 24.10 ± 0.05 | 25.00 ± 0.00 | | | |
| m | pp512 | 2000.00 | | 300.00 ± 2.00 | 200.00 ± 2.00 | 300.00 ± 2.00 |
| m | tg256 | 24.50 ± 0.01 | 25.00 ± 0.00 | | | |

llama-benchy (0.3.0)
date: 2026-01-01 00:00:00 | latency mode: api
"""


def test_benchy_c1_table_and_ctx_rows():
    rows = parse_benchy_markdown(C1_ONLY)
    assert [(r.pp, r.tg, r.depth, r.concurrency) for r in rows] == [(4096, 256, 4096, 1), (512, 256, 0, 1)]
    m = rows[0].metrics
    assert m["pp_throughput"] == m["pp_req_throughput"] == (3000.50, 12.25)
    assert m["tg_throughput"] == m["tg_req_throughput"] == (24.10, 0.05)
    assert m["peak_throughput"] == m["peak_req_throughput"] == (25.0, 0.0)
    assert m["e2e_ttft"] == (1401.0, 5.0)
    mean, std = rows[1].metrics["pp_throughput"]
    assert mean == 2000.0 and math.isnan(std)     # no '±': spread unknown, not zero


def test_benchy_old_table_without_peak_and_blank_cells():
    text = ("| model | test | t/s | ttfr (ms) | est_ppt (ms) | e2e_ttft (ms) |\n"
            "|---|---|---|---|---|---|\n"
            "| m | pp1024 | 1000.00 ± 1.00 | 100.00 ± 1.00 | | 100.00 ± 1.00 |\n"
            "| m | tg128 | 20.00 ± 1.00 | | | |\n")
    (row,) = parse_benchy_markdown(text)
    assert (row.pp, row.tg) == (1024, 128)
    assert set(row.metrics) == {"pp_throughput", "pp_req_throughput", "tg_throughput",
                                "tg_req_throughput", "ttfr", "e2e_ttft"}


def test_parse_command_both_tools():
    benchy = parse_command("uvx llama-benchy --base-url http://x/v1 --model m --pp 4096 8192 --tg 256 "
                           "--depth 0 --concurrency 1 5 10 --runs 3 --latency-mode generation --format md")
    assert benchy["tool"] == "llama-benchy"
    assert (benchy["pp"], benchy["tg"], benchy["depth"], benchy["concurrency"]) == (
        [4096, 8192], [256], [0], [1, 5, 10])
    assert (benchy["runs"], benchy["latency_mode"], benchy["version"]) == (3, "generation", None)
    serve = parse_command("""docker exec vllm-bench vllm bench serve \\
      --backend openai-chat --endpoint /v1/chat/completions \\
      --dataset-name random --random-input-len 4000 --random-output-len 500 \\
      --random-range-ratio 0.9 --num-prompts 200 --request-rate 0.3 --burstiness 0.7 \\
      --percentile-metrics ttft,tpot,itl,e2el --seed 42""")
    assert serve["tool"] == "vllm bench serve"
    assert (serve["num_prompts"], serve["request_rate"], serve["burstiness"], serve["seed"]) == (200, 0.3, 0.7, 42)
    assert (serve["random_input_len"], serve["random_range_ratio"], serve["random_prefix_len"]) == (4000, 0.9, 0)
    assert serve["max_concurrency"] is None and serve["dataset_path"] is None
    defaults = parse_command("vllm bench serve --model m")
    assert math.isinf(defaults["request_rate"]) and defaults["seed"] == 0 and defaults["burstiness"] == 1.0


# --------------------------------------------------------------------------------------------
# seed write-up
# --------------------------------------------------------------------------------------------

def test_seed_closed_numbers():
    runs = seed_closed_runs()
    assert [r.test for r in runs] == ["A", "B", "C", "E", "F", "G"]
    assert [len(r.rows) for r in runs] == [12, 3, 3, 3, 3, 3]
    for r in runs:
        assert r.source == "seed" and r.version is None and r.latency_ms is None
        assert (r.runs, r.latency_mode) == (3, "generation")
        assert r.server["vllm_version"] == "0.20.1" and r.server["gpu_memory_utilization"] == 0.95
        assert r.server["max_num_batched_tokens"] is None and r.server["enable_prefix_caching"] is False
        for row in r.rows:
            assert set(row.metrics) == {"pp_throughput", "tg_req_throughput", "tg_throughput", "e2e_ttft"}
    a, b, c, e, f, g = runs
    assert {(x.pp, x.tg) for x in a.rows} == {(p, 256) for p in (4096, 8192, 16384, 25000)}
    assert _row(a, 4096, 1).metrics["pp_throughput"] == (3677.85, 1259.27)
    assert _row(a, 25000, 10).metrics["tg_throughput"] == (30.73, 0.12)
    assert _row(a, 25000, 10).metrics["e2e_ttft"] == (35670.0, 18000.0)
    assert _row(a, 16384, 1).metrics["e2e_ttft"] == (3420.0, 0.0)
    assert [x.concurrency for x in b.rows] == [5, 10, 20]
    assert _row(b, 25000, 20).metrics["e2e_ttft"] == (67370.0, 36440.0)
    assert _row(b, 25000, 20).metrics["tg_req_throughput"] == (3.16, 1.41)
    assert _row(c, 1024, 10).metrics["tg_throughput"] == (86.46, 1.74)
    assert _row(e, 2048, 10, depth=4).metrics["tg_throughput"] == (92.42, 3.33)
    assert _row(f, 8192, 20).metrics["pp_throughput"] == (5532.74, 5.39)
    assert _row(g, 256, 10).metrics["tg_req_throughput"] == (11.75, 0.68)
    assert {x.tg for x in g.rows} == {4096}


def test_seed_open_numbers():
    closed, opened = seed_runs()
    assert len(closed) == 6 and [x.test for x in seed_open_runs()] == ["H", "I", "J"]
    h, i, j = opened
    assert [x.test for x in opened] == ["H", "I", "J"]
    assert h.dataset == "random" and i.dataset == "sharegpt" and j.dataset == "random"
    assert (h.params["num_prompts"], h.params["request_rate"], h.params["burstiness"], h.params["seed"]) == (200, 0.3, 0.7, 42)
    assert (h.params["random_input_len"], h.params["random_output_len"], h.params["random_range_ratio"]) == (4000, 500, 0.9)
    assert (i.params["num_prompts"], i.params["request_rate"], i.params["burstiness"]) == (250, 0.3, 0.7)
    assert (j.params["num_prompts"], j.params["request_rate"], j.params["max_concurrency"]) == (300, 1.5, 25)
    assert h.result["mean_ttft_ms"] == 1395 and h.result["p99_ttft_ms"] == 3316
    assert h.result["max_concurrent_requests"] == 36 and h.result["total_token_throughput"] == 1215
    assert h.result["mean_e2el_ms"] == 85921 and h.result["p99_e2el_ms"] == 171351
    assert i.result["p99_ttft_ms"] == 637 and i.result["p50_tpot_ms"] == 95 and i.result["median_e2el_ms"] == 10923
    assert j.result["request_throughput"] == 0.26 and j.result["p95_ttft_ms"] == 2961
    assert j.result["p99_e2el_ms"] == 179139


def test_seed_files_name_the_write_up():
    from importlib.resources import files
    for name in ("closed.json", "open.json"):
        doc = json.loads((files("calibrate") / "data" / "seed" / name).read_text())
        assert doc["source"] == ("Django de Vreng, 'Gemma-4 on the DGX Spark: the price of context' "
                                 "(seed 000_48a53ffacdb21329)")
        assert doc["server"]["max_model_len"] == 131072 and doc["server"]["kv_cache_dtype"] == "fp8"


# --------------------------------------------------------------------------------------------
# closed-loop loaders never open open-loop files
# --------------------------------------------------------------------------------------------

@pytest.fixture
def opened(monkeypatch):
    """Record every path opened through builtins.open, io.open, Path.open or Path.read_text/bytes."""
    seen: list[str] = []
    real_open, real_path_open = builtins.open, Path.open
    real_read_text, real_read_bytes = Path.read_text, Path.read_bytes

    def rec_open(file, *a, **k):
        seen.append(str(file))
        return real_open(file, *a, **k)

    def rec_path_open(self, *a, **k):
        seen.append(str(self))
        return real_path_open(self, *a, **k)

    def rec_read_text(self, *a, **k):
        seen.append(str(self))
        return real_read_text(self, *a, **k)

    def rec_read_bytes(self, *a, **k):
        seen.append(str(self))
        return real_read_bytes(self, *a, **k)

    monkeypatch.setattr(builtins, "open", rec_open)
    monkeypatch.setattr(io, "open", rec_open)
    monkeypatch.setattr(Path, "open", rec_path_open)
    monkeypatch.setattr(Path, "read_text", rec_read_text)
    monkeypatch.setattr(Path, "read_bytes", rec_read_bytes)
    return seen


@needs_data
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_closed_runs_never_open_open_loop_files(suite, opened):
    runs = closed_runs(SUITES[suite])
    assert len(runs) == 6
    names = [Path(p).name for p in opened]
    assert "meta.json" in names and "01-chat.md" in names and "01-chat.log" in names
    leaked = [n for n in names if re.match(r"(0[7-9]|1[0-1])-", n) or (n.endswith(".json") and n != "meta.json")]
    assert leaked == []


def test_seed_closed_runs_never_open_open_json(opened):
    seed_closed_runs()
    names = [Path(p).name for p in opened]
    assert "closed.json" in names and "open.json" not in names


# --------------------------------------------------------------------------------------------
# errors: one line, naming the file
# --------------------------------------------------------------------------------------------

def _one_line(e: pytest.ExceptionInfo, fname: str, what: str):
    msg = str(e.value)
    assert "\n" not in msg and fname in msg and what in msg, msg
    assert isinstance(e.value, ValueError)


@needs_data
def test_truncated_json(tmp_path):
    src = (G26 / "07-office-baseline.json").read_text()
    p = tmp_path / "07-office-baseline.json"
    p.write_text(src[:800])
    with pytest.raises(ImporterError) as e:
        parse_bench_serve_json(p)
    _one_line(e, "07-office-baseline.json", "truncated JSON at line 1 col")


@pytest.mark.parametrize("text, what", [
    ('{"date": "20260812-1632", "model_id": "google/gemma-4-26B', "truncated JSON at line 1 col 39"),
    ('{"date": "20260812-1632", x "completed": 1}', "invalid JSON (Expecting property name enclosed in double quotes)")])
def test_json_cut_inside_a_string_is_truncated_and_a_bad_middle_is_invalid(tmp_path, text, what):
    """A string that never closes runs to the end of the file: the file was cut, though the decoder
    points at where the string began. A broken character with text after it is invalid JSON."""
    p = tmp_path / "08-sharegpt.json"
    p.write_text(text)
    with pytest.raises(ImporterError) as e:
        parse_bench_serve_json(p)
    _one_line(e, "08-sharegpt.json", what)


def test_missing_key_and_bad_value(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"completed": 1, "duration": 1.0, "total_input_tokens": 1, "total_output_tokens": 1,
                             "request_throughput": 1.0, "output_throughput": 1.0}))
    with pytest.raises(ImporterError) as e:
        parse_bench_serve_json(p)
    _one_line(e, "x.json", "missing key 'mean_ttft_ms'")
    good = {"completed": 1, "duration": 1.0, "total_input_tokens": 1, "total_output_tokens": 1,
            "request_throughput": 1.0, "output_throughput": 1.0, "mean_ttft_ms": 1.0}
    p.write_text(json.dumps(good | {"median_tpot_ms": "abc", "p99_itl_ms": None, "label": "x"}))
    with pytest.raises(ImporterError) as e:  # any figure, not only the required ones; null and labels pass
        parse_bench_serve_json(p)
    _one_line(e, "x.json", "key 'median_tpot_ms' is not a number: 'abc'")
    p.write_text(json.dumps(good | {"p99_itl_ms": None, "label": "x", "max_concurrent_requests": 3}))
    assert parse_bench_serve_json(p)["max_concurrent_requests"] == 3
    p.write_text(json.dumps({"completed": "many"}))
    with pytest.raises(ImporterError) as e:
        parse_bench_serve_json(p)
    _one_line(e, "x.json", "'completed' is not a number")
    p.write_text("{\"completed\": 1,, }")
    with pytest.raises(ImporterError) as e:
        parse_bench_serve_json(p)
    _one_line(e, "x.json", "invalid JSON")


@needs_data
def test_empty_md_and_garbage_number(tmp_path):
    run = tmp_path / "bf16"
    run.mkdir()
    (run / "meta.json").write_text((G26 / "meta.json").read_text())
    (run / "01-chat.md").write_text("")
    with pytest.raises(ImporterError) as e:
        closed_runs(run)
    _one_line(e, "01-chat.md", "empty file")
    (run / "01-chat.md").write_text("# Test 01-chat\n\nno table here\n")
    with pytest.raises(ImporterError) as e:
        closed_runs(run)
    _one_line(e, "01-chat.md", "no llama-benchy table found")
    text = (G26 / "01-chat.md").read_text().replace("84.56 ± 1.70", "84.5x ± 1.70")
    (run / "01-chat.md").write_text(text)
    with pytest.raises(ImporterError) as e:
        closed_runs(run)
    _one_line(e, "01-chat.md", "bad number '84.5x ± 1.70'")


@needs_data
def test_a_header_without_rows_or_a_nan_figure_loses_only_that(tmp_path):
    """A test whose table kept its header and lost every row (it failed on the box) is left out and
    named, as one with no table is; a figure llama-benchy had no samples for ("nan ± nan") is missing
    from its row, as an empty cell is; the rest calibrates."""
    run = tmp_path / "bf16"
    run.mkdir()
    for f in ("meta.json", "01-chat.md", "03-long-output.md"):
        (run / f).write_text((G26 / f).read_text())
    lines = (G26 / "03-long-output.md").read_text().splitlines()
    (run / "03-long-output.md").write_text("\n".join(x for x in lines if not re.search(r" \(c\d+\) \|", x)))
    text = (G26 / "01-chat.md").read_text().replace("|     84.56 ± 1.70 |", "|     nan ± nan |")
    (run / "01-chat.md").write_text(text)
    runs = closed_runs(run)
    assert [r.test for r in runs] == ["01-chat"]
    assert any(x.startswith("03-long-output.md: llama-benchy table has no pp/tg rows") for x in
               runs[0].server["skipped_tests"]), runs[0].server["skipped_tests"]
    c10 = next(r for r in runs[0].rows if (r.tg, r.concurrency) == (1024, 10))
    assert "tg_throughput" not in c10.metrics and c10.metrics["tg_req_throughput"] == (10.89, 0.60)


def test_extra_args_as_an_argv_list_read_as_the_command_line(tmp_path):
    """A runner that keeps the extra flags as a list (its argv) means the same command line; a value of
    another kind is one clear line."""
    argv = ["--max-num-seqs", "64", "--speculative-config", '{"method": "mtp", "num_speculative_tokens": 2}']
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": {"extra_vllm_args": argv}}))
    s = load_meta(tmp_path)
    assert s["max_num_seqs"] == 64 and s["speculative_config"]["num_speculative_tokens"] == 2
    for bad in ({"--max-num-seqs": 64}, ["--max-num-seqs", 64], 7):
        (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": {"extra_vllm_args": bad}}))
        with pytest.raises(ImporterError) as e:
            load_meta(tmp_path)
        _one_line(e, "meta.json", "extra_vllm_args is ")
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": ["--max-num-seqs", "64"]}))
    with pytest.raises(ImporterError) as e:
        load_meta(tmp_path)
    _one_line(e, "meta.json", "server_config is list, expected a JSON object")


@pytest.mark.parametrize("sc, args, want", [
    ({}, "", None), ({"async_scheduling": "false"}, "", False), ({"async_scheduling": "True"}, "", True),
    ({}, "--no-async-scheduling", False), ({}, "--async_scheduling", True), ({}, "--async-scheduling=false", False),
    ({"async_scheduling": False}, "--async-scheduling", True), ({"async_scheduling": True}, "--async-scheduling", True)])
def test_async_scheduling_as_the_run_says_and_on_where_it_is_silent(tmp_path, sc, args, want):
    """The command line's --async-scheduling / --no-async-scheduling, else server_config's value; where
    neither says, vLLM's default on a GPU (on), and the origin says it was not given. "false" is off."""
    from calibrate.priors import prior_profile
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": sc | {"extra_vllm_args": args}}))
    s = load_meta(tmp_path)
    assert s["async_scheduling"] is want and not s["unmodelled_flags"]
    prof, origin = prior_profile(s)
    assert prof.engine.async_scheduling is (want is not False)
    assert origin["async_scheduling"] == ("server flag" if want is not None else "not given: on, vLLM's default on a GPU")
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": {"async_scheduling": "sometimes"}}))
    with pytest.raises(ImporterError) as e:
        load_meta(tmp_path)
    _one_line(e, "meta.json", "async_scheduling is 'sometimes': vLLM takes true or false")


def test_a_setting_given_twice_is_the_command_lines_and_the_disagreement_is_said(tmp_path):
    """vLLM keeps the last of a flag given twice, and a runner's extra arguments follow the flags it
    writes from its settings: the command line's value is what the server ran with. Where server_config
    says otherwise, calibration's origin names both; where they agree, nothing is said."""
    from calibrate.fit import fit_closed
    from calibrate.priors import prior_profile
    sc = {"max_model_len": 32768, "max_num_seqs": "64", "enable_prefix_caching": "false", "async_scheduling": True,
          "extra_vllm_args": "--max-model-len 16384 --max-num-seqs 8 --max-num-seqs 64 --enable-prefix-caching "
                             "--async-scheduling --max-num-batched-tokens 4096 --max-num-batched-tokens=2k"}
    (tmp_path / "meta.json").write_text(json.dumps({"model": "google/gemma-4-26B-A4B-it", "server_config": sc}))
    s = load_meta(tmp_path)
    assert (s["max_model_len"], s["max_num_seqs"], s["max_num_batched_tokens"]) == (16384, 64, 2000)
    assert s["enable_prefix_caching"] is True and s["async_scheduling"] is True
    assert [c.split(":")[0] for c in s["setting_conflicts"]] == ["max_model_len", "enable_prefix_caching"]
    assert "server_config has 32768, the command line '16384'" in s["setting_conflicts"][0]
    prof, _ = prior_profile(s)
    assert prof.engine.max_model_len == 16384 and prof.engine.max_num_batched_tokens == 2000
    fr = fit_closed(seed_closed_runs()[:1], server=s, max_nfev=1, combine="sum")
    assert fr.origin["settings_in_conflict"].startswith("max_model_len: server_config has 32768")
    # --max-model-len auto on the command line leaves the length to vLLM, over server_config's number
    sc = {"max_model_len": 32768, "extra_vllm_args": "--max-model-len auto"}
    (tmp_path / "meta.json").write_text(json.dumps({"model": "google/gemma-4-26B-A4B-it", "server_config": sc}))
    s = load_meta(tmp_path)
    assert s["max_model_len"] is None
    assert s["setting_conflicts"] == ["max_model_len: server_config has 32768, the command line 'auto'; the command "
                                      "line's is taken (vLLM keeps the last flag, and extra arguments come after "
                                      "the runner's)"]
    (tmp_path / "meta.json").write_text(json.dumps({"model": "google/gemma-4-26B-A4B-it", "server_config": {}}))
    assert prior_profile(s)[0].engine.max_model_len == prior_profile(load_meta(tmp_path))[0].engine.max_model_len
    # server_config alone: its "false" is off (it was read as on), and nothing is in conflict
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": {"enable_prefix_caching": "false"}}))
    s = load_meta(tmp_path)
    assert s["enable_prefix_caching"] is False and s["setting_conflicts"] == []


def test_missing_paths(tmp_path):
    with pytest.raises(ImporterError) as e:
        closed_runs(tmp_path / "no-such-run")
    _one_line(e, "no-such-run", "no such run directory")
    with pytest.raises(ImporterError) as e:
        open_runs(tmp_path / "no-such-run")
    _one_line(e, "no-such-run", "no such run directory")
    empty = tmp_path / "run"
    empty.mkdir()
    with pytest.raises(ImporterError) as e:
        load_meta(empty)
    _one_line(e, "meta.json", "file not found")
    with pytest.raises(ImporterError) as e:
        load_source(tmp_path / "gone.json")
    _one_line(e, "gone.json", "file not found")
    with pytest.raises(ImporterError) as e:
        parse_bench_serve_text("nothing printed", "07-office-baseline.log")
    _one_line(e, "07-office-baseline.log", "no 'Serving Benchmark Result' block")


@pytest.mark.parametrize("args, seqs, unmodelled", [
    ("--max-num-batched-tokens 8192 --max-num-seqs=64 --tokenizer-mode mistral", 64, []),
    ("--max_num_batched_tokens=8192 --max_num_seqs 64 --tokenizer_mode mistral", 64, []),
    ("--max-num-batched-tokens 8192 --xmax-num-seqs 5 --enforce_eager", None, ["--enforce_eager", "--xmax-num-seqs"])])
def test_scheduler_flags_are_read_in_either_spelling(tmp_path, args, seqs, unmodelled):
    """vLLM's parser takes --max_num_seqs for --max-num-seqs: both are read, neither is called unmodelled."""
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": {"extra_vllm_args": args}}))
    s = load_meta(tmp_path)
    assert (s["max_num_batched_tokens"], s["max_num_seqs"], s["unmodelled_flags"]) == (8192, seqs, unmodelled)


@pytest.mark.parametrize("server_config", [
    {"extra_vllm_args": "--gpu-memory-utilization 0.85 --kv-cache-dtype=fp8 --max-model-len 32768 "
                        "--max-num-batched-tokens 4096 --max-num-seqs 32 "
                        "--speculative-config '{\"method\": \"eagle3\", \"num_speculative_tokens\": 3}'"},
    {"gpu_memory_utilization": 0.85, "kv_cache_dtype": "fp8", "max_model_len": 32768, "max_num_batched_tokens": 4096,
     "max_num_seqs": 32, "speculative_config": {"method": "eagle3", "num_speculative_tokens": 3}},
    {"gpu_memory_utilization": 0.85, "kv_cache_dtype": "fp8", "max_model_len": 32768, "max_num_batched_tokens": 4096,
     "max_num_seqs": 32, "speculative_config": '{"method": "eagle3", "num_speculative_tokens": 3}'}])
def test_server_settings_are_read_from_the_command_line_or_beside_it(tmp_path, server_config):
    """A runner may keep a setting in server_config or only on the server's command line: either is read."""
    (tmp_path / "meta.json").write_text(json.dumps({"model": "m", "server_config": server_config}))
    s = load_meta(tmp_path)
    assert {k: s[k] for k in ("gpu_memory_utilization", "kv_cache_dtype", "max_model_len", "max_num_batched_tokens",
                              "max_num_seqs", "speculative_config", "unmodelled_flags")} == {
        "gpu_memory_utilization": 0.85, "kv_cache_dtype": "fp8", "max_model_len": 32768,
        "max_num_batched_tokens": 4096, "max_num_seqs": 32,
        "speculative_config": {"method": "eagle3", "num_speculative_tokens": 3}, "unmodelled_flags": []}


@pytest.mark.parametrize("config, what", [
    ({"gpu_memory_utilization": 1.7}, "gpu_memory_utilization is 1.7: vLLM takes a fraction in (0, 1]"),
    ({"gpu_memory_utilization": "abc"}, "gpu_memory_utilization is 'abc'"),
    ({"max_num_batched_tokens": 2048.5}, "max_num_batched_tokens is 2048.5: vLLM takes a positive integer"),
    ({"max_model_len": True}, "max_model_len is True"),
    ({"extra_vllm_args": "--max-num-seqs 0"}, "max_num_seqs is '0': vLLM takes a positive integer"),
    ({"extra_vllm_args": "--max-num-batched-tokens -1"}, "max_num_batched_tokens is '-1'"),
])
def test_a_server_setting_vllm_would_not_start_with_is_named(tmp_path, config, what):
    """Dropping it for vLLM's default would calibrate another server than the one measured."""
    (tmp_path / "meta.json").write_text(json.dumps({"model": "acme/Foo-8B", "server_config": config}))
    with pytest.raises(ImporterError) as e:
        load_meta(tmp_path)
    _one_line(e, "meta.json", what)


def test_server_settings_as_json_numbers_and_flags(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"model": "acme/Foo-8B", "server_config": {
        "max_model_len": 32768.0, "gpu_memory_utilization": 1, "extra_vllm_args": "--max-num-batched-tokens 4k"}}))
    m = load_meta(tmp_path)
    assert (m["max_model_len"], m["gpu_memory_utilization"], m["max_num_batched_tokens"], m["max_num_seqs"]) == (
        32768, 1.0, 4000, None)


def test_a_negative_figure_in_a_benchy_table_is_named(tmp_path):
    bad = C1_ONLY.replace("| m | tg256 @ d4096 | 24.10 ± 0.05", "| m | tg256 @ d4096 | -24.10 ± 0.05")
    assert bad != C1_ONLY
    with pytest.raises(ImporterError) as e:
        parse_benchy_markdown(bad, tmp_path / "x.md")
    _one_line(e, "x.md", "('tg256 @ d4096', 't/s'): a negative '-24.10 ± 0.05'")
    # est_ppt is ttfr less the latency probe: under 0 for a prompt faster than the probe, and read
    rows = parse_benchy_markdown(C1_ONLY.replace("| 200.00 ± 2.00 |", "| -2.00 ± 2.00 |"))
    assert rows[-1].metrics["est_ppt"] == (-2.0, 2.0)


def test_prefix_caching_from_the_runner_or_the_command_line(tmp_path):
    from calibrate.fit import fit_closed
    from calibrate.server_flags import switch_flag
    assert switch_flag("enable_prefix_caching", "--max-num-seqs 8 --enable-prefix-caching") is True
    assert switch_flag("enable_prefix_caching", "--enable_prefix_caching --no-enable-prefix-caching") is False  # last
    assert switch_flag("enable_prefix_caching", "--enable-prefix-caching-hash-algo sha256") is None  # another flag
    (tmp_path / "meta.json").write_text(json.dumps({"model": "google/gemma-4-26B-A4B-it", "server_config": {
        "extra_vllm_args": "--enable-prefix-caching"}}))
    server = load_meta(tmp_path)
    assert server["enable_prefix_caching"] is True
    fr = fit_closed(seed_closed_runs()[:1], server=server, max_nfev=1, combine="sum")
    assert "simulated with no prefix cache" in fr.origin["prefix_caching"]


def test_a_ramp_up_result_validates_as_the_ramp_it_ran(tmp_path):
    """vllm bench serve writes request_rate "inf" beside its --ramp-up-* keys: read as a burst, validate would
    predict a different load. The keys come from the result JSON, the command and a logged Namespace alike,
    and a result that disagrees with its command is refused."""
    from calibrate.validate import pattern_for

    data = json.loads((G26 / "07-office-baseline.json").read_text())
    data.update(request_rate="inf", ramp_up_strategy="exponential", ramp_up_start_rps=1, ramp_up_end_rps=8)
    bare = tmp_path / "ramp.json"
    bare.write_text(json.dumps(data))
    (run,) = load_source(bare)
    pat = pattern_for(run)
    assert math.isinf(pat.rate) and pat.ramp_up is not None and pat.ramp_up.rates(3) == [1.0, 2.0 ** 1.5, 8.0]
    assert pat.arrival_times(50)[-1] > 10.0  # not a burst at t = 0: 50 requests at 1-8 req/s
    line = ("vllm bench serve --model m --num-prompts 90 --burstiness 0.7 --ramp-up-strategy linear "
            "--ramp-up-start-rps 1 --ramp-up-end-rps 4")
    p = parse_command(line)
    assert (p["ramp_up_strategy"], p["ramp_up_start_rps"], p["ramp_up_end_rps"]) == ("linear", 1.0, 4.0)
    assert parse_command("vllm bench serve --model m")["ramp_up_strategy"] is None
    assert serve_params({"ramp_up_strategy": "'linear'", "ramp_up_end_rps": "4"}, None)["ramp_up_strategy"] == "linear"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "meta.json").write_text((G26 / "meta.json").read_text())
    (suite / "07-office-baseline.md").write_text(f"## Command\n```\n{line}\n```\n")
    (suite / "07-office-baseline.json").write_text(json.dumps(data | {"num_prompts": 90}))
    with pytest.raises(ImporterError, match="ramp_up_strategy is 'exponential' but the command says 'linear'"):
        open_runs(suite)


def test_a_probe_run_reads_its_rate_from_the_command_and_its_keys_from_the_printout(tmp_path):
    """vllm bench serve writes the probe's keys but not its rate: a suite report's command gives the rate, so
    validate predicts the probe; its printed 'Probe Requests' lines (vLLM's labels) read as the JSON's keys."""
    from calibrate.validate import pattern_for

    data = json.loads((G26 / "07-office-baseline.json").read_text())
    data.update(probe_completed=40, probe_failed=0, probe_median_e2el_ms=61.5, probe_p99_e2el_ms=190.25,
                probe_max_e2el_ms=201.0)
    line = "vllm bench serve --model m --num-prompts 90 --request-rate 0.3 --burstiness 0.7 --probe-request-rate 0.5"
    assert parse_command(line)["probe_request_rate"] == 0.5
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "meta.json").write_text((G26 / "meta.json").read_text())
    (suite / "07-office-baseline.md").write_text(f"## Command\n```\n{line}\n```\n")
    (suite / "07-office-baseline.json").write_text(json.dumps(data | {"num_prompts": 90}))
    (run,) = [r for r in open_runs(suite) if r.test.startswith("07")]
    assert pattern_for(run).probe_rate == 0.5 and run.result["probe_median_e2el_ms"] == 61.5
    text = "\n".join(["============ Serving Benchmark Result ============",
                      "Successful requests:                     90        ",
                      "Benchmark duration (s):                  300.50    ",
                      "Total input tokens:                      92160     ",
                      "Total generated tokens:                  11520     ",
                      "Request throughput (req/s):              0.30      ",
                      "Output token throughput (tok/s):         38.34     ",
                      "------------------Probe Requests------------------",
                      "Probe requests completed:                40        ",
                      "Probe requests failed:                   1         ",
                      "Median probe E2EL (ms):                  61.50     ",
                      "P99 probe E2EL (ms):                     190.25    ",
                      "Max probe E2EL (ms):                     201.00    ",
                      "---------------Time to First Token----------------",
                      "Mean TTFT (ms):                          80.00     ",
                      "=================================================="])
    printed = parse_bench_serve_text(text)
    assert {k: v for k, v in printed.items() if k.startswith("probe_")} == {
        "probe_completed": 40, "probe_failed": 1, "probe_median_e2el_ms": 61.5, "probe_p99_e2el_ms": 190.25,
        "probe_max_e2el_ms": 201.0}
