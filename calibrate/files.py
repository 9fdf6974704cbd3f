"""Reading a run's files: one error for every file that is missing, empty or malformed.

`ImporterError`'s message is '<file>: <problem>', one line; the readers here raise nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path

from simulator.errors import CapsimError


class ImporterError(CapsimError):
    """A source file is missing, empty or malformed. Message: '<file>: <problem>'."""


def file_error(path, problem: str) -> ImporterError:
    return ImporterError(f"{path if path is not None else '<text>'}: {problem}")


def read_text(path: Path, blank_ok: bool = False) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except IsADirectoryError:
        raise file_error(path, "is a directory, expected a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read ({e.__class__.__name__}: {e})") from None
    if not text.strip():
        if blank_ok:
            return ""
        raise file_error(path, "empty file")
    return text


def text_if_any(path: Path) -> str:
    """A report's text, or "" where the file is missing or blank (a test that died before writing it)."""
    return read_text(path, blank_ok=True) if path.is_file() else ""


def load_json(path: Path):
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # An error at the very end means the writer stopped early (crash, full disk, cut copy).
        # (a string that never closes runs to the end: cut inside it, the error points at its start)
        cut = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        kind = "truncated JSON" if cut else f"invalid JSON ({e.msg})"
        raise file_error(path, f"{kind} at line {e.lineno} col {e.colno}") from None
