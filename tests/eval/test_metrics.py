"""Confusion matrix / IoU conventions (docs/method.md "Evaluation") against brute force and
against nuscenes-devkit's lidarseg ConfusionMatrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afov_ray.errors import DataError
from afov_ray.eval import (
    ConfusionAccumulator,
    confusion_matrix,
    evaluate_report,
    iou_per_class,
    micro_iou,
    miou,
    point_accuracy,
    suppress_class0,
)

C = 17


def _random_scans(seed, n_scans=4, absent=(5, 9)):
    rng = np.random.default_rng(seed)
    classes = np.array([c for c in range(1, C) if c not in absent])
    scans = []
    for _ in range(n_scans):
        n = int(rng.integers(200, 800))
        gt = rng.choice(np.r_[0, classes], n)
        pred = np.where(rng.random(n) < 0.6, gt, rng.choice(classes, n))
        pred = np.where(pred == 0, rng.choice(classes, n), pred)   # predictions in 1..16
        scans.append((gt, pred))
    return scans


def _brute_force_iou(scans, ignore=0):
    tp = np.zeros(C); fp = np.zeros(C); fn = np.zeros(C)
    for gt, pred in scans:
        for g, p in zip(gt.tolist(), pred.tolist()):
            if g == ignore:
                continue                       # ignore row dropped; column kept
            if g == p:
                tp[g] += 1
            else:
                fn[g] += 1
                fp[p] += 1
    union = tp + fp + fn
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0), tp, fp, fn


def test_confusion_matrix_bruteforce_numpy_and_torch():
    scans = _random_scans(0)
    acc = ConfusionAccumulator(C)
    total = np.zeros((C, C), np.int64)
    for i, (gt, pred) in enumerate(scans):
        H = confusion_matrix(gt, pred, C, scan=f"s{i}")
        assert isinstance(H, np.ndarray) and H.dtype == np.int64
        Ht = confusion_matrix(torch.from_numpy(gt), torch.from_numpy(pred), C)
        assert isinstance(Ht, torch.Tensor) and Ht.dtype == torch.int64
        np.testing.assert_array_equal(H, Ht.numpy())
        brute = np.zeros((C, C), np.int64)
        for g, p in zip(gt, pred):
            brute[g, p] += 1
        np.testing.assert_array_equal(H, brute)
        total += H
        acc.update(gt, pred, scan=f"s{i}")
    np.testing.assert_array_equal(acc.matrix.numpy(), total)


def test_miou_equals_bruteforce_counts():
    scans = _random_scans(1)
    H = sum(confusion_matrix(g, p, C) for g, p in scans)
    ref, tp, fp, fn = _brute_force_iou(scans)
    iou = iou_per_class(H)
    np.testing.assert_allclose(iou[1:], ref[1:], rtol=1e-12)
    assert iou[5] == 1.0 and iou[9] == 1.0                      # empty union -> 1.0 (official)
    assert miou(H) == pytest.approx(ref[1:].mean(), rel=1e-12)
    assert micro_iou(H) == pytest.approx(tp.sum() / (2 * (tp + fn).sum() - tp.sum()), rel=1e-12)
    assert point_accuracy(H) == pytest.approx(tp.sum() / (tp + fn).sum())
    assert np.isnan(iou_per_class(H, empty_union="nan")[5])
    assert iou_per_class(H, empty_union="zero")[9] == 0.0
    rep = evaluate_report(H)
    assert rep["miou"] == miou(H) and "0" not in rep["iou_per_class"] and len(rep["iou_per_class"]) == 16


def test_prediction_zero_counts_as_miss_not_ignored():
    gt = np.array([3, 3, 3, 0, 0])
    pred = np.array([3, 0, 0, 3, 0])
    H = confusion_matrix(gt, pred, C)
    iou = iou_per_class(H)
    # class 3: TP 1, FN 2 (predicted 0: column of 0 not zeroed), FP 0 (GT-0 row zeroed)
    assert iou[3] == pytest.approx(1 / 3)
    assert micro_iou(H) == pytest.approx(1 / (2 * 3 - 1))


def test_bad_inputs_raise_dataerror_naming_scan():
    with pytest.raises(DataError, match="scene-0003"):
        confusion_matrix(np.zeros(5, np.int64), np.zeros(4, np.int64), C, scan="scene-0003")
    with pytest.raises(DataError, match="scanX.*pred"):
        confusion_matrix(np.zeros(3, np.int64), np.array([0, 17, 1]), C, scan="scanX")
    with pytest.raises(DataError, match="scanY.*gt"):
        confusion_matrix(torch.tensor([-1, 0]), torch.tensor([0, 0]), C, scan="scanY")
    with pytest.raises(DataError, match="integer"):
        confusion_matrix(np.zeros(3), np.zeros(3), C, scan="f")


def test_suppress_class0():
    logits = torch.randn(50, C)
    logits[:, 0] = 100.0
    out = suppress_class0(logits)
    assert (out.argmax(1) != 0).all()
    assert torch.equal(out[:, 1:], logits[:, 1:]) and logits[0, 0] == 100.0


def test_matches_nuscenes_devkit():
    from nuscenes.eval.lidarseg.utils import ConfusionMatrix

    scans = _random_scans(2)
    cm = ConfusionMatrix(C, ignore_idx=0)
    ours = ConfusionAccumulator(C)
    for i, (gt, pred) in enumerate(scans):
        cm.update(gt, pred)
        ours.update(gt, pred, scan=str(i))
    dev_iou = np.asarray(cm.get_per_class_iou(), np.float64)
    our_nan = iou_per_class(ours.matrix, empty_union="nan")
    # devkit: class 0 NaN (row and column zeroed), empty-union classes NaN
    assert np.isnan(dev_iou[0]) and np.isnan(dev_iou[5]) and np.isnan(dev_iou[9])
    np.testing.assert_allclose(our_nan[1:], dev_iou[1:], rtol=1e-6, equal_nan=True)
    assert miou(ours.matrix, empty_union="nan") == pytest.approx(cm.get_mean_iou(), rel=1e-6)
    # official convention (empty union = 1.0) differs: it counts the 2 absent classes as perfect
    assert miou(ours.matrix) > cm.get_mean_iou()
    n_present = 14
    assert miou(ours.matrix) == pytest.approx((cm.get_mean_iou() * n_present + 2) / 16, rel=1e-6)
    # devkit refuses predictions of the ignore class; ours scores them as misses
    with pytest.raises(AssertionError):
        ConfusionMatrix(C, ignore_idx=0).update(np.array([1, 2]), np.array([0, 2]))
    assert iou_per_class(confusion_matrix(np.array([1, 2]), np.array([0, 2]), C))[1] == 0.0
