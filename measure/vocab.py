"""The two facts of a local tokenizer that vllm bench serve's random dataset reads: the base
vocabulary's size and the special tokens' ids.

`vllm bench serve --tokenizer DIR` draws random prompts from `range(tokenizer.vocab_size)` less
`tokenizer.all_special_ids`. The server's /tokenize does not say either, so `capsim measure`
reads them from the same files transformers reads (tokenizer.json, tokenizer_config.json,
special_tokens_map.json). Design: docs/design/measure.md.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import MeasureError

# transformers' PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES: the named special tokens
NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class Vocab:
    """`size`: tokenizer.vocab_size (added tokens left out); `special_ids`: all_special_ids, in order."""

    size: int
    special_ids: tuple[int, ...] = ()
    source: str = ""


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MeasureError(f"--tokenizer: cannot read {path} ({e.strerror or e})") from None
    except ValueError as e:
        raise MeasureError(f"--tokenizer: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MeasureError(f"--tokenizer: {path} holds no {what} object")
    return data


def _content(value) -> str | None:
    if isinstance(value, dict):  # a saved AddedToken
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_token_strings(config: dict, special_map: dict) -> list[str]:
    """all_special_tokens as transformers 5 builds them: the named ones, then the extra ones, each once.

    The steps of PreTrainedTokenizerBase.from_pretrained and __init__, in their order: the config's
    `additional_special_tokens` (the older name) become its `extra_special_tokens` unless it has
    some; special_tokens_map.json counts only beside a config without `added_tokens_decoder` (an
    older save), and there its values win, its extra tokens joining the config's; its own
    `additional_special_tokens` count only where no extra ones are set; a dict of extra tokens
    names more of them."""
    merged = dict(config)
    if "additional_special_tokens" in merged and not merged.get("extra_special_tokens"):
        merged["extra_special_tokens"] = merged.pop("additional_special_tokens")
    if "added_tokens_decoder" not in config:
        for k, v in special_map.items():
            if k == "extra_special_tokens" and isinstance(v, list):
                old = list(merged.get(k) or [])
                v = old + [t for t in v if t not in old]
            merged[k] = v
    if "additional_special_tokens" in merged and "extra_special_tokens" not in merged:
        merged["extra_special_tokens"] = merged.pop("additional_special_tokens")
    extra = merged.get("extra_special_tokens") or []
    named = list(NAMED_SPECIAL)
    if isinstance(extra, dict):  # model-specific named tokens (e.g. image_token)
        named += [k for k in extra if k not in named]
        merged = extra | merged
        extra = []
    out: list[str] = []
    for s in [_content(merged.get(k)) for k in named] + [_content(t) for t in extra]:
        if s is not None and s not in out:
            out.append(s)
    return out


def read_vocab(path: str | Path) -> Vocab:
    """The vocabulary facts of a tokenizer directory (or its tokenizer.json)."""
    p = Path(path)
    tj = p / "tokenizer.json" if p.is_dir() else p
    if not tj.is_file():
        raise MeasureError(f"--tokenizer: {p} has no tokenizer.json (a HuggingFace tokenizer directory or its "
                           "tokenizer.json file)")
    tok = _read_json(tj, "tokenizer")
    model_vocab = (tok.get("model") or {}).get("vocab")
    if not isinstance(model_vocab, (dict, list)) or not model_vocab:
        raise MeasureError(f"--tokenizer: {tj} has no model vocabulary")
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens") or []
           if isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)}
    if isinstance(model_vocab, dict):
        ids = {k: v for k, v in model_vocab.items() if isinstance(v, int)} | ids
    else:  # Unigram: [piece, score] rows, the id is the row
        ids = {row[0]: i for i, row in enumerate(model_vocab) if isinstance(row, list) and row} | ids
    side = tj.parent
    config = _read_json(side / "tokenizer_config.json", "config") if (side / "tokenizer_config.json").is_file() else {}
    smap = (_read_json(side / "special_tokens_map.json", "special-token map")
            if (side / "special_tokens_map.json").is_file() else {})
    special = tuple(ids[s] for s in special_token_strings(config, smap) if s in ids)
    return Vocab(size=len(model_vocab), special_ids=special, source=str(tj))


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded models: HF_HUB_CACHE, else HF_HOME/hub, else
    $XDG_CACHE_HOME (or ~/.cache)/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def find_tokenizer(name: str) -> Path | None:
    """The folder vllm bench serve would load `--tokenizer name` from on this machine: a local path, or
    the hub cache's snapshot of a model id (the one refs/main names, else the newest), or None."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    if name.count("/") != 1:
        return None
    repo = hub_cache() / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text(encoding="utf-8").strip()
        if (snap / "tokenizer.json").is_file():
            return snap
    snaps = [d for d in (repo / "snapshots").glob("*") if (d / "tokenizer.json").is_file()]
    return max(snaps, key=lambda d: d.stat().st_mtime) if snaps else None
