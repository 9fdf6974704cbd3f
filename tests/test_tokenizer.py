"""measure.tokenizer.ServerTokenizer: which server's tokenizer it finds (vLLM's, llama.cpp's, none), what
it asks each, and how a failing answer reads. vLLM's side through the live server is in test_measure_live;
here both dialects are stand-ins that answer as the servers do, so every branch is reached."""
from __future__ import annotations

import asyncio

import pytest

from measure.tokenizer import ServerTokenizer, TokenizeFailed

BOS = 1


def words(text: str) -> list[int]:
    """A word-level vocabulary: each word an id from 10 up, the same word the same id."""
    return [10 + sum(map(ord, w)) % 500 for w in text.split()]


class VllmEndpoints:
    """vLLM's /tokenize (prompt or messages; count, max_model_len, tokens) and /detokenize (prompt)."""

    def __init__(self, chat: bool = True, detokenize: bool = True, max_model_len=4096):
        self.chat, self.detok, self.max_model_len = chat, detokenize, max_model_len
        self.calls: list[tuple[str, dict]] = []
        self.fault: dict[str, tuple[int, object]] = {}  # path -> the answer it gives from now on

    async def post_json(self, path, body, timeout=None):
        self.calls.append((path, body))
        if path in self.fault:
            return self.fault[path]
        if path == "/tokenize" and "prompt" in body:
            ids = ([BOS] if body.get("add_special_tokens", True) else []) + words(body["prompt"])
            return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        if path == "/tokenize" and "messages" in body and self.chat:
            ids = [BOS, 2] + [t for m in body["messages"] for t in [3, *words(m["content"]), 4]] + [3]
            return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        if path == "/detokenize" and self.detok:
            return 200, {"prompt": " ".join(f"w{t}" for t in body["tokens"])}
        return 404, {"detail": "Not Found"}


class LlamaCppEndpoints:
    """llama.cpp's server: /tokenize {content, add_special, parse_special} -> {tokens} (ids, or {id, piece}
    with with_pieces), /detokenize {tokens} -> {content}, /apply-template {messages} -> {prompt}."""

    def __init__(self, chat: bool = True, detokenize: bool = True, pieces: bool = False):
        self.chat, self.detok, self.pieces = chat, detokenize, pieces
        self.calls: list[tuple[str, dict]] = []
        self.fault: dict[str, tuple[int, object]] = {}

    async def post_json(self, path, body, timeout=None):
        self.calls.append((path, body))
        if path in self.fault:
            return self.fault[path]
        if path == "/tokenize" and "content" in body:
            text = body["content"]
            special = body.get("parse_special", True) and "<turn>" in text
            ids = ([BOS] if body.get("add_special", False) else []) + [7 if w == "<turn>" and special else t
                                                                       for w, t in zip(text.split(), words(text))]
            return 200, {"tokens": [{"id": t, "piece": "?"} for t in ids] if self.pieces else ids}
        if path == "/detokenize" and self.detok:
            return 200, {"content": " ".join(f"w{t}" for t in body["tokens"])}
        if path == "/apply-template" and self.chat:
            return 200, {"prompt": " ".join(f"<turn> {m['content']}" for m in body["messages"]) + " <turn>"}
        return 404, {"error": {"code": 404, "message": "File Not Found"}}


def tokenizer(endpoints) -> ServerTokenizer:
    t = ServerTokenizer(endpoints, "m")
    asyncio.run(t.detect())
    return t


def run(coro):
    return asyncio.run(coro)


def test_vllm_dialect_found_with_what_it_serves():
    ep = VllmEndpoints()
    t = tokenizer(ep)
    assert (t.dialect, t.available, t.can_detokenize, t.can_chat, t.max_model_len) == ("vllm", True, True, True, 4096)
    assert run(t.detect()) == "vllm" and len(ep.calls) == 3  # found once: no second probe
    bare = tokenizer(VllmEndpoints(chat=False, detokenize=False, max_model_len=None))
    assert (bare.dialect, bare.can_detokenize, bare.can_chat, bare.max_model_len) == ("vllm", False, False, None)


def test_vllm_dialect_asks_as_vllm_serves():
    ep = VllmEndpoints()
    t = tokenizer(ep)
    probes = len(ep.calls)
    assert probes == 3 and t.calls == 0  # detection's calls are not the run's
    assert run(t.ids("a b c")) == words("a b c")
    assert run(t.ids("a b c", add_special=True)) == [BOS, *words("a b c")]
    assert run(t.count("a b c d")) == 4
    assert ep.calls[probes] == ("/tokenize", {"model": "m", "prompt": "a b c", "add_special_tokens": False})
    msgs = [{"role": "user", "content": "x y"}]
    assert run(t.count_chat(msgs)) == 7  # 2 words and the template's 5 tokens, counted by the server
    assert ep.calls[-1] == ("/tokenize", {"model": "m", "messages": msgs, "add_generation_prompt": True})
    assert run(t.detokenize([5, 6])) == "w5 w6"
    assert ep.calls[-1] == ("/detokenize", {"model": "m", "tokens": [5, 6]})
    assert t.calls == 5


