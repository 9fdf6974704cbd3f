"""Execute the notebooks so they never go stale, and hold them to what they show.

Each notebook runs top to bottom in a fresh kernel of this very interpreter (the
project's venv), from the notebooks/ folder, with a per-cell timeout. A failing cell
fails the test with the cell's error. The notebooks assert the figures they print
(each section that prints has an assert cell, checked below without a kernel); the
kernel inherits the environment, so CAPSIM_REQUIRE_SHARED=1 (CI) turns notebook 02's
"data not found: skipped" into a failing assert.
"""
import ast
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 300


def _kernel_from_this_venv(tmp_path: Path) -> str:
    """A kernelspec whose argv is this interpreter, so the notebook sees the same packages."""
    spec_dir = tmp_path / "kernels" / "capsim-test"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "capsim test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return str(tmp_path / "kernels")


NAMES = ["01-how-many-staff.ipynb", "02-validate-on-the-spark.ipynb"]


def _sections(nb) -> list[tuple[str, list[ast.Module]]]:
    """(heading, parsed code cells) for each part of the notebook that a markdown heading starts."""
    out = [("(top)", [])]
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.lstrip().startswith("#"):
            out.append((c.source.strip().splitlines()[0], []))
        elif c.cell_type == "code":
            out[-1][1].append(ast.parse(c.source))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_section_that_prints_asserts(name):
    """A figure printed is a figure checked: each section whose code prints has an assert statement."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    unchecked = []
    for heading, trees in _sections(nb):
        nodes = [n for t in trees for n in ast.walk(t)]
        prints = any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print" for n in nodes)
        if prints and not any(isinstance(n, ast.Assert) for n in nodes):
            unchecked.append(heading)
    assert unchecked == [], f"{name}: sections that print and assert nothing: {unchecked}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    kernels = _kernel_from_this_venv(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", str(Path(kernels).parent))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="capsim-test",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
