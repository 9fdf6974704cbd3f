"""Open- and closed-loop drivers: the simulator's Workload and LoadPattern, live.

`run_open` plays vllm bench serve (arrivals at absolute times, a semaphore for --max-concurrency),
`run_closed` llama-benchy (batches of N at once, warmup, the latency probe). Both write the run
folder as requests complete and stop cleanly on Ctrl-C or SIGTERM. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from time import perf_counter
from typing import Any, Sequence

import httpx

from simulator.load import ClosedLoop, OpenLoop, context_load_keys
from simulator.records import ClosedLoopFacts, LiveFacts, OpenLoopFacts, RunResult
from simulator.workload import (MixtureWorkload, PrefixRepetitionWorkload, RandomWorkload, ShareGPTWorkload, Workload,
                                WorkloadError, lora_picks)

from . import prom
from .client import Client
from .errors import MeasureError
from .progress import Progress
from .progress_events import ProgressEvents
from .prompts import LivePrompt, PromptBuilder
from .tokenizer import TokenizeFailed
from .vocab import Vocab
from .session import Session, log

# ---------------------------------------------------------------- workload adaptation

class _SyncCounter:
    """A blocking `count(text) -> int` (BOS included) over /tokenize, for ShareGPT's filter.

    It runs in the sampling thread; `stop()` (a Ctrl-C) makes its next call fail at once.
    """

    def __init__(self, client: Client, dialect: str, model: str):
        self.http = httpx.Client(base_url=client.base, headers=dict(client.http.headers), auth=client.http.auth,
                                 trust_env=False, timeout=60.0, verify=client.verify)
        self.dialect, self.model = dialect, model
        self.stopped = False

    def __call__(self, text: str) -> int:
        if self.stopped:
            raise WorkloadError("stopped")
        if self.dialect == "vllm":
            r = self.http.post("/tokenize", json={"model": self.model, "prompt": text, "add_special_tokens": True})
        else:
            r = self.http.post("/tokenize", json={"content": text, "add_special": True})
        r.raise_for_status()
        return len(r.json()["tokens"])

    def stop(self) -> None:
        self.stopped = True  # the thread may be inside a call: its client is left to it, not closed under it

    def close(self) -> None:
        self.http.close()


async def _adapt(workload: Workload, builder: PromptBuilder, client: Client, live: LiveFacts,
                 counters: list[_SyncCounter]) -> Workload:
    """Give the workload the server's real special-token and chat-template counts (noted in `live`);
    the /tokenize counters it made for ShareGPT are added to `counters`, for the caller to close."""
    tok = builder.tok
    chat_extra = max(0, builder.delta_user - builder.special_tokens) if builder.endpoint == "chat" else 0
    if isinstance(workload, (RandomWorkload, PrefixRepetitionWorkload)):
        if tok.available:
            fmt = dataclasses.replace(workload.fmt, special_tokens=builder.special_tokens,
                                      chat_template_tokens=chat_extra)
            if fmt != workload.fmt:
                live.random_format = {"special_tokens": fmt.special_tokens,
                                     "chat_template_tokens": fmt.chat_template_tokens}
                workload = dataclasses.replace(workload, fmt=fmt)
        return workload
    if isinstance(workload, ShareGPTWorkload):
        if workload.dropped:
            live.sharegpt_dropped_records = workload.dropped
        live.sharegpt_records = workload.conversations
        if tok.available:
            workload.fmt = dataclasses.replace(workload.fmt, chat_template_tokens=chat_extra)
            if workload.count_tokens is None:
                workload.count_tokens = _SyncCounter(client, tok.dialect, builder.model)
                counters.append(workload.count_tokens)
        return workload
    if isinstance(workload, MixtureWorkload):
        comps = [(w, await _adapt(c, builder, client, live, counters)) for w, c in workload.components]
        return dataclasses.replace(workload, components=comps)
    return workload


async def in_daemon_thread(fn, *args):
    """Await fn(*args) run in a daemon thread; its result or exception comes back to the caller.

    A cancelled caller abandons the thread rather than waiting for it: a thread of asyncio's default
    executor (asyncio.to_thread) would be joined when the loop and the interpreter shut down, so a
    Ctrl-C would wait for all of ShareGPT's /tokenize calls to a server that does not answer. The
    drivers sample workloads through it."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result, exc):
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(result)

    def run():
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # handed to the awaiting task
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:  # the loop is gone: the caller stopped long ago
            pass

    threading.Thread(target=run, daemon=True, name="capsim-prepare").start()
    return await fut


