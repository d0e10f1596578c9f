"""afi: prediction shards -> AFI-refined prediction shards (paper section 3.4; official ``afi/afi.py``).

The official flow runs AFI offline on per-scan files holding xyz, pred, pseudo and gt; here the
prediction shards (``afov_ray.pipeline.predict``) hold exactly those columns. Items are scenes on the
shard-pass layer with a pool of Ray actors (``exec.max_actors``, ``exec.use_gpu`` for CUDA AFI), spread
over the cluster's nodes; each reads a prediction shard, runs ``afi_refine`` per scan and commits the
refined shard. The algorithm itself is ``afov_ray.afi`` (see docs/afi.md).

Output: a **separate folder** ``<out>/<scene>.parquet`` with the prediction schema, i.e. the input
rows unchanged plus ``pred_afi`` (N uint8) and ``afi_changed`` (fraction of points whose label AFI
changed, as the official ``p_changed``; relative to the labels after the optional 2D assist).
``<out>/_summary.json`` holds per-scan changed fractions and totals; a scan that fails its checks
(prediction / point count mismatch, labels outside [0, C), non-finite coordinates) raises
``DataError`` naming ``<scene>/<sample_token>``, is recorded in ``<out>/_errors.jsonl`` and left
out of the refined shard; the other scans and scenes go on. Committed scenes are skipped.

2D assist (``afi.use_assist``, official ``if_ovseg``) uses the ``pseudo``
column; unlike the official unseeded draw, each scan draws from a generator seeded with
``hash(afi.assist_seed, sample_token)``, so results do not depend on scheduling or order.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.refine import afi_refine
from afov_ray.cli import print_summary
from afov_ray.config import option, to_dict
from afov_ray.errors import DataError
from afov_ray.pipeline.predictions import PREDICTION_SCHEMA_VERSION, prediction_schema, read_prediction_shard
from afov_ray.pipeline.shard_pass import ExecConfig, ItemResult, PassItem, PassSummary, ShardPass, run_pass
from afov_ray.runtime import RayKeys, init_ray
from afov_ray.storage import shards as S


@dataclass
class AFIPassConfig:
    afi: AFIConfig = option(AFIConfig(), "AFI settings (official defaults)")
    input_column: Literal["pred", "pseudo", "gt"] = option("pred", "labels to refine")
    scenes: list[str] | None = option(None, "restrict to these scenes")
    exec: ExecConfig = option(ExecConfig(), "how items run (an actor pool; use_gpu for CUDA AFI)")


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
    check_scan(name, xyz, labels, num_points, cfg.num_classes, pseudo)
    gen = scan_generator(cfg.assist_seed, name) if cfg.use_assist else None
    xyz_t = torch.as_tensor(np.asarray(xyz, np.float32)).to(device)
    lab_t = torch.as_tensor(np.asarray(labels, np.int64)).to(device)
    ps_t = None if pseudo is None or not cfg.use_assist else torch.as_tensor(np.asarray(pseudo, np.int64)).to(device)
    refined, stats = afi_refine(xyz_t, lab_t, cfg, pseudo=ps_t, generator=gen)
    return refined.cpu().numpy().astype(np.uint8), stats


class RefinePass(ShardPass):
    name = "afi"
    compute = "actors"
    schema_name = "predictions"
    schema_version = PREDICTION_SCHEMA_VERSION

    def __init__(self, cfg: AFIPassConfig, inputs: dict[str, S.Shard], out_uri: str):
        super().__init__(out_uri, cfg.exec)
        self.cfg, self.inputs = cfg, inputs
        self.device = "cpu"

    def fingerprint(self) -> dict:
        return {"afi": to_dict(self.cfg.afi), "input_column": self.cfg.input_column}

    def items(self) -> list[PassItem]:
        keys = list(self.inputs) if self.cfg.scenes is None else [k for k in self.inputs if k in set(self.cfg.scenes)]
        return [PassItem(k) for k in keys]

    def setup(self) -> None:
        self.cfg.afi.validate()
        self.device = "cuda" if self.cfg.exec.use_gpu and torch.cuda.is_available() else "cpu"

    def run_item(self, item: PassItem) -> ItemResult:
        rows = read_prediction_shard(self.inputs[item.key])
        out, per_scan, skipped = [], [], []
        for r in rows:
            name = f"{r['scene']}/{r['sample_token']}"
            t1 = time.perf_counter()
            try:
                xyz = np.asarray(r["xyz"], np.float32)
                if xyz.size % 3:
                    raise DataError(name, f"xyz has {xyz.size} values, not a multiple of 3")
                labels = r.get(self.cfg.input_column)
                if labels is None:
                    raise DataError(name, f"no {self.cfg.input_column!r} column values")
                refined, st = refine_scan(name, xyz.reshape(-1, 3), labels, r.get("pseudo"), self.cfg.afi, self.device,
                                          num_points=r["num_points"])
            except DataError as exc:
                skipped.append({"item": exc.item, "message": exc.message})
                continue
            row = {k: r.get(k) for k in prediction_schema().names}
            row["pred_afi"], row["afi_changed"] = refined, float(st["changed_fraction"])
            out.append(row)
            per_scan.append({"sample_token": r["sample_token"], "changed_fraction": float(st["changed_fraction"]),
                             "n_points": int(st["n_points"]), "ground_status": st["ground_status"],
                             "n_assist_replaced": int(st["n_assist_replaced"]), "seconds": time.perf_counter() - t1})
        if not out:
            return ItemResult(item.key, skipped=skipped)
        entry = self.commit_table(item.key, pa.Table.from_pylist(out, schema=prediction_schema()))
        return ItemResult(item.key, shard=entry, skipped=skipped,
                          stats={"scans": len(out), "points": int(sum(int(r["num_points"]) for r in out)),
                                 "per_scan": per_scan})

    def summarize(self, records: list[dict]) -> dict:
        per_scan = {f"{r['key']}/{p['sample_token']}": p for r in records for p in r["stats"].get("per_scan", [])}
        scans = sum(int(r["stats"].get("scans", 0)) for r in records)
        pts = sum(int(r["stats"].get("points", 0)) for r in records)
        secs = sum(p["seconds"] for p in per_scan.values())
        changed = [p["changed_fraction"] for p in per_scan.values()]
        return {"scans": scans, "points": pts, "scan_seconds": secs,
                "scans_per_second": scans / secs if secs > 0 else 0.0,
                "mean_changed_fraction": float(np.mean(changed)) if changed else 0.0,
                # point-weighted: the fraction of all refined points that changed label
                "changed_fraction_points": float(sum(p["changed_fraction"] * p["n_points"] for p in per_scan.values())
                                                 / max(pts, 1)),
                "per_scan": per_scan}


def run_afi_pass(pred_uri: str, out_uri: str, cfg: AFIPassConfig) -> PassSummary:
    """Refine every prediction shard of ``pred_uri`` (resuming); returns the pass summary (``stats``: scans,
    points, scans/s, mean and point-weighted changed fractions, per-scan figures)."""

    cfg.afi.validate()
    inputs = S.open_folder(pred_uri, require_manifest=cfg.exec.require_manifest, what="prediction folder")
    if cfg.exec.use_ray:
        init_ray()
    return run_pass(RefinePass(cfg, inputs, out_uri))


@dataclass
class AFIJob(RayKeys):
    pred: str = option("outputs/demo/pred", "prediction shards folder URI")
    out: str = option("outputs/demo/pred_afi", "refined shards folder URI")
    afi_pass: AFIPassConfig = option(AFIPassConfig(), "AFI settings and execution")


def afi_job(cfg: AFIJob) -> int:
    """The body of ``jobs/afi.py``."""

    if cfg.afi_pass.exec.use_ray:
        cfg.start_ray()
    summary = run_afi_pass(cfg.pred, cfg.out, cfg.afi_pass)
    print_summary(summary)
    st = summary.stats
    print(f"{st.get('scans', 0)} scans refined, {st.get('changed_fraction_points', 0):.2%} of points changed label, "
          f"{st.get('scans_per_second', 0):.2f} scans/s per worker")
    return summary.exit_code
