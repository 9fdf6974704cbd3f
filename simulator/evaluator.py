"""Replications on workers: an `Evaluator` computes each replication of a point (a staff count, a
rate) once and shows them in order, and `drive` runs several search generators side by side on one
set of workers (this process, forked local processes, or a joblib backend such as Dask). What runs
the tasks decides the speed, never the answer.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Generator, Sequence

log = logging.getLogger("capsim.simulator.evaluator")  # progress lines: capsim plan --verbose shows them


def idle_jobs() -> int:
    """Idle cores: the cores idle right now (Linux: /proc/stat over 50 ms), else the
    cores minus the 1-minute load average; at least one (why: docs/design/plan-search.md)."""
    n = os.cpu_count() or 1
    idle = idle_cores()
    if idle is None:
        try:
            idle = n - os.getloadavg()[0]
        except (OSError, AttributeError):  # not available on every platform
            idle = float(n)
    return max(1, min(n, int(round(idle))))


def idle_cores(window_s: float = 0.05) -> float | None:
    """Cores idle over the next `window_s` seconds, from /proc/stat (None where there is none)."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return v[3] + v[4], sum(v)

    try:
        idle0, total0 = read()
        time.sleep(window_s)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def resolve_jobs(n_jobs: int | None) -> int:
    """None: the idle cores; -1: every core; else as given."""
    if n_jobs is None:
        return idle_jobs()
    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, int(n_jobs))


def joblib_map(tasks: list, n_jobs: int | None):
    """Run (fn, args) tasks through joblib, so a Dask/Ray backend set with
    joblib.parallel_config(backend=...) spreads them over a cluster unchanged
    (n_jobs None there: all of the backend's workers); one task runs here."""
    if not tasks:
        return []
    if len(tasks) == 1:
        return [fn(*args) for fn, args in tasks]
    from joblib import Parallel, delayed
    return Parallel(n_jobs=-1 if n_jobs is None else n_jobs)(delayed(fn)(*args) for fn, args in tasks)


def custom_backend() -> bool:
    """Whether the caller set a joblib backend (Dask, Ray, threads) with joblib.parallel_config."""
    if "joblib" not in sys.modules:  # nobody set one, and importing joblib to ask would cost 40 ms
        return False
    try:
        from joblib.parallel import get_active_backend
        backend, _ = get_active_backend()
        return type(backend).__name__ != "LokyBackend"
    except Exception:  # joblib internals vary between versions
        return False



Task = tuple  # (evaluator, point, replication)


class Evaluator:
    """Replicated summaries per staff count (or rate), each computed once.

    `cache[p]` holds what the answers read of point p: replications 0, 1, 2, ...
    in order, as many as the searches asked for (`decide` asks at least `batch`
    more at a time). So which replications a point shows depends on their
    results only, never on how many workers ran them or in which order they
    finished: a plan on one core, on two, or on a Dask cluster is the same plan. Workers may run more than was asked (a cluster runs every
    replication of a point at once, idle local workers start the next ones);
    those wait in `done` until a search asks for them.

    `decide` stops a point early once its pass/fail outcome can no longer change:
    with R = 10 and 9 needed, two failing replications settle it. The outcome is
    the one all R replications would give, so early stopping changes cost, not
    answers.
    """

    def __init__(self, fn: Callable, args: Callable[[object, int], tuple], replications: int,
                 label: str = "staff", batch: int = 2):
        self.fn = fn
        self.args = args
        self.R = replications
        self.batch = max(1, int(batch))
        self.cache: dict = {}
        self.done: dict = {}  # (point, replication) -> summary, shown in `cache` or not yet
        self.label = label  # the point's name in the progress lines (log)

    def want(self, p, k: int | None = None) -> tuple:
        """A wait for replications 0..k-1 of p (default: all R)."""
        return (self, p, self.R if k is None else min(k, self.R))

    def missing(self, p, k: int) -> list[Task]:
        """Replications below k of p that are neither shown nor computed."""
        have = len(self.cache.get(p, ()))
        return [(self, p, r) for r in range(have, k) if (p, r) not in self.done]

    def spare(self, p, k: int) -> list[Task]:
        """The replications of p a search may ask for after the first k (and after those shown)."""
        start = max(k, len(self.cache.get(p, ())))
        return [(self, p, r) for r in range(start, self.R) if (p, r) not in self.done]

    def reveal(self, p, k: int) -> None:
        reps = self.cache.setdefault(p, [])
        if len(reps) < k:
            reps.extend(self.done.pop((p, r)) for r in range(len(reps), k))
            log.info("%s %s: %d replications", self.label, p, len(reps))

    def __getitem__(self, p) -> list[dict]:
        return self.cache[p]

    def decide(self, p, ok: Callable[[dict], bool], need: int) -> Generator:
        """Whether at least `need` of the R replications satisfy `ok`, stopping early once
        settled (a generator for drive: it yields the replications it waits for)."""
        while True:
            reps = self.cache.get(p, [])
            n_ok = sum(1 for r in reps if ok(r))
            n_bad = len(reps) - n_ok
            if n_ok >= need:
                return True
            if n_bad > self.R - need or len(reps) >= self.R:
                return False
            # the fewest further replications that could settle it, at least a batch
            settle = min(need - n_ok, self.R - need + 1 - n_bad)
            yield [self.want(p, len(reps) + max(settle, self.batch))]


