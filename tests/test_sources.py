"""calibrate/sources.py: what `capsim calibrate` / `capsim validate` read from each name (issue 13).

load_closed / load_open on the shipped seed, on small suite folders, llama-benchy tables, vllm bench
serve JSONs and capsim run folders built here in tmp_path (shapes copied from
shared/data/spark-bench/results/*/*/* and measure/runfiles.py), and server_key.

The leakage guard of the suite importer (closed_runs opens no open-loop file) and of the seed
(seed_closed_runs never opens open.json) is tested in tests/test_importers.py; here the guard is one
level up, at the sources: a closed-loop name never yields open-loop runs, an open-loop file is refused
as a calibration source, and calibration's runs do not change when every open-loop file is garbage.
"""
import json
import shutil

import pytest

from calibrate.importers import ImporterError
from calibrate.results import ClosedRun, OpenRun
from calibrate.sources import load_closed, load_open, server_key
from simulator.load import ClosedLoop, OpenLoop
from simulator.sim import simulate_closed, simulate_open
from simulator.workload import RandomWorkload
from tests.helpers import tiny_profile, write_run_folder
from tests.test_importers import SUITES, needs_data

META = {
    "profile": "bf16", "model": "Acme/Tiny-1B", "served_name": "tiny-1b-bf16",
    "vllm_image": "vllm/vllm-openai:v0.26.0", "vllm_version_reported": "0.26.0", "llama_benchy_version": "0.4.0",
    "hardware": "DGX Spark NVIDIA GB10 128GB unified",
    "server_config": {"max_model_len": 32768, "gpu_memory_utilization": 0.85, "kv_cache_dtype": "fp8",
                      "enable_prefix_caching": False, "async_scheduling": True,
                      "extra_vllm_args": "--max-num-batched-tokens 4096 --max-num-seqs 64"},
}

BENCHY_MD = """# Test 01-chat — 1k prompt + 64 output, c=1/2

## Command

```bash
uvx llama-benchy==0.4.0 --base-url http://localhost:8000/v1 --model tiny-1b-bf16 --runs 3 --latency-mode generation --format md --pp 1024 --tg 64 --depth 0 --concurrency 1 2
```

## Results

| model        |        test |     t/s (total) |       t/s (req) |     peak t/s |  peak t/s (req) |      ttfr (ms) |   est_ppt (ms) |  e2e_ttft (ms) |
|:-------------|------------:|----------------:|----------------:|-------------:|----------------:|---------------:|---------------:|---------------:|
| tiny-1b-bf16 | pp1024 (c1) | 4000.00 ± 10.00 | 4000.00 ± 10.00 |              |                 | 300.00 ± 5.00  | 256.00 ± 5.00  | 300.00 ± 5.00  |
| tiny-1b-bf16 |   tg64 (c1) |    50.00 ± 0.10 |    50.00 ± 0.10 | 52.00 ± 0.50 |    52.00 ± 0.50 |                |                |                |
| tiny-1b-bf16 | pp1024 (c2) | 6000.00 ± 20.00 | 3000.00 ± 30.00 |              |                 | 400.00 ± 6.00  | 356.00 ± 6.00  | 400.00 ± 6.00  |
| tiny-1b-bf16 |   tg64 (c2) |    90.00 ± 0.20 |    45.00 ± 0.20 | 94.00 ± 1.00 |    47.00 ± 0.50 |                |                |                |

llama-benchy (0.4.0)
date: 2026-08-07 16:20:27 | latency mode: generation
"""

SERVE = {"date": "20260807-155851", "endpoint_type": "openai-chat", "backend": "openai-chat", "label": None,
         "model_id": "Acme/Tiny-1B", "tokenizer_id": "Acme/Tiny-1B", "num_prompts": 10, "request_rate": 0.5,
         "burstiness": 1.0, "max_concurrency": None, "duration": 21.0, "completed": 10, "failed": 0,
         "total_input_tokens": 10000, "total_output_tokens": 1000, "request_throughput": 0.476,
         "request_goodput": None, "output_throughput": 47.6, "total_token_throughput": 523.8,
         "max_output_tokens_per_s": 60.0, "max_concurrent_requests": 2, "rtfx": 0.0,
         **{f"{s}_{m}_ms": v for m, v in (("ttft", 300.0), ("tpot", 20.0), ("itl", 20.0), ("e2el", 2280.0))
            for s in ("mean", "median", "p50", "p90", "p95", "p99")},
         **{f"std_{m}_ms": 1.0 for m in ("ttft", "tpot", "itl", "e2el")}}


