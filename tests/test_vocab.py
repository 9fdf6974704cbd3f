"""measure/vocab.py: a tokenizer folder's vocabulary size and special ids, and its bad input.

That the figures are transformers' own is proven against it in tests/test_conformance_vllm.py.
"""
from __future__ import annotations

import json
import os

import pytest

from measure.errors import MeasureError
from measure.prompts import PromptBuilder
from measure.vocab import find_tokenizer, hub_cache, read_vocab, special_token_strings
from tests.helpers import refused_port
from tests.test_bad_input import invoke, one_clear_line


def _folder(tmp_path, tokenizer, config=None, smap=None):
    d = tmp_path / "tok"
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(tokenizer if isinstance(tokenizer, str) else json.dumps(tokenizer))
    if config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(config))
    if smap is not None:
        (d / "special_tokens_map.json").write_text(json.dumps(smap))
    return d


BPE = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<s>": 2, "</s>": 3}},
       "added_tokens": [{"id": 4, "content": "<img>", "special": True}, {"id": 5, "content": "x", "special": False}]}


def test_size_is_the_models_vocabulary_and_ids_come_from_added_tokens_or_the_vocabulary(tmp_path):
    v = read_vocab(_folder(tmp_path, BPE, {"bos_token": "<s>", "eos_token": {"content": "</s>"},
                                           "additional_special_tokens": ["<img>"]}))
    assert (v.size, v.special_ids) == (4, (2, 3, 4))
    assert v.source.endswith("tokenizer.json")
    assert read_vocab(tmp_path / "tok" / "tokenizer.json") == v  # the file itself does as well as its folder


def test_unigram_ids_are_the_rows(tmp_path):
    uni = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["<s>", 0.0], ["a", -1.0]]}}
    assert read_vocab(_folder(tmp_path, uni, {"bos_token": "<s>", "unk_token": "<unk>"})).special_ids == (1, 0)


def test_a_token_the_vocabulary_lacks_is_left_out_and_no_config_means_none(tmp_path):
    assert read_vocab(_folder(tmp_path, BPE, {"bos_token": "<nowhere>", "eos_token": "</s>"})).special_ids == (3,)
    (tmp_path / "tok" / "tokenizer_config.json").unlink()
    assert read_vocab(tmp_path / "tok").special_ids == ()


def test_a_special_token_map_beside_an_older_config_is_read_and_malformed_entries_are_passed_over(tmp_path):
    odd = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], "junk", ["<s>", 0.0], []]},
           "added_tokens": [{"id": 9, "content": "<x>"}, {"content": "<no-id>"}, "junk"]}
    d = _folder(tmp_path, odd, {"additional_special_tokens": ["<x>", "<no-id>"]},
                {"bos_token": "<s>", "unk_token": "<unk>"})
    assert read_vocab(d) == read_vocab(d / "tokenizer.json")
    assert (read_vocab(d).size, read_vocab(d).special_ids) == (4, (2, 0, 9))
    with pytest.raises(MeasureError, match="has no model vocabulary"):
        read_vocab(_folder(tmp_path, {"model": {"type": "BPE", "vocab": {}}}))


def test_special_token_order_and_precedence():
    # named tokens in transformers' order, then the extra ones, each once
    assert special_token_strings({"eos_token": "E", "bos_token": "B", "extra_special_tokens": ["X", "B"]}, {}) == \
        ["B", "E", "X"]
    # an older save (no added_tokens_decoder): the map wins and its extra tokens join the config's
    assert special_token_strings({"eos_token": "E", "extra_special_tokens": ["X"]},
                                 {"eos_token": "F", "extra_special_tokens": ["Y", "X"]}) == ["F", "X", "Y"]
    # a newer one: the map is not read
    assert special_token_strings({"eos_token": "E", "added_tokens_decoder": {}}, {"eos_token": "F"}) == ["E"]
    # the config's additional tokens are its extra ones, which the map's additional tokens do not replace;
    # beside none, they count
    assert special_token_strings({"additional_special_tokens": ["A"]}, {"additional_special_tokens": ["B"]}) == ["A"]
    assert special_token_strings({"eos_token": "E"}, {"additional_special_tokens": ["B"]}) == ["E", "B"]
    # a dict of extra tokens names them; additional_special_tokens is their older name
    assert special_token_strings({"extra_special_tokens": {"image_token": "I"}}, {}) == ["I"]
    assert special_token_strings({"additional_special_tokens": ["A"]}, {}) == ["A"]


