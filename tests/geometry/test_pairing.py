"""Pairing / pseudo-labels on a hand-built case (docs/method.md "Pairing and pseudo-labels")."""

import numpy as np
import pytest

from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError
from afov_ray.geometry.pairing import (
    CameraMasks,
    PairingConfig,
    decode_official,
    encode_official,
    min_filter,
    pair_keyframe,
)

W, H = 10, 8
K = np.array([[5.0, 0, 4.2], [0, 5.0, 3.3], [0, 0, 1]])
# lidar (x fwd, y left, z up) -> camera (x right, y down, z fwd)
L2C = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
TEXT_TO_RAW = np.zeros(175, dtype=np.int64)
TEXT_TO_RAW[0] = 17    # 'car' -> vehicle.car
TEXT_TO_RAW[96] = 24   # 'driveable surface' -> flat.driveable_surface
RAW_TO_EVAL = np.zeros(256, dtype=np.uint8)
RAW_TO_EVAL[17] = 4
RAW_TO_EVAL[24] = 11


def _keyframe():
    pts = np.array([
        [10, 0, 0, 1],    # p0: pixel (3,4) in both cameras
        [10, 4, 0, 1],    # p1: pixel (3,2): camera B masks it out (0)
        [-5, 0, 0, 1],    # p2: behind the cameras -> unprojected
        [0.5, 0, 0, 1],   # p3: depth 0.5 m <= 1 m -> unprojected
        [20, 0, 0, 1],    # p4: same pixel as p0 but 10 m further: occluded by p0
    ], dtype=np.float32)
    cams = [CameraFrame(ch, ch, "", W, H, K, L2C) for ch in ("CAM_A", "CAM_B")]
    gt = np.array([4, 4, 0, 0, 11], dtype=np.uint8)
    return Keyframe("nuscenes", "s0", "l0", "scene", 0, pts, labels=gt, cameras=cams)


def _masks():
    a = np.ones((H, W), dtype=np.uint8)
    b = np.full((H, W), 2, dtype=np.uint8)
    b[3, 2] = 0
    return [CameraMasks(a, {1: 0}), CameraMasks(b, {2: 96})]


def test_official_encoding_parity_hand_built():
    p = pair_keyframe(_keyframe(), _masks(), TEXT_TO_RAW, RAW_TO_EVAL, PairingConfig(rule="official"))
    code = encode_official(p.superpoint, np.where(p.pseudo_raw < 0, 0, p.pseudo_raw))
    # camera A: mask 1 -> superpoint 0; camera B: mask 2 -> superpoint 1 (later camera wins at p0, p4)
    assert code.tolist() == [1 * 100 + 24, 0 * 100 + 17, -1, -1, 1 * 100 + 24]
    assert p.pseudo_eval.tolist() == [11, 4, 0, 0, 11]
    sp, raw = decode_official(code)
    assert sp.tolist() == [1, 0, -1, -1, 1] and raw.tolist() == [24, 17, 99, 99, 24]
    # pairings: every projection, including the masked-out one (mask 0) of camera B
    got = sorted(zip(p.point.tolist(), p.camera.tolist(), p.mask.tolist()))
    assert got == [(0, 0, 1), (0, 1, 2), (1, 0, 1), (1, 1, 0), (4, 0, 1), (4, 1, 2)]
    assert p.pixel[(p.point == 0) & (p.camera == 0)].tolist() == [[3, 4]]
    assert p.pixel[(p.point == 1) & (p.camera == 1)].tolist() == [[3, 2]]
    assert set(p.superpixel.tolist()) == {1, 150 + 2, 150 + 0}


def test_zbuffer_rule_drops_occluded_and_breaks_ties_by_camera_order():
    p = pair_keyframe(_keyframe(), _masks(), TEXT_TO_RAW, RAW_TO_EVAL, PairingConfig(rule="zbuffer"))
    # p4 is hidden behind p0 in both cameras -> unlabelled; p0: equal centre distance -> camera A wins
    assert p.pseudo_eval.tolist() == [4, 4, 0, 0, 0]
    assert p.superpoint.tolist() == [0, 0, -1, -1, -1]
    assert 4 not in p.point.tolist()
    assert p.stats["coverage"] == pytest.approx(2 / 5) and p.stats["agreement"] == 1.0


def test_official_vs_zbuffer_agreement_on_the_occluded_point():
    kf = _keyframe()
    off = pair_keyframe(kf, _masks(), TEXT_TO_RAW, RAW_TO_EVAL, PairingConfig(rule="official"))
    assert off.stats["scored"] == 3 and off.stats["agree"] == 2   # p0 wrong (B wins), p4 right


def test_bad_inputs_name_sample_and_camera():
    kf = _keyframe()
    m = _masks()
    m[1] = CameraMasks(np.zeros((H + 1, W), dtype=np.uint8), {})
    with pytest.raises(DataError, match="s0/CAM_B.*mask map shape"):
        pair_keyframe(kf, m, TEXT_TO_RAW, RAW_TO_EVAL)
    m = _masks()
    m[0] = CameraMasks(m[0].mask_map, {1: 500})
    with pytest.raises(DataError, match="s0/CAM_A.*text index 500"):
        pair_keyframe(kf, m, TEXT_TO_RAW, RAW_TO_EVAL)
    m = _masks()
    m[0] = CameraMasks(m[0].mask_map, {})
    with pytest.raises(DataError, match="s0/CAM_A.*not in the mask table"):
        pair_keyframe(kf, m, TEXT_TO_RAW, RAW_TO_EVAL)
    p = pair_keyframe(kf, [_masks()[0], None], TEXT_TO_RAW, RAW_TO_EVAL)
    assert p.stats["missing_cameras"] == ["CAM_B"]


def test_min_filter_matches_brute_force():
    rng = np.random.default_rng(0)
    img = rng.random((9, 11))
    img[rng.random((9, 11)) < 0.6] = np.inf          # a sparse depth image
    for w in (3, 7):
        out = min_filter(img, w)
        pad = np.pad(img, w // 2, mode="edge")
        ref = np.array([[pad[i:i + w, j:j + w].min() for j in range(11)] for i in range(9)])
        assert np.array_equal(out, ref), w
