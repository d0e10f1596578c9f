"""Batch inference, AFI at scale, evaluation and submission on a tiny generated nuScenes dataset.

Real components throughout: the generator, prepare, the simulated teacher and the pairing pass build
sweep + pairing shards; a random-init ``minkunet18`` checkpoint (weights + its model contract) is loaded
back; the predict and AFI passes run as Ray actor pools on a 2-CPU local Ray; the devkit reads the submission.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from afov_ray.config import ConfigError
from afov_ray.errors import DataError
from afov_ray.models.spec import ModelSpec
from afov_ray.pipeline.predict import (
    PredictConfig,
    build_segmentation_model,
    load_for_predict,
    predict_scans,
    run_predict,
)
from afov_ray.pipeline.predictions import prediction_schema, read_prediction_shard
from afov_ray.pipeline.shard_pass import ExecConfig
from afov_ray.storage.manifest import write_folder_manifest

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 17
LOCAL = ExecConfig(use_ray=False, progress=False)


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spin-waits make 2 threads far slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Generated dataroot -> sweep shards -> teacher shards -> pairing shards (the real passes, no Ray)."""
    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
    from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
    from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass

    base = tmp_path_factory.mktemp("evaldata")
    cfg = SynthConfig(num_scenes=2, keyframes_per_scene=2, num_val_scenes=1, image_width=160, image_height=90,
                      num_beams=16, azimuth_steps=360)
    root = generate_nuscenes(base / "root", cfg)
    prep = run_prepare(PrepareConfig(dataroot=str(root), write_splits=False, exec=LOCAL), str(base / "prep"))
    t = run_teacher_pass(prep.out, str(base / "teacher"), TeacherPassConfig(dataroot=str(root), exec=LOCAL))
    pair = run_pair_pass(prep.out, t.stats["run_uri"], str(base / "pairing"), PairPassConfig(exec=LOCAL))
    assert prep.exit_code == t.exit_code == pair.exit_code == 0
    return {"root": str(root), "sweeps": prep.out, "pairing": pair.out, "scenes": sorted(pair.written), "base": base}


