"""The product palette: nuScenes colours from the devkit, SemanticKITTI colours from semantic-kitti.yaml,
the fallback palette and the score colour scale."""

import numpy as np
import pytest

from afov_ray.datasets import labels
from afov_ray.viz import palette as P

# semantic-kitti-api/config/semantic-kitti.yaml, transcribed independently of the module:
# learning_map_inv (eval id -> raw label) and color_map (raw label -> BGR).
KITTI_LEARNING_MAP_INV = {1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48,
                          12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81}
KITTI_COLOR_MAP_BGR = {10: (245, 150, 100), 11: (245, 230, 100), 15: (150, 60, 30), 18: (180, 30, 80),
                       20: (255, 0, 0), 30: (30, 30, 255), 31: (200, 40, 255), 32: (90, 30, 150),
                       40: (255, 0, 255), 44: (255, 150, 255), 48: (75, 0, 75), 49: (75, 0, 175),
                       50: (0, 200, 255), 51: (50, 120, 255), 70: (0, 175, 0), 71: (0, 60, 135),
                       72: (80, 240, 150), 80: (150, 240, 255), 81: (0, 0, 255)}


def test_nuscenes_colours_are_the_devkit_colours_of_each_main_raw_class():
    from nuscenes.utils.color_map import get_colormap

    cmap = get_colormap()
    pal = P.class_colors("nuscenes")
    names = P.class_names("nuscenes")
    assert pal.shape == (17, 3) and len(names) == 17
    assert tuple(pal[0]) == P.IGNORE_RGB
    for cid, name in enumerate(names[1:], start=1):
        raw = P.NUSCENES_COLOR_SOURCE[name]
        assert np.array_equal(np.rint(pal[cid] * 255).astype(int), np.array(cmap[raw])), name
        # the source raw class maps to this evaluation class in the project's label map
        assert labels.NUSCENES_RAW_TO_EVAL[labels.NUSCENES_RAW_NAMES.index(raw)] == cid, name
    car, ped = names.index("car"), names.index("pedestrian")
    assert np.allclose(pal[car] * 255, (255, 158, 0)) and np.allclose(pal[ped] * 255, (0, 0, 230))
    assert np.allclose(pal[names.index("driveable_surface")] * 255, (0, 207, 191))


def test_semantickitti_colours_are_the_yaml_colour_map_in_rgb():
    pal = P.class_colors("semantickitti", 20)
    names = P.class_names("semantickitti")
    assert pal.shape == (20, 3) and names[9] == "road"
    assert tuple(pal[0]) == P.IGNORE_RGB
    for cid in range(1, 20):
        raw = KITTI_LEARNING_MAP_INV[cid]
        b, g, r = KITTI_COLOR_MAP_BGR[raw]
        assert np.array_equal(np.rint(pal[cid] * 255).astype(int), [r, g, b]), names[cid]
        assert labels.KITTI_RAW_TO_EVAL[raw] == cid
    assert P.to_hex(pal[[1, 9, 15]]) == ["#6496f5", "#ff00ff", "#00af00"]  # car, road, vegetation


def test_dataset_aliases_and_inference_from_the_class_count():
    assert np.array_equal(P.class_colors("SemanticKITTI"), P.class_colors("kitti"))
    assert np.array_equal(P.class_colors("semantic_kitti"), P.class_colors("semantickitti"))
    assert np.array_equal(P.class_colors("nuScenes", 17), P.class_colors("nuscenes"))
    assert np.array_equal(P.class_colors(None, 17), P.class_colors("nuscenes"))
    assert np.array_equal(P.class_colors(None, 20), P.class_colors("semantickitti"))
    assert P.class_names("waymo") is None


def test_fallback_palette_for_other_class_counts():
    for args in (("nuscenes", 5), ("waymo", 23), (None, 40)):
        pal = P.class_colors(*args)
        assert pal.shape == (args[1], 3)
        assert np.array_equal(pal, P.fallback_colors(args[1]))
        assert pal.min() >= 0 and pal.max() <= 1
        assert tuple(pal[0]) == P.IGNORE_RGB
    big = P.fallback_colors(40)
    assert len({tuple(np.rint(c * 255).astype(int)) for c in big}) == 40  # all distinct
    assert np.array_equal(big, P.fallback_colors(40))  # deterministic
    assert np.array_equal(big[:17], P.fallback_colors(17))  # a prefix does not depend on C
    with pytest.raises(ValueError):
        P.class_colors("waymo")


def test_score_colours_follow_viridis_with_clipping_and_nan():
    c = P.score_colors(np.array([0.0, 1.0, -3.0, 7.0, np.nan]))
    assert c.shape == (5, 3)
    assert np.allclose(c[0], (0.267004, 0.004874, 0.329415), atol=1e-5)  # viridis(0)
    assert np.allclose(c[1], (0.993248, 0.906157, 0.143936), atol=1e-5)  # viridis(1)
    assert np.array_equal(c[2], c[0]) and np.array_equal(c[3], c[1])
    assert tuple(c[4]) == P.IGNORE_RGB
    assert np.array_equal(P.score_colors([5.0], 0, 10), P.score_colors([0.5]))
    assert np.array_equal(P.score_colors([0.5]), P.colorscale("viridis", 256)[[128]])  # half rounds up
    assert not np.array_equal(P.score_colors([0.5], cmap="magma"), P.score_colors([0.5]))


def test_hex_and_error_colours():
    assert P.to_hex(np.array([[1.0, 0.5, 0.0], [0, 0, 0]])) == ["#ff8000", "#000000"]
    err = P.error_colors()
    assert err.shape == (3, 3) and P.ERROR_NAMES == ("ignored", "correct", "wrong")
    assert err[2, 0] > 0.8 and err[2, 1] < 0.2  # wrong is red
    assert err[1, 1] > err[1, 0] and err[1, 1] > err[1, 2]  # correct is green
