"""AFI pre-processing: near-ego / ground vote mask and the optional 2D assist.

Official code: ``post_process`` in ``afi/afi.py``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from afov_ray.afi.config import AFIConfig


@dataclass
class GroundResult:
    vote_mask: np.ndarray   # (N,) bool: True = the point contributes label mass
    inliers: np.ndarray     # (N,) bool: RANSAC ground inliers of the near-ego ring (G_round)
    status: str             # "ok" | "disabled" | "skipped_few_points" | "ransac_failed"
    n_ring: int


def near_ego_ground(xyz: np.ndarray, cfg: AFIConfig) -> GroundResult:
    """Near-ego ground step (official ``post_process``, ``dataset == "nuscenes"`` only).

    As the official code, everything here is float32 (the official driver casts the scan to
    float32): r = sqrt(x*x + y*y) in float32, ring A = {inner_radius < r < del_max_distance,
    z < ground_z} with the bounds as float32, and sklearn ``RANSACRegressor(LinearRegression(),
    min_samples=10, residual_threshold=0.1, max_trials=20, random_state=42)`` fitted on the float32
    arrays (x, y) -> z of A; its inliers are G_round. Vote mask m = 0 on G_round and for
    r <= inner_radius (the official ``del_mask & (d > 2)``).

    Robustness (the official code crashes here): if A has fewer than ``ransac_min_samples``
    points, or RANSAC finds no consensus set (sklearn ValueError), the RANSAC part is skipped:
    no ground inliers, no forcing to ground classes, and only the r <= inner_radius mask applies.
    The ``status`` field says which case happened. ``ground_step=False`` disables the whole step
    (the official behaviour for other datasets: every point votes).
    """
    p = np.asarray(xyz, dtype=np.float32)
    n = p.shape[0]
    if not cfg.ground_step:
        return GroundResult(np.ones(n, bool), np.zeros(n, bool), "disabled", 0)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    r = np.sqrt(x * x + y * y)
    ring = ((r < np.float32(cfg.del_max_distance)) & (r > np.float32(cfg.inner_radius))
            & (z < np.float32(cfg.ground_z)))
    inliers = np.zeros(n, bool)
    n_ring = int(ring.sum())
    status = "ok"
    if n_ring < cfg.ransac_min_samples:
        status = "skipped_few_points"
    else:
        import sklearn
        from sklearn.linear_model import LinearRegression, RANSACRegressor

        ransac = RANSACRegressor(LinearRegression(), min_samples=cfg.ransac_min_samples,
                                 residual_threshold=cfg.ransac_residual_threshold,
                                 max_trials=cfg.ransac_max_trials,
                                 random_state=cfg.ransac_random_state)
        try:
            # the inputs are finite and the parameters valid: skipping sklearn's checks makes the
            # fit ~40 % faster and changes nothing in the result
            with warnings.catch_warnings(), sklearn.config_context(assume_finite=True,
                                                                   skip_parameter_validation=True):
                warnings.simplefilter("ignore")
                ransac.fit(p[ring][:, 0:2], p[ring][:, 2])
            inliers[np.flatnonzero(ring)[ransac.inlier_mask_]] = True
        except ValueError:
            status = "ransac_failed"
    vote = ~inliers & (r > np.float32(cfg.inner_radius))
    return GroundResult(vote, inliers, status, n_ring)


def assist_probability(r: torch.Tensor, beta: float, samep_dist: float) -> torch.Tensor:
    """pi(r) = sigmoid(ln(beta) * (1 - r / samep_dist)): 0.8 at 0 m, 0.5 at samep_dist (beta 4)."""
    return torch.sigmoid(math.log(beta) * (1.0 - r / samep_dist))


def apply_assist(labels: torch.Tensor, pseudo: torch.Tensor, xyz: torch.Tensor, cfg: AFIConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Optional 2D assist (section 1.3 step 2), seeded.

    Each point whose pseudo-label is in ``cfg.assist_classes`` takes it with probability
    pi(r_n) (independent Bernoulli). The uniforms are drawn on the CPU from ``generator``
    (one per point, in point order), so results do not depend on the device.
    Returns (mixed labels, number of points replaced).
    """
    r = torch.hypot(xyz[:, 0], xyz[:, 1]).double().cpu()
    prob = assist_probability(r, cfg.beta, cfg.samep_dist)
    draw = torch.rand(labels.shape[0], generator=generator, dtype=torch.float64)
    classes = torch.tensor(list(cfg.assist_classes), dtype=torch.long)
    eligible = torch.isin(pseudo.cpu(), classes)
    take = (eligible & (draw < prob)).to(labels.device)
    return torch.where(take, pseudo.to(labels.device), labels), int(take.sum())
