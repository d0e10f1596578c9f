"""The non-parametric AFI network for one scan: encoder stages (FPS -> kNN -> directional bins ->
pooling) and the line-mass decoder.

Official code: ``afi/pointwidth_features.py`` (``FPS_kNN``, ``LGA``, ``Pooling``, ``EncNP``,
``DecNP.propagate``). Paper: AFOV section 3.3. Every epsilon, normalisation and summation order of
the official tensors is kept (see the comments); tensors have no batch axis (the official code
only supports batch 1). Any torch device; FPS and kNN take their CPU fast paths on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from afov_ray.afi import native
from afov_ray.afi.config import AFIConfig
from afov_ray.afi.fps import furthest_point_sample
from afov_ray.afi.geometry import official_normalize, row_norm
from afov_ray.afi.neighbors import knn


@dataclass
class Level:
    """One encoder level s: its points, pooled features x^(s) and the stage's "bag"."""

    xyz: torch.Tensor                        # (G, 3) positions (working dtype)
    x: torch.Tensor                          # (G, C) features
    centre_idx: torch.Tensor | None = None   # (G,) FPS indices into level s-1
    knn_idx: torch.Tensor | None = None      # (G, k) neighbour indices into level s-1, by (d, idx)
    bins: torch.Tensor | None = None         # (G, k) direction bin of each neighbour
    counts: torch.Tensor | None = None       # (G, A) neighbours per bin (bin 0 minus the centre)
    w: torch.Tensor | None = None            # (G, A) bin weights ("direction_percentage")
    mu: torch.Tensor | None = None           # (G, A, 3) mean offsets ("avg_direction")
    ell: torch.Tensor | None = None          # (G, A) |mu|
    h: torch.Tensor | None = None            # (G, A, C) normalised label histograms ("avg_features")
    influence: torch.Tensor | None = None    # (G,) I_c after mean normalisation ("k_influence")
    owner: torch.Tensor | None = None        # (|level s-1|,) a near centre of each point (FPS kernel)


def encode_stage(prev: Level, G: int, cfg: AFIConfig, dirs: torch.Tensor, first: bool) -> Level:
    """One encoder stage (official ``FPS_kNN`` + ``LGA`` + ``Pooling``): level s-1 -> level s."""
    xyz_p, x_p = prev.xyz, prev.x
    n_prev = xyz_p.shape[0]
    k = min(cfg.k, n_prev)
    A = dirs.shape[0]
    C = x_p.shape[1]
    cidx, owner = furthest_point_sample(xyz_p, G, cfg.fps_origin_eps2, with_owner=True)   # (G,)
    centres = xyz_p[cidx]
    nidx = knn(centres, xyz_p, k, cfg.knn_chunk_elems)                            # (G, k)
    o = xyz_p[nidx] - centres[:, None, :]                                         # (G, k, 3)
    dist = row_norm(o)
    u = o / (dist[..., None] + 1e-8)
    # bins: argmax_a <u, v_a>; the centre's zero vector ties everywhere -> bin 0 (first maximum)
    bins = torch.argmax(u @ dirs.T, dim=-1)                                       # (G, k)
    is_centre = nidx == cidx[:, None]
    if cfg.centre_in_bin1_hist:
        in_bins = None
        counts = torch.zeros(G, A, dtype=o.dtype, device=o.device)
        counts.scatter_add_(1, bins, torch.ones_like(dist))
        counts[:, 0] -= 1.0                    # official: bin 0's count minus one (the centre)
    else:
        in_bins = (~is_centre).to(o.dtype)     # clean: the centre is in no bin at all
        counts = torch.zeros(G, A, dtype=o.dtype, device=o.device).scatter_add_(1, bins, in_bins)
    mu = torch.zeros(G, A, 3, dtype=o.dtype, device=o.device)
    mu.scatter_add_(1, bins[..., None].expand(G, k, 3), o)
    mu = mu / (counts + 1e-8)[..., None]
    x_nb = x_p[nidx]                                                              # (G, k, C)
    hist_src = x_nb if in_bins is None else x_nb * in_bins[..., None]
    h = torch.zeros(G, A, C, dtype=o.dtype, device=o.device)
    h = official_normalize(h.scatter_add_(1, bins[..., None].expand(G, k, C), hist_src))

    if first:
        kept = (counts > cfg.alpha) * counts
        w = kept / (kept.sum(-1, keepdim=True) + 1e-8)
        influence = torch.ones(G, dtype=o.dtype, device=o.device)
    else:
        rho = relevance(u, dist, prev, cidx, nidx, cfg.gamma)                     # (G, k)
        infl = rho.sum(-1)
        rho = rho / (infl[:, None] + 1e-7)
        w = torch.zeros(G, A, dtype=o.dtype, device=o.device).scatter_add_(1, bins, rho)
        mean_infl = float(infl.sum() / G)                                         # official .item()
        influence = infl / (mean_infl + 1e-8)

    ell = row_norm(mu)
    pooled_w = official_normalize(w * (1.0 / (ell + 1e-8)))                       # (G, A)
    pooled = torch.einsum("ga,gac->gc", pooled_w, h)
    x_new = official_normalize(influence[:, None] * pooled + cfg.pool_self_weight * x_p[cidx]
                               + x_nb.amax(dim=1) * cfg.pool_max_weight)
    return Level(xyz=centres, x=x_new, centre_idx=cidx, knn_idx=nidx, bins=bins, counts=counts, w=w,
                 mu=mu, ell=ell, h=h, influence=influence, owner=owner)