def _save(path: Path, state: dict, spec: ModelSpec | None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "model_spec": None if spec is None else spec.to_dict()}, path / "state.pt")
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random-init minkunet18 checkpoints with their contract: plain, a +100 bias on class 0, and the plain
    weights without a spec (an official-style checkpoint)."""
    from afov_ray.models.res16unet import build_model

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    state = build_model("minkunet18", 1, NUM_CLASSES, "torch").state_dict()
    spec = ModelSpec(name="minkunet18", out_channels=NUM_CLASSES, voxel_size=0.1)
    biased = {k: v.clone() for k, v in state.items()}
    biased["final.bias"][0, 0] += 100.0
    return {"plain": _save(d / "plain", state, spec), "biased": _save(d / "biased", biased, spec),
            "nospec": _save(d / "nospec", state, None), "spec": spec}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    from afov_ray.runtime import init_ray

    init_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


def _cfg(model: str, ray: bool = False, **kw) -> PredictConfig:
    return PredictConfig(model=model, exec=ExecConfig(use_ray=ray, progress=False, max_actors=2), **kw)


def _read(path: str) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _model(uri: str, **kw):
    spec, state = load_for_predict(_cfg(uri, **kw))
    return build_segmentation_model(spec, state), spec


# ------------------------------------------------------------------------------------------------
# inference


def test_model_loads_strictly_from_its_contract(models):
    m, spec = _model(models["plain"])
    ref = torch.load(Path(models["plain"]) / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
    assert not m.training and spec == models["spec"]
    with pytest.raises(DataError, match="final"):
        build_segmentation_model(replace(spec, out_channels=20), ref)  # head shape mismatch, named
    # a job setting that contradicts the model's contract: one line naming both values
    with pytest.raises(ConfigError, match=r"predict.voxel_size.*0\.2.*voxel_size = 0\.1"):
        load_for_predict(_cfg(models["plain"], voxel_size=0.2))
    load_for_predict(_cfg(models["plain"], voxel_size=0.1, grid="cylindrical"))   # agreeing values are fine
    # no contract (official checkpoint): the job's settings and the official defaults are used
    spec0, _ = load_for_predict(_cfg(models["nospec"], name="minkunet18", voxel_size=0.2))
    assert spec0.voxel_size == 0.2 and spec0.name == "minkunet18" and spec0.out_channels == 17
    with pytest.raises(DataError, match="do not fit res16unet34c"):
        load_for_predict(_cfg(models["nospec"]))   # no contract and no architecture given: named mismatch


def test_predict_sweeps_shapes_determinism_and_grouping(data, models, tmp_path):
    from afov_ray.train.data import IngestConfig, collate, prepare_row
    from afov_ray.train.stages import predict_points

    scene = data["scenes"][0]
    s1 = run_predict(data["sweeps"], str(tmp_path / "a"), _cfg(models["plain"], scenes=[scene]))
    s2 = run_predict(data["sweeps"], str(tmp_path / "b"), _cfg(models["plain"], scenes=[scene], scans_per_forward=2))
    assert s1.written == [scene] and s1.stats["scans"] == 2 and s1.exit_code == 0 and s2.exit_code == 0
    model, spec = _model(models["plain"])
    src = os.path.join(data["sweeps"], f"{scene}.parquet")
    sweeps = _read(src)
    a = read_prediction_shard(str(tmp_path / "a" / f"{scene}.parquet"))
    b = read_prediction_shard(str(tmp_path / "b" / f"{scene}.parquet"))
    for sw, ra, rb in zip(sweeps, a, b):
        n = sw["num_points"]
        assert ra["lidar_token"] == sw["lidar_token"] and ra["num_points"] == n
        assert ra["pred"].shape == (n,) and ra["xyz"].shape == (3 * n,)
        np.testing.assert_array_equal(ra["xyz"].reshape(n, 3), np.asarray(sw["points"], np.float32).reshape(n, 4)[:, :3])
        np.testing.assert_array_equal(ra["gt"], np.asarray(sw["labels"], np.uint8))
        assert ra.get("pseudo") is None and ra.get("visible") is None
        np.testing.assert_array_equal(ra["pred"], rb["pred"])  # batching 2 scans per forward changes nothing
        assert ra["pred"].min() >= 1                          # suppression on by default
        # same as the trainer's voxel -> point prediction
        row = dict(sw, pseudo=np.zeros(n, np.int64))
        batch = collate([prepare_row(row, IngestConfig(augment=False, target="gt"))])
        with torch.no_grad():
            ref = predict_points(model, batch, "cpu", suppress_class0=True).numpy()
        np.testing.assert_array_equal(ra["pred"], ref)
    # deterministic: a second run gives identical predictions
    run_predict(data["sweeps"], str(tmp_path / "c"), _cfg(models["plain"], scenes=[scene]))
    c = read_prediction_shard(str(tmp_path / "c" / f"{scene}.parquet"))
    assert all(np.array_equal(x["pred"], y["pred"]) for x, y in zip(a, c))


def test_class0_suppression(data, models):
    rows = _read(os.path.join(data["pairing"], f"{data['scenes'][0]}.parquet"))[:1]
    n = rows[0]["num_points"]
    biased, spec = _model(models["biased"])
    plain, _ = _model(models["plain"])
    biased_off = predict_scans(biased, rows, spec, suppress_class0=False)[0]["pred"]
    biased_on = predict_scans(biased, rows, spec)[0]
    plain_on = predict_scans(plain, rows, spec, with_logits=True)[0]
    assert (biased_off == 0).all()                      # the +100 bias wins everywhere without suppression
    assert biased_on["pred"].min() >= 1                 # suppressed: never 0 ...
    np.testing.assert_array_equal(biased_on["pred"], plain_on["pred"])  # ... and the class-0 bias is irrelevant
    lg = plain_on["logits"]
    assert lg.shape == (n, NUM_CLASSES)
    np.testing.assert_array_equal(lg[:, 1:].argmax(1) + 1, plain_on["pred"])


def test_predict_pool_pairing_join_skip_and_submission(data, models, ray_session, tmp_path):
    from nuscenes.utils.data_io import load_bin_file
    from nuscenes.utils.splits import create_splits_scenes

    from afov_ray.pipeline.export import SubmissionConfig, write_submission

    out = str(tmp_path / "pred")
    cfg = _cfg(models["plain"], ray=True, sweeps=data["sweeps"])
    s = run_predict(data["pairing"], out, cfg)
    assert s.written == data["scenes"] and s.stats["scans"] == 4 and s.exit_code == 0 and s.manifest_written
    for scene in data["scenes"]:
        pairing = {r["sample_token"]: r for r in _read(os.path.join(data["pairing"], f"{scene}.parquet"))}
        sweeps = {r["sample_token"]: r for r in _read(os.path.join(data["sweeps"], f"{scene}.parquet"))}
        for r in read_prediction_shard(os.path.join(out, f"{scene}.parquet")):
            p = pairing[r["sample_token"]]
            assert r["lidar_token"] == sweeps[r["sample_token"]]["lidar_token"]   # joined from the sweeps
            np.testing.assert_array_equal(r["visible"], np.asarray(p["superpoint"]) >= 0)
            np.testing.assert_array_equal(r["pseudo"], np.asarray(p["pseudo"], np.uint8))
            assert r["pred"].shape == (p["num_points"],) and r["pred"].min() >= 1
    again = run_predict(data["pairing"], out, cfg)
    assert again.written == [] and again.done_before == data["scenes"]       # committed scenes skipped

    # submission for the val split: byte counts, devkit reader, devkit validator
    val = [sc for sc in data["scenes"] if sc in create_splits_scenes()["val"]]
    sub = str(tmp_path / "submission")
    info = write_submission(out, sub, SubmissionConfig(split="val"), scenes=val)
    rows = [r for sc in val for r in read_prediction_shard(os.path.join(out, f"{sc}.parquet"))]
    assert info["files"] == len(rows) == 2
    for r in rows:
        f = Path(sub) / "lidarseg" / "val" / f"{r['lidar_token']}_lidarseg.bin"
        assert f.stat().st_size == r["num_points"]
        got = load_bin_file(str(f), type="lidarseg")
        np.testing.assert_array_equal(got, r["pred"])
        assert got.min() >= 1 and got.max() <= 16
    meta = json.loads((Path(sub) / "val" / "submission.json").read_text())["meta"]
    assert set(meta) == {"use_camera", "use_lidar", "use_radar", "use_map", "use_external"}
    assert all(type(v) is bool for v in meta.values())
    # the devkit's validate_submission needs every scene of the official split, which a generated
    # 2-scene dataroot does not have; the devkit reader and the per-file rules are checked above

    # predictions with class 0 cannot be submitted: DataError naming the scan
    out0 = str(tmp_path / "pred0")
    run_predict(data["pairing"], out0, _cfg(models["biased"], suppress_class0=False, scenes=[val[0]]))
    with pytest.raises(DataError, match=val[0]):
        write_submission(out0, str(tmp_path / "sub0"), SubmissionConfig(split="val"))


# ------------------------------------------------------------------------------------------------
# AFI and evaluation on constructed predictions (GT with 20 % noise)


def _write_rows(path: str, rows: list[dict]) -> None:
    from afov_ray.storage.atomic import atomic_write_parquet

    atomic_write_parquet(path, pa.Table.from_pylist(rows, schema=prediction_schema()))
    write_folder_manifest(os.path.dirname(path), schema="predictions", schema_version=1)


@pytest.fixture(scope="module")
def noisy(data, tmp_path_factory):
    """Prediction shards whose ``pred`` is GT with 20 % of labels replaced at random, plus a
    scene ``scene-bad`` with one good and three bad scans."""
    d = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(0)
    good_row = None
    for scene in data["scenes"]:
        rows = []
        for p in _read(os.path.join(data["pairing"], f"{scene}.parquet")):
            n = p["num_points"]
            gt = np.asarray(p["labels"], np.uint8)
            pred = gt.copy()
            flip = rng.random(n) < 0.2
            pred[flip] = rng.integers(1, NUM_CLASSES, int(flip.sum()))
            rows.append({"sample_token": p["sample_token"], "scene": scene, "lidar_token": None, "num_points": n,
                         "xyz": np.asarray(p["points"], np.float32).reshape(n, 4)[:, :3].ravel(), "pred": pred,
                         "gt": gt, "pseudo": np.asarray(p["pseudo"], np.uint8),
                         "visible": np.asarray(p["superpoint"]) >= 0})
        _write_rows(str(d / f"{scene}.parquet"), rows)
        good_row = rows[0]
    bad = []
    for tag in ("good", "short", "nan", "label"):
        r = dict(good_row, scene="scene-bad", sample_token=f"tok-{tag}")
        if tag == "short":
            r["pred"] = r["pred"][:-5]
        if tag == "nan":
            xyz = r["xyz"].copy()
            xyz[7] = np.nan
            r["xyz"] = xyz
        if tag == "label":
            p = r["pred"].copy()
            p[3] = 40
            r["pred"] = p
        bad.append(r)
    _write_rows(str(d / "scene-bad.parquet"), bad)
    return str(d)


def _accuracy(rows, col):
    gt = np.concatenate([r["gt"] for r in rows]).astype(np.int64)
    p = np.concatenate([r[col] for r in rows]).astype(np.int64)
    return float((gt[gt > 0] == p[gt > 0]).mean())


def _brute_miou(rows, col, mask=None):
    """Per-class counts over all points (GT 0 ignored, prediction 0 a miss, empty union -> 1)."""
    gt = np.concatenate([r["gt"] for r in rows]).astype(np.int64)
    p = np.concatenate([r[col] for r in rows]).astype(np.int64)
    if mask is not None:
        m = np.concatenate([mask(r) for r in rows])
        gt, p = gt[m], p[m]
    keep = gt > 0
    gt, p = gt[keep], p[keep]
    ious = []
    for c in range(1, NUM_CLASSES):
        tp = int(((gt == c) & (p == c)).sum())
        fn = int(((gt == c) & (p != c)).sum())
        fp = int(((gt != c) & (p == c)).sum())
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(ious))


def test_afi_pool_improves_noisy_labels_and_isolates_bad_scans(noisy, ray_session, tmp_path):
    from afov_ray.pipeline.refine import AFIPassConfig, run_afi_pass

    out = str(tmp_path / "afi")
    s = run_afi_pass(noisy, out, AFIPassConfig(exec=ExecConfig(max_actors=2, progress=False)))
    assert len(s.written) == 3 and s.stats["scans"] == 5 and len(s.skipped) == 3 and s.exit_code == 1
    errs = [json.loads(line) for line in (Path(out) / "_errors.jsonl").read_text().splitlines()]
    assert sorted(e["item"] for e in errs) == ["scene-bad/tok-label", "scene-bad/tok-nan", "scene-bad/tok-short"]
    assert any("skipped scene-bad/tok-short" in line for line in s.lines())
    assert any("prediction count" in e["message"] for e in errs)
    assert [r["sample_token"] for r in read_prediction_shard(os.path.join(out, "scene-bad.parquet"))] == ["tok-good"]
    rows = [r for f in sorted(Path(out).glob("scene-0*.parquet")) for r in read_prediction_shard(str(f))]
    assert len(rows) == 4
    for r in rows:
        changed = float((r["pred_afi"] != r["pred"]).mean())
        assert r["afi_changed"] == pytest.approx(changed)
        assert s.stats["per_scan"][f"{r['scene']}/{r['sample_token']}"]["changed_fraction"] == pytest.approx(changed)
    acc_raw, acc_afi = _accuracy(rows, "pred"), _accuracy(rows, "pred_afi")
    assert acc_raw == pytest.approx(0.8, abs=0.03)
    assert acc_afi > acc_raw + 0.03                               # AFI repairs label noise on flat structure
    summary = json.loads((Path(out) / "_summary.json").read_text())
    assert summary["stats"]["scans"] == 5 and summary["stats"]["mean_changed_fraction"] > 0
    again = run_afi_pass(noisy, out, AFIPassConfig(exec=ExecConfig(progress=False)))
    assert again.written == [] and len(again.done_before) == 3

    # seeded 2D assist: same result twice, and it differs from no assist
    from afov_ray.afi.config import AFIConfig
    from afov_ray.pipeline.refine import refine_scan

    r = rows[0]
    xyz = r["xyz"].reshape(-1, 3)
    a1, st = refine_scan("x/y", xyz, r["pred"], r["pseudo"], AFIConfig(use_assist=True, assist_seed=3))
    a2, _ = refine_scan("x/y", xyz, r["pred"], r["pseudo"], AFIConfig(use_assist=True, assist_seed=3))
    np.testing.assert_array_equal(a1, a2)
    assert st["n_assist_replaced"] > 0

    # evaluation of raw / AFI / pseudo, all / visible / unseen, with plots and MLflow
    from afov_ray.pipeline.evaluate import EvaluateConfig, run_evaluate
    from afov_ray.train.tracking import TrackingConfig

    ev = tmp_path / "eval"
    cfg = EvaluateConfig(scenes=[f"scene-000{i}" for i in (1, 3)],
                         tracking=TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ev"))
    doc = run_evaluate(out, str(ev), cfg)
    src = doc["sources"]
    assert set(src) == {"pred", "pred_afi", "pseudo"} and doc["scans"] == 4
    assert doc["visible_mask"] == ["visible column (pairing superpoint >= 0)"]
    for col in ("pred", "pred_afi", "pseudo"):
        assert src[col]["all"]["miou"] == pytest.approx(_brute_miou(rows, col), abs=1e-12)
        assert src[col]["visible"]["miou"] == pytest.approx(_brute_miou(rows, col, lambda r: r["visible"]), abs=1e-12)
        assert src[col]["unseen"]["miou"] == pytest.approx(_brute_miou(rows, col, lambda r: ~r["visible"]), abs=1e-12)
        H = {k: np.asarray(src[col][k]["confusion"]) for k in ("all", "visible", "unseen")}
        np.testing.assert_array_equal(H["visible"] + H["unseen"], H["all"])
    assert src["pred_afi"]["all"]["accuracy"] > src["pred"]["all"]["accuracy"]
    assert "empty union" in doc["rules"]["empty_union"]
    md = (ev / "metrics.md").read_text()
    assert "| **mIoU** |" in md and "pred_afi (visible)" in md
    assert json.loads((ev / "metrics.json").read_text())["scans"] == 4
    for p in doc["plots"]:
        assert Path(p).suffix == ".png" and Path(p).stat().st_size > 0
    assert any("confusion_pred_afi" in p for p in doc["plots"]) and any("bev_" in p for p in doc["plots"])
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(doc["mlflow_run_id"])
    assert run.data.metrics["pred_afi/all/mIoU"] == pytest.approx(src["pred_afi"]["all"]["miou"])
    assert "pred_afi/all/iou/driveable_surface" in run.data.metrics   # per-class metrics named by class


def test_evaluate_records_bad_scans_and_draws_camera_plot(noisy, data, tmp_path):
    from afov_ray.pipeline.evaluate import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(sources=["pred"], sweeps=data["sweeps"], dataroot=data["root"], bev_scans=1, exec=LOCAL)
    doc = run_evaluate(noisy, str(tmp_path / "ev"), cfg)
    assert sorted(e["item"] for e in doc["errors"]) == ["scene-bad/tok-label", "scene-bad/tok-short"]
    assert doc["scans"] == 6                      # 4 generated + tok-good + tok-nan (NaN xyz is fine to score)
    cams = [p for p in doc["plots"] if "camera_" in p]
    assert len(cams) == 1 and Path(cams[0]).stat().st_size > 0


def test_evaluate_job_cli(noisy, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "jobs/evaluate.py", f"pred={noisy}", f"out={tmp_path / 'ev'}",
                           "eval.plots=false", "eval.sources=[pred]", "eval.empty_union=nan", "eval.exec.use_ray=false"],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1, proc.stderr        # the two bad scans are reported
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["config"]["empty_union"] == "nan" and set(doc["sources"]) == {"pred"}
    assert "skipped scene-bad/tok-short" in proc.stdout
