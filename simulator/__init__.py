"""The simulator: a SimPy model of vLLM's scheduler and the vocabulary the rest of capsim shares
(workloads, load patterns, request records, summaries), plus the office model and the plan search.
It imports nothing else of ours. Names below load their module on first use, so importing the
package is cheap; the reading guide is docs/architecture.md.
"""
from __future__ import annotations

from .lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    # the base class of every error the library raises for the user (docs/architecture.md, "Errors")
    "CapsimError": ".errors",
    # a box
    "Profile": ".profile", "load_profile": ".profile", "ProfileError": ".profile", "EngineLimits": ".profile",
    "apply_edits": ".whatif", "draw_profile": ".uncertainty",
    # a load: what is sent, and when
    "Workload": ".workload", "RandomWorkload": ".workload", "ShareGPTWorkload": ".workload",
    "PrefixRepetitionWorkload": ".workload",
    "FixedWorkload": ".workload", "MixtureWorkload": ".workload", "RequestSpec": ".workload",
    "PromptFormat": ".workload", "WorkloadError": ".workload", "bundled_sharegpt_path": ".workload",
    "OpenLoop": ".load", "ClosedLoop": ".load", "LoadError": ".load",
    # running the model, and what it records
    "Engine": ".engine", "simulate_open": ".sim", "simulate_closed": ".sim", "SimStats": ".sim",
    "RequestRecord": ".records", "RunResult": ".records",
    "replicate_open": ".replicate", "replicate_closed": ".replicate", "band": ".replicate",
    # summaries (vllm bench serve's and llama-benchy's keys)
    "summarize_open": ".summary", "summarize_closed": ".summary", "format_open_summary": ".summary",
    "format_closed_table": ".summary",
    # the office and the plan search (the function `plan` is simulator.plan.plan: the name is the module's)
    "Office": ".office", "OfficeError": ".office", "DEFAULT_MIX": ".office", "simulate_office": ".office",
    "summarize_office": ".office", "per_class": ".office",
    "Constraint": ".sla", "PlanError": ".sla", "parse_sla": ".sla", "DEFAULT_SLA": ".sla",
    "Scenario": ".scenario", "parse_scenario": ".scenario",
    "PlanSettings": ".plan", "predicted_capacity": ".plan",
    "PlanResult": ".plan_report", "format_plan": ".plan_report", "format_compare": ".plan_report",
    "plot_plan": ".plan_report",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
