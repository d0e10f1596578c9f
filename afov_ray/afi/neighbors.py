"""Exact k-nearest-neighbour selection for AFI (encoder groups and decoder interpolation).

Official code: ``knn_point`` in ``afi/model_utils.py`` (encoder: float32 squared distances by the
expansion |a|^2 + |b|^2 - 2 a.b, then ``topk(sorted=False)``) and ``DecNP.propagate`` in
``afi/pointwidth_features.py`` (decoder: the same distances, a full ``sort``, the first de_k).

Here the neighbours are the k smallest *exact* squared distances, computed in float64 as
``(dx*dx + dy*dy) + dz*dz`` (the input coordinates are float32 values, so this is exact up to the
last rounding), ordered by (distance, index): ties go to the lower index. This is the set the
official code intends; it differs from the official float32 expansion only where two candidates
are within its rounding error (about 1e-4 m^2 for points 50 m away) of each other at the k-th
place. The neighbour order within the set only changes float summation order downstream.

CPU: a scipy ``cKDTree`` (single-threaded) proposes k + 1 candidates; they are re-ranked with the
exact formula, and rows where the tree's (k+1)-th candidate is not clearly farther than the k-th
(a near-tie at the boundary) are recomputed by brute force. For the decoder's large levels, with
the compiled kernel (``afov_ray.afi.native``), each point only examines its FPS owner and the
owner's 24 nearest centres, and a row is kept only with a triangle-inequality certificate; the
others go to the tree. Other devices: chunked brute force with ``topk`` and the same tie rule. All
paths give the same indices (tested).
"""

from __future__ import annotations

import numpy as np
import torch

from afov_ray.afi import native

_TIE_REL = 1e-9   # candidates closer than this (relative) to the k-th distance count as a tie


