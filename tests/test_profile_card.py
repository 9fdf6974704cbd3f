"""The profile card: calibrate.card.profile_card, calibrate.plots.plot_profile_card, `capsim profile show`."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from calibrate.card import (CONCURRENCY, DECODE_CONTEXTS, PREFILL_CONTEXTS, ctx_label, decode_table, format_card,
                            kv_blocks_needed, measured_points, memory_roofline, prefill_curve, profile_card,
                            weight_bytes_per_step)
from calibrate.results import ClosedRun
from calibrate.sources import load_closed
from capsim.cli import main
from simulator.load import ClosedLoop
from simulator.profile import EngineLimits, Profile, ProfileError, load_profile
from simulator.sim import simulate_closed
from simulator.stepmodel import EmpiricalStepModel, PhysicalStepModel
from simulator.summary import ClosedRow, summarize_closed
from tests.helpers import GEMMA4_KV_GROUPS

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
    assert res.output == json.dumps(d, indent=2) + "\n"  # indented by two, as every capsim JSON


def test_cli_lists_every_shipped_profile_and_each_loads_by_its_name():
    res = invoke(["profile", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    names = [ln.split()[0] for ln in lines]
    assert set(names) == {p.stem for pkg in ("calibrate", "simulator")
                          for p in (Path(__file__).parents[1] / pkg / "profiles").glob("*.json")}
    assert "spark-gemma4-26b-a4b (default)  " in res.output
    assert any(ln.startswith("spark-bench-gemma-4-31b-it-bf16 ") and "google/gemma-4-31B-it, bf16; fitted on "
               "spark-bench/gemma-4-31b-it/bf16" in ln for ln in lines)
    for name in names:
        assert load_profile(name).name  # what the list shows, --profile takes
    with pytest.raises(ProfileError, match="shipped: spark-bench-gemma-4-26b-a4b-it-bf16-v23, .*spark-gemma4-26b-a4b,"):
        load_profile("no-such-profile")


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


# ------------------------------------------------------------------ each figure by its definition

GEMMA4 = EngineLimits(max_model_len=1024, max_num_seqs=4, num_blocks=2 * (32 + 325),
                      kv_groups=GEMMA4_KV_GROUPS)


def test_kv_blocks_a_batch_holds_count_each_group_and_each_windows_straddled_block():
    # 2000 tokens: 63 blocks of 32 in the full group; each of 5 sliding groups keeps its 1024-token window
    # (64 blocks of 16) plus the block it straddles
    assert kv_blocks_needed(GEMMA4, 3, 2000) == 3 * (63 + 5 * 65)
    # 100 tokens: 4 full blocks; the windows hold only the 100 tokens (7 blocks) plus one
    assert kv_blocks_needed(GEMMA4, 1, 100) == 4 + 5 * 8
    assert kv_blocks_needed(EngineLimits(), 2, 17) == 2 * 2
    assert kv_blocks_needed(EngineLimits(kv_groups=()), 2, 17) is None


def test_each_limit_binds_one_past_what_the_engine_holds():
    p = Profile(name="p", engine=GEMMA4, step_model=PhysicalStepModel())
    rows = {(d["context"], d["concurrency"]): d["limit"]
            for d in decode_table(p, contexts=(1024, 1025), concurrency=(2, 4, 5))}
    assert rows[1024, 2] is None  # 2 x (32 + 325) blocks: the pool exactly
    assert rows[1024, 4] == "exceeds the KV cache"
    assert rows[1024, 5] == "concurrency > max_num_seqs 4"
    assert rows[1025, 2] == "context > max_model_len 1024"
    unknown = Profile(name="p", engine=EngineLimits(num_blocks=None), step_model=PhysicalStepModel())
    assert all(d["limit"] is None for d in decode_table(unknown, contexts=(100_000,), concurrency=(256,)))


def test_a_prefill_row_is_the_simulated_llama_benchy_pp_row_in_seconds():
    """One request per prompt, tg 1: the prompt and its one answer token must fit max_model_len."""
    p = load_profile("spark-gemma4-26b-a4b")
    p.engine.max_model_len = 2048
    assert prefill_curve(Profile(name="p", engine=replace(GEMMA4, num_blocks=356), step_model=p.step_model),
                         contexts=(1023,))[0]["limit"] == "exceeds the KV cache"  # 1024 tokens need 32 + 325
    curve = prefill_curve(p, contexts=(1024, 2047, 2048))
    assert curve[2] == {"context": 2048, "tokens_per_s": None, "ttft_s": None,
                        "limit": "context > max_model_len 2048"}
    rows = summarize_closed(simulate_closed(p, ClosedLoop(combos=[(1024, 1, 0, 1), (2047, 1, 0, 1)], runs=1,
                                                          warmup=False, latency_mode="generation")))
    for row, item in zip(rows, curve):
        assert item["limit"] is None
        assert item["tokens_per_s"] == row.metrics["pp_throughput"][0]
        assert item["ttft_s"] == row.metrics["ttfr"][0] / 1000


def test_a_decode_row_is_one_step_of_the_step_model():
    p = load_profile("spark-gemma4-26b-a4b")
    (d,) = decode_table(p, contexts=(8192,), concurrency=(16,))
    step = float(p.step_model.decode_run(np.full(16, 8192), 1)[0])
    assert d["step_ms"] == pytest.approx(1000 * step)
    assert d["per_user_tokens_per_s"] == pytest.approx(1 / step)
    assert d["total_tokens_per_s"] == pytest.approx(16 / step)


@pytest.mark.parametrize("step", [0.0, math.inf, math.nan, -1.0])
def test_a_step_model_that_gives_no_time_leaves_the_decode_row_empty(step):
    p = Profile(name="p", engine=EngineLimits(), step_model=SimpleNamespace(decode_run=lambda ctx, n: [step]))
    (d,) = decode_table(p, contexts=(1024,), concurrency=(1,))
    assert (d["step_ms"], d["per_user_tokens_per_s"], d["total_tokens_per_s"]) == (None, None, None)


def test_weights_read_per_step_count_the_dense_part_and_the_top_k_experts_of_each_moe_layer():
    moe = PhysicalStepModel(weight_bytes_fixed=4e9, expert_bytes=10e6, moe_layers=30, top_k=8, n_experts=128)
    assert weight_bytes_per_step(moe) == 4e9 + 8 * 30 * 10e6
    assert weight_bytes_per_step(replace(moe, n_experts=0)) == 4e9  # dense: the expert fields mean nothing
    assert weight_bytes_per_step(replace(moe, expert_bytes=0.0)) == 4e9
    assert weight_bytes_per_step(SimpleNamespace(weight_bytes_fixed=3e9)) == 3e9  # no expert fields at all
    assert weight_bytes_per_step(SimpleNamespace(weight_bytes_fixed=3e9, expert_bytes=1e6, moe_layers=2,
                                                 top_k=4, n_experts=None)) == 3e9 + 8e6
    for missing in ("expert_bytes", "moe_layers", "top_k"):  # an expert term needs all three
        fields = dict(weight_bytes_fixed=3e9, expert_bytes=1e6, moe_layers=2, top_k=4)
        del fields[missing]
        assert weight_bytes_per_step(SimpleNamespace(**fields)) == 3e9
    assert weight_bytes_per_step(replace(moe, moe_layers=0)) == weight_bytes_per_step(replace(moe, top_k=0)) == 4e9
    assert weight_bytes_per_step(replace(moe, n_experts=1, top_k=1)) == 4e9 + 30 * 10e6
    assert weight_bytes_per_step(EmpiricalStepModel()) is None


def test_memory_roofline_by_its_definitions():
    sm = PhysicalStepModel(weight_bytes_fixed=4e9, n_experts=0, bw_weights=200e9)
    p = Profile(name="p", engine=EngineLimits(), step_model=sm, model={"roofline_bw": 400e9})
    decode = [{"context": 8192, "concurrency": 1, "per_user_tokens_per_s": 40.0},
              {"context": 1024, "concurrency": 2, "per_user_tokens_per_s": 45.0},
              {"context": 1024, "concurrency": 1, "per_user_tokens_per_s": 50.0},
              {"context": 512, "concurrency": 1, "per_user_tokens_per_s": None}]
    m = memory_roofline(p, decode)
    assert m == {"peak_bw": 400e9, "bw_weights": 200e9, "bw_weights_pct_of_peak": 50.0,
                 "weight_bytes_per_decode_step": 4e9, "weight_read_ms": 20.0,
                 "roofline_decode_tokens_per_s": 100.0,
                 # one user at the shortest context with a speed: 50 t/s x 4 GB = 200 GB/s, half the peak
                 "single_user_decode_tokens_per_s": 50.0, "single_user_decode_pct_of_roofline": 50.0,
                 "single_user_context": 1024}
    p.model = None
    assert memory_roofline(p)["peak_bw"] == 273e9
    p.step_model = SimpleNamespace(weight_bytes_fixed=4e9)  # bytes, but no bandwidth to read them at
    m = memory_roofline(p)
    assert (m["bw_weights"], m["weight_read_ms"], m["roofline_decode_tokens_per_s"]) == (None, None, 273e9 / 4e9)


def _run(test, rows):
    return ClosedRun(source="s", test=test, model="m", runs=1, latency_mode="generation", latency_ms=None,
                     version="0.4.0", rows=rows)


def test_measured_points_read_server_tokens_and_a_decode_rows_mean_context():
    pp_row = ClosedRow(pp=1000, tg=0, depth=3000, concurrency=1, metrics={"pp_throughput": (2000.0, 5.0)})
    tg_row = ClosedRow(pp=1000, tg=200, depth=0, concurrency=4,
                       metrics={"tg_req_throughput": (10.0, 1.0), "peak_throughput": (48.0, 2.0),
                                "tg_throughput": (38.0, 1.0)})
    bare = ClosedRow(pp=500, tg=100, depth=0, concurrency=2, metrics={"tg_req_throughput": (12.0, 0.0)})
    m = measured_points([_run("06-rag", [pp_row]), _run("01-chat", [tg_row, bare])], prompt_scale=1.1)
    assert m["prefill"] == [{"test": "06-rag", "requested": 4000, "context": pytest.approx(4400.0),
                             "tokens_per_s": 2000.0}]
    assert m["decode"] == [
        {"test": "01-chat", "requested": 500, "context": pytest.approx(550 + 50), "concurrency": 2,
         "per_user_tokens_per_s": 12.0, "peak_per_user_tokens_per_s": None, "total_tokens_per_s": None,
         "peak_tokens_per_s": None},
        {"test": "01-chat", "requested": 1000, "context": pytest.approx(1100 + 100), "concurrency": 4,
         "per_user_tokens_per_s": 10.0, "peak_per_user_tokens_per_s": 12.0, "total_tokens_per_s": 38.0,
         "peak_tokens_per_s": 48.0}]  # the pp row has no decode figure
    assert measured_points(None) == {"prompt_scale": 1.0, "prefill": [], "decode": []}


def test_the_card_names_the_model_and_reads_points_at_scale_1_without_a_fitted_scale():
    p = load_profile("spark-gemma4-26b-a4b")
    p.provenance = {}
    c = profile_card(p, [_run("01", [ClosedRow(pp=100, tg=0, depth=0, concurrency=1,
                                               metrics={"pp_throughput": (900.0, 0.0)})])],
                     prefill_contexts=(512,), decode_contexts=(1024,), concurrency=(1,))
    assert c["model"] == "google/gemma-4-26B-A4B-it" and c["measured"]["prompt_scale"] == 1.0
    assert c["measured"]["prefill"][0]["context"] == 100


@pytest.mark.parametrize("tokens, label", [(512, "512"), (1000, "1,000"), (1024, "1k"), (1536, "1,536"),
                                           (2048, "2k"), (32768, "32k"), (0, "0")])
def test_context_labels(tokens, label):
    assert ctx_label(tokens) == label


CARD = {
    "profile": "box", "model": "org/model", "box": "a box", "step_model": "physical",
    "prefill": [{"context": 1024, "tokens_per_s": 5000.4, "ttft_s": 0.2049, "limit": None},
                {"context": 65536, "tokens_per_s": None, "ttft_s": None, "limit": "context > max_model_len 32768"}],
    "decode": [{"context": 1024, "concurrency": 1, "per_user_tokens_per_s": 50.04, "total_tokens_per_s": 50.04,
                "limit": None},
               {"context": 1024, "concurrency": 8, "per_user_tokens_per_s": 20.0, "total_tokens_per_s": 160.0,
                "limit": "exceeds the KV cache"},
               {"context": 8192, "concurrency": 1, "per_user_tokens_per_s": None, "total_tokens_per_s": None,
                "limit": None}],
    "kv_cache": {"capacity_tokens": 1_234_567, "num_blocks": 77_160, "origin": "fitted from 05's knee"},
    "engine": {"max_num_batched_tokens": 2048, "max_num_seqs": 256, "max_model_len": 32768},
    "memory": {"peak_bw": 273e9, "bw_weights": 300e9, "bw_weights_pct_of_peak": 109.89,
               "weight_bytes_per_decode_step": 5.5e9, "roofline_decode_tokens_per_s": 49.636,
               "single_user_decode_tokens_per_s": 50.04, "single_user_decode_pct_of_roofline": 100.8,
               "single_user_context": 1024},
    "measured": {"prompt_scale": 1.0123, "prefill": [{"test": "02-long", "requested": 512, "tokens_per_s": 5100.0},
                                                     {"test": "01-chat", "requested": 2048, "tokens_per_s": 4500.0},
                                                     {"test": "01-chat", "requested": 1024, "tokens_per_s": 4800.0}],
                 "decode": [{"test": "01-chat", "requested": 1024, "concurrency": 4, "per_user_tokens_per_s": 25.25,
                             "peak_per_user_tokens_per_s": None},
                            {"test": "01-chat", "requested": 1024, "concurrency": 1, "per_user_tokens_per_s": 48.0,
                             "peak_per_user_tokens_per_s": 49.5}]},
}

CARD_TEXT = """\
profile card: box
org/model, a box
step model: physical

