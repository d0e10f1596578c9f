"""Tests of the procedural nuScenes / SemanticKITTI generator (afov_ray.datasets.synth).

Real files, real nuscenes-devkit 1.2.0; small sizes. The calibration-chain test follows
docs/method.md "Projection" (lidar -> ego(t_lidar) -> global -> ego(t_cam) -> cam, K, round()).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from afov_ray.datasets.synth.classes import (
    KIND_TO_KITTI,
    KIND_TO_NUSCENES,
    KITTI_IDS_WRITTEN,
    NUSCENES_LIDARSEG_NAMES,
    Kind,
)
from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.kitti_writer import generate_semantickitti, render_kitti_frame
from afov_ray.datasets.synth.nuscenes_writer import generate_nuscenes, load_scene, render_sample_data
from afov_ray.datasets.synth.raycast import raycast
from afov_ray.datasets.synth.render import render_camera
from afov_ray.datasets.synth.scene import Scene

VERSION = "v1.0-trainval"
CAMS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory) -> Path:
    cfg = SynthConfig(seed=3, num_scenes=2, num_val_scenes=1, keyframes_per_scene=3,
                      image_width=320, image_height=180)
    return generate_nuscenes(tmp_path_factory.mktemp("nus"), cfg)


@pytest.fixture(scope="module")
def nusc(nus_root):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(nus_root), verbose=False)


# ---------------------------------------------------------------- devkit loading ------------------
def test_devkit_loads_tables_files_and_split(nusc, nus_root):
    from nuscenes.utils.color_map import get_colormap
    from nuscenes.utils.splits import create_splits_scenes

    assert list(get_colormap().keys()) == list(NUSCENES_LIDARSEG_NAMES)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 6
    splits = create_splits_scenes()
    assert nusc.scene[0]["name"] in splits["train"] and nusc.scene[1]["name"] in splits["val"]
    assert nusc.lidarseg_idx2name_mapping[31] == "vehicle.ego" and len(nusc.lidarseg_idx2name_mapping) == 32
    for scene in nusc.scene:
        tok, n = scene["first_sample_token"], 0
        while tok:
            n += 1
            tok = nusc.get("sample", tok)["next"]
        assert n == scene["nbr_samples"] == 3
    from PIL import Image

    s = nusc.sample[1]
    lidar_ts = nusc.get("sample_data", s["data"]["LIDAR_TOP"])["timestamp"]
    poses = set()
    for ch in CAMS:
        path, boxes, K = nusc.get_sample_data(s["data"][ch])
        assert K.shape == (3, 3)
        if ch == "CAM_FRONT":
            assert K[0, 0] == pytest.approx(1266.417203046554 * 0.2)
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (320, 180)
        sd = nusc.get("sample_data", s["data"][ch])
        assert sd["is_key_frame"] and 0 < abs(sd["timestamp"] - lidar_ts) < 50_000
        poses.add(tuple(nusc.get("ego_pose", sd["ego_pose_token"])["translation"]))
    assert len(poses) == 6          # every camera has its own ego pose


def test_lidar_and_lidarseg(nusc, nus_root):
    from nuscenes.utils.data_classes import LidarPointCloud

    present = set()
    for s in nusc.sample:
        sd_tok = s["data"]["LIDAR_TOP"]
        path, _, _ = nusc.get_sample_data(sd_tok)
        pc = LidarPointCloud.from_file(path)
        raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
        n = pc.points.shape[1]
        assert pc.points.shape[0] == 4 and 25_000 <= n <= 32 * 1084
        rec = nusc.get("lidarseg", sd_tok)
        labels = np.fromfile(nus_root / rec["filename"], dtype=np.uint8)
        assert len(labels) == n and labels.max() <= 31
        present |= set(np.unique(labels).tolist())
        assert set(np.unique(raw[:, 4]).tolist()) <= set(range(32))
        assert 0 <= raw[:, 3].min() and raw[:, 3].max() <= 255
        # road returns lie on the ground plane: ~1.84 m below the (almost level) sensor
        road_z = raw[labels == 24, 2]
        assert abs(np.median(road_z) + 1.84) < 0.05
        assert np.linalg.norm(raw[:, :3], axis=1).max() <= 70.5
    assert {24, 17, 30, 28, 26, 27, 2, 31} <= present


# ---------------------------------------------------------------- calibration chain -------------
def _near_depth_edge(depth, r=2, tol=0.05):
    d = np.where(np.isfinite(depth), depth, 1e6)
    w = sliding_window_view(np.pad(d, r, mode="edge"), (2 * r + 1, 2 * r + 1))
    return w.max(axis=(-1, -2)) / w.min(axis=(-1, -2)) > 1 + tol


_RENDERS: dict = {}


def _render(root, token):
    if (root, token) not in _RENDERS:
        _RENDERS[(root, token)] = render_sample_data(root, token, version=VERSION)
    return _RENDERS[(root, token)]


def _chain_stats(nusc, root, sample, wrong: bool):
    """Projects the keyframe's points with the devkit tables into every camera; returns (agreement of
    class on non-edge pixels, count, fraction of points whose range equals (5 cm) the scene range along their pixel ray)."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from pyquaternion import Quaternion

    lsd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(lsd["token"]))
    labels = np.fromfile(root / nusc.get("lidarseg", lsd["token"])["filename"], dtype=np.uint8)
    cs = nusc.get("calibrated_sensor", lsd["calibrated_sensor_token"])
    ep = nusc.get("ego_pose", lsd["ego_pose_token"])
    scene = load_scene(root, nusc.get("scene", sample["scene_token"])["name"])
    agree = total = 0
    resid = []
    for ch in CAMS:
        csd = nusc.get("sample_data", sample["data"][ch])
        ccs = nusc.get("calibrated_sensor", csd["calibrated_sensor_token"])
        cep = ep if wrong else nusc.get("ego_pose", csd["ego_pose_token"])
        p = pc.points[:3].copy()
        p = Quaternion(cs["rotation"]).rotation_matrix @ p + np.array(cs["translation"])[:, None]
        p = Quaternion(ep["rotation"]).rotation_matrix @ p + np.array(ep["translation"])[:, None]
        p = Quaternion(cep["rotation"]).rotation_matrix.T @ (p - np.array(cep["translation"])[:, None])
        p = Quaternion(ccs["rotation"]).rotation_matrix.T @ (p - np.array(ccs["translation"])[:, None])
        K = np.array(ccs["camera_intrinsic"])
        z = p[2]
        uv = (K @ p)[:2] / z
        W, H = csd["width"], csd["height"]
        m = (z > 1.0) & (uv[0] > 0) & (uv[0] < W - 1) & (uv[1] > 0) & (uv[1] < H - 1)
        u, v = np.round(uv[0, m]).astype(int), np.round(uv[1, m]).astype(int)
        r = _render(root, csd["token"])
        ok = ~_near_depth_edge(r["depth"])[v, u]
        same = r["semantic"][v, u][ok] == labels[m][ok]
        agree += same.sum()
        total += ok.sum()
        # sub-pixel check: cast the ray through the exact projection; it must end at the point
        c2g = r["cam_to_global"]
        dirs = (np.linalg.inv(r["K"]) @ np.vstack([uv[:, m], np.ones(m.sum())])).T @ c2g[:3, :3].T
        dist, _, _ = raycast(scene, scene.time_s(csd["timestamp"]), np.broadcast_to(c2g[:3, 3], dirs.shape),
                             dirs, max_range=200.0)
        resid.append(np.abs(dist - np.linalg.norm(p[:, m], axis=0)))
    return agree / total, total, float(np.mean(np.concatenate(resid) < 0.05))


