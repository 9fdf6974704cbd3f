"""Validation's own rules on runs built here: what a run sent is rebuilt from its parameters, the
notes say when and why a comparison is weaker, capacity follows 11-rate-sweep's rule, and a row's
error and band mean what the scoreboard says they mean."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from calibrate.results import OpenRun
from calibrate.validate import (Row, Validation, acceptance_note, capacity, capacity_rows, format_validation,
                                noise_floor, outside_envelope, pattern_for, predict_run, validate, workload_for)
from simulator.profile import load_profile
from simulator.workload import RandomWorkload, WorkloadError
from tests.helpers import sharegpt_conversation

PROFILE = load_profile()
FMT = PROFILE.prompt_format


def random_run(test="T", n=12, input_len=64, output_len=16, result=None, **params) -> OpenRun:
    p = {"dataset_name": "random", "random_input_len": input_len, "random_output_len": output_len,
         "num_prompts": n, "seed": 3, "request_rate": 2.0} | params
    return OpenRun(source="s", test=test, path=None, dataset="random", params=p,
                   result={"completed": n} | (result or {}))


def with_envelope(profile, **env):
    return dataclasses.replace(profile, provenance=dict(profile.provenance, envelope=env))


# ------------------------------------------------------------------ rows and families

def test_a_rows_error_is_signed_against_the_measured_value_and_its_band_is_closed():
    r = Row("s", "T", "median_ttft_ms", measured=200.0, predicted=230.0, band_lo=150.0, band_hi=200.0)
    assert r.error_pct == pytest.approx(15.0)
    assert Row("s", "T", "m", 200.0, 170.0, 0, 0).error_pct == pytest.approx(-15.0)
    assert r.in_band  # the measured value on the band's edge is inside it
    assert Row("s", "T", "m", 150.0, 1.0, 150.0, 300.0).in_band
    assert not Row("s", "T", "m", 149.9, 1.0, 150.0, 300.0).in_band
    assert not Row("s", "T", "m", 300.1, 1.0, 150.0, 300.0).in_band
    assert math.isnan(Row("s", "T", "m", 0.0, 5.0, 0, 10).error_pct)  # no error against nothing measured
    js = r.to_json()
    assert js["error_pct"] == pytest.approx(15.0) and js["in_band"] is True and js["measured"] == 200.0


def test_families_are_the_median_absolute_error_of_their_metrics():
    rows = [Row("s", "T", "median_ttft_ms", 100, 110, 0, 0), Row("s", "T", "p95_ttft_ms", 100, 70, 0, 0),
            Row("s", "T", "p99_ttft_ms", 100, 105, 0, 0), Row("s", "T", "median_tpot_ms", 100, 90, 0, 0),
            Row("s", "T", "mean_e2el_ms", 0, 90, 0, 0)]  # NaN error: left out
    fam = Validation(rows=rows).families()
    assert fam["ttft"] == pytest.approx(10.0)  # median of 10, 30, 5
    assert fam["tpot"] == pytest.approx(10.0)
    assert math.isnan(fam["e2el"]) and math.isnan(fam["throughput"])


# ------------------------------------------------------------------ the load a run sent

def test_pattern_reads_rate_burstiness_cap_and_seed():
    run = random_run(request_rate=0.7, burstiness=0.5, max_concurrency=8, seed=11)
    lp = pattern_for(run)
    assert (lp.rate, lp.burstiness, lp.max_concurrency, lp.seed) == (0.7, 0.5, 8, 11)
    for rate in ("inf", None):
        lp = pattern_for(random_run(request_rate=rate, burstiness=None, max_concurrency=None, seed=None))
        assert lp.rate == math.inf and lp.burstiness == 1.0 and lp.max_concurrency is None and lp.seed == 0
    assert pattern_for(OpenRun("s", "T", None, "random", params={})).rate == math.inf  # the tool's default


@pytest.mark.parametrize("params, chat", [({"backend": "openai-chat"}, True),  # a bare result JSON: no endpoint
                                          ({"backend": "openai", "endpoint": "/v1/chat/completions"}, True),
                                          ({"backend": "openai", "endpoint": "/v1/completions"}, False),
                                          ({}, True)])  # neither named: the suite's openai-chat
def test_the_chat_template_is_counted_when_the_backend_or_the_endpoint_is_chat(params, chat):
    wl = workload_for(random_run(**params), PROFILE)
    assert wl.fmt.chat_template_tokens == (FMT.chat_template_tokens if chat else 0)
    assert wl.prefix_len == 0 and wl.range_ratio == 0.0  # the tool's defaults where the run names none


def test_the_template_is_read_off_the_runs_input_total_when_plausible():
    base = random_run(n=20)
    raw, _, _ = RandomWorkload(64, 16, fmt=FMT).lengths(20, 3)
    for per in (0, 7, 499):  # template tokens a request, as the run's total says
        total = int(raw.sum()) + 20 * (FMT.special_tokens + per)
        wl = workload_for(random_run(n=20, result={"total_input_tokens": total}), PROFILE)
        assert wl.fmt.chat_template_tokens == per
        assert sum(s.prompt_tokens for s in wl.sample(20, 3)) == total
    for per in (-1, 500):  # not a template: the profile's own stands
        total = int(raw.sum()) + 20 * (FMT.special_tokens + per)
        wl = workload_for(random_run(n=20, result={"total_input_tokens": total}), PROFILE)
        assert wl.fmt.chat_template_tokens == FMT.chat_template_tokens
    assert workload_for(base, PROFILE).fmt.chat_template_tokens == FMT.chat_template_tokens


def test_answers_shorter_than_max_tokens_are_read_as_stopping_early_only_below_98_percent():
    _, outs, _ = RandomWorkload(64, 16, range_ratio=0.5, fmt=FMT).lengths(20, 3)
    full = int(outs.sum())
    for got, frac in ((full, 1.0), (math.ceil(0.98 * full), 1.0), (full // 2, (full // 2) / full)):
        wl = workload_for(random_run(n=20, random_range_ratio=0.5, result={"total_output_tokens": got}), PROFILE)
        assert wl.output_fraction == pytest.approx(frac)
    wl = workload_for(random_run(n=20, random_range_ratio=0.5, result={"total_output_tokens": 0.0001}), PROFILE)
    assert wl.output_fraction == pytest.approx(1e-3)  # floored: a request writes at least a token


def test_a_dataset_validation_cannot_rebuild_is_one_clear_error():
    with pytest.raises(WorkloadError, match="T: cannot rebuild a 'sonnet' workload"):
        workload_for(OpenRun("s", "T", None, "sonnet", params={"num_prompts": 3}), PROFILE)


def test_the_prediction_knows_the_longest_request_it_ran():
    run = random_run(n=10, input_len=200, output_len=40, random_range_ratio=0.5)
    pred, lo, hi, med = predict_run(run, PROFILE, replications=1, n_jobs=1)
    specs = workload_for(run, PROFILE).sample(10, 3)
    assert pred["_max_context"] == max(s.prompt_tokens + s.output_tokens for s in specs)
    assert pred["_max_context"] > min(s.prompt_tokens + s.output_tokens for s in specs)


# ------------------------------------------------------------------ notes

def test_the_envelope_note_names_what_went_beyond_calibration():
    prof = with_envelope(PROFILE, max_concurrency=20, max_context=4000)
    assert outside_envelope("T", {"max_concurrent_requests": 20, "_max_context": 4000}, prof) is None  # at the edge
    assert outside_envelope("T", {"max_concurrent_requests": 21, "_max_context": 100}, prof) == (
        "T: outside the calibrated envelope (21 requests in flight at the peak, calibration ran at most 20): "
        "extrapolated")
    assert outside_envelope("T", {"max_concurrent_requests": 3, "_max_context": 4001}, prof) == (
        "T: outside the calibrated envelope (requests of up to 4001 tokens, calibration's longest was 4000): "
        "extrapolated")
    both = outside_envelope("T", {"max_concurrent_requests": 30, "_max_context": 9000}, prof)
    assert "30 requests in flight" in both and "; requests of up to 9000 tokens" in both
    # an envelope the profile does not carry (an older profile) says nothing either way
    bare = dataclasses.replace(PROFILE, provenance={})
    assert outside_envelope("T", {"max_concurrent_requests": 300, "_max_context": 90000}, bare) is None
    assert outside_envelope("T", {"max_concurrent_requests": 300, "_max_context": 90000},
                            with_envelope(PROFILE, max_context=4000)) == (
        "T: outside the calibrated envelope (requests of up to 90000 tokens, calibration's longest was 4000): "
        "extrapolated")
    assert outside_envelope("T", {"max_concurrent_requests": 300, "_max_context": 90000},
                            with_envelope(PROFILE, max_concurrency=20)).count("requests of up to") == 0


def test_the_acceptance_note_leaves_a_fifth_either_way_unsaid():
    spec = dataclasses.replace(PROFILE, engine=dataclasses.replace(PROFILE.engine, num_speculative_tokens=2))
    assumed = spec.engine.tokens_per_spec_step
    run = lambda kept: OpenRun("s", "T", None, "random", result={"spec_decode_acceptance_length": kept})  # noqa: E731
    assert acceptance_note(run(assumed / 1.19), spec) is None
    assert acceptance_note(run(assumed * 1.19), spec) is None
    assert acceptance_note(run(assumed / 1.21), spec) is not None
    assert acceptance_note(run(assumed * 1.21), spec) is not None
    assert acceptance_note(run(0), spec) is None and acceptance_note(run("n/a"), spec) is None


def test_the_acceptance_note_holds_the_server_to_the_simulated_acceptance_where_the_run_counted_it():
    """The simulated run's spec_decode_acceptance_length (drafts cut short at an answer's end included)
    stands in for the profile's closed-form tokens a step; a run without it falls back."""
    spec = dataclasses.replace(PROFILE, engine=dataclasses.replace(PROFILE.engine, num_speculative_tokens=2))
    assumed = spec.engine.tokens_per_spec_step
    run = OpenRun("s", "T", None, "random", result={"spec_decode_acceptance_length": assumed})
    assert acceptance_note(run, spec, {"spec_decode_acceptance_length": assumed}) is None
    note = acceptance_note(run, spec, {"spec_decode_acceptance_length": assumed * 1.5})
    assert f"where the simulated server kept {assumed * 1.5:.2f}" in note and "1.5x" in note
    for pred in ({}, {"spec_decode_acceptance_length": float("nan")}, {"spec_decode_acceptance_length": 0}):
        assert acceptance_note(run, spec, pred) is None  # the profile's own figure: no gap
    far = OpenRun("s", "T", None, "random", result={"spec_decode_acceptance_length": assumed * 2})
    assert "where the profile assumes" in acceptance_note(far, spec, {})


