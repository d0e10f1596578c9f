"""SemanticKITTI 1 % fine-tuning on REAL scans with the preset, through Ray Train: the frame-level
``train_1pct`` split trains on its keyframes only (not on whole sequences), validation scores the real
labelled scan of sequence 08 on the 19 KITTI classes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from afov_ray.config import load_config
from afov_ray.datasets.labels import kitti_raw_to_eval
from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
from afov_ray.pipeline.shard_pass import ExecConfig
from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
from tests.pipeline.real_roots import kitti_root

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]   # incl. module fixtures
REPO = Path(__file__).resolve().parents[2]
LOCAL = ExecConfig(use_ray=False, progress=False)


def test_kitti_finetune_preset_trains_on_the_1pct_frames(tmp_path, real_data):
    import ray

    from afov_ray.runtime import init_ray
    from afov_ray.train.jobs import TrainJob, run_train_job

    root = kitti_root(tmp_path / "root", real_data)
    seq = root / "sequences" / "00"
    for sub, ext in (("velodyne", "bin"), ("labels", "label"), ("image_2", "png")):   # a 2nd scan, not in 1 %
        (seq / sub / f"000009.{ext}").write_bytes((seq / sub / f"000008.{ext}").read_bytes())
    prep = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=str(root), exec=LOCAL), str(tmp_path / "o"))
    assert prep.stats["keyframes"] == 3 and prep.stats["splits"]["train_1pct"] == 1
    t = run_teacher_pass(prep.out, str(tmp_path / "t"), TeacherPassConfig(teacher="oracle", dictionary="kitti",
                                                                          exec=LOCAL))
    pair = run_pair_pass(prep.out, t.stats["run_uri"], str(tmp_path / "p"), PairPassConfig(dictionary="kitti",
                                                                                            exec=LOCAL))
    assert pair.exit_code == 0
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    cfg = load_config(TrainJob, str(REPO / "configs/semantickitti/finetune.yaml"), [
        f"data.pairing={pair.out}", f"data.split_file={tmp_path / 'o' / 'splits.json'}", "model.name=minkunet18",
        "model.init=null", "ingest.voxel_size=0.2", "loop.num_epochs=1", "loop.batch_size=1",
        "loop.tracking.enabled=false", "loop.tracking.register_as=null",
        f"loop.tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "scale.use_gpu=false", "scale.num_workers=1",
        "scale.cpus_per_worker=1",
        f"run.storage_path={tmp_path / 'runs'}"])
    assert cfg.data.train_split == "train_1pct" and cfg.seg.num_classes == 20
    init_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        res = run_train_job("finetune", cfg)
    finally:
        ray.shutdown()
    assert res.error is None, res.error
    m = res.metrics
    assert m["train/steps"] == 1                               # 00/000008 only, not 00/000009
    gt = kitti_raw_to_eval(np.fromfile(real_data / "semantickitti_000000" / "000000.label", np.uint32))
    assert m["val/points"] == int((gt > 0).sum())             # the real scan of sequence 08
    assert "val/iou/road" in m and "val/iou/traffic-sign" in m
