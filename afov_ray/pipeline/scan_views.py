"""Views of single scans for people: 3D viewer pages + .ply files and camera overlays, from the rows of
prediction shards (``jobs/evaluate.py``) or query shards (``jobs/query.py``).

- ``write_views(rows, out_dir, layers_of, ...)``: per scan, one self-contained HTML page
  (``afov_ray.viz.viewer``, docs/viewer.md) with the given layers, one binary ``.ply`` with the same values as
  properties (``afov_ray.viz.ply``), then an ``index.html`` linking the pages. ``out_dir`` is a local folder.
- ``prediction_layers``: prediction, AFI, ground truth, error (prediction vs ground truth), pseudo-labels, each
  when the row has it.
- ``camera_view``: a scan's points projected into one camera of its keyframe (calibration from the sweep shard,
  image from the dataroot), for the overlay plots.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from afov_ray.datasets.sweeps import table_to_keyframes
from afov_ray.geometry.projection import Projection, project_points
from afov_ray.log import get_logger
from afov_ray.storage import shards as S
from afov_ray.storage import uri as U
from afov_ray.viz.palette import class_colors
from afov_ray.viz.ply import write_ply
from afov_ray.viz.viewer import LayerSpec, ViewerPage, write_index_html, write_scan_html

log = get_logger(__name__)

INDEX_NAME = "index.html"


def scan_tag(row: dict) -> str:
    """A file-name-safe name of one scan: ``<scene>_<first 8 of the sample token>``."""
    return U.check_component(f"{row['scene']}_{str(row['sample_token'])[:8]}", "scan name")


def row_xyz(row: dict) -> np.ndarray:
    return np.asarray(row["xyz"], np.float32).reshape(-1, 3)


def _labels(row: dict, key: str, n: int) -> np.ndarray | None:
    v = row.get(key)
    if v is None or len(v) != n:
        return None
    return np.asarray(v, np.int64)


def prediction_layers(row: dict) -> dict[str, LayerSpec]:
    """Viewer layers of a prediction row: prediction, AFI, ground truth, error, pseudo-labels (those present)."""
    n = int(row["num_points"])
    pred, afi = _labels(row, "pred", n), _labels(row, "pred_afi", n)
    gt, pseudo = _labels(row, "gt", n), _labels(row, "pseudo", n)
    layers: dict[str, LayerSpec] = {}
    if pred is not None:
        layers["prediction"] = LayerSpec.categorical(pred)
    if afi is not None:
        layers["AFI"] = LayerSpec.categorical(afi)
    if gt is not None:
        layers["ground truth"] = LayerSpec.categorical(gt)
        if pred is not None:
            layers["error"] = LayerSpec.error(pred, gt)
    if pseudo is not None:
        layers["pseudo-labels"] = LayerSpec.categorical(pseudo)
    return layers


def prediction_scalars(row: dict) -> dict[str, np.ndarray]:
    """The per-point values of a prediction row stored in its .ply (label columns and the visible mask)."""
    n = int(row["num_points"])
    out = {k: v for k in ("pred", "pred_afi", "gt", "pseudo") if (v := _labels(row, k, n)) is not None}
    if row.get("visible") is not None and len(row["visible"]) == n:
        out["visible"] = np.asarray(row["visible"], bool)
    return out


@dataclass
class Views:
    """What ``write_views`` wrote."""

    pages: list[ViewerPage]
    plys: list[str]
    index: str | None


def write_views(rows: Iterable[dict], out_dir: str | Path, max_scans: int,
                layers_of: Callable[[dict], dict[str, LayerSpec]],
                ply_of: Callable[[dict], tuple[np.ndarray, dict[str, np.ndarray]]], *,
                class_names: Sequence[str] | None = None, dataset: str | None = None,
                title: str = "AFOV scans", comments: Sequence[str] = ()) -> Views:
    """Viewer page + .ply for each of the first ``max_scans`` rows (scans with no layer are passed over),
    and an index page. ``ply_of(row)`` gives the .ply colours (N, 3) and its scalar properties."""
    out = Path(out_dir)
    pages, plys = [], []
    palette = None if class_names is None else class_colors(dataset, len(class_names))
    for row in rows:
        if len(pages) >= max_scans:
            break
        xyz = row_xyz(row)
        if len(xyz) != int(row["num_points"]):
            continue    # a scan whose columns do not fit (evaluate names it among its errors)
        try:
            tag = scan_tag(row)
            layers = layers_of(row)
            if not layers:
                continue
            page = write_scan_html(out / f"{tag}.html", xyz, layers, title=f"{row['scene']} / {row['sample_token']}",
                                   dataset=dataset, class_names=class_names, palette=palette)
            colors, scalars = ply_of(row)
            plys.append(write_ply(out / f"{tag}.ply", xyz, colors=colors, scalars=scalars, comments=list(comments)))
        except ValueError as e:     # labels outside the class list, lengths that do not match: not drawn
            log.warning("viewer: %s/%s not drawn: %s", row["scene"], row["sample_token"], e)
            continue
        pages.append(page)
    index = write_index_html(out / INDEX_NAME, pages, title=title) if pages else None
    return Views(pages, plys, index)


def camera_view(row: dict, sweeps: str, dataroot: str, camera: str) -> tuple[np.ndarray, Projection, str] | None:
    """(image (H, W, 3) uint8, projection of the row's points, camera channel) for ``camera`` of the row's
    keyframe (its first camera when it has no such one); None when the scan, camera or image is not found."""
    from PIL import Image

    shard = U.join(sweeps, f"{U.check_component(row['scene'], 'scene')}.parquet")
    if not U.exists(shard):
        return None
    table = S.read_table(S.Shard(row["scene"], shard), verify=False)
    kfs = [k for k in table_to_keyframes(table) if k.sample_token == row["sample_token"]]
    if not kfs:
        return None
    cams = [c for c in kfs[0].cameras if c.channel == camera] or kfs[0].cameras[:1]
    if not cams:
        return None
    cam = cams[0]
    try:
        image = np.asarray(Image.open(io.BytesIO(U.read_bytes(U.join(dataroot, cam.image_path)))).convert("RGB"))
    except (OSError, FileNotFoundError):
        return None
    proj = project_points(row_xyz(row), cam.lidar_to_cam, cam.K, cam.width, cam.height)
    return image, proj, cam.channel