def test_llamacpp_dialect_asks_as_llamacpp_serves():
    ep = LlamaCppEndpoints()
    t = tokenizer(ep)
    assert (t.dialect, t.available, t.can_detokenize, t.can_chat, t.max_model_len) == ("llamacpp", True, True, True,
                                                                                        None)
    assert [p for p, _ in ep.calls] == ["/tokenize", "/tokenize", "/detokenize", "/apply-template"]
    n = len(ep.calls)
    assert run(t.ids("a b", add_special=True)) == [BOS, *words("a b")]
    assert ep.calls[n] == ("/tokenize", {"content": "a b", "add_special": True})
    assert run(t.count("a b c")) == 3
    # a chat prompt: the server's template, then its tokens with BOS and the template's special tokens
    assert run(t.count_chat([{"role": "user", "content": "x y z"}])) == 1 + 5
    assert ep.calls[-2][0] == "/apply-template"
    assert ep.calls[-1] == ("/tokenize", {"content": "<turn> x y z <turn>", "add_special": True,
                                          "parse_special": True})
    assert run(t.detokenize([8, 9])) == "w8 w9"
    assert ep.calls[-1] == ("/detokenize", {"tokens": [8, 9]})
    assert t.calls == 4  # a templated count is one call of the run's (two requests)
    # ids given with their pieces ({"id", "piece"}) read the same
    assert run(tokenizer(LlamaCppEndpoints(pieces=True)).ids("a b")) == words("a b")


def test_llamacpp_without_detokenize_or_template():
    t = tokenizer(LlamaCppEndpoints(chat=False, detokenize=False))
    assert (t.dialect, t.can_detokenize, t.can_chat) == ("llamacpp", False, False)
    assert run(t.count_chat([{"role": "user", "content": "x"}])) is None


class Nothing:
    def __init__(self, answer=(404, {"detail": "Not Found"})):
        self.answer = answer

    async def post_json(self, path, body, timeout=None):
        return self.answer


@pytest.mark.parametrize("answer", [(404, {"detail": "Not Found"}), (200, {"tokens": ["a", "b"]}),
                                    (200, {"tokens": "ab", "count": 2}), (200, ["not", "a", "dict"]),
                                    (500, {"tokens": [1, 2], "count": 2})])
def test_no_tokenizer_found(answer):
    """Answers without token ids, or with an error status, find no tokenizer: usage counts then."""
    t = tokenizer(Nothing(answer))
    assert (t.dialect, t.available, t.can_detokenize, t.can_chat) == ("none", False, False, False)
    with pytest.raises(RuntimeError, match="no /tokenize"):
        run(t.ids("a"))
    assert run(t.count_chat([{"role": "user", "content": "x"}])) is None


def test_a_vllm_answer_without_count_is_llamacpps_shape():
    """vLLM's answer has a count; ids alone are llama.cpp's (tried second, with its own body)."""
    class IdsOnly(LlamaCppEndpoints):
        async def post_json(self, path, body, timeout=None):
            if path == "/tokenize" and "prompt" in body:
                self.calls.append((path, body))
                return 200, {"tokens": [1, 2]}
            return await super().post_json(path, body, timeout)
    assert tokenizer(IdsOnly()).dialect == "llamacpp"


@pytest.mark.parametrize("endpoints", [VllmEndpoints, LlamaCppEndpoints])
@pytest.mark.parametrize("answer", [(500, {"error": "boom"}), (200, {"tokens": [1, "x"]}), (200, None),
                                    (200, {"prompt": 5, "content": 5})])
def test_failing_calls_after_detection_raise_tokenize_failed(endpoints, answer):
    ep = endpoints()
    t = tokenizer(ep)
    ep.fault = {"/tokenize": answer, "/detokenize": answer}
    status = answer[0]
    with pytest.raises(TokenizeFailed, match=f"^/tokenize: HTTP {status}$"):
        run(t.ids("a b"))
    with pytest.raises(TokenizeFailed, match=f"^/detokenize: HTTP {status}$"):
        run(t.detokenize([1]))


@pytest.mark.parametrize("answer", [(500, {"count": 3}), (200, {"count": "3"}), (200, [3])])
def test_a_chat_count_that_fails_is_unknown(answer):
    ep = VllmEndpoints()
    t = tokenizer(ep)
    ep.fault = {"/tokenize": answer}
    assert run(t.count_chat([{"role": "user", "content": "x"}])) is None


@pytest.mark.parametrize("path, answer", [("/apply-template", (500, {"prompt": "x"})),
                                          ("/apply-template", (200, {"prompt": None})),
                                          ("/apply-template", (200, "x")),
                                          ("/tokenize", (500, {"tokens": [1, 2]})),
                                          ("/tokenize", (200, {"tokens": None}))])
def test_a_llamacpp_chat_count_that_fails_is_unknown(path, answer):
    ep = LlamaCppEndpoints()
    t = tokenizer(ep)
    ep.fault = {path: answer}
    assert run(t.count_chat([{"role": "user", "content": "x"}])) is None


@pytest.mark.parametrize("endpoints, probe, answer", [
    (VllmEndpoints, "/detokenize", (500, {"prompt": "x"})), (VllmEndpoints, "/detokenize", (200, {"prompt": 1})),
    (VllmEndpoints, "/detokenize", (200, "x")),
    (LlamaCppEndpoints, "/detokenize", (500, {"content": "x"})),
    (LlamaCppEndpoints, "/detokenize", (200, {"content": None})), (LlamaCppEndpoints, "/detokenize", (200, "x")),
    (LlamaCppEndpoints, "/apply-template", (500, {"prompt": "x"})),
    (LlamaCppEndpoints, "/apply-template", (200, {"prompt": 1})), (LlamaCppEndpoints, "/apply-template", (200, "x"))])
def test_probes_that_fail_leave_the_feature_off(endpoints, probe, answer):
    ep = endpoints()
    ep.fault = {probe: answer}
    t = tokenizer(ep)
    assert t.available
    assert (t.can_detokenize if probe == "/detokenize" else t.can_chat) is False
    assert (t.can_chat if probe == "/detokenize" else t.can_detokenize) is True
