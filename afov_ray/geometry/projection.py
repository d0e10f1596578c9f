"""LiDAR -> camera projection (docs/method.md "Projection").

The nuScenes chain lidar -> ego(lidar time) -> global -> ego(camera time) -> camera is folded into
one 4x4 matrix by :func:`lidar_to_cam_matrix`; :func:`project_points` then applies it with the
intrinsics K and keeps the points in front of the camera and inside the image.

Bounds ("which points are inside the image"):

* ``bounds="afov"`` (default): the official AFOV rule, ``0 < u < W-1`` and ``0 < v < H-1`` (strict).
* ``bounds="devkit"``: nuscenes-devkit ``NuScenesExplorer.map_pointcloud_to_image``, which keeps a
  1-pixel margin on the low side only: ``1 < u < W-1`` and ``1 < v < H-1``.

Both use ``depth > min_depth`` (1.0 m in both codes). An extra symmetric ``margin`` can be added.

Numerics: we compute in float64 with the whole chain as one matrix. The devkit (and the official
AFOV code, which loads points with ``LidarPointCloud``) stores the intermediate global-frame
coordinates in float32, so its pixels differ from ours by float32 rounding of global coordinates
(about 1e-4 m at |x| ~ 2000 m, i.e. ~0.1 px at 1 m depth and ~0.005 px at 20 m). On real scene-0916
data this moves ~0.5 % of the rounded pixels by one and, rarely, a point across an image bound.
:func:`devkit_chain_points` + :func:`project_camera_points` reproduce the devkit's float32 chain
(same kept points; pixels equal up to float64 summation order, ~1e-9 px).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from afov_ray.errors import DataError

BOUNDS = ("afov", "devkit")


def _vector(value: Any, n: int, item: str, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(item, f"field {field!r} is not numeric: {exc}") from None
    if arr.shape != (n,):
        raise DataError(item, f"field {field!r} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(item, f"field {field!r} has non-finite values: {arr.tolist()}")
    return arr


def quaternion_to_matrix(q: Sequence[float] | np.ndarray, item: str = "quaternion") -> np.ndarray:
    """(3,3) rotation matrix of a quaternion given as (w, x, y, z); the quaternion is normalised
    first (as pyquaternion's ``rotation_matrix`` does). Raises DataError(item) on a bad quaternion."""
    w, x, y, z = _vector(q, 4, item, "rotation")
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    if norm < 1e-12:
        raise DataError(item, "field 'rotation' is a zero quaternion")
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_matrix(record: Mapping[str, Any], item: str | None = None) -> np.ndarray:
    """(4,4) rigid transform ``[R | t]`` of a devkit-style record with ``translation`` (x, y, z) and
    ``rotation`` (w, x, y, z): maps child-frame points into the parent frame (rotate, then translate).
    ``item`` names the record in errors (default: ``record['token']``)."""
    item = item or f"record {record.get('token', '?')}"
    if "translation" not in record or "rotation" not in record:
        raise DataError(item, "record needs 'translation' and 'rotation'")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(record["rotation"], item)
    T[:3, 3] = _vector(record["translation"], 3, item, "translation")
    return T


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform ``[R | t]`` -> ``[R^T | -R^T t]``."""
    R, t = T[:3, :3], T[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv


def lidar_to_cam_matrix(
    lidar_cs: Mapping[str, Any],
    lidar_pose: Mapping[str, Any],
    cam_pose: Mapping[str, Any],
    cam_cs: Mapping[str, Any],
) -> np.ndarray:
    """Whole nuScenes chain as one (4,4) float64 matrix (docs/method.md "Projection", steps 1-4):

    ``cam_cs^-1 @ cam_pose^-1 @ lidar_pose @ lidar_cs``, each a ``calibrated_sensor`` or
    ``ego_pose`` record (translation + rotation quaternion w, x, y, z).
    """
    items = [
        f"calibrated_sensor {lidar_cs.get('token', '?')}",
        f"ego_pose {lidar_pose.get('token', '?')}",
        f"ego_pose {cam_pose.get('token', '?')}",
        f"calibrated_sensor {cam_cs.get('token', '?')}",
    ]
    lidar_to_ego = pose_matrix(lidar_cs, items[0])
    ego_to_global = pose_matrix(lidar_pose, items[1])
    global_to_ego = invert_rigid(pose_matrix(cam_pose, items[2]))
    ego_to_cam = invert_rigid(pose_matrix(cam_cs, items[3]))
    return ego_to_cam @ global_to_ego @ ego_to_global @ lidar_to_ego


def transform_points(xyz: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Apply a (4,4) transform to (N,3) points; returns (N,3) float64."""
    xyz = np.asarray(xyz, dtype=np.float64)
    return xyz @ T[:3, :3].T + T[:3, 3]


@dataclass
class Projection:
    """Points of one cloud that land in one image."""

    point_idx: np.ndarray  # (M,) int64 indices into the input points, ascending
    uv: np.ndarray         # (M, 2) float64, u = column, v = row (continuous pixel coordinates)
    depth: np.ndarray      # (M,) float64 camera-frame z
    pixel: np.ndarray      # (M, 2) int64 (row, col) = (round(v), round(u)), inside the image

    def __len__(self) -> int:
        return int(self.point_idx.shape[0])


def project_points(
    xyz: np.ndarray,
    lidar_to_cam: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    min_depth: float = 1.0,
    bounds: str = "afov",
    margin: float = 0.0,
) -> Projection:
    """Project LiDAR-frame points (N,3) into an image (docs/method.md "Projection", step 5).

    A point is kept iff ``depth > min_depth`` and ``lo + margin < u < W-1-margin`` and
    ``lo + margin < v < H-1-margin`` with ``lo = 0`` for ``bounds="afov"`` (official AFOV code) and
    ``lo = 1`` for ``bounds="devkit"`` (nuscenes-devkit ``map_pointcloud_to_image``).
    Pixels are rounded with ``np.round`` (half to even), as numpy code does.
    """
    T = np.asarray(lidar_to_cam, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"lidar_to_cam must have shape (4, 4), got {T.shape}")
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"xyz must have shape (N, 3), got {xyz.shape}")
    return project_camera_points(transform_points(xyz[:, :3], T), K, width, height, min_depth, bounds, margin)


