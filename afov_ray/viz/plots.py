"""The product's figures (matplotlib, Agg backend; each function writes one PNG, local or s3://, and returns
its path), all with the one palette of ``afov_ray.viz.palette``.

- ``plot_confusion``: row-normalised confusion matrix heatmap (GT rows, prediction columns).
- ``plot_iou_bars``: per-class IoU bars, one bar per prediction source (raw / AFI / pseudo).
- ``plot_bev``: bird's-eye view of one scan: prediction | ground truth | error map.
- ``plot_camera``: predictions projected on a camera image.
- ``plot_bev_scores``: bird's-eye views of one scan coloured by per-point scores (one panel per text query), with
  a colour bar.
- ``plot_camera_scores``: per-point scores projected on a camera image (one panel per query), with a colour bar.
- ``plot_depth_overlay``: LiDAR points on a camera image coloured by depth (``jobs/inspect_data.py``).
- ``plot_labels_bev``: one sweep from above coloured by label (``jobs/inspect_data.py``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from afov_ray.storage.atomic import atomic_write_bytes
from afov_ray.viz.palette import class_colors, error_colors


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def class_palette(num_classes: int = 17) -> np.ndarray:
    """(C, 3) float RGB in [0, 1]: the product palette of ``afov_ray.viz.palette`` (17 ids: nuScenes,
    20: SemanticKITTI, else its fallback); class 0 light grey."""
    return class_colors(None, num_classes)


def _save(fig, path: str | Path) -> str:
    """Write the figure as PNG (a local path or an s3:// URI, atomically) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(str(path), buf.getvalue())
    return str(path)


def plot_confusion(H: np.ndarray, names: Sequence[str], path: str | Path, title: str = "",
                   ignore_index: int | None = 0) -> str:
    """Heatmap of H[gt, pred] normalised per GT row (the ignore row is dropped)."""
    plt = _plt()
    h = np.asarray(H, dtype=np.float64)
    rows = [c for c in range(h.shape[0]) if c != ignore_index]
    m = h[rows]
    m = m / np.maximum(m.sum(1, keepdims=True), 1.0)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(h.shape[1]), [names[c] for c in range(h.shape[1])], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [names[c] for c in rows], fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_iou_bars(ious: dict[str, Sequence[float]], names: Sequence[str], path: str | Path,
                  title: str = "", ignore_index: int | None = 0) -> str:
    """Grouped bars of per-class IoU (in %), one colour per source; legend shows the mIoU."""
    plt = _plt()
    classes = [c for c in range(len(names)) if c != ignore_index]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    k = max(len(ious), 1)
    width = 0.8 / k
    for i, (src, iou) in enumerate(ious.items()):
        vals = np.array([iou[c] for c in classes], dtype=np.float64) * 100.0
        ax.bar(np.arange(len(classes)) + (i - (k - 1) / 2) * width, np.nan_to_num(vals), width,
               label=f"{src} (mIoU {np.nanmean(vals):.1f})")
    ax.set_xticks(range(len(classes)), [names[c] for c in classes], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title or "per-class IoU")
    return _save(fig, path)


def plot_bev(xyz: np.ndarray, gt: np.ndarray, pred: np.ndarray, path: str | Path, title: str = "",
             num_classes: int = 17, extent: float | None = None) -> str:
    """Three BEV panels: prediction, ground truth (class colours) and error (green = correct,
    red = wrong, grey = GT ignore)."""
    plt = _plt()
    pal = class_palette(num_classes)
    xyz = np.asarray(xyz)
    gt = np.asarray(gt, np.int64)
    pred = np.asarray(pred, np.int64)
    err = np.where(gt == 0, 0, np.where(gt == pred, 1, 2))
    err_pal = error_colors()
    r = extent or (float(np.percentile(np.abs(xyz[:, :2]), 98)) if len(xyz) else 1.0)
    size = float(np.clip(20000.0 / max(len(xyz), 1), 0.3, 4.0))  # visible dots for sparse and dense scans
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    scored = gt > 0
    acc = float((gt[scored] == pred[scored]).mean()) if scored.any() else float("nan")
    for ax, colors, name in ((axes[0], pal[np.clip(pred, 0, num_classes - 1)], "prediction"),
                             (axes[1], pal[np.clip(gt, 0, num_classes - 1)], "ground truth"),
                             (axes[2], err_pal[err], f"error (accuracy {acc:.3f})")):
        ax.scatter(xyz[:, 0], xyz[:, 1], c=colors, s=size, linewidths=0)
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xlabel("x (m)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_camera(image: np.ndarray, uv: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                num_classes: int = 17) -> str:
    """Projected points (uv = column, row) coloured by class over the camera image."""
    plt = _plt()
    pal = class_palette(num_classes)
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(10, 10 * h / max(w, 1) + 0.5))
    ax.imshow(image)
    ax.scatter(uv[:, 0], uv[:, 1], c=pal[np.clip(np.asarray(labels, np.int64), 0, num_classes - 1)],
               s=12.0, linewidths=0, alpha=0.9)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    ax.set_title(title)
    return _save(fig, path)


def plot_depth_overlay(image: np.ndarray, uv: np.ndarray, depth: np.ndarray, path: str | Path, title: str = "") -> str:
    """LiDAR points projected onto a camera image, coloured by depth (a check of the calibration chain)."""
    plt = _plt()
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(10, 10 * h / max(w, 1) + 0.6))
    ax.imshow(image)
    vmax = max(float(np.percentile(depth, 99)) if len(depth) else 1.0, 1.0)
    sc = ax.scatter(uv[:, 0], uv[:, 1], c=depth, s=1.5, cmap="jet", vmin=0, vmax=vmax)
    fig.colorbar(sc, ax=ax, fraction=0.03, label="depth [m]")
    ax.set_title(title)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    return _save(fig, path)