# ------------------------------------------------------------------ capacity

def test_capacity_is_the_highest_rate_strictly_under_the_threshold():
    sweep = [(0.1, 2301), (0.2, 2828), (0.3, 3490), (0.5, 3632), (0.7, 4888), (1.0, 7627)]
    assert capacity(sweep, 2) is None
    assert capacity(sweep, 5) == 0.7
    assert capacity(sweep, 10) == 1.0
    assert capacity([(0.1, 1000.0), (0.3, 2000.0), (0.5, 1999.9)], 2.0) == 0.5  # not the last under, the highest
    assert capacity([(0.1, 2000.0)], 2.0) is None  # at the threshold is not under it
    assert capacity([], 2.0) is None


def test_capacity_rows_compare_the_sweep_steps_that_were_predicted():
    def step(rate, p95):
        return OpenRun("src", f"11-rate-sweep@{rate}", None, "random", params={"request_rate": rate},
                       result={"p95_ttft_ms": p95})
    runs = [step(0.1, 1500.0), step(0.3, 4000.0), step(0.5, 9000.0), step(0.7, 30.0),
            OpenRun("src", "07-office-baseline", None, "random", params={"request_rate": 9.0},
                    result={"p95_ttft_ms": 1.0})]
    preds = {("src", "11-rate-sweep@0.1"): {"p95_ttft_ms": 1900.0},
             ("src", "11-rate-sweep@0.3"): {"p95_ttft_ms": 5100.0}, ("src", "11-rate-sweep@0.5"): {"p95_ttft_ms": 9500.0},
             ("src", "07-office-baseline"): {"p95_ttft_ms": 1.0}}  # not a sweep step
    # 0.7 has no prediction (no request completed there): left out, so its 30 ms counts for nothing
    rows = capacity_rows(runs, preds)
    assert [(r["threshold_s"], r["measured_rps"], r["predicted_rps"], r["match"]) for r in rows] == [
        (2.0, 0.1, 0.1, True), (5.0, 0.3, 0.1, False), (10.0, 0.5, 0.5, True)]
    assert all(r["source"] == "src" for r in rows)
    assert capacity_rows(runs[-1:], preds) == []


