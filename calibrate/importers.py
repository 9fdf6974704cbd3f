"""Read published benchmark results into calibrate.results records.

spark-bench run folders (closed_runs, open_runs, load_meta) and single sources (load_source): vllm
bench serve result JSON, its printed blocks and command lines here; llama-benchy tables in
benchy_tables, the server's command line in server_flags. closed_runs() never opens an open-loop file;
every failure is an ImporterError naming its file. Design: docs/design/calibration.md.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

from simulator.records import RAMP_KEYS

from .benchy_tables import NO_ROWS, NO_TABLE, find_table, parse_benchy
from .files import ImporterError, file_error, load_json, read_text, text_if_any
from .results import DETAILED_KEYS, ClosedRun, OpenRun
from .server_flags import (flag_value, server_number, server_switch, speculative_config, switch_flag,
                           unmodelled_flags)


SUITE_CLOSED_TESTS = ("01-chat", "02-rag-8k", "03-long-output", "04-multi-turn", "05-big-context",
                      "06-concurrency-stress")

_LOG_LATENCY_RE = re.compile(r"Average latency \((\w+)\):\s*([-\d.]+)\s*ms")
# the suite runner's log: "[10:13:22] ── END 01 (475s) ──", one line per test it ran
_RUNNER_END_RE = re.compile(r"END (0[1-6]) \((\d+)s\)")


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)```", re.S)

# vllm bench serve defaults (vLLM 0.2x), used where the command does not give a value.
_SERVE_DEFAULTS = {
    "backend": "openai", "endpoint": "/v1/completions", "model": None, "num_prompts": 1000,
    "request_rate": math.inf, "burstiness": 1.0, "max_concurrency": None, "seed": 0,
    "dataset_name": "random", "dataset_path": None, "ignore_eos": False, "sharegpt_output_len": None,
    "disable_shuffle": False, "no_oversample": False,
    "ramp_up_strategy": None, "ramp_up_start_rps": None, "ramp_up_end_rps": None, "probe_request_rate": 0.0,
    "num_warmups": 0, "ready_check_timeout_sec": 0,
}
_RANDOM_DEFAULTS = {"random_input_len": 1024, "random_output_len": 128,
                    "random_range_ratio": 0.0, "random_prefix_len": 0}
_PREFIX_REPETITION_DEFAULTS = {"prefix_repetition_prefix_len": 256, "prefix_repetition_suffix_len": 256,
                               "prefix_repetition_num_prefixes": 10, "prefix_repetition_output_len": 128}
_SERVE_TYPES = {"num_prompts": int, "max_concurrency": int, "seed": int, "random_input_len": int,
                "sharegpt_output_len": int, "random_output_len": int, "random_prefix_len": int, "request_rate": float,
                "burstiness": float, "random_range_ratio": float, "ramp_up_start_rps": float,
                "ramp_up_end_rps": float, "probe_request_rate": float, "num_warmups": int,
                "ready_check_timeout_sec": int,
                **dict.fromkeys(_PREFIX_REPETITION_DEFAULTS, int)}


def _command_text(text: str) -> str | None:
    """The shell command in a suite report's '## Command' fence, or the text itself."""
    if "```" not in text:
        return text
    sect = text.split("## Command", 1)[1] if "## Command" in text else text
    m = _FENCE_RE.search(sect)
    return m.group(1) if m else None


def _options(tokens: list[str]) -> dict[str, list[str]]:
    """'--name a b' / '--name=a' -> {'name': ['a','b']}; a bare flag -> {'name': []}."""
    opts: dict[str, list[str]] = {}
    cur = None
    for t in tokens:
        if t.startswith("--"):
            name, eq, val = t[2:].partition("=")
            cur = name.replace("-", "_")
            opts[cur] = [val] if eq else []
        elif cur is not None:
            opts[cur].append(t)
    return opts


def _typed(key: str, raw, src) -> object:
    if raw is None or raw in ("None", "null"):
        return None
    if isinstance(raw, str):
        raw = raw.strip("'\"")
    if key in ("ignore_eos", "disable_shuffle", "no_oversample"):
        return raw not in (False, "False", "false", "0")
    typ = _SERVE_TYPES.get(key)
    if typ is None:
        return raw
    try:
        return typ(float(raw)) if typ is int else typ(raw)
    except (TypeError, ValueError):
        raise file_error(src, f"bad value {raw!r} for {key}") from None


