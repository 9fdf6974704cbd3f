"""What capsim's client makes of a stream and of a request's end (measure/client.py): the record's
token counts, content mask and tokens per chunk, a stream that ends oddly, an encoded body and the
servers' two forms of an error in the stream. The streams are bytes handed to the client's own
reading loop (tests/stream_cases.py); the live tests run the same loop against a real vLLM."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from measure.client import Inflight
from tests.stream_cases import capsim_reads, sse_event, stream_bytes


def chunk(text: str, token_ids=None) -> dict:
    c = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    if token_ids is not None:
        c["token_ids"] = token_ids
    return {"choices": [c]}


ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}


def inflight(content, tokens=None, usage=None, error=None) -> Inflight:
    req = Inflight(7, 1.0, 11, 8, start_time=2.0, end_time=9.0, error=error, usage=usage)
    req.chunk_times = [3.0 + i for i in range(len(content))]
    req.content = list(content)
    req.tokens = list(tokens) if tokens is not None else [-1] * len(content)
    return req


# ---------------------------------------------------------------- Inflight.to_record

def test_a_request_with_no_chunk_is_failed_and_counts_no_tokens_whatever_its_usage():
    rec = inflight([], usage={"prompt_tokens": 12, "completion_tokens": 5}).to_record()
    assert not rec.ok and rec.error == "no streamed chunk with choices"
    assert rec.output_tokens == 0 and rec.prompt_tokens == 12  # the server's prompt count still stands


def test_a_failed_request_counts_no_output_tokens_and_a_good_one_the_usage_or_its_content_chunks():
    assert inflight([True, True], usage={"completion_tokens": 5}, error="boom").to_record().output_tokens == 0
    assert inflight([True, True], usage={"completion_tokens": 5}).to_record().output_tokens == 5
    assert inflight([True], usage={"completion_tokens": 1}).to_record().output_tokens == 1  # one chunk is enough
    rec = inflight([False, True, True]).to_record()  # no usage: its content chunks
    assert rec.output_tokens == 2 and rec.prompt_tokens == 11  # and the prompt the workload meant


def test_the_content_mask_is_kept_only_where_some_chunk_had_no_content():
    assert inflight([True, True]).to_record().content_mask is None
    assert inflight([False, True]).to_record().content_mask.tolist() == [False, True]


@pytest.mark.parametrize("content, tokens, want", [
    ([False, True, True], [-1, 1, 1], None),           # a token a chunk: nothing to keep
    ([False, True, True], [-1, 3, 1], [0, 3, 1]),      # a speculative step's three, the role chunk's none as 0
    ([True, True], [3, -1], None),                     # a content chunk without token_ids: counts unknown
    ([True, True], [3], None),                         # not one count a chunk
    ([False, False], [-1, -1], None),                  # no content chunk at all
    ([True, True], [0, 2], [0, 2]),                    # an empty list is 0 tokens, not unknown
])
def test_tokens_per_chunk_are_kept_where_every_content_chunk_says_and_some_is_not_one(content, tokens, want):
    got = inflight(content, tokens).to_record().chunk_tokens
    assert (None if got is None else got.tolist()) == want


# ---------------------------------------------------------------- the stream's end and its encoding

def test_done_cut_before_its_blank_line_still_ends_the_stream(monkeypatch):
    reads = stream_bytes("chat")
    reads[-1] = b"data: [DONE]"  # the connection closed right after it
    rec, text = capsim_reads("chat", reads, monkeypatch)
    assert rec.ok and text == "abc"


def test_a_stream_without_done_is_failed(monkeypatch):
    rec, _ = capsim_reads("chat", stream_bytes("chat")[:-1], monkeypatch)
    assert rec.error == "stream ended without [DONE]" and rec.output_tokens == 0
    rec, _ = capsim_reads("chat", [], monkeypatch)
    assert rec.error == "stream ended without any chunk"


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_an_encoded_stream_is_decoded_and_a_plain_one_read_as_it_comes(monkeypatch, encoding):
    body = b"".join(stream_bytes("chat"))
    reads = [gzip.compress(body)] if encoding == "gzip" else [body]
    rec, text = capsim_reads("chat", reads, monkeypatch, headers={"content-encoding": encoding})
    assert rec.ok and text == "abc" and rec.output_tokens == 3


@pytest.mark.parametrize("err", [{"error": {"message": "out of  memory", "code": 500}},
                                 {"object": "error", "message": "out of\nmemory", "code": 500}])
def test_an_error_in_the_stream_in_either_form_fails_the_request_with_its_message(monkeypatch, err):
    reads = [sse_event(ROLE), sse_event(chunk("a")), sse_event(err)]
    rec, _ = capsim_reads("chat", reads, monkeypatch)
    assert rec.error == "server error in stream: out of memory"


def test_tokens_per_chunk_from_a_stream_of_token_ids(monkeypatch):
    usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4}}
    reads = [sse_event(o) for o in (ROLE, chunk("ab", [5, 6, 7]), chunk("c", [8]), usage)] + [b"data: [DONE]\n\n"]
    rec, text = capsim_reads("chat", reads, monkeypatch)
    assert text == "abc" and rec.output_tokens == 4
    assert rec.chunk_tokens.tolist() == [0, 3, 1] and rec.content_mask.tolist() == [False, True, True]
    assert np.diff(rec.chunk_times).tolist() == [1.0, 1.0]  # a read a chunk


def test_malformed_data_fails_the_request_naming_it(monkeypatch):
    rec, _ = capsim_reads("chat", [sse_event(ROLE), b"data: {not json\n\n"], monkeypatch)
    assert rec.error == "malformed SSE data: '{not json'"
    rec, _ = capsim_reads("chat", [b"data: " + json.dumps([1]).encode() + b"\n\n"], monkeypatch)
    assert rec.error == "malformed SSE data: '[1]'"
