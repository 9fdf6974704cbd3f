"""Live prompts whose server-side token counts hit the workload's targets, and the tools' request bodies.

Random (vllm bench serve's RandomDataset, its very texts given the tokenizer's vocabulary), fixed
(llama-benchy's book-like text and its chat-template delta) and text (ShareGPT's first turn),
checked against the server's /tokenize where it has one. Design: docs/design/measure.md.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.workload import PrefixRepetitionWorkload, RequestSpec, approx_token_count

from .client import Client
from .tokenizer import ServerTokenizer, TokenizeFailed

_WORDS = (
    "the of and to in is was that for it with as on be at by this had not are but from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now such "
    "like our over man me even most made after also did many before must through back years where much your "
    "way well down should because each just those people how too little state good very make world still own "
    "see men work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three states himself few house use during "
    "without again place around however home small found thought went say part once general high upon school "
    "every does got united left number course war until always away something fact though water less public "
    "put think almost hand enough far took head yet government system better set told nothing night end why "
    "called didn find look asked later knew point next program city business give group toward young days let "
    "room president side social present given several order national possible rather second face per among "
    "form important often things looked early white case john become large big need four within felt along "
    "children saw best church ever least power development light thing seemed family interest want members "
    "mind country area others done turned although open god service problem certain kind different thus began "
    "door help sense means whole matter perhaps itself york times law human line above name example action "
    "company hands local show whether five history gave today either act feet across taken past quite anything "
    "having seen death experience body word half really field am car words already themselves information tell "
    "together college shall money period held keep sure real probably free seems political cannot behind miss "
    "question air office making brought whose special major heard problems federal became study ago moment "
    "known available result street economic boy position reason change south board individual job society "
    "areas west close turn love community true court force full seem am front feel party cost"
).split()


@dataclass
class LivePrompt:
    """One request body's prompt part, ready to send."""

    messages: list[dict] | None  # chat endpoint
    prompt: str | None  # completions endpoint
    max_tokens: int
    ignore_eos: bool
    target_prompt_tokens: int  # the server-side count aimed at
    fitted: bool  # True when the server's tokenizer confirmed the count
    request: Any = None  # an httpx.Request built before the run (sent once)
    model: str | None = None  # the model its body names where not the run's: a LoRA adapter (--lora-modules)

    def vllm_body(self, model: str, endpoint: str, extra: dict | None = None) -> dict[str, Any]:
        """vllm bench serve's request body (async_request_openai_completions / _chat_completions), `extra`
        (sampling flags, --extra-body) merged last."""
        body: dict[str, Any] = {"model": model}
        if endpoint == "completions":
            body |= {"prompt": self.prompt, "repetition_penalty": 1.0, "max_tokens": self.max_tokens,
                     "logprobs": None}
        else:  # each message's text as one content part
            body |= {"messages": [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                                  for m in self.messages or []], "max_completion_tokens": self.max_tokens}
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body | (extra or {})

    def benchy_body(self, model: str, endpoint: str, extra: dict | None = None) -> dict[str, Any]:
        """llama-benchy 0.4.0's (LLMClient._build_generation_payload): `extra` (--extra-body) merged, then,
        where the answer is held to its length (--exact-tg, `ignore_eos`), its three fields over it."""
        n = self.max_tokens
        if endpoint == "completions":  # llama-benchy posts chat only; the completions body is vLLM's
            body: dict[str, Any] = {"model": model, "prompt": self.prompt, "repetition_penalty": 1.0,
                                    "max_tokens": n, "logprobs": None, "stream": True}
        else:  # it counts each chunk's token ids
            body = {"model": model, "messages": self.messages, "max_tokens": n, "stream": True,
                    "return_token_ids": True}
        body = body | {"stream_options": {"include_usage": True}} | (extra or {})
        if self.ignore_eos:
            body |= {"max_tokens": n, "min_tokens": n, "ignore_eos": True}
        return body


_CORPUS: list[str] | None = None


