"""export: prediction shards -> benchmark submission files (the last step of the pipeline).

nuScenes lidarseg submission files from prediction shards.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from afov_ray.config import option
from afov_ray.datasets.splits import resolve_nuscenes_split
from afov_ray.errors import DataError
from afov_ray.pipeline.predictions import read_prediction_shard
from afov_ray.storage import shards as S
from afov_ray.storage import uri as suri
from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json

META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")


@dataclass
class SubmissionConfig:
    split: str = option("val", "split name of the submission (folder name and scene set)")
    column: Literal["pred", "pred_afi"] = option("pred", "prediction column written")
    fill_zero_from: Literal["pred", "pred_afi"] | None = option(None, "column filling 0 labels (e.g. pred, "
                                                                      "for AFI output)")
    num_classes: int = option(17, "classes including ignore 0", min=2)
    use_camera: bool = option(True, "submission meta: cameras used (AFOV learns from camera teachers)")
    use_lidar: bool = option(True, "submission meta: LiDAR used")
    use_radar: bool = option(False, "submission meta: radar used")
    use_map: bool = option(False, "submission meta: maps used")
    use_external: bool = option(False, "submission meta: external data used (the 2D teachers' training data)")


def write_submission(pred_uri: str, out_dir: str, cfg: SubmissionConfig, scenes: list[str] | None = None) -> dict:
    """Write one ``.bin`` per scan of the prediction shards and ``submission.json``; returns
    {"files": n, "points": total, "bin_dir": ..., "json": ...}. The out folder may be local or s3://."""
    bin_dir = suri.join(out_dir, "lidarseg", cfg.split)
    files = points = 0
    for scene, shard in S.open_folder(pred_uri, what="prediction folder").items():
        if scenes is not None and scene not in scenes:
            continue
        for r in read_prediction_shard(shard):
            name = f"{r['scene']}/{r['sample_token']}"
            lab = r.get(cfg.column)
            if lab is None:
                raise DataError(name, f"no {cfg.column!r} values")
            if not r.get("lidar_token"):
                raise DataError(name, "no lidar_token (predict pairing shards with sweeps=<sweeps folder>)")
            lab = np.asarray(lab, np.uint8).copy()
            if len(lab) != int(r["num_points"]):
                raise DataError(name, f"{len(lab)} labels for {r['num_points']} points")
            if cfg.fill_zero_from and (lab == 0).any():
                lab[lab == 0] = np.asarray(r[cfg.fill_zero_from], np.uint8)[lab == 0]
            if lab.size and (int(lab.min()) < 1 or int(lab.max()) >= cfg.num_classes):
                raise DataError(name, f"{cfg.column} must be in 1..{cfg.num_classes - 1} for a lidarseg "
                                      f"submission (got {int(lab.min())}..{int(lab.max())}); predict with "
                                      "suppress_class0=True")
            token = suri.check_component(str(r["lidar_token"]), "lidar token")
            atomic_write_bytes(suri.join(bin_dir, f"{token}_lidarseg.bin"), lab.tobytes())
            files += 1
            points += lab.size
    meta = {k: bool(getattr(cfg, k)) for k in META_KEYS}
    json_uri = suri.join(out_dir, cfg.split, "submission.json")
    atomic_write_json(json_uri, {"meta": meta})
    return {"files": files, "points": points, "bin_dir": bin_dir, "json": json_uri}


def submission_scenes(split: str, version: str) -> list[str] | None:
    """The scenes of a submission split: the official nuScenes split of that name (mini_* for a *-mini
    version), else None (every predicted scene)."""
    from nuscenes.utils.splits import create_splits_scenes

    table = create_splits_scenes(verbose=False)
    name = resolve_nuscenes_split(split, version)
    return list(table[name]) if name in table else None
