"""simulator/replicate.py: R seeded replications of one scenario and their median and band (issue 13).

Replication r samples the workload and the arrival schedule with seed + r and the step-time noise
with r; replication 0 runs the profile as given (not a draw from its uncertainty), the others a
profile drawn with key r. Runs go to joblib workers when n_jobs > 1, which must not change them.
"""
import math
from dataclasses import replace

import numpy as np
import pytest

from simulator.load import ClosedLoop, OpenLoop
import simulator.replicate as replicate
from simulator.replicate import band, default_jobs, open_run, replicate_closed, replicate_open
from simulator.sim import simulate_closed, simulate_open
from simulator.summary import summarize_closed, summarize_open
from simulator.uncertainty import Uncertainty, draw_profile
from simulator.workload import RandomWorkload
from tests.helpers import tiny_profile

N = 6
WORKLOAD = RandomWorkload(input_len=64, output_len=12, range_ratio=0.5)
PATTERN = OpenLoop(rate=20.0, burstiness=1.0, seed=7)
CLOSED = ClosedLoop(pp=(32,), tg=(8,), concurrency=(1, 2), runs=2)


def uncertain_profile():
    """A profile whose replications 1.. run on drawn step times (x exp(N(0, 0.5)) on the memory side)."""
    p = tiny_profile(budget=64, seqs=4, noise=0.05)
    p.uncertainty = Uncertainty(model_sigma=0.5)
    return p


def open_summary(profile, r):
    """What replication r must be, built from the public pieces replicate_open is documented to use."""
    pat = replace(PATTERN, seed=PATTERN.seed + r)
    run = simulate_open(profile, WORKLOAD.sample(N, seed=pat.seed), pat, noise_seed=r)
    s = summarize_open(run)
    s["num_preemptions"] = run.num_preemptions
    return s