def test_calibration_chain_matches_rendered_semantics(nusc, nus_root):
    right = [_chain_stats(nusc, nus_root, s, wrong=False) for s in nusc.sample]
    wrong = [_chain_stats(nusc, nus_root, s, wrong=True) for s in nusc.sample]
    acc_r = np.mean([a for a, _, _ in right])
    acc_w = np.mean([a for a, _, _ in wrong])
    assert all(n > 3000 for _, n, _ in right)
    assert all(a > 0.9 for a, _, _ in right), right
    # the right chain puts points on the rendered surfaces (range noise is 1 cm)
    assert np.median([d for _, _, d in right]) > 0.8
    # using the LiDAR's ego pose for the cameras (wrong for a moving ego) measurably hurts
    assert acc_w < acc_r - 0.005, (acc_r, acc_w)
    assert np.median([d for _, _, d in wrong]) < np.median([d for _, _, d in right]) - 0.08


# ---------------------------------------------------------------- determinism -----------------------
def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    cfg = SynthConfig(seed=11, num_scenes=1, num_val_scenes=0, keyframes_per_scene=2, image_width=64,
                      image_height=36, azimuth_steps=256)
    a = _digest(generate_nuscenes(tmp_path / "a", cfg))
    b = _digest(generate_nuscenes(tmp_path / "b", cfg))
    assert a == b and len(a) > 20
    cfg.seed = 12
    c = _digest(generate_nuscenes(tmp_path / "c", cfg))
    assert set(c) != set(a) or any(a[k] != c[k] for k in a)
    lidar = [k for k in a if k.startswith("lidarseg/")]
    assert all(k not in c for k in lidar)           # tokens depend on the seed
    ka = _digest(generate_semantickitti(tmp_path / "ka", SynthConfig(seed=11, kitti_image_width=62,
                 kitti_image_height=19, kitti_azimuth_steps=128), num_frames=2))
    kb = _digest(generate_semantickitti(tmp_path / "kb", SynthConfig(seed=11, kitti_image_width=62,
                 kitti_image_height=19, kitti_azimuth_steps=128), num_frames=2))
    assert ka == kb