def serve_params(raw: dict, src) -> dict:
    """Normalise vllm bench serve settings to python values, filling vLLM's defaults.

    random_* only mean something for the random dataset: for others they are None so that no caller
    mistakes vLLM's unused defaults for the lengths that ran; prefix_repetition_* come with that dataset only.
    """
    p = {k: _typed(k, raw[k], src) if k in raw else v for k, v in _SERVE_DEFAULTS.items()}
    for k, v in _RANDOM_DEFAULTS.items():
        p[k] = (_typed(k, raw[k], src) if k in raw else v) if p["dataset_name"] == "random" else None
    if p["dataset_name"] == "prefix_repetition":
        p |= {k: _typed(k, raw[k], src) if k in raw else v for k, v in _PREFIX_REPETITION_DEFAULTS.items()}
    return p


def parse_command(cmd: str) -> dict:
    """Settings of a llama-benchy or vllm bench serve command line (or a report's Command block).

    llama-benchy -> tool, version, model, pp, tg, depth, concurrency (lists), runs, latency_mode,
    enable_prefix_caching. vllm bench serve -> tool plus the keys of _SERVE_DEFAULTS and the
    random_* lengths.
    """
    body = _command_text(cmd)
    if body is None:
        raise file_error(None, "no command block found")
    try:
        tokens = shlex.split(body.replace("\\\n", " "))
    except ValueError as e:
        raise file_error(None, f"cannot split command ({e})") from None
    benchy = next((i for i, t in enumerate(tokens) if t.startswith("llama-benchy")), None)
    serve = next((i for i in range(len(tokens) - 1) if tokens[i] == "bench" and tokens[i + 1] == "serve"), None)
    if benchy is not None:
        o = _options(tokens[benchy + 1:])
        ints = lambda k, d: [int(x) for x in o[k]] if o.get(k) else d  # noqa: E731
        try:
            return {
                "tool": "llama-benchy",
                "version": tokens[benchy].partition("==")[2] or None,
                "model": (o.get("model") or [None])[0],
                "pp": ints("pp", []), "tg": ints("tg", []),
                "depth": ints("depth", [0]), "concurrency": ints("concurrency", [1]),
                "runs": int(o["runs"][0]) if o.get("runs") else 3,
                "latency_mode": o["latency_mode"][0] if o.get("latency_mode") else "api",
                "enable_prefix_caching": "enable_prefix_caching" in o,
            }
        except ValueError as e:
            raise file_error(None, f"bad llama-benchy argument ({e})") from None
    if serve is not None:
        o = _options(tokens[serve + 2:])
        raw = {k: (v[0] if v else "True") for k, v in o.items()}
        return {"tool": "vllm bench serve", **serve_params(raw, None)}
    raise file_error(None, "neither a llama-benchy nor a vllm bench serve command")


def _namespace_params(line: str, src) -> dict:
    """vllm bench serve settings from the 'Namespace(...)' line it logs at start."""
    keys = list(_SERVE_DEFAULTS) + list(_RANDOM_DEFAULTS)
    raw = {}
    for k in keys:
        m = re.search(rf"(?:^|[(,\s]){k}=('[^']*'|[^,)]+)", line)
        if m:
            raw[k] = m.group(1)
    return serve_params(raw, src)


# ---------------------------------------------------------------------------------------------
# vllm bench serve results
# ---------------------------------------------------------------------------------------------

# the result's figures (latencies, throughputs, counts)
_FIGURE_RE = re.compile(r"(_ms|_throughput|_tokens|_requests|_per_s)$|^(completed|failed|duration)$")
_REQUIRED_SERVE = ("completed", "duration", "total_input_tokens", "total_output_tokens",
                   "request_throughput", "output_throughput", "mean_ttft_ms")
