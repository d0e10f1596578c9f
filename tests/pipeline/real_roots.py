"""Dataroots built from the REAL vendored frames (tests/data) for the real-data pipeline tests.

- ``spatial_lidarseg(root)``: rewrites the (fake) lidarseg label files of a ``make_nuscenes_root(...,
  lidarseg_labels=...)`` dataroot with labels that follow the real points (ground / sectors / distance), so
  neighbouring points share a class as in real data. Placeholder labels, not nuScenes facts.
- ``kitti_root(dst, real_data)``: a SemanticKITTI layout with two sequences:
  ``08`` = the real labelled scan ``semantickitti_000000`` (real labels) with the real KITTI calibration of
  frame 000008 (odometry form: P2, Tr = R0_rect @ Tr_velo_to_cam) and a blank 1242x375 image;
  ``00`` = the real KITTI frame ``kitti_object_000008`` (scan, image, calibration) with synthetic labels.
  ``cameras=False``: sequence 08 only, no image_2 / calib.txt (LiDAR-only).
- ``save_model(dir, num_classes)``: a random-init minkunet18 checkpoint with its model contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from afov_ray.datasets.kitti import read_kitti_object_calib
from afov_ray.models.spec import ModelSpec

NUSCENES_VERSION = "v1.0-mini"


def nuscenes_raw_of(points: np.ndarray) -> np.ndarray:
    """Placeholder raw lidarseg classes from geometry: noise near the sensor, road below -1.4 m, then
    45-degree sectors of object classes, far points manmade."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    r = np.hypot(x, y)
    sector = ((np.degrees(np.arctan2(y, x)) + 180.0) // 45).astype(int) % 8
    objects = np.array([17, 28, 30, 9, 23, 2, 12, 14], np.uint8)   # car, manmade, vegetation, barrier, ...
    raw = objects[sector]
    raw = np.where(r > 30.0, 28, raw)
    raw = np.where(z < -1.4, 24, raw)
    return np.where(r < 2.5, 0, raw).astype(np.uint8)


def spatial_lidarseg(root: Path, version: str = NUSCENES_VERSION) -> int:
    """Rewrite every lidarseg label file of ``root`` from its real points; returns the number of files."""
    tables = root / version
    sd = {r["token"]: r for r in json.loads((tables / "sample_data.json").read_text())}
    n = 0
    for rec in json.loads((tables / "lidarseg.json").read_text()):
        pts = np.fromfile(root / sd[rec["sample_data_token"]]["filename"], np.float32).reshape(-1, 5)
        nuscenes_raw_of(pts).tofile(root / rec["filename"])
        n += 1
    return n


def _fmt(M: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(M).reshape(-1))


def kitti_raw_of(points: np.ndarray) -> np.ndarray:
    """Synthetic SemanticKITTI raw classes (uint32 .label values) from geometry, incl. a moving class (252)."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    sector = ((np.degrees(np.arctan2(y, x)) + 180.0) // 10).astype(int) % 6
    objects = np.array([10, 50, 70, 252, 80, 30], np.uint32)       # car, building, vegetation, moving car, ...
    raw = objects[sector]
    raw = np.where(z < -1.5, 40, raw)
    return np.where((z < -1.5) & (y > 4.0), 48, raw).astype(np.uint32) | (7 << 16)   # instance id in high bits


def kitti_root(dst: Path, real_data: Path, cameras: bool = True) -> Path:
    calib = read_kitti_object_calib(real_data / "kitti_object_000008" / "calib.txt")
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"]
    Tr = (R0 @ np.vstack([calib["Tr_velo_to_cam"], [0, 0, 0, 1]]))[:3]
    P0 = calib["P2"].copy()
    P0[:, 3] = 0
    lines = [f"P0: {_fmt(P0)}", f"P1: {_fmt(P0)}", f"P2: {_fmt(calib['P2'])}", f"P3: {_fmt(calib['P2'])}",
             f"Tr: {_fmt(Tr)}"]
    seqs = {"08": (real_data / "semantickitti_000000", "000000")}
    if cameras:
        seqs["00"] = (real_data / "kitti_object_000008", "000008")
    for seq, (src, frame) in seqs.items():
        d = dst / "sequences" / seq
        (d / "velodyne").mkdir(parents=True)
        (d / "labels").mkdir()
        (d / "velodyne" / f"{frame}.bin").symlink_to(src / f"{frame}.bin")
        if (src / f"{frame}.label").exists():
            (d / "labels" / f"{frame}.label").symlink_to(src / f"{frame}.label")
        else:
            pts = np.fromfile(src / f"{frame}.bin", np.float32).reshape(-1, 4)
            kitti_raw_of(pts).tofile(d / "labels" / f"{frame}.label")
        if cameras:
            (d / "image_2").mkdir()
            if (src / f"{frame}.png").exists():
                (d / "image_2" / f"{frame}.png").symlink_to(src / f"{frame}.png")
            else:
                Image.new("RGB", (1242, 375)).save(d / "image_2" / f"{frame}.png")
            (d / "calib.txt").write_text("\n".join(lines) + "\n")
    return dst


def save_model(path: Path, num_classes: int, dictionary: str = "nuscenes", voxel_size: float = 0.2) -> str:
    """A random-init minkunet18 segmentation checkpoint (weights + contract) under ``path``."""
    from afov_ray.models.res16unet import build_model

    torch.manual_seed(0)
    state = build_model("minkunet18", 1, num_classes, "torch").state_dict()
    spec = ModelSpec(name="minkunet18", out_channels=num_classes, voxel_size=voxel_size, dictionary=dictionary)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "model_spec": spec.to_dict()}, path / "state.pt")
    return str(path)
