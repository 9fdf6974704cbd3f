"""`capsim calibrate` and `capsim validate`: thin shells over calibrate.fit and calibrate.validate."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from capsim.errors import USER_ERRORS, check_writable, user_errors
from capsim.options import MultiValue, typed
from simulator.profile import load_profile

from .fit import fit_closed
from .live import live_limit_options, run_calibrate_live, run_validate_live
from .files import ImporterError
from .sources import load_closed, load_open, server_key
from .store import stored_profile_path
from .validate import format_validation, noise_floor, validate


def validate_progress(clock=time.monotonic):
    """validate's progress line: tests predicted, the last one, time spent and left at the pace so far."""
    from measure.progress import fmt_clock

    t0 = clock()

    def told(i: int, n: int, run) -> None:
        spent = clock() - t0
        click.echo(f"\r  predicted {i}/{n} tests ({run.test}), {fmt_clock(spent)} elapsed, ETA "
                   f"{fmt_clock(spent / i * (n - i))}\x1b[K", nl=False, err=True)
    return told


def refuse_live_only_options(live_url) -> None:
    """Options whose help begins "--live:" do nothing without --live: named without it, they are a mistake."""
    if live_url:
        return
    ctx = click.get_current_context()
    given = ["/".join(p.opts[-1:] + p.secondary_opts) for p in ctx.command.params if isinstance(p, click.Option)
             and (p.help or "").startswith("--live:") and typed(ctx, p.name)]
    if given:
        raise click.UsageError(f"{', '.join(given)}: only with --live URL (a run on a server now)")


@click.command("calibrate")
@click.argument("sources", nargs=-1)
@click.option("-o", "--output", "out_path", default=None,
              help="Profile JSON to write (default offline: a file of these SOURCES under "
                   "~/.cache/capsim/profiles, which `capsim validate SOURCES` then uses; with --live also "
                   "RUN_DIR/profile.json).")
@click.option("--name", default=None, help="Profile name (default: the model's).")
@click.option("--max-evals", type=int, default=None,
              help="least_squares function evaluations (default 30 offline, 150 live).")
@click.option("--json", "as_json", is_flag=True, help="Print residuals as JSON.")
@click.option("--live", "live_url", default=None, metavar="URL",
              help="Measure a closed-loop grid on this server within --budget, then fit (instead of SOURCES).")
@click.option("--budget", default="10m", show_default=True, help="--live: time budget of the grid (10m, 90s, ...).")
@click.option("--run-dir", default=None, help="--live: folder for the measured runs (default runs/calibrate-live-DATE).")
@click.option("--tg", type=click.IntRange(min=1), default=None,
              help="--live: generated tokens per request of the grid (default 32).")
@click.option("--pp-max", type=click.IntRange(min=16), default=None,
              help="--live: largest prompt of the grid (default: half the context).")
@click.option("--runs", type=int, default=1, show_default=True,
              help="--live: runs of every grid test (2 on a noisy server; the budget then buys fewer tests).")
@click.option("--plot", "plot_path", default=None, metavar="CARD.PNG",
              help="Draw the fitted profile's card with the measured points (as `capsim profile show --plot`).")
