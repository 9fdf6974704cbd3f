"""The dependency direction the design holds to, read off every module's imports: the simulator
depends on nothing of ours, measure only on the simulator, calibrate on both, the CLI on all."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "simulator": {"simulator"},
    "measure": {"simulator", "measure"},
    "calibrate": {"simulator", "measure", "calibrate"},
    "capsim": {"simulator", "measure", "calibrate", "capsim"},
}


def _imports(path: Path, package: str) -> set[str]:
    """Top-level packages of ours a module imports (relative imports resolve to its own package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(package if node.level else (node.module or "").split(".")[0])
    return out & set(ALLOWED)


def _allowed(path: Path, package: str) -> set[str]:
    """A package's click commands (cli.py, twin_cli.py) may use the CLI's flag helpers too."""
    return ALLOWED[package] | ({"capsim"} if path.name.endswith("cli.py") else set())


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_down_the_layers_only(package):
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p, package) - _allowed(p, package))
           for p in sorted((ROOT / package).rglob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}


def test_the_check_sees_a_violation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from calibrate.plots import plot_validation\n")
    assert _imports(f, "measure") - ALLOWED["measure"] == {"calibrate"}