def project_camera_points(
    cam_xyz: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    min_depth: float = 1.0,
    bounds: str = "afov",
    margin: float = 0.0,
) -> Projection:
    """Second half of :func:`project_points`: points already in the camera frame (N,3) -> Projection."""
    if bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {BOUNDS}, got {bounds!r}")
    cam = np.asarray(cam_xyz, dtype=np.float64)
    if cam.ndim != 2 or cam.shape[1] != 3:
        raise ValueError(f"cam_xyz must have shape (N, 3), got {cam.shape}")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    depth = cam[:, 2]
    front = np.flatnonzero(depth > min_depth)
    pix = cam[front] @ K.T
    u = pix[:, 0] / pix[:, 2]
    v = pix[:, 1] / pix[:, 2]
    lo = (1.0 if bounds == "devkit" else 0.0) + margin
    inside = (u > lo) & (u < width - 1 - margin) & (v > lo) & (v < height - 1 - margin)
    idx = front[inside].astype(np.int64)
    uv = np.stack([u[inside], v[inside]], axis=1)
    pixel = np.stack([np.round(uv[:, 1]), np.round(uv[:, 0])], axis=1).astype(np.int64)
    return Projection(point_idx=idx, uv=uv, depth=depth[idx], pixel=pixel)


def devkit_chain_points(
    xyz: np.ndarray,
    lidar_cs: Mapping[str, Any],
    lidar_pose: Mapping[str, Any],
    cam_pose: Mapping[str, Any],
    cam_cs: Mapping[str, Any],
) -> np.ndarray:
    """Camera-frame points (N,3) float32 computed EXACTLY like nuscenes-devkit
    ``map_pointcloud_to_image`` / the official AFOV code: four separate rotate/translate steps on a
    float32 array (pyquaternion rotations), so intermediate global coordinates are float32-rounded.

    Use with :func:`project_camera_points` when bit-level agreement with the official pixels
    matters; the float64 whole-chain matrix moves ~0.5 % of rounded pixels by one pixel on real
    nuScenes data (see module doc).
    """
    from pyquaternion import Quaternion  # nuscenes-devkit dependency; lazy

    names = ("lidar calibrated_sensor", "lidar ego_pose", "camera ego_pose", "camera calibrated_sensor")
    for name, rec in zip(names, (lidar_cs, lidar_pose, cam_pose, cam_cs)):
        pose_matrix(rec, f"{name} {rec.get('token', '?')}")  # validates shapes / finiteness
    pts = np.ascontiguousarray(np.asarray(xyz)[:, :3].T, dtype=np.float32)  # (3, N) like LidarPointCloud

    def rotate(R: np.ndarray) -> None:
        pts[:, :] = np.dot(R, pts)

    def translate(t: Any) -> None:
        t = np.array(t)
        for i in range(3):
            pts[i, :] = pts[i, :] + t[i]

    rotate(Quaternion(lidar_cs["rotation"]).rotation_matrix)
    translate(lidar_cs["translation"])
    rotate(Quaternion(lidar_pose["rotation"]).rotation_matrix)
    translate(lidar_pose["translation"])
    translate(-np.array(cam_pose["translation"]))
    rotate(Quaternion(cam_pose["rotation"]).rotation_matrix.T)
    translate(-np.array(cam_cs["translation"]))
    rotate(Quaternion(cam_cs["rotation"]).rotation_matrix.T)
    return pts.T
