"""The pipeline on REAL frames with nothing but labels or with official teacher files (in-process passes).

- nuScenes scene-0916 (5 real keyframes x 6 cameras) with placeholder lidarseg labels that follow the real
  points: prepare -> oracle teacher -> pair: the pseudo-labels agree with the ground truth on the
  camera-visible points; official SAN / CAT-Seg / FC-CLIP files built by hand from those masks -> the
  official teacher -> the same pseudo-labels; a camera without files and a wrong-size PNG are skipped and named.
- SemanticKITTI: the real labelled scan 000000 (real labels, real KITTI calibration, blank image) and the
  real KITTI frame 000008 (image, calibration; synthetic labels): prepare -> oracle (kitti dictionary) ->
  pair -> predict -> evaluate on 20 classes; splits.json with the official split and the 1 % frames.
- SemanticKITTI LiDAR-only (no image_2, no calib.txt): prepare -> predict from sweep shards -> evaluate ->
  the .label submission.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from afov_ray.config import ConfigError
from afov_ray.datasets.labels import KITTI_EVAL_TO_RAW, KITTI_RAW_TO_EVAL, kitti_raw_to_eval
from afov_ray.errors import DataError
from afov_ray.pipeline.evaluate import EvaluateConfig, run_evaluate
from afov_ray.pipeline.export import SubmissionConfig, write_submission
from afov_ray.pipeline.pair import PairPassConfig, run_pair_pass
from afov_ray.pipeline.predict import PredictConfig, run_predict
from afov_ray.pipeline.prepare import PrepareConfig, run_prepare
from afov_ray.pipeline.shard_pass import ExecConfig
from afov_ray.pipeline.teacher import TeacherPassConfig, run_teacher_pass
from afov_ray.teachers.official import OfficialTeacherConfig
from afov_ray.teachers.schema import from_table
from tests.pipeline.real_roots import kitti_root, save_model, spatial_lidarseg

LOCAL = ExecConfig(use_ray=False, progress=False)
VERSION = "v1.0-mini"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------
# nuScenes scene-0916


@pytest.fixture(scope="module")
def ns(tmp_path_factory, make_nuscenes_root):
    base = tmp_path_factory.mktemp("ns_real")
    root = make_nuscenes_root(base / "root", lidarseg_labels=lambda tok, n: np.zeros(n, np.uint8))
    assert spatial_lidarseg(root) == 5
    prep = run_prepare(PrepareConfig(dataroot=str(root), version=VERSION, exec=LOCAL), str(base / "out"))
    teacher = run_teacher_pass(prep.out, str(base / "teacher"), TeacherPassConfig(teacher="oracle", exec=LOCAL))
    pair = run_pair_pass(prep.out, teacher.stats["run_uri"], str(base / "pairing"), PairPassConfig(exec=LOCAL))
    return {"base": base, "root": root, "prep": prep, "teacher": teacher, "pair": pair}


def test_oracle_teacher_on_real_nuscenes(ns):
    prep, teacher, pair = ns["prep"], ns["teacher"], ns["pair"]
    assert prep.exit_code == 0 and prep.stats["keyframes"] == 5 and prep.warnings == []
    assert prep.stats["splits"] == {"train": 0, "val": 1, "train_1pct": 0}      # scene-0916 is in mini_val
    assert teacher.exit_code == 0 and teacher.stats["images"] == 30
    run = json.loads((ns["base"] / "teacher" / teacher.stats["run_id"] / "run.json").read_text())
    assert run["oracle"] is True and run["backend"] == "oracle"
    assert run["oracle_settings"]["text_embedding"] == "synthetic" and run["num_texts"] == 175
    st = pair.stats
    assert pair.exit_code == 0 and st["keyframes"] == 5
    assert st["scored"] > 50_000, st["scored"]                 # camera-visible labelled points of 5 scans
    assert st["agreement"] >= 0.995, st["agreement"]           # measured 1.000 (102,026 points)
    assert 0.3 < st["coverage"] < 0.9
    for name in ("car", "driveable_surface", "manmade", "vegetation"):
        assert st["per_class"][name]["agreement"] >= 0.99, (name, st["per_class"][name])
    # one semantic mask per class present, each the first text of its category, features = text rows
    images = from_table(pq.read_table(sorted((ns["base"] / "teacher" / teacher.stats["run_id"] / "images")
                                             .glob("*.parquet"))[0]))
    im = next(i for i in images if i.camera == "CAM_FRONT")
    assert im.mask_map.shape == (900, 1600) and list(im.mask_ids) == list(range(1, im.num_masks + 1))
    assert set(im.text_index.tolist()) <= {0, 8, 30, 51, 84, 86, 96, 118, 165}   # first text of each category
    assert int(im.area.sum()) == int((im.mask_map > 0).sum()) and 0 < (im.mask_map > 0).mean() < 0.5
    text = np.load(ns["base"] / "teacher" / teacher.stats["run_id"] / "text_embedding.npy")
    rows = text[im.text_index] / np.linalg.norm(text[im.text_index], axis=1, keepdims=True)
    np.testing.assert_allclose(im.features.astype(np.float32), rows, atol=2e-3)


def _write_official(images, folder, kind: str, num_texts: int, dim: int) -> None:
    """The official layout by hand: <tok>.png (uint8 ids), <tok>.json, <tok>.pt (row 0 zeros; FC-CLIP [f_in,
    f_out]), text_embedding.pt (175 rows; FC-CLIP 176 with a void row)."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(num_texts + (kind == "fcclip"), dim, generator=g), dim=1)
    torch.save(table, folder / "text_embedding.pt")
    for im in images:
        tok = im.camera_token
        Image.fromarray(im.mask_map.astype(np.uint8)).save(folder / f"{tok}.png")
        feats = torch.zeros(im.num_masks + 1, dim)
        feats[1:] = torch.from_numpy(im.features.astype(np.float32))
        if kind == "fcclip":
            js = [{"id": int(i), "isthing": int(t) < 96, "category_id": int(t)}
                  for i, t in zip(im.mask_ids, im.text_index)]
            torch.save([torch.randn(im.num_masks + 1, dim, generator=g) * (torch.arange(im.num_masks + 1) > 0)[:, None],
                        feats], folder / f"{tok}.pt")
        else:
            js = [{"id": int(i), "category_id": int(t), "area": int(a)}
                  for i, t, a in zip(im.mask_ids, im.text_index, im.area)]
            torch.save(feats, folder / f"{tok}.pt")
        (folder / f"{tok}.json").write_text(json.dumps(js))