def relevance(u: torch.Tensor, dist: torch.Tensor, prev: Level, cidx: torch.Tensor,
              nidx: torch.Tensor, gamma: float) -> torch.Tensor:
    """rho_cj = A_cj * B_cj * T_cj for stages >= 2 (official ``LGA`` with a previous bag), (G, k).

    Directions mu_hat = mu / (|mu| + 1e-8) of the previous stage at the centre c and at each
    neighbour j; masses A, B over bins with |cos| > gamma (strict); extents F (cos > gamma) and R
    (cos < -gamma); T = [F_c+R_c != 0][F_j+R_j != 0] ((F_c+R_c) + (F_j+R_j)) / ((d + R_c) + F_j + 1e-8).
    """
    ell_c = prev.ell[cidx]                                                        # (G, A)
    mh_c = prev.mu[cidx] / (ell_c[..., None] + 1e-8)                              # (G, A, 3)
    ell_j = prev.ell[nidx]                                                        # (G, k, A)
    mh_j = prev.mu[nidx] / (ell_j[..., None] + 1e-8)                              # (G, k, A, 3)
    cos_c = torch.einsum("gkd,gad->gka", u, mh_c)
    cos_j = torch.einsum("gkd,gkad->gka", u, mh_j)
    fwd_c, bwd_c = cos_c > gamma, -cos_c > gamma
    fwd_j, bwd_j = cos_j > gamma, -cos_j > gamma
    mass_c = (prev.w[cidx][:, None, :] * (fwd_c | bwd_c)).sum(-1)
    mass_j = (prev.w[nidx] * (fwd_j | bwd_j)).sum(-1)
    ell_cb = ell_c[:, None, :]
    f_c = (ell_cb * fwd_c).amax(-1)
    r_c = (ell_cb * bwd_c).amax(-1)
    f_j = (ell_j * fwd_j).amax(-1)
    r_j = (ell_j * bwd_j).amax(-1)
    ext_c, ext_j = f_c + r_c, f_j + r_j
    tight = (ext_c + ext_j) * ((ext_c != 0) & (ext_j != 0))
    tight = tight / ((dist + r_c + f_j) + 1e-8)
    return mass_c * mass_j * tight


def line_mass_auto(device_type: str) -> str:
    """The line-mass implementation "auto" picks: torch off the CPU, else the compiled kernel when
    available, else numpy."""
    if device_type != "cpu":
        return "torch"
    return "native" if native.load() is not None else "numpy"


def interpolate_auto(device_type: str) -> str:
    """The interpolation "auto" picks: scipy's CSR product on the CPU, the torch slot loop elsewhere."""
    return "sparse" if device_type == "cpu" else "loop"


def line_mass(u: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, mh: torch.Tensor, gamma: float,
              method: str = "auto") -> torch.Tensor:
    """lambda_qi = sum_a w_{c,a} [|<mh_{c,a}, u_qi>| > gamma] for c = idx_qi, shape idx.shape.

    Only the bins with w > 0 can contribute (a bin with w = 0 adds exactly 0), so only those are
    evaluated (stage 1 of a real scan has 6 non-empty bins of 20 on average). The cosine is
    ``(m_x u_x + m_y u_y) + m_z u_z`` as the official sum over the last axis, and the bins are
    summed in bin order. The (q, i) pairs are grouped by their point's number n of non-empty bins
    and each group evaluates exactly n bins. ``method``: "auto" (CPU: the compiled kernel when
    available, else numpy; other devices: torch), "native", "numpy" (bin-major blocks, summed along
    the first axis), "torch"."""
    if method == "auto":
        method = line_mass_auto(u.device.type)
    if method == "native":
        return torch.from_numpy(_line_mass_native(u.numpy(), idx.numpy(), w.numpy(), mh.numpy(), gamma))
    if method == "numpy":
        return torch.from_numpy(_line_mass_numpy(u.numpy(), idx.numpy(), w.numpy(), mh.numpy(), gamma))
    if method != "torch":
        raise ValueError(f"line_mass: unknown method {method!r}")
    return _line_mass_torch(u, idx, w, mh, gamma)


