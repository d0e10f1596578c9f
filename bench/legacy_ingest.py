"""BASELINE ONLY: the training ingest as it was before issue 22 (commit e52e765), for bench/ingest_bench.py
and the collate-equivalence tests. Not product code; the product ingest is afov_ray/train/data.py.

What it did per batch of pairing rows: read every column of the shard (``LEGACY_COLUMNS = None``),
``to_pylist`` the Arrow batch into Python objects, voxelise each scan with a row-wise
``torch.unique(dim=0)`` (tests/geometry/reference_voxelize.py), ``from_pylist`` the samples back, and
collate per row from Ray's numpy format. Kept verbatim apart from the imports.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from afov_ray.geometry.pairing import OFFICIAL_STRIDE
from afov_ray.train.data import IngestConfig, _rng_for  # _rng_for unchanged by issue 22

NUM_CAMERAS = 6
LEGACY_COLUMNS = None  # every column was read


def _load_reference_voxelize():
    path = Path(__file__).resolve().parents[1] / "tests" / "geometry" / "reference_voxelize.py"
    spec = importlib.util.spec_from_file_location("reference_voxelize", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


voxelize = _load_reference_voxelize().voxelize


def augment_points(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation by a uniform angle in [0, 2pi) about z, then negate x (p=.5), then y (p=.5) (5.1)."""
    a = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(a), np.sin(a)
    out = xyz.copy()
    out[:, 0], out[:, 1] = c * xyz[:, 0] - s * xyz[:, 1], s * xyz[:, 0] + c * xyz[:, 1]
    if rng.random() < 0.5:
        out[:, 0] = -out[:, 0]
    if rng.random() < 0.5:
        out[:, 1] = -out[:, 1]
    return out


def prepare_row(row: dict, cfg: IngestConfig, nonce: int = 0) -> dict:
    """One pairing-shard row -> voxelised sample (numpy arrays)."""
    n = int(row["num_points"])
    pts = np.asarray(row["points"], dtype=np.float32).reshape(n, 4)
    if cfg.augment:
        pts = pts.copy()
        pts[:, :3] = augment_points(pts[:, :3], _rng_for(cfg, str(row["sample_token"]), nonce))
    gt = row.get("labels")
    gt = None if gt is None or len(gt) == 0 else np.asarray(gt, dtype=np.int64)
    target = np.asarray(row["pseudo"], dtype=np.int64) if cfg.target == "pseudo" else gt
    vox = voxelize(torch.from_numpy(pts), None if target is None else torch.from_numpy(target), grid=cfg.grid,
                   voxel_size=cfg.voxel_size, label_mode=cfg.label_mode)
    out = {
        "sample_token": str(row["sample_token"]),
        "coords": vox.coords.numpy().astype(np.int32).ravel(),
        "feats": vox.feats.numpy().astype(np.float32).ravel(),
        "num_voxels": int(vox.coords.shape[0]),
        "inverse": vox.inverse.numpy().astype(np.int64),
        "target": (vox.labels.numpy() if vox.labels is not None else np.zeros(0)).astype(np.int64),
        "point_labels": gt if gt is not None else np.zeros(0, dtype=np.int64),
        "pseudo": np.asarray(row["pseudo"], dtype=np.int64),
    }
    if cfg.with_pairings:
        pp = np.asarray(row["pair_point"], dtype=np.int64)
        out["pair_voxel"] = out["inverse"][pp] if len(pp) else pp
        out["pair_superpixel"] = np.asarray(row["pair_superpixel"], dtype=np.int64)
        out["sp_id"] = np.asarray(row["sp_id"], dtype=np.int64)
        out["sp_text"] = np.asarray(row["sp_text"], dtype=np.int64)
        dim = int(row["feat_dim"])
        out["sp_feat"] = np.frombuffer(row["sp_feat"], dtype="<f2").astype(np.float32).ravel()
        out["feat_dim"] = dim
    return out


def prepare_batch(batch, cfg: IngestConfig):
    """``map_batches`` function (stateless tasks): a batch of pairing rows -> voxelised samples.

    Augmentation draws a fresh nonce per call, so every epoch sees new rotations / flips;
    with ``augment=False`` the output is deterministic."""
    import pyarrow as pa

    rows = batch.to_pylist() if isinstance(batch, pa.Table) else [
        {k: batch[k][i] for k in batch} for i in range(len(next(iter(batch.values()))))]
    nonce = int.from_bytes(np.random.default_rng().bytes(4), "little") if cfg.augment else 0
    return pa.Table.from_pylist([prepare_row(r, cfg, nonce) for r in rows])


def _rows(batch) -> list[dict]:
    if isinstance(batch, list):
        return batch
    n = len(next(iter(batch.values())))
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def collate(batch, with_pairings: bool = False, stride: int = OFFICIAL_STRIDE) -> dict[str, torch.Tensor]:
    """Concatenate prepared samples (a list of rows or a numpy dict of columns) into one batch."""
    rows = _rows(batch)
    coords, feats, inverse, target, labels, pseudo = [], [], [], [], [], []
    pv, ps, sid, stext, sfeat = [], [], [], [], []
    v_off, p_off = [0], [0]
    for b, r in enumerate(rows):
        nv = int(r["num_voxels"])
        c = np.asarray(r["coords"], dtype=np.int32).reshape(nv, 3)
        coords.append(np.concatenate([np.full((nv, 1), b, np.int32), c], axis=1))
        feats.append(np.asarray(r["feats"], dtype=np.float32).reshape(nv, -1))
        inverse.append(np.asarray(r["inverse"], dtype=np.int64) + v_off[-1])
        target.append(np.asarray(r["target"], dtype=np.int64))
        labels.append(np.asarray(r["point_labels"], dtype=np.int64))
        pseudo.append(np.asarray(r["pseudo"], dtype=np.int64))
        if with_pairings:
            base = b * NUM_CAMERAS * stride
            pv.append(np.asarray(r["pair_voxel"], dtype=np.int64) + v_off[-1])
            ps.append(np.asarray(r["pair_superpixel"], dtype=np.int64) + base)
            sid.append(np.asarray(r["sp_id"], dtype=np.int64) + base)
            stext.append(np.asarray(r["sp_text"], dtype=np.int64))
            sfeat.append(np.asarray(r["sp_feat"], dtype=np.float32).reshape(len(r["sp_id"]), int(r["feat_dim"])))
        v_off.append(v_off[-1] + nv)
        p_off.append(p_off[-1] + len(r["inverse"]))
    t = lambda xs: torch.from_numpy(np.concatenate(xs))  # noqa: E731
    out = {"coords": t(coords), "feats": t(feats), "inverse": t(inverse), "target": t(target),
           "point_labels": t(labels), "pseudo": t(pseudo), "voxel_offsets": torch.tensor(v_off),
           "point_offsets": torch.tensor(p_off)}
    if with_pairings:
        out.update(pair_voxel=t(pv), pair_superpixel=t(ps), sp_id=t(sid), sp_text=t(stext), sp_feat=t(sfeat))
    return out
