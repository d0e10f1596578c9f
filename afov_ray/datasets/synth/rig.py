"""Sensor rigs: the real nuScenes rig (scene-0916 calibrated_sensor values) and a KITTI-odometry rig.

nuScenes numbers are copied from the real ``calibrated_sensor.json`` of scene-0916 (log n015,
tests/data/nuscenes_scene0916); rotations are quaternions [w, x, y, z] sensor->ego, the
intrinsics are for 1600x900 and get scaled by :func:`scale_intrinsics`. Camera time offsets relative
to the LiDAR (microseconds) are those of that scene's first sample (cameras fire as the LiDAR sweeps).
"""

from __future__ import annotations

import numpy as np

NUSCENES_NATIVE_SIZE = (1600, 900)

NUSCENES_LIDAR = {
    "translation": [0.943713, 0.0, 1.84023],
    "rotation": [0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817],
}

# channel -> (translation, rotation [w,x,y,z], K at 1600x900, time offset to the LiDAR in us)
NUSCENES_CAMERAS_RIG = {
    "CAM_FRONT": ([1.70079118954, 0.0159456324149, 1.51095763913],
                  [0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755],
                  [[1266.417203046554, 0.0, 816.2670197447984], [0.0, 1266.417203046554, 491.50706579294757],
                   [0.0, 0.0, 1.0]], -34789),
    "CAM_FRONT_RIGHT": ([1.5508477543, -0.493404796419, 1.49574800619],
                        [0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485],
                        [[1260.8474446004698, 0.0, 807.968244525554], [0.0, 1260.8474446004698, 495.3344268742088],
                         [0.0, 0.0, 1.0]], -26920),
    "CAM_BACK_RIGHT": ([1.0148780988, -0.480568219723, 1.56239545128],
                       [0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798],
                       [[1259.5137405846733, 0.0, 807.2529053838625], [0.0, 1259.5137405846733, 501.19579884916527],
                        [0.0, 0.0, 1.0]], -19366),
    "CAM_BACK": ([0.0283260309358, 0.00345136761476, 1.57910346144],
                 [0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578],
                 [[809.2209905677063, 0.0, 829.2196003259838], [0.0, 809.2209905677063, 481.77842384512485],
                  [0.0, 0.0, 1.0]], -9734),
    "CAM_BACK_LEFT": ([1.03569100218, 0.484795032713, 1.59097014818],
                      [0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753],
                      [[1256.7414812095406, 0.0, 792.1125740759628], [0.0, 1256.7414812095406, 492.7757465151356],
                       [0.0, 0.0, 1.0]], 164),
    "CAM_FRONT_LEFT": ([1.52387798135, 0.494631336551, 1.50932822144],
                       [0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068],
                       [[1272.5979470598488, 0.0, 826.6154927353808], [0.0, 1272.5979470598488, 479.75165386361925],
                        [0.0, 0.0, 1.0]], -42415),
}

# Velodyne HDL-32E: 32 beams from -30.67 to +10.67 degrees (1.333 deg apart). Ring 0 = lowest beam.
HDL32E_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
# Velodyne HDL-64E (KITTI): +2.0 to -24.8 degrees.
HDL64E_ELEVATIONS_DEG = np.linspace(-24.8, 2.0, 64)

# Ego body (nuScenes ego frame: origin at the rear axle on the ground, x forward, z up), as boxes
# (x0, x1, y0, y1, z0, z1): lower body and cabin of a small hatchback below the roof-mounted LiDAR.
EGO_BODY_BOXES = ((-0.9, 3.4, -0.9, 0.9, 0.2, 0.95), (0.4, 1.9, -0.75, 0.75, 0.95, 1.35))

# KITTI odometry (sequence 00) intrinsics at 1241x376 and the rig: Velodyne 1.73 m above ground at
# the ego origin; cam0 0.27 m ahead of and 0.08 m below it; cam2 (left colour) 0.06 m left of cam0.
KITTI_NATIVE_SIZE = (1241, 376)
KITTI_K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
KITTI_VELO_HEIGHT = 1.73
KITTI_CAM0_IN_VELO = np.array([0.27, 0.0, -0.08])
KITTI_BASELINES = {"P0": 0.0, "P1": -0.537, "P2": 0.06, "P3": -0.47}   # camera x-offset in cam0 (m), +left


def quat_to_rot(q) -> np.ndarray:
    """[w, x, y, z] quaternion -> 3x3 rotation matrix (normalises first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def yaw_to_quat(yaw: float) -> list[float]:
    """Rotation about +z by ``yaw`` radians as [w, x, y, z]."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def make_transform(rotation, translation) -> np.ndarray:
    """4x4 from a quaternion [w,x,y,z] (or a 3x3 matrix) and a translation."""
    T = np.eye(4)
    R = np.asarray(rotation, dtype=np.float64)
    T[:3, :3] = R if R.shape == (3, 3) else quat_to_rot(R)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def scale_intrinsics(K, width: int, height: int, native=NUSCENES_NATIVE_SIZE) -> np.ndarray:
    """Scale a pixel-centre-at-integer intrinsic matrix from the ``native`` image size to (width, height)."""
    K = np.asarray(K, dtype=np.float64).copy()
    sx, sy = width / native[0], height / native[1]
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def nuscenes_camera_rig(width: int, height: int) -> dict[str, dict]:
    """channel -> {translation, rotation, K (scaled), offset_us} for the 6 nuScenes cameras."""
    return {ch: {"translation": list(t), "rotation": list(q), "K": scale_intrinsics(K, width, height),
                 "offset_us": int(off)} for ch, (t, q, K, off) in NUSCENES_CAMERAS_RIG.items()}


def rot_to_quat(R) -> list[float]:
    """3x3 rotation -> [w, x, y, z] with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        S = np.sqrt(tr + 1.0) * 2
        q = [0.25 * S, (R[2, 1] - R[1, 2]) / S, (R[0, 2] - R[2, 0]) / S, (R[1, 0] - R[0, 1]) / S]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        S = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / S, 0.25 * S, (R[0, 1] + R[1, 0]) / S, (R[0, 2] + R[2, 0]) / S]
    elif R[1, 1] > R[2, 2]:
        S = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / S, (R[0, 1] + R[1, 0]) / S, 0.25 * S, (R[1, 2] + R[2, 1]) / S]
    else:
        S = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / S, (R[0, 2] + R[2, 0]) / S, (R[1, 2] + R[2, 1]) / S, 0.25 * S]
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    return [float(v) for v in q]
