"""`capsim --help` and completion stay cheap (issue 11): they import neither the heavy libraries nor
the other commands' modules, and the command list they print without importing those modules is
the commands' own help. Time itself is measured by benchmarks/cli_startup.py, not asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from capsim.cli import LAZY_COMMANDS, LazyGroup, main

ROOT = Path(__file__).resolve().parent.parent

# in a fresh interpreter: import the entry module, print the top help, `simulate --help` and the
# completions of `capsim si` and `capsim `, then report what got imported
PROBE = """
import json, sys
import capsim.cli
from click.shell_completion import ShellComplete
for args in (["--help"], ["simulate", "--help"]):
    try:
        capsim.cli.main(args, prog_name="capsim")
    except SystemExit:
        pass
for incomplete in ("si", ""):
    ShellComplete(capsim.cli.main, {}, "capsim", "_CAPSIM_COMPLETE").get_completions([], incomplete)
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def modules_after_help():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_help_and_completion_import_no_scipy_pandas_or_matplotlib(modules_after_help):
    heavy = {m.split(".")[0] for m in modules_after_help} & {"scipy", "pandas", "matplotlib"}
    assert not heavy, f"capsim --help imported {sorted(heavy)}"


def test_help_and_completion_import_no_other_command_module(modules_after_help):
    lazy_modules = {path.split(":")[0] for path, _ in LAZY_COMMANDS.values()}
    assert not lazy_modules & modules_after_help


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_listed_help_is_the_commands_own(name):
    """What `capsim --help` lists without importing a command is what the command would list itself."""
    stand_in = click.Command(name, help=LAZY_COMMANDS[name][1])
    with click.Context(main) as ctx:
        real = main.get_command(ctx, name)
    assert real is not None and not real.hidden and not real.deprecated and real.short_help is None
    for limit in (30, 45, 56, 72, 1000):
        assert stand_in.get_short_help_str(limit) == real.get_short_help_str(limit)


def test_unknown_command_is_still_one_line():
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["nosuch"], prog_name="capsim")
    assert res.exit_code == 2
    assert res.output == "Error: No such command 'nosuch'. (see 'capsim --help')\n"


def groups():
    """(`capsim` as it starts: the other modules' commands not yet imported, plus a hidden command;
    the same commands in a plain click.Group with every one imported)."""
    hidden = click.Command("secret", hidden=True, help="Not listed.")
    lazy = LazyGroup(name="capsim", lazy=LAZY_COMMANDS)
    plain = click.Group(name="capsim")
    with click.Context(main) as ctx:
        for name in main.list_commands(ctx):
            if name not in LAZY_COMMANDS:
                lazy.add_command(main.commands[name], name)
            plain.add_command(main.get_command(ctx, name), name)
    for g in (lazy, plain):
        g.add_command(hidden)
    return lazy, plain


@pytest.mark.parametrize("width", [50, 80, 120])
def test_the_command_list_is_what_click_prints_with_every_command_loaded(width):
    def listing(group):
        ctx = click.Context(group, terminal_width=width)
        formatter = ctx.make_formatter()
        group.format_commands(ctx, formatter)
        return formatter.getvalue()

    lazy, plain = groups()
    text = listing(lazy)
    assert text == listing(plain) and "secret" not in text
    assert all(f"  {name} " in text for name in LAZY_COMMANDS)
    assert "calibrate" not in lazy.commands  # listed without importing it


def test_completion_is_what_click_offers_with_every_command_loaded():
    def offered(group, incomplete):
        return [(c.value, c.help) for c in group.shell_complete(click.Context(group), incomplete)]

    lazy, plain = groups()
    for incomplete in ("", "s", "va", "se"):
        assert offered(lazy, incomplete) == offered(plain, incomplete)
    assert [v for v, _ in offered(lazy, "")] == sorted([*LAZY_COMMANDS, "simulate"])