@live_limit_options
def calibrate_cmd(sources, out_path, name, max_evals, as_json, live_url, budget, run_dir, tg, pp_max, runs,
                  plot_path=None, **live_kw):
    """Fit a profile from closed-loop runs (suite folders, capsim runs, llama-benchy tables, or 'seed'),
    or measure them first on a live server (--live URL)."""
    if max_evals is not None and max_evals < 1:
        raise click.BadParameter(f"must be >= 1, got {max_evals}", param_hint="--max-evals")
    refuse_live_only_options(live_url)
    check_writable(out_path, "-o/--output")  # before any work is done
    out_given = bool(out_path)
    if plot_path:
        from .plots import check_plot_path
        with user_errors():
            check_plot_path(plot_path)
    if live_url:
        if sources:
            raise click.UsageError("give either SOURCES or --live URL, not both")
        prof, d = run_calibrate_live(live_url, out_path, budget, run_dir, name, max_evals or 150, as_json, tg=tg,
                                     pp_max=pp_max, runs=runs, **live_kw)
        if plot_path:
            _plot_card(prof, [str(d)], plot_path)
            if not as_json:
                click.echo(f"wrote {plot_path} (the profile card)")
        return
    if not sources:
        raise click.UsageError("no SOURCES (closed-loop runs) and no --live URL")
    if not out_path:  # `capsim calibrate RUN && capsim validate RUN` validates this profile
        out_path = str(stored_profile_path(list(sources)))
        try:
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"cannot create {Path(out_path).parent} for the profile ({e.strerror}); "
                                       "give -o/--output") from None
        check_writable(out_path, "-o/--output")
    max_evals = max_evals or 30
    with user_errors():
        runs = load_closed(list(sources))
        if not runs:
            raise ImporterError("no closed-loop runs in the sources given")
        keys = {server_key(r) for r in runs}
        if len(keys) > 1:
            raise ImporterError(f"sources mix {len(keys)} server configurations; calibrate one box at a time")
        progress = None if as_json else (lambda i, loss: click.echo(f"\r  fitting: evaluation {i}, loss {loss:.4f}",
                                                                     nl=False, err=True))
        fr = fit_closed(runs, max_nfev=max_evals, progress=progress)
    if progress:
        click.echo("", err=True)
    prof = fr.profile
    if name:
        prof.name = name
    prof.save(out_path)
    if plot_path:
        _plot_card(prof, runs, plot_path)
    if as_json:
        click.echo(json.dumps({"profile": out_path, "seconds": fr.seconds, "evaluations": fr.evaluations,
                               "prompt_scale": fr.prompt_scale, "engine_limits_origin": fr.origin,
                               "residuals": [r.to_json() for r in fr.residuals]}, indent=2))
        return
    click.echo(f"{'run':<24} {'shape':<26} {'metric':<20} {'measured':>10} {'simulated':>10} {'error':>8}")
    for r in fr.residuals:
        click.echo(f"{r.test:<24} {r.shape:<26} {r.metric:<20} {r.measured:>10.2f} {r.simulated:>10.2f} {r.error_pct:>+7.1f}%")
    import numpy as np
    errs = [abs(r.error_pct) for r in fr.residuals]
    click.echo(f"\nmedian |error| {np.median(errs):.1f}% over {len(errs)} figures; fit took {fr.seconds:.1f} s "
               f"({fr.evaluations} simulations)")
    click.echo(f"prompt-token scale (server tokens per requested token): {fr.prompt_scale:.3f}")
    for k, v in fr.origin.items():
        click.echo(f"{k}: {v}")
    click.echo("fitted: " + ", ".join(f"{k}={v:.4g}" for k, v in prof.provenance["fitted_parameters"].items()))
    bw, roof = getattr(prof.step_model, "bw_weights", None), prof.model.get("roofline_bw")
    if bw and roof:
        click.echo(f"effective memory bandwidth {bw / 1e9:.0f} GB/s: {100 * bw / roof:.0f}% of the box's "
                   f"{roof / 1e9:.0f} GB/s roofline")
    if prof.uncertainty is not None:
        click.echo(f"model misfit on these runs (log RMS): decode {100 * prof.uncertainty.model_sigma:.1f}%, prefill "
                   f"{100 * prof.uncertainty.model_sigma_prefill:.1f}%; validate's and plan's bands carry it with the "
                   "parameters' covariance")
    click.echo(f"wrote {out_path}" + ("" if out_given else f" (`capsim validate {' '.join(sources)}` uses it)"))
    if plot_path:
        click.echo(f"wrote {plot_path} (the profile card)")


def _plot_card(prof, runs, plot_path: str) -> None:
    """calibrate --plot: the fitted profile's card with the measured closed-loop points
    (runs: ClosedRuns, or source paths to load them from; unreadable ones leave the points out)."""
    from .plots import plot_profile_card
    if runs and isinstance(runs[0], str):
        try:
            runs = load_closed(runs)
        except USER_ERRORS:
            runs = None
    with user_errors():
        plot_profile_card(prof, runs, plot_path)


@click.command("validate")
@click.argument("sources", nargs=-1)
@click.option("--profile", "profile_path", default=None,
              help="Profile to validate (default: the one `capsim calibrate SOURCES` wrote without -o, else the "
                   "shipped Spark profile; required with --live).")
@click.option("--replications", type=int, default=None, help="Simulations per run (default 10 offline, 5 live).")
@click.option("--noise-floor", "floor_sources", cls=MultiValue, item=click.STRING, spaced=False,
              help="A second measurement of the same tests; its differences are shown as the noise floor.")
