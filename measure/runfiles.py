"""The run folder `capsim measure -o RUN` writes, and reading it back.

    RUN/run.json        what was run: kind, status (running | complete |
                        interrupted | aborted), server URL (no credentials),
                        model, endpoint, workload, pattern, versions, wall and
                        perf_counter start/end, "meta" (RunResult's facts,
                        flat, as RunResult.meta_json writes them: latency_s
                        and tests for closed runs, prompt preparation facts,
                        the client's health, the server's /metrics deltas).
                        Rewritten atomically at start and at the end.
    RUN/records.jsonl   one RequestRecord.to_json() per line, appended and
                        flushed as each request completes (failures included).
    RUN/probes.jsonl    --probe-request-rate's requests, as records.jsonl's (only
                        where a probe ran).
    RUN/metrics.jsonl   the server's /metrics once a second (see measure.prom).
    RUN/summary.json    {"kind", "status", "summary" (open: vllm bench serve's
                        keys, as `--json` prints), "rows" (closed: llama-benchy
                        rows), "server" (server-side means over the run),
                        "client_server_ttft_gap_ms"}.
    FILE (--save-result) vllm bench serve's result JSON.

All times in records and run.json are `time.perf_counter()` seconds of the
measuring process; `wall_start` maps them to wall-clock time.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from simulator.records import LiveFacts, OpenLoopFacts, RequestRecord, RunResult
from simulator.summary import (DETAILED_ARRAYS, closed_report_head, closed_rows_json, format_closed_table,
                               format_open_summary, result_arrays, summarize_closed, summarize_open)

from .errors import MeasureError


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x == math.inf else ("-inf" if x == -math.inf else None)
    return x


def json_dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(_jsonable(obj), indent=indent, allow_nan=False)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, opened for writing with the mode a plain open() gives
    (0o666 less the umask: 0644 under umask 022), not mkstemp's 0600, so that the renamed file
    has the same mode as records.jsonl and metrics.jsonl, which are appended to in place."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` all at once (a temporary file renamed over it), mode as open() gives."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class RunWriter:
    """Appends records and metric samples as they happen; never stores secrets."""

    def __init__(self, out_dir: str | os.PathLike, secrets: Iterable[str] = ()):
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MeasureError(f"cannot create run folder {self.dir}: {e.strerror or e}") from None
        rec = self.dir / "records.jsonl"
        if rec.exists() and rec.stat().st_size > 0:
            raise MeasureError(f"{self.dir} already holds a run (records.jsonl); choose a new -o folder")
        self._secrets = [s for s in secrets if s]
        self._rec = open(rec, "a", encoding="utf-8")
        self._met = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        self._probes = None  # probes.jsonl, opened at the first probe
        self.n_records = 0

    def _clean(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def append_record(self, rec: RequestRecord, probe: bool = False) -> None:
        """To records.jsonl, or a probe's to probes.jsonl; flushed at once."""
        if probe and self._probes is None:
            self._probes = open(self.dir / "probes.jsonl", "a", encoding="utf-8")
        f = self._probes if probe else self._rec
        f.write(self._clean(json_dumps(rec.to_json())) + "\n")
        f.flush()
        if not probe:
            self.n_records += 1

    def append_metrics(self, sample: dict) -> None:
        if self._met.closed:
            return
        self._met.write(self._clean(json_dumps(sample)) + "\n")
        self._met.flush()

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.dir / name
        atomic_write(p, self._clean(json_dumps(obj, indent=2)) + "\n")
        return p

    def close(self) -> None:
        for f in (self._rec, self._met, self._probes):
            if f is not None and not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


# ---------------------------------------------------------------- reading back

