"""Independent reference implementation of AFI, the test oracle for ``afov_ray.afi``.

Written from the AFOV paper (section 3.3) and a reading of the official code; it imports nothing
from ``afov_ray`` and shares no helper with it (own bins, FPS, kNN, RANSAC call, pooling, decoder).
Plain numpy in float64, loops over stages, centres, neighbours and bins; only the distance
computations and the decoder are vectorised over points. Slow on purpose: it documents the
algorithm. Each step names the official code it follows (file: function):

1. ``ground_step``            afi/afi.py: post_process (nuScenes branch): float32 r = sqrt(x^2+y^2),
                              ring 2 < r < 5 and z < -1.4, sklearn RANSACRegressor(LinearRegression,
                              min_samples 10, residual 0.1, 20 trials, seed 42) on the float32 ring,
                              vote mask = not inlier and r > 2.
2. ``one-hot input``          afi/afi.py: post_process: eye(dim)[labels] * vote mask (class 0 has mass).
3. ``golden_bins``            afi/pointwidth_features.py: fibonacci_sphere (golden angle
                              pi (3 - sqrt 5), y from +1 to -1, x = cos * r, z = sin * r, stored as
                              float32 by torch.tensor).
4. ``fps_like_cuda``          the pointnet2_ops CUDA kernel furthest_point_sampling_kernel called by
                              FPS_kNN.forward: float32, start 0, |p|^2 <= 1e-3 never picked, ties to
                              the smallest (k mod threads, k).
5. ``nearest``                afi/model_utils.py: knn_point / square_distance (encoder) and
                              DecNP.propagate's sort (decoder); here exact float64 distances, ties to
                              the lower index.
6. ``encoder_stage``          FPS_kNN.forward + LGA.forward (bins, counts with bin 0 minus the
                              centre, mean offsets, histograms incl. the centre, stage-1 percentages,
                              later-stage relevance) + Pooling.forward; EncNP.forward runs the stages.
7. ``decoder_step``           DecNP.propagate (6 nearest sparse points, line masses, the overwritten
                              distance weights, kappa rule N == delta * S, 1e-8 + kappa * mean);
                              DecNP.forward runs the steps deepest first.
8. ``reference_afi``          afi/afi.py: post_process: ground inliers keep only classes 11..14, argmax
                              (first maximum).

Deliberate deviations, shared with the product and documented in docs/afi.md: neighbours by exact
distances (the official float32 expansion can swap near-ties), level sizes clamped for scans with
fewer points than a level needs, a RANSAC that cannot run is skipped instead of crashing.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


class OfficialSettings:
    """The official settings (config/annotation_free_*.yaml and the hard-coded constants)."""

    points = 4096
    stages = 4
    k = 20
    de_k = 6
    alpha = 0.0
    beta2 = 20
    gamma = 0.995
    delta = 3
    num_classes = 17
    ground_step = True
    inner_radius = 2.0
    del_max_distance = 5.0
    ground_z = -1.4
    ground_classes = (11, 12, 13, 14)
    ransac_min_samples = 10
    ransac_residual_threshold = 0.1
    ransac_max_trials = 20
    ransac_random_state = 42
    pool_self_weight = 0.1
    pool_max_weight = 1e-8
    kappa_mode = "official"
    kappa_dense = 0.3
    kappa_sparse = 0.01
    kappa_ratio = None
    decoder_kappas = ()
    class0_mass = True
    centre_in_bin1_hist = True
    fps_origin_eps2 = 1e-3

    def __init__(self, **overrides):
        for key, value in overrides.items():
            if not hasattr(self, key):
                raise AttributeError(key)
            setattr(self, key, value)


# --------------------------------------------------------------------------- small pieces
def golden_bins(n):
    """The n Fibonacci-sphere directions of the official code, as float32 values (in float64)."""
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    rows = []
    for i in range(n):
        y = 1 - (i / float(n - 1)) * 2
        radius = math.sqrt(1 - y * y)
        theta = golden_angle * i
        rows.append([math.cos(theta) * radius, y, math.sin(theta) * radius])
    return np.array(rows, dtype=np.float32).astype(np.float64)


def normalize(v):
    """Official ``normalize`` of one vector: L1 (sum + 1e-9) up to width 100, else L2."""
    if v.shape[-1] > 100:
        return v / max(math.sqrt(float(np.sum(v * v))), 1e-12)
    total = 0.0
    for value in v:
        total += value
    return v / (total + 1e-9)


def length(v):
    """sqrt(x^2 + y^2 + z^2) of one 3-vector, summed left to right."""
    return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def dot3(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def squared_distances(points, q):
    """Exact squared distances from q to every row of points: (dx^2 + dy^2) + dz^2."""
    dx = points[:, 0] - q[0]
    dy = points[:, 1] - q[1]
    dz = points[:, 2] - q[2]
    return (dx * dx + dy * dy) + dz * dz


def fps_like_cuda(points, m, eps2=1e-3):
    """Furthest point sampling as the pointnet2 CUDA kernel, in float32."""
    p = np.asarray(points, dtype=np.float32)
    n = len(p)
    threads = max(min(1 << int(math.log(n) / math.log(2.0)), 512), 1)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    eligible = ((x * x + y * y) + z * z).astype(np.float64) > eps2
    nearest = np.full(n, np.float32(1e10), dtype=np.float32)
    picked = [0]
    last = 0
    for _ in range(1, m):
        d = ((x - x[last]) * (x - x[last]) + (y - y[last]) * (y - y[last])) + (z - z[last]) * (z - z[last])
        nearest = np.where(eligible, np.minimum(nearest, d), nearest)
        if not eligible.any():
            last = 0
        else:
            best = nearest[eligible].max()
            tied = np.flatnonzero(eligible & (nearest == best))
            last = int(min(tied, key=lambda t: (t % threads, t)))
        picked.append(last)
    return np.array(picked, dtype=np.int64)


def nearest(points, q, k):
    """Indices of the k points nearest to q, ordered by (exact squared distance, index)."""
    d = squared_distances(points, q)
    if k < len(points):
        kth = np.partition(d, k - 1)[k - 1]
        cand = np.flatnonzero(d <= kth)             # every point that can be in the k nearest
    else:
        cand = np.arange(len(points))
    order = np.lexsort((cand, d[cand]))
    return cand[order[:k]]


def level_sizes(n, s):
    sizes, nominal = [n], s.points
    for _ in range(s.stages):
        nominal = nominal // s.delta
        sizes.append(max(1, min(nominal, sizes[-1])))
    return sizes


def kappa_for(step, n_dense, n_sparse, s):
    if s.kappa_mode == "list":
        return float(s.decoder_kappas[step])
    ratio = s.delta if s.kappa_ratio is None else s.kappa_ratio
    return s.kappa_dense if n_dense == ratio * n_sparse else s.kappa_sparse


# --------------------------------------------------------------------------- ground step
def ground_step(xyz, s):
    """Returns (vote mask, ground inliers) as numpy bools."""
    n = len(xyz)
    if not s.ground_step:
        return np.ones(n, bool), np.zeros(n, bool)
    from sklearn.linear_model import LinearRegression, RANSACRegressor

    p = np.asarray(xyz, dtype=np.float32)
    r = np.sqrt(p[:, 0] * p[:, 0] + p[:, 1] * p[:, 1])
    ring = ((r < np.float32(s.del_max_distance)) & (r > np.float32(s.inner_radius))
            & (p[:, 2] < np.float32(s.ground_z)))
    inliers = np.zeros(n, bool)
    if ring.sum() >= s.ransac_min_samples:
        ransac = RANSACRegressor(LinearRegression(), min_samples=s.ransac_min_samples,
                                 residual_threshold=s.ransac_residual_threshold,
                                 max_trials=s.ransac_max_trials, random_state=s.ransac_random_state)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ransac.fit(p[ring][:, :2], p[ring][:, 2])
            inliers[np.flatnonzero(ring)[ransac.inlier_mask_]] = True
        except ValueError:
            pass
    return ~inliers & (r > np.float32(s.inner_radius)), inliers


# --------------------------------------------------------------------------- encoder
def encoder_stage(P, X, G, s, bins, prev):
    """One stage on level (P, X); prev = the previous stage's dict or None (stage 1)."""
    A = len(bins)
    C = X.shape[1]
    k = min(s.k, len(P))
    centres = fps_like_cuda(P, G, s.fps_origin_eps2)
    out = {"centres": centres, "knn": np.zeros((G, k), np.int64), "bins": np.zeros((G, k), np.int64),
           "counts": np.zeros((G, A)), "w": np.zeros((G, A)), "mu": np.zeros((G, A, 3)),
           "ell": np.zeros((G, A)), "h": np.zeros((G, A, C)), "I": np.zeros(G), "x": np.zeros((G, C))}
    for g, c in enumerate(centres):
        nb = nearest(P, P[c], k)
        out["knn"][g] = nb
        offsets = P[nb] - P[c]
        dists = np.array([length(o) for o in offsets])
        units = offsets / (dists[:, None] + 1e-8)
        counts = np.zeros(A)
        mu_sum = np.zeros((A, 3))
        hist = np.zeros((A, C))
        for t, j in enumerate(nb):
            sims = [dot3(units[t], v) for v in bins]
            b = int(np.argmax(sims))                # the centre's zero vector ties -> bin 0
            out["bins"][g, t] = b
            centre = j == c
            if s.centre_in_bin1_hist or not centre:
                counts[b] += 1
                mu_sum[b] += offsets[t]
                hist[b] += X[j]
        if s.centre_in_bin1_hist:
            counts[0] -= 1                          # official: bin 0 minus one, for the centre
        mu = mu_sum / (counts[:, None] + 1e-8)
        ell = np.array([length(m) for m in mu])
        out["counts"][g], out["mu"][g], out["ell"][g] = counts, mu, ell
        out["h"][g] = np.stack([normalize(hist[a]) for a in range(A)])
        if prev is None:
            kept = np.where(counts > s.alpha, counts, 0.0)
            out["w"][g] = kept / (sum(kept) + 1e-8)
            out["I"][g] = 1.0
            continue
        rho = np.zeros(k)
        for t, j in enumerate(nb):
            u = units[t]
            mass_c = mass_j = 0.0
            fc = rc = fj = rj = 0.0
            for a in range(A):
                dir_c = prev["mu"][c, a] / (prev["ell"][c, a] + 1e-8)
                dir_j = prev["mu"][j, a] / (prev["ell"][j, a] + 1e-8)
                cos_c, cos_j = dot3(u, dir_c), dot3(u, dir_j)
                if cos_c > s.gamma or -cos_c > s.gamma:
                    mass_c += prev["w"][c, a]
                if cos_j > s.gamma or -cos_j > s.gamma:
                    mass_j += prev["w"][j, a]
                if cos_c > s.gamma:
                    fc = max(fc, prev["ell"][c, a])
                if -cos_c > s.gamma:
                    rc = max(rc, prev["ell"][c, a])
                if cos_j > s.gamma:
                    fj = max(fj, prev["ell"][j, a])
                if -cos_j > s.gamma:
                    rj = max(rj, prev["ell"][j, a])
            tight = 0.0
            if (fc + rc) != 0 and (fj + rj) != 0:
                tight = ((fc + rc) + (fj + rj)) / ((dists[t] + rc + fj) + 1e-8)
            rho[t] = mass_c * mass_j * tight
        influence = 0.0
        for value in rho:
            influence += value
        for t in range(k):
            out["w"][g, out["bins"][g, t]] += rho[t] / (influence + 1e-7)
        out["I"][g] = influence
    if prev is not None:
        mean = sum(out["I"]) / G
        out["I"] = out["I"] / (mean + 1e-8)
    for g, c in enumerate(centres):                 # pooling
        weights = normalize(out["w"][g] * (1.0 / (out["ell"][g] + 1e-8)))
        pooled = np.zeros(C)
        for a in range(A):
            pooled += weights[a] * out["h"][g, a]
        neighbour_max = X[out["knn"][g]].max(axis=0)
        out["x"][g] = normalize(out["I"][g] * pooled + s.pool_self_weight * X[c]
                                + neighbour_max * s.pool_max_weight)
    return out


