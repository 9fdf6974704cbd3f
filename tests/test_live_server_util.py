"""tests/live_server.py's start, without vLLM: the decision to start again on another port when the
chosen one was taken before vLLM bound it (a pure function of the log), and the loop around it run
against a stand-in for vLLM (a small HTTP server taking the same --port flag, binding as vLLM does).
"""
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import live_server as ls

# the tail of a vLLM 0.32 log whose port was taken (setup_server binds before the engine starts)
TAKEN_LOG = """\
(APIServer pid=4242) INFO 12-02 00:37:01 [utils.py:233] non-default args: {'host': '127.0.0.1', 'port': 40123}
(APIServer pid=4242) Traceback (most recent call last):
(APIServer pid=4242)   File "/root/.cache/capsim/vllm-venv/lib/python3.11/site-packages/vllm/entrypoints/launchers/launcher.py", line 348, in create_server_socket
(APIServer pid=4242)     sock.bind(addr)
(APIServer pid=4242) OSError: [Errno 98] Address already in use
"""
# a log that starts as usual, warning about Errno 24 (not a port)
STARTING_LOG = """\
(APIServer pid=2408) WARNING 12-02 00:37:01 [system_utils.py:255] Found ulimit of 20000 and failed to automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n
(APIServer pid=2408) INFO 12-02 00:38:02 [entry.py:140] Starting vLLM server on http://127.0.0.1:36333
"""
OTHER_CRASH_LOG = """\
(EngineCore pid=2422) ValueError: No available memory for the cache blocks. Try increasing `VLLM_CPU_KVCACHE_SPACE`.
"""


def test_a_taken_port_is_read_from_the_log():
    assert ls.port_taken(TAKEN_LOG)
    assert ls.port_taken("OSError: [Errno 48] Address already in use")  # macOS
    assert ls.port_taken("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:5555')")
    assert not ls.port_taken(STARTING_LOG)
    assert not ls.port_taken(OTHER_CRASH_LOG)
    assert not ls.port_taken("")


def test_start_again_only_on_a_taken_port_chosen_here_with_tries_left():
    assert ls.PORT_TRIES >= 2
    assert ls.retry_on_new_port(TAKEN_LOG, True, 1)
    assert ls.retry_on_new_port(TAKEN_LOG, True, ls.PORT_TRIES - 1)
    assert not ls.retry_on_new_port(TAKEN_LOG, True, ls.PORT_TRIES)  # bounded
    assert not ls.retry_on_new_port(TAKEN_LOG, False, 1)  # the caller's port stays theirs
    assert not ls.retry_on_new_port(OTHER_CRASH_LOG, True, 1)  # another failure is reported, not retried
    assert not ls.retry_on_new_port(STARTING_LOG, True, 1)


# ------------------------------------------------------------------ the loop, with a stand-in for vLLM
STAND_IN = """\
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(b'{"data": [{"id": "stand-in"}]}')

    def log_message(self, *a):
        pass

print("stand-in starting on", port, flush=True)
# binds with SO_REUSEADDR, as vLLM's create_server_socket does; a taken port raises
# OSError: [Errno 98] Address already in use and the traceback goes to the log
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


class _Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"data": [{"id": "someone else"}]}')

    def log_message(self, *a):
        pass


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """start_vllm runs the stand-in instead of vLLM; ports: the list free_port() hands out first."""
    script = tmp_path / "python"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    ports: list[int] = []
    real_free = ls.free_port
    monkeypatch.setattr(ls, "vllm_available", lambda: True)
    monkeypatch.setattr(ls, "venv_python", lambda: script)
    monkeypatch.setattr(ls, "free_port", lambda: ports.pop(0) if ports else real_free())
    return ports


def _held_port():
    """A socket bound (not listening) on a free port, as a process that has just taken it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def _log(tmp_path: Path, port: int) -> str:
    return (tmp_path / f"vllm-{port}.log").read_text()


def test_a_port_taken_before_the_bind_is_replaced_and_the_logs_say_so(stand_in, tmp_path):
    held, taken = _held_port()
    try:
        stand_in.append(taken)
        h = ls.start_vllm(timeout=60, log_dir=tmp_path)
        try:
            assert h.port != taken and h.url == f"http://127.0.0.1:{h.port}" and h.alive()
            first, second = _log(tmp_path, taken), _log(tmp_path, h.port)
            assert "Address already in use" in first
            assert f"# port {taken} was taken before vLLM bound it" in first and "try 2 of" in first
            assert f"# earlier: port {taken} was taken" in second
        finally:
            h.stop()
        assert not h.alive()
    finally:
        held.close()


def test_another_server_answering_on_the_port_is_not_taken_for_ours(stand_in, tmp_path):
    """The port's new owner answers /v1/models: our server, which dies at its bind, must not pass for
    ready because of those answers (where /proc tells whose the listening socket is)."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc: whose socket answers cannot be told here")
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        stand_in.append(other.server_address[1])
        h = ls.start_vllm(timeout=60, log_dir=tmp_path)
        try:
            assert h.port != other.server_address[1]
        finally:
            h.stop()
        assert "# another process answers on port" in _log(tmp_path, other.server_address[1])
    finally:
        other.shutdown()
        other.server_close()


def test_a_callers_taken_port_is_reported_not_replaced(stand_in, tmp_path):
    held, taken = _held_port()
    try:
        with pytest.raises(ls.VLLMStartError, match="Address already in use") as e:
            ls.start_vllm(taken, timeout=60, log_dir=tmp_path)
        assert "earlier" not in str(e.value)
        assert sorted(p.name for p in tmp_path.glob("vllm-*.log")) == [f"vllm-{taken}.log"]
    finally:
        held.close()


def test_the_tries_are_bounded(stand_in, tmp_path):
    helds = [_held_port() for _ in range(ls.PORT_TRIES)]
    try:
        stand_in.extend(p for _, p in helds)
        with pytest.raises(ls.VLLMStartError, match="Address already in use") as e:
            ls.start_vllm(timeout=60, log_dir=tmp_path)
        assert str(e.value).count("(earlier: port") == ls.PORT_TRIES - 1
        assert len(list(tmp_path.glob("vllm-*.log"))) == ls.PORT_TRIES
    finally:
        for s, _ in helds:
            s.close()


def test_whose_listening_socket_it_is():
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc")
    mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    mine.bind(("127.0.0.1", 0))
    mine.listen()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        port = mine.getsockname()[1]
        assert not ls.answered_by_another(port, os.getpgid(0))  # this process's group holds it
        assert ls.answered_by_another(port, child.pid)  # another group's server would not
        assert not ls.answered_by_another(ls.free_port(), child.pid)  # nobody listens: nothing to tell
    finally:
        child.kill()
        child.wait()
        mine.close()
