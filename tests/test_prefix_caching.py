"""llama-benchy's --enable-prefix-caching: its two phases in the simulator, the summary and calibration.

The live run against a vLLM that caches prefixes is tests/test_measure_live.py's; the table values against
llama-benchy's own code are tests/test_conformance_benchy.py's.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from click.testing import CliRunner

from calibrate.benchy_tables import parse_benchy
from calibrate.fit import closed_pattern, compare, paired_rows
from calibrate.results import ClosedRun
from calibrate.sources import load_closed
from capsim.cli import main
from simulator.kvcache import KVCache
from simulator.load import ClosedLoop, OpenLoop
from simulator.profile import EngineLimits, KVGroup, load_profile
from simulator.records import RequestRecord, RunResult
from simulator.sim import simulate_closed, simulate_open
from simulator.summary import closed_report_rows, summarize_closed
from simulator.workload import RequestSpec
from tests.helpers import same_records, tiny_profile, write_run_folder

SPARK = load_profile("spark-gemma4-26b-a4b")


def _steps(profile, specs):
    steps = []
    run = simulate_open(profile, specs, OpenLoop(rate=math.inf), trace=steps.append)
    return run, [s["tokens"] for s in steps]


def test_a_cache_hit_is_whole_blocks_of_every_group_and_never_the_whole_prompt():
    kv = KVCache(EngineLimits(kv_groups=(KVGroup(16),)))
    assert [kv.cache_hit(1000, c) for c in (0, 15, 16, 100, 999, 1000, 5000)] == [0, 0, 16, 96, 992, 992, 992]
    assert kv.cache_hit(16, 16) == 0  # a prompt of one block: its last token is computed, so no hit
    token_blocks = KVCache(EngineLimits(kv_groups=(KVGroup(1),)))
    assert [token_blocks.cache_hit(10, c) for c in (-3, 0, 1, 12)] == [0, 0, 1, 9]
    hybrid = KVCache(EngineLimits(kv_groups=(KVGroup(16), KVGroup(64, 2, 512))))
    assert hybrid.cache_hit(1000, 700) == 640  # a multiple of both groups' blocks


def test_the_engine_computes_only_what_the_cache_misses():
    # 200 prompt tokens, 130 of them cached (block 4): 128 hit, 72 computed in chunks of the 64-token budget
    run, steps = _steps(tiny_profile(budget=64, async_=False), [RequestSpec(200, 3, 3, cached_tokens=130)])
    assert steps == [64, 8, 1, 1] and run.records[0].prompt_tokens == 200  # the record keeps the whole prompt
    _, steps = _steps(tiny_profile(budget=64, async_=False), [RequestSpec(40, 2, 2, cached_tokens=40)])
    assert steps == [4, 1]  # all of it cached: the last block is computed again
    # a preempted request computes again from its cached prefix, not from its first token
    prof = tiny_profile(budget=64, seqs=4, num_blocks=10, block=4, async_=False)
    plain, cached = (_steps(prof, [RequestSpec(12, 12, 12, cached_tokens=c)] * 2) for c in (0, 8))
    assert plain[0].num_preemptions == cached[0].num_preemptions == 1
    assert [a - b for a, b in zip(plain[1], cached[1])] == [16, 0, 0, 0, 0, 0, 8, 0, 0]


def test_a_preempted_request_finds_its_own_blocks_while_the_cache_still_holds_them():
    """With the prefix cache on, a preempted request's blocks stay cached in the free queue: admitted again
    before any was taken, it computes only its last token again; once some were, it computes again past what
    is left (tests/test_conformance_vllm.py holds the eviction to vLLM's block pool); with the cache off, it
    computes all again."""
    prof = tiny_profile(budget=64, seqs=4, num_blocks=10, block=4, async_=False)
    caching = replace(prof, engine=replace(prof.engine, prefix_caching=True))
    off, on = (_steps(p, [RequestSpec(12, 12, 12)] * 2) for p in (prof, caching))
    assert off[0].num_preemptions == on[0].num_preemptions == 1
    # back with 21 tokens known, its 20 computed before filling 5 blocks, none evicted: all 21 again without
    # the cache, the last one alone with it
    assert off[1][6] == 21 and on[1][6] == 1 and off[1][:6] == on[1][:6]
    assert [r.output_tokens for r in on[0].records] == [12, 12]
    # a pool from which the other request's growth takes some of them before the preempted one is back: 13
    # tokens known, one 4-token block left
    tight = replace(caching, engine=replace(caching.engine, num_blocks=7))
    run, steps = _steps(tight, [RequestSpec(12, 16, 16)] * 2)
    plain = _steps(replace(tight, engine=replace(tight.engine, prefix_caching=False)), [RequestSpec(12, 16, 16)] * 2)
    assert run.num_preemptions == plain[0].num_preemptions == 1
    assert plain[1] == [24, 1, 1, 14, 13, 1, 14] and steps == [24, 1, 1, 14, 9, 1, 14]


@pytest.mark.parametrize("caching", [False, True], ids=["uncached", "caching"])
@pytest.mark.parametrize("async_", [True, False])
def test_fast_forward_gives_the_same_records_with_cached_prefixes(async_, caching):
    """Step by step and fast-forward agree where prompts start at their cache hits, under preemption too, and
    where preempted requests find their own blocks again."""
    prof = tiny_profile(budget=48, seqs=4, num_blocks=60, block=4, async_=async_)
    prof = replace(prof, engine=replace(prof.engine, prefix_caching=caching))
    specs = [RequestSpec(40 + 7 * i, 30, 30 - i, cached_tokens=(0, 20, 45, 60)[i % 4]) for i in range(10)]
    fast, slow = (simulate_open(prof, specs, OpenLoop(rate=20.0, seed=1), fast_forward=ff) for ff in (True, False))
    assert slow.num_preemptions > 0
    same_records(fast, slow)


def test_each_run_of_a_test_with_depth_loads_its_contexts_first():
    p = ClosedLoop(pp=(128,), tg=(8,), depth=(0, 1000), concurrency=(2,), runs=2, warmup=True, prefix_caching=True,
                   prompt_scale=1.1)
    got = [(b.test, b.run, b.context_load, b.requests[0].prompt_tokens, b.requests[0].cached_tokens)
           for b in p.batches(include_warmup=True)]
    ctx, after = "pp128 tg8 d1000 c2 ctx", "pp128 tg8 d1000 c2"
    assert got == [("pp128 tg8 d0 c2", r, False, 141, 0) for r in (-1, 0, 1)] + [
        x for r in (-1, 0, 1) for x in ((ctx, r, True, 1101, 0), (after, r, False, 1241, 1100))]
    off = ClosedLoop(pp=(128,), tg=(8,), depth=(1000,), runs=1, prefix_caching=True, server_caches=False)
    assert [b.requests[0].cached_tokens for b in off.batches()] == [0, 0]  # a server that caches nothing
    assert len(ClosedLoop(pp=(128,), tg=(8,), depth=(1000,), runs=1).batches()) == 1
    one = ClosedLoop(pp=(8,), tg=(2,), depth=(1,), runs=1, prefix_caching=True)  # llama-benchy's depth > 0
    assert [b.context_load for b in one.batches()] == [True, False]


def test_a_simulated_prefix_caching_run_has_llama_benchys_rows():
    """The context load's prefill is the depth's, the prompt's after it only pp's: its est_ppt is a fraction of
    the same test's without the cache, and its pp t/s counts pp tokens alone, as llama-benchy counts them."""
    p = dict(pp=(512,), tg=(16,), depth=(8192,), concurrency=(1,), runs=1, warmup=False, latency_mode="none")
    cached = simulate_closed(SPARK, ClosedLoop(**p, prefix_caching=True))
    plain = simulate_closed(SPARK, ClosedLoop(**p))
    assert cached.closed_loop.prefix_caching and cached.closed_loop.context_loads == ["pp512 tg16 d8192 c1 ctx"]
    ctx, after = summarize_closed(cached)
    (whole,) = summarize_closed(plain)
    assert ctx.context_load and not after.context_load and not whole.context_load
    assert after.metrics["est_ppt"][0] < 0.25 * whole.metrics["est_ppt"][0]
    assert 0.8 < ctx.metrics["est_ppt"][0] / whole.metrics["est_ppt"][0] < 1  # the depth's prefill, less pp's
    rec = next(r for r in cached.records if r.test == "pp512 tg16 d8192 c1")
    assert after.metrics["pp_throughput"][0] == pytest.approx(512 / (rec.chunk_times[0] - rec.start_time))
    assert [t for t, _ in closed_report_rows([ctx, after])] == ["ctx_pp @ d8192", "ctx_tg @ d8192", "pp512 @ d8192",
                                                                "tg16 @ d8192"]
    back = RunResult(cached.records, cached.start_time, cached.end_time, "closed",
                     **RunResult.facts_from_json(cached.meta_json()))
    assert back.closed_loop == cached.closed_loop  # run.json keeps the two phases apart


def test_simulate_closed_takes_llama_benchys_flag():
    args = ["simulate", "closed", "--pp", "256", "--tg", "8", "--depth", "0", "4096", "--concurrency", "1", "2",
            "--runs", "1", "--enable-prefix-caching"]
    md = CliRunner().invoke(main, args)
    assert md.exit_code == 0, md.output
    names = [line.split("|")[2].strip() for line in md.stdout.splitlines() if line.startswith("| spark")]
    assert names == ["pp256 (c1)", "tg8 (c1)", "pp256 (c2)", "tg8 (c2)", "ctx_pp @ d4096 (c1)", "ctx_tg @ d4096 (c1)",
                     "pp256 @ d4096 (c1)", "tg8 @ d4096 (c1)", "ctx_pp @ d4096 (c2)", "ctx_tg @ d4096 (c2)",
                     "pp256 @ d4096 (c2)", "tg8 @ d4096 (c2)"]
    out = json.loads(CliRunner().invoke(main, [*args, "--format", "json"]).stdout)
    assert out["prefix_caching_enabled"] is True
    assert [b["is_context_prefill_phase"] for b in out["benchmarks"]] == [False, False, True, False, True, False]
    csv = CliRunner().invoke(main, [*args, "--format", "csv"]).stdout.splitlines()
    assert [line.split(",")[1] for line in csv[1:]] == names
    plain = json.loads(CliRunner().invoke(main, args[:-1] + ["--format", "json"]).stdout)
    assert plain["prefix_caching_enabled"] is False and len(plain["benchmarks"]) == 4


def _measured(prefix_caching: bool, drop_ctx: bool = False) -> ClosedRun:
    """A closed-loop run as calibration reads it, simulated on the Spark profile with prefix caching."""
    sim = simulate_closed(SPARK, ClosedLoop(pp=(512,), tg=(32,), depth=(0, 8192), concurrency=(1, 2), runs=1,
                                            warmup=False, prefix_caching=True))
    rows = [r for r in summarize_closed(sim) if not (drop_ctx and r.context_load)]
    return ClosedRun(source="s", test="t", model="m", runs=1, latency_mode="generation",
                     latency_ms=1000 * sim.closed_loop.latency_s, version="capsim measure", rows=rows,
                     prefix_caching=prefix_caching)


@pytest.mark.parametrize("drop_ctx", [False, True])
def test_calibration_simulates_the_run_as_it_ran(drop_ctx):
    """Each measured row is held to its simulated twin: the context loads where the source kept them (a
    llama-benchy table's are skipped), and the prompts after them found cached."""
    run = _measured(True, drop_ctx)
    assert closed_pattern(run).prefix_caching and list(closed_pattern(run).combos) == [
        (512, 32, 0, 1), (512, 32, 0, 2), (512, 32, 8192, 1), (512, 32, 8192, 2)]
    pairs = paired_rows(run, summarize_closed(simulate_closed(SPARK, closed_pattern(run))))
    assert [(a.key, a.context_load) for a, _ in pairs] == [(b.key, b.context_load) for _, b in pairs]
    assert len(pairs) == (4 if drop_ctx else 6)
    assert max(abs(r.error_pct) for r in compare(SPARK, [run], 1.0)) < 1.0
    # read as a run without prefix caching, the prompts after their contexts are far slower than measured
    blind = _measured(False, True)
    assert max(abs(r.error_pct) for r in compare(SPARK, [blind], 1.0)) > 100


def test_a_llama_benchy_table_with_ctx_rows_was_run_with_prefix_caching():
    table = """| model | test | t/s | peak t/s | ttfr (ms) | est_ppt (ms) | e2e_ttft (ms) |
|:--|--:|--:|--:|--:|--:|--:|
| m | ctx_pp @ d4096 | 3000.00 ± 1.00 | | 1400.00 ± 1.00 | 1365.00 ± 1.00 | 1400.00 ± 1.00 |
| m | ctx_tg @ d4096 | 40.00 ± 0.10 | 41.00 ± 0.10 | | | |
| m | pp512 @ d4096 | 2500.00 ± 1.00 | | 240.00 ± 1.00 | 205.00 ± 1.00 | 240.00 ± 1.00 |
| m | tg32 @ d4096 | 40.00 ± 0.10 | 41.00 ± 0.10 | | | |
"""
    rows, _, footer = parse_benchy(table)
    assert footer["prefix_caching"] is True and [(r.pp, r.tg, r.depth) for r in rows] == [(512, 32, 4096)]
    assert "prefix_caching" not in parse_benchy(table.replace("| m | ctx_pp @ d4096", "| m | pp9 @ d4096")
                                                .replace("| m | ctx_tg @ d4096", "| m | tg9 @ d4096"))[2]


def test_a_measured_run_tells_calibration_whether_the_server_cached(tmp_path):
    """capsim measure's run folder keeps llama-benchy's flag and the server's cache setting (/metrics'
    cache_config label): with the server's cache off, the prompts after their contexts are simulated uncached."""
    sim = simulate_closed(tiny_profile(), ClosedLoop(pp=(32,), tg=(8,), depth=(64,), runs=1, prefix_caching=True))
    for label, caches in (("True", True), ("False", False), (None, True)):
        folder = tmp_path / f"run-{label}"
        cache = {} if label is None else {"server_cache_config": {"enable_prefix_caching": label, "block_size": "16"}}
        write_run_folder(folder, sim, sim.meta_json() | dict(model="m", endpoint="chat", url="http://x") | cache)
        (c,) = load_closed([str(folder)])
        assert c.prefix_caching and [r.context_load for r in c.rows] == [True, False]
        assert closed_pattern(c).server_caches is caches, label


def test_the_profile_card_plots_no_prefill_point_of_a_prompt_after_its_cached_context():
    from calibrate.card import measured_points

    m = measured_points([_measured(True)])
    # prefill points: the depth-0 prompts (512) and the context loads (8192); the prompts after them are not
    # a prefill of pp + depth
    assert sorted(p["requested"] for p in m["prefill"]) == [512, 8192]
    assert sorted({d["requested"] for d in m["decode"]}) == [512, 8192, 8704]


def test_prefix_caching_on_the_completions_endpoint_is_one_clear_line():
    from measure.cli import measure as measure_cli
    from tests.helpers import refused_port

    with refused_port() as port:
        res = CliRunner().invoke(measure_cli, ["closed", f"http://127.0.0.1:{port}", "--depth", "64", "--endpoint",
                                               "completions", "--enable-prefix-caching", "--no-progress"])
    assert res.exit_code == 1 and "the chat endpoint only" in res.stderr and "Traceback" not in res.output, res.output
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("inline", [True, False])
def test_requests_sharing_a_prefix_hold_its_blocks_once_and_give_them_back(monkeypatch, inline):
    """At every step of a run that preempts, the blocks in use are the blocks the requests hold less one
    copy of the shared prefix's blocks for every holder after the first; a prefix all its holders gave back
    (finished or preempted) is no longer counted, and the cache ends empty. The shared copy leaves room:
    the same load, each request holding its own copy, runs fewer at once and ends much later."""
    import simpy

    from simulator.engine import Engine
    from simulator.workload import RandomWorkload
    from tests.helpers import spec_profile

    monkeypatch.setattr(Engine, "INLINE_DECODES", inline)
    p = spec_profile(0, 0.0, num_blocks=1000, max_num_batched_tokens=2048, prefix_caching=True,
                     kv_groups=(KVGroup(16),))
    preemptions, ends = [], []
    for group in ("shared prefix", ""):
        env = simpy.Environment()

        def check(s):
            assert all(not r.held for r in eng.waiting)
            # each running request's whole blocks of the prefix (they all start with the same blocks)
            runs = [eng.kv.shared_blocks(min(r.computed, 2001)) for r in eng.running] if group else [0]
            assert s["kv_used"] == sum(r.held for r in eng.running) - (sum(runs) - max(runs)) <= eng.kv.capacity

        eng = Engine(env, p, fast_forward=False, seed=1, trace=check)
        specs = RandomWorkload(1000, 300, 0.6, prefix_len=2000, fmt=p.prompt_format).sample(24, 3)
        for i, sp in enumerate(specs):
            rec = RequestRecord(request_id=i, prompt_tokens=sp.prompt_tokens, output_tokens=0, scheduled_time=0.0,
                                start_time=0.0, max_tokens=sp.max_tokens)
            eng.submit(replace(sp, cached_tokens=2001, prefix_group=group, prefix_warm=True), 0.0, rec, lambda r: None)
        env.run()
        assert eng.kv.used == eng.kv.shared == 0 and not eng.running and not eng.waiting
        preemptions.append(eng.num_preemptions)
        ends.append(env.now)
    assert preemptions[0] > 0 and ends[0] < 0.75 * ends[1], (preemptions, ends)


def test_a_random_loads_shared_prefix_is_found_cached_where_the_server_caches():
    """vllm bench serve's --random-prefix-len: one prefix for every prompt. On a box whose prefix cache is on
    (a profile edit, or calibration from a server that said so) it is computed once, by the first request
    (or by the test request where vllm bench serve sends one first); off, every request prefills it."""
    from calibrate.priors import prior_profile
    from simulator.profile import Profile
    from simulator.sim import served_specs, simulate_workload_open
    from simulator.summary import summarize_open
    from simulator.whatif import apply_edits
    from simulator.workload import RandomWorkload

    wl = RandomWorkload(input_len=256, output_len=16, prefix_len=3000)
    caching = apply_edits(SPARK, ["prefix_caching=true"])
    assert not SPARK.engine.prefix_caching and caching.engine.prefix_caching
    assert {(s.cached_tokens, s.prefix_group) for s in served_specs(caching, wl, 20, OpenLoop())} == \
        {(3001, "shared prefix")}
    assert {s.cached_tokens for s in served_specs(SPARK, wl, 20, OpenLoop())} == {0}
    assert {s.cached_tokens for s in served_specs(caching, RandomWorkload(input_len=256), 20, OpenLoop())} == {0}
    cold, warm = (summarize_open(simulate_workload_open(p, wl, 40, OpenLoop(rate=1.0, seed=0)))["median_ttft_ms"]
                  for p in (SPARK, caching))
    assert warm < 0.5 * cold, (warm, cold)  # 256 tokens computed after 3000 cached, not 3257
    assert Profile.from_json(json.loads(json.dumps(caching.to_json()))).engine.prefix_caching
    for flag, on, why in ((True, True, "server flag"), (False, False, "server flag"),
                          (None, True, "not given: on, vLLM V1's default")):
        for model in ("Acme/Tiny-1B", "google/gemma-4-26B-A4B-it"):  # an architecture prior, the shipped physics
            prof, origin = prior_profile({"model": model, "enable_prefix_caching": flag}, 30.0)
            assert prof.engine.prefix_caching is on and origin["prefix_caching"] == why, (flag, model)


@pytest.mark.parametrize("warmups", [0, 1])
def test_a_prefix_repetition_load_computes_each_prefix_once(warmups):
    """vllm bench serve's prefix_repetition dataset on a box that caches prefixes, one request at a time:
    the first request of each prefix computes it and every later one finds it cached (where vllm bench serve
    sent the first prompt before the run, as its test request, the first request's prefix is cached too);
    with the cache off each computes it."""
    from simulator.sim import simulate_workload_open
    from simulator.whatif import apply_edits
    from simulator.workload import PrefixRepetitionWorkload

    wl = PrefixRepetitionWorkload(prefix_len=3000, suffix_len=64, num_prefixes=3, output_len=4)
    caching = apply_edits(SPARK, ["prefix_caching=true"])
    specs = wl.sample(13, 2)
    assert len(specs) == 12 and len({s.prefix_group for s in specs}) == 3
    firsts = {s.prefix_group: i for i, s in reversed(list(enumerate(specs)))}
    cold = {i for g, i in firsts.items() if not warmups or g != specs[0].prefix_group}
    assert len(cold) == 3 - warmups
    ttft = {}
    for prof in (caching, SPARK):
        run = simulate_workload_open(prof, wl, 13, OpenLoop(rate=math.inf, max_concurrency=1, seed=2, warmups=warmups))
        ttft[prof is caching] = [r.ttft for r in sorted(run.records, key=lambda r: r.request_id)]
    uncached, cached = ttft[False], ttft[True]
    assert max(uncached) < 1.1 * min(uncached), uncached
    assert all(cached[i] == pytest.approx(uncached[i], rel=0.05) for i in cold), (cached, uncached)
    assert all(cached[i] < 0.5 * uncached[i] for i in range(len(cached)) if i not in cold), (cached, uncached)


def test_prefix_repetition_lengths_and_bad_values_at_the_command_line():
    """`capsim simulate open --dataset-name prefix_repetition`: --output-len over the dataset's output length
    (vllm bench serve's order), num_prompts // num_prefixes requests a prefix, and one line for a value
    vLLM's dataset cannot take."""
    base = ["simulate", "open", "--dataset-name", "prefix_repetition", "--request-rate", "inf", "--json"]
    res = CliRunner().invoke(main, [*base, "--num-prompts", "25", "--prefix-repetition-output-len", "50",
                                    "--output-len", "7", "--prefix-repetition-prefix-len", "40",
                                    "--prefix-repetition-suffix-len", "10"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["completed"], out["total_output_tokens"]) == (20, 20 * 7)
    assert out["total_input_tokens"] == 20 * (50 + SPARK.prompt_format.special_tokens
                                              + SPARK.prompt_format.chat_template_tokens)
    for args, says in ((["--num-prompts", "5"], "--num-prompts (5) must be >= --prefix-repetition-num-prefixes (10)"),
                       (["--prefix-repetition-num-prefixes", "0"], "--prefix-repetition-num-prefixes must be >= 1"),
                       (["--prefix-repetition-suffix-len", "-1"], "--prefix-repetition-suffix-len must be >= 0")):
        bad = CliRunner().invoke(main, [*base, *args])
        assert bad.exit_code != 0 and says in bad.output and "Traceback" not in bad.output, bad.output


def test_a_request_is_admitted_with_the_blocks_of_its_prefix_another_holds_counted_out():
    """vLLM admits a waiting request only with its whole sequence's blocks free (scheduler_reserve_full_isl),
    less the blocks of its cache hit another request holds (get_num_blocks_to_allocate): two 2000-token
    prompts after a 1000-token prefix (62 whole blocks) in a pool of 200 16-token blocks are admitted
    together, the second needing 63 free where it would need 125 on its own; in a pool of 187 it waits."""
    from tests.helpers import first_step

    groups, prompts = [(16, 1, None)], [2000, 2000]
    step = first_step(groups, prompts, 1000, num_blocks=200)
    assert step["admitted"] == [0, 1] and step["kv_used"] == 125 + 125 - 62
    assert first_step(groups, prompts, 1000, num_blocks=187)["admitted"] == [0]
    assert first_step(groups, prompts, 1000, prefix_group="", num_blocks=200)["admitted"] == [0]


def test_prefix_repetition_workload_bounds_shares_and_record():
    """A prefix or a suffix of no tokens is a load (not both, with no special token either); an answer of a
    share of output_len where the model stops at EOS; the record names every length, and the share and
    the order where they are not the defaults."""
    from simulator.workload import PrefixRepetitionWorkload, PromptFormat, WorkloadError

    PrefixRepetitionWorkload(prefix_len=0, num_prefixes=1)
    PrefixRepetitionWorkload(suffix_len=0, output_len=1)
    with pytest.raises(WorkloadError, match="both 0"):
        PrefixRepetitionWorkload(prefix_len=0, suffix_len=0, fmt=PromptFormat(special_tokens=0))
    PrefixRepetitionWorkload(prefix_len=0, suffix_len=0)  # the BOS alone is a prompt
    for bad in (dict(output_len=0), dict(output_fraction=0.0), dict(output_fraction=1.5), dict(prefix_len=-1)):
        with pytest.raises(WorkloadError):
            PrefixRepetitionWorkload(**bad)
    wl = PrefixRepetitionWorkload(output_len=10, output_fraction=0.34, num_prefixes=2, shuffle=False)
    assert {s.output_tokens for s in wl.sample(4)} == {3} and [s.prefix_group for s in wl.sample(4)] == \
        ["prefix 0", "prefix 0", "prefix 1", "prefix 1"]
    assert wl.describe() == {"dataset": "prefix_repetition", "prefix_repetition_prefix_len": 256,
                             "prefix_repetition_suffix_len": 256, "prefix_repetition_num_prefixes": 2,
                             "prefix_repetition_output_len": 10, "output_fraction": 0.34, "disable_shuffle": True}
    assert PrefixRepetitionWorkload().describe().keys() == {"dataset", "prefix_repetition_prefix_len",
                                                            "prefix_repetition_suffix_len",
                                                            "prefix_repetition_num_prefixes",
                                                            "prefix_repetition_output_len"}


def test_the_first_prompt_sent_before_the_run_is_found_cached():
    """vllm bench serve sends the first request's prompt before the run where its ready check runs (a test
    request, --ready-check-timeout-sec > 0) and --num-warmups times: on a server that caches prefixes, the first
    measured request then finds all of that prompt cached but its last block, and its group's prefix; no other
    request finds more than its prefix. With nothing sent before (vllm bench serve's default) or the cache off,
    the first request computes its prompt whole."""
    from simulator.load import LoadError
    from simulator.sim import served_specs, simulate_workload_open
    from simulator.whatif import apply_edits
    from simulator.workload import PrefixRepetitionWorkload, RandomWorkload

    assert [OpenLoop.warmups_of(w, t) for w, t in ((0, 0), (2, 0), (0, 5), (2, 600), (1, -3))] == [0, 2, 1, 3, 1]
    with pytest.raises(LoadError, match="--num-warmups must be >= 0, got -1"):
        OpenLoop.warmups_of(-1, 0)
    with pytest.raises(LoadError, match="must be >= 0"):
        OpenLoop(warmups=-1)
    assert "warmups" not in OpenLoop().describe() and OpenLoop(warmups=3).describe()["warmups"] == 3
    caching = apply_edits(SPARK, ["prefix_caching=true"])
    wl = RandomWorkload(input_len=3000, output_len=8)
    warm = served_specs(caching, wl, 5, OpenLoop(warmups=1))
    assert warm[0].cached_tokens == warm[0].prompt_tokens and [s.cached_tokens for s in warm[1:]] == [0] * 4
    for prof, w in ((caching, 0), (SPARK, 1)):
        assert [s.cached_tokens for s in served_specs(prof, wl, 5, OpenLoop(warmups=w))] == [0] * 5
    pr = PrefixRepetitionWorkload(prefix_len=1000, suffix_len=100, num_prefixes=2, output_len=4)
    for w in (0, 2):
        specs = served_specs(caching, pr, 6, OpenLoop(warmups=w))
        first = specs[0].prefix_group
        assert [s.prefix_warm for s in specs] == [bool(w) and s.prefix_group == first for s in specs]
        assert [s.cached_tokens for s in specs] == [s.prompt_tokens if w and i == 0 else 1001
                                                     for i, s in enumerate(specs)]
    pattern = OpenLoop(rate=0.05)  # 20 s apart on average: one at a time (a 25-token prefill: 0.17 s)

    def ttfts(prof, w):
        run = simulate_workload_open(prof, wl, 4, replace(pattern, warmups=w))
        assert run.open_loop.warmups == (w or None)
        return [r.ttft for r in sorted(run.records, key=lambda r: r.request_id)]

    cold, hot, off = ttfts(caching, 0), ttfts(caching, 1), ttfts(SPARK, 1)
    assert hot[0] < 0.35 * cold[0] and hot[1:] == pytest.approx(cold[1:]) and off == pytest.approx(cold)
