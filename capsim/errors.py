"""One clear line instead of a traceback: how every capsim command reports bad input."""
from __future__ import annotations

import functools

import click

# every library error of capsim's packages is a ValueError (WorkloadError, LoadError, ProfileError,
# PlanError, OfficeError, ImporterError, LiveError, ...); OSError covers unreadable files
USER_ERRORS = (ValueError, OSError)


def friendly(fn):
    """Turn the library's errors into one clear line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except click.ClickException:
            raise
        except USER_ERRORS as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    return wrapper
