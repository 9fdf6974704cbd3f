"""capsim's one error base class. Every error a library module raises for the user to fix is a
CapsimError (a ValueError, so `except ValueError` still catches it); the command line turns it into
one line on stderr and exit 1 (capsim/errors.py). The tree is in docs/architecture.md, "Errors".
"""
from __future__ import annotations


class CapsimError(ValueError):
    """A problem the user must fix (bad input, an unreadable run, an unreachable server).

    The message's first line is what the command line shows, as `Error: ...`; `exit_code` is
    the command's exit status.
    """

    exit_code = 1
