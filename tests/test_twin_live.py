"""The twin answers as vLLM answers: the same requests to the real vLLM CPU server (gemma3-dummy, started
by the session's fixture) and to a twin of the same max_model_len and length rule, compared answer by
answer: status codes, every key of every JSON body and SSE event (values where they are the API's, not
the model's: objects, finish reasons, error types and parameters, the length errors' texts), and the
/metrics names the twin exports. Texts, ids, token counts and times are the model's and differ. Also here,
as it needs the same server: what calibrate --live reads off the real vLLM (read_server)."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from calibrate.live import read_server
from measure.prom import info_labels
from measure.twin import TwinServer
from simulator.profile import KVGroup
from tests.live_server import model_dir, vllm_server  # noqa: F401  (the session-scoped server)
from tests.test_twin import twin_profile

pytestmark = pytest.mark.live

M = "gemma3-dummy"
MSGS = [{"role": "user", "content": "hello there"}]


def skeleton(v):
    """A JSON value's shape: dicts by key, lists of objects item by item, other lists by the kinds they
    hold (a list of token ids is as long as the model's tokens), other values by JSON kind."""
    if isinstance(v, dict):
        return {k: skeleton(x) for k, x in v.items()}
    if isinstance(v, list):
        items = [skeleton(x) for x in v]
        return items if any(isinstance(x, dict) for x in v) else sorted(set(map(str, items)))
    if isinstance(v, bool) or v is None:
        return v if v is None else "bool"
    return "number" if isinstance(v, (int, float)) else type(v).__name__


@pytest.fixture(scope="module")
def pair(vllm_server):  # noqa: F811
    mml = httpx.get(vllm_server.url + "/v1/models", timeout=30).json()["data"][0]["max_model_len"]
    tw = TwinServer(twin_profile(max_model_len=mml, clamp_max_tokens=True), speed=50.0, model=M).start()
    yield vllm_server.url, tw.url, mml
    tw.stop()


def both(pair, method, path, body=None):
    out = []
    for url in pair[:2]:
        kw = ({"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes)
              else {"json": body} if body is not None else {})
        r = httpx.request(method, url + path, timeout=120, **kw)
        out.append((r.status_code, r.json() if r.content else None))
    return out


OK = [("GET", "/v1/models", None),
      ("POST", "/tokenize", {"model": M, "prompt": "hello world"}),
      ("POST", "/tokenize", {"model": M, "messages": MSGS, "add_generation_prompt": True}),
      ("POST", "/detokenize", {"model": M, "tokens": [5, 6]}),
      ("POST", "/v1/completions", {"model": M, "prompt": "hello world", "max_tokens": 3}),
      ("POST", "/v1/completions", {"model": M, "prompt": [5, 6, 7], "max_tokens": 2}),
      ("POST", "/v1/completions", {"model": M, "prompt": ["hello world"], "max_tokens": 2}),
      ("POST", "/v1/chat/completions", {"model": M, "messages": MSGS, "max_tokens": 3}),
      ("POST", "/v1/chat/completions", {"model": M, "messages": MSGS, "max_completion_tokens": 2, "max_tokens": 9})]


@pytest.mark.parametrize("method, path, body", OK, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(OK)])
def test_answers_have_vllms_keys(pair, method, path, body):
    (s1, theirs), (s2, ours) = both(pair, method, path, body)
    assert s1 == s2 == 200
    assert skeleton(ours) == skeleton(theirs), (theirs, ours)
    if "choices" in theirs:
        api = [{k: c.get(k) for k in ("index", "finish_reason", "stop_reason", "logprobs")} for c in theirs["choices"]]
        assert [{k: c.get(k) for k in ("index", "finish_reason", "stop_reason", "logprobs")}
                for c in ours["choices"]] == api
        assert (ours["object"], ours["model"]) == (theirs["object"], theirs["model"])
        assert ours["usage"]["completion_tokens"] == theirs["usage"]["completion_tokens"]
    if path == "/v1/models":
        assert ours["data"][0]["max_model_len"] == theirs["data"][0]["max_model_len"]


def bad_cases(mml):
    return [
        ("/v1/completions", {"model": M, "prompt": "hello", "max_tokens": mml + 5}),  # past max_model_len (>= 0.32)
        ("/v1/chat/completions", {"model": M, "messages": MSGS, "max_completion_tokens": mml + 1}),
        ("/v1/completions", {"model": M, "prompt": "hello", "max_tokens": 0}),
        ("/v1/chat/completions", {"model": M, "messages": MSGS, "max_tokens": 0}),
        ("/v1/completions", {"model": M, "prompt": 5, "max_tokens": 2}),
        ("/v1/completions", {"model": M, "prompt": "hello", "max_tokens": 2.5}),
        ("/v1/chat/completions", {"model": M, "messages": [], "max_tokens": 3}),
        ("/v1/completions", b"{nope"),
        ("/v1/completions", b"[1, 2]"),
        ("/tokenize", {"model": M}),
        ("/detokenize", {"model": M, "tokens": "x"}),
        # prompts past max_model_len (>= 0.32: the prompt's own check), one that fills it (0 tokens left)
        ("/v1/completions", {"model": M, "prompt": [5] * (mml + 3), "max_tokens": 2}),
        ("/v1/completions", {"model": M, "prompt": [5] * (mml + 1), "max_tokens": 2}),
        ("/v1/completions", {"model": M, "prompt": [5] * mml, "max_tokens": 2}),
        ("/v1/completions", {"model": M, "prompt": "hello " * (mml + 50), "max_tokens": 2}),
        ("/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": "hello " * (mml + 50)}]}),
        ("/v1/completions", {"model": "gpt-4o", "prompt": "hello", "max_tokens": 2}),  # a model it does not serve
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": MSGS, "max_tokens": 2})]


