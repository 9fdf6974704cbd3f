"""capsim's workarounds that use other libraries' private names: each test checks that the name is still
there with the shape the workaround expects, so an upgrade fails here, naming the workaround and where it
lives, instead of failing (or silently doing nothing) in a live run. pyproject.toml pins each library
below its next major (minor for 0.x) version; a bump of a pin comes with a look at these tests.

| library  | private name                                            | workaround                               |
| httpcore | AsyncConnectionPool._assign_requests_to_connections ... | measure/netbackend.py FastPool           |
| httpx    | AsyncHTTPTransport._pool, AsyncClient._transport        | measure/netbackend.py make_transport; tests/test_measure.py |
| click    | parser._long_opt / _short_opt, option.process           | capsim/options.py MultiValue, OptionalValue |
| simpy    | Environment._now                                        | measure/twin.py TwinEngine._accept; simulator/engine.py Engine._skip_to |
"""
from __future__ import annotations

import asyncio
import inspect

import click
import httpcore
import httpx
import pytest
import simpy
import simpy.rt


def need(ok: bool, library: str, name: str, workaround: str, why: str) -> None:
    """Fail with one message that says what changed upstream and which workaround to look at."""
    if not ok:
        pytest.fail(f"{library} {_version(library)} changed {name}: {workaround} relies on it ({why}). "
                    f"Port the workaround to the new {library} (or drop it), then move the pin in pyproject.toml.",
                    pytrace=False)


def _version(library: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------- httpcore: measure/netbackend.py FastPool

FASTPOOL = "measure/netbackend.py FastPool (httpcore's pool without the O(n^2) sweep per request)"


def test_httpcore_is_the_1_0_series_fastpool_replaces():
    # make_transport uses FastPool only on httpcore 1.0.x and falls back to the stock pool otherwise:
    # a new series would silently bring back the slow sweep
    need(httpcore.__version__.startswith("1.0."), "httpcore", "its version (1.0.x expected)", FASTPOOL,
         "make_transport only installs FastPool on 1.0.x")


def test_httpcore_pool_assigns_requests_in_the_method_fastpool_overrides():
    pool_cls = httpcore.AsyncConnectionPool
    meth = getattr(pool_cls, "_assign_requests_to_connections", None)
    need(callable(meth), "httpcore", "AsyncConnectionPool._assign_requests_to_connections", FASTPOOL,
         "FastPool overrides it")
    need(list(inspect.signature(meth).parameters) == ["self"], "httpcore",
         "the signature of AsyncConnectionPool._assign_requests_to_connections", FASTPOOL,
         "FastPool's override takes no arguments and returns the connections to close")
    calls = inspect.getsource(pool_cls.handle_async_request)
    need("self._assign_requests_to_connections()" in calls and "_close_connections" in calls, "httpcore",
         "AsyncConnectionPool.handle_async_request", FASTPOOL,
         "the pool must still call the overridden method and close the connections it returns")
    from httpcore._async import connection_pool
    stream_close = inspect.getsource(connection_pool.PoolByteStream.aclose)
    need("_assign_requests_to_connections()" in stream_close, "httpcore", "PoolByteStream.aclose", FASTPOOL,
         "a finished response must still reassign the pool's requests through the overridden method")


def test_httpcore_pool_state_fastpool_reads():
    pool = httpcore.AsyncConnectionPool(max_connections=7, max_keepalive_connections=3)
    for name, kind in (("_connections", list), ("_requests", list), ("_max_connections", int),
                       ("_max_keepalive_connections", int)):
        need(isinstance(getattr(pool, name, None), kind), "httpcore", f"AsyncConnectionPool.{name}", FASTPOOL,
             f"FastPool reads it (a {kind.__name__})")
    need(pool._max_connections == 7 and pool._max_keepalive_connections == 3, "httpcore",
         "AsyncConnectionPool._max_connections / _max_keepalive_connections", FASTPOOL,
         "FastPool takes them for the limits it was built with")
    need(hasattr(pool, "_ssl_context"), "httpcore", "AsyncConnectionPool._ssl_context",
         "measure/netbackend.py make_transport", "the replacement pool is built with the stock pool's SSL context")
    need(callable(getattr(pool, "create_connection", None)), "httpcore", "AsyncConnectionPool.create_connection",
         FASTPOOL, "FastPool opens connections with it")
    params = inspect.signature(httpcore.AsyncConnectionPool.__init__).parameters
    for kw in ("ssl_context", "max_connections", "max_keepalive_connections", "keepalive_expiry", "http1",
               "http2", "retries", "network_backend"):
        need(kw in params, "httpcore", f"AsyncConnectionPool(..., {kw}=)", "measure/netbackend.py make_transport",
             "the replacement pool is built with these keywords")


def test_httpcore_pool_request_and_connection_fastpool_uses():
    from httpcore._async.connection_pool import AsyncPoolRequest
    req = AsyncPoolRequest(httpcore.Request("GET", "http://127.0.0.1:1/"))
    need(req.connection is None and hasattr(req, "request") and callable(getattr(req, "assign_to_connection", None)),
         "httpcore", "the pool's request (AsyncPoolRequest.connection / .request / .assign_to_connection)", FASTPOOL,
         "FastPool assigns queued requests (connection is None) to connections with them")
    from httpcore._async.interfaces import AsyncConnectionInterface
    for m in ("is_closed", "has_expired", "is_idle", "is_available", "can_handle_request"):
        need(callable(getattr(AsyncConnectionInterface, m, None)), "httpcore", f"AsyncConnectionInterface.{m}",
             FASTPOOL, "FastPool's sweep and assignment ask each connection these")


# ---------------------------------------------------------------- httpx: make_transport, the measure tests

def test_httpx_transport_keeps_its_pool_in_private_pool(monkeypatch):
    from measure.netbackend import FastPool, make_transport
    stock = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=4))
    need(type(getattr(stock, "_pool", None)) is httpcore.AsyncConnectionPool, "httpx", "AsyncHTTPTransport._pool",
         "measure/netbackend.py make_transport", "it replaces the transport's httpcore pool with FastPool")
    monkeypatch.delenv("CAPSIM_HTTPX_DEFAULT_TRANSPORT", raising=False)
    t = make_transport(httpx.Limits(max_connections=4, max_keepalive_connections=2))
    # make_transport swallows AttributeError/TypeError: without this check a change would only slow runs
    need(type(t._pool) is FastPool and t._pool._max_connections == 4, "httpx",
         "AsyncHTTPTransport._pool (replaced)", "measure/netbackend.py make_transport",
         "the replacement must take: the client's requests go through transport._pool")

    async def client_transport():
        async with httpx.AsyncClient(transport=t) as c:
            return getattr(c, "_transport", None)

    need(asyncio.run(client_transport()) is t, "httpx", "AsyncClient._transport",
         "tests/test_measure.py (the FastPool test reads c.http._transport._pool)",
         "the test checks the client's requests went through FastPool")


