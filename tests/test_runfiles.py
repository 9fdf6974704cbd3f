"""measure/runfiles.py read back: a run folder's times, damage, report, `--json` and vllm bench serve result,
from records written here (the live and twin tests write real ones, and are slow).
"""
import datetime
import json
import math

import numpy as np
import pytest

from measure.runfiles import cli_json, format_report, json_dumps, load_run, load_run_info, run_damage, vllm_bench_result
from tests.test_sources import capsim_run, rewrite_meta, rewrite_run_json


def record_lines(folder):
    return (folder / "records.jsonl").read_text().splitlines()


def records(folder) -> list[dict]:
    return [json.loads(line) for line in record_lines(folder)]


def write_records(folder, recs: list[dict]) -> None:
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def forget_times(info):
    """run.json as a run that crashed before writing its start and end left it."""
    info.pop("start_time"), info.pop("end_time")


def test_a_run_that_never_wrote_its_times_spans_its_records(tmp_path):
    """A crash before run.json's end: the run starts at its first request and ends at the last thing seen, a
    stream's close, else its last chunk, else (no chunk at all) the request's start."""
    folder, run = capsim_run(tmp_path / "cut", "open")
    rewrite_run_json(folder, forget_times)
    recs = records(folder)
    last_chunk = max(r["chunk_times"][-1] for r in recs)
    recs[0]["end_time"] = None  # ended at its last chunk
    recs[1].update(end_time=None, chunk_times=[], error="boom", start_time=last_chunk + 5.0)  # never streamed
    write_records(folder, recs)
    got = load_run(folder)
    assert got.start_time == min(r["start_time"] for r in recs)
    assert got.end_time == recs[1]["start_time"]  # the latest: a failed request's start
    recs[1]["start_time"] = recs[0]["start_time"]
    for r in recs:
        r["end_time"] = None
    write_records(folder, recs)
    assert load_run(folder).end_time == max(r["chunk_times"][-1] for r in recs if r["chunk_times"])


def test_an_empty_run_starts_and_ends_at_zero(tmp_path):
    folder, _ = capsim_run(tmp_path / "empty", "open")
    rewrite_run_json(folder, forget_times)
    (folder / "records.jsonl").unlink()  # a run stopped before its first request
    got = load_run(folder)
    assert (got.start_time, got.end_time, got.records) == (0.0, 0.0, [])
    assert run_damage(got, {}) == []  # nothing unreadable


def test_unreadable_lines_of_a_run_without_live_facts(tmp_path):
    folder, _ = capsim_run(tmp_path / "bare", "open")
    rewrite_run_json(folder, lambda info: info.update(meta={"request_rate": 10.0, "burstiness": 1.0}))  # arrivals only
    got = load_run(folder)
    assert got.live is None and run_damage(got, {}) == []
    with open(folder / "records.jsonl", "a") as f:
        f.write('{"request_id": 9, "prompt')
    got = load_run(folder)
    assert got.live.unreadable_record_lines == 1 and run_damage(got, {}) == ["1 unreadable line in records.jsonl"]


@pytest.mark.parametrize("cut, words", [
    (1, "1 unreadable line in records.jsonl"),
    (2, "2 unreadable lines in records.jsonl"),
])
def test_damage_names_unreadable_lines_and_missing_records(tmp_path, cut, words):
    folder, run = capsim_run(tmp_path / "damaged", "open")
    lines = record_lines(folder)
    kept = lines[:-cut] + [line[:20] for line in lines[-cut:]] + [""]  # lines cut by a crash, a blank line
    (folder / "records.jsonl").write_text("\n".join(kept) + "\n")
    got = load_run(folder)
    assert got.live.model == "Acme/Tiny-1B"  # the count joins the facts run.json holds
    n = len(lines)
    assert run_damage(got, load_run_info(folder)) == [words, f"records.jsonl holds {n - cut} of the {n} records "
                                                             "run.json counts"]
    assert run_damage(got, {"records": n - cut - 1}) == [words, f"records.jsonl holds {n - cut} records, run.json "
                                                                f"counts {n - cut - 1}"]
    assert run_damage(load_run(capsim_run(tmp_path / "sound", "open")[0]), {"records": n}) == []


