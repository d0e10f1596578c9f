"""Sweep configuration, search space and per-trial job resolution (no Ray), plus lineage helpers."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

from afov_ray.config import ConfigError, config_hash, load_config
from afov_ray.train.jobs import TrainJob, make_stage
from afov_ray.tune.sweep import SweepJob, SweepSettings, TeacherChoice, metric_and_mode, param_space, trial_job

REPO = Path(__file__).resolve().parents[2]
TEACHERS = [TeacherChoice("san", "/t/san", "/p/san"), TeacherChoice("fcclip", "/t/fcclip", "/p/fcclip")]


def test_kind_defaults_and_validation():
    assert metric_and_mode(SweepSettings()) == ("val/mIoU", "max")
    assert metric_and_mode(SweepSettings(kind="tmp")) == ("train/loss_epoch", "min")
    assert metric_and_mode(SweepSettings(kind="tmp", metric="train/loss_text", mode="min")) == ("train/loss_text", "min")
    with pytest.raises(ConfigError, match="sweep.kind"):
        metric_and_mode(SweepSettings(kind="finetune"))
    with pytest.raises(ConfigError, match="sweep.mode"):
        metric_and_mode(SweepSettings(mode="up"))


def test_param_space_grid_and_errors():
    from ray import tune

    s = SweepSettings(kind="tmp", teachers=TEACHERS,
                      space={"tmp": {"tau": [0.05, 0.07], "alpha_image": [0.25]}, "loop": {"optim": {"lr": [0.1, 0.5]}}})
    space = param_space(s)
    assert set(space) == {"teacher", "tmp.tau", "tmp.alpha_image", "loop.optim.lr"}
    assert space["teacher"] == tune.grid_search(["san", "fcclip"])
    assert space["tmp.tau"] == tune.grid_search([0.05, 0.07])
    with pytest.raises(ConfigError, match="sweep.space.tmp.tauu"):
        param_space(SweepSettings(kind="tmp", space={"tmp": {"tauu": [1.0]}}))
    with pytest.raises(ConfigError, match="no effect"):
        param_space(SweepSettings(kind="distill", space={"tmp": {"tau": [0.1]}}))
    with pytest.raises(ConfigError, match="sweep.teachers"):
        param_space(SweepSettings(space={"data": {"pairing": ["a"]}}))
    with pytest.raises(ConfigError, match="unique"):
        param_space(SweepSettings(teachers=[TEACHERS[0], TEACHERS[0]]))


def test_trial_job_applies_teacher_space_and_sweep_settings():
    base = load_config(TrainJob, REPO / "configs/nuscenes/tmp.yaml", ["scale.num_workers=2", "scale.cpus_per_worker=1.0"])
    cfg = trial_job(base, {"teacher": "fcclip", "tmp.tau": 0.05, "loop.optim.lr": 0.1}, TEACHERS, "abc_00001",
                    "sw", "/store/sw-train", "sqlite:///x.db", "models:/afov-tmp@current", driver_cpus=0.01)
    assert cfg.data.pairing == "/p/fcclip" and cfg.tmp.teacher_run == "/t/fcclip"
    assert cfg.tmp.tau == 0.05 and cfg.loop.optim.lr == 0.1 and cfg.tmp.alpha_image == base.tmp.alpha_image
    assert cfg.model.init == "models:/afov-tmp@current" and cfg.model.tracking_uri == "sqlite:///x.db"
    assert cfg.run.name == "abc_00001" and cfg.run.storage_path == "/store/sw-train"
    assert cfg.run.checkpoint_every_steps == 0
    assert cfg.loop.tracking.register_as is None and cfg.loop.tracking.tracking_uri == "sqlite:///x.db"
    assert cfg.loop.tracking.tags == {"sweep": "sw", "tune.trial_id": "abc_00001", "afov.role": "train",
                                      "sweep.teacher": "fcclip"}
    assert cfg.scale.cpus_per_worker == pytest.approx(1.0 - 0.01 / 2)   # the driver's share comes off the workers
    # deterministic: the best trial's config (hash) is re-derived after the sweep
    again = trial_job(base, {"teacher": "fcclip", "tmp.tau": 0.05, "loop.optim.lr": 0.1}, TEACHERS, "abc_00001",
                      "sw", "/store/sw-train", "sqlite:///x.db", "models:/afov-tmp@current", driver_cpus=0.01)
    assert config_hash(again) == config_hash(cfg)
    with pytest.raises(ConfigError, match="not in sweep.teachers"):
        trial_job(base, {"teacher": "san2"}, TEACHERS, "t", "sw", "/s", "sqlite:///x.db", None)


def test_sweep_job_cli_parses_teachers_and_nested_space():
    from afov_ray.cli import parse_job_args

    cfg, _ = parse_job_args(SweepJob, "", [
        "--config", str(REPO / "configs/nuscenes/sweep_tmp.yaml"),
        "sweep.teachers=[{name: a, run: /t/a, pairing: /p/a}, {name: b, run: /t/b, pairing: /p/b}]",
        "sweep.space.tmp.tau=[0.05,0.1]", "sweep.name=x"])
    assert [t.name for t in cfg.sweep.teachers] == ["a", "b"] and isinstance(cfg.sweep.teachers[0], TeacherChoice)
    assert cfg.sweep.space["tmp"]["tau"] == [0.05, 0.1] and cfg.sweep.space["tmp"]["alpha_image"] == [0.25, 0.5, 0.75]
    assert cfg.sweep.kind == "tmp" and cfg.loop.num_epochs == 40


@pytest.mark.parametrize("job", sorted(p.name for p in (REPO / "jobs").glob("*.py")))
def test_every_job_help_lists_its_options(job):
    out = subprocess.run([__import__("sys").executable, str(REPO / "jobs" / job), "--help"], capture_output=True,
                         text=True, cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    if job in ("tmp.py", "distill.py", "finetune.py", "sweep.py"):
        for key in ("data.pairing", "model.init", "loop.tracking.register_as", "scale.address", "run.storage_path"):
            assert key in out.stdout, (job, key)
    if job == "sweep.py":
        for key in ("sweep.teachers", "sweep.space", "sweep.init", "sweep.alias", "sweep.asha.grace_period"):
            assert key in out.stdout, key


def test_data_fingerprint_and_teacher_lineage(tmp_path):
    from afov_ray.train.tracking import data_fingerprint, teacher_lineage

    d = tmp_path / "pairing"
    d.mkdir()
    (d / "scene-1.parquet").write_bytes(b"x" * 10)
    fp = data_fingerprint(str(d))
    blob = json.dumps({"shards": [["scene-1.parquet", 10]]}, sort_keys=True).encode()
    assert fp == {"data.uri": str(d), "data.sha256": hashlib.sha256(blob).hexdigest(), "data.sha256_of": "listing"}
    (d / "scene-1.parquet").write_bytes(b"x" * 11)
    assert data_fingerprint(str(d))["data.sha256"] != fp["data.sha256"]
    (d / "_manifest.json").write_text('{"m": 1}')
    assert data_fingerprint(str(d))["data.sha256"] == hashlib.sha256(b'{"m": 1}').hexdigest()
    with pytest.raises(FileNotFoundError, match="empty"):
        data_fingerprint(str(tmp_path / "nothing"))
    run = tmp_path / "teacher" / "san-1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "san-1", "name": "san"}))
    assert teacher_lineage(str(run)) == {"teacher.run": str(run), "teacher.run_id": "san-1", "teacher.name": "san"}


def test_stage_lineage_names_teacher_data_and_init(tmp_path):
    d = tmp_path / "pairing"
    d.mkdir()
    (d / "s.parquet").write_bytes(b"abc")
    run = tmp_path / "t"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "sim-1", "name": "sim"}))
    job = load_config(TrainJob, None, [f"data.pairing={d}", f"tmp.teacher_run={run}", "model.init=models:/m@current"])
    for kind in ("tmp", "distill"):
        lin = make_stage(kind, job).lineage()
        assert lin["teacher.run_id"] == "sim-1" and lin["data.uri"] == str(d) and lin["init"] == "models:/m@current"
    assert "teacher.run" not in make_stage("finetune", load_config(TrainJob, None, [f"data.pairing={d}"])).lineage()


def test_git_commit_is_head():
    from afov_ray.train.tracking import git_commit

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit() == head and len(head) == 40


def test_load_model_state_from_checkpoint_dir(tmp_path):
    from torch import nn

    from afov_ray.train.checkpoint import save_checkpoint
    from afov_ray.train.registry import load_model, load_model_state

    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ckpt", model_state=model.state_dict(), epoch=1, step=2,
                    model_spec={"name": "minkunet18", "out_channels": 2})
    st = load_model_state(str(tmp_path / "ckpt"))
    assert torch.equal(st["weight"], model.weight)
    assert load_model(str(tmp_path / "ckpt"))[1].name == "minkunet18"
