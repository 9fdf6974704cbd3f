"""capsim measure: the live side.

A streaming OpenAI-compatible load generator that runs the simulator's own
Workload and LoadPattern objects against a real server and writes the same
RequestRecords the simulator produces.

    from measure import run_open, run_closed
    from measure.runfiles import load_run
"""
from .drivers import run_closed, run_closed_async, run_open, run_open_async
from .errors import MeasureError

__all__ = ["run_open", "run_closed", "run_open_async", "run_closed_async", "MeasureError"]
