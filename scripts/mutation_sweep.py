"""Mutation sweep: do the tests fail when the code is wrong?

Makes one small change at a time to a module (a + turned -, a < turned <=, a constant moved by one,
an `and` turned `or`, max turned min) within the given line ranges, runs the given tests on a copy of
the repository, and prints each change as killed (a test failed), timeout (the run hung: a test that
can fail), or SURVIVED (every test passed). A survivor is a behaviour no test pins, or a change that
does not change behaviour (a defensive bound no input reaches); docs/design/engine.md lists the
sweeps run and what their survivors were.

    python scripts/mutation_sweep.py simulator/engine.py --lines 214-240,289-523 \\
        --tests tests/test_engine.py tests/test_engine_spec.py -k "not mean_wait" --workers 2
"""
from __future__ import annotations

import argparse
import ast
import copy
import os
import queue
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
            ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def sites(tree: ast.AST, ranges: list[tuple[int, int]]) -> list[ast.AST]:
    """The nodes a mutation can change, in a fixed order (ast.walk's), within the line ranges."""
    def kind(n):
        if isinstance(n, ast.BinOp):
            return type(n.op) in SWAP_BIN
        if isinstance(n, ast.Compare):
            return type(n.ops[0]) in SWAP_CMP
        if isinstance(n, ast.Constant):
            return type(n.value) in (int, float)  # bool is not: type(True) is bool
        if isinstance(n, ast.Call):
            return isinstance(n.func, ast.Name) and n.func.id in ("max", "min")
        return isinstance(n, ast.BoolOp)
    return [n for n in ast.walk(tree)
            if kind(n) and any(a <= getattr(n, "lineno", -1) <= b for a, b in ranges)]


def mutate(node: ast.AST) -> None:
    """Change one node in place."""
    if isinstance(node, ast.BinOp):
        node.op = SWAP_BIN[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[0] = SWAP_CMP[type(node.ops[0])]()
    elif isinstance(node, ast.Constant):
        v = node.value
        node.value = v + 1 if v == 0 else 0 if v == 1 else v * 2 if isinstance(v, int) else v * 1.5
    elif isinstance(node, ast.Call):
        node.func.id = "min" if node.func.id == "max" else "max"
    else:
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()


def mutants(source: str, ranges: list[tuple[int, int]]) -> list[tuple[str, str]]:
    """(description, mutated source) for every site."""
    tree = ast.parse(source)
    out = []
    for i, node in enumerate(sites(tree, ranges)):
        label = f"L{node.lineno} {type(node).__name__}: {ast.unparse(node)[:90]}"
        t = copy.deepcopy(tree)
        mutate(sites(t, ranges)[i])
        out.append((label, ast.unparse(t)))
    return out


def run_tests(copy_root: Path, target: str, code: str, tests: list[str], k: str | None, timeout: float) -> str:
    (copy_root / target).write_text(code)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests] + (["-k", k] if k else [])
    try:
        r = subprocess.run(cmd, cwd=copy_root, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, CI="true"))
    except subprocess.TimeoutExpired:
        return "timeout"
    return "killed" if r.returncode else "SURVIVED"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="module to mutate, relative to the repository root")
    ap.add_argument("--lines", required=True, help="line ranges, e.g. 100-180,200-260")
    ap.add_argument("--tests", nargs="+", required=True)
    ap.add_argument("-k", default=None, help="pytest -k expression (leave slow tests out)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a mutant's tests may run")
    ap.add_argument("--only", default=None, help="a sweep's output: run again only the mutants it says SURVIVED")
    a = ap.parse_args(argv)
    ranges = [tuple(int(x) for x in r.split("-")) for r in a.lines.split(",")]
    source = (ROOT / a.target).read_text()
    todo = mutants(source, ranges)
    if a.only:
        again = {line.split(None, 1)[1].rstrip("\n") for line in open(a.only) if line.startswith("SURVIVED ")}
        todo = [m for m in todo if m[0] in again]
    print(f"{len(todo)} mutants of {a.target} {a.lines}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.pyc")
        roots = [Path(tmp) / f"w{w}" / ROOT.name for w in range(a.workers)]
        copies: queue.Queue = queue.Queue()
        for dst in roots:
            shutil.copytree(ROOT, dst, ignore=ignore)
            if (ROOT.parent / "shared").exists():  # the tests find the suite runs beside the repository
                (dst.parent / "shared").symlink_to(ROOT.parent / "shared")
            copies.put(dst)
        base = run_tests(roots[0], a.target, ast.unparse(ast.parse(source)), a.tests, a.k, a.timeout)
        if base != "SURVIVED":
            print(f"the unmutated module does not pass these tests ({base}): nothing to measure", file=sys.stderr)
            return 2

        def one(item):
            w = copies.get()
            try:
                return item[0], run_tests(w, a.target, item[1], a.tests, a.k, a.timeout)
            finally:
                copies.put(w)

        counts: dict[str, int] = {}
        with ThreadPoolExecutor(a.workers) as ex:
            for label, verdict in ex.map(one, todo):
                counts[verdict] = counts.get(verdict, 0) + 1
                print(f"{verdict:8s} {label}", flush=True)
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
