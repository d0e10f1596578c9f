"""Batch inference, AFI at scale, evaluation and submission on a tiny generated nuScenes dataset.

Real components throughout: the generator, prepare, the simulated teacher and the pairing pass build
sweep + pairing shards; a random-init ``minkunet18`` saved with torch.save is loaded back; the AFI
and predict passes run as Ray Data actor pools on a 2-CPU local Ray; the devkit reads the submission.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from afov_ray.errors import DataError
from afov_ray.pipeline.predict import (PredictConfig, build_segmentation_model, predict_scans, predict_scene,
                                   prediction_schema, read_prediction_shard, run_predict)

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 17


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
    """Generated dataroot -> sweep shards -> teacher shards -> pairing shards (no Ray)."""
    from afov_ray.pipeline.prepare import prepare_dataset
    from afov_ray.datasets.synth.config import SynthConfig
    from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes
    from afov_ray.pipeline.pair import PairPassConfig, pair_scene
    from afov_ray.storage.atomic import atomic_write_parquet
    from afov_ray.pipeline.teacher import SimulatedTeacherActor, TeacherPassConfig, camera_items

    base = tmp_path_factory.mktemp("evaldata")
    cfg = SynthConfig(num_scenes=2, keyframes_per_scene=2, num_val_scenes=1, image_width=160, image_height=90,
                      num_beams=16, azimuth_steps=360)
    root = generate_nuscenes(base / "root", cfg)
    prep = prepare_dataset("nuscenes", str(root), str(base / "prep"), version="v1.0-trainval", use_ray=False)
    sweeps = prep.sweeps_uri
    actor = SimulatedTeacherActor(TeacherPassConfig(dataroot=str(root)))
    items = camera_items(sweeps)
    scenes = sorted({i["scene"] for i in items})
    for scene in scenes:
        its = [i for i in items if i["scene"] == scene]
        table = actor({k: np.array([i[k] for i in its]) for k in its[0]})
        atomic_write_parquet(str(base / "teacher" / f"{scene}.parquet"), table)
        pair_scene(os.path.join(sweeps, f"{scene}.parquet"), str(base / "teacher" / f"{scene}.parquet"),
                   str(base / "pairing"), PairPassConfig())
    return {"root": str(root), "sweeps": sweeps, "pairing": str(base / "pairing"), "scenes": scenes, "base": base}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random-init minkunet18 state dict, and the same with a +100 bias on class 0."""
    from afov_ray.models.res16unet import build_model

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    state = build_model("minkunet18", 1, NUM_CLASSES, "torch").state_dict()
    torch.save(state, d / "plain.pt")
    biased = {k: v.clone() for k, v in state.items()}
    biased["final.bias"][0, 0] += 100.0
    torch.save(biased, d / "biased.pt")
    return {"plain": str(d / "plain.pt"), "biased": str(d / "biased.pt")}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


def _cfg(model: str, **kw) -> PredictConfig:
    return PredictConfig(model=model, model_name="minkunet18", **kw)


def _read(path: str) -> list[dict]:
    return pq.read_table(path).to_pylist()


# ------------------------------------------------------------------------------------------------
# inference


def test_model_loads_strictly(models):
    m = build_segmentation_model(_cfg(models["plain"]))
    ref = torch.load(models["plain"], weights_only=True)
    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
    assert not m.training
    with pytest.raises(DataError, match="final"):
        build_segmentation_model(_cfg(models["plain"], num_classes=20))  # head shape mismatch, named


def test_predict_sweeps_shapes_determinism_and_grouping(data, models, tmp_path):
    from afov_ray.train.data import IngestConfig, collate, prepare_row
    from afov_ray.train.stages import predict_points

    cfg = _cfg(models["plain"])
    model = build_segmentation_model(cfg)
    scene = data["scenes"][0]
    src = os.path.join(data["sweeps"], f"{scene}.parquet")
    s1 = predict_scene(model, src, str(tmp_path / "a.parquet"), cfg)
    s2 = predict_scene(model, src, str(tmp_path / "b.parquet"), _cfg(models["plain"], scans_per_forward=2))
    assert s1["kind"] == "sweeps" and s1["scans"] == 2 and not s1["errors"]
    sweeps = _read(src)
    a, b = read_prediction_shard(str(tmp_path / "a.parquet")), read_prediction_shard(str(tmp_path / "b.parquet"))
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
    # deterministic: a second run gives identical bytes of predictions
    predict_scene(model, src, str(tmp_path / "c.parquet"), cfg)
    c = read_prediction_shard(str(tmp_path / "c.parquet"))
    assert all(np.array_equal(x["pred"], y["pred"]) for x, y in zip(a, c))


