"""inspect: statistics and sanity pictures of prepared sweep shards.

``dataset_stats`` reads only the light columns (scene, num_points, labels) of ``<out>/sweeps``;
``inspect_sweeps`` also draws, for a few keyframes, the LiDAR points projected onto each camera
image coloured by depth (a check of the calibration chain, docs/method.md "Projection") and a
bird's-eye view coloured by label.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from afov_ray.config import option
from afov_ray.datasets import labels
from afov_ray.datasets.sweeps import table_to_keyframes
from afov_ray.datasets.types import Keyframe
from afov_ray.errors import DataError
from afov_ray.geometry.projection import project_points as _project
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import atomic_write_bytes
from afov_ray.viz import plots


def _dataset(sweeps_uri: str):
    """A pyarrow dataset over the shards (``_``/``.``-prefixed side files and temp objects skipped)."""
    import pyarrow.dataset as pads

    fs, path = U.resolve(sweeps_uri)
    return pads.dataset(path, filesystem=fs, format="parquet", ignore_prefixes=[".", "_"])


def class_names(dataset: str) -> list[str] | None:
    """Evaluation class names (index = label id) from ``afov_ray.datasets.labels``."""

    return {"nuscenes": list(labels.NUSCENES_EVAL_NAMES),
            "semantickitti": list(labels.KITTI_EVAL_NAMES)}.get(dataset)


def dataset_stats(sweeps_uri: str) -> dict[str, Any]:
    """Keyframes, scenes, points per sweep (mean/min/max) and the label histogram of a sweeps folder.

    The histogram is over ``labels`` (evaluation ids); ``label_source`` says "raw_labels" when only
    raw labels exist and "none" when the shards have no labels at all.
    """
    import pyarrow.compute as pc

    table = _dataset(sweeps_uri).to_table(columns=["dataset", "scene", "num_points", "labels", "raw_labels"])
    n = table.num_rows
    stats: dict[str, Any] = {"sweeps_uri": sweeps_uri, "keyframes": n}
    if n == 0:
        stats.update(scenes=0, datasets=[], points={}, label_source="none", label_histogram={})
        return stats
    npts = table.column("num_points").to_numpy()
    stats["datasets"] = sorted(set(table.column("dataset").to_pylist()))
    stats["scenes"] = len(set(table.column("scene").to_pylist()))
    stats["points"] = {"mean": float(npts.mean()), "min": int(npts.min()), "max": int(npts.max()),
                       "total": int(npts.sum())}
    source = "none"
    hist: dict[int, int] = {}
    for col in ("labels", "raw_labels"):
        column = table.column(col)
        if column.null_count < n:
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            counts = np.bincount(values.astype(np.int64)) if values.size else np.zeros(0, np.int64)
            hist = {int(i): int(c) for i, c in enumerate(counts) if c}
            source = col
            stats["labelled_keyframes"] = int(n - column.null_count)
            break
    stats["label_source"] = source
    stats["label_histogram"] = hist
    names = class_names(stats["datasets"][0]) if source == "labels" and len(stats["datasets"]) == 1 else None
    stats["class_names"] = names
    errors_uri = U.join(sweeps_uri, "_errors.jsonl")
    if U.exists(errors_uri):
        stats["errors"] = sum(1 for line in U.read_bytes(errors_uri).splitlines() if line.strip())
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable report of ``dataset_stats``."""
    lines = [f"sweeps: {stats['sweeps_uri']}",
             f"keyframes: {stats['keyframes']}   scenes: {stats.get('scenes', 0)}   "
             f"datasets: {', '.join(stats.get('datasets', []))}"]
    if stats.get("points"):
        p = stats["points"]
        lines.append(f"points per sweep: mean {p['mean']:.1f}  min {p['min']}  max {p['max']}  total {p['total']}")
    if "errors" in stats:
        lines.append(f"skipped / failed items (_errors.jsonl): {stats['errors']}")
    hist = stats.get("label_histogram") or {}
    if hist:
        total = sum(hist.values())
        names = stats.get("class_names")
        lines.append(f"label histogram ({stats['label_source']}):")
        for k in sorted(hist):
            name = names[k] if names and k < len(names) else str(k)
            lines.append(f"  {k:>5} {name:<22} {hist[k]:>12}  {100.0 * hist[k] / total:6.2f}%")
    else:
        lines.append("labels: none")
    return "\n".join(lines)


