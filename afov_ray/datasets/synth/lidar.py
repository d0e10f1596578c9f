"""Spinning multi-beam LiDAR simulation by ray casting (HDL-32E for nuScenes, HDL-64E for KITTI).

Rays are fired from the sensor origin at every (azimuth, beam) pair at one instant (the sweep is
taken as motion-compensated to the LiDAR timestamp, like nuScenes keyframes are treated by the
devkit). Misses (no surface within ``max_range``) are dropped. Labels come from the exact cast; the
stored range gets Gaussian noise. Intensity = class reflectivity x (0.3 + 0.7 |cos incidence|) x
log-normal noise, on the nuScenes 0..255 integer scale. Ring 0 is the lowest beam.
"""

from __future__ import annotations

import numpy as np

from afov_ray.datasets.synth.classes import KIND_REFLECTIVITY, Kind
from afov_ray.datasets.synth.raycast import cast
from afov_ray.datasets.synth.scene import Scene


def lidar_directions(elevations_deg, azimuth_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions in the sensor frame, azimuth-major (firing order), and the ring of each ray."""
    el = np.deg2rad(np.asarray(elevations_deg, dtype=np.float64))
    az = np.arange(azimuth_steps) * (2 * np.pi / azimuth_steps)
    A, E = np.meshgrid(az, el, indexing="ij")
    dirs = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], axis=-1).reshape(-1, 3)
    ring = np.tile(np.arange(len(el), dtype=np.uint8), azimuth_steps)
    return dirs, ring


def simulate_sweep(scene: Scene, t: float, sensor_to_global: np.ndarray, elevations_deg, azimuth_steps: int,
                   rng: np.random.Generator, max_range: float = 70.0, range_noise: float = 0.01,
                   dropout: float = 0.0, ego_body: bool = True, drop_ego: bool = False) -> dict:
    """One sweep at time t. Returns dict(points (N,3) float32 sensor frame, intensity (N,) float32,
    ring (N,) uint8, kind (N,) uint8 classes.Kind, inst (N,) int32, dist (N,) exact range)."""
    dirs_s, ring = lidar_directions(elevations_deg, azimuth_steps)
    R, T = sensor_to_global[:3, :3], sensor_to_global[:3, 3]
    dirs_g = dirs_s @ R.T
    hits = cast(scene, t, np.broadcast_to(T, dirs_g.shape), dirs_g, max_range, ego_body=ego_body)
    keep = np.isfinite(hits.dist)
    if drop_ego:
        keep &= hits.kind != Kind.EGO
    if dropout > 0:
        keep &= rng.random(len(keep)) >= dropout
    idx = np.nonzero(keep)[0]
    dist = hits.dist[idx]
    kind = hits.kind[idx]
    # incidence: normals are in the scene-local frame; bring the ray directions there too
    G = scene.global_to_local()[:3, :3]
    cos_inc = np.abs((hits.normal[idx] * (dirs_g[idx] @ G.T)).sum(1))
    noisy = dist + rng.normal(0.0, range_noise, len(idx)) if range_noise > 0 else dist
    points = (dirs_s[idx] * noisy[:, None]).astype(np.float32)
    inten = KIND_REFLECTIVITY[kind] * (0.3 + 0.7 * cos_inc) * np.exp(rng.normal(0.0, 0.25, len(idx)))
    inten = np.clip(np.round(inten), 0, 255).astype(np.float32)
    return {"points": points, "intensity": inten, "ring": ring[idx], "kind": kind,
            "inst": hits.inst[idx], "dist": dist}
