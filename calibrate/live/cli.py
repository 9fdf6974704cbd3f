"""The click side of `capsim calibrate --live` and `capsim validate --live`.

Shared flags for what a server does not export, and the two commands' bodies (calibrate/cli.py
calls them); a library error (LiveError, MeasureError, ProfileError, ...: a CapsimError) becomes one
line and exit 1 here (capsim.errors.user_errors).
"""
from __future__ import annotations

import json
import math

from simulator.profile import load_profile

from .ladder import live_calibrate, parse_budget
from .loads import load_loads, seed_loads
from .messages import LiveError
from .server import apply_server_limits, read_server
from .validate import live_validate


def _click():
    import click
    return click


def _user_errors():
    """capsim's one-line boundary for library errors (capsim.errors.user_errors), imported when a command
    runs: `import calibrate.live` loads no click."""
    from capsim.errors import user_errors
    from simulator.errors import CapsimError
    return user_errors(CapsimError)


def _messages(as_json: bool):
    """The live modules' progress lines (logging, "capsim.calibrate.live") on stderr as they were
    always shown, unless --json; and the measure drivers' warnings and Ctrl-C lines as `capsim
    measure` shows them (measure.cli.stderr_lines). Imported when a command runs."""
    import contextlib

    from capsim.logs import stderr_lines as log_lines
    from measure.cli import stderr_lines

    stack = contextlib.ExitStack()
    if not as_json:
        stack.enter_context(log_lines("capsim.calibrate.live"))
    stack.enter_context(stderr_lines())
    return stack


def _finite_positive(ctx, param, value):
    if value is not None and not 0 < value < math.inf:
        raise _click().BadParameter(f"must be a finite number > 0, got {value}")
    return value


