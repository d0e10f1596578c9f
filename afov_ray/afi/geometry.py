"""Geometric building blocks of AFI: Fibonacci direction bins, level sizes, FPS and kNN.

afov-reference.md sections 1.2 and 1.4 (a)-(b). Everything is batched over a leading scan axis B
and runs on any torch device.
"""

from __future__ import annotations

import math

import torch

from afov_ray.afi.config import AFIConfig


def fibonacci_directions(n: int = 20, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The official Fibonacci-sphere bins (section 1.4 b), shape (n, 3).

    v_i = (cos(i*phi) * r_i, y_i, sin(i*phi) * r_i) with y_i = 1 - 2 i / (n - 1), r_i = sqrt(1 - y_i^2)
    and the golden angle phi = pi * (sqrt(5) - 1). So v_0 = (0, 1, 0) (bin 1 = +y) and y runs from
    +1 to -1; for n = 20 the closest pair of bins is 26.5 degrees apart.
    """
    if n == 1:
        return torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype)
    i = torch.arange(n, dtype=torch.float64)
    y = 1.0 - 2.0 * i / (n - 1)
    r = torch.sqrt(torch.clamp(1.0 - y * y, min=0.0))
    theta = math.pi * (math.sqrt(5.0) - 1.0) * i
    return torch.stack([torch.cos(theta) * r, y, torch.sin(theta) * r], dim=1).to(dtype)


def level_sizes(n_points: int, cfg: AFIConfig) -> list[int]:
    """Sizes [N, G_1, ..., G_S] of the encoder levels (section 1.2).

    Nominal G_s = G_{s-1} // delta from G_0 = cfg.points (4096 -> 1365, 455, 151, 50). Clamping for
    small scans: G_s = max(1, min(nominal G_s, |level s-1|)), so a scan with N < G_1 samples all its
    points at stage 1 (FPS then only reorders them), and a level never grows. N = 0 gives all zeros.
    """
    sizes = [int(n_points)]
    nominal = int(cfg.points)
    for _ in range(cfg.stages):
        nominal = nominal // cfg.delta
        prev = sizes[-1]
        sizes.append(0 if prev == 0 else max(1, min(nominal, prev)))
    return sizes


def decoder_kappas(sizes: list[int], cfg: AFIConfig) -> list[float]:
    """kappa per decoder step, deepest first (step s: level s -> level s-1), section 1.5.

    Official rule: kappa_dense (0.3) iff |P_{s-1}| == kappa_ratio * |P_s| exactly, else kappa_sparse
    (0.01); for N -> 1365 -> 455 -> 151 -> 50 this gives 0.01, 0.01, 0.3, 0.01. ``kappa_mode="list"``
    returns ``cfg.decoder_kappas`` instead.
    """
    if cfg.kappa_mode == "list":
        return [float(v) for v in cfg.decoder_kappas]
    out = []
    for s in range(cfg.stages, 0, -1):
        dense, sparse = sizes[s - 1], sizes[s]
        out.append(cfg.kappa_dense if dense == cfg.kappa_ratio * sparse else cfg.kappa_sparse)
    return out


def furthest_point_sample(xyz: torch.Tensor, m: int, valid: torch.Tensor | None = None,
                          origin_eps2: float = 1e-3) -> torch.Tensor:
    """Deterministic FPS as the pointnet2 CUDA op: (B, N, 3) -> indices (B, m).

    Starts at index 0. Points with |p|^2 <= origin_eps2 (within ~3 cm of the origin) and padded
    points (valid False) are never picked after the start. Ties go to the lowest index. When all
    eligible points are already taken, an already-taken point is repeated (as the CUDA op does).
    """
    B, N, _ = xyz.shape
    idx = torch.zeros(B, m, dtype=torch.long, device=xyz.device)
    if m <= 1 or N == 0:
        return idx
    eligible = (xyz * xyz).sum(-1) > origin_eps2
    # Running min distance; ineligible -1 and padded -2 stay below every real distance (>= 0).
    temp = torch.full((B, N), 1e10, dtype=xyz.dtype, device=xyz.device)
    temp = torch.where(eligible, temp, torch.full_like(temp, -1.0))
    if valid is not None:
        temp = torch.where(valid, temp, torch.full_like(temp, -2.0))
    # coordinate planes (B, N) keep every per-iteration op contiguous and vectorised
    xs, ys, zs = (xyz[..., i].contiguous() for i in range(3))
    last = torch.zeros(B, 1, dtype=torch.long, device=xyz.device)
    d = torch.empty_like(temp)
    t = torch.empty_like(temp)
    for j in range(1, m):
        torch.sub(xs, xs.gather(1, last), out=d)
        d.mul_(d)
        torch.sub(ys, ys.gather(1, last), out=t)
        d.addcmul_(t, t)
        torch.sub(zs, zs.gather(1, last), out=t)
        d.addcmul_(t, t)
        torch.minimum(temp, d, out=temp)
        last = torch.argmax(temp, dim=1, keepdim=True)
        idx[:, j] = last[:, 0]
    return idx


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, *F) gathered by idx (B, *I) -> (B, *I, *F)."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    ar = torch.arange(B, device=x.device)[:, None]
    out = x[ar, flat]
    return out.reshape(*idx.shape, *x.shape[2:])


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, ref_valid: torch.Tensor | None = None,
        self_idx: torch.Tensor | None = None, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """Indices (B, M, k) of the k nearest ref points of each query, by squared distance.

    Brute force in chunks of queries (at most ``chunk_elems`` distance entries per chunk) with top-k,
    never a full sort. ``self_idx`` (B, M): index of each query in ``ref``; it is forced to slot 0
    (the official centre-included kNN, robust to duplicate points). Padded refs (ref_valid False)
    are never returned as long as k <= the number of valid refs.
    """
    B, M, _ = query.shape
    N = ref.shape[1]
    out = torch.empty(B, M, k, dtype=torch.long, device=query.device)
    rn = (ref * ref).sum(-1)                                # (B, N)
    step = max(1, chunk_elems // max(1, B * N))
    for a in range(0, M, step):
        q = query[:, a:a + step]
        d = torch.baddbmm(rn[:, None, :], q, ref.transpose(1, 2), beta=1.0, alpha=-2.0)
        d.add_((q * q).sum(-1)[:, :, None]).clamp_(min=0.0)
        if ref_valid is not None:
            d.masked_fill_(~ref_valid[:, None, :], float("inf"))
        if self_idx is not None:
            d.scatter_(2, self_idx[:, a:a + step, None], -1.0)
        out[:, a:a + step] = torch.topk(d, k, dim=2, largest=False, sorted=True).indices
    return out
