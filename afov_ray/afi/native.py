"""Optional compiled kernels: the blocked FPS loop (``afov_ray.afi.fps``), the owner-based exact
kNN of the decoder (``afov_ray.afi.neighbors``) and the decoder's line masses
(``afov_ray.afi.network.line_mass``).

The FPS is AFI's only long sequential loop (1365 dependent iterations at stage 1). The numpy
blocked loop costs about 35 small numpy calls per iteration; the kernel runs the same algorithm
(same blocks, same bounding-box pruning, same float32 arithmetic, same tie rule) in C, about 6x
faster, and also records which centre last lowered each point's distance (a near centre, the
"owner"). The decoder's kNN (the 6 nearest centres of every point) then only examines the owner
and its nearest centres, with a triangle-inequality certificate; rows without a certificate go
to the tree (same results, tested). The line-mass kernel evaluates the same cosines in the same
order as the numpy blocks, without materialising them.

The kernels are plain C99 without any dependency, compiled on first use with the system C compiler
(``$CC``, ``cc``, ``gcc`` or ``clang``) into a per-user cache directory (``$AFOV_CACHE_DIR``, else
``~/.cache/afov_ray``) and loaded with ctypes. If no compiler is available or anything fails,
``load()`` returns None and the numpy / scipy paths are used: results are identical either way
(tested), only the speed differs. ``AFOV_AFI_NATIVE=0`` disables the kernels.

Float semantics: compiled with ``-ffp-contract=off`` (no fused multiply-add) and without
``-ffast-math``, so every FPS distance is the IEEE float32 ``(dx*dx + dy*dy) + dz*dz`` of the numpy
loop and every kNN distance the float64 one of ``afov_ray.afi.neighbors``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from afov_ray.storage.atomic import atomic_write_bytes

_SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* Blocked furthest point sampling, see afov_ray/afi/fps.py (fps_blocked_numpy) for the algorithm.
   X, Y, Z, T: nb * B floats in slot order (points sorted into blocks, padding at the end);
   T holds the running minimum (1e10 eligible, -1 never pickable, -3 padding).
   lo, hi: 3 * nb doubles (block boxes, axis-major); bmax: nb floats (block maxima of T).
   slot: nb * B point indices. Writes m point indices to out, starting with point 0, and for every
   slot the rank (0..m-1) of the centre its running minimum came from (own; a candidate for the
   nearest centre, used by afi_knn_owner). */
int afi_fps_blocked(const float *X, const float *Y, const float *Z, float *T, const int64_t *slot,
                    const double *lo, const double *hi, float *bmax, int64_t nb, int64_t B,
                    int64_t m, int64_t slot0, int64_t threads, double margin, int64_t *out,
                    int64_t *own)
{
    int64_t old = slot0;
    out[0] = slot[slot0];
    for (int64_t j = 1; j <= m; ++j) {        /* j == m: only apply the last centre (owners) */
        const float cx = X[old], cy = Y[old], cz = Z[old];
        const double dcx = cx, dcy = cy, dcz = cz;
        float best = -4.0f;
        for (int64_t b = 0; b < nb; ++b) {
            double gx = lo[b] - dcx, gy = lo[nb + b] - dcy, gz = lo[2 * nb + b] - dcz;
            double hx = dcx - hi[b], hy = dcy - hi[nb + b], hz = dcz - hi[2 * nb + b];
            if (hx > gx) gx = hx;
            if (hy > gy) gy = hy;
            if (hz > gz) gz = hz;
            if (gx < 0.0) gx = 0.0;
            if (gy < 0.0) gy = 0.0;
            if (gz < 0.0) gz = 0.0;
            double lb = gx * gx;
            lb = lb + gy * gy;
            lb = lb + gz * gz;
            if (lb <= (double)bmax[b] * margin) {
                const int64_t s0 = b * B;
                float mx = -4.0f;
                for (int64_t i = s0; i < s0 + B; ++i) {
                    float dx = X[i] - cx;
                    float dy = Y[i] - cy;
                    float dz = Z[i] - cz;
                    float d = dx * dx;
                    d = d + dy * dy;
                    d = d + dz * dz;
                    float t = T[i];
                    if (d < t) {
                        t = d;
                        own[i] = j - 1;
                    }
                    T[i] = t;
                    if (t > mx) mx = t;
                }
                bmax[b] = mx;
            }
            if (bmax[b] > best) best = bmax[b];
        }
        if (j == m) break;
        if (best < 0.0f) {                 /* nothing pickable: the kernel reports point 0 */
            old = slot0;
        } else {                           /* smallest (point mod threads, point) among the maxima */
            int64_t win = -1, wkey_t = 0, wkey_p = 0;
            for (int64_t b = 0; b < nb; ++b) {
                if (bmax[b] != best) continue;
                for (int64_t i = b * B; i < (b + 1) * B; ++i) {
                    if (T[i] != best) continue;
                    int64_t pt = slot[i], kt = pt % threads;
                    if (win < 0 || kt < wkey_t || (kt == wkey_t && pt < wkey_p)) {
                        win = i; wkey_t = kt; wkey_p = pt;
                    }
                }
            }
            old = win;
        }
        out[j] = slot[old];
    }
    return 0;
}

/* Exact k nearest reference points of each query, from a candidate set with a certificate.
   q: n * 3 and r: g * 3 doubles; owner[i]: a reference point near query i; cand: g * mc indices,
   row c = c itself and its mc - 1 nearest reference points; rm[c]: distance from c to the last of
   them. For query i with owner o, every reference point outside cand[o] is at least
   rm[o] - |q_i - r_o| away (triangle inequality), so if the k-th nearest candidate is closer than
   that (with a relative margin), the k nearest candidates, ordered by (squared distance, index),
   are the exact answer: ok[i] = 1. Otherwise ok[i] = 0 and the caller recomputes the row. */
int afi_knn_owner(const double *q, const double *r, const int64_t *owner, const int64_t *cand,
                  const double *rm, int64_t n, int64_t mc, int64_t k, double rel, int64_t *out,
                  uint8_t *ok)
{
    double bd[64];
    int64_t bi[64];
    if (k > 64 || k > mc) return -1;
    for (int64_t i = 0; i < n; ++i) {
        const double qx = q[3 * i], qy = q[3 * i + 1], qz = q[3 * i + 2];
        const int64_t o = owner[i];
        const int64_t *row = cand + o * mc;
        int64_t cnt = 0;
        double own_d2 = 0.0;
        for (int64_t t = 0; t < mc; ++t) {
            const int64_t c = row[t];
            double dx = r[3 * c] - qx, dy = r[3 * c + 1] - qy, dz = r[3 * c + 2] - qz;
            double d = dx * dx;
            d = d + dy * dy;
            d = d + dz * dz;
            if (c == o) own_d2 = d;
            if (cnt == k && (d > bd[k - 1] || (d == bd[k - 1] && c > bi[k - 1]))) continue;
            int64_t pos = cnt < k ? cnt : k - 1;
            while (pos > 0 && (bd[pos - 1] > d || (bd[pos - 1] == d && bi[pos - 1] > c))) {
                bd[pos] = bd[pos - 1];
                bi[pos] = bi[pos - 1];
                --pos;
            }
            bd[pos] = d;
            bi[pos] = c;
            if (cnt < k) ++cnt;
        }
        for (int64_t t = 0; t < k; ++t) out[i * k + t] = bi[t];
        double dk = sqrt(bd[k - 1]), bound = rm[o] - sqrt(own_d2);
        ok[i] = (uint8_t)(dk * (1.0 + rel) < bound * (1.0 - rel));
    }
    return 0;
}

/* Decoder line masses (afov_ray.afi.network.line_mass): for pair p with sparse point c = idx[p],
   lam[p] = sum over c's first nk[c] bins (its non-empty bins, in bin order) of
   w[c, a] * [ |(mx u_x + my u_y) + mz u_z| > gamma ]; tables are Ns x A, row-major. */
#define AFI_LINE_MASS(NAME, T)                                                                  \
int NAME(const T *u, const int64_t *idx, const int64_t *nk, const T *mx, const T *my,          \
         const T *mz, const T *w, int64_t np, int64_t A, T gamma, T *lam)                     \
{                                                                                               \
    for (int64_t p = 0; p < np; ++p) {                                                          \
        const int64_t c = idx[p], n = nk[c];                                                    \
        const T ux = u[3 * p], uy = u[3 * p + 1], uz = u[3 * p + 2];                            \
        T acc = 0;                                                                              \
        for (int64_t a = 0; a < n; ++a) {                                                       \
            const int64_t e = c * A + a;                                                        \
            T cs = mx[e] * ux;                                                                  \
            cs = cs + my[e] * uy;                                                               \
            cs = cs + mz[e] * uz;                                                               \
            if (cs < 0) cs = -cs;                                                               \
            if (cs > gamma) acc = acc + w[e];                                                   \
        }                                                                                       \
        lam[p] = acc;                                                                           \
    }                                                                                           \
    return 0;                                                                                   \
}
AFI_LINE_MASS(afi_line_mass_f32, float)
AFI_LINE_MASS(afi_line_mass_f64, double)
"""

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cache_dir() -> Path:
    base = os.environ.get("AFOV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "afov_ray")
    return Path(base)


def _build(target: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "afi_fps.c"
        src.write_text(_SOURCE)
        lib = Path(tmp) / target.name
        subprocess.run([cc, "-O2", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
                        "-o", str(lib), str(src), "-lm"], check=True, capture_output=True, timeout=120)
        atomic_write_bytes(str(target), lib.read_bytes())   # concurrent builders never see a partial file


def load():
    """The compiled kernels (a ctypes library with ``afi_fps_blocked`` and ``afi_knn_owner``), or
    None if disabled or unavailable."""
    if os.environ.get("AFOV_AFI_NATIVE", "1") == "0":
        return None
    with _LOCK:
        if "fn" in _STATE:
            return _STATE["fn"]
        fn = None
        try:
            tag = hashlib.sha256((_SOURCE + sys.platform).encode()).hexdigest()[:16]
            target = _cache_dir() / f"afi_fps_{tag}.so"
            if not target.is_file():
                _build(target)
            lib = ctypes.CDLL(str(target))
            ptr, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
            lib.afi_fps_blocked.argtypes = [ptr] * 8 + [i64, i64, i64, i64, i64, f64, ptr, ptr]
            lib.afi_fps_blocked.restype = ctypes.c_int
            lib.afi_knn_owner.argtypes = [ptr] * 5 + [i64, i64, i64, f64, ptr, ptr]
            lib.afi_knn_owner.restype = ctypes.c_int
            for name, scalar in (("afi_line_mass_f32", ctypes.c_float), ("afi_line_mass_f64", f64)):
                getattr(lib, name).argtypes = [ptr] * 7 + [i64, i64, scalar, ptr]
                getattr(lib, name).restype = ctypes.c_int
            fn = lib
        except Exception as exc:  # noqa: BLE001  (no compiler, read-only home, ...: numpy fallback)
            _STATE["error"] = repr(exc)
            fn = None
        _STATE["fn"] = fn
        return fn


def status() -> str:
    """'native' when the kernel is loaded, else why not (for logs and the benchmark)."""
    fn = load()
    if fn is not None:
        return "native"
    if os.environ.get("AFOV_AFI_NATIVE", "1") == "0":
        return "numpy (AFOV_AFI_NATIVE=0)"
    return f"numpy (kernel unavailable: {_STATE.get('error', '?')})"


def fps(lib, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, T: np.ndarray, slot: np.ndarray, lo: np.ndarray,
        hi: np.ndarray, bmax: np.ndarray, m: int, slot0: int, threads: int, margin: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """The blocked FPS (T and bmax are updated in place). Returns (indices (m,), owner rank per
    slot (nb * B,))."""
    nb, B = X.shape
    out = np.zeros(m, dtype=np.int64)
    own = np.zeros(nb * B, dtype=np.int64)
    arrays = [X, Y, Z, T, slot, lo, hi, bmax]
    for a, dt in zip(arrays, [np.float32] * 4 + [np.int64, np.float64, np.float64, np.float32]):
        if a.dtype != dt or not a.flags.c_contiguous:
            raise TypeError("native.fps: bad array layout")
    lib.afi_fps_blocked(*[a.ctypes.data for a in arrays], nb, B, m, slot0, threads, margin,
                        out.ctypes.data, own.ctypes.data)
    return out, own


def knn_owner(lib, q: np.ndarray, r: np.ndarray, owner: np.ndarray, cand: np.ndarray, rm: np.ndarray,
              k: int, rel: float) -> tuple[np.ndarray, np.ndarray]:
    """k nearest reference points per query from the owner's candidate row, with a certificate.
    Returns (indices (n, k), ok (n,) bool); rows with ok False must be recomputed."""
    n = q.shape[0]
    arrays = [np.ascontiguousarray(q, np.float64), np.ascontiguousarray(r, np.float64),
              np.ascontiguousarray(owner, np.int64), np.ascontiguousarray(cand, np.int64),
              np.ascontiguousarray(rm, np.float64)]
    out = np.zeros((n, k), dtype=np.int64)
    ok = np.zeros(n, dtype=np.uint8)
    rc = lib.afi_knn_owner(*[a.ctypes.data for a in arrays], n, cand.shape[1], k, rel,
                           out.ctypes.data, ok.ctypes.data)
    if rc != 0:
        raise ValueError("native.knn_owner: k too large")
    return out, ok.astype(bool)


def line_mass(lib, u: np.ndarray, idx: np.ndarray, n_keep: np.ndarray, mx: np.ndarray, my: np.ndarray,
              mz: np.ndarray, w: np.ndarray, gamma: float) -> np.ndarray:
    """Line mass per (dense point, neighbour) pair; u (P, 3), idx (P,), tables (Ns, A) with each
    row's non-empty bins first (n_keep[c] of them). float32 or float64, as w."""
    dt = w.dtype
    fn = lib.afi_line_mass_f32 if dt == np.float32 else lib.afi_line_mass_f64
    arrays = [np.ascontiguousarray(u, dt), np.ascontiguousarray(idx, np.int64),
              np.ascontiguousarray(n_keep, np.int64)] + [np.ascontiguousarray(t, dt) for t in (mx, my, mz, w)]
    lam = np.zeros(idx.shape[0], dtype=dt)
    fn(*[a.ctypes.data for a in arrays], idx.shape[0], w.shape[1], dt.type(gamma), lam.ctypes.data)
    return lam
