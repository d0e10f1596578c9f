"""Projection chain and image bounds (docs/method.md "Projection"), checked against hand-computed cases,
pyquaternion, and the real nuscenes-devkit ``map_pointcloud_to_image`` on real scene-0916 data."""

from __future__ import annotations

import numpy as np
import pytest
from pyquaternion import Quaternion

from afov_ray.errors import DataError
from afov_ray.geometry import (
    invert_rigid,
    lidar_to_cam_matrix,
    pose_matrix,
    project_points,
    quaternion_to_matrix,
)

K_SIMPLE = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])


def _random_record(rng: np.random.Generator, scale: float = 10.0) -> dict:
    q = rng.normal(size=4)
    return {"token": "t", "translation": list(rng.normal(size=3) * scale), "rotation": list(q / np.linalg.norm(q))}


def test_quaternion_matches_pyquaternion():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4) * 3.0  # not normalised: both normalise
        np.testing.assert_allclose(quaternion_to_matrix(q), Quaternion(q).rotation_matrix, atol=1e-12)
    # 90 deg about z, (w, x, y, z) order: x axis -> y axis
    R = quaternion_to_matrix([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_bad_records_raise_dataerror_naming_record():
    with pytest.raises(DataError, match="cs42"):
        pose_matrix({"token": "cs42", "translation": [0, 0, 0], "rotation": [1, 0, 0]})
    with pytest.raises(DataError, match="translation"):
        pose_matrix({"token": "cs42", "translation": [0, 0], "rotation": [1, 0, 0, 0]})
    with pytest.raises(DataError, match="zero quaternion"):
        pose_matrix({"token": "cs42", "translation": [0, 0, 0], "rotation": [0, 0, 0, 0]})
    with pytest.raises(DataError, match="non-finite"):
        pose_matrix({"token": "cs42", "translation": [0, np.nan, 0], "rotation": [1, 0, 0, 0]})


def test_chain_equals_stepwise_devkit_order():
    """cam_cs^-1 cam_pose^-1 lidar_pose lidar_cs == the 4 devkit steps applied one after another."""
    rng = np.random.default_rng(1)
    lcs, lpose, cpose, ccs = (_random_record(rng, s) for s in (1.0, 1000.0, 1000.0, 1.0))
    T = lidar_to_cam_matrix(lcs, lpose, cpose, ccs)
    p = rng.normal(size=(50, 3)) * 20
    q = p @ Quaternion(lcs["rotation"]).rotation_matrix.T + lcs["translation"]
    q = q @ Quaternion(lpose["rotation"]).rotation_matrix.T + lpose["translation"]
    q = (q - cpose["translation"]) @ Quaternion(cpose["rotation"]).rotation_matrix
    q = (q - ccs["translation"]) @ Quaternion(ccs["rotation"]).rotation_matrix
    np.testing.assert_allclose(p @ T[:3, :3].T + T[:3, 3], q, atol=1e-9)
    np.testing.assert_allclose(invert_rigid(T) @ T, np.eye(4), atol=1e-12)


def test_project_hand_computed():
    # Identity chain: camera frame == lidar frame. u = 100 x / z + 50, v = 100 y / z + 40.
    pts = np.array(
        [
            [0.0, 0.0, 2.0],    # 0: centre (50, 40), kept
            [1.0, 0.5, 5.0],    # 1: (70, 50), kept
            [0.0, 0.0, 1.0],    # 2: depth == min_depth -> dropped (strict)
            [0.0, 0.0, -3.0],   # 3: behind
            [-1.0, 0.0, 2.0],   # 4: u = 0 exactly -> dropped (strict 0 < u)
            [0.99, 0.0, 2.0],   # 5: u = 99.5 > W-1 = 99 -> dropped
            [0.97, 0.0, 2.0],   # 6: u = 98.5 kept; round half to even -> col 98
            [-0.99, -0.79, 2.0],  # 7: u = 0.5, v = 0.5: kept by "afov", dropped by "devkit" (needs > 1)
            [0.2, 0.1, 1.0001],  # 8: just in front of min_depth
        ]
    )
    proj = project_points(pts, np.eye(4), K_SIMPLE, width=100, height=80)
    assert proj.point_idx.tolist() == [0, 1, 6, 7, 8]
    np.testing.assert_allclose(proj.uv[:4], [[50, 40], [70, 50], [98.5, 40], [0.5, 0.5]], atol=1e-12)
    np.testing.assert_allclose(proj.depth[:4], [2, 5, 2, 2])
    assert proj.pixel.dtype == np.int64 and proj.uv.dtype == np.float64
    assert proj.pixel[:4].tolist() == [[40, 50], [50, 70], [40, 98], [0, 0]]  # (row, col)

    dev = project_points(pts, np.eye(4), K_SIMPLE, width=100, height=80, bounds="devkit")
    assert dev.point_idx.tolist() == [0, 1, 6, 8]
    m = project_points(pts, np.eye(4), K_SIMPLE, width=100, height=80, margin=10.0)
    assert m.point_idx.tolist() == [0, 1, 8]  # 10 < u < 89
    assert len(project_points(pts, np.eye(4), K_SIMPLE, 100, 80, min_depth=3.0)) == 1
    with pytest.raises(ValueError):
        project_points(pts, np.eye(4), K_SIMPLE, 100, 80, bounds="other")


def test_project_with_translation():
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 1.0]  # camera 1 m behind lidar
    proj = project_points(np.array([[0.5, 0.0, 1.0]]), T, K_SIMPLE, 100, 80)
    np.testing.assert_allclose(proj.uv, [[100 * 0.5 / 2 + 50, 40]])
    np.testing.assert_allclose(proj.depth, [2.0])


def test_pixels_always_inside_image():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-20, 20, size=(5000, 3))
    proj = project_points(pts, np.eye(4), K_SIMPLE, 100, 80)
    assert len(proj) > 100
    assert np.all(np.diff(proj.point_idx) > 0)
    assert proj.pixel[:, 0].min() >= 0 and proj.pixel[:, 0].max() <= 79
    assert proj.pixel[:, 1].min() >= 0 and proj.pixel[:, 1].max() <= 99


