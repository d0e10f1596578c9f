"""Zero-shot labels and query scores from features in a text space (afov_ray.eval.zeroshot), on hand-built
features and texts with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afov_ray.eval.zeroshot import (
    ZeroShotSegmenter,
    class_scores,
    first_occurrences,
    prompt_categories,
    prompt_scores,
    roc_auc,
    separation,
    winning_mask,
    zeroshot_labels,
)
from afov_ray.teachers.dictionary import ClassDictionary


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def space():
    """The nuScenes dictionary's 175 texts as random category directions + small per-text offsets (like the
    simulated teacher), and points whose features are a text's embedding + noise."""
    d = ClassDictionary.load("nuscenes")
    rng = np.random.default_rng(0)
    cat_dir = rng.standard_normal((d.num_categories, 64))
    texts = _unit(cat_dir[d.text_to_category] + 0.3 * rng.standard_normal((d.num_texts, 64)))
    texts = texts[[d.texts.index(t) for t in d.texts]]     # identical texts, identical rows (a real text encoder)
    which = rng.integers(0, d.num_texts, 4000)                       # each point "is" one text
    feats = texts[which] + 0.05 * rng.standard_normal((len(which), 64))
    return d, texts.astype(np.float32), feats.astype(np.float32), which


def test_label_is_the_class_of_the_most_similar_text(space):
    d, texts, feats, which = space
    f, t = torch.from_numpy(feats), torch.from_numpy(texts)
    got = zeroshot_labels(f, t, d.text_to_eval, d.num_eval_classes, suppress_class0=False).numpy()
    brute = d.text_to_eval[np.argmax(_unit(feats) @ texts.T, axis=1)]
    assert np.array_equal(got, brute)
    # features built from a text are labelled with that text's class (pseudo-label mapping)
    assert (got == d.text_to_eval[which]).mean() > 0.97
    # scaling a feature changes nothing (cosine)
    assert np.array_equal(zeroshot_labels(3 * f, t, d.text_to_eval, d.num_eval_classes, False).numpy(), got)


def test_class0_is_never_predicted_unless_asked(space):
    d, texts, feats, _ = space
    f, t = torch.from_numpy(feats), torch.from_numpy(texts)
    free = zeroshot_labels(f, t, d.text_to_eval, d.num_eval_classes, suppress_class0=False).numpy()
    kept = zeroshot_labels(f, t, d.text_to_eval, d.num_eval_classes, suppress_class0=True).numpy()
    assert (free == 0).sum() > 100 and (kept == 0).sum() == 0
    # suppression = argmax over the texts of classes 1..16 only
    allowed = np.flatnonzero(d.text_to_eval != 0)
    brute = d.text_to_eval[allowed[np.argmax(_unit(feats) @ texts[allowed].T, axis=1)]]
    assert np.array_equal(kept, brute)
    assert np.array_equal(kept[free != 0], free[free != 0])


def test_class_scores_are_the_best_text_per_class(space):
    d, texts, feats, _ = space
    s = class_scores(torch.from_numpy(feats[:50]), torch.from_numpy(texts), d.text_to_eval, d.num_eval_classes)
    sim = _unit(feats[:50]) @ texts.T
    first = first_occurrences(texts)
    assert (~first).sum() == 2                                        # 'scooter' and 'pavilion' repeated
    for c in range(d.num_eval_classes):
        np.testing.assert_allclose(s[:, c].numpy(), sim[:, (d.text_to_eval == c) & first].max(1), atol=1e-5)
    # a class without texts scores -inf
    t2e = np.array([1, 1, 2])
    s2 = class_scores(torch.ones(2, 4), torch.eye(3, 4), t2e, 4)
    assert torch.isinf(s2[:, 0]).all() and torch.isinf(s2[:, 3]).all()


def test_segmenter_wraps_a_feature_network(space):
    d, texts, feats, _ = space

    class Fixed(torch.nn.Module):
        def forward(self, coords, x):
            return torch.from_numpy(feats[: len(coords)])

    m = ZeroShotSegmenter(Fixed(), texts, d.text_to_eval, d.num_eval_classes)
    out = m(torch.zeros(30, 4), torch.zeros(30, 1))
    assert out.shape == (30, d.num_eval_classes)
    assert torch.equal(out.argmax(1), zeroshot_labels(torch.from_numpy(feats[:30]), torch.from_numpy(texts),
                                                      d.text_to_eval, d.num_eval_classes, False))


def test_prompt_ranks_its_class_higher(space):
    """A query's scores separate the prompt's class from the rest: mean in-class > out-of-class, AUC ~ 1."""
    d, texts, feats, which = space
    gt = d.text_to_eval[which].astype(np.int64)
    car = d.texts.index("car")
    s = prompt_scores(torch.from_numpy(feats), torch.from_numpy(texts[[car]]))[:, 0].numpy()
    sep = separation(s, gt, class_id=4)
    assert sep["n_in"] > 0 and sep["mean_in"] > sep["mean_out"] + 0.3
    assert sep["auc"] > 0.95
    # an unrelated class's prompt does not pick out the cars
    road = d.texts.index("road")
    s2 = prompt_scores(torch.from_numpy(feats), torch.from_numpy(texts[[road]]))[:, 0].numpy()
    assert separation(s2, gt, class_id=4)["auc"] < 0.6


def test_roc_auc_matches_the_pair_count():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)          # many ties
    pos = rng.random(300) < 0.3
    p, n = s[pos], s[~pos]
    brute = ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (len(p) * len(n))
    assert roc_auc(s, pos) == pytest.approx(brute)
    assert roc_auc([1, 2, 3], [False, False, True]) == 1.0
    assert np.isnan(roc_auc([1, 2], [True, True]))


def test_winning_mask_uses_other_categories_as_rivals(space):
    d, texts, feats, which = space
    car = d.texts.index("car")
    own = prompt_categories(texts[[car]], texts, d.text_to_category)
    assert own == [{0}]
    dup = d.texts.index("scooter")                        # texts 28 and 74: two categories
    assert prompt_categories(texts[[dup]], texts, d.text_to_category) == [{5, 16}]
    f, t = torch.from_numpy(feats), torch.from_numpy(texts)
    s = prompt_scores(f, t[[car]])
    m = winning_mask(s, prompt_scores(f, t), d.text_to_category, own)[:, 0].numpy()
    is_car = d.text_to_category[which] == 0
    assert m[is_car].mean() > 0.9 and m[~is_car].mean() < 0.02
