"""Training ingest: pairing shards -> augmented, voxelised scans -> collated sparse batches.

docs/method.md "TMP data", "Voxelisation" and docs/architecture.md. Ray Data reads the pairing shards (local or ``s3://``),
and a ``map_batches`` step on CPU workers does the per-scan work (augmentation, cylindrical
voxelisation, voxel targets, re-indexing of pairings to voxels). No camera image is ever decoded:
the pairing shards already hold (point, superpixel) pairings and the teacher mask features.

Each prepared row holds variable-size arrays (flattened); ``collate`` concatenates a list of them
into one batch with a batch column in the voxel coordinates and offsets for every index array
(points -> voxels, pairings -> voxels, superpixel ids made global per batch as
``(b * num_cameras + camera) * stride + mask``, the official image numbering b*6+i).

Arrow and numpy end to end: only the columns a stage uses are read (``ingest_columns``: the target's
column, and pairings and superpixel features only for TMP), list columns are numpy views of the Arrow buffers
(``afov_ray.train.arrow_lists``), prepared blocks are Arrow list columns, and ``collate`` concatenates a
batch's rows with whole-column numpy operations (``torch_batches`` runs it in Ray Data's prefetch threads).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from afov_ray.config import option
from afov_ray.geometry.pairing import OFFICIAL_STRIDE
from afov_ray.geometry.voxelize import voxelize
from afov_ray.storage import uri as suri
from afov_ray.train.arrow_lists import ListView, list_array, list_view

NUM_CAMERAS = 6

# pairing-shard columns the ingests read (afov_ray.geometry.pairing.pairing_schema): the scan, the
# column of its target (pseudo-labels or ground truth), and for TMP the pairings and superpixels
SCAN_COLUMNS = ("sample_token", "num_points", "points")
TARGET_COLUMNS = {"pseudo": "pseudo", "gt": "labels"}
PAIRING_COLUMNS = ("pair_point", "pair_superpixel", "sp_id", "sp_text", "sp_feat", "feat_dim")
# prepared-sample list columns and the dtype collate gives each
_LIST_DTYPES = {"coords": np.int32, "feats": np.float32, "inverse": np.int64, "target": np.int64,
                "point_labels": np.int64, "pseudo": np.int64}
_PAIRING_DTYPES = {"pair_voxel": np.int64, "pair_superpixel": np.int64, "sp_id": np.int64, "sp_text": np.int64,
                   "sp_feat": np.float32}
# value dtypes of the prepared blocks (the shard's for copied fields; targets are uint8 labels as stored;
# point indices fit int32); collate widens them
_SAMPLE_VALUE_TYPES = {"coords": np.int32, "feats": np.float32, "inverse": np.int32, "target": np.uint8,
                       "point_labels": np.uint8, "pseudo": np.uint8, "pair_voxel": np.int32,
                       "pair_superpixel": np.int32, "sp_id": np.int32, "sp_text": np.int32, "sp_feat": np.float16}


@dataclass
class IngestConfig:
    grid: Literal["cylindrical", "cartesian"] = option("cylindrical", "voxel grid: cylindrical (official) | cartesian")
    voxel_size: float = option(0.1, "voxel edge in m (cylindrical: rho and z)", gt=0)
    intensity_offset: float = option(0.0, "added to the intensity input feature: 0 for nuScenes (raw 0-255), "
                                          "1 for SemanticKITTI (official: reflectance + 1)")
    label_mode: Literal["majority", "first"] = option(
        "majority", "voxel target: majority of its points (default) | first point (official)")
    target: Literal["pseudo", "gt"] = option("pseudo", "pseudo (annotation-free) | gt (fine-tuning)")
    augment: bool = option(True, "rotation about z + flips of x/y (official)")
    with_pairings: bool = option(False, "carry pairings and superpixel features (TMP)")
    stride: int = option(OFFICIAL_STRIDE, "superpixel id stride per camera", min=1)
    seed: int = option(0, "augmentation seed")
    cpus_per_task: float = option(0.5, "CPUs reserved per voxelisation task", gt=0)
    shuffle_buffer: int = option(8, "training scans mixed in a local shuffle buffer (official: a shuffled "
                                    "DataLoader); 0: shard order", min=0)
    prefetch_batches: int = option(2, "training batches Ray Data prepares ahead of the one being trained on", min=0)


def augment_points(xyz: np.ndarray, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
    """Rotation by a uniform angle in [0, 2pi) about z, then negate x (p=.5), then y (p=.5) (5.1).

    ``out``: an (N, 3) array (not overlapping ``xyz``) that receives the result; default a new one."""
    a = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(a), np.sin(a)
    out = np.empty_like(xyz) if out is None else out
    x, y = xyz[:, 0], xyz[:, 1]
    out[:, 0], out[:, 1], out[:, 2] = c * x - s * y, s * x + c * y, xyz[:, 2]
    if rng.random() < 0.5:
        np.negative(out[:, 0], out=out[:, 0])
    if rng.random() < 0.5:
        np.negative(out[:, 1], out=out[:, 1])
    return out


def _rng_for(cfg: IngestConfig, token: str, nonce: int) -> np.random.Generator:
    h = hashlib.sha256(f"{cfg.seed}|{token}|{nonce}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def ingest_columns(cfg: IngestConfig) -> list[str]:
    """The pairing-shard columns the ingest of ``cfg`` reads: the scan, its target's column (``pseudo`` or
    ``labels``) and, for TMP only, the pairings and superpixel features. A batch's ``point_labels`` /
    ``pseudo`` are empty when their column is not read (training on pseudo-labels reads no ground truth,
    fine-tuning and validation no pseudo-labels)."""
    if cfg.target not in TARGET_COLUMNS:
        raise ValueError(f"ingest.target: expected one of {sorted(TARGET_COLUMNS)}, got {cfg.target!r}")
    return [*SCAN_COLUMNS, TARGET_COLUMNS[cfg.target], *(PAIRING_COLUMNS if cfg.with_pairings else ())]


def _array(x) -> np.ndarray:
    """An integer row field as numpy: an array as it is (a view), a list as int64, None as empty."""
    if isinstance(x, np.ndarray):
        return x
    return np.asarray([] if x is None else x, dtype=np.int64)


def _ground_truth(row: dict) -> np.ndarray | None:
    """The row's per-point ground truth, None when it has none (null, empty or not read)."""
    gt = row.get("labels")
    return None if gt is None or len(gt) == 0 else _array(gt)


