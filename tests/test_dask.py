"""`capsim plan` on a real Dask cluster (issue 12): a LocalCluster of two worker
processes on loopback, started by the test. The plan must be the local plan (the
whole result, not just the staff count) with the same seeds, and an unreachable
scheduler must give one clear line.

Kept small (a chat office of 60 requests, 4 replications) so the module runs in
well under a minute on two cores, cluster start included.
"""
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import simulator.evaluator as E
from simulator.office import Office
from simulator.plan import PlanSettings, plan
from simulator.profile import load_profile
from tests.helpers import refused_port

if os.environ.get("CI", "").lower() in ("true", "1"):
    import distributed  # noqa: F401  CI installs the test extra, which holds dask: missing is a failure there
else:
    pytest.importorskip("distributed", reason="the dask extra: pip install -e '.[dask]'")

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--mix", "chat", "--requests", "60", "--warmup", "0", "--replications", "4", "--confidence", "0.75",
         "--staff-max", "300", "--sla", "p95_ttft<=1s", "--sla", "p50_tpot<=120ms", "--no-capacity", "--json"]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as c:
        yield c


def _executed(cluster) -> dict:
    """Tasks each worker process of the cluster has run so far."""
    from distributed import Client
    with Client(cluster.scheduler_address, timeout=30) as c:
        return c.run(lambda dask_worker: dask_worker.state.executed_count)


def _cli(args):
    from capsim.cli import main
    return CliRunner().invoke(main, ["plan", *args], catch_exceptions=False)


def test_plan_on_a_dask_cluster_equals_the_local_plan(cluster, monkeypatch):
    local = _cli([*SMALL, "--jobs", "2"])
    assert local.exit_code == 0, local.output
    backends = []
    real = E.joblib_map

    def spy(tasks, n_jobs):
        from joblib.parallel import get_active_backend
        backends.append(type(get_active_backend()[0]).__name__)
        return real(tasks, n_jobs)

    monkeypatch.setattr(E, "joblib_map", spy)
    before = _executed(cluster)
    remote = _cli([*SMALL, "--dask", cluster.scheduler_address])
    assert remote.exit_code == 0, remote.output
    # the replications really went to the cluster, through joblib's Dask backend
    assert backends and set(backends) == {"DaskDistributedBackend"}
    after = _executed(cluster)
    print("tasks per worker before/after:", before, after)
    assert len(after) == 2 and sum(after.values()) > sum(before.values())
    a, b = json.loads(local.output), json.loads(remote.output)
    assert a["staff"] > 0 and a["first_failing_staff"] is not None  # a real search with a failing point
    assert b == a


def test_library_call_under_joblib_dask_backend_equals_one_core(cluster):
    """The README's recipe: joblib.parallel_config(backend="dask") around plan(), capacity included."""
    import joblib
    from distributed import Client

    prof = load_profile()
    office = Office(mix=(("chat", 1.0),), requests=60, warmup_s=0.0)
    settings = PlanSettings(replications=4, confidence=0.75, staff_max=300, n_jobs=1,
                            capacity_thresholds_s=(10.0,), capacity_tol=0.3)
    sla = ["p95_ttft<=1s", "p50_tpot<=120ms"]
    here = plan(prof, office, sla, settings=settings)
    with Client(cluster.scheduler_address, timeout=30), joblib.parallel_config(backend="dask"):
        there = plan(prof, office, sla, settings=replace(settings, n_jobs=None))
    assert here.capacity_rps["10s"] is not None
    assert there.to_json() == here.to_json()


def test_unreachable_scheduler_is_one_clear_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with refused_port() as port:  # held for the whole run: no other process (no other test's scheduler) takes it
        out = subprocess.run([sys.executable, "-m", "capsim", "plan", *SMALL, "--dask", f"tcp://127.0.0.1:{port}",
                              "--dask-timeout", "2s"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode != 0
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in out.stderr
