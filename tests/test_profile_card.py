"""The profile card: calibrate.card.profile_card, calibrate.plots.plot_profile_card, `capsim profile show`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from calibrate.card import CONCURRENCY, DECODE_CONTEXTS, PREFILL_CONTEXTS, format_card, profile_card
from calibrate.sources import load_closed
from capsim.cli import main
from simulator.profile import EngineLimits, Profile, load_profile
from simulator.stepmodel import EmpiricalStepModel

SHIPPED = ["spark-gemma4-26b-a4b", "spark-bench-gemma-4-31b-it-bf16", "spark-bench-qwen-3.6-35b-a3b-bf16",
           "spark-gemma4-26b-a4b-physics"]


@pytest.fixture(scope="module")
def card():
    return profile_card(load_profile("spark-gemma4-26b-a4b"))


@pytest.fixture(scope="module")
def seed_runs():
    return load_closed(["seed"])


def test_card_has_the_table_keys(card):
    assert {"profile", "model", "box", "step_model", "prefill", "decode", "kv_cache", "engine", "memory"} <= set(card)
    assert [p["context"] for p in card["prefill"]] == list(PREFILL_CONTEXTS)
    assert {(d["context"], d["concurrency"]) for d in card["decode"]} == \
        {(c, b) for c in DECODE_CONTEXTS for b in CONCURRENCY}
    assert set(card["engine"]) == {"max_num_batched_tokens", "max_num_seqs", "max_model_len"}
    assert card["kv_cache"]["capacity_tokens"] == load_profile("spark-gemma4-26b-a4b").engine.kv_capacity_tokens
    mem = card["memory"]
    assert mem["peak_bw"] == 273e9  # the DGX Spark default when the profile names no roofline_bw
    assert mem["bw_weights_pct_of_peak"] == pytest.approx(100 * mem["bw_weights"] / 273e9)
    # gemma 4 26B-A4B: dense part + top-8 experts of 30 MoE layers
    assert mem["weight_bytes_per_decode_step"] == pytest.approx(4.82e9 + 8 * 30 * 11.89e6)
    assert "measured" not in card
    json.dumps(card)  # JSON-ready


@pytest.mark.parametrize("name", SHIPPED)
def test_decode_physics_is_monotone(name):
    """More users sharing a step: each gets fewer tokens/s, the box more in total; longer context: slower."""
    c = profile_card(load_profile(name), prefill_contexts=(1024,))
    by = {(d["context"], d["concurrency"]): d for d in c["decode"]}
    for ctx in DECODE_CONTEXTS:
        per_user = [by[ctx, b]["per_user_tokens_per_s"] for b in CONCURRENCY]
        total = [by[ctx, b]["total_tokens_per_s"] for b in CONCURRENCY]
        assert all(x > 0 for x in per_user)
        assert np.all(np.diff(per_user) <= 1e-9), (ctx, per_user)
        assert np.all(np.diff(total) >= -1e-9), (ctx, total)
        for b in CONCURRENCY:
            assert by[ctx, b]["total_tokens_per_s"] == pytest.approx(b * by[ctx, b]["per_user_tokens_per_s"])
    for b in CONCURRENCY:
        speeds = [by[ctx, b]["per_user_tokens_per_s"] for ctx in DECODE_CONTEXTS]
        assert np.all(np.diff(speeds) <= 1e-9), (b, speeds)
    one = c["memory"]["single_user_decode_pct_of_roofline"]
    assert 0 < one < 100  # one user never beats the box's memory roofline


def test_prefill_physics(card):
    """TTFT grows with the prompt; attention makes the longest prompt slower per token than the best."""
    ttft = [p["ttft_s"] for p in card["prefill"]]
    tps = [p["tokens_per_s"] for p in card["prefill"]]
    assert all(t > 0 for t in tps)
    assert np.all(np.diff(ttft) > 0)
    assert tps[-1] < max(tps)


def test_prompts_the_engine_cannot_hold_are_marked_not_simulated():
    p = load_profile("spark-gemma4-26b-a4b")
    p.engine.max_model_len = 4096
    c = profile_card(p, prefill_contexts=(1024, 8192), decode_contexts=(1024, 8192), concurrency=(1, 2))
    assert c["prefill"][0]["tokens_per_s"] > 0 and c["prefill"][0]["limit"] is None
    assert c["prefill"][1]["tokens_per_s"] is None and "max_model_len" in c["prefill"][1]["limit"]
    assert [d["limit"] is not None for d in c["decode"]] == [False, False, True, True]


def test_empirical_step_model_has_no_roofline():
    p = Profile(name="emp", engine=EngineLimits(), step_model=EmpiricalStepModel())
    c = profile_card(p, prefill_contexts=(512,))
    assert c["memory"]["bw_weights"] is None and c["memory"]["weight_bytes_per_decode_step"] is None
    assert c["kv_cache"]["capacity_tokens"] is None
    assert "the step model has none" in format_card(c)


def test_measured_points_from_runs(seed_runs):
    p = load_profile("spark-gemma4-26b-a4b")
    c = profile_card(p, seed_runs, prefill_contexts=(1024,))
    m = c["measured"]
    scale = p.provenance.get("prompt_scale", 1.0)
    assert m["prompt_scale"] == pytest.approx(scale)
    rows = [(run.test, r) for run in seed_runs for r in run.rows]
    assert len(m["prefill"]) == sum(1 for _, r in rows if r.concurrency == 1 and "pp_throughput" in r.metrics)
    assert {d["concurrency"] for d in m["decode"]} == {r.concurrency for _, r in rows}
    for d in m["prefill"]:
        assert d["context"] == pytest.approx(d["requested"] * scale)
    assert "measured closed-loop points" in format_card(c)


def test_plot_writes_a_png(tmp_path, seed_runs):
    from calibrate.plots import plot_profile_card
    out = tmp_path / "card.png"
    card = plot_profile_card(load_profile("spark-gemma4-26b-a4b"), seed_runs, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert card["measured"]["prefill"]


def invoke(args):
    return CliRunner().invoke(main, args)


def test_cli_text_and_json(tmp_path):
    res = invoke(["profile", "show", "spark-gemma4-26b-a4b"])
    assert res.exit_code == 0, res.output
    for words in ("prefill", "decode", "KV-cache capacity", "max_num_batched_tokens", "memory roofline",
                  "% of peak", "32,768"):
        assert words in res.output
    res = invoke(["profile", "show", "spark-gemma4-26b-a4b", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["engine"]["max_num_batched_tokens"] == 2048 and len(d["decode"]) == 21


def test_cli_plot_with_runs(tmp_path):
    out = tmp_path / "card.png"
    res = invoke(["profile", "show", "spark-gemma4-26b-a4b", "--runs", "seed", "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 20_000 and f"wrote {out}" in res.output


@pytest.mark.parametrize("args, words", [
    (["profile", "show", "no-such-profile"], "no-such-profile"),
    (["profile", "show", "spark-gemma4-26b-a4b", "--plot", "/no/such/folder/card.png"], "does not exist"),
    (["profile", "show", "spark-gemma4-26b-a4b", "--plot", "card.txt"], "suffixes"),
    (["profile", "show", "spark-gemma4-26b-a4b", "--runs", "/no/such/suite"], "/no/such/suite"),
])
def test_cli_errors_are_one_line(args, words):
    res = invoke(args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in res.output


def test_plot_path_that_is_a_folder_fails_before_any_work(tmp_path):
    res = invoke(["profile", "show", "spark-gemma4-26b-a4b", "--plot", str(tmp_path)])
    assert res.exit_code == 1 and "is a folder" in res.output


def test_calibrate_plot(tmp_path):
    out, prof = tmp_path / "card.png", tmp_path / "p.json"
    res = invoke(["calibrate", "seed", "-o", str(prof), "--max-evals", "3", "--plot", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert prof.exists() and out.stat().st_size > 20_000
    res = invoke(["calibrate", "seed", "-o", str(tmp_path / "q.json"), "--plot", str(tmp_path / "no" / "c.png")])
    assert res.exit_code == 1 and "does not exist" in res.output
    assert not (tmp_path / "q.json").exists()  # checked before fitting
