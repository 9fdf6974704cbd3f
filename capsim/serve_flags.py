"""vllm bench serve's flags on `capsim measure open` and `capsim simulate open`.

vLLM 0.32's vllm/benchmarks/serve.py add_cli_args, mapped onto capsim's: the
server URL (--base-url, --host/--port), the API (--backend, --endpoint), the
result file (--save-result [FILE], --result-dir, --result-filename,
--append-result), --percentile-metrics, --metric-percentiles, --goodput,
--metadata, --label, and the further flags a pasted command line carries
(`ServeExtras`, read back by `serve_extras`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from .options import MultiValue, OptionalValue, flag_option, note_flag, refuse_flag


PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el", "client_queue_time", "e2el_including_client_queue")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
BACKENDS = {"openai-chat": "chat", "openai": "completions", "vllm": "completions"}
ENDPOINTS = {"chat": "chat", "completions": "completions",
             "/v1/chat/completions": "chat", "/v1/completions": "completions"}


def resolve_endpoint(backend: str | None, endpoint: str | None) -> str:
    """capsim's endpoint ('chat' | 'completions') from --backend and --endpoint (either form)."""
    by_backend = None
    if backend is not None:
        if backend not in BACKENDS:
            raise click.BadParameter(f"capsim speaks {', '.join(BACKENDS)} (OpenAI-compatible streaming), "
                                     f"not {backend!r}", param_hint="--backend")
        by_backend = BACKENDS[backend]
    by_endpoint = None
    if endpoint is not None:
        e = endpoint.strip()
        key = e if e in ENDPOINTS else "/" + e.lstrip("/")
        if key not in ENDPOINTS:
            raise click.BadParameter(f"capsim measures /v1/chat/completions (chat) or /v1/completions "
                                     f"(completions), not {endpoint!r}", param_hint="--endpoint")
        by_endpoint = ENDPOINTS[key]
    if by_backend and by_endpoint and by_backend != by_endpoint:
        raise click.UsageError(f"--backend {backend} sends {by_backend} requests but --endpoint {endpoint} "
                               f"takes {by_endpoint} requests")
    return by_endpoint or by_backend or "chat"


def backend_name(backend: str | None, endpoint: str) -> str:
    return backend or ("openai-chat" if endpoint == "chat" else "openai")


def resolve_url(url: str | None, base_url: str | None, host: str | None, port: int | None) -> str:
    """The server URL: positional URL, --base-url, or --host/--port (vllm bench serve's three ways)."""
    if url and base_url and url.rstrip("/") != base_url.rstrip("/"):
        raise click.UsageError(f"two server URLs: {url} and --base-url {base_url}; give one")
    u = url or base_url
    if u:
        return u
    if host is not None or port is not None:
        h = host or "127.0.0.1"
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"
        return f"http://{h}:{port if port is not None else 8000}"
    raise click.UsageError("no server: give its URL (capsim measure open URL, or --base-url URL, or --host/--port)")


def parse_goodput(pairs: Sequence[str]) -> dict[str, float]:
    """vllm bench serve's --goodput KEY:MS ... (check_goodput_args): ttft, tpot, e2el in ms, >= 0."""
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, val = pair.partition(":")
        try:
            v = float(val) if sep else math.nan
        except ValueError:
            v = math.nan
        if not sep or math.isnan(v):
            raise click.BadParameter(f"{pair!r}: give KEY:VALUE, the value a number in milliseconds "
                                     f"(e.g. ttft:500 tpot:50)", param_hint="--goodput")
        if name not in GOODPUT_METRICS:
            raise click.BadParameter(f"{pair!r}: the metric must be one of {', '.join(GOODPUT_METRICS)}",
                                     param_hint="--goodput")
        if v < 0:
            raise click.BadParameter(f"{pair!r}: the objective must be >= 0 ms", param_hint="--goodput")
        out[name] = v
    return out


