"""AFI driver: labels in, refined labels out (official ``post_process`` in ``afi/afi.py``).

Steps per scan: ground step and vote mask, optional 2D assist, masked one-hot features, the
network (``afov_ray.afi.network``), ground forcing for the RANSAC inliers, argmax. The official code
runs one scan at a time (batch 1); so does this driver (``afi_refine_batch`` is a loop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from afov_ray.afi.config import AFIConfig
from afov_ray.afi.geometry import decoder_kappas, fibonacci_directions, level_sizes
from afov_ray.afi.network import Level, afi_network
from afov_ray.afi.preprocess import GroundResult, apply_assist, near_ego_ground
from afov_ray.errors import DataError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class AFITrace:
    """Everything one AFI run computed (for parity tests and debugging)."""

    labels: torch.Tensor          # (N,) refined labels
    z0: torch.Tensor              # (N, C) final scores, after ground forcing
    input_labels: torch.Tensor    # (N,) labels after the optional assist
    vote: torch.Tensor            # (N,) bool vote mask
    ground: GroundResult
    sizes: list[int]
    kappas: list[float]
    levels: list[Level]           # encoder levels 0..S
    decoded: list[torch.Tensor]   # decoder outputs z^(S-1), ..., z^(0) (before ground forcing)
    n_assist: int = 0             # points whose label the 2D assist replaced


@lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, after loading the ones AFI uses."""
    import scipy.sparse  # noqa: F401
    import scipy.spatial  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """Run a CPU AFI call with ``n`` torch intra-op threads and ``n`` BLAS threads, restoring the
    caller's settings afterwards (process-wide settings; n <= 0 or a non-CPU device: no change).

    AFI's CPU work is sequential loops (FPS), tree queries and memory-bound gathers; on a busy
    machine every multi-threaded op waits for a second core, which made runs several times slower
    with 2 threads than with 1 (docs/afi.md). One thread is the default."""
    if n <= 0 or device.type != "cpu":
        yield
        return
    prev = torch.get_num_threads()
    with _blas_controller().limit(limits=n, user_api="blas"):
        if prev != n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if prev != n:
                torch.set_num_threads(prev)


def afi_forward(xyz: torch.Tensor, x0: torch.Tensor, cfg: AFIConfig
                ) -> tuple[torch.Tensor, list[Level], list[torch.Tensor], list[int], list[float]]:
    """The network on one scan: xyz (N, 3), x0 (N, C) (masked one-hot) in the working dtype.
    Returns (z0, levels, decoder outputs, level sizes, kappas)."""
    sizes = level_sizes(xyz.shape[0], cfg)
    kappas = decoder_kappas(sizes, cfg)
    dirs = fibonacci_directions(cfg.beta2, dtype=xyz.dtype).to(xyz.device)
    z0, levels, outs = afi_network(xyz, x0, sizes, kappas, cfg, dirs)
    return z0, levels, outs, sizes, kappas


def afi_trace(xyz: torch.Tensor, labels: torch.Tensor, cfg: AFIConfig | None = None,
              pseudo: torch.Tensor | None = None, generator: torch.Generator | None = None,
              name: str = "scan") -> AFITrace:
    """Full AFI on one scan, keeping every intermediate (see ``afi_refine``)."""
    cfg = cfg or AFIConfig()
    cfg.validate()
    with cpu_threads(cfg.cpu_threads, torch.as_tensor(xyz).device):
        xyz, labels, pseudo = _check(name, xyz, labels, pseudo, cfg)
        return _trace(xyz, labels, cfg, pseudo, generator)


