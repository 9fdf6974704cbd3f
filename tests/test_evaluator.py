"""simulator/evaluator.py by hand: `Evaluator.decide` settles a point exactly as all R replications
would, asking for the fewest that can settle it (at least a batch); `drive` shows a search replications
0..k-1 in order whatever ran them; the worker counts (`resolve_jobs`, `idle_jobs`, `idle_cores`) and
the joblib plumbing (`joblib_map`, `custom_backend`)."""
import itertools
import os

import pytest

import simulator.evaluator as E
from simulator.evaluator import (Evaluator, custom_backend, drive, fork_map, idle_cores, idle_jobs, in_fork, joblib_map,
                                 resolve_jobs)


def outcome(p, r):
    """Replication r of point p: passes where bit r of p is set (a point is its replications' outcomes)."""
    return {"p": p, "r": r, "ok": bool(p >> r & 1)}


def evaluator(R, batch=2):
    return Evaluator(outcome, lambda p, r: (p, r), R, batch=batch)


def decide(ev, p, need, n_jobs=1):
    """Evaluator.decide driven to its end: (answer, replications shown)."""
    (answer,) = drive([ev.decide(p, lambda rep: rep["ok"], need)], n_jobs)
    return answer, len(ev[p])


@pytest.mark.parametrize("R", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_decide_gives_the_answer_of_all_replications_from_as_few_as_settle_it(R, batch):
    for need, p in itertools.product(range(1, R + 1), range(2 ** R)):
        ev = evaluator(R, batch)
        answer, shown = decide(ev, p, need)
        oks = [bool(p >> r & 1) for r in range(R)]
        assert answer == (sum(oks) >= need), (need, oks)
        # it ran up to the first replication count that settles it, or less than a batch beyond
        settled = next(k for k in range(R + 1)
                       if sum(oks[:k]) >= need or k - sum(oks[:k]) > R - need or k == R)
        assert settled <= shown <= min(R, settled + batch - 1)
        assert ev[p] == [outcome(p, r) for r in range(shown)]  # replications 0.. in order


def test_two_failures_settle_nine_needed_of_ten():
    ev = evaluator(10)
    assert decide(ev, 0, 9) == (False, 2)
    # the first ask: the fewest replications that could settle it, at least a batch
    assert next(evaluator(10, batch=1).decide(0, bool, 9))[0][2] == 2  # two failures could settle it
    assert next(evaluator(10, batch=1).decide(0, bool, 3))[0][2] == 3  # three passes could
    assert next(evaluator(10, batch=4).decide(0, bool, 9))[0][2] == 4
    assert Evaluator(outcome, lambda p, r: (p, r), 10).batch == 2
    ev = evaluator(10, batch=1)
    assert decide(ev, 2 ** 10 - 1, 9) == (True, 9)  # nine passes: the tenth is not run
    ev = evaluator(10)
    assert decide(ev, 2 ** 10 - 1, 9) == (True, 10)  # in batches of two
    ev = evaluator(10)
    assert decide(ev, 0b1111111011, 9) == (True, 10)  # one failure: it takes all ten
    ev = evaluator(10)
    assert decide(ev, 0, 1) == (False, 10)  # a pass could come last
    ev = evaluator(10)
    assert decide(ev, 1, 1) == (True, 2)  # settled by the first, shown a batch


def test_searches_share_what_a_point_has_shown():
    ev = evaluator(6)
    p = 0b111111
    a = ev.decide(p, lambda rep: rep["ok"], 2)
    b = ev.decide(p, lambda rep: rep["ok"], 5)
    assert drive([a, b], 1) == [True, True]
    assert ev[p] == [outcome(p, r) for r in range(6)]  # b asked 2, 4, then a batch past its fifth
    # a later search that needs fewer sees the replications already shown: nothing more is run
    calls = []
    ev.fn = lambda p, r: calls.append(r) or outcome(p, r)
    assert drive([ev.decide(p, lambda rep: rep["ok"], 3)], 1) == [True] and calls == []


def test_what_a_search_waits_for():
    ev = evaluator(4)
    assert ev.want(7) == (ev, 7, 4) and ev.want(7, 2) == (ev, 7, 2) and ev.want(7, 9) == (ev, 7, 4)
    assert ev.missing(7, 3) == [(ev, 7, 0), (ev, 7, 1), (ev, 7, 2)]
    ev.done[(7, 1)] = outcome(7, 1)  # computed by a worker, not yet shown
    assert ev.missing(7, 3) == [(ev, 7, 0), (ev, 7, 2)]
    assert ev.spare(7, 2) == [(ev, 7, 2), (ev, 7, 3)] and ev.spare(7, 1) == [(ev, 7, 2), (ev, 7, 3)]
    ev.done[(7, 0)] = outcome(7, 0)
    ev.reveal(7, 2)
    assert ev[7] == [outcome(7, 0), outcome(7, 1)] and ev.done == {}
    assert ev.missing(7, 2) == [] and ev.missing(7, 3) == [(ev, 7, 2)]
    assert ev.spare(7, 0) == [(ev, 7, 2), (ev, 7, 3)]  # after those shown
    ev.reveal(7, 1)  # fewer than shown: nothing changes
    assert len(ev[7]) == 2
    assert evaluator(4, batch=0).batch == 1


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_the_answers_and_what_is_shown_do_not_depend_on_the_workers(n_jobs):
    points = [0b1011, 0b0000, 0b1111, 0b0110]
    ev = evaluator(4)
    got = drive([ev.decide(p, lambda rep: rep["ok"], 3) for p in points], n_jobs)
    assert got == [True, False, True, False]
    assert {p: len(ev[p]) for p in points} == {0b1011: 4, 0b0000: 2, 0b1111: 4, 0b0110: 4}
    assert all(ev[p] == [outcome(p, r) for r in range(len(ev[p]))] for p in points)


def fails(p, r):
    if r == 1:
        raise ZeroDivisionError("replication 1")
    return outcome(p, r)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_replications_error_reaches_the_caller(n_jobs):
    ev = Evaluator(fails, lambda p, r: (p, r), 4)
    with pytest.raises(ZeroDivisionError, match="replication 1"):
        drive([ev.decide(0b1111, lambda rep: rep["ok"], 4)], n_jobs)


def test_a_search_that_waits_for_nothing_returns_at_once():
    def search():
        return "done"
        yield  # a generator

    assert drive([search()], 1) == ["done"]
    assert drive([], 1) == []


# ------------------------------------------------------------------ how many workers

def test_resolve_jobs(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(E, "idle_jobs", lambda: 4)
    assert resolve_jobs(None) == 4  # the idle cores
    assert resolve_jobs(-1) == 6  # every core
    assert resolve_jobs(3) == 3 and resolve_jobs(9) == 9 and resolve_jobs(0) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert resolve_jobs(-1) == 1


def test_idle_jobs_rounds_the_idle_cores_within_one_and_every_core(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for idle, jobs in ((3.4, 3), (3.6, 4), (0.2, 1), (8.0, 8), (9.5, 8)):
        monkeypatch.setattr(E, "idle_cores", lambda idle=idle: idle)
        assert idle_jobs() == jobs
    # no /proc/stat: the cores less the 1-minute load
    monkeypatch.setattr(E, "idle_cores", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert idle_jobs() == 5

    def no_load():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", no_load)
    assert idle_jobs() == 8


def test_idle_cores_are_the_idle_share_of_proc_stat_times_the_cores(monkeypatch):
    # user nice system idle iowait irq softirq steal, then guest and guest_nice (counted in user already)
    lines = iter(["cpu  100 0 50 800 50 0 0 0 70 0\n",      # idle + iowait 850 of 1000
                  "cpu  160 0 60 900 80 0 0 0 99 9\n"])    # then 130 of 200 more
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    class Stat:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def readline(self):
            return next(lines)

    monkeypatch.setattr(E, "open", Stat, raising=False)
    monkeypatch.setattr(E.time, "sleep", lambda s: None)
    assert idle_cores() == pytest.approx(4 * 130 / 200)
    # no time passed between the reads, or no /proc/stat: no figure
    lines = iter(["cpu  1 0 0 1 0 0 0 0\n", "cpu  1 0 0 1 0 0 0 0\n"])
    assert idle_cores() is None
    lines = iter(["garbage\n", "garbage\n"])
    assert idle_cores() is None


def test_idle_cores_read_this_machine():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    idle = idle_cores(0.02)
    assert idle is None or 0.0 <= idle <= os.cpu_count()


# ------------------------------------------------------------------ joblib

def test_joblib_map_keeps_the_order_and_runs_one_task_here():
    assert joblib_map([], 2) == []
    pid = os.getpid()
    assert joblib_map([(os.getpid, ())], 2) == [pid]  # no worker started for one task
    assert joblib_map([(pow, (2, k)) for k in range(6)], 2) == [2 ** k for k in range(6)]
    assert joblib_map([(pow, (3, k)) for k in range(3)], None) == [1, 3, 9]


def test_a_backend_set_by_the_caller_is_seen():
    import joblib
    assert not custom_backend()
    with joblib.parallel_config(backend="threading"):
        assert custom_backend()
        ev = evaluator(3)
        assert drive([ev.decide(0b111, lambda rep: rep["ok"], 3)], None) == [True]
        assert len(ev[0b111]) == 3
    assert not custom_backend()


# ------------------------------------------------------------------ where the work runs

def pid_of(p, r):
    return os.getpid()


@pytest.mark.parametrize("n_jobs, words", [(1, "1 (this process)"), (2, "2 local processes")])
def test_one_worker_is_this_process_and_more_are_forked(n_jobs, words, caplog):
    ev = Evaluator(pid_of, lambda p, r: (p, r), 4)
    with caplog.at_level("INFO", logger="capsim.simulator.evaluator"):
        drive([ev.decide(0, lambda pid: True, 4)], n_jobs)
    assert f"workers: {words}" in caplog.messages
    pids = set(ev[0])
    assert (pids == {os.getpid()}) if n_jobs == 1 else (os.getpid() not in pids)


def test_a_callers_backend_is_named_in_the_progress(caplog):
    import joblib
    with caplog.at_level("INFO", logger="capsim.simulator.evaluator"), joblib.parallel_config(backend="threading"):
        drive([evaluator(2).decide(3, lambda rep: rep["ok"], 2)], None)
    assert "workers: joblib backend ThreadingBackend" in caplog.messages


# ------------------------------------------------------------------ fork_map and in_fork

def test_fork_map_computes_the_first_run_here_and_the_rest_in_forks():
    for n, jobs in itertools.product(range(1, 8), range(1, 5)):
        here, remote = [], []

        def square(x):
            here.append(x)
            return x * x

        items = list(range(n))
        assert fork_map(square, items, jobs, on_remote=remote.append) == [x * x for x in items]
        parts = min(jobs, n)
        first = round(n / parts)  # items 0..first-1 here, the others in order in parts - 1 forks
        assert here == items[:first] and remote == [x * x for x in items[first:]], (n, jobs)
    assert fork_map(lambda x: x, [], 3) == []
    assert fork_map(lambda x: -x, [1, 2], 0) == [-1, -2]  # no workers asked: here


def test_fork_map_computes_here_where_nothing_can_be_forked(monkeypatch):
    monkeypatch.setattr(E, "in_fork", lambda fn: None)
    here, remote = [], []
    assert fork_map(lambda x: here.append(x) or x + 1, range(5), 3, on_remote=remote.append) == [1, 2, 3, 4, 5]
    assert here == [0, 1, 2, 3, 4] and remote == []


def test_in_fork_needs_fork_and_a_process_that_may_have_children(monkeypatch):
    import multiprocessing as mp

    class Daemon:
        daemon = True

    monkeypatch.setattr(mp, "current_process", lambda: Daemon())
    assert in_fork(lambda: 1) is None
    monkeypatch.undo()
    monkeypatch.setattr(mp, "get_all_start_methods", lambda: ["spawn"])
    assert in_fork(lambda: 1) is None
    monkeypatch.undo()
    worker = in_fork(os.getpid)
    assert worker is not None and worker.result() != os.getpid()


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle")


def unpicklable_error():
    raise Unpicklable("the words")


def test_a_forks_value_or_error_that_does_not_pickle_comes_back_as_its_words():
    with pytest.raises(RuntimeError, match="^Unpicklable: the words$"):
        in_fork(unpicklable_error).result()
    with pytest.raises(RuntimeError, match="pickle"):
        in_fork(lambda: (lambda: 1)).result()  # a lambda is no value a pipe carries
    with pytest.raises(RuntimeError, match=r"^a worker process died \(exit code -9\)$"):
        in_fork(lambda: os.kill(os.getpid(), 9)).result()
