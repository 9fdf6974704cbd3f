"""The accuracy figures the README states are the committed scoreboard's, and the committed
scoreboard is what the code gives (benchmarks/accuracy.py, re-run here on two of its runs)."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.test_importers import RESULTS, shared_missing

ROOT = Path(__file__).resolve().parent.parent
BOARD = json.loads((ROOT / "benchmarks" / "accuracy.json").read_text())


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_states_the_committed_scoreboard():
    text = (ROOT / "README.md").read_text()
    s = BOARD["summary"]
    labels = [m["label"] for m in s["per_metric"].values()]
    header = "| " + " | ".join(labels) + " |"
    assert header in text, "the README's scoreboard table lost its header"
    row = text[text.index(header):].splitlines()[2]
    stated = [float(x) for x in re.findall(r"([\d.]+) % \(", row)]
    assert stated == [round(m["median_abs_error_pct"], 1) for m in s["per_metric"].values()]
    assert f"right in {s['capacity_matches']} of {s['capacity_cases']}" in text
    assert f"{round(100 * s['band_coverage'])} % of {s['rows']} rows" in text


def test_docs_accuracy_is_written_from_the_committed_scoreboard():
    text = (ROOT / "docs" / "accuracy.md").read_text()
    for m in BOARD["summary"]["per_metric"].values():
        assert f"| {m['label']} | {m['rows']} | {m['median_abs_error_pct']:.1f} % |" in text
    for r in BOARD["results"]:
        assert r["source"] in text


@pytest.mark.parametrize("run", ["gemma-4-26b-a4b-it/bf16-v23", "qwen-3.5-4b/bf16"])
def test_the_committed_scoreboard_is_what_the_code_gives(run):
    """Calibrate and validate one run again: the same predictions as the committed rows. A model
    change that did not re-run the scoreboard fails here."""
    if not RESULTS.is_dir():
        shared_missing(f"{RESULTS} is missing")
    acc = _accuracy_module()
    (src,) = [s for s in acc.sources(RESULTS.parents[2], []) if s.endswith(run)]
    committed = next(r for r in BOARD["results"] if r["source"] == run)
    got = acc.score_one(src, replications=10)
    key = lambda r: (r["test"], r["metric"])  # noqa: E731
    want = {key(r): r for r in committed["rows"]}
    assert sorted(want) == sorted(key(r) for r in got["rows"])
    for r in got["rows"]:
        assert r["predicted"] == pytest.approx(want[key(r)]["predicted"], rel=1e-3), key(r)