prefill, one request (llama-benchy pp t/s)
  prompt tokens   tokens/s   TTFT s
          1,024      5,000     0.20
         65,536          -        -  (context > max_model_len 32768)

decode, pure decode steps: tokens/s per user and in total, by context and users (* = the engine cannot hold them)
             1k context          8k context    
  users   per user    total   per user    total
      1       50.0      50           -        -
      8       20.0     160*          -        -

engine
  KV-cache capacity        1,234,567 tokens (77,160 blocks)
  max_num_batched_tokens   2,048
  max_num_seqs             256
  max_model_len            32,768
  (KV capacity: fitted from 05's knee)

memory roofline
  box peak bandwidth       273 GB/s
  fitted weight bandwidth  300 GB/s (110% of peak)
    (above the box's peak: the fit traded bandwidth for fixed step time; the one-user share below is the physical one)
  weights read per step    5.50 GB (single-request decode)
  roofline decode speed    49.6 tokens/s (peak bandwidth / weight bytes)
  one user decodes         50.0 tokens/s at 1,024 tokens (101% of the roofline)

measured closed-loop points (prompt tokens x 1.012 = server count)
  test                       prompt users   pp t/s tg t/s/user peak/user
  01-chat                     1,024     1    4,800        48.0      49.5
  01-chat                     1,024     4        -        25.2         -
  01-chat                     2,048     1    4,500           -         -
  02-long                       512     1    5,100           -         -"""


def test_the_card_text_line_by_line():
    assert format_card(CARD).split("\n") == CARD_TEXT.split("\n")


def test_a_card_with_no_capacity_bandwidth_or_measured_points():
    card = dict(CARD, model=None, box=None, kv_cache={"capacity_tokens": None, "num_blocks": 10, "origin": None},
                memory={"peak_bw": 500e9, "bw_weights": 100e9, "bw_weights_pct_of_peak": 100.0,
                        "weight_bytes_per_decode_step": None, "single_user_decode_tokens_per_s": 10.0,
                        "single_user_decode_pct_of_roofline": None, "single_user_context": 512})
    del card["measured"]
    lines = format_card(card).split("\n")
    assert lines[:3] == ["profile card: box", "step model: physical", ""]
    assert "  KV-cache capacity        unknown (not binding in the runs)" in lines
    assert not any("KV capacity:" in x or "above the box's peak" in x or "weights read" in x for x in lines)
    assert "  box peak bandwidth       500 GB/s" in lines
    assert "  fitted weight bandwidth  100 GB/s (100% of peak)" in lines
    assert lines[-1] == "  one user decodes         10.0 tokens/s at 512 tokens"
    card["memory"] = dict(card["memory"], single_user_decode_tokens_per_s=None)
    assert "one user decodes" not in format_card(card)
