"""Vectorised numpy ray casting against a scene snapshot (ground plane, yawed boxes, cylinders, ellipsoids).

Rays are processed in chunks. For each chunk, one matrix product tests every ray against the bounding
sphere of every primitive; exact intersections are then computed only for the (ray, primitive)
candidate pairs, all pairs of one primitive type at once, and the nearest hit per ray wins (the ground
plane z = 0 competes like any primitive, its class taken from the ground regions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afov_ray.datasets.synth.classes import KIND_TO_NUSCENES, Kind
from afov_ray.datasets.synth.scene import Scene, Snapshot

EPS = 1e-6


@dataclass
class Hits:
    """Result of a cast in the scene-local frame. dist = inf and kind = NONE where nothing was hit."""

    dist: np.ndarray     # (M,) float64 along the unit direction
    kind: np.ndarray     # (M,) uint8 classes.Kind
    inst: np.ndarray     # (M,) int32 instance id (0 = stuff / none)
    normal: np.ndarray   # (M, 3) float64 unit surface normal (local frame), zeros for misses


def _bounding_spheres(s: Snapshot):
    bc = s.boxes[:, :3]
    br = np.linalg.norm(s.boxes[:, 3:6], axis=1)
    cc = np.stack([s.cyls[:, 0], s.cyls[:, 1], (s.cyls[:, 2] + s.cyls[:, 3]) / 2], axis=1)
    cr = np.hypot(s.cyls[:, 4], (s.cyls[:, 3] - s.cyls[:, 2]) / 2)
    ec = s.ells[:, :3]
    er = s.ells[:, 3:6].max(axis=1) if len(s.ells) else np.zeros(0)
    return np.concatenate([bc, cc, ec]).reshape(-1, 3), np.concatenate([br, cr, er]) * 1.0001 + 1e-3


def _hit_boxes(o, d, box):
    """Exact ray / yawed-box (slab) intersection for pairs. Returns t (inf = no hit) and normals."""
    c, s = np.cos(box[:, 6]), np.sin(box[:, 6])
    rx, ry, rz = o[:, 0] - box[:, 0], o[:, 1] - box[:, 1], o[:, 2] - box[:, 2]
    ol = (c * rx + s * ry, -s * rx + c * ry, rz)
    dl = (c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2])
    tmins, tmaxs, sgn = [], [], []
    for k in range(3):
        dk = np.where(np.abs(dl[k]) < 1e-12, 1e-12, dl[k])
        inv = 1.0 / dk
        h = box[:, 3 + k]
        t1, t2 = (-h - ol[k]) * inv, (h - ol[k]) * inv
        tmins.append(np.minimum(t1, t2))
        tmaxs.append(np.maximum(t1, t2))
        sgn.append(-np.sign(dk))
    tnear = np.maximum(np.maximum(tmins[0], tmins[1]), tmins[2])
    tfar = np.minimum(np.minimum(tmaxs[0], tmaxs[1]), tmaxs[2])
    ok = (tnear <= tfar) & (tnear > EPS)
    t = np.where(ok, tnear, np.inf)
    ax = np.where(tmins[0] == tnear, 0, np.where(tmins[1] == tnear, 1, 2))
    nx = np.where(ax == 0, sgn[0], 0.0)
    ny = np.where(ax == 1, sgn[1], 0.0)
    nz = np.where(ax == 2, sgn[2], 0.0)
    n = np.stack([c * nx - s * ny, s * nx + c * ny, nz], axis=1)
    return t, n


def _hit_cyls(o, d, cyl):
    """Ray / vertical capped cylinder (side + top cap; the bottom stands on the ground)."""
    rx, ry = o[:, 0] - cyl[:, 0], o[:, 1] - cyl[:, 1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    bq = 2 * (rx * d[:, 0] + ry * d[:, 1])
    cq = rx ** 2 + ry ** 2 - cyl[:, 4] ** 2
    disc = bq ** 2 - 4 * a * cq
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        zs = o[:, 2] + ts * d[:, 2]
        side_ok = (disc >= 0) & (a > 1e-12) & (ts > EPS) & (zs >= cyl[:, 2]) & (zs <= cyl[:, 3])
        ts = np.where(side_ok, ts, np.inf)
        tc = (cyl[:, 3] - o[:, 2]) / d[:, 2]
        px, py = rx + tc * d[:, 0], ry + tc * d[:, 1]
        cap_ok = (d[:, 2] < 0) & (tc > EPS) & (px ** 2 + py ** 2 <= cyl[:, 4] ** 2)
        tc = np.where(cap_ok, tc, np.inf)
    use_cap = tc < ts
    t = np.minimum(ts, tc)
    tt = np.where(np.isfinite(ts), ts, 0.0)
    n = np.stack([rx + tt * d[:, 0], ry + tt * d[:, 1], np.zeros_like(rx)], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n[use_cap] = (0.0, 0.0, 1.0)
    return t, n


def _hit_ells(o, d, ell):
    """Ray / axis-aligned ellipsoid: scale space to the unit sphere (t is unchanged)."""
    r = ell[:, 3:6]
    op, dp = (o - ell[:, :3]) / r, d / r
    a = (dp * dp).sum(1)
    bq = 2 * (op * dp).sum(1)
    cq = (op * op).sum(1) - 1
    disc = bq ** 2 - 4 * a * cq
    t = (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    ok = (disc >= 0) & (t > EPS)
    t = np.where(ok, t, np.inf)
    tt = np.where(ok, t, 0.0)
    n = (op + tt[:, None] * dp) / r
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return t, n


def _ground_kind(s: Snapshot, x, y):
    kind = np.full(x.shape, s.ground_default, dtype=np.int64)
    for (x0, x1, y0, y1), k in zip(s.ground_rects, s.ground_kind):
        kind[(x >= x0) & (x < x1) & (y >= y0) & (y < y1)] = k
    return kind


def _candidates(o, d, C, C2, R, max_range, bundle: int = 1024):
    """(ray, primitive) pairs whose ray passes through the primitive's bounding sphere."""
    if np.all(o == o[0]):
        # common origin (a sweep or a camera): cull far primitives, then per bundle of consecutive
        # rays cull primitives outside the bundle's cone, then one float32 matmul per bundle
        v = C - o[0]
        vn = np.sqrt((v * v).sum(1))
        keep = np.nonzero(vn - R <= max_range)[0]
        v, vn, Rk = v[keep], vn[keep], R[keep]
        inside = vn <= Rk
        q = np.where(inside, -np.inf, np.sqrt(np.maximum(vn ** 2 - Rk ** 2, 0.0)) - 1e-3 * (1 + vn))
        vu = v / np.maximum(vn, 1e-12)[:, None]
        half = np.where(inside, np.pi, np.arcsin(np.clip(Rk / np.maximum(vn, 1e-12), 0, 1)))
        d32 = d.astype(np.float32)
        out_r, out_p = [], []
        for a in range(0, len(d), bundle):
            db = d[a:a + bundle]
            axis = db.sum(0)
            axis /= max(np.linalg.norm(axis), 1e-12)
            alpha = np.arccos(np.clip((db @ axis).min(), -1, 1))
            ang = np.arccos(np.clip(vu @ axis, -1, 1))
            sel = np.nonzero(ang - half <= alpha + 1e-4)[0]
            if len(sel) == 0:
                continue
            proj = d32[a:a + bundle] @ v[sel].T.astype(np.float32)
            ri, pk = np.nonzero(proj >= q[sel].astype(np.float32)[None, :])
            out_r.append(ri + a)
            out_p.append(keep[sel[pk]])
        if not out_r:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_r), np.concatenate(out_p)
    proj = d @ C.T - (o * d).sum(1)[:, None]
    v2 = C2[None, :] - 2 * (o @ C.T) + (o * o).sum(1)[:, None]
    cand = (v2 - proj ** 2 <= R ** 2) & (proj >= -R) & (proj - R <= max_range)
    return np.nonzero(cand)