def test_the_report_says_how_a_run_stopped(tmp_path):
    folder, _ = capsim_run(tmp_path / "stopped", "open")
    assert "run status" not in format_report(load_run(folder))
    rewrite_meta(folder, lambda m: m.update(status="interrupted", stop_reason="Ctrl-C"))
    rewrite_run_json(folder, lambda info: info.update(status="interrupted"))
    assert format_report(load_run(folder)).splitlines()[-1] == "run status: interrupted (Ctrl-C)"
    rewrite_meta(folder, lambda m: m.pop("stop_reason"))
    assert format_report(load_run(folder)).splitlines()[-1] == "run status: interrupted"


def test_a_closed_report_and_json_carry_the_latency_and_the_model(tmp_path):
    folder, run = capsim_run(tmp_path / "closed", "closed")
    rewrite_meta(folder, lambda m: m.update(latency_s=0.012, latency_mode="api"))
    got = load_run(folder)
    report = format_report(got)
    assert "| Acme/Tiny-1B" in report and "latency 12.00 ms" in report and "latency mode: api" in report
    out = cli_json(got)
    assert (out["version"], out["latency_mode"], out["model"]) == ("capsim measure", "api", "Acme/Tiny-1B")
    assert out["latency_ms"] == pytest.approx(12.0) and len(out["benchmarks"]) == 2
    rewrite_meta(folder, lambda m: m.pop("model"))  # no served name kept: the table says "model"
    report = format_report(load_run(folder))
    assert "None" not in report and report.count("| model ") >= 3  # the header and a row per shape
    rewrite_meta(folder, lambda m: m.pop("tests"))  # an older run: no test keys
    got = load_run(folder)
    assert cli_json(got)["benchmarks"] == []
    rewrite_meta(folder, lambda m: [m.pop(k) for k in ("latency_s", "latency_mode")])  # no closed-loop facts at all
    got = load_run(folder)
    assert got.closed_loop is None and cli_json(got)["benchmarks"] == [] and cli_json(got)["latency_ms"] == 0.0
    assert "latency 0.00 ms" in format_report(got)


@pytest.mark.parametrize("endpoint, backend, endpoint_type", [("chat", "openai-chat", "openai-chat"),
                                                              ("completions", "vllm", "openai")])
def test_open_json_and_result_keys(tmp_path, endpoint, backend, endpoint_type):
    folder, run = capsim_run(tmp_path / endpoint, "open")
    rewrite_meta(folder, lambda m: m.update(endpoint=endpoint, request_rate=None, num_prompts=None,
                                            wall_start=1.7e9))
    got = load_run(folder)
    out = cli_json(got, {"percentiles": (50.0, 75.0)})
    assert (out["backend"], out["num_prompts"], out["request_rate"]) == (backend, len(got.records), "inf")
    assert "p75_ttft_ms" in out and out["date"] is not None
    res = vllm_bench_result(got, detailed=True, texts={0: "hi"})
    assert (res["backend"], res["endpoint_type"], res["rtfx"]) == (backend, endpoint_type, 0.0)
    ok = [r for r in got.records if r.ok]
    assert res["queue_times"] == [r.start_time - r.scheduled_time for r in got.records]
    assert res["generated_texts"][0] == "hi" and res["errors"] == [""] * len(got.records)
    assert res["itls"][0] == np.diff(ok[0].chunk_times).tolist()


def test_an_open_run_without_arrival_facts(tmp_path):
    """An older run.json: all at once, Poisson, as many prompts as records; its result dated at the epoch
    where no wall-clock start was kept."""
    folder, run = capsim_run(tmp_path / "older", "open")
    rewrite_meta(folder, lambda m: [m.pop(k) for k in ("request_rate", "burstiness", "max_concurrency", "num_prompts",
                                                       "seed")])
    got = load_run(folder)
    assert got.open_loop is None
    out = cli_json(got)
    assert (out["num_prompts"], out["request_rate"], out["burstiness"], out["max_concurrency"]) == (
        len(got.records), "inf", 1.0, None)
    assert "Request rate configured" not in format_report(got)
    assert vllm_bench_result(got)["date"] == datetime.datetime.fromtimestamp(0).strftime("%Y%m%d-%H%M%S")
    rewrite_meta(folder, lambda m: m.update(request_rate=2.0))
    assert "Request rate configured (RPS):           2.00" in format_report(load_run(folder))


