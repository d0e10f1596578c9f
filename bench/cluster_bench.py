"""Scaling figures of TMP on the local multi-node cluster: 1 worker on 1 node vs 2 workers on 2 nodes.

    python bench/cluster_bench.py [--epochs 3] [--dir /tmp/afovb]        # starts (and stops) its own cluster
    python bench/cluster_bench.py --env $AFOV_CLUSTER_DIR/cluster.env     # a running cluster/local/up.sh cluster

Brings up ``cluster/local/up.sh`` (a Ray head + worker nodes a and b with 2 CPUs each, moto S3, an MLflow server,
all on 127.0.0.1) unless given a running one, puts the generated dataset and its pairing shards on ``s3://`` with
the documented data jobs (``tests/cluster/harness.build_data``; skipped when the bucket already holds them), then
submits ``jobs/tmp.py`` twice at the same global batch of 2 scans per step, same seed and epochs:

  A  scale.num_workers=1, loop.batch_size=2     (scale.cpus_per_worker=2: the worker fills one worker node)
  B  scale.num_workers=2, loop.batch_size=1     (one worker on each worker node)

Checkpoints go to ``s3://<bucket>/bench``, metrics to the MLflow server (experiment ``cluster-bench``). Per config
it prints the nodes its Train workers ran on (State API actors of the job), and, over the epochs after the first
(Ray Data and torch warm-up excluded; every epoch with ``--epochs 1``) from the MLflow history of rank 0's
per-epoch ``train/steps``, ``train/epoch_s`` and ``train/data_wait_fraction``: steps/s, scans/s and the
data-wait fraction (time blocked on the data iterator / epoch time), plus the first epoch and the whole job's
wall time. Scaling efficiency = scans/s(B) / (2 x scans/s(A)). On one machine the "nodes" share its cores (2 on
the development box), so the efficiency is a floor for a real cluster, not a measurement of one.

A cluster the bench started is stopped at the end (``down.sh``; its logs stay in ``<dir>/logs``) unless
``--keep-up``; rerun with ``--dir`` on a kept cluster to reuse it and the data on S3. Writes
``<out>.json`` and ``<out>.md`` (default ``bench/results/cluster_bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.harness import (  # noqa: E402 - the repository root first on sys.path
    REPO,
    LocalCluster,
    build_data,
    find_run,
    mlflow_client,
    s3_keys,
)

EXPERIMENT = "cluster-bench"
GLOBAL_BATCH = 2
CONFIGS = {"A": (1, 2), "B": (2, 1)}    # name -> (scale.num_workers, loop.batch_size)
NOTE = ("On one machine the worker nodes are separate raylets sharing the machine's {cores} cores (and the head, "
        "S3 and MLflow servers run beside them), so B's two workers compete for the cores A's one worker had "
        "mostly to itself, and the voxelisation tasks of the Ray Data ingest (0.5 CPU each) fit only on the head's "
        "1 CPU in B while in A they also use the idle worker node's: the scaling efficiency is a floor for a real "
        "cluster, not a measurement of one.")


def find_data(cluster: LocalCluster) -> dict[str, str] | None:
    """The variables of the TMP command when the bucket already holds the pairing shards of one teacher run."""
    teachers = {k.split("/")[2] for k in s3_keys(cluster, "data/teacher/") if k.count("/") >= 3}
    if "data/pairing/_manifest.json" not in s3_keys(cluster, "data/pairing/") or len(teachers) != 1:
        return None
    if "data/splits.json" not in s3_keys(cluster, "data/splits.json"):
        return None
    return {**cluster.env, "TEACHER_RUN": f"{cluster.bucket}/data/teacher/{teachers.pop()}"}


def tmp_args(v: dict[str, str], name: str, workers: int, batch: int, epochs: int, seed: int) -> list[str]:
    s3 = v["AFOV_S3"]
    return ["jobs/tmp.py", "--config", "configs/nuscenes/tmp.yaml", f"data.pairing={s3}/data/pairing",
            f"data.split_file={s3}/data/splits.json", f"tmp.teacher_run={v['TEACHER_RUN']}", "model.name=minkunet18",
            f"loop.num_epochs={epochs}", f"loop.batch_size={batch}", f"loop.seed={seed}",
            f"scale.num_workers={workers}", "scale.use_gpu=false", "scale.cpus_per_worker=2", "scale.torch_threads=1",
            f"run.name={name}", f"run.storage_path={s3}/bench", "run.num_to_keep=1",
            f"loop.tracking.tracking_uri={v['MLFLOW_TRACKING_URI']}", f"loop.tracking.experiment={EXPERIMENT}",
            f"loop.tracking.run_name={name}", "loop.tracking.register_as=null"]


def worker_nodes(cluster: LocalCluster, job_id: str) -> list[str]:
    """The node resource (node_a, node_b, head) of each Train worker actor of a submitted job."""
    ray_job = cluster.job_client().get_job_info(job_id).driver_info.id
    by_res = cluster.node_ids_by_resource(alive_only=False)
    out = []
    for a in cluster.actors("RayTrainWorker"):
        if a.get("job_id") == ray_job:
            out.append(next((r for r, ids in by_res.items() if a["node_id"] in ids), a["node_id"][:8]))
    return sorted(out)


def epochs_of(cluster: LocalCluster, name: str) -> list[dict]:
    """Rank 0's per-epoch metrics of the MLflow run ``name``, in epoch order."""
    run = find_run(cluster, EXPERIMENT, name)
    if run is None:
        raise RuntimeError(f"no MLflow run {name!r} in experiment {EXPERIMENT!r}")
    client = mlflow_client(cluster)
    hist = {k: sorted(client.get_metric_history(run.info.run_id, f"train/{k}"), key=lambda m: m.step)
            for k in ("steps", "epoch_s", "data_wait_fraction")}
    return [{"steps": int(s.value), "epoch_s": e.value, "data_wait": w.value}
            for s, e, w in zip(hist["steps"], hist["epoch_s"], hist["data_wait_fraction"])]