async def _sample(workload: Workload, n: int, seed: int):
    try:
        return await in_daemon_thread(workload.sample, n, seed)
    except WorkloadError:
        raise
    except httpx.HTTPError as e:
        raise MeasureError(f"counting ShareGPT prompts with the server's /tokenize failed: {e}") from None


# ---------------------------------------------------------------- open loop

PROBE_TEXT = "Hi"  # vllm bench serve's --probe-request-rate prompt

async def run_open_async(url: str, model: str | None, workload: Workload, pattern: OpenLoop, num_prompts: int,
                         out_dir=None, endpoint: str = "chat", api_key: str | None = None,
                         progress: bool = True, timeout: float = 1800.0, scrape_metrics: bool = True,
                         grace: float = 10.0, keep_text: bool = False, save_result: str | None = None,
                         save_detailed: bool = False, extra_body: dict | None = None,
                         num_warmups: int = 0, vocab: Vocab | None = None, headers: dict[str, str] | None = None,
                         request_id_prefix: str | None = None, ready_s: float = 0.0,
                         insecure: bool = False, lora_modules: Sequence[str] = (),
                         lora_assignment: str = "random") -> RunResult:
    """`vocab`: the tokenizer's vocabulary size and special ids (`--tokenizer`), which make random
    prompts vllm bench serve's to the character; without it, ids run over the workload's vocab_size.
    `headers` go with every request (--header); each measured request is named `request_id_prefix` + its
    index in its x-request-id header (the warmups are not), by default vllm bench serve's `bench-XXXXXXXX-`.
    `ready_s` (--ready-check-timeout-sec): how long to wait for a server that does not answer yet, then for the
    first prompt to succeed, sent unmeasured as vllm bench serve's test request (0: neither); `insecure`:
    its TLS certificate is not checked (--insecure). `lora_modules`: the server's LoRA adapters, one named in each
    measured request's body by `lora_assignment` (workload.lora_picks; the warmups and the probe ask for the
    model)."""
    if not isinstance(pattern, OpenLoop):
        raise MeasureError("run_open needs an OpenLoop pattern")
    if vocab is not None and isinstance(workload, (RandomWorkload, PrefixRepetitionWorkload)):  # ids run over it
        workload = dataclasses.replace(workload, fmt=dataclasses.replace(workload.fmt, vocab_size=vocab.size))
    delays = pattern.arrival_times(num_prompts)  # validates num_prompts
    conc = pattern.max_concurrency or num_prompts
    S = Session(url, model, endpoint, api_key, timeout, out_dir, progress, scrape_metrics,
                 max_connections=conc + 5, grace=grace, keep_text=keep_text or save_detailed, extra_body=extra_body,
                 headers=headers, verify=not insecure)
    if request_id_prefix is None:
        request_id_prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    live = LiveFacts()
    counters: list[_SyncCounter] = []
    try:
        S.install_signals()
        connecting = f"connecting to {S.client.public_url}"
        await S.setup_step(connecting, S.connect(ready_s))
        S.stop_setup(connecting)  # no run folder yet: nothing to close
        if isinstance(workload, RandomWorkload):
            S.check_random_fits(workload)  # before the folder exists
        S.open_files(S.base_info("open", workload.describe(), pattern.describe()) | {"num_prompts": num_prompts})
        b = S.builder
        prep_t0 = perf_counter()

        async def prepare():
            try:
                await b.setup()
                wl = await _adapt(workload, b, S.client, live, counters)
                specs = await _sample(wl, num_prompts, pattern.seed)
                S.check_fits((s.prompt_tokens, s.max_tokens) for s in specs)
                if isinstance(wl, PrefixRepetitionWorkload):
                    if vocab is None:
                        b.notes.append(f"prefix_repetition prompts: token ids over {wl.fmt.vocab_size} (--tokenizer "
                                       "DIR: vllm bench serve's prompts to the character)")
                    return wl, specs, await b.prefix_repetition_prompts(wl, num_prompts, pattern.seed,
                                                                        wl.fmt.vocab_size)
                if not isinstance(wl, RandomWorkload):
                    return wl, specs, await b.spec_prompts(specs)
                if vocab is None:
                    b.notes.append(f"random prompts: token ids over {wl.fmt.vocab_size} with no special ids left "
                                   "out (--tokenizer DIR: vllm bench serve's prompts to the character)")
                return wl, specs, await b.spec_prompts(
                    specs, vocab=wl.fmt.vocab_size, special_ids=vocab.special_ids if vocab else (),
                    prefix_len=wl.prefix_len, rng=wl.prompt_rng(num_prompts, pattern.seed))
            except TokenizeFailed as e:
                raise MeasureError(f"the server's tokenizer failed while preparing prompts ({e})") from None

        if S.show_progress:
            log.info("preparing %s prompts with %s's tokenizer ...", num_prompts, S.client.public_url)
        prepared = await S.setup_step("preparing prompts", prepare())
        for h in counters:
            if prepared is None:
                h.stop()  # its thread may still be in a call: stopped, not closed under it
            else:
                h.close()
        live = dataclasses.replace(S.base_live(), random_format=live.random_format,
                                   sharegpt_records=live.sharegpt_records,
                                   sharegpt_dropped_records=live.sharegpt_dropped_records)
        arrivals = OpenLoopFacts(request_rate=pattern.rate, burstiness=pattern.burstiness,
                                 max_concurrency=pattern.max_concurrency, num_prompts=num_prompts, seed=pattern.seed,
                                 **pattern.ramp_keys(), **pattern.probe_keys(),
                                 warmups=OpenLoop.warmups_of(num_warmups, ready_s) or None)

        async def stopped_before_the_run() -> RunResult:  # the folder is closed as interrupted, nothing measured
            now = perf_counter()
            live.stopped_in = S.stopper.phase
            run = RunResult([], now, now, "open", open_loop=arrivals, live=live)
            return await S.finish(run, None, None, save_result, save_detailed)

        if prepared is None:  # stopped while preparing: nothing sent
            return await stopped_before_the_run()
        wl, specs, prompts = prepared
        if lora_modules:  # vllm bench serve picks them after sampling, from the random state sampling left
            for lp, name in zip(prompts, lora_picks(lora_modules, lora_assignment, len(prompts),
                                                    wl.vllm_random(num_prompts, pattern.seed))):
                lp.model = name
        if len(prompts) < num_prompts:  # vLLM's schedule spans the requests it has
            delays = pattern.arrival_times(len(prompts))
            log.info("sending %s of %s requests: %s", len(prompts), num_prompts,
                     f"{num_prompts // wl.num_prefixes} for each of {wl.num_prefixes} prefixes"
                     if isinstance(wl, PrefixRepetitionWorkload) else
                     "only that many ShareGPT conversations pass the length filter (--no-oversample)")
        live.prompts = b.describe() | {"seconds": round(perf_counter() - prep_t0, 3)}
        live.workload = wl.describe()
        S.info["prompts"] = live.prompts
        S.info["request_id_prefix"] = request_id_prefix  # the server's logs name the requests by it
        S.prebuild(prompts, request_id_prefix)
        if ready_s > 0 and prompts:
            if S.show_progress:
                log.info("sending the ready check's test request (the first prompt, not measured) ...")
            if await S.setup_step("sending the ready check's test request", S.ready_check(prompts[0], ready_s)) is None:
                return await stopped_before_the_run()
        if num_warmups and prompts:
            # vllm bench serve's --num-warmups: the first prompt that many times, under the client's
            # concurrency limit, before the server's counters are read and the run starts; not recorded
            # (a failed one is counted). A stop cancels them at once, as any step before the run.
            wsem = asyncio.Semaphore(pattern.max_concurrency) if pattern.max_concurrency else None
            if S.show_progress:
                log.info("sending %s warmup requests (not measured) ...", num_warmups)
            t_w = perf_counter()
            warm = await S.setup_step(f"sending {num_warmups} warmup requests", asyncio.gather(*(
                S.send(dataclasses.replace(prompts[0], request=None, model=None), -1 - k, t_w, record=False,
                       sem=wsem)
                for k in range(num_warmups))))
            if warm is None:
                return await stopped_before_the_run()
            live.warmup_requests = num_warmups
        before = await S.setup_step("reading the server's /metrics", S.start_metrics())
        S.stopper.phase = None  # requests go out from here: a Ctrl-C gives those in flight --grace s
        S.progress = Progress(len(prompts), enabled=S.show_progress, limit=pattern.max_concurrency,
                              schedule_end=float(delays[-1]))  # num_prompts >= 1: arrival_times checked it
        sem = asyncio.Semaphore(pattern.max_concurrency) if pattern.max_concurrency else None
        tasks: list[asyncio.Task] = []
        S.open_window()
        load_done, probing = asyncio.Event(), None
        if pattern.probe_rate > 0:  # vllm bench serve's probe: the first request's body with "Hi" and one token
            probing = asyncio.create_task(S.probe_loop(
                dataclasses.replace(prompts[0], messages=[{"role": "user", "content": PROBE_TEXT}], prompt=PROBE_TEXT,
                                    max_tokens=1, target_prompt_tokens=1, fitted=False, request=None, model=None),
                1.0 / pattern.probe_rate, load_done))
        cpu0 = time.process_time()
        start, wall0 = perf_counter(), time.time()
        for i, (lp, d) in enumerate(zip(prompts, delays)):
            target = start + float(d)
            if await S.wait_stop(target - perf_counter()) or S.stopper.event.is_set():
                break
            tasks.append(asyncio.create_task(S.send(lp, i, target, sem=sem)))
        live.sent_or_queued = len(tasks)
        await S.drain(tasks)
        if probing is not None:  # the run lasts until the probe loop's next wake, as vllm bench serve's
            load_done.set()
            await S.drain([probing])
        end = perf_counter()
        client, recs = await S.wrap_up(start, end, cpu0)
        S.note_schedule(client, recs, queued=sem is not None)
        run = RunResult(recs, start, end, "open", open_loop=arrivals, live=live, client=client,
                        probes=S.probes if probing is not None else None)
        if pattern.ramp_up is not None:  # vllm bench serve's record of the rates the ramp passed, as sent
            run.extra["rps_change_events"] = pattern.ramp_up.change_events(delays[:len(tasks)], len(delays), wall0)
        return await S.finish(run, before, None, save_result, save_detailed)
    except BaseException as e:
        S.fail(e)
        raise
    finally:
        await S.close()