def test_class0_suppression(data, models):
    rows = _read(os.path.join(data["pairing"], f"{data['scenes'][0]}.parquet"))[:1]
    n = rows[0]["num_points"]
    biased_off = predict_scans(build_segmentation_model(_cfg(models["biased"], suppress_class0=False)), rows,
                               _cfg(models["biased"], suppress_class0=False))[0]["pred"]
    biased_on = predict_scans(build_segmentation_model(_cfg(models["biased"])), rows, _cfg(models["biased"]))[0]
    plain_on = predict_scans(build_segmentation_model(_cfg(models["plain"])), rows,
                             _cfg(models["plain"], with_logits=True))[0]
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
    cfg = _cfg(models["plain"], sweeps=data["sweeps"], max_actors=2)
    s = run_predict(data["pairing"], out, cfg, progress=False)
    assert s["scenes_new"] == 2 and s["scans"] == 4 and not s["errors"]
    for scene in data["scenes"]:
        pairing = {r["sample_token"]: r for r in _read(os.path.join(data["pairing"], f"{scene}.parquet"))}
        sweeps = {r["sample_token"]: r for r in _read(os.path.join(data["sweeps"], f"{scene}.parquet"))}
        for r in read_prediction_shard(os.path.join(out, f"{scene}.parquet")):
            p = pairing[r["sample_token"]]
            assert r["lidar_token"] == sweeps[r["sample_token"]]["lidar_token"]   # joined from the sweeps
            np.testing.assert_array_equal(r["visible"], np.asarray(p["superpoint"]) >= 0)
            np.testing.assert_array_equal(r["pseudo"], np.asarray(p["pseudo"], np.uint8))
            assert r["pred"].shape == (p["num_points"],) and r["pred"].min() >= 1
    again = run_predict(data["pairing"], out, cfg, progress=False)
    assert again["scenes_new"] == 0 and again["scenes_done"] == 2           # committed scenes skipped

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
    src = os.path.join(data["pairing"], f"{val[0]}.parquet")
    bcfg = _cfg(models["biased"], suppress_class0=False)
    predict_scene(build_segmentation_model(bcfg), src, os.path.join(out0, f"{val[0]}.parquet"), bcfg)
    with pytest.raises(DataError, match=val[0]):
        write_submission(out0, str(tmp_path / "sub0"), SubmissionConfig(split="val"))


# ------------------------------------------------------------------------------------------------
# AFI and evaluation on constructed predictions (GT with 20 % noise)


def _write_rows(path: str, rows: list[dict]) -> None:
    from afov_ray.storage.atomic import atomic_write_parquet

    atomic_write_parquet(path, pa.Table.from_pylist(rows, schema=prediction_schema()))


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
    s = run_afi_pass(noisy, out, AFIPassConfig(max_actors=2), progress=False)
    assert s["scenes_new"] == 3 and s["scans"] == 5 and s["scans_failed"] == 3
    errs = [json.loads(line) for line in (Path(out) / "_errors.jsonl").read_text().splitlines()]
    assert sorted(e["item"] for e in errs) == ["scene-bad/tok-label", "scene-bad/tok-nan", "scene-bad/tok-short"]
    assert any("prediction count" in e["message"] for e in errs)
    assert [r["sample_token"] for r in read_prediction_shard(os.path.join(out, "scene-bad.parquet"))] == ["tok-good"]
    rows = [r for f in sorted(Path(out).glob("scene-0*.parquet")) for r in read_prediction_shard(str(f))]
    assert len(rows) == 4
    for r in rows:
        changed = float((r["pred_afi"] != r["pred"]).mean())
        assert r["afi_changed"] == pytest.approx(changed)
        assert s["per_scan"][f"{r['scene']}/{r['sample_token']}"]["changed_fraction"] == pytest.approx(changed)
    acc_raw, acc_afi = _accuracy(rows, "pred"), _accuracy(rows, "pred_afi")
    assert acc_raw == pytest.approx(0.8, abs=0.03)
    assert acc_afi > acc_raw + 0.03                               # AFI repairs label noise on flat structure
    summary = json.loads((Path(out) / "_summary.json").read_text())
    assert summary["scans"] == 5 and summary["mean_changed_fraction"] > 0
    again = run_afi_pass(noisy, out, AFIPassConfig(), progress=False)
    assert again["scenes_new"] == 0

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


def test_evaluate_records_bad_scans_and_draws_camera_plot(noisy, data, tmp_path):
    from afov_ray.pipeline.evaluate import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(sources=["pred"], sweeps=data["sweeps"], dataroot=data["root"], bev_scans=1)
    doc = run_evaluate(noisy, str(tmp_path / "ev"), cfg)
    assert sorted(e["item"] for e in doc["errors"]) == ["scene-bad/tok-label", "scene-bad/tok-short"]
    assert doc["scans"] == 6                      # 4 generated + tok-good + tok-nan (NaN xyz is fine to score)
    cams = [p for p in doc["plots"] if "camera_" in p]
    assert len(cams) == 1 and Path(cams[0]).stat().st_size > 0


def test_evaluate_job_cli(noisy, ray_session, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = job  # dataclasses resolve field types through the module
    try:
        spec.loader.exec_module(job)
        rc = job.main([f"pred={noisy}", f"out={tmp_path / 'ev'}", "eval.plots=false", "eval.sources=[pred]",
                       "eval.empty_union=nan"])
    finally:
        sys.modules.pop(spec.name, None)
    assert rc == 1                                  # the two bad scans are reported
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["config"]["empty_union"] == "nan" and set(doc["sources"]) == {"pred"}
    assert "ERROR scene-bad/tok-short" in capsys.readouterr().out
