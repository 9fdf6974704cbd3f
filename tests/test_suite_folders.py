"""calibrate/importers.py on suite folders built here, one file at a time: where an open-loop test's
settings and figures come from when a file is missing (the report's command, the log's Namespace line,
the printed block of either), what a test that failed on the box leaves (named in skipped_tests, the
others still read), the rate sweep's steps from its log alone, and single files given by name.
The nine real runs have every file, so each fallback is tried here on its own."""
import json
import math

import pytest

from calibrate.importers import (ImporterError, closed_runs, is_suite_dir, load_meta, load_source, open_runs,
                                 parse_bench_serve_text)
from tests.test_sources import BENCHY_MD, META, SERVE

COMMAND = ("vllm bench serve --backend openai-chat --endpoint /v1/chat/completions --model Acme/Tiny-1B --seed 42 "
           "--dataset-name random --random-input-len 4000 --random-output-len 500 --random-range-ratio 0.9 "
           "--num-prompts {n} --request-rate {rate} --burstiness 0.7 --result-filename {name}")


def printed(completed=10, cut=False):
    """The block vllm bench serve prints, as the suite's reports and logs hold it."""
    lines = ["============ Serving Benchmark Result ============",
             f"Successful requests:                     {completed}",
             "Benchmark duration (s):                  21.00",
             "Total input tokens:                      10000",
             "Total generated tokens:                  1000",
             "Request throughput (req/s):              0.48",
             "Output token throughput (tok/s):         47.60",
             "---------------Time to First Token----------------",
             "Mean TTFT (ms):                          300.00"]
    return "\n".join(lines if cut else lines + ["=================================================="]) + "\n"


def report(name, n=10, rate=0.3, command=True, block=True, completed=10, cut=False):
    text = f"# Test {name}\n\n**Model:** Acme/Tiny-1B\n\n"
    if command:
        text += f"## Command\n\n```bash\n{COMMAND.format(n=n, rate=rate, name=name + '.json')}\n```\n\n"
    text += "## Results\n\n" + (printed(completed, cut) if block else "(no output)\n")
    return text


def namespace(name, n=10, rate=0.3, seed=42):
    return (f"Namespace(subparser='bench', bench_type='serve', seed={seed}, num_prompts={n}, dataset_name='random', "
            f"dataset_path=None, random_input_len=4000, random_output_len=500, random_range_ratio=0.9, "
            f"request_rate={rate}, burstiness=0.7, max_concurrency=None, result_filename='{name}')\n")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "results" / "acme" / "tiny-1b" / "bf16"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps(META))
    (d / "01-chat.md").write_text(BENCHY_MD)
    return d


def result(n=10, rate=0.3, **edits):
    return json.dumps({**SERVE, "num_prompts": n, "request_rate": rate, "burstiness": 0.7} | edits)


def one(runs, test):
    (run,) = [r for r in runs if r.test == test]
    return run


# ------------------------------------------------------------------ an open-loop test's files

def test_a_test_with_every_file_reads_its_json_with_the_reports_command(folder):
    (folder / "07-office-baseline.json").write_text(result())
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline"))
    run = one(open_runs(folder), "07-office-baseline")
    assert run.path.endswith("07-office-baseline.json") and run.detailed is None
    assert (run.params["seed"], run.params["random_input_len"], run.params["num_prompts"]) == (42, 4000, 10)
    assert run.dataset == "random" and run.result["completed"] == 10


def test_a_report_without_a_command_takes_the_logs_settings(folder):
    (folder / "07-office-baseline.json").write_text(result())
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline", command=False))
    (folder / "07-office-baseline.log").write_text("starting\n" + namespace("07-office-baseline.json", seed=7)
                                                    + printed())
    run = one(open_runs(folder), "07-office-baseline")
    assert run.params["seed"] == 7 and run.params["random_output_len"] == 500
    assert run.path.endswith(".json")


