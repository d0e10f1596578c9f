"""Raw REAL datasets on S3 (the loopback S3 server of tests/s3_fixture.py).

- SemanticKITTI (the real scans; one with its real KITTI image and calibration) read from an ``s3://`` dataroot
  in-process: listings, calib.txt, image headers (ranged reads) and scans through the storage layer; the
  shards equal those of the same dataroot read locally; splits.json written to s3://.
- The whole chain on ``s3://`` with Ray workers, as the jobs run it: nuScenes scene-0916 (tables read once on
  the driver, files read by the workers from S3) -> prepare -> teacher (oracle) -> pair -> predict (a model on
  S3) -> evaluate; each job prints its summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afov_ray.config import load_config
from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
from afov_ray.pipeline.shard_pass import ExecConfig
from afov_ray.storage import uri as U
from tests.pipeline.real_roots import kitti_root, save_model, spatial_lidarseg
from tests.s3_fixture import s3_bucket, s3_server  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
LOCAL = ExecConfig(use_ray=False, progress=False)


def upload(local: Path, dest: str) -> int:
    """Copy a local folder tree (symlinks followed) to an s3:// prefix; returns the number of objects."""
    client = U.boto3_client()
    bucket, prefix = U.split_s3(dest)
    n = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path.resolve()), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
            n += 1
    return n


def _table(uri: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(U.read_bytes(uri)))


def test_semantickitti_from_s3_equals_local(s3_bucket, real_data, tmp_path):
    root = kitti_root(tmp_path / "kitti", real_data)
    assert upload(root, f"{s3_bucket}/kitti") == 8      # 2 sequences x (scan, labels, image, calib)
    local = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=str(root), exec=LOCAL), str(tmp_path / "l"))
    remote = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=f"{s3_bucket}/kitti", exec=LOCAL),
                         f"{s3_bucket}/out")
    assert remote.exit_code == local.exit_code == 0 and remote.stats["keyframes"] == 2
    for seq in ("00", "08"):
        a, b = _table(f"{local.out}/{seq}.parquet"), _table(f"{remote.out}/{seq}.parquet")
        assert a.drop(["lidar_path"]).equals(b.drop(["lidar_path"])), seq
    (w, h) = _table(f"{remote.out}/00.parquet").column("cam_width").to_pylist()[0][0], \
        _table(f"{remote.out}/00.parquet").column("cam_height").to_pylist()[0][0]
    assert (w, h) == (1242, 375)                       # the real image's header, read from S3
    splits = json.loads(U.read_bytes(f"{s3_bucket}/out/splits.json"))["splits"]
    assert splits["train_1pct"]["keyframes"] == ["00/000008"] and splits["val"]["scenes"] == ["08"]
    # LiDAR-only from S3 (no image_2, no calib.txt)
    lo = kitti_root(tmp_path / "lo", real_data, cameras=False)
    upload(lo, f"{s3_bucket}/lo")
    s = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=f"{s3_bucket}/lo", cameras=False, exec=LOCAL),
                    f"{s3_bucket}/lo_out")
    assert s.exit_code == 0 and s.stats["keyframes"] == 1 and s.warnings == []


@pytest.fixture(scope="module")
def ray_on_s3(s3_server):   # started after the S3 environment is set, so the workers inherit it
    import ray

    from afov_ray.runtime import init_ray

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.setenv("PYTHONPATH", os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                           if p]))
    init_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


@pytest.mark.ray
@pytest.mark.slow
def test_whole_chain_on_s3_with_ray(ray_on_s3, s3_bucket, make_nuscenes_root, tmp_path, capsys):
    from afov_ray.pipeline.evaluate import EvaluateJob, evaluate_job
    from afov_ray.pipeline.pair import PairJob, pair_job
    from afov_ray.pipeline.predict import PredictJob, predict_job
    from afov_ray.pipeline.prepare import PrepareJob, prepare_job
    from afov_ray.pipeline.teacher import TeacherJob, teacher_job

    root = make_nuscenes_root(tmp_path / "ns", lidarseg_labels=lambda tok, n: np.zeros(n, np.uint8))
    spatial_lidarseg(root)
    data, out = f"{s3_bucket}/nuscenes", f"{s3_bucket}/afov"
    assert upload(root, data) > 40
    model = f"{s3_bucket}/models/seg"
    upload(Path(save_model(tmp_path / "model", 17)), model)
    quiet = ["exec.progress=false"]

    def run(job_cls, body, overrides):
        code = body(load_config(job_cls, None, overrides))
        return code, capsys.readouterr().out

    code, text = run(PrepareJob, prepare_job, [f"out={out}", f"prepare.dataroot={data}", "prepare.version=v1.0-mini",
                                               *("prepare." + q for q in quiet)])
    assert code == 0 and "prepare: 1 items, 0 already done, 1 new, 0 failed" in text
    assert "keyframes: 5 written, 0 skipped" in text and "val=1 scenes" in text
    code, text = run(TeacherJob, teacher_job, [f"sweeps={out}/sweeps", f"out={out}/teacher", "teacher.teacher=oracle",
                                               *("teacher." + q for q in quiet)])
    assert code == 0 and "teacher: 1 items" in text and "(30 images, 0 skipped)" in text
    run_uri = text.split("teacher run: ")[1].split(" ")[0]
    assert run_uri.startswith(f"{out}/teacher/oracle-")
    code, text = run(PairJob, pair_job, [f"sweeps={out}/sweeps", f"teacher_run={run_uri}", f"out={out}/pairing",
                                         *("pair." + q for q in quiet)])
    assert code == 0 and "keyframes 5" in text
    agreement = float(text.split("agreement with GT ")[1].split()[0])
    assert agreement >= 0.995, text
    code, text = run(PredictJob, predict_job, [f"input={out}/pairing", f"out={out}/pred", f"predict.model={model}",
                                               f"predict.sweeps={out}/sweeps", *("predict." + q for q in quiet)])
    assert code == 0 and "5 scans predicted" in text and "predict: 1 items" in text
    code, text = run(EvaluateJob, evaluate_job, [f"pred={out}/pred", f"out={tmp_path / 'eval'}", "eval.plots=false",
                                                 *("eval." + q for q in quiet)])
    assert code == 0 and "mIoU (%)" in text and "[5 scans," in text
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["sources"]["pseudo"]["visible"]["accuracy"] >= 0.995      # the oracle pseudo-labels, on S3
    pred = _table(f"{out}/pred/scene-0916.parquet")
    assert pred.num_rows == 5 and all(t for t in pred.column("lidar_token").to_pylist())
