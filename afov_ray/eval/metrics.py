"""Segmentation metrics as the official code scores them (docs/method.md "Evaluation").

One dataset-level confusion matrix H[gt, pred] (int64, accumulated with bincount over all points
of all scans), then per-class IoU with the official conventions:

- the row of ``ignore_index`` (GT 0) is zeroed, the column is NOT: a prediction of 0 on a labelled
  point is a miss for the true class (the official code does not suppress class 0 at its final
  evaluation; use ``suppress_class0`` on logits to suppress it explicitly);
- IoU_c = H_cc / (sum_j H_cj + sum_i H_ic - H_cc); a class with an empty union gets 1.0 officially
  (``empty_union="one"``), or NaN / 0.0 on request;
- mIoU = mean over classes 1..C-1 (16 for nuScenes), NaNs skipped when ``empty_union="nan"``;
- "fwIoU" as the official code defines it: sum_c H_cc / (2 sum H - sum_c H_cc), i.e. a micro
  (overall) IoU, not a frequency-weighted IoU (``micro_iou``).

Differences from nuscenes-devkit's ``lidarseg.utils.ConfusionMatrix(17, ignore_idx=0)``: the
devkit asserts predictions in 1..16, zeroes both the row and the column of class 0, gives NaN to
empty-union classes and averages with ``nanmean`` over all 17 entries (class 0 is NaN, so it
drops out), and its "freq_weighted_iou" is a true frequency-weighted IoU. On predictions in 1..16
the column of 0 is empty anyway, so ``iou_per_class(H, empty_union="nan")`` equals the devkit's
per-class IoU and ``miou(..., empty_union="nan")`` its mean IoU (tested).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from afov_ray.errors import DataError

EmptyUnion = Literal["one", "nan", "zero"]


def _flat_long(a, name: str, scan: str) -> torch.Tensor:
    t = torch.as_tensor(a) if not isinstance(a, torch.Tensor) else a
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(scan, f"{name} must be integer class labels, got dtype {t.dtype}")
    return t.reshape(-1).long()


def confusion_matrix(gt, pred, num_classes: int, scan: str = "scan") -> torch.Tensor | np.ndarray:
    """H[gt, pred] (num_classes x num_classes, int64) of one scan or a whole dataset.

    Accepts torch tensors (any device; the result stays there) or numpy arrays (numpy result).
    Raises DataError naming ``scan`` on a length mismatch or labels outside [0, num_classes).
    Accumulate over scans by summing the returned matrices (or use ``ConfusionAccumulator``).
    """
    as_numpy = isinstance(gt, np.ndarray) and isinstance(pred, np.ndarray)
    g = _flat_long(gt, "gt", scan)
    p = _flat_long(pred, "pred", scan).to(g.device)
    if g.numel() != p.numel():
        raise DataError(scan, f"prediction length {p.numel()} != ground-truth length {g.numel()}")
    for name, t in (("gt", g), ("pred", p)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise DataError(scan, f"{name} labels outside [0, {num_classes}): "
                                  f"min {int(t.min())}, max {int(t.max())}")
    h = torch.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    h = h.reshape(num_classes, num_classes).to(torch.int64)
    return h.cpu().numpy() if as_numpy else h


class ConfusionAccumulator:
    """Dataset-level confusion matrix: ``update(gt, pred, scan=...)`` per scan, ``.matrix`` (int64)."""

    def __init__(self, num_classes: int, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, gt, pred, scan: str = "scan") -> None:
        g = torch.as_tensor(gt).to(self.matrix.device)
        p = torch.as_tensor(pred).to(self.matrix.device)
        self.matrix += confusion_matrix(g, p, self.num_classes, scan=scan)

    def merge(self, other: "ConfusionAccumulator | torch.Tensor | np.ndarray") -> None:
        m = other.matrix if isinstance(other, ConfusionAccumulator) else torch.as_tensor(other)
        self.matrix += m.to(self.matrix.device, torch.int64)


def _as_f64(H) -> np.ndarray:
    if isinstance(H, torch.Tensor):
        H = H.detach().cpu().numpy()
    return np.asarray(H, dtype=np.float64)


def iou_per_class(H, ignore_index: int | None = 0, empty_union: EmptyUnion = "one") -> np.ndarray:
    """IoU of every class (length C, float64), official conventions (module docstring).

    The ``ignore_index`` row is zeroed (not the column); the entry of ``ignore_index`` itself is
    returned too (it is not part of the mIoU). ``empty_union``: "one" (official), "nan", "zero".
    """
    h = _as_f64(H).copy()
    if ignore_index is not None:
        h[ignore_index, :] = 0.0
    inter = np.diag(h)
    union = h.sum(1) + h.sum(0) - inter
    fill = {"one": 1.0, "nan": np.nan, "zero": 0.0}[empty_union]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), fill)
    return iou


def miou(H, ignore_index: int | None = 0, empty_union: EmptyUnion = "one") -> float:
    """Mean IoU over all classes except ``ignore_index`` (classes 1..C-1 for ignore 0).
    NaN entries (empty_union="nan") are skipped (nanmean)."""
    iou = iou_per_class(H, ignore_index, empty_union)
    keep = np.ones(len(iou), bool)
    if ignore_index is not None:
        keep[ignore_index] = False
    vals = iou[keep]
    if empty_union == "nan":
        return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return float(vals.mean())


def micro_iou(H, ignore_index: int | None = 0) -> float:
    """The official "fwIoU": sum_c H_cc / (2 sum H - sum_c H_cc) after zeroing the ignore row
    (a micro / overall IoU, not a frequency-weighted one). 1.0 for an empty matrix."""
    h = _as_f64(H).copy()
    if ignore_index is not None:
        h[ignore_index, :] = 0.0
    tp = np.trace(h)
    den = 2.0 * h.sum() - tp
    return float(tp / den) if den > 0 else 1.0


def point_accuracy(H, ignore_index: int | None = 0) -> float:
    """Fraction of scored points (GT != ignore) predicted correctly."""
    h = _as_f64(H).copy()
    if ignore_index is not None:
        h[ignore_index, :] = 0.0
    tot = h.sum()
    return float(np.trace(h) / tot) if tot > 0 else float("nan")


def suppress_class0(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logits with class 0 set to -inf along ``dim``, so argmax never predicts the ignore class
    (what the official trainer's validation does via softmax; its final evaluate() does not)."""
    out = logits.clone()
    out.select(dim, 0).fill_(float("-inf"))
    return out


def evaluate_report(H, class_names: list[str] | None = None, ignore_index: int | None = 0,
                    empty_union: EmptyUnion = "one") -> dict:
    """Dict with per-class IoU (by name if given), miou, fwiou (micro IoU), accuracy, n_points."""
    iou = iou_per_class(H, ignore_index, empty_union)
    names = class_names or [str(i) for i in range(len(iou))]
    per = {names[c]: float(iou[c]) for c in range(len(iou)) if c != ignore_index}
    h = _as_f64(H)
    scored = h.sum() - (h[ignore_index].sum() if ignore_index is not None else 0.0)
    return {"iou_per_class": per, "miou": miou(H, ignore_index, empty_union),
            "fwiou": micro_iou(H, ignore_index), "accuracy": point_accuracy(H, ignore_index),
            "n_points": int(scored)}
