"""Training ingest: pairing shards -> augmented, voxelised scans -> collated sparse batches.

afov-reference.md 2.1, 5.1 and design.md. Ray Data reads the pairing shards (local or ``s3://``),
and a ``map_batches`` step on CPU workers does the per-scan work (augmentation, cylindrical
voxelisation, voxel targets, re-indexing of pairings to voxels). No camera image is ever decoded:
the pairing shards already hold (point, superpixel) pairings and the teacher mask features.

Each prepared row holds variable-size arrays (flattened); ``collate`` concatenates a list of them
into one batch with a batch column in the voxel coordinates and offsets for every index array
(points -> voxels, pairings -> voxels, superpixel ids made global per batch as
``(b * num_cameras + camera) * stride + mask``, the official image numbering b*6+i).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from afov_ray.geometry.pairing import OFFICIAL_STRIDE
from afov_ray.geometry.voxelize import voxelize
from afov_ray.storage import uri as suri

NUM_CAMERAS = 6


@dataclass
class IngestConfig:
    grid: str = field(default="cylindrical", metadata={"help": "cylindrical (official) | cartesian"})
    voxel_size: float = field(default=0.1, metadata={"help": "voxel edge in m (cylindrical: rho and z)"})
    label_mode: str = field(default="majority", metadata={
        "help": "voxel target: majority of its points (default) | first point (official)"})
    target: str = field(default="pseudo", metadata={"help": "pseudo (annotation-free) | gt (fine-tuning)"})
    augment: bool = field(default=True, metadata={"help": "rotation about z + flips of x/y (official)"})
    with_pairings: bool = field(default=False, metadata={"help": "carry pairings and superpixel features (TMP)"})
    stride: int = field(default=OFFICIAL_STRIDE, metadata={"help": "superpixel id stride per camera"})
    seed: int = field(default=0, metadata={"help": "augmentation seed"})
    cpus_per_task: float = field(default=0.5, metadata={"help": "CPUs reserved per voxelisation task"})


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


def _rng_for(cfg: IngestConfig, token: str, nonce: int) -> np.random.Generator:
    h = hashlib.sha256(f"{cfg.seed}|{token}|{nonce}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


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


def read_pairing(uri: str, columns: list[str] | None = None):
    """Ray Dataset over the pairing shards of a folder URI (local or s3://)."""
    import ray

    fs, path = suri.resolve(uri)
    files = [suri.join(uri, n) for n in suri.listdir(uri) if n.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"no pairing shards (*.parquet) in {uri}")
    paths = [suri.resolve(f)[1] for f in files]
    return ray.data.read_parquet(paths, filesystem=fs, columns=columns)


def scan_dataset(uri: str, cfg: IngestConfig, scenes: list[str] | None = None,
                 sample_tokens: list[str] | None = None):
    """Pairing shards -> prepared scans (a lazy Ray Dataset; re-executed, and re-augmented, per epoch).

    ``scenes`` / ``sample_tokens`` restrict the rows (a split); shards of other scenes are not read."""

    if scenes is not None:
        names = {f"{s}.parquet" for s in scenes}
        have = [n for n in suri.listdir(uri) if n in names]
        if not have:
            raise FileNotFoundError(f"none of the scenes {sorted(scenes)[:5]}... has a shard in {uri}")
        fs, _ = suri.resolve(uri)
        import ray

        ds = ray.data.read_parquet([suri.resolve(suri.join(uri, n))[1] for n in have], filesystem=fs)
    else:
        ds = read_pairing(uri)
    if sample_tokens is not None:
        keep = set(sample_tokens)
        ds = ds.filter(lambda r: r["sample_token"] in keep)
    # Stateless tasks, not an actor pool: actors would hold CPUs that the read tasks and the
    # training workers need (a 2-CPU cluster deadlocks, install-notes.md "Ray Data actor-pool deadlock").
    return ds.map_batches(prepare_batch, fn_kwargs={"cfg": cfg}, batch_size=2, batch_format="pyarrow",
                          num_cpus=cfg.cpus_per_task)


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
