"""The non-parametric AFI network: encoder stages (FPS -> kNN -> LGA -> pooling) and the
line-mass decoder. afov-reference.md sections 1.4 and 1.5.

All tensors carry a leading scan axis B. Level 0 (the full scans) may be padded, with a validity
mask; levels >= 1 have the same size G_s for every scan of a batch (``afi_refine_batch`` groups
scans by their level sizes), so no other padding is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.geometry import furthest_point_sample, gather_points, knn


def l1norm(v: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """The official ``normalize`` for widths <= 100: v / (sum(v) + 1e-9) over the last axis."""
    return v / (v.sum(-1, keepdim=True) + eps)


@dataclass
class Level:
    """One encoder level: positions, pooled features and the stage's bag (section 1.4)."""

    xyz: torch.Tensor                      # (B, G, 3)
    x: torch.Tensor                        # (B, G, C) features x^(s)
    w: torch.Tensor | None = None          # (B, G, beta2) bin weights
    mu: torch.Tensor | None = None         # (B, G, beta2, 3) mean offsets
    ell: torch.Tensor | None = None        # (B, G, beta2) extents |mu|
    mu_hat: torch.Tensor | None = None     # (B, G, beta2, 3) unit directions
    h: torch.Tensor | None = None          # (B, G, beta2, C) L1-normalised label histograms
    influence: torch.Tensor | None = None  # (B, G) I_c (after mean normalisation)
    centre_idx: torch.Tensor | None = None # (B, G) indices into the previous level
    knn_idx: torch.Tensor | None = None    # (B, G, k) indices into the previous level
    extra: dict = field(default_factory=dict)


def encode_stage(prev: Level, G: int, cfg: AFIConfig, dirs: torch.Tensor, first: bool,
                 valid: torch.Tensor | None = None) -> Level:
    """One encoder stage s (section 1.4): prev = level s-1, returns level s with G centres."""
    xyz_p, x_p = prev.xyz, prev.x
    n_prev = xyz_p.shape[1] if valid is None else int(valid.sum(1).min())
    k = min(cfg.k, n_prev)
    eps = 1e-8
    cidx = furthest_point_sample(xyz_p, G, valid, cfg.fps_origin_eps2)           # (B, G)
    centres = gather_points(xyz_p, cidx)                                           # (B, G, 3)
    nidx = knn(centres, xyz_p, k, valid, self_idx=cidx, chunk_elems=cfg.knn_chunk_elems)
    o = gather_points(xyz_p, nidx) - centres[:, :, None, :]                        # (B, G, k, 3)
    d = o.norm(dim=-1)                                                             # (B, G, k)
    u = o / (d[..., None] + eps)
    # bins: argmax over <u, v_a>; the centre's zero vector ties everywhere -> bin 1 (index 0)
    b = torch.argmax(u @ dirs.T, dim=-1)                                           # (B, G, k)
    onehot_b = torch.nn.functional.one_hot(b, cfg.beta2).to(o.dtype)               # (B, G, k, A)
    if cfg.centre_in_bin1_hist:
        n = onehot_b.sum(2)
        n[..., 0] -= 1.0                                   # remove the centre from bin 1's count
        hist_b = onehot_b
    else:
        hist_b = onehot_b.clone()
        hist_b[:, :, 0, :] = 0.0                           # centre (slot 0) in no bin at all
        n = hist_b.sum(2)
    mu = torch.einsum("bgka,bgkd->bgad", onehot_b, o) / (n[..., None] + eps)        # (B, G, A, 3)
    ell = mu.norm(dim=-1)
    mu_hat = mu / (ell[..., None] + eps)
    x_nb = gather_points(x_p, nidx)                                                # (B, G, k, C)
    h = l1norm(torch.einsum("bgka,bgkc->bgac", hist_b, x_nb))                      # (B, G, A, C)

    if first:
        n_kept = n * (n > cfg.alpha).to(n.dtype)
        tot = n_kept.sum(-1, keepdim=True)
        w = torch.where(tot > 0, n_kept / tot.clamp(min=1e-30), torch.zeros_like(n_kept))
        influence = torch.ones(w.shape[:2], dtype=o.dtype, device=o.device)
    else:
        rho = relevance(u, d, prev, cidx, nidx, cfg.gamma)                         # (B, G, k)
        infl = rho.sum(-1)                                                         # (B, G)
        rho_bar = rho / (infl[..., None] + 1e-7)
        w = torch.einsum("bgk,bgka->bga", rho_bar, onehot_b)
        mean_i = infl.mean(-1, keepdim=True)
        # official I / mean(I); a scan level where nothing is relevant (mean 0) keeps I = 0
        influence = torch.where(mean_i > 0, infl / mean_i.clamp(min=1e-30), torch.zeros_like(infl))

    omega = l1norm(w / (ell + eps))                                                # (B, G, A)
    pooled = torch.einsum("bga,bgac->bgc", omega, h)
    x_self = gather_points(x_p, cidx)
    x_new = l1norm(influence[..., None] * pooled + cfg.pool_self_weight * x_self
                   + cfg.pool_max_weight * x_nb.max(dim=2).values)
    return Level(xyz=centres, x=x_new, w=w, mu=mu, ell=ell, mu_hat=mu_hat, h=h,
                 influence=influence, centre_idx=cidx, knn_idx=nidx)


