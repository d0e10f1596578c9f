"""Superpoint pooling and the explicit superpixel-feature join (docs/method.md "TMP data", "Superpoint pooling").

A *superpixel global id* names one teacher mask of one image of the local batch:
``g = image_index * superpixel_size + png_value`` (official ``superpixel_size`` = 150). PNG value 0
means "no mask" and is never kept. Ids are joined to the teacher feature table explicitly, by value,
instead of the official code's reliance on table order matching id order (section 8.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OFFICIAL_SUPERPIXEL_SIZE = 150


def superpixel_global_id(
    image_index: torch.Tensor, png_value: torch.Tensor, superpixel_size: int = OFFICIAL_SUPERPIXEL_SIZE
) -> torch.Tensor:
    """``image_index * superpixel_size + png_value`` (int64), after checking every value fits the id space.

    The official code silently mis-assigns masks when an image has >= 150 masks; here it raises.
    Use a larger ``superpixel_size`` (e.g. 65536 for uint16 mask maps) when needed.
    """
    png_value = png_value.long()
    if png_value.numel() and (int(png_value.min()) < 0 or int(png_value.max()) >= superpixel_size):
        raise ValueError(
            f"mask value range [{int(png_value.min())}, {int(png_value.max())}] does not fit "
            f"superpixel_size={superpixel_size}"
        )
    return image_index.long() * superpixel_size + png_value


def superpoint_pooling(
    voxel_feats: torch.Tensor,
    pair_voxel: torch.Tensor,
    pair_superpixel_id: torch.Tensor,
    *,
    superpixel_size: int = OFFICIAL_SUPERPIXEL_SIZE,
    renormalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean voxel feature per superpixel id (section 2.3).

    Args:
        voxel_feats: (V, D) voxel features, already L2-normalised per voxel (official).
        pair_voxel: (E,) voxel index of each pairing (a voxel seen through several pairings counts once
            per pairing, as in the official code).
        pair_superpixel_id: (E,) superpixel global id of each pairing (:func:`superpixel_global_id`).
        superpixel_size: id space per image; ids with ``id % superpixel_size == 0`` (PNG value 0) are dropped.
        renormalize: False = official (plain mean of normalised features, |k| <= 1); True = the paper
            ("average pooling and normalization": L2-normalise each pooled vector).

    The official code divides by (n_g + 1e-6); with n_g >= 1 for every kept id that is the plain mean up
    to 1e-6 relative, so the exact count is used here.

    Returns:
        ids: (R,) int64 kept ids, ascending; kept = at least one pairing and PNG value != 0, both
            tested explicitly (not the official ``k[:, 0] != 0`` proxy).
        k: (R, D) pooled superpoint embeddings, row r for ``ids[r]``.
    """
    if voxel_feats.dim() != 2:
        raise ValueError(f"voxel_feats must be (V, D), got {tuple(voxel_feats.shape)}")
    if pair_voxel.shape != pair_superpixel_id.shape or pair_voxel.dim() != 1:
        raise ValueError("pair_voxel and pair_superpixel_id must be 1-D of equal length")
    ids_all = pair_superpixel_id.long()
    keep_pair = ids_all % superpixel_size != 0
    ids_all = ids_all[keep_pair]
    voxels = pair_voxel.long()[keep_pair]
    ids, inverse, counts = torch.unique(ids_all, sorted=True, return_inverse=True, return_counts=True)
    sums = voxel_feats.new_zeros((ids.numel(), voxel_feats.shape[1]))
    sums = sums.index_add(0, inverse, voxel_feats[voxels])
    k = sums / counts.to(voxel_feats.dtype).unsqueeze(1)
    if renormalize:
        k = F.normalize(k, dim=1)
    return ids, k


def join_superpixel_features(
    ids: torch.Tensor,
    table_ids: torch.Tensor,
    table_feats: torch.Tensor,
    table_text: torch.Tensor,
    *,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher mask features and text labels for ``ids``, joined by id value (section 2.3, 8.2).

    Args:
        ids: (R,) superpixel global ids (e.g. from :func:`superpoint_pooling`).
        table_ids: (M,) global id of each row of the teacher feature table (any order, unique).
        table_feats: (M, D) mask features (fp16 or fp32).
        table_text: (M,) text index (teacher ``category_id``) of each row.
        normalize: L2-normalise the returned features (official: q is normalised).

    Returns:
        q: (R, D) float32 features, row r for ``ids[r]``.
        y: (R,) int64 text labels.

    Raises:
        KeyError: an id has no row in the table (names the missing ids).
        ValueError: the table has duplicate ids.
    """
    table_ids = table_ids.long()
    order = torch.argsort(table_ids)
    sorted_ids = table_ids[order]
    if sorted_ids.numel() > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        raise ValueError("superpixel feature table has duplicate ids")
    ids = ids.long()
    if ids.numel() == 0:
        return table_feats.new_zeros((0, table_feats.shape[1])).float(), ids.new_zeros((0,))
    if sorted_ids.numel() == 0:
        raise KeyError(f"superpixel ids missing from the feature table: {ids[:10].tolist()}")
    pos = torch.searchsorted(sorted_ids, ids).clamp(max=sorted_ids.numel() - 1)
    found = sorted_ids[pos] == ids
    if not bool(found.all()):
        raise KeyError(f"superpixel ids missing from the feature table: {ids[~found][:10].tolist()}")
    rows = order[pos]
    q = table_feats[rows].float()
    if normalize:
        q = F.normalize(q, dim=1)
    return q, table_text.long()[rows]
