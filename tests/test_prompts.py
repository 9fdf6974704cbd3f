"""measure/prompts.py on a server tokenizer stand-in (tests.helpers.TokenizerEndpoints): a BPE with
SentencePiece's spaces trained here, whose decode and re-encode do not give back the ids they started
from, as real ones do not.

That the random prompts are vllm bench serve's own texts is proven against vLLM's code in
tests/test_conformance_vllm.py and through the live server in tests/test_measure_live.py.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from measure.prompts import PromptBuilder, pseudo_corpus
from simulator.workload import PromptFormat, RandomWorkload
from tests.helpers import TokenizerEndpoints

TEMPLATE = ("<start>user\n", "<end>\n<start>model\n")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # SentencePiece's spaces, as Gemma's
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>", "<start>", "<end>", "<unk>"],
                                  show_progress=False)
    words = pseudo_corpus()
    tok.train_from_iterator([" ".join(words[i:i + 50]) for i in range(0, len(words), 50)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


def built(bpe, endpoint="completions", **kw) -> tuple[PromptBuilder, TokenizerEndpoints]:
    ends = TokenizerEndpoints(bpe, **kw)
    b = PromptBuilder(ends, "m", endpoint)
    asyncio.run(b.setup())
    return b, ends


def count(ends: TokenizerEndpoints, text: str, special=False) -> int:
    return len(ends.tok.encode(text, add_special_tokens=special).ids)


def test_setup_reads_the_special_tokens_and_the_templates_cost(bpe):
    b, ends = built(bpe, "chat", template=TEMPLATE)
    assert b.tok.dialect == "vllm" and b.tok.can_detokenize and b.tok.can_chat
    assert b.special_tokens == 1  # the BOS the post-processor adds
    w1 = " ".join(pseudo_corpus()[:40])
    w2 = " ".join(pseudo_corpus()[40:70])
    # the template's tokens: the whole chat count less the text's own
    assert b.delta_user == count(ends, TEMPLATE[0] + w1 + TEMPLATE[1], True) - count(ends, w1)
    both = TEMPLATE[0] + w1 + TEMPLATE[1] + TEMPLATE[0] + w2 + TEMPLATE[1]
    assert b.delta_ctx == count(ends, both, True) - count(ends, w1) - count(ends, w2)
    assert b.delta_user > 1 and b.delta_ctx > b.delta_user
    d = b.describe()
    assert (d["chat_template_tokens"], d["chat_context_template_tokens"], d["special_tokens"]) == \
        (b.delta_user, b.delta_ctx, 1)


def test_without_a_chat_tokenizer_the_template_comes_from_a_one_token_probe(bpe):
    b, ends = built(bpe, "chat")  # /tokenize takes no messages: the probe's usage would say; it fails here
    assert not b.tok.can_chat
    probes = [body for path, body in ends.calls if path == "/v1/chat/completions"]
    assert len(probes) == 2 and all(p["max_tokens"] == 1 and p["stream"] is False for p in probes)
    assert (b.delta_user, b.delta_ctx) == (0, 0)  # no usage came back


def test_fit_ids_pads_from_the_generator_and_truncates_until_the_count_is_hit(bpe):
    b, ends = built(bpe)
    rng = np.random.default_rng(5)
    # a sentence spelled a letter a token: its text re-encodes into fewer tokens, so padding is drawn
    ids = [ends.tok.token_to_id(c) for c in "▁" + "▁".join(pseudo_corpus()[:30])]
    assert None not in ids and count(ends, " ".join(pseudo_corpus()[:30])) < len(ids) // 2
    text, got = asyncio.run(b.fit_ids(ids, 150, 600, rng))
    assert len(got) == 150 and count(ends, text) == 150
    assert ends.tok.encode(text, add_special_tokens=False).ids == got
    assert rng.bit_generator.state != np.random.default_rng(5).bit_generator.state  # padding was drawn
    # a first decode and re-encode the caller made is not made again
    ends.calls.clear()
    first = (text, got)
    assert asyncio.run(b.fit_ids([1], 150, 600, rng, first=first)) == first and ends.calls == []


class OneMore(TokenizerEndpoints):
    """A tokenizer whose every encoding ends in one token more: no length is ever hit."""

    def _ids(self, text, special):
        return super()._ids(text, special) + [5]


def test_fit_ids_gives_up_after_ten_more_tries(bpe):
    b = PromptBuilder(OneMore(bpe), "m", "completions")
    asyncio.run(b.setup())
    b.tok.client.calls.clear()
    text, got = asyncio.run(b.fit_ids(list(range(5, 45)), 30, 600, np.random.default_rng(0)))
    assert len(got) == 31 and got[-1] == 5
    assert sum(1 for path, _ in b.tok.client.calls if path == "/detokenize") == 11


def test_random_prompts_hit_their_counts_and_draw_in_request_order(bpe):
    wl = RandomWorkload(120, 4, 0.5, 7, fmt=PromptFormat(1, 0, 600))
    specs = wl.sample(12, 3)

    def prompts(parallel):
        b, ends = built(bpe)
        b._sem = asyncio.Semaphore(parallel)  # how many first rounds run at once
        out = asyncio.run(b.spec_prompts(specs, vocab=600, special_ids=(0, 1, 2, 3, 4), prefix_len=7,
                                         rng=wl.prompt_rng(12, 3)))
        return out, ends, b

    out, ends, b = prompts(8)
    assert [count(ends, p.prompt) for p in out] == [s.raw_prompt_tokens for s in specs]
    assert b.mismatches == 0 and all(p.fitted and p.ignore_eos for p in out)
    assert [p.target_prompt_tokens for p in out] == [s.prompt_tokens for s in specs]
    # each prompt's first sequence is RandomDataset's: the shared prefix (drawn past the special ids),
    # then the vocabulary less the special ids from the request's offset on
    decoded = [body["tokens"] for path, body in ends.calls if path == "/detokenize"]
    allowed = np.arange(5, 600)
    firsts = []
    for i, s in enumerate(specs):
        inner = allowed[(s.offset + i + np.arange(s.raw_prompt_tokens - 7)) % len(allowed)].tolist()
        firsts += [t for t in decoded if t[7:] == inner]
    assert len(firsts) == 12 and len({tuple(t[:7]) for t in firsts}) == 1 and min(firsts[0][:7]) > 4
    # the texts do not depend on how many first rounds ran at once: the draws go in request order
    assert [p.prompt for p in prompts(1)[0]] == [p.prompt for p in out]
    refits = sum(1 for path, _ in ends.calls if path == "/detokenize") - 1 - 13
    assert refits > 0  # the case has teeth: some prompt took padding


def test_random_prompts_fall_back_to_text_where_detokenize_refuses(bpe):
    wl = RandomWorkload(40, 4, fmt=PromptFormat(1, 0, 5000))
    specs = wl.sample(3, 0)
    b, ends = built(bpe, refuse_ids_from=600)
    out = asyncio.run(b.spec_prompts(specs, vocab=5000, rng=wl.prompt_rng(3, 0)))
    assert any("refused random token ids" in n for n in b.notes)
    assert [count(ends, p.prompt) for p in out] == [s.raw_prompt_tokens for s in specs]
    words = set(pseudo_corpus())
    assert all(w in words for p in out for w in p.prompt.split()[:-1])  # the last may be cut to fit


def test_chat_prompts_are_sent_as_they_are_and_counted(bpe):
    wl = RandomWorkload(60, 4, fmt=PromptFormat(1, 0, 600))
    b, ends = built(bpe, "chat", template=TEMPLATE)
    wl = RandomWorkload(60, 4, fmt=PromptFormat(1, b.delta_user - 1, 600))
    specs = wl.sample(20, 1)
    out = asyncio.run(b.spec_prompts(specs, vocab=600, rng=wl.prompt_rng(20, 1)))
    assert all(p.messages[0]["role"] == "user" and p.prompt is None for p in out)
    counted = [count(ends, TEMPLATE[0] + p.messages[0]["content"].strip() + TEMPLATE[1], True) for p in out]
    off = sum(c != s.prompt_tokens for c, s in zip(counted, specs))
    assert b.mismatches == off and b.describe()["prompts_off_target"] == off
    assert [len(ends.tok.encode(p.messages[0]["content"], add_special_tokens=False).ids) for p in out] == \
        [s.raw_prompt_tokens for s in specs]  # the text itself is the target's, as vLLM's is


@pytest.mark.parametrize("endpoint, total, depth", [("completions", 300, 0), ("completions", 50, 0),
                                                    ("chat", 300, 0), ("chat", 50, 0), ("chat", 400, 250)])
def test_sized_prompts_count_their_total(bpe, endpoint, total, depth):
    """llama-benchy's prompts (depth: its context, in a system message) count pp + depth, template included."""
    b, ends = built(bpe, endpoint, template=TEMPLATE)
    p = asyncio.run(b.sized_prompt(total, 8, depth=depth))
    if endpoint == "completions":
        assert count(ends, p.prompt, True) == total
    else:
        text = "".join(TEMPLATE[0] + m["content"].strip() + TEMPLATE[1] for m in p.messages)
        assert count(ends, text, True) == total
        assert [m["role"] for m in p.messages] == (["system", "user"] if depth else ["user"])
        if depth:
            assert abs(count(ends, p.messages[0]["content"]) - (depth - b.delta_ctx)) <= 3
    assert (p.target_prompt_tokens, p.max_tokens, p.fitted, b.mismatches) == (total, 8, True, 0)