# ---------------------------------------------------------------- ray casting basics ----------------
def _tiny_scene(**kw) -> Scene:
    return Scene(name="t", seed=0, duration_s=1.0, origin=(100.0, 50.0, 0.5),
                 ego={"x0": 0.0, "lane_y": 0.0, "speed": 0.0, "sway_amp": 0.0, "sway_period": 1.0,
                      "sway_phase": 0.0}, **kw)


def test_raycast_hand_computed():
    boxes = np.array([[10.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 0.0]])     # 2x2x2 cube at x=10, moving +x 2 m/s
    cyls = np.array([[0.0, 5.0, 0.0, 3.0, 0.5, 0.0, 0.0]])
    ells = np.array([[0.0, -6.0, 1.0, 1.0, 2.0, 1.0, 0.0, 0.0]])
    sc = _tiny_scene(boxes=boxes, box_kind=np.array([int(Kind.CAR)]), box_inst=np.array([7], np.int32),
                     cyls=cyls, cyl_kind=np.array([int(Kind.POLE)]), cyl_inst=np.array([0], np.int32),
                     ells=ells, ell_kind=np.array([int(Kind.VEGETATION)]), ell_inst=np.array([0], np.int32),
                     ground_rects=np.array([[-50.0, 50.0, -2.0, 2.0]]), ground_kind=np.array([int(Kind.ROAD)]))
    L2G = sc.local_to_global()
    o_local = np.array([[0.0, 0.0, 1.0]] * 5)
    d_local = np.array([[1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1]], dtype=float)
    og = o_local @ L2G[:3, :3].T + L2G[:3, 3]
    dg = d_local @ L2G[:3, :3].T
    dist, cls, inst = raycast(sc, 0.0, og, dg, max_range=70.0, ego_body=False)
    np.testing.assert_allclose(dist[:4], [9.0, 4.5, 4.0, 1.0], atol=1e-9)
    assert np.isinf(dist[4]) and cls[4] == 0
    assert cls.tolist()[:4] == [17, 28, 30, 24] and inst[0] == 7
    dist1, _, _ = raycast(sc, 1.5, og[:1], dg[:1], ego_body=False)      # the cube moved 3 m
    assert dist1[0] == pytest.approx(12.0)
    assert Scene.from_dict(sc.to_dict()).to_dict() == sc.to_dict()


