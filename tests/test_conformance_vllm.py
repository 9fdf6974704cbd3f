"""Conformance with vLLM's own benchmark code (issue 14): no vLLM server, vLLM 0.32's code as the oracle.

`tests/vllm_oracle.py` runs in the vLLM venv (scripts/setup_vllm_cpu.sh) and answers with
what `vllm bench serve`'s own functions produce: its CLI parser and seeding, `get_samples`
with RandomDataset / ShareGPTDataset, `get_request`'s send schedule and `calculate_metrics`.
Each test puts capsim's code in this venv beside the answer:

* arrival offsets: `OpenLoop(...).arrival_times(n)` against get_request, burstiness 0.7, 1.0
  and inf, several rates and seeds, and with --ramp-up-strategy (linear, exponential) the rate of
  each request as get_request yields it;
* random dataset: `RandomWorkload` (built as `capsim simulate` builds it) against
  RandomDataset's draw, to the token (input lengths, output lengths, token offsets, and
  vLLM's prompt_len after its decode/re-encode);
* random prompts: the texts capsim measure builds through a server's /tokenize and /detokenize
  (here the Gemma 3 tokenizer answering as vLLM's server does) against RandomDataset's, to the
  character; the vocabulary size and special ids `measure/vocab.py` reads against the tokenizer's own
  on fourteen folder layouts;
* request bodies: vLLM's own `vllm bench serve` and capsim measure on the same command lines against
  fake servers that keep every body;
* ShareGPT: `ShareGPTWorkload` with the same tokenizer against ShareGPTDataset: the chosen
  prompts, in order, with their lengths (filter, shuffle, oversampling, fixed output length);
* metrics: every key of vLLM's result JSON from `calculate_metrics` against
  `summarize_open` on the same requests, within 1e-9 relative;
* the KV cache: its size in tokens (get_kv_cache_capacity), the blocks a request holds (vLLM's
  managers) and the groups a hybrid model's layers make (get_kv_cache_groups);
* the twin's /metrics histograms: bucket bounds, counts and sums against vLLM's bucket families in the
  prometheus_client Histogram its stat logger uses.

Without the vLLM venv the tests skip (one line); with CAPSIM_REQUIRE_VLLM=1 (CI) they fail.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from calibrate.importers import ImporterError, load_meta
from calibrate.live import VLLM_DEFAULTS, kv_groups_from_hf_config
from calibrate.priors import prior_profile
from calibrate.server_flags import vllm_batch_defaults
from capsim.cli import build_open_workload, main
from measure import prom
from measure.cli import measure as measure_cli
from measure.prompts import PromptBuilder
from measure.runfiles import load_run
from measure.twin_engine import TwinStats
from measure.vocab import read_vocab
from simulator.kvcache import KVCache, hybrid_layout, kv_cache_size_tokens
from simulator.load import OpenLoop, RampUp
from simulator.profile import EngineLimits, KVGroup
from simulator.records import RequestRecord, RunResult
from simulator.sim import simulate_open
from simulator.bench_plots import ITL_COLORS, TTFT_COLOR, itl_labels, timeline_segments
from simulator.summary import result_arrays, summarize_open
from simulator.workload import PromptFormat, RequestSpec, WorkloadError
from tests.helpers import (TokenizerEndpoints, blocks_in_use_after_admitting, hits_around_preemptions,
                           sharegpt_conversation, tiny_profile)
from tests.stream_cases import STREAM_SPLITS, STREAMS, capsim_reads
from tests.live_server import model_dir, oracle_answers, vllm_available, vllm_bench_serve, vllm_home

TOK = str(model_dir())
FMT = PromptFormat(special_tokens=1, chat_template_tokens=13, vocab_size=262144)  # Gemma 3 / 4

# ------------------------------------------------------------------ cases

# (rate, burstiness, seed, n)
ARRIVALS = [(r, b, s, 60) for b in (0.7, 1.0) for r in (0.5, 4.0, 37.5) for s in (0, 42)]
ARRIVALS += [(4.0, math.inf, 0, 20), (math.inf, 1.0, 0, 20), (1000.0, 0.7, 123, 500)]
# (strategy, start rps, end rps, burstiness, seed, n): --ramp-up-strategy, whose rate grows request by request
RAMPS = [("linear", 1, 8, 1.0, 0, 60), ("linear", 2, 2, 0.7, 42, 40), ("exponential", 1, 30, 0.7, 7, 80),
         ("exponential", 3, 5, math.inf, 0, 25), ("linear", 1, 9, 1.0, 3, 1)]

# (input_len, output_len, range_ratio, prefix_len, seed, n)
RANDOM = [
    (1024, 128, 0.0, 0, 0, 100),
    (1024, 128, 0.9, 0, 0, 100),
    (1024, 128, 0.9, 0, 1234, 100),
    (64, 16, 0.9, 0, 7, 300),
    (64, 16, 0.0, 0, 7, 50),
    (300, 50, 0.5, 5, 3, 100),
]
# (prefix_len, suffix_len, num_prefixes, output_len, seed, num_prompts, --disable-shuffle): prompts per prefix
# num_prompts // num_prefixes, a prefix or a suffix of no tokens, --output-len over the dataset's
PREFIX_REPETITION = [(24, 16, 3, 5, 0, 10, False), (40, 8, 2, 4, 7, 7, False), (0, 12, 2, 3, 1, 4, False),
                     (16, 0, 4, 6, 3, 8, True), (32, 24, 5, 9, 11, 25, False)]
# Lengths at the edge of what vLLM accepts (input_len, range_ratio, prefix_len): a prompt that
# could sample 0 tokens is refused, one that cannot is not.
EDGES = [(1, 0.0, 0), (2, 0.0, 0), (2, 0.5, 0), (3, 0.5, 0), (1, 0.0, 1), (20, 0.99, 0), (200, 0.99, 0)]

# (seed, num_prompts, sharegpt_output_len, --disable-shuffle)
# (seed, num_prompts, --sharegpt-output-len, --disable-shuffle, --no-oversample)
SHAREGPT = [(0, 10, None, False, False), (7, 10, None, False, False), (0, 60, None, False, False),
            (3, 12, 5, False, False), (7, 10, None, True, False), (0, 60, None, False, True)]

PERCENTILES = [50, 90, 95, 99, 99.9, 10]


def _fmt_rate(x: float) -> str:
    return "inf" if math.isinf(x) else repr(float(x))


def _random_argv(inp, out, rr, prefix, seed, n, rate=math.inf, burst=1.0):
    return ["--model", "gemma3-dummy", "--tokenizer", TOK, "--dataset-name", "random",
            "--random-input-len", str(inp), "--random-output-len", str(out),
            "--random-range-ratio", repr(rr), "--random-prefix-len", str(prefix),
            "--num-prompts", str(n), "--seed", str(seed),
            "--request-rate", _fmt_rate(rate), "--burstiness", _fmt_rate(burst)]


PREFIX_REPETITION_KEYS = ("prefix_len", "suffix_len", "num_prefixes", "output_len")


def _prefix_repetition_argv(case):
    prefix, suffix, k, out, seed, n, unshuffled = case
    return ["--model", "gemma3-dummy", "--tokenizer", TOK, "--dataset-name", "prefix_repetition",
            "--prefix-repetition-prefix-len", str(prefix), "--prefix-repetition-suffix-len", str(suffix),
            "--prefix-repetition-num-prefixes", str(k), "--prefix-repetition-output-len", str(out),
            "--num-prompts", str(n), "--seed", str(seed), "--request-rate", "2"] + \
        (["--disable-shuffle"] if unshuffled else [])


# ------------------------------------------------------------------ synthetic requests for the metrics

def _synthetic_requests(seed: int = 2024, n: int = 160):
    """Requests as a client saw them: (start, chunk times, output tokens, prompt, error, mask).

    Includes single-chunk requests, chunks carrying several tokens (speculative decoding),
    role-only first chunks (no token), repeated identical gaps (as simulated runs give),
    a request failed mid-stream and one that never got a chunk.
    """
    rng = np.random.default_rng(seed)
    reqs = []
    starts = np.sort(1000.25 + rng.uniform(0, 9.0, n))
    for i, st in enumerate(starts):
        k = int(rng.choice([1, 1, 2, 5, 17, 40]))
        ttft = float(rng.uniform(0.02, 1.7))
        if i % 3 == 0:
            gaps = np.full(k - 1, 0.0250)  # one decode step per chunk, identical gaps
        else:
            gaps = rng.uniform(0.004, 0.3, k - 1)
        chunks = st + ttft + np.concatenate([[0.0], np.cumsum(gaps)])
        per_chunk = rng.integers(1, 4, k) if i % 5 == 1 else np.ones(k, dtype=int)  # several tokens per chunk
        mask = None
        if i % 7 == 2 and k > 1:  # a role-only first delta: a chunk without a token
            mask = np.ones(k, dtype=bool)
            mask[0] = False
            per_chunk[0] = 0
        reqs.append(dict(start=float(st), chunks=chunks, out=int(per_chunk.sum()), prompt=int(rng.integers(5, 2000)),
                         error=None, mask=mask))
    reqs.append(dict(start=1003.1, chunks=np.array([1003.5, 1003.6]), out=0, prompt=77,
                     error="ClientPayloadError: Response payload is not completed", mask=None))
    reqs.append(dict(start=1004.2, chunks=np.zeros(0), out=0, prompt=12, error=None, mask=None))
    return reqs


def _records(reqs) -> list[RequestRecord]:
    return [RequestRecord(request_id=i, prompt_tokens=r["prompt"], output_tokens=r["out"], scheduled_time=r["start"],
                          start_time=r["start"], chunk_times=r["chunks"], content_mask=r["mask"],
                          end_time=float(r["chunks"][-1]) if len(r["chunks"]) else r["start"], error=r["error"])
            for i, r in enumerate(reqs)]


def _vllm_outputs(reqs) -> list[dict]:
    """RequestFuncOutput fields as vLLM's openai-chat request function fills them."""
    outs = []
    for r in reqs:
        c, st = r["chunks"], r["start"]
        ok = r["error"] is None and len(c) > 0
        o = dict(success=ok, prompt_len=r["prompt"], start_time=st, output_tokens=r["out"] if ok else 0,
                 generated_text="x", error=r["error"] or ("" if ok else "Never received a valid chunk"))
        if len(c):
            o["ttft"] = float(c[0] - st)
            o["itl"] = [float(c[j] - c[j - 1]) for j in range(1, len(c))]
            o["latency"] = float(c[-1] - st) if ok else 0.0
        outs.append(o)
    return outs


def _metric_runs():
    full = _synthetic_requests()
    hand = [dict(start=0.0, chunks=np.array([1.0, 1.5, 2.5]), out=3, prompt=100, error=None, mask=None),
            dict(start=1.0, chunks=np.array([3.0, 3.2]), out=2, prompt=50, error=None, mask=None),
            dict(start=2.0, chunks=np.array([2.4]), out=1, prompt=10, error=None, mask=None),
            dict(start=2.5, chunks=np.zeros(0), out=0, prompt=7, error="HTTP 500", mask=None)]
    failed = [dict(start=0.5, chunks=np.zeros(0), out=0, prompt=7, error="HTTP 500", mask=None)] * 3
    runs = {}
    for name, reqs, t0, t1 in (("synthetic", full, 1000.2, 1013.75), ("hand", hand, 0.0, 4.0),
                               ("all_failed", failed, 0.0, 2.0)):
        runs[name] = (reqs, RunResult(_records(reqs), t0, t1, "open"))
    return runs


