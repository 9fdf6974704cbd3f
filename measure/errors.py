"""Errors `capsim measure` reports to the user as one line."""
from __future__ import annotations

from simulator.errors import CapsimError


class MeasureError(CapsimError):
    """A problem the user must fix (bad flag, unreachable server, HTTP error).

    The message is one line (whitespace runs become one space), printed without a traceback by
    the CLI, exit 1.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run's setup (connecting, before any run folder exists).

    A KeyboardInterrupt, so it passes every `except Exception` on its way out, as the
    user's Ctrl-C should; it carries the reason ("interrupted by Ctrl-C") and the phase.
    """

    def __init__(self, reason: str, phase: str, signum: int | None = None):
        super().__init__(f"{reason} while {phase}")
        self.reason, self.phase, self.signum = reason, phase, signum

    @property
    def exit_code(self) -> int:
        import signal

        return 143 if self.signum == signal.SIGTERM else 130