def test_without_its_json_a_test_is_read_from_the_block_it_printed(folder):
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline", completed=9))
    run = one(open_runs(folder), "07-office-baseline")
    assert run.path.endswith("07-office-baseline.md") and run.detailed is None
    assert run.result["completed"] == 9 and run.params["seed"] == 42 and run.dataset == "random"
    # a report without the block: the log's
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline", block=False))
    (folder / "07-office-baseline.log").write_text(namespace("07-office-baseline.json", seed=3) + printed(8))
    run = one(open_runs(folder), "07-office-baseline")
    assert run.path.endswith("07-office-baseline.log") and run.result["completed"] == 8
    assert run.params["seed"] == 42  # the report's command is still the settings
    # a log alone
    (folder / "07-office-baseline.md").unlink()
    run = one(open_runs(folder), "07-office-baseline")
    assert run.path.endswith("07-office-baseline.log") and run.params["seed"] == 3


def test_a_json_alone_has_unknown_settings_but_its_own_counts(folder):
    (folder / "07-office-baseline.json").write_text(result(n=12, rate=0.4, backend="openai-chat"))
    run = one(open_runs(folder), "07-office-baseline")
    assert run.dataset == "unknown" and run.params["dataset_name"] == "unknown"
    assert run.params["random_input_len"] is None
    assert (run.params["num_prompts"], run.params["request_rate"], run.params["backend"]) == (12, 0.4, "openai-chat")


def test_the_result_json_wins_on_the_backend_and_a_disagreeing_count_is_mixed_up_files(folder):
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline"))
    (folder / "07-office-baseline.json").write_text(result(backend="vllm"))
    assert one(open_runs(folder), "07-office-baseline").params["backend"] == "vllm"  # the command said openai-chat
    (folder / "07-office-baseline.json").write_text(result(n=11))
    with pytest.raises(ImporterError, match=r"07-office-baseline\.json: num_prompts is 11 but the command says 10$"):
        open_runs(folder)


def test_a_failed_test_is_named_and_the_others_still_read(folder):
    (folder / "07-office-baseline.json").write_text(result())
    (folder / "08-sharegpt.md").write_text(report("08-sharegpt", block=False))  # no JSON, nothing printed
    (folder / "09-reasoning.json").write_text("{}")  # the suite's result of a test that failed
    (folder / "10-monday-peak.json").write_text("{}")
    (folder / "10-monday-peak.md").write_text(report("10-monday-peak", completed=4))  # but it printed its figures
    runs = open_runs(folder)
    assert [r.test for r in runs] == ["07-office-baseline", "10-monday-peak"]
    assert one(runs, "10-monday-peak").result["completed"] == 4
    assert runs[0].server["skipped_tests"] == [
        "08-sharegpt: no result JSON and no printed report (the test failed on the box?)",
        "09-reasoning.json: an empty result object ({}) (the test failed on the box?)"]


def test_a_printout_cut_off_is_named(folder):
    (folder / "07-office-baseline.json").write_text(result())
    (folder / "08-sharegpt.md").write_text(report("08-sharegpt", cut=True))
    (folder / "09-reasoning.json").write_text("{}")
    (folder / "09-reasoning.md").write_text(report("09-reasoning", cut=True))
    cut = "its 'Serving Benchmark Result' block is cut off (no closing '=====' line) (the test failed on the box?)"
    assert open_runs(folder)[0].server["skipped_tests"] == [
        f"08-sharegpt: no result JSON; 08-sharegpt.md: {cut}",
        f"09-reasoning.json: an empty result object ({{}}); 09-reasoning.md: {cut}"]


def test_only_failed_tests_is_one_error_naming_each(folder):
    (folder / "08-sharegpt.md").write_text(report("08-sharegpt", block=False))
    (folder / "09-reasoning.json").write_text("{}")
    with pytest.raises(ImporterError) as e:
        open_runs(folder)
    assert str(e.value) == (f"{folder}: no open-loop results: 08-sharegpt: no result JSON and no printed report (the "
                            "test failed on the box?); 09-reasoning.json: an empty result object ({}) (the test "
                            "failed on the box?)")


def test_a_broken_result_is_an_error_not_a_failed_test(folder):
    (folder / "07-office-baseline.json").write_text(json.dumps({k: v for k, v in SERVE.items() if k != "duration"}))
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline"))
    with pytest.raises(ImporterError, match="missing key 'duration'"):
        open_runs(folder)
    (folder / "07-office-baseline.json").unlink()
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline").replace("21.00", "21.x0"))
    with pytest.raises(ImporterError, match=r"bad number '21.x0' for 'Benchmark duration \(s\)'"):
        open_runs(folder)
    bad = report("07-office-baseline").replace("--num-prompts 10", "--num-prompts ten")
    (folder / "07-office-baseline.md").write_text(bad)
    with pytest.raises(ImporterError, match=r"07-office-baseline\.md: bad value 'ten' for num_prompts$"):
        open_runs(folder)


