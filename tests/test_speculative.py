"""Speculative decoding as vLLM V1 does it: drafts verified in the step, the token budget counts them,
a request keeps the accepted prefix plus one token, and a chunk carries all of them."""
import json

import numpy as np
import pytest

from calibrate.importers import ImporterError, load_meta
from calibrate.server_flags import speculative_config, unmodelled_flags
from calibrate.priors import acceptance_for_length, prior_profile
from simulator.load import ClosedLoop, OpenLoop
from simulator.profile import ProfileError, load_profile
from simulator.sim import simulate_closed, simulate_open
from simulator.summary import summarize_closed, summarize_open
from simulator.workload import RandomWorkload
from tests.helpers import spec_profile


def _run(p, n=12, out=200, rate=1.0, trace=None):
    wl = RandomWorkload(600, out, 0.0, fmt=p.prompt_format)
    return simulate_open(p, wl.sample(n, 3), OpenLoop(rate=rate, seed=3))


def test_chunks_carry_the_accepted_tokens_and_totals_stay_exact():
    p = spec_profile(15, 0.7)
    run = _run(p)
    ok = [r for r in run.records if r.ok]
    assert all(r.output_tokens == 200 for r in ok)
    per_chunk = sum(r.output_tokens for r in ok) / sum(len(r.chunk_times) for r in ok)
    assert per_chunk == pytest.approx(p.engine.tokens_per_spec_step, rel=0.1)
    assert p.engine.tokens_per_spec_step == pytest.approx((1 - 0.7 ** 16) / 0.3)


def test_records_say_how_many_tokens_each_chunk_carried():
    run = _run(spec_profile(15, 0.7))
    for r in (r for r in run.records if r.ok):
        assert r.chunk_tokens is not None and len(r.chunk_tokens) == len(r.chunk_times)
        assert int(r.chunk_tokens.sum()) == r.output_tokens and r.chunk_tokens.min() >= 1
    assert all(r.chunk_tokens is None for r in _run(load_profile()).records)  # one token a chunk


def test_llama_benchy_decode_speed_counts_tokens_not_chunks():
    # llama-benchy 0.4.0 counts each chunk's tokens: with drafts kept, its tg t/s is tokens per
    # second, several per step (Muse-Glimmer-30B bf16 decodes 13 t/s at c1 on a box whose
    # bandwidth allows 4.5 steps/s of its weights)
    p = spec_profile(15, 0.7)
    run = simulate_closed(p, ClosedLoop(pp=(256,), tg=(400,), runs=1, latency_mode="none"))
    (row,) = summarize_closed(run)
    r = next(r for r in run.records if r.test and r.ok)
    ct = r.content_times()
    steps_per_s = (len(ct) - 1) / (ct[-1] - ct[0])
    assert row.metrics["tg_req_throughput"][0] > 2.5 * steps_per_s
    assert row.metrics["tg_req_throughput"][0] == pytest.approx((r.output_tokens - 1) / (ct[-1] - ct[0]))


def test_a_measured_speed_that_needs_several_tokens_a_step_keeps_the_weights():
    # 13 t/s of a dense 30B bf16 model (60 GB a step) is impossible one token a step at 273 GB/s,
    # but 3.9 steps/s with dflash's 3.3 tokens a step is not: the name's size stands
    spec = {"method": "dflash", "num_speculative_tokens": 15}
    _, plain = prior_profile({"model": "acme/Big-30B"}, c1_decode_tps=13.0)
    p, origin = prior_profile({"model": "acme/Big-30B", "speculative_config": spec}, c1_decode_tps=13.0)
    assert "architecture_scaled" in plain and "architecture_scaled" not in origin
    assert p.step_model.weight_bytes_fixed > 50e9


def test_tpot_counts_tokens_and_itl_counts_chunks():
    run = _run(spec_profile(4, 0.8))
    s = summarize_open(run)
    r = next(r for r in run.records if r.ok)
    tpot = (r.chunk_times[-1] - r.chunk_times[0]) / (r.output_tokens - 1)
    itls = np.diff(r.chunk_times)
    assert len(r.chunk_times) < r.output_tokens
    assert itls.mean() > 1.5 * tpot  # several tokens per chunk
    assert s["median_tpot_ms"] < s["median_itl_ms"]