def relevance(u: torch.Tensor, d: torch.Tensor, prev: Level, cidx: torch.Tensor,
              nidx: torch.Tensor, gamma: float) -> torch.Tensor:
    """rho_cj = A_cj * B_cj * T_cj for stages >= 2 (section 1.4 b), shape (B, G, k).

    Masses A, B use |cos| > gamma; the extents F (cos > gamma) and R (cos < -gamma) use the signed
    cosine; T = [F_c+R_c > 0][F_j+R_j > 0] (F_c+R_c+F_j+R_j) / (d + R_c + F_j + 1e-8).
    """
    w_c = gather_points(prev.w, cidx)               # (B, G, A)
    mh_c = gather_points(prev.mu_hat, cidx)         # (B, G, A, 3)
    l_c = gather_points(prev.ell, cidx)             # (B, G, A)
    w_j = gather_points(prev.w, nidx)               # (B, G, k, A)
    mh_j = gather_points(prev.mu_hat, nidx)         # (B, G, k, A, 3)
    l_j = gather_points(prev.ell, nidx)             # (B, G, k, A)
    cos_c = torch.einsum("bgkd,bgad->bgka", u, mh_c)
    cos_j = torch.einsum("bgkd,bgkad->bgka", u, mh_j)
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    A = (w_c[:, :, None, :] * (cos_c.abs() > gamma)).sum(-1)
    Bm = (w_j * (cos_j.abs() > gamma)).sum(-1)
    lc = l_c[:, :, None, :].expand_as(cos_c)
    F_c = torch.where(cos_c > gamma, lc, zero).amax(-1)
    R_c = torch.where(cos_c < -gamma, lc, zero).amax(-1)
    F_j = torch.where(cos_j > gamma, l_j, zero).amax(-1)
    R_j = torch.where(cos_j < -gamma, l_j, zero).amax(-1)
    both = ((F_c + R_c) > 0) & ((F_j + R_j) > 0)
    T = both.to(u.dtype) * (F_c + R_c + F_j + R_j) / (d + R_c + F_j + 1e-8)
    return A * Bm * T


def decode_step(dense_xyz: torch.Tensor, dense_x: torch.Tensor, sparse: Level, z_sparse: torch.Tensor,
                kappa: torch.Tensor, cfg: AFIConfig, dense_valid: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder step (section 1.5): sparse level s -> dense level s-1.

    Weights come from the line mass lambda only (no distance term, as the official code); the
    6 neighbours come from top-k (not a full sort). ``kappa`` has shape (B,) (it can differ per
    scan at the last step). Returns (z_dense (B, Nd, C), Lambda (B, Nd)).
    """
    B, Nd, _ = dense_xyz.shape
    Ns = sparse.xyz.shape[1]
    K = min(cfg.de_k, Ns)
    C = z_sparse.shape[-1]
    lam_tot = torch.empty(B, Nd, dtype=dense_x.dtype, device=dense_x.device)
    interp = torch.empty(B, Nd, C, dtype=dense_x.dtype, device=dense_x.device)
    step = max(1, cfg.knn_chunk_elems // max(1, B * max(Ns, K * cfg.beta2 * 3)))
    for a in range(0, Nd, step):
        q = dense_xyz[:, a:a + step]
        idx = knn(q, sparse.xyz, K, chunk_elems=cfg.knn_chunk_elems)               # (B, c, K)
        off = gather_points(sparse.xyz, idx) - q[:, :, None, :]
        u = off / (off.norm(dim=-1, keepdim=True) + 1e-8)
        cos = torch.einsum("bckd,bckad->bcka", u, gather_points(sparse.mu_hat, idx))
        lam = (gather_points(sparse.w, idx) * (cos.abs() > cfg.gamma)).sum(-1)      # (B, c, K)
        Lam = lam.sum(-1) + 1e-8
        pi = lam / Lam[..., None] + 1e-6
        pi = pi / pi.sum(-1, keepdim=True)
        lam_tot[:, a:a + step] = Lam
        interp[:, a:a + step] = torch.einsum("bck,bckz->bcz", pi,
                                                     gather_points(z_sparse, idx))
    if dense_valid is None:
        mean_lam = lam_tot.mean(-1)
    else:
        vf = dense_valid.to(lam_tot.dtype)
        mean_lam = (lam_tot * vf).sum(-1) / vf.sum(-1).clamp(min=1.0)
    z = l1norm(lam_tot[..., None] * interp + (kappa * mean_lam)[:, None, None] * dense_x)
    return z, lam_tot
