"""How the live modules speak to the user.

A LiveError's message is the one line a failed live calibration or validation shows; a `Say`
callback takes each progress line (`quiet` drops them).
"""
from __future__ import annotations

from typing import Callable

from simulator.errors import CapsimError


class LiveError(CapsimError):
    """A live calibration/validation problem; the message is one line for the user."""


Say = Callable[[str], None]


def quiet(_msg: str) -> None:
    pass
