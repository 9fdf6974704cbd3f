"""How the live modules speak to the user.

A LiveError's message is the one line a failed live calibration or validation shows; progress
lines go to `logging`, on the loggers below "capsim.calibrate.live" (INFO), and the command line
shows them (calibrate.live.cli).
"""
from __future__ import annotations

from simulator.errors import CapsimError


class LiveError(CapsimError):
    """A live calibration/validation problem; the message is one line for the user."""