def drive(searches: Sequence[Generator], n_jobs: int | None) -> list:
    """Run search generators side by side until each returns; their return values, in order.

    A search yields a list of waits (evaluator, point, k) and resumes once
    replications 0..k-1 of each are computed and shown in the evaluator's cache.
    Searches over one evaluator only ever see more replications of a point than
    they asked for, which does not change a settled outcome (Evaluator.decide).
    What runs the tasks (this process, local worker processes, a joblib backend
    such as Dask) decides the speed, not the answer.
    """
    runner = _runner(n_jobs)
    log.info("workers: %s", runner.describe())
    out: list = [None] * len(searches)
    waiting: dict[int, list] = {}

    def advance(i: int) -> None:
        try:
            waiting[i] = searches[i].send(None)
        except StopIteration as stop:
            out[i] = stop.value
            waiting.pop(i, None)

    try:
        for i in range(len(searches)):
            advance(i)
        while waiting:
            ready = [i for i, ws in waiting.items() if not any(ev.missing(p, k) for ev, p, k in ws)]
            if ready:
                for i in ready:
                    for ev, p, k in waiting[i]:
                        ev.reveal(p, k)
                    advance(i)
                continue
            waits = [w for ws in waiting.values() for w in ws]
            needed = list(dict.fromkeys(t for ev, p, k in waits for t in ev.missing(p, k)))
            spare = list(dict.fromkeys(t for ev, p, k in waits for t in ev.spare(p, k)))
            runner.step(needed, spare)
    finally:
        runner.close()
    return out


def _runner(n_jobs: int | None):
    if custom_backend():
        return _BackendRunner(n_jobs)
    n = resolve_jobs(n_jobs)
    return _InlineRunner() if n == 1 else _PoolRunner(n)


class _InlineRunner:
    """One worker: the task a search waits for runs in this process, nothing else."""

    def describe(self) -> str:
        return "1 (this process)"

    def step(self, needed: list[Task], spare: list[Task]) -> None:
        ev, p, r = needed[0]
        ev.done[(p, r)] = ev.fn(*ev.args(p, r))

    def close(self) -> None:
        pass


class _PoolRunner:
    """Local worker processes, handed one task each as soon as they are free (not in
    rounds, where every worker waits for the slowest task of the round): first the
    tasks searches wait for, and when none is left, the next replications of the
    points they wait on, which a passing point asks for next.

    Workers are forked where the platform can: a fork starts in milliseconds with
    everything imported, where a fresh interpreter (loky's workers) spent about
    half a second of CPU per worker importing numpy, simpy and the simulator.
    """

    def __init__(self, workers: int):
        import multiprocessing as mp
        import queue
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        self.pool = mp.get_context(method).Pool(workers)
        self.workers = workers
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.flight: set = set()

    def describe(self) -> str:
        return f"{self.workers} local processes"

    def _submit(self, t: Task) -> None:
        ev, p, r = t
        self.flight.add(t)
        self.pool.apply_async(ev.fn, ev.args(p, r), callback=lambda res: self.results.put((t, res, None)),
                              error_callback=lambda err: self.results.put((t, None, err)))

    def step(self, needed: list[Task], spare: list[Task]) -> None:
        for t in needed + spare:
            if len(self.flight) >= self.workers:
                break
            if t not in self.flight:
                self._submit(t)
        got = [self.results.get()]
        while not self.results.empty():  # whatever else finished meanwhile
            got.append(self.results.get())
        for t, res, err in got:
            self.flight.discard(t)
            if err is not None:
                raise err
            ev, p, r = t
            ev.done[(p, r)] = res

    def close(self) -> None:
        # tasks still running are replications no search asked for: stop them, do not wait
        self.pool.terminate()
        self.pool.join()


