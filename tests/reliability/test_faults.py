"""Faults while the real jobs run (``python jobs/<name>.py`` subprocesses on a generated dataset):

- the driver is killed (SIGKILL) in the middle of prepare, teacher and pair (with Ray): the same command run
  again completes; the folder has a valid manifest, the summary covers every item, no scene's rows are there
  twice, nothing half-written is left, and no Ray process of the killed session survives;
- the S3 endpoint goes away while prepare writes to ``s3://``: the job stops with a one-line error, no
  half-written object is visible, and once the endpoint is back the same command completes;
- the MLflow tracking server is down when a training job starts (a fast one-line error naming the redacted
  URI, exit 2), or goes down and comes back while a job trains (the job finishes, every epoch's metrics are in
  the run, the run is FINISHED).

The outages are made by a TCP proxy in front of the real server (moto's S3 server in this process; ``mlflow
server`` as a subprocess): "down" closes every open connection and refuses new ones, "back" listens again.
To the job that is what a server that went away looks like, and the server keeps its state.

A worker killed mid-epoch (and at a checkpoint boundary: ``checkpoint_every_steps=2``, death at step 5)
is tested in ``tests/train/test_runner_ray.py::test_worker_killed_mid_epoch_resumes_and_finishes``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from afov_ray.reaper import reap, session_pids
from tests.reliability.harness import (
    REPO,
    SYNTH,
    TALLY,
    TRACEBACK,
    Outcome,
    build_inputs,
    job_env,
    run_job,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]   # incl. module fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A TCP proxy 127.0.0.1:port -> 127.0.0.1:target that can go down (every connection closed, new ones
    refused) and come back on the same port."""

    def __init__(self, target: int):
        self.target, self.port = target, _free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None

    def up(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))   # SO_REUSEADDR: the same port again
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def down(self) -> None:
        self._server.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated dataset of 3 scenes with its reference outputs (made in this process, without Ray)."""
    return build_inputs(tmp_path_factory.mktemp("faults") / "base", synth=dict(SYNTH, num_scenes=3), extras=False)


@pytest.fixture
def ray_tmp():
    """A short RAY_TMPDIR for the jobs of one test; Ray processes of it still alive at the end are ended."""
    d = tempfile.mkdtemp(prefix="afovft", dir="/tmp")
    yield d
    if session_pids(d):
        reap(d)
    shutil.rmtree(d, ignore_errors=True)


def _record(case: str, code: int | None, expected: int, ok: bool, tb: bool, seconds: float, note: str = "") -> None:
    TALLY.append(Outcome("faults", case, expected, code, "result", correct=ok, traceback=tb, seconds=seconds,
                         note=note))


def _rows(folder: Path) -> dict[str, list[str]]:
    """{shard name: sample tokens of its rows} (teacher shards: one row per camera)."""
    out = {}
    for p in sorted(folder.glob("*.parquet")):
        t = pq.read_table(p)
        col = "sample_token" if "camera" not in t.column_names else None
        out[p.name] = (t.column(col).to_pylist() if col else
                       [f"{a}/{b}" for a, b in zip(t.column("sample_token").to_pylist(), t.column("camera").to_pylist())])
    return out


def _check_complete(out: Path, reference: Path, items: int) -> dict:
    """``out`` is a complete, verified shard folder with exactly the rows of ``reference`` (none twice)."""
    from afov_ray.storage.manifest import verify_manifest

    assert (out / "_manifest.json").exists()
    assert verify_manifest(str(out)) == []
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["items_total"] == items and summary["exit_code"] == 0, summary
    assert sorted(summary["done_before"] + summary["written"]) == sorted(p.stem for p in reference.glob("*.parquet"))
    got, want = _rows(out), _rows(reference)
    for name, rows in got.items():
        assert len(rows) == len(set(rows)), f"{name}: rows written twice"
    assert got == want
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"
    return summary


def _kill_mid_pass(job: str, args: list[str], done_dir: Path, cwd: Path, env: dict, timeout: float = 480) -> None:
    """Start the job; SIGKILL its driver as soon as its first item is done (a record in ``done_dir``)."""
    cmd = [sys.executable, str(REPO / "jobs" / f"{job}.py"), *args]
    with open(cwd / f"{job}.killed.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=cwd, env=job_env(env), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not (done_dir.exists() and any(done_dir.glob("*.json"))):
                if p.poll() is not None:
                    raise AssertionError(f"{job} ended (exit {p.returncode}) before the kill:\n"
                                         + (cwd / f"{job}.killed.log").read_text()[-3000:])
                assert time.monotonic() < deadline, f"{job}: no item done in {timeout} s"
                time.sleep(0.05)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()


def _wait_no_ray(ray_tmp: str, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    while session_pids(ray_tmp) and time.monotonic() < deadline:
        time.sleep(1)
    return session_pids(ray_tmp)


STAGES = {
    # stage: (job, args, done folder, reference folder, items)
    "prepare": ("prepare", ["prepare.dataroot={base}/ns", "out={new}", "prepare.exec.progress=false",
                            "prepare.exec.cpus_per_item=0.5", "num_cpus=2"],
                "{new}/sweeps/_done", "{base}/out/sweeps"),
    "teacher": ("teacher", ["sweeps={base}/out/sweeps", "out={new}", "teacher.dataroot={base}/ns",
                            "teacher.exec.progress=false", "teacher.exec.cpus_per_item=0.5", "num_cpus=2"],
                "{new}/{run_id}/images/_done", "{base}/out/teacher/{run_id}/images"),
    "pair": ("pair", ["sweeps={base}/out/sweeps", "teacher_run={base}/out/teacher/{run_id}", "out={new}",
                      "pair.exec.progress=false", "pair.exec.cpus_per_item=0.5", "num_cpus=2"],
             "{new}/_done", "{base}/out/pairing"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_driver_killed_mid_pass_then_rerun_completes(stage, data, tmp_path, ray_tmp):
    job, args, done, ref = STAGES[stage]
    fmt = dict(base=data.root, new=tmp_path / "out", run_id=data.run_id)
    args = [a.format(**fmt) for a in args]
    env = {"RAY_TMPDIR": ray_tmp}
    t0 = time.perf_counter()
    _kill_mid_pass(job, args, Path(done.format(**fmt)), tmp_path, env)
    left = _wait_no_ray(ray_tmp)
    assert not left, f"Ray processes of the killed driver left behind: {left}"
    proc = run_job(job, args, tmp_path, env=env, timeout=480)
    tb = TRACEBACK in proc.stderr
    ok = False
    try:
        assert proc.returncode == 0 and not tb, proc.stderr[-3000:]
        out = Path(done.format(**fmt)).parent
        summary = _check_complete(out, Path(ref.format(**fmt)), items=3)
        assert summary["done_before"], "the rerun redid everything: the killed run's finished items were lost"
        key = {"prepare": "keyframes", "teacher": "images", "pair": "keyframes"}[stage]
        assert summary["stats"][key] == {"prepare": 6, "teacher": 36, "pair": 6}[stage]
        ok = True
    finally:
        _record(f"driver_killed_during_{stage}", proc.returncode, 0, ok, tb, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# S3 endpoint down mid-write


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server in this process behind a Proxy; yields (proxy, boto3 client of the server itself)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    for name in ("werkzeug", "moto"):
        logging.getLogger(name).setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = Proxy(port)
    proxy.up()
    creds = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AFOV_S3_ENDPOINT", raising=False)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **creds)
    client.create_bucket(Bucket="afov")
    try:
        yield proxy, client
    finally:
        proxy.down()
        server.stop()


def test_s3_endpoint_down_mid_write_then_rerun_completes(s3, data, tmp_path):
    import hashlib

    import pyarrow as pa

    from afov_ray.storage.manifest import verify_manifest

    proxy, client = s3
    args = [f"prepare.dataroot={data.root}/ns", "out=s3://afov/prep", "prepare.exec.use_ray=false",
            "prepare.exec.progress=false"]
    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "jobs" / "prepare.py"), *args]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 480
        # a committed record of a finished scene (not the temp object of one being written: _done/_tmp/...)
        while not [o for o in client.list_objects_v2(Bucket="afov", Prefix="prep/sweeps/_done/").get("Contents", [])
                   if "/_tmp/" not in o["Key"]]:
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proxy.down()                      # the endpoint goes away while the next scene is being written
        _, stderr = p.communicate(timeout=480)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    tb = TRACEBACK in stderr
    first = p.returncode
    proxy.up()
    ok = False
    proc = None
    try:
        assert first != 0, "the job did not notice the outage"
        assert not tb, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith("error: ") or "FAILED" in stderr, stderr[-3000:]
        # nothing half-written is visible: every final shard is whole and is what its record says
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="afov", Prefix="prep/").get("Contents", [])]
        assert "prep/sweeps/_manifest.json" not in keys
        for k in keys:
            if k.endswith(".parquet") and "/_tmp/" not in k:
                body = client.get_object(Bucket="afov", Key=k)["Body"].read()
                pq.read_table(pa.BufferReader(body))
                rec = f"prep/sweeps/_done/{k.rsplit('/', 1)[1][:-len('.parquet')]}.json"
                if rec in keys:
                    shard = json.loads(client.get_object(Bucket="afov", Key=rec)["Body"].read())["shard"]
                    assert shard["sha256"] == hashlib.sha256(body).hexdigest()
        proc = run_job("prepare", args, tmp_path, timeout=480)
        assert proc.returncode == 0 and TRACEBACK not in proc.stderr, proc.stderr[-3000:]
        assert verify_manifest("s3://afov/prep/sweeps") == []
        summary = json.loads(client.get_object(Bucket="afov", Key="prep/sweeps/_summary.json")["Body"].read())
        assert summary["items_total"] == 3 and summary["stats"]["keyframes"] == 6 and summary["done_before"]
        left = [o["Key"] for o in client.list_objects_v2(Bucket="afov", Prefix="prep/").get("Contents", [])
                if "/_tmp/" in o["Key"]]
        assert not left, f"temporary objects left: {left}"
        for scene in sorted(p.stem for p in (data.root / "out" / "sweeps").glob("*.parquet")):
            body = client.get_object(Bucket="afov", Key=f"prep/sweeps/{scene}.parquet")["Body"].read()
            tokens = pq.read_table(pa.BufferReader(body)).column("sample_token").to_pylist()
            assert len(tokens) == len(set(tokens)) == 2
        ok = True
    finally:
        _record("s3_endpoint_down_mid_write", None if proc is None else proc.returncode, 0, ok, tb,
                time.perf_counter() - t0, note=f"first run exit {first}")


# ---------------------------------------------------------------------------------------------------
# MLflow tracking server down


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite store, local artifacts) on a loopback port, behind a Proxy."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root}/m.db", "--default-artifact-root", (root / "art").as_uri(),
           "--no-serve-artifacts", "--workers", "1"]
    log = open(root / "server.log", "w")
    p = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert p.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
        proxy = Proxy(port)
        proxy.up()
        yield proxy
        proxy.down()
    finally:
        os.killpg(p.pid, signal.SIGTERM)     # the server and its workers (its own process group)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()


def _train_args(data, tmp_path: Path, tracking_uri: str, epochs: int) -> list[str]:
    return [f"data.pairing={data.root}/out/pairing", f"data.split_file={data.root}/out/splits.json",
            "model.name=minkunet18", "model.init=null", "ingest.voxel_size=0.4", "loop.batch_size=1",
            f"loop.num_epochs={epochs}", "loop.optim.optimizer=adamw", "loop.optim.lr=0.002", "loop.optim.lr_head=null",
            f"loop.tracking.tracking_uri={tracking_uri}", "loop.tracking.experiment=faults",
            "scale.use_gpu=false", "scale.cpus_per_worker=1", f"run.storage_path={tmp_path}/ray", "run.name=faults",
            "data.val_split=null"]


def test_mlflow_down_when_training_starts_is_a_fast_clear_error(data, tmp_path):
    port = _free_port()                  # nothing listens there
    uri = f"http://afov:s3cretpw@127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = run_job("distill", _train_args(data, tmp_path, uri, 1), tmp_path, timeout=300)
    seconds = time.perf_counter() - t0
    tb = TRACEBACK in proc.stderr
    ok = (proc.returncode == 2 and not tb and f"127.0.0.1:{port}" in proc.stderr and "s3cretpw" not in proc.stderr
          and "s3cretpw" not in proc.stdout and "Started a local Ray" not in proc.stderr)
    _record("mlflow_down_at_start", proc.returncode, 2, ok, tb, seconds)
    assert ok, proc.stderr[-3000:]
    last = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(last) == 1 and "loop.tracking.tracking_uri" in last[0]
    assert seconds < 120, f"took {seconds:.0f} s"


def test_mlflow_down_and_back_during_training_finishes_with_metrics(data, tmp_path, mlflow_server, ray_tmp):
    import mlflow

    proxy = mlflow_server
    uri = f"http://127.0.0.1:{proxy.port}"
    epochs = 6
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{proxy.target}")   # the server itself
    cmd = [sys.executable, str(REPO / "jobs" / "distill.py"), *_train_args(data, tmp_path, uri, epochs)]
    t0 = time.perf_counter()
    with open(tmp_path / "job.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=tmp_path, env=job_env({"RAY_TMPDIR": ray_tmp}), stdout=log,
                             stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 540
            run = None
            while run is None:
                assert p.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no step metric logged in time"
                exp = client.get_experiment_by_name("faults")
                runs = client.search_runs([exp.experiment_id]) if exp else []
                run = next((r for r in runs if "train/loss" in r.data.metrics), None)
                time.sleep(0.5)
            proxy.down()                 # the tracking server goes away while the job trains ...
            # ... and stays away until the job has noticed (a failed send), however slow the machine is ...
            while "not sent yet" not in (tmp_path / "job.log").read_text() and p.poll() is None:
                assert time.monotonic() < deadline + 300, "the job never noticed the outage"
                time.sleep(0.5)
            time.sleep(3)
            proxy.up()                   # ... and comes back
            p.wait(timeout=540)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = (tmp_path / "job.log").read_text()
    tb = TRACEBACK in text
    final = client.get_run(run.info.run_id)
    epochs_logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss_epoch"))
    ok = (p.returncode == 0 and not tb and final.info.status == "FINISHED" and len(epochs_logged) == epochs
          and "afov.lost_metrics" not in final.data.tags)
    _record("mlflow_down_and_back_during_training", p.returncode, 0, ok, tb, time.perf_counter() - t0)
    assert p.returncode == 0 and not tb, text[-3000:]
    assert final.info.status == "FINISHED"
    assert len(epochs_logged) == epochs == len(set(epochs_logged)), epochs_logged
    assert "afov.lost_metrics" not in final.data.tags
    assert "not sent yet" in text, "the outage did not happen while the job was training"
