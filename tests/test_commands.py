"""calibrate.importers.parse_command by hand: a pasted llama-benchy or vllm bench serve command line
(or a suite report's '## Command' block) gives the settings that ran, with each tool's own defaults
where the line gives none (vllm bench serve's of vLLM 0.2x; llama-benchy 0.4.0's)."""
import math

import pytest

from calibrate.importers import ImporterError, parse_command, serve_params
from calibrate.server_flags import human_readable_int, server_number


def test_vllm_bench_serve_defaults_fill_what_the_line_leaves_out():
    p = parse_command("vllm bench serve --model m")
    assert p == {"tool": "vllm bench serve", "backend": "openai", "endpoint": "/v1/completions", "model": "m",
                 "num_prompts": 1000, "request_rate": math.inf, "burstiness": 1.0, "max_concurrency": None,
                 "seed": 0, "dataset_name": "random", "dataset_path": None, "ignore_eos": False,
                 "sharegpt_output_len": None, "disable_shuffle": False, "no_oversample": False,
                 "ramp_up_strategy": None, "ramp_up_start_rps": None, "ramp_up_end_rps": None,
                 "probe_request_rate": 0.0, "num_warmups": 0, "ready_check_timeout_sec": 0,
                 "random_input_len": 1024, "random_output_len": 128,
                 "random_range_ratio": 0.0, "random_prefix_len": 0}
    # the random lengths mean nothing for another dataset: none, not vLLM's unused defaults
    s = parse_command("vllm bench serve --dataset-name sharegpt --dataset-path /d/sg.json")
    assert (s["dataset_name"], s["dataset_path"]) == ("sharegpt", "/d/sg.json")
    assert all(s[k] is None for k in ("random_input_len", "random_output_len", "random_range_ratio",
                                      "random_prefix_len"))


def test_the_first_option_after_the_command_is_read():
    assert parse_command("vllm bench serve --num-prompts 7")["num_prompts"] == 7
    assert parse_command("vllm bench serve --random-input-len=333 --seed=9")["random_input_len"] == 333
    b = parse_command("llama-benchy --pp 512 --tg 32")
    assert (b["pp"], b["tg"]) == ([512], [32])


def test_values_are_typed_as_vllm_types_them():
    p = parse_command("vllm bench serve --num-prompts 200.0 --seed 1e3 --request-rate inf --burstiness 0.5 "
                      "--max-concurrency 16 --random-range-ratio 0.25")
    assert p["num_prompts"] == 200 and type(p["num_prompts"]) is int
    assert p["seed"] == 1000 and type(p["seed"]) is int
    assert math.isinf(p["request_rate"]) and p["burstiness"] == 0.5 and p["random_range_ratio"] == 0.25
    assert p["max_concurrency"] == 16 and type(p["max_concurrency"]) is int
    assert parse_command("vllm bench serve --ignore-eos")["ignore_eos"] is True  # a bare switch
    # as the settings come from a result's JSON or a logged Namespace
    for raw, want in ((True, True), ("True", True), ("1", True), (False, False), ("False", False),
                      ("false", False), ("0", False)):
        assert serve_params({"ignore_eos": raw}, None)["ignore_eos"] is want, raw
    assert serve_params({"dataset_name": "'sharegpt'", "seed": "None"}, None)["dataset_name"] == "sharegpt"
    assert serve_params({"seed": "None", "max_concurrency": "null"}, None)["seed"] is None


@pytest.mark.parametrize("line, words", [
    ("vllm bench serve --num-prompts many", "bad value 'many' for num_prompts"),
    ("vllm bench serve --burstiness x", "bad value 'x' for burstiness"),
    ("llama-benchy --pp 512 --tg lots", "bad llama-benchy argument"),
    ("llama-benchy --runs three", "bad llama-benchy argument"),
    ("curl http://x/v1/models", "neither a llama-benchy nor a vllm bench serve command"),
    ("vllm bench serve --model 'm", "cannot split command"),
    ("# run\n```\n```\n## Command\nnothing fenced", "no command block found"),
])
def test_a_line_that_is_no_command_is_one_clear_error(line, words):
    with pytest.raises(ImporterError, match=words):
        parse_command(line)


def test_llama_benchy_defaults_and_flags():
    b = parse_command("uvx llama-benchy --base-url http://x/v1 --pp 2048 --tg 128")
    assert b == {"tool": "llama-benchy", "version": None, "model": None, "pp": [2048], "tg": [128], "depth": [0],
                 "concurrency": [1], "runs": 3, "latency_mode": "api", "enable_prefix_caching": False}
    b = parse_command("uvx llama-benchy==0.4.0 --model org/m --pp 2048 --tg 128 --depth 0 4096 --concurrency 1 5 "
                      "--runs 5 --latency-mode generation --enable-prefix-caching")
    assert (b["version"], b["model"], b["depth"], b["concurrency"]) == ("0.4.0", "org/m", [0, 4096], [1, 5])
    assert (b["runs"], b["latency_mode"], b["enable_prefix_caching"]) == (5, "generation", True)


def test_a_reports_command_block_is_the_one_under_its_heading():
    report = ("# 07 office baseline\n\n```\n============ Serving Benchmark Result ============\n```\n\n"
              "## Command\n\n```bash\ndocker exec vllm-bench vllm bench serve \\\n  --num-prompts 5 \\\n"
              "  --request-rate 0.3\n```\n")
    p = parse_command(report)
    assert (p["num_prompts"], p["request_rate"]) == (5, 0.3)
    # with no heading, the first fenced block
    assert parse_command("```\nvllm bench serve --seed 4\n```\n```\nllama-benchy --pp 1\n```")["seed"] == 4


def test_token_counts_on_a_server_command_line_read_as_vllm_reads_them():
    """vllm.utils.argparse_utils.human_readable_int: lower-case suffixes are powers of 1000 (and take a
    decimal), upper-case ones powers of 1024 (and do not); tests/test_conformance_vllm.py asks vLLM itself."""
    for text, want in (("8192", 8192), ("1k", 1000), ("25.6k", 25600), ("1m", 10 ** 6), ("2g", 2 * 10 ** 9),
                       ("1t", 10 ** 12), ("1K", 1024), ("16K", 16384), ("2M", 2 * 2 ** 20), ("3G", 3 * 2 ** 30),
                       ("1T", 2 ** 40)):
        got = human_readable_int(text)
        assert got == want and type(got) is int, text
    with pytest.raises(ValueError):
        human_readable_int("2.5K")


def test_server_numbers_at_the_edges_vllm_takes():
    assert server_number("gpu_memory_utilization", 1.0, None) == 1.0
    assert server_number("gpu_memory_utilization", "0.01", None) == 0.01
    assert server_number("max_num_seqs", "1", None) == 1
    for key, value in (("gpu_memory_utilization", 0), ("gpu_memory_utilization", "1.01"), ("max_num_seqs", "0"),
                       ("max_num_batched_tokens", 0.5)):
        with pytest.raises(ImporterError, match=f"{key} is {value!r}: vLLM takes"):
            server_number(key, value, None)
