"""Furthest point sampling exactly as the official CUDA op (``pointnet2_ops.furthest_point_sample``,
called by ``FPS_kNN`` in the official ``afi/pointwidth_features.py``).

Semantics reproduced (the op's CUDA kernel):

* float32 arithmetic: the squared distance is ``(dx*dx + dy*dy) + dz*dz`` with
  ``dx = x_k - x_last`` (no fused multiply-add); the running minimum starts at 1e10.
* start at index 0 (even if that point is near the origin);
* points with ``x*x + y*y + z*z <= 1e-3`` (float32 sum, compared in double) are never picked
  afterwards and never updated;
* ties: the kernel scans point k in thread ``k mod T`` (T = the largest power of two <= N, at most
  512) and reduces threads with the lower thread winning ties, so among equal maxima the point with
  the smallest (k mod T, k) is picked;
* if no eligible point is left, index 0 is repeated (every thread reports index 0).

All implementations give bit-identical indices (tested):

* CPU: a blocked loop. Points are sorted along a Morton curve and cut into blocks of ``_BLOCK``
  points with a bounding box and a running block maximum; a new centre only updates the blocks
  whose box is closer than their maximum (with a safety margin far above float32 rounding), so an
  iteration costs O(active blocks) instead of O(N). It runs in the compiled kernel of
  ``afov_ray.afi.native`` when available (which also returns each point's owner centre for the
  decoder's kNN), else in numpy. Neither uses a thread pool, so the 1365 sequential iterations
  never wait for a second core (the old torch loop took 15-27 s instead of 0.5 s with 2 threads
  on a loaded 2-core machine).
* any device (and small CPU levels without the kernel): the plain dense loop, in torch (no host
  synchronisation per iteration) or numpy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from afov_ray.afi import native

_BLOCK = 256                 # points per block of the blocked CPU loop
_BLOCKED_MIN_POINTS = 8192   # the blocked loop is used from this many points on (CPU)
_MARGIN = 1.0 + 4e-6         # pruning safety factor (float32 distance error is < 1e-6 relative)
_INIT = np.float32(1e10)


def cuda_threads(n: int) -> int:
    """Threads per block of the official kernel for n points (``opt_n_threads``: 2^floor(log2 n),
    at most 512, at least 1)."""
    if n < 1:
        return 1
    pow_2 = int(math.log(float(n)) / math.log(2.0))
    return max(min(1 << pow_2, 512), 1)


def _pick_tie(cand: np.ndarray, threads: int) -> int:
    """Among candidate indices with equal (maximal) distance, the kernel's winner."""
    if cand.size == 1:
        return int(cand[0])
    order = np.lexsort((cand, cand % threads))
    return int(cand[order[0]])


def _eligible(x: np.ndarray, y: np.ndarray, z: np.ndarray, eps2: float) -> np.ndarray:
    mag = (x * x + y * y) + z * z                       # float32, as the kernel
    return mag.astype(np.float64) > eps2


def fps_dense_numpy(xyz: np.ndarray, m: int, eps2: float = 1e-3) -> np.ndarray:
    """Reference-speed dense loop (numpy float32): (N, 3) -> (m,) int64 indices."""
    p = np.asarray(xyz, dtype=np.float32)
    n = p.shape[0]
    out = np.zeros(m, dtype=np.int64)
    if m <= 1 or n == 0:
        return out
    threads = cuda_threads(n)
    x, y, z = (np.ascontiguousarray(p[:, i]) for i in range(3))
    temp = np.where(_eligible(x, y, z, eps2), _INIT, np.float32(-1.0)).astype(np.float32)
    d = np.empty(n, np.float32)
    t = np.empty(n, np.float32)
    old = 0
    for j in range(1, m):
        np.subtract(x, x[old], out=d)
        np.multiply(d, d, out=d)
        np.subtract(y, y[old], out=t)
        np.multiply(t, t, out=t)
        np.add(d, t, out=d)
        np.subtract(z, z[old], out=t)
        np.multiply(t, t, out=t)
        np.add(d, t, out=d)
        np.minimum(temp, d, out=temp)                 # ineligible points stay at -1
        best = int(np.argmax(temp))
        v = temp[best]
        if v < 0:
            old = 0
        else:
            cand = np.flatnonzero(temp == v)
            old = _pick_tie(cand, threads)
        out[j] = old
    return out


@lru_cache(maxsize=1)
def _spread_lut() -> np.ndarray:
    """10-bit integers with their bits spread to every third position (Morton interleaving)."""
    v = np.arange(1024, dtype=np.uint32)
    out = np.zeros(1024, dtype=np.uint32)
    for b in range(10):
        out |= ((v >> b) & 1) << (3 * b)
    out.flags.writeable = False
    return out