def figures(epochs: list[dict]) -> dict:
    steady = epochs[1:] or epochs
    steps, secs = sum(e["steps"] for e in steady), sum(e["epoch_s"] for e in steady)
    return {"epochs_measured": len(steady), "steps": steps, "train_s": secs, "steps_per_s": steps / secs,
            "scans_per_s": steps * GLOBAL_BATCH / secs,
            "data_wait": sum(e["data_wait"] * e["epoch_s"] for e in steady) / secs,
            "first_epoch_s": epochs[0]["epoch_s"]}


def run_config(cluster: LocalCluster, v: dict, key: str, epochs: int, seed: int, stamp: str, timeout_s: float) -> dict:
    workers, batch = CONFIGS[key]
    name = f"bench-{key}-{stamp}"      # a fresh Ray Train run name: never resume an earlier run's checkpoints
    print(f"[{key}] {workers} worker(s) x batch {batch}: submitting jobs/tmp.py (run {name}) ...", flush=True)
    run = cluster.start_submit(tmp_args(v, name, workers, batch, epochs, seed)).wait(timeout_s)
    if run.status != "SUCCEEDED":
        raise RuntimeError(f"[{key}] TMP job {run.status}:\n{run.tail()}")
    ep = epochs_of(cluster, name)
    if len(ep) != epochs:
        raise RuntimeError(f"[{key}] {len(ep)} epochs in the MLflow history of {name}, expected {epochs}")
    out = {"config": key, "workers": workers, "batch_per_worker": batch, "run_name": name, "job_id": run.job_id,
           "nodes": worker_nodes(cluster, run.job_id), "job_s": run.seconds, "load_1min": os.getloadavg()[0],
           "epochs": ep, **figures(ep)}
    print(f"[{key}] done in {run.seconds:.0f} s on {', '.join(out['nodes'])}: {out['scans_per_s']:.3f} scans/s, "
          f"data wait {out['data_wait']:.0%}", flush=True)
    return out


