"""The user's path on a real multi-node cluster (issue 17): the commands of docs/cluster.md, run as written.

The session's local cluster (``cluster/local/up.sh``: a Ray head and worker nodes a and b as separate raylets, a
moto S3 server, an MLflow tracking server; all on 127.0.0.1) gets the generated dataset and its pairing shards
on ``s3://`` from submitted jobs (``conftest.cluster_data``), then this module submits, exactly as documented:
TMP on two workers on two nodes, distillation initialised from ``models:/afov-tmp@current`` pulled from the
server, predict with AFI on an actor pool spread over the worker nodes, and a two-trial sweep. Every job runs
from Ray's copy of the working dir; its checkpoints and outputs go to S3, its runs and models to the server.
The last test checks that no job wrote to a local disk.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.cluster.harness import (
    USER_PATH,
    doc_block,
    find_run,
    launcher,
    listening_sockets,
    local_disk_problems,
    mlflow_client,
    run_documented,
    s3_client,
    s3_json,
    s3_keys,
    working_dir_copies,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(2400)]   # the first test also starts the cluster


@pytest.fixture(scope="module")
def user_path(local_cluster, cluster_data):
    """The documented commands after the data jobs; job name -> JobRun, or -> the error that stopped the path."""
    runs: dict = {}
    commands = doc_block(USER_PATH)
    first_train = min(i for i, c in enumerate(commands) if "jobs/tmp.py" in c)
    for command in commands[first_train:]:
        try:
            run_documented(local_cluster, command, cluster_data.variables, runs)
        except Exception as e:  # noqa: BLE001 - later commands need this one; each test reports what it lacks
            runs["error"] = f"{command[:160]} ...\n{e}"
            break
    return runs


def job(runs: dict, name: str):
    assert name in runs, f"job {name} did not run: {runs.get('error', '')[-6000:]}"
    run = runs[name]
    print(f"{name}: {run.status} in {run.seconds:.0f} s (job {run.job_id})")
    return run


def job_actors(cluster, run, class_name: str) -> list[dict]:
    """Actors of a class that belonged to a submitted job (the job's Ray job id, from the job API)."""
    ray_job_id = cluster.job_client().get_job_info(run.job_id).driver_info.id
    return [a for a in cluster.actors(class_name) if a.get("job_id") == ray_job_id]


def resources_of(cluster, node_ids) -> set[str]:
    by_res = cluster.node_ids_by_resource(alive_only=False)
    return {res for res, ids in by_res.items() if ids & set(node_ids)}


def test_the_cluster_is_three_raylets_on_loopback(local_cluster):
    nodes = local_cluster.nodes()
    assert len(nodes) == 3 and {n["node_ip"] for n in nodes} == {"127.0.0.1"}
    assert set(local_cluster.node_ids_by_resource(alive_only=True)) == {"head", "node_a", "node_b"}
    pids = set(launcher().pids_with(str(local_cluster.root)))
    for pgid in local_cluster.state()["services"].values():
        pids |= {int(d) for d in os.listdir("/proc") if d.isdigit() and _pgid(int(d)) == pgid}
    listening = listening_sockets(pids)
    assert len(listening) >= 15, listening
    assert {ip for ip, _, _ in listening} == {"127.0.0.1"}, [s for s in listening if s[0] != "127.0.0.1"]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_jobs_run_the_code_ray_copied(local_cluster):
    """A submitted job imports afov_ray from Ray's copy of the working dir (not from the checkout or an
    installed package) and sees the cluster's S3 and tracking settings."""
    probe = ("import afov_ray, os; print('afov_ray:', afov_ray.__file__); "
             "print('endpoints:', os.environ['AWS_ENDPOINT_URL'], os.environ['MLFLOW_TRACKING_URI'])")
    run = local_cluster.submit(["-c", probe], timeout_s=900)
    assert run.status == "SUCCEEDED", run.tail()
    path = next(ln for ln in run.logs.splitlines() if ln.startswith("afov_ray: ")).split(" ", 1)[1]
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in path and path.startswith(str(local_cluster.root))
    assert f"endpoints: {local_cluster.env['AWS_ENDPOINT_URL']} {local_cluster.mlflow_uri}" in run.logs


def test_data_jobs_wrote_shards_to_s3(local_cluster, cluster_data):
    for name in ("prepare", "teacher", "pair"):
        job(cluster_data.runs, name)
    for prefix in ("data/sweeps/", "data/pairing/"):
        keys = s3_keys(local_cluster, prefix)
        assert f"{prefix}_manifest.json" in keys and sum(k.endswith(".parquet") for k in keys) == 4, keys
    assert cluster_data.variables["TEACHER_RUN"].startswith(local_cluster.bucket + "/data/teacher/")
    assert "data/splits.json" in s3_keys(local_cluster, "data/")


def check_train_job(cluster, runs: dict, name: str, register_as: str) -> dict:
    run = job(runs, name)
    assert f"{name} finished" in run.logs, run.tail()
    # two Train workers, one on each worker node
    workers = job_actors(cluster, run, "RayTrainWorker")
    assert len(workers) == 2, workers
    assert resources_of(cluster, [w["node_id"] for w in workers]) == {"node_a", "node_b"}
    # checkpoints on S3, the run and the registered model on the tracking server, its files on S3
    assert any("/checkpoint_" in k for k in s3_keys(cluster, f"ray_results/{name}/")), "no checkpoint on S3"
    mlrun = find_run(cluster, "cluster", name)
    assert mlrun is not None and mlrun.info.status == "FINISHED"
    c = mlflow_client(cluster)
    assert c.get_metric_history(mlrun.info.run_id, "train/loss")
    mv = c.get_model_version_by_alias(register_as, "current")
    assert mv.run_id == mlrun.info.run_id
    weights = [k for k in s3_keys(cluster, "mlflow/") if k.endswith("artifacts/weights.pt")]
    assert weights, "no registered weights under s3://<bucket>/mlflow/"
    return {"run": mlrun, "version": mv}


def test_tmp_trains_on_two_nodes_with_checkpoints_on_s3(local_cluster, user_path):
    out = check_train_job(local_cluster, user_path, "tmp", "afov-tmp")
    assert out["version"].tags["stage"] == "tmp"


def test_distill_starts_from_the_registry_on_the_server(local_cluster, user_path):
    out = check_train_job(local_cluster, user_path, "distill", "afov-distill")
    assert out["version"].tags["init"] == "models:/afov-tmp@current"
    assert out["run"].data.metrics["val/mIoU"] > 0
    print(f"distill: val mIoU {100 * out['run'].data.metrics['val/mIoU']:.1f}")


def test_predict_afi_actors_ran_on_both_worker_nodes(local_cluster, user_path):
    run = job(user_path, "predict")
    summary = s3_json(local_cluster, "pred/_summary.json")
    assert summary["manifest_written"] and summary["failed"] == [] and summary["stats"]["scans"] == 12
    assert resources_of(local_cluster, summary["nodes"]) == {"node_a", "node_b"}, summary["nodes"]
    actors = job_actors(local_cluster, run, "_PassActor")
    assert resources_of(local_cluster, [a["node_id"] for a in actors]) == {"node_a", "node_b"}
    key = next(k for k in s3_keys(local_cluster, "pred/") if k.endswith(".parquet") and "/_" not in k)
    table = read_s3_parquet(local_cluster, key)
    assert "pred_afi" in table.column_names and table.column("pred_afi").null_count == 0


def read_s3_parquet(cluster, key: str):
    import io

    import pyarrow.parquet as pq

    body = s3_client(cluster).get_object(Bucket=cluster.bucket[len("s3://"):], Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def test_sweep_runs_two_trials_and_registers_the_best(local_cluster, user_path):
    run = job(user_path, "sweep")
    # the line may follow a worker's progress-bar escape codes in the job's log: take it from the marker on
    line = next(ln for ln in run.logs.splitlines() if "sweep summary: " in ln)
    summary = json.loads(line.split("sweep summary: ", 1)[1])
    assert len(summary["trials"]) == 2 and all(t["error"] is None for t in summary["trials"]), summary["trials"]
    assert summary["experiment_path"].startswith(local_cluster.bucket + "/tune/")
    assert summary["best"]["registered"]["uri"] == "models:/afov-distill@best"
    mv = mlflow_client(local_cluster).get_model_version_by_alias("afov-distill", "best")
    assert mv.tags["tune.trial_id"] == summary["best"]["trial_id"]
    assert any(k.endswith("state.pt") for k in s3_keys(local_cluster, "tune/distill-sweep-train/"))


def test_nothing_was_written_on_local_disks(local_cluster, cluster_data, user_path):
    """HOME of every cluster process (fresh and empty at start), Ray's working-dir copies on every node, the raw
    folder and the submitting checkout: unchanged by all the jobs of the session (logs are under the cluster
    folder's logs/, AFI's compiled kernels under its cache/)."""
    assert "error" not in user_path, user_path["error"][-3000:]
    assert working_dir_copies(local_cluster), "no working-dir copy found"
    problems = local_disk_problems(local_cluster, local_cluster.home_before, local_cluster.status_before,
                                   cluster_data.raw, cluster_data.raw_tree)
    assert not problems, "\n".join(problems)