@click.option("--tokenizer", default=None, help="tokenizer.json for ShareGPT prompt lengths.")
@click.option("--plot", "plot_path", default=None, help="Write measured-against-predicted plot (PNG).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--live", "live_url", default=None, metavar="URL",
              help="Run open-loop loads on this server now and compare them with the profile's predictions.")
@click.option("--loads", "loads_path", default=None,
              help="--live: JSON list of loads (LiveLoad fields); default: the seed's H and J scaled to the server.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True, max=1e9), default=None,
              help="--live: multiply the seed loads' request rates by this (default: the seed box's single-request "
                   "latency over this box's, so the loads are as heavy relative to the box).")
@click.option("--length-scale", type=click.FloatRange(min=0, min_open=True, max=1e9), default=None,
              help="--live: multiply the seed loads' token lengths by this (default: fit 45 % of max_model_len).")
@click.option("--budget", default="10m", show_default=True, help="--live: rough time budget for all loads.")
@click.option("--repeat", is_flag=True, help="--live: run every load twice; the second run gives the noise floor.")
@click.option("--retries", type=int, default=1, show_default=True,
              help="--live: run a load again (up to this many times) when the client fell behind its arrival "
                   "schedule; the set-aside runs are kept and listed.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="completions", show_default=True,
              help="--live: API the default loads use.")
@click.option("--run-dir", default=None, help="--live: folder for the measured runs.")
@live_limit_options
def validate_cmd(sources, profile_path, replications, floor_sources, tokenizer, plot_path, as_json, live_url, loads_path,
                 scale, length_scale, budget, repeat, retries, endpoint, run_dir, **live_kw):
    """Predict open-loop runs (vllm bench serve) the profile never saw and score the predictions;
    with --live URL, run the open-loop loads on a server now."""
    if replications is not None and replications < 1:
        raise click.BadParameter(f"must be >= 1, got {replications}", param_hint="--replications")
    refuse_live_only_options(live_url)
    if plot_path:  # before any work is done
        from .plots import check_plot_path
        with user_errors():
            check_plot_path(plot_path)
    if live_url:
        if sources:
            raise click.UsageError("give either SOURCES or --live URL, not both")
        if not profile_path:
            raise click.UsageError("--live needs --profile (e.g. the one calibrate --live wrote)")
        if retries < 0:
            raise click.UsageError(f"--retries must be 0 or more, not {retries}")
        lv = run_validate_live(live_url, profile_path, loads_path, scale, length_scale, budget, repeat,
                               replications or 5, run_dir, as_json, endpoint=endpoint, retries=retries, **live_kw)
        if plot_path:
            from .plots import plot_validation
            plot_validation(lv.validation, plot_path, title=f"{profile_path}: measured vs predicted (live)")
        return
    replications = replications or 10
    note = None
    if not profile_path:
        stored = stored_profile_path(list(sources) or ["seed"])
        if stored.is_file():
            profile_path = str(stored)
            note = f"profile: {stored} (calibrated from these sources)"
        elif sources != ("seed",) and sources:
            note = "profile: the shipped Spark profile (no `capsim calibrate` of these sources yet)"
    with user_errors():
        prof = load_profile(profile_path)
        runs = load_open(list(sources) or ["seed"])
        if not runs:
            raise ImporterError("no open-loop runs in the sources given")
        if not profile_path:
            mine = str(prof.model.get("name")).lower()
            other = sorted({str(r.server["model"]) for r in runs if r.server.get("model")
                            and str(r.server["model"]).lower() != mine})
            if other:  # another model's box is no prediction of this one
                raise click.UsageError(f"no calibrated profile for {', '.join(other)}: run `capsim calibrate` on these "
                                       f"sources first, or give --profile (the shipped profile is {prof.model.get('name')})")
        if note:  # once the sources read: an error stays one line
            click.echo(note, err=True)
        progress = None if as_json else validate_progress()
        v = validate(runs, prof, replications=replications, tokenizer=tokenizer, progress=progress)
        floor = noise_floor(runs, load_open(list(floor_sources))) if floor_sources else None
    if progress:
        click.echo("", err=True)
    if plot_path:
        from .plots import plot_validation
        plot_validation(v, plot_path, title=f"{prof.name}: measured vs predicted")
    if as_json:
        out = v.to_json() | {"profile": profile_path or prof.name}
        if floor:
            out["noise_floor"] = floor.families()
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(format_validation(v, floor))
