"""capsim report RUN --csv FILE and --plot FILE.png, read back: the values, not only the files."""
from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from capsim.cli import main as capsim_main
from measure import run_open
from measure.cli import report as report_cli
from measure.exports import RECORD_FIELDS, in_flight, latency_series, plot_run, read_metrics
from measure.runfiles import load_run
from simulator.load import OpenLoop
from simulator.records import RequestRecord
from simulator.summary import peak_concurrency_sweep, summarize_open
from simulator.workload import RandomWorkload

T0 = 100.0  # the run's perf_counter start
# completion order in the file (0, 1, 3, 2): the CSV is in request order
RECORDS = [
    {"request_id": 0, "prompt_tokens": 10, "output_tokens": 4, "scheduled_time": 100.0, "start_time": 100.0,
     "chunk_times": [100.2, 100.3, 100.5, 101.0], "end_time": 101.0, "error": None, "max_tokens": 4, "test": "",
     "batch": 0},
    {"request_id": 1, "prompt_tokens": 12, "output_tokens": 3, "scheduled_time": 100.4, "start_time": 100.5,
     "chunk_times": [100.6, 100.9, 101.2, 102.0], "end_time": 102.0, "error": None, "max_tokens": 3, "test": "",
     "batch": 0, "content_mask": [False, True, True, True]},
    {"request_id": 3, "prompt_tokens": 9, "output_tokens": 0, "scheduled_time": 102.5, "start_time": 102.5,
     "chunk_times": [], "end_time": 102.6, "error": 'HTTP 500: bad, "quoted"\nsecond line', "max_tokens": 5,
     "test": "", "batch": 0},
    {"request_id": 2, "prompt_tokens": 11, "output_tokens": 3, "scheduled_time": 101.0, "start_time": 101.0,
     "chunk_times": [101.5, 101.7, 103.0], "end_time": 103.0, "error": None, "max_tokens": 3, "test": "pp512",
     "batch": 1, "preemptions": 2},
]
METRICS = [{"t": 100.0 + k, "wall": 1.7e9 + k, "num_requests_running": r, "num_requests_waiting": w,
            "kv_cache_usage_perc": kv} for k, (r, w, kv) in enumerate([(0, 0, 0.0), (2, 1, 0.25), (2, 0, 0.5),
                                                                      (1, 0, 0.125), (0, 0, 0.0)])]


def write_run(d: Path, records=RECORDS, metrics=METRICS) -> Path:
    d.mkdir()
    info = {"capsim_run": 1, "kind": "open", "status": "complete", "url": "http://127.0.0.1:1", "model": "m",
            "start_time": T0, "end_time": 104.0, "records": len(records),
            "meta": {"status": "complete", "request_rate": "inf", "num_prompts": len(records), "model": "m"}}
    (d / "run.json").write_text(json.dumps(info))
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [json.dumps(s) for s in metrics] + [json.dumps({"t": 104.5, "wall": 0, "error": "ReadTimeout"}),
                                                 '{"t": 105.0, "num_req']  # a failed scrape, a cut line
    (d / "metrics.jsonl").write_text("\n".join(lines))
    return d


def invoke(args):
    return CliRunner().invoke(report_cli, [str(a) for a in args])


def read_csv(p: Path) -> tuple[list[str], list[dict]]:
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def check_row(row: dict, rec: dict) -> None:
    """One CSV row against its records.jsonl line, field by field, exactly."""
    assert int(row["request_id"]) == rec["request_id"]
    for k in ("prompt_tokens", "output_tokens", "max_tokens", "batch"):
        assert int(row[k]) == rec[k], k
    for k in ("scheduled_time", "start_time", "end_time"):
        assert float(row[k]) == rec[k], k  # exact: floats are written as repr
    assert json.loads(row["chunk_times"]) == rec["chunk_times"]
    assert row["error"] == (rec["error"] or "")
    assert row["test"] == rec["test"]
    assert (json.loads(row["content_mask"]) if row["content_mask"] else None) == rec.get("content_mask")
    assert int(row["preemptions"]) == rec.get("preemptions", 0)


# ---------------------------------------------------------------- CSV

def test_csv_one_row_per_record_in_request_order(tmp_path):
    d = write_run(tmp_path / "r")
    out = tmp_path / "recs.csv"
    old = os.umask(0o022)
    try:
        res = invoke([d, "--csv", out])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines() == [f"capsim report: 4 records written to {out}"]
    assert "Serving Benchmark Result" in res.stdout  # the summary is printed as before
    header, rows = read_csv(out)
    assert header == list(RECORD_FIELDS)
    assert [int(r["request_id"]) for r in rows] == [0, 1, 2, 3]
    by_id = {r["request_id"]: r for r in RECORDS}
    for row in rows:
        check_row(row, by_id[int(row["request_id"])])
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # as a plain open() would make it
    # pandas reads it as the same table
    import pandas as pd

    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == list(RECORD_FIELDS) and len(df) == 4
    assert df["start_time"].tolist() == [100.0, 100.5, 101.0, 102.5]
    assert df["error"].tolist()[3] == RECORDS[2]["error"]