# what a test that failed on the box can leave as its result: the suite writes `{}` (as its 11-rate-sweep.json)
EMPTY_RESULT = "an empty result object ({})"
REPORT_CUT = "its 'Serving Benchmark Result' block is cut off (no closing '=====' line)"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_serve(d: dict, src) -> dict:
    if not isinstance(d, dict):
        raise file_error(src, f"expected a JSON object, got {type(d).__name__}")
    if not d:
        raise file_error(src, EMPTY_RESULT)
    d = dict(d)
    if "request_goodput:" in d:           # legacy benchmark_serving.py typo key
        d.setdefault("request_goodput", d.pop("request_goodput:"))
    for k in _REQUIRED_SERVE:
        if k not in d:
            raise file_error(src, f"missing key {k!r}")
        if not _number(d[k]):
            raise file_error(src, f"key {k!r} is not a number: {d[k]!r}")
    for k, v in d.items():  # the other figures may be absent or null, never of another type
        if v is not None and _FIGURE_RE.search(k) and not _number(v):
            raise file_error(src, f"key {k!r} is not a number: {v!r}")
    if d.get("request_rate") in ("inf", "Infinity"):
        d["request_rate"] = math.inf
    return d


def parse_bench_serve_json(path_or_dict) -> dict:
    """A vllm bench serve result JSON as a dict (keys as vLLM writes them), validated."""
    if isinstance(path_or_dict, dict):
        return _check_serve(path_or_dict, "<dict>")
    path = Path(path_or_dict)
    return _check_serve(load_json(path), path)


_SERVE_LABELS = {
    "Successful requests": ("completed", int),
    "Failed requests": ("failed", int),
    "Maximum request concurrency": ("max_concurrency", int),
    "Request rate configured (RPS)": ("request_rate", float),
    "Benchmark duration (s)": ("duration", float),
    "Total input tokens": ("total_input_tokens", int),
    "Total generated tokens": ("total_output_tokens", int),
    "Request throughput (req/s)": ("request_throughput", float),
    "Request goodput (req/s)": ("request_goodput", float),
    "Output token throughput (tok/s)": ("output_throughput", float),
    "Peak output token throughput (tok/s)": ("max_output_tokens_per_s", float),
    "Peak concurrent requests": ("max_concurrent_requests", int),
    "Total token throughput (tok/s)": ("total_token_throughput", float),
    # the server's speculative-decoding counters over the run (from its /metrics)
    "Acceptance rate (%)": ("spec_decode_acceptance_rate", float),
    "Acceptance length": ("spec_decode_acceptance_length", float),
    "Drafts": ("spec_decode_num_drafts", int),
    "Draft tokens": ("spec_decode_draft_tokens", int),
    "Accepted tokens": ("spec_decode_accepted_tokens", int),
    # --probe-request-rate's one-token requests beside the load
    "Probe requests completed": ("probe_completed", int),
    "Probe requests failed": ("probe_failed", int),
    "Median probe E2EL (ms)": ("probe_median_e2el_ms", float),
    "P99 probe E2EL (ms)": ("probe_p99_e2el_ms", float),
    "Max probe E2EL (ms)": ("probe_max_e2el_ms", float),
}
_STAT_RE = re.compile(r"^(Mean|Median|Std|P(\d+(?:\.\d+)?)) (TTFT|TPOT|ITL|E2EL) \(ms\)$")


def parse_bench_serve_text(text: str, path=None) -> dict:
    """The first printed 'Serving Benchmark Result' block, keyed like the result JSON.

    The printout is rounded to 2 decimals and has no std_* lines; everything else matches.
    """
    start = text.find("Serving Benchmark Result")
    if start < 0:
        raise file_error(path, "no 'Serving Benchmark Result' block found")
    out: dict = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("=="):
            break
        label, sep, value = line.partition(":")
        if not sep:
            continue                       # section rulers like '----Time to First Token----'
        label, value = label.strip(), value.strip()
        if label in _SERVE_LABELS:
            key, typ = _SERVE_LABELS[label]
        elif (m := _STAT_RE.match(label)):
            stat = m.group(1).lower() if m.group(2) is None else f"p{m.group(2)}"
            key, typ = f"{stat}_{m.group(3).lower()}_ms", float
        else:
            continue
        try:
            out[key] = typ(float(value)) if typ is int else typ(value)
        except ValueError:
            raise file_error(path, f"bad number {value!r} for {label!r}") from None
    else:  # the text stops inside the block: its last number may be cut
        raise file_error(path, REPORT_CUT)
    return _check_serve(out, path)