def read_records(path: Path) -> tuple[list[RequestRecord], int]:
    """(records, unreadable lines): a line cut by a crash is skipped, not fatal."""
    recs: list[RequestRecord] = []
    bad = 0
    if not path.exists():
        return recs, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                recs.append(RequestRecord.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                bad += 1
    return recs, bad


def load_run_info(run_dir: str | os.PathLike) -> dict:
    d = Path(run_dir)
    p = d / "run.json"
    if not d.is_dir():
        raise MeasureError(f"{d}: no such run folder")
    if not p.exists():
        raise MeasureError(f"{d}: not a capsim run folder (no run.json)")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MeasureError(f"{p}: unreadable run.json ({e})") from None
    if not isinstance(info, dict):
        raise MeasureError(f"{p}: run.json must be a JSON object, not a {type(info).__name__}")
    if info.get("kind", "open") not in ("open", "closed"):
        raise MeasureError(f"{p}: unknown run kind {info['kind']!r} (open or closed)")
    return info


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """The RunResult of a run folder, complete or partial (interrupted, crashed)."""
    d = Path(run_dir)
    info = load_run_info(d)
    recs, bad = read_records(d / "records.jsonl")
    recs.sort(key=lambda r: r.request_id)  # the file is in completion order
    start = info.get("start_time")
    end = info.get("end_time")
    if start is None:
        start = min((r.start_time for r in recs), default=0.0)
    if end is None:  # the run did not finish writing: end at the last thing seen
        ends = [r.end_time if r.end_time is not None else (r.chunk_times[-1] if len(r.chunk_times) else r.start_time)
                for r in recs]
        end = max(ends, default=start)
    run = RunResult(records=recs, start_time=float(start), end_time=float(end), kind=info.get("kind", "open"),
                    **RunResult.facts_from_json(info.get("meta") or {}))
    op = run.open_loop
    if op is not None and op.probe_request_rate:
        run.probes, bad_probes = read_records(d / "probes.jsonl")
        run.probes.sort(key=lambda r: r.request_id)
        bad += bad_probes
    if bad:
        if run.live is None:
            run.live = LiveFacts()
        run.live.unreadable_record_lines = bad
    return run


def run_damage(run: RunResult, info: dict) -> list[str]:
    """What is wrong with a run folder's records: unreadable lines, records missing against run.json's count."""
    out = []
    bad = run.live.unreadable_record_lines if run.live is not None else 0
    if bad:
        where = "records.jsonl" if run.probes is None else "records.jsonl and probes.jsonl"
        out.append(f"{bad} unreadable line{'s' if bad != 1 else ''} in {where}")
    want = info.get("records")
    have = len(run.records)
    if isinstance(want, int) and not isinstance(want, bool) and have != want:
        out.append(f"records.jsonl holds {have} of the {want} records run.json counts"
                   if have < want else f"records.jsonl holds {have} records, run.json counts {want}")
    return out


# ---------------------------------------------------------------- summaries

def _summary_rows(rows) -> list[dict]:
    """summary.json's rows: each test and its metrics' {mean, std} (capsim's own file, kept as it was written;
    --format json writes llama-benchy's layout, summary.closed_rows_json)."""
    return [{"concurrency": r.concurrency, "context_size": r.depth, "prompt_size": r.pp, "response_size": r.tg,
             **{k: {"mean": mu, "std": sd} for k, (mu, sd) in r.metrics.items()}} for r in rows]


def run_summary(run: RunResult, summary_kw: dict | None = None) -> dict:
    """summary.json's content, computed from the records only (+ the server deltas in run.server_metrics).
    summary_kw: summarize_open's percentiles, metrics and goodput (vllm bench serve's flags)."""
    out: dict[str, Any] = {"kind": run.kind, "status": run.status}
    ok = [r for r in run.records if r.ok]
    if run.kind == "closed":
        out["rows"] = _summary_rows(summarize_closed(run)) if _has_tests(run) else []
        out["completed"] = len(ok)
        out["failed"] = len(run.records) - len(ok)
    else:
        out["summary"] = summarize_open(run, **(summary_kw or {}))
    server = _server_delta(run)
    if server:
        out["server"] = server
        if ok and server.get("mean_ttft_ms") is not None:
            client_ttft = 1000.0 * float(np.mean([r.ttft for r in ok]))
            out["client_mean_ttft_ms"] = client_ttft
            out["client_server_ttft_gap_ms"] = client_ttft - server["mean_ttft_ms"]
        if "prompt_tokens_total" in server:
            out["client_prompt_tokens"] = int(sum(r.prompt_tokens for r in ok))
            out["client_output_tokens"] = int(sum(r.output_tokens for r in ok))
    errs: dict[str, int] = {}
    for r in run.records:
        if not r.ok:
            key = r.error[:60] if r.error else "no chunk"
            errs[key] = errs.get(key, 0) + 1
    if errs:
        out["errors"] = errs
    return out


def format_report(run: RunResult, summary_kw: dict | None = None) -> str:
    s = run_summary(run, summary_kw)
    lines = []
    if run.kind == "closed":
        cl = run.closed_loop
        rows = summarize_closed(run) if _has_tests(run) else []
        model = run.live.model if run.live is not None and run.live.model is not None else "model"
        lines.append(format_closed_table(rows, model=str(model),
                                         latency_mode=str((cl.latency_mode if cl else None) or "generation"),
                                         version="capsim measure"))
        lines.append(f"requests: {s['completed']} completed, {s['failed']} failed; "
                     f"latency {1000 * float(cl.latency_s if cl else 0):.2f} ms")
    else:
        rate = run.open_loop.request_rate if run.open_loop is not None else None
        lines.append(format_open_summary(s["summary"], rate=None if rate in (None, math.inf) else float(rate),
                                         metrics=(summary_kw or {}).get("metrics")))
    if "client_server_ttft_gap_ms" in s:
        lines.append(f"server TTFT (vllm:time_to_first_token_seconds, {int(s['server'].get('ttft_count', 0))} req): "
                     f"{s['server']['mean_ttft_ms']:.2f} ms; client {s['client_mean_ttft_ms']:.2f} ms; "
                     f"gap {s['client_server_ttft_gap_ms']:+.2f} ms")
    status = s.get("status")
    if status and status != "complete":
        reason = run.live.stop_reason if run.live is not None else None
        lines.append(f"run status: {status}" + (f" ({reason})" if reason else ""))
    if s.get("errors"):
        lines.append("errors: " + "; ".join(f"{n} x {k}" for k, n in s["errors"].items()))
    # told on stderr as they happened (measure.session.warn); a report read later shows them again
    warnings = run.client.warnings if run.client is not None else {}
    lines += [f"warning: {warnings[k]}" for k in sorted(warnings)]
    return "\n".join(lines)


def cli_json(run: RunResult, summary_kw: dict | None = None, series: tuple[bool, bool] = (False, False)) -> Any:
    """What `--json` prints, with the keys of `capsim simulate open|closed --json`.

    Open: vllm bench serve's run keys (date, backend, model_id, num_prompts,
    request_rate, burstiness, max_concurrency), result keys (summarize_open)
    and num_preemptions (vllm:num_preemptions_total over the run). Closed: llama-benchy's JSON (version, latency_mode,
    latency_ms, model, ..., benchmarks[] with metric -> {mean, std, values}, and its throughput time series where
    `series` asks for them: --save-total-throughput-timeseries, --save-all-throughput-timeseries).
    """
    live = run.live or LiveFacts()
    if run.kind == "closed":
        cl = run.closed_loop
        rows = summarize_closed(run, *series) if _has_tests(run) else []
        return {**closed_report_head(cl.latency_mode if cl else None, cl.latency_s if cl else 0.0, live.model, rows,
                                     "capsim measure", live.wall_start, bool(cl and cl.prefix_caching)),
                "benchmarks": closed_rows_json(rows)}
    return {"date": _dt.datetime.fromtimestamp(live.wall_start).strftime("%Y%m%d-%H%M%S") if live.wall_start else None,
            "backend": "openai-chat" if live.endpoint == "chat" else "vllm", "model_id": live.model,
            **_open_run_keys(run),
            **summarize_open(run, **(summary_kw or {})),
            # the simulator counts preemptions per request; live, the server's counter over the run
            "num_preemptions": _server_delta(run).get("num_preemptions")}


def _has_tests(run: RunResult) -> bool:
    return run.closed_loop is not None and bool(run.closed_loop.tests)


def _server_delta(run: RunResult) -> dict:
    return (run.server_metrics.delta if run.server_metrics is not None else None) or {}


def _open_run_keys(run: RunResult) -> dict[str, Any]:
    """vllm bench serve's num_prompts, request_rate, burstiness, max_concurrency (and ramp-up) of an open run."""
    op = run.open_loop or OpenLoopFacts()
    return {"num_prompts": op.num_prompts if op.num_prompts is not None else len(run.records),
            "request_rate": "inf" if op.request_rate in (math.inf, None) else op.request_rate,
            "burstiness": op.burstiness, "max_concurrency": op.max_concurrency, **op.ramp_keys()}


def vllm_bench_result(run: RunResult, detailed: bool = False, texts: dict[int, str] | None = None,
                      header: dict | None = None, summary_kw: dict | None = None) -> dict:
    """vllm bench serve's --save-result JSON (newest layout).

    Without `detailed` the per-request arrays are dropped as vllm does, except
    its quirk: `latencies` and `queue_times` stay. `header` replaces the run keys
    (capsim.serve_flags.result_header: backend, label, model_id, --metadata ...);
    summary_kw: summarize_open's percentiles, metrics and goodput.
    """
    live = run.live or LiveFacts()
    s = summarize_open(run, **(summary_kw or {}))
    res: dict[str, Any] = {
        "date": _dt.datetime.fromtimestamp(live.wall_start or 0).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai-chat" if live.endpoint == "chat" else "openai",
        "backend": "openai-chat" if live.endpoint == "chat" else "vllm",
        "label": None,
        "model_id": live.model,
        "tokenizer_id": live.model,
        **_open_run_keys(run),
        "request_goodput": None,
    }
    if header:
        res = {**header, "request_goodput": None}
    res.update(s)
    res["rtfx"] = 0.0  # vllm's inverse real-time factor: seconds of input audio per second, 0 for text
    arrays = result_arrays(run.records, texts)
    res.update({k: arrays[k] for k in ("latencies", "queue_times")})
    if detailed:
        res.update({k: arrays[k] for k in DETAILED_ARRAYS})
    if run.extra.get("rps_change_events"):
        res["rps_change_events"] = run.extra["rps_change_events"]
    return res
