"""Writes a synthetic SemanticKITTI sequence (KITTI odometry layout) from a procedural scene.

  <root>/sequences/<seq>/velodyne/NNNNNN.bin   float32 x4 (x, y, z, intensity in [0, 1]), Velodyne frame
  <root>/sequences/<seq>/labels/NNNNNN.label   uint32: low 16 bits SemanticKITTI raw id
                                               (classes.KIND_TO_KITTI), high 16 bits instance id
  <root>/sequences/<seq>/image_2/NNNNNN.png    left colour camera
  <root>/sequences/<seq>/calib.txt             P0..P3 (3x4, rectified) and Tr (3x4, velo -> cam0)
  <root>/sequences/<seq>/poses.txt             cam0 pose of each frame in the cam0 frame of frame 0 (3x4)
  <root>/sequences/<seq>/times.txt             seconds since the first frame
  <root>/sequences/<seq>/synth_scene.json      the scene description (Scene.load)

Sensor: HDL-64E-like (SynthConfig.kitti_*), 1.73 m above the ground; camera and image taken at the
scan time (KITTI is synchronised). The ego body is not modelled (no ego returns), misses are dropped.
Projection of Velodyne points into image_2: pixel ~ P2 @ Tr @ [x, y, z, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from afov_ray.datasets.synth.classes import KIND_TO_KITTI
from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.lidar import simulate_sweep
from afov_ray.datasets.synth.render import render_camera
from afov_ray.datasets.synth.rig import (
    HDL64E_ELEVATIONS_DEG,
    KITTI_BASELINES,
    KITTI_CAM0_IN_VELO,
    KITTI_K,
    KITTI_NATIVE_SIZE,
    KITTI_VELO_HEIGHT,
    make_transform,
    scale_intrinsics,
)
from afov_ray.datasets.synth.scene import Scene, build_scene

LEAD_US = 100_000
# velo (x fwd, y left, z up) -> camera (x right, y down, z fwd)
_R_VELO_TO_CAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def velo_to_ego() -> np.ndarray:
    return make_transform(np.eye(3), [0.0, 0.0, KITTI_VELO_HEIGHT])


def tr_velo_to_cam0() -> np.ndarray:
    """4x4 Tr: Velodyne -> rectified cam0."""
    T = np.eye(4)
    T[:3, :3] = _R_VELO_TO_CAM
    T[:3, 3] = -_R_VELO_TO_CAM @ KITTI_CAM0_IN_VELO
    return T


def projection_matrices(width: int, height: int) -> dict[str, np.ndarray]:
    """P0..P3 (3x4) = K [I | (b, 0, 0)] with b the camera's offset to the left of cam0."""
    K = scale_intrinsics(KITTI_K, width, height, native=KITTI_NATIVE_SIZE)
    out = {}
    for name, b in KITTI_BASELINES.items():
        out[name] = K @ np.hstack([np.eye(3), np.array([[b], [0.0], [0.0]])])
    return out


def cam2_to_global(scene: Scene, t: float) -> np.ndarray:
    """4x4 pose of the (rectified) image_2 camera at time t."""
    cam2_in_cam0 = make_transform(np.eye(3), [-KITTI_BASELINES["P2"], 0.0, 0.0])
    return scene.ego_pose(t) @ velo_to_ego() @ np.linalg.inv(tr_velo_to_cam0()) @ cam2_in_cam0


def _frame_time(scene: Scene, i: int, cfg: SynthConfig) -> float:
    return (LEAD_US + i * cfg.kitti_frame_interval_us) / 1e6


def _fmt(M) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(M).ravel())


def generate_semantickitti(root: str | Path, cfg: SynthConfig | None = None, sequence: str = "00",
                           num_frames: int | None = None) -> Path:
    """Writes one sequence under ``<root>/sequences/<sequence>``; returns that sequence folder."""
    from PIL import Image

    cfg = cfg or SynthConfig()
    cfg.validate()
    n = cfg.keyframes_per_scene if num_frames is None else int(num_frames)
    seq = Path(root) / "sequences" / sequence
    for sub in ("velodyne", "labels", "image_2"):
        (seq / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 4242, int(sequence) if sequence.isdigit() else len(sequence)])
    duration = (LEAD_US + max(n - 1, 0) * cfg.kitti_frame_interval_us) / 1e6 + 0.2
    scene = build_scene(rng, name=f"kitti-{sequence}", duration_s=duration, ego_speed=cfg.ego_speed_mps,
                        seed=cfg.seed, start_us=cfg.base_timestamp_us, cover_all_classes=cfg.cover_all_classes)
    scene.save(seq / "synth_scene.json")
    W, H = cfg.kitti_image_width, cfg.kitti_image_height
    P = projection_matrices(W, H)
    Tr = tr_velo_to_cam0()
    (seq / "calib.txt").write_text("".join(f"{k}: {_fmt(v)}\n" for k, v in P.items()) + f"Tr: {_fmt(Tr[:3])}\n")
    K2 = P["P2"][:, :3]
    elev = HDL64E_ELEVATIONS_DEG if cfg.kitti_num_beams == 64 else np.linspace(-24.8, 2.0, cfg.kitti_num_beams)
    cam0_0 = None
    poses, times = [], []
    for i in range(n):
        t = _frame_time(scene, i, cfg)
        frng = np.random.default_rng([cfg.seed, 4242, i])
        v2g = scene.ego_pose(t) @ velo_to_ego()
        sw = simulate_sweep(scene, t, v2g, elev, cfg.kitti_azimuth_steps, frng, cfg.kitti_max_range,
                            cfg.lidar_range_noise, cfg.lidar_dropout, ego_body=False)
        pts = np.concatenate([sw["points"], (sw["intensity"] / 255.0)[:, None]], axis=1).astype(np.float32)
        pts.tofile(seq / "velodyne" / f"{i:06d}.bin")
        lab = KIND_TO_KITTI[sw["kind"]] | (sw["inst"].astype(np.uint32) << np.uint32(16))
        lab.astype(np.uint32).tofile(seq / "labels" / f"{i:06d}.label")
        out = render_camera(scene, t, cam2_to_global(scene, t), K2, W, H, ego_body=False, rng=frng,
                            noise=cfg.image_noise)
        Image.fromarray(out["rgb"]).save(seq / "image_2" / f"{i:06d}.png", format="PNG")
        cam0 = v2g @ np.linalg.inv(Tr)
        cam0_0 = cam0 if cam0_0 is None else cam0_0
        poses.append(_fmt((np.linalg.inv(cam0_0) @ cam0)[:3]))
        times.append(f"{t - _frame_time(scene, 0, cfg):.6e}")
    (seq / "poses.txt").write_text("\n".join(poses) + "\n")
    (seq / "times.txt").write_text("\n".join(times) + "\n")
    return seq


def render_kitti_frame(root: str | Path, sequence: str, frame: int, width: int, height: int,
                       frame_interval_us: int = 100_000) -> dict:
    """Re-renders image_2 of a frame from the saved scene (pose from the generator rig, not from the
    files): render_camera outputs plus ``semantic_kitti`` (uint32 SemanticKITTI raw ids) and ``K``."""
    seq = Path(root) / "sequences" / sequence
    scene = Scene.load(seq / "synth_scene.json")
    t = (LEAD_US + frame * frame_interval_us) / 1e6
    K2 = projection_matrices(width, height)["P2"][:, :3]
    out = render_camera(scene, t, cam2_to_global(scene, t), K2, width, height, ego_body=False, noise=0.0)
    out["semantic_kitti"] = KIND_TO_KITTI[out["kind"]]
    out["K"] = K2
    return out
