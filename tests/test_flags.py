"""Issue 11, "speak the tools users already know": one parser for multi-value flags in every
command, vllm bench serve and llama-benchy command lines pasted after `capsim measure` and
`capsim simulate`, and measure's exit status on partial failure (vllm's: 0) with --max-failures.

Live runs use the fake server (measure/fakeserver.py); the real vLLM is covered elsewhere.
"""
from __future__ import annotations

import csv
import io
import json
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from capsim.cli import main
from capsim.options import MultiValue, OptionalValue, parse_extra_body
from measure.fakeserver import FakeConfig, FakeServer
from measure.runfiles import load_run
from simulator.load import OpenLoop, RampUp
from tests.helpers import refused_port

OFFICE = Path("/work/shared/data/spark-bench/results/gemma-4/gemma-4-26b-a4b-it/bf16/07-office-baseline.md")
# the command of OFFICE (vllm bench serve, 2026-08-16), kept here so the test runs without ../shared
OFFICE_CMD = ("vllm bench serve --backend openai-chat --base-url http://localhost:8000 --endpoint /v1/chat/completions "
              "--model google/gemma-4-26B-A4B-it --tokenizer google/gemma-4-26B-A4B-it --served-model-name "
              "gemma-4-26b-a4b-bf16 --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 "
              "--seed 42 --save-result --result-dir /tmp --dataset-name random --random-input-len 4000 "
              "--random-output-len 500 --random-range-ratio 0.9 --num-prompts 200 --request-rate 0.3 "
              "--burstiness 0.7 --result-filename 07-office-baseline.json")




def cap(args, **kw):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kw)


def office_argv() -> list[str]:
    """The vllm bench serve arguments of the office-baseline run (from its results file when there)."""
    cmd = OFFICE_CMD
    if OFFICE.is_file():
        m = re.search(r"(vllm bench serve .*)", OFFICE.read_text())
        assert m, OFFICE
        cmd = m.group(1).strip()
    argv = shlex.split(cmd)
    assert argv[:3] == ["vllm", "bench", "serve"]
    return argv[3:]


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


# ---------------------------------------------------------------- one multi-value parser

@pytest.mark.parametrize("form", [["--pp", "32,48"], ["--pp", "32", "48"], ["--pp", "32", "--pp", "48"],
                                  ["--pp=32", "48"], ["--pp", "32,48", "--pp", "48"]])
