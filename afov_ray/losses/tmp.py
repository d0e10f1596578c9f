"""TMP losses: superpixel-superpoint InfoNCE and text-superpoint loss (docs/method.md "TMP losses";
paper Eq. 1-4).

Shapes: R superpoints kept in the local batch, D feature width, T texts in the vocabulary.
``k`` (R, D) superpoint embeddings from :func:`afov_ray.losses.pooling.superpoint_pooling`;
``q`` (R, D) teacher mask features of the same ids (normalised), ``y`` (R,) their text indices.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

OFFICIAL_TAU = 0.07
OFFICIAL_TARGET_WEIGHT = 0.2
OFFICIAL_TARGET_POWER = 1.0


def superpixel_superpoint_nce(
    k: torch.Tensor,
    q: torch.Tensor,
    tau: float = OFFICIAL_TAU,
    direction: Literal["official", "paper"] = "official",
) -> torch.Tensor:
    """L_IP, one-direction InfoNCE between matched rows of ``k`` and ``q`` (section 2.4, paper Eq. 1).

    ``official``: CE(k q^T / tau, arange(R)): each superpoint is the anchor, the softmax runs over all
    kept superpixels of the local batch (``NCELoss`` in ``AFOV:pretrain/criterion.py``).
    ``paper``: CE(q k^T / tau, arange(R)): Eq. 1 as printed, each superpixel is the anchor and the softmax
    runs over superpoints. Neither form normalises its inputs; the mean is over rows.
    """
    if k.shape != q.shape or k.dim() != 2:
        raise ValueError(f"k and q must both be (R, D), got {tuple(k.shape)} and {tuple(q.shape)}")
    q = q.to(k.dtype)
    if direction == "official":
        logits = k @ q.t() / tau
    elif direction == "paper":
        logits = q @ k.t() / tau
    else:
        raise ValueError(f"direction must be 'official' or 'paper', got {direction!r}")
    target = torch.arange(k.shape[0], device=k.device)
    return F.cross_entropy(logits, target)


def text_soft_targets(
    text_emb: torch.Tensor,
    y: torch.Tensor,
    same_category: torch.Tensor,
    target_weight: float = OFFICIAL_TARGET_WEIGHT,
    target_power: float = OFFICIAL_TARGET_POWER,
) -> torch.Tensor:
    """Official soft targets (R, T) of L_TP (section 2.4).

    target(r, t) = [w * 1(t = y_r) + (1 - w) * S[y_r, t]^p * same_category[y_r, t]] / Z_r with
    S = normalised text cosine matrix, w = 0.2, p = 1 and Z_r the row sum. The own text gets
    w + (1 - w) * 1 = 1.0 before normalisation. Like the official code, negative within-category cosines
    are not clamped (CLIP text cosines within a category are positive in practice).
    """
    if text_emb.dtype in (torch.float16, torch.bfloat16):
        text_emb = text_emb.float()
    t = F.normalize(text_emb, dim=1)
    s = t @ t.t()
    y = y.long()
    soft = s[y].pow(target_power) * same_category.to(s.dtype)[y]
    onehot = F.one_hot(y, num_classes=t.shape[0]).to(s.dtype)
    target = target_weight * onehot + (1.0 - target_weight) * soft
    return target / target.sum(dim=1, keepdim=True)


def text_superpoint_loss(
    k: torch.Tensor,
    text_emb: torch.Tensor,
    y: torch.Tensor,
    same_category: torch.Tensor,
    tau: float = OFFICIAL_TAU,
    form: Literal["official", "paper"] = "official",
    *,
    target_weight: float = OFFICIAL_TARGET_WEIGHT,
    target_power: float = OFFICIAL_TARGET_POWER,
    paper_alpha: Literal["text_superpoint", "text_text"] = "text_superpoint",
) -> torch.Tensor:
    """L_TP, text-superpoint loss (section 2.4; paper Eq. 2-3).

    Args:
        k: (R, D) superpoint embeddings.
        text_emb: (T, D) text embeddings of the vocabulary only (a void row must already be removed,
            see ``TextEmbeddingTable.vocabulary_rows``); L2-normalised here, as the official loader does.
        y: (R,) text index of each superpoint's mask.
        same_category: (T, T) 0/1 same-category matrix (``ClassDictionary.same_category_matrix``).
        form: ``official`` or ``paper`` (below).

    ``official`` -- soft-target cross-entropy over the fixed T texts:
        logits = k T^T / tau, loss = mean_r sum_t -target(r, t) log softmax_t(logits[r]),
        target from :func:`text_soft_targets`. ``k`` is used as given (not renormalised).

    ``paper`` -- our reading of Eq. 2-3, implemented literally. For superpoint i with text t_i:
        c_ij = <f^t_{t_i}, f^p_j> (cosine: k rows are L2-normalised here, the paper's <.> is cosine),
        pos_i = c_ii / tau,
        neg_ij = (1 - alpha_ij) c_ij / tau for every superpoint j of the batch with t_j != t_i,
        alpha_ij = c_ij if t_i and t_j are in the same category, else 0 (Eq. 3 as printed:
            ``alpha_ij = <f_i^t, f_j^p>``). With ``paper_alpha="text_text"`` alpha_ij is instead the
            text-text cosine <f^t_{t_i}, f^t_{t_j}>, the reading suggested by the paper's prose
            ("the text feature's cosine similarity ... weighted for other texts in the same class").
        L_i = -pos_i + log(exp(pos_i) + sum_j exp(neg_ij)), loss = mean_i L_i.
        So the negatives are the *other superpoints of the batch* (not the 175 texts), superpoints with the
        same text as i are excluded from the denominator (the sum is over t_j != t_i), and same-category
        superpoints are "semi-positive": their logit is shrunk by (1 - alpha). alpha is not detached
        (the paper does not say it is).
    """
    if k.dim() != 2 or text_emb.dim() != 2 or k.shape[1] != text_emb.shape[1]:
        raise ValueError(f"k (R, D) and text_emb (T, D) must share D, got {tuple(k.shape)}, {tuple(text_emb.shape)}")
    n_text = text_emb.shape[0]
    if same_category.shape != (n_text, n_text):
        raise ValueError(f"same_category must be ({n_text}, {n_text}), got {tuple(same_category.shape)}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_text):
        raise ValueError(f"text labels must be in 0..{n_text - 1}")
    if form == "official":
        t = F.normalize(text_emb.to(k.dtype), dim=1)
        logits = k @ t.t() / tau
        target = text_soft_targets(text_emb, y, same_category, target_weight, target_power).to(k.dtype)
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if form != "paper":
        raise ValueError(f"form must be 'official' or 'paper', got {form!r}")
    t = F.normalize(text_emb.to(k.dtype), dim=1)
    kn = F.normalize(k, dim=1)
    ft = t[y]  # (R, D) text feature of each superpoint's label
    c = ft @ kn.t()  # c[i, j] = <f^t_{t_i}, f^p_j>
    same_cat = same_category.to(k.dtype)[y][:, y]  # (R, R) same category of t_i and t_j
    if paper_alpha == "text_superpoint":
        alpha = c * same_cat
    elif paper_alpha == "text_text":
        alpha = (ft @ ft.t()) * same_cat
    else:
        raise ValueError(f"paper_alpha must be 'text_superpoint' or 'text_text', got {paper_alpha!r}")
    neg = (1.0 - alpha) * c / tau
    neg = neg.masked_fill(y[:, None] == y[None, :], float("-inf"))
    pos = torch.diagonal(c) / tau
    all_logits = torch.cat([pos[:, None], neg], dim=1)
    return (torch.logsumexp(all_logits, dim=1) - pos).mean()


class TMPLoss(NamedTuple):
    """Total TMP loss and its two terms (paper Eq. 4)."""

    total: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor


def tmp_loss(
    k: torch.Tensor,
    q: torch.Tensor,
    y: torch.Tensor,
    text_emb: torch.Tensor,
    same_category: torch.Tensor,
    *,
    tau: float = OFFICIAL_TAU,
    alpha_image: float = 0.5,
    alpha_text: float = 0.5,
    nce_direction: Literal["official", "paper"] = "official",
    text_form: Literal["official", "paper"] = "official",
) -> TMPLoss:
    """L = alpha_image * L_IP + alpha_text * L_TP (Eq. 4; official 0.5 / 0.5), computed on the local batch."""
    l_ip = superpixel_superpoint_nce(k, q, tau, nce_direction)
    l_tp = text_superpoint_loss(k, text_emb, y, same_category, tau, text_form)
    return TMPLoss(alpha_image * l_ip + alpha_text * l_tp, l_ip, l_tp)
