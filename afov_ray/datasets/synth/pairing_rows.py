"""Pairing-shard rows around given LiDAR points, for ingest tests and benchmarks.

Real frames (and cheaply simulated sweeps) have no teacher outputs; these rows give them pseudo-labels,
pairings and superpixel features of realistic size and layout, in the schema the pairing pass writes
(``afov_ray.geometry.pairing.pairing_schema``): each point falls in one of ``num_cameras`` azimuth
sectors; ``pair_fraction`` of the points pair with a mask of their sector (a hash of a 2 m cell, so
masks are spatially coherent), superpixel id ``camera * stride + mask``; every camera has
``masks_per_camera`` masks with a text index and a unit ``feat_dim`` float16 feature. Not a teacher:
the labels carry no meaning. ``lidar_sweep`` simulates one nuScenes-size sweep of a generated scene.
"""

from __future__ import annotations

import numpy as np

from afov_ray.datasets.labels import nuscenes_raw_to_eval
from afov_ray.datasets.synth.classes import KIND_TO_NUSCENES
from afov_ray.datasets.synth.config import SynthConfig
from afov_ray.datasets.synth.lidar import simulate_sweep
from afov_ray.datasets.synth.nuscenes_writer import keyframe_timestamps, lidar_to_ego, make_scene
from afov_ray.datasets.synth.rig import HDL32E_ELEVATIONS_DEG
from afov_ray.geometry.pairing import encode_official, pairing_schema


def _point_rows(points: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator, stride: int,
                num_cameras: int, masks_per_camera: int, feat_dim: int, pair_fraction: float,
                num_texts: int) -> dict:

    n = len(points)
    xyz = points[:, :3].astype(np.float64)
    cam = (np.floor((np.arctan2(xyz[:, 1], xyz[:, 0]) + np.pi) / (2 * np.pi / num_cameras)).astype(np.int64)
           % num_cameras)
    cell = np.floor(xyz[:, :2] / 2.0).astype(np.int64)
    mask = 1 + (cell[:, 0] * 73856093 ^ cell[:, 1] * 19349663) % masks_per_camera
    pair_point = np.sort(rng.choice(n, size=round(pair_fraction * n), replace=False)).astype(np.int32)
    superpixel = (cam * stride + mask)[pair_point].astype(np.int32)
    paired = np.zeros(n, dtype=bool)
    paired[pair_point] = True
    superpoint = np.where(paired, cam * masks_per_camera + mask - 1, -1).astype(np.int32)
    pseudo = np.where(paired, 1 + (cam * masks_per_camera + mask) % 16, 0).astype(np.uint8)
    s = num_cameras * masks_per_camera
    feat = rng.standard_normal((s, feat_dim)).astype(np.float32)
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    sp_id = (np.repeat(np.arange(num_cameras), masks_per_camera) * stride
             + np.tile(np.arange(1, masks_per_camera + 1), num_cameras)).astype(np.int32)
    return {
        "num_points": n, "points": np.ascontiguousarray(points[:, :4], dtype=np.float32).ravel(),
        "labels": None if labels is None else np.asarray(labels, dtype=np.uint8),
        "pseudo": pseudo, "pseudo_code": encode_official(superpoint, pseudo.astype(np.int64)),
        "superpoint": superpoint, "pair_point": pair_point, "pair_superpixel": superpixel,
        "sp_id": sp_id, "sp_text": rng.integers(0, num_texts, s).astype(np.int32),
        "sp_feat": feat.astype("<f2").tobytes(), "feat_dim": feat_dim,
    }


def pairing_table(scans: list[np.ndarray], scene: str = "synth-0000", labels: list[np.ndarray] | None = None,
                  seed: int = 0, stride: int = 150, num_cameras: int = 6, masks_per_camera: int = 40,
                  feat_dim: int = 768, pair_fraction: float = 0.87, num_texts: int = 175):
    """A pyarrow Table of pairing-shard rows, one per scan ((N, >=4) float32 x, y, z, intensity, ...);
    ``labels``: per-scan (N,) ground truth (None: a null labels column)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows = []
    for i, pts in enumerate(scans):
        r = _point_rows(np.asarray(pts), None if labels is None else labels[i], rng, stride, num_cameras,
                        masks_per_camera, feat_dim, pair_fraction, num_texts)
        rows.append({"sample_token": f"{scene}-{i:04d}", "scene": scene, "timestamp": i * 500_000, **r})
    schema = pairing_schema()
    cols = {}
    for f in schema:
        vals = [r[f.name] for r in rows]
        if pa.types.is_list(f.type):
            cols[f.name] = pa.array([None if v is None else np.asarray(v) for v in vals], type=f.type)
        else:
            cols[f.name] = pa.array(vals, type=f.type)
    return pa.table(cols, schema=schema)


def lidar_sweep(index: int = 0, seed: int = 0, azimuth_steps: int = 1084) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 4) float32 x, y, z, intensity; labels (N,) uint8 nuScenes eval classes) of the first
    keyframe of generated scene ``index``: 32 beams x ``azimuth_steps`` rays (1084: ~34k points, nuScenes size)."""

    cfg = SynthConfig(seed=seed, azimuth_steps=azimuth_steps)
    scene = make_scene(cfg, index, f"synth-{index:04d}")
    t = scene.time_s(keyframe_timestamps(scene, 0, cfg)["LIDAR_TOP"])
    sw = simulate_sweep(scene, t, scene.ego_pose(t) @ lidar_to_ego(), HDL32E_ELEVATIONS_DEG, azimuth_steps,
                        np.random.default_rng([seed, index]), cfg.lidar_max_range, cfg.lidar_range_noise)
    pts = np.concatenate([sw["points"], sw["intensity"][:, None]], axis=1).astype(np.float32)
    return pts, nuscenes_raw_to_eval(KIND_TO_NUSCENES[sw["kind"]]).astype(np.uint8)