# --------------------------------------------------------------------------- decoder
def decoder_step(Pd, Xd, Ps, Zs, stage, kappa, s, chunk=2048):
    """Sparse level (Ps, Zs, its stage dict) -> dense level (Pd, Xd)."""
    K = min(s.de_k, len(Ps))
    A = stage["w"].shape[1]
    dirs = stage["mu"] / (np.sqrt(stage["mu"][..., 0] * stage["mu"][..., 0]
                                  + stage["mu"][..., 1] * stage["mu"][..., 1]
                                  + stage["mu"][..., 2] * stage["mu"][..., 2])[..., None] + 1e-8)
    lam_total = np.zeros(len(Pd))
    interp = np.zeros((len(Pd), Zs.shape[1]))
    cols = np.arange(len(Ps))
    for a0 in range(0, len(Pd), chunk):
        q = Pd[a0:a0 + chunk]
        d = ((Ps[None, :, 0] - q[:, None, 0]) ** 2 + (Ps[None, :, 1] - q[:, None, 1]) ** 2) \
            + (Ps[None, :, 2] - q[:, None, 2]) ** 2
        # the K nearest by (distance, index): candidates up to the K-th distance, then sort them
        kth = np.partition(d, K - 1, axis=1)[:, K - 1] if K < len(Ps) else d.max(1)
        idx = np.zeros((len(q), K), np.int64)
        for r in range(len(q)):
            cand = cols[d[r] <= kth[r]]
            idx[r] = cand[np.lexsort((cand, d[r, cand]))[:K]]
        off = Ps[idx] - q[:, None, :]
        dist = np.sqrt(off[..., 0] * off[..., 0] + off[..., 1] * off[..., 1] + off[..., 2] * off[..., 2])
        u = off / (dist[..., None] + 1e-8)
        lam = np.zeros((len(q), K))
        for a in range(A):
            m = dirs[idx, a]
            cos = (m[..., 0] * u[..., 0] + m[..., 1] * u[..., 1]) + m[..., 2] * u[..., 2]
            lam += stage["w"][idx, a] * (np.abs(cos) > s.gamma)
        lam_sum = np.zeros(len(q))
        for i in range(K):
            lam_sum += lam[:, i]
        lam_sum += 1e-8
        pi = (lam / lam_sum[:, None] + 1e-6) + 1e-10
        pi_sum = np.zeros(len(q))
        for i in range(K):
            pi_sum += pi[:, i]
        pi = pi / (pi_sum[:, None] + 1e-8)
        acc = np.zeros((len(q), Zs.shape[1]))
        for i in range(K):
            acc += Zs[idx[:, i]] * pi[:, i, None]
        lam_total[a0:a0 + chunk] = lam_sum
        interp[a0:a0 + chunk] = acc
    mean = float(np.sum(lam_total)) / len(Pd)
    out = interp * lam_total[:, None] + (1e-8 + kappa * mean) * Xd
    return np.stack([normalize(row) for row in out])