def test_render_centre_pixel_depth():
    boxes = np.array([[20.0, 0.0, 1.5, 1.0, 5.0, 1.5, 0.0, 0.0, 0.0]])
    sc = _tiny_scene(boxes=boxes, box_kind=np.array([int(Kind.BUILDING)]), box_inst=np.array([0], np.int32))
    # camera at local (0, 0, 1.5) looking along +x: cam z = local x, cam x = -local y, cam y = -local z
    R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c2l = np.eye(4)
    c2l[:3, :3], c2l[:3, 3] = R, [0.0, 0.0, 1.5]
    K = np.array([[50.0, 0, 31.0], [0, 50.0, 15.0], [0, 0, 1]])
    out = render_camera(sc, 0.0, sc.local_to_global() @ c2l, K, 64, 32, ego_body=False)
    assert out["depth"][15, 31] == pytest.approx(19.0)
    assert out["semantic"][15, 31] == 28 and out["rgb"].shape == (32, 64, 3)
    assert np.isinf(out["depth"][0, 31]) and out["semantic"][0, 31] == 0       # sky above the wall
    assert out["semantic"][31, 31] == 27                                          # terrain below


# ---------------------------------------------------------------- SemanticKITTI -----------------------
def test_semantickitti_files_and_projection(tmp_path):
    cfg = SynthConfig(seed=5, kitti_image_width=310, kitti_image_height=94, kitti_azimuth_steps=1024)
    seq = generate_semantickitti(tmp_path, cfg, sequence="00", num_frames=2)
    calib = {}
    for line in (seq / "calib.txt").read_text().splitlines():
        key, vals = line.split(":")
        calib[key] = np.array(vals.split(), dtype=np.float64)
    assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"}
    P2, Tr = calib["P2"].reshape(3, 4), calib["Tr"].reshape(3, 4)
    Tr4 = np.vstack([Tr, [0, 0, 0, 1]])
    poses = np.loadtxt(seq / "poses.txt").reshape(-1, 3, 4)
    assert poses.shape[0] == 2 and np.allclose(poses[0], np.eye(4)[:3], atol=1e-9)
    assert poses[1][2, 3] > 0.5                 # the car drove forward (cam0 z) between frames
    for f in range(2):
        pts = np.fromfile(seq / "velodyne" / f"{f:06d}.bin", dtype=np.float32).reshape(-1, 4)
        lab = np.fromfile(seq / "labels" / f"{f:06d}.label", dtype=np.uint32)
        assert len(lab) == len(pts) > 30_000 and 0 <= pts[:, 3].min() and pts[:, 3].max() <= 1
        sem = lab & 0xFFFF
        assert set(np.unique(sem).tolist()) <= KITTI_IDS_WRITTEN
        assert {40, 48, 50, 70, 10} <= set(np.unique(sem).tolist())
        assert ((lab >> 16)[sem == 10] > 0).all() and ((lab >> 16)[sem == 40] == 0).all()
        x = P2 @ Tr4 @ np.c_[pts[:, :3], np.ones(len(pts))].T
        z = x[2]
        u, v = x[0] / z, x[1] / z
        m = (z > 1) & (u > 0) & (u < 309) & (v > 0) & (v < 93)
        r = render_kitti_frame(tmp_path, "00", f, 310, 94)
        ui, vi = np.round(u[m]).astype(int), np.round(v[m]).astype(int)
        ok = ~_near_depth_edge(r["depth"])[vi, ui]
        assert ok.sum() > 1000
        assert (r["semantic_kitti"][vi, ui][ok] == sem[m][ok]).mean() > 0.9


def test_class_maps_cover_all_kinds():
    assert len(KIND_TO_NUSCENES) == len(Kind) == len(KIND_TO_KITTI)
    assert KIND_TO_NUSCENES[Kind.EGO] == 31 and KIND_TO_NUSCENES[Kind.ROAD] == 24
    assert KIND_TO_KITTI[Kind.TRUNK] == 71 and KIND_TO_KITTI[Kind.SIGN] == 81


def test_load_scene_roundtrip(nus_root, nusc):
    sc = load_scene(nus_root, nusc.scene[0]["name"])
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["LIDAR_TOP"])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    np.testing.assert_allclose(sc.ego_pose(sc.time_s(sd["timestamp"]))[:3, 3], ep["translation"], atol=1e-9)