@pytest.mark.parametrize("kind", ["san", "catseg", "fcclip"])
def test_official_teacher_files_on_real_nuscenes(ns, kind):
    base = ns["base"]
    oracle_dir = base / "teacher" / ns["teacher"].stats["run_id"]
    images = from_table(pq.read_table(next((oracle_dir / "images").glob("*.parquet"))))
    folder = base / f"official_{kind}"
    _write_official(images, folder, kind, 175, 768)
    missing, wrong = images[3], images[10]
    for ext in ("png", "json", "pt"):
        (folder / f"{missing.camera_token}.{ext}").unlink()
    Image.fromarray(np.ones((450, 800), np.uint8)).save(folder / f"{wrong.camera_token}.png")
    cfg = TeacherPassConfig(teacher="official", official=OfficialTeacherConfig(dir=str(folder), kind=kind), exec=LOCAL)
    t = run_teacher_pass(ns["prep"].out, str(base / f"teacher_{kind}"), cfg)
    assert t.stats["images"] == 28 and t.exit_code == 1 and t.manifest_written
    names = {s["item"]: s["message"] for s in t.skipped}
    assert set(names) == {f"scene-0916/{missing.sample_token}/{missing.camera}",
                          f"scene-0916/{wrong.sample_token}/{wrong.camera}"}
    assert "missing file" in names[f"scene-0916/{missing.sample_token}/{missing.camera}"]
    assert "(450, 800) differs from the image size (900, 1600)" in names[f"scene-0916/{wrong.sample_token}/{wrong.camera}"]
    assert any(f"skipped scene-0916/{missing.sample_token}/{missing.camera}" in line for line in t.lines())
    run = json.loads((base / f"teacher_{kind}" / t.stats["run_id"] / "run.json").read_text())
    assert run["void_row"] is (kind == "fcclip") and run["num_texts"] == 175 and run["official"]["kind"] == kind
    assert run["official"]["text_embedding_rows"] == (176 if kind == "fcclip" else 175)
    got = {(i.sample_token, i.camera): i for i in from_table(pq.read_table(
        next((base / f"teacher_{kind}" / t.stats["run_id"] / "images").glob("*.parquet"))))}
    for im in images:
        if im is missing or im is wrong:
            continue
        g = got[(im.sample_token, im.camera)]
        assert g.camera_token == im.camera_token
        np.testing.assert_array_equal(g.mask_map, im.mask_map)
        np.testing.assert_array_equal(g.text_index, im.text_index)
        np.testing.assert_array_equal(g.features, im.features)       # FC-CLIP: f_out, not f_in
        assert (g.is_thing is not None) == (kind == "fcclip")
    if kind == "fcclip":   # the pseudo-labels equal the oracle's wherever both have a camera
        pair = run_pair_pass(ns["prep"].out, t.stats["run_uri"], str(base / "pairing_fcclip"), PairPassConfig(exec=LOCAL))
        assert pair.exit_code == 0 and pair.stats["agreement"] >= 0.995
        assert pair.stats["scored"] > 0.9 * ns["pair"].stats["scored"]