# ---------------------------------------------------------------------------------------------
# suite run folders
# ---------------------------------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\*\*(Model|Profile|Hardware):\*\*\s*(\S.*?)\s*$", re.M)


def is_suite_dir(p: Path) -> bool:
    """A spark-bench run folder: its meta.json, or (where that was lost) the suite's numbered reports."""
    return (p / "meta.json").is_file() or (p.is_dir() and any(p.glob("[01][0-9]-*.md")))


def _report_header(run_dir: Path) -> dict:
    """Model, profile and hardware from the header the suite writes atop each report ({} if none has it).
    Only the closed-loop reports are opened: calibration reads no open-loop file."""
    for md in sorted(run_dir.glob("0[1-6]-*.md")):
        found = dict(_HEADER_RE.findall(text_if_any(md)[:2000]))
        if found.get("Model"):
            return found
    return {}


def load_meta(run_dir) -> dict:
    """Server settings of a suite run from its meta.json. Without one, the model and profile come from
    the reports' headers, the settings are vLLM's defaults, and `skipped_tests` says so."""
    run_dir = Path(run_dir)
    path = run_dir / "meta.json"
    if not path.is_file():
        header = _report_header(run_dir)
        if not header:
            raise file_error(path, "file not found, and no report names the model")
        return {"model": header["Model"], "weights_profile": header.get("Profile"), "hardware": header.get("Hardware"),
                "unmodelled_flags": [], "extra_args": "",
                "skipped_tests": ["meta.json: missing (model and profile from the reports' headers; server "
                                  "settings at vLLM's defaults)"]}
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise file_error(path, "expected a JSON object")
    sc = meta.get("server_config") or {}
    if not isinstance(sc, dict):
        raise file_error(path, f"server_config is {type(sc).__name__}, expected a JSON object")
    extra = sc.get("extra_vllm_args") or ""
    if isinstance(extra, list) and all(isinstance(a, str) for a in extra):
        extra = shlex.join(extra)  # the command line as its argv
    elif not isinstance(extra, str):
        raise file_error(path, f"extra_vllm_args is {type(extra).__name__}, expected the command line as a string")
    spec = speculative_config(extra, path)
    if spec is None and (beside := sc.get("speculative_config")):  # a runner that keeps it with the other settings
        spec = speculative_config(f"--speculative-config {beside if isinstance(beside, str) else json.dumps(beside)}",
                                  path)

    conflicts = []

    def setting(key: str, switch: bool = False):
        """The flag's value on the command line, else server_config's (None: vLLM's default applies).
        The command line wins where both say: a runner's extra arguments follow the flags it writes from
        its settings, and vLLM's parser keeps the last. Where they disagree, the origin says so."""
        def read(v):
            if switch:
                return server_switch(key, v, path)
            return v if key == "kv_cache_dtype" else server_number(key, v, path)
        given = sc.get(key)
        flag = switch_flag(key, extra) if switch else flag_value(extra, "--" + key.replace("_", "-"))
        ours = read(given)
        if flag is None:
            return ours
        theirs = read(flag)  # None where the flag leaves it to vLLM (--max-model-len auto): that is the setting
        if ours is not None and ours != theirs:
            conflicts.append(f"{key}: server_config has {given!r}, the command line {flag!r}; the command line's "
                             "is taken (vLLM keeps the last flag, and extra arguments come after the runner's)")
        return theirs

    return {
        "model": meta.get("model") or _report_header(run_dir).get("Model"),
        "served_name": meta.get("served_name"),
        "weights_profile": meta.get("profile"),
        "vllm_version": meta.get("vllm_version_reported"),
        "vllm_image": meta.get("vllm_image"),
        "hardware": meta.get("hardware"),
        "max_model_len": setting("max_model_len"),
        "gpu_memory_utilization": setting("gpu_memory_utilization"),
        "kv_cache_dtype": setting("kv_cache_dtype"),
        "enable_prefix_caching": setting("enable_prefix_caching", switch=True),
        "async_scheduling": setting("async_scheduling", switch=True),
        "max_num_batched_tokens": setting("max_num_batched_tokens"),
        "max_num_seqs": setting("max_num_seqs"),
        "speculative_config": spec,
        "unmodelled_flags": unmodelled_flags(extra),
        "setting_conflicts": conflicts,
        "extra_args": extra,
    }