def render(res: dict) -> str:
    rows = ["| config | workers x scans | nodes | steps | train s | steps/s | scans/s | data wait | first epoch s "
            "| job s | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["configs"]:
        rows.append(f"| {r['config']} | {r['workers']} x {r['batch_per_worker']} | {'+'.join(r['nodes'])} "
                    f"| {r['steps']} | {r['train_s']:.1f} | {r['steps_per_s']:.3f} | {r['scans_per_s']:.3f} "
                    f"| {r['data_wait']:.1%} | {r['first_epoch_s']:.1f} | {r['job_s']:.0f} | {r['load_1min']:.1f} |")
    m = res["machine"]
    return "\n".join([
        f"# TMP scaling on the local cluster ({res['date']}, commit {res['commit']})", "",
        f"TMP, model minkunet18 on CPU, global batch {GLOBAL_BATCH} scans, {res['epochs']} epochs, seed "
        f"{res['seed']}, scale.cpus_per_worker=2, scale.torch_threads=1; figures over epochs "
        f"{'2' if res['epochs'] > 1 else '1'}-{res['epochs']} (rank 0's MLflow history; data wait = rank 0's "
        "time blocked on the data iterator / epoch time; load: the machine's 1-minute load average at the job's "
        "end).", "", *rows, "",
        f"Scaling efficiency B vs A: scans/s(B) / (2 x scans/s(A)) = **{res['efficiency']:.2f}** "
        f"(speed-up x{res['speedup']:.2f}).", "",
        f"Machine: {m['cores']} cores, load average {m['load_before']:.1f} before / {m['load_after']:.1f} after; "
        f"Ray {m['ray']}, Python {m['python']}.", "", NOTE.format(cores=m["cores"]), ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="cluster folder: reused when it has a cluster.env, else a cluster is "
                                                "started there (default: a fresh folder under /tmp)")
    ap.add_argument("--env", default=None, help="cluster.env of a running cluster (= --dir its folder)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-up", action="store_true", help="leave a cluster the bench started running")
    ap.add_argument("--job-timeout", type=float, default=2400, help="seconds per job")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cluster_bench"),
                    help="writes <out>.json and <out>.md")
    args = ap.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    root = Path(args.env).parent if args.env else Path(args.dir or tempfile.mkdtemp(prefix="afovb", dir="/tmp"))
    started = not (root / "cluster.env").exists()
    t0, load_before = time.monotonic(), os.getloadavg()[0]
    cluster = LocalCluster(root)
    try:
        if started:
            print(f"starting the local cluster in {root} ...", flush=True)
            cluster = LocalCluster.up(root)
        else:
            print(f"using the running cluster of {root}", flush=True)
        variables = find_data(cluster)
        if variables is None:
            print("putting the generated data and its pairing shards on S3 (prepare, teacher, pair jobs) ...",
                  flush=True)
            variables = build_data(cluster, root / "raw").variables
        else:
            print(f"data already on S3 (teacher run {variables['TEACHER_RUN']})", flush=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        runs = [run_config(cluster, variables, k, args.epochs, args.seed, stamp, args.job_timeout) for k in CONFIGS]
    finally:
        if started and not args.keep_up:
            print(cluster.down().strip()[-2000:])
        elif started:
            print(f"cluster left running: . {root / 'cluster.env'}; stop with AFOV_CLUSTER_DIR={root} "
                  f"cluster/local/down.sh")
    a, b = runs
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "epochs": args.epochs, "seed": args.seed,
           "global_batch": GLOBAL_BATCH, "configs": runs, "speedup": b["scans_per_s"] / a["scans_per_s"],
           "efficiency": b["scans_per_s"] / (2 * a["scans_per_s"]), "bench_s": time.monotonic() - t0,
           "machine": {"cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0],
                       "ray": version("ray"), "python": platform.python_version()}}
    md = render(res)
    print("\n" + md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}; bench took {res['bench_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
