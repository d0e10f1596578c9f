"""Slow, direct transcription of AFI's equations (afov-reference.md sections 1.3-1.6).

numpy float64 with explicit loops over centres, neighbours and bins; written from the spec, not
from the fast code, and used as the oracle for afov_ray.afi on small scenes. Parameters are read
from an AFIConfig (plain attributes only).
"""

from __future__ import annotations

import math

import numpy as np


def fib_dirs(n):
    golden = math.pi * (math.sqrt(5.0) - 1.0)
    out = []
    for i in range(n):
        y = 1.0 - (i / float(n - 1)) * 2.0
        rad = math.sqrt(max(0.0, 1.0 - y * y))
        out.append((math.cos(golden * i) * rad, y, math.sin(golden * i) * rad))
    return np.array(out)


def sizes_of(n, cfg):
    sizes, g = [n], cfg.points
    for _ in range(cfg.stages):
        g = g // cfg.delta
        sizes.append(max(1, min(g, sizes[-1])))
    return sizes


def fps(P, m, eps2=1e-3):
    n = len(P)
    temp = [1e10] * n
    picked = [0]
    last = 0
    for _ in range(1, m):
        best, besti = -1.0, 0
        for kk in range(n):
            if float(P[kk] @ P[kk]) <= eps2:
                continue
            dd = float(((P[kk] - P[last]) ** 2).sum())
            temp[kk] = min(temp[kk], dd)
            if temp[kk] > best:
                best, besti = temp[kk], kk
        last = besti
        picked.append(last)
    return picked


def knn_list(q, P, k, self_index=None):
    d = np.array([float(((P[i] - q) ** 2).sum()) for i in range(len(P))])
    if self_index is not None:
        d[self_index] = -1.0
    return list(np.argsort(d, kind="stable")[:k])


def l1(v):
    return v / (v.sum() + 1e-9)


def encoder_stage(P, X, G, cfg, dirs, prev_bag):
    """Returns centres' indices, new features and the bag {w, mu, ell, mu_hat, h, I}."""
    A = len(dirs)
    C = X.shape[1]
    k = min(cfg.k, len(P))
    cent = fps(P, G, cfg.fps_origin_eps2)
    W = np.zeros((G, A)); MU = np.zeros((G, A, 3)); ELL = np.zeros((G, A)); MUH = np.zeros((G, A, 3))
    H = np.zeros((G, A, C)); INF = np.zeros(G); Xn = np.zeros((G, C)); rhos = []
    for g, c in enumerate(cent):
        nb = knn_list(P[c], P, k, self_index=c)
        assert nb[0] == c
        bins, offs, us, ds = [], [], [], []
        for j in nb:
            o = P[j] - P[c]
            d = math.sqrt(float(o @ o))
            u = o / (d + 1e-8)
            bins.append(int(np.argmax([float(u @ v) for v in dirs])))
            offs.append(o); us.append(u); ds.append(d)
        cnt = np.zeros(A); osum = np.zeros((A, 3)); hs = np.zeros((A, C))
        for t, j in enumerate(nb):
            if t == 0 and not cfg.centre_in_bin1_hist:
                continue
            cnt[bins[t]] += 1
            osum[bins[t]] += offs[t]
            hs[bins[t]] += X[j]
        if cfg.centre_in_bin1_hist:
            cnt[0] -= 1
        for a in range(A):
            MU[g, a] = osum[a] / (cnt[a] + 1e-8)
            ELL[g, a] = math.sqrt(float(MU[g, a] @ MU[g, a]))
            MUH[g, a] = MU[g, a] / (ELL[g, a] + 1e-8)
            H[g, a] = l1(hs[a])
        if prev_bag is None:
            kept = np.array([cnt[a] if cnt[a] > cfg.alpha else 0.0 for a in range(A)])
            W[g] = kept / kept.sum() if kept.sum() > 0 else 0.0
            INF[g] = 1.0
            rhos.append(None)
        else:
            pw, pmh, pl = prev_bag["w"], prev_bag["mu_hat"], prev_bag["ell"]
            rho = np.zeros(len(nb))
            for t, j in enumerate(nb):
                u = us[t]
                Am = sum(pw[c, a] for a in range(A) if abs(float(u @ pmh[c, a])) > cfg.gamma)
                Bm = sum(pw[j, a] for a in range(A) if abs(float(u @ pmh[j, a])) > cfg.gamma)
                Fc = max([pl[c, a] for a in range(A) if float(u @ pmh[c, a]) > cfg.gamma], default=0.0)
                Rc = max([pl[c, a] for a in range(A) if float(u @ pmh[c, a]) < -cfg.gamma], default=0.0)
                Fj = max([pl[j, a] for a in range(A) if float(u @ pmh[j, a]) > cfg.gamma], default=0.0)
                Rj = max([pl[j, a] for a in range(A) if float(u @ pmh[j, a]) < -cfg.gamma], default=0.0)
                T = 0.0
                if Fc + Rc > 0 and Fj + Rj > 0:
                    T = (Fc + Rc + Fj + Rj) / (ds[t] + Rc + Fj + 1e-8)
                rho[t] = Am * Bm * T
            INF[g] = rho.sum()
            for t in range(len(nb)):
                W[g, bins[t]] += rho[t] / (INF[g] + 1e-7)
            rhos.append(rho)
        # pooling needs I after mean normalisation: done below
        Xn[g] = 0.0
    if prev_bag is not None:
        m = INF.mean()
        INF = INF / m if m > 0 else INF * 0.0
    for g, c in enumerate(cent):
        nb = knn_list(P[c], P, k, self_index=c)
        om = l1(np.array([W[g, a] / (ELL[g, a] + 1e-8) for a in range(A)]))
        pooled = sum(om[a] * H[g, a] for a in range(A))
        mx = np.max(np.stack([X[j] for j in nb]), axis=0)
        Xn[g] = l1(INF[g] * pooled + cfg.pool_self_weight * X[c] + cfg.pool_max_weight * mx)
    bag = {"w": W, "mu": MU, "ell": ELL, "mu_hat": MUH, "h": H, "I": INF, "rho": rhos}
    return cent, Xn, bag