METRIC_RUNS = _metric_runs()
# --plot-timeline's cases: a metric run and its ITL thresholds (s); "hand" has a gap in every class and a failure
TIMELINES = [("synthetic", (0.025, 0.050)), ("hand", (0.5, 1.0))]


# /metrics texts of a speculating server, with what its reader must get past: two engines to sum, the _created
# samples, an unlabelled counter, values in exponent form, an unreadable value, labels with a space, a position
# that is no number, another spec_decode counter; then none at all, and only a counter of no known name
_SPEC_LAB = 'engine="{}",model_name="m"'
SPEC_METRICS = [
    "\n".join([
        "# HELP vllm:spec_decode_num_drafts Number of spec decoding drafts.",
        "# TYPE vllm:spec_decode_num_drafts counter",
        *(f"vllm:spec_decode_num_drafts_total{{{_SPEC_LAB.format(e)}}} {n}" for e, n in ((0, "12.0"), (1, "3e1"))),
        f"vllm:spec_decode_num_drafts_created{{{_SPEC_LAB.format(0)}}} 1.7e9",
        f"vllm:spec_decode_num_draft_tokens_total{{{_SPEC_LAB.format(0)}}} 60.0",
        "vllm:spec_decode_num_draft_tokens_total 6",
        f"vllm:spec_decode_num_accepted_tokens_total{{{_SPEC_LAB.format(0)}}} 41.0",
        f"vllm:spec_decode_num_accepted_tokens_total{{{_SPEC_LAB.format(1)}}} NaN",
        *(f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{_SPEC_LAB.format(0)}, position="{p}"}} {n}'
          for p, n in ((0, "12.0"), (1, "9.0"), (2, "7.0"))),
        f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{_SPEC_LAB.format(1)},position="0"}} 5.0',
        f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{_SPEC_LAB.format(1)},position="x"}} 2.0',
        f"vllm:spec_decode_draft_acceptance_total{{{_SPEC_LAB.format(0)}}} 9.0",
        "vllm:num_requests_running 2.0"]),
    "vllm:num_requests_running 2.0\nvllm:generation_tokens_total 100.0",
    "vllm:spec_decode_other_total 3.0\n",
]


def _timeline_input(run: RunResult) -> list[dict]:
    """The per-request data vllm bench serve hands generate_timeline_plot, from a run's result arrays."""
    a = result_arrays(run.records)
    return [{"start_time": st, "ttft": t, "itl": i, "latency": t + sum(i) if i else t, "prompt_len": p,
             "output_tokens": o}
            for st, t, i, p, o in zip(a["start_times"], a["ttfts"], a["itls"], a["input_lens"], a["output_lens"])]


# ------------------------------------------------------------------ ShareGPT file

def _sharegpt_file(path: Path) -> Path:
    """A small ShareGPT-format file whose lengths straddle every bound of vLLM's filter."""
    rng = np.random.default_rng(5)
    words = ["alpha", "network", "the", "tokenizer", "ß", "東京", "1234", "request", "latency", ",", "model",
             "throughput", "!", "queue", "zebra", "GPU", "speculative", "ok"]

    def text(nw):
        return " ".join(rng.choice(words, nw))

    sizes = [(1, 30), (2, 30), (3, 30), (30, 1), (30, 2), (30, 3), (700, 50), (1500, 20), (900, 1300),
             (600, 1400), (10, 2000)]
    sizes += [(int(rng.integers(1, 200)), int(rng.integers(1, 400))) for _ in range(40)]
    data = []
    for i, (p, c) in enumerate(sizes):
        conv = [{"from": "human", "value": text(p)}, {"from": "gpt", "value": text(c)}]
        if i % 9 == 4:
            conv.append({"from": "human", "value": "and then?"})
        data.append({"id": f"c{i}", "conversations": conv})
        if i % 8 == 3:
            data.append({"id": f"one{i}", "conversations": [{"from": "human", "value": text(20)}]})
        if i % 13 == 6:
            data.append({"id": f"none{i}"})
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------ the oracle

_MISSING = f"vLLM venv not found under {vllm_home()}: conformance with vLLM's code not checked (scripts/setup_vllm_cpu.sh)"
_REQUIRED = os.environ.get("CAPSIM_REQUIRE_VLLM") == "1"
if not vllm_available() and not _REQUIRED:
    pytest.skip(_MISSING, allow_module_level=True)  # one line for the whole file


def _require_vllm():
    if not vllm_available():
        pytest.fail(_MISSING + " [CAPSIM_REQUIRE_VLLM=1]", pytrace=False)


@pytest.fixture(scope="module")
def sharegpt_path(tmp_path_factory):
    return _sharegpt_file(tmp_path_factory.mktemp("sharegpt") / "sharegpt.json")


# Tokenizer folders in the layouts transformers reads special tokens from: (model, tokenizer_config.json,
# special_tokens_map.json or None). Their vocabulary: w0..w49, then the added tokens <s> </s> <pad> <x1>
# <x2> (special) and `plain`.
_AT = {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
       "__type": "AddedToken"}
VOCAB_FOLDERS = {
    "named": ("wordlevel", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, None),
    "added-token-dicts": ("wordlevel", {"bos_token": _AT, "eos_token": dict(_AT, content="</s>")}, None),
    "additional": ("wordlevel", {"eos_token": "</s>", "additional_special_tokens": ["<x1>", "<x2>"]}, None),
    "extra-list": ("wordlevel", {"unk_token": "w0", "extra_special_tokens": ["<x2>"]}, None),
    "extra-dict": ("wordlevel", {"bos_token": "<s>", "extra_special_tokens": {"image_token": "<x1>"}}, None),
    "map-only": ("wordlevel", {}, {"bos_token": "<s>", "additional_special_tokens": ["<x1>"]}),
    "map-over-config": ("wordlevel", {"eos_token": "</s>"}, {"eos_token": "<pad>", "pad_token": "<x2>"}),
    "additional-in-both": ("wordlevel", {"additional_special_tokens": ["<x1>"]},
                           {"additional_special_tokens": ["<x2>"]}),
    "additional-in-map": ("wordlevel", {"eos_token": "</s>"}, {"additional_special_tokens": ["<x2>", "<x1>"]}),
    "extra-and-additional": ("wordlevel", {"extra_special_tokens": ["<x2>"], "additional_special_tokens": ["<x1>"]},
                             None),
    "extra-lists-joined": ("wordlevel", {"extra_special_tokens": ["<x1>"]}, {"extra_special_tokens": ["<x2>", "<x1>"]}),
    "decoder-without-map": ("wordlevel", {"eos_token": "</s>", "added_tokens_decoder": {
        "51": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
               "special": True}}}, {"eos_token": "<pad>", "bos_token": "<s>"}),
    "repeated": ("wordlevel", {"bos_token": "<s>", "eos_token": "<s>", "additional_special_tokens": ["<s>", "<x1>"]},
                 None),
    "unigram": ("unigram", {"bos_token": "<s>", "eos_token": "</s>"}, None),
}


def _vocab_folder(root: Path, name: str) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    kind, config, smap = VOCAB_FOLDERS[name]
    words = [f"w{i}" for i in range(50)]
    if kind == "unigram":
        tok = Tokenizer(models.Unigram([(w, -1.0 - i / 100) for i, w in enumerate(words)], unk_id=0))
    else:
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>", "<pad>", "<x1>", "<x2>"])
    tok.add_tokens(["plain"])
    d = root / name
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config}))
    if smap is not None:
        (d / "special_tokens_map.json").write_text(json.dumps(smap))
    return d


@pytest.fixture(scope="module")
def vocab_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return {name: _vocab_folder(root, name) for name in VOCAB_FOLDERS}


@pytest.fixture(scope="module")
def oracle(sharegpt_path, vocab_folders):
    """Every job in one run of vLLM's venv (starting it costs ~10 s): job id -> vLLM's answer."""
    _require_vllm()
    jobs = {}
    for case in ARRIVALS:
        rate, b, seed, n = case
        jobs[("arrival", case)] = {"kind": "pipeline", "tokenizer": TOK,
                                   "argv": _random_argv(16, 4, 0.0, 0, seed, n, rate, b)}
    for case in RAMPS:
        strategy, start, end, b, seed, n = case
        jobs[("ramp", case)] = {"kind": "pipeline", "tokenizer": TOK,
                                "argv": _random_argv(16, 4, 0.0, 0, seed, n, burst=b)
                                + ["--ramp-up-strategy", strategy, "--ramp-up-start-rps", str(start),
                                   "--ramp-up-end-rps", str(end)]}
    for case in RANDOM:
        jobs[("random", case)] = {"kind": "pipeline", "tokenizer": TOK, "argv": _random_argv(*case), "prompts": True}
    for case in PREFIX_REPETITION:
        jobs[("prefix_repetition", case)] = {"kind": "pipeline", "tokenizer": TOK, "prompts": True,
                                             "argv": _prefix_repetition_argv(case)}
    for case in EDGES:
        inp, rr, prefix = case
        jobs[("edge", case)] = {"kind": "pipeline", "tokenizer": TOK, "may_fail": True,
                                "argv": _random_argv(inp, 8, rr, prefix, 0, 20)}
    for case in SHAREGPT:
        seed, n, out_len, unshuffled, no_oversample = case
        argv = ["--model", "gemma3-dummy", "--tokenizer", TOK, "--dataset-name", "sharegpt",
                "--dataset-path", str(sharegpt_path), "--num-prompts", str(n), "--seed", str(seed)]
        if out_len is not None:
            argv += ["--sharegpt-output-len", str(out_len)]
        if unshuffled:
            argv += ["--disable-shuffle"]
        if no_oversample:
            argv += ["--no-oversample"]
        jobs[("sharegpt", case)] = {"kind": "pipeline", "tokenizer": TOK, "argv": argv, "prompts": True}
    for name, (reqs, run) in METRIC_RUNS.items():
        jobs[("metrics", name)] = {"kind": "metrics", "outputs": _vllm_outputs(reqs), "dur_s": run.duration,
                                   "percentiles": PERCENTILES, "tokenizer": TOK}
    for name, th in TIMELINES:
        jobs[("timeline", name, th)] = {"kind": "timeline", "results": _timeline_input(METRIC_RUNS[name][1]),
                                        "thresholds": list(th)}
    jobs[("spec_metrics",)] = {"kind": "spec_metrics", "texts": SPEC_METRICS}
    jobs[("serve_flags",)] = {"kind": "serve_flags"}
    jobs[("defaults",)] = {"kind": "defaults", "argv": ["--model", "gemma3-dummy"],
                           "keys": ["dataset_name", "random_input_len", "random_output_len", "random_range_ratio",
                                    "random_prefix_len", "num_prompts", "request_rate", "burstiness", "seed",
                                    "max_concurrency", "num_warmups", "ready_check_timeout_sec",
                                    *(f"prefix_repetition_{k}" for k in PREFIX_REPETITION_KEYS)]}
    for case in ENGINE_FLAGS:
        jobs[("engine", case)] = {"kind": "engine_flags", "argv": list(case), "keys": ENGINE_KEYS}
    for mml, p, m in CONTEXT:
        jobs[("context", mml, p, m)] = {"kind": "context_limit", "max_model_len": mml, "prompt": p, "max_tokens": m}
    for case in KV_CAPACITY:
        groups, blocks, mml, budget, asyn = case
        jobs[("kv", case)] = {"kind": "kv_capacity", "model": TOK, "groups": [list(g) for g in groups],
                              "num_blocks": blocks, "max_model_len": mml, "max_num_batched_tokens": budget,
                              "async_scheduling": asyn}
    for case in KV_GROUP_LAYOUTS:
        full, sliding, window = case
        jobs[("kv_groups", case)] = {"kind": "kv_groups", "model": TOK, "layer_types": _layer_types(full, sliding),
                                     "window": window, "block_size": 16}
    for case in KV_HOLDS:
        bs, window, chunks = case
        jobs[("holds", case)] = {"kind": "kv_holds", "block_size": bs, "window": window, "chunks": list(chunks)}
    for case in KV_SHARED:
        groups, prefix, prompts = case
        for warm in (True, False):
            jobs[("kv_shared", case, warm)] = {"kind": "kv_shared", "groups": [list(g) for g in groups],
                                               "num_blocks": 20_000, "prefix": prefix, "prompts": list(prompts),
                                               "warm": warm}
    for case in KV_EVICT:
        for twice in (False, True):
            jobs[("kv_evict", case, twice)] = _evict_job(case, twice)
    for name, folder in vocab_folders.items():
        jobs[("vocab", name)] = {"kind": "vocab", "tokenizer": str(folder)}
    jobs[("vocab", "gemma3")] = {"kind": "vocab", "tokenizer": TOK}
    for case, reads in STREAMS.items():
        jobs[("stream", case)] = {"kind": "stream", "endpoint": case[0],
                                  "reads": [r.decode("latin-1") for r in reads]}
    stats = TwinStats()
    jobs[("histograms",)] = {"kind": "histograms", "observe": {
        family: _histogram_values(getattr(stats, attr).bounds) for attr, family in TWIN_HISTOGRAMS.items()}}
    for case in BATCH_DEVICES:
        jobs[("batch_defaults", case)] = {"kind": "batch_defaults", "memory": case[0], "name": case[1], "cpu": case[2]}
    keys = list(jobs)
    answers = oracle_answers("vllm_oracle.py", [jobs[k] for k in keys], env={"HF_HUB_OFFLINE": "1"})
    return dict(zip(keys, answers))


