"""The rules behind the pasted flags (capsim/serve_flags.py, capsim/benchy_flags.py), each against what
vllm bench serve 0.32 or llama-benchy 0.4.0 does: the server's URL, the backend's name, the goodput
and percentile bounds, --extra-body's entries, the result file's name, folder and appending, the
result header, warmups, the csv of llama-benchy, and which words a spaced list flag takes.
tests/test_flags.py runs whole command lines; these hold each rule at its edge.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from capsim.benchy_flags import closed_csv, warmup_setting
from capsim.cli import main
from capsim.options import MultiValue, parse_extra_body
from capsim.serve_flags import (ServeExtras, backend_name, check_result_dest, parse_goodput, parse_percentiles,
                                resolve_url, result_header, result_path, serve_extras, vllm_serve_options,
                                write_result)
from simulator.summary import ClosedRow


@pytest.mark.parametrize("args, url", [
    ((None, None, "box", None), "http://box:8000"),  # vllm bench serve's --port default
    ((None, None, None, 9000), "http://127.0.0.1:9000"),  # and its --host default
    ((None, None, "::1", 8001), "http://[::1]:8001"),  # an IPv6 host in brackets
    ((None, None, "[::1]", None), "http://[::1]:8000"),
    (("http://a:1/", "http://a:1", None, None), "http://a:1/"),  # the same URL twice is one
    ((None, "http://b:2", "ignored", 3), "http://b:2"),
])
def test_the_server_url_from_its_three_spellings(args, url):
    assert resolve_url(*args) == url


def test_two_server_urls_or_none_are_usage_errors():
    with pytest.raises(click.UsageError, match="two server URLs"):
        resolve_url("http://a:1", "http://b:2", None, None)
    with pytest.raises(click.UsageError, match="no server"):
        resolve_url(None, None, None, None)


def test_the_backend_named_in_the_result_follows_the_endpoint_when_not_given():
    assert backend_name(None, "chat") == "openai-chat"
    assert backend_name(None, "completions") == "openai"
    assert backend_name("vllm", "completions") == "vllm"


def test_goodput_objectives_of_0_ms_count_and_negative_ones_do_not():
    assert parse_goodput(["ttft:0", "e2el:30000"]) == {"ttft": 0.0, "e2el": 30000.0}
    with pytest.raises(click.BadParameter, match="must be >= 0 ms"):
        parse_goodput(["tpot:-1"])


def test_percentiles_from_0_to_100():
    assert parse_percentiles([0, 50, 100]) == (0, 50, 100)
    assert parse_percentiles([]) is None
    for bad in (-0.5, 100.5):
        with pytest.raises(click.BadParameter, match="between 0 and 100"):
            parse_percentiles([bad])


def test_an_extra_body_entry_needs_a_key():
    assert parse_extra_body(["top_k:20, min_p=0.1,stop=abc"]) == {"top_k": 20, "min_p": 0.1, "stop": "abc"}
    with pytest.raises(click.BadParameter, match="use a JSON object, key=value or key:value"):
        parse_extra_body([" =5"])


def test_the_result_files_name_as_vllm_bench_serve_computes_it(tmp_path):
    """compute_result_filename: LABEL-RATEqps[-concurrencyC]-MODEL-DATE.json, the model's last path part."""
    kw = dict(append=False, result_dir=None, result_filename=None, label=None, backend="openai-chat", rate=2,
              max_concurrency=8, model_id="google/gemma-3-1b-it", date="20261205-010203")
    assert result_path("", **kw) == Path("openai-chat-2.0qps-concurrency8-gemma-3-1b-it-20261205-010203.json")
    assert result_path("", **{**kw, "label": "run", "max_concurrency": None, "rate": float("inf")}) == \
        Path("run-infqps-gemma-3-1b-it-20261205-010203.json")
    assert result_path(None, **kw) is None  # neither --save-result nor --append-result
    assert result_path(None, **{**kw, "append": True, "result_dir": "out"}).parent == Path("out")
    assert result_path("r.json", **{**kw, "result_dir": "out"}) == Path("out/r.json")
    assert result_path(str(tmp_path / "r.json"), **{**kw, "result_dir": "out"}) == tmp_path / "r.json"
    assert result_path("", **{**kw, "result_filename": "mine.json"}) == Path("mine.json")


