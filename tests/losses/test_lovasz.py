"""Lovasz-Softmax and CE + Lovasz against brute-force references (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afov_ray.losses import ce_lovasz_loss, lovasz_softmax


def _jaccard_loss(mispredicted: set[int], fg: set[int]) -> float:
    """Delta_J(M) = |M| / |F u M| (0 for the empty set)."""
    if not mispredicted:
        return 0.0
    return len(mispredicted) / len(fg | mispredicted)


def _lovasz_extension_integral(errors: np.ndarray, fg: set[int]) -> float:
    """Lovasz extension as the integral int_0^1 Delta({i: m_i >= t}) dt, with explicit sets (no sorting trick)."""
    values = sorted(set(errors.tolist()) | {0.0})
    total = 0.0
    for lo, hi in zip(values[:-1], values[1:]):
        level_set = {i for i in range(len(errors)) if errors[i] >= hi}
        total += (hi - lo) * _jaccard_loss(level_set, fg)
    return total


def _lovasz_reference(probs: np.ndarray, labels: np.ndarray, classes: list[int]) -> float:
    losses = []
    for c in classes:
        fg = {i for i in range(len(labels)) if labels[i] == c}
        errors = np.array([abs((1.0 if labels[i] == c else 0.0) - probs[i, c]) for i in range(len(labels))])
        losses.append(_lovasz_extension_integral(errors, fg))
    return sum(losses) / len(losses)


def test_hard_predictions_equal_one_minus_iou():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=40)
    pred = np.where(rng.random(40) < 0.6, labels, rng.integers(0, 5, size=40))
    probs = torch.from_numpy(np.eye(5)[pred])
    got = lovasz_softmax(probs, torch.from_numpy(labels), classes="present", ignore=0).item()
    keep = labels != 0
    ious = []
    for c in sorted(set(labels[keep].tolist())):
        inter = np.sum((labels[keep] == c) & (pred[keep] == c))
        union = np.sum((labels[keep] == c) | (pred[keep] == c))
        ious.append(inter / union)
    assert got == pytest.approx(1.0 - np.mean(ious), abs=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_brute_force_extension(seed):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(size=(12, 4)) * 2)
    labels = torch.from_numpy(rng.integers(0, 4, size=12))
    probs = F.softmax(logits, dim=1)
    keep = (labels != 0).numpy()
    present = sorted(set(labels.numpy()[keep].tolist()))
    ref = _lovasz_reference(probs.numpy()[keep], labels.numpy()[keep], present)
    assert lovasz_softmax(probs, labels).item() == pytest.approx(ref, rel=1e-10)
    ref_all = _lovasz_reference(probs.numpy(), labels.numpy(), [0, 1, 2, 3])
    assert lovasz_softmax(probs, labels, classes="all", ignore=None).item() == pytest.approx(ref_all, rel=1e-10)


def test_ce_lovasz_drops_ignored_voxels_and_class0_rule():
    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(size=(20, 5))).requires_grad_(True)
    labels = torch.from_numpy(rng.integers(0, 5, size=20))
    labels[:3] = 0
    loss = ce_lovasz_loss(logits, labels)
    keep = labels != 0
    ce_ref = np.mean([
        -(logits[i, labels[i]].item() - math.log(sum(math.exp(logits[i, c].item()) for c in range(5))))
        for i in range(20) if labels[i] != 0
    ])
    probs = F.softmax(logits, dim=1).detach().numpy()
    present = sorted(set(labels[keep].tolist()))
    lov_ref = _lovasz_reference(probs[keep.numpy()], labels.numpy()[keep.numpy()], present)
    assert loss.item() == pytest.approx(ce_ref + lov_ref, rel=1e-10)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:3].abs().sum() == 0  # ignored voxels get no gradient
    assert logits.grad[3:, 0].abs().sum() > 0  # class 0 stays a softmax column (official)

    # suppressing the class-0 column = computing on logits[:, 1:] with labels - 1
    sup = ce_lovasz_loss(logits, labels, suppress_ignore_class=True)
    ref = ce_lovasz_loss(logits[:, 1:], labels - 1, ignore_index=-1)
    assert sup.item() == pytest.approx(ref.item(), rel=1e-12)
    assert sup.item() != pytest.approx(loss.item())


def test_all_ignored_is_zero_with_finite_grad():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = ce_lovasz_loss(logits, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_perfect_prediction_zero_lovasz():
    labels = torch.tensor([1, 2, 2, 3])
    probs = torch.eye(4, dtype=torch.float64)[labels]
    assert lovasz_softmax(probs, labels).item() == 0.0