def test_no_acceptance_means_one_token_per_step_but_drafts_still_cost_time():
    base = _run(load_profile())
    spec = _run(spec_profile(8, 0.0))
    rb, rs = base.records[0], spec.records[0]
    assert len(rs.chunk_times) == rs.output_tokens  # nothing accepted: one token a step
    assert (rs.chunk_times[-1] - rs.chunk_times[0]) > (rb.chunk_times[-1] - rb.chunk_times[0])  # 9 tokens verified


def test_the_token_budget_counts_the_drafts():
    p = spec_profile(15, 0.95, max_num_batched_tokens=40, max_model_len=4096)
    wl = RandomWorkload(30, 100, 0.0, fmt=p.prompt_format)
    steps = []
    run = simulate_open(p, wl.sample(8, 1), OpenLoop(rate=float("inf"), seed=1), trace=steps.append)
    assert all(r.ok and r.output_tokens == 100 for r in run.records)
    assert max(s["tokens"] for s in steps) == 40  # drafts fill the budget, never more
    assert any(s["running"] >= 2 and s["tokens"] == 40 for s in steps)  # shared between requests


def test_bad_spec_limits_are_refused():
    with pytest.raises(ProfileError):
        spec_profile(15, 1.0)
    with pytest.raises(ProfileError):
        spec_profile(-1, 0.5)


def test_speculative_config_is_read_from_the_command_line():
    cfg = speculative_config('--max-num-seqs 8 --speculative-config {"method":"eagle3","num_speculative_tokens":3}')
    assert cfg == {"method": "eagle3", "num_speculative_tokens": 3}
    assert speculative_config("--max-num-seqs 8") is None
    with pytest.raises(ImporterError, match="not readable JSON"):
        speculative_config('--speculative-config {"method": "eagle"')
    with pytest.raises(ImporterError, match="num_speculative_tokens"):
        speculative_config('--speculative-config {"method": "eagle"}')


@pytest.mark.parametrize("k, ok", [(1, True), (64, True), (0, False), (65, False), ("true", False), ('"3"', False)])
def test_the_draft_count_is_one_vllm_takes(k, ok):
    args = '--speculative-config {"method": "eagle3", "num_speculative_tokens": %s}' % k
    if ok:
        assert speculative_config(args)["num_speculative_tokens"] == k
    else:
        with pytest.raises(ImporterError, match="needs num_speculative_tokens in 1..64, got"):
            speculative_config(args)


@pytest.mark.parametrize("args", [
    "--speculative_config='{\"method\": \"eagle3\", \"num_speculative_tokens\": 3}'",
    "-sc '{\"method\":\"eagle3\",\"num-speculative-tokens\":3}'",  # vLLM's short flag, a dashed key
    "--speculative-config.method eagle3 --speculative-config.num_speculative_tokens=3",  # dotted keys
    "--spec-method eagle3 --spec-tokens 3"])  # the shorthands
def test_every_spelling_vllm_takes_gives_the_same_config(args):
    assert speculative_config(f"--max-num-seqs 8 {args} --max-num-batched-tokens 8192") == {
        "method": "eagle3", "num_speculative_tokens": 3}
    assert unmodelled_flags(args) == []


def test_a_models_mtp_heads_without_a_token_count_draft_one():
    cfg = speculative_config('--speculative-config {"method": "qwen3_5_mtp"}')
    assert cfg["num_speculative_tokens"] == 1
    p, origin = prior_profile({"model": "Qwen/Qwen3.5-4B", "speculative_config": cfg}, 30.0)
    assert p.engine.num_speculative_tokens == 1 and "1 assumed" in origin["num_speculative_tokens"]