def test_the_result_destination_is_checked_before_any_work(tmp_path, capsys):
    check_result_dest(None, False, str(tmp_path), None)
    assert "take effect with --save-result" in capsys.readouterr().err
    check_result_dest(None, False, None, None)
    assert capsys.readouterr().err == ""
    check_result_dest(str(tmp_path / "new" / "deeper" / "r.json"), False, None, None)  # made when written
    with pytest.raises(click.ClickException, match="is a folder"):
        check_result_dest(str(tmp_path), False, None, None)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(click.ClickException, match="cannot write in"):
            check_result_dest(str(locked / "r.json"), False, None, None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(click.ClickException, match="cannot write in"):
        check_result_dest(str(tmp_path / "file" / "r.json"), False, None, None)


def test_appended_results_are_one_json_per_line(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_result(path, {"a": 1}, append=True)
    write_result(path, {"a": 2}, append=True)
    assert [json.loads(line) for line in path.read_text().split("\n")] == [{"a": 1}, {"a": 2}]
    write_result(path, {"b": 1}, append=False)
    assert path.read_text() == '{"b": 1}\n'
    with pytest.raises(click.ClickException, match=f"^cannot write --save-result {tmp_path}: Is a directory$"):
        write_result(tmp_path, {"a": 1}, append=False)


def test_the_result_header_in_vllm_bench_serves_order():
    h = result_header(backend="openai-chat", label=None, model_id="m", tokenizer_id="t", num_prompts=5,
                      rate=float("inf"), burstiness=1.0, max_concurrency=None, metadata={"tp": "1"},
                      date="20261205-010203")
    assert list(h.items()) == [("date", "20261205-010203"), ("endpoint_type", "openai-chat"),
                               ("backend", "openai-chat"), ("label", None), ("model_id", "m"), ("tokenizer_id", "t"),
                               ("num_prompts", 5), ("tp", "1"), ("request_rate", "inf"), ("burstiness", 1.0),
                               ("max_concurrency", None)]
    assert len(result_header(backend="b", label=None, model_id=None, tokenizer_id=None, num_prompts=1, rate=1.0,
                             burstiness=1.0, max_concurrency=None, metadata={})["date"]) == len("20261205-010203")


def test_warmups_of_llama_benchy():
    assert warmup_setting(False, None) == 1  # its one warmup run
    assert warmup_setting(True, None) == warmup_setting(True, 0) == warmup_setting(False, 0) == 0
    assert warmup_setting(False, 3) == 3
    with pytest.raises(click.UsageError, match="contradict"):
        warmup_setting(True, 2)


def test_what_vllm_bench_serves_further_flags_ask():
    ex = ServeExtras()
    assert (ex.num_warmups, ex.ignore_eos, ex.lengths(1024, 128, None)) == (0, False, (1024, 128, None))
    assert ServeExtras(input_len=10, output_len=20).lengths(1024, 128, 256) == (10, 20, 20)
    assert ServeExtras(output_len=None).lengths(1024, 128, 256) == (1024, 128, 256)
    body = ServeExtras(ignore_eos=True, sampling={"temperature": 0.5, "top_k": 5}).request_body({"temperature": 0})
    assert body == {"temperature": 0, "top_k": 5, "ignore_eos": True}  # --extra-body over the sampling flags


@click.command()
@vllm_serve_options
def _serve(**_):
    click.echo(json.dumps(dataclasses.asdict(serve_extras())))


@pytest.mark.parametrize("words, got", [
    ([], {}),
    (["--num-warmups", "0"], {}),
    (["--num-warmups", "2", "--ignore-eos", "--disable-shuffle"],
     {"num_warmups": 2, "ignore_eos": True, "disable_shuffle": True}),
    (["--input-len", "100", "--output-len", "7", "--temperature", "0.5", "--top-k", "3"],
     {"input_len": 100, "output_len": 7, "sampling": {"temperature": 0.5, "top_k": 3}}),
    (["--plot-timeline", "--timeline-itl-thresholds", "10,20"],
     {"plot_timeline": True, "itl_thresholds_s": [0.01, 0.02]}),
    (["--lora-modules", "ada", "bob", "--lora-assignment", "round-robin"],
     {"lora_modules": ["ada", "bob"], "lora_assignment": "round-robin"}),
])
def test_vllm_bench_serves_further_flags_reach_the_run(words, got):
    res = CliRunner().invoke(_serve, words)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {**json.loads(json.dumps(dataclasses.asdict(ServeExtras()))), **got}


def test_llama_benchys_csv_marks_concurrency_only_when_a_test_has_some():
    one = ClosedRow(pp=512, tg=32, depth=0, concurrency=1,
                    metrics={"pp_throughput": (1000.0, 10.0), "ttfr": (500.0, 5.0), "est_ppt": (450.0, 5.0),
                             "e2e_ttft": (520.0, 6.0), "tg_throughput": (40.0, 1.0)})
    rows = list(csv.DictReader(io.StringIO(closed_csv([one], "m"))))
    assert [r["test_name"] for r in rows] == ["pp512", "tg32"]
    assert (rows[0]["t_s_mean"], rows[0]["t_s_std"], rows[0]["ttfr_mean"]) == ("1000.0", "10.0", "500.0")
    assert (rows[1]["t_s_mean"], rows[1]["peak_ts_mean"], rows[1]["ttfr_mean"]) == ("40.0", "", "")
    two = ClosedRow(pp=512, tg=32, depth=4096, concurrency=2,
                    metrics={"pp_throughput": (1800.0, 0.0), "peak_throughput": (70.0, 2.0)})
    rows = list(csv.DictReader(io.StringIO(closed_csv([one, two], "m"))))
    assert [r["test_name"] for r in rows] == ["pp512 (c1)", "tg32 (c1)", "pp512 @ d4096 (c2)", "tg32 @ d4096 (c2)"]
    assert (rows[3]["t_s_mean"], rows[3]["peak_ts_mean"], rows[3]["peak_ts_std"]) == ("", "70.0", "2.0")
    bare = ClosedRow(pp=64, tg=8, depth=0, concurrency=1, metrics={"pp_throughput": (900.0, 0.0)})
    assert [r["test_name"] for r in csv.DictReader(io.StringIO(closed_csv([bare], "m")))] == ["pp64"]


@click.command()
@click.option("--pp", cls=MultiValue, item=click.INT)
@click.option("--bias", cls=MultiValue, item=click.FLOAT)
@click.option("--names", cls=MultiValue, item=click.STRING, sep=None)
@click.option("--quiet", is_flag=True)
@click.argument("rest", nargs=-1)
def _lists(pp, bias, names, quiet, rest):
    click.echo(json.dumps([pp, bias, names, quiet, rest]))


@pytest.mark.parametrize("words, got", [
    (["--pp", "1", "2", "x"], [[1, 2], [], [], False, ["x"]]),
    (["--bias", "1.5", "-2", "-0.5"], [[], [1.5, -2.0, -0.5], [], False, []]),  # a negative number is a value
    (["--pp", "1", "--", "2"], [[1], [], [], False, ["2"]]),  # `--` ends the options, as in argparse
    (["--pp", "1", "--bias", "3"], [[1], [3.0], [], False, []]),
    # a list of any words still stops at a flag and at `--`
    (["--names", "a", "b,c", "--quiet", "x"], [[], [], ["a", "b,c"], True, ["x"]]),
    (["--names", "a", "-5", "--", "-x"], [[], [], ["a", "-5"], False, ["-x"]]),
])
def test_a_spaced_list_flag_takes_values_and_leaves_flags_and_the_end_of_options(words, got):
    res = CliRunner().invoke(_lists, words)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == got


@pytest.mark.parametrize("args, needle", [
    (["--port", "0"], "0 is not in the range 1<=x<=65535"),
    (["--port", "65536"], "65536 is not in the range"),
    (["--input-len", "0"], "0 is not in the range x>=1"),
    (["--output-len", "0"], "0 is not in the range x>=1"),
    (["--num-warmups", "-1"], "-1 is not in the range x>=0"),
])
def test_vllm_bench_serve_numbers_at_their_edges(args, needle):
    res = CliRunner().invoke(main, ["simulate", "open", "--num-prompts", "2", *args])
    assert res.exit_code == 2 and needle in res.output


def test_the_edges_vllm_bench_serve_takes_are_taken():
    res = CliRunner().invoke(main, ["simulate", "open", "--num-prompts", "2", "--random-input-len", "64",
                                    "--random-output-len", "4", "--port", "65535", "--output-len", "1",
                                    "--num-warmups", "0"])
    assert res.exit_code == 0, res.output
    # a prompt of 1 token is taken as a flag, and then found too short for the chat template's own token
    res = CliRunner().invoke(main, ["simulate", "open", "--num-prompts", "2", "--input-len", "1"])
    assert res.exit_code == 1 and "--random-input-len is too small" in res.output


@pytest.mark.parametrize("args, needle", [(["--warmup-runs", "101"], "101 is not in the range 0<=x<=100"),
                                          (["--warmup-runs", "-1"], "-1 is not in the range")])
def test_llama_benchy_warmup_runs_at_their_edges(args, needle):
    res = CliRunner().invoke(main, ["simulate", "closed", "--pp", "64", "--tg", "4", *args])
    assert res.exit_code == 2 and needle in res.output


def test_only_temperature_of_the_sampling_flags_shows_in_help():
    out = CliRunner().invoke(main, ["simulate", "open", "--help"]).output
    assert "--temperature" in out and "--top-p" not in out and "--trust-remote-code" not in out
    assert "--input-len" in out


@pytest.mark.parametrize("cmd", [[], ["simulate", "open"], ["measure", "closed"], ["calibrate"], ["plan"]])
def test_dash_h_is_help_as_in_the_tools_parsers(cmd):
    """vllm bench serve's and llama-benchy's parsers take -h; so does every capsim command."""
    long, short = (CliRunner().invoke(main, [*cmd, h]) for h in ("--help", "-h"))
    assert short.exit_code == long.exit_code == 0 and short.output == long.output and "Usage:" in short.output


def test_lora_flags_in_a_simulation_and_alone():
    """--lora-modules in a simulation: the same prediction, with a note that adapters are not modelled;
    --lora-assignment without adapters is unread, as in vllm bench serve; an assignment it does not know is
    refused. (Measured, each request names its adapter as vLLM's do: test_conformance_vllm, test_measure_live.)"""
    base = ["simulate", "open", "--num-prompts", "10", "--request-rate", "2", "--json"]
    plain = CliRunner().invoke(main, base)
    lora = CliRunner().invoke(main, [*base, "--lora-modules", "ada", "bob", "--lora-assignment", "round-robin"])
    assert plain.exit_code == lora.exit_code == 0, lora.output
    assert json.loads(lora.stdout) == json.loads(plain.stdout)
    assert lora.stderr.strip() == ("note: --lora-modules: LoRA adapters are not modelled: every request runs on "
                                   "the profile's model")
    alone = CliRunner().invoke(main, [*base, "--lora-assignment", "round-robin"])
    assert alone.exit_code == 0 and alone.stderr.strip() == \
        "note: --lora-assignment: unread without --lora-modules, as in vllm bench serve"
    bad = CliRunner().invoke(main, [*base, "--lora-modules", "ada", "--lora-assignment", "sticky"])
    assert bad.exit_code == 2 and "--lora-assignment" in bad.stderr


def test_lora_picks_in_turn_or_drawn():
    import random

    from simulator.workload import WorkloadError, lora_picks

    assert lora_picks(["a", "b", "c"], "round-robin", 7, random.Random(0)) == ["a", "b", "c", "a", "b", "c", "a"]
    rng = random.Random(4)
    assert lora_picks(["a", "b"], "random", 50, random.Random(4)) == [rng.choice(["a", "b"]) for _ in range(50)]
    with pytest.raises(WorkloadError, match="--lora-assignment must be one of random, round-robin, got 'x'"):
        lora_picks(["a"], "x", 1, random.Random(0))