# ---------------------------------------------------------------- click: capsim/options.py

FLAGS = "capsim/options.py MultiValue.add_to_parser and OptionalValue.add_to_parser"


def test_click_parser_keeps_options_in_long_opt_and_short_opt():
    @click.command()
    @click.option("--pp", "-p", multiple=True)
    def cmd(pp):
        pass

    ctx = click.Context(cmd)
    parser = cmd.make_parser(ctx)
    for name, flag in (("_long_opt", "--pp"), ("_short_opt", "-p")):
        table = getattr(parser, name, None)
        need(isinstance(table, dict) and flag in table, "click", f"the option parser's {name}", FLAGS,
             f"they look an option up there by its flag ({flag}) to wrap its process()")
    opt = parser._long_opt["--pp"]
    need(list(inspect.signature(opt.process).parameters) == ["value", "state"], "click",
         "the parser option's process(value, state)", FLAGS, "they wrap it to take more words")
    need(hasattr(opt, "dest") and getattr(opt, "obj", None) is cmd.params[0], "click",
         "the parser option's dest and obj", FLAGS, "OptionalValue stores its value under dest and obj")
    seen = {}
    prev = opt.process

    def process(value, state):
        seen.update(rargs=list(state.rargs), opts=type(state.opts), order=type(state.order))
        prev(value, state)

    opt.process = process
    parser.parse_args(["--pp", "1", "2"])
    need(seen == {"rargs": ["2"], "opts": dict, "order": list}, "click", "the parsing state's rargs, opts, order",
         FLAGS, "they take the following words from state.rargs and record values in state.opts/order")
    need(list(inspect.signature(click.Option.add_to_parser).parameters) == ["self", "parser", "ctx"], "click",
         "Option.add_to_parser(parser, ctx)", FLAGS, "they override it")