@pytest.mark.parametrize("case", range(len(bad_cases(0))))
def test_refusals_are_vllms(pair, case):
    """The same status, error type, parameter and code; the texts of the refusals vLLM itself words (the
    length rule, max_tokens below 1, an empty conversation, a model it does not serve) word for word. Schema
    errors are pydantic's listing in vLLM; the twin names the field in a sentence."""
    path, body = bad_cases(pair[2])[case]
    (s1, theirs), (s2, ours) = both(pair, "POST", path, body)
    assert s1 == s2 and s1 in (400, 404)
    t, o = theirs["error"], ours["error"]
    assert (o["type"], o["param"], o["code"], sorted(o)) == (t["type"], t["param"], t["code"], sorted(t)), (t, o)
    if t["type"] in ("BadRequestError", "NotFoundError"):
        assert o["message"] == t["message"]


def test_unknown_routes_and_methods_are_vllms(pair):
    for method, path in (("GET", "/v1/completions"), ("GET", "/nowhere"), ("GET", "/health"),
                         ("POST", "/v1/models")):
        (s1, theirs), (s2, ours) = both(pair, method, path)
        assert s1 == s2 and ours == theirs, (method, path, theirs, ours)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "hello world", "max_tokens": 3, "stream_options": {"include_usage": True}}),
    ("/v1/completions", {"prompt": "hello world", "max_tokens": 3}),
    ("/v1/chat/completions", {"messages": MSGS, "max_tokens": 3, "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", {"messages": MSGS, "max_tokens": 3})])
