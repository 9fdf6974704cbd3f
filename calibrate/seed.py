"""The seed write-up's published numbers (runs A–G closed loop, tests H–J open loop).

Transcribed into calibrate/data/seed/{closed,open}.json; see the "source" and "notes" fields there.
seed_closed_runs() reads only closed.json, so calibration that uses it cannot see the open-loop
answers it will later be validated against.
"""

from __future__ import annotations

import json
from importlib.resources import files

from .files import ImporterError
from .importers import serve_params
from .results import ClosedRow, ClosedRun, OpenRun

_DATA = files("calibrate") / "data" / "seed"


def _load(name: str) -> dict:
    res = _DATA / name
    try:
        return json.loads(res.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ImporterError(f"{res}: cannot load seed data ({e})") from None


def seed_closed_runs() -> list[ClosedRun]:
    """Closed-loop runs A, B, C, E, F, G (source "seed")."""
    doc = _load("closed.json")
    path = str(_DATA / "closed.json")
    return [
        ClosedRun(
            source="seed", test=r["test"], model=r["model"], runs=r["runs"],
            latency_mode=r["latency_mode"], latency_ms=r["latency_ms"], version=r["version"],
            rows=[ClosedRow(pp=x["pp"], tg=x["tg"], depth=x["depth"], concurrency=x["concurrency"],
                            metrics={k: tuple(v) for k, v in x["metrics"].items()})
                  for x in r["rows"]],
            server=dict(doc["server"]), path=path)
        for r in doc["runs"]
    ]


def seed_open_runs() -> list[OpenRun]:
    """Open-loop tests H, I, J (source "seed"); only the printed summary, no per-request data."""
    doc = _load("open.json")
    path = str(_DATA / "open.json")
    # Same normalisation as suite params (types, 'inf' rates); the JSON spells out every value.
    return [OpenRun(source="seed", test=r["test"], path=path, dataset=r["dataset"],
                    params=serve_params(r["params"], path), result=dict(r["result"]),
                    detailed=None, server=dict(doc["server"]))
            for r in doc["runs"]]


def seed_runs() -> tuple[list[ClosedRun], list[OpenRun]]:
    return seed_closed_runs(), seed_open_runs()
