"""Plain records for published benchmark results (closed-loop llama-benchy, open-loop vllm bench serve).

These hold what a tool printed, unchanged in meaning and units, so calibration and
validation code can compare a simulation with the very numbers a reader sees:
- closed-loop metrics keep llama-benchy's JSON names and its (mean, std) pairs; latencies in ms;
- open-loop results keep vllm bench serve's result-JSON keys (ms for latencies, s for duration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# llama-benchy metric names (its --format json names), all as (mean, std).
CLOSED_METRICS = (
    "pp_throughput", "pp_req_throughput",
    "tg_throughput", "tg_req_throughput",
    "peak_throughput", "peak_req_throughput",
    "ttfr", "est_ppt", "e2e_ttft",
)

# Per-request arrays that vllm bench serve writes with --save-detailed (and legacy files always).
DETAILED_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times")


# One llama-benchy shape (its pp row and tg row merged); the simulator's summary
# produces the same type, so measured and simulated rows compare key by key.
from simulator.summary import ClosedRow  # noqa: E402


@dataclass
class ClosedRun:
    """One llama-benchy invocation (one table)."""
    source: str                 # e.g. "spark-bench/gemma-4-26b-a4b-it/bf16" or "seed"
    test: str                   # e.g. "01-chat" or "A"
    model: str                  # model name as llama-benchy printed it (the served name)
    runs: int | None            # --runs (llama-benchy default 3)
    latency_mode: str | None    # "api" | "generation" | "none"
    latency_ms: float | None    # latency llama-benchy measured and subtracted from ttfr for est_ppt
    version: str | None         # llama-benchy version from the table footer
    rows: list[ClosedRow] = field(default_factory=list)
    server: dict = field(default_factory=dict)
    path: str | None = None
    # Seconds the whole invocation took (warmups, probes and runs), where the harness logged it
    wall_s: float | None = None
    # Answers that stop at EOS before tg, as the fit estimates them from wall_s: their mean length
    # (tokens) and the gamma shape of their law (simulator.workload.stop_lengths)
    stop_mean: float | None = None
    stop_shape: float = 1.0
    # where the report's table was cut (the writer stopped inside its last row), which is left out
    cut: str | None = None
    # llama-benchy's --enable-prefix-caching: each run of a test with depth loaded its contexts first (rows
    # with context_load, where the source kept them), and its requests found them in the server's cache
    prefix_caching: bool = False

    def after_cached_context(self, row: ClosedRow) -> bool:
        """Whether the row's prompts came after their context was loaded and found cached: its pp t/s is
        llama-benchy's pp over a prefill of the prompt alone, not of pp + depth."""
        return bool(self.prefix_caching and row.depth and not row.context_load)


@dataclass
class OpenRun:
    """One vllm bench serve invocation (one result JSON)."""
    source: str
    test: str                   # e.g. "07-office-baseline", "11-rate-sweep@0.3", "H"
    path: str | None
    dataset: str                # "random" | "sharegpt" (or "unknown" for a bare JSON)
    params: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    detailed: dict | None = None
    server: dict = field(default_factory=dict)
