"""Make `tests.live_server` importable (the repository root on sys.path)."""
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Hypothesis in CI: the same examples on every run (derandomized) and no example database
# carried between runs, so a red CI run is reproducible and a green one is not luck.
# Loaded here, before any test module is imported, so that the tests' own settings(...) (which
# name neither) inherit both: checked with CI=true, every @settings test of test_engine and
# test_plan had derandomize=True, database=None. The header of every pytest run says which is in force.
import os

try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI", "").lower() in ("true", "1"):
        settings.load_profile("ci")
        assert settings.default.derandomize and settings.default.database is None, settings.default
except ImportError:  # hypothesis is a test extra
    settings = None


def pytest_report_header(config):
    if settings is None:
        return "hypothesis: not installed"
    d = settings.default
    return f"hypothesis: derandomize={d.derandomize}, database={d.database!r}"


@pytest.fixture
def fake():
    """make(**FakeConfig fields) -> a started measure.fakeserver.FakeServer, stopped after the test."""
    from measure.fakeserver import FakeConfig, FakeServer
    servers = []

    def make(**kw):
        s = FakeServer(FakeConfig(**kw)).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
