"""The real scans used by the AFI parity tests and ``bench/afi_bench.py``, with deterministic labels.

* nuScenes: the first LIDAR_TOP keyframe of ``tests/data/nuscenes_scene0916`` (34,560 points). It
  has no lidarseg ground truth, so the labels are a deterministic, spatially coherent synthetic
  labelling in the 17 nuScenes classes (ground by lateral offset, objects by range band, high
  points vegetation).
* SemanticKITTI: ``tests/data/semantickitti_000000`` (123,389 points) with its real labels mapped to
  the 20 classes 0..19 (raw -> eval map of the official ``downstream/dataloader_kitti.py``).

Both then get 25 % of their points corrupted (seeded): each chosen point takes a uniformly drawn
*different* class in 0..C-1 (class 0 included: the official AFI input keeps class 0 as a class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afov_ray.datasets.labels import kitti_lut

NUSCENES_DIR = "nuscenes_scene0916/samples/LIDAR_TOP"
KITTI_DIR = "semantickitti_000000"
CORRUPT_FRACTION = 0.25


@dataclass
class RealScan:
    name: str
    xyz: np.ndarray        # (N, 3) float32, sensor frame
    labels: np.ndarray     # (N,) int64, corrupted input labels
    clean: np.ndarray      # (N,) int64, labels before corruption
    num_classes: int
    nuscenes: bool         # True: the official nuScenes ground step applies


def corrupt(labels: np.ndarray, num_classes: int, fraction: float = CORRUPT_FRACTION,
            seed: int = 0) -> np.ndarray:
    """Replace ``fraction`` of the labels (chosen without replacement) by a different class."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    idx = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    shift = rng.integers(1, num_classes, len(idx))                  # 1..C-1: never the same class
    out[idx] = (labels[idx] + shift) % num_classes
    return out


def nuscenes_synthetic_labels(xyz: np.ndarray) -> np.ndarray:
    """Height / range bands in the nuScenes 17-class space (deterministic, spatially coherent)."""
    x, y, z = (xyz[:, i].astype(np.float64) for i in range(3))
    r = np.hypot(x, y)
    lab = np.full(len(xyz), 15, dtype=np.int64)                     # manmade
    ground = z < -1.3
    lab[ground & (np.abs(y) < 6)] = 11                              # driveable surface
    lab[ground & (np.abs(y) >= 6) & (x >= 0)] = 13                  # sidewalk
    lab[ground & (np.abs(y) >= 6) & (x < 0)] = 14                   # terrain
    above = ~ground
    lab[above & (r < 12)] = 4                                       # car
    lab[above & (r >= 12) & (r < 20)] = 10                          # truck
    lab[above & (z > 1.0)] = 16                                     # vegetation
    lab[r <= 2.0] = 0                                               # ego returns: ignore
    return lab


def load_nuscenes(data_root: Path, seed: int = 0) -> RealScan:
    path = min((Path(data_root) / NUSCENES_DIR).glob("*.pcd.bin"))
    xyz = np.fromfile(path, dtype=np.float32).reshape(-1, 5)[:, :3].copy()
    clean = nuscenes_synthetic_labels(xyz)
    return RealScan("nuscenes_" + path.name.split("__")[-1].split(".")[0], xyz,
                    corrupt(clean, 17, seed=seed), clean, 17, True)


def load_semantickitti(data_root: Path, seed: int = 0) -> RealScan:
    folder = Path(data_root) / KITTI_DIR
    xyz = np.fromfile(folder / "000000.bin", dtype=np.float32).reshape(-1, 4)[:, :3].copy()
    raw = np.fromfile(folder / "000000.label", dtype=np.uint32) & 0xFFFF
    clean = kitti_lut()[raw].astype(np.int64)
    return RealScan("semantickitti_000000", xyz, corrupt(clean, 20, seed=seed), clean, 20, False)


def afi_config_for(scan: RealScan, **overrides):
    """The official settings for the scan's dataset (nuScenes: ground step on, 17 classes;
    SemanticKITTI: no ground step, 20 classes)."""
    from afov_ray.afi import AFIConfig

    return AFIConfig(ground_step=scan.nuscenes, num_classes=scan.num_classes, **overrides)
