"""AFI driver: labels in, refined labels out, batched over scans (afov-reference.md section 1).

Batching: scans are grouped by their level sizes (all scans with N >= G_1 share 1365/455/151/50
with the defaults); inside a group the full-resolution level is padded to the longest scan with a
validity mask, every coarser level has the same size for all scans, so the result of a scan does
not depend on what it is batched with (tested). Scans of a list are processed group by group.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.geometry import decoder_kappas, fibonacci_directions, level_sizes
from afov_ray.afi.network import Level, decode_step, encode_stage
from afov_ray.afi.preprocess import apply_assist, near_ego_ground
from afov_ray.errors import DataError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def afi_forward(xyz: torch.Tensor, x0: torch.Tensor, valid: torch.Tensor | None, sizes: list[int],
                kappas: torch.Tensor, cfg: AFIConfig) -> tuple[torch.Tensor, list[Level]]:
    """Encoder + decoder on a padded group: xyz (B, N, 3), x0 (B, N, C) masked one-hot,
    valid (B, N) or None, sizes = [N_max, G_1..G_S] (G_s shared), kappas (S, B) deepest step first.
    Returns (z0 (B, N, C), levels [level 0..S])."""
    dirs = fibonacci_directions(cfg.beta2, dtype=xyz.dtype).to(xyz.device)
    levels = [Level(xyz=xyz, x=x0)]
    for s in range(1, cfg.stages + 1):
        levels.append(encode_stage(levels[-1], sizes[s], cfg, dirs, first=(s == 1),
                                   valid=valid if s == 1 else None))
    z = levels[-1].x
    for i, s in enumerate(range(cfg.stages, 0, -1)):
        dense = levels[s - 1]
        z, _ = decode_step(dense.xyz, dense.x, levels[s], z, kappas[i], cfg,
                           dense_valid=valid if s == 1 else None)
    return z, levels


def _as_scan(item: Any, i: int) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(item, dict):
        return (str(item.get("name", f"scan[{i}]")), item["xyz"], item["labels"], item.get("pseudo"))
    if len(item) == 2:
        return f"scan[{i}]", item[0], item[1], None
    return f"scan[{i}]", item[0], item[1], item[2]


def _check(name: str, xyz, labels, pseudo, cfg: AFIConfig):
    xyz = torch.as_tensor(xyz)
    labels = torch.as_tensor(labels)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise DataError(name, f"xyz must have shape (N, 3), got {tuple(xyz.shape)}")
    if labels.shape != (xyz.shape[0],):
        raise DataError(name, f"labels must have shape ({xyz.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.long().to(xyz.device)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
        raise DataError(name, f"labels outside [0, {cfg.num_classes})")
    if not torch.isfinite(xyz).all():
        raise DataError(name, "xyz has non-finite values")
    if pseudo is not None:
        pseudo = torch.as_tensor(pseudo).long().to(xyz.device)
        if pseudo.shape != labels.shape:
            raise DataError(name, f"pseudo must have shape {tuple(labels.shape)}, got {tuple(pseudo.shape)}")
        if pseudo.numel() and (int(pseudo.min()) < 0 or int(pseudo.max()) >= cfg.num_classes):
            raise DataError(name, f"pseudo labels outside [0, {cfg.num_classes})")
    return xyz, labels, pseudo


def afi_refine_batch(scans: Sequence[Any], cfg: AFIConfig | None = None,
                     generator: torch.Generator | None = None
                     ) -> list[tuple[torch.Tensor, dict]]:
    """Refine a list of scans; each item is (xyz, labels), (xyz, labels, pseudo) or a dict with
    keys xyz, labels, optional pseudo and name. Returns [(refined (N,) long, stats)] in input order,
    on each scan's device. The 2D assist (cfg.use_assist) draws from ``generator`` (a CPU
    torch.Generator; default: seeded with cfg.assist_seed) scan after scan in list order, so a
    batch equals sequential ``afi_refine`` calls that share the generator."""
    cfg = cfg or AFIConfig()
    cfg.validate()
    dtype = _DTYPES[cfg.dtype]
    if cfg.use_assist and generator is None:
        generator = torch.Generator().manual_seed(cfg.assist_seed)
    prepared = []
    for i, item in enumerate(scans):
        name, xyz, labels, pseudo = _as_scan(item, i)
        xyz, labels, pseudo = _check(name, xyz, labels, pseudo, cfg)
        ground = near_ego_ground(xyz.detach().double().cpu().numpy(), cfg)
        n_assist = 0
        if cfg.use_assist and pseudo is not None:
            labels, n_assist = apply_assist(labels, pseudo, xyz, cfg, generator)
        vote = torch.from_numpy(ground.vote_mask).to(xyz.device)
        if not cfg.class0_mass:
            vote = vote & (labels != 0)
        sizes = level_sizes(xyz.shape[0], cfg)
        stats = {"name": name, "n_points": int(xyz.shape[0]), "level_sizes": sizes,
                 "kappas": decoder_kappas(sizes, cfg) if sizes[0] else [],
                 "ground_status": ground.status, "n_ring": ground.n_ring,
                 "n_ground_inliers": int(ground.inliers.sum()), "n_no_mass": int((~vote).sum()),
                 "n_assist_replaced": n_assist}
        prepared.append((xyz, labels, vote, torch.from_numpy(ground.inliers).to(xyz.device), stats))

    results: list[tuple[torch.Tensor, dict] | None] = [None] * len(prepared)
    groups: dict[tuple, list[int]] = {}
    for i, (xyz, labels, _, _, stats) in enumerate(prepared):
        n = stats["n_points"]
        if n == 0:
            stats["changed_fraction"] = 0.0
            results[i] = (labels.clone(), stats)
            continue
        key = (tuple(stats["level_sizes"][1:]), min(cfg.k, n), str(xyz.device))
        groups.setdefault(key, []).append(i)

    ground_keep = torch.zeros(cfg.num_classes, dtype=torch.bool)
    ground_keep[list(cfg.ground_classes)] = True
    for key, members in groups.items():
        device = prepared[members[0]][0].device
        n_max = max(prepared[i][4]["n_points"] for i in members)
        B = len(members)
        xyz_b = torch.zeros(B, n_max, 3, dtype=dtype, device=device)
        x0 = torch.zeros(B, n_max, cfg.num_classes, dtype=dtype, device=device)
        valid = torch.zeros(B, n_max, dtype=torch.bool, device=device)
        for j, i in enumerate(members):
            xyz, labels, vote, _, stats = prepared[i]
            n = stats["n_points"]
            xyz_b[j, :n] = xyz.to(dtype)
            x0[j, :n] = torch.nn.functional.one_hot(labels, cfg.num_classes).to(dtype) * vote[:, None]
            valid[j, :n] = True
        kappas = torch.tensor([prepared[i][4]["kappas"] for i in members], dtype=dtype,
                              device=device).T                                 # (S, B)
        sizes = [n_max] + list(key[0])
        z0, _ = afi_forward(xyz_b, x0, valid, sizes, kappas, cfg)
        for j, i in enumerate(members):
            xyz, labels, _, inl, stats = prepared[i]
            n = stats["n_points"]
            z = z0[j, :n]
            if bool(inl.any()):
                z = z.clone()
                z[inl[:, None] & ~ground_keep.to(device)[None, :]] = 0.0
            refined = torch.argmax(z, dim=1)
            stats["changed_fraction"] = float((refined != labels).float().mean())
            results[i] = (refined, stats)
    return results  # type: ignore[return-value]


def afi_refine(xyz: torch.Tensor, labels: torch.Tensor, cfg: AFIConfig | None = None,
               pseudo: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict]:
    """Refine one scan: xyz (N, 3), labels (N,) in [0, C) -> (refined (N,) long, stats).

    stats: changed_fraction (vs. the labels after the optional assist), n_points, level_sizes,
    kappas, ground_status, n_ring, n_ground_inliers, n_no_mass, n_assist_replaced, name."""
    return afi_refine_batch([(xyz, labels, pseudo)], cfg, generator)[0]