def test_prior_takes_the_measured_tokens_per_chunk_when_a_run_gives_them():
    spec = {"method": "dflash", "num_speculative_tokens": 15}
    p, origin = prior_profile({"model": "acme/X-8B", "speculative_config": spec, "tokens_per_chunk": 2.5}, 30.0)
    assert p.engine.num_speculative_tokens == 15 and origin["spec_acceptance"].startswith("measured")
    assert p.engine.tokens_per_spec_step == pytest.approx(2.5, rel=1e-3)
    p2, origin2 = prior_profile({"model": "acme/X-8B", "speculative_config": spec}, 30.0)
    assert origin2["spec_acceptance"].startswith("prior") and "do not identify" in origin2["spec_acceptance"]
    assert acceptance_for_length(1.0, 4) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method,prior", [("qwen3_5_mtp", 0.7), ("nemotron_h_mtp", 0.7), ("deepseek_mtp", 0.7),
                                          ("mtp", 0.7), ("ngram_gpu", 0.4), ("eagle3", 0.65), ("suffix", 0.6)])
def test_a_models_own_mtp_heads_and_gpu_prompt_lookup_take_their_kinds_prior(method, prior):
    """vLLM calls a model's multi-token-prediction heads '<model type>_mtp'; a method no prior covers
    takes the generic 0.6."""
    spec = {"method": method, "num_speculative_tokens": 3}
    p, origin = prior_profile({"model": "acme/X-8B", "speculative_config": spec}, 30.0)
    assert p.engine.spec_acceptance == pytest.approx(prior)
    assert f"prior for method {method!r}" in origin["spec_acceptance"]


def test_a_suite_run_with_speculative_decoding_gets_it(tmp_path):
    from tests.test_importers import RESULTS, shared_missing
    d = RESULTS / "muse-glimmer" / "muse-glimmer-30b" / "bf16-spec"
    if not (d / "meta.json").is_file():
        shared_missing(f"shared data not found: {d}")
    s = load_meta(d)
    assert s["speculative_config"]["num_speculative_tokens"] == 15
    bad = tmp_path / "bad"
    bad.mkdir()
    meta = json.loads((d / "meta.json").read_text())
    meta["server_config"]["extra_vllm_args"] = "--speculative-config {broken"
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ImporterError, match="speculative-config"):
        load_meta(bad)


def test_validate_reports_the_acceptance_the_server_kept_but_does_not_predict_with_it():
    """vllm bench serve's spec_decode_acceptance_length is a result of the load: validate names a gap
    to the profile's tokens a step, and the prediction stays the profile's own."""
    from calibrate.results import OpenRun
    from calibrate.validate import acceptance_note, predict_run, validate

    prof = spec_profile(15, 0.7)  # 3.32 tokens a step
    run = OpenRun("s", "07-office-baseline", None, "random", result={"spec_decode_acceptance_length": 1.29})
    note = acceptance_note(run, prof)
    assert note.startswith("07-office-baseline: the server kept 1.29 tokens") and "assumes 3.32" in note
    close = OpenRun("s", "08", None, "sharegpt", result={"spec_decode_acceptance_length": 3.36})
    assert acceptance_note(close, prof) is None  # within 20 %
    assert acceptance_note(run, load_profile()) is None  # no speculative decoding in the profile
    assert acceptance_note(OpenRun("s", "x", None, "random"), prof) is None  # an older bench: no such field
    params = {"random_input_len": 64, "random_output_len": 16, "num_prompts": 6, "request_rate": 1.0}
    told = OpenRun("s", "t", None, "random", params, {"spec_decode_acceptance_length": 1.29, "completed": 6})
    untold = OpenRun("s", "t", None, "random", params, {"completed": 6})
    assert predict_run(told, prof, 2, n_jobs=1)[0] == predict_run(untold, prof, 2, n_jobs=1)[0]
    pred = predict_run(told, prof, 2, n_jobs=1)[0]
    (said,) = [n for n in validate([told], prof, 2, n_jobs=1).notes if "speculative step" in n]
    # the nominal prediction's own count, not the replications' (they draw the acceptance for the band)
    assert f"where the simulated server kept {pred['spec_decode_acceptance_length']:.2f}" in said