def _trace(xyz: torch.Tensor, labels: torch.Tensor, cfg: AFIConfig, pseudo: torch.Tensor | None,
           generator: torch.Generator | None) -> AFITrace:
    dtype = _DTYPES[cfg.dtype]
    ground = near_ego_ground(xyz.detach().cpu().numpy(), cfg)
    n_assist = 0
    if cfg.use_assist and pseudo is not None:
        if generator is None:
            generator = torch.Generator().manual_seed(cfg.assist_seed)
        labels, n_assist = apply_assist(labels, pseudo, xyz, cfg, generator)
    vote = torch.from_numpy(ground.vote_mask).to(xyz.device)
    if not cfg.class0_mass:
        vote = vote & (labels != 0)
    n = xyz.shape[0]
    if n == 0:
        empty = torch.zeros(0, cfg.num_classes, dtype=dtype, device=xyz.device)
        return AFITrace(labels.clone(), empty, labels, vote, ground, level_sizes(0, cfg), [], [], [],
                        n_assist)
    x0 = torch.nn.functional.one_hot(labels, cfg.num_classes).to(dtype) * vote[:, None]
    z0, levels, outs, sizes, kappas = afi_forward(xyz.to(dtype), x0, cfg)
    inliers = torch.from_numpy(ground.inliers).to(xyz.device)
    if bool(inliers.any()):
        keep = torch.zeros(cfg.num_classes, dtype=dtype, device=xyz.device)
        keep[list(cfg.ground_classes)] = 1.0
        z0 = z0.clone()
        z0[inliers] = z0[inliers] * keep          # official: features[:, ground idx] *= ground_mask
    refined = torch.argmax(z0, dim=1)             # first maximum, as torch.max in the official code
    return AFITrace(refined, z0, labels, vote, ground, sizes, kappas, levels, outs, n_assist)


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


def _stats(name: str, tr: AFITrace) -> dict:
    n = int(tr.labels.shape[0])
    changed = float((tr.labels != tr.input_labels).float().mean()) if n else 0.0
    return {"name": name, "n_points": n, "level_sizes": tr.sizes, "kappas": tr.kappas,
            "ground_status": tr.ground.status, "n_ring": tr.ground.n_ring,
            "n_ground_inliers": int(tr.ground.inliers.sum()), "n_no_mass": int((~tr.vote).sum()),
            "n_assist_replaced": tr.n_assist, "changed_fraction": changed}


def afi_refine(xyz: torch.Tensor, labels: torch.Tensor, cfg: AFIConfig | None = None,
               pseudo: torch.Tensor | None = None, generator: torch.Generator | None = None,
               name: str = "scan") -> tuple[torch.Tensor, dict]:
    """Refine one scan: xyz (N, 3), labels (N,) in [0, C) -> (refined (N,) long, stats), on xyz's
    device.

    The 2D assist (cfg.use_assist, needs ``pseudo``) draws from ``generator`` (a CPU
    torch.Generator; default: seeded with cfg.assist_seed). stats: changed_fraction (vs. the labels
    after the optional assist), n_points, level_sizes, kappas, ground_status, n_ring,
    n_ground_inliers, n_no_mass, n_assist_replaced, name."""
    cfg = cfg or AFIConfig()
    with cpu_threads(cfg.cpu_threads, torch.as_tensor(xyz).device):
        tr = afi_trace(xyz, labels, cfg, pseudo, generator, name)
        return tr.labels, _stats(name, tr)


def _as_scan(item: Any, i: int) -> tuple[str, Any, Any, Any]:
    if isinstance(item, dict):
        return (str(item.get("name", f"scan[{i}]")), item["xyz"], item["labels"], item.get("pseudo"))
    if len(item) == 2:
        return f"scan[{i}]", item[0], item[1], None
    return f"scan[{i}]", item[0], item[1], item[2]


def afi_refine_batch(scans: Sequence[Any], cfg: AFIConfig | None = None,
                     generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, dict]]:
    """Refine a list of scans, one after the other; each item is (xyz, labels),
    (xyz, labels, pseudo) or a dict with keys xyz, labels, optional pseudo and name. Returns
    [(refined, stats)] in input order. The assist draws from one shared ``generator`` (default:
    seeded with cfg.assist_seed) scan after scan, as sequential ``afi_refine`` calls would. Inputs
    are all checked before any scan is refined."""
    cfg = cfg or AFIConfig()
    cfg.validate()
    items = []
    for i, item in enumerate(scans):
        name, xyz, labels, pseudo = _as_scan(item, i)
        _check(name, xyz, labels, pseudo, cfg)
        items.append((name, xyz, labels, pseudo))
    if cfg.use_assist and generator is None:
        generator = torch.Generator().manual_seed(cfg.assist_seed)
    return [afi_refine(xyz, labels, cfg, pseudo, generator, name) for name, xyz, labels, pseudo in items]
