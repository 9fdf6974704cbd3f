"""What a vLLM server's command line (or its runner's settings) says to calibration.

The scheduler's limits as `vllm serve` reads them, its speculative config, whether it cached prefixes,
and which flags calibration neither reads nor knows to be inert. Values vLLM would refuse are errors
naming the file they came from.
"""
from __future__ import annotations

import json
import re

from .files import file_error


# vLLM 0.32's `vllm serve` batch defaults where no flag sets them (EngineArgs.get_batch_defaults): by the
# device memory NVML reads. (max_num_batched_tokens, max_num_seqs) of each kind of GPU server.
GB10_BATCH_DEFAULTS = (2048, 256)  # no memory read (the GB10's unified memory), under 70 GiB, or an A100
H100_BATCH_DEFAULTS = (8192, 1024)  # 70 GiB or more: H100, H200
B200_BATCH_DEFAULTS = (16384, 1024)  # 160 GiB or more
CPU_BATCH_DEFAULTS = (2048, 128)  # the CPU build


def vllm_batch_defaults(memory_bytes: int | None, device_name: str = "", cpu: bool = False) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that vLLM 0.32's `vllm serve` runs with where no flag sets
    them, on a device of `memory_bytes` (None: NVML cannot read it) named `device_name`, or on the CPU
    build."""
    if cpu:
        return CPU_BATCH_DEFAULTS
    if memory_bytes is not None and memory_bytes >= 160 * 2**30:
        return B200_BATCH_DEFAULTS
    if memory_bytes is not None and memory_bytes >= 70 * 2**30 and "a100" not in device_name.lower():
        return H100_BATCH_DEFAULTS
    return GB10_BATCH_DEFAULTS


def flag_value(args: str, flag: str) -> str | None:
    """A flag's value on a command line; the last one given, which is the one vLLM's parser keeps."""
    # vLLM's parser takes --max_num_seqs for --max-num-seqs
    found = re.findall(rf"(?<![\w-]){flag.replace('-', '[-_]').replace('[-_][-_]', '--', 1)}(?:=|\s+)['\"]?([^\s'\"]+)",
                       args or "")
    return found[-1] if found else None


def switch_flag(key: str, args: str) -> bool | str | None:
    """An on/off flag on a command line, the last one given: --key (on), --key=VALUE, --no-key (off);
    None where none is."""
    name = key.replace("_", "[-_]")
    found = re.findall(rf"(?<![\w-])--(no[-_])?{name}(?:=(\S+))?(?![\w-])", args or "")
    if not found:
        return None
    no, value = found[-1]
    return False if no else (value or True)


def human_readable_int(value: str) -> int:
    """vLLM's reading of its token-count flags (vllm.utils.argparse_utils.human_readable_int): '1k' is
    1000, '1K' 1024, '25.6k' 25600; a decimal takes only a decimal suffix."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value.strip())
    if not m:
        return int(value)
    number, suffix = m.groups()
    if suffix.islower():
        return int(float(number) * 10 ** (3 * ("kmgt".index(suffix) + 1)))
    return int(number) * 2 ** (10 * ("KMGT".index(suffix) + 1))  # int('2.5') raises, as vLLM refuses it


def server_switch(key: str, value, path) -> bool | None:
    """An on/off server setting (async_scheduling, enable_prefix_caching) as vLLM reads it; None stays
    None (vLLM's default applies). A value that is neither on nor off is a clear error, never read as on."""
    if value is None or isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise file_error(path, f"{key} is {value!r}: vLLM takes true or false")