def test_official_text_table_rows_are_checked(ns, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    torch.save(torch.randn(176, 768), folder / "text_embedding.pt")
    cfg = TeacherPassConfig(teacher="official", official=OfficialTeacherConfig(dir=str(folder), kind="san"), exec=LOCAL)
    with pytest.raises(DataError, match="san text embedding has 176 rows, expected 175"):
        run_teacher_pass(ns["prep"].out, str(tmp_path / "t"), cfg)


def test_simulated_teacher_on_real_data_is_one_line(ns, tmp_path):
    cfg = TeacherPassConfig(dataroot=str(ns["root"]), exec=LOCAL)
    with pytest.raises(DataError) as e:
        run_teacher_pass(ns["prep"].out, str(tmp_path / "t"), cfg)
    assert e.value.item == str(ns["root"]) and "teacher.teacher=oracle" in e.value.message and "\n" not in str(e.value)
    assert not (tmp_path / "t").exists()        # refused on the driver, before any run folder


# ------------------------------------------------------------------------------------------------
# SemanticKITTI


@pytest.fixture(scope="module")
def kitti(tmp_path_factory, real_data):
    base = tmp_path_factory.mktemp("kitti_real")
    root = kitti_root(base / "root", real_data)
    prep = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=str(root), exec=LOCAL), str(base / "out"))
    teacher = run_teacher_pass(prep.out, str(base / "teacher"),
                               TeacherPassConfig(teacher="oracle", dictionary="kitti", exec=LOCAL))
    pair = run_pair_pass(prep.out, teacher.stats["run_uri"], str(base / "pairing"),
                         PairPassConfig(dictionary="kitti", exec=LOCAL))
    return {"base": base, "root": root, "prep": prep, "teacher": teacher, "pair": pair}


