"""Label maps (docs/method.md "Label maps and the ignore index") on real labels and against the devkit's LidarsegClassMapper."""

from __future__ import annotations

import numpy as np
import pytest

from afov_ray.datasets import labels as L


def test_nuscenes_table_shape_and_spec_values():
    lut = L.nuscenes_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert len(L.NUSCENES_RAW_NAMES) == 32 and len(L.NUSCENES_EVAL_NAMES) == 17
    # spot values straight from the reference table
    for raw, ev in {24: 11, 31: 0, 17: 4, 23: 10, 30: 16, 28: 15, 9: 1, 12: 8, 13: 0, 0: 0, 99: 0, 255: 0}.items():
        assert lut[raw] == ev, raw
    # every eval class 1..16 is reached, nothing above 16
    assert set(lut.tolist()) == set(range(17))
    out = L.nuscenes_raw_to_eval(np.array([24, 99, -1, 300, 2], dtype=np.int64))
    assert out.dtype == np.uint8 and out.tolist() == [11, 0, 0, 0, 7]
    with pytest.raises(TypeError):
        L.nuscenes_raw_to_eval(np.array([1.5]))


def test_nuscenes_names_match_devkit_colormap_order():
    from nuscenes.utils.color_map import get_colormap

    assert tuple(get_colormap()) == L.NUSCENES_RAW_NAMES


def test_nuscenes_map_equals_devkit_class_mapper(tmp_path, make_nuscenes_root):
    """All 32 raw classes: our table == LidarsegClassMapper(nusc).fine_idx_2_coarse_idx_mapping, on a
    real-table dataroot whose category table has the 32 lidarseg classes (14 of them the real records)."""
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.nuscenes import NuScenes

    root = make_nuscenes_root(tmp_path / "root", lidarseg_labels=lambda tok, n: np.zeros(n, np.uint8))
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    # the real category records carry the same index as our raw names
    real = [c for c in nusc.category if not c["token"].startswith("placeholder")]
    assert len(real) == 14
    for c in real:
        assert L.NUSCENES_RAW_NAMES[c["index"]] == c["name"]
    mapper = LidarsegClassMapper(nusc)
    fine2coarse = mapper.fine_idx_2_coarse_idx_mapping
    assert sorted(fine2coarse) == list(range(32))
    for raw in range(32):
        assert L.nuscenes_lut()[raw] == fine2coarse[raw], (raw, L.NUSCENES_RAW_NAMES[raw])
    for name, idx in mapper.coarse_name_2_coarse_idx_mapping.items():
        assert L.NUSCENES_EVAL_NAMES[idx] == name
    raw_all = np.arange(32, dtype=np.uint8)
    np.testing.assert_array_equal(L.nuscenes_raw_to_eval(raw_all), mapper.convert_label(raw_all))


def test_nuscenes_real_lidarseg40(real_data):
    d = real_data / "nuscenes_lidarseg40"
    raw = np.fromfile(next(d.glob("*_lidarseg.bin")), dtype=np.uint8)
    pts = np.fromfile(next(d.glob("*.pcd.bin")), dtype=np.float32).reshape(-1, 5)
    assert raw.shape == (40,) and pts.shape == (40, 5)
    assert set(raw.tolist()) == {17, 24, 27, 28, 30, 31}  # as SOURCE.md states
    ev = L.nuscenes_raw_to_eval(raw)
    expected = {17: 4, 24: 11, 27: 14, 28: 15, 30: 16, 31: 0}
    assert ev.tolist() == [expected[r] for r in raw.tolist()]
    # geometry-consistent: ego (31 -> ignore) close to the sensor, driveable surface low
    assert np.all(np.linalg.norm(pts[raw == 31, :2], axis=1) < 5.0)
    assert np.all(pts[raw == 24, 2] < -1.0)


def test_kitti_table_and_spec_values():
    assert len(L.KITTI_EVAL_NAMES) == 20
    lut = L.kitti_lut()
    assert lut.shape == (65536,) and set(lut.tolist()) == set(range(20))
    for raw, ev in {10: 1, 252: 1, 254: 6, 253: 7, 255: 8, 40: 9, 60: 9, 52: 0, 99: 0, 1: 0, 81: 19, 12345: 0}.items():
        assert lut[raw] == ev, raw
    # instance id in the high 16 bits is ignored
    lab = np.array([(7 << 16) | 10, (3 << 16) | 254, 0xFFFF0000 | 40], dtype=np.uint32)
    assert L.kitti_raw_to_eval(lab).tolist() == [1, 6, 9]
    assert L.kitti_semantic(lab).tolist() == [10, 254, 40]


def test_kitti_real_label_file(real_data):
    lab = np.fromfile(real_data / "semantickitti_000000" / "000000.label", dtype=np.uint32)
    assert lab.shape == (123389,)
    sem = L.kitti_semantic(lab)
    present = set(np.unique(sem).tolist())
    assert {252, 254} <= present  # moving classes (SOURCE.md)
    assert present <= set(L.KITTI_RAW_TO_EVAL)  # every raw class of the real file is in the map
    ev = L.kitti_raw_to_eval(lab)
    assert ev.dtype == np.uint8 and ev.max() <= 19
    # class counts agree with the raw counts folded by the spec
    for eval_id in range(20):
        raws = [r for r, e in L.KITTI_RAW_TO_EVAL.items() if e == eval_id]
        assert np.count_nonzero(ev == eval_id) == np.count_nonzero(np.isin(sem, raws)), eval_id
    assert np.count_nonzero(ev == 1) > 0 and np.count_nonzero(ev == 9) > 0  # cars, road