def pseudo_corpus() -> list[str]:
    """60,000 words of deterministic pseudo-English (sentences of 6-18 words)."""
    global _CORPUS
    if _CORPUS is None:
        rng = np.random.default_rng(20261126)
        n = 60_000
        ranks = np.arange(1, len(_WORDS) + 1)
        p = 1.0 / ranks ** 0.8
        idx = rng.choice(len(_WORDS), size=n, p=p / p.sum())
        words = [_WORDS[i] for i in idx]
        pos = 0
        while pos < n:
            ln = int(rng.integers(6, 19))
            words[pos] = words[pos].capitalize()
            end = min(n - 1, pos + ln - 1)
            words[end] = words[end] + ("," if rng.random() < 0.15 else ".")
            pos += ln
        _CORPUS = words
    return _CORPUS


class PromptBuilder:
    def __init__(self, client: Client, model: str, endpoint: str, seed: int = 0, parallel: int = 8):
        self.client = client
        self.model = model
        self.endpoint = endpoint
        self.tok = ServerTokenizer(client, model)
        self.rng = np.random.default_rng([seed, 4242])
        self._sem = asyncio.Semaphore(parallel)
        self.special_tokens = 1
        self.delta_user = 0  # chat: server count of [user: X] minus tokens of X
        self.delta_ctx = 0  # chat: server count of [system: X, user: Y] minus tokens of X and Y
        self.words_per_token = 0.75
        self.mismatches = 0  # prompts whose server count missed the target
        self.notes: list[str] = []
        self._ready = False

    # ------------------------------------------------------------ setup
    async def setup(self) -> None:
        if self._ready:
            return
        self._ready = True
        await self.tok.detect()
        sample = " ".join(pseudo_corpus()[:400])
        if self.tok.available:
            with_sp = await self.tok.count("Hello world", add_special=True)
            without = await self.tok.count("Hello world", add_special=False)
            self.special_tokens = max(0, with_sp - without)
            self.words_per_token = 400 / max(1, await self.tok.count(sample))
        else:
            self.notes.append("the server has no /tokenize: prompt lengths are approximate; "
                              "records use the server's usage counts")
        if self.endpoint != "chat":
            return
        w1, w2 = " ".join(pseudo_corpus()[:40]), " ".join(pseudo_corpus()[40:70])
        user = [{"role": "user", "content": w1}]
        both = [{"role": "system", "content": w1}, {"role": "user", "content": w2}]
        if self.tok.available:
            n1, n2 = await self.tok.count(w1), await self.tok.count(w2)
        else:
            n1, n2 = approx_token_count(w1) - 1, approx_token_count(w2) - 1
        c_user = await self.tok.count_chat(user) if self.tok.can_chat else None
        c_both = await self.tok.count_chat(both) if self.tok.can_chat else None
        if c_user is None:  # llama-benchy's delta: a max_tokens=1 probe's usage
            c_user = await self._probe_prompt_tokens(user)
        if c_both is None:
            c_both = await self._probe_prompt_tokens(both)
        if c_user is not None:
            self.delta_user = c_user - n1
        if c_both is not None:
            self.delta_ctx = c_both - n1 - n2

    async def _probe_prompt_tokens(self, messages: list[dict]) -> int | None:
        st, data = await self.client.post_json(
            "/v1/chat/completions", {"model": self.model, "messages": messages, "max_tokens": 1, "stream": False})
        if st == 200 and isinstance(data, dict):
            u = data.get("usage") or {}
            if isinstance(u.get("prompt_tokens"), int):
                return int(u["prompt_tokens"])
        return None

    def describe(self) -> dict:
        return {"tokenizer": self.tok.dialect, "detokenize": self.tok.can_detokenize,
                "chat_tokenize": self.tok.can_chat, "special_tokens": self.special_tokens,
                "chat_template_tokens": self.delta_user if self.endpoint == "chat" else 0,
                "chat_context_template_tokens": self.delta_ctx if self.endpoint == "chat" else 0,
                "prompts_off_target": self.mismatches, "tokenizer_calls": self.tok.calls, "notes": self.notes}

    # ------------------------------------------------------------ exact fitting
    async def _round_trip(self, ids: list[int]) -> tuple[str, list[int]]:
        """The server's text for `ids` and that text's own ids (no special tokens added)."""
        text = await self.tok.detokenize(ids)
        return text, await self.tok.ids(text, add_special=False)

    async def fit_ids(self, ids: list[int], n: int, vocab: int, rng: np.random.Generator | None = None,
                      first: tuple[str, list[int]] | None = None) -> tuple[str, list[int]]:
        """vLLM's gen_prompt_decode_to_target_len over the server's tokenizer.

        Returns the text and its ids as re-encoded (n of them, unless ten retries could not get there).
        Filler tokens come from `rng` (the dataset's generator, where vLLM draws them); `first` is the
        first decode and re-encode when the caller made it already."""
        rng = self.rng if rng is None else rng
        text, new = "", []
        for attempt in range(11):
            text, new = first if attempt == 0 and first is not None else await self._round_trip(ids)
            if len(new) == n or attempt == 10:
                break
            if len(new) > n:
                ids = new[:n]
            else:
                ids = new + rng.integers(0, vocab, size=n - len(new)).tolist()
        return text, new

    def _words(self, start: int, count: int) -> str:
        c = pseudo_corpus()
        count = max(1, count)
        start %= max(1, len(c) - count) if count < len(c) else 1
        words = c[start:start + count]
        while len(words) < count:
            words = words + c[:count - len(words)]
        return " ".join(words)

    async def text_of_tokens(self, n: int, start: int | None = None) -> tuple[str, int | None]:
        """Pseudo-English text the server tokenizes to exactly `n` tokens (no specials)."""
        if n <= 0:
            return "", 0
        if start is None:
            start = int(self.rng.integers(0, len(pseudo_corpus())))
        if not self.tok.available:
            # tokenizer-free estimate: approx_token_count counts a BOS
            words = max(1, round(n * 0.8))
            text = self._words(start, words)
            while approx_token_count(text) - 1 > n and words > 1:
                words -= 1
                text = self._words(start, words)
            return text, None
        words = int(math.ceil(n * self.words_per_token * 1.15)) + 4
        text = self._words(start, words)
        ids = await self.tok.ids(text)
        while len(ids) < n:
            words = int(words * 1.5) + 8
            text = self._words(start, words)
            ids = await self.tok.ids(text)
        if len(ids) == n:
            return text, n
        if self.tok.can_detokenize:
            text, ids = await self.fit_ids(ids[:n], n, max(ids) + 1)
            return text, len(ids)
        # no /detokenize: drop words until it fits (may stop a token short)
        lo, hi = 1, words
        best = (text, len(ids))
        while lo <= hi:
            mid = (lo + hi) // 2
            t = self._words(start, mid)
            c = await self.tok.count(t)
            if c == n:
                return t, n
            if c < n:
                best = (t, c) if best[1] > n or c > best[1] else best
                lo = mid + 1
            else:
                hi = mid - 1
        return best

    # ------------------------------------------------------------ per workload
    async def random_prompts(self, specs: list[RequestSpec], *, vocab: int, special_ids=(), prefix_len: int = 0,
                             rng: np.random.Generator | None = None) -> list[LivePrompt]:
        """vllm bench serve's RandomDataset.sample, through the server's /tokenize and /detokenize.

        Token ids run over `range(vocab)` less `special_ids`; the shared prefix and every prompt's
        filler tokens are drawn from `rng`, in request order, as vLLM draws them from its dataset's
        generator (RandomWorkload.prompt_rng). With the tokenizer's real vocab size and special ids
        the texts are vLLM's to the character (tests/test_conformance_vllm.py)."""
        rng = self.rng if rng is None else rng
        raws = [s.raw_prompt_tokens if s.raw_prompt_tokens is not None else s.prompt_tokens for s in specs]
        fitted: list[tuple[str, int | None]] = []
        if self.tok.available and self.tok.can_detokenize:
            allowed = np.setdiff1d(np.arange(vocab), np.asarray(special_ids, dtype=np.int64))
            try:
                prefix: list[int] = []
                if prefix_len > 0:
                    drawn = allowed[rng.integers(0, len(allowed), size=prefix_len)].tolist()
                    prefix = (await self.fit_ids(drawn, prefix_len, vocab, rng))[1]
                seqs = [prefix + allowed[(s.offset + i + np.arange(max(0, raw - prefix_len))) % len(allowed)].tolist()
                        for i, (s, raw) in enumerate(zip(specs, raws))]

                async def first_round(ids: list[int]) -> tuple[str, list[int]]:
                    async with self._sem:
                        return await self._round_trip(ids)

                # the first decode and re-encode draw nothing, so they run side by side; the rest go in
                # request order, so that the filler tokens come off `rng` in vLLM's order
                firsts = await asyncio.gather(*(first_round(q) for q in seqs))
                for q, raw, first in zip(seqs, raws, firsts):
                    text, ids = await self.fit_ids(q, raw, vocab, rng, first=first)
                    fitted.append((text, len(ids)))
            except TokenizeFailed as e:
                self.notes.append(f"the server's tokenizer refused random token ids ({e}): the random prompts "
                                  "are pseudo-English text of the same lengths")
                fitted = []
        if not fitted:
            async def text(raw: int) -> tuple[str, int | None]:
                async with self._sem:
                    return await self.text_of_tokens(raw)

            fitted = list(await asyncio.gather(*(text(raw) for raw in raws)))

        async def one(spec: RequestSpec, raw: int, text: str, got: int | None) -> LivePrompt:
            ok = got == raw
            if ok and self.endpoint == "chat" and self.tok.can_chat:
                # inside the chat template a text's edges can tokenize otherwise; vllm bench serve sends it
                # as it is, and so does capsim: counted, not nudged
                async with self._sem:
                    c = await self.tok.count_chat([{"role": "user", "content": text}])
                ok = c is None or c == spec.prompt_tokens
            if got is not None and not ok:
                self.mismatches += 1
            return self._single(text, spec, fitted=got is not None)

        return list(await asyncio.gather(*(one(s, raw, t, g) for s, raw, (t, g) in zip(specs, raws, fitted))))

    async def prefix_repetition_prompts(self, wl: PrefixRepetitionWorkload, n: int, seed: int,
                                        vocab: int) -> list[LivePrompt]:
        """vllm bench serve's PrefixRepetitionRandomDataset.sample for --num-prompts n, through the server's
        /tokenize and /detokenize: prefix by prefix, each prefix then its suffixes, token ids over
        `range(vocab)` (the tokenizer's vocab_size; no special id left out) drawn from numpy's global
        generator seeded with --seed, as are the filler tokens of each re-encoding; a prompt is the decode
        of its prefix's ids and its own, in the workload's order (shuffled). Without /detokenize,
        pseudo-English texts of the lengths, one per prefix."""
        drawn = np.random.RandomState(seed)  # vLLM's np.random.seed(seed), then np.random.randint

        class Legacy:  # fit_ids draws its fillers with a Generator's `integers`
            @staticmethod
            def integers(lo, hi, size):
                return drawn.randint(lo, hi, size=size)

        async def fitted(length: int) -> list[int]:
            ids = drawn.randint(0, vocab, size=length).tolist()
            return (await self.fit_ids(ids, length, vocab, Legacy))[1] if length else []

        order, per = wl.order(n, seed), n // wl.num_prefixes
        texts: dict[tuple[int, int], str] = {}
        exact = self.tok.available and self.tok.can_detokenize
        if exact:
            try:
                for p in range(wl.num_prefixes):
                    prefix = await fitted(wl.prefix_len)
                    for j in range(per):
                        texts[p, j] = await self.tok.detokenize(prefix + await fitted(wl.suffix_len))
            except TokenizeFailed as e:
                self.notes.append(f"the server's tokenizer refused random token ids ({e}): the prefix_repetition "
                                  "prompts are pseudo-English text of the same lengths")
                exact = False
        if not exact:
            heads = [(await self.text_of_tokens(wl.prefix_len))[0] for _ in range(wl.num_prefixes)]
            for p, j in order:
                texts[p, j] = " ".join(t for t in (heads[p], (await self.text_of_tokens(wl.suffix_len))[0]) if t)
        specs = wl.sample(n, seed)

        async def one(spec: RequestSpec, text: str) -> LivePrompt:
            if exact:  # sent as it is, as vllm bench serve does: counted, not nudged
                async with self._sem:
                    c = await (self.tok.count_chat([{"role": "user", "content": text}]) if self.endpoint == "chat"
                               else self.tok.count(text, add_special=True))
                if c is not None and c != spec.prompt_tokens:
                    self.mismatches += 1
            return self._single(text, spec, fitted=exact, ignore_eos=False)

        return list(await asyncio.gather(*(one(s, texts[k]) for s, k in zip(specs, order))))

    def _single(self, text: str, spec: RequestSpec, fitted: bool, ignore_eos: bool | None = None) -> LivePrompt:
        """A prompt of one user message (chat) or one text (completions); random prompts (no text of their
        own) run to max_tokens unless `ignore_eos` says otherwise."""
        if ignore_eos is None:
            ignore_eos = spec.prompt_text is None
        if self.endpoint == "chat":
            return LivePrompt([{"role": "user", "content": text}], None, spec.max_tokens, ignore_eos,
                              spec.prompt_tokens, fitted)
        return LivePrompt(None, text, spec.max_tokens, ignore_eos, spec.prompt_tokens, fitted)

    async def sized_prompt(self, total: int, max_tokens: int, depth: int = 0) -> LivePrompt:
        """A prompt the server counts as `total` tokens (template and specials included).

        With depth > 0 (llama-benchy) the first `depth` tokens go into a system
        message and the rest into the user message.
        """
        async with self._sem:
            if self.endpoint != "chat":
                text, got = await self.text_of_tokens(max(1, total - self.special_tokens))
                ok = got is not None and got == total - self.special_tokens
                if got is not None and not ok:
                    self.mismatches += 1
                return LivePrompt(None, text, max_tokens, True, total, got is not None)
            pp = total - depth
            ctx_tokens = max(1, depth - self.delta_ctx) if depth > 0 else 0
            user_tokens = pp if depth > 0 else max(1, pp - self.delta_user)
            start = int(self.rng.integers(0, len(pseudo_corpus())))
            msgs = None
            count = None
            for _ in range(4):
                user, _g = await self.text_of_tokens(user_tokens, start + 3 * ctx_tokens)
                msgs = [{"role": "user", "content": user}]
                if depth > 0:
                    ctx, _g = await self.text_of_tokens(ctx_tokens, start)
                    msgs.insert(0, {"role": "system", "content": ctx})
                count = await self.tok.count_chat(msgs) if self.tok.can_chat else None
                if count is None or count == total:
                    break
                if depth > 0 and ctx_tokens + (total - count) >= 1:
                    ctx_tokens += total - count
                elif user_tokens + (total - count) >= 1:
                    user_tokens += total - count
                else:
                    break
            if count is not None and count != total:
                self.mismatches += 1
            return LivePrompt(msgs, None, max_tokens, True, total, count is not None)

    async def spec_prompts(self, specs: list[RequestSpec], *, vocab: int = 262144, special_ids=(),
                           prefix_len: int = 0, rng: np.random.Generator | None = None) -> list[LivePrompt]:
        """Prompts for any workload's specs (text, random-style or sized)."""
        out: list[LivePrompt | None] = [None] * len(specs)
        rand_idx = [i for i, s in enumerate(specs) if s.prompt_text is None and s.tag == "random"]
        if rand_idx:
            rp = await self.random_prompts([specs[i] for i in rand_idx], vocab=vocab, special_ids=special_ids,
                                           prefix_len=prefix_len, rng=rng)
            for i, p in zip(rand_idx, rp):
                out[i] = p
        todo = []
        for i, s in enumerate(specs):
            if out[i] is not None:
                continue
            if s.prompt_text is not None:
                out[i] = self._single(s.prompt_text, s, fitted=False)
            else:
                todo.append(i)
        sized = await asyncio.gather(*(self.sized_prompt(specs[i].prompt_tokens, specs[i].max_tokens)
                                       for i in todo))
        for i, p in zip(todo, sized):
            out[i] = p
        return out  # type: ignore[return-value]
