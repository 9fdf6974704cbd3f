"""`capsim twin`: the click command that serves a profile through measure.twin.TwinServer."""
from __future__ import annotations

import asyncio

import click

from capsim.errors import user_errors
from capsim.options import SET_VALUE, MultiValue
from simulator.profile import load_profile

from .twin import DEFAULT_MODEL_NAME, TwinServer


@click.command("twin")
@click.option("--profile", "profile_path", default=None,
              help="Profile JSON file or shipped profile name (default: the seed's DGX Spark).")
@click.option("--set", "sets", cls=MultiValue, item=click.STRING, accept=SET_VALUE, metavar="KEY=VALUE",
              help="Edit the profile first, e.g. max_num_seqs=4 (same keys as capsim simulate).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; loopback unless you say otherwise (0.0.0.0 serves the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="Run the model this many times faster than real time (latencies shrink by it).")
@click.option("--model", "model_name", default=None, help=f"Served model name (default: {DEFAULT_MODEL_NAME}).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the profile's step-time noise.")
def twin_cmd(profile_path, sets, host, port, speed, model_name, seed):
    """Serve the simulator as an OpenAI-compatible endpoint, in real time (x --speed).

    /v1/chat/completions, /v1/completions, /v1/models, /tokenize and /metrics with
    vLLM's metric names: test clients, dashboards and load tests without a GPU.
    """
    import sys

    # the engine thread must get the GIL soon after its timer fires (default switch interval 5 ms)
    sys.setswitchinterval(0.0005)
    with user_errors():  # a bad profile or --set: one line
        prof = load_profile(profile_path)
        if sets:
            from simulator.whatif import apply_edits
            prof = apply_edits(prof, sets)
        srv = TwinServer(prof, host=host, port=port, speed=speed, model=model_name, seed=seed)

    async def main():
        try:
            await srv.serve()
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        L = prof.engine
        click.echo(f"capsim twin: {prof.name} as {srv.model!r} on {srv.url} (speed x{speed:g}; max_num_seqs "
                   f"{L.max_num_seqs}, max_num_batched_tokens {L.max_num_batched_tokens}, "
                   f"KV blocks {L.num_blocks}, max_model_len {L.max_model_len})", err=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        srv.engine.stop()


twin = twin_cmd


if __name__ == "__main__":
    twin_cmd()