def same(a: dict, b: dict) -> bool:
    """Equal dicts, NaN equal to NaN (a summary of a run with no decode has NaN keys)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


# ------------------------------------------------------------------ band()

def test_band_is_median_and_percentiles_per_numeric_key():
    values = [{"a": float(v), "n": v * 10, "name": "x", "none": None} for v in (5, 1, 4, 2, 3)]
    med, lo, hi = band(values)
    # sorted a = 1, 2, 3, 4, 5: median 3; numpy's linear percentile at 5 % is position 0.05 x 4 = 0.2
    # -> 1 + 0.2 x (2 - 1) = 1.2; at 95 % position 3.8 -> 4 + 0.8 x (5 - 4) = 4.8
    assert med == {"a": 3.0, "n": 30.0}  # strings and None are not banded
    assert lo == pytest.approx({"a": 1.2, "n": 12.0})
    assert hi == pytest.approx({"a": 4.8, "n": 48.0})
    # other quantiles: 25 % at position 1 -> 2, 75 % at position 3 -> 4
    _, lo, hi = band(values, lo=25, hi=75)
    assert (lo["a"], hi["a"]) == (2.0, 4.0)


def test_band_of_a_list_of_numbers_is_element_by_element():
    """A key holding a list of numbers of one length in every replication (a simulated speculating server's
    spec_decode_per_position_acceptance_rates) is banded per element; one whose lengths differ, that some
    replication lacks, or that is empty is left out, as a string is."""
    values = [{"p": [float(v), 10.0 * v], "uneven": [1.0] * (1 + (v == 3)), "gap": [1.0], "empty": []}
              for v in (5, 1, 4, 2, 3)]
    del values[2]["gap"]
    med, lo, hi = band(values)
    assert med == {"p": [3.0, 30.0]}
    assert lo["p"] == pytest.approx([1.2, 12.0]) and hi["p"] == pytest.approx([4.8, 48.0])
    assert isinstance(med["p"][0], float)


def test_band_of_one_replication_is_that_replication():
    med, lo, hi = band([{"x": 2.5}])
    assert med == lo == hi == {"x": 2.5}


# ------------------------------------------------------------------ which run is which

def test_replication_0_is_the_profile_itself_and_the_others_are_drawn():
    prof = uncertain_profile()
    med, lo, hi, runs = replicate_open(prof, WORKLOAD, N, PATTERN, replications=3, n_jobs=1)
    assert len(runs) == 3
    # replication 0: the profile as given with the user's seed, not draw_profile(profile, 0)
    assert same(runs[0], open_summary(prof, 0))
    assert not same(runs[0], open_summary(draw_profile(prof, 0), 0))
    # replication r >= 1: a profile drawn with key r, seed + r, noise seed r
    for r in (1, 2):
        assert same(runs[r], open_summary(draw_profile(prof, r), r))
    # the draws do change the timing (else the checks above could not tell the profiles apart)
    assert runs[1]["mean_tpot_ms"] != runs[0]["mean_tpot_ms"]
    # med/lo/hi are band() of the replications
    assert (med, lo, hi) == band(runs)
    assert lo["mean_tpot_ms"] <= med["mean_tpot_ms"] <= hi["mean_tpot_ms"]


def test_replication_0_given_is_summarised_in_place_of_a_second_run(monkeypatch):
    """simulate open keeps replication 0's records for --save-detailed and the figures: replicate_open
    summarises that run where the caller passes it, runs only the others, and bands the same."""
    prof = uncertain_profile()
    want = replicate_open(prof, WORKLOAD, N, PATTERN, replications=3, n_jobs=1)
    first = open_run(prof, WORKLOAD, N, PATTERN)
    seeds = []
    real = replicate.simulate_open
    monkeypatch.setattr(replicate, "simulate_open", lambda *a, **k: seeds.append(k["noise_seed"]) or real(*a, **k))
    got = replicate_open(prof, WORKLOAD, N, PATTERN, replications=3, n_jobs=1, first=first)
    assert seeds == [1, 2]
    assert all(same(a, b) for a, b in zip(want[3], got[3])) and len(got[3]) == 3
    assert all(same(a, b) for a, b in zip(want[:3], got[:3]))
    seeds.clear()
    assert same(replicate_open(prof, WORKLOAD, N, PATTERN, first=first)[0], want[3][0]) and seeds == []


def test_one_replication_is_the_plain_simulation():
    prof = tiny_profile(budget=64, seqs=4)
    med, lo, hi, runs = replicate_open(prof, WORKLOAD, N, PATTERN, replications=1)
    assert same(runs[0], open_summary(prof, 0))
    assert med == lo == hi
    assert runs[0]["completed"] == N


def test_closed_replication_0_is_the_plain_simulation():
    prof = uncertain_profile()
    merged, lo, hi, latency = replicate_closed(prof, CLOSED, replications=1)
    run = simulate_closed(prof, CLOSED, noise_seed=0)
    plain = summarize_closed(run)
    assert [(r.pp, r.tg, r.depth, r.concurrency) for r in merged] == [(32, 8, 0, 1), (32, 8, 0, 2)]
    for m, p in zip(merged, plain):
        assert m.metrics.keys() == p.metrics.keys()
        for name, (mean, std) in p.metrics.items():
            assert m.metrics[name] == (mean, std)
    assert latency == run.closed_loop.latency_s


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("r", [0, -1])
def test_fewer_than_one_replication_is_refused(r):
    prof = tiny_profile()
    with pytest.raises(ValueError, match=rf"^--replications must be >= 1, got {r}$"):
        replicate_open(prof, WORKLOAD, N, PATTERN, replications=r)
    with pytest.raises(ValueError, match=rf"^--replications must be >= 1, got {r}$"):
        replicate_closed(prof, CLOSED, replications=r)


# ------------------------------------------------------------------ joblib workers

def test_two_workers_give_the_same_results_as_one():
    prof = uncertain_profile()
    one = replicate_open(prof, WORKLOAD, N, PATTERN, replications=3, n_jobs=1)
    two = replicate_open(prof, WORKLOAD, N, PATTERN, replications=3, n_jobs=2)
    assert len(one[3]) == len(two[3]) == 3
    assert all(same(a, b) for a, b in zip(one[3], two[3]))  # in replication order
    assert all(same(a, b) for a, b in zip(one[:3], two[:3]))
    c1 = replicate_closed(prof, CLOSED, replications=3, n_jobs=1)
    c2 = replicate_closed(prof, CLOSED, replications=3, n_jobs=2)
    assert [r.metrics for r in c1[0]] == [r.metrics for r in c2[0]]
    assert [r.metrics for r in c1[1]] == [r.metrics for r in c2[1]]
    assert [r.metrics for r in c1[2]] == [r.metrics for r in c2[2]]
    assert c1[3] == c2[3]


def test_default_jobs_is_replications_capped_by_cores(monkeypatch):
    import os
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [default_jobs(r) for r in (1, 3, 8, 20)] == [1, 3, 8, 8]
    assert default_jobs(0) == 1  # never zero workers
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one worker
    assert default_jobs(20) == 1


def test_one_replication_is_the_default():
    prof = uncertain_profile()
    assert all(same(a, b) for a, b in zip(replicate_open(prof, WORKLOAD, N, PATTERN)[3],
                                          replicate_open(prof, WORKLOAD, N, PATTERN, replications=1)[3]))
    assert len(replicate_open(prof, WORKLOAD, N, PATTERN)[3]) == 1
    assert [r.metrics for r in replicate_closed(prof, CLOSED)[0]] == \
        [r.metrics for r in replicate_closed(prof, CLOSED, replications=1)[0]]


def test_closed_replications_give_medians_and_a_band_of_the_means():
    """Replication r of the closed loop: the profile drawn with key r (0: itself), noise seed r; the
    merged row holds the median mean and the median std, the band the 5th and 95th percentiles of
    the means (and no std of its own)."""
    prof = uncertain_profile()
    R = 4
    merged, lo, hi, latency = replicate_closed(prof, CLOSED, replications=R, n_jobs=1)
    runs = [simulate_closed(prof if r == 0 else draw_profile(prof, r), CLOSED, noise_seed=r) for r in range(R)]
    rows = [summarize_closed(run) for run in runs]
    spread = 0
    for i, row in enumerate(merged):
        for name in row.metrics:
            means = np.array([rs[i].metrics[name][0] for rs in rows])
            stds = np.array([rs[i].metrics[name][1] for rs in rows])
            assert row.metrics[name] == (float(np.median(means)), float(np.median(stds)))
            assert lo[i].metrics[name] == (float(np.percentile(means, 5)), 0.0)
            assert hi[i].metrics[name] == (float(np.percentile(means, 95)), 0.0)
            spread += np.ptp(means) > 0
    assert spread  # the draws differ, so the percentiles above are not the median by accident
    assert latency == float(np.median([run.closed_loop.latency_s for run in runs]))


def test_one_worker_or_one_replication_runs_here(monkeypatch):
    """No worker processes are started for work one process does (joblib's start-up costs seconds)."""
    import joblib

    def refuse(*a, **k):
        raise AssertionError("joblib.Parallel started")

    monkeypatch.setattr(joblib, "Parallel", refuse)
    prof = uncertain_profile()
    assert len(replicate_open(prof, WORKLOAD, N, PATTERN, replications=3, n_jobs=1)[3]) == 3
    assert len(replicate_open(prof, WORKLOAD, N, PATTERN, replications=1, n_jobs=4)[3]) == 1
    assert len(replicate_closed(prof, CLOSED, replications=3, n_jobs=1)[0]) == 2
    assert len(replicate_closed(prof, CLOSED, replications=1, n_jobs=4)[0]) == 2
    with pytest.raises(AssertionError, match="joblib.Parallel started"):
        replicate_open(prof, WORKLOAD, N, PATTERN, replications=2, n_jobs=2)