class Forked:
    """fn() running in a forked process: `result()` waits for its value (raising its error), `cancel()`
    stops it where its value is no longer wanted. A fork inherits fn with everything imported, so
    nothing of it is pickled but its result."""

    def __init__(self, fn: Callable[[], object]):
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)

        def run():
            try:
                out = (True, fn())
            except Exception as e:  # noqa: BLE001 -- handed to the parent, which raises it
                out = (False, e)
            try:
                send.send(out)
            except Exception as e:  # noqa: BLE001 -- a value or error that does not pickle: its words
                send.send((False, RuntimeError(f"{type(out[1]).__name__}: {out[1]}" if not out[0] else str(e))))

        self._proc = ctx.Process(target=run, daemon=True)
        self._proc.start()
        send.close()

    def result(self):
        try:
            ok, value = self._recv.recv()
        except EOFError:  # the process died without a word (killed, out of memory)
            raise RuntimeError(f"a worker process died (exit code {self._proc.exitcode})") from None
        finally:
            self._proc.join()
        if not ok:
            raise value
        return value

    @property
    def running(self) -> bool:
        return self._proc.is_alive()

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


def in_fork(fn: Callable[[], object]) -> Forked | None:
    """fn() started in a forked process; None where none can be forked (no fork on the platform, or
    this is a daemonic worker, which may not have children)."""
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods() or mp.current_process().daemon:
        return None
    return Forked(fn)


def fork_map(fn: Callable, items, jobs: int, on_remote: Callable[[object], None] | None = None) -> list:
    """[fn(x) for x in items], the items split into `jobs` runs in order, all but the first in forked
    processes (a map for scipy's finite differences: `least_squares(..., workers=...)`). Each fn(x)
    depends on x alone, so the list is the one a plain map gives. What fn does besides returning is
    lost in a fork: `on_remote` is called here, in order, with each result computed there."""
    items = list(items)
    jobs = max(1, min(int(jobs), len(items)))
    if jobs == 1:
        return [fn(x) for x in items]
    cut = [round(i * len(items) / jobs) for i in range(jobs + 1)]
    parts = [items[a:b] for a, b in zip(cut, cut[1:])]
    forks = [in_fork(lambda part=part: [fn(x) for x in part]) for part in parts[1:]]
    try:
        out = [fn(x) for x in parts[0]]
        for part, worker in zip(parts[1:], forks):
            if worker is None:  # nowhere to fork (a daemonic worker): here
                out += [fn(x) for x in part]
                continue
            got = worker.result()
            for value in got:
                if on_remote is not None:
                    on_remote(value)
            out += got
    finally:  # an error (or an interrupt) here leaves no worker computing for nobody
        for worker in forks:
            if worker is not None:
                worker.cancel()
    return out


class _BackendRunner:
    """A joblib backend the caller set (joblib.parallel_config(backend="dask"), Ray, ...):
    rounds of work through joblib, each with every replication of every point a
    search waits on, so that a cluster's workers all have work."""

    def __init__(self, n_jobs: int | None):
        self.n_jobs = n_jobs

    def describe(self) -> str:
        from joblib.parallel import get_active_backend
        return f"joblib backend {type(get_active_backend()[0]).__name__}"

    def step(self, needed: list[Task], spare: list[Task]) -> None:
        tasks = list(dict.fromkeys(needed + spare))
        out = joblib_map([(ev.fn, ev.args(p, r)) for ev, p, r in tasks], self.n_jobs)
        for (ev, p, r), res in zip(tasks, out):
            ev.done[(p, r)] = res

    def close(self) -> None:
        pass