def cast_local(snap: Snapshot, origins, dirs, max_range: float = np.inf, chunk: int = 16384) -> Hits:
    """Casts rays (local frame; ``dirs`` need not be unit, distances are along the unit direction)."""
    origins = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
    dirs = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    M = len(dirs)
    dist = np.full(M, np.inf)
    kind = np.zeros(M, np.uint8)
    inst = np.zeros(M, np.int32)
    normal = np.zeros((M, 3))
    C, R = _bounding_spheres(snap)
    nb, nc = len(snap.boxes), len(snap.cyls)
    C2 = (C * C).sum(1)
    all_kind = np.concatenate([snap.box_kind, snap.cyl_kind, snap.ell_kind]).astype(np.uint8)
    all_inst = np.concatenate([snap.box_inst, snap.cyl_inst, snap.ell_inst]).astype(np.int32)
    for a in range(0, M, chunk):
        o, d = origins[a:a + chunk], dirs[a:a + chunk]
        m = len(o)
        # ground plane
        with np.errstate(divide="ignore", invalid="ignore"):
            tg = np.where(d[:, 2] < -1e-9, -o[:, 2] / d[:, 2], np.inf)
        tg[(tg <= EPS) | (tg > max_range)] = np.inf
        best_t = tg.copy()
        best_p = np.full(m, -1)
        best_n = np.zeros((m, 3))
        best_n[:, 2] = 1.0
        if len(C):
            ri, pi = _candidates(o, d, C, C2, R, max_range)
            ts = np.full(len(ri), np.inf)
            ns = np.zeros((len(ri), 3))
            for lo, hi, fn, prims in ((0, nb, _hit_boxes, snap.boxes), (nb, nb + nc, _hit_cyls, snap.cyls),
                                      (nb + nc, len(C), _hit_ells, snap.ells)):
                sel = (pi >= lo) & (pi < hi)
                if sel.any():
                    ts[sel], ns[sel] = fn(o[ri[sel]], d[ri[sel]], prims[pi[sel] - lo])
            ok = np.isfinite(ts) & (ts <= max_range)
            ri, pi, ts, ns = ri[ok], pi[ok], ts[ok], ns[ok]
            if len(ri):
                # ri is non-decreasing (bundles in order, row-major nonzero): segment minimum per ray
                order = np.argsort(ri, kind="stable") if np.any(np.diff(ri) < 0) else None
                if order is not None:
                    ri, pi, ts, ns = ri[order], pi[order], ts[order], ns[order]
                starts = np.concatenate([[0], np.nonzero(np.diff(ri))[0] + 1])
                seg_min = np.minimum.reduceat(ts, starts)
                counts = np.diff(np.concatenate([starts, [len(ri)]]))
                is_min = ts == np.repeat(seg_min, counts)
                # keep exactly one minimum per ray: the first occurrence
                cum = np.cumsum(is_min)
                seg_first_cum = np.repeat(cum[starts] - is_min[starts], counts)
                first = is_min & (cum - seg_first_cum == 1)
                ri, pi, ts, ns = ri[first], pi[first], ts[first], ns[first]
            closer = ts < best_t[ri]
            ri, pi, ts, ns = ri[closer], pi[closer], ts[closer], ns[closer]
            best_t[ri], best_p[ri], best_n[ri] = ts, pi, ns
        hit = np.isfinite(best_t)
        k = np.zeros(m, np.uint8)
        ins = np.zeros(m, np.int32)
        onprim = best_p >= 0
        k[onprim] = all_kind[best_p[onprim]]
        ins[onprim] = all_inst[best_p[onprim]]
        g = hit & ~onprim
        if g.any():
            p = o[g] + best_t[g, None] * d[g]
            k[g] = _ground_kind(snap, p[:, 0], p[:, 1])
        best_n[~hit] = 0.0
        dist[a:a + m], kind[a:a + m], inst[a:a + m], normal[a:a + m] = best_t, k, ins, best_n
    return Hits(dist, kind, inst, normal)


def global_to_local_rays(scene: Scene, origins, dirs):
    """Moves rays from the global frame into the scene-local frame."""
    G = scene.global_to_local()
    o = np.asarray(origins, dtype=np.float64).reshape(-1, 3) @ G[:3, :3].T + G[:3, 3]
    d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3) @ G[:3, :3].T
    return o, d


def cast(scene: Scene, t: float, origins, dirs, max_range: float = np.inf, ego_body: bool = True) -> Hits:
    """Casts global-frame rays into the scene at time t (seconds from the scene start)."""
    o, d = global_to_local_rays(scene, origins, dirs)
    return cast_local(scene.state(t, ego_body=ego_body), o, d, max_range)


def raycast(scene: Scene, t: float, origins, dirs, max_range: float = 70.0, ego_body: bool = True):
    """Public API: global-frame rays -> (dist (M,) float64, inf for misses; raw_class (M,) uint8
    nuScenes-lidarseg index 0..31 (0 for misses); instance (M,) int32)."""
    h = cast(scene, t, origins, dirs, max_range, ego_body)
    return h.dist, KIND_TO_NUSCENES[h.kind], h.inst


__all__ = ["Hits", "cast", "cast_local", "raycast", "global_to_local_rays", "Kind"]
