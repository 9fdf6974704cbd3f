"""`capsim calibrate` and `capsim validate`: thin shells over calibrate.fit and calibrate.validate."""
from __future__ import annotations

import json
import sys

import click

from simulator.profile import load_profile

from .fit import fit_closed
from .importers import ImporterError
from .sources import load_closed, load_open, server_key
from .validate import format_validation, noise_floor, validate

USER_ERRORS = (ImporterError, ValueError, OSError)


def _fail(e: Exception):
    raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@click.command("calibrate")
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--output", "out_path", required=True, help="Profile JSON to write.")
@click.option("--name", default=None, help="Profile name (default: the model's).")
@click.option("--max-evals", type=int, default=30, show_default=True, help="least_squares iterations (function evaluations).")
@click.option("--json", "as_json", is_flag=True, help="Print residuals as JSON.")
def calibrate_cmd(sources, out_path, name, max_evals, as_json):
    """Fit a profile from closed-loop runs (suite folders, capsim runs, llama-benchy tables, or 'seed')."""
    try:
        runs = load_closed(list(sources))
        if not runs:
            raise ImporterError("no closed-loop runs in the sources given")
        keys = {server_key(r) for r in runs}
        if len(keys) > 1:
            raise ImporterError(f"sources mix {len(keys)} server configurations; calibrate one box at a time")
        progress = None if as_json else (lambda i, loss: click.echo(f"\r  fitting: evaluation {i}, loss {loss:.4f}",
                                                                     nl=False, err=True))
        fr = fit_closed(runs, max_nfev=max_evals, progress=progress)
    except USER_ERRORS as e:
        _fail(e)
    if progress:
        click.echo("", err=True)
    prof = fr.profile
    if name:
        prof.name = name
    prof.save(out_path)
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
    click.echo(f"wrote {out_path}")


@click.command("validate")
@click.argument("sources", nargs=-1)
@click.option("--profile", "profile_path", default=None, help="Profile to validate (default: the shipped Spark profile).")
@click.option("--replications", type=int, default=10, show_default=True)
@click.option("--noise-floor", "floor_sources", multiple=True,
              help="A second measurement of the same tests; its differences are shown as the noise floor.")
@click.option("--tokenizer", default=None, help="tokenizer.json for ShareGPT prompt lengths.")
@click.option("--plot", "plot_path", default=None, help="Write measured-against-predicted plot (PNG).")
@click.option("--json", "as_json", is_flag=True)
def validate_cmd(sources, profile_path, replications, floor_sources, tokenizer, plot_path, as_json):
    """Predict open-loop runs (vllm bench serve) the profile never saw and score the predictions."""
    try:
        prof = load_profile(profile_path)
        runs = load_open(list(sources) or ["seed"])
        if not runs:
            raise ImporterError("no open-loop runs in the sources given")
        progress = None if as_json else (lambda i, n, run: click.echo(f"\r  predicting {i}/{n}: {run.test:<24}",
                                                                        nl=False, err=True))
        v = validate(runs, prof, replications=replications, tokenizer=tokenizer, progress=progress)
        floor = noise_floor(runs, load_open(list(floor_sources))) if floor_sources else None
    except USER_ERRORS as e:
        _fail(e)
    if progress:
        click.echo("", err=True)
    if plot_path:
        from .plots import plot_validation
        plot_validation(v, plot_path, title=f"{prof.name}: measured vs predicted")
    if as_json:
        out = v.to_json()
        if floor:
            out["noise_floor"] = floor.families()
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(format_validation(v, floor))
