"""Small synthetic LiDAR-like scenes for AFI tests and bench (numpy only, seeded).

A 32-beam spinning LiDAR at the origin (elevations -30.67..+10.67 deg as nuScenes' HDL-32E) is
ray-cast against a ground plane 1.84 m below the sensor (road 11 / sidewalk 13 / terrain 14 by
|y|), two building walls (manmade 15), cars (4), a truck (10), pedestrians (7) and a vegetation
block (16). Labels follow the nuScenes 17-class convention (0 = ignore).
"""

from __future__ import annotations

import numpy as np

SENSOR_HEIGHT = 1.84


def _boxes():
    zg = -SENSOR_HEIGHT
    b = []  # (xmin, xmax, ymin, ymax, zmin, zmax, label)
    for x0, y0 in [(6, -2.5), (14, 2.0), (-9, -2.2), (-20, 2.6), (25, -2.8)]:
        b.append((x0, x0 + 4.5, y0 - 0.9, y0 + 0.9, zg, zg + 1.5, 4))
    b.append((-16, -8, 3.5, 5.5, zg, zg + 3.2, 10))
    for x0, y0 in [(4, 7.0), (-5, -7.5), (10, 7.5), (18, -7.0)]:
        b.append((x0, x0 + 0.6, y0, y0 + 0.6, zg, zg + 1.8, 7))
    b.append((-30, -22, -11.5, -9.5, zg, zg + 4.0, 16))
    return b


def lidar_scene(n_azimuth: int = 800, n_beams: int = 32, noise: float = 0.01, seed: int = 0):
    """Returns (xyz float64 (N, 3), labels int64 (N,)). About 24 * n_azimuth points for 32 beams."""
    rng = np.random.default_rng(seed)
    elev = np.deg2rad(np.linspace(-30.67, 10.67, n_beams))
    az = np.linspace(-np.pi, np.pi, n_azimuth, endpoint=False)
    E, Az = np.meshgrid(elev, az, indexing="ij")
    Az = Az + rng.uniform(0, 2 * np.pi / n_azimuth, size=Az.shape)
    d = np.stack([np.cos(E) * np.cos(Az), np.cos(E) * np.sin(Az), np.sin(E)], -1).reshape(-1, 3)
    M = len(d)
    t_best = np.full(M, np.inf)
    lab = np.zeros(M, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        # ground
        t = np.where(d[:, 2] < 0, -SENSOR_HEIGHT / d[:, 2], np.inf)
        y_hit = np.abs(t * d[:, 1])
        g_lab = np.where(y_hit < 6, 11, np.where(y_hit < 9, 13, 14))
        upd = t < t_best
        t_best[upd], lab[upd] = t[upd], g_lab[upd]
        # walls y = +-12, x in [-40, 40], up to 8 m above ground
        for yw in (12.0, -12.0):
            t = yw / d[:, 1]
            p = t[:, None] * d
            ok = (t > 0) & (np.abs(p[:, 0]) < 40) & (p[:, 2] < 8 - SENSOR_HEIGHT)
            t = np.where(ok, t, np.inf)
            upd = t < t_best
            t_best[upd], lab[upd] = t[upd], 15
        # boxes (slab method)
        for (x0, x1, y0, y1, z0, z1, L) in _boxes():
            lo = np.array([x0, y0, z0]); hi = np.array([x1, y1, z1])
            ta, tb = lo / d, hi / d
            tmin = np.nanmax(np.minimum(ta, tb), axis=1)
            tmax = np.nanmin(np.maximum(ta, tb), axis=1)
            ok = (tmax >= tmin) & (tmin > 0)
            t = np.where(ok, tmin, np.inf)
            upd = t < t_best
            t_best[upd], lab[upd] = t[upd], L
    hit = np.isfinite(t_best) & (t_best < 70)
    r = t_best[hit] + rng.normal(0, noise, hit.sum())
    return r[:, None] * d[hit], lab[hit]


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int = 17, seed: int = 1) -> np.ndarray:
    """Replace ``fraction`` of the labels by a uniformly drawn *different* class in 1..C-1."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    idx = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    shift = rng.integers(1, num_classes - 1, len(idx))          # 1..C-2
    out[idx] = (labels[idx] - 1 + shift) % (num_classes - 1) + 1  # never equal, stays in 1..C-1
    return out