def _voxel_sample(row: dict, cfg: IngestConfig, nonce: int) -> dict:
    """Augmented, voxelised scan of a row: coords, feats, num_voxels, inverse, target."""

    n = int(row["num_points"])
    pts = np.asarray(row["points"], dtype=np.float32).reshape(n, 4)
    if cfg.augment:
        src, pts = pts, np.empty((n, 4), dtype=np.float32)
        pts[:, 3] = src[:, 3]
        augment_points(src[:, :3], _rng_for(cfg, str(row["sample_token"]), nonce), out=pts[:, :3])
    elif not pts.flags.writeable:
        pts = pts.copy()  # torch refuses read-only memory (an Arrow buffer)
    target = _array(row["pseudo"]) if cfg.target == "pseudo" else _ground_truth(row)
    vox = voxelize(torch.from_numpy(pts), target, grid=cfg.grid, voxel_size=cfg.voxel_size,
                   intensity_offset=cfg.intensity_offset, label_mode=cfg.label_mode)
    return {"coords": vox.coords.numpy().ravel(), "feats": vox.feats.numpy().ravel(),
            "num_voxels": int(vox.coords.shape[0]), "inverse": vox.inverse.numpy(),
            "target": vox.labels.numpy() if vox.labels is not None else np.zeros(0, np.int64)}


def prepare_row(row: dict, cfg: IngestConfig, nonce: int = 0) -> dict:
    """One pairing-shard row (numpy views, or lists as ``to_pylist`` gives) -> voxelised sample (numpy).

    Fields copied from the shard keep their stored dtype (``collate`` widens them)."""
    out = {"sample_token": str(row["sample_token"]), **_voxel_sample(row, cfg, nonce),
           "point_labels": _array(_ground_truth(row)), "pseudo": _array(row.get("pseudo"))}
    if cfg.with_pairings:
        pp = _array(row["pair_point"])
        out["pair_voxel"] = out["inverse"][pp]
        out["pair_superpixel"] = _array(row["pair_superpixel"])
        out["sp_id"] = _array(row["sp_id"])
        out["sp_text"] = _array(row["sp_text"])
        out["sp_feat"] = np.frombuffer(row["sp_feat"], dtype="<f2")
        out["feat_dim"] = int(row["feat_dim"])
    return out


def _table_rows(table, columns: list[str]) -> list[dict]:
    """Rows of a pyarrow Table as dicts of numpy views (list / binary columns) and scalars."""
    import pyarrow as pa

    views: dict[str, ListView] = {}
    scalars: dict[str, list] = {}
    for c in columns:
        col = table.column(c)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_binary(col.type) \
                or pa.types.is_large_binary(col.type):
            views[c] = list_view(col)
        else:
            scalars[c] = col.to_numpy()
    return [{**{c: v.row(i) for c, v in views.items()}, **{c: s[i] for c, s in scalars.items()}}
            for i in range(table.num_rows)]