def test_labelled_semantickitti_through_oracle_and_pair(kitti):
    prep, pair = kitti["prep"], kitti["pair"]
    assert prep.exit_code == 0 and prep.stats["keyframes"] == 2 and sorted(prep.written) == ["00", "08"]
    splits = json.loads((kitti["base"] / "out" / "splits.json").read_text())["splits"]
    assert splits["train"]["scenes"] == ["00"] and splits["val"]["keyframes"] == ["08/000000"]
    assert splits["train_1pct"]["keyframes"] == ["00/000008"] and splits["train_1pct"]["rule"]["level"] == "frame"
    assert kitti["teacher"].stats["images"] == 2 and kitti["teacher"].exit_code == 0
    st = pair.stats
    assert pair.exit_code == 0 and st["keyframes"] == 2 and st["scored"] > 15_000
    assert st["agreement"] >= 0.995, st["agreement"]                 # measured 1.000 (26,283 points)
    pc = st["per_class"]
    assert {"road", "car", "building", "vegetation"} <= set(pc) and all(n != "barrier" for n in pc)
    assert pc["car"]["agreement"] >= 0.99                            # incl. the moving-car raw class 252


def test_oracle_refuses_the_wrong_dictionary(kitti, tmp_path):
    with pytest.raises(ConfigError, match="teacher.dictionary.*set teacher.dictionary=kitti"):
        run_teacher_pass(kitti["prep"].out, str(tmp_path / "t"), TeacherPassConfig(teacher="oracle", exec=LOCAL))


def test_semantickitti_predict_and_evaluate_20_classes(kitti, tmp_path):
    model = save_model(tmp_path / "model", 20, "kitti")
    pred = run_predict(kitti["pair"].out, str(tmp_path / "pred"), PredictConfig(model=model, exec=LOCAL))
    assert pred.exit_code == 0 and pred.stats["scans"] == 2
    doc = run_evaluate(pred.out, str(tmp_path / "eval"), EvaluateConfig(dictionary="kitti",
                                                                        plots=False, exec=LOCAL))
    assert doc["exit_code"] == 0 and doc["scans"] == 2 and len(doc["class_names"]) == 20
    assert doc["class_names"][9] == "road" and doc["class_names"][19] == "traffic-sign"
    vis = doc["sources"]["pseudo"]["visible"]
    assert vis["accuracy"] >= 0.995 and len(vis["iou_per_class"]) == 19   # the oracle pseudo-labels
    assert doc["sources"]["pred"]["all"]["n_points"] > 100_000


@pytest.fixture(scope="module")
def lidar_only(tmp_path_factory, real_data):
    base = tmp_path_factory.mktemp("kitti_lidar")
    root = kitti_root(base / "root", real_data, cameras=False)
    cfg = PrepareConfig(dataset="semantickitti", dataroot=str(root), cameras=False, exec=LOCAL)
    return {"base": base, "root": root, "prep": run_prepare(cfg, str(base / "out"))}