def run_open(url: str, model: str | None, workload: Workload, pattern: OpenLoop, num_prompts: int,
             out_dir=None, endpoint: str = "chat", api_key: str | None = None, progress: bool = True,
             timeout: float = 1800.0, scrape_metrics: bool = True, **kw) -> RunResult:
    """vllm bench serve's open loop against a live server; see module doc."""
    return asyncio.run(run_open_async(url, model, workload, pattern, num_prompts, out_dir=out_dir,
                                      endpoint=endpoint, api_key=api_key, progress=progress, timeout=timeout,
                                      scrape_metrics=scrape_metrics, **kw))


# ---------------------------------------------------------------- closed loop

async def run_closed_async(url: str, model: str | None, pattern: ClosedLoop, out_dir=None, endpoint: str = "chat",
                           api_key: str | None = None, progress: bool = True, timeout: float = 1800.0,
                           scrape_metrics: bool = True, grace: float = 10.0, keep_text: bool = False,
                           extra_body: dict | None = None, stop_on_fail: bool = False,
                           insecure: bool = False, exact_tg: bool = True,
                           post_run_cmd: str | None = None, emit_progress=None) -> RunResult:
    """stop_on_fail: llama-benchy's --exit-on-first-fail, the run stops (status aborted) after the
    first batch with a failed request; `insecure`: the server's TLS certificate is not checked;
    `exact_tg`: llama-benchy's --exact-tg, every answer held to its tg (calibration's ladders need it; the
    command line's default is llama-benchy's, off); `post_run_cmd`: its --post-run-cmd, a shell command after
    every batch; `emit_progress`: its --emit-progress PATH ("-": stdout) or an open text stream, where
    progress_events' JSONL events go."""
    if not isinstance(pattern, ClosedLoop):
        raise MeasureError("run_closed needs a ClosedLoop pattern")
    if pattern.prefix_caching and endpoint != "chat":
        raise MeasureError("prefix caching's context loads send the context as a system message: the chat "
                           "endpoint only (llama-benchy's)")
    batches = pattern.batches(include_warmup=True)
    S = Session(url, model, endpoint, api_key, timeout, out_dir, progress, scrape_metrics,
                 max_connections=max(pattern.concurrency) + 5, grace=grace, keep_text=keep_text,
                 extra_body=extra_body, tool="llama-benchy", verify=not insecure)
    status = "error"  # bench_complete's, where the run ends in an exception
    try:
        S.events = ProgressEvents(emit_progress) if emit_progress else None
        S.install_signals()
        connecting = f"connecting to {S.client.public_url}"
        await S.setup_step(connecting, S.connect())
        S.stop_setup(connecting)  # no run folder yet: nothing to close
        S.check_fits((bt.pp + bt.depth, bt.tg) for bt in batches)  # before the folder exists
        tests = {bt.test: (bt.pp, bt.tg, bt.depth, bt.concurrency) for bt in batches}
        loop = ClosedLoopFacts(tests=tests, latency_mode=pattern.latency_mode, runs=pattern.runs,
                               warmup=pattern.warmup, prefix_caching=pattern.prefix_caching,
                               context_loads=context_load_keys(batches))
        # the tests' shapes go in from the start: a run killed before its end is still read test by test
        S.open_files(S.base_info("closed", {"dataset": "fixed", "pp": list(pattern.pp), "tg": list(pattern.tg),
                                            "depth": list(pattern.depth)}, pattern.describe())
                     | {"meta": loop.meta_json()})
        b = S.builder
        live = S.base_live()
        prep_t0 = perf_counter()

        async def prepare():
            try:
                await b.setup()
                lat = await S.client.probe_latency(pattern.latency_mode, S.model, endpoint)
                lps = []
                for bt in batches:
                    lps.append(None if bt.context_load else [
                        dataclasses.replace(lp, ignore_eos=exact_tg) for lp in await asyncio.gather(
                            *(b.sized_prompt(bt.pp + bt.depth, bt.tg, depth=bt.depth)
                              for _ in range(bt.concurrency)))])
                for i, bt in enumerate(batches):  # a context load comes just before the batch whose contexts it sends
                    if bt.context_load:
                        lps[i] = [_context_load(lp, bt.pp) for lp in lps[i + 1]]
            except TokenizeFailed as e:
                raise MeasureError(f"the server's tokenizer failed while preparing prompts ({e})") from None
            return lat, lps

        if S.show_progress:
            log.info("measuring latency (%s) and preparing prompts ...", pattern.latency_mode)
        prepared = await S.setup_step("measuring latency and preparing prompts", prepare())
        if prepared is None:  # stopped while preparing: the folder is closed as interrupted, nothing sent
            now = perf_counter()
            live.stopped_in = S.stopper.phase
            status = "interrupted"
            return await S.finish(RunResult([], now, now, "closed", closed_loop=loop, live=live), None, None, None,
                                  False)
        latency, batch_prompts = prepared
        loop.latency_s = latency
        if S.events is not None:
            S.events.emit("latency_measured", latency_s=latency, mode=pattern.latency_mode)
        live.prompts = b.describe() | {"seconds": round(perf_counter() - prep_t0, 3), "exact_tg": exact_tg}
        S.info["prompts"] = live.prompts
        for lps in batch_prompts:
            S.prebuild(lps)
        before = await S.setup_step("reading the server's /metrics", S.start_metrics())
        S.stopper.phase = None  # requests go out from here: a Ctrl-C gives those in flight --grace s
        measured_total = sum(bt.concurrency for bt in batches if bt.run >= 0)
        S.progress = Progress(measured_total, enabled=S.show_progress,
                              warmups=sum(bt.concurrency for bt in batches if bt.run < 0))
        server_acc: dict[str, Any] = {}
        rid = 0
        S.open_window()
        cpu0 = time.process_time()
        start = perf_counter()
        for bt, lps in zip(batches, batch_prompts):
            if S.stopper.event.is_set():
                break
            measured = bt.run >= 0
            snap0 = await S.scraper.snapshot() if (measured and S.scraper and S.scraper.available) else None
            ok0, fail0 = S.n_ok, S.n_fail + S.warmup_fail
            if measured and S.events is not None:  # llama-benchy's run_index counts its warmup run
                for k in range(len(lps)):
                    S.events.request_start(rid + k, S.model, S.client.public_url, bt.pp, bt.tg, bt.depth,
                                           bt.concurrency, bt.run + min(pattern.warmup, 1))
            t_batch = perf_counter()
            tasks = [asyncio.create_task(S.send(lp, rid + k, t_batch, bt.test, max(bt.run, 0), record=measured))
                     for k, lp in enumerate(lps)]
            if measured:
                rid += len(lps)
            S.progress.update(note=f"{bt.test} run {bt.run + 1 if measured else 'warmup'}")
            await S.drain(tasks)
            if snap0 is not None and not S.stopper.event.is_set():
                want = snap0.get("ttft_count", 0) + (S.n_ok - ok0) if "ttft_count" in snap0 else None
                snap1 = await S.scraper.snapshot(expect_ttft_count=want)
                prom.add_deltas(server_acc, prom.delta(snap0, snap1))
            if stop_on_fail and S.n_fail + S.warmup_fail > fail0 and not S.stopper.event.is_set():
                S.stopper.request(f"stopped after the first failed batch ({bt.test}; --exit-on-first-fail)",
                                  "aborted")
                break
            if post_run_cmd and not bt.context_load and not S.stopper.event.is_set():  # after a whole run, as there
                await _post_run(post_run_cmd)
        end = perf_counter()
        client, recs = await S.wrap_up(start, end, cpu0)
        run = RunResult(recs, start, end, "closed", closed_loop=loop, live=live, client=client)
        run = await S.finish(run, before, server_acc or {}, None, False)
        status = {"complete": "ok", "interrupted": "interrupted"}.get(run.status, "error")
        return run
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, asyncio.CancelledError)):
            status = "interrupted"
        S.fail(e)
        raise
    finally:
        if S.events is not None:
            S.events.complete(status)
            S.events.close()
        await S.close()