def test_simulate_closed_list_forms(form):
    res = cap(["simulate", "closed", *form, "--tg", "2", "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    sizes = [b["prompt_size"] for b in json.loads(res.stdout)["benchmarks"]]
    assert sorted(set(sizes)) == [32, 48]


@pytest.mark.parametrize("args, pp, conc", [
    (["--pp", "32,48", "--concurrency", "1", "2"], (32, 48), (1, 2)),
    (["--pp", "32", "48", "URL", "--concurrency", "1,2"], (32, 48), (1, 2)),  # the URL stays positional
    (["--pp", "32", "--pp", "48", "--concurrency", "2", "--base-url", "URL"], (32, 48), (2,)),
])
def test_measure_closed_list_forms(fake, tmp_path, monkeypatch, args, pp, conc):
    import measure.cli as mcli

    seen = {}

    def fake_run(url, model, pattern, **kw):
        seen.update(url=url, pattern=pattern)
        raise click.ClickException("stop here")

    monkeypatch.setattr(mcli, "run_closed", fake_run)
    argv = ["measure", "closed", *[("http://h:1" if a == "URL" else a) for a in args]]
    if "URL" not in args:
        argv.insert(2, "http://h:1")
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 1 and "stop here" in res.stderr
    assert seen["url"] == "http://h:1" and seen["pattern"].pp == pp and seen["pattern"].concurrency == conc


def _all_commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _all_commands(sub, path + (name,))


def test_every_multi_value_flag_uses_the_one_parser():
    seen = 0
    for path, cmd in _all_commands(main):
        for p in getattr(cmd, "params", []):
            if isinstance(p, click.Option) and p.multiple:
                assert isinstance(p, MultiValue), (path, p.opts)
                seen += 1
    assert seen >= 15  # pp, tg, depth, concurrency x2, --set x3, --sla, --compare, --goodput, --metadata ...


def test_string_lists_spaced_and_comma_forms():
    @click.command()
    @click.option("--set", "sets", cls=MultiValue, item=click.STRING, accept=r"[\w.]+=.*")
    @click.option("--goodput", cls=MultiValue, item=click.STRING, accept=r"\w+:.*")
    @click.option("--metadata", cls=MultiValue, item=click.STRING, sep=None, accept=r"[^=\s]+=.*")
    @click.argument("rest", nargs=-1)
    def probe(sets, goodput, metadata, rest):
        click.echo(json.dumps([sets, goodput, metadata, rest]))

    res = CliRunner().invoke(probe, ["--set", "a=1,b=2", "c=3", "--set", "d=4", "--goodput", "ttft:5", "tpot:1",
                                     "--metadata", "k=v,w", "x=1", "pos1", "pos2"])
    assert json.loads(res.output) == [["a=1", "b=2", "c=3", "d=4"], ["ttft:5", "tpot:1"], ["k=v,w", "x=1"],
                                      ["pos1", "pos2"]]


def test_plan_sla_list_forms(monkeypatch):
    import capsim.plan_cli as pc

    got = []
    monkeypatch.setattr(pc, "parse_slas", lambda t: got.append(tuple(t)) or (_ for _ in ()).throw(
        ValueError("probe")))
    for form in (["--sla", "p95_ttft<=3s,p50_tpot<=150ms"], ["--sla", "p95_ttft<=3s", "p50_tpot<=150ms"],
                 ["--sla", "p95_ttft<=3s", "--sla", "p50_tpot<=150ms"]):
        CliRunner().invoke(main, ["plan", *form, "--no-capacity", "--replications", "1"])
    assert got and all(g == ("p95_ttft<=3s", "p50_tpot<=150ms") for g in got), got


def test_optional_value_save_result():
    @click.command()
    @click.option("--save-result", cls=OptionalValue)
    @click.option("--save-detailed", is_flag=True)
    @click.argument("url", required=False)
    def probe(save_result, save_detailed, url):
        click.echo(json.dumps([save_result, save_detailed, url]))

    run = lambda *a: json.loads(CliRunner().invoke(probe, list(a)).output)  # noqa: E731
    assert run("--save-result", "--save-detailed") == ["", True, None]  # never a file named --save-detailed
    assert run("--save-result", "r.json") == ["r.json", False, None]
    assert run("--save-result", "http://h:1") == ["", False, "http://h:1"]
    assert run("x") == [None, False, "x"]


def test_extra_body_forms():
    assert parse_extra_body(['{"chat_template_kwargs": {"enable_thinking": false}}']) == \
        {"chat_template_kwargs": {"enable_thinking": False}}
    assert parse_extra_body(["temperature=0,top_k:5", "stop=END"]) == {"temperature": 0, "top_k": 5, "stop": "END"}
    for bad in (["{not json"], ["[1]"], ["novalue"], ['{"model": "x"}']):
        with pytest.raises(click.BadParameter):
            parse_extra_body(bad)


# ---------------------------------------------------------------- vllm bench serve, pasted

def test_vllm_bench_serve_line_in_measure_open(fake, tmp_path):
    srv = fake(itl=0.0002, ttft=0.002, max_model_len=16384)
    argv = office_argv()
    argv = replace_flag(argv, "--base-url", srv.url)
    argv = replace_flag(argv, "--served-model-name", "fake-model")  # the name the fake server serves
    argv = replace_flag(argv, "--result-dir", str(tmp_path / "res"))
    argv = replace_flag(argv, "--num-prompts", "6")
    argv = replace_flag(argv, "--request-rate", "30")  # the arrival process (gamma, burstiness 0.7) stays
    res = cap(["measure", "open", *argv, "--no-progress", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output + res.stderr
    run = load_run(tmp_path / "run")
    live, op = run.live, run.open_loop
    assert (live.endpoint, live.model, op.seed, op.burstiness, op.request_rate, op.num_prompts) == \
        ("chat", "fake-model", 42, 0.7, 30.0, 6)
    assert len(run.records) == 6 and all(r.ok for r in run.records)
    # --random-input-len 4000 --random-range-ratio 0.9: uniform in [400, 7600] (+ chat template), output [50, 950]
    assert all(400 <= r.prompt_tokens <= 7600 + 16 for r in run.records)
    assert all(50 <= r.output_tokens <= 950 for r in run.records)
    out = json.loads((tmp_path / "res" / "07-office-baseline.json").read_text())
    assert (out["backend"], out["endpoint_type"], out["model_id"], out["tokenizer_id"], out["num_prompts"],
            out["request_rate"], out["burstiness"], out["label"]) == \
        ("openai-chat", "openai-chat", "google/gemma-4-26B-A4B-it", "google/gemma-4-26B-A4B-it", 6, 30.0, 0.7, None)
    for met in ("ttft", "tpot", "itl", "e2el"):
        for p in (50, 90, 95, 99):
            assert f"p{p}_{met}_ms" in out
    assert out["request_goodput"] is None and "ttfts" not in out  # no --goodput, no --save-detailed
    for line in ("P90 TTFT (ms):", "P95 E2EL (ms):", "Mean ITL (ms):"):
        assert line in res.stdout


def test_vllm_bench_serve_line_in_simulate_open(tmp_path):
    argv = replace_flag(office_argv(), "--result-dir", str(tmp_path / "res"))
    res = cap(["simulate", "open", *argv, "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    printed = json.loads(res.stdout)
    assert (printed["num_prompts"], printed["request_rate"], printed["burstiness"]) == (200, 0.3, 0.7)
    assert printed["completed"] == 200
    out = json.loads((tmp_path / "res" / "07-office-baseline.json").read_text())
    assert (out["backend"], out["model_id"], out["num_prompts"], out["request_rate"], out["burstiness"]) == \
        ("openai-chat", "google/gemma-4-26B-A4B-it", 200, 0.3, 0.7)
    assert out["p90_e2el_ms"] == printed["p90_e2el_ms"]
    # the same line with the chat endpoint spelled capsim's way predicts the same run
    same = cap(["simulate", "open", "--endpoint", "chat", "--seed", "42", "--random-input-len", "4000",
                "--random-output-len", "500", "--random-range-ratio", "0.9", "--num-prompts", "200",
                "--request-rate", "0.3", "--burstiness", "0.7", "--json"])
    assert json.loads(same.stdout)["mean_ttft_ms"] == printed["mean_ttft_ms"]


def test_the_rest_of_a_vllm_bench_serve_line_in_simulate_open():
    """vllm bench serve's flags beyond the shared ones: --input-len/--output-len are the random lengths'
    general spelling, sampling and warmups change no simulated step (sampling says so), the tokenizer
    and ready-check flags, headers and request ids are no-ops, the plots are named as not drawn;
    --ignore-eos contradicts a fraction of each answer."""
    base = ["simulate", "open", "--num-prompts", "40", "--request-rate", "2", "--seed", "3", "--json"]
    plain = cap([*base, "--random-input-len", "300", "--random-output-len", "20"])
    assert plain.exit_code == 0, plain.output
    general = cap([*base, "--random-input-len", "999", "--input-len", "300", "--output-len", "20", "--ignore-eos",
                   "--num-warmups", "3", "--temperature", "0", "--top-k", "1", "--trust-remote-code",
                   "--tokenizer-mode", "auto", "--ready-check-timeout-sec", "30", "--request-id-prefix", "b-",
                   "--header", "x-team=a", "--skip-chat-template", "--use-beam-search"])
    assert general.exit_code == 0, general.output
    ours, theirs = json.loads(plain.stdout), json.loads(general.stdout)
    assert 40 * 300 < ours["total_input_tokens"] < 40 * 400  # --input-len wins over --random-input-len 999
    assert theirs == ours
    notes = general.stderr.strip().splitlines()
    assert notes == ["note: --use-beam-search: vllm bench serve reads it nowhere and its requests sample as ever; so "
                     "do capsim's",
                     "note: --temperature, --top-k: a simulated step takes as long whatever the sampling"]
    bad = CliRunner().invoke(main, [*base, "--ignore-eos", "--dataset-name", "sharegpt", "--output-fraction", "0.8"])
    assert bad.exit_code == 2 and "--ignore-eos and --output-fraction 0.8 contradict" in bad.stderr


def test_a_ramp_up_line_in_simulate_open(tmp_path):
    """--ramp-up-strategy: the ramp's keys, file name and rate steps as vllm bench serve writes them; a rate that
    grows meets a busier box at the end of the run than at its start; the ramp's rates alone are noted unread."""
    base = ["simulate", "open", "--num-prompts", "120", "--random-input-len", "200", "--random-output-len", "20",
            "--seed", "3"]
    ramp = ["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "6"]
    res = cap([*base, *ramp, "--save-result", "--result-dir", str(tmp_path), "--label", "lab", "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    printed = json.loads(res.stdout)
    (path,) = tmp_path.glob("lab-ramp-up-linear-1qps-6qps-*.json")
    out = json.loads(path.read_text())
    for got in (printed, out):
        assert (got["request_rate"], got["ramp_up_strategy"], got["ramp_up_start_rps"], got["ramp_up_end_rps"]) == \
            ("inf", "linear", 1, 6)
    assert [e["rps"] for e in out["rps_change_events"]] == [1, 2, 3, 4, 5, 6]
    # the run lasts the ramp's own schedule (the last send, then its answer), not a burst's
    span = OpenLoop(seed=3, ramp_up=RampUp("linear", 1, 6)).arrival_times(120)[-1]
    assert span < printed["duration"] < span + 5 and json.loads(cap([*base, "--json"]).stdout)["duration"] < span / 3
    fixed = json.loads(cap([*base, "--request-rate", "3.5", "--json"]).stdout)
    alone = cap([*base, "--ramp-up-start-rps", "1", "--request-rate", "3.5", "--json"])
    assert json.loads(alone.stdout) == fixed
    assert alone.stderr.strip() == ("note: --ramp-up-start-rps: unread without --ramp-up-strategy, as in vllm "
                                    "bench serve")


def test_no_oversample_in_simulate_open(tmp_path):
    """--no-oversample on a ShareGPT file with fewer passing conversations than --num-prompts: those only, each
    once, on a schedule over their number (vllm bench serve's get_request spans the list it has); the
    default repeats some up to --num-prompts."""
    from tests.helpers import sharegpt_conversation

    p = tmp_path / "sg.json"
    p.write_text(json.dumps([sharegpt_conversation(f"question {i} " + "word " * 8, "answer " * 30)
                             for i in range(20)]))
    base = ["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(p), "--num-prompts", "50",
            "--request-rate", "2", "--json"]
    short, full = (json.loads(cap([*base, *x]).stdout) for x in (["--no-oversample"], []))
    assert (short["num_prompts"], short["completed"]) == (50, 20) and full["completed"] == 50
    assert 20 / 2 < short["duration"] < full["duration"] and full["duration"] > 50 / 2


def test_a_probe_line_in_simulate_open(tmp_path):
    """--probe-request-rate: the probe's keys in the printout, --json and the result file, its one-token
    latency far below the load's; a box busier with load keeps the probe waiting longer; the load's own keys
    are the same figures as a run without the probe would give but for the probe's share of the engine; a
    negative rate is one line."""
    base = ["simulate", "open", "--num-prompts", "200", "--random-input-len", "1000", "--random-output-len", "100",
            "--seed", "3"]
    res = cap([*base, "--request-rate", "1", "--probe-request-rate", "2", "--save-result", "--result-dir",
               str(tmp_path), "--label", "lab", "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    printed = json.loads(res.stdout)
    (path,) = tmp_path.glob("lab-1.0qps-*.json")
    saved = json.loads(path.read_text())
    keys = ["probe_completed", "probe_failed", "probe_median_e2el_ms", "probe_p99_e2el_ms", "probe_max_e2el_ms"]
    assert [k for k in printed if k.startswith("probe_")] == keys == [k for k in saved if k.startswith("probe_")]
    assert printed["probe_failed"] == 0 and printed["probe_completed"] > 50
    assert printed["probe_median_e2el_ms"] < printed["median_e2el_ms"] / 10
    busy = json.loads(cap([*base, "--request-rate", "4", "--probe-request-rate", "2", "--json"]).stdout)
    assert busy["probe_median_e2el_ms"] > printed["probe_median_e2el_ms"]
    text = cap([*base, "--request-rate", "1", "--probe-request-rate", "2"]).stdout
    assert "------------------Probe Requests------------------" in text and "Median probe E2EL (ms):" in text
    plain = json.loads(cap([*base, "--request-rate", "1", "--json"]).stdout)
    assert not any(k.startswith("probe_") for k in plain)
    assert plain["median_ttft_ms"] == pytest.approx(printed["median_ttft_ms"], rel=0.1)
    bad = cap([*base, "--probe-request-rate", "-1"])
    assert bad.exit_code != 0 and bad.stderr.strip() == ("Error: --probe-request-rate must be a finite rate >= 0 "
                                                         "(0: no probe), got -1.0")


@pytest.mark.parametrize("dataset", ["random", "sharegpt"])
def test_simulate_open_output_fraction_shortens_the_answers_of_either_dataset(dataset):
    """A random load's answers stop early too where the server ends them (gpt-oss at EOS despite ignore_eos)."""
    base = ["simulate", "open", "--dataset-name", dataset, "--num-prompts", "20", "--random-output-len", "100",
            "--json"]
    full, half = (json.loads(CliRunner().invoke(main, [*base, "--output-fraction", f]).stdout) for f in ("1", "0.5"))
    assert half["total_output_tokens"] == pytest.approx(full["total_output_tokens"] / 2, rel=0.05)
    for bad in ("0", "-1", "1.5"):
        res = CliRunner().invoke(main, [*base, "--output-fraction", bad])
        assert res.exit_code == 2 and "'--output-fraction'" in res.stderr and "0<x<=1" in res.stderr


def test_serve_extras_body_in_vllm_bench_serve_order():
    """Sampling flags go in every request, --extra-body over them (vllm bench serve: {**sampling, **extra})."""
    from capsim.serve_flags import ServeExtras
    ex = ServeExtras(ignore_eos=True, sampling={"temperature": 0.0, "top_p": 0.9})
    assert ex.request_body({"top_p": 0.5, "chat_template_kwargs": {"enable_thinking": False}}) == \
        {"temperature": 0.0, "top_p": 0.5, "chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True}
    assert ServeExtras().request_body({}) == {}
    # --logprobs: in the completions body's base (sampling and --extra-body over it), none in the chat body
    lp = ServeExtras(logprobs=3, sampling={"temperature": 0.0})
    assert lp.request_body({}, "completions") == {"logprobs": 3, "temperature": 0.0}
    assert lp.request_body({"logprobs": 1}, "completions") == {"logprobs": 1, "temperature": 0.0}
    assert lp.request_body({}, "chat") == {"temperature": 0.0}
    res = cap(["simulate", "open", "--num-prompts", "4", "--logprobs", "5", "--json"])
    assert res.exit_code == 0 and res.stderr.strip() == "note: --logprobs: a simulated step takes as long whatever " \
                                                        "the logprobs"


def test_save_result_bare_flag_default_name_and_detailed(fake, tmp_path, monkeypatch):
    srv = fake(itl=0.0005)
    monkeypatch.chdir(tmp_path)
    res = cap(["measure", "open", "--host", "127.0.0.1", "--port", str(srv.port), "--backend", "openai",
               "--random-input-len", "16", "--random-output-len", "3", "--num-prompts", "3", "--max-concurrency", "2",
               "--save-result", "--save-detailed", "--label", "lab", "--metadata", "tp=1", "version=0.3.3",
               "--no-progress", "-o", "run"])
    assert res.exit_code == 0, res.output + res.stderr
    assert not Path("--save-detailed").exists()
    files = list(Path(".").glob("lab-infqps-concurrency2-fake-model-*.json"))
    assert len(files) == 1, list(Path(".").iterdir())
    out = json.loads(files[0].read_text())
    assert out["backend"] == "openai" and out["label"] == "lab" and out["tp"] == "1" and out["version"] == "0.3.3"
    assert len(out["ttfts"]) == 3 and len(out["generated_texts"]) == 3 and out["max_concurrency"] == 2
    assert load_run("run").live.endpoint == "completions"


@pytest.mark.parametrize("args, needle", [
    (["--backend", "openai-chat", "--endpoint", "/v1/completions"], "--backend openai-chat sends chat"),
    (["--endpoint", "/v1/embeddings"], "--endpoint"),
    (["--backend", "openai-audio"], "--backend"),
    (["--goodput", "ttft:abc"], "--goodput"),
    (["--goodput", "itl:5"], "--goodput"),
    (["--metric-percentiles", "101"], "--metric-percentiles"),
    (["--percentile-metrics", "ttft,bogus"], "--percentile-metrics"),
    (["--metadata", "novalue"], "--metadata"),
    (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1"], "needs both --ramp-up-start-rps and"),
    (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "0", "--ramp-up-end-rps", "4"],
     "--ramp-up-start-rps must be > 0"),
    (["--ramp-up-strategy", "exponential", "--ramp-up-start-rps", "5", "--ramp-up-end-rps", "4"], "a ramp goes up"),
    (["--ramp-up-strategy", "step", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "4"], "--ramp-up-strategy"),
    (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "4", "--request-rate", "2"],
     "the ramp sets the rate"),
    (["--header", "x-team"], "--header"),
    (["--num-warmups", "-1"], "--num-warmups"),
    (["--input-len", "0"], "--input-len"),
])
def test_vllm_flag_errors_one_line(args, needle):
    with refused_port() as port:  # were a flag let through, measure finds nothing there, and no other process can
        for cmd in (["simulate", "open", "--num-prompts", "2"], ["measure", "open", f"http://127.0.0.1:{port}"]):
            res = CliRunner().invoke(main, [*cmd, *args])
            assert res.exit_code in (1, 2), res.output
            err = res.stderr.strip().splitlines()
            assert len(err) == 1 and needle in err[0], res.stderr


def test_measure_open_needs_a_server():
    res = CliRunner().invoke(main, ["measure", "open", "--num-prompts", "2"])
    assert res.exit_code == 2 and "--base-url" in res.stderr
    res = CliRunner().invoke(main, ["measure", "open", "http://a:1", "--base-url", "http://b:2"])
    assert res.exit_code == 2 and "two server URLs" in res.stderr


def test_goodput_as_vllm_defines_it(fake, tmp_path):
    # One request at a time, all arriving within ~0.1 s: the first waits for nobody (TTFT ~5 ms, good unless the
    # machine is ~10x slow) and the last waits behind eleven that each sleep >= 11 ms (TTFT > 120 ms, never good),
    # so goodput lies strictly between 0 and throughput however busy the machine is.
    srv = fake(itl=0.002, ttft=0.005, max_running=1)
    d = tmp_path / "g"
    res = cap(["measure", "open", "--base-url", srv.url + "/v1", "--random-input-len", "16", "--random-output-len",
               "8", "--random-range-ratio", "0.5", "--num-prompts", "12", "--request-rate", "200",
               "--goodput", "ttft:60", "tpot:50", "--metric-percentiles", "50,99", "--percentile-metrics",
               "ttft,e2el", "--json", "--no-progress", "-o", str(d)])
    assert res.exit_code == 0, res.output + res.stderr
    printed = json.loads(res.stdout)
    run = load_run(d)
    ok = [r for r in run.records if r.ok]
    good = 0
    for r in ok:  # serve.py calculate_metrics: slo >= value for every SLO given; tpot 0 for one output token
        ttft = r.chunk_times[0] - r.start_time
        e2el = r.chunk_times[-1] - r.start_time
        tpot = (e2el - ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
        good += 0.060 >= ttft and 0.050 >= tpot
    assert printed["request_goodput"] == pytest.approx(good / run.duration)
    assert 0 < printed["request_goodput"] < printed["request_throughput"]
    assert {"p50_ttft_ms", "p99_ttft_ms", "p50_e2el_ms", "p99_e2el_ms"} <= set(printed)
    assert not any(k.startswith(("mean_tpot", "mean_itl", "p90_")) for k in printed)
    # a goodput SLO nothing meets gives 0
    res = cap(["simulate", "open", "--num-prompts", "20", "--random-input-len", "200", "--random-output-len", "8",
               "--goodput", "ttft:0.001", "--json"])
    assert json.loads(res.stdout)["request_goodput"] == 0
    res = cap(["simulate", "open", "--num-prompts", "20", "--random-input-len", "200", "--random-output-len", "8",
               "--goodput", "e2el:1e9"])
    assert "Request goodput (req/s):" in res.stdout


# ---------------------------------------------------------------- exit status

def test_partial_failure_exit_0_and_max_failures(fake, tmp_path):
    srv = fake(itl=0.001, fault="http500", fault_every=3)
    base = ["measure", "open", srv.url, "--random-input-len", "16", "--random-output-len", "3",
            "--num-prompts", "9", "--no-progress"]
    res = cap([*base, "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output  # as vllm bench serve: failures reported, exit 0
    failed = sum(not r.ok for r in load_run(tmp_path / "a").records)
    assert failed >= 1 and f"{failed} of 9 requests failed" in res.stderr and "Failed requests:" in res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"capsim measure: {failed} of 9 requests failed (first: HTTP 500")
    assert res.stderr.strip().endswith(f"the summary counts the {9 - failed} completed; run folder {tmp_path / 'a'} "
                                       "(--max-failures N: exit 1 above N)")
    res = cap([*base, "--max-failures", str(failed), "-o", str(tmp_path / "b")])
    assert res.exit_code == 0
    res = cap([*base, "--max-failures", str(failed - 1), "-o", str(tmp_path / "c")])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Error: more than --max-failures {failed - 1}: {failed} of 9 requests "
                                               "failed (first: HTTP 500")
    assert err[0].endswith(f"; {9 - failed} completed records kept; run folder {tmp_path / 'c'}")
    res = cap([*base, "--max-failures", "-1", "-o", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--max-failures" in res.stderr and not (tmp_path / "d").exists()


def test_every_request_failed_exits_1(fake, tmp_path):
    srv = fake(fault="http500")
    res = cap(["measure", "open", srv.url, "--random-input-len", "16", "--random-output-len", "3",
               "--num-prompts", "3", "--no-progress", "-o", str(tmp_path / "z")])
    assert res.exit_code == 1 and "no request completed" in res.stderr


# ---------------------------------------------------------------- llama-benchy, pasted

BENCHY = ("--base-url {url}/v1 --model fake-model --runs 1 --latency-mode generation --format {fmt} "
          "--pp 32 48 --tg 4 --depth 0 --concurrency 1 2")


@pytest.mark.parametrize("fmt", ["md", "json", "csv"])
def test_llama_benchy_line_in_measure_and_simulate_closed(fake, tmp_path, fmt):
    srv = fake(itl=0.0005)
    argv = shlex.split(BENCHY.format(url=srv.url, fmt=fmt))
    live = cap(["measure", "closed", *argv, "--no-progress", "-o", str(tmp_path / "c")])
    sim = cap(["simulate", "closed", *argv])
    for res in (live, sim):
        assert res.exit_code == 0, res.output + res.stderr
    run = load_run(tmp_path / "c")
    assert len(run.records) == 2 * (1 + 2) and run.closed_loop.latency_mode == "generation"
    if fmt == "md":
        for res in (live, sim):
            assert "pp48 (c2)" in res.stdout and "tg4 (c1)" in res.stdout
    elif fmt == "json":
        a, b = json.loads(live.stdout), json.loads(sim.stdout)
        assert set(a) == set(b) and len(a["benchmarks"]) == len(b["benchmarks"]) == 4
    else:
        names = ["pp32 (c1)", "tg4 (c1)", "pp32 (c2)", "tg4 (c2)", "pp48 (c1)", "tg4 (c1)", "pp48 (c2)", "tg4 (c2)"]
        rows = list(csv.DictReader(io.StringIO(sim.stdout)))
        assert [r["test_name"] for r in rows] == names
        assert float(rows[0]["t_s_mean"]) > 0 and rows[0]["peak_ts_mean"] == "" and rows[1]["ttfr_mean"] == ""
        # live, a pp row without a prefill speed (the fake server's TTFT can be under the measured latency)
        # is left out, as llama-benchy leaves it out
        got = [r["test_name"] for r in csv.DictReader(io.StringIO(live.stdout))]
        assert [n for n in names if n in got or n.startswith("tg") or "(c2)" in n] == got


class _RecordingFake(FakeServer):
    """The fake server, keeping the body of every generation request it is sent (through `answer`, the
    public hook of httpwire.Server)."""

    def __init__(self, config):
        super().__init__(config)
        self.generation_bodies: list[dict] = []

    async def answer(self, req, http):
        if req.method == "POST" and req.path in ("/v1/chat/completions", "/v1/completions"):
            self.generation_bodies.append(json.loads(req.body))
        return await super().answer(req, http)


def test_llama_benchy_save_result_warmup_runs_and_extra_body(tmp_path):
    with _RecordingFake(FakeConfig(itl=0.0005)) as srv:
        seen = srv.generation_bodies
        base = ["measure", "closed", "--base-url", srv.url, "--pp", "32", "--tg", "2", "--concurrency", "2",
                "--runs", "1", "--latency-mode", "none", "--no-progress"]
        counts = {}
        for w in ("0", "2"):
            n0 = len(seen)
            res = cap([*base, "--warmup-runs", w, "-o", str(tmp_path / f"w{w}"), "--extra-body", '{"top_k": 3}',
                       "--extra-body", "temperature=0", "--format", "json",
                       "--save-result", str(tmp_path / f"w{w}.json")])
            assert res.exit_code == 0, res.output + res.stderr
            counts[w] = len(seen) - n0
            assert json.loads((tmp_path / f"w{w}.json").read_text()) == json.loads(res.stdout)
    assert counts["2"] - counts["0"] == 2 * 2  # two warmup batches of two requests
    tg = [r for r in seen if r.get("max_tokens") == 2]
    assert tg and all(r.get("top_k") == 3 and r.get("temperature") == 0 for r in tg)
    sim = cap(["simulate", "closed", "--pp", "32", "--tg", "2", "--warmup-runs", "2", "--runs", "1",
               "--format", "csv", "--save-result", str(tmp_path / "s.csv")])
    assert sim.exit_code == 0 and (tmp_path / "s.csv").read_text().startswith("model,test_name,t_s_mean")
    res = CliRunner().invoke(main, ["simulate", "closed", "--no-warmup", "--warmup-runs", "2"])
    assert res.exit_code == 2 and "contradict" in res.stderr


def test_exit_on_first_fail(fake, tmp_path):
    # every request from the 9th on fails: the warmups and the first five measured requests get through
    def server():
        return fake(itl=0.0005, fault="http500", fault_after=8, fault_every=1)

    def base(srv):
        return ["measure", "closed", srv.url, "--pp", "16", "24", "32", "--tg", "2", "--runs", "2",
                "--latency-mode", "none", "--no-progress"]

    res = cap([*base(server()), "-o", str(tmp_path / "keep")])
    assert res.exit_code == 0 and "requests failed" in res.stderr  # llama-benchy's default: carry on
    assert [r.ok for r in load_run(tmp_path / "keep").records] == [True] * 5 + [False]
    res = cap([*base(server()), "--exit-on-first-fail", "-o", str(tmp_path / "stop"), "--emit-progress",
               str(tmp_path / "p.jsonl")])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "--exit-on-first-fail" in err[0]
    run = load_run(tmp_path / "stop")
    # it stops after the batch of the first failure, not before: here the last one, so all was measured
    assert run.live.status == "aborted" and [r.ok for r in run.records] == [True] * 5 + [False]
    # --emit-progress: the failed request ends with its error and no tokens; the benchmark with llama-benchy's
    # status of a run stopped by a failure
    ev = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    ends = [e for e in ev if e["type"] == "request_end"]
    assert [e["error"] == "" for e in ends] == [True] * 5 + [False] and ends[-1]["error"].startswith("HTTP 500")
    assert (ends[-1]["total_tokens"], ends[-1]["decode_seconds"]) == (0, 0.0) and ends[0]["total_tokens"] == 2
    assert ev[-1]["type"] == "bench_complete" and ev[-1]["status"] == "error"
    srv = fake(itl=0.0005, fault="http500", fault_after=6, fault_every=1)  # pp32's warmup fails: no pp32 row
    res = cap([*base(srv), "--exit-on-first-fail", "-o", str(tmp_path / "early")])
    assert res.exit_code == 1 and [r.test for r in load_run(tmp_path / "early").records] == \
        ["pp16 tg2 d0 c1"] * 2 + ["pp24 tg2 d0 c1"] * 2
    # llama-benchy's --no-results-on-fail turns --exit-on-first-fail on; what was measured is kept all the same
    res = cap([*base(server()), "--no-results-on-fail", "-o", str(tmp_path / "stop2")])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert err[0] == ("capsim measure: --no-results-on-fail: taken as --exit-on-first-fail; what was measured "
                      "before the failure is kept") and len(err) == 2 and "--exit-on-first-fail" in err[1]
    assert len(load_run(tmp_path / "stop2").records) == len(run.records)


def test_the_rest_of_a_llama_benchy_line():
    """llama-benchy's flags beyond the shared ones: no-ops where capsim does that already (unique prompts
    sized by the server; a simulated answer runs to --tg with or without --exact-tg), a note where it does
    something else, the reason where it cannot run the load."""
    base = ["simulate", "closed", "--pp", "256", "--tg", "8", "--concurrency", "1", "2", "--format", "json"]
    plain = cap(base)
    given = cap([*base, "--exact-tg", "--no-cache", "--skip-coherence", "--no-adapt-prompt", "--adapt-prompt",
                 "--book-url", "https://www.gutenberg.org/files/1661/1661-0.txt", "--save-total-throughput-timeseries",
                 "--save-all-throughput-timeseries", "--emit-progress", "p.jsonl"])
    assert plain.exit_code == given.exit_code == 0, given.output
    assert json.loads(plain.stdout) == json.loads(given.stdout)
    assert given.stderr.strip().splitlines() == [
        "note: --book-url: capsim's prompts are its own pseudo-English text (measure sizes them with the server's "
        "tokenizer)",
        "note: --emit-progress: not written (a simulation streams no requests)",
        "note: --save-total-throughput-timeseries, --save-all-throughput-timeseries: not saved for a simulated run "
        "(capsim measure closed saves them)"]


def test_post_run_cmd_runs_after_every_batch(fake, tmp_path):
    """llama-benchy's --post-run-cmd: measure closed runs it in a shell after every run of every test, the
    warmup too; a command that fails is said and the run goes on; a simulation names it not run."""
    srv = fake(itl=0.0005)
    log = tmp_path / "ran.txt"
    base = ["measure", "closed", srv.url, "--pp", "16", "--tg", "2", "--depth", "0", "8", "--runs", "2",
            "--no-progress", "--no-metrics"]
    res = cap([*base, "--post-run-cmd", f"echo ran >> {log}", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output + res.stderr
    assert log.read_text().split() == ["ran"] * 6  # 2 tests of a warmup and 2 runs
    js = cap([*base, "--post-run-cmd", "echo not-json", "--format", "json", "-o", str(tmp_path / "j")])
    assert js.exit_code == 0 and len(json.loads(js.stdout)["benchmarks"]) == 2  # its output kept off stdout
    bad = cap([*base, "--post-run-cmd", "exit 3", "-o", str(tmp_path / "b")])
    assert bad.exit_code == 0 and bad.stderr.count("post-run command failed: 'exit 3' exited 3") == 6
    assert len(load_run(tmp_path / "b").records) == 4
    sim = cap(["simulate", "closed", "--pp", "256", "--tg", "8", "--post-run-cmd", f"echo ran >> {log}"])
    assert sim.exit_code == 0 and "--post-run-cmd: not run (a simulated server has nothing to reset)" in sim.stderr
    assert log.read_text().split() == ["ran"] * 6


def test_emit_progress_streams_the_measured_requests(fake, tmp_path):
    """llama-benchy's --emit-progress: measure closed writes its JSONL events as the run goes: the header, the
    latency, and for each measured request (a warmup emits nothing) its start with the test's shape and
    llama-benchy's run index (its warmup is run 0), first response and token, a tokens event a content chunk
    and its end; bench_complete ok last. '-' puts them on stdout alone and the results on stderr, as
    llama-benchy does; a PATH that cannot be written stops the run before any request; a simulation names
    it not written. (Field for field against llama-benchy's own emitter: test_conformance_benchy.py.)"""
    srv = fake(itl=0.0005)
    base = ["measure", "closed", srv.url, "--pp", "16", "--tg", "3", "--concurrency", "1", "2", "--runs", "2",
            "--no-progress", "--no-metrics"]
    path = tmp_path / "p.jsonl"
    res = cap([*base, "--emit-progress", str(path), "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output + res.stderr
    ev = [json.loads(x) for x in path.read_text().splitlines()]
    run = load_run(tmp_path / "a")
    assert [e["type"] for e in ev[:2]] == ["header", "latency_measured"] and ev[-1]["type"] == "bench_complete"
    assert ev[-1]["status"] == "ok" and ev[1] == {**ev[1], "latency_s": run.closed_loop.latency_s, "mode": "generation"}
    assert [e["ts"] for e in ev] == sorted(e["ts"] for e in ev)
    starts = [e for e in ev if e["type"] == "request_start"]
    assert [(e["request_id"], e["concurrency"], e["run_index"]) for e in starts] == \
        [(0, 1, 1), (1, 1, 2), (2, 2, 1), (3, 2, 1), (4, 2, 2), (5, 2, 2)]
    assert {(e["prompt_size"], e["response_size"], e["context_size"], e["model"]) for e in starts} == \
        {(16, 3, 0, "fake-model")}
    assert len(run.records) == 6
    for r in run.records:
        mine = [e for e in ev if e.get("request_id") == r.request_id]
        assert [e["type"] for e in mine] == ["request_start", "request_first_response", "request_first_token",
                                             *["tokens"] * 3, "request_end"]
        assert mine[1]["ttfr_s"] == r.first_response_time - r.start_time
        assert mine[2]["ttft_s"] == r.first_token_time - r.start_time
        assert [e["count"] for e in mine[3:6]] == [1, 1, 1] and not any("estimated" in e for e in mine)
        assert mine[-1]["total_tokens"] == r.output_tokens == 3 and mine[-1]["error"] == ""
        assert mine[-1]["prompt_tokens"] == r.prompt_tokens
    out = cap([*base, "--emit-progress", "-", "--format", "json", "-o", str(tmp_path / "b")])
    assert out.exit_code == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[0]["type"] == "header" and lines[-1] == {**lines[-1], "type": "bench_complete", "status": "ok"}
    assert len([e for e in lines if e["type"] == "request_end"]) == 6 and '"benchmarks"' in out.stderr
    # without llama-benchy's warmup run its run index starts at 0; the progress line counts the measured requests
    shown = [a for a in base if a != "--no-progress"]
    cold = cap([*shown, "--no-warmup", "--emit-progress", str(tmp_path / "q.jsonl"), "-o", str(tmp_path / "d")])
    assert cold.exit_code == 0, cold.stderr
    cold_ev = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert [e["run_index"] for e in cold_ev if e["type"] == "request_start"] == [0, 1, 0, 0, 1, 1]
    assert "] 6/6 requests done, 0 failed, 0 in flight" in cold.stderr
    sent = srv.stats.requests
    bad = cap([*base, "--emit-progress", str(tmp_path / "p.jsonl" / "x"), "-o", str(tmp_path / "c")])
    assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert f"--emit-progress {tmp_path / 'p.jsonl' / 'x'}: cannot write: Not a directory" in bad.stderr
    assert srv.stats.requests == sent


def test_emit_progress_leaves_open_a_stream_it_did_not_open(capsys):
    """A stream handed to ProgressEvents (or stdout for '-') is the caller's: the events end, it stays open."""
    from measure.progress_events import ProgressEvents

    buf = io.StringIO()
    for target in (buf, "-"):
        events = ProgressEvents(target)
        events.complete("ok")
        events.close()
        events.complete("ok")  # after close: nothing written, nothing raised
    assert not buf.closed
    assert [json.loads(x)["type"] for x in buf.getvalue().splitlines()] == ["header", "bench_complete"]
    out = capsys.readouterr().out
    assert [json.loads(x)["type"] for x in out.splitlines()] == ["header", "bench_complete"]
    print("stdout still open")
    assert capsys.readouterr().out == "stdout still open\n"


def test_help_says_where_defaults_differ():
    for cmd in (["measure", "closed"], ["simulate", "closed"]):
        h = cap([*cmd, "--help"]).stdout
        assert "llama-benchy's default: 2048" in h and "llama-benchy's default: api" in h
    for cmd in (["measure", "open"], ["simulate", "open"]):
        h = " ".join(cap([*cmd, "--help"]).stdout.split())
        assert "vllm bench serve's: 99" in h and "vllm bench serve's default: /v1/completions" in h


def test_logprobs_go_in_a_measured_completions_body_and_are_named_unread_with_chat(fake, tmp_path):
    srv = fake(itl=0.0005)
    for endpoint, sent in (("completions", 2), ("chat", None)):
        res = cap(["measure", "open", srv.url, "--endpoint", endpoint, "--random-input-len", "16",
                   "--random-output-len", "2", "--num-prompts", "2", "--logprobs", "2", "--no-progress",
                   "--no-metrics", "-o", str(tmp_path / endpoint)])
        assert res.exit_code == 0, res.output + res.stderr
        assert ("--logprobs: unread with the chat endpoint, as in vllm bench serve" in res.stderr) == (sent is None)
    bodies = srv.stats.bodies
    assert [b.get("logprobs", "absent") for b in bodies if "prompt" in b and b.get("stream")] == [2, 2]
    assert all("logprobs" not in b for b in bodies if "messages" in b)


def test_vllm_bench_serves_plots_and_arrays_in_simulate_open(tmp_path, monkeypatch):
    """--plot-timeline and --plot-dataset-stats draw beside the result file, named as vllm bench serve names it
    (the timeline alone names it without saving the JSON); --save-detailed writes every request's arrays, of the
    run of the given seed; --plot-dataset-stats with nothing to name it after, and thresholds that are not two
    numbers, are refused before the run; thresholds without the timeline are noted unread."""
    monkeypatch.chdir(tmp_path)
    base = ["simulate", "open", "--num-prompts", "12", "--request-rate", "3", "--random-input-len", "300",
            "--random-output-len", "20", "--seed", "3", "--label", "lab"]
    res = cap([*base, "--save-result", "--save-detailed", "--plot-timeline", "--plot-dataset-stats",
               "--timeline-itl-thresholds", "30, 60", "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    (path,) = tmp_path.glob("lab-3.0qps-*.json")
    saved = json.loads(path.read_text())
    assert {p.name for p in tmp_path.iterdir()} == {path.name, path.stem + ".timeline.png",
                                                   path.stem + ".dataset_stats.png"}
    keys = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times",
            "generated_texts", "errors")
    assert all(len(saved[k]) == 12 for k in keys) and sum(saved["output_lens"]) == saved["total_output_tokens"]
    assert sorted(saved["latencies"]) == pytest.approx(sorted(
        t + sum(i) for t, i in zip(saved["ttfts"], saved["itls"])), rel=1e-9)
    assert saved["median_ttft_ms"] == pytest.approx(1000 * float(np.median(saved["ttfts"])), rel=1e-9)
    assert "plot" in res.stderr and path.stem + ".timeline.png" in res.stderr
    for p in tmp_path.iterdir():
        p.unlink()
    alone = cap([*base, "--plot-timeline"])
    assert alone.exit_code == 0, alone.output + alone.stderr
    (png,) = tmp_path.iterdir()  # the timeline, named after the result file it did not save
    assert png.name.startswith("lab-3.0qps-") and png.name.endswith(".timeline.png")
    bad = cap([*base, "--plot-dataset-stats"])
    assert bad.exit_code == 2 and "--plot-dataset-stats: needs --save-result or --plot-timeline" in bad.stderr
    bad = cap([*base, "--plot-timeline", "--timeline-itl-thresholds", "25"])
    assert bad.exit_code == 2 and "--timeline-itl-thresholds 25: two ITL bounds in ms" in bad.stderr
    noted = cap([*base, "--timeline-itl-thresholds", "25,50", "--json"])
    assert noted.exit_code == 0 and "--timeline-itl-thresholds: unread without --plot-timeline" in noted.stderr
    assert len(list(tmp_path.iterdir())) == 1  # nothing more written


def test_vllm_bench_serves_plots_in_measure_open(fake, tmp_path):
    """capsim measure open draws the same figures from the measured requests, beside --result-dir's file."""
    srv = fake(itl=0.002)
    res = cap(["measure", "open", "--base-url", srv.url, "--num-prompts", "5", "--random-input-len", "30",
               "--random-output-len", "6", "--no-progress", "--no-metrics", "-o", str(tmp_path / "run"),
               "--plot-timeline", "--plot-dataset-stats", "--result-dir", str(tmp_path / "res"),
               "--result-filename", "r.json"])
    assert res.exit_code == 0, res.output + res.stderr
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["r.dataset_stats.png", "r.timeline.png"]


def test_throughput_series_in_measure_closed_json(fake, tmp_path):
    """measure closed --format json with llama-benchy's series flags: each test's runs carry the series (one a
    run, a list of one a request), starting at 0 s, counting tokens a second; without the flags, null."""
    srv = fake(itl=0.01)
    base = ["measure", "closed", srv.url, "--pp", "16", "--tg", "6", "--concurrency", "2", "--runs", "2",
            "--no-progress", "--no-metrics", "--format", "json"]
    res = cap([*base, "--save-total-throughput-timeseries", "--save-all-throughput-timeseries",
               "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output + res.stderr
    (b,) = json.loads(res.stdout)["benchmarks"]
    assert len(b["throughput_over_time"]) == 2 and [len(x) for x in b["requests_throughput_over_time"]] == [2, 2]
    first = b["throughput_over_time"][0]
    assert len(first) == 12 and first[0] == [0.0, 1.0] and first[-1][1] == 12.0  # 2 answers of 6 in under 1 s
    assert all(len(s) == 6 for run in b["requests_throughput_over_time"] for s in run)
    (plain,) = json.loads(cap([*base, "-o", str(tmp_path / "b")]).stdout)["benchmarks"]
    assert plain["throughput_over_time"] is None and plain["requests_throughput_over_time"] is None
    md = cap([*base[:-2], "--save-total-throughput-timeseries", "-o", str(tmp_path / "c")])
    assert md.exit_code == 0 and "written with --format json only" in md.stderr