def test_streams_have_vllms_events(pair, path, body):
    """Event for event (a token a chunk on both: gemma3-dummy's 3 tokens are 3 chunks): the same keys,
    the same finish reasons, the usage chunk and the fingerprint where vLLM puts them, then [DONE]."""
    got = []
    for url in pair[:2]:
        with httpx.stream("POST", url + path, json={"model": M, "stream": True, **body}, timeout=120) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream; charset=utf-8"
            lines = [x[6:] for x in r.iter_lines() if x.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        got.append([json.loads(x) for x in lines[:-1]])
    theirs, ours = got
    assert [skeleton(e) for e in ours] == [skeleton(e) for e in theirs], (theirs, ours)
    assert [[c.get("finish_reason") for c in e["choices"]] for e in ours] == \
        [[c.get("finish_reason") for c in e["choices"]] for e in theirs]


def test_the_twins_metrics_are_vllms_names_and_buckets(pair):
    """Every series the twin exports is one of vLLM's, and each histogram has vLLM's bucket bounds, as
    vLLM's exposition writes them (`le="2560.0"`)."""
    names, bounds = [], []
    for url in pair[:2]:
        lines = [x for x in httpx.get(url + "/metrics", timeout=30).text.splitlines() if x and not x.startswith("#")]
        names.append({x.split("{")[0].split(" ")[0] for x in lines})
        les: dict[str, list[str]] = {}
        for x in lines:
            if m := re.match(r'([^{ ]+)_bucket\{.*\ble="([^"]+)"', x):
                les.setdefault(m[1], []).append(m[2])
        bounds.append(les)
    theirs, ours = names
    ours = {n for n in ours if not n.startswith("capsim:")}  # the scheduler limits vLLM does not export
    assert ours and ours <= theirs, sorted(ours - theirs)
    assert len(bounds[1]) == 4
    for name, les in bounds[1].items():
        assert les == bounds[0][name], name


def _step_counts(url: str) -> dict[str, float]:
    """vllm:iteration_tokens_total's bucket counts, count and sum, as /metrics has them now."""
    out = {}
    for x in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if m := re.match(r'vllm:iteration_tokens_total(_bucket\{.*\ble="[^"]+"|_count|_sum)\S* (\S+)$', x):
            out[m[1].split("le=")[-1]] = float(m[2])
    return out


def test_a_chunked_prompt_is_one_engine_step_observation_as_in_vllm(pair):
    """vLLM counts a prompt's tokens in vllm:iteration_tokens_total at the step of its first token, even
    where it ran in chunks (3000 tokens past the CPU build's budget of 2048, the twin's too): one observation
    of 3001 tokens, then one a token, and none for the chunk that gave no token. So the histogram cannot
    tell a server's token budget (calibrate --live takes it from a flag or vLLM's default)."""
    deltas = []
    for url in pair[:2]:
        before = _step_counts(url)
        r = httpx.post(url + "/v1/completions", json={"model": M, "prompt": list(range(100, 3100)), "max_tokens": 3,
                                                      "ignore_eos": True}, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3000
        after = _step_counts(url)
        deltas.append({k: after[k] - before.get(k, 0.0) for k in after})
    theirs, ours = deltas
    assert theirs["_count"] == 3 and theirs["_sum"] == 3003 and theirs['"2048.0"'] == 2, theirs
    assert ours == theirs


def test_read_server_reads_the_real_vllm(pair):
    """calibrate --live's reading of the real vLLM 0.32 CPU server (tests/test_read_server.py holds the same
    against canned answers): its version, context and KV cache as its own endpoints give them, the CPU
    build's defaults, and Gemma 3 270M's KV groups from its config.json explaining the pool."""
    url = pair[0]
    cc = info_labels(httpx.get(url + "/metrics", timeout=30).text, "vllm:cache_config_info")
    f = read_server(url)
    assert f.server == "vllm" and f.version == httpx.get(url + "/version", timeout=30).json()["version"]
    assert (f.model, f.max_model_len) == (M, pair[2])
    assert (f.block_size, f.num_gpu_blocks, f.kv_cache_size_tokens) == (128, int(cc["num_gpu_blocks"]),
                                                                       int(cc["kv_cache_size_tokens"]))
    assert (f.max_num_seqs, f.max_num_batched_tokens, f.async_scheduling) == (128, 2048, False)
    assert f.kv_groups == (KVGroup(128),) and f.num_blocks == f.kv_cache_size_tokens // 128  # no layout given
    g = read_server(url, hf_config=str(model_dir() / "config.json"))
    assert g.kv_groups == (KVGroup(128, 1, None), KVGroup(128, 5, 512)) and g.num_blocks == f.num_gpu_blocks
    assert g.origin["kv_groups"].endswith(f"(consistent with kv_cache_size_tokens {f.kv_cache_size_tokens})")
