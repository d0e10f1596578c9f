"""Class balance of a pairing between splits: how many camera-visible points of each class each split
holds, and how often the pseudo-labels get them right.

A distilled network can only learn a class from the training split's pseudo-labels. When a class is
rare in train (or mostly mislabelled there: bus as truck) but common in val, the network cannot beat
the pseudo-labels on it however long it trains; this table shows that before any training is spent.

Per split (keyframes of a split file; keyframes in no split count as "other"), over points with a
pseudo-label (``pseudo > 0``, i.e. seen by a camera with a teacher label) and a ground-truth label
(``labels > 0``): the confusion matrix H[gt, pseudo] of the pairing shards (docs/method.md "Evaluation"
conventions for the per-class IoU; section 4 for how the pseudo-labels are made).
"""

from __future__ import annotations

import numpy as np

from afov_ray.datasets.splits import read_split_file
from afov_ray.errors import DataError
from afov_ray.eval.metrics import confusion_matrix, iou_per_class
from afov_ray.storage import uri as suri

COLUMNS = ("sample_token", "labels", "pseudo")


def pairing_confusions(pairing_uri: str, split_file: str, splits: tuple[str, ...] = ("train", "val"),
                       num_classes: int = 17) -> dict[str, np.ndarray]:
    """{split: H[gt, pseudo] (C, C) int64} over every ``*.parquet`` shard under ``pairing_uri``; a keyframe
    belongs to the first of ``splits`` that lists it, or to "other". A split with no keyframe is absent.

    Raises DataError naming the shard and sample on a malformed row, FileNotFoundError when there is no
    shard at all.
    """
    import pyarrow.parquet as pq

    table = read_split_file(split_file)
    unknown = [s for s in splits if s not in table]
    if unknown:
        raise DataError(str(split_file), f"no split(s) {unknown}; the file has {sorted(table)}")
    owner: dict[str, str] = {}
    for name in splits:
        for token in table[name].keyframes:
            owner.setdefault(token, name)
    names = [n for n in suri.listdir(pairing_uri) if n.endswith(".parquet")]
    if not names:
        raise FileNotFoundError(f"no pairing shards (*.parquet) in {pairing_uri}")
    out: dict[str, np.ndarray] = {}
    for n in sorted(names):
        shard = suri.join(pairing_uri, n)
        fs, path = suri.resolve(shard)
        try:
            rows = pq.read_table(path, filesystem=fs, columns=list(COLUMNS)).to_pylist()
        except (OSError, ValueError, KeyError) as e:
            raise DataError(shard, f"cannot read pairing columns {COLUMNS}: {e}") from None
        for r in rows:
            item = f"{shard}/{r['sample_token']}"
            gt = np.asarray(r["labels"], np.int64)
            ps = np.asarray(r["pseudo"], np.int64)
            if gt.shape != ps.shape:
                raise DataError(item, f"{len(ps)} pseudo-labels for {len(gt)} ground-truth labels")
            m = ps > 0
            H = confusion_matrix(gt[m], ps[m], num_classes, scan=item)
            H[0, :] = 0                                   # unlabelled ground truth does not count
            split = owner.get(r["sample_token"], "other")
            out[split] = out.get(split, 0) + H
    return out


def balance_rows(mats: dict[str, np.ndarray], class_names: list[str], splits: tuple[str, ...] = ("train", "val")
                 ) -> list[dict]:
    """One dict per class with ground truth in any of ``splits``: points, pseudo-label recall and IoU per
    split, and the class the pseudo-labels most often put instead."""

    rows = []
    present = [s for s in splits if s in mats]
    iou = {s: iou_per_class(mats[s], empty_union="nan") for s in present}
    for c in range(1, len(class_names)):
        row = {"class": class_names[c]}
        for s in present:
            H, n = mats[s], int(mats[s][c].sum())
            wrong = H[c].copy()
            wrong[c] = 0
            top = int(np.argmax(wrong))
            row[s] = {"points": n, "recall": float(H[c, c] / n) if n else float("nan"),
                      "iou": float(iou[s][c]),
                      "top_confusion": class_names[top] if wrong[top] > 0 else None,
                      "top_confusion_points": int(wrong[top])}
        if any(row[s]["points"] for s in present):
            rows.append(row)
    return rows


def markdown(rows: list[dict], splits: tuple[str, ...] = ("train", "val")) -> list[str]:
    """Markdown lines: class | per split: points, pseudo recall, most frequent wrong pseudo-label."""
    present = [s for s in splits if rows and s in rows[0]]
    head = "| class | " + " | ".join(f"{s} points | {s} pseudo recall | {s} most often labelled"
                                    for s in present) + " |"
    out = [head, "|---|" + "---:|---:|---|" * len(present)]
    for r in rows:
        cells = []
        for s in present:
            d = r[s]
            rec = "-" if d["points"] == 0 else f"{100 * d['recall']:.0f}%"
            conf = f"{d['top_confusion']} ({d['top_confusion_points']})" if d["top_confusion"] else "-"
            cells.append(f"{d['points']} | {rec} | {conf}")
        out.append(f"| {r['class']} | " + " | ".join(cells) + " |")
    return out
