"""Execute the notebooks so they never go stale.

Each notebook runs top to bottom in a fresh kernel of this very interpreter (the
project's venv), from the notebooks/ folder, with a per-cell timeout. A failing cell
fails the test with the cell's error.
"""
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


@pytest.mark.parametrize("name", ["01-how-many-staff.ipynb", "02-validate-on-the-spark.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    kernels = _kernel_from_this_venv(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", str(Path(kernels).parent))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="capsim-test",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