def test_text_of_tokens_without_detokenize_searches_by_words(bpe):
    b, ends = built(bpe, detokenize=False)
    assert not b.tok.can_detokenize
    for n in (37, 200):
        text, got = asyncio.run(b.text_of_tokens(n, start=100))
        assert got == count(ends, text) and got <= n and n - got <= 2


def test_without_a_tokenizer_prompts_are_estimates_and_say_so(bpe):
    b = PromptBuilder(TokenizerEndpoints(bpe, detokenize=False), "m", "completions")
    b.tok.dialect = "none"
    asyncio.run(b.setup())
    assert any("no /tokenize" in n for n in b.notes)
    text, got = asyncio.run(b.text_of_tokens(100, start=0))
    assert got is None and 60 <= len(text.split()) <= 90
    wl = RandomWorkload(40, 4, fmt=PromptFormat(1, 0, 600))
    out = asyncio.run(b.spec_prompts(wl.sample(2, 0), vocab=600))
    assert all(not p.fitted for p in out) and b.mismatches == 0


class ChatUsage(TokenizerEndpoints):
    """A server whose /tokenize takes no messages but whose chat endpoint reports usage (llama-benchy's
    probe): the templated count of a one-token answer."""

    async def post_json(self, path, body, timeout=None):
        if path == "/v1/chat/completions":
            self.calls.append((path, body))
            text = "".join(TEMPLATE[0] + m["content"].strip() + TEMPLATE[1] for m in body["messages"])
            return 200, {"usage": {"prompt_tokens": len(self._ids(text, True)), "completion_tokens": 1}}
        return await super().post_json(path, body, timeout)


