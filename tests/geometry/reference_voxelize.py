"""Test reference: the voxelisation of afov_ray/geometry/voxelize.py as it was before the single-key
rewrite (commit e52e765), kept verbatim (``torch.unique(dim=0)`` on the (N, 3) grid) so that the fast
implementation can be checked bit for bit. Semantics: MinkowskiEngine ``sparse_quantize`` as used by the
official loader (pretrain/dataloader_nuscenes_ov.py): floor of the float32-scaled coordinates, first
point of each voxel is its representative, voxels ordered by their first point, inverse map; voxel
target "first" (official) or "majority". Not product code: only tests and bench/legacy_ingest.py use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

GRIDS = ("cylindrical", "cartesian")
FEATURES = ("intensity", "ones", "xyz_intensity")
LABEL_MODES = ("majority", "first")


@dataclasses.dataclass
class Voxels:
    """Voxelised scan(s).

    coords: (V, 3) int32 grid indices, or (V, 4) int32 (batch, i, j, k) for a batch.
    feats: (V, C) float32 features of the representative point.
    indexes: (V,) int64 representative point of each voxel (into the concatenated points for a batch).
    inverse: (N,) int64 voxel of each point (into the concatenated voxels for a batch).
    labels: (V,) int64 voxel targets, or None.
    voxel_offsets / point_offsets: (B+1,) int64 boundaries of each scan (batched form; else (2,)).
    """

    coords: torch.Tensor
    feats: torch.Tensor
    indexes: torch.Tensor
    inverse: torch.Tensor
    labels: torch.Tensor | None
    voxel_offsets: torch.Tensor
    point_offsets: torch.Tensor


def grid_coordinates(points: torch.Tensor, grid: str = "cylindrical", voxel_size: float = 0.1,
                     phi_bin_deg: float = 1.0) -> torch.Tensor:
    """(N, 3) int32 grid indices of points (N, >=3), float32 arithmetic as in the official loader."""
    if grid not in GRIDS:
        raise ValueError(f"grid: expected one of {GRIDS}, got {grid!r}")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected (N, >=3), got {tuple(points.shape)}")
    p = points[:, :3].to(torch.float32)
    if grid == "cartesian":
        scaled = p / voxel_size
    else:
        x, y, z = p.T
        rho = torch.sqrt(x**2 + y**2) / voxel_size
        phi = torch.atan2(y, x) * 180 / math.pi
        if phi_bin_deg != 1.0:
            phi = phi / phi_bin_deg
        scaled = torch.stack([rho, phi, z / voxel_size], dim=1)
    return torch.floor(scaled).to(torch.int32)


def unique_first(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indexes, inverse) of unique rows of int ``coords`` (N, D), voxels ordered by first point."""
    n = coords.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    _, inv_sorted = torch.unique(coords.to(torch.int64), dim=0, return_inverse=True)
    n_vox = int(inv_sorted.max()) + 1
    first = torch.full((n_vox,), n, dtype=torch.int64)
    first.scatter_reduce_(0, inv_sorted, torch.arange(n), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_vox)
    return first[order], rank[inv_sorted]


def majority_labels(labels: torch.Tensor, inverse: torch.Tensor, n_vox: int, ignore_label: int = 0) -> torch.Tensor:
    """Per-voxel majority over non-ignored point labels; ties -> smallest label; all ignored -> ignore."""
    labels = labels.to(torch.int64)
    keep = labels != ignore_label
    out = torch.full((n_vox,), ignore_label, dtype=torch.int64)
    if not bool(keep.any()):
        return out
    lab, vox = labels[keep], inverse[keep]
    if int(lab.min()) < 0:
        raise ValueError("labels: negative labels are not supported")
    n_lab = int(lab.max()) + 1
    counts = torch.bincount(vox * n_lab + lab, minlength=n_vox * n_lab).view(n_vox, n_lab)
    best = counts.argmax(dim=1)  # first maximum = smallest label on ties
    has = counts.max(dim=1).values > 0
    out[has] = best[has]
    return out


def _features(points: torch.Tensor, feature: str, intensity_offset: float) -> torch.Tensor:
    if feature not in FEATURES:
        raise ValueError(f"feature: expected one of {FEATURES}, got {feature!r}")
    if feature == "ones":
        return torch.ones(points.shape[0], 1, dtype=torch.float32)
    if points.shape[1] < 4:
        raise ValueError(f"points: feature {feature!r} needs an intensity column 3, got {points.shape[1]} columns")
    inten = points[:, 3:4].to(torch.float32) + intensity_offset
    if feature == "intensity":
        return inten
    return torch.cat([points[:, :3].to(torch.float32), inten], dim=1)


def voxelize(points: torch.Tensor, labels: torch.Tensor | None = None, *, grid: str = "cylindrical",
             voxel_size: float = 0.1, phi_bin_deg: float = 1.0, feature: str = "intensity",
             intensity_offset: float = 0.0, label_mode: str = "majority", ignore_label: int = 0) -> Voxels:
    """Voxelise one scan: points (N, >=3) [x, y, z, intensity, ...], optional per-point labels (N,).

    ``intensity_offset``: 0 for nuScenes (raw 0-255), 1.0 for SemanticKITTI (official ``+ 1``).
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode: expected one of {LABEL_MODES}, got {label_mode!r}")
    points = torch.as_tensor(points)
    coords = grid_coordinates(points, grid, voxel_size, phi_bin_deg)
    indexes, inverse = unique_first(coords)
    feats = _features(points, feature, intensity_offset)[indexes]
    vox_labels = None
    if labels is not None:
        labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
        if labels.shape[0] != points.shape[0]:
            raise ValueError(f"labels: expected {points.shape[0]} labels, got {labels.shape[0]}")
        if label_mode == "first":
            vox_labels = labels[indexes]
        else:
            vox_labels = majority_labels(labels, inverse, indexes.shape[0], ignore_label)
    return Voxels(coords[indexes], feats, indexes, inverse, vox_labels,
                  torch.tensor([0, indexes.shape[0]]), torch.tensor([0, points.shape[0]]))


def voxelize_batch(scans: Sequence[torch.Tensor], labels: Sequence[torch.Tensor] | None = None,
                   **kwargs) -> Voxels:
    """Voxelise several scans and concatenate them; coords gain a batch column: (V, 4) = (b, i, j, k)."""
    parts = [voxelize(s, None if labels is None else labels[b], **kwargs) for b, s in enumerate(scans)]
    v_off = [0]
    p_off = [0]
    coords, feats, indexes, inverse, labs = [], [], [], [], []
    for b, v in enumerate(parts):
        coords.append(torch.cat([torch.full((v.coords.shape[0], 1), b, dtype=torch.int32), v.coords], dim=1))
        feats.append(v.feats)
        indexes.append(v.indexes + p_off[-1])
        inverse.append(v.inverse + v_off[-1])
        if v.labels is not None:
            labs.append(v.labels)
        v_off.append(v_off[-1] + v.coords.shape[0])
        p_off.append(p_off[-1] + v.inverse.shape[0])
    return Voxels(torch.cat(coords), torch.cat(feats), torch.cat(indexes), torch.cat(inverse),
                  torch.cat(labs) if labels is not None else None, torch.tensor(v_off), torch.tensor(p_off))
