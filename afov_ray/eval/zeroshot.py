"""Zero-shot segmentation and text queries from TMP features (docs/query.md).

TMP (paper, *Method › Tri-Modal Contrastive Pre-training (TMP)*) trains the network's 768-d, L2-normalised
per-voxel features to live in the 2D teacher's text-image space. The same features therefore answer text
queries, as the 3D features of OpenScene (Peng et al., CVPR 2023, arXiv 2211.15654) and CLIP2Scene (Chen et al.,
CVPR 2023, arXiv 2301.04926) do:

- **zero-shot labels**: each point takes the text of the class dictionary its feature is most similar to
  (cosine: features and texts L2-normalised), mapped text -> category -> evaluation class exactly as the
  pseudo-labels are (``ClassDictionary.text_to_eval``). Equivalently, the score of class c is the largest
  cosine over the texts of c (``class_scores``), and the label is the argmax over classes. Class 0 (the texts
  of ignored categories: stroller, animal, sky, ...) is never predicted unless asked (``suppress_class0``),
  like ``predict.suppress_class0`` for a segmentation head.
- **queries**: the score of a point for a prompt is the cosine of its feature with the prompt's embedding
  (``prompt_scores``); a mask is either ``score >= threshold`` or, without a threshold, "the prompt wins"
  (``winning_mask``): the prompt scores at least as high as every dictionary text of another category (the
  prompt's own categories are those of its nearest dictionary texts, ``prompt_categories``).
- **how well a query separates a class** (``separation``): the mean score of the class's points vs the other
  labelled points, and the ROC AUC (the chance that a random point of the class scores higher than a random
  other point; 0.5 = chance), with ties counted half (Mann-Whitney U).

Everything works on voxel features (V, D) or point features alike; the pipeline computes per voxel and copies
the result to the points through the voxelisation's inverse map.
"""

from __future__ import annotations

import numpy as np
import torch