def _line_mass_native(u: np.ndarray, idx: np.ndarray, w: np.ndarray, mh: np.ndarray,
                      gamma: float) -> np.ndarray:
    keep = w > 0
    order_a = np.argsort(~keep, axis=1, kind="stable")            # non-empty bins first, in order
    mc = np.take_along_axis(mh, order_a[..., None], 1)
    lam = native.line_mass(native.load(), u.reshape(-1, 3), idx.reshape(-1), keep.sum(1),
                               mc[..., 0], mc[..., 1], mc[..., 2], np.take_along_axis(w, order_a, 1), gamma)
    return lam.reshape(idx.shape)


def _line_mass_numpy(u: np.ndarray, idx: np.ndarray, w: np.ndarray, mh: np.ndarray, gamma: float,
                     chunk: int = 1 << 16) -> np.ndarray:
    g = w.dtype.type(gamma)
    keep = w > 0
    n_keep = keep.sum(1)
    order_a = np.argsort(~keep, axis=1, kind="stable")            # non-empty bins first, in order
    # bin-major tables (A, Ns): a gathered block (n, pairs) is summed over bins along axis 0
    w_t = np.ascontiguousarray(np.take_along_axis(w, order_a, 1).T)
    mc = np.take_along_axis(mh, order_a[..., None], 1)
    mx, my, mz = (np.ascontiguousarray(mc[..., i].T) for i in range(3))
    flat_c = idx.reshape(-1)
    uf = u.reshape(-1, 3)
    cnt = n_keep[flat_c]
    order = np.argsort(cnt.astype(np.uint8 if w.shape[1] < 256 else np.int64), kind="stable")
    edges = np.searchsorted(cnt[order], np.arange(w.shape[1] + 2))
    lam = np.zeros(flat_c.shape[0], dtype=w.dtype)
    for nb in range(1, w.shape[1] + 1):
        for a in range(edges[nb], edges[nb + 1], chunk):
            sel = order[a:min(edges[nb + 1], a + chunk)]
            c = flat_c[sel]
            us = uf[sel]
            cos = mx[:nb, c] * us[:, 0]
            cos += my[:nb, c] * us[:, 1]
            cos += mz[:nb, c] * us[:, 2]
            np.abs(cos, out=cos)
            contrib = w_t[:nb, c]
            contrib *= cos > g
            acc = contrib[0]
            for b in range(1, nb):                                 # bins in order
                acc += contrib[b]
            lam[sel] = acc
    return lam.reshape(idx.shape)


def _line_mass_torch(u: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, mh: torch.Tensor,
                     gamma: float, chunk: int = 1 << 15) -> torch.Tensor:
    keep = w > 0
    n_keep = keep.sum(1)                                                          # (Ns,)
    order_a = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    wc = w.gather(1, order_a)
    mc = mh.gather(1, order_a[..., None].expand(-1, -1, 3))
    mx, my, mz = (mc[..., i].contiguous() for i in range(3))
    flat_c = idx.reshape(-1)
    uf = u.reshape(-1, 3)
    cnt = n_keep[flat_c]                                                          # bins per pair
    lam = torch.zeros(flat_c.shape[0], dtype=w.dtype, device=w.device)
    for nb in torch.unique(n_keep).tolist():
        if nb == 0:
            continue
        group = (cnt == nb).nonzero().flatten()
        for a in range(0, group.shape[0], chunk):
            sel = group[a:a + chunk]
            c = flat_c[sel]
            us = uf[sel]
            cos = ((mx[c, :nb] * us[:, 0, None] + my[c, :nb] * us[:, 1, None])
                   + mz[c, :nb] * us[:, 2, None])
            lam[sel] = (wc[c, :nb] * (cos.abs() > gamma)).sum(-1)
    return lam.reshape(idx.shape)


