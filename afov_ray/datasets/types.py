"""The in-memory record every reader produces and every later stage consumes.

A ``Keyframe`` is one LiDAR sweep with the cameras of the same sample and the full calibration
chain already folded into one 4x4 matrix per camera (docs/method.md#projection):

    lidar -> ego(lidar time) -> global -> ego(camera time) -> camera   ==  ``CameraFrame.lidar_to_cam``

so projecting is ``p_cam = lidar_to_cam @ [x, y, z, 1]``, depth = p_cam.z, pixel = K @ p_cam / depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Fixed camera order of the official code (official superpixel2superpoint.py): later cameras win there.
NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


@dataclass
class CameraFrame:
    channel: str                 # e.g. "CAM_FRONT" or "image_2"
    token: str                   # camera sample_data token (nuScenes) or "<seq>/<frame>/image_2"
    image_path: str              # path relative to the dataroot
    width: int
    height: int
    K: np.ndarray                # (3, 3) float64 intrinsics
    lidar_to_cam: np.ndarray     # (4, 4) float64, whole chain lidar -> camera frame
    timestamp: int = 0


@dataclass
class Keyframe:
    dataset: str                 # "nuscenes" | "semantickitti"
    sample_token: str            # nuScenes sample token, or "<seq>/<frame>" for KITTI
    lidar_token: str             # LIDAR_TOP sample_data token, or "<seq>/<frame>"
    scene: str                   # scene name (nuScenes) or sequence id (KITTI)
    timestamp: int
    points: np.ndarray           # (N, 4) float32: x, y, z, intensity (LiDAR frame)
    raw_labels: np.ndarray | None = None   # (N,) raw dataset labels (lidarseg 0..31 / KITTI low 16 bits)
    labels: np.ndarray | None = None       # (N,) uint8 evaluation labels, 0 = ignore
    cameras: list[CameraFrame] = field(default_factory=list)
    lidar_path: str = ""         # relative to the dataroot
    ring: np.ndarray | None = None         # (N,) uint8 beam index if the format has it

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])