def _samples_table(samples: list[dict], with_pairings: bool):
    """Prepared samples as a pyarrow Table (one list column per array; shard fields keep their dtype)."""
    import pyarrow as pa

    names = [n for n in _SAMPLE_VALUE_TYPES if with_pairings or n not in _PAIRING_DTYPES]
    cols = {"sample_token": pa.array([s["sample_token"] for s in samples], pa.string()),
            "num_voxels": pa.array([s["num_voxels"] for s in samples], pa.int64())}
    cols.update({n: list_array([s[n] for s in samples], _SAMPLE_VALUE_TYPES[n]) for n in names})
    if with_pairings:
        cols["feat_dim"] = pa.array([s["feat_dim"] for s in samples], pa.int64())
    return pa.table(cols)


def prepare_batch(batch, cfg: IngestConfig):
    """``map_batches`` function (stateless tasks): a batch of pairing rows -> voxelised samples (pyarrow).

    Takes a pyarrow Table (read as numpy views, never as Python objects) or a dict of columns.
    Augmentation draws a fresh nonce per call, so every epoch sees new rotations / flips;
    with ``augment=False`` the output is deterministic."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        rows = _table_rows(batch, ingest_columns(cfg))
    else:
        rows = _rows(batch)
    nonce = int.from_bytes(np.random.default_rng().bytes(4), "little") if cfg.augment else 0
    return _samples_table([prepare_row(r, cfg, nonce) for r in rows], cfg.with_pairings)


def _shard_files(uri: str, scenes: list[str] | None) -> tuple:
    """(filesystem, paths) of the pairing shards of a folder URI, restricted to ``scenes`` if given."""

    names = [n for n in suri.listdir(uri) if n.endswith(".parquet")]
    if scenes is not None:
        wanted = {f"{s}.parquet" for s in scenes}
        names = [n for n in names if n in wanted]
        if not names:
            raise FileNotFoundError(f"none of the scenes {sorted(scenes)[:5]}... has a shard in {uri}")
    if not names:
        raise FileNotFoundError(f"no pairing shards (*.parquet) in {uri}")
    fs, _ = suri.resolve(uri)
    return fs, [suri.resolve(suri.join(uri, n))[1] for n in names]


def read_pairing(uri: str, columns: list[str] | None = None, scenes: list[str] | None = None):
    """Ray Dataset over the pairing shards of a folder URI (local or s3://): ``columns`` only, and the
    shards of ``scenes`` only when given (other scenes' shards are not read)."""
    import ray

    fs, paths = _shard_files(uri, scenes)
    return ray.data.read_parquet(paths, filesystem=fs, columns=columns)


def _select_tokens(table, sample_tokens: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column("sample_token"), value_set=pa.array(sample_tokens, pa.string())))


def scan_dataset(uri: str, cfg: IngestConfig, scenes: list[str] | None = None,
                 sample_tokens: list[str] | None = None):
    """Pairing shards -> prepared scans (a lazy Ray Dataset; re-executed, and re-augmented, per epoch).

    Reads only ``ingest_columns(cfg)``; ``scenes`` / ``sample_tokens`` restrict the rows (a split);
    shards of other scenes are not read."""
    ds = read_pairing(uri, columns=ingest_columns(cfg), scenes=scenes)
    if sample_tokens is not None:
        ds = ds.map_batches(_select_tokens, fn_kwargs={"sample_tokens": sorted(set(sample_tokens))},
                            batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    # Stateless tasks, not an actor pool: actors would hold CPUs that the read tasks and the
    # training workers need (on a 2-CPU cluster an actor pool deadlocks the read tasks).
    return ds.map_batches(prepare_batch, fn_kwargs={"cfg": cfg}, batch_size=2, batch_format="pyarrow",
                          num_cpus=cfg.cpus_per_task)


def _rows(batch) -> list[dict]:
    if isinstance(batch, list):
        return batch
    n = len(next(iter(batch.values())))
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def _batch_columns(batch, names: list[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """({list column: (values of all rows, (B,) row lengths)}, {scalar column: (B,) array}) of a batch:
    a pyarrow Table of prepared samples (views of its buffers), or prepared rows (a list of dicts or a
    dict of per-row columns)."""
    import pyarrow as pa

    scalars = ("num_voxels", "feat_dim")
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        views = {n: list_view(batch.column(n)) for n in names}
        lists = {n: (v.flat(), v.lengths()) for n, v in views.items()}
        sc = {n: batch.column(n).to_numpy() for n in scalars if n in batch.column_names}
        return lists, sc
    rows = _rows(batch)
    lists = {}
    for n in names:
        parts = [np.asarray(r[n]).reshape(-1) for r in rows]
        lists[n] = (np.concatenate(parts), np.array([len(p) for p in parts], dtype=np.int64))
    sc = {n: np.array([int(r[n]) for r in rows], dtype=np.int64) for n in scalars if n in rows[0]}
    return lists, sc


def _row_base(base: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each row's ``base`` repeated over that row's elements."""
    return np.repeat(base, lengths)


def collate(batch, with_pairings: bool = False, stride: int = OFFICIAL_STRIDE) -> dict[str, torch.Tensor]:
    """Concatenate prepared samples (a pyarrow Table, a list of rows or a dict of columns) into one batch."""
    names = list(_LIST_DTYPES) + (list(_PAIRING_DTYPES) if with_pairings else [])
    lists, sc = _batch_columns(batch, names)
    nv = sc["num_voxels"].astype(np.int64)
    bsz = len(nv)
    v_off = np.zeros(bsz + 1, dtype=np.int64)
    np.cumsum(nv, out=v_off[1:])
    n_vox = int(v_off[-1])

    def col(name: str) -> np.ndarray:  # always a fresh array: the batch must not alias (read-only) Arrow buffers
        return lists[name][0].astype(_LIST_DTYPES.get(name) or _PAIRING_DTYPES[name])

    coords = np.empty((n_vox, 4), dtype=np.int32)
    coords[:, 0] = _row_base(np.arange(bsz, dtype=np.int32), nv)
    coords[:, 1:] = col("coords").reshape(n_vox, 3)
    feats = col("feats")
    inverse = col("inverse") + _row_base(v_off[:-1], lists["inverse"][1])
    p_off = np.zeros(bsz + 1, dtype=np.int64)
    np.cumsum(lists["inverse"][1], out=p_off[1:])
    t = torch.from_numpy
    out = {"coords": t(coords), "feats": t(feats.reshape(n_vox, feats.size // n_vox if n_vox else 1)),
           "inverse": t(inverse), "target": t(col("target")), "point_labels": t(col("point_labels")),
           "pseudo": t(col("pseudo")), "voxel_offsets": t(v_off), "point_offsets": t(p_off)}
    if with_pairings:
        base = np.arange(bsz, dtype=np.int64) * (NUM_CAMERAS * stride)
        n_sp = lists["sp_id"][1]
        dims = {int(d) for d, s in zip(sc["feat_dim"], n_sp) if s}
        if len(dims) > 1:
            raise ValueError(f"sp_feat: rows of one batch have different feature sizes {sorted(dims)}")
        dim = dims.pop() if dims else int(sc["feat_dim"][0]) if bsz else 0
        out.update(pair_voxel=t(col("pair_voxel") + _row_base(v_off[:-1], lists["pair_voxel"][1])),
                   pair_superpixel=t(col("pair_superpixel") + _row_base(base, lists["pair_superpixel"][1])),
                   sp_id=t(col("sp_id") + _row_base(base, n_sp)), sp_text=t(col("sp_text")),
                   sp_feat=t(col("sp_feat").reshape(int(n_sp.sum()), dim)))
    return out


def torch_batches(shard, batch_size: int, *, with_pairings: bool = False, stride: int = OFFICIAL_STRIDE,
                  prefetch_batches: int = 2, drop_last: bool = True, shuffle_buffer: int = 0,
                  shuffle_seed: int | None = None):
    """Collated batches (dicts of CPU tensors) of a Ray DataIterator over prepared samples.

    ``shuffle_buffer`` > 0 mixes that many scans in Ray Data's local shuffle buffer (seeded by
    ``shuffle_seed``: pass a per-epoch seed so epochs differ and a rerun repeats them).

    ``collate`` runs on the Arrow batch inside Ray Data's ``iter_torch_batches``, in its prefetch
    threads, ``prefetch_batches`` batches ahead of the training loop."""
    from ray.data.collate_fn import ArrowBatchCollateFn

    class _Collate(ArrowBatchCollateFn):
        def __call__(self, table):
            return collate(table, with_pairings=with_pairings, stride=stride)

    shuffle = {"local_shuffle_buffer_size": max(shuffle_buffer, batch_size),
               "local_shuffle_seed": shuffle_seed} if shuffle_buffer > 0 else {}
    return shard.iter_torch_batches(batch_size=batch_size, collate_fn=_Collate(), device="cpu",
                                    prefetch_batches=prefetch_batches, drop_last=drop_last, **shuffle)