def _sq_dist_np(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Exact squared distances, broadcast over q (..., 3) and r (..., 3): (dx*dx + dy*dy) + dz*dz."""
    dx = r[..., 0] - q[..., 0]
    dy = r[..., 1] - q[..., 1]
    dz = r[..., 2] - q[..., 2]
    return (dx * dx + dy * dy) + dz * dz


def _sq_dist_torch(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    dx = r[..., 0] - q[..., 0]
    dy = r[..., 1] - q[..., 1]
    dz = r[..., 2] - q[..., 2]
    return (dx * dx + dy * dy) + dz * dz


def _rank_rows_np(d: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k candidates with the smallest (d, idx), in that order."""
    o1 = np.argsort(idx, axis=1, kind="stable")
    d1 = np.take_along_axis(d, o1, 1)
    o2 = np.argsort(d1, axis=1, kind="stable")
    return np.take_along_axis(np.take_along_axis(idx, o1, 1), o2, 1)[:, :k]


def _brute_rows_np(q: np.ndarray, r: np.ndarray, k: int, chunk: int) -> np.ndarray:
    out = np.empty((q.shape[0], k), dtype=np.int64)
    step = max(1, chunk // max(1, r.shape[0]))
    for a in range(0, q.shape[0], step):
        d = _sq_dist_np(q[a:a + step, None, :], r[None, :, :])
        out[a:a + step] = np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


def knn_numpy(query: np.ndarray, ref: np.ndarray, k: int, chunk_elems: int = 1 << 22) -> np.ndarray:
    """CPU path: (M, 3), (N, 3) float64 -> (M, k) int64, exact (module doc); needs k <= N."""
    from scipy.spatial import cKDTree

    q = np.ascontiguousarray(query, dtype=np.float64)
    r = np.ascontiguousarray(ref, dtype=np.float64)
    m, n = q.shape[0], r.shape[0]
    if m == 0:
        return np.zeros((0, k), dtype=np.int64)
    kk = min(k + 1, n)
    # an unbalanced tree without node compaction builds 2x faster; queries are as fast
    td, ti = cKDTree(r, leafsize=16, balanced_tree=False, compact_nodes=False).query(q, k=kk)
    if kk == 1:
        return ti.astype(np.int64)[:, None]
    ti = ti.astype(np.int64)
    d = _sq_dist_np(q[:, None, :], r[ti])                      # exact, in the tree's order
    # rows whose exact distances are not strictly increasing (ties, or the tree's rounding
    # ordered two candidates differently) are re-ranked by (d, idx)
    bad = np.flatnonzero((d[:, 1:] <= d[:, :-1]).any(1))
    if bad.size:
        ti[bad] = _rank_rows_np(d[bad], ti[bad], kk)
        d[bad] = _sq_dist_np(q[bad, None, :], r[ti[bad]])
    out = ti[:, :k]
    if kk > k:
        # a point the tree did not return is at least as far as its last candidate; if that is
        # not clearly beyond the k-th exact distance, the k-th place may be a tie: brute force
        far = td[:, -1] * td[:, -1]
        redo = np.flatnonzero(far <= d[:, k - 1] * (1.0 + _TIE_REL) + 1e-300)
        if redo.size:
            out[redo] = _brute_rows_np(q[redo], r, k, chunk_elems)
    return np.ascontiguousarray(out)


def knn_torch(query: torch.Tensor, ref: torch.Tensor, k: int, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """Any-device path: brute force in float64 chunks with topk; same result as ``knn_numpy``."""
    q = query.to(torch.float64)
    r = ref.to(torch.float64)
    m, n = q.shape[0], r.shape[0]
    out = torch.empty(m, k, dtype=torch.long, device=q.device)
    kk = min(k + 1, n)
    step = max(1, chunk_elems // max(1, n))
    for a in range(0, m, step):
        d = _sq_dist_torch(q[a:a + step, None, :], r[None, :, :])             # (c, N)
        vals, cand = torch.topk(d, kk, dim=1, largest=False, sorted=True)
        # order the candidates by (distance, index)
        o1 = torch.argsort(cand, dim=1, stable=True)
        v1, c1 = vals.gather(1, o1), cand.gather(1, o1)
        o2 = torch.argsort(v1, dim=1, stable=True)
        sel = c1.gather(1, o2)[:, :k]
        if kk > k:
            vs = v1.gather(1, o2)
            tie = (vs[:, k] == vs[:, k - 1]).nonzero().flatten()
            if tie.numel():
                full = torch.argsort(d[tie], dim=1, stable=True)[:, :k]
                sel[tie] = full
        out[a:a + step] = sel
    return out


_OWNER_CANDIDATES = 25      # the owner and its 24 nearest reference points
_OWNER_MIN_QUERIES = 8192   # below this many queries the plain tree is as fast


def knn_owner_numpy(query: np.ndarray, ref: np.ndarray, k: int, owner: np.ndarray,
                    chunk_elems: int = 1 << 22, min_queries: int = _OWNER_MIN_QUERIES) -> np.ndarray | None:
    """Exact kNN from a near reference point per query (``owner``, e.g. from the FPS kernel): only
    the owner and its 24 nearest reference points are examined, and a row is accepted only when
    the triangle inequality proves that no other reference point can be nearer than its k-th
    (compiled kernel ``afi_knn_owner``); the other rows go to ``knn_numpy``. Same result as
    ``knn_numpy``. None when the compiled kernel is unavailable, or for fewer than ``min_queries``
    queries (the tree is as fast there)."""

    lib = native.load()
    g = ref.shape[0]
    mc = _OWNER_CANDIDATES
    if lib is None or g <= mc or k > 16 or query.shape[0] < min_queries:
        return None
    q = np.ascontiguousarray(query, dtype=np.float64)
    r = np.ascontiguousarray(ref, dtype=np.float64)
    # candidate row of reference point c: c itself, then its mc - 1 nearest other points;
    # rm[c] = distance to the last of them, so every point outside the row is at least that far
    rows = knn_numpy(r, r, mc, chunk_elems)
    key = np.where(rows == np.arange(g)[:, None], mc, np.arange(mc)[None, :])    # self last
    cand = np.empty((g, mc), dtype=np.int64)
    cand[:, 0] = np.arange(g)
    cand[:, 1:] = np.take_along_axis(rows, np.argsort(key, axis=1, kind="stable")[:, :mc - 1], 1)
    rm = np.sqrt(_sq_dist_np(r, r[cand[:, -1]]))
    out, ok = native.knn_owner(lib, q, r, np.asarray(owner, np.int64), cand, rm, k, 1e-9)
    bad = np.flatnonzero(~ok)
    if bad.size:
        out[bad] = knn_numpy(q[bad], r, k, chunk_elems)
    return out


def auto_method(device_type: str, has_owner: bool) -> str:
    """The kNN implementation "auto" picks: brute force off the CPU, else the owner path when
    owners are given (it falls back to the tree by itself), else the tree."""
    if device_type != "cpu":
        return "brute"
    return "owner" if has_owner else "tree"


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, chunk_elems: int = 1 << 22,
        method: str = "auto", owner: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (M, k) long of the k nearest ``ref`` points of each ``query`` point (module doc),
    on the device of ``query``. ``method``: "auto" (CPU: the owner path when ``owner`` (M,) is given
    and the compiled kernel is available, else the tree; other devices: brute force), "owner",
    "tree", "brute"."""
    n = ref.shape[0]
    if k > n:
        raise ValueError(f"knn: k = {k} > {n} reference points")
    if method == "auto":
        method = auto_method(query.device.type, owner is not None)
    if method == "brute":
        return knn_torch(query, ref, k, chunk_elems)
    q = query.detach().cpu().double().numpy()
    r = ref.detach().cpu().double().numpy()
    idx = None
    if method == "owner":
        if owner is None:
            raise ValueError("knn: method 'owner' needs owner")
        idx = knn_owner_numpy(q, r, k, owner.detach().cpu().numpy(), chunk_elems)
    elif method != "tree":
        raise ValueError(f"knn: unknown method {method!r}")
    if idx is None:
        idx = knn_numpy(q, r, k, chunk_elems)
    return torch.from_numpy(idx).to(query.device)