def server_number(key: str, value, path) -> int | float | None:
    """A numeric server setting as vLLM reads it, from meta.json's server_config or the command line.

    A value vLLM would refuse to start with is a clear error naming it, never dropped for the default:
    the default is another server than the one measured."""
    if value is None:
        return None
    frac = key == "gpu_memory_utilization"
    what = "a fraction in (0, 1]" if frac else "a positive integer"
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not frac and not value.is_integer()):
            raise ValueError
        if isinstance(value, (int, float)):
            x = float(value) if frac else int(value)
        elif frac:
            x = float(value)
        elif key == "max_model_len" and value.strip().lower() in ("-1", "auto"):
            return None  # vLLM fits the longest context the memory holds: capsim takes the model's
        else:
            x = human_readable_int(value) if key != "max_num_seqs" else int(value)
    except (ValueError, AttributeError):
        raise file_error(path, f"{key} is {value!r}: vLLM takes {what}") from None
    if not (0 < x <= 1 if frac else x >= 1):
        raise file_error(path, f"{key} is {value!r}: vLLM takes {what}")
    return x


# Server flags calibration reads (the scheduler's limits, speculative decoding, dtypes, memory) or that
# do not touch serving speed (formats, parsers, names); any other flag is said to be not modelled.
# Named with dashes; vLLM's parser takes underscores for them as well (--max_num_seqs).
MODELLED_FLAGS = {"--max-num-batched-tokens", "--max-num-seqs", "--speculative-config",
                  "--spec-method", "--spec-model", "--spec-tokens",
                  "--quantization", "--kv-cache-dtype", "--max-model-len", "--gpu-memory-utilization",
                  "--enable-prefix-caching", "--no-enable-prefix-caching", "--async-scheduling",
                  "--no-async-scheduling", "--mamba-ssm-cache-dtype"}
INERT_FLAGS = {"--language-model-only", "--tokenizer-mode", "--config-format",
               "--load-format", "--trust-remote-code", "--reasoning-parser", "--tool-call-parser",
               "--enable-auto-tool-choice", "--generation-config", "--served-model-name", "--host", "--port",
               "--chat-template", "--api-key", "--disable-log-requests", "--disable-log-stats", "--uvicorn-log-level"}


def unmodelled_flags(args: str) -> list[str]:
    """The flags of a server command line that calibration neither reads nor knows to be inert."""
    names = re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", re.sub(r"\{.*?\}", "", args or ""))
    return sorted({n for n in names if "--" + n[2:].replace("_", "-") not in MODELLED_FLAGS | INERT_FLAGS})


# vLLM takes a speculative config as JSON (--speculative-config / -sc), key by key in its dotted form
# (--speculative-config.method ngram) and as the shorthands --spec-method, --spec-model, --spec-tokens.
_SPEC_JSON = re.compile(r"(?:--speculative[-_]config|(?<!\S)-sc)(?:=|\s+)")
_SPEC_KEY = re.compile(r"--speculative[-_]config\.([\w-]+)(?:=|\s+)(\"[^\"]*\"|'[^']*'|\S+)")
_SPEC_SHORT = re.compile(r"--spec-(method|model|tokens)(?:=|\s+)(\"[^\"]*\"|'[^']*'|\S+)")
_SPEC_SHORT_KEYS = {"method": "method", "model": "model", "tokens": "num_speculative_tokens"}


def speculative_config(args: str, src=None) -> dict | None:
    """vLLM's speculative config from a server's command line (None when no flag gives one)."""
    args = args or ""
    cfg: dict = {}
    if (m := _SPEC_JSON.search(args)):
        text = args[m.end():].lstrip().strip("'")
        try:
            cfg, _ = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as e:
            raise file_error(src, f"--speculative-config is not readable JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(cfg, dict):
            raise file_error(src, "--speculative-config must be a JSON object")
    for key, value in [*_SPEC_KEY.findall(args), *((_SPEC_SHORT_KEYS[k], v) for k, v in _SPEC_SHORT.findall(args))]:
        value = value.strip("'\"")
        cfg[key] = int(value) if re.fullmatch(r"\d+", value) else value
    if not cfg:
        return None
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    k = cfg.get("num_speculative_tokens")
    if k is None and re.search(r"mtp$", str(cfg.get("method") or "")):
        # vLLM then drafts as many tokens as the model has MTP layers: one in the published MTP models
        cfg.update(num_speculative_tokens=1, num_speculative_tokens_assumed=True)
    elif not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 64:
        raise file_error(src, f"--speculative-config needs num_speculative_tokens in 1..64, got {k!r}")
    return cfg
