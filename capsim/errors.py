"""One clear line instead of a traceback: how every capsim command reports bad input.

The boundary between the library and the user: `user_errors()` (or the `friendly` decorator) turns
a library error into `Error: <its message's first line>` on stderr and exit 1; click's usage errors
become one line and exit 2 (`OneLineGroup`). docs/architecture.md, "Errors", has the tree.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import click

from simulator.errors import CapsimError

# what a command reports as one line: every library error is a CapsimError (ProfileError, WorkloadError,
# LoadError, OfficeError, PlanError, MeasureError, ImporterError, LiveError, ...), itself a ValueError;
# a bare ValueError is reported the same way; OSError covers unreadable files
USER_ERRORS = (CapsimError, ValueError, OSError)


def error_line(e: BaseException) -> click.ClickException:
    """The one `Error: ...` line an error becomes: its message's first line (its type's name if it
    has none), exit 1 (a CapsimError's `exit_code`)."""
    text = str(e)
    out = click.ClickException(text.splitlines()[0] if text else type(e).__name__)
    out.exit_code = e.exit_code if isinstance(e, CapsimError) else 1
    return out


@contextlib.contextmanager
def user_errors(errors: type[BaseException] | tuple[type[BaseException], ...] = USER_ERRORS):
    """Inside, an error of `errors` becomes one line and its exit code (`error_line`); click's own
    errors pass as they are, any other error too."""
    try:
        yield
    except click.ClickException:
        raise
    except errors as e:
        raise error_line(e) from None


def friendly(fn):
    """Turn the library's errors into one clear line and a non-zero exit (`user_errors` around `fn`)."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with user_errors():
            return fn(*a, **kw)

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


def _usage_line(e: click.UsageError) -> click.ClickException:
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
            raise _usage_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _usage_line(e) from None
