"""The oracle teacher: teacher masks made from a labelled dataset's own ground truth.

An upper-bound ablation, and the way to run the whole pipeline on labelled real data (nuScenes-lidarseg,
SemanticKITTI) without any 2D weights. Per camera image:

1. the labelled points are projected into the camera with the pairing's projection (float64 chain,
   depth > ``min_depth``, pixel = (round(v), round(u)); docs/method.md#projection);
2. every projected point paints the pixels within ``radius_px`` of its own pixel; a pixel takes the class
   of the **nearest projected point in the image** (squared pixel distance), ties going to the nearer depth.
   A point therefore keeps its own pixel unless a nearer point lands on the very same pixel, so the pairing
   pass gets back the ground truth on (nearly) every camera-visible point;
3. each class becomes the **first text of its dictionary category** (the category whose raw id is the
   point's raw class; a raw class the dictionary has no category for, e.g. SemanticKITTI's moving classes,
   takes the first category of its evaluation class; classes mapping to nothing, e.g. lidarseg noise, paint
   0 = no mask);
4. one "semantic" mask per text present (ids ascending in text order, as SAN / CAT-Seg), 0 where no point
   paints; the mask feature is the text's embedding.

Text embeddings: synthetic (seeded; same-category texts close, ``afov_ray.teachers.simulated``) unless
``text_embedding`` names a real teacher's ``text_embedding.pt``. The run record says it is an oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afov_ray.config import ConfigError, option
from afov_ray.datasets.labels import kitti_lut, nuscenes_lut
from afov_ray.datasets.types import CameraFrame, Keyframe
from afov_ray.errors import DataError
from afov_ray.geometry.projection import project_points
from afov_ray.teachers.dictionary import ClassDictionary

# built-in dictionaries and the dataset whose raw classes their raw ids are
DICTIONARY_DATASET = {"nuscenes": "nuscenes", "kitti": "semantickitti"}
RAW_TO_EVAL = {"nuscenes": nuscenes_lut, "semantickitti": kitti_lut}


@dataclass
class OracleTeacherConfig:
    name: str = option("oracle", "teacher run name (the run id derives from it and the settings)")
    radius_px: int = option(3, "a labelled point paints the pixels within this radius; a pixel takes the class "
                               "of the nearest projected point (ties: the nearer depth); 0: its own pixel only",
                            min=0, max=50)
    min_depth: float = option(1.0, "points closer than this (camera depth, m) are not projected (as the pairing)",
                              min=0)
    text_embedding: str = option("", "a real teacher's text_embedding.pt (local or s3://; num_texts rows, or one "
                                     "more with a void row) for the mask features; empty: synthetic embeddings")
    feature_dim: int = option(768, "width of the synthetic text embeddings", min=1)
    seed: int = option(0, "seed of the synthetic text embeddings")


class ClassTexts:
    """Lookup tables: a dataset's raw class (or evaluation id) -> the text the oracle writes (-1: none)."""

    def __init__(self, d: ClassDictionary, dataset: str):
        if dataset not in RAW_TO_EVAL:
            raise DataError(dataset, f"the oracle teacher knows nuscenes and semantickitti, not {dataset!r}")
        expected = DICTIONARY_DATASET.get(d.name)
        if expected is not None and expected != dataset:
            raise ConfigError(f"config key 'teacher.dictionary': the {d.name!r} dictionary is for {expected} data, "
                              f"the sweeps hold {dataset} (set teacher.dictionary="
                              f"{'kitti' if dataset == 'semantickitti' else 'nuscenes'})")
        first = np.cumsum([0, *d.block_sizes[:-1]])      # first text of each category
        by_eval: dict[int, int] = {}
        for ci, c in enumerate(d.categories):
            if c.eval_id > 0:
                by_eval.setdefault(int(c.eval_id), int(first[ci]))
        self.eval_text = np.full(256, -1, np.int64)
        for e, t in by_eval.items():
            self.eval_text[e] = t
        lut = RAW_TO_EVAL[dataset]()
        self.raw_text = self.eval_text[lut.astype(np.int64)]          # by evaluation class ...
        for ci, c in enumerate(d.categories):                         # ... the category's own raw id first
            if c.raw_id < lut.size:
                self.raw_text[c.raw_id] = first[ci]

    def of_keyframe(self, kf: Keyframe) -> np.ndarray:
        """(N,) text index per point (-1: no text); DataError when the keyframe has no labels."""
        if kf.raw_labels is not None:
            raw = np.asarray(kf.raw_labels, np.int64)
            ok = (raw >= 0) & (raw < self.raw_text.size)
            out = np.full(raw.shape, -1, np.int64)
            out[ok] = self.raw_text[raw[ok]]
            return out
        if kf.labels is not None:
            return self.eval_text[np.asarray(kf.labels, np.int64)]
        raise DataError(f"{kf.scene}/{kf.sample_token}", "no ground-truth labels: the oracle teacher needs a "
                                                          "labelled dataset (lidarseg / SemanticKITTI labels)")


def oracle_mask_map(xyz: np.ndarray, point_text: np.ndarray, cam: CameraFrame, radius_px: int,
                    min_depth: float = 1.0) -> tuple[np.ndarray, dict[int, int]]:
    """(H, W) uint8 mask map and {mask id: text} of one camera (see the module docstring)."""
    H, W = int(cam.height), int(cam.width)
    proj = project_points(xyz, cam.lidar_to_cam, cam.K, W, H, min_depth=min_depth)
    R = int(radius_px)
    dy, dx = np.mgrid[-R:R + 1, -R:R + 1]
    disk = dy * dy + dx * dx <= R * R
    dy, dx, d2 = dy[disk], dx[disk], (dy * dy + dx * dx)[disk]
    rows = (proj.pixel[:, 0][None, :] + dy[:, None]).ravel()
    cols = (proj.pixel[:, 1][None, :] + dx[:, None]).ravel()
    dist2 = np.repeat(d2, len(proj))
    depth = np.tile(proj.depth, len(d2))
    text = np.tile(point_text[proj.point_idx], len(d2))
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    pix = rows[inside] * W + cols[inside]
    order = np.lexsort((depth[inside], dist2[inside], pix))
    first = np.ones(len(order), bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    win = order[first]
    text_map = np.full(H * W, -1, np.int64)
    text_map[pix[win]] = text[inside][win]
    present = np.flatnonzero(np.bincount(text_map[text_map >= 0]))   # texts present, ascending
    if len(present) > 255:
        raise DataError(cam.token, f"{len(present)} classes in one image do not fit an 8-bit mask map")
    mask_map = np.zeros(H * W, np.uint8)
    has = text_map >= 0
    mask_map[has] = (np.searchsorted(present, text_map[has]) + 1).astype(np.uint8)
    return mask_map.reshape(H, W), {i + 1: int(t) for i, t in enumerate(present)}