def project_points(
    points_xyz: np.ndarray, K: np.ndarray, lidar_to_cam: np.ndarray, width: int, height: int,
    min_depth: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(uv (M, 2), depth (M,), mask (N,) bool)`` of the points that land in the image, through
    ``afov_ray.geometry.projection.project_points`` (official bounds)."""

    pr = _project(np.asarray(points_xyz)[:, :3], lidar_to_cam, K, width, height, min_depth=min_depth)
    mask = np.zeros(len(points_xyz), dtype=bool)
    mask[pr.point_idx] = True
    return pr.uv, pr.depth, mask


def _load_image(dataroot: str | None, rel_path: str, width: int, height: int) -> tuple[np.ndarray, bool]:
    if dataroot:
        path = U.join(dataroot, rel_path)
        if U.exists(path):
            from PIL import Image

            return np.asarray(Image.open(io.BytesIO(U.read_bytes(path))).convert("RGB")), True
    return np.full((height, width, 3), 128, dtype=np.uint8), False


def plot_projection(kf: Keyframe, dataroot: str | None, out_dir: str) -> list[str]:
    """One PNG per camera: the image (grey if not found) with the projected points coloured by depth."""
    written = []
    for cam in kf.cameras:
        img, found = _load_image(dataroot, cam.image_path, cam.width, cam.height)
        uv, depth, _ = project_points(kf.points, cam.K, cam.lidar_to_cam, cam.width, cam.height)
        written.append(plots.plot_depth_overlay(
            img, uv, depth, U.join(out_dir, f"{_safe(kf.sample_token)}_{cam.channel}.png"),
            f"{kf.sample_token} {cam.channel}: {len(depth)} points" + ("" if found else " (image missing)")))
    return written


def plot_bev(kf: Keyframe, out_uri: str, names: Sequence[str] | None = None, extent: float = 50.0) -> str:
    """Bird's-eye view of one sweep coloured by label (by height if unlabelled)."""
    return plots.plot_labels_bev(kf.points[:, :3], kf.labels, out_uri, f"{kf.sample_token}: {kf.num_points} points",
                                 names, extent, dataset=kf.dataset)


def _safe(token: str) -> str:
    return token.replace("/", "_")


def inspect_sweeps(
    sweeps_uri: str, dataroot: str | None = None, out: str | None = None, num_keyframes: int = 1,
) -> dict[str, Any]:
    """Stats of a sweeps folder, plus (with ``out``) projection and BEV PNGs of the first keyframes.

    Returns the stats dict with ``figures`` (URIs of the PNGs written; ``stats.json`` too).
    """

    stats = dataset_stats(sweeps_uri)
    stats["figures"] = []
    if out and num_keyframes > 0 and stats["keyframes"]:
        table = _dataset(sweeps_uri).head(num_keyframes)
        for kf in table_to_keyframes(table):
            stats["figures"] += plot_projection(kf, dataroot, out)
            stats["figures"].append(plot_bev(kf, U.join(out, f"{_safe(kf.sample_token)}_bev.png"),
                                             stats.get("class_names")))
        atomic_write_bytes(U.join(out, "stats.json"), json.dumps(stats, indent=2).encode())
    return stats


@dataclass
class InspectJob:
    sweeps: str = option("outputs/demo/sweeps", "sweeps folder URI written by prepare (<out>/sweeps), local or s3://")
    dataroot: str | None = option(None, "raw dataset root (local or s3://) holding the camera images named in the "
                                        "shards; without it the projections are drawn on grey canvases")
    out: str | None = option(None, "folder URI for the PNGs and stats.json (no figures without it)")
    num_keyframes: int = option(1, "how many keyframes to draw", min=0)
    json: bool = option(False, "print the stats as JSON instead of a table")


def inspect_job(cfg: InspectJob) -> int:
    """The body of ``jobs/inspect_data.py``."""

    if not U.listdir(cfg.sweeps):
        raise DataError(cfg.sweeps, "no sweep shards here: run jobs/prepare.py first (its out=... folder holds sweeps/)")
    stats = inspect_sweeps(cfg.sweeps, dataroot=cfg.dataroot, out=cfg.out, num_keyframes=cfg.num_keyframes)
    print(json.dumps(stats, indent=2) if cfg.json else format_stats(stats))
    for f in stats["figures"]:
        print("wrote", f)
    return 0