# ---------------------------------------------------------------- class coverage option ----------------
def test_builder_clear_removes_whole_instances():
    from afov_ray.datasets.synth.scene import _Builder

    b = _Builder()
    rng = np.random.default_rng(0)
    b.vehicle(Kind.CAR, 10.0, 0.0, 0.0, (0.0, 0.0), rng)          # two boxes, one instance, x in ~[7.5, 12.5]
    b.tree(30.0, 0.0, rng)                                          # trunk + crown (stuff, instance 0)
    b.cyl(50.0, 0.0, 0.0, 0.7, 0.16, Kind.TRAFFIC_CONE, b.inst())
    b.clear(9.8, 40.0, -1.0, 1.0, centre_only=True)    # body centre 10 inside, cabin centre ~9.3 outside
    assert b.boxes == [] and b.box_kind == []           # the cabin went with its instance
    assert b.cyl_kind == [int(Kind.TRAFFIC_CONE)] and b.ell_kind == []
    b2 = _Builder()
    b2.vehicle(Kind.CAR, 10.0, 0.0, 0.0, (0.0, 0.0), rng)
    b2.clear(11.9, 13.0, -1.0, 1.0)                     # overlaps the body footprint (x up to >= 11.95) only
    assert b2.boxes == []


def _overlaps_added(on: Scene, off: Scene) -> list:
    """(added box, other box) pairs of different instances whose planar footprints overlap at t = 0."""
    from afov_ray.datasets.synth.scene import _aabb_xy

    off_boxes = {tuple(r) for r in off.boxes.round(9)}
    fp = [(_aabb_xy(list(p), "box"), int(i), tuple(p.round(9)) not in off_boxes) for p, i in zip(on.boxes, on.box_inst)]
    bad = []
    for f, i, added in fp:
        for g, j, _ in fp:
            if added and i != j and f[1] > g[0] and g[1] > f[0] and f[3] > g[2] and g[3] > f[2]:
                bad.append((f, g))
    return bad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cover_all_classes_puts_rare_classes_in_every_scan(seed):
    from afov_ray.datasets.synth.lidar import simulate_sweep
    from afov_ray.datasets.synth.nuscenes_writer import make_scene
    from afov_ray.datasets.synth.rig import make_transform, yaw_to_quat

    rare = {Kind.BICYCLE, Kind.MOTORCYCLE, Kind.CONSTRUCTION, Kind.BARRIER, Kind.TRAFFIC_CONE, Kind.OTHER_FLAT,
            Kind.BUS, Kind.TRUCK}
    on = make_scene(SynthConfig(seed=seed, keyframes_per_scene=6, cover_all_classes=True), 0, "s")
    off = make_scene(SynthConfig(seed=seed, keyframes_per_scene=6), 0, "s")
    # the showcase is drawn last: same origin, ego path and ground layout, plus cleared-in objects
    assert on.origin == off.origin and on.ego == off.ego
    np.testing.assert_array_equal(on.ground_rects[:len(off.ground_rects)], off.ground_rects)
    off_boxes = {tuple(r) for r in off.boxes.round(9)}
    added = [k for r, k in zip(on.boxes.round(9), on.box_kind) if tuple(r) not in off_boxes]
    assert {Kind.BICYCLE, Kind.MOTORCYCLE, Kind.BUS, Kind.TRUCK, Kind.CONSTRUCTION, Kind.BARRIER,
            Kind.FENCE} <= set(map(Kind, added))
    counts = np.zeros(64, np.int64)
    for t in (0.3, on.duration_s / 2, on.duration_s - 0.3):      # the LiDAR at the start, middle and end
        sweep = simulate_sweep(on, t, on.ego_pose(t) @ make_transform(yaw_to_quat(0.0), [0.0, 0.0, 1.84]),
                               np.linspace(-30.67, 10.67, 32), 720, np.random.default_rng(0), ego_body=False)
        counts += np.bincount(sweep["kind"], minlength=64)
    missing = {k.name: int(counts[int(k)]) for k in rare if counts[int(k)] < 20}
    assert not missing, f"rare classes with under 20 LiDAR returns in 3 sweeps: {missing}"
    # the showcase was cleared into place: no added box overlaps another object's box
    assert _overlaps_added(on, off) == []
