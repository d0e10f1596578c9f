"""Sweeps on a real local Ray over the tiny generated chain: 2 trials (two simulated teacher runs),
1 Train worker each, 2 CPUs in all; the best model is registered with alias ``best``; a sweep whose
driver is SIGKILLed resumes instead of starting over."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from afov_ray.config import config_hash, load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]   # incl. module fixtures
REPO = Path(__file__).resolve().parents[2]


def _register_init_model(uri: str) -> None:
    """A TMP-shaped minkunet18 registered as afov-tmp@current: what the sweep trials start from."""
    from afov_ray.models.res16unet import build_model
    from afov_ray.models.spec import ModelSpec
    from afov_ray.train.registry import register
    from afov_ray.train.tracking import Tracker, TrackingConfig

    tr = Tracker(TrackingConfig(tracking_uri=uri, experiment="init"))
    run_id = tr.start()
    tr.end()
    torch.manual_seed(0)
    state = build_model("minkunet18", 1, 768, "torch", 0.05, normalize_features=True).state_dict()
    spec = ModelSpec(name="minkunet18", out_channels=768, normalize_features=True, task="features")
    register(uri, run_id, state, spec, "afov-tmp", alias="current", tags={"stage": "tmp"})


def _overrides(chain, root: Path, uri: str, name: str) -> list[str]:
    teachers = ", ".join(f"{{name: {n}, run: {t['run']}, pairing: {t['pairing']}}}" for n, t in chain["teachers"].items())
    return [f"data.split_file={chain['split_file']}", "model.name=minkunet18", "scale.use_gpu=false",
            "loop.num_epochs=1", "loop.batch_size=2", f"loop.tracking.tracking_uri={uri}",
            "loop.tracking.experiment=sweeps", f"sweep.teachers=[{teachers}]", f"sweep.name={name}",
            f"sweep.storage_path={root / 'tune'}", "sweep.init=models:/afov-tmp@current",
            "sweep.register_as=afov-distill", "sweep.alias=best",
            "sweep.space.loop.optim.lr=[0.02]", "sweep.space.loop.optim.lr_head=[2.0]"]


def _runs(uri: str, sweep: str, role: str):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("sweeps")
    return c.search_runs([exp.experiment_id], f"tags.sweep = '{sweep}' and tags.`afov.role` = '{role}'")


def test_tiny_sweep_registers_best_with_lineage(ray_local, chain, tmp_path):
    import mlflow

    from afov_ray.train.jobs import TrainJob
    from afov_ray.train.registry import load_model_state
    from afov_ray.train.tracking import data_fingerprint, git_commit
    from afov_ray.tune.sweep import SweepJob, run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register_init_model(uri)
    cfg = load_config(SweepJob, REPO / "configs/nuscenes/sweep.yaml", _overrides(chain, tmp_path, uri, "tiny"))
    summary = run_sweep(cfg)

    trials = summary["trials"]
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    assert {t["config"]["teacher"] for t in trials} == set(chain["teachers"])
    scores = {t["config"]["teacher"]: t["metric"] for t in trials}
    best = summary["best"]
    assert best["value"] == max(scores.values()) and 0.0 <= best["value"] <= 1.0
    assert scores[best["config"]["teacher"]] == best["value"]

    c = mlflow.MlflowClient(tracking_uri=uri)
    mv = c.get_model_version_by_alias("afov-distill", "best")
    assert int(mv.version) == best["registered"]["version"] and mv.run_id == best["registered"]["run_id"]
    teacher = chain["teachers"][best["config"]["teacher"]]
    tags = mv.tags
    assert tags["stage"] == "distill" and tags["sweep"] == "tiny" and tags["tune.trial_id"] == best["trial_id"]
    assert tags["teacher.run_id"] == teacher["run_id"] and tags["teacher.run"] == teacher["run"]
    assert tags["data.uri"] == teacher["pairing"] and tags["data.sha256"] == data_fingerprint(teacher["pairing"])["data.sha256"]
    assert tags["init"] == "models:/afov-tmp@current" and tags["git_commit"] == git_commit()
    assert float(tags["sweep.value"]) == pytest.approx(best["value"])
    # the config hash is that of the trial's resolved job, re-derived independently here
    from afov_ray.tune.sweep import _base_job, trial_job

    tcfg = trial_job(_base_job(cfg), best["config"], cfg.sweep.teachers, best["trial_id"], "tiny",
                     str(tmp_path / "tune" / "tiny-train"), uri, "models:/afov-tmp@current", 0.01)
    assert isinstance(tcfg, TrainJob) and tags["config_hash"] == config_hash(tcfg)
    # the registered weights are the best trial's last checkpoint
    from afov_ray.train.checkpoint import load_checkpoint

    reg = load_model_state("models:/afov-distill@best", tracking_uri=uri)
    ck = load_checkpoint(best["checkpoint"])["model"]
    assert set(reg) == set(ck) and all(torch.equal(reg[k], ck[k]) for k in ck)
    # every trial is tracked twice: Tune's MLflowLoggerCallback (trial results) + rank-0 Tracker (training)
    tune_runs, train_runs = _runs(uri, "tiny", "tune-trial"), _runs(uri, "tiny", "train")
    assert len(tune_runs) == 2 and len(train_runs) == 2
    assert {r.data.tags["tune.trial_id"] for r in train_runs} == {str(t["trial_id"]) for t in trials}
    assert all("val/mIoU" in r.data.metrics for r in train_runs + tune_runs)
    # trials started from the registry model: the Train runs log the init URI
    assert all(r.data.params["model.init"] == "models:/afov-tmp@current" for r in train_runs)


def _runs_or_none(uri: str, sweep: str, role: str):
    try:
        return _runs(uri, sweep, role)
    except Exception:  # noqa: BLE001 - store or experiment not created yet
        return []


def _experiment_state_has_terminated(exp: Path) -> bool:
    for f in glob.glob(str(exp / "experiment_state-*.json")):
        try:
            if "TERMINATED" in Path(f).read_text():
                return True
        except OSError:
            pass
    return False


def test_killed_sweep_driver_resumes(ray_local, chain, tmp_path):
    """SIGKILL the sweep driver once a trial has finished; the restarted driver restores the experiment,
    does not re-run the finished trial, runs the rest and registers the best model."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register_init_model(uri)
    args = [sys.executable, str(REPO / "jobs/sweep.py"), "--config", str(REPO / "configs/nuscenes/sweep.yaml"),
            *_overrides(chain, tmp_path, uri, "resume"), f"sweep.address={ray_local}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    exp = tmp_path / "tune" / "resume"
    log1 = open(tmp_path / "driver1.log", "w")
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600   # generous: on a loaded 2-core machine a trial takes a few minutes
        # a trial is finished for Tune (saved experiment state) and for its MLflowLoggerCallback run
        while not (_experiment_state_has_terminated(exp)
                   and any(r.info.status == "FINISHED" for r in _runs_or_none(uri, "resume", "tune-trial"))):
            assert p.poll() is None, f"driver exited early: {(tmp_path / 'driver1.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    done_before = _runs(uri, "resume", "tune-trial")
    finished = [r for r in done_before if r.info.status == "FINISHED"]
    assert len(finished) >= 1
    finished_trials = {r.data.tags["trial_name"] for r in finished}

    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("sweep summary: ")][-1]
    summary = json.loads(line[len("sweep summary: "):])
    assert summary["restored"] is True
    assert len(summary["trials"]) == 2 and all(t["error"] is None for t in summary["trials"])
    assert summary["best"]["registered"]["alias"] == "best"

    after = _runs(uri, "resume", "tune-trial")
    for name in finished_trials:   # a finished trial is not started again: still one Tune-level run
        assert sum(r.data.tags["trial_name"] == name for r in after) == 1
    # and its training ran exactly once: one Train run with one epoch of metrics
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri)
    epochs = {}   # trial id -> epochs logged per Train run (a run killed mid-epoch logged none)
    for r in _runs(uri, "resume", "train"):
        epochs.setdefault(r.data.tags["tune.trial_id"], []).append(
            len(c.get_metric_history(r.info.run_id, "train/loss_epoch")))
    assert len(epochs) == 2 and all(sum(v) == 1 for v in epochs.values())
    finished_ids = {n.split("_")[-2] + "_" + n.split("_")[-1] for n in finished_trials}
    for tid in finished_ids:
        assert epochs[tid] == [1]
    result_lines = [len(Path(f).read_text().splitlines()) for f in glob.glob(str(exp / "*" / "result.json"))]
    assert sorted(result_lines) == [1, 1]
    # no run of the sweep is left RUNNING: the dead driver's runs were marked KILLED on resume
    statuses = [r.info.status for role in ("tune-trial", "train") for r in _runs(uri, "resume", role)]
    assert "RUNNING" not in statuses, statuses
