"""llama-benchy's flags on `capsim measure closed` and `capsim simulate closed`.

llama-benchy 0.4.0's config.py, mapped onto capsim's, and its --format csv
(`closed_csv`).
"""
from __future__ import annotations

import csv
import io

import click

from .options import MultiValue, OptionalValue, flag_option, note_flag


def llama_benchy_options(f):
    """llama-benchy's flags that `capsim measure closed` and `capsim simulate closed` share."""
    opts = [
        click.option("--format", "out_format", type=click.Choice(["md", "json", "csv"]), default=None,
                     help="Output as llama-benchy prints it: md (the table; default), json or csv."),
        click.option("--warmup-runs", type=click.IntRange(0, 100), default=None,
                     help="Warmup batches per test, excluded from results [default: 1, as llama-benchy's "
                          "one warmup run; 0 = --no-warmup]."),
        click.option("--exact-tg", is_flag=True,
                     help="Hold every answer to --tg tokens (min_tokens and ignore_eos in each request, "
                          "llama-benchy's flag); without it an answer may end early at the model's end of "
                          "text, as llama-benchy's do. A simulated answer runs to --tg either way."),
        click.option("--exit-on-first-fail", is_flag=True,
                     help="Stop at the first batch with a failed request and exit 1 (llama-benchy's flag)."),
        click.option("--post-run-cmd", default=None, metavar="CMD",
                     help="A shell command run after every run of every test, warmups too (llama-benchy's flag, "
                          "e.g. to reset a server's cache); one that fails is said and the benchmark goes on. "
                          "Not run by a simulation."),
        click.option("--emit-progress", default=None, metavar="PATH",
                     help="Write each measured request's progress as JSONL events to PATH, or to stdout for '-' "
                          "(the results then go to stderr), in llama-benchy's schema (its flag). A simulation "
                          "writes none."),
        click.option("--save-total-throughput-timeseries", is_flag=True,
                     help="With --format json, each run's tokens/s over time (a 1-s window at every token), as "
                          "llama-benchy writes it. A simulation names it not saved."),
        click.option("--save-all-throughput-timeseries", is_flag=True,
                     help="With --format json, each request's tokens/s over time, as llama-benchy writes it."),
        click.option("--no-cache", is_flag=True,
                     help="Send cache_prompt: false in every request, as llama-benchy does (llama.cpp's prompt "
                          "cache; vLLM ignores the field). capsim's prompts are unique either way."),
        click.option("--enable-prefix-caching", is_flag=True,
                     help="Each run of a test with --depth first sends its contexts alone (\".\" as the user's "
                          "message), then its prompts after the same contexts, which the server's prefix cache "
                          "then holds; the table adds ctx_pp and ctx_tg rows (llama-benchy's flag). A simulation "
                          "computes the cached blocks once."),
        click.option("--extra-body", cls=MultiValue, item=click.STRING, sep=None, spaced=False,
                     metavar="JSON|KEY=VALUE",
                     help="Extra fields merged into every request body: a JSON object, or llama-benchy's "
                          "key=value / key:value entries (comma-separated or repeated)."),
        click.option("--save-result", "benchy_save", cls=OptionalValue, metavar="[FILE]",
                     help="Write the --format output to FILE (llama-benchy's --save-result FILE)."),
        click.option("--served-model-name", default=None,
                     help="The model name sent in requests (default: --model), as llama-benchy."),
        *(flag_option(n, None) for n in BENCHY_NO_OP_FLAGS),
        *(flag_option(n, t, note_flag(why)) for n, (t, why) in BENCHY_NOTED_FLAGS.items()),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


# llama-benchy's flags beyond the shared ones. No-ops: capsim's prompts are sized with the server's own
# /tokenize (--adapt-prompt) and get no coherence check.
BENCHY_NO_OP_FLAGS = ("--adapt-prompt", "--no-adapt-prompt", "--skip-coherence")
BENCHY_NOTED_FLAGS = {
    "--book-url": (str, "capsim's prompts are its own pseudo-English text (measure sizes them with the server's "
                        "tokenizer)"),
    "--no-results-on-fail": (None, "taken as --exit-on-first-fail; what was measured before the failure is kept"),
}


def benchy_exit_on_first_fail(exit_on_first_fail: bool, ctx: click.Context | None = None) -> bool:
    """--exit-on-first-fail, or llama-benchy's --no-results-on-fail, which turns it on."""
    ctx = ctx or click.get_current_context()
    return exit_on_first_fail or "--no-results-on-fail" in ctx.meta.get("capsim.flag_notes", {})


def warmup_setting(no_warmup: bool, warmup_runs: int | None) -> int:
    if no_warmup and warmup_runs:
        raise click.UsageError(f"--no-warmup and --warmup-runs {warmup_runs} contradict each other")
    return 0 if no_warmup else (1 if warmup_runs is None else warmup_runs)


CSV_HEADERS = ["model", "test_name", "t_s_mean", "t_s_std", "t_s_req_mean", "t_s_req_std", "peak_ts_mean",
               "peak_ts_std", "peak_ts_req_mean", "peak_ts_req_std", "ttfr_mean", "ttfr_std", "est_ppt_mean",
               "est_ppt_std", "e2e_ttft_mean", "e2e_ttft_std"]


def closed_csv(rows, model: str) -> str:
    """llama-benchy 0.4.0's --format csv (results.py save_report) of summary.closed_report_rows."""
    from simulator.summary import closed_report_rows

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_HEADERS, lineterminator="\n")
    w.writeheader()
    for test, cols in closed_report_rows(rows):
        row = {"model": model, "test_name": test}
        for col, v in cols.items():
            row[f"{col}_mean"], row[f"{col}_std"] = (None, None) if v is None else (v[0], v[1])
        w.writerow(row)
    return buf.getvalue().rstrip("\n")