def test_other_files_of_the_folder_are_not_tests(folder):
    (folder / "07-office-baseline.json").write_text(result())
    (folder / "07-telemetry.csv").write_text("t,power\n")
    (folder / "07-notes.txt").write_text(printed())
    (folder / "12-extra.md").write_text(report("12-extra"))
    assert [r.test for r in open_runs(folder)] == ["07-office-baseline"]


# ------------------------------------------------------------------ the rate sweep

def test_sweep_steps_come_from_their_jsons_or_from_the_log_alone(folder):
    log = "".join(namespace(f"11-rate-sweep-{rate}.json", n=n, rate=rate) + "progress...\n" + printed(n)
                  for rate, n in (("0.2", 100), ("0.5", 110), ("1.0", 125)))
    (folder / "11-rate-sweep.log").write_text(log)
    runs = open_runs(folder)
    assert [r.test for r in runs] == ["11-rate-sweep@0.2", "11-rate-sweep@0.5", "11-rate-sweep@1.0"]
    # each step's printed block is the one after its own Namespace line
    assert [r.result["completed"] for r in runs] == [100, 110, 125]
    assert [r.params["request_rate"] for r in runs] == [0.2, 0.5, 1.0]
    assert all(r.path.endswith(".log") and r.dataset == "random" for r in runs)
    (folder / "11-rate-sweep-1.0.json").write_text(result(n=125, rate=1.0))
    assert one(open_runs(folder), "11-rate-sweep@1.0").path.endswith("11-rate-sweep-1.0.json")


def test_sweep_steps_without_a_log_take_the_summary_reports_command(folder):
    (folder / "11-rate-sweep-0.2.json").write_text(result(n=100, rate=0.2))
    (folder / "11-rate-sweep.md").write_text(report("11-rate-sweep", n=100, rate=0.2, block=False))
    (run,) = open_runs(folder)
    assert run.test == "11-rate-sweep@0.2" and run.params["seed"] == 42


# ------------------------------------------------------------------ closed-loop reports

def test_closed_runs_name_the_tests_without_a_report_and_take_their_wall_times(folder):
    (folder / "_runner.log").write_text("[10:13:22] ── END 01 (475s) ──\n[10:20:00] ── END 02 (300s) ──\n")
    (run,) = closed_runs(folder)
    assert run.wall_s == 475.0
    assert run.server["skipped_tests"] == [f"{t}: no report" for t in (
        "02-rag-8k", "03-long-output", "04-multi-turn", "05-big-context", "06-concurrency-stress")]


def test_a_cut_table_is_read_to_its_cut_and_named(folder):
    rows = BENCHY_MD.split("\n")
    c2 = [line for line in rows if "(c2)" in line]
    last = rows.index(c2[-1])
    three = rows[:last + 1] + [line.replace("(c2)", "(c4)") for line in c2]  # a third shape, at c4
    cut = "\n| tiny-1b-bf16 | pp1024 (c8) | 6000.0"
    (folder / "01-chat.md").write_text("\n".join(three) + cut)
    (run,) = closed_runs(folder)
    assert len(run.rows) == 3 and run.cut
    note = f"the rest of 01-chat.md after its first 3 shapes (the table is cut at {run.cut})"
    assert note in run.server["skipped_tests"]
    (single,) = load_source(folder / "01-chat.md")
    assert single.server["skipped_tests"] == [note]
    # one shape: no plural
    (folder / "01-chat.md").write_text("\n".join(rows[:rows.index(c2[0])]) + cut)
    (run,) = closed_runs(folder)
    assert len(run.rows) == 1
    assert f"the rest of 01-chat.md after its first 1 shape (the table is cut at {run.cut})" in \
        run.server["skipped_tests"]


