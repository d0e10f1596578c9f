"""evaluate: prediction shards -> mIoU per source (raw / AFI / pseudo) on all, camera-visible and unseen
points (official scoring rules, ``afov_ray.eval.metrics``; paper section 4, official ``utils/metrics.py``).

For every prediction source present in the shards (``pred`` = raw network, ``pred_afi`` = AFI,
``pseudo`` = 2D pseudo-labels) one int64 confusion matrix H[gt, pred] is accumulated over all
points of all scans, and split into:

- ``all``: every point;
- ``visible``: camera-visible points. The mask is the ``visible`` column of the prediction shards
  when present (``superpoint >= 0`` of the pairing shards: the point was paired with a teacher
  mask), else ``pseudo > 0`` (the point has a pseudo-label) -- ``visible="auto"``; the mask used is
  recorded in the output as ``visible_mask``;
- ``unseen``: the complement.

Scoring rules (official; stated in the output under ``rules``): the GT-0 row is zeroed,
the prediction-0 column is not (a 0 prediction on a labelled point is a miss; the ``pseudo`` source
therefore scores its unlabelled points as misses on ``all`` / ``unseen``); IoU_c = TP / (TP + FP + FN);
a class with an empty union gets IoU 1.0 (``empty_union="one"``; "nan" = devkit convention, skipped
in the mean); mIoU = mean over classes 1..C-1; fwIoU is the official micro IoU.

A scan whose labels do not fit (length mismatch, labels outside [0, C)) is skipped for every source
(so all sources are scored on the same points) and recorded in ``errors``.

Per-scene matrices are computed as Ray tasks on the shard-pass layer (records only, no shards), summed
on the driver; results go to ``metrics.json`` + ``metrics.md`` (+ PNG plots, + 3D viewer pages and .ply files of
the first ``viewer_scans`` scans under ``viewer/``, docs/viewer.md) under ``out`` and, when
tracking is enabled, to an MLflow run (metrics named by class, the JSON / markdown and the plots as
artifacts). Scans without ground truth (e.g. test scans) are not scored and are listed under ``unscored``
(not an error: the exit code stays 0 when the others were scored); scans with bad labels are skipped and named.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from afov_ray.config import option, to_dict
from afov_ray.errors import DataError
from afov_ray.eval.metrics import confusion_matrix, evaluate_report
from afov_ray.pipeline.predictions import read_prediction_shard
from afov_ray.pipeline.scan_views import camera_view, prediction_layers, prediction_scalars, write_views
from afov_ray.pipeline.shard_pass import DONE_DIR, ExecConfig, ItemResult, PassItem, ShardPass, load_records, run_pass
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import shards as S
from afov_ray.storage import uri as U
from afov_ray.storage.atomic import atomic_write_bytes, atomic_write_json
from afov_ray.teachers.dictionary import ClassDictionary
from afov_ray.train.tracking import Tracker, TrackingConfig
from afov_ray.viz import plots
from afov_ray.viz.palette import class_colors

SUBSETS = ("all", "visible", "unseen")


@dataclass
class EvaluateConfig:
    sources: list[str] = option(["pred", "pred_afi", "pseudo"], "prediction columns to score (missing ones "
                                                                   "are skipped)",
                                choices=("pred", "pred_afi", "pseudo"))
    num_classes: int | None = option(None, "classes including ignore 0; null: the dictionary's (17 nuscenes, "
                                           "20 kitti)", min=2)
    dictionary: str = option("nuscenes", "class names from this dictionary (nuscenes | kitti | YAML)")
    empty_union: Literal["one", "nan", "zero"] = option("one", "IoU of a class with an empty union: one "
                                                              "(official) | nan (devkit) | zero")
    visible: Literal["auto", "column", "pseudo", "none"] = option(
        "auto", "camera-visible mask: the visible column, else pseudo > 0 (auto)")
    scenes: list[str] | None = option(None, "restrict to these scenes")
    plots: bool = option(True, "write PNG plots (confusion, per-class IoU, BEV, camera overlay)")
    bev_scans: int = option(2, "scans drawn as bird's-eye views", min=0)
    sweeps: str = option("", "sweep shards (camera calibration) for the camera plot")
    dataroot: str = option("", "dataset root holding the camera images for the camera plot")
    camera: str = option("CAM_FRONT", "camera of the overlay plot")
    viewer_scans: int = option(2, "scans written as 3D viewer pages (self-contained HTML: prediction, AFI, ground "
                                  "truth, error, pseudo-labels) + .ply under <out>/viewer, with index.html",
                               min=0)
    tracking: TrackingConfig = option(TrackingConfig(enabled=False), "MLflow logging of the metrics")
    exec: ExecConfig = option(ExecConfig(cpus_per_item=0.5), "how items run (Ray tasks)")


RULES = {
    "confusion": "one dataset-level H[gt, pred] over all points of all scans (official utils/metrics.py)",
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


def scene_confusions(shard: S.Shard, sources: list[str], num_classes: int, visible: str = "auto") -> dict:
    """Confusion matrices of one prediction shard: {"matrices": {source: {subset: (C, C) int64 list}},
    "scans", "points", "visible_mask"} and the scans skipped (``skipped``: no GT, bad lengths)."""

    C = num_classes
    mats = {s: {k: np.zeros((C, C), np.int64) for k in SUBSETS} for s in sources}
    skipped, unscored, masks_used = [], [], set()
    scans = points = 0
    present: set[str] = set()
    for r in read_prediction_shard(shard):
        name = f"{r['scene']}/{r['sample_token']}"
        if r.get("gt") is None:
            unscored.append(name)
            continue
        try:
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
            skipped.append({"item": exc.item, "message": exc.message})
            continue
        if vis is not None:
            masks_used.add(how)
        for s, d in per.items():
            present.add(s)
            for k, m in d.items():
                mats[s][k] += m
        scans += 1
        points += len(gt)
    return {"matrices": {s: {k: m.tolist() for k, m in mats[s].items()} for s in sources if s in present},
            "scans": scans, "points": points, "visible_mask": sorted(masks_used), "skipped": skipped,
            "unscored": unscored}


class EvaluatePass(ShardPass):
    name = "evaluate"
    compute = "tasks"
    writes_shards = False
    schema_name = "confusions"

    def __init__(self, cfg: EvaluateConfig, inputs: dict[str, S.Shard], out_uri: str):
        super().__init__(out_uri, cfg.exec)
        self.cfg, self.inputs = cfg, inputs

    def fingerprint(self) -> dict:
        return {"sources": list(self.cfg.sources), "num_classes": self.cfg.num_classes, "visible": self.cfg.visible}

    def items(self) -> list[PassItem]:
        keys = list(self.inputs) if self.cfg.scenes is None else [k for k in self.inputs if k in set(self.cfg.scenes)]
        return [PassItem(k) for k in keys]

    def run_item(self, item: PassItem) -> ItemResult:
        part = scene_confusions(self.inputs[item.key], list(self.cfg.sources), self.cfg.num_classes, self.cfg.visible)
        skipped = part.pop("skipped")
        if part["scans"] == 0:
            reasons = "; ".join([f"{s['item']}: {s['message']}" for s in skipped[:3]]
                                + ([f"{len(part['unscored'])} scans without ground truth"] if part["unscored"] else []))
            raise DataError(item.key, f"no scan could be scored ({reasons})")
        return ItemResult(item.key, stats=part, skipped=skipped)


def collect(records: list[dict], num_classes: int) -> dict:
    """Sum the per-scene matrices of the evaluate records."""
    C = num_classes
    total: dict[str, dict[str, np.ndarray]] = {}
    for rec in records:
        for s, d in rec["stats"]["matrices"].items():
            t = total.setdefault(s, {k: np.zeros((C, C), np.int64) for k in SUBSETS})
            for k, m in d.items():
                t[k] += np.asarray(m, np.int64)
    return {"matrices": total, "scenes": [r["key"] for r in records],
            "scans": sum(r["stats"]["scans"] for r in records), "points": sum(r["stats"]["points"] for r in records),
            "visible_mask": sorted({m for r in records for m in r["stats"]["visible_mask"]}),
            "errors": [dict(s, stage="evaluate") for r in records for s in r.get("skipped", [])],
            "unscored": [n for r in records for n in r["stats"].get("unscored", [])]}


def report(collected: dict, cfg: EvaluateConfig, names: list[str]) -> dict:
    """The metrics document: per source and subset, per-class IoU, mIoU, fwIoU, accuracy, points,
    and the confusion matrix."""

    out: dict[str, Any] = {"rules": dict(RULES, empty_union=(
        f"{cfg.empty_union}: a class with an empty union (no GT and no prediction) gets IoU "
        + {"one": "1.0 (official)", "nan": "NaN and is skipped in the mean (devkit)", "zero": "0.0"}[cfg.empty_union])),
        "visible_mask": collected["visible_mask"], "scans": collected["scans"], "points": collected["points"],
        "scenes": len(collected["scenes"]), "class_names": names, "errors": collected["errors"],
        "unscored": collected["unscored"], "sources": {}}
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


def make_plots(inputs: dict[str, S.Shard], doc: dict, collected: dict, cfg: EvaluateConfig, out_dir: str) -> list[str]:
    """Confusion heatmaps, per-class IoU bars, BEV maps of a few scans and a camera overlay."""

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
    view = camera_view(row, cfg.sweeps, cfg.dataroot, cfg.camera)
    if view is None:
        return None
    image, proj, channel = view
    lab = np.asarray(row.get("pred_afi") if row.get("pred_afi") is not None else row["pred"])[proj.point_idx]
    return plots.plot_camera(image, proj.uv, lab, path, f"{row['scene']} {channel}: predictions", cfg.num_classes)


def write_viewer_pages(inputs: dict[str, S.Shard], scenes: list[str], cfg: EvaluateConfig, names: list[str],
                       out_dir: str) -> dict:
    """3D viewer pages (docs/viewer.md) + .ply files of the first ``cfg.viewer_scans`` scans under
    ``<out_dir>/viewer``, with an index page; returns {"pages", "ply", "index"}."""

    def rows():
        for scene in scenes:
            yield from read_prediction_shard(inputs[scene])

    def ply(row):
        sc = prediction_scalars(row)
        lab = sc.get("pred_afi", sc.get("pred"))
        return (None if lab is None else pal[np.clip(lab, 0, len(pal) - 1)]), sc

    pal = class_colors(None, cfg.num_classes)
    v = write_views(rows(), Path(out_dir) / "viewer", cfg.viewer_scans, prediction_layers, ply, class_names=names,
                    title="AFOV evaluation scans", comments=["classes: " + " ".join(names)])
    return {"pages": [p.path for p in v.pages], "ply": v.plys, "index": v.index}


def run_evaluate(pred_uri: str, out_dir: str, cfg: EvaluateConfig) -> dict:
    """Evaluate the prediction shards in ``pred_uri``; write ``metrics.json``, ``metrics.md`` and plots
    under ``out_dir`` (a local folder); log to MLflow if ``cfg.tracking.enabled``. Returns the document,
    with ``errors`` naming every scan or scene that could not be scored and ``exit_code``."""

    t0 = time.perf_counter()
    names = list(ClassDictionary.load(cfg.dictionary).eval_class_names)
    cfg = replace(cfg, num_classes=cfg.num_classes or len(names))
    if len(names) != cfg.num_classes:
        names = [str(i) for i in range(cfg.num_classes)]
    inputs = S.open_folder(pred_uri, require_manifest=cfg.exec.require_manifest, what="prediction folder")
    if cfg.exec.use_ray:
        init_ray()
    U.makedirs(out_dir)
    for name in U.listdir(U.join(out_dir, DONE_DIR)):   # evaluation is cheap: always recomputed
        U.delete(U.join(out_dir, DONE_DIR, name))
    p = EvaluatePass(cfg, inputs, out_dir)
    summary = run_pass(p)
    records = [r for r in load_records(p).values() if r["key"] in inputs]
    if not records:
        raise DataError(pred_uri, "nothing could be scored: " + "; ".join(
            f"{f['item']}: {f['message']}" for f in summary.failed[:3]))
    collected = collect(records, cfg.num_classes)
    collected["errors"] += [dict(f, stage="evaluate") for f in summary.failed]
    doc = report(collected, cfg, names)
    wall = time.perf_counter() - t0
    doc["throughput"] = {"seconds": wall, "points_per_second": collected["points"] / wall if wall > 0 else 0.0,
                         "scans_per_second": collected["scans"] / wall if wall > 0 else 0.0}
    doc["config"] = to_dict(cfg)
    doc["exit_code"] = summary.exit_code
    atomic_write_json(U.join(out_dir, "metrics.json"), doc)
    md = markdown_table(doc)
    atomic_write_bytes(U.join(out_dir, "metrics.md"), md.encode())
    doc["plots"] = make_plots(inputs, doc, collected, cfg, out_dir) if cfg.plots else []
    doc["viewer"] = write_viewer_pages(inputs, collected["scenes"], cfg, names, out_dir) if cfg.viewer_scans else {}
    if cfg.tracking.enabled:
        log_to_mlflow(doc, cfg, pred_uri, out_dir)
    return doc


def log_to_mlflow(doc: dict, cfg: EvaluateConfig, pred_uri: str, out_dir: str) -> None:
    """One MLflow run: the config as params, metrics per source / subset / class (``pred/all/iou/car``),
    the JSON / markdown report and the plots as artifacts."""

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
                        metrics[f"{s}/{k}/iou/{n}"] = v
        tr.log_metrics(metrics)
        tr.log_artifact(str(Path(out_dir) / "metrics.json"))
        tr.log_artifact(str(Path(out_dir) / "metrics.md"))
        for p in doc["plots"]:
            tr.log_artifact(p, "plots")
        doc["mlflow_run_id"] = tr.run_id


def summary_line(doc: dict) -> str:
    parts = [f"{s}: " + ", ".join(f"{k} {100 * d[k]['miou']:.2f}" for k in SUBSETS if k in d)
             for s, d in doc["sources"].items()]
    return "mIoU (%) " + " | ".join(parts) + f"  [{doc['scans']} scans, {doc['points']} points]"


def load_metrics(out_dir: str) -> dict:
    return json.loads(U.read_bytes(U.join(out_dir, "metrics.json")))


@dataclass
class EvaluateJob(RayKeys):
    pred: str = option("outputs/demo/pred", "prediction shards folder URI")
    out: str = option("outputs/demo/eval", "local folder for metrics.json / metrics.md / plots")
    eval: EvaluateConfig = option(EvaluateConfig(), "scoring rules, plots, tracking")


def evaluate_job(cfg: EvaluateJob) -> int:
    """The body of ``jobs/evaluate.py``."""
    if cfg.eval.exec.use_ray:
        cfg.start_ray()
    doc = run_evaluate(cfg.pred, cfg.out, cfg.eval)
    print(U.read_bytes(U.join(cfg.out, "metrics.md")).decode())
    print(summary_line(doc))
    for e in doc["errors"]:
        print(f"  skipped {e['item']}: {e['message']}")
    if doc["unscored"]:
        print(f"  not scored (no ground truth): {len(doc['unscored'])} scans: {', '.join(doc['unscored'][:10])}"
              + (" ..." if len(doc["unscored"]) > 10 else ""))
    return doc["exit_code"]
