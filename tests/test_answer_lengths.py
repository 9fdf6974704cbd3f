"""Answers that stop at EOS in llama-benchy runs: the length law, the runner's wall times, and their
recovery by the fit from a test's wall time and its figures."""
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from calibrate.answer_lengths import OVERHEAD_S, estimate_stop_mean, simulated_wall, with_answer_lengths
from calibrate.fit import closed_pattern, compare, robust_loss
from calibrate.importers import closed_runs, closed_test_walls
from calibrate.results import ClosedRun
from simulator.load import ClosedLoop
from simulator.profile import load_profile
from simulator.sim import simulate_closed
from simulator.summary import summarize_closed
from simulator.workload import FixedWorkload, WorkloadError, stop_lengths
from tests.test_importers import RESULTS, needs_data


@pytest.mark.parametrize("shape", [1.0, 4.0, 32.0])
def test_stop_lengths_keep_the_laws_mean_and_its_cap(shape):
    for n in (1, 5, 10, 400):
        lengths = stop_lengths(300.0, 100_000, n, shape)
        assert len(lengths) == n and lengths == sorted(lengths)
        assert np.mean(lengths) == pytest.approx(300.0, abs=0.5 + 300.0 * 0.002 * (n == 400))
    capped = stop_lengths(300.0, 256, 10, shape)
    assert max(capped) == 256 and min(capped) >= 1
    # the capped mean is E[min(X, 256)] of the gamma law, by sampling
    rng = np.random.default_rng(0)
    want = np.minimum(rng.gamma(shape, 300.0 / shape, 400_000), 256).mean()
    assert np.mean(stop_lengths(300.0, 256, 1000, shape)) == pytest.approx(want, rel=0.01)


def test_a_larger_shape_gives_more_alike_answers():
    spread = [np.std(stop_lengths(400.0, 10_000, 10, k)) for k in (1.0, 4.0, 32.0)]
    assert spread[0] > spread[1] > spread[2] > 0


def test_fixed_workload_stops_its_answers_and_refuses_a_bad_law():
    specs = FixedWorkload(512, 1024, stop_mean=200.0, stop_shape=4.0).sample(5)
    assert [s.max_tokens for s in specs] == [1024] * 5
    assert [s.output_tokens for s in specs] == stop_lengths(200.0, 1024, 5, 4.0)
    assert all(s.stops_early for s in specs)
    assert FixedWorkload(512, 1024).sample(3)[0].output_tokens == 1024
    with pytest.raises(WorkloadError, match="stop_mean"):
        FixedWorkload(512, 1024, stop_mean=0.5)
    with pytest.raises(WorkloadError, match="stop_shape"):
        FixedWorkload(512, 1024, stop_mean=100.0, stop_shape=0.0)


def test_runner_walls_read_closed_loop_tests_only(tmp_path):
    assert closed_test_walls(tmp_path) == {}
    (tmp_path / "_runner.log").write_text(
        "[10:05:27] ── START 01 ──\n[10:13:22] ── END 01 (475s) ──\n[10:13:22] ── END 02 (825s) ──\n"
        "[11:00:00] ── END 07 (1999s) ──\n[11:30:00] ── END 11 (5000s) ──\n"
        "[12:00:00] ── END 03 (0s) ──\n[12:00:00] ── END 01 (0s) ──\n")
    assert closed_test_walls(tmp_path) == {"01": 475.0, "02": 825.0}
    for broken in (b"", b"\xff\xfe END 01 (475s)"):  # empty, not UTF-8: no times, and no failure
        (tmp_path / "_runner.log").write_bytes(broken)
        assert closed_test_walls(tmp_path) == {}


def _synthetic_run(profile, stop_mean, shape) -> ClosedRun:
    """A llama-benchy table and wall time as the simulator makes them, with answers that stop."""
    combos = [(256, 2048, 0, 1), (256, 2048, 0, 5), (256, 2048, 0, 10)]
    pattern = ClosedLoop(combos=combos, runs=1, warmup=False, stop_mean=stop_mean, stop_shape=shape)
    rows = summarize_closed(simulate_closed(profile, pattern))
    run = ClosedRun(source="synthetic", test="03-long-output", model=None, runs=3, latency_mode="generation",
                    latency_ms=None, version="0.4.0", rows=rows)
    truth = replace(run, stop_mean=stop_mean, stop_shape=shape)
    return replace(run, wall_s=simulated_wall(profile, truth, 1.0, stop_mean) + OVERHEAD_S)


def test_the_answer_length_is_recovered_from_the_wall_time():
    profile = load_profile()
    run = replace(_synthetic_run(profile, 300.0, 4.0), stop_shape=4.0)
    assert estimate_stop_mean(profile, run, 1.0) == pytest.approx(300.0, rel=0.01)
    # answers that ran to tg leave nothing to estimate, nor does a run without a wall time
    full = replace(run, wall_s=simulated_wall(profile, run, 1.0, None) + OVERHEAD_S)
    assert estimate_stop_mean(profile, full, 1.0) is None
    assert estimate_stop_mean(profile, replace(run, wall_s=None), 1.0) is None


