"""Small geometric and numeric pieces of AFI: Fibonacci direction bins, level sizes, decoder kappas
and the official feature normalisation.

Official code: ``afi/pointwidth_features.py`` (``fibonacci_sphere``, ``normalize``, ``EncNP``,
``DecNP.propagate``). Paper: AFOV, section 3.3 (Approximate Flat Interaction).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from afov_ray.afi.config import AFIConfig


def fibonacci_directions(n: int = 20, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The official direction bins (``fibonacci_sphere``), shape (n, 3).

    For i = 0..n-1: y_i = 1 - (i / (n - 1)) * 2, r_i = sqrt(1 - y_i^2), theta_i = i * pi * (3 - sqrt 5)
    (the golden angle, 2.39996 rad) and v_i = (cos(theta_i) r_i, y_i, sin(theta_i) r_i), computed in
    double precision and then stored as float32, as the official ``torch.tensor(points)`` does. The
    float32 values are returned in ``dtype`` (so float64 runs use exactly the official vectors).
    Bin 0 is (0, 1, 0) (+y); for n = 20 the closest pair of bins is 26.5 degrees apart.
    """
    if n < 1:
        raise ValueError("fibonacci_directions: n must be >= 1")
    if n == 1:  # the official code divides by n - 1 = 0 here; one bin pointing to +y
        return torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    rows = []
    for i in range(n):
        y = 1.0 - (i / float(n - 1)) * 2.0
        radius = math.sqrt(1.0 - y * y)
        theta = golden * i
        rows.append((math.cos(theta) * radius, y, math.sin(theta) * radius))
    return torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(dtype)


def level_sizes(n_points: int, cfg: AFIConfig) -> list[int]:
    """Sizes [N, G_1, ..., G_S] of the encoder levels.

    Official (``EncNP``): G_s = G_{s-1} // delta from G_0 = cfg.points (4096 -> 1365, 455, 151, 50).
    Deliberate difference for small scans (the official FPS would repeat points and its kNN would
    fail when a level has fewer than k points): G_s = max(1, min(nominal G_s, |level s-1|)), so a
    scan with N < G_1 samples all its points at stage 1 and a level never grows. N = 0 gives zeros.
    Real scans (N > 1365) get exactly the official sizes.
    """
    sizes = [int(n_points)]
    nominal = int(cfg.points)
    for _ in range(cfg.stages):
        nominal = nominal // cfg.delta
        prev = sizes[-1]
        sizes.append(0 if prev == 0 else max(1, min(nominal, prev)))
    return sizes


def decoder_kappas(sizes: list[int], cfg: AFIConfig) -> list[float]:
    """Self-weight kappa per decoder step, deepest step first (step s: level s -> level s-1).

    Official (``DecNP.propagate``): 0.3 iff |P_{s-1}| == delta * |P_s| exactly, else 0.01, so the
    sizes N -> 1365 -> 455 -> 151 -> 50 give 0.01, 0.01, 0.3, 0.01 (only 1365 <- 455 is an exact
    3x ratio). ``cfg.kappa_ratio`` replaces delta in that test when set; ``kappa_mode="list"``
    returns ``cfg.decoder_kappas`` instead.
    """
    if cfg.kappa_mode == "list":
        return [float(v) for v in cfg.decoder_kappas]
    ratio = cfg.delta if cfg.kappa_ratio is None else cfg.kappa_ratio
    out = []
    for s in range(cfg.stages, 0, -1):
        dense, sparse = sizes[s - 1], sizes[s]
        out.append(cfg.kappa_dense if dense == ratio * sparse else cfg.kappa_sparse)
    return out


def official_normalize(v: torch.Tensor) -> torch.Tensor:
    """The official ``normalize`` over the last axis: v / (sum(v) + 1e-9) for widths <= 100, the L2
    normalisation (``F.normalize``, eps 1e-12) for wider vectors."""
    if v.shape[-1] > 100:
        return torch.nn.functional.normalize(v, dim=-1)
    return v / (v.sum(-1, keepdim=True) + 1e-9)


def row_norm(v: torch.Tensor) -> torch.Tensor:
    """sqrt(x^2 + y^2 + z^2) over a last axis of size 3, summed left to right as the official code
    writes it (``torch.sqrt(v[..., 0]**2 + v[..., 1]**2 + v[..., 2]**2)``)."""
    return torch.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2])

