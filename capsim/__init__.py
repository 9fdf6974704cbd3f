"""capsim: how many staff can this LLM box serve, and how will it feel to them. The `capsim`
command is `capsim.cli`; this package also gathers the library's main names in one place for a
notebook (`from capsim import load_profile, Office, plan, format_plan`). Each loads its module on
first use, so `capsim --help` imports nothing more; the reading guide is docs/architecture.md.
"""
from __future__ import annotations

from simulator.lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    # the base class of every library error (a ValueError)
    "CapsimError": "simulator.errors",
    # a box, and what-ifs on it
    "Profile": "simulator.profile", "load_profile": "simulator.profile", "apply_edits": "simulator.whatif",
    # loads, the model, summaries
    "RandomWorkload": "simulator.workload", "ShareGPTWorkload": "simulator.workload",
    "PrefixRepetitionWorkload": "simulator.workload",
    "bundled_sharegpt_path": "simulator.workload",
    "OpenLoop": "simulator.load", "ClosedLoop": "simulator.load",
    "simulate_open": "simulator.sim", "simulate_closed": "simulator.sim",
    "replicate_open": "simulator.replicate", "replicate_closed": "simulator.replicate",
    "RequestRecord": "simulator.records", "RunResult": "simulator.records",
    "summarize_open": "simulator.summary", "summarize_closed": "simulator.summary",
    # the office and the plan
    "Office": "simulator.office", "DEFAULT_MIX": "simulator.office", "simulate_office": "simulator.office",
    "summarize_office": "simulator.office", "per_class": "simulator.office",
    "plan": "simulator.plan", "PlanSettings": "simulator.plan", "predicted_capacity": "simulator.plan",
    "SUITE_LADDER": "simulator.plan",
    "Scenario": "simulator.scenario", "Constraint": "simulator.sla", "parse_sla": "simulator.sla",
    "PlanResult": "simulator.plan_report", "format_plan": "simulator.plan_report",
    "format_compare": "simulator.plan_report", "plot_plan": "simulator.plan_report",
    # measuring a server
    "run_open": "measure", "run_closed": "measure", "load_run": "measure.runfiles",
    # calibration and validation
    "seed_closed_runs": "calibrate.seed", "seed_open_runs": "calibrate.seed",
    "load_closed": "calibrate.sources", "load_open": "calibrate.sources", "open_runs": "calibrate.importers",
    "fit_closed": "calibrate.fit", "validate": "calibrate.validate", "FAMILY_OF": "calibrate.validate",
    "measured_capacity": "calibrate.validate:capacity",
    "live_calibrate": "calibrate.live", "live_validate": "calibrate.live",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
