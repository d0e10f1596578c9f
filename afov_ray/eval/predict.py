"""Batch inference: a trained segmentation model over a set of scans -> prediction shards.

Inputs are pairing shards (``afov_ray.geometry.pair_pass``) or sweep shards
(``afov_ray.storage.sweeps``), one Parquet file per scene; the kind is detected from the columns
(``source="auto"``) or named. Work items are scenes: a Ray Data ``map_batches`` actor pool
(``PredictActor``, a callable class that builds the model once per actor) reads one input shard,
predicts every point of every scan and commits ``<out>/<scene>.parquet`` atomically. Scenes whose
prediction shard is already committed are skipped. The pool is
``ActorPoolStrategy(min_size=1, max_size=max_actors)`` with ``num_cpus=actor_cpus`` (0.5): a fixed
pool as large as the CPU count leaves no CPU for the read tasks and deadlocks on 2 CPUs
(install-notes.md "Ray Data actor-pool deadlock"). ``use_gpu`` gives each actor ``num_gpus``.

Prediction shard schema (``prediction_schema``), one row per scan:

=============  ===================  ==========================================================
sample_token   string
scene          string
lidar_token    string (null)        lidar sample_data token (sweeps; joined for pairing input)
num_points     int32                N
xyz            list<float32>        N*3, LiDAR frame, row-major
pred           list<uint8>          N predictions in 0..C-1 (voxel argmax through the inverse map)
gt             list<uint8> (null)   N ground-truth eval labels (0 = ignore)
pseudo         list<uint8> (null)   N 2D pseudo-labels (pairing input only; 0 = none)
visible        list<bool> (null)    N camera-visible mask = ``superpoint >= 0`` (pairing input)
logits         list<float16> (null) N*C point logits (``with_logits``; off by default)
pred_afi       list<uint8> (null)   N AFI-refined labels (``afi=True``; see ``afi_pass``)
afi_changed    float64 (null)       fraction of points AFI changed
=============  ===================  ==========================================================

Class 0 (ignore) suppression (afov-reference.md 6.4): the official trainer's validation sets the
class-0 probability to 0 before argmax, the official final ``evaluate()`` does not. Here it is an
explicit option, ``suppress_class0``, **on by default** (a prediction of 0 is never useful and the
nuScenes lidarseg submission requires 1..16); set it False to reproduce the official final
evaluation, whose files (and therefore the official AFI inputs) can contain 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.errors import DataError

PREDICTION_SCHEMA_VERSION = "1"


@dataclass
class PredictConfig:
    model: str = field(default="", metadata={"help": "model URI: .pt file, checkpoint dir, s3://, models:/name@alias, runs:/"})
    tracking_uri: str | None = field(default=None, metadata={"help": "MLflow tracking URI for models:/ and runs:/"})
    model_name: str = field(default="res16unet34c", metadata={"help": "res16unet34c (official) | minkunet18"})
    engine: str = "torch"
    in_channels: int = 1
    num_classes: int = 17
    bn_momentum: float = 0.05
    source: str = field(default="auto", metadata={"help": "auto | pairing | sweeps (input shard kind)"})
    sweeps: str = field(default="", metadata={"help": "sweep shards folder, to join lidar_token onto pairing input"})
    scenes: list[str] | None = None
    split_file: str | None = field(default=None, metadata={"help": "split file (datasets.splits); restricts scenes"})
    split: str = field(default="val", metadata={"help": "split name inside split_file"})
    suppress_class0: bool = field(default=True, metadata={"help": "never predict class 0 (official final evaluate: False)"})
    with_logits: bool = False
    grid: str = "cylindrical"
    voxel_size: float = 0.1
    scans_per_forward: int = 1
    max_actors: int = 2
    actor_cpus: float = 0.5
    use_gpu: bool = False
    gpus_per_actor: float = 1.0
    afi: bool = field(default=False, metadata={"help": "also run AFI on every scan (adds pred_afi)"})
    afi_cfg: AFIConfig = field(default_factory=AFIConfig)


def prediction_schema():
    import pyarrow as pa

    return pa.schema([
        ("sample_token", pa.string()), ("scene", pa.string()), ("lidar_token", pa.string()),
        ("num_points", pa.int32()), ("xyz", pa.list_(pa.float32())), ("pred", pa.list_(pa.uint8())),
        ("gt", pa.list_(pa.uint8())), ("pseudo", pa.list_(pa.uint8())), ("visible", pa.list_(pa.bool_())),
        ("logits", pa.list_(pa.float16())), ("pred_afi", pa.list_(pa.uint8())), ("afi_changed", pa.float64()),
    ], metadata={b"afov.prediction_schema": PREDICTION_SCHEMA_VERSION.encode()})


def read_prediction_shard(uri: str) -> list[dict[str, Any]]:
    """Rows of one prediction shard as dicts of numpy arrays (``xyz`` reshaped to (N, 3))."""
    import pyarrow.parquet as pq

    from afov_ray.storage import uri as suri

    fs, path = suri.resolve(uri)
    table = pq.read_table(path, filesystem=fs)
    rows = []
    for r in table.to_pylist():
        out = dict(r)
        out["xyz"] = np.asarray(r["xyz"], np.float32)
        for k, dt in (("pred", np.uint8), ("gt", np.uint8), ("pseudo", np.uint8), ("visible", bool),
                      ("pred_afi", np.uint8), ("logits", np.float16)):
            if r.get(k) is not None:
                out[k] = np.asarray(r[k], dt)
        rows.append(out)
    return rows


def shards(uri: str) -> dict[str, str]:
    """{scene: shard URI} of the committed ``*.parquet`` files directly in a folder."""
    from afov_ray.storage import uri as suri

    return {n[:-8]: suri.join(uri, n) for n in suri.listdir(uri) if n.endswith(".parquet")} \
        if suri.exists(uri) else {}


def select_scenes(available: list[str], scenes: list[str] | None, split_file: str | None,
                  split: str) -> list[str]:
    """Scenes to process: ``available`` restricted to ``scenes`` and / or a split of a split file."""
    keep = set(available)
    if scenes is not None:
        keep &= set(scenes)
    if split_file:
        from afov_ray.datasets.splits import read_split_file

        splits = read_split_file(split_file)
        if split not in splits:
            raise DataError(str(split_file), f"no split {split!r}; has {sorted(splits)}")
        keep &= set(splits[split].scenes)
    return sorted(keep)


# ------------------------------------------------------------------------------------------------
# model


def build_segmentation_model(cfg: PredictConfig, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The model of ``cfg`` with ``state`` (default: loaded from ``cfg.model``) loaded strictly,
    in eval mode. A missing / unexpected key or a shape mismatch raises DataError naming the key."""
    from afov_ray.models.res16unet import build_model
    from afov_ray.train.tracking import load_model_state

    model = build_model(cfg.model_name, cfg.in_channels, cfg.num_classes, cfg.engine, cfg.bn_momentum)
    if state is None:
        if not cfg.model:
            raise DataError("model", "no model URI given (model=...)")
        state = load_model_state(cfg.model, tracking_uri=cfg.tracking_uri)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise DataError(cfg.model or "state", f"state dict does not fit {cfg.model_name}: missing {missing[:5]}, "
                                              f"unexpected {extra[:5]}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise DataError(f"{cfg.model or 'state'}:{k}",
                            f"shape {tuple(state[k].shape)} != model's {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.inference_mode()
def predict_scans(model: torch.nn.Module, rows: list[dict], cfg: PredictConfig,
                  device: str | torch.device = "cpu") -> list[dict]:
    """Predict every point of each input row (pairing or sweeps row dict).

    Returns per scan {"pred": (N,) uint8, "logits": (N, C) float16 or None}. Scans are forwarded
    ``cfg.scans_per_forward`` at a time (eval-mode BN: the result does not depend on grouping)."""
    from afov_ray.train.data import IngestConfig, collate, prepare_row

    ing = IngestConfig(grid=cfg.grid, voxel_size=cfg.voxel_size, target="gt", augment=False)
    out: list[dict] = []
    step = max(1, cfg.scans_per_forward)
    for i in range(0, len(rows), step):
        group = rows[i:i + step]
        prepared = []
        for r in group:
            n = int(r["num_points"])
            if r.get("pseudo") is None:
                r = dict(r, pseudo=np.zeros(n, np.int64))
            prepared.append(prepare_row(r, ing))
        batch = collate(prepared)
        logits = model(batch["coords"].to(device), batch["feats"].to(device)).float()
        if cfg.suppress_class0:
            from afov_ray.eval.metrics import suppress_class0

            logits = suppress_class0(logits)
        vox_pred = logits.argmax(1).cpu()
        offs = batch["point_offsets"].tolist()
        inv = batch["inverse"]
        for j in range(len(group)):
            idx = inv[offs[j]:offs[j + 1]]
            point_logits = None
            if cfg.with_logits:
                lg = logits.cpu()[idx]
                point_logits = torch.where(torch.isinf(lg), torch.full_like(lg, -65504.0), lg).half().numpy()
            out.append({"pred": vox_pred[idx].numpy().astype(np.uint8), "logits": point_logits})
    return out


# ------------------------------------------------------------------------------------------------
# one scene


def _input_kind(columns: list[str], source: str, item: str) -> str:
    if source in ("pairing", "sweeps"):
        return source
    if source != "auto":
        raise ValueError(f"source must be auto | pairing | sweeps, got {source!r}")
    if "pseudo" in columns and "superpoint" in columns:
        return "pairing"
    if "lidar_token" in columns and "cam_K" in columns:
        return "sweeps"
    raise DataError(item, f"neither a pairing nor a sweeps shard (columns {columns[:8]}...)")


def _read_input(uri: str, source: str) -> tuple[str, list[dict]]:
    import pyarrow.parquet as pq

    from afov_ray.storage import uri as suri

    fs, path = suri.resolve(uri)
    cols = pq.read_schema(path, filesystem=fs).names
    kind = _input_kind(cols, source, uri)
    want = ["sample_token", "scene", "num_points", "points", "labels"]
    want += ["pseudo", "superpoint"] if kind == "pairing" else ["lidar_token"]
    return kind, pq.read_table(path, filesystem=fs, columns=want).to_pylist()


def _lidar_tokens(sweeps_uri: str, scene: str) -> dict[str, str]:
    import pyarrow.parquet as pq

    from afov_ray.storage import uri as suri

    if not sweeps_uri:
        return {}
    shard = suri.join(sweeps_uri, f"{scene}.parquet")
    if not suri.exists(shard):
        return {}
    fs, path = suri.resolve(shard)
    t = pq.read_table(path, filesystem=fs, columns=["sample_token", "lidar_token"])
    return dict(zip(t.column("sample_token").to_pylist(), t.column("lidar_token").to_pylist()))


def predict_scene(model: torch.nn.Module, in_uri: str, out_uri: str, cfg: PredictConfig,
                  device: str | torch.device = "cpu") -> dict:
    """Predict one input shard and commit ``out_uri`` atomically; returns a summary dict
    (scene, scans, points, seconds, errors: [{"item", "message"}])."""
    import time

    import pyarrow as pa

    from afov_ray.storage.atomic import atomic_write_parquet

    t0 = time.perf_counter()
    kind, rows = _read_input(in_uri, cfg.source)
    scene = str(rows[0]["scene"]) if rows else ""
    tokens = _lidar_tokens(cfg.sweeps, scene) if kind == "pairing" else {}
    good, errors = [], []
    for r in rows:
        item = f"{r['scene']}/{r['sample_token']}"
        n = int(r["num_points"])
        pts = r["points"]
        if pts is None or len(pts) != 4 * n:
            errors.append({"item": item, "message": f"points has {0 if pts is None else len(pts)} values, "
                                                    f"expected 4*num_points = {4 * n}"})
            continue
        good.append(r)
    preds = predict_scans(model, good, cfg, device)
    refined: list[tuple[np.ndarray | None, float | None]] = [(None, None)] * len(good)
    if cfg.afi:
        from afov_ray.eval.afi_pass import refine_scan

        refined = []
        for r, p in zip(good, preds):
            xyz = np.asarray(r["points"], np.float32).reshape(-1, 4)[:, :3]
            pseudo = None if r.get("pseudo") is None else np.asarray(r["pseudo"], np.int64)
            try:
                lab, st = refine_scan(f"{r['scene']}/{r['sample_token']}", xyz, p["pred"], pseudo,
                                      cfg.afi_cfg, device)
                refined.append((lab, st["changed_fraction"]))
            except DataError as exc:
                errors.append({"item": exc.item, "message": exc.message})
                refined.append((None, None))
    out_rows = []
    for r, p, (afi_lab, changed) in zip(good, preds, refined):
        n = int(r["num_points"])
        sp = r.get("superpoint")
        out_rows.append({
            "sample_token": str(r["sample_token"]), "scene": str(r["scene"]),
            "lidar_token": r.get("lidar_token") or tokens.get(str(r["sample_token"])),
            "num_points": n, "xyz": np.asarray(r["points"], np.float32).reshape(n, 4)[:, :3].ravel(),
            "pred": p["pred"], "gt": None if r.get("labels") is None else np.asarray(r["labels"], np.uint8),
            "pseudo": None if r.get("pseudo") is None else np.asarray(r["pseudo"], np.uint8),
            "visible": None if sp is None else np.asarray(sp, np.int64) >= 0,
            "logits": None if p["logits"] is None else p["logits"].ravel(),
            "pred_afi": afi_lab, "afi_changed": changed,
        })
    if out_rows:
        atomic_write_parquet(out_uri, pa.Table.from_pylist(out_rows, schema=prediction_schema()))
    return {"scene": scene, "scans": len(out_rows), "points": int(sum(int(r["num_points"]) for r in good)),
            "seconds": time.perf_counter() - t0, "errors": errors, "kind": kind}


def _device(use_gpu: bool) -> str:
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


class PredictActor:
    """``map_batches`` callable class: builds the model once, then predicts one scene per row.

    Input batch columns: ``scene``, ``in_uri``, ``out_uri``; output: one summary row per scene
    (``summary`` = JSON text, see ``predict_scene``)."""

    def __init__(self, cfg: PredictConfig, state_ref: list | None = None):
        import ray

        self.cfg = cfg
        self.device = _device(cfg.use_gpu)
        state = ray.get(state_ref[0]) if state_ref else None  # [ObjectRef]: the driver's loaded state
        self.model = build_segmentation_model(cfg, state).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for scene, src, dst in zip(batch["scene"], batch["in_uri"], batch["out_uri"]):
            try:
                s = predict_scene(self.model, str(src), str(dst), self.cfg, self.device)
            except DataError as exc:
                s = {"scene": str(scene), "scans": 0, "points": 0, "seconds": 0.0,
                     "errors": [{"item": exc.item, "message": exc.message}]}
            out.append(json.dumps(s))
        return {"scene": np.asarray(batch["scene"]), "summary": np.asarray(out, dtype=object)}


def run_actor_pool(actor_cls, ctor_kwargs: dict, items: list[dict], max_actors: int, actor_cpus: float,
                   use_gpu: bool, gpus_per_actor: float, progress: bool = True, desc: str = "scenes") -> list[dict]:
    """Run ``actor_cls`` over ``items`` (one scene per row) as a Ray Data actor pool; returns the
    decoded summaries. Shared by the predict and AFI passes."""
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    if not items:
        return []
    kw: dict[str, Any] = {"num_cpus": actor_cpus}
    if use_gpu:
        kw["num_gpus"] = gpus_per_actor
    ds = ray.data.from_items(items).map_batches(
        actor_cls, fn_constructor_kwargs=ctor_kwargs, batch_size=1, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, max_actors)), **kw)
    summaries = []
    bar = tqdm(total=len(items), unit="scene", desc=desc, disable=not progress)
    for row in ds.iter_rows():
        summaries.append(json.loads(row["summary"]))
        bar.update(1)
    bar.close()
    return summaries


