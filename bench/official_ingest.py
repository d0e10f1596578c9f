"""A stand-in for the official AFOV per-scan loading work of annotation-free training
(``zeroshot/dataloader_nuscenes_.py`` ``__getitem__`` with the ``custom_collate_fn`` of
``downstream/dataloader_nuscenes.py``, sbysbysbys/AFOV), restated for ``bench/ingest_bench.py`` so that the
official loader's cost is measured in the same process as ours.

Per scan, as the official loader does: the LiDAR ``.pcd.bin`` read with ``np.fromfile`` (5 floats per point,
``LidarPointCloud.from_file``), the per-point ``uint8`` labels read with ``np.fromfile``, rotation about z as
``pc @ R.T`` and the two random flips on a torch tensor (``utils/transforms.py`` ``Rotation_z``, ``FlipAxis``),
cylindrical coordinates (rho and z / voxel size, phi in degrees), MinkowskiEngine's ``sparse_quantize`` with
``return_index`` and ``return_inverse``, the representative points' intensity and labels; per batch, the
coordinates with a batch column concatenated. With ``remap=True`` also the official label handling: the
pseudo-labels read with ``np.load`` from ``.npy`` (``% 100``) and both label arrays remapped through the
class table with ``np.vectorize``. Without it (the default), a lower bound. Left out either way: the
DataLoader's worker and pinning overhead.
"""

from __future__ import annotations

import random

import numpy as np
import torch

EVAL_LABELS = {i: min(i, 16) for i in range(32)}   # the official 32 -> 17 class table's size and kind


def load_scan(pcd_path: str, label_path: str, me, voxel_size: float = 0.1, augment: bool = True,
              remap: bool = False) -> tuple:
    points = np.fromfile(pcd_path, dtype=np.float32).reshape(-1, 5)[:, :4]
    labels = np.fromfile(label_path, dtype=np.uint8)
    if remap:
        pseudo = np.load(label_path.replace(".bin", ".npy")) % 100
        pseudo = torch.tensor(np.vectorize(EVAL_LABELS.__getitem__)(pseudo), dtype=torch.int32)
        labels = np.vectorize(EVAL_LABELS.__getitem__)(labels)
    pc = torch.tensor(points[:, :3])
    if augment:
        angle = np.random.random() * 2 * np.pi
        c, s = np.cos(angle), np.sin(angle)
        rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
        pc = pc @ rot.T
        for ax in range(2):
            if random.random() < 0.5:
                pc[:, ax] = -pc[:, ax]
    x, y, z = pc.T
    rho = torch.sqrt(x ** 2 + y ** 2) / voxel_size
    phi = torch.atan2(y, x) * 180 / np.pi
    coords = torch.cat((rho[:, None], phi[:, None], (z / voxel_size)[:, None]), 1)
    discrete, indexes, inverse = me.utils.sparse_quantize(coords, return_index=True, return_inverse=True)
    feats = torch.tensor(points[indexes][:, 3:])
    point_labels = torch.tensor(labels, dtype=torch.int32)
    if remap:
        return pc, discrete, feats, pseudo[indexes], point_labels, inverse
    return pc, discrete, feats, point_labels[indexes], point_labels, inverse


def collate(items: list[tuple]) -> dict:
    coords = [torch.cat((torch.ones(c.shape[0], 1, dtype=torch.int32) * b, c), 1) for b, (_, c, *_) in
              enumerate(items)]
    return {"sinput_C": torch.cat(coords, 0).int(), "sinput_F": torch.cat([it[2] for it in items], 0).float(),
            "labels": torch.cat([it[3] for it in items], 0).long(), "inverse_indexes": [it[5] for it in items]}