@pytest.mark.parametrize("how, words", [
    ("missing", ["no tokenizer.json"]),
    ("truncated", ["not valid JSON", "tokenizer.json"]),
    ("a list", ["holds no tokenizer object"]),
    ("no vocabulary", ["has no model vocabulary"]),
    ("bad config", ["not valid JSON", "tokenizer_config.json"]),
])
def test_bad_folders_are_one_clear_error(tmp_path, how, words):
    if how == "missing":
        path = tmp_path / "nothing-here"
        path.mkdir()
    elif how == "bad config":
        path = _folder(tmp_path, BPE)
        (path / "tokenizer_config.json").write_text('{"bos_token": "<s>"')
    else:
        path = _folder(tmp_path, {"truncated": json.dumps(BPE)[:40], "a list": "[1, 2]",
                                  "no vocabulary": json.dumps({"model": {"type": "BPE"}})}[how])
    with pytest.raises(MeasureError) as e:
        read_vocab(path)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_measure_open_names_a_broken_tokenizer_folder_before_connecting(tmp_path):
    d = _folder(tmp_path, json.dumps(BPE)[:30])
    with refused_port() as port:
        res = invoke(["measure", "open", f"http://127.0.0.1:{port}", "--tokenizer", str(d), "--no-progress",
                      "-o", str(tmp_path / "run")])
    one_clear_line(res, "--tokenizer", "not valid JSON")
    assert not (tmp_path / "run").exists()


def test_model_ids_are_found_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--acme--m"
    for rev in ("old", "new", "main-rev"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "tokenizer.json").write_text(json.dumps(BPE))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("main-rev\n")
    assert find_tokenizer("acme/m") == repo / "snapshots" / "main-rev"
    (repo / "refs" / "main").unlink()  # no ref: the newest snapshot
    os.utime(repo / "snapshots" / "old", (1, 1))
    os.utime(repo / "snapshots" / "main-rev", (2, 2))
    assert find_tokenizer("acme/m") == repo / "snapshots" / "new"
    assert find_tokenizer("acme/other") is None and find_tokenizer("no-org") is None
    assert find_tokenizer(str(repo)) == repo  # a local path is itself
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"


def test_measure_open_reads_the_tokenizer_of_model_as_vllm_bench_serve_does(fake, tmp_path, monkeypatch):
    """No --tokenizer: --model's folder (served under its path, as `vllm serve DIR` serves it) is the
    tokenizer. The fake server detokenizes id i as `ti`, so the prompts show the ids drawn: below the
    folder's vocabulary size, none of its special ids."""
    words = {"model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(1000)}}}
    d = _folder(tmp_path, words, {"bos_token": "w0", "eos_token": "w1", "pad_token": "w999"})
    sent = []
    real = PromptBuilder.spec_prompts

    async def spy(self, specs, **kw):
        sent.extend(await real(self, specs, **kw))
        return sent

    monkeypatch.setattr(PromptBuilder, "spec_prompts", spy)
    res = invoke(["measure", "open", fake(itl=0.001, model=str(d)).url, "--model", str(d), "--endpoint", "completions",
                  "--random-input-len", "300", "--random-output-len", "2", "--num-prompts", "6", "--no-progress",
                  "--no-metrics", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ids = [int(w[1:]) for p in sent for w in p.prompt.split()]
    assert len(ids) == 6 * 299 and max(ids) < 1000 and not {0, 1, 999} & set(ids)
    assert max(ids) > 900  # the case has teeth: without the folder ids would run to 262144


def test_measure_open_says_a_hub_name_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with refused_port() as port:
        res = invoke(["measure", "open", f"http://127.0.0.1:{port}", "--tokenizer", "acme/no-such-folder",
                      "--no-progress", "-o", str(tmp_path / "run")])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and "--tokenizer acme/no-such-folder is neither a local folder nor in the " \
        "HuggingFace cache" in lines[0]
    assert f"cannot connect to http://127.0.0.1:{port}: connection refused" in lines[1]
