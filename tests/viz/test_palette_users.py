"""The evaluation plots and the dataset inspection pictures use the product palette."""

import numpy as np

from afov_ray.datasets import inspect
from afov_ray.datasets.types import Keyframe
from afov_ray.viz import palette as P
from afov_ray.viz import plots


def _count_near(png, rgb, tol=10) -> int:
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int((np.abs(img - np.asarray(rgb, dtype=np.int16)).max(-1) <= tol).sum())


def _blob(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-5, 5, (n, 2)), np.zeros((n, 1))], 1).astype(np.float32)


def test_eval_plots_use_the_palette(tmp_path):
    assert np.array_equal(plots.class_palette(17), P.class_colors("nuscenes"))
    assert np.array_equal(plots.class_palette(20), P.class_colors("semantickitti"))
    xyz = _blob()
    car = np.full(len(xyz), 4)
    png = plots.plot_bev(xyz, car, car, tmp_path / "bev.png", num_classes=17, extent=6.0)
    assert _count_near(png, (255, 158, 0)) > 2000  # nuScenes car, devkit orange
    assert _count_near(png, tuple(P.to_uint8(P.error_colors()[1]))) > 1000  # all correct


def test_inspect_bev_uses_the_palette(tmp_path):
    xyz = _blob()
    pts = np.concatenate([xyz, np.zeros((len(xyz), 1), np.float32)], 1)
    kf = Keyframe("semantickitti", "08/000000", "08/000000", "08", 0, pts,
                  labels=np.full(len(pts), 9, np.uint8))  # road
    out = inspect.plot_bev(kf, str(tmp_path / "bev.png"), names=P.class_names("semantickitti"), extent=6.0)
    assert _count_near(out, (255, 0, 255)) > 2000  # SemanticKITTI road magenta