def suite(root, closed=True, open_=True):
    """A suite folder (spark-bench layout): meta.json, 01-chat.md (+ log), 07-office-baseline.json."""
    d = root / "results" / "acme" / "tiny-1b" / "bf16"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps(META))
    if closed:
        (d / "01-chat.md").write_text(BENCHY_MD)
        (d / "01-chat.log").write_text("llama-benchy (0.4.0)\n")
    if open_:
        (d / "07-office-baseline.json").write_text(json.dumps(SERVE))
    return d


def capsim_run(folder, kind):
    """A `capsim measure` run folder of a simulated run, written the way measure writes one."""
    prof = tiny_profile()
    if kind == "closed":
        run = simulate_closed(prof, ClosedLoop(pp=(32,), tg=(8,), concurrency=(1, 2), runs=2))
    else:
        run = simulate_open(prof, RandomWorkload(input_len=32, output_len=8).sample(5, seed=0), OpenLoop(rate=10.0))
    meta = run.meta_json() | dict(model="Acme/Tiny-1B", endpoint="chat", url="http://127.0.0.1:1", max_num_seqs=4,
                                  max_num_batched_tokens=64, max_model_len=100000, num_prompts=5, seed=0,
                                  workload={"dataset": "random", "random_input_len": 32, "random_output_len": 8})
    write_run_folder(folder, run, meta)
    return folder, run


# ------------------------------------------------------------------ the seed

def test_seed_closed_and_open():
    closed = load_closed(["seed"])
    assert [r.test for r in closed] == ["A", "B", "C", "E", "F", "G"]
    assert all(isinstance(r, ClosedRun) and r.source == "seed" and r.rows for r in closed)
    opened = load_open(["seed"])
    assert [r.test for r in opened] == ["H", "I", "J"]
    assert all(isinstance(r, OpenRun) and r.source == "seed" for r in opened)
    # one server: every seed run has the same key, the write-up's Gemma 4 box
    keys = {server_key(r) for r in closed + opened}
    assert keys == {("google/gemma-4-26B-A4B-it", None, None, 0.95, "fp8", "0.20.1")}


def test_sources_are_read_in_order_and_concatenated(tmp_path):
    d = suite(tmp_path)
    runs = load_closed([str(d), "seed", str(d)])
    assert [r.test for r in runs] == ["01-chat", "A", "B", "C", "E", "F", "G", "01-chat"]
    assert load_closed([]) == [] and load_open([]) == []


# ------------------------------------------------------------------ a suite folder

def test_a_suite_folder(tmp_path):
    d = suite(tmp_path)
    (run,) = load_closed([str(d)])
    assert (run.test, run.model, run.runs, run.latency_mode) == ("01-chat", "tiny-1b-bf16", 3, "generation")
    assert [(r.pp, r.tg, r.concurrency) for r in run.rows] == [(1024, 64, 1), (1024, 64, 2)]
    s = run.server
    assert (s["model"], s["max_num_batched_tokens"], s["max_num_seqs"]) == ("Acme/Tiny-1B", 4096, 64)
    (o,) = load_open([str(d)])
    assert (o.test, o.params["num_prompts"], o.params["request_rate"]) == ("07-office-baseline", 10, 0.5)
    assert o.result["completed"] == 10 and o.result["mean_ttft_ms"] == 300.0
    # closed- and open-loop runs of one server share the key that groups them
    assert server_key(run) == server_key(o) == ("Acme/Tiny-1B", 4096, 64, 0.85, "fp8", "0.26.0")


def test_single_files(tmp_path):
    d = suite(tmp_path)
    md, js = d / "01-chat.md", d / "07-office-baseline.json"
    assert [r.test for r in load_closed([str(md)])] == ["01-chat"]
    assert load_open([str(md)]) == []  # a llama-benchy table holds no open-loop run
    (o,) = load_open([str(js)])
    assert o.test == "07-office-baseline" and o.server["model"] == "Acme/Tiny-1B"  # meta.json beside it


# ------------------------------------------------------------------ the leakage guard, at the sources

def test_an_open_loop_file_is_not_a_calibration_source(tmp_path):
    js = suite(tmp_path) / "07-office-baseline.json"
    with pytest.raises(ImporterError, match="not a closed-loop source"):
        load_closed([str(js)])