def test_csv_columns_are_records_jsonl_fields():
    """Every field a record can write to records.jsonl has its column, and nothing else does."""
    rec = RequestRecord(7, 3, 2, 1.0, 1.5, np.array([2.0, 2.5]), content_mask=np.array([False, True]),
                        end_time=2.6, error=None, max_tokens=2, test="t", batch=1, preemptions=1,
                        chunk_tokens=np.array([0, 3]))
    assert set(rec.to_json()) == set(RECORD_FIELDS)


def test_csv_of_a_live_run_matches_its_records(fake, tmp_path):
    srv = fake(itl=0.002)
    d = tmp_path / "live"
    run_open(srv.url, None, RandomWorkload(16, 5), OpenLoop(rate=50.0, seed=1), 12, out_dir=d, progress=False)
    out = tmp_path / "live.csv"
    res = invoke([d, "--csv", out])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (d / "records.jsonl").read_text().splitlines()]
    header, rows = read_csv(out)
    assert len(rows) == len(lines) == 12
    by_id = {r["request_id"]: r for r in lines}
    for row in rows:
        check_row(row, by_id[int(row["request_id"])])


# ---------------------------------------------------------------- plot

def test_plot_data_and_png(tmp_path):
    d = write_run(tmp_path / "r")
    run = load_run(d)
    data = plot_run(run, tmp_path / "direct.png", run_dir=d)
    # TTFT to the first streamed chunk, TPOT per request, ITL every gap (ms), as the summary computes them
    assert data["ttft_ms"] == pytest.approx([200.0, 100.0, 500.0])
    assert data["tpot_ms"] == pytest.approx([800 / 3, 1400 / 2, 1500 / 2])
    assert sorted(data["itl_ms"]) == pytest.approx(sorted([100, 200, 500, 300, 300, 800, 200, 1300]))
    s = summarize_open(run)
    assert np.median(data["ttft_ms"]) == pytest.approx(s["median_ttft_ms"])
    assert np.mean(data["tpot_ms"]) == pytest.approx(s["mean_tpot_ms"])
    assert np.mean(data["itl_ms"]) == pytest.approx(s["mean_itl_ms"])
    # in flight: send to stream end, failed request included; at t=1 one ends as another starts
    assert data["in_flight_t"] == pytest.approx([0, 0.5, 1.0, 2.0, 2.5, 2.6, 3.0])
    assert data["in_flight_n"].tolist() == [1, 2, 2, 1, 2, 1, 0]
    ok = [r for r in run.records if r.ok]
    assert data["in_flight_n"].max() == peak_concurrency_sweep(np.array([r.start_time for r in ok]),
                                                               np.array([r.end_time for r in ok]))
    # the server's series from metrics.jsonl, on the run's clock (failed scrape and cut line skipped)
    srv = data["server"]
    assert srv["t"].tolist() == [0, 1, 2, 3, 4]
    assert srv["running"].tolist() == [0, 2, 2, 1, 0] and srv["waiting"].tolist() == [0, 1, 0, 0, 0]
    assert srv["kv"].tolist() == [0.0, 0.25, 0.5, 0.125, 0.0]
    # through the command: a real PNG of the figure's size with something drawn on it
    png = tmp_path / "run.png"
    res = invoke([d, "--plot", png])
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines() == [f"capsim report: plot written to {png}"]
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[:2] == (750, 1100)
    assert float(img[..., :3].std()) > 0.05  # not a blank page


def test_plot_without_completed_requests_or_metrics(tmp_path):
    d = write_run(tmp_path / "r", records=[RECORDS[2]], metrics=[])
    run = load_run(d)
    data = plot_run(run, tmp_path / "p.png", run_dir=d)
    assert len(data["ttft_ms"]) == 0 and data["server"]["t"].tolist() == []
    assert data["in_flight_n"].tolist() == [0, 1, 0]
    assert (tmp_path / "p.png").stat().st_size > 0


def test_in_flight_of_an_empty_run():
    from simulator.records import RunResult

    t, n = in_flight(RunResult([], 0.0, 0.0, "open"))
    assert t.tolist() == [0.0] and n.tolist() == [0]
    assert latency_series(RunResult([], 0.0, 0.0, "open"))["itl_ms"].tolist() == []


