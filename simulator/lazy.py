"""Lazy package exports (PEP 562): a package lists its public names and the module each comes
from, and a name's module is imported on first use, so `import simulator` (or `capsim`) stays
cheap and `capsim --help` imports no more than it did.
"""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: `exports` maps each public name to its module
    (relative to the package, or absolute), written `module` or `module:attribute` when the
    name differs from the attribute's."""
    def __getattr__(name: str) -> object:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = getattr(import_module(module, package), attr or name)
        setattr(sys.modules[package], name, value)  # found once, then a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