def test_capsim_flags_still_take_spaced_values():
    """The workaround end to end: `--pp 512 1024` (MultiValue) and a bare or valued --save-result."""
    from capsim.options import MultiValue, OptionalValue

    @click.command()
    @click.option("--pp", cls=MultiValue)
    @click.option("--save-result", cls=OptionalValue, flag_value="default.json")
    def cmd(pp, save_result):
        click.echo(f"{pp} {save_result}")

    from click.testing import CliRunner
    out = CliRunner().invoke(cmd, ["--pp", "512", "1024", "--save-result", "x.json"])
    need(out.exit_code == 0 and out.output.strip() == "(512, 1024) x.json", "click", "option parsing",
         FLAGS, f"spaced values must parse (got {out.output!r}, exit {out.exit_code})")


# ---------------------------------------------------------------- simpy: measure/twin.py

TWIN = "measure/twin.py TwinEngine._accept (moves the clock to an arrival's time: env._now = t)"


def test_simpy_keeps_the_clock_in_private_now():
    env = simpy.Environment(initial_time=2.0)
    need(getattr(env, "_now", None) == 2.0, "simpy", "Environment._now", TWIN, "the twin sets the clock there")
    env._now = 5.0
    need(env.now == 5.0, "simpy", "Environment.now (read from _now)", TWIN, "a clock set through _now must be now")
    t = env.timeout(1.5)
    env.run(until=t)
    need(env.now == 6.5, "simpy", "Environment._now (scheduling from it)", TWIN,
         "an event scheduled after the clock is moved must fall at the moved time plus its delay")


SKIP = "simulator/engine.py Engine._skip_to (jumps the clock over a wait nothing can interrupt: env._now = t)"


def test_simpy_schedules_a_timeout_at_now_plus_delay_and_peeks_the_next():
    """The engine sets _now to now + max(0, t - now), the float a timeout of that delay would reach, and
    jumps only while peek() (the next event's time) is later: then the jump is the wait it replaces."""
    env = simpy.Environment(initial_time=0.1)
    t = 0.7
    env.timeout(max(0.0, t - env.now))
    need(env.peek() == env._now + max(0.0, t - env._now), "simpy", "Environment.schedule (now + delay)", SKIP,
         "a jump must land where the timeout would have")
    env.run()
    need(env.peek() == float("inf"), "simpy", "Environment.peek (inf when nothing is due)", SKIP,
         "an empty queue must never stop a jump")
    env.timeout(2.0)
    env.timeout(1.0)
    need(env.peek() == env.now + 1.0, "simpy", "Environment.peek (the earliest event)", SKIP,
         "a jump past a due event would process it late")


def test_simpy_realtime_environment_steps_through_the_plain_step():
    """The twin steps its RealtimeEnvironment with simpy.Environment.step (no real-time sleep) and maps
    times with env_start, real_start and factor."""
    env = simpy.rt.RealtimeEnvironment(initial_time=1.0, factor=0.5, strict=False)
    need(isinstance(env, simpy.Environment), "simpy", "RealtimeEnvironment (a subclass of Environment)",
         "measure/twin.py TwinEngine", "it is stepped with simpy.Environment.step")
    for name in ("env_start", "real_start", "factor"):
        need(hasattr(env, name), "simpy", f"RealtimeEnvironment.{name}", "measure/twin.py _RealtimeEnv.wall_of/sim_of",
             "they map simulated times to wall times")
    env.timeout(100.0)
    simpy.Environment.step(env)  # no sleeping 50 s
    need(env.now == 101.0 and env._now == 101.0, "simpy", "Environment.step on a RealtimeEnvironment",
         "measure/twin.py TwinEngine", "the twin steps without the real-time wait")


# ---------------------------------------------------------------- the pins

@pytest.mark.parametrize("library", ["httpcore", "httpx", "click", "simpy"])
def test_each_library_is_pinned_below_its_next_major_and_the_installed_one_meets_it(library):
    """pyproject.toml caps each library whose private names capsim uses, so an upgrade past the tested
    series needs a deliberate bump (and the tests above)."""
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from packaging.requirements import Requirement

    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    reqs = [Requirement(d) for d in deps["project"]["dependencies"] if Requirement(d).name == library]
    assert len(reqs) == 1, f"{library}: one entry in pyproject.toml's dependencies, got {reqs}"
    req = reqs[0]
    assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), f"{req}: no upper bound"
    assert req.specifier.contains(version(library)), (str(req), version(library))