# ------------------------------------------------------------------ server flags in a run's meta.json

ENGINE_KEYS = ["max_model_len", "max_num_batched_tokens", "max_num_seqs", "gpu_memory_utilization"]
# the forms vLLM's token-count flags take (decimal and binary suffixes, auto), and ones its parser refuses
ENGINE_FLAGS = [("--max-num-batched-tokens", "8192", "--max-num-seqs", "128"),
                ("--max-num-batched-tokens", "8k", "--max-model-len", "25.6k"),
                ("--max-num-batched-tokens", "16K", "--max-model-len", "128K", "--gpu-memory-utilization", "0.85"),
                ("--max_num_batched_tokens=2048", "--max-model-len=auto"),
                ("--max-model-len", "-1", "--max-num-seqs", "1"),
                ("--max-num-batched-tokens", "1.5m"),
                ("--max-num-batched-tokens", "2.5K"),
                ("--max-num-seqs", "1k"),
                ("--gpu-memory-utilization", "most")]


# ------------------------------------------------------------------ the KV cache's size in tokens

# (groups as (block_size, count, window), num_blocks, max_model_len, max_num_batched_tokens, async scheduling):
# Gemma-4-26B-A4B's layout (1 full group of 32-token blocks, 5 sliding of 16 at a 1024 window), Gemma 3's on
# vLLM's CPU build, a dense model, and windows the in-flight tokens reach past max_model_len
KV_CAPACITY = [(((32, 1, None), (16, 5, 1024)), 50610, 131072, 2048, False),
               (((32, 1, None), (16, 5, 1024)), 50610, 131072, 2048, True),
               (((32, 1, None), (16, 5, 1024)), 38000, 262144, 8192, True),
               (((128, 1, None), (128, 5, 512)), 2730, 4096, 2048, False),
               (((128, 1, None), (128, 5, 512)), 136, 4096, 256, True),
               (((16, 1, None),), 9000, 32768, 8192, True),
               (((16, 2, None), (16, 3, 4096)), 5000, 8192, 4096, True),
               (((16, 1, None), (16, 1, 128)), 777, 1000, 600, False)]


@pytest.mark.parametrize("case", KV_CAPACITY, ids=lambda c: "%d-%d-%d-%s" % (c[1], c[2], c[3], c[4]))
def test_kv_cache_size_tokens_is_vllms_figure(oracle, case):
    """The KV cache's size in tokens, as vLLM's startup log and cache_config_info report it
    (get_kv_cache_capacity): sliding-window groups sized for every batch in flight."""
    groups, blocks, mml, budget, asyn = case
    lim = EngineLimits(num_blocks=blocks, kv_groups=tuple(KVGroup(*g) for g in groups), max_model_len=mml,
                       max_num_batched_tokens=budget, async_scheduling=asyn)
    assert kv_cache_size_tokens(lim) == oracle[("kv", case)]["kv_cache_size_tokens"]


def test_the_kv_cases_have_teeth(oracle):
    """Async scheduling moves vLLM's figure where a window is in the layout (the in-flight tokens count twice)."""
    a, b = (oracle[("kv", c)]["kv_cache_size_tokens"] for c in KV_CAPACITY[:2])
    assert a > b


# (full layers, sliding layers, window): Gemma 3 270M, Gemma-4-26B-A4B, gpt-oss (12 + 12), and counts on each
# side of vLLM's 1.5x rule (one group a kind where the counts are within 1.5x of each other), one kind alone
KV_GROUP_LAYOUTS = [(3, 15, 512), (5, 25, 1024), (12, 12, 128), (12, 13, 128), (10, 14, 256), (4, 6, 256),
                    (20, 30, 4096), (7, 20, 1024), (24, 0, 1024), (0, 10, 1024)]


def _layer_types(full: int, sliding: int) -> list[str]:
    """A config's layer_types: `full` full-attention layers spread evenly among the sliding ones."""
    n = full + sliding
    marks = {round((i + 1) * n / full) - 1 for i in range(full)}
    return ["full_attention" if i in marks else "sliding_attention" for i in range(n)]


@pytest.mark.parametrize("case", KV_GROUP_LAYOUTS, ids=lambda c: "%dfull-%dsliding" % c[:2])
def test_kv_groups_from_a_models_config_are_vllms(oracle, case):
    """The KV-cache groups calibrate --live --hf-config reads off a config, and the offline priors' layout
    (hybrid_layout, layers of equal bytes): the groups vLLM's get_kv_cache_groups makes of those layers
    (order aside: the simulator's groups share one pool)."""
    full, sliding, window = case
    theirs = sorted((b, c, w or 0) for b, c, w in oracle[("kv_groups", case)]["groups"])
    cfg = {"text_config": {"layer_types": _layer_types(full, sliding), "sliding_window": window}}
    assert sorted((g.block_size, g.count, g.window or 0) for g in kv_groups_from_hf_config(cfg, 16)) == theirs
    _, groups = hybrid_layout(1e9, full, 1.0, sliding, 1.0, window)
    assert sorted((g.block_size, g.count, g.window or 0) for g in groups) == theirs


def test_the_kv_group_layouts_have_teeth(oracle):
    """The cases have one group a kind, several of one kind, and vLLM padding the smaller kind up."""
    counts = {case: [c for _, c, _ in oracle[("kv_groups", case)]["groups"]] for case in KV_GROUP_LAYOUTS}
    assert counts[(12, 13, 128)] == [1, 1] and sorted(counts[(4, 6, 256)]) == [1, 2]
    assert sorted(counts[(3, 15, 512)]) == [1, 5] and counts[(24, 0, 1024)] == [1]


GIB = 2**30
# (device memory in bytes or None where NVML reads none, device name, the CPU build)
BATCH_DEVICES = [(None, "NVIDIA GB10", False), (24 * GIB, "NVIDIA L4", False),
                 (80 * GIB, "NVIDIA H100 80GB HBM3", False), (80 * GIB, "NVIDIA A100-SXM4-80GB", False), (141 * GIB, "NVIDIA H200", False),
                 (180 * GIB, "NVIDIA B200", False), (70 * GIB, "x", False), (70 * GIB - 1, "x", False),
                 (160 * GIB, "NVIDIA A100 lookalike", False), (160 * GIB - 1, "x", False), (None, "cpu", True)]


@pytest.mark.parametrize("case", BATCH_DEVICES, ids=lambda c: f"{c[1]}-{c[0]}")
def test_batch_defaults_are_vllm_serves(oracle, case):
    """max_num_batched_tokens and max_num_seqs where no flag sets them, as `vllm serve` picks them by the
    device (EngineArgs.get_batch_defaults); calibrate --live assumes a GPU's to be the GB10's, the offline
    priors likewise."""
    theirs = oracle[("batch_defaults", case)]
    assert vllm_batch_defaults(*case) == (theirs["max_num_batched_tokens"], theirs["max_num_seqs"])
    if case[1] in ("NVIDIA GB10", "cpu"):
        ours = VLLM_DEFAULTS["cpu" if case[2] else "gpu"]
        assert (ours["max_num_batched_tokens"], ours["max_num_seqs"]) == vllm_batch_defaults(*case)
    if case[1] == "NVIDIA GB10":
        prof, _ = prior_profile({"model": "google/gemma-4-26B-A4B-it"})
        assert (prof.engine.max_num_batched_tokens, prof.engine.max_num_seqs) == vllm_batch_defaults(*case)


# (block_size, window or None, the tokens of each step): prompts in chunks, then decodes, past the window
KV_HOLDS = [(16, 1024, (512,) * 4 + (1,) * 100),
            (16, 1024, (2048, 2048, 100) + (1,) * 40),
            (16, 128, (100, 7, 300, 1, 1, 64) + (1,) * 40),
            (128, 512, (2048,) + (1,) * 300),
            (4, 16, (8,) * 12 + (1,) * 30),
            (32, None, (512,) * 4 + (1,) * 70),
            (16, 4096, (8192,) + (1,) * 20)]


@pytest.mark.parametrize("case", KV_HOLDS, ids=lambda c: "b%d-w%s-%d" % (c[0], c[1], sum(c[2])))
def test_kv_blocks_a_request_holds_are_vllms_or_one_more(oracle, case):
    """After each step (sync scheduling) a full-attention group holds exactly vLLM's blocks; a sliding-window
    group capsim's `ceil((window - 1 + chunk) / block) + 1` cap, which is vLLM's count or one more (vLLM's
    depends on where the window starts in a block)."""
    extra = _extra_holds(oracle, case)
    assert set(extra) <= ({0} if case[1] is None else {0, 1}), extra


def test_the_kv_holds_have_teeth(oracle):
    """The sliding cases reach the window (vLLM frees blocks) and show both the same count and one more."""
    extra = []
    for case in KV_HOLDS:
        held = oracle[("holds", case)]["held"]
        if case[1] is not None:
            assert max(held) > held[-1]  # blocks behind the window were freed
            extra += _extra_holds(oracle, case)
    assert 0 in extra and 1 in extra


def _extra_holds(oracle, case) -> list[int]:
    """capsim's blocks after each step of the case less vLLM's."""
    bs, window, chunks = case
    kv = KVCache(EngineLimits(kv_groups=(KVGroup(bs, 1, window),), max_model_len=1 << 20))
    return [kv.blocks(int(t), n) - h for t, n, h in zip(np.cumsum(chunks), chunks, oracle[("holds", case)]["held"])]


