"""export: prediction shards -> benchmark submission files (the last step of the pipeline).

Two formats (``sub.format`` of ``jobs/predict.py``): nuScenes lidarseg ``.bin`` files, and SemanticKITTI
``.label`` files (below). Both refuse a 0 prediction (the benchmarks score classes 1..C-1): predict with
``suppress_class0=True`` or fill 0s from another column.

**nuScenes lidarseg.**
Layout, as nuscenes-devkit ``eval/lidarseg/validate_submission.py`` checks it::

    <out>/<split>/submission.json                    {"meta": {"use_camera", "use_lidar", "use_radar",
                                                               "use_map", "use_external"}} (bools)
    <out>/lidarseg/<split>/<lidar_sd_token>_lidarseg.bin   N uint8, one per point, in 1..16

The token is the LIDAR_TOP ``sample_data`` token (``lidar_token`` of the prediction shards, taken
from the sweep shards). The devkit rejects 0 (it asserts predictions in 1..16), so predictions
must come from a run with ``suppress_class0=True``; a 0 raises DataError naming the scan, unless
``fill_zero_from`` names a column whose (non-zero) label is used instead (e.g. AFI output, which can
be 0 where a ground inlier has no ground mass, filled from the raw ``pred``).
AFOV is trained with camera-derived pseudo-labels, so ``use_camera`` defaults to True.

**SemanticKITTI.** ``<out>/sequences/<seq>/predictions/<frame>.label``: N uint32 per scan (the scan's
``sample_token`` is ``<seq>/<frame>``), each evaluation id 1..19 mapped back to its raw class with the
benchmark's ``learning_map_inv`` (``afov_ray.datasets.labels.KITTI_EVAL_TO_RAW``), instance bits 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from afov_ray.config import option
from afov_ray.datasets.labels import KITTI_EVAL_TO_RAW
from afov_ray.datasets.splits import (
    KITTI_TEST_SEQUENCES,
    KITTI_TRAIN_SEQUENCES,
    KITTI_VAL_SEQUENCES,
    resolve_nuscenes_split,
)
from afov_ray.errors import DataError
from afov_ray.pipeline.predictions import read_prediction_shard
from afov_ray.storage import shards as S
from afov_ray.storage import uri as suri
from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json

META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")
NUM_CLASSES = {"nuscenes": 17, "semantickitti": 20}
KITTI_SPLIT_SEQUENCES = {"train": KITTI_TRAIN_SEQUENCES, "val": KITTI_VAL_SEQUENCES, "test": KITTI_TEST_SEQUENCES}


@dataclass
class SubmissionConfig:
    format: Literal["nuscenes", "semantickitti"] = option(
        "nuscenes", "nuscenes: lidarseg/<split>/<lidar token>_lidarseg.bin (uint8) + submission.json | "
                    "semantickitti: sequences/<seq>/predictions/<frame>.label (uint32, learning_map_inv)")
    split: str = option("val", "split name of the submission (nuScenes: folder name and scene set; SemanticKITTI: "
                               "train / val / test sequences, or any other name for every predicted scan)")
    column: Literal["pred", "pred_afi"] = option("pred", "prediction column written")
    fill_zero_from: Literal["pred", "pred_afi"] | None = option(None, "column filling 0 labels (e.g. pred, "
                                                                      "for AFI output)")
    num_classes: int | None = option(None, "classes including ignore 0; null: 17 nuScenes, 20 SemanticKITTI", min=2)
    use_camera: bool = option(True, "submission meta: cameras used (AFOV learns from camera teachers)")
    use_lidar: bool = option(True, "submission meta: LiDAR used")
    use_radar: bool = option(False, "submission meta: radar used")
    use_map: bool = option(False, "submission meta: maps used")
    use_external: bool = option(False, "submission meta: external data used (the 2D teachers' training data)")


def _labels(r: dict, cfg: SubmissionConfig) -> np.ndarray:
    """The checked submission labels of one prediction row (1..C-1; 0s filled from ``fill_zero_from``)."""
    name = f"{r['scene']}/{r['sample_token']}"
    C = cfg.num_classes or NUM_CLASSES[cfg.format]
    lab = r.get(cfg.column)
    if lab is None:
        raise DataError(name, f"no {cfg.column!r} values")
    lab = np.asarray(lab, np.uint8).copy()
    if len(lab) != int(r["num_points"]):
        raise DataError(name, f"{len(lab)} labels for {r['num_points']} points")
    if cfg.fill_zero_from and (lab == 0).any():
        lab[lab == 0] = np.asarray(r[cfg.fill_zero_from], np.uint8)[lab == 0]
    if lab.size and (int(lab.min()) < 1 or int(lab.max()) >= C):
        raise DataError(name, f"{cfg.column} must be in 1..{C - 1} for a {cfg.format} submission (got "
                              f"{int(lab.min())}..{int(lab.max())}); predict with suppress_class0=True")
    return lab


def _rows(pred_uri: str, scenes: list[str] | None):
    for scene, shard in S.open_folder(pred_uri, what="prediction folder").items():
        if scenes is None or scene in scenes:
            yield from read_prediction_shard(shard)


def write_submission(pred_uri: str, out_dir: str, cfg: SubmissionConfig, scenes: list[str] | None = None) -> dict:
    """Write the submission files of ``cfg.format`` for every scan of the prediction shards (restricted to
    ``scenes``); returns {"files": n, "points": total, ...}. The out folder may be local or s3://."""
    if cfg.format == "semantickitti":
        return write_semantickitti(pred_uri, out_dir, cfg, scenes)
    bin_dir = suri.join(out_dir, "lidarseg", cfg.split)
    files = points = 0
    for r in _rows(pred_uri, scenes):
        lab = _labels(r, cfg)
        if not r.get("lidar_token"):
            raise DataError(f"{r['scene']}/{r['sample_token']}", "no lidar_token (predict pairing shards with "
                                                                 "sweeps=<sweeps folder>)")
        token = suri.check_component(str(r["lidar_token"]), "lidar token")
        atomic_write_bytes(suri.join(bin_dir, f"{token}_lidarseg.bin"), lab.tobytes())
        files += 1
        points += lab.size
    meta = {k: bool(getattr(cfg, k)) for k in META_KEYS}
    json_uri = suri.join(out_dir, cfg.split, "submission.json")
    atomic_write_json(json_uri, {"meta": meta})
    return {"files": files, "points": points, "bin_dir": bin_dir, "json": json_uri}


