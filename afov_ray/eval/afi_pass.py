"""AFI at scale: prediction shards -> refined prediction shards (afov-reference.md section 1).

The official flow runs AFI offline on per-scan files holding xyz, pred, pseudo and gt (section 1.1);
here the prediction shards (``afov_ray.eval.predict``) hold exactly those columns. Work items are
scenes; a Ray Data ``map_batches`` actor pool (``AFIActor``; ``ActorPoolStrategy(min_size=1,
max_size=max_actors)``, ``num_cpus=actor_cpus``, ``num_gpus`` with ``use_gpu``) reads a prediction
shard, runs ``afi_refine`` per scan and commits the refined shard.

Output: a **separate folder** ``<out>/<scene>.parquet`` with the prediction schema, i.e. the input
rows unchanged plus ``pred_afi`` (N uint8) and ``afi_changed`` (fraction of points whose label AFI
changed, as the official ``p_changed``; relative to the labels after the optional 2D assist).
``<out>/_summary.json`` holds per-scan changed fractions and totals; a scan that fails its checks
(prediction / point count mismatch, labels outside [0, C), non-finite coordinates) raises
``DataError`` naming ``<scene>/<sample_token>``, is recorded in ``<out>/_errors.jsonl`` and left
out of the refined shard; the other scans and scenes go on. Committed scenes are skipped.

2D assist (``afi.use_assist``, official ``if_ovseg``; section 1.3 step 2) uses the ``pseudo``
column; unlike the official unseeded draw, each scan draws from a generator seeded with
``hash(afi.assist_seed, sample_token)``, so results do not depend on scheduling or order.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.errors import DataError


@dataclass
class AFIPassConfig:
    afi: AFIConfig = field(default_factory=AFIConfig)
    input_column: str = field(default="pred", metadata={"help": "labels to refine (pred)"})
    scenes: list[str] | None = None
    max_actors: int = 2
    actor_cpus: float = 0.5
    use_gpu: bool = False
    gpus_per_actor: float = 1.0


def scan_generator(seed: int, token: str) -> torch.Generator:
    """CPU generator for one scan's 2D-assist draw, seeded by (seed, sample token)."""
    h = hashlib.sha256(f"{seed}|{token}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & (2**63 - 1))


def check_scan(name: str, xyz: np.ndarray, labels: np.ndarray, num_points: int | None, num_classes: int,
               pseudo: np.ndarray | None = None) -> None:
    """Raise DataError naming ``name`` for a scan AFI cannot take."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise DataError(name, f"xyz must have shape (N, 3), got {xyz.shape}")
    n = xyz.shape[0] if num_points is None else int(num_points)
    if xyz.shape[0] != n:
        raise DataError(name, f"{xyz.shape[0]} points but num_points = {n}")
    if len(labels) != n:
        raise DataError(name, f"prediction count {len(labels)} != point count {n}")
    if pseudo is not None and len(pseudo) != n:
        raise DataError(name, f"pseudo count {len(pseudo)} != point count {n}")
    lab = np.asarray(labels)
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise DataError(name, f"labels outside [0, {num_classes}): min {int(lab.min())}, max {int(lab.max())}")
    if not np.isfinite(xyz).all():
        raise DataError(name, f"{int((~np.isfinite(xyz)).any(1).sum())} points with NaN / inf coordinates")


def refine_scan(name: str, xyz: np.ndarray, labels: np.ndarray, pseudo: np.ndarray | None, cfg: AFIConfig,
                device: str | torch.device = "cpu", num_points: int | None = None) -> tuple[np.ndarray, dict]:
    """``afi_refine`` on one scan after ``check_scan``; returns (refined uint8 (N,), stats)."""
    from afov_ray.afi.refine import afi_refine

    check_scan(name, xyz, labels, num_points, cfg.num_classes, pseudo)
    gen = scan_generator(cfg.assist_seed, name) if cfg.use_assist else None
    xyz_t = torch.as_tensor(np.asarray(xyz, np.float32)).to(device)
    lab_t = torch.as_tensor(np.asarray(labels, np.int64)).to(device)
    ps_t = None if pseudo is None or not cfg.use_assist else torch.as_tensor(np.asarray(pseudo, np.int64)).to(device)
    refined, stats = afi_refine(xyz_t, lab_t, cfg, pseudo=ps_t, generator=gen)
    return refined.cpu().numpy().astype(np.uint8), stats


def refine_shard(in_uri: str, out_uri: str, cfg: AFIPassConfig, device: str | torch.device = "cpu") -> dict:
    """Refine every scan of one prediction shard and commit ``out_uri``; returns a summary
    (scene, scans, points, seconds, per_scan: [{sample_token, changed_fraction, seconds}], errors)."""
    import pyarrow as pa

    from afov_ray.eval.predict import prediction_schema, read_prediction_shard
    from afov_ray.storage.atomic import atomic_write_parquet

    t0 = time.perf_counter()
    rows = read_prediction_shard(in_uri)
    scene = str(rows[0]["scene"]) if rows else ""
    out, per_scan, errors = [], [], []
    for r in rows:
        name = f"{r['scene']}/{r['sample_token']}"
        t1 = time.perf_counter()
        try:
            xyz = np.asarray(r["xyz"], np.float32)
            if xyz.size % 3:
                raise DataError(name, f"xyz has {xyz.size} values, not a multiple of 3")
            labels = r.get(cfg.input_column)
            if labels is None:
                raise DataError(name, f"no {cfg.input_column!r} column values")
            refined, st = refine_scan(name, xyz.reshape(-1, 3), labels, r.get("pseudo"), cfg.afi, device,
                                      num_points=r["num_points"])
        except DataError as exc:
            errors.append({"item": exc.item, "message": exc.message, "stage": "afi"})
            continue
        row = {k: r.get(k) for k in prediction_schema().names}
        row["pred_afi"], row["afi_changed"] = refined, float(st["changed_fraction"])
        out.append(row)
        per_scan.append({"sample_token": r["sample_token"], "changed_fraction": float(st["changed_fraction"]),
                         "n_points": int(st["n_points"]), "ground_status": st["ground_status"],
                         "n_assist_replaced": int(st["n_assist_replaced"]), "seconds": time.perf_counter() - t1})
    if out:
        atomic_write_parquet(out_uri, pa.Table.from_pylist(out, schema=prediction_schema()))
    return {"scene": scene, "scans": len(out), "points": int(sum(int(r["num_points"]) for r in out)),
            "seconds": time.perf_counter() - t0, "per_scan": per_scan, "errors": errors}


class AFIActor:
    """``map_batches`` callable class: refines one prediction shard per input row
    (columns ``scene``, ``in_uri``, ``out_uri``) -> one JSON summary row per scene."""

    def __init__(self, cfg: AFIPassConfig):
        cfg.afi.validate()
        self.cfg = cfg
        self.device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for scene, src, dst in zip(batch["scene"], batch["in_uri"], batch["out_uri"]):
            try:
                s = refine_shard(str(src), str(dst), self.cfg, self.device)
            except DataError as exc:  # unreadable shard: record, go on
                s = {"scene": str(scene), "scans": 0, "points": 0, "seconds": 0.0, "per_scan": [],
                     "errors": [{"item": exc.item, "message": exc.message, "stage": "afi"}]}
            out.append(json.dumps(s))
        return {"scene": np.asarray(batch["scene"]), "summary": np.asarray(out, dtype=object)}


def run_afi_pass(pred_uri: str, out_uri: str, cfg: AFIPassConfig, progress: bool = True) -> dict[str, Any]:
    """Refine every prediction shard of ``pred_uri`` not yet committed in ``out_uri``.

    Returns (and writes to ``<out>/_summary.json``) scenes / scans / points, wall time, scans per
    second through the pool, the mean changed fraction and the per-scan changed fractions;
    errors go to ``<out>/_errors.jsonl``."""
    from afov_ray.config import to_dict
    from afov_ray.eval.predict import append_errors, run_actor_pool, select_scenes, shards
    from afov_ray.storage import uri as suri
    from afov_ray.storage.atomic import atomic_write_json

    inputs = shards(pred_uri)
    if not inputs:
        raise FileNotFoundError(f"no prediction shards (*.parquet) in {pred_uri}")
    chosen = select_scenes(list(inputs), cfg.scenes, None, "")
    done = set(shards(out_uri))
    todo = [s for s in chosen if s not in done]
    items = [{"scene": s, "in_uri": inputs[s], "out_uri": suri.join(out_uri, f"{s}.parquet")} for s in todo]
    t0 = time.perf_counter()
    summaries = run_actor_pool(AFIActor, {"cfg": cfg}, items, cfg.max_actors, cfg.actor_cpus, cfg.use_gpu,
                               cfg.gpus_per_actor, progress, "afi")
    wall = time.perf_counter() - t0
    errors = [e for s in summaries for e in s["errors"]]
    per_scan = {f"{s['scene']}/{p['sample_token']}": p for s in summaries for p in s["per_scan"]}
    scans = sum(s["scans"] for s in summaries)
    pts = sum(s["points"] for s in summaries)
    changed = [p["changed_fraction"] for p in per_scan.values()]
    summary = {"scenes_new": len(todo), "scenes_done": len(done & set(chosen)), "scans": scans, "points": pts,
               "scans_failed": len(errors), "wall_seconds": wall,
               "scans_per_second": scans / wall if wall > 0 and scans else 0.0,
               "mean_changed_fraction": float(np.mean(changed)) if changed else 0.0,
               # point-weighted: the fraction of all refined points that changed label
               "changed_fraction_points": float(sum(p["changed_fraction"] * p["n_points"] for p in per_scan.values())
                                                / max(pts, 1)),
               "per_scan": per_scan, "errors": errors, "config": to_dict(cfg)}
    append_errors(out_uri, errors)
    if todo:
        atomic_write_json(suri.join(out_uri, "_summary.json"), summary)
    return summary
