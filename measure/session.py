"""A measured run's shared state: the client, run files, metrics scrape, counters and the stopping rules.

`Session` is what both drivers (measure.drivers) use; `Stopper` turns Ctrl-C, SIGTERM and fatal
errors into an orderly stop; warnings go to the run's client health and to the `capsim.measure`
log. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import gc
import logging
import platform
import signal
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from simulator.errors import CapsimError
from simulator.profile import clamps_max_tokens, refused_for_length
from simulator.records import PROBE_TAG, ClientHealth, LiveFacts, RequestRecord, RunResult, ServerMetrics
from simulator.workload import RandomWorkload, random_length_bounds

from . import prom
from .client import Client, Inflight
from .errors import Interrupted, MeasureError
from .hoststat import cpu_ticks, steal_share
from .loopwatch import LoopWatch, lag_summary
from .progress import Progress
from .progress_events import ProgressEvents
from .prompts import LivePrompt, PromptBuilder
from .runfiles import RunWriter, run_summary, vllm_bench_result

UNREACHABLE_AFTER = 3  # consecutive refused connections that end a run
HELD_UP_S = 0.25  # a send this late, or a loop stall this long: the client was held up (free-running: a few ms)
HELD_UP_WARNINGS = ("schedule_warning", "client_stall_warning")  # the client, not the server, was slow
READY_RETRY_S = 5.0  # vllm bench serve's wait between ready checks (benchmarks/lib/ready_checker.py)

# What the drivers tell the user while a run goes (warnings, Ctrl-C, a setup step): one line per record,
# the text after "capsim measure: ". The command line decides where it goes (measure.cli.stderr_lines);
# a record with fresh_line=True starts a new line first (after a progress bar or a typed ^C).
log = logging.getLogger("capsim.measure")
FRESH_LINE = {"fresh_line": True}


def held_up(client: ClientHealth | None) -> str | None:
    """The run's warnings that the client was held up, joined; None when it ran freely."""
    warnings = client.warnings if client is not None else {}
    return "; ".join(warnings[k] for k in HELD_UP_WARNINGS if k in warnings) or None


