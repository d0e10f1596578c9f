"""TMP losses against hand-computed values and explicit float64 loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afov_ray.losses import (
    join_superpixel_features,
    superpixel_global_id,
    superpixel_superpoint_nce,
    superpoint_pooling,
    text_soft_targets,
    text_superpoint_loss,
    tmp_loss,
)


@pytest.fixture(autouse=True)
def _float64():
    """References are float64; restore the default dtype so other test modules are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- pooling and join
def test_superpoint_pooling_mean_over_pairings():
    f = F.normalize(torch.randn(4, 3, generator=_gen(0)), dim=1)
    pair_voxel = torch.tensor([0, 1, 1, 2, 3, 3])
    pair_id = torch.tensor([1, 1, 1, 152, 150, 0])  # 150 and 0 are PNG value 0 -> dropped
    ids, k = superpoint_pooling(f, pair_voxel, pair_id)
    assert ids.tolist() == [1, 152]
    torch.testing.assert_close(k[0], (f[0] + 2 * f[1]) / 3)  # voxel 1 counted once per pairing
    torch.testing.assert_close(k[1], f[2])
    assert k[0].norm() < 1.0  # official: not renormalised
    ids2, k2 = superpoint_pooling(f, pair_voxel, pair_id, renormalize=True)
    assert ids2.tolist() == [1, 152]
    torch.testing.assert_close(k2.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(k2[0], F.normalize((f[0] + 2 * f[1]) / 3, dim=0))


def test_superpoint_pooling_gradient_and_custom_size():
    f = F.normalize(torch.randn(3, 2, generator=_gen(1)), dim=1).requires_grad_(True)
    ids, k = superpoint_pooling(f, torch.tensor([0, 1, 2]), torch.tensor([256, 257, 3]), superpixel_size=256)
    assert ids.tolist() == [3, 257]
    k.sum().backward()
    assert torch.isfinite(f.grad).all() and f.grad[0].abs().sum() == 0  # voxel 0 only on value 0


def test_superpixel_global_id_checks_range():
    g = superpixel_global_id(torch.tensor([0, 2]), torch.tensor([5, 149]))
    assert g.tolist() == [5, 449]
    with pytest.raises(ValueError):
        superpixel_global_id(torch.tensor([0]), torch.tensor([150]))


def test_join_is_by_id_not_order():
    table_ids = torch.tensor([152, 3, 1, 7])
    feats = torch.tensor([[0.0, 2.0], [3.0, 4.0], [1.0, 0.0], [5.0, 5.0]]).half()
    text = torch.tensor([10, 30, 11, 70])
    q, y = join_superpixel_features(torch.tensor([1, 3, 152]), table_ids, feats, text)
    torch.testing.assert_close(q, torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float32))
    assert y.tolist() == [11, 30, 10]
    with pytest.raises(KeyError, match="4"):
        join_superpixel_features(torch.tensor([1, 4]), table_ids, feats, text)
    with pytest.raises(ValueError):
        join_superpixel_features(torch.tensor([1]), torch.tensor([1, 1]), feats[:2], text[:2])


# ---------------------------------------------------------------- L_IP
def _nce_loop(anchor: np.ndarray, other: np.ndarray, tau: float) -> float:
    r = anchor.shape[0]
    total = 0.0
    for i in range(r):
        logits = [sum(anchor[i, d] * other[j, d] for d in range(anchor.shape[1])) / tau for j in range(r)]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / r


def test_nce_identity_hand_value():
    eye = torch.eye(3)
    assert superpixel_superpoint_nce(eye, eye, tau=1.0).item() == pytest.approx(math.log(1 + 2 / math.e))


def test_nce_3x3_both_directions():
    k = F.normalize(torch.randn(3, 4, generator=_gen(2)), dim=1) * 0.7
    q = F.normalize(torch.randn(3, 4, generator=_gen(3)), dim=1)
    off = superpixel_superpoint_nce(k, q, tau=0.07)
    pap = superpixel_superpoint_nce(k, q, tau=0.07, direction="paper")
    assert off.item() == pytest.approx(_nce_loop(k.numpy(), q.numpy(), 0.07), rel=1e-12)
    assert pap.item() == pytest.approx(_nce_loop(q.numpy(), k.numpy(), 0.07), rel=1e-12)
    assert off.item() != pytest.approx(pap.item())


