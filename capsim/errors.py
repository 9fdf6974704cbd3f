"""One clear line instead of a traceback: how every capsim command reports bad input."""
from __future__ import annotations

import functools
import os
from pathlib import Path

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


def check_writable(path: str | os.PathLike | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work is done (nothing is created)."""
    if not path:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise click.ClickException(f"{flag} {p}: is a folder, not a file")
    if not parent.is_dir():
        raise click.ClickException(f"{flag} {p}: no such folder {parent}")
    if not os.access(parent if not p.exists() else p, os.W_OK):
        raise click.ClickException(f"{flag} {p}: not writable")


class OneLineUsageError(click.ClickException):
    """A usage error (bad flag value, unknown option) shown as one `Error: ...` line, exit 2."""

    exit_code = 2


def _one_line(e: click.UsageError) -> click.ClickException:
    where = e.ctx.command_path if e.ctx is not None else "capsim"
    return OneLineUsageError(f"{e.format_message()} (see '{where} --help')")


class OneLineGroup(click.Group):
    """capsim's top group: every usage error of every subcommand is one line on stderr (help screens stay)."""

    def make_context(self, *a, **kw):
        try:
            return super().make_context(*a, **kw)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _one_line(e) from None