def _context_load(lp: LivePrompt, pp: int) -> LivePrompt:
    """llama-benchy's --enable-prefix-caching phase 1 of a prompt: its context (the system message) and "."
    as the user's (llama_benchy/client.py CONTEXT_LOAD_USER_MESSAGE), the same answer length."""
    msgs = [m for m in lp.messages or [] if m["role"] == "system"] + [{"role": "user", "content": "."}]
    return dataclasses.replace(lp, messages=msgs, target_prompt_tokens=max(1, lp.target_prompt_tokens - pp + 1),
                               fitted=False, request=None)


async def _post_run(cmd: str) -> None:
    """llama-benchy's --post-run-cmd after a batch: run in a shell, its output on stderr (stdout carries the
    results: --format json stays readable); a failure is said and the run goes on, as there. A stop (Ctrl-C)
    kills it."""
    proc = await asyncio.create_subprocess_shell(cmd, stdout=2)
    try:
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0:
        log.warning("post-run command failed: %r exited %s", cmd, code)


def run_closed(url: str, model: str | None, pattern: ClosedLoop, out_dir=None, endpoint: str = "chat",
               api_key: str | None = None, progress: bool = True, timeout: float = 1800.0,
               scrape_metrics: bool = True, **kw) -> RunResult:
    """llama-benchy's closed loop against a live server; see module doc."""
    return asyncio.run(run_closed_async(url, model, pattern, out_dir=out_dir, endpoint=endpoint, api_key=api_key,
                                        progress=progress, timeout=timeout, scrape_metrics=scrape_metrics, **kw))