def _morton_order(p: np.ndarray) -> np.ndarray:
    """A locality-preserving order of the points (10-bit Morton code per axis). Any order gives
    the same FPS result; this one only makes the blocks compact."""
    pt = np.ascontiguousarray(p.T, dtype=np.float32)                 # (3, N): fast row reductions
    lo = pt.min(1)
    span = float((pt.max(1) - lo).max())
    scale = np.float32(1023.0 / span) if span > 0 else np.float32(0.0)
    g = ((pt - lo[:, None]) * scale).astype(np.int32)
    np.clip(g, 0, 1023, out=g)
    spread = _spread_lut()
    code = spread[g[0]] | (spread[g[1]] << 1) | (spread[g[2]] << 2)
    return np.argsort(code, kind="stable")


class _Blocks:
    """Points sorted along a Morton curve and cut into blocks of ``block`` slots (the last block
    padded), with per-block bounding boxes and running maxima of the FPS distances."""

    def __init__(self, p: np.ndarray, block: int, eps2: float):
        n = p.shape[0]
        order = _morton_order(p)
        nb = -(-n // block)
        pad = nb * block - n
        self.slot = np.concatenate([order, np.full(pad, order[-1], dtype=order.dtype)]).astype(np.int64)
        q = p[self.slot]
        self.X, self.Y, self.Z = (np.ascontiguousarray(q[:, i].reshape(nb, block)) for i in range(3))
        self.T = np.where(_eligible(self.X, self.Y, self.Z, eps2), _INIT, np.float32(-1.0)).astype(np.float32)
        if pad:
            self.T.reshape(-1)[n:] = np.float32(-3.0)       # padding: below every real value
        self.lo = np.stack([self.X.min(1), self.Y.min(1), self.Z.min(1)]).astype(np.float64)   # (3, nb)
        self.hi = np.stack([self.X.max(1), self.Y.max(1), self.Z.max(1)]).astype(np.float64)
        self.bmax = self.T.max(1)                              # exact block maxima (float32)
        self.slot0 = int(np.flatnonzero(order == 0)[0])        # where point 0 sits


def fps_blocked_numpy(xyz: np.ndarray, m: int, eps2: float = 1e-3, block: int = _BLOCK) -> np.ndarray:
    """Blocked loop with bounding-box pruning (numpy float32); same indices as the dense loop."""
    p = np.asarray(xyz, dtype=np.float32)
    n = p.shape[0]
    out = np.zeros(m, dtype=np.int64)
    if m <= 1 or n == 0:
        return out
    threads = cuda_threads(n)
    bl = _Blocks(p, block, eps2)
    X, Y, Z, T, lo, hi, bmax, slot_to_point = bl.X, bl.Y, bl.Z, bl.T, bl.lo, bl.hi, bl.bmax, bl.slot
    nb = X.shape[0]
    thr = bmax.astype(np.float64) * _MARGIN            # pruning thresholds
    gap_a = np.empty_like(lo)
    gap_b = np.empty_like(lo)
    lb = np.empty(nb)
    c3 = np.empty((3, 1))
    p64 = p.astype(np.float64)
    old = 0
    for j in range(1, m):
        # lower bound of the squared distance from the new centre to every block's box
        c3[:, 0] = p64[old]
        np.subtract(lo, c3, out=gap_a)
        np.subtract(c3, hi, out=gap_b)
        np.maximum(gap_a, gap_b, out=gap_a)
        np.maximum(gap_a, 0.0, out=gap_a)
        np.multiply(gap_a, gap_a, out=gap_a)
        np.add(gap_a[0], gap_a[1], out=lb)
        np.add(lb, gap_a[2], out=lb)
        act = np.flatnonzero(lb <= thr)
        cx, cy, cz = p[old]
        d = X[act]
        d -= cx
        d *= d
        t = Y[act]
        t -= cy
        t *= t
        d += t
        t = Z[act]
        t -= cz
        t *= t
        d += t
        np.minimum(d, T[act], out=d)
        T[act] = d
        bm = d.max(1)
        bmax[act] = bm
        thr[act] = bm.astype(np.float64) * _MARGIN
        bb = int(np.argmax(bmax))
        v = bmax[bb]
        if v < 0:
            old = 0
        elif np.count_nonzero(bmax == v) == 1 and np.count_nonzero(T[bb] == v) == 1:
            old = int(slot_to_point[bb * block + int(np.argmax(T[bb]))])
        else:
            blocks = np.flatnonzero(bmax == v)
            r, c = np.nonzero(T[blocks] == v)
            old = _pick_tie(slot_to_point[blocks[r] * block + c], threads)
        out[j] = old
    return out


def fps_blocked_native(xyz: np.ndarray, m: int, eps2: float = 1e-3, block: int = _BLOCK
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """The blocked loop in the compiled kernel (``afov_ray.afi.native``): (indices (m,), owner
    (N,)), or None when the kernel is unavailable. Same indices as ``fps_blocked_numpy``; owner[k]
    is the rank (0..m-1) of the centre that last lowered point k's distance, a near centre (the
    nearest up to float32 rounding; 0 for never-picked near-origin points)."""
    lib = native.load()
    if lib is None:
        return None
    p = np.asarray(xyz, dtype=np.float32)
    n = p.shape[0]
    if m <= 1 or n == 0:
        return np.zeros(m, dtype=np.int64), np.zeros(n, dtype=np.int64)
    bl = _Blocks(p, block, eps2)
    idx, own_slot = native.fps(lib, bl.X, bl.Y, bl.Z, bl.T, bl.slot, np.ascontiguousarray(bl.lo),
                                   np.ascontiguousarray(bl.hi), bl.bmax, m, bl.slot0, cuda_threads(n), _MARGIN)
    owner = np.empty(n, dtype=np.int64)
    owner[bl.slot[:n]] = own_slot[:n]
    return idx, owner


def fps_dense_torch(xyz: torch.Tensor, m: int, eps2: float = 1e-3) -> torch.Tensor:
    """Dense loop in torch on xyz's device (float32, no host sync per iteration): (N, 3) -> (m,)."""
    dev = xyz.device
    p = xyz.to(torch.float32)
    n = p.shape[0]
    out = torch.zeros(m, dtype=torch.long, device=dev)
    if m <= 1 or n == 0:
        return out
    threads = cuda_threads(n)
    x, y, z = (p[:, i].contiguous() for i in range(3))
    mag = (x * x + y * y) + z * z
    eligible = mag.double() > eps2
    temp = torch.where(eligible, torch.full_like(x, float(_INIT)), torch.full_like(x, -1.0))
    ar = torch.arange(n, device=dev)
    key = (ar % threads) * n + ar                      # unique; smallest key wins a tie
    big = torch.full_like(key, n * threads + n)
    zero = torch.zeros((), dtype=torch.long, device=dev)
    old = zero.clone()
    for j in range(1, m):
        dx = x - x[old]
        d = dx * dx
        dy = y - y[old]
        d = d + dy * dy
        dz = z - z[old]
        d = d + dz * dz
        temp = torch.minimum(temp, d)
        v = temp.max()
        sel = torch.argmin(torch.where(temp == v, key, big))
        old = torch.where(v < 0, zero, sel)
        out[j] = old
    return out


def auto_method(device_type: str, n: int) -> str:
    """The FPS implementation "auto" picks for a device type and point count."""
    if device_type != "cpu":
        return "dense_torch"
    if native.load() is not None:
        return "native"
    return "blocked" if n >= _BLOCKED_MIN_POINTS else "dense_numpy"


def furthest_point_sample(xyz: torch.Tensor, m: int, eps2: float = 1e-3, method: str = "auto",
                          with_owner: bool = False):
    """FPS indices (m,) long on xyz's device for one point set (N, 3), official semantics (module
    doc). ``method``: "auto" (CPU: the compiled blocked kernel when available, else the numpy
    blocked loop from 8192 points and the dense numpy loop below; other devices: the dense torch
    loop), or force "native", "blocked", "dense_numpy", "dense_torch". With ``with_owner``, returns
    (indices, owner) where owner (N,) long is each point's near centre from the compiled kernel
    (see ``fps_blocked_native``), or None from the other paths."""
    n = xyz.shape[0]
    if method == "auto":
        method = auto_method(xyz.device.type, n)
    owner = None
    if method == "dense_torch":
        idx_t = fps_dense_torch(xyz, m, eps2)
        return (idx_t, None) if with_owner else idx_t
    p = xyz.detach().to("cpu", torch.float32).numpy()
    if method == "native":
        res = fps_blocked_native(p, m, eps2)
        if res is None:
            raise RuntimeError(f"furthest_point_sample: compiled kernel unavailable ({native.status()})")
        idx, own = res
        owner = torch.from_numpy(own).to(xyz.device)
    elif method == "blocked":
        idx = fps_blocked_numpy(p, m, eps2)
    elif method == "dense_numpy":
        idx = fps_dense_numpy(p, m, eps2)
    else:
        raise ValueError(f"furthest_point_sample: unknown method {method!r}")
    idx_t = torch.from_numpy(idx).to(xyz.device)
    return (idx_t, owner) if with_owner else idx_t