from afov_ray.errors import DataError


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def prompt_scores(features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """(V, P) cosine similarity of each feature row with each prompt / text embedding (both normalised here)."""
    if features.shape[-1] != embeddings.shape[-1]:
        raise DataError("text embeddings", f"are {embeddings.shape[-1]}-d but the model's features are "
                                           f"{features.shape[-1]}-d (a TMP model of another teacher?)")
    return _unit(features) @ _unit(embeddings.to(features.device)).T


def first_occurrences(texts: np.ndarray | torch.Tensor) -> np.ndarray:
    """(T,) bool: the first of each group of identical text rows (the dictionary's duplicate texts, e.g.
    'scooter' = texts 28 and 74, have identical embeddings; a teacher's argmax always returns the first)."""
    rows = np.ascontiguousarray(torch.as_tensor(texts).detach().cpu().float().numpy())
    _, first = np.unique(rows, axis=0, return_index=True)
    keep = np.zeros(len(rows), bool)
    keep[first] = True
    return keep


def class_scores(features: torch.Tensor, texts: torch.Tensor, text_to_eval: np.ndarray | torch.Tensor,
                 num_classes: int, keep: np.ndarray | None = None) -> torch.Tensor:
    """(V, C): per evaluation class, the largest cosine over the dictionary texts mapped to it (-inf for a
    class without texts). Its argmax over classes is the class of the most similar text; a later duplicate
    of a text (``first_occurrences``, computed when ``keep`` is None) takes no part, as in a teacher's argmax."""
    t2e = torch.as_tensor(np.asarray(text_to_eval), dtype=torch.long, device=features.device)
    if t2e.numel() != texts.shape[0]:
        raise DataError("text_to_eval", f"{t2e.numel()} entries for {texts.shape[0]} text embeddings")
    if t2e.numel() and int(t2e.max()) >= num_classes:
        raise DataError("text_to_eval", f"class id {int(t2e.max())} >= num_classes {num_classes}")
    keep_t = torch.as_tensor(first_occurrences(texts) if keep is None else np.asarray(keep, bool),
                             device=features.device)
    sim = prompt_scores(features, texts)[:, keep_t]                               # (V, T')
    t2e = t2e[keep_t]
    out = torch.full((sim.shape[0], num_classes), float("-inf"), dtype=sim.dtype, device=sim.device)
    return out.scatter_reduce(1, t2e.expand(sim.shape[0], -1), sim, reduce="amax", include_self=True)


def zeroshot_labels(features: torch.Tensor, texts: torch.Tensor, text_to_eval: np.ndarray | torch.Tensor,
                    num_classes: int, suppress_class0: bool = True) -> torch.Tensor:
    """(V,) int64 evaluation class of the most similar dictionary text; with ``suppress_class0`` only the
    texts of classes 1..C-1 compete (class 0 is never predicted)."""
    s = class_scores(features, texts, text_to_eval, num_classes)
    if suppress_class0:
        s[:, 0] = float("-inf")
    return s.argmax(1)


class ZeroShotSegmenter(torch.nn.Module):
    """A TMP feature network + the dictionary's text table, used like a segmentation network: the forward
    returns the per-class scores of ``class_scores`` (the "logits" of zero-shot segmentation)."""

    def __init__(self, backbone: torch.nn.Module, texts: np.ndarray | torch.Tensor,
                 text_to_eval: np.ndarray, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("texts", _unit(torch.as_tensor(np.asarray(texts, np.float32))))
        self.register_buffer("text_to_eval", torch.as_tensor(np.asarray(text_to_eval, np.int64)))
        self.keep = first_occurrences(texts)
        self.num_classes = int(num_classes)

    def forward(self, coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return class_scores(self.backbone(coords, feats), self.texts, self.text_to_eval, self.num_classes,
                            self.keep)


def prompt_categories(prompts: np.ndarray, texts: np.ndarray, text_to_category: np.ndarray,
                      tol: float = 1e-4) -> list[set[int]]:
    """Per prompt embedding, the categories of its nearest dictionary texts (every text within ``tol`` of
    the best cosine: duplicates such as 'scooter' give two categories)."""
    sim = _unit(torch.as_tensor(np.asarray(prompts, np.float32))) @ _unit(torch.as_tensor(np.asarray(texts, np.float32))).T
    out = []
    for row in sim:
        near = torch.nonzero(row >= row.max() - tol).flatten().numpy()
        out.append({int(c) for c in np.asarray(text_to_category)[near]})
    return out


def winning_mask(scores: torch.Tensor, text_scores: torch.Tensor, text_to_category: np.ndarray,
                 own: list[set[int]]) -> torch.Tensor:
    """(V, P) bool: prompt p's score is >= every dictionary text's score outside the categories ``own[p]``."""
    cats = np.asarray(text_to_category)
    out = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for p, mine in enumerate(own):
        rivals = torch.as_tensor(~np.isin(cats, sorted(mine)), device=scores.device)
        best = text_scores[:, rivals].max(1).values if bool(rivals.any()) else \
            torch.full_like(scores[:, p], float("-inf"))
        out[:, p] = scores[:, p] >= best
    return out


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U / (n+ n-), ties count 1/2);
    NaN when one side is empty."""
    s = np.asarray(scores, np.float64).reshape(-1)
    pos = np.asarray(positive, bool).reshape(-1)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def separation(scores: np.ndarray, gt: np.ndarray, class_id: int, ignore_index: int = 0) -> dict:
    """How well a prompt's scores pick out ``class_id`` among the labelled points (GT != ignore):
    {"mean_in", "mean_out", "auc", "n_in", "n_out"}."""
    s = np.asarray(scores, np.float64).reshape(-1)
    g = np.asarray(gt, np.int64).reshape(-1)
    if len(s) != len(g):
        raise DataError("scores", f"{len(s)} scores for {len(g)} labels")
    keep = g != ignore_index
    s, pos = s[keep], g[keep] == class_id
    return {"mean_in": float(s[pos].mean()) if pos.any() else float("nan"),
            "mean_out": float(s[~pos].mean()) if (~pos).any() else float("nan"),
            "auc": roc_auc(s, pos), "n_in": int(pos.sum()), "n_out": int((~pos).sum())}


SCORE_BINS = 400          # histogram bins over the cosine range [-1, 1] (0.005 wide)


def score_histogram(scores: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """(bins,) int64 counts of cosine scores over [-1, 1] (clipped); mergeable across scans and scenes."""
    s = np.clip(np.asarray(scores, np.float64).reshape(-1), -1.0, 1.0)
    idx = np.minimum(((s + 1.0) * (bins / 2.0)).astype(np.int64), bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def auc_from_histograms(h_pos: np.ndarray, h_neg: np.ndarray) -> float:
    """ROC AUC from binned scores (``score_histogram``): pairs in the same bin count 1/2, so it differs from
    the exact ``roc_auc`` by at most the share of pairs falling in one bin. NaN when one side is empty."""
    p, n = np.asarray(h_pos, np.float64), np.asarray(h_neg, np.float64)
    if p.sum() == 0 or n.sum() == 0:
        return float("nan")
    below = np.cumsum(n) - n
    return float((p * (below + 0.5 * n)).sum() / (p.sum() * n.sum()))