# (groups, the prefix's tokens, the prompts that start with it): one full-attention group, two, and two hybrids of
# full and sliding-window groups (the sliding windows longer and shorter than the prefix); one prompt one token past
KV_SHARED = [(((16, 1, None),), 1000, (1500, 1300, 2000, 1001)),
             (((16, 2, None),), 4096, (5000, 4097, 4500)),
             (((16, 2, None), (16, 3, 4096)), 2048, (2600, 2600, 3000)),
             (((32, 1, None), (16, 5, 1024)), 2048, (2500, 2500, 2500, 2049))]


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
@pytest.mark.parametrize("case", KV_SHARED, ids=lambda c: "g%d-p%d-n%d" % (len(c[0]), c[1], len(c[2])))
def test_requests_sharing_a_cached_prefix_hold_its_blocks_once_as_vllm_does(oracle, case, warm):
    """After each request sharing a prefix is admitted, its cache hit is vLLM's (the whole prefix where a
    probe left it cached; where none did, none for the first, which computes it, and the prefix for every
    later one) and the blocks in use are vLLM's (its block pool counts a block several requests hold once)
    where every group is full attention. A sliding-window group's blocks of the prefix are counted as each
    request's own (capsim.kvcache.shared_blocks): over vLLM's by at most the prefix's blocks inside the
    window for every further request, plus the one block more a sliding group may hold."""
    groups, prefix, prompts = case
    theirs = oracle[("kv_shared", case, warm)]
    kv = KVCache(EngineLimits(kv_groups=tuple(KVGroup(*g) for g in groups), max_model_len=1 << 20))
    assert theirs["hits"] == [0 if i == 0 and not warm else kv.cache_hit(p, prefix) for i, p in enumerate(prompts)]
    sliding = [(bs, count, w) for bs, count, w in groups if w is not None]
    for k in range(1, len(prompts) + 1):
        over = blocks_in_use_after_admitting(groups, prompts[:k], prefix, warm=warm) - theirs["used"][k - 1]
        if not sliding:
            assert over == 0, k
        else:
            hit = max(theirs["hits"])
            bound = sum(count * ((k - 1) * (-(-min(w - 1, hit) // bs) + 1) + k) for bs, count, w in sliding)
            assert 0 <= over <= bound, (k, over, bound)


def test_the_shared_prefix_cases_have_teeth(oracle):
    """Without the prefix held in common each full-attention case would hold more than vLLM, and the
    sliding-window cases do hold more than vLLM (the overcount the bound allows is reached)."""
    for case in KV_SHARED:
        groups, prefix, prompts = case
        theirs = oracle[("kv_shared", case, True)]["used"][-1]
        assert blocks_in_use_after_admitting(groups, prompts, prefix, prefix_group="") > theirs
        if any(w for _, _, w in groups):
            assert blocks_in_use_after_admitting(groups, prompts, prefix) > theirs


# (KV-cache groups, free blocks beside the requests): one group, two alike (each group's blocks not full go to the
# free queue's head), two block sizes, and a sliding group after or before the full one
KV_EVICT = [(((16, 1, None),), 3), (((16, 2, None),), 11), (((32, 1, None), (16, 1, None)), 11),
            (((16, 1, None), (16, 1, 64)), 11), (((16, 1, 64), (16, 1, None)), 11)]
# a 200-token request preempted beside a 100-token one that then grows this much before it is back
EVICT_PAIR = {"v": 200, "o": 100}
EVICT_GROWS = (0, 32, 48, 64, 80, 120, 160, 200, 240, 268)
# four requests; two preempted and one finished; the third grows g1, one preempted request is back, the third
# grows g2, the other's hit: what the first back takes out of the queue moves the blocks behind it up, and the
# finished one's go behind (and its block not full to the head)
EVICT_TWICE = ((0, 0), (16, 16), (40, 40), (64, 32), (32, 96), (80, 48), (100, 60), (120, 16), (150, 0))
EVICT_SIZES = {"a": 200, "b": 150, "c": 100, "d": 120}


def _evict_blocks(groups, slack: int, sizes) -> int:
    return slack + sum(count * sum(-(-n // bs) for n in sizes) for bs, count, _ in groups)


def _evict_runs(twice: bool) -> list[list]:
    if not twice:
        return [[*(("admit", k, n) for k, n in EVICT_PAIR.items()), ("preempt", "v"),
                 *([("grow", "o", g)] if g else []), ("hit", "v")] for g in EVICT_GROWS]
    return [[*(("admit", k, n) for k, n in EVICT_SIZES.items()), ("preempt", "a"), ("preempt", "b"),
             ("finish", "d"), *([("grow", "c", g1)] if g1 else []), ("admit", first, EVICT_SIZES[first]),
             *([("grow", "c", g2)] if g2 else []), ("hit", second)]
            for first, second in (("a", "b"), ("b", "a")) for g1, g2 in EVICT_TWICE]


def _evict_job(case, twice: bool) -> dict:
    groups, slack = case
    blocks = _evict_blocks(groups, slack, (EVICT_SIZES if twice else EVICT_PAIR).values())
    return {"kind": "kv_evict", "groups": [list(g) for g in groups], "num_blocks": blocks + 1,  # and the null block
            "runs": [[list(step) for step in run] for run in _evict_runs(twice)], "blocks": blocks}


@pytest.mark.parametrize("case", KV_EVICT, ids=lambda c: "-".join(f"{bs}x{n}{'w' if w else ''}" for bs, n, w in c[0]))
def test_a_preempted_requests_blocks_stay_cached_until_evicted_as_in_vllm(oracle, case):
    """With the prefix cache on, a preempted request finds again what of its own blocks vLLM's free queue still
    holds: all of them while the blocks taken since were fewer than those ahead of them (its blocks not full
    among those, at the head), then less from its last block back as another request grows, to none. Where
    every group is full attention the hit is vLLM's at every step, with two requests preempted and one finished
    between too. With a sliding group capsim counts no hit once any of its cached blocks is evicted: in vLLM's
    real runs the window's earlier blocks were freed before them and are gone first; here, with prompts
    allocated whole, vLLM still holds them and finds more."""
    groups, slack = case
    full = not any(w for _, _, w in groups)
    whole = 192 if full or groups[0][0] == 16 else 0
    for twice in (False, True) if full else (False,):
        job = _evict_job(case, twice)
        theirs = oracle[("kv_evict", case, twice)]["hits"]
        ours = [hits_around_preemptions(groups, job["blocks"], run) for run in _evict_runs(twice)]
        if full:
            assert ours == theirs, twice
        else:  # all or nothing: vLLM's where it keeps all or nothing
            for h, t in zip(ours, theirs):
                assert h[-1] == t[-1] if t[-1] in (0, whole) else h[-1] in (0, whole), (ours, theirs)
        if not twice:
            last = [t[-1] for t in theirs]
            assert last[0] == whole and last[-1] < whole
            assert not full or len(set(last) - {0, whole}) >= 2  # evicted in part, at more than one step
        elif all(bs == 16 for bs, _, _ in groups):  # the first back has less than all in some runs, and the
            # other's hit, moved by what the first took back and the finished one gave, takes several values
            assert min(t[-2] for t in theirs[:len(EVICT_TWICE)]) < 192 and len({t[-1] for t in theirs}) >= 3, theirs


# ------------------------------------------------------------------ prompt + max_tokens past max_model_len

# (max_model_len, prompt tokens, max_tokens): each side of every boundary of vLLM 0.32's rule (a prompt that
# fills the context, max_tokens of the whole context) and of the older one (prompt + max_tokens = max_model_len)
CONTEXT = [(100, 60, 40), (100, 60, 41), (100, 99, 100), (100, 99, 1), (100, 100, 1), (100, 101, 5),
           (100, 1, 100), (100, 1, 101), (100, 10, 0), (4096, 4000, 500), (4096, 3000, 2000), (4096, 96, 4000)]


@pytest.mark.parametrize("case", CONTEXT, ids=lambda c: "mml%d-p%d-m%d" % c)
def test_max_tokens_past_the_context_as_vllm_serves_it(oracle, case):
    """The simulated server (clamp_max_tokens, as vLLM >= 0.32) refuses what vLLM's chat endpoint refuses
    and runs the rest with the max_tokens it runs them with, to the token (ignore_eos). vLLM 0.31 and
    before refused prompt + max_tokens past max_model_len (renderers/params.py: max_input_tokens was
    max_total_tokens - max_output_tokens), which is clamp_max_tokens False (tests/test_engine.py)."""
    mml, p, m = case
    v = oracle[("context", mml, p, m)]
    prof = tiny_profile(max_model_len=mml, budget=4096)
    prof.engine.clamp_max_tokens = True
    r = simulate_open(prof, [RequestSpec(prompt_tokens=p, max_tokens=m, output_tokens=m)], OpenLoop())
    rec = r.records[0]
    if "error" in v:
        assert rec.error and rec.error.startswith("HTTP 400"), (v, rec.error)
    else:
        assert rec.ok and rec.output_tokens == v["max_tokens"], (v, rec.error, rec.output_tokens)


def test_the_context_cases_have_teeth(oracle):
    """Some cases vLLM refuses, some it clamps, some it serves as asked."""
    answers = [oracle[("context",) + c] for c in CONTEXT]
    assert any("error" in a for a in answers)
    assert any(a.get("max_tokens") not in (None, c[2]) for a, c in zip(answers, CONTEXT))
    assert any(a.get("max_tokens") == c[2] for a, c in zip(answers, CONTEXT))


@pytest.mark.parametrize("case", ENGINE_FLAGS, ids=lambda c: " ".join(c))
def test_server_flags_read_as_vllm_serve_reads_them(oracle, case, tmp_path):
    """A run's meta.json command line gives the scheduler limits `vllm serve` took from it; a value its
    parser refuses is refused with the flag named (a server that never started measured nothing)."""
    v = oracle[("engine", case)]
    (tmp_path / "meta.json").write_text(json.dumps({"model": "acme/Foo-8B",
                                                    "server_config": {"extra_vllm_args": " ".join(case)}}))
    if "error" in v:
        with pytest.raises(ImporterError, match="meta.json: .* is '.*': vLLM takes"):
            load_meta(tmp_path)
        return
    got = load_meta(tmp_path)
    for k in ENGINE_KEYS:
        named = any(a.lstrip("-").replace("-", "_").split("=")[0] == k for a in case)
        if not named:
            continue  # vLLM's own default: capsim leaves it to the profile (None)
        want = None if v[k] == -1 else v[k]  # -1: "auto", the longest context the memory holds
        assert got[k] == want, (k, got[k], v[k])


def test_the_server_flag_cases_have_teeth(oracle):
    assert {"error" in oracle[("engine", c)] for c in ENGINE_FLAGS} == {True, False}


# ------------------------------------------------------------------ a. arrival offsets

@pytest.mark.parametrize("case", ARRIVALS, ids=[f"rate{r}-b{b}-seed{s}-n{n}" for r, b, s, n in ARRIVALS])
def test_arrival_offsets_equal_vllm_get_request(oracle, case):
    rate, b, seed, n = case
    v = oracle[("arrival", case)]
    assert (v["request_rate"], v["burstiness"], v["seed"]) == (rate, b, seed)
    ours = OpenLoop(rate=rate, burstiness=b, seed=seed).arrival_times(n)
    theirs = np.array(v["offsets"])
    assert len(theirs) == n
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    if math.isfinite(rate):
        assert theirs[-1] == pytest.approx(n / rate, rel=1e-12)  # the case really is a rescaled schedule
        assert len(set(np.diff(theirs).round(12))) > (1 if math.isfinite(b) else 0)


@pytest.mark.parametrize("case", RAMPS, ids=[f"{k}{a}-{b}-b{u}-seed{s}-n{n}" for k, a, b, u, s, n in RAMPS])
def test_ramp_up_offsets_and_rates_equal_vllm_get_request(oracle, case):
    strategy, start, end, b, seed, n = case
    v = oracle[("ramp", case)]
    ramp = RampUp(strategy, start, end)
    np.testing.assert_allclose(OpenLoop(burstiness=b, seed=seed, ramp_up=ramp).arrival_times(n),
                               np.array(v["offsets"]), rtol=1e-12, atol=0)
    assert ramp.rates(n) == v["rates"]  # the very floats vLLM computes
    assert v["rates"][0] == start and (n == 1 or v["rates"][-1] == pytest.approx(end, rel=1e-12))
    if n > 2 and math.isfinite(b):  # a ramp is not rescaled to n / rate: the schedule is its own
        gaps = np.diff(v["offsets"])
        assert gaps[: n // 3].mean() > gaps[-(n // 3):].mean() or start == end


# ------------------------------------------------------------------ request bodies

# vllm bench serve command lines (less --base-url): a random load on each endpoint with sampling flags and
# --extra-body, and a ShareGPT one (its texts are the dataset's, so they must match too); headers and
# request ids given and left to their defaults; --no-stream (vLLM's HF datasets' loading, not the requests')
# and --use-beam-search (which vLLM 0.32 parses and reads nowhere) change no body
BODY_LOADS = {
    "completions-random": ["--backend", "openai", "--dataset-name", "random", "--random-input-len", "24",
                           "--random-output-len", "3", "--temperature", "0.5", "--top-p", "0.9",
                           "--repetition-penalty", "1.1", "--extra-body", '{"seed": 7}', "--logprobs", "2",
                           "--header", "x-office=ny", "x-floor = 3 ", "--request-id-prefix", "r-",
                           "--use-beam-search"],
    "chat-random": ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "random",
                    "--random-input-len", "24", "--random-output-len", "3", "--top-k", "20", "--logprobs", "3",
                    "--extra-body", '{"chat_template_kwargs": {"enable_thinking": false}}', "--no-stream"],
    "chat-sharegpt": ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "sharegpt",
                      "--sharegpt-output-len", "3", "--temperature", "0", "--request-id-prefix", "s-"],
}
# the headers a test compares (the rest are each HTTP client's own: User-Agent, Accept, ...)
SENT_HEADERS = ("x-office", "x-floor", "authorization", "content-type")


def _texts_out(body: dict, keep: bool) -> str:
    """A body as sorted JSON, its prompt text blanked unless `keep` (random texts are built with the
    fake server's own tokenizer by capsim, with Gemma 3's by vllm bench serve; proven equal above)."""
    b = json.loads(json.dumps(body))
    if not keep:
        if "prompt" in b:
            b["prompt"] = "TEXT"
        for m in b.get("messages", []):
            for part in m["content"]:
                part["text"] = "TEXT"
    return json.dumps(b, sort_keys=True)


def _run_both(fake, tmp_path, flags: list[str], metrics: bool = False, **fake_kw):
    """`flags` run by vLLM's own `vllm bench serve` and by capsim measure, each against a fake server of its own
    that keeps every body it is sent (`fake_kw`: more of its FakeConfig; `metrics`: capsim reads /metrics, as
    vLLM always does): (their server, ours, their result JSON, ours)."""
    theirs_srv, ours_srv = (fake(model="gemma3-dummy", itl=0.001, **fake_kw) for _ in range(2))
    vllm_bench_serve([*flags, "--base-url", theirs_srv.url], tmp_path / "vllm.json")
    res = CliRunner().invoke(measure_cli, ["open", *flags, "--base-url", ours_srv.url, "--no-progress",
                                           *([] if metrics else ["--no-metrics"]), "-o", str(tmp_path / "c"),
                                           "--save-result", str(tmp_path / "ours.json")])
    assert res.exit_code == 0, res.output
    return theirs_srv, ours_srv, *(json.loads((tmp_path / f).read_text()) for f in ("vllm.json", "ours.json"))


def test_spec_decode_counters_read_as_vllm_bench_serve_reads_them(oracle):
    """capsim reads a /metrics text's speculative decoding counters as vLLM's fetch_spec_decode_metrics does, on
    texts with every turn its reader takes (tests/test_prom.py holds the stats of two readings to its formulas).
    Engine 0's positions are lost to vLLM's reader: a space before their label splits the line wrongly."""
    theirs = oracle[("spec_metrics",)]["counters"]
    ours = [prom.spec_decode_counters(t) for t in SPEC_METRICS]
    assert ours == theirs
    assert theirs[0]["num_drafts"] == 42 and theirs[1] is None and theirs[2] is not None  # the cases bite
    assert theirs[0]["accepted_per_pos"] == {"0": 5}


def test_speculative_decoding_figures_are_vllm_bench_serves(fake, tmp_path):
    """A server that speculates (each chunk a step of 2 drafts, its /metrics counting them as vLLM's do, with
    the _created samples beside the counters): vLLM's own vllm bench serve and capsim measure read the same
    spec_decode_* result keys off it across the run, and capsim prints vLLM's block."""
    _require_vllm()
    flags = ["--model", "gemma3-dummy", "--backend", "openai", "--dataset-name", "random", "--random-input-len", "24",
             "--random-output-len", "8", "--num-prompts", "4", "--seed", "3", "--max-concurrency", "2"]
    _, _, v, c = _run_both(fake, tmp_path, flags, metrics=True, tokens_per_chunk=3)
    keys = ["spec_decode_acceptance_rate", "spec_decode_acceptance_length", "spec_decode_num_drafts",
            "spec_decode_draft_tokens", "spec_decode_accepted_tokens", "spec_decode_per_position_acceptance_rates"]
    assert {k: v[k] for k in keys} == {k: c[k] for k in keys}
    # 8 tokens a request in chunks of 3, 3, 2: 3 steps of 2 drafts, 5 accepted, position 0 every step
    assert (c["spec_decode_num_drafts"], c["spec_decode_draft_tokens"], c["spec_decode_accepted_tokens"]) == \
        (12, 24, 20)
    assert c["spec_decode_per_position_acceptance_rates"] == [1.0, pytest.approx(2 / 3)]
    printed = CliRunner().invoke(main, ["report", str(tmp_path / "c")]).output
    assert "-------------Speculative Decoding---------------" in printed and "Acceptance length:" in printed
    assert f"{'  Position 1:':<40} {66.67:<10.2f}" in printed


@pytest.mark.parametrize("load", list(BODY_LOADS))
def test_request_bodies_are_vllm_bench_serves(load, fake, tmp_path, sharegpt_path):
    """The same command line run by vLLM's own `vllm bench serve` and by capsim measure, each against a
    fake server that keeps every body it is sent: the same bodies (keys, values, content parts) under the
    same request ids (x-request-id), with the same headers."""
    _require_vllm()
    flags = ["--model", "gemma3-dummy", *BODY_LOADS[load], "--num-prompts", "4", "--seed", "3"]
    if "sharegpt" in load:
        flags += ["--dataset-path", str(sharegpt_path)]
    theirs_srv, ours_srv, _, _ = _run_both(fake, tmp_path, flags)
    keep = "sharegpt" in load

    def sent(srv):
        return sorted((h.get("x-request-id"), {k: h[k] for k in SENT_HEADERS if k in h}, _texts_out(b, keep))
                      for b, h in zip(srv.stats.bodies, srv.stats.headers))

    theirs, ours = sent(theirs_srv), sent(ours_srv)
    prefix = BODY_LOADS[load][BODY_LOADS[load].index("--request-id-prefix") + 1] \
        if "--request-id-prefix" in BODY_LOADS[load] else None
    if prefix is None:  # each run's own random prefix: vLLM's form, the same indices
        assert all(re.fullmatch(r"bench-[0-9a-f]{8}-[0-3]", r[0]) for r in theirs + ours), (theirs, ours)
        theirs, ours = ([(r[0].rsplit("-", 1)[1], *r[1:]) for r in x] for x in (theirs, ours))
    else:
        assert [r[0] for r in theirs] == [f"{prefix}{i}" for i in range(4)]
    assert len(theirs) == 4 and ours == theirs
    if "--logprobs" in BODY_LOADS[load]:  # the completions body carries it; vLLM's chat body has no such key
        assert all(('"logprobs": 2' in r[2]) == (load == "completions-random") for r in theirs)
        assert load == "completions-random" or all("logprobs" not in r[2] for r in theirs)
    if "--header" in BODY_LOADS[load]:
        assert theirs[0][1] == {"x-office": "ny", "x-floor": "3", "content-type": "application/json"}


def test_the_first_prompt_goes_before_the_run_as_vllm_bench_serve_sends_it(fake, tmp_path):
    """--ready-check-timeout-sec and --num-warmups run by vLLM's own vllm bench serve and by capsim measure, one
    request at a time: the same bodies in the same order, the first request's prompt sent unnamed once as the
    ready check's test request and once a warmup, then the run's. Each way into the simulation (the command
    line, capsim's run folder, vLLM's command imported) counts those sends before the run, and the default
    (no ready check, no warmups) sends none (the body tests above count 4 of 4)."""
    from calibrate.importers import parse_command
    from calibrate.results import OpenRun
    from calibrate.sources import load_open
    from calibrate.validate import pattern_for
    from capsim.serve_flags import ServeExtras

    def pasted(cmd):  # a vllm bench serve command line, as an imported run's settings
        return OpenRun("cmd", "t", None, "random", params=parse_command("vllm bench serve " + cmd))

    _require_vllm()
    extra = ["--ready-check-timeout-sec", "5", "--num-warmups", "2", "--max-concurrency", "1", "--request-rate", "50"]
    flags = ["--model", "gemma3-dummy", *BODY_LOADS["completions-random"], "--num-prompts", "4", "--seed", "3", *extra]
    theirs_srv, ours_srv, _, _ = _run_both(fake, tmp_path, flags)

    def sent(srv):
        return [(h.get("x-request-id"), _texts_out(b, False)) for b, h in zip(srv.stats.bodies, srv.stats.headers)]

    theirs, ours = sent(theirs_srv), sent(ours_srv)
    assert ours == theirs and [r[0] for r in theirs] == [None] * 3 + [f"r-{i}" for i in range(4)]
    assert theirs_srv.stats.bodies[:3] == [theirs_srv.stats.bodies[3]] * 3  # request 0's prompt, as sent in the run
    assert ours_srv.stats.bodies[:3] == [ours_srv.stats.bodies[3]] * 3
    (ran,) = load_open([str(tmp_path / "c")])
    assert pattern_for(ran).warmups == 3
    assert ServeExtras(num_warmups=2, ready_check_timeout_sec=5).open_loop(50.0, 1.0, 1, 3).warmups == 3
    assert ServeExtras().open_loop(50.0, 1.0, 1, 3).warmups == 0
    assert pattern_for(pasted(" ".join(flags))).warmups == 3
    assert pattern_for(pasted("--model m --num-prompts 4")).warmups == 0


def _short_sharegpt(path, passing: int, failing: int):
    """A ShareGPT file of `passing` conversations that pass vLLM's length filter and `failing` that do not,
    each by a wide margin, so the fake server's word count (capsim's /tokenize here) and Gemma 3's tokenizer
    (vLLM's) keep the same ones: the file's path."""
    words = ["alpha", "network", "tokenizer", "request", "latency", "model", "queue", "zebra"]
    kept = [sharegpt_conversation(f"question {i} " + " ".join(words[(i + k) % 8] for k in range(12)),
                                  " ".join(words[(i * k) % 8] for k in range(10))) for i in range(passing)]
    path.write_text(json.dumps(kept + [sharegpt_conversation("hi", "ok")] * failing))
    return path


def test_no_oversample_sends_what_passes_as_vllm_bench_serve_does(fake, tmp_path):
    """--no-oversample with more --num-prompts than the ShareGPT file has passing conversations: vLLM's own
    vllm bench serve and capsim measure send the same requests, each once, and report num_prompts as asked.
    Each conversation passes or fails vLLM's length filter by a wide margin, so the fake server's word count
    (capsim's /tokenize here) and Gemma 3's tokenizer (vLLM's) keep the same 20."""
    _require_vllm()
    path = _short_sharegpt(tmp_path / "short.json", 20, 10)
    flags = ["--model", "gemma3-dummy", *BODY_LOADS["chat-sharegpt"], "--dataset-path", str(path),
             "--num-prompts", "60", "--seed", "3", "--no-oversample", "--request-rate", "200"]
    theirs_srv, ours_srv, v, c = _run_both(fake, tmp_path, flags)

    def sent(srv):
        return sorted((h.get("x-request-id"), _texts_out(b, True)) for b, h in zip(srv.stats.bodies, srv.stats.headers))

    theirs, ours = sent(theirs_srv), sent(ours_srv)
    assert len(theirs) == len({b for _, b in theirs}) == 20 and ours == theirs
    assert (v["num_prompts"], v["completed"]) == (c["num_prompts"], c["completed"]) == (60, len(theirs))


# (load, how many ShareGPT conversations pass: None the shared file, else a file too short, so it oversamples;
# the LoRA flags)
LORA_LOADS = {
    "random, drawn": ("completions-random", None, ["--lora-modules", "ada", "bob", "cy"]),
    "random, in turn": ("chat-random", None, ["--lora-modules", "ada", "bob", "--lora-assignment", "round-robin"]),
    "sharegpt, drawn": ("chat-sharegpt", None, ["--lora-modules", "ada", "bob", "cy", "--lora-assignment", "random"]),
    "sharegpt oversampled, drawn": ("chat-sharegpt", 9, ["--lora-modules", "ada", "bob", "cy"]),
}


@pytest.mark.parametrize("case", list(LORA_LOADS))
def test_lora_adapters_are_named_as_vllm_bench_serve_names_them(case, fake, tmp_path, sharegpt_path):
    """--lora-modules and --lora-assignment run by vLLM's own vllm bench serve and by capsim measure: each
    measured request names the same adapter as its model (by its x-request-id): in turn, or drawn from the
    global random where the dataset's sampling left it (seeded, the ShareGPT shuffle, its oversampling); the
    warmups name the model."""
    _require_vllm()
    load, passing, lora = LORA_LOADS[case]
    flags = ["--model", "gemma3-dummy", *BODY_LOADS[load], "--num-prompts", "14", "--seed", "5", "--num-warmups",
             "2", "--request-rate", "200", *lora]
    if passing is not None:
        flags += ["--dataset-path", str(_short_sharegpt(tmp_path / "short.json", passing, 5))]
    elif "sharegpt" in load:
        flags += ["--dataset-path", str(sharegpt_path)]
    theirs_srv, ours_srv, _, _ = _run_both(fake, tmp_path, flags)

    def models(srv):
        return sorted((h["x-request-id"].rsplit("-", 1)[1] if "x-request-id" in h else "warmup", b["model"])
                      for b, h in zip(srv.stats.bodies, srv.stats.headers))

    theirs, ours = models(theirs_srv), models(ours_srv)
    assert ours == theirs and len(theirs) == 16
    assert [m for i, m in theirs if i == "warmup"] == ["gemma3-dummy"] * 2
    picked = [m for i, m in sorted(theirs, key=lambda x: int(x[0]) if x[0] != "warmup" else -1) if i != "warmup"]
    if "round-robin" in lora:
        assert picked == ["ada", "bob"] * 7
    else:  # a draw, not the turn: the cases tell a wrong random state apart
        assert set(picked) == {"ada", "bob", "cy"} and picked != (["ada", "bob", "cy"] * 5)[:14]


def test_failed_requests_keep_their_entries_as_in_vllm_bench_serve(fake, tmp_path):
    """Every third request answered HTTP 500, one at a time: vLLM's own vllm bench serve and capsim measure
    write detailed results whose per-request arrays hold every request in order, a failed one with its
    prompt length, start and queue time and 0 for its latency, TTFT and output tokens, no gaps, no text."""
    _require_vllm()
    flags = ["--model", "gemma3-dummy", *BODY_LOADS["completions-random"], "--num-prompts", "7", "--seed", "3",
             "--max-concurrency", "1", "--save-detailed"]
    _, _, v, c = _run_both(fake, tmp_path, flags, fault="http500", fault_every=3)
    failed = [i % 3 == 0 for i in range(7)]
    keys = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times",
            "generated_texts", "errors")

    def shape(res):
        assert all(len(res[k]) == 7 for k in keys), {k: len(res[k]) for k in keys}
        return {"failed": [bool(e) for e in res["errors"]], "input_lens": [n > 0 for n in res["input_lens"]],
                "output_lens": res["output_lens"], "itls": [len(x) for x in res["itls"]],
                **{k: [x == 0 for x in res[k]] for k in ("ttfts", "latencies")},
                "texts": [t == "" for t in res["generated_texts"]],
                "queued": [0 <= q < 0.5 for q in res["queue_times"]]}

    assert shape(c) == shape(v) and shape(v)["failed"] == failed and (v["failed"], c["failed"]) == (3, 3)
    assert shape(v)["latencies"] == failed and shape(v)["itls"] == [0 if f else 2 for f in failed]
    assert c["input_lens"] == [24] * 7  # the server's count, or the prompt's own where no usage came (vLLM's
    # prompts are counted by Gemma 3's tokenizer and answered by the fake's word count, so their lengths differ)
    assert sorted(v["start_times"]) == v["start_times"] and sorted(c["start_times"]) == c["start_times"]


PROBE_LOADS = {k: BODY_LOADS[k] for k in ("completions-random", "chat-random")}


@pytest.mark.parametrize("load", list(PROBE_LOADS))
def test_probe_requests_are_vllm_bench_serves(load, fake, tmp_path):
    """--probe-request-rate 2 beside a burst of 4 short requests, run by vLLM's own `vllm bench serve` and by
    capsim measure: each sends one probe (the burst is over long before the loop's half-second sleep ends), with
    the same body ("Hi", one token, the run's other fields), the same headers and no request id; each result has
    vLLM's five probe keys for it, and the duration runs to the loop's wake, past the sleep."""
    _require_vllm()
    flags = ["--model", "gemma3-dummy", *PROBE_LOADS[load], "--num-prompts", "4", "--seed", "3",
             "--probe-request-rate", "2"]
    theirs_srv, ours_srv, v, c = _run_both(fake, tmp_path, flags)

    def probes(srv):
        return [(h.get("x-request-id"), {k: h[k] for k in SENT_HEADERS if k in h}, _texts_out(b, True))
                for b, h in zip(srv.stats.bodies, srv.stats.headers) if h.get("x-request-id") is None]

    theirs, ours = probes(theirs_srv), probes(ours_srv)
    assert len(theirs) == 1 and ours == theirs
    body = json.loads(theirs[0][2])
    assert (body.get("prompt") or body["messages"][0]["content"][0]["text"]) == "Hi"
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 1
    keys = ["probe_completed", "probe_failed", "probe_median_e2el_ms", "probe_p99_e2el_ms", "probe_max_e2el_ms"]
    assert [k for k in v if k.startswith("probe_")] == keys == [k for k in c if k.startswith("probe_")]
    assert (v["probe_completed"], v["probe_failed"]) == (c["probe_completed"], c["probe_failed"]) == (1, 0)
    assert 0.5 <= v["duration"] < 2.0 and 0.5 <= c["duration"] < 2.0
    assert len(load_run(tmp_path / "c").probes) == 1 and len(load_run(tmp_path / "c").records) == 4


# ------------------------------------------------------------------ b. random dataset

@pytest.mark.parametrize("case", RANDOM, ids=[f"in{i}-out{o}-rr{r}-prefix{p}-seed{s}" for i, o, r, p, s, _ in RANDOM])
def test_random_dataset_lengths_equal_vllm_to_the_token(oracle, case):
    inp, out, rr, prefix, seed, n = case
    v = oracle[("random", case)]
    wl = build_open_workload("random", inp, out, rr, prefix, None, None, 1.0, FMT)
    ins, outs, offs = wl.lengths(n, seed)
    assert ins.tolist() == v["input_lens"]
    assert outs.tolist() == v["output_lens"]
    assert offs.tolist() == v["token_offsets"]
    specs = wl.sample(n, seed)
    # vLLM's prompt_len is the prompt's token count after its decode/re-encode (prefix included,
    # no BOS, no template); capsim's raw_prompt_tokens is the same count, prompt_tokens adds the
    # server-side BOS and chat template.
    assert [s.raw_prompt_tokens for s in specs] == v["prompt_len"]
    assert [s.prompt_tokens - FMT.special_tokens - FMT.chat_template_tokens for s in specs] == v["prompt_len"]
    assert [s.max_tokens for s in specs] == v["expected_output_len"]
    assert [s.output_tokens for s in specs] == v["expected_output_len"]  # random: ignore_eos
    assert [s.offset for s in specs] == v["token_offsets"]
    if rr > 0:
        assert len(set(v["input_lens"])) > 1 and len(set(v["output_lens"])) > 1


def test_cli_defaults_match_vllm_bench_serve(oracle):
    """`capsim simulate open` and `capsim measure open` (options of their own) start from vllm bench
    serve's defaults."""
    from capsim.cli import open_workload_options

    v = oracle[("defaults",)]

    @click.command()
    @open_workload_options
    def probe(**kw):
        probe.kw = kw

    from measure.cli import measure as measure_cli

    probe.main([], standalone_mode=False)
    live = {p.name: p.default for p in measure_cli.commands["open"].params}  # measure open's own options
    for kw in (probe.kw, live):
        assert kw["dataset_name"] == "random" and v["dataset_name"] == "random"
        for k in ("random_input_len", "random_output_len", "random_range_ratio", "random_prefix_len", "num_prompts",
                  "burstiness", "seed", "max_concurrency"):
            theirs = float(v[k]) if k == "random_range_ratio" else v[k]  # vLLM parses "0.0" in get_samples
            assert kw[k] == theirs, k
        assert float(kw["request_rate"]) == v["request_rate"]
    from simulator.workload import PrefixRepetitionWorkload

    wl = PrefixRepetitionWorkload()  # what a prefix_repetition line without its lengths runs
    assert {k: getattr(wl, k) for k in PREFIX_REPETITION_KEYS} == \
        {k: v[f"prefix_repetition_{k}"] for k in PREFIX_REPETITION_KEYS} == \
        {"prefix_len": 256, "suffix_len": 256, "num_prefixes": 10, "output_len": 128}
    # nothing is sent before the run unless asked: no ready check's test request, no warmups
    from calibrate.importers import parse_command
    from capsim.serve_flags import ServeExtras

    sends = ("num_warmups", "ready_check_timeout_sec")
    pasted = parse_command("vllm bench serve --model m")
    assert {k: v[k] for k in sends} == {k: getattr(ServeExtras(), k) for k in sends} == {k: pasted[k] for k in sends} \
        == {"num_warmups": 0, "ready_check_timeout_sec": 0}


# Values for vllm bench serve's options whose default is none or not a word on a command line
FLAG_SAMPLES = {"--header": "x-team=ops", "--metadata": "tp=1", "--goodput": "ttft:500", "--lora-modules": "a",
                "--percentile-metrics": "ttft,tpot,itl", "--ramp-up-strategy": "linear"}


def _parse_vllm_flag(command, flag: dict):
    """`command`'s reading of one vllm bench serve option (with its default, or a sample value): None, or the
    click error it raised."""
    argv = [flag["opts"][-1]]
    if flag["takes_value"]:
        default = flag["default"]
        word = FLAG_SAMPLES.get(argv[0]) or (default.strip("'") if re.fullmatch(r"'[^']*'|-?[\d.]+|inf", default)
                                             else "1")
        argv.append(word)
    try:
        # with capsim's context settings: a command keeps the first help option it is given (-h included)
        command.make_context("open", argv, **main.context_settings)
    except click.ClickException as ex:
        return ex
    return None


def _open_commands():
    ctx = click.Context(main)
    return {"measure": main.get_command(ctx, "measure").get_command(ctx, "open"),
            "simulate": main.get_command(ctx, "simulate").get_command(ctx, "open")}


def test_every_vllm_bench_serve_flag_pastes_in(oracle):
    """Each option of vllm bench serve's own parser, given its default (or a sample value), is read by
    `capsim measure open` and `capsim simulate open`, or refused with a line that names it: none is an
    unknown option. (`-h/--help` aside: it prints help, and test_flag_rules checks both spellings; simulate's
    --profile is the box's profile, so vLLM's profiler flag is measure's only.)"""
    from capsim.serve_flags import REFUSED_FLAGS

    refused = set(REFUSED_FLAGS) | {"--profile"}
    wrong = []
    for name, command in _open_commands().items():
        for flag in oracle[("serve_flags",)]:
            if flag["opts"][-1] == "--help" or (name == "simulate" and flag["opts"] == ["--profile"]):
                continue
            err = _parse_vllm_flag(command, flag)
            if err is not None and (isinstance(err, click.NoSuchOption) or not refused & set(flag["opts"])
                                    or not err.format_message().startswith(flag["opts"][-1] + ":")):
                wrong.append((name, flag["opts"], err.format_message()))
    assert not wrong, wrong


def test_the_flag_cases_have_teeth(oracle):
    """The oracle lists vllm bench serve's options, and an option capsim does not know fails the check."""
    flags = oracle[("serve_flags",)]
    opts = {o for f in flags for o in f["opts"]}
    assert len(flags) > 90 and {"--random-input-len", "--hf-split", "--profile", "--ready-check-timeout-sec"} <= opts
    err = _parse_vllm_flag(_open_commands()["measure"], {"opts": ["--no-such-flag"], "takes_value": False})
    assert isinstance(err, click.NoSuchOption)
    err = _parse_vllm_flag(_open_commands()["measure"], {"opts": ["--profile"], "takes_value": False})
    assert err is not None and "profiler" in err.format_message()


def test_other_datasets_flags_run_with_a_note():
    """vllm bench serve's flags of datasets other than the one named (capsim's random here) are taken unread,
    as vllm bench serve takes them, and said so once per dataset; --random-batch-size runs at its default 1
    only (above it, the embeddings benchmark's batched prompts)."""
    base = ["simulate", "open", "--num-prompts", "20", "--request-rate", "2", "--seed", "3", "--json"]
    plain = CliRunner().invoke(main, base)
    pasted = CliRunner().invoke(main, [*base, "--hf-split", "train", "--hf-name", "x/y", "--no-stream",
                                       "--spec-bench-category", "qa", "--random-batch-size", "1", "--no-reranker",
                                       "--random-mm-limit-mm-per-prompt", '{"image": 3}',
                                       "--prefix-repetition-prefix-len", "64", "--prefix-repetition-num-prefixes", "2"])
    assert plain.exit_code == 0 and pasted.exit_code == 0, pasted.output
    assert json.loads(pasted.stdout) == json.loads(plain.stdout)
    notes = pasted.stderr.strip().splitlines()
    assert len(notes) == 5, notes
    assert notes[0].startswith("note: --hf-split, --hf-name, --no-stream: only vllm bench serve's hf dataset")
    assert any(n.startswith("note: --prefix-repetition-prefix-len, --prefix-repetition-num-prefixes: only vllm "
                            "bench serve's prefix_repetition dataset") for n in notes)
    assert all("(capsim runs random, sharegpt and prefix_repetition): unread, as in vllm bench serve" in n
               for n in notes)
    bad = CliRunner().invoke(main, [*base, "--random-batch-size", "4"])
    assert bad.exit_code == 2 and "--random-batch-size 4: batched prompts" in bad.stderr


# ------------------------------------------------------------------ b2. random prompts, to the character

@pytest.mark.parametrize("name", [*VOCAB_FOLDERS, "gemma3"])
def test_vocab_is_the_tokenizers_own(oracle, vocab_folders, name):
    """read_vocab's size and special ids are tokenizer.vocab_size and all_special_ids as vllm bench serve
    loads the folder (transformers), in each layout the special tokens are saved in."""
    v = oracle[("vocab", name)]
    ours = read_vocab(TOK if name == "gemma3" else vocab_folders[name])
    assert (ours.size, list(ours.special_ids)) == (v["vocab_size"], v["all_special_ids"])


def test_the_vocab_cases_have_teeth(oracle):
    answers = [oracle[("vocab", name)] for name in VOCAB_FOLDERS]
    assert len({tuple(a["all_special_ids"]) for a in answers}) >= 7
    assert {a["vocab_size"] for a in answers} == {50}  # added tokens left out


def _capsim_random_prompts(case, exact: bool = True):
    """capsim's live random prompts for a RANDOM case, built through vLLM's /tokenize and /detokenize as
    its server answers them; `exact=False` leaves out the vocabulary's special ids and vLLM's draws."""
    inp, out, rr, prefix, seed, n = case
    wl = build_open_workload("random", inp, out, rr, prefix, None, None, 1.0,
                             PromptFormat(FMT.special_tokens, 0, FMT.vocab_size))
    vocab = read_vocab(TOK)
    ends = TokenizerEndpoints(Path(TOK) / "tokenizer.json")
    b = PromptBuilder(ends, "gemma3-dummy", "completions")

    async def build():
        await b.setup()
        return await b.spec_prompts(wl.sample(n, seed), vocab=vocab.size,
                                    special_ids=vocab.special_ids if exact else (), prefix_len=prefix,
                                    rng=wl.prompt_rng(n, seed) if exact else None)

    return [p.prompt for p in asyncio.run(build())], ends.calls, b


@pytest.mark.parametrize("case", RANDOM, ids=[f"in{i}-out{o}-rr{r}-prefix{p}-seed{s}" for i, o, r, p, s, _ in RANDOM])
def test_random_prompts_are_vllms_to_the_character(oracle, case):
    """vllm bench serve's prompt texts, in order: its ids (the vocabulary less its special ids), its
    shared prefix, and the filler tokens of each re-encoding drawn from its dataset's generator."""
    theirs = oracle[("random", case)]["prompts"]
    ours, calls, b = _capsim_random_prompts(case)
    assert ours == theirs
    assert b.mismatches == 0 and b.describe()["prompts_off_target"] == 0


def test_the_random_prompt_cases_have_teeth(oracle):
    """The cases re-encode prompts to other lengths (so filler tokens are drawn), hold a prefix, and
    come out otherwise without vLLM's vocabulary and draws."""
    refits = 0
    for case in RANDOM:
        _, calls, _ = _capsim_random_prompts(case)
        n = case[-1]
        refits += sum(1 for path, _ in calls if path == "/detokenize") - n - 1  # less setup's probe
    assert refits >= sum(case[-1] for case in RANDOM) // 2
    assert any(case[3] > 0 for case in RANDOM)
    for case in RANDOM:
        inexact = _capsim_random_prompts(case, exact=False)[0]
        assert not set(inexact) & set(oracle[("random", case)]["prompts"]), case


def _prefix_repetition_workload(case):
    """The case's workload as `capsim simulate open` builds it from the same vllm bench serve line."""
    from simulator.workload import PrefixRepetitionWorkload

    prefix, suffix, k, out, seed, n, unshuffled = case
    return PrefixRepetitionWorkload(prefix, suffix, k, out, fmt=PromptFormat(FMT.special_tokens, 0, FMT.vocab_size),
                                    shuffle=not unshuffled)


def _capsim_prefix_repetition_prompts(case):
    """capsim's live prompts for a PREFIX_REPETITION case, through vLLM's /tokenize and /detokenize as its
    server answers them."""
    wl = _prefix_repetition_workload(case)
    ends = TokenizerEndpoints(Path(TOK) / "tokenizer.json")
    b = PromptBuilder(ends, "gemma3-dummy", "completions")

    async def build():
        await b.setup()
        return await b.prefix_repetition_prompts(wl, case[5], case[4], read_vocab(TOK).size)

    return [p.prompt for p in asyncio.run(build())], b


@pytest.mark.parametrize("case", PREFIX_REPETITION, ids=lambda c: "p%d-s%d-k%d-n%d-seed%d%s" % (
    c[0], c[1], c[2], c[5], c[4], "-unshuffled" if c[6] else ""))
def test_prefix_repetition_requests_are_vllms(oracle, case):
    """vllm bench serve's prefix_repetition dataset: as many requests as num_prompts // num_prefixes times
    num_prefixes, each of prefix + suffix tokens and the output length, in vLLM's (shuffled) order, with
    vLLM's very texts (its draws from numpy's global generator, over the tokenizer's vocab_size); requests
    of one prefix share its text and nothing else; a simulation sends the same requests."""
    v = oracle[("prefix_repetition", case)]
    prefix, suffix, k, out, seed, n, _ = case
    wl = _prefix_repetition_workload(case)
    specs = wl.sample(n, seed)
    assert len(specs) == len(v["prompt_len"]) == len(v["offsets"]) == n // k * k
    assert [s.raw_prompt_tokens for s in specs] == v["prompt_len"] == [prefix + suffix] * len(specs)
    assert [s.max_tokens for s in specs] == v["expected_output_len"] == [out] * len(specs)
    ours, b = _capsim_prefix_repetition_prompts(case)
    assert ours == v["prompts"]
    assert b.mismatches == 0 or prefix and suffix  # a prompt's text re-encodes to its count unless split in two
    groups = [s.prefix_group for s in specs]
    for i in range(len(specs) if prefix else 0):  # (no prefix: nothing shared, and no cached tokens to share)
        for j in range(len(specs)):
            heads = os.path.commonprefix([ours[i], ours[j]])
            assert (groups[i] == groups[j]) == (i == j or len(heads) >= len(ours[i]) // 4), (i, j)


def test_the_prefix_repetition_cases_have_teeth(oracle):
    """The cases shuffle (the order is not vLLM's generation order), leave prompts of a prefix over
    (num_prompts not a multiple), and re-encode texts to other lengths (filler tokens drawn)."""
    shuffled = [c for c in PREFIX_REPETITION if not c[6]]
    assert any(_prefix_repetition_workload(c).order(c[5], c[4]) != sorted(_prefix_repetition_workload(c).order(
        c[5], c[4])) for c in shuffled)
    assert any(c[5] % c[2] for c in PREFIX_REPETITION)
    for c in PREFIX_REPETITION:  # another seed draws other texts: the seed reaches numpy's generator
        assert oracle[("prefix_repetition", c)]["prompts"] != _capsim_prefix_repetition_prompts(
            c[:4] + (c[4] + 1,) + c[5:])[0]


@pytest.mark.parametrize("case", EDGES, ids=[f"in{i}-rr{r}-prefix{p}" for i, r, p in EDGES])
def test_random_lengths_vllm_refuses_are_refused(oracle, case):
    inp, rr, prefix = case
    v = oracle[("edge", case)]
    if "error" in v:
        assert "too small" in v["error"]
        with pytest.raises(WorkloadError, match="too small"):
            build_open_workload("random", inp, 8, rr, prefix, None, None, 1.0, FMT)
    else:
        wl = build_open_workload("random", inp, 8, rr, prefix, None, None, 1.0, FMT)
        assert [s.raw_prompt_tokens for s in wl.sample(20, 0)] == v["prompt_len"]


def test_the_edge_cases_have_teeth(oracle):
    assert {"error" in oracle[("edge", c)] for c in EDGES} == {True, False}


# ------------------------------------------------------------------ d. ShareGPT

@pytest.mark.parametrize("case", SHAREGPT, ids=[f"seed{s}-n{n}-out{o}" + ("-in-file-order" if f else "") +
                                                 ("-no-oversample" if x else "") for s, n, o, f, x in SHAREGPT])
def test_sharegpt_sample_equals_vllm(oracle, sharegpt_path, case):
    seed, n, out_len, unshuffled, no_oversample = case
    v = oracle[("sharegpt", case)]
    wl = build_open_workload("sharegpt", 0, 0, 0.0, 0, str(sharegpt_path), str(Path(TOK) / "tokenizer.json"), 1.0,
                             FMT, sharegpt_output_len=out_len, shuffle=not unshuffled, oversample=not no_oversample)
    specs = wl.sample(n, seed)
    if no_oversample:  # fewer pass vLLM's filter than asked for: vLLM sends those, each once
        assert len(v["prompts"]) == len(set(v["prompts"])) < n
        assert v["prompts"] == oracle[("sharegpt", (seed, n, out_len, unshuffled, False))]["prompts"][:len(specs)]
    else:
        assert len(v["prompts"]) == n
    assert [s.prompt_text for s in specs] == v["prompts"]
    assert [s.raw_prompt_tokens for s in specs] == v["prompt_len"]
    assert [s.max_tokens for s in specs] == v["expected_output_len"]
    # the file exercises the shuffle, the filter and the oversampling
    data = json.loads(sharegpt_path.read_text(encoding="utf-8"))
    in_file_order = [d["conversations"][0]["value"] for d in data if len(d.get("conversations", [])) >= 2]
    distinct = list(dict.fromkeys(v["prompts"]))
    if unshuffled:  # --disable-shuffle: the passing conversations in the file's order
        assert v["prompts"] == [p for p in in_file_order if p in set(distinct)][:n]
    elif len(distinct) == n:
        assert v["prompts"] != [p for p in in_file_order if p in set(distinct)]
    else:  # fewer pass vLLM's filter than asked for: vLLM repeats some, seeded
        assert n > len(distinct) and len(distinct) < len(in_file_order)


# ------------------------------------------------------------------ c. metrics

@pytest.mark.parametrize("name", list(METRIC_RUNS))
def test_summary_equals_vllm_calculate_metrics(oracle, name):
    v = dict(oracle[("metrics", name)])
    v.pop("actual_output_lens")
    ours = summarize_open(METRIC_RUNS[name][1], percentiles=PERCENTILES)
    missing = sorted(set(v) - set(ours))
    assert not missing, f"capsim's summary lacks vLLM keys {missing}"
    bad = {k: (ours[k], v[k]) for k in v if not math.isclose(ours[k], v[k], rel_tol=1e-9, abs_tol=1e-12)}
    assert not bad, f"capsim != vLLM calculate_metrics: {bad}"
    assert len(v) >= 10 + 4 * (3 + len(PERCENTILES))


@pytest.mark.parametrize("name, thresholds", TIMELINES)
def test_timeline_segments_are_vllms(oracle, name, thresholds):
    """--plot-timeline's bars: each request's TTFT and gaps, their ends and ITL classes, and the legend's names and
    colours, as vLLM's generate_timeline_plot hands them to plotly (its clock strings, to the millisecond)."""
    v = oracle[("timeline", name, thresholds)]

    def clock(sec):  # vLLM's HH:MM:SS.mmm
        return f"{int(sec // 3600):02d}:{int((sec % 3600) // 60):02d}:{sec % 60:06.3f}"

    names = ["TTFT", *itl_labels(thresholds)]
    ours = [{"request_id": f"Req {g.request}", "start": clock(g.start), "end": clock(g.end), "type": names[g.kind],
             "duration": f"{g.end - g.start:.3f}s"}
            for g in timeline_segments(result_arrays(METRIC_RUNS[name][1].records), thresholds)]
    assert ours == v["segments"]
    assert v["colors"] == dict(zip(names, [TTFT_COLOR, *ITL_COLORS]))
    if name == "hand":  # every class, and a failed request's empty TTFT
        assert {s["type"] for s in v["segments"]} == set(names) and v["segments"][-1]["duration"] == "0.000s"


def test_synthetic_metrics_case_has_teeth(oracle):
    """The synthetic run tells apart the rules a wrong summary could use."""
    reqs, run = METRIC_RUNS["synthetic"]
    s = summarize_open(run, percentiles=PERCENTILES)
    v = oracle[("metrics", "synthetic")]
    # vLLM 0.32 uses 1-s buckets, both ends inclusive; the half-open sweep gives less here
    assert s["max_concurrent_requests_sweep"] != v["max_concurrent_requests"]
    # chunks carrying several tokens: tokens != chunks, so TPOT != mean ITL
    ok = [r for r in run.records if r.ok]
    assert sum(r.output_tokens for r in ok) != sum(len(r.chunk_times) for r in ok)
    assert any(r.content_mask is not None for r in ok)  # role-only first chunks count as the first response
    assert v["completed"] == len(ok) and v["failed"] == 2
    # no token lands within 1e-6 s of a one-second bucket edge: vLLM re-adds ttft and itls to
    # rebuild token times, capsim reads the chunk times; both must bin alike
    t_min = min(r.start_time for r in ok)
    rel = np.concatenate([r.chunk_times - t_min for r in ok] + [np.array([r.start_time - t_min for r in ok])])
    rel = rel[rel != 0.0]  # the earliest start is the origin of the buckets in both
    assert np.min(np.abs(rel - np.round(rel))) > 1e-6


# ------------------------------------------------------------------ c2. the twin's /metrics histograms

# TwinStats' histograms and the bucket family vLLM's stat logger gives the series of the same name
TWIN_HISTOGRAMS = {"ttft": "time_to_first_token", "itl": "inter_token_latency", "e2e": "request_latency",
                   "iteration_tokens": "iteration_tokens"}


def _histogram_values(bounds) -> list[float]:
    """Each bound itself (vLLM counts a value on a bound in that bucket), the points between, 0 and past
    the last bound: a bound moved, added or dropped, or a value on a bound binned above it, changes a count."""
    b = sorted(float(x) for x in bounds)
    return [0.0, *b, *((x + y) / 2 for x, y in zip(b, b[1:])), b[-1] * 3]


def test_twin_histograms_are_vllms(oracle):
    """The twin's /metrics histograms after the same observations: vLLM's bucket bounds, counts and sums,
    line for line as vLLM's exposition writes them."""
    stats = TwinStats()
    for attr, family in TWIN_HISTOGRAMS.items():
        h = getattr(stats, attr)
        for v in _histogram_values(h.bounds):
            h.observe(v)
        assert h.lines("h", {"m": "x"}) == oracle[("histograms",)][family], attr


# ------------------------------------------------------------------ d. the stream, read

def _times(rec) -> list[float]:
    """TTFT then each ITL, as vLLM's request function keeps them (seconds: reads, here)."""
    return np.diff(np.concatenate([[rec.start_time], rec.chunk_times])).tolist()


@pytest.mark.parametrize("case", list(STREAMS), ids=lambda c: f"{c[0]}: {c[1]}")
def test_a_stream_reads_as_vllm_bench_serve_reads_it(oracle, case, monkeypatch):
    """The same bytes in the same reads through vllm bench serve's request function and capsim's client.

    Where every read ends at an event's end (vLLM's server writes an event at a time), each chunk is
    taken in the same read, so TTFT, ITL and E2EL agree to the read, with the same text and usage.
    Elsewhere capsim reads the stream by the SSE rule, where vLLM's client strips each read first:
    an event cut after its JSON comes a read later in capsim; a read cut after `data:` fails the
    request in vLLM (the space it strips is its prefix's), and a comment in a read of its own loses
    vLLM every chunk after it (its blank line is stripped), where capsim reads them all."""
    v = oracle[("stream", case)]
    rec, text = capsim_reads(case[0], STREAMS[case], monkeypatch)
    n = 5 if case[0] == "chat" else 4
    assert rec.ok and text == "abc" and rec.output_tokens == 3 and len(rec.chunk_times) == n, rec.error
    theirs = [v["ttft"]] + v["itl"] if v["success"] else []
    if case[1] == "a ping between":
        assert v["generated_text"] == "ab" and v["output_tokens"] == 0  # the ping's read ended its stream
        assert _times(rec)[:len(theirs)] == theirs and len(theirs) == n - 2  # the chunks before it
    elif case in STREAM_SPLITS:
        if not v["success"]:
            assert "JSONDecodeError" in v["error"]
            return
        assert v["generated_text"] == text and v["output_tokens"] == 3 and len(theirs) == n
        lag = np.cumsum(_times(rec)) - np.cumsum(theirs)
        assert set(lag.tolist()) <= {0.0, 1.0}
    else:
        assert v["success"] and v["generated_text"] == text and v["output_tokens"] == 3
        assert _times(rec) == theirs
        assert rec.chunk_times[-1] - rec.start_time == v["latency"]


def test_the_stream_cases_have_teeth(oracle, monkeypatch):
    """Each way the two readers part is met by some case; the whole-event cases differ in their ITLs."""
    lagged, failed = set(), set()
    for case in STREAM_SPLITS:
        v = oracle[("stream", case)]
        if not v["success"]:
            failed.add(case[1])
            continue
        rec, _ = capsim_reads(case[0], STREAMS[case], monkeypatch)
        if _times(rec) != [v["ttft"]] + v["itl"]:
            lagged.add(case[1])
    assert {"cut after each JSON", "cut between the newlines"} <= lagged and failed
    assert len({tuple(oracle[("stream", c)]["itl"]) for c in STREAMS if c not in STREAM_SPLITS}) >= 3