def test_noise_floor_scores_one_measurement_against_another():
    a = [random_run("07", result={"median_ttft_ms": 100.0, "p99_ttft_ms": None}),
         random_run("08", result={"median_ttft_ms": 50.0})]
    b = [random_run("07", result={"median_ttft_ms": 110.0, "p99_ttft_ms": 3.0})]
    v = noise_floor(a, b)
    assert [(r.test, r.metric, r.measured, r.predicted, r.error_pct) for r in v.rows] == [
        ("07", "median_ttft_ms", 100.0, 110.0, pytest.approx(10.0))]


# ------------------------------------------------------------------ validate end to end

def test_validate_compares_each_metric_the_run_measured_and_skips_what_it_could_not():
    measured = {"median_ttft_ms": 100.0, "median_tpot_ms": float("nan"), "mean_e2el_ms": 900.0,
                "p99_ttft_ms": None}
    runs = [random_run("A", result=measured), random_run("B", result={"completed": 0, "median_ttft_ms": 5.0})]
    seen = []
    v = validate(runs, PROFILE, replications=2, n_jobs=1, progress=lambda i, n, run: seen.append((i, n, run.test)))
    assert sorted(r.metric for r in v.rows) == ["mean_e2el_ms", "median_ttft_ms"]
    assert all(r.test == "A" and r.band_lo <= r.band_hi for r in v.rows)
    assert "A: p99_ttft_ms, median_tpot_ms not a number in the result: not compared" in v.notes  # null too
    assert "B: no request completed (0 failed on the server): not validated" in v.notes
    assert seen == [(1, 2, "A"), (2, 2, "B")]
    one = validate(runs[:1], PROFILE, replications=1, n_jobs=1)
    assert [r.predicted for r in one.rows] == [r.predicted for r in v.rows]  # replication 0 is the prediction


