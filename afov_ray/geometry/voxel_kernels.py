"""Compiled (numba) kernels of the voxelisation: first-occurrence unique of integer grid cells by hashing,
and the per-voxel majority vote of point labels. Both are single-threaded loops over the points, so they are immune
to thread oversubscription, and they keep the exact conventions of ``afov_ray.geometry.voxelize``
(MinkowskiEngine's insertion order; majority ties to the smallest label).

Compiled on first call (about 2 s) and cached on disk (numba ``cache=True``: ``__pycache__`` beside this
file, ``NUMBA_CACHE_DIR`` when set), so the first call of a later process takes about 0.6 s.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier (2**64 / golden ratio)
_INT64_MAX = 2**63 - 1


@numba.njit(cache=True, nogil=True)
def _ranges(cells):
    n, d = cells.shape
    lo = np.empty(d, dtype=np.int64)
    hi = np.empty(d, dtype=np.int64)
    for j in range(d):
        lo[j] = cells[0, j]
        hi[j] = cells[0, j]
    for i in range(1, n):
        for j in range(d):
            v = cells[i, j]
            if v < lo[j]:
                lo[j] = v
            elif v > hi[j]:
                hi[j] = v
    return lo, hi


@numba.njit(cache=True, nogil=True)
def _unique_first(cells, lo, spans):
    n, d = cells.shape
    bits = 4  # open addressing, linear probing, load factor below 2/3 (at most n distinct cells)
    while (1 << bits) < n + n // 2:
        bits += 1
    cap = 1 << bits
    mask = cap - 1
    shift = np.uint64(64 - bits)
    slot_key = np.empty(cap, dtype=np.int64)
    slot_vox = np.full(cap, -1, dtype=np.int32)  # voxel ids: the wrapper refuses 2**31 points
    first = np.empty(n, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    n_vox = 0
    for i in range(n):
        k = np.int64(0)  # mixed radix, axis 0 most significant: equal keys <=> equal cells
        for j in range(d):
            k = k * spans[j] + (np.int64(cells[i, j]) - lo[j])
        h = np.int64((np.uint64(k) * _GOLDEN) >> shift)
        while True:
            v = slot_vox[h]
            if v < 0:  # empty slot: a new voxel, numbered in order of first occurrence
                slot_vox[h] = n_vox
                slot_key[h] = k
                first[n_vox] = i
                inverse[i] = n_vox
                n_vox += 1
                break
            if slot_key[h] == k:
                inverse[i] = v
                break
            h = (h + 1) & mask
    return first[:n_vox].copy(), inverse


@numba.njit(cache=True, nogil=True)
def _majority(labels, inverse, n_vox, n_lab, ignore_label):
    count = np.zeros(n_vox * n_lab, dtype=np.int32)  # (voxel, label) counts, as the numpy vote's table
    best = np.full(n_vox, ignore_label, dtype=np.int64)
    best_count = np.zeros(n_vox, dtype=np.int32)
    for i in range(labels.shape[0]):
        lab = labels[i]
        if lab != ignore_label:
            v = inverse[i]
            c = count[v * n_lab + lab] + 1
            count[v * n_lab + lab] = c
            # counts only grow: the running (largest count, smallest label on ties) is the final one
            if c > best_count[v] or (c == best_count[v] and lab < best[v]):
                best[v] = lab
                best_count[v] = c
    return best


def unique_first_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indexes, inverse) int64 of the distinct rows of integer ``cells`` (N, D): ``indexes`` = first
    row of each distinct value, ascending (values ordered by first occurrence, MinkowskiEngine's order);
    ``inverse`` = the rank of each row's value in that order.

    Each row is one int64 key (every axis offset by its minimum, mixed radix); raises ValueError naming the
    per-axis ranges when they cannot share one int64 key (instead of colliding)."""
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.dtype.kind not in "iu":
        raise ValueError(f"cells: expected (N, D) integers, got {cells.dtype} of shape {cells.shape}")
    n = cells.shape[0]
    if n >= 2**31:
        raise ValueError(f"cells: {n} points; at most 2**31 - 1 are supported per scan")
    if n == 0 or cells.shape[1] == 0:
        k = min(n, 1)
        return np.arange(k, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if cells.dtype not in (np.int32, np.int64):
        cells = cells.astype(np.int64)
    lo, hi = _ranges(cells)
    spans = [int(h) - int(low) + 1 for low, h in zip(lo, hi)]
    if math.prod(spans) - 1 > _INT64_MAX:
        ranges = ", ".join(f"[{int(low)}, {int(h)}]" for low, h in zip(lo, hi))
        raise ValueError(f"voxel coordinates: axis ranges {ranges} (extents {spans}, {math.prod(spans)} cells) "
                         f"exceed the 2**63 cells one int64 voxel key can address")
    return _unique_first(cells, lo, np.asarray(spans, dtype=np.int64))


def majority_vote(labels: np.ndarray, inverse: np.ndarray, n_vox: int, ignore_label: int) -> np.ndarray:
    """(n_vox,) int64: per voxel, the most frequent of its points' labels that are not ``ignore_label``
    (ties: the smallest label), ``ignore_label`` where every point is ignored. ``labels``: (N,) integers,
    none negative except ``ignore_label``; ``inverse``: (N,) voxel of each point, in [0, n_vox).
    Memory: an (n_vox, largest label + 1) int32 count table, as the vote has always used."""
    labels = np.ascontiguousarray(labels)
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)
    inverse = np.ascontiguousarray(inverse, dtype=np.int64)
    if len(labels) != len(inverse):
        raise ValueError(f"labels: expected {len(inverse)} labels (one per point), got {len(labels)}")
    counted = labels
    if len(labels) and int(labels.min()) < 0:   # only the ignore label may be negative
        counted = labels[labels != ignore_label]
        if len(counted) and int(counted.min()) < 0:
            raise ValueError("labels: negative labels are not supported")
    n_lab = int(counted.max()) + 1 if len(counted) else 1
    return _majority(labels, inverse, int(n_vox), n_lab, int(ignore_label))