# ---------------------------------------------------------------- L_TP official
# 5-text toy dictionary: texts 0,1,2 in category A, texts 3,4 in category B.
TOY_T = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0], [0, 0, 1.0], [0, 0.6, 0.8]], dtype=torch.float64)
TOY_SAME = torch.tensor([[1.0 if (a < 3) == (b < 3) else 0.0 for b in range(5)] for a in range(5)], dtype=torch.float64)


def test_soft_targets_exact_rows():
    tgt = text_soft_targets(TOY_T, torch.tensor([0, 4, 2]), TOY_SAME)
    # y=0: own 0.2+0.8*1 = 1.0; text1 0.8*0.8; text2 0.8*0.6; other category 0.
    np.testing.assert_allclose(tgt[0].numpy(), np.array([1.0, 0.64, 0.48, 0, 0]) / 2.12, rtol=1e-12)
    # y=4: own 1.0; text3 0.8*<t4,t3> = 0.8*0.8.
    np.testing.assert_allclose(tgt[1].numpy(), np.array([0, 0, 0, 0.64, 1.0]) / 1.64, rtol=1e-12)
    # y=2: <t2,t0> = 0.6, <t2,t1> = 0.96.
    np.testing.assert_allclose(tgt[2].numpy(), np.array([0.48, 0.768, 1.0, 0, 0]) / 2.248, rtol=1e-12)


def test_text_loss_official_matches_loop():
    k = F.normalize(torch.randn(4, 3, generator=_gen(4)), dim=1) * 0.9
    y = torch.tensor([0, 1, 4, 0])
    tau = 0.07
    got = text_superpoint_loss(k, TOY_T * 2.0, y, TOY_SAME, tau)  # un-normalised input is normalised
    t = TOY_T.numpy()
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    total = 0.0
    for r in range(4):
        yr = int(y[r])
        w = [(0.2 if t_ == yr else 0.0) + 0.8 * float(t[yr] @ t[t_]) * float(TOY_SAME[yr, t_]) for t_ in range(5)]
        z = sum(w)
        logits = [float(k[r].numpy() @ t[t_]) / tau for t_ in range(5)]
        lse = math.log(sum(math.exp(v) for v in logits))
        total += sum(-(w[t_] / z) * (logits[t_] - lse) for t_ in range(5))
    assert got.item() == pytest.approx(total / 4, rel=1e-12)


# ---------------------------------------------------------------- L_TP paper
def test_text_loss_paper_hand_case():
    # texts: t0=[1,0], t1=[.6,.8] (category A), t2=[0,1] (category B); superpoints k_i with label i.
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    same = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    got = text_superpoint_loss(k, t, torch.tensor([0, 1, 2]), same, tau=1.0, form="paper")
    # c[i,j] = <t_{y_i}, k_j>: row0 [1, 0, .6], row1 [.6, .8, 1], row2 [0, 1, .8];
    # alpha only for the same-category pairs (0,1), (1,0): alpha_01 = c01 = 0, alpha_10 = c10 = 0.6.
    l0 = math.log(math.exp(1) + math.exp(0) + math.exp(0.6)) - 1
    l1 = math.log(math.exp(0.8) + math.exp((1 - 0.6) * 0.6) + math.exp(1.0)) - 0.8
    l2 = math.log(math.exp(0.8) + math.exp(0) + math.exp(1.0)) - 0.8
    assert got.item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-12)


def _paper_loop(k, t, y, same, tau, alpha_kind):
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    r = k.shape[0]
    total = 0.0
    for i in range(r):
        fi = t[y[i]]
        pos = float(fi @ k[i]) / tau
        terms = [math.exp(pos)]
        for j in range(r):
            if y[j] == y[i]:
                continue
            c = float(fi @ k[j])
            if same[y[i], y[j]]:
                alpha = c if alpha_kind == "text_superpoint" else float(fi @ t[y[j]])
            else:
                alpha = 0.0
            terms.append(math.exp((1 - alpha) * c / tau))
        total += -(pos - math.log(sum(terms)))
    return total / r