def parse_metadata(items: Sequence[str], hint: str = "--metadata") -> dict[str, str]:
    """KEY=VALUE words (--metadata, --header) as a dict, keys and values stripped as vllm bench serve strips them."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise click.BadParameter(f"{item!r}: give KEY=VALUE", param_hint=hint)
        out[k.strip()] = v.strip()
    return out


def parse_percentiles(values: Sequence[float]) -> tuple[float, ...] | None:
    for p in values:
        if not 0 <= p <= 100:
            raise click.BadParameter(f"percentiles are between 0 and 100, got {p:g}", param_hint="--metric-percentiles")
    return tuple(values) or None


def summary_options(percentile_metrics, metric_percentiles, goodput) -> dict:
    """keyword arguments of simulator.summary.summarize_open from the three flags."""
    kw: dict[str, Any] = {}
    ps = parse_percentiles(metric_percentiles)
    if ps:
        kw["percentiles"] = ps
    if percentile_metrics:
        kw["metrics"] = tuple(dict.fromkeys(percentile_metrics))
    gp = parse_goodput(goodput)
    if gp:
        kw["goodput"] = gp
    return kw


def vllm_serve_options(f):
    """vllm bench serve's flags that `capsim measure open` and `capsim simulate open` share."""
    opts = [
        click.option("--base-url", default=None, metavar="URL",
                     help="The server (vllm bench serve's spelling of URL; a trailing /v1 is fine)."),
        click.option("--host", default=None, help="With --port, the server at http://HOST:PORT "
                                                   "(vllm bench serve: 127.0.0.1)."),
        click.option("--port", type=click.IntRange(1, 65535), default=None, help="(vllm bench serve: 8000)."),
        click.option("--backend", type=click.Choice(sorted(BACKENDS)), default=None,
                     help="openai-chat = chat, openai or vllm = completions. capsim's default is chat; "
                          "vllm bench serve's is openai (completions)."),
        click.option("--endpoint", default=None, metavar="PATH",
                     help="/v1/chat/completions (or chat) | /v1/completions (or completions) [capsim default: "
                          "chat; vllm bench serve's default: /v1/completions]."),
        click.option("--served-model-name", default=None,
                     help="The model name sent in requests (default: --model), as vllm bench serve."),
        click.option("--save-result", cls=OptionalValue, metavar="[FILE]",
                     help="Write vllm bench serve's result JSON: to FILE if one (*.json) follows, else to "
                          "--result-dir/--result-filename (default name as vllm's: "
                          "LABEL-RATEqps[-concurrencyC]-MODEL-DATE.json)."),
        click.option("--save-detailed", is_flag=True, help="Per-request arrays in the result JSON."),
        click.option("--append-result", is_flag=True, help="Append the result JSON to the file (one per line)."),
        click.option("--result-dir", default=None, help="Folder of the result JSON (default: here)."),
        click.option("--result-filename", default=None, help="Name of the result JSON."),
        click.option("--percentile-metrics", cls=MultiValue, item=click.Choice(PERCENTILE_METRICS),
                     help="Metrics to report percentiles of, e.g. ttft,tpot,itl,e2el [capsim default: "
                          "ttft,tpot,itl,e2el; vllm bench serve's: ttft,tpot,itl]."),
        click.option("--metric-percentiles", cls=MultiValue, item=click.FLOAT,
                     help="Percentiles to report, e.g. 50,90,99 [capsim default: 50,90,95,99; "
                          "vllm bench serve's: 99]."),
        click.option("--goodput", cls=MultiValue, item=click.STRING, accept=r"[A-Za-z_0-9]+:.*",
                     metavar="KEY:MS", help="SLOs for request_goodput, e.g. ttft:500 tpot:50 e2el:30000 "
                                            "(ms): requests meeting every one, per second."),
        click.option("--metadata", cls=MultiValue, item=click.STRING, sep=None, accept=r"[^=\s]+=.*",
                     metavar="KEY=VALUE", help="Extra keys for the result JSON, e.g. version=0.3.3 tp=1."),
        click.option("--label", default=None, help="The result's label (and file-name prefix; default: --backend)."),
        click.option("--disable-tqdm", is_flag=True, help="No progress bar (vllm bench serve's spelling)."),
        flag_option("--input-len", click.IntRange(min=1), _remember,
                    "Prompt tokens: --random-input-len's general spelling (it wins, as in vllm bench serve)."),
        flag_option("--output-len", click.IntRange(min=1), _remember,
                    "Output tokens: sets --random-output-len and --sharegpt-output-len (vllm bench serve)."),
        flag_option("--ignore-eos", None, _remember,
                    "Every answer runs to its max_tokens (random requests always do, as vllm bench serve's)."),
        flag_option("--num-warmups", click.IntRange(min=0), _remember,
                    "Requests of the first prompt sent before the measured run, not counted (a simulated "
                    "server is warm already; one that caches prefixes then holds that prompt)."),
        flag_option("--disable-shuffle", None, _remember, "ShareGPT in file order, not shuffled by --seed."),
        flag_option("--no-oversample", None, _remember,
                    "Where fewer ShareGPT conversations pass vLLM's length filter than --num-prompts, send those "
                    "only (default: repeat some of them up to --num-prompts, as vllm bench serve does)."),
        flag_option("--logprobs", int, _remember,
                    "Log-probabilities per token the server computes and returns (completions; vllm bench serve "
                    "sends none with chat). A simulated step takes as long whatever the logprobs."),
        flag_option("--insecure", None, _remember,
                    "Do not check the server's TLS certificate (a self-signed one; vllm bench serve's). Without "
                    "it an https URL is checked against the system's trust store (SSL_CERT_FILE honoured)."),
        flag_option("--ramp-up-strategy", click.Choice(["linear", "exponential"]), _remember,
                    "A rate that grows over the run, request by request, from --ramp-up-start-rps to "
                    "--ramp-up-end-rps (in place of --request-rate; vllm bench serve)."),
        flag_option("--ramp-up-start-rps", click.FLOAT, _remember,
                    "The ramp's first rate, req/s (vllm bench serve takes whole numbers; capsim also 0.5)."),
        flag_option("--ramp-up-end-rps", click.FLOAT, _remember, "The ramp's last rate, req/s."),
        flag_option("--probe-request-rate", click.FLOAT, _remember,
                    "Beside the load, one-token \"Hi\" requests, each 1/RATE s after the last one ended, outside "
                    "--max-concurrency: how long a quick question waits on the busy box (probe_* keys; vllm "
                    "bench serve's). 0: none."),
        flag_option("--plot-timeline", None, _remember,
                    "Draw each request's TTFT and gaps, coloured by --timeline-itl-thresholds, beside the result "
                    "JSON as RESULT.timeline.png (vllm bench serve's segments; it writes plotly HTML)."),
        flag_option("--timeline-itl-thresholds", str, _remember,
                    "The timeline's two ITL bounds in ms, e.g. 25,50 (vllm bench serve's default)."),
        flag_option("--plot-dataset-stats", None, _remember,
                    "Draw vllm bench serve's figure of the requests' prompt and output tokens beside the result "
                    "JSON as RESULT.dataset_stats.png."),
        click.option("--header", cls=MultiValue, item=click.STRING, sep=None,
                     accept=r"\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*=.*", metavar="KEY=VALUE", expose_value=False,
                     callback=_remember,
                     help="HTTP headers sent with every request, e.g. x-team=ops (vllm bench serve)."),
        click.option("--lora-modules", cls=MultiValue, item=click.STRING, sep=None, metavar="NAME",
                     expose_value=False, callback=_remember,
                     help="LoRA adapters the server serves (names of its --lora-modules): each measured request "
                          "names one as its model, as vllm bench serve's do. A simulation runs each request on "
                          "the profile's model (adapters are not modelled)."),
        flag_option("--lora-assignment", click.Choice(["random", "round-robin"]), _remember,
                    "Which adapter a request names: random (drawn as vllm bench serve draws it with --seed) "
                    "or round-robin."),
        flag_option("--request-id-prefix", str, _remember,
                    "Measured requests are named PREFIX + their index in an x-request-id header (vllm bench "
                    "serve's default: bench-XXXXXXXX-, random)."),
        flag_option("--ready-check-timeout-sec", int, _remember,
                    "Wait up to this many seconds for a server that does not answer yet (still starting), "
                    "asking every 5 s, then send the first prompt once before the run, unmeasured, as vllm bench "
                    "serve's test request (a server that caches prefixes then holds it; simulated too); 0 or "
                    "less: neither, the first error is the command's [default: 0, as vllm bench serve's]."),
        *(flag_option(n, t, _remember, "Sampling, sent in every request as vllm bench serve does (a "
                                       "simulated step takes as long whatever the sampling)." if n == "--temperature"
                      else None) for n, t in SAMPLING_FLAGS.items()),
        *(flag_option(n, t) for n, t in NO_OP_FLAGS.items()),
        *(flag_option(n, t, note_flag(why)) for n, (t, why) in SERVE_NOTED_FLAGS.items()),
        *(flag_option(n, t, note_flag(OTHER_DATASET.format(ds))) for n, (t, ds) in OTHER_DATASET_FLAGS.items()),
        flag_option("--random-batch-size", int,
                    _refuse_unless(1, "batched prompts (vllm bench serve's embeddings benchmark) are not supported: "
                                      "one prompt a request")),
        *(flag_option(n, int, _remember, why) for n, why in PREFIX_REPETITION_FLAGS.items()),
        *(flag_option(n, t, refuse_flag(why)) for n, (t, why) in REFUSED_FLAGS.items()),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


# vllm bench serve's flags beyond the shared ones above, so that its command lines paste in whole. Their
# values go to ctx.meta (not to each command's signature) and `serve_extras()` reads them back.
SAMPLING_FLAGS = {"--temperature": float, "--top-p": float, "--top-k": int, "--min-p": float,
                  "--frequency-penalty": float, "--presence-penalty": float, "--repetition-penalty": float}
# Flags that change nothing capsim measures or simulates: prompt lengths come from the server's /tokenize
# (measure) or the profile (simulate); --chat-template-kwargs is for client-side templates of datasets capsim
# does not run.
NO_OP_FLAGS = {"--trust-remote-code": None, "--skip-tokenizer-init": None, "--skip-chat-template": None,
               "--tokenizer-mode": str, "--chat-template-kwargs": str}
# Flags accepted with a note: what they ask for is not done, and the note says what capsim does instead.
SERVE_NOTED_FLAGS = {# vLLM 0.32 parses it and reads it nowhere: its requests carry no beam search, nor capsim's
                     "--use-beam-search": (None, "vllm bench serve reads it nowhere and its requests sample as "
                                                 "ever; so do capsim's"),
                     "--enable-multimodal-chat": (None, "multimodal chat shapes image and video entries, which "
                                                        "capsim does not send (text prompts only)")}
# Flags of vllm bench serve's other datasets (capsim runs random, sharegpt and prefix_repetition, and refuses any other
# --dataset-name): vllm bench serve reads each for its own dataset only and takes it unread with any other,
# so a line that carries one runs, with a note.
OTHER_DATASET = ("only vllm bench serve's {} dataset reads it (capsim runs random, sharegpt and prefix_repetition): "
                 "unread, as in vllm bench serve")
OTHER_DATASET_FLAGS = {  # each with vLLM's type, so that a value vllm bench serve refuses is refused
    "--custom-output-len": (int, "custom"), "--custom-ensure-client-side-data": (None, "custom"),
    "--spec-bench-output-len": (int, "spec_bench"), "--spec-bench-category": (str, "spec_bench"),
    "--timed-trace-chunk-hash-size": (int, "timed trace"), "--timed-trace-sec-multiplier": (float, "timed trace"),
    **{f"--timed-trace-label-{k}": (str, "timed trace") for k in ("timestamp", "input-length", "output-length",
                                                                  "hash-ids")},
    "--blazedit-min-distance": (float, "blazedit"), "--blazedit-max-distance": (float, "blazedit"),
    "--asr-max-audio-len-sec": (float, "ASR"), "--asr-min-audio-len-sec": (float, "ASR"),
    "--no-reranker": (None, "random-rerank"),
    "--random-mm-base-items-per-request": (int, "random-mm"),
    "--random-mm-num-mm-items-range-ratio": (float, "random-mm"),
    "--random-mm-limit-mm-per-prompt": (str, "random-mm"), "--random-mm-bucket-config": (str, "random-mm"),
    **{f"--hf-{k}": (str, "hf") for k in ("subset", "split", "name")}, "--hf-output-len": (int, "hf"),
    "--no-stream": (None, "hf"),  # loads an HF dataset without streaming it; the requests stream regardless
    "--bfcl-categories": (str, "BFCL"),
    "--speed-bench-dataset-subset": (str, "speed_bench"), "--speed-bench-output-len": (int, "speed_bench"),
    "--speed-bench-category": (str, "speed_bench"),
}
# --dataset-name prefix_repetition's flags (vllm bench serve's defaults: 256, 256, 10, 128)
PREFIX_REPETITION_FLAGS = {
    "--prefix-repetition-prefix-len": "Tokens of each prefix (--dataset-name prefix_repetition) [256].",
    "--prefix-repetition-suffix-len": "Tokens of each prompt after its prefix [256].",
    "--prefix-repetition-num-prefixes": "Prefixes; each starts --num-prompts // this many prompts [10].",
    "--prefix-repetition-output-len": "Output tokens of every request (--output-len overrides it) [128].",
}
# Flags of loads capsim does not run: refused with the reason, never dropped silently.
REFUSED_FLAGS = {
    "--self-timed": (None, "timed traces are not supported (random and sharegpt are)"),
    "--no-self-timed": (None, "timed traces are not supported (random and sharegpt are)"),
}


@dataclasses.dataclass(frozen=True)
class ServeExtras:
    """What vllm bench serve's further flags ask of a run (`serve_extras`)."""

    input_len: int | None = None  # --input-len: --random-input-len's general spelling
    output_len: int | None = None  # --output-len: --random-output-len's and --sharegpt-output-len's
    ignore_eos: bool = False
    num_warmups: int = 0
    disable_shuffle: bool = False
    no_oversample: bool = False  # --no-oversample: a ShareGPT file short of --num-prompts sends what it has
    sampling: dict = dataclasses.field(default_factory=dict)  # --temperature ... as vllm bench serve sends them
    headers: dict = dataclasses.field(default_factory=dict)  # --header KEY=VALUE
    request_id_prefix: str | None = None
    ready_check_timeout_sec: int = 0  # --ready-check-timeout-sec
    insecure: bool = False  # --insecure: the server's TLS certificate is not checked
    logprobs: int | None = None  # --logprobs: in every completions request, as vllm bench serve's
    ramp_up_strategy: str | None = None  # --ramp-up-strategy and its rates
    ramp_up_start_rps: float | None = None
    ramp_up_end_rps: float | None = None
    probe_request_rate: float = 0.0  # --probe-request-rate: the one-token probe beside the load; 0: none
    plot_timeline: bool = False  # --plot-timeline: RESULT.timeline.png
    plot_dataset_stats: bool = False  # --plot-dataset-stats: RESULT.dataset_stats.png
    itl_thresholds_s: tuple[float, float] = (0.025, 0.050)  # --timeline-itl-thresholds, in seconds
    lora_modules: tuple[str, ...] = ()  # --lora-modules: the adapters the measured requests name
    lora_assignment: str = "random"  # --lora-assignment
    prefix_repetition: dict = dataclasses.field(default_factory=dict)  # the --prefix-repetition-* given

    @property
    def plots(self) -> bool:
        return self.plot_timeline or self.plot_dataset_stats

    def _figures(self, result: Path) -> list[tuple[Path, Callable[[dict, Path], None]]]:
        """The figures asked for: each one's path beside the result file and what draws it from a run's
        per-request arrays (the timeline as an image here, where vllm bench serve writes HTML)."""
        from simulator import bench_plots

        return [(result.with_suffix(sfx), draw) for on, sfx, draw in (
            (self.plot_timeline, ".timeline.png",
             lambda arrays, p: bench_plots.plot_timeline(arrays, p, self.itl_thresholds_s)),
            (self.plot_dataset_stats, ".dataset_stats.png", bench_plots.plot_dataset_stats)) if on]

    def draw_plots(self, result: Path, arrays: dict) -> list[Path]:
        """Draw the figures asked for from a run's per-request arrays (summary.result_arrays); their paths."""
        figures = self._figures(result)
        try:
            result.parent.mkdir(parents=True, exist_ok=True)  # vllm bench serve makes --result-dir
            for p, draw in figures:
                draw(arrays, p)
        except OSError as e:
            raise click.ClickException(f"cannot write the plot beside {result}: {e.strerror or e}") from None
        return [p for p, _ in figures]

    def open_loop(self, rate: float, burstiness: float, max_concurrency: int | None, seed: int):
        """The run's arrivals: --request-rate's, or the ramp's where --ramp-up-strategy names one; the probe; and
        the first prompt's sends before the run (the ready check's test request, --num-warmups)."""
        from simulator.load import OpenLoop, RampUp
        from simulator.records import RAMP_KEYS

        return OpenLoop(rate=rate, burstiness=burstiness, max_concurrency=max_concurrency, seed=seed,
                        ramp_up=RampUp.from_keys({k: getattr(self, k) for k in RAMP_KEYS}),
                        probe_rate=self.probe_request_rate,
                        warmups=OpenLoop.warmups_of(self.num_warmups, self.ready_check_timeout_sec))

    def lengths(self, random_input_len: int, random_output_len: int, sharegpt_output_len: int | None):
        """The dataset lengths, --input-len / --output-len over the dataset flags (vllm bench serve's order)."""
        return (self.input_len or random_input_len, self.output_len or random_output_len,
                self.output_len or sharegpt_output_len)

    def prefix_repetition_for(self, dataset_name: str) -> dict:
        """The prefix_repetition dataset's lengths given (--output-len over its output length, vllm bench
        serve's order); with another dataset none, and a note that the flags given went unread."""
        if dataset_name != "prefix_repetition":
            for k in self.prefix_repetition:
                click.get_current_context().meta.setdefault("capsim.flag_notes", {})[
                    "--prefix-repetition-" + k.replace("_", "-")] = OTHER_DATASET.format("prefix_repetition")
            return {}
        return self.prefix_repetition | ({"output_len": self.output_len} if self.output_len else {})

    def request_body(self, extra_body: dict, endpoint: str = "chat") -> dict:
        """The fields added to every request: --logprobs in a completions body (its base, where vllm bench serve
        writes it; its chat body has none), sampling over it, --extra-body over them (vllm bench serve's
        order), ignore_eos where asked."""
        base = {"logprobs": self.logprobs} if endpoint == "completions" and self.logprobs is not None else {}
        body = {**base, **self.sampling, **extra_body}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


def _remember(ctx, param, value):
    if value is not None and value is not False:
        ctx.meta.setdefault("capsim.serve_extras", {})[param.name] = value
    return value


def vllm_profiler_option(f):
    """vllm bench serve's --profile (the server's profiler around the run), refused: `capsim measure open`
    only, since `capsim simulate open`'s --profile is the box's profile."""
    return flag_option("--profile", None, refuse_flag("capsim measure does not start the server's profiler "
                                                      "(run it with vllm bench serve)"))(f)


def _refuse_unless(default, reason: str):
    """Refuse the flag with `reason` unless it is given its default (vllm bench serve's, a no-op)."""
    def cb(ctx, param, value):
        if value is not None and value != default:
            raise click.UsageError(f"{param.opts[0]} {value}: {reason}")
        return value
    return cb


def serve_extras(ctx: click.Context | None = None) -> ServeExtras:
    """The values of vllm bench serve's further flags given to this command (all defaults if none)."""
    from simulator.records import RAMP_KEYS

    ctx = ctx or click.get_current_context()
    got = ctx.meta.get("capsim.serve_extras", {})
    sampling = {k: got[k] for k in (n.lstrip("-").replace("-", "_") for n in SAMPLING_FLAGS) if k in got}
    headers = parse_metadata(got.get("header") or (), "--header")
    if "ramp_up_strategy" not in got:  # vllm bench serve reads the ramp's rates only with a strategy
        for k in ("ramp_up_start_rps", "ramp_up_end_rps"):
            if k in got:
                ctx.meta.setdefault("capsim.flag_notes", {})["--" + k.replace("_", "-")] = \
                    "unread without --ramp-up-strategy, as in vllm bench serve"
    if "lora_assignment" in got and not got.get("lora_modules"):
        ctx.meta.setdefault("capsim.flag_notes", {})["--lora-assignment"] = \
            "unread without --lora-modules, as in vllm bench serve"
    thresholds = got.get("timeline_itl_thresholds")
    itl_s = ServeExtras.itl_thresholds_s
    if thresholds is not None and not got.get("plot_timeline"):
        ctx.meta.setdefault("capsim.flag_notes", {})["--timeline-itl-thresholds"] = \
            "unread without --plot-timeline, as in vllm bench serve"
    elif thresholds is not None:  # vllm bench serve checks them before the run, with --plot-timeline only
        try:
            ms = [float(t.strip()) for t in thresholds.split(",")]
        except ValueError:
            ms = []
        if len(ms) != 2 or not all(math.isfinite(m) for m in ms):
            raise click.UsageError(f"--timeline-itl-thresholds {thresholds}: two ITL bounds in ms, e.g. 25,50")
        itl_s = (ms[0] / 1000.0, ms[1] / 1000.0)
    return ServeExtras(input_len=got.get("input_len"), output_len=got.get("output_len"),
                       ignore_eos=bool(got.get("ignore_eos")), num_warmups=int(got.get("num_warmups") or 0),
                       disable_shuffle=bool(got.get("disable_shuffle")), no_oversample=bool(got.get("no_oversample")),
                       sampling=sampling, headers=headers,
                       request_id_prefix=got.get("request_id_prefix"),
                       ready_check_timeout_sec=int(got.get("ready_check_timeout_sec") or 0),
                       insecure=bool(got.get("insecure")), logprobs=got.get("logprobs"),
                       probe_request_rate=got.get("probe_request_rate") or 0.0,
                       plot_timeline=bool(got.get("plot_timeline")),
                       plot_dataset_stats=bool(got.get("plot_dataset_stats")),
                       itl_thresholds_s=itl_s, lora_modules=tuple(got.get("lora_modules") or ()),
                       lora_assignment=got.get("lora_assignment") or "random",
                       prefix_repetition={k[len("prefix_repetition_"):]: got[k] for k in
                                          (n.lstrip("-").replace("-", "_") for n in PREFIX_REPETITION_FLAGS)
                                          if k in got},
                       **{k: got.get(k) for k in RAMP_KEYS})


def result_path(save_result: str | None, append: bool, result_dir: str | None, result_filename: str | None,
                label: str | None, backend: str, rate: float, max_concurrency: int | None, model_id: str,
                date: str, ramp_up=None) -> Path | None:
    """Where vllm bench serve writes its result JSON (compute_result_filename), or None. `ramp_up`: the
    run's simulator.load.RampUp, which names the file in place of the rate."""
    if save_result is None and not append:
        return None
    if save_result:  # an explicit FILE
        name = save_result
    elif result_filename:
        name = result_filename
    else:
        conc = f"-concurrency{max_concurrency}" if max_concurrency is not None else ""
        if ramp_up is not None:
            r = ramp_up.keys()
            traffic = f"ramp-up-{r['ramp_up_strategy']}-{r['ramp_up_start_rps']}qps-{r['ramp_up_end_rps']}qps"
        else:
            traffic = f"{float(rate)}qps"
        name = f"{label or backend}-{traffic}{conc}-{str(model_id).split('/')[-1]}-{date}.json"
    p = Path(name)
    if result_dir and not p.is_absolute():
        p = Path(result_dir) / p
    return p


def check_result_dest(save_result, append, result_dir, result_filename, ex: ServeExtras | None = None) -> None:
    """Before any work: the result file's folder can be made and written (where only --plot-timeline is
    asked for, the folder of the file its figure is named after, as vllm bench serve names it)."""
    ex = ex or ServeExtras()
    if ex.plot_dataset_stats and not (ex.plot_timeline or save_result is not None or append):
        raise click.UsageError("--plot-dataset-stats: needs --save-result or --plot-timeline (the figure is named "
                               "after the result file; vllm bench serve fails at its end without one)")
    if save_result is None and not append:
        if not ex.plot_timeline:
            if result_dir or result_filename:
                click.echo("note: --result-dir/--result-filename take effect with --save-result "
                           "(as in vllm bench serve)", err=True)
            return
        save_result = ""
    p = result_path(save_result, append, result_dir, result_filename or "x.json", None, "b", 1.0, None, "m", "d")
    folder = p.parent if str(p.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if p.is_dir():
        raise click.ClickException(f"--save-result {p}: is a folder, not a file")
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise click.ClickException(f"--save-result: cannot write in {folder}")


def write_result(path: Path, result: dict, append: bool, redact: Callable[[str], str] = lambda s: s) -> None:
    from measure.runfiles import json_dumps, atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = redact(json_dumps(result))
        if append and path.exists() and path.stat().st_size:
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n" + text)
        else:
            atomic_write(path, text + ("\n" if not append else ""))
    except OSError as e:
        raise click.ClickException(f"cannot write --save-result {path}: {e.strerror or e}") from None


def result_header(*, backend: str, label: str | None, model_id: str | None, tokenizer_id: str | None,
                  num_prompts: int, rate: float, burstiness: float, max_concurrency: int | None,
                  metadata: dict[str, str], date: str | None = None, ramp_up=None) -> dict:
    """The top of vllm bench serve's result JSON (main_async), in its order; `ramp_up` as result_path's."""
    out: dict[str, Any] = {"date": date or _dt.datetime.now().strftime("%Y%m%d-%H%M%S"), "endpoint_type": backend,
                           "backend": backend, "label": label, "model_id": model_id, "tokenizer_id": tokenizer_id,
                           "num_prompts": num_prompts}
    out.update(metadata)
    out.update({"request_rate": "inf" if math.isinf(rate) else rate, "burstiness": burstiness,
                "max_concurrency": max_concurrency})
    if ramp_up is not None:
        out.update(ramp_up.keys())
    return out


@dataclasses.dataclass(frozen=True)
class ResultFile:
    """An open-loop run's result JSON: where vllm bench serve's flags put it, and its head."""

    path: Path
    header: dict
    saving: bool  # --save-result or --append-result; else only --plot-timeline's figures are named after it


def result_file(ex: ServeExtras, *, save_result: str | None, append: bool, result_dir: str | None,
                result_filename: str | None, label: str | None, backend: str | None, endpoint: str,
                model_id: str, tokenizer: str | None, num_prompts: int, rate: float, burstiness: float,
                max_concurrency: int | None, metadata: dict[str, str], date: str, ramp_up=None) -> ResultFile | None:
    """The run's result file, or None where no flag asks for it or a figure named after it."""
    saving = save_result is not None or append
    if not (saving or ex.plot_timeline):
        return None
    bk = backend_name(backend, endpoint)
    path = result_path(save_result if saving else "", append, result_dir, result_filename, label, bk, rate,
                       max_concurrency, model_id, date, ramp_up=ramp_up)
    header = result_header(backend=bk, label=label, model_id=model_id, tokenizer_id=tokenizer or model_id,
                           num_prompts=num_prompts, rate=rate, burstiness=burstiness, max_concurrency=max_concurrency,
                           metadata=metadata, date=date, ramp_up=ramp_up)
    return ResultFile(path, header, saving)