def test_validate_raises_only_when_no_test_could_be_rebuilt():
    bad = OpenRun("s", "X", None, "sonnet", params={"num_prompts": 3}, result={"completed": 3})
    with pytest.raises(WorkloadError, match="cannot rebuild"):
        validate([bad], PROFILE, replications=1, n_jobs=1)
    v = validate([bad, random_run("A", result={"median_ttft_ms": 100.0})], PROFILE, replications=1, n_jobs=1)
    assert [r.test for r in v.rows] == ["A"] and "not validated: X: cannot rebuild a 'sonnet' workload" in v.notes


def test_the_report_prints_rows_families_capacity_and_notes():
    v = Validation(rows=[Row("a-very-long-source-name-that-runs-past-the-column", "T", "median_ttft_ms",
                             100.0, 110.0, 90.0, 105.0), Row("s", "T", "p95_ttft_ms", 100.0, 110.0, 101.0, 120.0)],
                   capacity=[{"source": "s", "threshold_s": 2.0, "measured_rps": 0.3, "predicted_rps": 0.5,
                              "match": False}], notes=["T: something to say"])
    text = format_validation(v)
    first, second = text.splitlines()[1:3]
    assert first.startswith("…ce-name-that-runs-past-the-column T ") and first.endswith("+10.0%   yes")
    assert second.endswith("[101, 120]   +10.0%    no")
    assert "median |error| per family: ttft 10.0%" in text
    assert "measured 0.3, predicted 0.5  MISS" in text and "note: T: something to say" in text
    floor = Validation(rows=[Row("x", "T", "median_ttft_ms", 100.0, 96.0, 96.0, 96.0)])
    with_floor = format_validation(v, floor)
    assert "  -4.0%" in with_floor and "noise floor (repeat measurement):  ttft 4.0%" in with_floor
    assert np.isfinite(v.families()["ttft"])


