"""``ray job submit`` path: a real local Ray head (``ray start --head`` with the dashboard / job server on
127.0.0.1), ``jobs/tmp.py`` submitted through ``JobSubmissionClient`` on the tiny generated chain, then the
MLflow run and the registered model (with lineage tags) are found in the sqlite tracking store.

Teardown stops only this head: every Ray process started for it carries this test's own ``--temp-dir``
in its command line, and exactly those processes are terminated by pid (``ray stop --force`` would kill
every Ray on the machine, including other test sessions').
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from afov_ray.config import config_hash, load_config
from afov_ray.reaper import session_pids

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]   # incl. module fixtures
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line or open files mention ``marker`` (Ray's agents rename themselves,
    e.g. ``ray::DashboardAgent``, but keep their logs under the head's temp dir open)."""
    return session_pids(marker, exclude={os.getpid()})


def _stop_head(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_with(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline and _pids_with(temp_dir):
            time.sleep(0.5)


def job_client(address: str, deadline_s: float = 300.0):
    """A ``JobSubmissionClient`` once the head's dashboard answers: on a loaded machine it can refuse
    connections for a while after ``ray start`` returns (seen once in a full run); bounded."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return JobSubmissionClient(address)
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def submit_when_ready(client, deadline_s: float = 300.0, **kw) -> str:
    """Submit once the head's job agent is up: right after ``ray start`` (and on a loaded machine) the job
    server answers "No available agent to submit job" for a while; wait on that state, bounded."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.submit_job(**kw)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="afovjs", dir="/tmp")   # short: Ray's socket paths must stay < 108 chars
    port, dash, agent_http, agent_grpc, metrics, runtime_env = (_free_port() for _ in range(6))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
           f"--object-store-memory={256 * 2**20}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           # every port explicit: the defaults (e.g. the agent's 52365) collide with any other Ray on the machine
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        _stop_head(temp_dir)


@pytest.fixture(scope="module")
def chain(ray_head, tmp_path_factory):
    """The tiny chain (reused when tests/tune built it in this session), built on the head if needed."""
    from tests.tune.tiny_chain import build_tiny_chain

    root = tmp_path_factory.getbasetemp() / "tiny_chain"
    if (root / "chain.json").exists():
        return build_tiny_chain(root)
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=ray_head["gcs"])
    try:
        return build_tiny_chain(root)
    finally:
        ray.shutdown()


def test_submitted_tmp_job_registers_model_with_lineage(ray_head, chain, tmp_path):
    import mlflow
    from ray.job_submission import JobStatus

    from afov_ray.train.jobs import TrainJob
    from afov_ray.train.tracking import data_fingerprint, git_commit

    teacher = chain["teachers"]["sim_clean"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"data.pairing={teacher['pairing']}", f"data.split_file={chain['split_file']}",
                 f"tmp.teacher_run={teacher['run']}", "model.name=minkunet18", "loop.num_epochs=1",
                 "loop.batch_size=2", "loop.optim.lr=0.1", "scale.num_workers=1", "scale.use_gpu=false",
                 "run.name=submitted", f"run.storage_path={tmp_path / 'ray_results'}", "run.max_failures=0",
                 f"loop.tracking.tracking_uri={uri}", "loop.tracking.experiment=submit",
                 "loop.tracking.register_as=afov-tmp", "loop.tracking.run_name=submitted-tmp"]
    config = REPO / "configs" / "nuscenes" / "tmp.yaml"
    entrypoint = " ".join([sys.executable, str(REPO / "jobs" / "tmp.py"), "--config", str(config), *overrides])
    client = job_client(ray_head["dashboard"])
    job_id = submit_when_ready(client, entrypoint=entrypoint,
                               runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}})
    deadline = time.monotonic() + 900
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job still {status}: {client.get_job_logs(job_id)[-3000:]}"
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "tmp finished" in logs

    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name("submit").experiment_id], "attributes.run_name = 'submitted-tmp'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(c.get_metric_history(runs[0].info.run_id, "train/loss_epoch")) == 1
    mv = c.get_model_version_by_alias("afov-tmp", "current")
    assert mv.run_id == runs[0].info.run_id
    tags = mv.tags
    assert tags["stage"] == "tmp"
    assert tags["teacher.run"] == teacher["run"] and tags["teacher.run_id"] == teacher["run_id"]
    assert tags["data.uri"] == teacher["pairing"]
    assert tags["data.sha256"] == data_fingerprint(teacher["pairing"])["data.sha256"]
    assert tags["config_hash"] == config_hash(load_config(TrainJob, config, overrides))
    assert tags["git_commit"] == git_commit() != "unknown"
    # the same tags are on the MLflow run itself
    assert runs[0].data.tags["data.sha256"] == tags["data.sha256"]