def append_errors(out_uri: str, errors: list[dict]) -> None:
    """Append error records to ``<out>/_errors.jsonl`` (rewritten atomically with the old lines)."""
    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_bytes

    if not errors:
        return
    path = suri.join(out_uri, "_errors.jsonl")
    old = suri.read_bytes(path) if suri.exists(path) else b""
    new = "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode()
    atomic_write_bytes(path, old + new)


def run_predict(in_uri: str, out_uri: str, cfg: PredictConfig, progress: bool = True) -> dict:
    """Predict every selected scene of ``in_uri`` that has no committed shard in ``out_uri``.

    The model state is loaded once on the driver (so registry / S3 access happens once) and shipped
    to the actors through the object store. Returns a summary (also written to ``<out>/_summary.json``);
    errors go to ``<out>/_errors.jsonl``."""
    import ray

    from afov_ray.config import to_dict
    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_json
    from afov_ray.train.tracking import load_model_state

    inputs = shards(in_uri)
    if not inputs:
        raise FileNotFoundError(f"no input shards (*.parquet) in {in_uri}")
    chosen = select_scenes(list(inputs), cfg.scenes, cfg.split_file, cfg.split)
    done = set(shards(out_uri))
    todo = [s for s in chosen if s not in done]
    state = load_model_state(cfg.model, tracking_uri=cfg.tracking_uri) if todo else None
    if state is not None:
        build_segmentation_model(cfg, state)  # fail fast on a mismatching model, before the pool
    items = [{"scene": s, "in_uri": inputs[s], "out_uri": suri.join(out_uri, f"{s}.parquet")} for s in todo]
    import time

    t0 = time.perf_counter()
    summaries = run_actor_pool(PredictActor, {"cfg": cfg, "state_ref": [ray.put(state)] if state else None}, items,
                               cfg.max_actors, cfg.actor_cpus, cfg.use_gpu, cfg.gpus_per_actor, progress,
                               "predict")
    wall = time.perf_counter() - t0
    errors = [e for s in summaries for e in s.get("errors", [])]
    append_errors(out_uri, errors)
    summary = {"scenes_selected": len(chosen), "scenes_done": len(done & set(chosen)), "scenes_new": len(todo),
               "scans": sum(s["scans"] for s in summaries), "points": sum(s["points"] for s in summaries),
               "wall_seconds": wall, "errors": errors, "config": to_dict(cfg)}
    summary["points_per_second"] = summary["points"] / wall if wall > 0 and summary["points"] else 0.0
    summary["scans_per_second"] = summary["scans"] / wall if wall > 0 and summary["scans"] else 0.0
    if todo:
        atomic_write_json(suri.join(out_uri, "_summary.json"), summary)
    return summary