@pytest.mark.parametrize("shape", [1.0, 4.0, 32.0])
def test_the_shape_is_the_one_whose_figures_match_the_table(shape):
    profile = load_profile()
    run = _synthetic_run(profile, 300.0, shape)
    chosen = with_answer_lengths(profile, [run], 1.0, lambda rs: robust_loss(compare(profile, rs, 1.0)))
    assert chosen[0].stop_shape == shape
    assert chosen[0].stop_mean == pytest.approx(300.0, rel=0.02)
    assert closed_pattern(chosen[0]).stop_mean == chosen[0].stop_mean


@needs_data
def test_walls_do_not_depend_on_the_open_loop_tests(tmp_path):
    src = RESULTS / "mistral-small-4" / "mistral-small-4-119b" / "nvfp4"
    runs = closed_runs(src)
    assert [r.wall_s for r in runs] == [475.0, 825.0, 266.0, 409.0, 1631.0, 695.0]
    copy = tmp_path / "results" / "m" / "m" / "nvfp4"
    shutil.copytree(src, copy)
    log = copy / "_runner.log"
    open_loop = re.compile(r"(START|END) (0[7-9]|1[01])")
    assert open_loop.search(log.read_text())  # the log holds the open-loop tests' times too
    log.write_text("\n".join(line for line in log.read_text().splitlines() if not open_loop.search(line)))
    assert [r.wall_s for r in closed_runs(copy)] == [r.wall_s for r in runs]


def _one_row_run(tg=256, runs=2, rows=((128, 256, 0, 1),)):
    return ClosedRun(source="synthetic", test="03-long-output", model=None, runs=runs, latency_mode="generation",
                     latency_ms=None, version="0.4.0",
                     rows=summarize_closed(simulate_closed(load_profile(), ClosedLoop(combos=list(rows), runs=1,
                                                                                       warmup=False))))


def test_a_simulated_wall_is_each_tests_span_once_per_run_and_once_for_its_warmup():
    profile = load_profile()
    rows = ((128, 256, 0, 1), (512, 64, 0, 4))
    for runs, times in ((2, 3), (5, 6), (None, 4)):  # llama-benchy's default is 3 runs
        run = _one_row_run(runs=runs, rows=rows)
        spans = {}
        for r in simulate_closed(profile, closed_pattern(run)).records:
            lo, hi = spans.get(r.test, (np.inf, -np.inf))
            spans[r.test] = (min(lo, r.start_time), max(hi, r.end_time))
        assert len(spans) == 2 and all(hi > lo for lo, hi in spans.values())
        assert simulated_wall(profile, run, 1.0, None) == pytest.approx(times * sum(hi - lo for lo, hi in spans.values()))
    # answers that stop early take less time
    assert simulated_wall(profile, run, 1.0, 20.0) < simulated_wall(profile, run, 1.0, None)


def test_the_wall_time_less_ten_seconds_is_what_the_answers_take():
    """The runner's log times the whole invocation: ten seconds of it are tokenizer, warmup and probes."""
    profile = load_profile()
    run = _synthetic_run(profile, 300.0, 4.0)
    run = replace(run, stop_shape=4.0, wall_s=simulated_wall(profile, replace(run, stop_shape=4.0), 1.0, 300.0) + 10.0)
    assert estimate_stop_mean(profile, run, 1.0) == pytest.approx(300.0, rel=0.003)


def test_only_a_test_that_took_at_most_half_of_full_answers_is_read():
    profile = load_profile()
    run = replace(_synthetic_run(profile, 300.0, 4.0), stop_shape=4.0)
    full = simulated_wall(profile, run, 1.0, None)
    shortest = simulated_wall(profile, run, 1.0, 1.0)
    assert shortest < 0.3 * full
    for share, read in ((0.4, True), (0.49, True), (0.51, False), (0.9, False)):
        got = estimate_stop_mean(profile, replace(run, wall_s=share * full + OVERHEAD_S), 1.0)
        assert (got is not None) == read, share
        if read:  # the length that takes that share
            assert simulated_wall(profile, run, 1.0, got) == pytest.approx(share * full, rel=0.01)
    # no faster than the shortest answers: no reading
    assert estimate_stop_mean(profile, replace(run, wall_s=shortest + OVERHEAD_S), 1.0) is None
    assert estimate_stop_mean(profile, replace(run, wall_s=0.5 * shortest + OVERHEAD_S), 1.0) is None


def test_lengths_are_found_from_one_token_to_eight_times_the_longest_tg():
    profile = load_profile()
    rows = ((256, 64, 0, 1), (256, 8192, 0, 1))
    run = replace(_one_row_run(runs=1, rows=rows), stop_shape=32.0)
    # lengths are whole tokens: a mean of 1.6 is found between one and two, below e (a log-length of 1)
    got = estimate_stop_mean(profile, replace(run, wall_s=simulated_wall(profile, run, 1.0, 1.6) + OVERHEAD_S), 1.0)
    assert 1.0 <= got < 2.7
    # and one above 8 x the shortest tg (the bracket is 8 x the longest)
    truth = simulated_wall(profile, run, 1.0, 1500.0)
    got = estimate_stop_mean(profile, replace(run, wall_s=truth + OVERHEAD_S), 1.0)
    assert got == pytest.approx(1500.0, rel=0.01) and simulated_wall(profile, run, 1.0, got) == pytest.approx(truth, rel=0.01)