def warn(client: ClientHealth, key: str, text: str) -> None:
    """A warning kept in the run's client health (run.json) and told (log) as it happens."""
    client.warnings[key] = text
    log.warning("warning: %s", text)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for pkg in ("capsim", "httpx", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class Stopper:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.hard = asyncio.Event()
        self.reason: str | None = None
        self.status: str | None = None  # "interrupted" | "aborted"
        self.signum: int | None = None
        self.phase: str | None = None  # a setup step ("connecting to URL"); None while requests are sent

    def request(self, reason: str, status: str = "aborted") -> None:
        if self.event.is_set():
            self.hard.set()
        if self.reason is None:
            self.reason, self.status = reason, status
        self.event.set()

    def on_signal(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.phase is not None:  # nothing in flight yet: the setup step stops at once
            if not self.event.is_set():
                log.warning("%s while %s: stopping", name, self.phase, extra=FRESH_LINE)
        elif self.event.is_set():
            self.hard.set()
            log.warning("%s again: cancelling requests in flight now", name, extra=FRESH_LINE)
        else:
            log.warning("%s: no new requests; waiting for those in flight (press again to cancel them)", name,
                        extra=FRESH_LINE)
        self.request(f"interrupted by {name}", "interrupted")


class Session:
    """What both drivers share: client, files, metrics, counters, stopping."""

    def __init__(self, url: str, model: str | None, endpoint: str, api_key: str | None, timeout: float,
                 out_dir, progress: bool, scrape_metrics: bool, max_connections: int, grace: float,
                 keep_text: bool, extra_body: dict | None = None, tool: str = "vllm",
                 headers: dict[str, str] | None = None, verify: bool = True):
        if endpoint not in ("chat", "completions"):
            raise MeasureError(f"--endpoint must be chat or completions, got {endpoint!r}")
        if not (grace >= 0):
            raise MeasureError(f"grace period must be >= 0 s, got {grace}")
        self.client = Client(url, api_key=api_key, timeout=timeout, max_connections=max_connections, headers=headers,
                             verify=verify)
        self.model = model
        self.endpoint = endpoint
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.show_progress = progress
        self.scrape_metrics = scrape_metrics
        self.grace = float(grace)
        self.keep_text = keep_text
        self.extra_body = dict(extra_body or {})  # --extra-body: merged into every request
        self.tool = tool  # whose request bodies: "vllm" (bench serve) or "llama-benchy"
        self.stopper = Stopper()
        self.writer: RunWriter | None = None
        self.scraper: prom.MetricsScraper | None = None
        self.progress = Progress(0, enabled=False)
        self.events: ProgressEvents | None = None  # llama-benchy's --emit-progress: the measured requests' events
        self.records: list[RequestRecord] = []
        self.probes: list[RequestRecord] = []  # --probe-request-rate's, apart from the run's
        self.texts: dict[int, str] = {}
        self.n_ok = self.n_fail = self.warmup_fail = 0
        self.inflight = 0
        self.first_error: str | None = None
        self._refused = 0
        self.info: dict[str, Any] = {}
        self.builder: PromptBuilder | None = None
        self._signals: list[int] = []
        self.watch = LoopWatch(HELD_UP_S)
        self._froze = False
        self._ticks0: tuple[int, int] | None = None  # /proc/stat when the measured window opened

    # ------------------------------------------------------------ setup
    async def connect(self, ready_s: float = 0.0) -> None:
        """The served model and the server's facts. `ready_s` > 0: a server that does not answer yet (still
        starting, or failing) is asked again every READY_RETRY_S for up to that long, as vllm bench serve's
        --ready-check-timeout-sec waits for it; 0: its first error is the command's."""
        deadline = time.monotonic() + ready_s
        while True:
            try:
                self.model, _entry = await self.client.resolve_model(self.model)
                break
            except MeasureError as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    if ready_s > 0:
                        raise MeasureError(f"not ready within --ready-check-timeout-sec {ready_s:g}: {e}") from None
                    raise
                log.info("not ready (%s); asking again, %.0f s left", e, left)
                await asyncio.sleep(min(READY_RETRY_S, left))
        server = await self.client.server_info()
        mml = _entry.get("max_model_len")
        if mml is not None:
            server["max_model_len"] = mml
        self.server = server
        self.builder = PromptBuilder(self.client, self.model, self.endpoint)

    def prebuild(self, prompts: list[LivePrompt], request_id_prefix: str | None = None) -> None:
        """Encode every request before the clock starts (about 0.2 ms each, off the event loop's hot path).
        `request_id_prefix`: each is named PREFIX + its index (x-request-id), as vllm bench serve names them."""
        for i, lp in enumerate(prompts):
            rid = None if request_id_prefix is None else f"{request_id_prefix}{i}"
            lp.request = self.client.build(self.endpoint, self.payload(lp), rid)

    def payload(self, lp: LivePrompt) -> dict:
        body = lp.benchy_body if self.tool == "llama-benchy" else lp.vllm_body
        return body(lp.model or self.model, self.endpoint, self.extra_body)

    def note_cpu(self, client: ClientHealth, cpu_s: float, wall_s: float) -> None:
        """The client's own CPU during the run: near one core means it may have been the bottleneck."""
        client.cpu_s = round(cpu_s, 4)
        client.cpu_util = round(cpu_s / wall_s, 4) if wall_s > 0 else None
        if wall_s > 1.0 and cpu_s / wall_s > 0.8:
            warn(client, "client_warning", f"the client used {100 * cpu_s / wall_s:.0f}% of a CPU core during the run; "
                  "its timestamps may lag (fewer concurrent streams or a faster box)")

    def note_schedule(self, client: ClientHealth, records: list[RequestRecord], queued: bool) -> None:
        """How far behind its arrival schedule the client sent (start_time - scheduled_time).

        A client on schedule sends within a few ms. Seconds behind mean the client (or the
        whole box) was held up, and the run did not carry the arrival process it was asked
        for; its measurements are of another load. With --max-concurrency the lag also holds
        the wait for a free slot, which is part of vllm bench serve's load, so no warning then.
        """
        lag = np.array([r.start_time - r.scheduled_time for r in records])
        if not len(lag):
            return
        client.send_lag_s = lag_summary(lag)
        late = int((lag > HELD_UP_S).sum())
        if late and not queued:
            warn(client, "schedule_warning", f"{late} of {len(lag)} requests were sent more than {HELD_UP_S:g} s "
                  f"behind their arrival time (up to {lag.max():.2f} s): the client was held up, and the run is not "
                  "the load asked for")

    def open_window(self) -> None:
        """The measured window begins: the collector is run once and every object the process
        holds is frozen out of its sight, then the loop watch starts.

        A full collection walks every container in the process (0.28 s for 1.5 M dicts on the
        2-core test box) and holds the event loop meanwhile. calibrate --live measures from the
        process that runs its simulations, and two CI round trips had a calibration stage stall
        0.33-0.44 s with extra client CPU. vLLM freezes its own heap the same way. Garbage made
        during the run is still collected; a caller's own freeze is left as it is.
        """
        if gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()
            self._froze = True
        self._ticks0 = cpu_ticks()
        self.watch.start()

    async def close_window(self) -> None:
        """The measured window ends (also on the way out of a failed run): watch stopped, heap thawed."""
        await self.watch.stop()
        if self._froze:
            gc.unfreeze()
            self._froze = False

    async def wrap_up(self, start: float, end: float, cpu0: float) -> tuple[ClientHealth, list[RequestRecord]]:
        """The measured window [start, end] is over: the client's health and the records in request order."""
        client = ClientHealth(steal_share=steal_share(self._ticks0, cpu_ticks()))
        self.note_cpu(client, time.process_time() - cpu0, end - start)
        await self.close_window()
        self.note_stalls(client, start)
        self.progress.close()
        return client, sorted(self.records, key=lambda r: r.request_id)

    def note_stalls(self, client: ClientHealth, start: float) -> None:
        """The loop watch's figures; a stall past HELD_UP_S is a warning: the run's timestamps inside it are late."""
        lag = self.watch.summary()
        if lag is None:
            return
        client.loop_lag_s = lag
        stalls = self.watch.stalls
        if stalls:
            client.stalls = [[round(t - start, 3), round(d, 3)] for t, d in stalls[:20]]
            warn(client, "client_stall_warning",
                  f"the client was held up {len(stalls)} time(s) for more than {HELD_UP_S:g} s (up to "
                  f"{lag['max']:.2f} s, first {stalls[0][0] - start:.1f} s into the run): tokens that arrived "
                  "meanwhile were stamped late, so TTFT, ITL and E2EL of the requests in flight are too long")

    def _clamps(self) -> bool:
        return clamps_max_tokens(self.server.get("server_version"))

    def check_fits(self, shapes) -> None:
        """One clear error instead of N HTTP 400s when prompts cannot fit the model (by the server's
        version's rule: vLLM >= 0.32 cuts max_tokens to the context left instead of refusing)."""
        mml = self.server.get("max_model_len")
        if not isinstance(mml, int):
            return
        clamp = self._clamps()
        bad = [(p + m, p, m) for p, m in shapes if refused_for_length(p, m, mml, clamp)]
        if bad:
            _, p, m = max(bad)
            raise MeasureError(f"a request of {p} prompt + {m} output tokens exceeds the server's "
                               f"max_model_len of {mml}")

    def check_random_fits(self, wl: RandomWorkload) -> None:
        """Refuse a random workload whose smallest request cannot fit, before any file is written.

        The server's own special and chat-template tokens are added later (prepare); whatever they are,
        no request has fewer than the lower input bound (BOS counted) plus the prefix.
        """
        mml = self.server.get("max_model_len")
        if not isinstance(mml, int):
            return
        in_lo, _, out_lo, _ = random_length_bounds(wl.input_len, wl.output_len, wl.range_ratio, wl.fmt.special_tokens)
        if refused_for_length(in_lo + wl.prefix_len, out_lo, mml, self._clamps()):
            raise MeasureError(f"every request exceeds the server's max_model_len of {mml}: the smallest has at least "
                               f"{in_lo + wl.prefix_len} prompt + {out_lo} output tokens")

    def install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stopper.on_signal, sig)
                self._signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        self._signals = []

    async def setup_step(self, phase: str, coro):
        """A step before any request is sent (connecting, preparing prompts): the first Ctrl-C or
        SIGTERM cancels it at once, whatever it waits on (a server that accepts and never answers)."""
        self.stopper.phase = phase
        return await self.until_stopped(coro)

    def stop_setup(self, phase: str) -> None:
        """Raise Interrupted when a stop came during `phase` (before the run folder exists)."""
        st = self.stopper
        if st.event.is_set():
            raise Interrupted(st.reason or "interrupted", phase, st.signum)

    async def until_stopped(self, coro):
        """Run `coro` unless a stop comes first (then None, and `coro` is cancelled)."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.stopper.event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        return None

    def open_files(self, info: dict) -> None:
        self.info = info
        if self.out_dir is not None:
            self.writer = RunWriter(self.out_dir, secrets=self.client._secrets)
            self.writer.write_json("run.json", info)

    async def start_metrics(self) -> dict | None:
        if not self.scrape_metrics:
            return None
        extra = {}
        if self.server.get("server") == "llama.cpp":
            extra = {k: self.server[k] for k in ("n_ctx", "total_slots") if self.server.get(k) is not None}
        self.scraper = prom.MetricsScraper(self.client.base, dict(self.client.http.headers),
                                           sink=self.writer.append_metrics if self.writer else None,
                                           extra=extra, auth=self.client.http.auth, verify=self.client.verify)
        before = await self.scraper.snapshot()
        if before is not None:
            if self.writer:
                self.writer.append_metrics(before)
            self.scraper.start()
        return before

    # ------------------------------------------------------------ sending
    async def send(self, lp: LivePrompt, rid: int, scheduled: float, test: str = "", batch: int = 0,
                   record: bool = True, sem: asyncio.Semaphore | None = None) -> RequestRecord | None:
        if sem is not None:
            async with sem:
                if self.stopper.event.is_set():
                    return None  # never sent
                return await self._send(lp, rid, scheduled, test, batch, record)
        return await self._send(lp, rid, scheduled, test, batch, record)

    async def probe_loop(self, lp: LivePrompt, interval: float, load_done: asyncio.Event) -> None:
        """vllm bench serve's --probe-request-rate loop: `lp` sent, awaited, then a sleep of `interval`, until
        `load_done` is set by the time a sleep ends (so the run lasts to that wake, as vLLM's does); outside any
        semaphore. A stop (Ctrl-C) ends the sleep at once. The records go to `probes` and probes.jsonl."""
        while not load_done.is_set():
            await self._send(lp, len(self.probes), time.perf_counter(), PROBE_TAG, 0, False, probe=True)
            if await self.wait_stop(interval):
                return

    async def ready_check(self, lp: LivePrompt, ready_s: float) -> bool:
        """vllm bench serve's ready check (--ready-check-timeout-sec > 0): `lp`, the first prompt, sent unrecorded
        until it succeeds, again every READY_RETRY_S for up to `ready_s`; a failure past that is the command's,
        as vLLM's "Initial test run failed". Its failures count neither as warmups' nor as the run's."""
        deadline = time.monotonic() + ready_s
        while True:
            rec = await self._send(dataclasses.replace(lp, request=None, model=None), -1, time.perf_counter(), "", 0,
                                   False, tally=False)
            if rec.ok:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeasureError(f"the ready check's test request (the first prompt) failed within "
                                   f"--ready-check-timeout-sec {ready_s:g}: {rec.error}")
            log.info("the test request failed (%s); sending it again, %.0f s left", rec.error, left)
            await asyncio.sleep(min(READY_RETRY_S, left))

    async def _send(self, lp, rid, scheduled, test, batch, record, probe: bool = False,
                    tally: bool = True) -> RequestRecord:
        events = self.events if record and not probe else None
        inf = Inflight(rid, scheduled, lp.target_prompt_tokens, lp.max_tokens, test, batch,
                       texts=[] if self.keep_text else None, watch=events.chunk if events else None)
        self.inflight += 1
        self.progress.update(inflight=self.inflight)
        body, lp.request = lp.request or self.payload(lp), None
        try:
            await self.client.stream(self.endpoint, body, inf)
        except asyncio.CancelledError:
            self.inflight -= 1
            if inf.start_time is not None:
                inf.error = inf.error or "interrupted: cancelled while in flight"
                self._finish(inf, record, probe, tally)
            raise
        except Exception as e:  # a client bug must not lose the run
            inf.error = f"client error: {type(e).__name__}: {self.client.redact(str(e))[:160]}"
        self.inflight -= 1
        return self._finish(inf, record, probe, tally)

    def _finish(self, inf: Inflight, record: bool, probe: bool = False, tally: bool = True) -> RequestRecord:
        rec = inf.to_record()
        if probe:  # counted by the probe's own keys, not the run's
            self.probes.append(rec)
            if self.writer:
                self.writer.append_record(rec, probe=True)
            return rec
        if record:
            if self.events is not None:
                self.events.request_end(inf)
            self.records.append(rec)
            if self.keep_text:
                self.texts[rec.request_id] = inf.text
            if self.writer:
                self.writer.append_record(rec)
            if rec.ok:
                self.n_ok += 1
            else:
                self.n_fail += 1
        elif not tally:
            return rec
        elif not rec.ok:
            self.warmup_fail += 1
        if not rec.ok and self.first_error is None:
            self.first_error = rec.error
        if inf.connect_failed:
            self._refused += 1
            if self._refused >= UNREACHABLE_AFTER and not self.stopper.event.is_set():
                self.stopper.request(f"server unreachable ({rec.error}); stopped sending", "aborted")
        elif rec.ok:
            self._refused = 0
        # an open loop's warmups finish before its line starts; a closed loop's among its runs, in its pace
        self.progress.update(done=self.n_ok + self.n_fail, failed=self.n_fail, inflight=self.inflight,
                             warmup=not record,
                             latency=rec.end_time - rec.scheduled_time if record and rec.ok and rec.end_time else None)
        return rec

    async def wait_stop(self, delay: float) -> bool:
        """Sleep `delay` s; True if a stop was requested meanwhile."""
        if delay <= 0:
            return self.stopper.event.is_set()
        try:
            await asyncio.wait_for(self.stopper.event.wait(), timeout=delay)
            return True
        except TimeoutError:
            return False

    async def drain(self, tasks: list[asyncio.Task]) -> None:
        """Wait for all tasks; on a stop, give in-flight ones `grace` s, then cancel."""
        pending = {t for t in tasks if not t.done()}
        while pending and not self.stopper.event.is_set():
            stop = asyncio.ensure_future(self.stopper.event.wait())
            await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            pending = {t for t in pending if not t.done()}
        if pending:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.grace
            self.progress.update(note=f"stopping: up to {self.grace:g} s for {self.inflight} in flight", force=True)
            while pending and not self.stopper.hard.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                hard = asyncio.ensure_future(self.stopper.hard.wait())
                await asyncio.wait(pending | {hard}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                hard.cancel()
                pending = {t for t in pending if not t.done()}
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for t in tasks:  # retrieve outcomes (no "exception never retrieved")
            if t.done() and not t.cancelled():
                t.exception()

    # ------------------------------------------------------------ finishing
    def status(self) -> str:
        return self.stopper.status or "complete"

    async def finish(self, run: RunResult, before: dict | None, server_delta: dict | None,
                     save_result: str | None, save_detailed: bool) -> RunResult:
        after = None
        if self.scraper is not None:
            # interrupted: the user is waiting, and the server may not answer; one quick sample at most
            hurry = self.stopper.status == "interrupted"
            await self.scraper.stop(timeout=0.5 if hurry else 6.0)
            if before is not None and server_delta is None:
                # the server counts the probes' first tokens too
                done = self.n_ok + sum(r.ok for r in self.probes)
                want = before.get("ttft_count", 0) + done if "ttft_count" in before else None
                try:
                    after = await asyncio.wait_for(self.scraper.snapshot(expect_ttft_count=None if hurry else want),
                                                   timeout=2.0 if hurry else None)
                except TimeoutError:
                    after = None
                if after is not None and self.writer:
                    self.writer.append_metrics(after)
                server_delta = prom.delta(before, after)
                if run.kind == "open":  # vllm bench serve's figures of the server's speculative decoding
                    run.extra.update(prom.spec_decode_stats(before, after))
            await self.scraper.aclose()
        live = run.live
        live.status = self.status()
        if self.stopper.reason:
            live.stop_reason = self.stopper.reason
        cache = (after or before or {}).get("cache_config") if (after or before) else None
        if server_delta or cache or self.scraper is not None:
            run.server_metrics = ServerMetrics(delta=server_delta or None, cache_config=cache or None)
            if self.scraper is not None:
                run.server_metrics.samples = self.scraper.samples + (before is not None) + (after is not None)
                run.server_metrics.available = bool(self.scraper.available)
        live.failed = self.n_fail
        if self.warmup_fail:
            live.warmup_failed = self.warmup_fail
        if self.first_error:
            live.first_error = self.first_error
        wall_end = time.time()
        live.wall_end = wall_end
        if self.keep_text:
            live.texts = self.texts  # in memory only
        self.info.update(status=live.status, wall_end=wall_end,
                         wall_end_iso=_dt.datetime.fromtimestamp(wall_end).astimezone().isoformat(timespec="seconds"),
                         start_time=run.start_time, end_time=run.end_time, duration=run.duration,
                         records=len(run.records), meta=run.meta_json())
        if self.writer:
            self.writer.write_json("run.json", self.info)
            self.writer.write_json("summary.json", run_summary(run))
            self.writer.close()
        if save_result:
            from .runfiles import atomic_write, json_dumps

            p = Path(save_result)
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                text = json_dumps(vllm_bench_result(run, detailed=save_detailed, texts=self.texts or None), indent=2)
                atomic_write(p, self.client.redact(text) + "\n")
            except OSError as e:
                raise MeasureError(f"cannot write --save-result {p}: {e.strerror or e}") from None
        return run

    def fail(self, e: BaseException) -> None:
        """A run that stops on an error after its folder exists is closed with the reason, never left running."""
        if self.writer is None or self.info.get("status") != "running":
            return
        stopped = isinstance(e, (KeyboardInterrupt, asyncio.CancelledError))
        status = "interrupted" if stopped else "failed"
        reason = (str(e) if isinstance(e, CapsimError) else
                  f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) if not stopped else \
            (str(e) if isinstance(e, Interrupted) else f"interrupted ({type(e).__name__})")
        wall_end = time.time()
        self.info.update(status=status, failure=reason, wall_end=wall_end,
                         wall_end_iso=_dt.datetime.fromtimestamp(wall_end).astimezone().isoformat(timespec="seconds"),
                         meta={**(self.info.get("meta") or {}), "status": status, "stop_reason": reason})
        try:
            self.writer.write_json("run.json", self.info)
        except OSError:
            pass  # the error being reported matters more than this one

    async def close(self) -> None:
        await self.close_window()
        self.progress.close()
        self.remove_signals()
        if self.scraper is not None:
            await self.scraper.aclose()
        if self.writer is not None:
            self.writer.close()
        await self.client.aclose()

    def base_info(self, kind: str, workload: dict, pattern: dict) -> dict:
        wall = time.time()
        return {"capsim_run": 1, "kind": kind, "status": "running", "url": self.client.public_url,
                "model": self.model, "endpoint": self.endpoint, "workload": workload, "pattern": pattern,
                "server": self.server, "versions": versions(), "wall_start": wall,
                "wall_start_iso": _dt.datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds"),
                "timeout_s": self.client.timeout, "api_key_used": bool(self.client.api_key)}

    def base_live(self) -> LiveFacts:
        return LiveFacts(model=self.model, endpoint=self.endpoint, url=self.client.public_url,
                         server=self.server.get("server"), wall_start=self.info.get("wall_start"))
