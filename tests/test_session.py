"""measure/session.py's bookkeeping on its own: the client's health figures and warnings, the length checks
made before any request, the counters a finished or cancelled request moves, a stop's grace period and a
failed run's run.json. The runs that go through them are in tests/test_measure.py (fake servers) and
tests/test_measure_live.py (vLLM)."""
from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from measure.errors import MeasureError
from measure.session import HELD_UP_S, UNREACHABLE_AFTER, Session, Stopper, held_up
from simulator.records import ClientHealth
from simulator.workload import RandomWorkload


@pytest.fixture
def session():
    s = Session("http://127.0.0.1:9", "m", "chat", None, 5.0, None, False, False, 4, 0.0, False)
    yield s
    asyncio.run(s.client.aclose())


def test_held_up_joins_the_clients_own_warnings_only():
    assert held_up(None) is None and held_up(ClientHealth()) is None
    c = ClientHealth(warnings={"client_warning": "busy CPU", "client_stall_warning": "stalled",
                               "schedule_warning": "sent late"})
    assert held_up(c) == "sent late; stalled"  # HELD_UP_WARNINGS' order; the CPU note is not a hold-up
    assert held_up(ClientHealth(warnings={"client_warning": "busy CPU"})) is None


@pytest.mark.parametrize("cpu_s, wall_s, util, warned", [
    (0.9, 1.0, 0.9, False),  # a run of a second or less is not judged
    (1.7, 2.0, 0.85, True),
    (1.6, 2.0, 0.8, False),  # 80% of a core exactly is not past the line
    (0.123456, 0.0, None, False),
    (1.23456, 2.0, 0.6173, False),  # to 0.1 ms of CPU a second
])
def test_the_clients_cpu(session, cpu_s, wall_s, util, warned):
    c = ClientHealth()
    session.note_cpu(c, cpu_s, wall_s)
    assert c.cpu_s == round(cpu_s, 4) and c.cpu_util == util
    assert ("client_warning" in c.warnings) == warned
    if warned:
        assert c.warnings["client_warning"].startswith("the client used 85% of a CPU core")


class _Sent:
    def __init__(self, scheduled, start):
        self.scheduled_time, self.start_time = scheduled, start


def test_sends_behind_schedule(session):
    recs = [_Sent(0.0, 0.001), _Sent(1.0, 1.0 + HELD_UP_S + 0.01), _Sent(2.0, 2.9), _Sent(3.0, 3.0 + HELD_UP_S)]
    c = ClientHealth()
    session.note_schedule(c, recs, queued=False)
    assert c.send_lag_s["max"] == pytest.approx(0.9)
    assert c.warnings["schedule_warning"].startswith(f"2 of 4 requests were sent more than {HELD_UP_S:g} s behind "
                                                     "their arrival time (up to 0.90 s)")
    queued = ClientHealth()
    session.note_schedule(queued, recs, queued=True)  # waits for a --max-concurrency slot are the load's
    assert queued.send_lag_s == c.send_lag_s and not queued.warnings
    empty = ClientHealth()
    session.note_schedule(empty, [], queued=False)
    assert empty.send_lag_s is None and not empty.warnings


@pytest.mark.parametrize("version, shapes, needle", [
    ("0.31.0", [(90, 20), (95, 30), (10, 10)], "95 prompt + 30 output"),  # the largest prompt + output named
    ("0.31.0", [(60, 40)], None),  # exactly max_model_len fits
    ("0.32.0", [(90, 20), (95, 30)], None),  # 0.32 cuts max_tokens to the context left
    ("0.32.0", [(99, 1), (100, 1), (100, 5)], "100 prompt + 5 output"),  # a prompt that fills the context
])
def test_requests_past_max_model_len(session, version, shapes, needle):
    session.server = {"max_model_len": 100, "server_version": version}
    if needle is None:
        session.check_fits(shapes)
        return
    with pytest.raises(MeasureError, match=re.escape(f"a request of {needle} tokens exceeds the server's "
                                                     "max_model_len of 100")):
        session.check_fits(shapes)


def test_a_random_load_whose_smallest_request_cannot_fit(session):
    session.server = {"max_model_len": 100, "server_version": "0.31.0"}
    # the sampled part's lower bound (50 less the BOS vLLM's RandomDataset leaves room for) plus the prefix
    session.check_random_fits(RandomWorkload(input_len=50, output_len=40, prefix_len=11))  # 49 + 11 + 40 fits
    with pytest.raises(MeasureError, match="the smallest has at least 61 prompt \\+ 40 output tokens"):
        session.check_random_fits(RandomWorkload(input_len=50, output_len=40, prefix_len=12))
    session.server = {"max_model_len": None}
    session.check_random_fits(RandomWorkload(input_len=5000, output_len=40))  # nothing to check against


class _Prompt:
    request = {"built": True}  # sent as is (Session.payload is not called)
    target_prompt_tokens, max_tokens = 8, 2


def _outcomes(session, monkeypatch, plan: dict[int, str]):
    """Session.send's stream answered without a server: per request id "ok", "500" or "refused"."""
    async def stream(endpoint, body, inf):
        inf.start_time = 0.0
        if plan[inf.request_id] == "ok":
            inf.chunk_times, inf.content, inf.end_time = [0.1, 0.2], [True, True], 0.2
        else:
            inf.error = f"HTTP 500 on request {inf.request_id}"
            inf.connect_failed = plan[inf.request_id] == "refused"

    monkeypatch.setattr(session.client, "stream", stream)