def plot_labels_bev(xyz: np.ndarray, labels: np.ndarray | None, path: str | Path, title: str = "",
                    names: Sequence[str] | None = None, extent: float = 50.0, dataset: str | None = None) -> str:
    """Bird's-eye view (x forward up, y left) of one sweep coloured by label with the product palette (by height
    when unlabelled)."""
    from matplotlib.colors import ListedColormap

    plt = _plt()
    pts = np.asarray(xyz)
    fig, ax = plt.subplots(figsize=(8, 8))
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        nc = max(int(labels.max()) + 1 if labels.size else 1, len(names) if names else 0, 2)
        sc = ax.scatter(-pts[:, 1], pts[:, 0], c=labels, s=0.5, cmap=ListedColormap(class_colors(dataset, nc)),
                        vmin=-0.5, vmax=nc - 0.5)  # one colour per class id
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, ticks=range(nc))
        if names:
            cb.ax.set_yticklabels([names[i] if i < len(names) else str(i) for i in range(nc)], fontsize=6)
        cb.set_label("label")
    else:
        sc = ax.scatter(-pts[:, 1], pts[:, 0], c=pts[:, 2], s=0.5, cmap="viridis")
        fig.colorbar(sc, ax=ax, fraction=0.04, label="z [m]")
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("-y [m]")
    ax.set_ylabel("x [m]")
    ax.set_title(title)
    return _save(fig, path)


def _score_grid(n: int, cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return (n + cols - 1) // cols, cols


def plot_bev_scores(xyz: np.ndarray, scores: np.ndarray, names: Sequence[str], path: str | Path, title: str = "",
                    vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis", label: str = "score",
                    masks: np.ndarray | None = None, extent: float | None = None) -> str:
    """Bird's-eye views (x right, y up) of one scan, one panel per row of ``scores`` (P, N), coloured on one
    shared scale [vmin, vmax] with a colour bar; higher scores are drawn on top. ``masks`` (P, N) bool: the
    panel title gives each mask's point count and its outline is drawn in red."""
    plt = _plt()
    xyz = np.asarray(xyz)
    scores = np.atleast_2d(np.asarray(scores, np.float32))
    rows, cols = _score_grid(len(scores))
    r = extent or (float(np.percentile(np.abs(xyz[:, :2]), 98)) if len(xyz) else 1.0)
    size = float(np.clip(20000.0 / max(len(xyz), 1), 0.3, 4.0))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 5 * rows), squeeze=False)
    sc = None
    for i, ax in enumerate(axes.ravel()):
        if i >= len(scores):
            ax.axis("off")
            continue
        order = np.argsort(np.nan_to_num(scores[i], nan=-np.inf), kind="stable")
        sc = ax.scatter(xyz[order, 0], xyz[order, 1], c=scores[i][order], s=size, linewidths=0, cmap=cmap,
                        vmin=vmin, vmax=vmax)
        head = str(names[i])
        if masks is not None:
            m = np.asarray(masks[i], bool)
            ax.scatter(xyz[m, 0], xyz[m, 1], s=size * 3, facecolors="none", edgecolors="red", linewidths=0.25,
                       alpha=0.6)
            head += f" (mask: {int(m.sum())} points)"
        ax.set_title(head, fontsize=10)
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.03, label=label)
    fig.suptitle(title)
    return _save(fig, path)


def plot_camera_scores(image: np.ndarray, uv: np.ndarray, scores: np.ndarray, names: Sequence[str],
                       path: str | Path, title: str = "", vmin: float = 0.0, vmax: float = 1.0,
                       cmap: str = "viridis", label: str = "score") -> str:
    """Projected points (uv = column, row) coloured by their scores over the camera image, one panel per
    row of ``scores`` (P, M), one shared colour scale with a colour bar."""
    plt = _plt()
    scores = np.atleast_2d(np.asarray(scores, np.float32))
    h, w = image.shape[:2]
    rows, cols = _score_grid(len(scores), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, (6 * h / max(w, 1) + 0.6) * rows), squeeze=False)
    sc = None
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= len(scores):
            continue
        ax.imshow(image)
        order = np.argsort(np.nan_to_num(scores[i], nan=-np.inf), kind="stable")
        sc = ax.scatter(uv[order, 0], uv[order, 1], c=scores[i][order], s=10.0, linewidths=0, alpha=0.9,
                        cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(str(names[i]), fontsize=10)
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.03, label=label)
    fig.suptitle(title)
    return _save(fig, path)