def test_calibration_runs_do_not_depend_on_open_loop_files(tmp_path):
    d = suite(tmp_path)
    before = load_closed([str(d)])
    (d / "07-office-baseline.json").write_text("{ not json")  # garbage where the open-loop answers were
    (d / "08-sharegpt.json").write_text("garbage")
    (d / "11-rate-sweep-0.1.json").write_text("garbage")
    assert load_closed([str(d)]) == before
    with pytest.raises(ImporterError):
        load_open([str(d)])  # the garbage is read by validation, which is how we know it is there


@needs_data
def test_a_real_suite_calibrates_the_same_without_its_open_loop_files(tmp_path):
    src = SUITES["gemma26"]
    runs = load_closed([str(src)])
    assert [r.test for r in runs] == ["01-chat", "02-rag-8k", "03-long-output", "04-multi-turn",
                                      "05-big-context", "06-concurrency-stress"]
    copy = tmp_path / "results" / src.parent.parent.name / src.parent.name / src.name
    shutil.copytree(src, copy)
    for p in copy.iterdir():
        if p.name[:2] in ("07", "08", "09", "10", "11") and p.suffix == ".json":
            p.write_text("garbage")
    again = load_closed([str(copy)])
    assert [(r.test, r.rows, r.server) for r in again] == [(r.test, r.rows, r.server) for r in runs]
    opened = load_open([str(src)])
    assert opened and {server_key(r) for r in opened} == {server_key(runs[0])}


# ------------------------------------------------------------------ capsim run folders

def test_a_capsim_closed_run_folder(tmp_path):
    folder, run = capsim_run(tmp_path / "my-closed", "closed")
    (c,) = load_closed([str(folder)])
    assert (c.test, c.model, c.version, c.path) == ("my-closed", "Acme/Tiny-1B", "capsim measure", str(folder))
    assert c.latency_ms == pytest.approx(1000.0 * run.closed_loop.latency_s)
    assert [(r.pp, r.tg, r.concurrency) for r in c.rows] == [(32, 8, 1), (32, 8, 2)]
    assert (c.server["model"], c.server["max_num_seqs"], c.server["max_num_batched_tokens"]) == ("Acme/Tiny-1B", 4, 64)
    assert c.server["tokens_per_chunk"] == 1.0  # one token per streamed chunk: no speculative decoding
    assert load_open([str(folder)]) == []  # a closed-loop run is no validation target


def test_a_capsim_run_carries_the_servers_measured_kv_cache_into_calibration(tmp_path):
    """measure stores /metrics' cache_config under run.json's meta["server_cache_config"] (Prometheus labels, as
    text) and /v1/models' max_model_len in run.json's "server": calibration reads both, and the
    server's own block count replaces any prior."""
    from calibrate.priors import prior_profile

    folder, run = capsim_run(tmp_path / "measured", "closed")
    info = json.loads((folder / "run.json").read_text())
    info["server"] = {"server": "vllm", "server_version": "0.32.0", "max_model_len": 4096}
    info["meta"].pop("max_model_len")
    info["meta"]["server_cache_config"] = {"block_size": "16", "num_gpu_blocks": "640", "kv_cache_size_tokens": "10240",
                                           "cache_dtype": "auto", "sliding_window": "None"}
    (folder / "run.json").write_text(json.dumps(info))
    (c,) = load_closed([str(folder)])
    assert (c.server["num_gpu_blocks"], c.server["block_size"], c.server["max_model_len"]) == (640, 16, 4096)
    prof, origin = prior_profile(c.server | {"gpu_memory_utilization": 0.9}, 30.0)
    assert prof.engine.num_blocks == 640 and prof.engine.max_model_len == 4096
    assert origin["num_blocks"].startswith("measured: 640 blocks of 16 tokens")
    # without the measured count, the same server falls back on what the name says (here: nothing)
    c.server.pop("num_gpu_blocks")
    _, origin = prior_profile(c.server, 30.0)
    assert not origin["num_blocks"].startswith("measured")


def test_a_capsim_open_run_folder(tmp_path):
    folder, run = capsim_run(tmp_path / "my-open", "open")
    (o,) = load_open([str(folder)])
    assert (o.test, o.dataset) == ("my-open", "random")
    assert o.params["endpoint"] == "/v1/chat/completions" and o.params["random_input_len"] == 32
    assert o.result["completed"] == 5
    assert load_closed([str(folder)]) == []  # an open-loop run never reaches calibration


def rewrite_run_json(folder, change):
    """Edit a capsim run folder's run.json in place (an older or other server's run, a crashed one)."""
    info = json.loads((folder / "run.json").read_text())
    change(info)
    (folder / "run.json").write_text(json.dumps(info))