@pytest.mark.parametrize("alpha_kind", ["text_superpoint", "text_text"])
def test_text_loss_paper_matches_loop(alpha_kind):
    k = torch.randn(6, 3, generator=_gen(5))
    y = torch.tensor([0, 1, 0, 3, 4, 2])  # label 0 twice: excluded from each other's denominator
    got = text_superpoint_loss(k, TOY_T, y, TOY_SAME, tau=0.1, form="paper", paper_alpha=alpha_kind)
    ref = _paper_loop(k.numpy(), TOY_T.numpy(), y.numpy(), TOY_SAME.numpy(), 0.1, alpha_kind)
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_tmp_loss_weights_and_gradients():
    k = F.normalize(torch.randn(5, 3, generator=_gen(6)), dim=1).requires_grad_(True)
    q = F.normalize(torch.randn(5, 3, generator=_gen(7)), dim=1)
    y = torch.tensor([0, 1, 2, 3, 4])
    out = tmp_loss(k, q, y, TOY_T, TOY_SAME)
    assert out.total.item() == pytest.approx(0.5 * out.image.item() + 0.5 * out.text.item(), rel=1e-12)
    assert out.image.item() == pytest.approx(superpixel_superpoint_nce(k, q).item())
    out.total.backward()
    assert torch.isfinite(k.grad).all() and k.grad.abs().sum() > 0
    k.grad = None
    paper = tmp_loss(k, q, y, TOY_T, TOY_SAME, nce_direction="paper", text_form="paper", alpha_image=1.0, alpha_text=2.0)
    assert paper.total.item() == pytest.approx(paper.image.item() + 2.0 * paper.text.item(), rel=1e-12)
    paper.total.backward()
    assert torch.isfinite(k.grad).all()


def test_text_loss_rejects_bad_labels():
    with pytest.raises(ValueError):
        text_superpoint_loss(torch.randn(2, 3), TOY_T, torch.tensor([0, 5]), TOY_SAME)


def test_paper_form_all_same_text_is_zero_with_finite_grad():
    k = torch.randn(3, 3, generator=_gen(8)).requires_grad_(True)
    loss = text_superpoint_loss(k, TOY_T, torch.tensor([1, 1, 1]), TOY_SAME, form="paper")
    assert loss.item() == pytest.approx(0.0, abs=1e-12)  # no negatives left in any denominator
    loss.backward()
    assert torch.isfinite(k.grad).all()


def test_teacher_table_to_tmp_loss_end_to_end():
    """TeacherImages -> feature table -> pooling -> id join -> L_TMP, with the real 175-text dictionary."""
    from afov_ray.teachers import ClassDictionary, TeacherImage, superpixel_feature_table

    voc = ClassDictionary.load("nuscenes")
    rng = np.random.default_rng(9)
    images = []
    for cam in range(2):
        n = 3
        images.append(TeacherImage(
            sample_token="s", camera=f"C{cam}", image_size=(2, 2), mask_map=np.array([[0, 1], [2, 3]], np.uint8),
            mask_ids=np.arange(1, n + 1, dtype=np.uint16), text_index=np.array([0, 96, 165], np.int32),
            area=np.ones(n, np.int64), features=rng.normal(size=(n, 8)).astype(np.float16)))
    table_ids, table_feats, table_text = superpixel_feature_table(images)
    assert table_ids.tolist() == [1, 2, 3, 151, 152, 153]
    feats = F.normalize(torch.randn(10, 8, generator=_gen(10)), dim=1)
    pair_voxel = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    png = torch.tensor([1, 1, 0, 3, 2, 3, 0])
    img = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    ids, k = superpoint_pooling(feats, pair_voxel, superpixel_global_id(img, png))
    assert ids.tolist() == [1, 3, 152, 153]  # mask 2 of image 0 has no pairing; PNG 0 dropped
    q, y = join_superpixel_features(ids, torch.from_numpy(table_ids), torch.from_numpy(table_feats),
                                    torch.from_numpy(table_text))
    assert y.tolist() == [0, 165, 96, 165]
    text = torch.randn(175, 8, generator=_gen(11))
    out = tmp_loss(k, q, y, text, torch.from_numpy(voc.same_category_matrix()))
    assert torch.isfinite(out.total) and out.total.item() > 0