def _sum_slots(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis, left to right."""
    acc = t[..., 0]
    for i in range(1, t.shape[-1]):
        acc = acc + t[..., i]
    return acc


def interpolate(z_sparse: torch.Tensor, idx: torch.Tensor, pi: torch.Tensor,
                method: str = "auto") -> torch.Tensor:
    """sum_i pi_qi z_{idx_qi}, summed over the slots i in order: (Nd, K) x (Ns, C) -> (Nd, C).
    ``method``: "auto" (CPU: "sparse", else "loop"), "sparse" (one scipy CSR product, which sums
    each row's entries in the stored order), "loop" (torch, slot by slot). Same values."""
    nd, K = idx.shape
    if method == "auto":
        method = interpolate_auto(z_sparse.device.type)
    if method == "sparse":
        from scipy.sparse import csr_matrix

        mat = csr_matrix((pi.reshape(-1).numpy(), idx.reshape(-1).numpy(),
                          np.arange(0, nd * K + 1, K)), shape=(nd, z_sparse.shape[0]))
        return torch.from_numpy(np.ascontiguousarray(mat @ z_sparse.numpy()))
    if method != "loop":
        raise ValueError(f"interpolate: unknown method {method!r}")
    acc = z_sparse[idx[:, 0]] * pi[:, 0, None]
    for i in range(1, K):
        acc = acc + z_sparse[idx[:, i]] * pi[:, i, None]
    return acc


def decode_step(dense_xyz: torch.Tensor, dense_x: torch.Tensor, sparse: Level, z_sparse: torch.Tensor,
                kappa: float, cfg: AFIConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder step (official ``DecNP.propagate``): sparse level s -> dense level s-1.

    lambda_qi = sum_a w_{c_i,a} [|<mu_hat_{c_i,a}, u_{q c_i}>| > gamma] over the de_k nearest sparse
    points c_i (u from q to c_i); Lambda_q = sum_i lambda_qi + 1e-8; pi_qi = (lambda_qi / Lambda_q +
    1e-6) + 1e-10, divided by (sum_i pi_qi + 1e-8) (the official inverse-distance weights are
    overwritten, so distance does not enter); z_q = normalize(Lambda_q * sum_i pi_qi z_{c_i} +
    (1e-8 + kappa * mean_q' Lambda_q') * x_q). Returns (z (Nd, C), Lambda (Nd,), idx (Nd, K)).
    """
    nd = dense_xyz.shape[0]
    K = min(cfg.de_k, sparse.xyz.shape[0])
    mh = sparse.mu / (sparse.ell[..., None] + 1e-8)                               # (Ns, A, 3)
    idx = knn(dense_xyz, sparse.xyz, K, cfg.knn_chunk_elems, owner=sparse.owner)  # (Nd, K)
    off = sparse.xyz[idx] - dense_xyz[:, None, :]                                 # (Nd, K, 3)
    u = off / (row_norm(off)[..., None] + 1e-8)
    lam = line_mass(u, idx, sparse.w, mh, cfg.gamma)                              # (Nd, K)
    Lam = _sum_slots(lam) + 1e-8
    pi = (lam / Lam[:, None] + 1e-6) + 1e-10
    pi = pi / (_sum_slots(pi)[:, None] + 1e-8)
    interp = interpolate(z_sparse, idx, pi)
    mean_lam = float(Lam.sum() / nd)                                              # official .item()
    z = official_normalize(interp * Lam[:, None] + (1e-8 + kappa * mean_lam) * dense_x)
    return z, Lam, idx


def afi_network(xyz: torch.Tensor, x0: torch.Tensor, sizes: list[int], kappas: list[float],
                cfg: AFIConfig, dirs: torch.Tensor) -> tuple[torch.Tensor, list[Level], list[torch.Tensor]]:
    """Encoder + decoder (official ``Point_NN_Seg``) on one scan: xyz (N, 3), x0 (N, C) masked
    one-hot, sizes [N, G_1..G_S], kappas deepest step first. Returns (z0 (N, C), levels [0..S],
    decoder outputs [z^(S-1), ..., z^(0)])."""
    levels = [Level(xyz=xyz, x=x0)]
    for s in range(1, cfg.stages + 1):
        levels.append(encode_stage(levels[-1], sizes[s], cfg, dirs, first=(s == 1)))
    z = levels[-1].x
    outs = []
    for i, s in enumerate(range(cfg.stages, 0, -1)):
        dense = levels[s - 1]
        z, _, _ = decode_step(dense.xyz, dense.x, levels[s], z, kappas[i], cfg)
        outs.append(z)
    return z, levels, outs