def test_lidar_only_semantickitti(lidar_only, tmp_path, capsys):
    prep = lidar_only["prep"]
    assert prep.exit_code == 0 and prep.stats["keyframes"] == 1 and prep.written == ["08"]
    t = pq.read_table(f"{prep.out}/08.parquet")
    assert t.column("cam_channel").to_pylist() == [[]] and t.column("num_points").to_pylist() == [123389]
    # a teacher needs cameras: the scene fails with one line saying why
    s = run_teacher_pass(prep.out, str(tmp_path / "t"), TeacherPassConfig(teacher="oracle", dictionary="kitti",
                                                                           exec=LOCAL))
    assert s.exit_code == 3 and "hold no camera" in s.failed[0]["message"]
    # predict straight from the sweep shards, evaluate on 20 classes, export .label
    model = save_model(tmp_path / "model", 20, "kitti")
    pred = run_predict(prep.out, str(tmp_path / "pred"), PredictConfig(model=model, exec=LOCAL))
    assert pred.exit_code == 0 and pred.stats["scans"] == 1
    doc = run_evaluate(pred.out, str(tmp_path / "eval"), EvaluateConfig(dictionary="kitti",
                                                                        plots=False, exec=LOCAL))
    assert doc["exit_code"] == 0 and doc["points"] == 123389 and doc["visible_mask"] == []
    assert set(doc["sources"]["pred"]) == {"all"}          # no camera: no visible / unseen subsets
    gt = np.fromfile(lidar_only["root"] / "sequences/08/labels/000000.label", np.uint32)
    assert doc["sources"]["pred"]["all"]["n_points"] == int((kitti_raw_to_eval(gt) > 0).sum())
    # AFI with the SemanticKITTI preset (no nuScenes ground step), as jobs/afi.py runs it; then its mIoU
    from afov_ray.config import load_config
    from afov_ray.pipeline.refine import AFIJob, afi_job

    afi_cfg = load_config(AFIJob, str(ROOT / "configs/semantickitti/afi.yaml"),
                          [f"pred={pred.out}", f"out={tmp_path / 'pred_afi'}", "afi_pass.exec.use_ray=false",
                           "afi_pass.exec.progress=false"])
    assert afi_job(afi_cfg) == 0
    assert "afi: 1 items, 0 already done, 1 new, 0 failed" in capsys.readouterr().out
    doc_afi = run_evaluate(str(tmp_path / "pred_afi"), str(tmp_path / "eval_afi"),
                           EvaluateConfig(dictionary="kitti", plots=False, exec=LOCAL))
    assert doc_afi["exit_code"] == 0 and doc_afi["sources"]["pred_afi"]["all"]["n_points"] == doc["points"] - \
        int((kitti_raw_to_eval(gt) == 0).sum())
    info = write_submission(pred.out, str(tmp_path / "sub"), SubmissionConfig(format="semantickitti", split="val"))
    assert info["files"] == 1 and info["points"] == 123389
    lab = np.fromfile(tmp_path / "sub/sequences/08/predictions/000000.label", np.uint32)
    assert lab.shape == (123389,)
    pred_eval = read_col(pred.out, "pred")
    inv = np.vectorize(KITTI_EVAL_TO_RAW.get)(pred_eval)
    np.testing.assert_array_equal(lab, inv)
    assert set(np.unique(lab)) <= set(KITTI_EVAL_TO_RAW.values()) - {0}
    assert np.array_equal(np.vectorize(KITTI_RAW_TO_EVAL.get)(lab), pred_eval)   # round trip to eval ids


def read_col(folder: str, col: str) -> np.ndarray:
    (path,) = Path(folder).glob("*.parquet")
    return np.asarray(pq.read_table(path).column(col).to_pylist()[0])


def test_learning_map_inv_inverts_the_label_map():
    for e, raw in KITTI_EVAL_TO_RAW.items():
        assert KITTI_RAW_TO_EVAL[raw] == e
    assert sorted(KITTI_EVAL_TO_RAW) == list(range(20))


def test_scans_without_ground_truth_are_listed_not_failed(lidar_only, tmp_path):
    """A test-style scan (no .label) beside a labelled one: evaluate scores one, lists the other, exit 0."""
    root = tmp_path / "root"
    shutil.copytree(lidar_only["root"], root, symlinks=True)
    (root / "sequences/08/velodyne/000001.bin").symlink_to((root / "sequences/08/velodyne/000000.bin").resolve())
    prep = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=str(root), cameras=False, exec=LOCAL),
                       str(tmp_path / "out"))
    assert prep.exit_code == 0 and prep.stats["keyframes"] == 2
    model = save_model(tmp_path / "model", 20, "kitti")
    pred = run_predict(prep.out, str(tmp_path / "pred"), PredictConfig(model=model, exec=LOCAL))
    doc = run_evaluate(pred.out, str(tmp_path / "eval"), EvaluateConfig(dictionary="kitti",
                                                                        plots=False, exec=LOCAL))
    assert doc["exit_code"] == 0 and doc["scans"] == 1 and doc["unscored"] == ["08/08/000001"]


# ------------------------------------------------------------------------------------------------
# one-line errors, warnings and splits on real data


