"""inspect: stats against a brute-force count, the projection on a hand-computed case, PNG output."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from afov_ray.datasets.inspect import _load_image, dataset_stats, format_stats, inspect_sweeps, project_points
from tests.storage.random_reader import RandomReader
from tests.storage.random_reader import run_prepare_on as prepare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_project_points_hand_computed():
    K = np.array([[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]])
    l2c = np.eye(4)
    l2c[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # lidar x forward -> camera z
    pts = np.array([[10, 0, 0, 1], [10, 1, 0.5, 1], [-10, 0, 0, 1], [10, 20, 0, 1], [0.5, 0, 0, 1]], np.float32)
    uv, depth, mask = project_points(pts, K, l2c, 160, 90)
    assert mask.tolist() == [True, True, False, False, False]  # behind, outside, too close
    np.testing.assert_allclose(uv, [[80, 45], [70, 40]])
    np.testing.assert_allclose(depth, [10, 10])


def test_stats_and_figures(tmp_path):
    reader = RandomReader(num_scenes=2, keyframes_per_scene=3, bad=("scene-0001/kf000",))
    s = prepare(reader, str(tmp_path / "out"))
    kfs = [reader.read(k) for sc in reader.scenes() for k in reader.keyframe_ids(sc) if k != "scene-0001/kf000"]
    stats = dataset_stats(s.out)
    n = np.array([k.num_points for k in kfs])
    assert stats["keyframes"] == 5 and stats["scenes"] == 2 and stats["errors"] == 1
    assert stats["points"] == {"mean": float(n.mean()), "min": int(n.min()), "max": int(n.max()), "total": int(n.sum())}
    ref = np.bincount(np.concatenate([k.labels for k in kfs]))
    assert stats["label_source"] == "labels"
    assert stats["label_histogram"] == {i: int(c) for i, c in enumerate(ref) if c}
    text = format_stats(stats)
    assert "keyframes: 5" in text and f"max {n.max()}" in text

    # a dataroot with the first keyframe's camera images
    dataroot = tmp_path / "root"
    first = kfs[0]
    for cam in first.cameras:
        p = dataroot / cam.image_path
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((cam.height, cam.width, 3), 200, np.uint8)).save(p)
    img, found = _load_image(str(dataroot), first.cameras[0].image_path, 160, 90)
    assert found and img.shape == (90, 160, 3) and img[0, 0, 0] == 200
    figs_dir = tmp_path / "figs"
    res = inspect_sweeps(s.out, dataroot=str(dataroot), out=str(figs_dir), num_keyframes=2)
    names = sorted(os.path.basename(f) for f in res["figures"])
    assert names == sorted([f"scene-0000_kf00{i}_{c}.png" for i in (0, 1) for c in ("CAM_FRONT", "CAM_BACK", "bev")])
    for f in res["figures"]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert json.load(open(figs_dir / "stats.json"))["keyframes"] == 5


def test_cli(tmp_path):
    s = prepare(RandomReader(num_scenes=1), str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "jobs/inspect_data.py", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    proc = run(f"sweeps={s.out}", "json=true")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["keyframes"] == 4
    early = run(f"sweeps={tmp_path / 'not-prepared' / 'sweeps'}")   # inspect before prepare: one clear line
    assert early.returncode == 1 and "run jobs/prepare.py first" in early.stderr and "Traceback" not in early.stderr