def test_the_probe_reads_the_templates_cost_from_usage(bpe):
    probed = PromptBuilder(ChatUsage(bpe), "m", "chat")
    asyncio.run(probed.setup())
    counted, _ = built(bpe, "chat", template=TEMPLATE)  # the same template, counted by /tokenize
    assert not probed.tok.can_chat and counted.tok.can_chat
    assert (probed.delta_user, probed.delta_ctx) == (counted.delta_user, counted.delta_ctx) != (0, 0)


def test_payloads_are_the_tools_bodies(bpe):
    """vllm bench serve's bodies for the open loop, llama-benchy's --exact-tg body for the closed one; that
    they are the tools' own is proven against their code (tests/test_conformance_vllm.py, _benchy.py)."""
    spec = RandomWorkload(8, 3).sample(1)[0]
    chat = PromptBuilder(TokenizerEndpoints(bpe), "m", "chat")._single("hi", spec, True)
    done = PromptBuilder(TokenizerEndpoints(bpe), "m", "completions")._single("hi", spec, True)
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    assert chat.vllm_body("m", "chat", extra={"temperature": 0.5}) == {
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 3, **stream, "ignore_eos": True, "temperature": 0.5}
    assert done.vllm_body("m", "completions") == {
        "model": "m", "prompt": "hi", "repetition_penalty": 1.0, "max_tokens": 3, "logprobs": None, **stream,
        "ignore_eos": True}
    # llama-benchy sets --exact-tg's three over its extra body
    assert chat.benchy_body("m", "chat", {"max_tokens": 99, "top_k": 5}) == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
        "return_token_ids": True, "stream_options": {"include_usage": True}, "top_k": 5, "min_tokens": 3,
        "ignore_eos": True}
    # an answer left to stop at EOS (ShareGPT) asks for nothing more
    free = PromptBuilder(TokenizerEndpoints(bpe), "m", "chat")._single("hi", RandomWorkload(8, 3).sample(1)[0], True)
    free.ignore_eos = False
    assert "ignore_eos" not in free.vllm_body("m", "chat")
    assert "min_tokens" not in free.benchy_body("m", "chat")


def test_text_of_tokens_grows_a_short_first_guess(bpe):
    b, ends = built(bpe)
    assert asyncio.run(b.text_of_tokens(0)) == ("", 0)
    b.words_per_token = 0.01  # a first guess far too short: the text grows until it is long enough
    ends.calls.clear()
    text, got = asyncio.run(b.text_of_tokens(300, start=len(pseudo_corpus()) - 20))
    assert got == 300 and count(ends, text) == 300
    assert sum(1 for path, _ in ends.calls if path == "/tokenize") > 3


def test_without_detokenize_the_longest_text_that_fits_is_taken(bpe):
    b, ends = built(bpe, detokenize=False)
    for n, start in ((37, 100), (200, 5), (64, 1234)):
        text, got = asyncio.run(b.text_of_tokens(n, start=start))
        fits = [k for k in range(1, 3 * n) if count(ends, " ".join(b._words(start, k).split())) <= n]
        assert text == b._words(start, max(fits)) and got == count(ends, text)


def test_random_prompts_without_detokenize_are_text_with_no_refusal_noted(bpe):
    wl = RandomWorkload(40, 4, fmt=PromptFormat(1, 0, 600))
    b, ends = built(bpe, detokenize=False)
    out = asyncio.run(b.spec_prompts(wl.sample(3, 0), vocab=600, rng=wl.prompt_rng(3, 0)))
    assert not any("refused" in n for n in b.notes)
    assert all(abs(count(ends, p.prompt) - 39) <= 2 for p in out)