def decoder_step(Pd, Xd, Ps, Zs, bag, kappa, cfg):
    K = min(cfg.de_k, len(Ps))
    A = bag["w"].shape[1]
    lam_all = np.zeros(len(Pd)); interp = np.zeros_like(Xd)
    for q in range(len(Pd)):
        nb = knn_list(Pd[q], Ps, K)
        lam = np.zeros(K)
        for i, c in enumerate(nb):
            o = Ps[c] - Pd[q]
            u = o / (math.sqrt(float(o @ o)) + 1e-8)
            lam[i] = sum(bag["w"][c, a] for a in range(A) if abs(float(bag["mu_hat"][c, a] @ u)) > cfg.gamma)
        Lam = lam.sum() + 1e-8
        pi = lam / Lam + 1e-6
        pi = pi / pi.sum()
        lam_all[q] = Lam
        interp[q] = sum(pi[i] * Zs[c] for i, c in enumerate(nb))
    m = lam_all.mean()
    return np.stack([l1(lam_all[q] * interp[q] + kappa * m * Xd[q]) for q in range(len(Pd))])


def reference_afi(xyz, labels, cfg, vote_mask=None, ground_inliers=None):
    """Full AFI on one scan. Returns dict: labels, z0, levels [(positions, features, bag)]."""
    P = np.asarray(xyz, np.float64)
    y = np.asarray(labels, np.int64)
    n = len(P)
    C = cfg.num_classes
    m = np.ones(n) if vote_mask is None else np.asarray(vote_mask, np.float64)
    if not cfg.class0_mass:
        m = m * (y != 0)
    X = np.zeros((n, C))
    X[np.arange(n), y] = 1.0
    X = X * m[:, None]
    dirs = fib_dirs(cfg.beta2)
    sizes = sizes_of(n, cfg)
    levels = [(P, X, None)]
    bag = None
    for s in range(1, cfg.stages + 1):
        Pp, Xp, _ = levels[-1]
        cent, Xn, bag = encoder_stage(Pp, Xp, sizes[s], cfg, dirs, bag)
        levels.append((Pp[cent], Xn, bag))
    Z = levels[-1][1]
    for s in range(cfg.stages, 0, -1):
        Pd, Xd, _ = levels[s - 1]
        Ps, _, sbag = levels[s]
        if cfg.kappa_mode == "list":
            kappa = cfg.decoder_kappas[cfg.stages - s]
        else:
            kappa = cfg.kappa_dense if len(Pd) == cfg.kappa_ratio * len(Ps) else cfg.kappa_sparse
        Z = decoder_step(Pd, Xd, Ps, Z, sbag, kappa, cfg)
    if ground_inliers is not None:
        keep = np.zeros(C, bool)
        keep[list(cfg.ground_classes)] = True
        Z = Z.copy()
        Z[np.ix_(np.asarray(ground_inliers, bool), ~keep)] = 0.0
    return {"labels": Z.argmax(1), "z0": Z, "levels": levels}