# -- real data: nuScenes scene-0916 against the devkit ----------------------------------------------
@pytest.fixture(scope="module")
def reader(nuscenes_root):
    from afov_ray.datasets.nuscenes import NuScenesReader

    return NuScenesReader(nuscenes_root, "v1.0-mini")


@pytest.fixture(scope="module")
def nusc(nuscenes_root):
    """The real devkit on the same dataroot: the oracle."""
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(nuscenes_root), verbose=False)


def _devkit_float64(nusc, lidar_token: str, cam_token: str) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's map_pointcloud_to_image chain with the devkit's own primitives, in float64."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points

    lidar = nusc.get("sample_data", lidar_token)
    cam = nusc.get("sample_data", cam_token)
    pc = LidarPointCloud.from_file(f"{nusc.dataroot}/{lidar['filename']}")
    pc.points = pc.points.astype(np.float64)
    cs = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    pose = nusc.get("ego_pose", cam["ego_pose_token"])
    pc.translate(-np.array(pose["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix.T)
    cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
    pc.translate(-np.array(cs["translation"]))
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix.T)
    uv = view_points(pc.points[:3], np.array(cs["camera_intrinsic"]), normalize=True)[:2].T
    return uv, pc.points[2]


def test_matches_devkit_map_pointcloud_to_image(reader, nusc):
    """Every camera of a real keyframe: same kept points as the devkit, same pixels.

    The devkit keeps intermediate (global-frame, |x| ~ 1800 m) coordinates in float32, we chain in
    float64: its pixels carry a float32 error ~1e-4 m / depth. So: (1) against
    ``map_pointcloud_to_image`` itself the kept set is identical except points within that error of
    a bound, and |duv| * depth <= 0.5 px m; (2) against the devkit's own chain run in float64 the
    kept set is identical and pixels agree within 1e-3 px.
    """
    sample_token = reader.keyframe_ids("scene-0916")[2]
    kf = reader.read(sample_token)
    assert len(kf.cameras) == 6
    for cam in kf.cameras:
        pts, depth_dev, im = nusc.explorer.map_pointcloud_to_image(kf.lidar_token, cam.token)
        assert im.size == (cam.width, cam.height)
        ours = project_points(kf.points[:, :3], cam.lidar_to_cam, cam.K, cam.width, cam.height, bounds="devkit")
        assert len(ours) > 1000, cam.channel

        # (2) exact chain in float64 with the devkit's primitives and its keep rule.
        uv64, z64 = _devkit_float64(nusc, kf.lidar_token, cam.token)
        W, H = im.size
        keep = (z64 > 1.0) & (uv64[:, 0] > 1) & (uv64[:, 0] < W - 1) & (uv64[:, 1] > 1) & (uv64[:, 1] < H - 1)
        assert np.array_equal(np.flatnonzero(keep), ours.point_idx), cam.channel
        np.testing.assert_allclose(ours.uv, uv64[keep], atol=1e-3, rtol=0)
        np.testing.assert_allclose(ours.depth, z64[keep], atol=1e-6, rtol=0)

        # (1) the devkit function itself (float32 intermediates); it returns kept points in index order.
        dev_uv = pts[:2].T
        if dev_uv.shape[0] == len(ours):
            diff = np.abs(dev_uv - ours.uv).max(axis=1)
            assert np.all(diff * ours.depth <= 0.5), cam.channel
            np.testing.assert_allclose(depth_dev, ours.depth, atol=1e-3)
        else:  # a point within float32 error of a bound flipped: only allowed right at the bound
            near = np.minimum.reduce([uv64[:, 0] - 1, W - 1 - uv64[:, 0], uv64[:, 1] - 1, H - 1 - uv64[:, 1]])
            flips = abs(dev_uv.shape[0] - len(ours))
            assert flips <= np.count_nonzero(keep & (np.abs(near) < 0.1)) + np.count_nonzero(np.abs(z64 - 1) < 1e-3)
        # pixels: (row, col) = round(v), round(u) and inside the image.
        np.testing.assert_array_equal(ours.pixel, np.round(ours.uv[:, ::-1]).astype(np.int64))


def test_afov_bounds_superset_of_devkit(reader):
    kf = reader.read(reader.keyframe_ids("scene-0916")[0])
    cam = kf.cameras[0]
    a = project_points(kf.points[:, :3], cam.lidar_to_cam, cam.K, cam.width, cam.height, bounds="afov")
    d = project_points(kf.points[:, :3], cam.lidar_to_cam, cam.K, cam.width, cam.height, bounds="devkit")
    assert set(d.point_idx) <= set(a.point_idx)
    extra = np.setdiff1d(a.point_idx, d.point_idx)
    sel = np.isin(a.point_idx, extra)
    # the extra points all lie in the 1-pixel low-side strip
    assert np.all((a.uv[sel, 0] <= 1) | (a.uv[sel, 1] <= 1))


def test_devkit_float32_chain_reproduces_devkit_exactly(reader, nusc):
    """devkit_chain_points + project_camera_points == map_pointcloud_to_image on all 5 real keyframes x
    6 cameras: identical kept points, pixels within 1e-3 px (in fact ~1e-9), same depths."""
    from afov_ray.geometry import devkit_chain_points, project_camera_points

    worst = 0.0
    for token in reader.keyframe_ids("scene-0916"):
        kf = reader.read(token)
        lidar = nusc.get("sample_data", kf.lidar_token)
        lcs = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
        lpose = nusc.get("ego_pose", lidar["ego_pose_token"])
        for cam in kf.cameras:
            sd = nusc.get("sample_data", cam.token)
            ccs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            cpose = nusc.get("ego_pose", sd["ego_pose_token"])
            cam_xyz = devkit_chain_points(kf.points, lcs, lpose, cpose, ccs)
            np.testing.assert_array_equal(cam_xyz, reader.devkit_camera_points(kf, cam.channel))
            ours = project_camera_points(cam_xyz, cam.K, cam.width, cam.height, bounds="devkit")
            pts, depth_dev, _ = nusc.explorer.map_pointcloud_to_image(kf.lidar_token, cam.token)
            assert pts.shape[1] == len(ours), (token, cam.channel)
            np.testing.assert_allclose(ours.uv, pts[:2].T, atol=1e-3, rtol=0)
            np.testing.assert_array_equal(ours.depth, depth_dev.astype(np.float64))
            worst = max(worst, float(np.abs(ours.uv - pts[:2].T).max()))
            # kept indices: the devkit keeps points in index order; match them through depth values
            np.testing.assert_array_equal(cam_xyz[ours.point_idx, 2], depth_dev)
    assert worst < 1e-6