def write_semantickitti(pred_uri: str, out_dir: str, cfg: SubmissionConfig, scenes: list[str] | None = None) -> dict:
    """``<out>/sequences/<seq>/predictions/<frame>.label`` (uint32 raw classes) per scan."""
    inv = np.zeros(256, np.uint32)
    for e, raw in KITTI_EVAL_TO_RAW.items():
        inv[e] = raw
    files = points = 0
    for r in _rows(pred_uri, scenes):
        lab = _labels(r, cfg)
        seq, _, frame = str(r["sample_token"]).partition("/")
        if not frame:
            raise DataError(str(r["sample_token"]), "a SemanticKITTI scan id is '<seq>/<frame>' (is this nuScenes? "
                                                   "set sub.format=nuscenes)")
        uri = suri.join(out_dir, "sequences", suri.check_component(seq, "sequence"), "predictions",
                        suri.check_component(frame, "frame") + ".label")
        atomic_write_bytes(uri, inv[lab].astype("<u4").tobytes())
        files += 1
        points += lab.size
    return {"files": files, "points": points, "dir": suri.join(out_dir, "sequences")}


def submission_scenes(split: str, version: str, fmt: str = "nuscenes") -> list[str] | None:
    """The scenes of a submission split: nuScenes, the official split of that name (mini_* for a *-mini
    version); SemanticKITTI, its train / val / test sequences; else None (every predicted scene)."""
    from nuscenes.utils.splits import create_splits_scenes

    if fmt == "semantickitti":
        seqs = KITTI_SPLIT_SEQUENCES.get(split)
        return list(seqs) if seqs is not None else None
    table = create_splits_scenes(verbose=False)
    name = resolve_nuscenes_split(split, version)
    return list(table[name]) if name in table else None
