"""Lovasz-Softmax and the CE + Lovasz segmentation loss (docs/method.md "Segmentation loss").

Lovasz-Softmax (Berman et al., CVPR 2018): for each class c, the errors m_i = |1[y_i = c] - p_ic| are
sorted in decreasing order and dotted with the discrete gradient of the Jaccard loss
Delta_c(A) = |A| / |{y = c} union A| along that order; this is the Lovasz extension of Delta_c at m.
The loss is the mean over the selected classes.

Class-0 rule (nuScenes / SemanticKITTI, ignore index 0): class 0 is an output column of the network
(17 or 20 logits) and takes part in the softmax, but it is never a target: voxels labelled 0 are dropped
before both terms, so class 0 is never "present" and contributes no Lovasz term, while its probability
still counts as error mass for the other classes. ``suppress_ignore_class=True`` removes the column from
the softmax/CE instead (a model trained that way never predicts 0); the official code does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Discrete gradient of the Jaccard loss along a sorted 0/1 ground-truth vector.

    With F the ground-truth set and A_i the first i sorted elements, the Jaccard loss of the prefix is
    Delta(A_i) = |A_i| / |F u A_i| = 1 - |F \\ A_i| / |F u A_i|; returns g_i = Delta(A_i) - Delta(A_{i-1}).
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: Literal["present", "all"] | Sequence[int] = "present",
    ignore: int | None = 0,
) -> torch.Tensor:
    """Lovasz-Softmax loss over the whole batch (``per_image=False``, as in the official loss).

    Args:
        probs: (V, C) class probabilities (softmax output).
        labels: (V,) int labels in 0..C-1.
        classes: ``present`` = classes with at least one (non-ignored) label (official), ``all`` = every
            column, or an explicit list of class ids.
        ignore: label whose elements are dropped first (None keeps all).

    Returns a scalar; 0 (connected to ``probs``) when no element or no class is left.
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (V, C) and labels (V,), got {tuple(probs.shape)}, {tuple(labels.shape)}")
    labels = labels.long()
    if ignore is not None:
        keep = labels != ignore
        probs, labels = probs[keep], labels[keep]
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    n_classes = probs.shape[1]
    if classes == "present":
        class_list = torch.unique(labels).tolist()
    elif classes == "all":
        class_list = list(range(n_classes))
    else:
        class_list = [int(c) for c in classes]
    losses = []
    for c in class_list:
        fg = (labels == c).to(probs.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def ce_lovasz_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 0,
    *,
    suppress_ignore_class: bool = False,
    lovasz_classes: Literal["present", "all"] | Sequence[int] = "present",
    ce_weight: float = 1.0,
    lovasz_weight: float = 1.0,
) -> torch.Tensor:
    """CE + Lovasz-Softmax (1:1) on the elements whose label is not ``ignore_index`` (section 5.3).

    Args:
        logits: (V, C) raw scores per voxel (C = 17 for nuScenes, column 0 = the ignore class).
        labels: (V,) int targets; elements equal to ``ignore_index`` are dropped before both terms.
        suppress_ignore_class: False = official (column ``ignore_index`` stays in the softmax, never a
            target); True = drop that column before softmax and CE (labels are re-indexed internally).
        lovasz_classes: class selection of the Lovasz term (official ``present``).

    Returns a scalar; 0 (connected to ``logits``) when every label is ignored.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (V, C) and labels (V,), got {tuple(logits.shape)}, {tuple(labels.shape)}")
    labels = labels.long()
    keep = labels != ignore_index
    logits, labels = logits[keep], labels[keep]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    if suppress_ignore_class:
        cols = [c for c in range(logits.shape[1]) if c != ignore_index]
        logits = logits[:, cols]
        labels = labels - (labels > ignore_index).long()
        if not isinstance(lovasz_classes, str):
            lovasz_classes = [c - (c > ignore_index) for c in lovasz_classes if c != ignore_index]
    ce = F.cross_entropy(logits, labels)
    lov = lovasz_softmax(F.softmax(logits, dim=1), labels, classes=lovasz_classes, ignore=None)
    return ce_weight * ce + lovasz_weight * lov
