"""Where runs come from: a name on the command line becomes ClosedRun/OpenRun lists.

`seed` is the seed write-up's reference data; a folder with meta.json is a suite
run (shared/data/spark-bench layout); a folder with run.json is a capsim measure
run; a .md or .json file is one llama-benchy table or vllm bench serve result.
Closed-loop loading never opens an open-loop file.
"""
from __future__ import annotations

from pathlib import Path

from .importers import ImporterError, closed_runs, load_source, open_runs
from .results import ClosedRun, OpenRun
from .seed import seed_closed_runs, seed_open_runs


def _capsim_run(path: Path, kind: str):
    from measure.convert import run_folder_as_results  # the live side's files
    return run_folder_as_results(path, kind)


def load_closed(sources: list[str]) -> list[ClosedRun]:
    out: list[ClosedRun] = []
    for s in sources:
        p = Path(s)
        if s == "seed":
            out += seed_closed_runs()
        elif (p / "meta.json").is_file():
            out += closed_runs(p)
        elif (p / "run.json").is_file():
            out += _capsim_run(p, "closed")
        elif p.is_file() and p.suffix == ".md":
            out += [r for r in load_source(p) if isinstance(r, ClosedRun)]
        elif p.exists():
            raise ImporterError(f"{p}: not a closed-loop source (a suite folder, a capsim run folder, a llama-benchy .md)")
        else:
            raise ImporterError(f"{p}: no such file or folder")
    return out


def load_open(sources: list[str]) -> list[OpenRun]:
    out: list[OpenRun] = []
    for s in sources:
        p = Path(s)
        if s == "seed":
            out += seed_open_runs()
        elif (p / "meta.json").is_file():
            out += open_runs(p)
        elif (p / "run.json").is_file():
            out += _capsim_run(p, "open")
        elif p.is_file():
            out += [r for r in load_source(p) if isinstance(r, OpenRun)]
        elif p.exists():
            raise ImporterError(f"{p}: not an open-loop source")
        else:
            raise ImporterError(f"{p}: no such file or folder")
    return out


def server_key(run) -> tuple:
    s = run.server or {}
    return (s.get("model"), s.get("max_num_batched_tokens"), s.get("max_num_seqs"), s.get("gpu_memory_utilization"),
            s.get("kv_cache_dtype"), s.get("vllm_version"))