# ------------------------------------------------------------------ edges the first sweep found unpinned

def test_the_template_read_off_the_total_leaves_out_the_random_prefix():
    raw, _, _ = RandomWorkload(64, 16, fmt=FMT).lengths(20, 3)
    total = int(raw.sum()) + 20 * (FMT.special_tokens + 9 + 30)  # 9 template tokens beside a prefix of 30
    wl = workload_for(random_run(n=20, random_prefix_len=30, result={"total_input_tokens": total}), PROFILE)
    assert wl.fmt.chat_template_tokens == 9 and wl.prefix_len == 30


def test_answers_at_exactly_98_percent_of_max_tokens_are_whole():
    full = 20 * 16  # range ratio 0: every request asks 16
    assert workload_for(random_run(n=20, result={"total_output_tokens": 0.98 * full}), PROFILE).output_fraction == 1.0
    assert workload_for(random_run(n=20, result={"total_output_tokens": 0.98 * full - 1}),
                        PROFILE).output_fraction == pytest.approx((0.98 * full - 1) / full)


def test_a_run_that_counts_neither_prompts_nor_completions_rebuilds_the_profiles_template():
    run = OpenRun("s", "T", None, "random", params={"random_input_len": 64, "random_output_len": 16},
                  result={"total_input_tokens": 70})  # one request of 63 + 1 + 6 would read as 6 template tokens
    assert workload_for(run, PROFILE).fmt.chat_template_tokens == FMT.chat_template_tokens


def test_a_run_without_num_prompts_predicts_the_requests_it_completed_and_seed_zero():
    run = random_run(n=9, input_len=100, output_len=30, random_range_ratio=0.5)
    del run.params["num_prompts"], run.params["seed"]
    pred, _, _, _ = predict_run(run, PROFILE, replications=1, n_jobs=1)
    specs = workload_for(run, PROFILE).sample(9, 0)
    assert pred["completed"] == 9
    assert pred["_max_context"] == max(s.prompt_tokens + s.output_tokens for s in specs)
    assert pred["_max_context"] != max(s.prompt_tokens + s.output_tokens
                                       for s in workload_for(run, PROFILE).sample(9, 1))


def sharegpt_run(tmp_path, backend="openai-chat", **result) -> OpenRun:
    p = tmp_path / "sg.json"
    p.write_text(json.dumps([sharegpt_conversation(f"question {i} " + "word " * (5 + i), "answer " * (20 + 3 * i))
                             for i in range(30)]))
    return OpenRun("s", "08", None, "sharegpt",
                   params={"dataset_name": "sharegpt", "dataset_path": str(p), "num_prompts": 12, "seed": 0,
                           "backend": backend},
                   result={"completed": 12} | result)


