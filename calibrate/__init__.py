"""Calibration: read measured benchmark runs (llama-benchy tables, vllm bench serve results, suite
folders, the seed), fit a box's profile to the closed-loop ones, and score its predictions on the
open-loop ones; `calibrate.live` does both against a running server. Names below load their
module on first use (`validate`, the function, is calibrate.validate.validate: the name is the module's).
"""
from __future__ import annotations

from simulator.lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    # measured runs
    "ClosedRun": ".results", "OpenRun": ".results",
    "load_closed": ".sources", "load_open": ".sources",
    "closed_runs": ".importers", "open_runs": ".importers", "load_source": ".importers",
    "ImporterError": ".importers",
    "seed_closed_runs": ".seed", "seed_open_runs": ".seed", "seed_runs": ".seed",
    # the fit
    "fit_closed": ".fit", "FitResult": ".fit", "envelope": ".fit", "prior_profile": ".priors",
    "profile_card": ".card", "format_card": ".card",
    # validation
    "Validation": ".validate", "FAMILY_OF": ".validate", "format_validation": ".validate",
    "measured_capacity": ".validate:capacity",
    "plot_validation": ".plots", "plot_profile_card": ".plots",
    # against a running server
    "live_calibrate": ".live", "live_validate": ".live",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
