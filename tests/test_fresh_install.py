"""The README's first command on a plain install (no extras) in a fresh venv, then the other main jobs
that need no server: `capsim validate` (the seed's H-J, whose ShareGPT test I ships its lengths),
`capsim simulate open` and `capsim profile show`. Slow-ish (a venv and pip's cache: about a minute)."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_server import clean_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(ROOT)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    env = clean_env()
    env["CAPSIM_PROFILE_DIR"] = str(venv.parent / "profiles")  # no profile calibrated before
    return venv / "bin" / "capsim", env


def _run(plain, *args):
    capsim, env = plain
    r = subprocess.run([str(capsim), *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT.parent)
    assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
    return r.stdout


def test_readme_main_job_on_a_plain_install(plain):
    out = _run(plain, "plan")
    assert "staff" in out and "Binds first" in out


def test_validate_on_a_plain_install(plain):
    out = _run(plain, "validate")
    for test in ("H", "I", "J"):
        assert f" {test} " in out or f"{test}  " in out
    assert "median_ttft_ms" in out


def test_simulate_and_profile_show_on_a_plain_install(plain):
    assert "Mean TTFT (ms):" in _run(plain, "simulate", "open", "--num-prompts", "20")
    assert "roofline" in _run(plain, "profile", "show", "spark-gemma4-26b-a4b")