def test_a_sharegpt_run_is_rebuilt_from_its_totals_with_whichever_it_has(tmp_path):
    plain = workload_for(sharegpt_run(tmp_path), PROFILE, tokenizer=None)
    specs = plain.sample(12, 0)
    outs, raws = sum(s.max_tokens for s in specs), sum(s.raw_prompt_tokens for s in specs)
    assert plain.output_fraction == 1.0 and plain.prompt_scale == 1.0
    assert all(s.prompt_tokens == s.raw_prompt_tokens + FMT.chat_template_tokens for s in specs)
    only_out = workload_for(sharegpt_run(tmp_path, total_output_tokens=outs // 2), PROFILE)
    assert only_out.output_fraction == pytest.approx((outs // 2) / outs) and only_out.prompt_scale == 1.0
    only_in = workload_for(sharegpt_run(tmp_path, total_input_tokens=2 * raws), PROFILE)
    assert only_in.prompt_scale == pytest.approx(2.0) and only_in.output_fraction == 1.0
    completions = workload_for(sharegpt_run(tmp_path, backend="openai"), PROFILE)
    assert completions.fmt.chat_template_tokens == 0
    uncounted = sharegpt_run(tmp_path, total_output_tokens=outs // 2)
    del uncounted.params["num_prompts"], uncounted.result["completed"]
    assert workload_for(uncounted, PROFILE).output_fraction == 1.0  # no count of requests: nothing to share out


def test_a_sharegpt_run_is_rebuilt_with_the_requests_it_chose(tmp_path):
    """--sharegpt-output-len, --disable-shuffle and --no-oversample choose which requests a ShareGPT run sent;
    the rebuilt workload makes the same choice (it once rebuilt the default sample whatever the run had
    asked for)."""
    run = sharegpt_run(tmp_path)
    default = workload_for(run, PROFILE, tokenizer=None).sample(40, 0)
    run.params |= {"sharegpt_output_len": 7, "disable_shuffle": True, "no_oversample": True, "num_prompts": 40}
    wl = workload_for(run, PROFILE, tokenizer=None)
    chosen = wl.sample(40, 0)
    assert (wl.output_len, wl.shuffle, wl.oversample) == (7, False, False)
    assert len(default) == 40 and len(chosen) == 30 and {s.max_tokens for s in chosen} == {7}
    assert [s.prompt_text for s in chosen] == [f"question {i} " + "word " * (5 + i) for i in range(30)]
    assert len({s.prompt_text for s in default}) == 30  # the default repeats ten of them, shuffled
    assert [s.prompt_text for s in default[:30]] != [s.prompt_text for s in chosen]


def test_sharegpt_prompts_are_counted_with_the_default_tokenizer_when_none_is_given(tmp_path):
    from calibrate.validate import default_tokenizer
    if default_tokenizer() is None:
        msg = "no tokenizer set up (scripts/setup_vllm_cpu.sh makes the test server's)"
        if os.environ.get("CAPSIM_REQUIRE_VLLM") == "1":
            pytest.fail(msg + " [CAPSIM_REQUIRE_VLLM=1]", pytrace=False)
        pytest.skip(msg)
    wl = workload_for(sharegpt_run(tmp_path), PROFILE)
    assert wl.count_tokens is not None


def test_the_acceptance_note_says_how_many_times_the_tokens_the_profile_keeps():
    spec = dataclasses.replace(PROFILE, engine=dataclasses.replace(PROFILE.engine, num_speculative_tokens=2))
    assumed = spec.engine.tokens_per_spec_step
    note = acceptance_note(OpenRun("s", "T", None, "random", result={"spec_decode_acceptance_length": assumed / 2}),
                           spec)
    assert note.startswith(f"T: the server kept {assumed / 2:.2f} tokens a speculative step "
                           f"(spec_decode_acceptance_length) where the profile assumes {assumed:.2f}, "
                           "so its steps keep 2.0x the tokens the server's did")


def test_a_source_name_that_fits_its_column_is_not_cut():
    name = "x" * 34
    text = format_validation(Validation(rows=[Row(name, "T", "median_ttft_ms", 100.0, 100.0, 90.0, 110.0)]))
    assert text.splitlines()[1].startswith(name + " ")
    assert format_validation(Validation(rows=[Row(name + "y", "T", "median_ttft_ms", 1.0, 1.0, 1.0, 1.0)])
                             ).splitlines()[1].startswith("…" + "x" * 32 + "y ")


def test_a_run_without_a_seed_is_read_as_seed_zero_when_its_totals_are_read():
    raw, _, _ = RandomWorkload(64, 16, range_ratio=0.5, fmt=FMT).lengths(20, 0)
    run = random_run(n=20, random_range_ratio=0.5,
                     result={"total_input_tokens": int(raw.sum()) + 20 * (FMT.special_tokens + 9)})
    del run.params["seed"]
    assert workload_for(run, PROFILE).fmt.chat_template_tokens == 9


def test_a_sharegpt_run_without_a_seed_reads_its_totals_against_seed_zero(tmp_path):
    run = sharegpt_run(tmp_path)
    del run.params["seed"]
    specs = workload_for(run, PROFILE, tokenizer=None).sample(12, 0)
    outs, raws = sum(s.max_tokens for s in specs), sum(s.raw_prompt_tokens for s in specs)
    run.result |= {"total_output_tokens": outs // 2, "total_input_tokens": raws}
    wl = workload_for(run, PROFILE, tokenizer=None)
    assert wl.output_fraction == pytest.approx((outs // 2) / outs) and wl.prompt_scale == pytest.approx(1.0)


def test_a_guessed_layout_is_named_even_without_a_model_name_or_its_guesses():
    model = {"architecture": {"family": "unknown", "assumed": []}}
    prof = dataclasses.replace(PROFILE, name="my-box", model=model)
    v = validate([random_run("A", result={"median_ttft_ms": 100.0})], prof, replications=1, n_jobs=1)
    assert v.notes[0] == ("my-box is in no family table, so its layout is guessed (from its name): the decode band "
                          "is wider for it")
    prof = dataclasses.replace(PROFILE, model={"name": "acme/M-7B", "architecture": {
        "family": "unknown", "assumed": ["28 layers", "8 KV heads"]}})
    v = validate([random_run("A", result={"median_ttft_ms": 100.0})], prof, replications=1, n_jobs=1)
    assert v.notes[0].startswith("acme/M-7B is in no family table, so its layout is guessed (28 layers; 8 KV heads)")
    assert not any("family table" in n for n in validate([random_run("A", result={"median_ttft_ms": 1.0})], PROFILE,
                                                        replications=1, n_jobs=1).notes)


def test_a_run_with_the_rate_probe_is_predicted_with_it_and_its_probe_keys_compared():
    """A run measured with --probe-request-rate is predicted with the same probe beside the same load, and its
    probe keys are a family of their own; a result with probe keys but no rate (vllm bench serve's JSON writes
    none) is predicted without the probe, and a note says why its probe keys are not compared."""
    measured = {"median_ttft_ms": 100.0, "probe_median_e2el_ms": 50.0, "probe_p99_e2el_ms": 90.0}  # no max: not asked
    v = validate([random_run("P", result=measured, probe_request_rate=2.0)], PROFILE, replications=2, n_jobs=1)
    assert sorted(r.metric for r in v.rows) == ["median_ttft_ms", "probe_median_e2el_ms", "probe_p99_e2el_ms"]
    assert "probe" in v.families() and "probe" in format_validation(v)
    plain = validate([random_run("P", result=measured | {"probe_completed": 9})], PROFILE, replications=1, n_jobs=1)
    assert [r.metric for r in plain.rows] == ["median_ttft_ms"] and "probe" not in plain.families()
    assert list(plain.families()) == ["ttft", "tpot", "e2el", "throughput"]
    assert plain.notes == ["P: its probe keys are not compared: the result does not say the probe's rate (vllm bench "
                           "serve writes no --probe-request-rate; its command or log does)"]
