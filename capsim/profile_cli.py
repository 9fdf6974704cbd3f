"""`capsim profile show` and `list`: the profile card (calibrate.card.profile_card) as a table, JSON or PNG.

Loaded on first use by the `capsim` group (capsim/cli.py's `LazyGroup`): its `LAZY_COMMANDS` entry
"profile" names `capsim.profile_cli:profile_group` and carries the help line `capsim --help` shows
without importing this module: keep it this command's own help (tests/test_cli_startup.py compares).
"""
from __future__ import annotations

import json

import click

from simulator.profile import DEFAULT_PROFILE, load_profile, shipped_profiles

from .errors import friendly
from .options import MultiValue


@click.group("profile")
def profile_group():
    """Look at a profile: what calibration produced."""


@profile_group.command("show")
@click.argument("profile")
@click.option("--plot", "plot_path", default=None, metavar="CARD.PNG", help="Also draw the card as an image.")
@click.option("--runs", "run_sources", cls=MultiValue, item=click.STRING, spaced=False, metavar="SOURCE",
              help="Measured closed-loop runs to overlay (a spark-bench suite folder, capsim runs, llama-benchy "
                   "tables); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
@friendly
def show_cmd(profile, plot_path, run_sources, as_json):
    """The card of PROFILE (a profile JSON or a shipped profile name): prefill and decode speed,
    KV-cache capacity, engine limits, share of the memory roofline."""
    from calibrate.card import format_card, profile_card

    if plot_path:
        from calibrate.plots import check_plot_path
        check_plot_path(plot_path)
    prof = load_profile(profile)
    runs = None
    if run_sources:
        from calibrate.sources import load_closed
        runs = load_closed(list(run_sources))
        if not runs:
            raise click.ClickException("no closed-loop runs in the --runs sources given")
    card = profile_card(prof, runs)
    if plot_path:
        from calibrate.plots import plot_profile_card
        plot_profile_card(prof, runs, plot_path, card=card)
    if as_json:
        click.echo(json.dumps(card, indent=2))
    else:
        click.echo(format_card(card))
        if plot_path:
            click.echo(f"\nwrote {plot_path}")


@profile_group.command("list")
@friendly
def list_cmd():
    """The shipped profiles: what --profile NAME takes without a file."""
    rows = []
    for name in shipped_profiles():
        prof = load_profile(name)
        m = prof.model or {}
        runs = prof.provenance.get("fitted_on") or []
        where = sorted({str(r).rsplit(":", 1)[0] for r in runs})
        what = ", ".join(x for x in (m.get("name"), m.get("weights")) if x)
        fitted = f"fitted on {', '.join(where)}" if where else prof.provenance.get("source", "set by hand")
        rows.append((name + (" (default)" if name == DEFAULT_PROFILE else ""), what, fitted))
    width = max(len(r[0]) for r in rows)
    for name, what, fitted in rows:
        click.echo(f"{name:<{width}}  {what}; {fitted}")