# --------------------------------------------------------------------------- driver
def reference_afi(xyz, labels, s=None):
    """AFI on one scan. Returns a dict: labels, z0 (after ground forcing), vote, inliers, sizes,
    kappas, stages [per encoder stage dict], levels [(points, features) for levels 0..S],
    decoded [z^(S-1), ..., z^(0)]."""
    s = s or OfficialSettings()
    P = np.asarray(xyz, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    C = s.num_classes
    vote, inliers = ground_step(xyz, s)
    if not s.class0_mass:
        vote = vote & (y != 0)
    X = np.eye(C)[y] * vote[:, None]
    bins = golden_bins(s.beta2)
    sizes = level_sizes(len(P), s)
    levels = [(P, X)]
    stages = []
    prev = None
    for st in range(1, s.stages + 1):
        Pp, Xp = levels[-1]
        prev = encoder_stage(Pp, Xp, sizes[st], s, bins, prev)
        stages.append(prev)
        levels.append((Pp[prev["centres"]], prev["x"]))
    Z = levels[-1][1]
    decoded, kappas = [], []
    for step, st in enumerate(range(s.stages, 0, -1)):
        Pd, Xd = levels[st - 1]
        Ps = levels[st][0]
        kappa = kappa_for(step, len(Pd), len(Ps), s)
        kappas.append(kappa)
        Z = decoder_step(Pd, Xd, Ps, Z, stages[st - 1], kappa, s)
        decoded.append(Z)
    Z = Z.copy()
    keep = np.zeros(C, bool)
    keep[list(s.ground_classes)] = True
    Z[np.ix_(inliers, ~keep)] = 0.0
    return {"labels": Z.argmax(1), "z0": Z, "vote": vote, "inliers": inliers, "sizes": sizes,
            "kappas": kappas, "stages": stages, "levels": levels, "decoded": decoded}