def live_limit_options(f):
    """Flags for what the server may not export; shared by calibrate --live and validate --live. Each
    help begins "--live:", so that calibrate/cli.refuse_live_only_options refuses them without --live."""
    click = _click()
    count = click.IntRange(min=1)
    opts = [
        click.option("--model", default=None, help="--live: model id (default: the first one /v1/models lists)."),
        click.option("--max-num-seqs", type=count, default=None,
                     help="--live: the server's --max-num-seqs (vLLM does not export it)."),
        click.option("--max-num-batched-tokens", type=count, default=None,
                     help="--live: the server's --max-num-batched-tokens (vLLM does not export it)."),
        click.option("--async-scheduling/--no-async-scheduling", default=None,
                     help="--live: whether the server schedules asynchronously (vLLM GPU default on, CPU off)."),
        click.option("--kv-groups", default=None,
                     help="--live: KV-cache groups COUNTxBLOCK[@WINDOW], e.g. 1x128,5x128@512 (hybrid models)."),
        click.option("--hf-config", default=None,
                     help="--live: the model's config.json: KV-cache groups from its layer types."),
        click.option("--speed", "clock_scale", type=float, default=1.0, show_default=True,
                     callback=_finite_positive,
                     help="--live: a capsim twin's --speed: measured times are multiplied by it (model time)."),
        click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="--live: bearer token."),
        click.option("--insecure", is_flag=True,
                     help="--live: do not check an https server's TLS certificate (checked against the system's "
                          "trust store otherwise, SSL_CERT_FILE honoured)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _limits(max_num_seqs, max_num_batched_tokens, async_scheduling, kv_groups, hf_config) -> dict:
    return {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
            "async_scheduling": async_scheduling, "kv_groups": kv_groups, "hf_config": hf_config}


def run_calibrate_live(url, out_path, budget, run_dir, name, max_evals, as_json, tg=None, pp_max=None, runs=1, **kw):
    """What `capsim calibrate --live URL` does (calibrate/cli.py calls this)."""
    click = _click()
    lim = _limits(kw.pop("max_num_seqs", None), kw.pop("max_num_batched_tokens", None),
                  kw.pop("async_scheduling", None), kw.pop("kv_groups", None), kw.pop("hf_config", None))
    with _user_errors(), _messages(as_json):
        prof, d = live_calibrate(url, kw.get("model"), budget, run_dir, lim, clock_scale=kw.get("clock_scale", 1.0),
                                 api_key=kw.get("api_key"), insecure=bool(kw.get("insecure")), max_nfev=max_evals,
                                 name=name, tg=tg, pp_max=pp_max, runs=runs)
    if out_path:
        prof.save(out_path)
    pv = prof.provenance
    if as_json:
        click.echo(json.dumps({"profile": out_path or str(d / "profile.json"), "run_dir": str(d),
                               "fitted": pv["fitted_parameters"], "median_abs_error_pct": pv["median_abs_error_pct"],
                               "engine_limits_origin": pv["engine_limits_origin"], "steadiness": pv["steadiness"],
                               "residuals": pv["residuals"]},
                              indent=2, default=str))
        return prof, d
    click.echo(f"{'run':<22} {'shape':<26} {'metric':<20} {'measured':>10} {'simulated':>10} {'error':>8}")
    for r in pv["residuals"]:
        click.echo(f"{r['test']:<22} {r['shape']:<26} {r['metric']:<20} {r['measured']:>10.2f} {r['simulated']:>10.2f} "
                   f"{r['error_pct']:>+7.1f}%")
    click.echo(f"\nmedian |error| {pv['median_abs_error_pct']:.1f}% over {len(pv['residuals'])} figures")
    st = pv["steadiness"]
    click.echo(f"box steadiness: single-user decode {st['start_tok_s']:.3g} tok/s at the start, "
               f"{st['end_tok_s']:.3g} at the end ({st['drift_pct']:+.1f}%)")
    for k, v in pv["engine_limits_origin"].items():
        click.echo(f"{k}: {v}")
    click.echo("fitted: " + ", ".join(f"{k}={v:.4g}" for k, v in pv["fitted_parameters"].items()))
    click.echo(f"run folder {d}; wrote {out_path or d / 'profile.json'}")
    return prof, d


def run_validate_live(url, profile_path, loads_path, scale, length_scale, budget, repeat, replications, run_dir,
                      as_json, endpoint="completions", **kw):
    """What `capsim validate --live URL --profile P` does (calibrate/cli.py calls this)."""
    click = _click()
    with _user_errors(), _messages(as_json):
        # everything the command line says is read before the server is asked anything
        prof = load_profile(profile_path)
        lim = _limits(kw.get("max_num_seqs"), kw.get("max_num_batched_tokens"), kw.get("async_scheduling"),
                      kw.get("kv_groups"), kw.get("hf_config"))
        budget_s = parse_budget(budget)
        for flag, x in (("--scale", scale), ("--length-scale", length_scale)):
            if x is not None and not (0 < x < math.inf):
                raise LiveError(f"{flag} must be a finite number > 0, got {x}")
            if x is not None and loads_path:
                raise LiveError(f"{flag} scales the default loads; --loads gives its own")
        loads = load_loads(loads_path) if loads_path else None
        facts = read_server(url, kw.get("model"), api_key=kw.get("api_key"), insecure=bool(kw.get("insecure")),
                            **lim)
        prof = apply_server_limits(prof, facts)  # e.g. a server restarted with other limits
        if loads is None:
            if not as_json:
                click.echo("default loads: the seed's H and J scaled to this server (see calibrate.live.seed_loads)",
                           err=True)
            loads = seed_loads(prof, facts.max_model_len, scale, length_scale, budget_s, endpoint)
        lv = live_validate(url, prof, loads, run_dir, model=facts.model, clock_scale=kw.get("clock_scale", 1.0),
                           replications=replications, repeat=repeat, api_key=kw.get("api_key"),
                           insecure=bool(kw.get("insecure")),
                           retries=kw.get("retries", 1))
    click.echo(json.dumps(lv.to_json(), indent=2, default=str) if as_json else lv.format())
    return lv
