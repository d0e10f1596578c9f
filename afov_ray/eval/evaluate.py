"""Dataset-level evaluation of prediction shards (afov-reference.md 6.4, via ``afov_ray.eval.metrics``).

For every prediction source present in the shards (``pred`` = raw network, ``pred_afi`` = AFI,
``pseudo`` = 2D pseudo-labels) one int64 confusion matrix H[gt, pred] is accumulated over all
points of all scans, and split into:

- ``all``: every point;
- ``visible``: camera-visible points. The mask is the ``visible`` column of the prediction shards
  when present (``superpoint >= 0`` of the pairing shards: the point was paired with a teacher
  mask), else ``pseudo > 0`` (the point has a pseudo-label) -- ``visible="auto"``; the mask used is
  recorded in the output as ``visible_mask``;
- ``unseen``: the complement.

Scoring rules (official, section 6.4; stated in the output under ``rules``): the GT-0 row is zeroed,
the prediction-0 column is not (a 0 prediction on a labelled point is a miss; the ``pseudo`` source
therefore scores its unlabelled points as misses on ``all`` / ``unseen``); IoU_c = TP / (TP + FP + FN);
a class with an empty union gets IoU 1.0 (``empty_union="one"``; "nan" = devkit convention, skipped
in the mean); mIoU = mean over classes 1..C-1; fwIoU is the official micro IoU.

A scan whose labels do not fit (length mismatch, labels outside [0, C)) is skipped for every source
(so all sources are scored on the same points) and recorded in ``errors``.

Per-scene matrices are computed in Ray tasks when Ray is initialised (else in-process), summed on
the driver; results go to ``metrics.json`` + ``metrics.md`` (+ PNG plots) under ``out`` and, when
tracking is enabled, to an MLflow run (metrics, the JSON / markdown and the plots as artifacts).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afov_ray.errors import DataError
from afov_ray.train.tracking import TrackingConfig

SUBSETS = ("all", "visible", "unseen")


@dataclass
class EvaluateConfig:
    sources: list[str] = field(default_factory=lambda: ["pred", "pred_afi", "pseudo"],
                               metadata={"help": "prediction columns to score (missing ones are skipped)"})
    num_classes: int = 17
    dictionary: str = "nuscenes"
    empty_union: str = field(default="one", metadata={"help": "one (official) | nan (devkit) | zero"})
    visible: str = field(default="auto", metadata={"help": "auto | column | pseudo | none"})
    scenes: list[str] | None = None
    plots: bool = True
    bev_scans: int = 2
    sweeps: str = field(default="", metadata={"help": "sweep shards (camera calibration) for the camera plot"})
    dataroot: str = field(default="", metadata={"help": "dataset root holding the camera images"})
    camera: str = "CAM_FRONT"
    task_cpus: float = 0.5
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(enabled=False))


RULES = {
    "confusion": "one dataset-level H[gt, pred] over all points of all scans (afov-reference.md 6.4)",
    "ignore": "GT class 0 row zeroed; prediction-0 column kept (a 0 prediction on a labelled point is a miss)",
    "iou": "IoU_c = H_cc / (sum_j H_cj + sum_i H_ic - H_cc)",
    "miou": "mean over classes 1..C-1",
    "fwiou": "official 'fwIoU' = sum_c H_cc / (2 sum H - sum_c H_cc) (a micro IoU)",
}


def _visible_mask(row: dict, mode: str) -> tuple[np.ndarray | None, str]:
    if mode in ("auto", "column") and row.get("visible") is not None:
        return np.asarray(row["visible"], bool), "visible column (pairing superpoint >= 0)"
    if mode == "column":
        raise DataError(f"{row['scene']}/{row['sample_token']}", "no visible column (visible=column)")
    if mode in ("auto", "pseudo") and row.get("pseudo") is not None:
        return np.asarray(row["pseudo"]) > 0, "pseudo > 0 (point has a 2D pseudo-label)"
    return None, "none"


def scene_confusions(shard_uri: str, sources: list[str], num_classes: int, visible: str = "auto") -> dict:
    """Confusion matrices of one prediction shard: {"matrices": {source: {subset: (C, C) int64 list}},
    "scans", "points", "visible_mask", "errors"}."""
    from afov_ray.eval.metrics import confusion_matrix
    from afov_ray.eval.predict import read_prediction_shard

    C = num_classes
    mats = {s: {k: np.zeros((C, C), np.int64) for k in SUBSETS} for s in sources}
    errors, masks_used = [], set()
    scans = points = 0
    present: set[str] = set()
    for r in read_prediction_shard(shard_uri):
        name = f"{r['scene']}/{r['sample_token']}"
        try:
            if r.get("gt") is None:
                raise DataError(name, "no ground truth (gt) to score against")
            gt = np.asarray(r["gt"], np.int64)
            if len(gt) != int(r["num_points"]):
                raise DataError(name, f"gt has {len(gt)} labels for {r['num_points']} points")
            vis, how = _visible_mask(r, visible)
            if vis is not None and len(vis) != len(gt):
                raise DataError(name, f"visible mask has {len(vis)} entries for {len(gt)} points")
            per = {}
            for s in sources:
                if r.get(s) is None:
                    continue
                p = np.asarray(r[s], np.int64)
                per[s] = {"all": confusion_matrix(gt, p, C, scan=name)}
                if vis is not None:
                    per[s]["visible"] = confusion_matrix(gt[vis], p[vis], C, scan=name)
                    per[s]["unseen"] = per[s]["all"] - per[s]["visible"]
        except DataError as exc:
            errors.append({"item": exc.item, "message": exc.message, "stage": "evaluate"})
            continue
        masks_used.add(how)
        for s, d in per.items():
            present.add(s)
            for k, m in d.items():
                mats[s][k] += m
        scans += 1
        points += len(gt)
    return {"matrices": {s: {k: m.tolist() for k, m in mats[s].items()} for s in sources if s in present},
            "scans": scans, "points": points, "visible_mask": sorted(masks_used), "errors": errors}


def collect(pred_uri: str, cfg: EvaluateConfig) -> dict:
    """Sum the per-scene matrices of every selected prediction shard (Ray tasks if Ray is up)."""
    from afov_ray.eval.predict import select_scenes, shards

    inputs = shards(pred_uri)
    if not inputs:
        raise FileNotFoundError(f"no prediction shards (*.parquet) in {pred_uri}")
    chosen = select_scenes(list(inputs), cfg.scenes, None, "")
    args = [(inputs[s], list(cfg.sources), cfg.num_classes, cfg.visible) for s in chosen]
    try:
        import ray

        use_ray = ray.is_initialized()
    except ImportError:  # pragma: no cover
        use_ray = False
    if use_ray:
        remote = ray.remote(num_cpus=cfg.task_cpus)(scene_confusions)
        parts = ray.get([remote.remote(*a) for a in args])
    else:
        parts = [scene_confusions(*a) for a in args]
    C = cfg.num_classes
    total: dict[str, dict[str, np.ndarray]] = {}
    for part in parts:
        for s, d in part["matrices"].items():
            t = total.setdefault(s, {k: np.zeros((C, C), np.int64) for k in SUBSETS})
            for k, m in d.items():
                t[k] += np.asarray(m, np.int64)
    return {"matrices": total, "scenes": chosen, "scans": sum(p["scans"] for p in parts),
            "points": sum(p["points"] for p in parts),
            "visible_mask": sorted({m for p in parts for m in p["visible_mask"]}),
            "errors": [e for p in parts for e in p["errors"]]}


def report(collected: dict, cfg: EvaluateConfig, names: list[str]) -> dict:
    """The metrics document: per source and subset, per-class IoU, mIoU, fwIoU, accuracy, points,
    and the confusion matrix."""
    from afov_ray.eval.metrics import evaluate_report

    out: dict[str, Any] = {"rules": dict(RULES, empty_union=(
        f"{cfg.empty_union}: a class with an empty union (no GT and no prediction) gets IoU "
        + {"one": "1.0 (official)", "nan": "NaN and is skipped in the mean (devkit)", "zero": "0.0"}[cfg.empty_union])),
        "visible_mask": collected["visible_mask"], "scans": collected["scans"], "points": collected["points"],
        "scenes": len(collected["scenes"]), "class_names": names, "errors": collected["errors"], "sources": {}}
    for s, d in collected["matrices"].items():
        out["sources"][s] = {}
        for k in SUBSETS:
            H = d[k]
            if k != "all" and not collected["visible_mask"]:
                continue
            rep = evaluate_report(H, names, ignore_index=0, empty_union=cfg.empty_union)
            rep["confusion"] = H.tolist()
            out["sources"][s][k] = rep
    return out


def markdown_table(doc: dict) -> str:
    """Per-class IoU (%) table: one column per (source, subset), then mIoU / fwIoU / accuracy rows."""
    cols = [(s, k) for s, d in doc["sources"].items() for k in SUBSETS if k in d]
    names = [n for i, n in enumerate(doc["class_names"]) if i != 0]
    lines = ["| class | " + " | ".join(f"{s} ({k})" for s, k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    fmt = lambda v: "nan" if v != v else f"{100 * v:.2f}"  # noqa: E731
    for n in names:
        lines.append(f"| {n} | " + " | ".join(fmt(doc["sources"][s][k]["iou_per_class"][n]) for s, k in cols) + " |")
    for key, label in (("miou", "**mIoU**"), ("fwiou", "fwIoU"), ("accuracy", "accuracy")):
        lines.append(f"| {label} | " + " | ".join(fmt(doc["sources"][s][k][key]) for s, k in cols) + " |")
    lines.append("| points | " + " | ".join(str(doc["sources"][s][k]["n_points"]) for s, k in cols) + " |")
    lines += ["", f"Camera-visible mask: {', '.join(doc['visible_mask']) or 'none'}.",
              f"Empty-union rule: {doc['rules']['empty_union']}.",
              "GT-0 row ignored, prediction-0 column kept (a 0 prediction is a miss); mIoU over classes 1..C-1."]
    return "\n".join(lines) + "\n"


def make_plots(pred_uri: str, doc: dict, collected: dict, cfg: EvaluateConfig, out_dir: str) -> list[str]:
    """Confusion heatmaps, per-class IoU bars, BEV maps of a few scans and a camera overlay."""
    from afov_ray.eval import plots
    from afov_ray.eval.predict import read_prediction_shard, shards

    names = doc["class_names"]
    paths = []
    pdir = Path(out_dir) / "plots"
    for s, d in collected["matrices"].items():
        paths.append(plots.plot_confusion(d["all"], names, pdir / f"confusion_{s}.png", f"{s}: confusion (all points)"))
    for k in SUBSETS:
        ious = {s: [doc["sources"][s][k]["iou_per_class"].get(n, float("nan")) if i else float("nan")
                    for i, n in enumerate(names)] for s in doc["sources"] if k in doc["sources"][s]}
        if ious:
            paths.append(plots.plot_iou_bars(ious, names, pdir / f"iou_{k}.png", f"per-class IoU ({k} points)"))
    inputs = shards(pred_uri)
    first = None
    n_bev = 0
    for scene in collected["scenes"]:
        if n_bev >= cfg.bev_scans:
            break
        for r in read_prediction_shard(inputs[scene]):
            if n_bev >= cfg.bev_scans or r.get("gt") is None or len(r["gt"]) != int(r["num_points"]):
                continue
            xyz = np.asarray(r["xyz"], np.float32).reshape(-1, 3)
            if len(r["pred"]) != len(xyz):
                continue
            tag = f"{r['scene']}_{r['sample_token'][:8]}"
            for s in [x for x in ("pred", "pred_afi") if r.get(x) is not None]:
                paths.append(plots.plot_bev(xyz, r["gt"], r[s], pdir / f"bev_{tag}_{s}.png",
                                            f"{r['scene']} / {r['sample_token']}: {s}", cfg.num_classes))
            first = first or r
            n_bev += 1
    if first is not None and cfg.sweeps and cfg.dataroot:
        p = camera_plot(first, cfg, pdir / f"camera_{first['scene']}_{first['sample_token'][:8]}.png")
        if p:
            paths.append(p)
    return paths


def camera_plot(row: dict, cfg: EvaluateConfig, path: Path) -> str | None:
    """Project one scan's predictions into ``cfg.camera`` (calibration from the sweep shard, image
    from the dataroot); None when the scan or camera is not found."""
    import pyarrow.parquet as pq
    from PIL import Image

    from afov_ray.eval import plots
    from afov_ray.geometry.projection import project_points
    from afov_ray.storage import uri as suri
    from afov_ray.storage.sweeps import table_to_keyframes

    shard = suri.join(cfg.sweeps, f"{row['scene']}.parquet")
    if not suri.exists(shard):
        return None
    fs, p = suri.resolve(shard)
    kfs = [k for k in table_to_keyframes(pq.read_table(p, filesystem=fs)) if k.sample_token == row["sample_token"]]
    if not kfs:
        return None
    cams = [c for c in kfs[0].cameras if c.channel == cfg.camera] or kfs[0].cameras[:1]
    if not cams:
        return None
    cam = cams[0]
    image = np.asarray(Image.open(Path(cfg.dataroot) / cam.image_path).convert("RGB"))
    xyz = np.asarray(row["xyz"], np.float32).reshape(-1, 3)
    proj = project_points(xyz, cam.lidar_to_cam, cam.K, cam.width, cam.height)
    lab = np.asarray(row.get("pred_afi") if row.get("pred_afi") is not None else row["pred"])[proj.point_idx]
    return plots.plot_camera(image, proj.uv, lab, path, f"{row['scene']} {cam.channel}: predictions",
                             cfg.num_classes)


def run_evaluate(pred_uri: str, out_dir: str, cfg: EvaluateConfig) -> dict:
    """Evaluate the prediction shards in ``pred_uri``; write ``metrics.json``, ``metrics.md`` and plots
    under ``out_dir`` (a local folder); log to MLflow if ``cfg.tracking.enabled``. Returns the document."""
    from afov_ray.config import to_dict
    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json
    from afov_ray.teachers.dictionary import ClassDictionary

    t0 = time.perf_counter()
    names = list(ClassDictionary.load(cfg.dictionary).eval_class_names)
    if len(names) != cfg.num_classes:
        names = [str(i) for i in range(cfg.num_classes)]
    collected = collect(pred_uri, cfg)
    doc = report(collected, cfg, names)
    wall = time.perf_counter() - t0
    doc["throughput"] = {"seconds": wall, "points_per_second": collected["points"] / wall if wall > 0 else 0.0,
                         "scans_per_second": collected["scans"] / wall if wall > 0 else 0.0}
    doc["config"] = to_dict(cfg)
    atomic_write_json(suri.join(out_dir, "metrics.json"), doc)
    md = markdown_table(doc)
    atomic_write_bytes(suri.join(out_dir, "metrics.md"), md.encode())
    doc["plots"] = make_plots(pred_uri, doc, collected, cfg, out_dir) if cfg.plots else []
    if cfg.tracking.enabled:
        from afov_ray.train.tracking import Tracker

        with Tracker(cfg.tracking, root=out_dir) as tr:
            tr.start(params={"eval": to_dict(cfg), "predictions": pred_uri})
            metrics = {}
            for s, d in doc["sources"].items():
                for k, rep in d.items():
                    metrics[f"{s}/{k}/mIoU"] = rep["miou"]
                    metrics[f"{s}/{k}/fwIoU"] = rep["fwiou"]
                    metrics[f"{s}/{k}/accuracy"] = rep["accuracy"]
                    for n, v in rep["iou_per_class"].items():
                        if v == v:
                            metrics[f"{s}/{k}/IoU_{n}"] = v
            tr.log_metrics(metrics)
            tr.log_artifact(str(Path(out_dir) / "metrics.json"))
            tr.log_artifact(str(Path(out_dir) / "metrics.md"))
            for p in doc["plots"]:
                tr.log_artifact(p, "plots")
            doc["mlflow_run_id"] = tr.run_id
    return doc


def summary_line(doc: dict) -> str:
    parts = [f"{s}: " + ", ".join(f"{k} {100 * d[k]['miou']:.2f}" for k in SUBSETS if k in d)
             for s, d in doc["sources"].items()]
    return "mIoU (%) " + " | ".join(parts) + f"  [{doc['scans']} scans, {doc['points']} points]"


def load_metrics(out_dir: str) -> dict:
    from afov_ray.storage import uri as suri

    return json.loads(suri.read_bytes(suri.join(out_dir, "metrics.json")))
