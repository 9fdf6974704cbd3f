"""The server's own tokenizer over HTTP: vLLM's and llama.cpp's /tokenize and /detokenize.

Without either, `dialect` is "none" and callers fall back to the usage counts the server reports
with each response. Design: docs/design/measure.md.
"""
from __future__ import annotations

from typing import Any

from simulator.errors import CapsimError

from .client import Client


def _token_ids(data: Any) -> list[int] | None:
    if not isinstance(data, dict):
        return None
    toks = data.get("tokens")
    if not isinstance(toks, list):
        return None
    out = []
    for t in toks:
        if isinstance(t, dict):
            t = t.get("id")
        if not isinstance(t, int):
            return None
        out.append(t)
    return out


class ServerTokenizer:
    def __init__(self, client: Client, model: str):
        self.client = client
        self.model = model
        self.dialect: str | None = None  # "vllm" | "llamacpp" | "none"
        self.can_detokenize = False
        self.can_chat = False
        self.max_model_len: int | None = None
        self.calls = 0

    async def detect(self) -> str:
        if self.dialect is not None:
            return self.dialect
        c = self.client
        st, data = await c.post_json("/tokenize", {"model": self.model, "prompt": "Hello world",
                                                   "add_special_tokens": False})
        if st == 200 and _token_ids(data) is not None and "count" in data:
            self.dialect = "vllm"
            mml = data.get("max_model_len")
            self.max_model_len = int(mml) if isinstance(mml, int) else None
            st, d2 = await c.post_json("/detokenize", {"model": self.model, "tokens": _token_ids(data)})
            self.can_detokenize = st == 200 and isinstance(d2, dict) and isinstance(d2.get("prompt"), str)
            st, d3 = await c.post_json("/tokenize", {"model": self.model, "add_generation_prompt": True,
                                                     "messages": [{"role": "user", "content": "Hello world"}]})
            self.can_chat = st == 200 and isinstance(d3, dict) and isinstance(d3.get("count"), int)
            return self.dialect
        st, data = await c.post_json("/tokenize", {"content": "Hello world", "add_special": False})
        if st == 200 and _token_ids(data) is not None:
            self.dialect = "llamacpp"
            st, d2 = await c.post_json("/detokenize", {"tokens": _token_ids(data)})
            self.can_detokenize = st == 200 and isinstance(d2, dict) and isinstance(d2.get("content"), str)
            st, d3 = await c.post_json("/apply-template", {"messages": [{"role": "user", "content": "Hello"}]})
            self.can_chat = st == 200 and isinstance(d3, dict) and isinstance(d3.get("prompt"), str)
            return self.dialect
        self.dialect = "none"
        return self.dialect

    @property
    def available(self) -> bool:
        return self.dialect in ("vllm", "llamacpp")

    async def ids(self, text: str, add_special: bool = False) -> list[int]:
        self.calls += 1
        if self.dialect == "vllm":
            body = {"model": self.model, "prompt": text, "add_special_tokens": add_special}
        elif self.dialect == "llamacpp":
            body = {"content": text, "add_special": add_special}
        else:
            raise RuntimeError("the server has no /tokenize")
        st, data = await self.client.post_json("/tokenize", body)
        ids = _token_ids(data) if st == 200 else None
        if ids is None:
            raise TokenizeFailed(f"/tokenize: HTTP {st}")
        return ids

    async def count(self, text: str, add_special: bool = False) -> int:
        return len(await self.ids(text, add_special))

    async def count_chat(self, messages: list[dict]) -> int | None:
        """Exact templated prompt length of a chat request, or None if unknown."""
        if not self.can_chat:
            return None
        self.calls += 1
        if self.dialect == "vllm":
            st, data = await self.client.post_json(
                "/tokenize", {"model": self.model, "messages": messages, "add_generation_prompt": True})
            if st == 200 and isinstance(data, dict) and isinstance(data.get("count"), int):
                return int(data["count"])
            return None
        st, data = await self.client.post_json("/apply-template", {"messages": messages})
        if st != 200 or not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            return None
        st, d2 = await self.client.post_json("/tokenize", {"content": data["prompt"], "add_special": True,
                                                           "parse_special": True})
        ids = _token_ids(d2) if st == 200 else None
        return None if ids is None else len(ids)

    async def detokenize(self, ids: list[int]) -> str:
        self.calls += 1
        if self.dialect == "vllm":
            st, data = await self.client.post_json("/detokenize", {"model": self.model, "tokens": list(ids)})
            key = "prompt"
        else:
            st, data = await self.client.post_json("/detokenize", {"tokens": list(ids)})
            key = "content"
        if st != 200 or not isinstance(data, dict) or not isinstance(data.get(key), str):
            raise TokenizeFailed(f"/detokenize: HTTP {st}")
        return data[key]


class TokenizeFailed(CapsimError, RuntimeError):
    """The server's /tokenize or /detokenize failed (callers fall back or raise a MeasureError)."""