def rewrite_meta(folder, change):
    """Edit a capsim run folder's run.json meta in place."""
    rewrite_run_json(folder, lambda info: change(info["meta"]))


def test_a_capsim_open_runs_arrivals_become_vllm_bench_serves_keys(tmp_path):
    """validate re-simulates a live open-loop run from these keys: each one comes from run.json's meta."""
    folder, _ = capsim_run(tmp_path / "arrivals", "open")
    rewrite_meta(folder, lambda m: m.update(endpoint="completions", request_rate=2.0, burstiness=0.5,
                                            max_concurrency=3, num_prompts=7, seed=11))
    (o,) = load_open([str(folder)])
    assert o.params == {"backend": "openai", "endpoint": "/v1/completions", "num_prompts": 7, "request_rate": 2.0,
                        "burstiness": 0.5, "max_concurrency": 3, "seed": 11, "random_input_len": 32,
                        "random_output_len": 8}


def test_a_capsim_open_run_without_arrival_facts_takes_vllm_bench_serves_defaults(tmp_path):
    """An older run.json without the arrival keys: all its records at once (no rate), Poisson, seed 0, as
    many prompts as records."""
    folder, run = capsim_run(tmp_path / "older", "open")
    rewrite_meta(folder, lambda m: [m.pop(k) for k in ("request_rate", "burstiness", "max_concurrency",
                                                        "num_prompts", "seed")])
    (o,) = load_open([str(folder)])
    assert {k: o.params[k] for k in ("backend", "endpoint", "num_prompts", "request_rate", "burstiness",
                                     "max_concurrency", "seed")} == {
        "backend": "openai-chat", "endpoint": "/v1/chat/completions", "num_prompts": len(run.records),
        "request_rate": None, "burstiness": 1.0, "max_concurrency": None, "seed": 0}


def test_a_capsim_open_run_with_null_prompts_and_seed(tmp_path):
    """measure writes the arrival keys together, num_prompts and seed null where it had none."""
    folder, run = capsim_run(tmp_path / "nulls", "open")
    rewrite_meta(folder, lambda m: m.update(num_prompts=None, seed=None))
    (o,) = load_open([str(folder)])
    assert (o.params["num_prompts"], o.params["seed"]) == (len(run.records), 0)


def test_a_capsim_closed_runs_latency_and_server_facts(tmp_path):
    """No latency measured reads 0 ms in "generation" mode (llama-benchy's default); a server's version is
    taken only where /v1/models said vLLM; a count of 0 blocks (a server that had not sized its cache) is no
    count."""
    folder, _ = capsim_run(tmp_path / "facts", "closed")
    rewrite_meta(folder, lambda m: (m.update(latency_s=0.0, server_cache_config={"num_gpu_blocks": "0",
                                                                                 "block_size": "16"}),
                                    m.pop("latency_mode", None)))
    rewrite_run_json(folder, lambda info: info.update(server={"server": "llama.cpp", "server_version": "b5000"}))
    (c,) = load_closed([str(folder)])
    assert (c.latency_ms, c.latency_mode) == (0.0, "generation")
    assert (c.server["num_gpu_blocks"], c.server["block_size"], c.server["vllm_version"]) == (None, 16, None)
    rewrite_meta(folder, lambda m: m.update(latency_mode="api"))
    rewrite_run_json(folder, lambda info: info.update(server={"server": "vllm", "server_version": "0.32.0"}))
    (c,) = load_closed([str(folder)])
    assert (c.latency_mode, c.server["vllm_version"]) == ("api", "0.32.0")


def test_an_unreadable_capsim_run_is_an_importer_error(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "run.json").write_text("{ not json")
    with pytest.raises(ImporterError, match="unreadable run.json"):
        load_closed([str(d)])


# ------------------------------------------------------------------ what is not a source

def test_names_that_are_not_sources(tmp_path):
    missing = tmp_path / "none"
    with pytest.raises(ImporterError, match="no such file or folder"):
        load_closed([str(missing)])
    with pytest.raises(ImporterError, match="no such file or folder"):
        load_open([str(missing)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImporterError, match="not a closed-loop source"):
        load_closed([str(empty)])
    with pytest.raises(ImporterError, match="not an open-loop source"):
        load_open([str(empty)])
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ImporterError, match="not a closed-loop source"):
        load_closed([str(txt)])


def test_server_key_of_a_run_without_server_facts():
    run = OpenRun(source="x", test="t", path="p", dataset="random", params={}, result={}, server=None)
    assert server_key(run) == (None,) * 6