def _send(session, rid, record=True):
    return asyncio.run(session.send(_Prompt(), rid, 0.0, record=record))


def test_finished_requests_move_the_counters(session, monkeypatch):
    _outcomes(session, monkeypatch, {0: "ok", 1: "500", 2: "500", 3: "ok", 4: "500"})
    for rid in range(5):
        _send(session, rid, record=rid != 2)  # request 2 a warmup
    assert (session.n_ok, session.n_fail, session.warmup_fail) == (2, 2, 1)
    assert [r.request_id for r in session.records] == [0, 1, 3, 4]  # a warmup is not recorded
    assert session.first_error == "HTTP 500 on request 1"  # the first, not the last
    assert session.inflight == 0


def test_a_server_that_refuses_connections_stops_the_run(session, monkeypatch):
    n = UNREACHABLE_AFTER - 1
    plan = {**{i: "refused" for i in range(n)}, 50: "ok", **{100 + i: "refused" for i in range(n)},
            200: "refused"}
    _outcomes(session, monkeypatch, plan)
    for rid in [*range(n), 50, *range(100, 100 + n)]:  # an answer in between starts the count again
        _send(session, rid)
    assert not session.stopper.event.is_set()
    _send(session, 200)
    assert session.stopper.event.is_set() and session.stopper.reason.startswith("server unreachable (HTTP 500")


def test_loop_stalls_are_told_from_the_runs_start(session):
    c = ClientHealth()
    session.note_stalls(c, 0.0)  # no tick yet: nothing to tell
    assert c.loop_lag_s is None and not c.warnings
    session.watch.late.extend([0.001, 0.002, 0.4])
    session.watch.stalls = [(10.0 + 1.5 + 0.1 * i, 0.3 + 0.001 * i) for i in range(25)]
    session.note_stalls(c, 10.0)
    assert c.loop_lag_s["max"] == 0.4
    assert len(c.stalls) == 20 and c.stalls[0] == [1.5, 0.3] and c.stalls[19] == [3.4, 0.319]
    assert (f"held up 25 time(s) for more than {HELD_UP_S:g} s (up to 0.40 s, first 1.5 s into the run)"
            in c.warnings["client_stall_warning"])


def test_a_request_cancelled_in_flight_is_recorded_as_interrupted(session, monkeypatch):
    async def stream(endpoint, body, inf):
        inf.start_time = 0.0
        await asyncio.sleep(30)

    monkeypatch.setattr(session.client, "stream", stream)

    async def go():
        task = asyncio.ensure_future(session.send(_Prompt(), 7, 0.0))
        await asyncio.sleep(0.05)
        assert session.inflight == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    (rec,) = session.records
    assert rec.request_id == 7 and rec.error == "interrupted: cancelled while in flight"
    assert session.inflight == 0 and session.n_fail == 1


def test_a_stop_gives_requests_in_flight_the_grace_period(session):
    """drain: after a stop, in-flight requests have `grace` s to end; one that ends early ends the wait, a
    second (hard) stop or the period's end cancels the rest."""
    async def go(grace, hard, ends_after):
        session.grace = grace
        session.stopper = Stopper()
        tasks = [asyncio.ensure_future(asyncio.sleep(t)) for t in ends_after]
        session.stopper.request("stop asked")
        if hard:
            session.stopper.hard.set()
        t0 = time.monotonic()
        await session.drain(tasks)
        return time.monotonic() - t0, [t.cancelled() for t in tasks]

    took, cancelled = asyncio.run(go(5.0, False, [0.2]))
    assert cancelled == [False] and took < 3.0  # ended within the grace: the wait ends with it
    took, cancelled = asyncio.run(go(0.3, False, [0.05, 30]))
    assert cancelled == [False, True] and 0.25 < took < 3.0
    took, cancelled = asyncio.run(go(5.0, True, [30]))
    assert cancelled == [True] and took < 3.0


def test_a_run_that_fails_is_closed_with_its_reason(tmp_path):
    s = Session("http://127.0.0.1:9", "m", "chat", None, 5.0, tmp_path / "run", False, False, 4, 0.0, False)
    try:
        s.fail(MeasureError("too early"))  # before the folder exists: nothing to close
        assert not (tmp_path / "run").exists()
        s.server = {"server": "vllm"}
        info = s.base_info("open", {"name": "random"}, {"rate": 1.0})
        assert info["capsim_run"] == 1 and info["status"] == "running" and info["kind"] == "open"
        info["meta"] = {"model": "m"}
        s.open_files(info)
        s.fail(KeyboardInterrupt())
        got = json.loads((tmp_path / "run" / "run.json").read_text())
        assert got["status"] == "interrupted" and got["failure"] == "interrupted (KeyboardInterrupt)"
        assert got["meta"] == {"model": "m", "status": "interrupted", "stop_reason": "interrupted (KeyboardInterrupt)"}
        s.fail(MeasureError("later"))  # closed already: the first reason stands
        assert json.loads((tmp_path / "run" / "run.json").read_text())["failure"] == "interrupted (KeyboardInterrupt)"
        s.info["status"] = "running"
        s.fail(ValueError("bad value"))
        got = json.loads((tmp_path / "run" / "run.json").read_text())
        assert got["status"] == "failed" and got["failure"] == "ValueError: bad value"
    finally:
        s.writer.close()
        asyncio.run(s.client.aclose())


def test_a_run_without_a_folder_fails_quietly(session):
    session.info = {"status": "running"}
    session.fail(MeasureError("no folder"))  # nothing to write, nothing raised
    assert session.info == {"status": "running"}