def _source_name(run_dir: Path) -> str:
    # Suite layout: results/<family>/<model-dir>/<profile>/
    if is_suite_dir(run_dir):
        return f"spark-bench/{run_dir.parent.name}/{run_dir.name}"
    return str(run_dir)


def _check_dir(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise file_error(run_dir, "no such run directory")
    return run_dir


def _closed_run_from_md(md: Path, source: str, server: dict) -> ClosedRun:
    text = read_text(md)
    rows, model, footer = parse_benchy(text, md)
    cmd = {}
    if "## Command" in text:
        try:
            cmd = parse_command(text)
        except ImporterError as e:
            raise file_error(md, str(e).partition(": ")[2]) from None
    latency_ms = None
    log = md.with_suffix(".log")
    if log.is_file():
        if (m := _LOG_LATENCY_RE.search(read_text(log))):
            latency_ms = float(m.group(2))
    return ClosedRun(
        source=source, test=md.stem, model=model or cmd.get("model"),
        runs=cmd.get("runs"), latency_mode=footer.get("latency_mode") or cmd.get("latency_mode"),
        latency_ms=latency_ms, version=footer.get("version") or cmd.get("version"),
        rows=rows, server=server, path=str(md), cut=footer.get("cut"),
        prefix_caching=bool(footer.get("prefix_caching") or cmd.get("enable_prefix_caching")))


def cut_note(md: Path, run: ClosedRun) -> str:
    n = len(run.rows)
    return f"the rest of {md.name} after its first {n} shape{'s' if n != 1 else ''} (the table is cut at {run.cut})"


def closed_runs(run_dir) -> list[ClosedRun]:
    """The suite's closed-loop tests 01–06. Opens only meta.json and 01–06 .md/.log files."""
    run_dir = _check_dir(run_dir)
    server = load_meta(run_dir)
    source = _source_name(run_dir)
    mds = sorted(run_dir.glob("0[1-6]-*.md"))
    if not mds:
        raise file_error(run_dir, "no closed-loop reports (01-*.md … 06-*.md)")
    runs, skipped = [], []
    for md in mds:
        try:
            run = _closed_run_from_md(md, source, server)
        except ImporterError as e:
            # a test that failed on the box leaves a report without a table, or an empty file
            why = str(e).partition(f"{md}: ")[2]
            # (or it ends inside the table's first row)
            if not (why in (NO_TABLE, NO_ROWS, "empty file") or why.startswith(f"{NO_ROWS} before its cut ")):
                raise
            skipped.append(f"{md.name}: {why} (the test failed on the box?)")
            continue
        if not run.rows:
            skipped.append(f"{md.stem}: an empty results table")
            continue
        if run.cut:
            skipped.append(cut_note(md, run))
        runs.append(run)
    have = {md.name[:2] for md in mds}
    skipped += [f"{t}: no report" for t in SUITE_CLOSED_TESTS if t[:2] not in have]
    walls = closed_test_walls(run_dir)
    for run in runs:
        run.wall_s = walls.get(run.test[:2])
    if not runs:
        raise file_error(run_dir, "no closed-loop results: " + "; ".join(skipped))
    if skipped:  # calibration says what it went without
        server["skipped_tests"] = server.get("skipped_tests", []) + skipped
    return runs


def closed_test_walls(run_dir: Path) -> dict[str, float]:
    """Seconds each closed-loop test (01-06) took, from the suite runner's `_runner.log`; {} without it.

    Only the lines of tests 01-06 are read. A test run twice keeps its longest time (a rerun that was
    skipped logs 0 s). The times only refine the fit, so a log that cannot be read counts as none."""
    log = run_dir / "_runner.log"
    try:
        text = read_text(log) if log.is_file() else ""
    except ImporterError:
        return {}
    walls: dict[str, float] = {}
    for m in _RUNNER_END_RE.finditer(text):
        walls[m.group(1)] = max(walls.get(m.group(1), 0.0), float(m.group(2)))
    return {k: v for k, v in walls.items() if v > 0}


_OPEN_RE = re.compile(r"^(0[7-9]|10)-.+\.json$")
_SWEEP_RE = re.compile(r"^11-rate-sweep-([0-9.]+|inf)\.json$")
_NAMESPACE_RE = re.compile(r"^Namespace\(.*\)\s*$", re.M)


def _split_result(d: dict) -> tuple[dict, dict | None]:
    arrays = {k: d[k] for k in DETAILED_KEYS if k in d}
    result = {k: v for k, v in d.items() if k not in DETAILED_KEYS and k not in ("generated_texts", "errors")}
    return result, arrays or None


def _log_runs(log: Path) -> dict[str, tuple[dict, str]]:
    """result_filename -> (settings, what the run printed), per Namespace(...) line of a vllm bench serve log."""
    out = {}
    text = text_if_any(log)
    if text:
        found = list(_NAMESPACE_RE.finditer(text))
        for i, m in enumerate(found):
            line = m.group(0)
            name = re.search(r"result_filename='([^']*)'", line)
            printed = text[m.end():found[i + 1].start() if i + 1 < len(found) else len(text)]
            out[name.group(1) if name else ""] = (_namespace_params(line, log), printed)
    return out


def _log_params(log: Path) -> dict[str, dict]:
    """result_filename -> settings, from each Namespace(...) line of a vllm bench serve log."""
    return {k: params for k, (params, _) in _log_runs(log).items()}


def _open_run(js: Path, test: str, params: dict | None, source: str, server: dict) -> OpenRun:
    data = parse_bench_serve_json(js)
    result, detailed = _split_result(data)
    from_cmd = params is not None
    params = dict(params) if from_cmd else serve_params({"dataset_name": "unknown"}, js)
    # The result JSON records what actually ran; a command that disagrees means mixed-up files.
    for k in ("num_prompts", "request_rate", "burstiness", "max_concurrency", "backend", *RAMP_KEYS):
        if k in data:
            v = _typed(k, data[k], js)
            if from_cmd and k != "backend" and params.get(k) != v:
                raise file_error(js, f"{k} is {v!r} but the command says {params.get(k)!r}")
            params[k] = v
    return OpenRun(source=source, test=test, path=str(js), dataset=params["dataset_name"] or "unknown",
                   params=params, result=result, detailed=detailed, server=server)


def _md_params(md: Path) -> dict | None:
    return _command_params(text_if_any(md), md)


def _command_params(text: str, md: Path) -> dict | None:
    """The vllm bench serve command of a test's report (its `## Command` section), as settings."""
    if "## Command" not in text:
        return None
    try:
        p = parse_command(text)
    except ImporterError as e:
        raise file_error(md, str(e).partition(": ")[2]) from None
    if p.pop("tool") != "vllm bench serve":
        return None
    return p


def open_runs(run_dir) -> list[OpenRun]:
    """The suite's open-loop tests: 07–10 one each, 11-rate-sweep one per rate step."""
    run_dir = _check_dir(run_dir)
    server = load_meta(run_dir)
    source = _source_name(run_dir)
    runs: list[OpenRun] = []
    skipped: list[str] = []

    def add(js: Path | None, test: str, params: dict | None, printed: tuple[Path, str]) -> None:
        problem = f"{test}: no result JSON and no printed report"
        if js is not None:
            try:
                runs.append(_open_run(js, test, params, source, server))
                return
            except ImporterError as e:
                # a test that failed on the box leaves an empty or cut-off result: the others still validate
                if not any(w in str(e) for w in ("empty file", "truncated JSON", EMPTY_RESULT)):
                    raise
                problem = f"{js.name}: {str(e).partition(': ')[2]}"
        where, text = printed
        if "Serving Benchmark Result" not in text:
            skipped.append(f"{problem} (the test failed on the box?)")
            return
        # the report the run printed holds the same figures, rounded to 0.01, without per-request data
        try:
            result = parse_bench_serve_text(text, where)
        except ImporterError as e:
            if not str(e).endswith(REPORT_CUT):
                raise
            lacking = problem if js is not None else f"{test}: no result JSON"
            skipped.append(f"{lacking}; {where.name}: {REPORT_CUT} (the test failed on the box?)")
            return
        params = dict(params) if params else serve_params({"dataset_name": "unknown"}, where)
        runs.append(OpenRun(source=source, test=test, path=str(where), dataset=params["dataset_name"] or "unknown",
                            params=params, result=result, detailed=None, server=server))

    jsons = {p.stem: p for p in run_dir.glob("*.json") if _OPEN_RE.match(p.name)}
    reports = {p.stem for p in run_dir.glob("*") if p.suffix in (".md", ".log") and _OPEN_RE.match(p.stem + ".json")}
    for stem in sorted(set(jsons) | reports):
        md = run_dir / f"{stem}.md"
        text = text_if_any(md)
        params, printed = _command_params(text, md), (md, text)
        if params is None or "Serving Benchmark Result" not in text:  # the log has what the report lacks
            log = run_dir / f"{stem}.log"
            logged_params, logged_text = _log_runs(log).get(f"{stem}.json", (None, ""))
            params = params or logged_params
            if "Serving Benchmark Result" not in text:
                printed = (log, logged_text)
        add(jsons.get(stem), stem, params, printed)
    sweep = {m.group(1): p for p in run_dir.glob("11-rate-sweep-*.json") if (m := _SWEEP_RE.match(p.name))}
    # 11-rate-sweep.md holds only the summary; each step's settings (and printed report) are in the log
    log = run_dir / "11-rate-sweep.log"
    logged = _log_runs(log)
    steps = {m.group(1) for name in logged if (m := _SWEEP_RE.match(name))}
    if sweep or steps:
        base = _md_params(run_dir / "11-rate-sweep.md")
        for rate in sorted(set(sweep) | steps, key=float):
            params, text = logged.get(f"11-rate-sweep-{rate}.json", (None, ""))
            add(sweep.get(rate), f"11-rate-sweep@{rate}", params or base, (log, text))
    if skipped and not runs:
        raise file_error(run_dir, "no open-loop results: " + "; ".join(skipped))
    if skipped:  # validation says what it went without
        server["skipped_tests"] = server.get("skipped_tests", []) + skipped
    return runs


def load_source(path) -> list[ClosedRun | OpenRun]:
    """Whatever `path` is: suite run dir, llama-benchy .md, vllm bench serve .json, capsim run dir."""
    p = Path(path)
    if p.is_dir():
        if (p / "run.json").is_file():
            raise file_error(p, "capsim run folders are read by measure.runfiles")
        if is_suite_dir(p):
            return [*closed_runs(p), *open_runs(p)]
        raise file_error(p, "not a suite run folder (no meta.json nor numbered reports) nor a capsim run folder (no run.json)")
    if not p.exists():
        raise file_error(p, "file not found")
    server = load_meta(p.parent) if (p.parent / "meta.json").is_file() else {}
    source = _source_name(p.parent)
    if p.suffix == ".md":
        text = read_text(p)
        if find_table(text) is None and "Serving Benchmark Result" in text:
            # A vllm bench serve report without its JSON: only the rounded printout.
            result = parse_bench_serve_text(text, p)
            params = _md_params(p) or serve_params({"dataset_name": "unknown"}, p)
            return [OpenRun(source=source, test=p.stem, path=str(p), dataset=params["dataset_name"],
                            params=params, result=result, detailed=None, server=server)]
        run = _closed_run_from_md(p, source, server)
        if run.cut:
            server["skipped_tests"] = server.get("skipped_tests", []) + [cut_note(p, run)]
        return [run]
    if p.suffix == ".json":
        m = _SWEEP_RE.match(p.name)
        params = (_log_params(p.parent / "11-rate-sweep.log").get(p.name) if m
                  else _md_params(p.with_suffix(".md")) or _log_params(p.with_suffix(".log")).get(p.name))
        test = f"11-rate-sweep@{m.group(1)}" if m else p.stem
        return [_open_run(p, test, params, source, server)]
    raise file_error(p, "unknown source type (expected a run folder, .md or .json)")
