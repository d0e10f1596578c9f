"""A LiDAR-like scan for tests and benchmarks: ground plane, walls and boxes sampled on beam rings.

Rays from a sensor at height 1.8 m: ``n_beams`` elevation angles in [-30, +10] degrees, uniform
azimuths; each ray hits the nearest of ground (z = 0), a few vertical walls and axis-aligned boxes, or
nothing (max range 70 m). Intensity in [0, 255]. Deterministic for a given seed.
"""

from __future__ import annotations

import math

import torch


def lidar_like_scan(n_points: int = 30000, seed: int = 0, n_beams: int = 32) -> torch.Tensor:
    """(M, 4) float32 points [x, y, z, intensity], M <= n_points (rays that hit nothing are dropped)."""
    g = torch.Generator().manual_seed(seed)
    per_beam = max(1, n_points // n_beams)
    elev = torch.linspace(-30.0, 10.0, n_beams, dtype=torch.float64) * math.pi / 180
    az = torch.rand(n_beams, per_beam, generator=g, dtype=torch.float64) * 2 * math.pi
    el = elev[:, None].expand_as(az)
    d = torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1).reshape(-1, 3)
    origin = torch.tensor([0.0, 0.0, 1.8], dtype=torch.float64)
    t_best = torch.full((d.shape[0],), 70.0, dtype=torch.float64)
    # ground z = 0
    t = torch.where(d[:, 2] < -1e-6, -origin[2] / d[:, 2], torch.full_like(t_best, math.inf))
    t_best = torch.minimum(t_best, t)
    # boxes (walls are long thin boxes): (cx, cy, sx, sy, height)
    n_boxes = 12
    cxy = (torch.rand(n_boxes, 2, generator=g, dtype=torch.float64) - 0.5) * 60
    cxy = cxy + torch.sign(cxy) * 4  # keep the sensor free
    size = torch.rand(n_boxes, 2, generator=g, dtype=torch.float64) * 4 + 1
    size[:3, 0] = 30.0  # three long walls
    size[:3, 1] = 0.5
    height = torch.rand(n_boxes, generator=g, dtype=torch.float64) * 3 + 1.0
    for b in range(n_boxes):
        lo = torch.tensor([cxy[b, 0] - size[b, 0] / 2, cxy[b, 1] - size[b, 1] / 2, 0.0], dtype=torch.float64)
        hi = torch.tensor([cxy[b, 0] + size[b, 0] / 2, cxy[b, 1] + size[b, 1] / 2, float(height[b])], dtype=torch.float64)
        inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t0 = (lo - origin) * inv
        t1 = (hi - origin) * inv
        tmin = torch.minimum(t0, t1).max(dim=1).values
        tmax = torch.maximum(t0, t1).min(dim=1).values
        hit = (tmax >= tmin) & (tmin > 0)
        t_best = torch.where(hit & (tmin < t_best), tmin, t_best)
    keep = t_best < 70.0
    pts = origin + d[keep] * t_best[keep, None]
    pts = pts + torch.randn(pts.shape, generator=g, dtype=torch.float64) * 0.01
    intensity = torch.rand(pts.shape[0], 1, generator=g, dtype=torch.float64) * 255
    return torch.cat([pts, intensity], dim=1).to(torch.float32)
