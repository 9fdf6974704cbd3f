"""Library messages on stderr: the command line's side of `logging`.

Library code tells the user things through `logging.getLogger("capsim.<module>")` and never prints;
a command decides whether and how those lines reach stderr by wrapping its work in `stderr_lines`.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["StderrLines", "stderr_lines"]


class StderrLines(logging.Handler):
    """Log records as plain stderr lines, `prefix` + message; a record marked fresh_line=True (after a
    progress bar or a typed ^C) starts a new line first. sys.stderr is looked up at each line, so a
    redirected stderr gets them."""

    def __init__(self, prefix: str = "", level: int = logging.NOTSET):
        super().__init__(level)
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fresh = "\n" if getattr(record, "fresh_line", False) else ""
            print(f"{fresh}{self.prefix}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def stderr_lines(logger: str, prefix: str = "", level: int = logging.INFO) -> Iterator[None]:
    """Inside, what `logger` (and the loggers below it) tells at `level` and above goes to stderr."""
    log = logging.getLogger(logger)
    handler, old_level = StderrLines(prefix, level), log.level
    log.addHandler(handler)
    log.setLevel(level)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
