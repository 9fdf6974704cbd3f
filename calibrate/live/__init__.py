"""Live calibration and validation against a running OpenAI-compatible server.

`live_calibrate` measures a closed-loop grid and fits a profile; `live_validate` measures open-loop
loads and compares them with the model's predictions. The reasoning is in
docs/design/live-calibration.md; the commands are described in docs/live.md.
"""
from __future__ import annotations

from .cli import live_limit_options, run_calibrate_live, run_validate_live
from .fit import LIVE_API_PARAMS, LIVE_FIT_PARAMS, fit_live, load_calibration_runs, refit
from .ladder import (MIN_RUNGS, STEADY, Stage, live_calibrate, parse_budget, predict_seconds, prompt_sizes,
                     rough_profile, steadiness)
from .loads import LiveLoad, load_loads, seed_loads, single_request_seconds
from .messages import LiveError
from .replay import replay_specs, simulate_replay
from .runs import closed_run_from_result, measured_prompt_scale, scale_run, until_free
from .server import (VLLM_DEFAULTS, ServerFacts, apply_server_limits, kv_groups_from_hf_config, parse_kv_groups,
                     read_server)
from .validate import (EXTRA_METRICS, LiveResult, LiveValidation, compare_load, live_validate, measure_load,
                       predict_live)

__all__ = [
    # what a server is
    "ServerFacts", "read_server", "apply_server_limits", "parse_kv_groups", "kv_groups_from_hf_config",
    "VLLM_DEFAULTS",
    # measured runs
    "scale_run", "closed_run_from_result", "measured_prompt_scale", "until_free",
    # the calibration ladder and the live fit
    "live_calibrate", "parse_budget", "Stage", "rough_profile", "predict_seconds", "prompt_sizes", "MIN_RUNGS",
    "steadiness", "STEADY",
    "fit_live", "refit", "load_calibration_runs", "LIVE_FIT_PARAMS", "LIVE_API_PARAMS",
    # live validation
    "LiveLoad", "seed_loads", "load_loads", "single_request_seconds", "replay_specs", "simulate_replay",
    "live_validate", "measure_load", "compare_load", "predict_live", "LiveResult", "LiveValidation", "EXTRA_METRICS",
    # talking to the user, and the commands
    "LiveError", "live_limit_options", "run_calibrate_live", "run_validate_live",
]