def test_series_of_a_run_whose_first_send_comes_late_and_whose_answers_are_short():
    """Sends 0.5 s and 2 s into the run; answers of 1 and 2 tokens: TPOT (vllm bench serve's) has the second only.
    A third request's stream broke (no end time), between them."""
    from simulator.records import RunResult

    one = RequestRecord(0, 5, 1, 10.5, 10.5, np.array([10.75]), end_time=10.75, max_tokens=1)
    two = RequestRecord(1, 5, 2, 12.0, 12.0, np.array([12.25, 13.0]), end_time=13.0, max_tokens=2)
    broken = RequestRecord(2, 5, 0, 11.0, 11.0, np.array([11.25, 11.5]), error="stream cut", max_tokens=3)
    run = RunResult([two, broken, one], 10.0, 13.0, "open")
    lat = latency_series(run)
    assert lat["sent_s"].tolist() == [0.5, 2.0]  # request order, on the run's clock
    assert lat["ttft_ms"].tolist() == [250.0, 250.0] and lat["e2el_ms"].tolist() == [250.0, 1000.0]
    assert lat["tpot_ms"].tolist() == [750.0] and lat["itl_ms"].tolist() == [750.0]
    assert np.median(lat["tpot_ms"]) == summarize_open(run)["median_tpot_ms"]
    # nothing in flight before the first send, from the run's start on; the stream cut without an
    # end time was held open to its last chunk
    t, n = in_flight(run)
    assert t.tolist() == [0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0] and n.tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_plot_of_a_live_run_has_the_server_series(fake, tmp_path):
    srv = fake(itl=0.01)
    d = tmp_path / "live"
    run = run_open(srv.url, None, RandomWorkload(16, 20), OpenLoop(rate=20.0, seed=2), 30, out_dir=d,
                   progress=False)
    data = plot_run(run, tmp_path / "live.png", run_dir=d)
    assert len(data["ttft_ms"]) == 30
    assert data["in_flight_n"][-1] == 0 and data["in_flight_n"].max() >= 1
    assert len(data["server"]["t"]) == len(read_metrics(d, run)["t"]) >= 2
    res = CliRunner().invoke(capsim_main, ["report", str(d), "--plot", str(tmp_path / "cli.png"), "--csv",
                                           str(tmp_path / "cli.csv")])
    assert res.exit_code == 0, res.output
    assert len(read_csv(tmp_path / "cli.csv")[1]) == 30


# ---------------------------------------------------------------- bad output paths

@pytest.mark.parametrize("flag, path, says", [
    ("--csv", "nodir/x.csv", "--csv {p}: no such folder {parent}"),
    ("--csv", "adir", "--csv {p}: is a folder, not a file"),
    ("--plot", "nodir/x.png", "--plot {p}: cannot write the plot: folder {abs_parent} does not exist"),
    ("--plot", "adir", "--plot {p}: is a folder, not a plot file"),
    ("--plot", "x.txt", "--plot {p}: plot file needs one of the suffixes .png, .svg, .pdf, .jpg, .jpeg"),
])
def test_bad_output_path_is_one_line_before_any_work(tmp_path, flag, path, says):
    (tmp_path / "adir").mkdir()
    p = tmp_path / path
    missing_run = tmp_path / "no-such-run"  # the path is refused before the run folder is even looked at
    res = invoke([missing_run, flag, p])
    assert res.exit_code == 1
    want = "Error: " + says.format(p=p, parent=p.parent, abs_parent=os.path.abspath(p.parent))
    assert res.stderr.strip().splitlines() == [want]
    assert res.stdout == "" and not (tmp_path / "x.txt").exists()


def test_an_empty_csv_name_is_one_line(tmp_path):
    res = invoke([tmp_path / "no-such-run", "--csv", " "])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == ["Error: --csv needs a FILE"]


def test_damaged_run_still_writes_what_it_read_and_exits_1(tmp_path):
    d = write_run(tmp_path / "r")
    lines = (d / "records.jsonl").read_text().splitlines(keepends=True)
    (d / "records.jsonl").write_text(lines[0] + lines[1] + lines[2][:30])  # cut mid-record
    out = tmp_path / "half.csv"
    res = invoke([d, "--csv", out])
    assert res.exit_code == 1 and "is damaged" in res.stderr.strip().splitlines()[-1]
    header, rows = read_csv(out)
    assert header == list(RECORD_FIELDS) and [int(r["request_id"]) for r in rows] == [0, 1]


def test_validate_report_cuts_long_source_names_visibly():
    from calibrate.validate import Row, Validation, format_validation
    long = "spark-bench/gemma-4-26b-a4b-it/bf16-v23-and-more"
    v = Validation(rows=[Row(long, "08-sharegpt", "median_tpot_ms", 96.4, 94.7, 64.0, 109.4, 95.0)],
                   capacity=[{"source": long, "threshold_s": 5.0, "measured_rps": 0.7, "predicted_rps": 0.7,
                              "match": True}])
    lines = format_validation(v).splitlines()
    row, cap = lines[1], next(x for x in lines if "p95 TTFT <" in x)
    assert row.startswith("…" + long[-33:] + " ") and cap.startswith("  …" + long[-33:] + " ")
    short = "seed"
    assert format_validation(Validation(rows=[Row(short, "H", "median_tpot_ms", 1, 1, 1, 1, 1)])).splitlines()[1] \
        .startswith("seed ")
