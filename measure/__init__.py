"""capsim measure: the live side.

A streaming OpenAI-compatible load generator that runs the simulator's own Workload and load
patterns against a real server and writes the same RequestRecords the simulator produces. The
drivers are imported with the package; the run-folder names load their module on first use.
"""
from simulator.lazy import lazy_exports

from .drivers import run_closed, run_closed_async, run_open, run_open_async
from .errors import MeasureError

_EXPORTS = {
    "Interrupted": ".errors",
    # run folders: what a measured run leaves, read back
    "load_run": ".runfiles", "load_run_info": ".runfiles", "run_summary": ".runfiles", "format_report": ".runfiles",
    "write_records_csv": ".exports", "plot_run": ".exports",
}

__all__ = ["run_open", "run_closed", "run_open_async", "run_closed_async", "MeasureError", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