def test_the_report_groups_errors_by_their_first_60_characters_and_shows_the_servers_ttft(tmp_path):
    folder, _ = capsim_run(tmp_path / "errors", "open")
    recs = records(folder)
    for r, tail in zip(recs[:2], ("one", "two")):
        r.update(error="x" * 60 + tail, chunk_times=[])
    write_records(folder, recs)
    rewrite_meta(folder, lambda m: m.update(server_delta={"mean_ttft_ms": 100.0, "ttft_count": 3.0}))
    got = load_run(folder)
    report = format_report(got)
    assert f"errors: 2 x {'x' * 60}" in report
    client = 1000.0 * np.mean([r.ttft for r in got.records if r.ok])
    assert (f"server TTFT (vllm:time_to_first_token_seconds, 3 req): 100.00 ms; client {client:.2f} ms; "
            f"gap {client - 100.0:+.2f} ms") in report
    rewrite_meta(folder, lambda m: m.update(server_delta={"mean_ttft_ms": 100.0}))
    assert "(vllm:time_to_first_token_seconds, 0 req)" in format_report(load_run(folder))
    for r in recs:
        r.update(error="boom", chunk_times=[])
    write_records(folder, recs)
    assert "server TTFT" not in format_report(load_run(folder))  # no client TTFT to set beside it


def test_infinities_are_written_as_vllm_bench_serve_spells_them():
    assert json.loads(json_dumps({"a": math.inf, "b": -math.inf, "c": math.nan, "d": np.float32(2.5)})) == {
        "a": "inf", "b": "-inf", "c": None, "d": 2.5}


def test_a_probed_run_folder_keeps_its_probes_apart_and_validates_with_the_probe(tmp_path):
    """probes.jsonl holds the rate probe's records and records.jsonl the load's alone; read back, the summary,
    report and result carry vLLM's probe keys; a cut probe line is counted as damage; `capsim validate RUN`'s
    source carries the probe rate, so the prediction runs the probe too."""
    from calibrate.sources import load_open
    from calibrate.validate import pattern_for
    from simulator.load import OpenLoop
    from simulator.sim import simulate_open
    from simulator.workload import RandomWorkload
    from tests.helpers import tiny_profile, write_run_folder

    run = simulate_open(tiny_profile(), RandomWorkload(input_len=32, output_len=8).sample(5, seed=0),
                        OpenLoop(rate=10.0, probe_rate=5.0))
    workload = {"dataset": "random", "random_input_len": 32, "random_output_len": 8}
    meta = run.meta_json() | dict(model="Acme/Tiny-1B", endpoint="chat", url="http://127.0.0.1:1", num_prompts=5,
                                  seed=0, workload=workload)
    write_run_folder(tmp_path / "r", run, meta)
    assert len(record_lines(tmp_path / "r")) == 5
    back = load_run(tmp_path / "r")
    assert [p.to_json() for p in back.probes] == [p.to_json() for p in run.probes] and len(run.probes) >= 2
    keys = {k: v for k, v in vllm_bench_result(back).items() if k.startswith("probe_")}
    assert keys["probe_completed"] == len(run.probes) and keys["probe_failed"] == 0
    assert "Probe requests completed:" in format_report(back)
    assert pattern_for(load_open([str(tmp_path / "r")])[0]).probe_rate == 5.0
    with open(tmp_path / "r" / "probes.jsonl", "a") as f:
        f.write('{"request_id": 9, "prompt')
    cut = load_run(tmp_path / "r")
    assert len(cut.probes) == len(run.probes) and cut.live.unreadable_record_lines == 1
    assert run_damage(cut, load_run_info(tmp_path / "r")) == ["1 unreadable line in records.jsonl and probes.jsonl"]