def test_a_closed_report_says_its_version_mode_and_model_in_its_footer_or_its_command(folder):
    (run,) = closed_runs(folder)
    assert (run.version, run.latency_mode, run.runs) == ("0.4.0", "generation", 3)
    (folder / "01-chat.md").write_text(BENCHY_MD.replace("--model tiny-1b-bf16", "--model other"))
    assert closed_runs(folder)[0].model == "tiny-1b-bf16"  # the table's model column
    table_only = BENCHY_MD.replace("llama-benchy (0.4.0)\ndate: 2026-08-07 16:20:27 | latency mode: generation\n", "")
    (folder / "01-chat.md").write_text(table_only.replace("--runs 3", "--runs 5"))
    (run,) = closed_runs(folder)
    assert (run.version, run.latency_mode, run.runs) == ("0.4.0", "generation", 5)  # from the command
    assert run.model == "tiny-1b-bf16"
    no_command = table_only.split("## Command")[0] + "## Results" + table_only.split("## Results")[1]
    (folder / "01-chat.md").write_text(no_command)
    (run,) = closed_runs(folder)
    assert (run.version, run.latency_mode, run.runs) == (None, None, None)
    (folder / "01-chat.md").write_text(BENCHY_MD.replace("--runs 3", "--runs three"))
    with pytest.raises(ImporterError, match=r"01-chat\.md: bad llama-benchy argument \("):
        closed_runs(folder)


# ------------------------------------------------------------------ single files and folders

def test_single_open_loop_files_find_their_settings_beside_them(folder):
    (folder / "07-office-baseline.md").write_text(report("07-office-baseline", completed=9))
    (run,) = load_source(folder / "07-office-baseline.md")  # a printout: read without its JSON
    assert run.result["completed"] == 9 and run.params["seed"] == 42 and run.dataset == "random"
    (folder / "08-sharegpt.md").write_text(report("08-sharegpt", command=False))
    assert load_source(folder / "08-sharegpt.md")[0].dataset == "unknown"
    (folder / "07-office-baseline.json").write_text(result())
    assert load_source(folder / "07-office-baseline.json")[0].params["seed"] == 42  # from the report
    (folder / "09-reasoning.json").write_text(result())
    (folder / "09-reasoning.log").write_text(namespace("09-reasoning.json", seed=5))
    assert load_source(folder / "09-reasoning.json")[0].params["seed"] == 5  # from the log
    (folder / "11-rate-sweep-0.5.json").write_text(result(n=100, rate=0.5))
    (folder / "11-rate-sweep.log").write_text(namespace("11-rate-sweep-0.5.json", n=100, rate=0.5, seed=6))
    (run,) = load_source(folder / "11-rate-sweep-0.5.json")
    assert run.test == "11-rate-sweep@0.5" and run.params["seed"] == 6


def test_a_report_with_neither_table_nor_printout_is_no_table(folder):
    (folder / "02-notes.md").write_text("# Test 02\n\nthe server crashed\n")
    with pytest.raises(ImporterError, match=r"02-notes\.md: no llama-benchy table found$"):
        load_source(folder / "02-notes.md")


def test_a_suite_folder_is_known_by_its_meta_or_its_numbered_reports(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    (a / "meta.json").write_text(json.dumps(META))
    (b / "03-long-output.md").write_text(BENCHY_MD)
    (c / "notes.md").write_text("hello")
    assert is_suite_dir(a) and is_suite_dir(b) and not is_suite_dir(c)
    assert not is_suite_dir(tmp_path / "missing") and not is_suite_dir(a / "meta.json")


def test_without_meta_the_model_comes_from_a_reports_header(tmp_path):
    (tmp_path / "01-chat.md").write_text("# Test 01-chat\n\n**Profile:** nvfp4\n**Model:** acme/Foo-8B\n" + BENCHY_MD)
    meta = load_meta(tmp_path)
    assert (meta["model"], meta["weights_profile"]) == ("acme/Foo-8B", "nvfp4")
    assert meta["skipped_tests"][0].startswith("meta.json: missing")
    # a meta.json without the model: the header's
    (tmp_path / "meta.json").write_text(json.dumps({k: v for k, v in META.items() if k != "model"}))
    assert load_meta(tmp_path)["model"] == "acme/Foo-8B"


def test_a_printed_block_at_the_start_of_the_text_is_read():
    text = printed().partition("============ ")[2]  # 'Serving Benchmark Result ...' at position 0
    assert parse_bench_serve_text(text)["completed"] == 10
    assert math.isclose(parse_bench_serve_text("log line\n" + printed())["duration"], 21.0)