def _job(*args: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled"))


def test_jobs_give_one_line_errors_on_real_data(ns, tmp_path, make_nuscenes_root):
    """jobs/prepare.py on a table set without ego_pose.json and calibrated_sensor.json; jobs/teacher.py with the
    simulated teacher on real sweeps: exit 1, one stderr line naming what is wrong, no traceback."""
    root = make_nuscenes_root(tmp_path / "root")
    for t in ("ego_pose", "calibrated_sensor"):
        (root / VERSION / f"{t}.json").unlink()
    proc = _job("jobs/prepare.py", f"prepare.dataroot={root}", f"prepare.version={VERSION}", f"out={tmp_path / 'o'}",
                "prepare.exec.use_ray=false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "incomplete nuScenes table set: missing calibrated_sensor.json, ego_pose.json" in line
    proc = _job("jobs/teacher.py", f"sweeps={ns['prep'].out}", f"out={tmp_path / 't'}", f"teacher.dataroot={ns['root']}",
                "teacher.exec.use_ray=false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert str(ns["root"]) in line and "simulated teacher needs a dataroot made by the generator" in line


def test_prepare_job_prints_warnings_and_never_marks_an_empty_scene_done(tmp_path, make_nuscenes_root, real_data,
                                                                       capsys):
    from afov_ray.config import load_config
    from afov_ray.pipeline.prepare import PrepareJob, prepare_job

    root = make_nuscenes_root(tmp_path / "root", lidarseg_labels=lambda tok, n: np.zeros(n, np.uint8))
    (root / VERSION / "lidarseg.json").unlink()        # label files without their table
    cfg = load_config(PrepareJob, None, [f"prepare.dataroot={root}", f"prepare.version={VERSION}",
                                         f"out={tmp_path / 'o'}", "prepare.exec.use_ray=false",
                                         "prepare.exec.progress=false"])
    assert prepare_job(cfg) == 0
    out = capsys.readouterr().out
    assert "WARNING lidarseg/v1.0-mini/ holds 5 lidarseg label files but v1.0-mini/lidarseg.json is missing" in out
    assert "keyframes: 5 written" in out and "split 'train' is empty" in out
    # SemanticKITTI with cameras but no calib.txt: every scan skipped, the sequence fails (never marked done)
    kroot = kitti_root(tmp_path / "k", real_data)
    (kroot / "sequences/08/calib.txt").unlink()
    s = run_prepare(PrepareConfig(dataset="semantickitti", dataroot=str(kroot), exec=LOCAL), str(tmp_path / "ko"))
    assert s.written == ["00"] and [f["item"] for f in s.failed] == ["08"] and s.exit_code == 1
    assert "produced no rows" in s.failed[0]["message"] and "calibration file missing" in s.failed[0]["message"]
    assert "prepare.cameras=false" in s.failed[0]["message"]
    assert not (Path(s.out) / "_done" / "08.json").exists() and not s.manifest_written


def test_training_splits_on_real_prepared_data(ns, kitti):
    """nuScenes scene-0916 is a val scene: the train splits are empty and training says so; SemanticKITTI's
    train_1pct is frame-level (its keyframes are selected), val is the whole sequence 08."""
    from afov_ray.train.jobs import DataConfig, split_selection

    ns_cfg = DataConfig(pairing=ns["pair"].out, split_file=str(ns["base"] / "out" / "splits.json"))
    with pytest.raises(DataError, match="split 'train_1pct' is empty"):
        split_selection(ns_cfg, "train_1pct")
    assert split_selection(ns_cfg, "val") == (["scene-0916"], None)
    k_cfg = DataConfig(pairing=kitti["pair"].out, split_file=str(kitti["base"] / "out" / "splits.json"))
    assert split_selection(k_cfg, "train_1pct") == (["00"], ["00/000008"])
    assert split_selection(k_cfg, "val") == (["08"], None)
