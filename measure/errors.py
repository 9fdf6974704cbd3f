"""Errors `capsim measure` reports to the user as one line."""
from __future__ import annotations


class MeasureError(Exception):
    """A problem the user must fix (bad flag, unreachable server, HTTP error).

    The message is one line, printed without a traceback by the CLI.
    """

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
