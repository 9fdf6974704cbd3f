"""The command line's building blocks, shared by every capsim command.

`MultiValue` is the one parser for every multi-value flag: `--pp 512,1024`,
`--pp 512 1024` (argparse's nargs='+', as llama-benchy and vllm bench serve take
it) and `--pp 512 --pp 1024` all give (512, 1024). `OptionalValue` is a flag that
may take one value. `flag_option` adds another tool's flag that a command takes
without a parameter of its own: a no-op, noted (`note_flag`, said by
`echo_flag_notes`) or refused (`refuse_flag`). `parse_extra_body` reads
--extra-body as both tools write it.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence

import click


def typed(ctx: click.Context, name: str) -> bool:
    """Whether the user gave the parameter `name` on the command line (not a default, not the environment)."""
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


class _Split(click.ParamType):
    """One command-line word -> a tuple of items (split on `sep`, each converted by `item`)."""

    def __init__(self, item: click.ParamType, sep: str | None):
        self.item, self.sep = item, sep
        self.name = f"{item.name}s"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            parts = list(value)
        elif isinstance(value, str) and self.sep:
            parts = [p.strip() for p in value.split(self.sep) if p.strip()]
            if not parts:
                self.fail(f"no value in {value!r}", param, ctx)
        else:
            parts = [value]
        return tuple(self.item.convert(p, param, ctx) for p in parts)


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


class MultiValue(click.Option):
    """A list flag: `--x a,b`, `--x a b` and `--x a --x b` all give (a, b).

    item:   the type of one value (click.INT, click.FLOAT, click.Choice(...), click.STRING).
    sep:    the separator inside one word (None: values may hold commas, e.g. JSON).
    spaced: also take the following words (argparse's nargs='+'), as long as `accept`
            says they are values: by default a word the item type converts; a word that
            starts with '-' (another flag) never is, unless a number. So a positional URL
            or path after `--pp 512 1024` stays positional.
    accept: a regex (or callable) for the words to take when spaced (string flags).
    """

    def __init__(self, *decls, item: Any = click.INT, sep: str | None = ",", spaced: bool = True,
                 accept: str | Callable[[str], bool] | None = None, **kw):
        self.item = click.types.convert_type(item)
        self.sep, self.spaced = sep, spaced
        self._accept = re.compile(accept).fullmatch if isinstance(accept, str) else accept
        kw["multiple"] = True
        kw["type"] = _Split(self.item, sep)
        kw.setdefault("default", ())
        super().__init__(*decls, **kw)

    def type_cast_value(self, ctx, value):
        return tuple(x for part in super().type_cast_value(ctx, value) for x in part)

    def accepts(self, token: str) -> bool:
        if token == "--" or (token.startswith("-") and not _is_number(token)):
            return False
        if self._accept is not None:
            return bool(self._accept(token))
        try:
            self.type.convert(token, self, None)
            return True
        except click.BadParameter:
            return False

    def add_to_parser(self, parser, ctx):
        ret = super().add_to_parser(parser, ctx)
        if not self.spaced:
            return ret
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)  # see tests/test_upstream_private_api.py
            if opt is None:
                continue
            prev = opt.process

            def process(value, state, prev=prev):
                prev(value, state)
                while state.rargs and self.accepts(state.rargs[0]):
                    prev(state.rargs.pop(0), state)

            opt.process = process
        return ret


class OptionalValue(click.Option):
    """A flag that may take one value: `--save-result` (vllm bench serve: a bare flag) or
    `--save-result out.json` (llama-benchy and older capsim: the file). The next word is the
    value only if `accept` matches it, so `--save-result --save-detailed` never writes a file
    named '--save-detailed' and `--save-result http://host` leaves the URL positional."""

    def __init__(self, *decls, accept: str = r"(?i)[^-].*\.(json|md|csv|txt|jsonl)", flag_value: str = "",
                 **kw):
        self._accept = re.compile(accept).fullmatch
        self._bare = flag_value
        kw.setdefault("default", None)
        kw["type"] = click.STRING
        super().__init__(*decls, **kw)

    def add_to_parser(self, parser, ctx):
        kw = {"dest": self.name, "action": "store_const", "const": self._bare}
        parser.add_option(obj=self, opts=self.opts, **kw)
        for name in self.opts:
            opt = parser._long_opt.get(name)
            prev = opt.process

            def process(value, state, prev=prev, opt=opt):
                if state.rargs and self._accept(state.rargs[0]):
                    state.opts[opt.dest] = state.rargs.pop(0)
                    state.order.append(opt.obj)
                    return
                prev(value, state)

            opt.process = process


SET_VALUE = r"[A-Za-z_][\w.]*\s*=.*"  # a --set KEY=VALUE word (what a spaced --set takes)


def parse_extra_body(values: Sequence[str]) -> dict[str, Any]:
    """--extra-body: a JSON object (vllm bench serve), or llama-benchy's key=value / key:value
    entries, comma-separated or repeated (values parsed as JSON where they are)."""
    out: dict[str, Any] = {}
    for item in values:
        s = item.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                raise click.BadParameter(f"not JSON: {e.msg} at character {e.pos}", param_hint="--extra-body") \
                    from None
            if not isinstance(obj, dict):
                raise click.BadParameter("give a JSON object", param_hint="--extra-body")
            out.update(obj)
            continue
        for entry in (e.strip() for e in s.split(",")):
            if not entry:
                continue
            m = re.match(r"([^=:]+)[=:](.*)", entry)  # the entry is stripped: a match has a key
            if not m:
                raise click.BadParameter(f"{entry!r}: use a JSON object, key=value or key:value",
                                         param_hint="--extra-body")
            try:
                out[m.group(1).strip()] = json.loads(m.group(2).strip())
            except json.JSONDecodeError:
                out[m.group(1).strip()] = m.group(2).strip()
    for k in ("model", "stream", "messages", "prompt"):
        if k in out:
            raise click.BadParameter(f"{k!r} is capsim's to set, not --extra-body's", param_hint="--extra-body")
    return out


def flag_option(name: str, kind, callback=None, help_text: str | None = None):
    """Another tool's flag, with no parameter in the command's signature: a switch where `kind` is None, else
    a value of that type; `callback` does what the flag asks (note_flag, refuse_flag, or keeps the value in
    ctx.meta); hidden from --help without `help_text`."""
    kw: dict[str, Any] = {"expose_value": False, "callback": callback, "hidden": help_text is None}
    if help_text:
        kw["help"] = help_text
    if kind is None:
        return click.option(name, is_flag=True, default=False, **kw)
    return click.option(name, type=kind, default=None, **kw)


def note_flag(reason: str):
    """A flag accepted with `reason` (what capsim does instead), said by echo_flag_notes."""
    def cb(ctx, param, value):
        if value is not None and value is not False:
            ctx.meta.setdefault("capsim.flag_notes", {})[param.opts[0]] = reason
        return value
    return cb


def refuse_flag(reason: str):
    """A flag refused with `reason`, as a usage error naming it."""
    def cb(ctx, param, value):
        if value is not None and value is not False:
            raise click.UsageError(f"{param.opts[0]}: {reason}")
        return value
    return cb


def echo_flag_notes(prefix: str, extra: Sequence[str] = (), ctx: click.Context | None = None) -> None:
    """On stderr, one line per reason for the accepted flags whose request capsim does not carry out
    (then `extra`), each after `prefix`."""
    ctx = ctx or click.get_current_context()
    by_reason: dict[str, list[str]] = {}
    for flag, why in ctx.meta.get("capsim.flag_notes", {}).items():
        by_reason.setdefault(why, []).append(flag)
    for line in [f"{', '.join(fl)}: {why}" for why, fl in by_reason.items()] + list(extra):
        click.echo(prefix + line, err=True)
